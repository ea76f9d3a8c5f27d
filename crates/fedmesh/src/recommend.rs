//! `fedmesh run` for recommendation jobs (`task: recommendation`): every configuration and
//! seed under the NCF protocol, `results.json` with `hr@10` and `ndcg@10` per run, and a table.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use fedmesh_split::job::{RunConfig, RunResult};
use fedmesh_split::recommend::{RANKING_CONFIGS, RankingMetrics, RecommendationSpec};
use fedmesh_split::{AnyJob, MESH_CONFIGS, SplitError};
use serde::{Deserialize, Serialize};

use crate::progress::RunProgress;
use crate::run::{RunOptions, write_json};

/// What `fedmesh run` writes to `results.json` for a recommendation job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankingResults {
    pub example: String,
    pub description: String,
    pub users: usize,
    pub items: usize,
    /// Distinct (user, item) interactions.
    pub interactions: usize,
    /// Where the held-out items and their negatives come from.
    pub split: String,
    pub test_users: usize,
    pub runs: Vec<RunResult>,
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The comparison table: one row per configuration, mean ± std over seeds.
pub fn table(results: &RankingResults) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} — {} users, {} items, {} interactions; {} test users ({})",
        results.example,
        results.users,
        results.items,
        results.interactions,
        results.test_users,
        results.split
    );
    let _ = writeln!(
        out,
        "| configuration | seeds | HR@10 | NDCG@10 | train s | examples/s |\n|---|---|---|---|---|---|"
    );
    let mut configs: Vec<&str> = Vec::new();
    for run in &results.runs {
        if !configs.contains(&run.config.as_str()) {
            configs.push(&run.config);
        }
    }
    for config in configs {
        let runs: Vec<&RunResult> = results.runs.iter().filter(|r| r.config == config).collect();
        let ranking: Vec<&RankingMetrics> =
            runs.iter().filter_map(|r| r.metrics.ranking()).collect();
        let (hr, hr_sd) = mean_std(&ranking.iter().map(|m| m.hit_ratio).collect::<Vec<_>>());
        let (ndcg, ndcg_sd) = mean_std(&ranking.iter().map(|m| m.ndcg).collect::<Vec<_>>());
        let (secs, _) = mean_std(&runs.iter().map(|r| r.train_seconds).collect::<Vec<_>>());
        let (rate, _) = mean_std(
            &runs
                .iter()
                .map(|r| r.samples_per_second)
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            out,
            "| {config} | {} | {hr:.4} ± {hr_sd:.4} | {ndcg:.4} ± {ndcg_sd:.4} | {secs:.1} | {rate:.0} |",
            runs.len()
        );
    }
    out
}

pub fn run(file: &Path, options: RunOptions, stop: &AtomicBool) -> Result<RankingResults> {
    if options.data.is_some() {
        bail!(
            "--data is for classification jobs; a recommendation job names its dataset in `data:`"
        );
    }
    let (mut spec, file) = RecommendationSpec::load(file)?;
    if let Some(epochs) = options.epochs {
        let epochs = fedmesh_split::limits::checked_epochs("--epochs", epochs)
            .map_err(anyhow::Error::msg)?;
        spec.training.epochs = epochs;
    }
    let configs: Vec<RunConfig> = if options.configs.is_empty() {
        RANKING_CONFIGS.to_vec()
    } else {
        options
            .configs
            .iter()
            .map(|c| c.parse::<RunConfig>().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    let seeds: Vec<u64> = match options.seeds {
        Some(0) => bail!("--seeds must be at least 1"),
        Some(n) => spec.seeds.iter().copied().take(n).collect(),
        None => spec.seeds.clone(),
    };
    let out = options.out.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Path::new("runs").join(format!("{}-{stamp}", spec.name))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    println!(
        "reading the sales, customer and product products of `{}`…",
        spec.name
    );
    let prepared = spec.prepare(&file)?;
    let interactions = &prepared.data.interactions;
    let mut results = RankingResults {
        example: prepared.spec.name.clone(),
        description: prepared.spec.description.clone(),
        users: interactions.users.len(),
        items: interactions.items.len(),
        interactions: interactions.events.len(),
        split: prepared.split.source.clone(),
        test_users: prepared.split.test.len(),
        runs: Vec::new(),
    };
    println!(
        "{} users, {} items, {} interactions; {} held out ({})",
        results.users, results.items, results.interactions, results.test_users, results.split
    );
    let submitted = AnyJob::Recommendation(Box::new(prepared.spec.clone()));
    for config in &configs {
        for &seed in &seeds {
            let progress = RunProgress::new(
                format!("{} seed {seed}", config.name()),
                prepared.spec.training.epochs,
            );
            let outcome = match &options.mesh {
                Some(mesh) if MESH_CONFIGS.contains(config) => {
                    mesh.run(&submitted, config, seed, &progress, stop)
                }
                _ => prepared.run(config, seed, &progress, stop),
            };
            match outcome {
                Ok(result) => {
                    if let Some(m) = result.metrics.ranking() {
                        progress.finish(format!("HR@10 {:.4}, NDCG@10 {:.4}", m.hit_ratio, m.ndcg));
                    }
                    results.runs.push(result);
                    write_json(&out.join("results.json"), &results)?;
                }
                Err(SplitError::Interrupted) => {
                    progress.abandon();
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
    let table = table(&results);
    std::fs::write(
        out.join("report.md"),
        format!("# {}\n\n{table}", results.description),
    )?;
    println!("\n{table}");
    println!(
        "results: {}\nreport:  {}",
        out.join("results.json").display(),
        out.join("report.md").display()
    );
    Ok(results)
}
