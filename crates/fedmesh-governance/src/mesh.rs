//! Governance's side of one run: a job's configuration and seed over the domain nodes.
//!
//! [`Mesh::run`] opens the job on every domain's node, aligns their products, has the label
//! owner draw the partition, and then drives the same [`fedmesh_split::SplitTrainer`] as an
//! in-process run, with [`GrpcTransport`] in place of the in-process transport. A horizontal
//! job's run drives the same federated averaging as `fedmesh run`
//! ([`fedmesh_split::horizontal::train_federated`]) over [`GrpcFederation`].

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fedmesh_audit::{AuditLog, Entry};
use fedmesh_data::Partition;
use fedmesh_net::convert::{audit_head_from_wire, audit_head_to_wire};
use fedmesh_proto::Encoding;
use fedmesh_proto::v1;
use fedmesh_split::horizontal::{HorizontalJob, federated_pipeline, train_federated};
use fedmesh_split::job::{AlignmentMethod, Job, RunConfig, RunResult, WireBytes, WireEncoding};
use fedmesh_split::recommend::{RecommendationSpec, fit_ranking};
use fedmesh_split::split_ncf::SplitNcf;
use fedmesh_split::{AnyJob, MESH_CONFIGS, Observer, SplitError, SplitTrainer};

use fedmesh_net::{GrpcFederation, GrpcTransport, MeshIdentity, NodeEndpoint};

/// One run of a job on the mesh: its id (`<job id>/<run>`, under which the nodes keep its
/// parts), who asked, the configuration and seed, and where governance keeps its own parts
/// (none: nothing is saved).
#[derive(Debug, Clone, Copy)]
pub struct MeshRun<'a> {
    pub id: &'a str,
    pub requester: &'a str,
    pub config: &'a RunConfig,
    pub seed: u64,
    pub save_to: Option<&'a Path>,
}

/// The domain nodes governance reaches, and how.
pub struct Mesh {
    pub identity: MeshIdentity,
    pub nodes: Vec<NodeEndpoint>,
    /// The longest any one call to a node may take.
    pub deadline: Duration,
    /// Governance's audit log: every run sends the nodes its head and notes theirs in it
    /// (`audit.anchor`), so that each log can be checked against the others.
    pub audit: Option<Arc<AuditLog>>,
    /// The last alignment run of each set of domains, and the entities it found: a later run
    /// over the same domains reuses its result where every product is unchanged.
    alignments: std::sync::Mutex<std::collections::HashMap<String, (String, usize)>>,
}

