//! The `Governance` gRPC service: jobs, the catalog, and what each did on record.
//!
//! A submitted job is recorded before anything else happens, admitted or denied
//! ([`crate::admission`]), and then runs on a thread of its own while its state and events go to
//! the [`Store`], which is what `fedmesh job status | logs | list` and `watch` read. Nothing of a
//! job lives only in memory except its stop flag.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Mesh, MeshRun};
use fedmesh_audit::{AuditLog, Entry};
use fedmesh_data::DataContract;
use fedmesh_data::QualityReport;
use fedmesh_net::identity::authorize;
use fedmesh_policy::{Denial, Policies};
use fedmesh_proto::v1::governance_server::Governance;
use fedmesh_proto::v1::{self, JobEvent, JobRequest, job_event};
use fedmesh_split::job::{RunConfig, RunResult};
use fedmesh_split::{AnyJob, EpochRecord, Observer, SplitError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::admission::{Admission, admit};
use crate::store::{
    EventKind, JobEventRecord, JobRecord, JobState, ModelEntry, ModelInput, ModelPart,
    ProductEntry, Store, StoreError, now_ms,
};

/// Everything the service's handlers and job threads share.
pub struct GovernanceState {
    pub name: String,
    pub mesh: Mesh,
    /// Certificate names allowed to submit jobs and read the catalog.
    pub operators: Vec<String>,
    pub runs: PathBuf,
    /// The mesh's policies, read again for every job so that edits apply without a restart.
    pub policies: PathBuf,
    pub store: Store,
    /// Governance's audit log, shared with the run driver, which anchors the nodes' logs in it.
    pub audit: Arc<AuditLog>,
    /// The stop flag of each job in flight, and whether it was a cancel.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    cancelled: Mutex<Vec<String>>,
}

impl GovernanceState {
    pub fn new(
        name: String,
        mesh: Mesh,
        operators: Vec<String>,
        runs: PathBuf,
        policies: PathBuf,
        store: Store,
        audit: AuditLog,
    ) -> Self {
        let audit = Arc::new(audit);
        let mut mesh = mesh;
        mesh.audit = Some(audit.clone());
        Self {
            name,
            mesh,
            operators,
            runs,
            policies,
            store,
            audit,
            running: Mutex::default(),
            cancelled: Mutex::default(),
        }
    }

    /// Appends to governance's audit log. The log fails closed: a job whose steps cannot be
    /// recorded stops, and a request whose decision cannot be recorded is refused.
    fn audit(&self, entry: Entry) -> Result<(), SplitError> {
        self.audit.append(entry).map(|_| ()).map_err(|e| {
            tracing::error!("cannot write the audit log: {e}");
            SplitError::AuditFailed(e.to_string())
        })
    }

    fn entry(&self, action: &str, subject: &str) -> Entry {
        Entry::new(self.name.clone(), action, subject)
    }

    /// Asks every job in flight to stop after its current batch (governance is shutting down).
    pub fn stop_all(&self) {
        for stop in self.running.lock().expect("not poisoned").values() {
            stop.store(true, Ordering::SeqCst);
        }
    }

    /// The domains of the mesh: the only callers that may register products.
    fn domains(&self) -> Vec<String> {
        self.mesh.nodes.iter().map(|n| n.name.clone()).collect()
    }
}

/// The `Governance` gRPC service.
#[derive(Clone)]
pub struct GovernanceService {
    state: Arc<GovernanceState>,
}

impl GovernanceService {
    pub fn new(state: Arc<GovernanceState>) -> Self {
        Self { state }
    }
}

/// A request whose decision could not be written to the audit log is refused.
fn unrecorded(e: SplitError) -> Status {
    Status::internal(e.to_string())
}

fn internal(e: StoreError) -> Status {
    match e {
        StoreError::NoJob(_) | StoreError::NoProduct(_) | StoreError::NoModel(_) => {
            Status::not_found(e.to_string())
        }
        StoreError::Transition { .. } => Status::failed_precondition(e.to_string()),
        StoreError::Sqlite { .. } => Status::internal(e.to_string()),
    }
}

fn json(value: &impl Serialize) -> Response<v1::Json> {
    Response::new(v1::Json {
        json: serde_json::to_string(value).expect("records serialize"),
    })
}

/// A job as listed: its record without the spec.
#[derive(Serialize)]
struct JobSummary<'a> {
    id: &'a str,
    name: &'a str,
    state: JobState,
    reason: &'a str,
    submitted_by: &'a str,
    submitted_ms: i64,
    updated_ms: i64,
}

