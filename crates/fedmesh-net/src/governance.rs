//! Governance: runs split jobs over the mesh's domain nodes, and takes jobs from operators.
//!
//! [`Mesh::run`] is one configuration and seed of a job, over gRPC: it opens the job on every
//! domain's node, has the label owner draw the partition, and then drives the same
//! [`fedmesh_split::SplitTrainer`] as an in-process run, with [`GrpcTransport`] in place of the
//! in-process transport. [`GovernanceService`] is the `Governance` gRPC service that
//! `fedmesh job submit` talks to.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fedmesh_data::Partition;
use fedmesh_proto::Encoding;
use fedmesh_proto::v1::governance_server::Governance;
use fedmesh_proto::v1::{self, JobEvent, JobRequest, job_event};
use fedmesh_split::job::{Job, RunConfig, RunResult, WireBytes, WireEncoding};
use fedmesh_split::{EpochRecord, Observer, SplitError, SplitTrainer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::identity::authorize;
use crate::{GrpcTransport, MeshIdentity, NodeEndpoint};

/// The domain nodes governance reaches, and how.
pub struct Mesh {
    pub identity: MeshIdentity,
    pub nodes: Vec<NodeEndpoint>,
    /// The longest any one call to a node may take.
    pub deadline: Duration,
}

/// The configurations a mesh can run: the split ones (a centralized baseline would need every
/// domain's rows in one place).
pub const MESH_CONFIGS: [RunConfig; 2] = [RunConfig::SplitLabelSharing, RunConfig::SplitLabelOwner];

impl Mesh {
    /// Trains and evaluates one configuration of `job` for one seed on the domain nodes.
    /// `run_id` names the run on the nodes (their parts are saved under it); with `save_to`,
    /// governance saves its own parts there and every node saves its own.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        job: &Job,
        run_id: &str,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
    ) -> Result<RunResult, SplitError> {
        let (mut trainer, partition) = self.open(job, run_id, config, seed)?;
        let spec = &job.spec;
        let mut result = spec.train_and_evaluate(
            &mut trainer,
            &partition,
            config,
            seed,
            observer,
            stop,
            save_to,
        )?;
        let (to_domains, from_domains) = trainer.transport().bytes();
        result.wire = Some(WireBytes {
            encoding: spec.wire.encoding,
            to_domains,
            from_domains,
        });
        result.alignment = Some(trainer.transport().alignment().clone());
        // The run is trained, evaluated and saved: a node that does not acknowledge the end
        // costs a warning, not the run.
        if let Err(e) = trainer.transport_mut().finish() {
            tracing::warn!("run `{run_id}` finished, but {e}");
        }
        Ok(result)
    }

    /// Opens a run on the domain nodes: each loads and validates its product, the label owner
    /// draws the partition, every domain builds its bottom. Returns governance's trainer over
    /// the nodes, and the partition.
    pub fn open(
        &self,
        job: &Job,
        run_id: &str,
        config: &RunConfig,
        seed: u64,
    ) -> Result<(SplitTrainer<GrpcTransport>, Partition), SplitError> {
        let spec = &job.spec;
        if !MESH_CONFIGS.contains(config) {
            return Err(SplitError::Protocol(format!(
                "`{}` cannot run over the mesh: it needs every domain's rows in one place",
                config.name()
            )));
        }
        if spec.resample.is_some() {
            return Err(SplitError::Spec {
                path: job.file.clone(),
                message: "`resample` needs every domain's features in one place; it is not available over the mesh".into(),
            });
        }
        let nodes = spec
            .domains
            .iter()
            .map(|d| {
                self.nodes
                    .iter()
                    .find(|n| n.name == d.name)
                    .cloned()
                    .ok_or_else(|| {
                        SplitError::Protocol(format!(
                            "the mesh has no node for domain `{}` (known: {})",
                            d.name,
                            self.nodes
                                .iter()
                                .map(|n| n.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let share_labels = *config == RunConfig::SplitLabelSharing;
        let encoding = match spec.wire.encoding {
            WireEncoding::F32 => Encoding::F32,
            WireEncoding::F16 => Encoding::F16,
            WireEncoding::Bf16 => Encoding::Bf16,
        };
        let start = v1::JobStart {
            job_id: run_id.to_string(),
            spec_yaml: job.to_portable_yaml()?,
            domain: String::new(),
            seed,
            encoding: encoding as i32,
            share_labels,
        };
        let transport = GrpcTransport::connect(
            &self.identity,
            &nodes,
            &spec.label.domain,
            start,
            self.deadline,
        )?;
        let partition = transport.partition().clone();
        let cut_width = transport.cut_width();
        tracing::info!(
            "run `{run_id}`: {} training, {} validation, {} test rows; cut layer {cut_width} wide",
            partition.train.len(),
            partition.valid.len(),
            partition.test.len()
        );
        let trainer = spec.split_trainer(transport, share_labels, cut_width, seed)?;
        fedmesh_split::job::seed_training_randomness(seed);
        Ok((trainer, partition))
    }
}

/// The `Governance` gRPC service: runs submitted jobs over the mesh, one thread per job.
pub struct GovernanceService {
    mesh: Arc<Mesh>,
    operators: Vec<String>,
    runs: PathBuf,
    jobs: RunningJobs,
}

/// The stop flags of the jobs in flight, so that shutting governance down stops them cleanly.
#[derive(Clone, Default)]
pub struct RunningJobs(Arc<Mutex<Vec<Weak<AtomicBool>>>>);

impl RunningJobs {
    fn add(&self, stop: &Arc<AtomicBool>) {
        let mut jobs = self.0.lock().expect("not poisoned");
        jobs.retain(|j| j.strong_count() > 0);
        jobs.push(Arc::downgrade(stop));
    }

    /// Asks every job in flight to stop after its current batch.
    pub fn stop_all(&self) {
        for job in self.0.lock().expect("not poisoned").iter() {
            if let Some(stop) = job.upgrade() {
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl GovernanceService {
    pub fn new(mesh: Mesh, operators: Vec<String>, runs: PathBuf) -> Self {
        Self {
            mesh: Arc::new(mesh),
            operators,
            runs,
            jobs: RunningJobs::default(),
        }
    }

    /// The jobs this service runs, to stop them on shutdown.
    pub fn running_jobs(&self) -> RunningJobs {
        self.jobs.clone()
    }
}

/// Tells the job's watcher the job ended, however it ends.
struct EndsWith(Arc<tokio::sync::Notify>);

impl Drop for EndsWith {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// What a job request asks to run.
struct Plan {
    job: Job,
    id: String,
    configs: Vec<RunConfig>,
    seeds: Vec<u64>,
}

fn plan(request: JobRequest) -> Result<Plan, String> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let origin = PathBuf::from("the submitted job spec");
    let mut job = Job::from_yaml(&request.spec_yaml, &origin).map_err(|e| e.to_string())?;
    // The name becomes a folder under `runs` here and on every node.
    let name = &job.spec.name;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(format!(
            "job name `{name}` must be letters, digits, `-`, `_` and `.` (it names the job's folders)"
        ));
    }
    if request.epochs > 0 {
        job.spec.training.epochs = request.epochs as usize;
    }
    let configs = if request.configs.is_empty() {
        MESH_CONFIGS.to_vec()
    } else {
        request
            .configs
            .iter()
            .map(|c| c.parse::<RunConfig>())
            .collect::<Result<Vec<_>, _>>()?
    };
    if let Some(c) = configs.iter().find(|c| !MESH_CONFIGS.contains(c)) {
        return Err(format!(
            "`{}` cannot run over the mesh: it needs every domain's rows in one place (run it with `fedmesh run`)",
            c.name()
        ));
    }
    let seeds = if request.seeds.is_empty() {
        job.spec.seeds.clone()
    } else {
        request.seeds
    };
    let id = format!("{}-{stamp}", job.spec.name);
    Ok(Plan {
        job,
        id,
        configs,
        seeds,
    })
}

/// Sends a job's progress to its submitter. `stop` is set when the submitter goes away (by the
/// watcher in `submit_job`), and read by the training loop.
struct Reporter {
    events: mpsc::Sender<Result<JobEvent, Status>>,
    stop: Arc<AtomicBool>,
}

impl Reporter {
    fn send(&self, body: job_event::Body) {
        // A submitter that went away is the watcher's to notice: nothing to do here.
        let _ = self.events.blocking_send(Ok(JobEvent { body: Some(body) }));
    }
}

impl Observer for Reporter {
    fn epoch_done(&self, record: &EpochRecord) {
        let json = serde_json::to_string(record).expect("epoch records serialize");
        self.send(job_event::Body::EpochJson(json));
    }
}

fn run_job(mesh: &Mesh, plan: &Plan, runs: &Path, reporter: &Reporter) -> Result<(), SplitError> {
    let job_dir = runs.join(&plan.id);
    std::fs::create_dir_all(&job_dir)?;
    let mut results = Vec::new();
    for config in &plan.configs {
        for &seed in &plan.seeds {
            let run_name = format!("{}-seed{seed}", config.name());
            tracing::info!("job `{}`: run {run_name}", plan.id);
            reporter.send(job_event::Body::RunStarted(v1::RunStarted {
                config: config.name(),
                seed,
                epochs: plan.job.spec.training.epochs as u32,
            }));
            let result = mesh.run(
                &plan.job,
                &format!("{}/{run_name}", plan.id),
                config,
                seed,
                reporter,
                &reporter.stop,
                Some(&job_dir.join(&run_name)),
            )?;
            let json = serde_json::to_string(&result).expect("run results serialize");
            reporter.send(job_event::Body::RunJson(json));
            results.push(result);
            // Written after every run, replacing the file whole, so that an interrupted job
            // keeps what it finished.
            let path = job_dir.join("results.json");
            let staged = job_dir.join("results.json.partial");
            std::fs::write(
                &staged,
                serde_json::to_vec_pretty(&results).expect("run results serialize"),
            )?;
            std::fs::rename(staged, path)?;
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Governance for GovernanceService {
    type SubmitJobStream = ReceiverStream<Result<JobEvent, Status>>;

    async fn submit_job(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<Self::SubmitJobStream>, Status> {
        let caller = authorize(&request, &self.operators)?;
        let plan = plan(request.into_inner()).map_err(Status::invalid_argument)?;
        tracing::info!(
            "`{caller}` submitted job `{}`: {} × seeds {:?}",
            plan.id,
            plan.configs
                .iter()
                .map(RunConfig::name)
                .collect::<Vec<_>>()
                .join(", "),
            plan.seeds
        );
        let (events, outbound) = mpsc::channel(64);
        let mesh = self.mesh.clone();
        let runs = self.runs.clone();
        let stop = Arc::new(AtomicBool::new(false));
        self.jobs.add(&stop);
        // A submitter that goes away cancels the job at once, not at the next event. The
        // watcher lets go of the stream when the job ends, so that the stream ends too.
        let ended = Arc::new(tokio::sync::Notify::new());
        {
            let events = events.clone();
            let stop = stop.clone();
            let ended = ended.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = events.closed() => stop.store(true, Ordering::SeqCst),
                    _ = ended.notified() => {}
                }
            });
        }
        std::thread::spawn(move || {
            let reporter = Reporter { events, stop };
            let _ended = EndsWith(ended);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_job(&mesh, &plan, &runs, &reporter)
            }));
            let failure = match outcome {
                Ok(Ok(())) => {
                    tracing::info!("job `{}` done", plan.id);
                    reporter.send(job_event::Body::Done(v1::Empty {}));
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!(
                    "governance failed on an internal error: {}",
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)")
                ),
            };
            tracing::warn!("job `{}` failed: {failure}", plan.id);
            reporter.send(job_event::Body::Failure(v1::Failure { reason: failure }));
        });
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}
