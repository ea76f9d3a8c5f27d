//! `fedmesh run` and `fedmesh quickstart`: train an example in every configuration and write
//! `results.json` and a report.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use fedmesh_net::client::JobProgress;
use fedmesh_net::{MeshIdentity, NodeEndpoint};
use fedmesh_proto::v1::JobRequest;
use fedmesh_split::AnyJob;
use fedmesh_split::PreparedAnyJob;
use fedmesh_split::SplitError;
use fedmesh_split::job::{AlignmentMethod, Job, RunConfig, RunResult, write_split_keys};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use crate::mesh::{LocalMesh, MeshLayout, Ports};
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
    /// A recommendation job's data: `rows` counts its interactions, `train_rows` the
    /// training positives, `test_rows` the held-out users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactions: Option<InteractionCounts>,
    pub runs: Vec<RunResult>,
}

/// What a recommendation job's interactions hold, and where its split comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InteractionCounts {
    pub users: usize,
    pub items: usize,
    /// Distinct (user, item) interactions.
    pub interactions: usize,
    /// A standard split's file, or the seed the split was derived from.
    pub split: String,
}

#[derive(Default)]
pub struct RunOptions {
    pub data: Option<PathBuf>,
    pub seeds: Option<usize>,
    pub configs: Vec<String>,
    pub epochs: Option<usize>,
    pub out: Option<PathBuf>,
    /// Run the split configurations on this mesh's nodes instead of in this process.
    pub mesh: Option<MeshClient>,
}

/// A connection to a mesh's governance, as an operator.
pub struct MeshClient {
    pub runtime: Runtime,
    pub identity: MeshIdentity,
    pub governance: NodeEndpoint,
}

impl MeshClient {
    /// An operator of the mesh whose folder is `dir` (as `fedmesh mesh up` writes it).
    pub fn of(dir: &Path) -> Result<Self> {
        let (identity, governance) = MeshLayout {
            dir: dir.to_path_buf(),
        }
        .operator()?;
        Ok(Self {
            runtime: Runtime::new()?,
            identity,
            governance,
        })
    }

    /// Submits a job and follows it to its end; `stop` cancels it (the job's record and its
    /// finished runs stay at governance).
    pub fn submit(
        &self,
        request: JobRequest,
        mut progress: impl FnMut(JobProgress),
        stop: &AtomicBool,
    ) -> Result<Vec<RunResult>, SplitError> {
        let mut job_id = None;
        let outcome = self.runtime.block_on(async {
            tokio::select! {
                results = fedmesh_net::client::submit(&self.identity, &self.governance, request, &mut progress, &mut job_id) => results,
                _ = crate::mesh::stopped(stop) => Err(SplitError::Interrupted),
            }
        });
        if let (Err(SplitError::Interrupted), Some(id)) = (&outcome, &job_id) {
            let cancelled = self.runtime.block_on(async {
                fedmesh_net::client::Operator::connect(&self.identity, &self.governance)
                    .await?
                    .cancel(id)
                    .await
            });
            match cancelled {
                Ok(_) => eprintln!("job `{id}` cancelled"),
                Err(e) => eprintln!("could not cancel job `{id}`: {e}"),
            }
        }
        outcome
    }