impl<'a> From<&'a JobRecord> for JobSummary<'a> {
    fn from(job: &'a JobRecord) -> Self {
        Self {
            id: &job.id,
            name: &job.name,
            state: job.state,
            reason: &job.reason,
            submitted_by: &job.submitted_by,
            submitted_ms: job.submitted_ms,
            updated_ms: job.updated_ms,
        }
    }
}

/// What a job request asks to run.
#[derive(Debug, Clone)]
struct Plan {
    job: AnyJob,
    id: String,
    configs: Vec<RunConfig>,
    seeds: Vec<u64>,
}

fn plan(request: &JobRequest) -> Result<Plan, String> {
    let origin = PathBuf::from("the submitted job spec");
    let mut job = AnyJob::from_yaml(&request.spec_yaml, &origin).map_err(|e| e.to_string())?;
    // Governance reads no file a job spec names (it would read its own disk for a stranger).
    if let AnyJob::Vertical(vertical) = &job
        && let Some(keys) = &vertical.spec.split.test_keys
    {
        return Err(format!(
            "the job spec names a file of test keys (`split.test_keys: {}`): governance reads no file a job spec names; send the keys themselves (`split.test_key_values`), as `fedmesh job submit` does",
            keys.display()
        ));
    }
    // The name becomes a folder under `runs` here and on every node.
    let name = job.name();
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
        job.set_epochs(request.epochs as usize)
            .map_err(|e| e.to_string())?;
    }
    let mesh_configs = job.mesh_configs();
    let configs = if request.configs.is_empty() {
        mesh_configs.clone()
    } else {
        request
            .configs
            .iter()
            .map(|c| c.parse::<RunConfig>())
            .collect::<Result<Vec<_>, _>>()?
    };
    if let Some(c) = configs.iter().find(|c| !mesh_configs.contains(c)) {
        return Err(format!(
            "`{}` cannot run over the mesh: it needs every domain's rows in one place (run it with `fedmesh run`)",
            c.name()
        ));
    }
    let seeds = if request.seeds.is_empty() {
        job.seeds().to_vec()
    } else {
        request.seeds.clone()
    };
    let id = format!("{}-{}", job.name(), now_ms());
    Ok(Plan {
        job,
        id,
        configs,
        seeds,
    })
}

/// The millisecond stamp of a job id (`<name>-<ms>` or `<name>-<ms>-<n>`).
fn record_stamp(id: &str) -> &str {
    id.rsplit('-')
        .find(|part| part.len() >= 10 && part.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("0")
}

/// Writes a job's progress to the store, and moves it through its states.
struct JobObserver<'a> {
    state: &'a GovernanceState,
    id: &'a str,
    run: String,
}

impl JobObserver<'_> {
    fn set(&self, to: JobState) {
        if let Err(e) = self.state.store.set_state(self.id, to, &self.run) {
            tracing::warn!("job `{}`: {e}", self.id);
        }
    }

    fn event(&self, kind: EventKind, body: &str) {
        if let Err(e) = self.state.store.push_event(self.id, kind, body) {
            tracing::warn!("job `{}`: cannot record an event: {e}", self.id);
        }
    }

    fn log(&self, line: &str) {
        tracing::info!("job `{}`: {line}", self.id);
        self.event(EventKind::Log, line);
    }
}

impl Observer for JobObserver<'_> {
    fn training_started(&self) {
        self.set(JobState::Training);
    }

    fn evaluation_started(&self) {
        self.set(JobState::Evaluating);
    }

    fn epoch_done(&self, record: &EpochRecord) {
        let json = serde_json::to_string(record).expect("epoch records serialize");
        self.event(EventKind::Epoch, &json);
    }
}

