//! `fedmesh attack`: how much of the labels each party of a split job could read off the
//! gradients it receives, without a defence and with each one asked for, beside what the model
//! then scores (see `fedmesh_split::attack`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use fedmesh_split::attack::{ATTACKS, AttackRun, attack};
use fedmesh_split::job::{Job, RunConfig};
use fedmesh_split::party::LabelProtection;
use fedmesh_split::{Metrics, SplitError};

use crate::progress::RunProgress;
use crate::report::mean_std;
use crate::run::{default_out, first_seeds, write_json};

/// What `fedmesh attack` runs.
#[derive(clap::Args)]
pub struct AttackOptions {
    /// The example folder (a binary classification job), e.g. examples/credit.
    pub example: PathBuf,
    /// Read every product from this file instead of where its contract says.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The job's first N seeds.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Override the job's epoch count.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the job's training batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override the job's learning rate (the schedule's start).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// split-label-sharing and/or split-label-owner (default: both), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub configs: Vec<String>,
    /// Also run with Gaussian noise on the label owner's gradients at each of these scales
    /// (× the batch's RMS gradient value), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub gradient_noise: Vec<f64>,
    /// Also run with noise shaped to hide the label (along the line between the batch's
    /// classes) at each of these scales (× that line's length), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub shaped_noise: Vec<f64>,
    /// Also run with randomized response at each of these ε, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub randomized_response: Vec<f64>,
    /// With every protection asked for on the command line, every gradient that leaves a
    /// party leaves at one length (`equal_norms`).
    #[arg(long)]
    pub equal_norms: bool,
    /// Where attack.json and attack.md go (default: runs/EXAMPLE-attack-TIME).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A protection setting's name in the table.
fn setting_name(protection: &Option<LabelProtection>) -> String {
    match protection {
        None => "none".into(),
        Some(p) => {
            let mut parts = Vec::new();
            if p.gradient_noise > 0.0 {
                parts.push(format!("gradient noise {}", p.gradient_noise));
            }
            if p.shaped_noise > 0.0 {
                parts.push(format!("shaped noise {}", p.shaped_noise));
            }
            if let Some(epsilon) = p.randomized_response {
                parts.push(format!("randomized response ε={epsilon}"));
            }
            if p.equal_norms {
                parts.push("equal norms".into());
            }
            if parts.is_empty() {
                "none".into()
            } else {
                parts.join(", ")
            }
        }
    }
}

pub fn run(options: AttackOptions, stop: &AtomicBool) -> Result<Vec<AttackRun>> {
    let mut job = Job::load(&options.example)?;
    if let Some(epochs) = options.epochs {
        job.spec.training.epochs = fedmesh_split::limits::checked_epochs("--epochs", epochs)
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(batch_size) = options.batch_size {
        job.spec.training.batch_size = batch_size;
    }
    if let Some(learning_rate) = options.learning_rate {
        job.spec.training.optimizer.learning_rate = learning_rate;
    }
    let configs: Vec<RunConfig> = if options.configs.is_empty() {
        vec![RunConfig::SplitLabelSharing, RunConfig::SplitLabelOwner]
    } else {
        options
            .configs
            .iter()
            .map(|c| c.parse().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    // What every protection asked for on the command line shares.
    let base = LabelProtection {
        equal_norms: options.equal_norms,
        ..LabelProtection::default()
    };
    let mut settings = vec![job.spec.label_protection.clone()];
    for &noise in &options.gradient_noise {
        settings.push(Some(LabelProtection {
            gradient_noise: noise,
            ..base.clone()
        }));
    }
    for &noise in &options.shaped_noise {
        settings.push(Some(LabelProtection {
            shaped_noise: noise,
            ..base.clone()
        }));
    }
    for &epsilon in &options.randomized_response {
        settings.push(Some(LabelProtection {
            randomized_response: Some(epsilon),
            ..base.clone()
        }));
    }
    let seeds = first_seeds(&job.spec.seeds, Some(options.seeds))?;
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| default_out(&format!("{}-attack", job.spec.name)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    println!(
        "loading and validating the data products of `{}`…",
        job.spec.name
    );
    // Each defence is part of the job: checked and bounded as a spec's would be, before any
    // data is read.
    for protection in &settings {
        let mut spec = job.spec.clone();
        spec.label_protection = protection.clone();
        let problems = spec.limit_problems();
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
    }
    // The data is read and aligned once: a protection changes only how the label owner trains.
    let mut prepared = job.prepare(options.data.as_deref())?;
    let mut runs = Vec::new();
    for protection in &settings {
        prepared.spec.label_protection = protection.clone();
        for config in &configs {
            // With label sharing governance holds the labels and adds the noise against the
            // domains; randomized response protects labels from their receiver, governance
            // here, so such a run is the unprotected one.
            let noise = protection
                .as_ref()
                .is_some_and(|p| p.gradient_noise > 0.0 || p.shaped_noise > 0.0);
            if *config == RunConfig::SplitLabelSharing
                && *protection != job.spec.label_protection
                && !noise
            {
                continue;
            }
            for &seed in &seeds {
                let label = format!(
                    "{} seed {seed}, protection: {}",
                    config.name(),
                    setting_name(protection)
                );
                let progress = RunProgress::new(label, prepared.spec.training.epochs);
                match attack(&prepared, config, seed, &progress, stop) {
                    Ok(run) => {
                        let worst = run.worst_leak().map_or("no leak measured".into(), |l| {
                            format!("worst leak {:.3} ({} at {})", l.auc, l.attack, l.party)
                        });
                        progress.finish(format!(
                            "{} {:.4}; {worst}",
                            run.result.metrics.headline_name(),
                            run.result.metrics.headline()
                        ));
                        runs.push(run);
                        write_json(&out.join("attack.json"), &runs)?;
                    }
                    Err(SplitError::Interrupted) => {
                        progress.abandon();
                        bail!(
                            "interrupted: {} finished runs are in {}",
                            runs.len(),
                            out.join("attack.json").display()
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let table = table(&job.spec.name, &runs);
    std::fs::write(out.join("attack.md"), &table)?;
    println!("\n{table}");
    println!(
        "runs:  {}\ntable: {}",
        out.join("attack.json").display(),
        out.join("attack.md").display()
    );
    Ok(runs)
}

/// The table: one row per protection setting and configuration; the test ROC-AUC, and for each
/// attacked party the highest leak AUC over the epochs of each attack (mean ± std over seeds).
pub fn table(name: &str, runs: &[AttackRun]) -> String {
    let mut parties: Vec<String> = Vec::new();
    for run in runs {
        for leak in &run.leaks {
            if !parties.contains(&leak.party) {
                parties.push(leak.party.clone());
            }
        }
    }
    // Governance first: it is attacked in configuration 2 only.
    parties.sort_by_key(|p| p != "governance");
    let mut rows: BTreeMap<(usize, String, String), Vec<&AttackRun>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for run in runs {
        let setting = setting_name(&run.protection);
        if !order.contains(&setting) {
            order.push(setting.clone());
        }
        let rank = order.iter().position(|s| *s == setting).unwrap_or(0);
        rows.entry((rank, setting, run.config.clone()))
            .or_default()
            .push(run);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{name}: leak AUC (max(AUC, 1 − AUC) of each attack's scores against the training labels; the highest over the epochs), as norm / direction / spectral; mean over seeds"
    );
    let _ = write!(
        out,
        "\n| protection | configuration | seeds | test ROC-AUC |"
    );
    for party in &parties {
        let _ = write!(out, " {party} |");
    }
    let _ = write!(out, "\n|---|---|---|---|");
    for _ in &parties {
        let _ = write!(out, "---|");
    }
    out.push('\n');
    for ((_, setting, config), runs) in &rows {
        let auc: Vec<f64> = runs
            .iter()
            .filter_map(|r| match &r.result.metrics {
                Metrics::Binary(m) => Some(m.roc_auc),
                _ => None,
            })
            .collect();
        let (mean, std) = mean_std(&auc);
        let _ = write!(
            out,
            "| {setting} | {config} | {} | {mean:.4} ± {std:.4} |",
            runs.len()
        );
        for party in &parties {
            let cells: Vec<String> = ATTACKS
                .iter()
                .map(|attack| {
                    let worst: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| {
                            r.leaks
                                .iter()
                                .filter(|l| &l.party == party && l.attack == *attack)
                                .map(|l| l.auc)
                                .max_by(f64::total_cmp)
                        })
                        .collect();
                    if worst.is_empty() {
                        "–".into()
                    } else {
                        format!("{:.3}", mean_std(&worst).0)
                    }
                })
                .collect();
            let _ = write!(out, " {} |", cells.join(" / "));
        }
        out.push('\n');
    }
    out
}
