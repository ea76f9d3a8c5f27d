//! Governance's state in one SQLite file: the catalog of data products, the jobs with their
//! state and event log, and the model registry.
//!
//! Every change is one transaction, so a governance process that dies leaves the file as it was
//! after the last change. On opening, jobs that were in flight are marked failed with the reason
//! ([`Store::open`]): a job's runs do not survive their process, but its record does.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub use fedmesh_data::QualityReport;

/// Errors of governance's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("governance state {path}: {error}")]
    Sqlite {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("no job `{0}` (see `fedmesh job list`)")]
    NoJob(String),
    #[error("job `{job}` is {from}: it cannot become {to}")]
    Transition {
        job: String,
        from: JobState,
        to: JobState,
    },
    #[error("no data product `{0}` in the catalog (see `fedmesh catalog list`)")]
    NoProduct(String),
    #[error("no model `{0}` in the registry (see `fedmesh model list`)")]
    NoModel(String),
}

/// Where a job is in its life.
///
/// ```text
/// submitted → admitted → aligning → training → evaluating → done
///     ↘ denied     (aligning → training → evaluating again for each run)
/// any state before done → failed | cancelled
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Submitted,
    Admitted,
    Denied,
    Aligning,
    Training,
    Evaluating,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        JobState::Submitted,
        JobState::Admitted,
        JobState::Denied,
        JobState::Aligning,
        JobState::Training,
        JobState::Evaluating,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobState::Submitted => "submitted",
            JobState::Admitted => "admitted",
            JobState::Denied => "denied",
            JobState::Aligning => "aligning",
            JobState::Training => "training",
            JobState::Evaluating => "evaluating",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// A job in a final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Denied | JobState::Failed | JobState::Cancelled
        )
    }

    /// Whether a job may go from `self` to `to`.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        if self.is_final() {
            return false;
        }
        match to {
            Failed | Cancelled => true,
            Admitted | Denied => self == Submitted,
            // Each run of an admitted job aligns, trains and evaluates; the next run aligns again.
            Aligning => matches!(self, Admitted | Evaluating),
            Training => self == Aligning,
            Evaluating => self == Training,
            Done => matches!(self, Admitted | Evaluating),
            Submitted => false,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|state| state.name() == s)
            .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

/// A job as governance keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The spec's name.
    pub name: String,
    pub submitted_by: String,
    pub submitted_ms: i64,
    pub updated_ms: i64,
    pub state: JobState,
    /// Why it is in its state: the denial, the failure, the run in progress.
    pub reason: String,
    pub spec_yaml: String,
    /// What was asked: configurations, seeds, epochs (JSON).
    pub request_json: String,
}

/// What happened during a job, in order: the stream `fedmesh job logs` and `submit` follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEventRecord {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: EventKind,
    /// A log line, or the event as JSON (an epoch record, a run result, a state).
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Log,
    State,
    RunStarted,
    Epoch,
    Run,
}

impl EventKind {
    fn name(self) -> &'static str {
        match self {
            EventKind::Log => "log",
            EventKind::State => "state",
            EventKind::RunStarted => "run-started",
            EventKind::Epoch => "epoch",
            EventKind::Run => "run",
        }
    }

    fn parse(s: &str) -> EventKind {
        match s {
            "state" => EventKind::State,
            "run-started" => EventKind::RunStarted,
            "epoch" => EventKind::Epoch,
            "run" => EventKind::Run,
            _ => EventKind::Log,
        }
    }
}

/// A data product as the catalog knows it: its contract and facts about it, never its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductEntry {
    /// The domain that serves it (its node's certificate name).
    pub domain: String,
    pub name: String,
    pub version: String,
    pub status: String,
    /// The column entities are aligned on, when it has one.
    pub key_column: Option<String>,
    /// Rows at the last check; `None` until the node has read its data.
    pub rows: Option<u64>,
    /// SHA-256 of the contract's schema, to see at a glance whether two versions differ.
    pub schema_hash: String,
    pub contract_yaml: String,
    /// The last quality check: when, and each rule that did not hold.
    pub quality: QualityReport,
    pub registered_ms: i64,
    pub updated_ms: i64,
}