/// SHA-256 of a run's metrics (hex, first 16 bytes): the audit log's fingerprint of what a model
/// scored, checkable against `results.json`.
fn metrics_digest(result: &RunResult) -> String {
    let json = serde_json::to_string(&result.metrics).expect("metrics serialize");
    Sha256::digest(json.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run_job(
    state: &GovernanceState,
    plan: &Plan,
    requester: &str,
    admission: &Admission,
    stop: &AtomicBool,
) -> Result<(), SplitError> {
    let job_dir = state.runs.join(&plan.id);
    std::fs::create_dir_all(&job_dir)?;
    let mut results = Vec::new();
    let total = admission.configs.len() * plan.seeds.len();
    for config in &admission.configs {
        for &seed in &plan.seeds {
            let run_name = format!("{}-seed{seed}", config.name());
            let observer = JobObserver {
                state,
                id: &plan.id,
                run: format!(
                    "run {} of {total}: {} seed {seed}",
                    results.len() + 1,
                    config.name()
                ),
            };
            observer.set(JobState::Aligning);
            observer.event(
                EventKind::RunStarted,
                &serde_json::json!({
                    "config": config.name(),
                    "seed": seed,
                    "epochs": plan.job.epochs(),
                })
                .to_string(),
            );
            let run = MeshRun {
                id: &format!("{}/{run_name}", plan.id),
                requester,
                config,
                seed,
                save_to: Some(&job_dir.join(&run_name)),
            };
            let result = state.mesh.run(&plan.job, &run, &observer, stop)?;
            observer.event(
                EventKind::Run,
                &serde_json::to_string(&result).expect("run results serialize"),
            );
            observer.log(&format!(
                "{} seed {seed}: {} {:.4} on {} test rows, trained in {:.1} s",
                config.name(),
                result.metrics.headline_name(),
                result.metrics.headline(),
                result.test_rows,
                result.train_seconds
            ));
            if let Some(alignment) = &result.alignment {
                state.audit(
                    state
                        .entry("alignment.run", &plan.id)
                        .detail("run", &run_name)
                        .detail("method", alignment.method)
                        .detail("products", &alignment.products)
                        .detail("intersection", alignment.intersection),
                )?;
            }
            state.audit(
                state
                    .entry("training.run", &plan.id)
                    .detail("run", &run_name)
                    .detail(
                        "columns",
                        admission
                            .usages
                            .iter()
                            .map(|u| (u.domain.clone(), u.columns.clone()))
                            .collect::<std::collections::BTreeMap<_, _>>(),
                    )
                    .detail("label_domain", plan.job.label_domain())
                    .detail("labels_shared", *config == RunConfig::SplitLabelSharing)
                    .detail(
                        "rows",
                        [result.train_rows, result.valid_rows, result.test_rows],
                    )
                    .detail("epochs", result.history.len())
                    .detail("bytes", result.wire)
                    .detail("metrics_sha256", metrics_digest(&result)),
            )?;
            register_model(
                state, plan, &run_name, config, seed, admission, &result, &observer,
            )?;
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

/// Registers a trained run as the next version of the model named after the job.
#[allow(clippy::too_many_arguments)]
fn register_model(
    state: &GovernanceState,
    plan: &Plan,
    run_name: &str,
    config: &RunConfig,
    seed: u64,
    admission: &Admission,
    result: &RunResult,
    observer: &JobObserver<'_>,
) -> Result<(), SplitError> {
    let entry = ModelEntry {
        name: plan.job.name().to_string(),
        version: 0,
        job: plan.id.clone(),
        run: format!("{}/{run_name}", plan.id),
        config: config.name(),
        seed,
        parts: result
            .model_files
            .iter()
            .filter_map(|f| ModelPart::from_file(f))
            .collect(),
        inputs: admission
            .usages
            .iter()
            .map(|u| ModelInput {
                domain: u.domain.clone(),
                product: u.product.clone(),
                version: u.product_version.clone(),
            })
            .collect(),
        metrics_json: serde_json::to_string(&result.metrics).expect("metrics serialize"),
        created_ms: now_ms(),
    };
    match state.store.register_model(&entry) {
        Ok(version) => {
            let how = match &plan.job {
                AnyJob::Vertical(_) => format!(
                    "score with `fedmesh predict --model {}@{version} --keys FILE`",
                    entry.name
                ),
                AnyJob::Recommendation(_) => {
                    "its parts stay with their holders (rankings are not served yet)".into()
                }
                AnyJob::Horizontal(_) => format!(
                    "score with `fedmesh predict --model {}@{version} --keys FILE` (each key at the domain that holds it)",
                    entry.name
                ),
            };
            observer.log(&format!(
                "registered model `{}@{version}` ({run_name}); {how}",
                entry.name
            ));
            state.audit(
                state
                    .entry("model.registered", &format!("{}@{version}", entry.name))
                    .detail("job", &entry.job)
                    .detail("run", &entry.run)
                    .detail(
                        "parts",
                        entry
                            .parts
                            .iter()
                            .map(|p| format!("{} {} at {}", p.holder, p.layers, p.location))
                            .collect::<Vec<_>>(),
                    )
                    .detail("inputs", &entry.inputs)
                    .detail("metrics_sha256", metrics_digest(result)),
            )?;
        }
        Err(e) => observer.log(&format!("the model could not be registered: {e}")),
    }
    Ok(())
}

/// Runs an admitted job to its end on the calling thread, recording how it ended.
fn drive(state: &GovernanceState, plan: Plan, requester: String, admission: Admission) {
    let stop = state
        .running
        .lock()
        .expect("not poisoned")
        .get(&plan.id)
        .cloned()
        .unwrap_or_default();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_job(state, &plan, &requester, &admission, &stop)
    }));
    state.running.lock().expect("not poisoned").remove(&plan.id);
    let cancelled = state
        .cancelled
        .lock()
        .expect("not poisoned")
        .contains(&plan.id);
    let (to, reason) = match outcome {
        Ok(Ok(())) => (
            JobState::Done,
            format!(
                "{} runs done; results in {}",
                admission.configs.len() * plan.seeds.len(),
                state.runs.join(&plan.id).join("results.json").display()
            ),
        ),
        Ok(Err(SplitError::Interrupted)) if cancelled => (
            JobState::Cancelled,
            "cancelled by an operator; finished runs are kept".to_string(),
        ),
        Ok(Err(SplitError::Interrupted)) => (
            JobState::Failed,
            "governance stopped while the job ran; finished runs are kept".to_string(),
        ),
        Ok(Err(e)) => (JobState::Failed, e.to_string()),
        Err(panic) => (
            JobState::Failed,
            format!(
                "governance failed on an internal error: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            ),
        ),
    };
    tracing::info!("job `{}` {to}: {reason}", plan.id);
    // The audit record first: whoever sees the job's final state finds its record on file.
    if let Err(e) = state.audit(
        state
            .entry(&format!("job.{to}"), &plan.id)
            .detail("reason", &reason),
    ) {
        tracing::error!("job `{}`: its end is not on record: {e}", plan.id);
    }
    if let Err(e) = state.store.set_state(&plan.id, to, &reason) {
        tracing::error!("job `{}`: cannot record its end: {e}", plan.id);
    }
}

/// The job's stored events as the wire's, ending with `done` or `failure` for a final state.
fn to_wire(record: &JobEventRecord) -> Vec<JobEvent> {
    let event = |body| JobEvent {
        seq: record.seq,
        body: Some(body),
    };
    match record.kind {
        EventKind::Log => vec![event(job_event::Body::Log(record.body.clone()))],
        EventKind::Epoch => vec![event(job_event::Body::EpochJson(record.body.clone()))],
        EventKind::Run => vec![event(job_event::Body::RunJson(record.body.clone()))],
        EventKind::RunStarted => {
            let v: serde_json::Value = serde_json::from_str(&record.body).unwrap_or_default();
            vec![event(job_event::Body::RunStarted(v1::RunStarted {
                config: v["config"].as_str().unwrap_or_default().to_string(),
                seed: v["seed"].as_u64().unwrap_or_default(),
                epochs: v["epochs"].as_u64().unwrap_or_default() as u32,
            }))]
        }
        EventKind::State => {
            let v: serde_json::Value = serde_json::from_str(&record.body).unwrap_or_default();
            let mut events = vec![event(job_event::Body::StateJson(record.body.clone()))];
            let state: Option<JobState> = v["state"].as_str().and_then(|s| s.parse().ok());
            let reason = v["reason"].as_str().unwrap_or_default();
            match state {
                Some(JobState::Done) => events.push(event(job_event::Body::Done(v1::Empty {}))),
                Some(s) if s.is_final() => {
                    events.push(event(job_event::Body::Failure(v1::Failure {
                        reason: format!("{s}: {reason}"),
                    })))
                }
                _ => {}
            }
            events
        }
    }
}

impl GovernanceService {
    /// Records, admits and starts a job; returns its record.
    async fn submit(&self, caller: String, request: JobRequest) -> Result<JobRecord, Status> {
        let state = &self.state;
        let mut plan = plan(&request).map_err(Status::invalid_argument)?;
        // Two submissions of one job in the same millisecond get distinct ids.
        let mut suffix = 1;
        while state.store.job(&plan.id).is_ok() {
            suffix += 1;
            plan.id = format!("{}-{}-{suffix}", plan.job.name(), record_stamp(&plan.id));
        }
        let record = JobRecord {
            id: plan.id.clone(),
            name: plan.job.name().to_string(),
            submitted_by: caller.clone(),
            submitted_ms: now_ms(),
            updated_ms: now_ms(),
            state: JobState::Submitted,
            reason: String::new(),
            spec_yaml: request.spec_yaml.clone(),
            request_json: serde_json::json!({
                "configs": plan.configs.iter().map(RunConfig::name).collect::<Vec<_>>(),
                "seeds": plan.seeds,
                "epochs": plan.job.epochs(),
            })
            .to_string(),
        };
        state.store.add_job(&record).map_err(internal)?;
        state
            .audit(
                state
                    .entry("job.submitted", &plan.id)
                    .detail("by", &caller)
                    .detail("purpose", plan.job.purpose())
                    .detail("technique", plan.job.technique())
                    .detail(
                        "spec_sha256",
                        format!("{:x}", Sha256::digest(request.spec_yaml.as_bytes())),
                    ),
            )
            .map_err(unrecorded)?;
        tracing::info!("`{caller}` submitted job `{}`", plan.id);
        let policies = Policies::load(&state.policies).map_err(|e| e.to_string());
        let admitted = admit(
            &plan.job,
            &plan.id,
            &caller,
            &plan.configs,
            policies,
            &state.mesh.identity,
            &state.mesh.nodes,
            state.mesh.deadline,
        )
        .await;
        let admission = match admitted {
            Ok(admission) => admission,
            Err(denials) => {
                let reason = denials
                    .iter()
                    .map(Denial::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                state
                    .audit(
                        state
                            .entry("job.denied", &plan.id)
                            .detail("denials", &denials),
                    )
                    .map_err(unrecorded)?;
                state
                    .store
                    .set_state(&plan.id, JobState::Denied, &reason)
                    .map_err(internal)?;
                return state.store.job(&plan.id).map_err(internal);
            }
        };
        plan.configs = admission.configs.clone();
        let products: Vec<String> = admission
            .usages
            .iter()
            .map(|u| format!("{}/{} {}", u.domain, u.product, u.product_version))
            .collect();
        state
            .audit(
                state
                    .entry("job.admitted", &plan.id)
                    .detail(
                        "configs",
                        plan.configs.iter().map(RunConfig::name).collect::<Vec<_>>(),
                    )
                    .detail("seeds", &plan.seeds)
                    .detail("products", &products)
                    .detail("notes", &admission.notes),
            )
            .map_err(unrecorded)?;
        for note in &admission.notes {
            state
                .store
                .push_event(&plan.id, EventKind::Log, note)
                .map_err(internal)?;
        }
        state
            .store
            .set_state(
                &plan.id,
                JobState::Admitted,
                &format!(
                    "{} × seeds {:?} on {}",
                    plan.configs
                        .iter()
                        .map(RunConfig::name)
                        .collect::<Vec<_>>()
                        .join(", "),
                    plan.seeds,
                    products.join(", ")
                ),
            )
            .map_err(internal)?;
        let stop = Arc::new(AtomicBool::new(false));
        state
            .running
            .lock()
            .expect("not poisoned")
            .insert(plan.id.clone(), stop);
        // The record as admitted: the job's thread may move it on before the answer is sent.
        let admitted = state.store.job(&plan.id).map_err(internal)?;
        let shared = self.state.clone();
        std::thread::spawn(move || drive(&shared, plan, caller, admission));
        Ok(admitted)
    }
}

#[tonic::async_trait]
impl Governance for GovernanceService {
    type WatchJobStream = ReceiverStream<Result<JobEvent, Status>>;

    async fn submit_job(&self, request: Request<JobRequest>) -> Result<Response<v1::Json>, Status> {
        let caller = authorize(&request, &self.state.operators)?;
        let record = self.submit(caller, request.into_inner()).await?;
        Ok(json(&record))
    }

    async fn watch_job(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        authorize(&request, &self.state.operators)?;
        let watch = request.into_inner();
        self.state.store.job(&watch.id).map_err(internal)?;
        let (events, outbound) = mpsc::channel(64);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut after = watch.after;
            loop {
                let found = match state.store.events(&watch.id, after) {
                    Ok(found) => found,
                    Err(e) => {
                        let _ = events.send(Err(internal(e))).await;
                        return;
                    }
                };
                for record in &found {
                    after = record.seq;
                    for event in to_wire(record) {
                        if events.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
                let finished = match state.store.job(&watch.id) {
                    Ok(job) => job.state.is_final(),
                    Err(_) => true,
                };
                // A final job's last event is already stored: it was sent above.
                if !watch.follow || (finished && found.is_empty()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(outbound)))
    }

    async fn get_job(&self, request: Request<v1::JobRef>) -> Result<Response<v1::Json>, Status> {
        authorize(&request, &self.state.operators)?;
        let job = self
            .state
            .store
            .job(&request.into_inner().id)
            .map_err(internal)?;
        Ok(json(&job))
    }

    async fn list_jobs(&self, request: Request<v1::Empty>) -> Result<Response<v1::Json>, Status> {
        authorize(&request, &self.state.operators)?;
        let jobs = self.state.store.jobs().map_err(internal)?;
        Ok(json(&jobs.iter().map(JobSummary::from).collect::<Vec<_>>()))
    }

    async fn cancel_job(&self, request: Request<v1::JobRef>) -> Result<Response<v1::Json>, Status> {
        let caller = authorize(&request, &self.state.operators)?;
        let id = request.into_inner().id;
        let state = &self.state;
        let job = state.store.job(&id).map_err(internal)?;
        if job.state.is_final() {
            return Err(Status::failed_precondition(format!(
                "job `{id}` is {} already",
                job.state
            )));
        }
        state
            .store
            .push_event(
                &id,
                EventKind::Log,
                &format!("`{caller}` asked to cancel the job"),
            )
            .map_err(internal)?;
        let running = state
            .running
            .lock()
            .expect("not poisoned")
            .get(&id)
            .cloned();
        match running {
            Some(stop) => {
                state
                    .cancelled
                    .lock()
                    .expect("not poisoned")
                    .push(id.clone());
                stop.store(true, Ordering::SeqCst);
                state
                    .audit(
                        state
                            .entry("job.cancel-requested", &id)
                            .detail("by", &caller),
                    )
                    .map_err(unrecorded)?;
            }
            None => {
                state
                    .audit(state.entry("job.cancelled", &id).detail("by", &caller))
                    .map_err(unrecorded)?;
                state
                    .store
                    .set_state(
                        &id,
                        JobState::Cancelled,
                        &format!("cancelled by `{caller}`"),
                    )
                    .map_err(internal)?;
            }
        }
        Ok(json(&state.store.job(&id).map_err(internal)?))
    }

    async fn register_product(
        &self,
        request: Request<v1::ProductRegistration>,
    ) -> Result<Response<v1::Empty>, Status> {
        let domain = authorize(&request, &self.state.domains())?;
        let registration = request.into_inner();
        let contract = DataContract::from_yaml(&registration.contract_yaml)
            .map_err(|e| Status::invalid_argument(format!("the product's contract: {e}")))?;
        if let Some(declared) = &contract.domain
            && *declared != domain
        {
            return Err(Status::permission_denied(format!(
                "data product `{}` belongs to domain `{declared}`; `{domain}` cannot register it",
                contract.product_name()
            )));
        }
        let quality: QualityReport = if registration.quality_json.is_empty() {
            QualityReport::default()
        } else {
            serde_json::from_str(&registration.quality_json)
                .map_err(|e| Status::invalid_argument(format!("a malformed quality report: {e}")))?
        };
        let entry = ProductEntry {
            domain: domain.clone(),
            name: contract.product_name().to_string(),
            version: contract.version.clone(),
            status: contract.status.clone(),
            key_column: contract.key_column().map(|k| k.name.clone()),
            rows: registration.rows,
            schema_hash: contract.schema_hash(),
            contract_yaml: registration.contract_yaml.clone(),
            quality,
            registered_ms: now_ms(),
            updated_ms: now_ms(),
        };
        let before = self
            .state
            .store
            .product(&format!("{domain}/{}", entry.name))
            .ok();
        self.state
            .store
            .register_product(&entry)
            .map_err(internal)?;
        let changed = before
            .as_ref()
            .is_none_or(|b| b.version != entry.version || b.schema_hash != entry.schema_hash);
        if changed {
            self.state
                .audit(
                    self.state
                        .entry("product.registered", &format!("{domain}/{}", entry.name))
                        .detail("version", &entry.version)
                        .detail("schema_sha256", &entry.schema_hash)
                        .detail("previous_version", before.map(|b| b.version)),
                )
                .map_err(unrecorded)?;
        }
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_products(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::Json>, Status> {
        authorize(&request, &self.state.operators)?;
        let mut products = self.state.store.products().map_err(internal)?;
        for p in &mut products {
            p.contract_yaml.clear();
        }
        Ok(json(&products))
    }

    async fn list_models(&self, request: Request<v1::Empty>) -> Result<Response<v1::Json>, Status> {
        authorize(&request, &self.state.operators)?;
        Ok(json(&self.state.store.models().map_err(internal)?))
    }

    async fn get_model(
        &self,
        request: Request<v1::ModelRef>,
    ) -> Result<Response<v1::Json>, Status> {
        authorize(&request, &self.state.operators)?;
        let model = self
            .state
            .store
            .model(&request.into_inner().name)
            .map_err(internal)?;
        Ok(json(&model))
    }

    async fn predict(
        &self,
        request: Request<v1::PredictRequest>,
    ) -> Result<Response<v1::Json>, Status> {
        let caller = authorize(&request, &self.state.operators)?;
        let request = request.into_inner();
        let state = self.state.clone();
        let answer = tokio::task::spawn_blocking(move || predict(&state, &caller, request))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::Json { json: answer }))
    }

    async fn get_product(
        &self,
        request: Request<v1::ProductRef>,
    ) -> Result<Response<v1::Json>, Status> {
        authorize(&request, &self.state.operators)?;
        let product = self
            .state
            .store
            .product(&request.into_inner().name)
            .map_err(internal)?;
        Ok(json(&product))
    }
}

/// Scores `request.keys` with a registered model: governance's policies first (each domain
/// applies its own when its node is asked), then split inference over the nodes.
fn predict(
    state: &GovernanceState,
    requester: &str,
    request: v1::PredictRequest,
) -> Result<String, Status> {
    let model = state.store.model(&request.model).map_err(internal)?;
    let record = state.store.job(&model.job).map_err(internal)?;
    let origin = PathBuf::from(format!("the spec of job `{}`", model.job));
    let any_job = AnyJob::from_yaml(&record.spec_yaml, &origin)
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    let share_labels = model.config == RunConfig::SplitLabelSharing.name();
    let reference = format!("{}@{}", model.name, model.version);
    let policies = Policies::load(&state.policies).map_err(|e| {
        Status::failed_precondition(format!("governance's policies do not load: {e}"))
    })?;
    let mut denials = Vec::new();
    for input in &model.inputs {
        let usage = fedmesh_policy::Usage {
            job: reference.clone(),
            requester: requester.to_string(),
            product: input.product.clone(),
            product_version: input.version.clone(),
            ..fedmesh_split::usage::requested_of(
                &any_job,
                &input.domain,
                fedmesh_policy::Action::Predict,
                share_labels,
            )
            .map_err(|e| Status::failed_precondition(e.to_string()))?
        };
        denials.extend(policies.check(&usage));
    }
    if !denials.is_empty() {
        let reasons: Vec<String> = denials.iter().map(Denial::to_string).collect();
        state
            .audit(
                state
                    .entry("predictions.denied", &reference)
                    .detail("requester", requester)
                    .detail("denials", &reasons),
            )
            .map_err(unrecorded)?;
        return Err(Status::permission_denied(reasons.join("\n")));
    }
    let parts = state.runs.join(&model.run);
    // The nodes of the model's domains, in the spec's order.
    let nodes_of = |names: Vec<&str>| {
        names
            .into_iter()
            .map(|name| {
                state
                    .mesh
                    .nodes
                    .iter()
                    .find(|n| n.name == name)
                    .cloned()
                    .ok_or_else(|| {
                        Status::failed_precondition(format!(
                            "the mesh has no node for domain `{name}`"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let start = v1::PredictStart {
        run_id: model.run.clone(),
        spec_yaml: record.spec_yaml.clone(),
        domain: String::new(),
        keys: request.keys.clone(),
        requester: requester.to_string(),
        share_labels,
    };
    let prediction = match any_job {
        AnyJob::Vertical(job) => crate::predict::predict(
            &state.mesh.identity,
            &nodes_of(job.spec.domains.iter().map(|d| d.name.as_str()).collect())?,
            &job.spec.label.domain,
            start,
            state.mesh.deadline,
            |cut_width| {
                fedmesh_split::inference::TopScorer::load(
                    &job.spec,
                    cut_width,
                    &parts,
                    share_labels,
                )
            },
        ),
        AnyJob::Horizontal(job) => crate::predict::predict_horizontal(
            &state.mesh.identity,
            &nodes_of(job.spec.domains.iter().map(|d| d.name.as_str()).collect())?,
            start,
            state.mesh.deadline,
        ),
        AnyJob::Recommendation(spec) => {
            return recommend(
                state,
                requester,
                &request,
                &spec,
                &model,
                &reference,
                &parts,
                share_labels,
            );
        }
    }
    .map_err(|e| Status::failed_precondition(e.to_string()))?;
    state
        .audit(
            state
                .entry("predictions.served", &reference)
                .detail("requester", requester)
                .detail("keys_requested", request.keys.len())
                .detail("scored", prediction.scores.len())
                .detail("missing", prediction.missing.len()),
        )
        .map_err(unrecorded)?;
    tracing::info!(
        "`{requester}` scored {} entities with `{reference}` ({} keys missing)",
        prediction.scores.len(),
        prediction.missing.len()
    );
    Ok(serde_json::json!({
        "model": reference,
        "config": model.config,
        "scores": prediction.scores.iter().map(|(key, scores)| serde_json::json!({"key": key, "scores": scores})).collect::<Vec<_>>(),
        "missing": prediction.missing.iter().map(|(key, at)| serde_json::json!({"key": key, "missing_at": at})).collect::<Vec<_>>(),
    })
    .to_string())
}

/// The most users one request ranks items for, and the most items per user: a ranking is an
/// answer for an operator, not an export of the model's scores.
const MAX_RANKED_USERS: usize = 1000;
const MAX_TOP: u32 = 1000;

/// Ranks items for `request.keys` (users) with a registered recommender, its policies already
/// checked: every domain loads its parts, sales ranks and leaves out what each user has.
#[allow(clippy::too_many_arguments)]
fn recommend(
    state: &GovernanceState,
    requester: &str,
    request: &v1::PredictRequest,
    spec: &fedmesh_split::recommend::RecommendationSpec,
    model: &crate::store::ModelEntry,
    reference: &str,
    parts: &Path,
    share_labels: bool,
) -> Result<String, Status> {
    if request.keys.is_empty() || request.keys.len() > MAX_RANKED_USERS {
        return Err(Status::invalid_argument(format!(
            "a recommender ranks items for 1 to {MAX_RANKED_USERS} users per request; {} were asked for",
            request.keys.len()
        )));
    }
    if request.top > MAX_TOP {
        return Err(Status::invalid_argument(format!(
            "`top` is {}; at most {MAX_TOP} items per user",
            request.top
        )));
    }
    let top = if request.top == 0 { 10 } else { request.top } as usize;
    let found = state
        .mesh
        .recommend(
            spec,
            &model.run,
            requester,
            share_labels,
            parts,
            &request.keys,
            top,
        )
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    state
        .audit(
            state
                .entry("rankings.served", reference)
                .detail("requester", requester)
                .detail("users_requested", request.keys.len())
                .detail("ranked", found.rankings.len())
                .detail("missing", found.missing.len())
                .detail("top", top),
        )
        .map_err(unrecorded)?;
    tracing::info!(
        "`{requester}` ranked {top} items for {} users with `{reference}` ({} unknown)",
        found.rankings.len(),
        found.missing.len()
    );
    Ok(serde_json::json!({
        "model": reference,
        "config": model.config,
        "rankings": found.rankings.iter().map(|(user, items)| serde_json::json!({
            "user": user,
            "items": items.iter().map(|(item, score)| serde_json::json!({"item": item, "score": score})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "missing": found.missing,
    })
    .to_string())
}

/// Opens governance's store and audit log in `state_dir`, noting jobs a previous process left
/// in flight, and locks the folder for this process (keep the lock as long as the store).
/// With `signer` (governance's key), every record appended is signed.
pub fn open_state(
    state_dir: &Path,
    name: &str,
    signer: Option<fedmesh_audit::Signer>,
) -> Result<(Store, AuditLog, fedmesh_net::state_lock::StateLock), String> {
    // One governance process per state folder: a second would run the same jobs.
    let lock = fedmesh_net::state_lock::StateLock::acquire(
        &state_dir.join("governance.lock"),
        &format!("governance `{name}`"),
    )
    .map_err(|e| e.to_string())?;
    let (store, interrupted) =
        Store::open(&state_dir.join("governance.sqlite")).map_err(|e| e.to_string())?;
    let mut audit = AuditLog::open(&state_dir.join("audit.sqlite")).map_err(|e| e.to_string())?;
    if let Some(signer) = signer {
        audit = audit.with_signer(signer);
    }
    for job in interrupted {
        tracing::warn!(
            "job `{}` was {} when governance last stopped: marked failed",
            job.job,
            job.was
        );
        if let Err(e) = audit.append(Entry::new(name, "job.failed", &job.job).detail(
            "reason",
            format!("governance stopped while the job was {}", job.was),
        )) {
            tracing::error!("cannot write the audit log: {e}");
        }
    }
    Ok((store, audit, lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_governance_on_the_same_state_fails_at_start_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_state(dir.path(), "governance", None).unwrap();
        let error = open_state(dir.path(), "governance", None)
            .map(|_| ())
            .unwrap_err();
        assert!(
            error.contains("in use by governance `governance` (process"),
            "{error}"
        );
        drop(first);
        assert!(open_state(dir.path(), "governance", None).is_ok());
    }
}