    /// One configuration and seed of `job` on the mesh.
    pub fn run(
        &self,
        job: &AnyJob,
        config: &RunConfig,
        seed: u64,
        progress: &RunProgress,
        stop: &AtomicBool,
    ) -> Result<RunResult, SplitError> {
        let request = JobRequest {
            spec_yaml: job.to_portable_yaml()?,
            configs: vec![config.name()],
            seeds: vec![seed],
            epochs: 0,
        };
        let results = self.submit(
            request,
            |event| match event {
                JobProgress::Epoch(record) => progress.remote_epoch_done(&record),
                JobProgress::State { state, .. } => progress.state(&state),
                JobProgress::Log(line) => progress.println(&format!("  {line}")),
                _ => {}
            },
            stop,
        )?;
        results
            .into_iter()
            .next()
            .ok_or_else(|| SplitError::Governance {
                name: self.governance.name.clone(),
                message: "reported no result for the run".into(),
            })
    }
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

/// Writes the embedded fraud example to `dir`; returns `dir`.
pub fn write_fraud_example(dir: &Path) -> Result<PathBuf> {
    for (name, text) in FRAUD_EXAMPLE {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("file in a folder"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir.to_path_buf())
}

pub fn quickstart(out: Option<PathBuf>, seeds: usize, stop: &AtomicBool) -> Result<()> {
    let started = std::time::Instant::now();
    let out = out.unwrap_or_else(|| default_out("quickstart"));
    let example = write_fraud_example(&out.join("example"))?;
    println!(
        "fedmesh quickstart: the fraud example (digital, retail, fraud-prevention) written to {}",
        example.display()
    );
    let job = Job::load(&example)?;
    let runtime = Runtime::new()?;
    let mut mesh = LocalMesh::start(
        &crate::mesh::job_domains(&job),
        &out.join("mesh"),
        Ports::Any,
        None,
        job.example_path().as_deref(),
        true,
    )?;
    mesh.wait_ready(&runtime, std::time::Duration::from_secs(30))?;
    println!(
        "mesh up: {} (separate processes, mutual TLS; logs in {})",
        mesh.endpoints()
            .iter()
            .map(|e| format!("{} {}", e.name, e.url))
            .collect::<Vec<_>>()
            .join(", "),
        mesh.layout.dir.join("logs").display()
    );
    println!(
        "the centralized baseline runs in this process (it needs every domain's rows in one place); the split runs on the mesh"
    );
    let client = MeshClient::of(&mesh.layout.dir)?;
    run(
        &example,
        RunOptions {
            mesh: Some(client),
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
    let mut logs = Vec::new();
    for check in crate::ops::check_mesh_logs(&mesh.layout.dir)? {
        match (&check.intact, check.problems.first()) {
            (Some(intact), None) => logs.push(format!(
                "{} {} records, {} anchors",
                check.name, intact.records, check.anchors_checked
            )),
            (_, problem) => bail!(
                "the audit log of `{}` does not verify: {}",
                check.name,
                problem.map_or("its chain is broken", String::as_str)
            ),
        }
    }
    println!(
        "audit logs intact, signed and anchored in each other ({}); `fedmesh audit verify --mesh {}` checks them again",
        logs.join("; "),
        mesh.layout.dir.display()
    );
    mesh.stop();
    println!(
        "mesh stopped; quickstart took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `fedmesh run`: every configuration of a job of any task, for each seed, in this process (or
/// its split configurations on a mesh); `results.json` after every run and the report at the
/// end.
pub fn run(example: &Path, options: RunOptions, stop: &AtomicBool) -> Result<Results> {
    let mut job = AnyJob::load(example)?;
    if let Some(epochs) = options.epochs {
        let epochs = fedmesh_split::limits::checked_epochs("--epochs", epochs)
            .map_err(anyhow::Error::msg)?;
        job.set_epochs(epochs)?;
    }
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| default_out(job.name()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    // Checked before any data is read: a typo should not cost a load.
    let chosen: Vec<RunConfig> = options
        .configs
        .iter()
        .map(|c| c.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    println!(
        "loading and validating the data products of `{}`…",
        job.name()
    );
    let prepared = job.prepare(options.data.as_deref())?;
    if let PreparedAnyJob::Vertical(vertical) = &prepared
        && let Some(keys) = &vertical.keys
    {
        let files = write_split_keys(&out, keys, &vertical.partition)?;
        println!(
            "validation and test keys: {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut results = describe(&job, &prepared, options.mesh.is_some());
    let configs = if chosen.is_empty() {
        prepared.configs()
    } else {
        chosen
    };
    if options.mesh.is_none() {
        note_mesh_denials(&job, example, &configs);
    }
    let seeds = first_seeds(job.seeds(), options.seeds)?;
    for config in &configs {
        for &seed in &seeds {
            let label = format!("{} seed {seed}", config.name());
            let progress = RunProgress::new(label, job.epochs());
            let models = out
                .join("models")
                .join(format!("{}-seed{seed}", config.name().replace(':', "-")));
            let outcome = match &options.mesh {
                Some(mesh) if job.mesh_configs().contains(config) => {
                    mesh.run(&job, config, seed, &progress, stop)
                }
                _ => prepared.run(config, seed, &progress, stop, Some(&models)),
            };
            match outcome {
                Ok(result) => {
                    progress.finish(format!(
                        "{} {:.4} in {:.1} s",
                        result.metrics.headline_name(),
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
    finish(&out, &results)?;
    Ok(results)
}

/// This process runs what a mesh might refuse: says, before training, which of `configs` a mesh
/// with the example policies would deny and the first reason (`fedmesh check` gives them all).
fn note_mesh_denials(job: &AnyJob, path: &Path, configs: &[RunConfig]) {
    let options = crate::check::CheckOptions {
        mesh: None,
        policies: None,
        requester: "operator".into(),
    };
    let admission = match crate::check::admission(job, &options) {
        Ok(admission) => admission,
        Err(e) => {
            tracing::debug!("no admission check before the run: {e:#}");
            return;
        }
    };
    for (config, reasons) in &admission.reasons {
        if let (true, Some(first)) = (configs.contains(config), reasons.first()) {
            println!(
                "note: a mesh would deny {} ({first}); `fedmesh check {}` lists every reason",
                config.name(),
                path.display()
            );
        }
    }
}

/// Says what was read (and, for a vertical job, how its products were aligned) and returns the
/// results' header.
fn describe(job: &AnyJob, prepared: &PreparedAnyJob, on_mesh: bool) -> Results {
    match prepared {
        PreparedAnyJob::Vertical(prepared) => {
            let alignment = &prepared.alignment;
            if alignment.method == AlignmentMethod::PrivateSetIntersection {
                let sizes: Vec<String> = alignment
                    .products
                    .iter()
                    .map(|p| format!("{} {}", p.domain, p.rows))
                    .collect();
                println!(
                    "aligned on the products' keys: {} entities common to all {} products (rows: {}){}",
                    alignment.intersection,
                    alignment.products.len(),
                    sizes.join(", "),
                    if on_mesh {
                        "; the mesh finds the same by private set intersection for each split run"
                    } else {
                        ""
                    }
                );
            }
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
            Results {
                example: job.name().to_string(),
                description: job.description().to_string(),
                source: prepared.source.clone(),
                rows: prepared.rows,
                train_rows: prepared.partition.train.len(),
                valid_rows: prepared.partition.valid.len(),
                test_rows: prepared.partition.test.len(),
                interactions: None,
                runs: Vec::new(),
            }
        }
        PreparedAnyJob::Recommendation(prepared) => {
            let data = &prepared.interactions;
            let interactions = InteractionCounts {
                users: data.users.len(),
                items: data.items.len(),
                interactions: data.events.len(),
                split: prepared.split.source.clone(),
            };
            let source = match &prepared.spec.data.path {
                Some(path) => format!(
                    "{:?} reader of {}",
                    prepared.spec.data.format,
                    path.display()
                ),
                None => "each domain's own table".to_string(),
            };
            println!(
                "{} users, {} items, {} interactions from {source}; {} held out ({})",
                interactions.users,
                interactions.items,
                interactions.interactions,
                prepared.split.test.len(),
                interactions.split
            );
            Results {
                example: job.name().to_string(),
                description: job.description().to_string(),
                source,
                rows: interactions.interactions,
                train_rows: prepared.split.train.len(),
                valid_rows: 0,
                test_rows: prepared.split.test.len(),
                interactions: Some(interactions),
                runs: Vec::new(),
            }
        }
        PreparedAnyJob::Horizontal(prepared) => {
            let (_, partition) = prepared.pooled_labels();
            let rows: Vec<String> = prepared
                .parties
                .iter()
                .map(|p| format!("{} {}", p.name, p.features.rows))
                .collect();
            let spec = &prepared.spec;
            println!(
                "{} rows in {} domains ({}) from {} ({} train, {} validation, {} test); {} over {} rounds of {} local epoch(s)",
                partition.len(),
                prepared.parties.len(),
                rows.join(", "),
                prepared.source,
                partition.train.len(),
                partition.valid.len(),
                partition.test.len(),
                spec.technique,
                spec.federation.rounds,
                spec.training.epochs
            );
            Results {
                example: job.name().to_string(),
                description: job.description().to_string(),
                source: prepared.source.clone(),
                rows: partition.len(),
                train_rows: partition.train.len(),
                valid_rows: partition.valid.len(),
                test_rows: partition.test.len(),
                interactions: None,
                runs: Vec::new(),
            }
        }
    }
}

/// Writes the outputs and prints the table and where they are.
fn finish(out: &Path, results: &Results) -> Result<()> {
    write_outputs(out, results)?;
    println!("\n{}", report::table(results));
    println!(
        "results: {}\nreport:  {}",
        out.join("results.json").display(),
        out.join("report.md").display()
    );
    Ok(())
}

fn write_outputs(out: &Path, results: &Results) -> Result<()> {
    write_json(&out.join("results.json"), results)?;
    report::write(out, results)
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

/// The seeds `--seeds N` asks for: the spec's first N (then 1, 2, … past its list), or all of
/// the spec's without it.
pub fn first_seeds(spec: &[u64], count: Option<usize>) -> Result<Vec<u64>> {
    match count {
        Some(0) => bail!("--seeds must be at least 1"),
        Some(n) => Ok((1..=n as u64)
            .map(|i| spec.get(i as usize - 1).copied().unwrap_or(i))
            .collect()),
        None => Ok(spec.to_vec()),
    }
}

/// `runs/NAME-TIME`, where a command writes its outputs when not told.
pub fn default_out(name: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("{name}-{stamp}"))
}

/// `fedmesh job submit`: runs a job's split configurations on a running mesh and writes
/// `results.json` and the report, as `fedmesh run` does.
pub fn submit(
    job: &Path,
    mesh: &Path,
    configs: Vec<String>,
    seeds: Vec<u64>,
    epochs: Option<u32>,
    out: Option<PathBuf>,
    stop: &AtomicBool,
) -> Result<Results> {
    let job = AnyJob::load(job)?;
    let client = MeshClient::of(mesh)?;
    let out = out.unwrap_or_else(|| default_out(job.name()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let epochs = epochs.map_or(job.epochs(), |e| e as usize);
    let request = JobRequest {
        spec_yaml: job.to_portable_yaml()?,
        configs,
        seeds,
        epochs: epochs as u32,
    };
    println!(
        "submitting `{}` to {} at {}",
        job.name(),
        client.governance.name,
        client.governance.url
    );
    let mut current: Option<RunProgress> = None;
    let mut finished: Vec<RunResult> = Vec::new();
    let runs = client.submit(
        request,
        |event| match event {
            JobProgress::RunStarted(started) => {
                current = Some(RunProgress::new(
                    format!("{} seed {}", started.config, started.seed),
                    started.epochs as usize,
                ));
            }
            JobProgress::Epoch(record) => {
                if let Some(progress) = &current {
                    progress.remote_epoch_done(&record);
                }
            }
            JobProgress::RunDone(result) => {
                if let Some(progress) = current.take() {
                    progress.finish(format!(
                        "{} {:.4} in {:.1} s",
                        result.metrics.headline_name(),
                        result.metrics.headline(),
                        result.train_seconds
                    ));
                }
                finished.push(*result);
            }
            JobProgress::State { state, reason } => match &current {
                Some(progress) => progress.state(&state),
                None if reason.is_empty() => println!("{state}"),
                None => println!("{state}: {reason}"),
            },
            JobProgress::Log(line) => match &current {
                Some(progress) => progress.println(&line),
                None => println!("{line}"),
            },
        },
        stop,
    );
    if let Some(progress) = current {
        progress.abandon();
    }
    let failure = runs.err();
    let runs = finished;
    let first = runs.first();
    let results = Results {
        example: job.name().to_string(),
        description: job.description().to_string(),
        source: format!("the domain nodes of {}", mesh.display()),
        rows: first.map_or(0, |r| r.train_rows + r.valid_rows + r.test_rows),
        train_rows: first.map_or(0, |r| r.train_rows),
        valid_rows: first.map_or(0, |r| r.valid_rows),
        test_rows: first.map_or(0, |r| r.test_rows),
        interactions: None,
        runs,
    };
    if let Some(failure) = failure {
        // What finished before the failure or the interruption is kept.
        if !results.runs.is_empty() {
            write_outputs(&out, &results)?;
            eprintln!(
                "{} finished runs are in {}",
                results.runs.len(),
                out.join("results.json").display()
            );
        }
        return Err(failure.into());
    }
    finish(&out, &results)?;
    Ok(results)
}

/// `fedmesh job submit --detach`: submits a job and returns once governance has admitted or
/// denied it.
pub fn submit_detached(
    job: &Path,
    mesh: &Path,
    configs: Vec<String>,
    seeds: Vec<u64>,
    epochs: Option<u32>,
) -> Result<()> {
    let job = AnyJob::load(job)?;
    let client = MeshClient::of(mesh)?;
    let request = JobRequest {
        spec_yaml: job.to_portable_yaml()?,
        configs,
        seeds,
        epochs: epochs.unwrap_or(0),
    };
    let record = client.runtime.block_on(async {
        fedmesh_net::client::Operator::connect(&client.identity, &client.governance)
            .await?
            .submit(request)
            .await
    })?;
    let id = record["id"].as_str().unwrap_or_default();
    let state = record["state"].as_str().unwrap_or_default();
    let reason = record["reason"].as_str().unwrap_or_default();
    println!("job `{id}` {state}: {reason}");
    if state == "denied" {
        bail!("job `{id}` was denied");
    }
    println!(
        "follow it with `fedmesh job logs {id} --follow --mesh {}`",
        mesh.display()
    );
    Ok(())
}