/// One trained split model: where its parts are, what it was trained on, how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    pub version: u32,
    pub job: String,
    /// The run that trained it (`<job id>/<config>-seed<seed>`): where each holder keeps its
    /// parts.
    pub run: String,
    pub config: String,
    pub seed: u64,
    /// Who holds which layers: domain → part files on that domain's node.
    pub parts: Vec<ModelPart>,
    /// The products it was trained on, with their contract versions.
    pub inputs: Vec<ModelInput>,
    /// The evaluation metrics, as JSON.
    pub metrics_json: String,
    pub created_ms: i64,
}

impl ModelPart {
    /// A saved part, named as the trainers name their files: `bottom-<domain>.bpk`,
    /// `pipeline-<domain>.json`, `head-<holder>.bpk`, `tower-governance.bpk`.
    pub fn from_file(file: &str) -> Option<Self> {
        let name = Path::new(file).file_name()?.to_str()?;
        let (stem, _) = name.rsplit_once('.')?;
        let (layers, holder) = stem.split_once('-')?;
        Some(Self {
            holder: holder.to_string(),
            layers: layers.to_string(),
            location: file.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPart {
    /// `governance` or a domain.
    pub holder: String,
    /// `bottom`, `tower`, `head`.
    pub layers: String,
    /// Where the holder keeps it (a path on the holder's machine; never read by governance).
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInput {
    pub domain: String,
    pub product: String,
    pub version: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    domain        TEXT NOT NULL,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    status        TEXT NOT NULL,
    key_column    TEXT,
    rows          INTEGER,
    schema_hash   TEXT NOT NULL,
    contract_yaml TEXT NOT NULL,
    quality_json  TEXT NOT NULL,
    registered_ms INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (domain, name)
);
CREATE TABLE IF NOT EXISTS jobs (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_ms INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    spec_yaml    TEXT NOT NULL,
    request_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    job   TEXT NOT NULL REFERENCES jobs(id),
    seq   INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    kind  TEXT NOT NULL,
    body  TEXT NOT NULL,
    PRIMARY KEY (job, seq)
);
CREATE TABLE IF NOT EXISTS models (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    job         TEXT NOT NULL,
    run         TEXT NOT NULL,
    config      TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    parts_json  TEXT NOT NULL,
    inputs_json TEXT NOT NULL,
    metrics_json TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Governance's state. Shared between threads; each call is one transaction.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A job found in flight when the store was opened, and marked failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    pub job: String,
    pub was: JobState,
}

impl Store {
    /// Opens (or creates) the store at `path`. Jobs left in flight by a previous process are
    /// marked failed, with the state they were in; they are returned so the caller can say so.
    pub fn open(path: &Path) -> Result<(Self, Vec<Interrupted>), StoreError> {
        let sqlite = |error| StoreError::Sqlite {
            path: path.to_path_buf(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                sqlite(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {e}",
                    dir.display()
                ))))
            })?;
        }
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        let store = Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        };
        let mut interrupted = Vec::new();
        for job in store.jobs()? {
            if !job.state.is_final() {
                let reason = format!(
                    "governance stopped while the job was {}; its runs did not survive (submit it again)",
                    job.state
                );
                store.set_state(&job.id, JobState::Failed, &reason)?;
                interrupted.push(Interrupted {
                    job: job.id,
                    was: job.state,
                });
            }
        }
        Ok((store, interrupted))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |error| StoreError::Sqlite {
            path: self.path.clone(),
            error,
        }
    }

    // ---- catalog ----

