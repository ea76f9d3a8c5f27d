//! `fedmesh run` and `fedmesh quickstart`: train an example in every configuration and write
//! `results.json` and a report.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use fedmesh_split::job::{Job, RunConfig, RunResult};
use fedmesh_split::{Metrics, SplitError};
use serde::{Deserialize, Serialize};

use crate::progress::RunProgress;
use crate::report;

/// What `fedmesh run` writes to `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub example: String,
    pub description: String,
    /// Where the data came from (a file, or the generator and its seed).
    pub source: String,
    pub rows: usize,
    pub train_rows: usize,
    pub valid_rows: usize,
    pub test_rows: usize,
    pub runs: Vec<RunResult>,
}

#[derive(Debug, Default)]
pub struct RunOptions {
    pub data: Option<PathBuf>,
    pub seeds: Option<usize>,
    pub configs: Vec<String>,
    pub epochs: Option<usize>,
    pub out: Option<PathBuf>,
}

/// The fraud example, built into the binary so that `quickstart` needs no checkout.
const FRAUD_EXAMPLE: &[(&str, &str)] = &[
    ("job.yaml", include_str!("../../../examples/fraud/job.yaml")),
    (
        "contracts/digital.odcs.yaml",
        include_str!("../../../examples/fraud/contracts/digital.odcs.yaml"),
    ),
    (
        "contracts/retail.odcs.yaml",
        include_str!("../../../examples/fraud/contracts/retail.odcs.yaml"),
    ),
    (
        "contracts/fraud-prevention.odcs.yaml",
        include_str!("../../../examples/fraud/contracts/fraud-prevention.odcs.yaml"),
    ),
];

pub fn quickstart(out: Option<PathBuf>, seeds: usize, stop: &AtomicBool) -> Result<()> {
    let out = out.unwrap_or_else(|| default_out("quickstart"));
    let example = out.join("example");
    for (name, text) in FRAUD_EXAMPLE {
        let path = example.join(name);
        std::fs::create_dir_all(path.parent().expect("file in a folder"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "fedmesh quickstart: the fraud example (digital, retail, fraud-prevention) written to {}",
        example.display()
    );
    run(
        &example,
        RunOptions {
            seeds: Some(seeds),
            configs: vec![
                "centralized".into(),
                "split-label-sharing".into(),
                "split-label-owner".into(),
            ],
            out: Some(out),
            ..RunOptions::default()
        },
        stop,
    )?;
    Ok(())
}

pub fn run(example: &Path, options: RunOptions, stop: &AtomicBool) -> Result<Results> {
    let mut job = Job::load(example)?;
    if let Some(epochs) = options.epochs {
        job.spec.training.epochs = epochs;
    }
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| default_out(&job.spec.name));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    // Checked before any data is read: a typo should not cost a load.
    let chosen: Vec<RunConfig> = options
        .configs
        .iter()
        .map(|c| c.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    println!(
        "loading and validating the data products of `{}`…",
        job.spec.name
    );
    let prepared = job.prepare(options.data.as_deref())?;
    println!(
        "{} aligned rows from {} ({} train, {} validation, {} test), {} feature domains",
        prepared.rows,
        prepared.source,
        prepared.partition.train.len(),
        prepared.partition.valid.len(),
        prepared.partition.test.len(),
        prepared.domains.len()
    );
    if prepared.synthetic_rows > 0 {
        println!(
            "resampling: {} training rows, {} of them synthetic (SMOTE)",
            prepared.partition.train.len(),
            prepared.synthetic_rows
        );
    }
    let configs = if chosen.is_empty() {
        prepared.configs()
    } else {
        chosen
    };
    let seeds: Vec<u64> = match options.seeds {
        Some(0) => bail!("--seeds must be at least 1"),
        Some(n) => (1..=n as u64)
            .map(|i| {
                prepared
                    .spec
                    .seeds
                    .get(i as usize - 1)
                    .copied()
                    .unwrap_or(i)
            })
            .collect(),
        None => prepared.spec.seeds.clone(),
    };

    let mut results = Results {
        example: prepared.spec.name.clone(),
        description: prepared.spec.description.clone(),
        source: prepared.source.clone(),
        rows: prepared.rows,
        train_rows: prepared.partition.train.len(),
        valid_rows: prepared.partition.valid.len(),
        test_rows: prepared.partition.test.len(),
        runs: Vec::new(),
    };
    for config in &configs {
        for &seed in &seeds {
            let label = format!("{} seed {seed}", config.name());
            let progress = RunProgress::new(label, prepared.spec.training.epochs);
            let models = out
                .join("models")
                .join(format!("{}-seed{seed}", config.name().replace(':', "-")));
            match prepared.run(config, seed, &progress, stop, Some(&models)) {
                Ok(result) => {
                    progress.finish(format!(
                        "{} {:.4} in {:.1} s",
                        headline_name(&result.metrics),
                        result.metrics.headline(),
                        result.train_seconds
                    ));
                    results.runs.push(result);
                    // Written after every run, atomically: an interrupted run keeps what
                    // finished before it.
                    write_json(&out.join("results.json"), &results)?;
                }
                Err(SplitError::Interrupted) => {
                    progress.abandon();
                    write_outputs(&out, &results)?;
                    bail!(
                        "interrupted: {} finished runs are in {}",
                        results.runs.len(),
                        out.join("results.json").display()
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    write_outputs(&out, &results)?;
    println!("\n{}", report::table(&results));
    println!(
        "results: {}\nreport:  {}",
        out.join("results.json").display(),
        out.join("report.md").display()
    );
    Ok(results)
}

fn write_outputs(out: &Path, results: &Results) -> Result<()> {
    write_json(&out.join("results.json"), results)?;
    report::write(out, results)
}

fn headline_name(metrics: &Metrics) -> &'static str {
    match metrics {
        Metrics::Binary(_) => "ROC-AUC",
        Metrics::MultiClass(_) => "accuracy",
        Metrics::Regression(_) => "R²",
    }
}

/// Writes JSON to a temporary file and renames it into place, so a reader never sees half a
/// file.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn default_out(name: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("{name}-{stamp}"))
}