/// Tells alignment runs of one governance process apart (with its start time, across restarts).
static ALIGNMENT_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Mesh {
    /// Governance's run driver over `nodes`, reached as `identity`.
    pub fn new(identity: MeshIdentity, nodes: Vec<NodeEndpoint>, deadline: Duration) -> Self {
        Self {
            identity,
            nodes,
            deadline,
            audit: None,
            alignments: Default::default(),
        }
    }

    /// The alignment run a run over `domains` may reuse (its id and the entities it found), or
    /// a new id to keep this run's under.
    fn alignment_for(&self, domains: &[String]) -> (String, Option<usize>) {
        let kept = self.alignments.lock().unwrap_or_else(|p| p.into_inner());
        match kept.get(&alignment_key(domains)) {
            Some((id, intersection)) => (id.clone(), Some(*intersection)),
            None => (new_alignment_id(), None),
        }
    }

    /// Remembers the alignment run a run over `domains` made (or reused).
    fn keep_alignment(&self, domains: &[String], id: &str, intersection: usize) {
        self.alignments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(alignment_key(domains), (id.to_string(), intersection));
    }

    /// Governance's audit head, for the nodes to note.
    fn audit_head(&self) -> Result<Option<v1::AuditHead>, SplitError> {
        audit_head_to_wire(self.audit.as_deref())
    }

    /// Notes each node's audit head (from its answer to `finish`) in governance's log.
    fn anchor(&self, run_id: &str, heads: Vec<(String, v1::AuditHead)>) -> Result<(), SplitError> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        for (node, head) in heads {
            let head = audit_head_from_wire(head, &node)?;
            log.append(Entry::anchor(
                self.identity.name.clone(),
                run_id,
                &node,
                &head,
            ))
            .map_err(|e| SplitError::AuditFailed(e.to_string()))?;
        }
        Ok(())
    }

    /// Ends a run on the nodes and anchors their logs. The run is trained, evaluated and saved:
    /// a node that does not acknowledge the end costs a warning (and its anchor), not the run.
    fn finish(&self, transport: &mut GrpcTransport, run_id: &str) -> Result<(), SplitError> {
        match transport.finish() {
            Ok(heads) => self.anchor(run_id, heads),
            Err(e) => {
                tracing::warn!("run `{run_id}` finished, but {e}");
                Ok(())
            }
        }
    }

    /// The node that serves domain `name`.
    fn node(&self, name: &str) -> Result<NodeEndpoint, SplitError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| {
                SplitError::refused(
                    "governance",
                    format!(
                        "the mesh has no node for domain `{name}` (known: {})",
                        self.nodes
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    /// Trains and evaluates one configuration of `job` for one seed on the domain nodes.
    /// `run_id` names the run on the nodes (their parts are saved under it); with `save_to`,
    /// governance saves its own parts there and every node saves its own.
    pub fn run(
        &self,
        job: &AnyJob,
        run: &MeshRun,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<RunResult, SplitError> {
        match job {
            AnyJob::Vertical(job) => self.run_vertical(job, run, observer, stop),
            AnyJob::Recommendation(spec) => self.run_ranking(spec, run, observer, stop),
            AnyJob::Horizontal(job) => self.run_horizontal(job, run, observer, stop),
        }
    }

    /// A horizontal run: federated averaging over the domains' nodes, each training on its own
    /// rows; governance fits the pipeline from their sums, runs the rounds (and routes secure
    /// aggregation's messages), and scores the model from their evaluation sums.
    fn run_horizontal(
        &self,
        job: &HorizontalJob,
        run: &MeshRun,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<RunResult, SplitError> {
        let &MeshRun {
            id: run_id,
            requester,
            config,
            seed,
            save_to,
        } = run;
        let RunConfig::Federated { secure } = *config else {
            return Err(SplitError::refused(
                "governance",
                format!(
                    "`{}` cannot run over the mesh: a horizontal job runs `federated` or `federated-secure` there",
                    config.name()
                ),
            ));
        };
        let nodes = job
            .spec
            .domains
            .iter()
            .map(|d| self.node(&d.name))
            .collect::<Result<Vec<_>, _>>()?;
        let start = v1::JobStart {
            job_id: run_id.to_string(),
            spec_yaml: job.to_portable_yaml()?,
            domain: String::new(),
            seed,
            encoding: Encoding::F32 as i32,
            share_labels: false,
            requester: requester.to_string(),
            trained_run: String::new(),
            governance_audit: self.audit_head()?,
            alignment_id: String::new(),
        };
        let mut federation = GrpcFederation::connect(&self.identity, &nodes, start, self.deadline)?;
        let fitted = federated_pipeline(&job.spec, &mut federation)?;
        let trained = train_federated(
            &job.spec,
            &mut federation,
            &fitted,
            secure,
            seed,
            observer,
            stop,
        )?;
        let mut result = trained.result(seed, save_to)?;
        if let Some(dir) = save_to {
            let path = dir.join("pipeline.json");
            std::fs::write(&path, fitted.pipeline.to_json())?;
            result.model_files.push(path.display().to_string());
            result
                .model_files
                .extend(federation.save()?.iter().map(|p| p.display().to_string()));
        }
        let (to_domains, from_domains) = federation.bytes();
        result.wire = Some(WireBytes {
            encoding: WireEncoding::F32,
            to_domains,
            from_domains,
        });
        match federation.finish() {
            Ok(heads) => self.anchor(run_id, heads)?,
            Err(e) => tracing::warn!("run `{run_id}` finished, but {e}"),
        }
        Ok(result)
    }

    /// A split NCF run: every domain's share of an in-process run, on its own node.
    fn run_ranking(
        &self,
        spec: &RecommendationSpec,
        run: &MeshRun,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<RunResult, SplitError> {
        let &MeshRun {
            id: run_id,
            requester,
            config,
            seed,
            save_to,
        } = run;
        check_mesh_config(config)?;
        let share_labels = *config == RunConfig::SplitLabelSharing;
        let model = spec.split_model()?;
        let transport =
            self.open_recommendation(spec, run_id, requester, share_labels, seed, false)?;
        let mut ncf = SplitNcf::new(
            transport,
            model,
            &spec.training.optimizer,
            share_labels,
            seed,
        )?;
        let run = fit_ranking(&mut ncf, &spec.training, observer, stop)?;
        let mut result = RunResult::ranking(config, seed, run);
        if let Some(dir) = save_to {
            result.model_files = ncf
                .save(dir)?
                .iter()
                .map(|p| p.display().to_string())
                .collect();
        }
        let (to_domains, from_domains) = ncf.transport().bytes();
        result.wire = Some(WireBytes {
            encoding: WireEncoding::F32,
            to_domains,
            from_domains,
        });
        self.finish(ncf.transport_mut(), run_id)?;
        Ok(result)
    }

    /// A vertical split run over the domains' aligned rows.
    fn run_vertical(
        &self,
        job: &Job,
        run: &MeshRun,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<RunResult, SplitError> {
        let &MeshRun {
            id: run_id,
            config,
            seed,
            save_to,
            ..
        } = run;
        let (mut trainer, partition) = self.open(job, run)?;
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
        result.alignment = trainer.transport().alignment().cloned();
        self.finish(trainer.transport_mut(), run_id)?;
        Ok(result)
    }

    /// Opens run `run_id` of a recommendation job on sales's, customer's and product's nodes: to
    /// train it, or (`serving`) to serve the rankings of the parts it saved.
    fn open_recommendation(
        &self,
        spec: &RecommendationSpec,
        run_id: &str,
        requester: &str,
        share_labels: bool,
        seed: u64,
        serving: bool,
    ) -> Result<GrpcTransport, SplitError> {
        let nodes = [
            self.node(&spec.sales.name)?,
            self.node(&spec.customer.name)?,
            self.node(&spec.product.name)?,
        ];
        let start = v1::JobStart {
            job_id: run_id.to_string(),
            spec_yaml: spec.to_yaml(),
            domain: String::new(),
            seed,
            encoding: Encoding::F32 as i32,
            share_labels,
            requester: requester.to_string(),
            trained_run: if serving {
                run_id.to_string()
            } else {
                String::new()
            },
            governance_audit: self.audit_head()?,
            alignment_id: String::new(),
        };
        GrpcTransport::connect_recommendation(&self.identity, &nodes, start, self.deadline)
    }

    /// Ranks the `top` items each of `users` is likeliest to take next, with the recommender
    /// that run `run_id` trained: every domain loads its saved parts (sales its bottom, and its
    /// head when labels were kept), governance its tower (and head) from `parts`. Returns each
    /// user's ranking, best first, and the users sales holds no interactions of.
    #[allow(clippy::too_many_arguments)]
    pub fn recommend(
        &self,
        spec: &RecommendationSpec,
        run_id: &str,
        requester: &str,
        share_labels: bool,
        parts: &Path,
        users: &[String],
        top: usize,
    ) -> Result<Recommendations, SplitError> {
        let model = spec.split_model()?;
        let transport = self.open_recommendation(spec, run_id, requester, share_labels, 0, true)?;
        let mut ncf = SplitNcf::trained(transport, model, share_labels, parts)?;
        let mut found = Recommendations::default();
        for user in users {
            match ncf.recommend(user, top)? {
                Some(items) => found.rankings.push((user.clone(), items)),
                None => found.missing.push(user.clone()),
            }
        }
        let heads = ncf.transport_mut().finish()?;
        self.anchor(run_id, heads)?;
        Ok(found)
    }

    /// Opens a run on the domain nodes: each loads and validates its product, the label owner
    /// draws the partition, every domain builds its bottom. Returns governance's trainer over
    /// the nodes, and the partition.
    pub fn open(
        &self,
        job: &Job,
        run: &MeshRun,
    ) -> Result<(SplitTrainer<GrpcTransport>, Partition), SplitError> {
        let &MeshRun {
            id: run_id,
            requester,
            config,
            seed,
            ..
        } = run;
        let spec = &job.spec;
        check_mesh_config(config)?;
        if spec.resample.is_some() {
            return Err(SplitError::Spec {
                path: job.file.clone(),
                message: "`resample` needs every domain's features in one place; it is not available over the mesh".into(),
            });
        }
        let nodes = spec
            .domains
            .iter()
            .map(|d| self.node(&d.name))
            .collect::<Result<Vec<_>, _>>()?;
        let share_labels = *config == RunConfig::SplitLabelSharing;
        let encoding = match spec.wire.encoding {
            WireEncoding::F32 => Encoding::F32,
            WireEncoding::F16 => Encoding::F16,
            WireEncoding::Bf16 => Encoding::Bf16,
        };
        let domains: Vec<String> = spec.domains.iter().map(|d| d.name.clone()).collect();
        let (alignment_id, kept) = self.alignment_for(&domains);
        let start = v1::JobStart {
            job_id: run_id.to_string(),
            spec_yaml: job.to_portable_yaml()?,
            domain: String::new(),
            seed,
            encoding: encoding as i32,
            share_labels,
            requester: requester.to_string(),
            trained_run: String::new(),
            governance_audit: self.audit_head()?,
            alignment_id: alignment_id.clone(),
        };
        let transport = GrpcTransport::connect(
            &self.identity,
            &nodes,
            &spec.label.domain,
            start,
            (spec.alignment.protocol, kept),
            self.deadline,
        )?;
        if let Some(alignment) = transport.alignment()
            && alignment.method == AlignmentMethod::PrivateSetIntersection
        {
            self.keep_alignment(&domains, &alignment_id, alignment.intersection);
        }
        let partition = transport.partition().clone();
        let cut_width = transport.cut_width();
        tracing::info!(
            "run `{run_id}`: {} training, {} validation, {} test rows; cut layer {cut_width} wide",
            partition.train.len(),
            partition.valid.len(),
            partition.test.len()
        );
        let trainer =
            spec.split_trainer(transport, share_labels, cut_width, seed, &partition.train)?;
        fedmesh_split::job::seed_training_randomness(seed);
        Ok((trainer, partition))
    }
}

/// What an alignment depends on besides the products: which domains take part, in any order.
fn alignment_key(domains: &[String]) -> String {
    let mut key = domains.to_vec();
    key.sort();
    key.join(",")
}

/// A fresh alignment run id: this process's start and a count.
fn new_alignment_id() -> String {
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let n = ALIGNMENT_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("alignment-{started:x}-{n}")
}

/// A recommender's rankings for the users asked about.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Recommendations {
    /// Each ranked user's items and scores, best first, in request order.
    pub rankings: Vec<(String, Vec<(String, f32)>)>,
    /// The users sales holds no interactions of.
    pub missing: Vec<String>,
}

/// Refuses a configuration that needs every domain's data in one place.
fn check_mesh_config(config: &RunConfig) -> Result<(), SplitError> {
    if MESH_CONFIGS.contains(config) {
        Ok(())
    } else {
        Err(SplitError::refused(
            "governance",
            format!(
                "`{}` cannot run over the mesh: it needs every domain's data in one place",
                config.name()
            ),
        ))
    }
}