    /// Adds a product to the catalog, or updates its entry (same domain and name).
    pub fn register_product(&self, entry: &ProductEntry) -> Result<(), StoreError> {
        let quality = serde_json::to_string(&entry.quality).expect("serializes");
        let err = self.sqlite();
        self.with(|c| {
            c.execute(
                "INSERT INTO products (domain, name, version, status, key_column, rows, schema_hash,
                     contract_yaml, quality_json, registered_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)
                 ON CONFLICT (domain, name) DO UPDATE SET
                     version = excluded.version, status = excluded.status,
                     key_column = excluded.key_column,
                     rows = COALESCE(excluded.rows, products.rows),
                     schema_hash = excluded.schema_hash, contract_yaml = excluded.contract_yaml,
                     quality_json = CASE WHEN ?11 > 0 THEN excluded.quality_json
                                         ELSE products.quality_json END,
                     updated_ms = excluded.updated_ms",
                params![
                    entry.domain,
                    entry.name,
                    entry.version,
                    entry.status,
                    entry.key_column,
                    entry.rows,
                    entry.schema_hash,
                    entry.contract_yaml,
                    quality,
                    now_ms(),
                    entry.quality.checked_ms,
                ],
            )
            .map_err(err)?;
            Ok(())
        })
    }

    /// Every product, by domain and name.
    pub fn products(&self) -> Result<Vec<ProductEntry>, StoreError> {
        self.query_products("1 = 1", &[])
    }

    /// A product by name, or by `domain/name` when two domains use the same name.
    pub fn product(&self, name: &str) -> Result<ProductEntry, StoreError> {
        let found = match name.split_once('/') {
            Some((domain, product)) => {
                self.query_products("domain = ?1 AND name = ?2", &[&domain, &product])?
            }
            None => self.query_products("name = ?1", &[&name])?,
        };
        found
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NoProduct(name.to_string()))
    }

    fn query_products(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<ProductEntry>, StoreError> {
        let err = self.sqlite();
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT domain, name, version, status, key_column, rows, schema_hash,
                         contract_yaml, quality_json, registered_ms, updated_ms
                     FROM products WHERE {filter} ORDER BY domain, name"
                ))
                .map_err(&err)?;
            let rows = stmt
                .query_map(args, |r| {
                    let quality: String = r.get(8)?;
                    Ok(ProductEntry {
                        domain: r.get(0)?,
                        name: r.get(1)?,
                        version: r.get(2)?,
                        status: r.get(3)?,
                        key_column: r.get(4)?,
                        rows: r.get(5)?,
                        schema_hash: r.get(6)?,
                        contract_yaml: r.get(7)?,
                        quality: serde_json::from_str(&quality).unwrap_or_default(),
                        registered_ms: r.get(9)?,
                        updated_ms: r.get(10)?,
                    })
                })
                .map_err(&err)?;
            rows.collect::<Result<_, _>>().map_err(err)
        })
    }

    // ---- jobs ----

    /// Records a new job as submitted.
    pub fn add_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        let err = self.sqlite();
        self.with(|c| {
            let tx = c.transaction().map_err(&err)?;
            tx.execute(
                "INSERT INTO jobs (id, name, submitted_by, submitted_ms, updated_ms, state, reason,
                     spec_yaml, request_json)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8)",
                params![
                    job.id,
                    job.name,
                    job.submitted_by,
                    job.submitted_ms,
                    job.state.name(),
                    job.reason,
                    job.spec_yaml,
                    job.request_json
                ],
            )
            .map_err(&err)?;
            push_event(
                &tx,
                &job.id,
                EventKind::State,
                &state_body(job.state, &job.reason),
            )
            .map_err(&err)?;
            tx.commit().map_err(err)
        })
    }

    /// Moves a job to `to`, with the reason, if the state machine allows it; records the change
    /// in the job's events.
    pub fn set_state(&self, id: &str, to: JobState, reason: &str) -> Result<(), StoreError> {
        let err = self.sqlite();
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(&err)?;
            let from: Option<String> = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(&err)?;
            let from: JobState = from
                .ok_or_else(|| StoreError::NoJob(id.to_string()))?
                .parse()
                .unwrap_or(JobState::Failed);
            if !from.can_become(to) {
                return Err(StoreError::Transition {
                    job: id.to_string(),
                    from,
                    to,
                });
            }
            tx.execute(
                "UPDATE jobs SET state = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, to.name(), reason, now_ms()],
            )
            .map_err(&err)?;
            push_event(&tx, id, EventKind::State, &state_body(to, reason)).map_err(&err)?;
            tx.commit().map_err(err)
        })
    }

    /// Appends an event to a job's log.
    pub fn push_event(&self, id: &str, kind: EventKind, body: &str) -> Result<u64, StoreError> {
        let err = self.sqlite();
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(&err)?;
            let seq = push_event(&tx, id, kind, body).map_err(&err)?;
            tx.commit().map_err(err)?;
            Ok(seq)
        })
    }

    /// The job's events after `after` (0: from the start).
    pub fn events(&self, id: &str, after: u64) -> Result<Vec<JobEventRecord>, StoreError> {
        let err = self.sqlite();
        self.with(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT seq, at_ms, kind, body FROM job_events
                     WHERE job = ?1 AND seq > ?2 ORDER BY seq",
                )
                .map_err(&err)?;
            let rows = stmt
                .query_map(params![id, after], |r| {
                    let kind: String = r.get(2)?;
                    Ok(JobEventRecord {
                        seq: r.get(0)?,
                        at_ms: r.get(1)?,
                        kind: EventKind::parse(&kind),
                        body: r.get(3)?,
                    })
                })
                .map_err(&err)?;
            rows.collect::<Result<_, _>>().map_err(err)
        })
    }

    pub fn job(&self, id: &str) -> Result<JobRecord, StoreError> {
        self.query_jobs("id = ?1", &[&id])?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NoJob(id.to_string()))
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.query_jobs("1 = 1", &[])
    }

    fn query_jobs(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<JobRecord>, StoreError> {
        let err = self.sqlite();
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT id, name, submitted_by, submitted_ms, updated_ms, state, reason,
                         spec_yaml, request_json
                     FROM jobs WHERE {filter} ORDER BY submitted_ms DESC, id DESC"
                ))
                .map_err(&err)?;
            let rows = stmt
                .query_map(args, |r| {
                    let state: String = r.get(5)?;
                    Ok(JobRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        submitted_by: r.get(2)?,
                        submitted_ms: r.get(3)?,
                        updated_ms: r.get(4)?,
                        state: state.parse().unwrap_or(JobState::Failed),
                        reason: r.get(6)?,
                        spec_yaml: r.get(7)?,
                        request_json: r.get(8)?,
                    })
                })
                .map_err(&err)?;
            rows.collect::<Result<_, _>>().map_err(err)
        })
    }

    // ---- model registry ----

    /// Registers a model under `entry.name` with the next version number, which it returns.
    pub fn register_model(&self, entry: &ModelEntry) -> Result<u32, StoreError> {
        let err = self.sqlite();
        self.with(|c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(&err)?;
            let last: Option<u32> = tx
                .query_row(
                    "SELECT MAX(version) FROM models WHERE name = ?1",
                    [&entry.name],
                    |r| r.get(0),
                )
                .map_err(&err)?;
            let version = last.unwrap_or(0) + 1;
            tx.execute(
                "INSERT INTO models (name, version, job, run, config, seed, parts_json, inputs_json,
                     metrics_json, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    entry.name,
                    version,
                    entry.job,
                    entry.run,
                    entry.config,
                    entry.seed,
                    serde_json::to_string(&entry.parts).expect("serializes"),
                    serde_json::to_string(&entry.inputs).expect("serializes"),
                    entry.metrics_json,
                    now_ms()
                ],
            )
            .map_err(&err)?;
            tx.commit().map_err(err)?;
            Ok(version)
        })
    }

    /// Every model version, by name and version.
    pub fn models(&self) -> Result<Vec<ModelEntry>, StoreError> {
        self.query_models("1 = 1", &[])
    }

    /// `NAME` (its latest version) or `NAME@VERSION`.
    pub fn model(&self, reference: &str) -> Result<ModelEntry, StoreError> {
        let found = match reference.rsplit_once('@') {
            Some((name, version)) => {
                let version: u32 = version
                    .parse()
                    .map_err(|_| StoreError::NoModel(reference.to_string()))?;
                self.query_models("name = ?1 AND version = ?2", &[&name, &version])?
            }
            None => {
                let mut all = self.query_models("name = ?1", &[&reference])?;
                all.pop().into_iter().collect()
            }
        };
        found
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NoModel(reference.to_string()))
    }

    fn query_models(
        &self,
        filter: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<ModelEntry>, StoreError> {
        let err = self.sqlite();
        self.with(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT name, version, job, run, config, seed, parts_json, inputs_json,
                         metrics_json, created_ms
                     FROM models WHERE {filter} ORDER BY name, version"
                ))
                .map_err(&err)?;
            let rows = stmt
                .query_map(args, |r| {
                    let parts: String = r.get(6)?;
                    let inputs: String = r.get(7)?;
                    Ok(ModelEntry {
                        name: r.get(0)?,
                        version: r.get(1)?,
                        job: r.get(2)?,
                        run: r.get(3)?,
                        config: r.get(4)?,
                        seed: r.get(5)?,
                        parts: serde_json::from_str(&parts).unwrap_or_default(),
                        inputs: serde_json::from_str(&inputs).unwrap_or_default(),
                        metrics_json: r.get(8)?,
                        created_ms: r.get(9)?,
                    })
                })
                .map_err(&err)?;
            rows.collect::<Result<_, _>>().map_err(err)
        })
    }
}

fn state_body(state: JobState, reason: &str) -> String {
    serde_json::json!({ "state": state, "reason": reason }).to_string()
}

fn push_event(
    tx: &rusqlite::Transaction<'_>,
    job: &str,
    kind: EventKind,
    body: &str,
) -> rusqlite::Result<u64> {
    let seq: u64 = tx.query_row(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job = ?1",
        [job],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO job_events (job, seq, at_ms, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![job, seq, now_ms(), kind.name(), body],
    )?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            name: "fraud".into(),
            submitted_by: "operator".into(),
            submitted_ms: now_ms(),
            updated_ms: 0,
            state: JobState::Submitted,
            reason: String::new(),
            spec_yaml: "name: fraud".into(),
            request_json: "{}".into(),
        }
    }

    #[test]
    fn a_job_walks_the_state_machine_and_its_events_record_each_step() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("g.sqlite")).unwrap();
        store.add_job(&job("j1")).unwrap();
        for state in [
            JobState::Admitted,
            JobState::Aligning,
            JobState::Training,
            JobState::Evaluating,
            JobState::Aligning,
            JobState::Training,
            JobState::Evaluating,
            JobState::Done,
        ] {
            store.set_state("j1", state, "").unwrap();
        }
        assert_eq!(store.job("j1").unwrap().state, JobState::Done);
        let err = store.set_state("j1", JobState::Failed, "late").unwrap_err();
        assert!(
            err.to_string().contains("is done: it cannot become failed"),
            "{err}"
        );
        let events = store.events("j1", 0).unwrap();
        assert_eq!(events.len(), 9);
        assert!(events.iter().all(|e| e.kind == EventKind::State));
        assert_eq!(store.events("j1", 7).unwrap().len(), 2);
    }

    #[test]
    fn illegal_transitions_are_refused() {
        use JobState::*;
        assert!(!Submitted.can_become(Training), "admission comes first");
        assert!(!Admitted.can_become(Denied));
        assert!(!Training.can_become(Done), "evaluation comes first");
        assert!(Training.can_become(Cancelled));
        for state in JobState::ALL.into_iter().filter(|s| s.is_final()) {
            assert!(JobState::ALL.iter().all(|&to| !state.can_become(to)));
        }
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("g.sqlite")).unwrap();
        store.add_job(&job("j")).unwrap();
        assert!(matches!(
            store.set_state("j", Training, ""),
            Err(StoreError::Transition { .. })
        ));
        assert!(matches!(
            store.set_state("nope", Failed, ""),
            Err(StoreError::NoJob(_))
        ));
    }

    #[test]
    fn jobs_in_flight_are_marked_failed_when_the_store_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sqlite");
        {
            let (store, _) = Store::open(&path).unwrap();
            for id in ["done", "training", "submitted"] {
                store.add_job(&job(id)).unwrap();
            }
            store.set_state("done", JobState::Admitted, "").unwrap();
            store.set_state("done", JobState::Done, "").unwrap();
            store.set_state("training", JobState::Admitted, "").unwrap();
            store.set_state("training", JobState::Aligning, "").unwrap();
            store
                .set_state("training", JobState::Training, "run 1")
                .unwrap();
        }
        let (store, interrupted) = Store::open(&path).unwrap();
        let mut was: Vec<(String, JobState)> =
            interrupted.into_iter().map(|i| (i.job, i.was)).collect();
        was.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            was,
            [
                ("submitted".to_string(), JobState::Submitted),
                ("training".to_string(), JobState::Training)
            ]
        );
        let training = store.job("training").unwrap();
        assert_eq!(training.state, JobState::Failed);
        assert!(
            training.reason.contains("while the job was training"),
            "{}",
            training.reason
        );
        assert_eq!(store.job("done").unwrap().state, JobState::Done);
        assert_eq!(store.jobs().unwrap().len(), 3, "nothing is lost");
    }

    #[test]
    fn the_catalog_keeps_one_entry_per_product_and_the_last_quality_check() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("g.sqlite")).unwrap();
        let mut entry = ProductEntry {
            domain: "retail".into(),
            name: "card-features".into(),
            version: "1.0.0".into(),
            status: "active".into(),
            key_column: Some("transaction_id".into()),
            rows: None,
            schema_hash: "ab".into(),
            contract_yaml: "x".into(),
            quality: QualityReport::default(),
            registered_ms: 0,
            updated_ms: 0,
        };
        store.register_product(&entry).unwrap();
        entry.rows = Some(10);
        entry.quality = QualityReport {
            checked_ms: 5,
            blocking: true,
            violations: vec!["V1: nulls".into()],
        };
        store.register_product(&entry).unwrap();
        // A re-registration without a fresh check keeps the last one.
        entry.version = "1.1.0".into();
        entry.rows = None;
        entry.quality = QualityReport::default();
        store.register_product(&entry).unwrap();
        let all = store.products().unwrap();
        assert_eq!(all.len(), 1);
        let got = store.product("card-features").unwrap();
        assert_eq!(got.version, "1.1.0");
        assert_eq!(got.rows, Some(10));
        assert!(got.quality.blocking);
        assert_eq!(store.product("retail/card-features").unwrap(), got);
        assert!(matches!(store.product("x"), Err(StoreError::NoProduct(_))));
    }

    #[test]
    fn models_get_increasing_versions() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("g.sqlite")).unwrap();
        let entry = ModelEntry {
            name: "fraud".into(),
            version: 0,
            job: "fraud-1".into(),
            run: "fraud-1/split-label-owner-seed1".into(),
            config: "split-label-owner".into(),
            seed: 1,
            parts: vec![ModelPart {
                holder: "digital".into(),
                layers: "bottom".into(),
                location: "/m/digital.mpk".into(),
            }],
            inputs: vec![],
            metrics_json: "{}".into(),
            created_ms: 0,
        };
        assert_eq!(store.register_model(&entry).unwrap(), 1);
        assert_eq!(store.register_model(&entry).unwrap(), 2);
        assert_eq!(store.model("fraud").unwrap().version, 2);
        assert_eq!(store.model("fraud@1").unwrap().parts, entry.parts);
        assert!(store.model("fraud@3").is_err());
        assert_eq!(store.models().unwrap().len(), 2);
    }
}
