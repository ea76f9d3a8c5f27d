//! One job stream: a domain's side of a training or prediction job.
//!
//! Each job's stream gets its own thread that owns the domain's share of the job — its data
//! product, its bottom model and, for the label owner, the labels and head — and answers
//! governance's messages one by one, in order. The node reads the job spec for the model's shape
//! and the training schedule, but its data always comes from its own product (the contract in its
//! config), never from a path in the spec. Models never leave the thread; only activations,
//! gradients, the loss and aggregate metrics go back.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use fedmesh_audit::Entry;
use fedmesh_data::{DataContract, DataError, DataProduct, Partition, SourceCache};
use fedmesh_model::Targets;
use fedmesh_policy::{Action, Usage};
use fedmesh_proto::Encoding;
use fedmesh_proto::v1::domain_message::Body as Reply;
use fedmesh_proto::v1::governance_message::Body as Command;
use fedmesh_proto::v1::{self, DomainMessage, GovernanceMessage};
use fedmesh_split::horizontal::{FederatedDomain, HorizontalSpec, is_horizontal};
use fedmesh_split::job::{
    DomainSpec, Job, PreparedDomain, pipeline_file, product_keys, write_split_keys,
};
use fedmesh_split::recommend::{RecommendationSpec, RetailShare, is_recommendation};
use fedmesh_split::split_ncf::{ExamplePass, NcfParty, NcfRole};
use fedmesh_split::{DomainParty, HoldsSession, PartySession, SplitError};
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use fedmesh_net::convert::{labels_to_wire, plan_from_wire, tensor_from_wire, tensor_to_wire};
use fedmesh_net::horizontal::{from_domain_to_wire, to_domain_from_wire};

mod alignment;

use crate::DomainProduct;
use crate::catalog::registration;
use crate::service::NodeContext;

/// Answers one job's messages until governance finishes it or goes away.
///
/// Always on the same thread: burn keeps BatchNorm's running statistics per thread and
/// averages them across threads, so a bottom trained from several threads would evaluate
/// differently from the same bottom trained in one.
pub(crate) async fn serve(
    context: NodeContext,
    caller: String,
    mut inbound: Streaming<GovernanceMessage>,
    replies: mpsc::Sender<Result<DomainMessage, Status>>,
) {
    let mut job = NodeJob {
        product: context.product.clone(),
        context,
        opened: None,
        session: None,
        prepared: None,
        traffic: Traffic::default(),
        predicting: None,
        ncf: None,
        horizontal: None,
        outgoing: None,
    };
    'messages: loop {
        let message = match inbound.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                tracing::warn!("stream from `{caller}` broke: {status}");
                break;
            }
        };
        job.traffic.received += message.encoded_len() as u64;
        let Some(command) = message.body else {
            continue;
        };
        let finish = matches!(command, Command::Finish(_));
        let mut reply = job.handle(command);
        // An answer of several messages (blinded keys; KKRT's extension, values and bitmaps)
        // follows the first, or stands alone.
        loop {
            let body = match reply {
                Ok(Some(body)) => body,
                Ok(None) => match job.next_outgoing() {
                    Ok(Some(body)) => body,
                    Ok(None) => continue 'messages,
                    Err(e) => failure(e),
                },
                Err(e) => failure(e),
            };
            let failed = matches!(body, Reply::Failure(_));
            let message = DomainMessage { body: Some(body) };
            job.traffic.sent += message.encoded_len() as u64;
            if replies.send(Ok(message)).await.is_err() || finish || failed {
                break 'messages;
            }
            reply = Ok(None);
        }
    }
    if let Some(opened) = &job.opened {
        tracing::info!("job `{}` closed", opened.id);
    }
    if let Some(horizontal) = &job.horizontal {
        tracing::info!("job `{}` closed", horizontal.id);
    }
    if let Some(predicting) = &job.predicting {
        // The stream ended without `finish`: a record that cannot be written is reported here
        // (the node's log), and the next request finds the log failing too.
        let _ = job.audit_prediction(predicting);
    }
}

/// A refusal or failure, as the node answers it (and logs it).
fn failure(e: SplitError) -> Reply {
    tracing::warn!("job refused or failed: {e}");
    Reply::Failure(v1::Failure {
        reason: e.to_string(),
    })
}

/// A job the node has opened: the spec, and its product loaded and validated.
struct OpenedJob {
    id: String,
    job: Job,
    /// This domain's entry in the spec, pointing at the node's own contract.
    domain: DomainSpec,
    product: DataProduct,
    seed: u64,
    share_labels: bool,
    encoding: Encoding,
    /// The labels, once drawn (label owner only).
    targets: Option<Targets>,
    /// The product's keys while it waits for alignment; `None` once aligned (or for a product
    /// without a key column, aligned by position).
    keys: Option<Vec<String>>,
    /// This domain's share of the alignment run in progress.
    alignment: Option<alignment::AlignmentRun>,
    /// What the job uses of the product, as the domain admitted it.
    usage: Usage,
    /// The alignment run this job's rows are kept under (empty: none), and the fingerprint of
    /// the product's keys it was run on.
    alignment_id: String,
    fingerprint: Option<[u8; 32]>,
    /// Training, validation and test rows, once the partition is known.
    partition_sizes: Option<[usize; 3]>,
    /// The label owner's keys of its aligned rows and the partition it drew, for the run's
    /// validation and test keys (written with its saved parts).
    split_keys: Option<(Vec<String>, Partition)>,
}

impl OpenedJob {
    fn owns_labels(&self) -> bool {
        self.job.spec.label.domain == self.domain.name
    }
}

struct NodeJob {
    product: DomainProduct,
    context: NodeContext,
    opened: Option<OpenedJob>,
    /// The domain's share of the run once its partition is known: every cut-layer message of a
    /// classification job goes through it.
    session: Option<PartySession>,
    /// The domain's fitted feature pipeline, saved beside its bottom.
    prepared: Option<PreparedDomain>,
    traffic: Traffic,
    /// A stream that scores entities with a trained model instead of training one.
    predicting: Option<Predicting>,
    /// A recommendation job (the split NCF) instead of a classification one.
    ncf: Option<NcfJob>,
    /// A horizontal job (federated averaging): the domain trains the whole model on its rows.
    horizontal: Option<HorizontalJob>,
    /// The rest of an answer that travels as several messages.
    outgoing: Option<alignment::Outgoing>,
}

/// A horizontal job the node has opened: its domain's share of federated averaging.
struct HorizontalJob {
    id: String,
    spec: HorizontalSpec,
    domain: FederatedDomain,
    usage: Usage,
    /// The product's rows.
    rows: usize,
}

/// A recommendation job the node has opened: its domain's share of the split NCF.
struct NcfJob {
    id: String,
    spec: RecommendationSpec,
    party: NcfParty,
    usage: Usage,
    rows: usize,
    share_labels: bool,
    encoding: Encoding,
    /// Example passes drawn (sales) or taken (customer, product).
    passes: u64,
    /// Serving: the users whose candidates sales drew.
    served_users: u64,
}

/// A domain's share of split inference: its rows of the requested entities, its trained bottom
/// and, for a label owner that kept its labels, its head.
struct Predicting {
    run_id: String,
    /// The split model's job (none for a horizontal model, scored whole at `horizontal`).
    job: Option<Job>,
    horizontal: Option<fedmesh_split::horizontal::HorizontalScorer>,
    usage: Usage,
    /// The product row scored for each requested key this domain holds, by request position.
    rows: std::collections::HashMap<u32, u32>,
    requested: usize,
    scored: usize,
    bottom: Option<DomainParty>,
    head: Option<fedmesh_split::inference::HeadScorer>,
    encoding: Encoding,
}

/// What crossed the job's stream, for the audit log.
#[derive(Default)]
struct Traffic {
    /// Encoded bytes received from and sent to governance.
    received: u64,
    sent: u64,
}

/// The node refuses, for `reason` (governance names the node when it reports it).
fn refused(reason: impl Into<String>) -> SplitError {
    SplitError::refused("the domain node", reason)
}

impl NodeJob {
    fn opened(&mut self) -> Result<&mut OpenedJob, SplitError> {
        self.opened
            .as_mut()
            .ok_or_else(|| refused("no job was started on this stream"))
    }

    fn ncf(&mut self) -> Result<&mut NcfJob, SplitError> {
        self.ncf
            .as_mut()
            .ok_or_else(|| refused("no recommendation job was started on this stream"))
    }

    /// The encoding of the tensors the job sends.
    fn encoding(&mut self) -> Result<Encoding, SplitError> {
        match &self.ncf {
            Some(ncf) => Ok(ncf.encoding),
            None => Ok(self.opened()?.encoding),
        }
    }

    /// The domain's share of the running job, whichever its kind: every batch plan, gradient,
    /// tower output, report and label request is answered (and checked) there.
    fn session(&mut self) -> Result<&mut PartySession, SplitError> {
        if let Some(ncf) = &mut self.ncf {
            return Ok(ncf.party.session_mut());
        }
        self.session.as_mut().ok_or_else(|| {
            refused("this domain was sent no partition: it holds nothing of the run yet")
        })
    }

    /// The id of the job on this stream.
    fn job_id(&mut self) -> Result<String, SplitError> {
        if let Some(job) = &self.horizontal {
            return Ok(job.id.clone());
        }
        match &self.ncf {
            Some(ncf) => Ok(ncf.id.clone()),
            None => Ok(self.opened()?.id.clone()),
        }
    }

    /// This domain's entry in a job's spec, its contract pointed at the node's own product
    /// (whatever path the submitter's spec names).
    fn own_domain(&self, job: &Job, domain: &str, id: &str) -> Result<DomainSpec, SplitError> {
        self.check_serves(domain)?;
        let mut entry = job
            .spec
            .domains
            .iter()
            .find(|d| d.name == domain)
            .cloned()
            .ok_or_else(|| refused(format!("{id} has no domain `{domain}`")))?;
        entry.contract = std::path::absolute(&self.product.contract)?;
        Ok(entry)
    }

    /// Refuses a stream meant for another domain's node.
    fn check_serves(&self, domain: &str) -> Result<(), SplitError> {
        if domain == self.product.domain {
            Ok(())
        } else {
            Err(refused(format!(
                "this node serves domain `{}`, not `{domain}`",
                self.product.domain
            )))
        }
    }

    /// The domain's own admission around reading its product for a job: `usage` is checked
    /// before any data is read (a domain never relies on governance having asked); `read`
    /// loads the product, and one that breaks a blocking rule keeps the domain out; the
    /// catalog learns what was found; the usage is checked again on the product's rows.
    fn admit_and_read<T>(
        &self,
        contract: &DataContract,
        usage: &Usage,
        read: impl FnOnce() -> Result<T, SplitError>,
        product: impl Fn(&T) -> &DataProduct,
    ) -> Result<T, SplitError> {
        let denials = self.context.check(contract, usage, None);
        if !denials.is_empty() {
            self.context.audit_decision(usage, &denials, "job start")?;
            return Err(crate::admission::denied(&denials));
        }
        let read = match read() {
            Ok(read) => read,
            Err(SplitError::Data(DataError::Violation(violation))) => {
                return Err(self.refuse_blocked(contract, &violation, &usage.job));
            }
            Err(e) => return Err(e),
        };
        let rows = product(&read).rows();
        self.context.register(registration(
            &product(&read).contract,
            Some(rows),
            &fedmesh_data::QualityReport::of(product(&read)),
        ));
        let denials = self.context.check(contract, usage, Some(rows));
        self.context.audit_decision(usage, &denials, "job start")?;
        if !denials.is_empty() {
            return Err(crate::admission::denied(&denials));
        }
        Ok(read)
    }

    /// A product that breaks its contract keeps its domain out; the catalog and the job's
    /// status both say why.
    fn refuse_blocked(
        &self,
        contract: &DataContract,
        violation: &fedmesh_data::Violation,
        job_id: &str,
    ) -> SplitError {
        let domain = &self.product.domain;
        if let Some(cell) = &violation.cell {
            // The cell stays here: what goes to governance names the row, not the value.
            tracing::warn!("{violation}; the cell holds {cell:?} (this node's log only)");
        }
        self.context.register(registration(
            contract,
            None,
            &fedmesh_data::QualityReport::blocked(violation.to_string()),
        ));
        let reason = format!(
            "{violation} (severity error): `{domain}` stays out of the job until the data is fixed"
        );
        if let Err(e) = self.context.audit(
            Entry::new(domain.clone(), "job.denied", job_id.to_string())
                .detail("at", "contract check")
                .detail("denials", [&reason]),
        ) {
            return e;
        }
        SplitError::Denied(vec![format!("{domain} refuses: {reason}")])
    }

    /// Opens a recommendation job: checks the usage against the domain's rules, reads its
    /// product from its own copy of the dataset, and builds its share of the split NCF.
    fn open_recommendation(&self, start: v1::JobStart) -> Result<NcfJob, SplitError> {
        check_job_id(&start.job_id)?;
        let origin = PathBuf::from(format!("job `{}`", start.job_id));
        let spec = RecommendationSpec::from_yaml(&start.spec_yaml, &origin)?;
        self.check_serves(&start.domain)?;
        // Serving a trained run's rankings: its parts are read from where this node saved them.
        let trained = if start.trained_run.is_empty() {
            None
        } else {
            check_job_id(&start.trained_run)?;
            Some(self.product.models.join(&start.trained_run))
        };
        let action = if trained.is_some() {
            Action::Predict
        } else {
            Action::Train
        };
        let role = spec.role_of(&start.domain).ok_or_else(|| {
            refused(format!(
                "job `{}` has no domain `{}`",
                start.job_id, start.domain
            ))
        })?;
        let contract = DataContract::from_path(&self.product.contract)?;
        let usage = Usage {
            job: start.job_id.clone(),
            requester: start.requester.clone(),
            product: contract.product_name().to_string(),
            product_version: contract.version.clone(),
            ..fedmesh_split::usage::recommendation_usage(&spec, role, action, start.share_labels)?
        };
        let share = self.admit_and_read(
            &contract,
            &usage,
            || spec.read_product(role, &self.product.contract, self.product.data.as_deref()),
            RetailShare::product,
        )?;
        let rows = share.product().rows();
        let model = spec.split_model()?;
        let party = match share {
            RetailShare::Sales {
                interactions,
                split,
                ..
            } => NcfParty::sales(
                &self.product.domain,
                model,
                &interactions,
                split,
                &spec.training,
                !start.share_labels,
                start.seed,
                trained.as_deref(),
            )?,
            RetailShare::Entity(entities) => NcfParty::entity(
                role,
                &self.product.domain,
                model,
                entities,
                &spec.training.optimizer,
                start.seed,
                trained.as_deref(),
            )?,
        };
        tracing::info!(
            "job `{}`: {rows} rows of `{}` as the {} domain of a recommendation job",
            start.job_id,
            contract.product_name(),
            role.name()
        );
        Ok(NcfJob {
            id: start.job_id,
            spec,
            party,
            usage,
            rows,
            share_labels: start.share_labels,
            encoding: Encoding::try_from(start.encoding).unwrap_or(Encoding::F32),
            passes: 0,
            served_users: 0,
        })
    }

    /// Notes governance's audit head, sent with the job, in the node's own log.
    fn anchor_governance(
        &self,
        job_id: &str,
        head: Option<v1::AuditHead>,
    ) -> Result<(), SplitError> {
        let Some(head) = head else {
            return Ok(());
        };
        let governance = &self.context.governance;
        let head = fedmesh_net::convert::audit_head_from_wire(head, governance)?;
        self.context.audit(Entry::anchor(
            self.product.domain.clone(),
            job_id,
            governance,
            &head,
        ))
    }

    /// A stream that serves a trained run's rankings neither trains nor saves, and reports
    /// nothing of its candidates but the ranking.
    fn check_serving(&self, command: &Command) -> Result<(), SplitError> {
        if !self.ncf.as_ref().is_some_and(|ncf| ncf.party.serving()) {
            return Ok(());
        }
        let trains = match command {
            Command::Plan(plan) => plan.pass() == v1::batch_plan::Pass::Train,
            Command::Step(_)
            | Command::Gradient(_)
            | Command::HeadTrain(_)
            | Command::Save(_)
            | Command::Checkpoint(_)
            | Command::Restore(_)
            | Command::Report(_)
            | Command::Rank(_) => true,
            _ => false,
        };
        if trains {
            Err(refused(
                "this stream serves a trained model's rankings: it takes no training, saving or report message",
            ))
        } else {
            Ok(())
        }
    }

    /// Answers a recommendation job's own messages.
    fn handle_ncf(&mut self, command: Command) -> Result<Reply, SplitError> {
        let ncf = self.ncf()?;
        Ok(match command {
            Command::EntitiesRequest(_) => {
                let (users, items) = ncf.party.entities()?;
                Reply::Entities(v1::Entities {
                    users,
                    items,
                    cut_width: ncf.party.cut_width() as u32,
                })
            }
            Command::Entities(entities) => {
                let ids = match ncf.party.role {
                    NcfRole::Customer => entities.users,
                    NcfRole::Product => entities.items,
                    NcfRole::Sales => return Err(refused("sales names the entities itself")),
                };
                let width = ncf.party.set_entities(&ids)?;
                Reply::Ready(v1::Ready {
                    rows: ids.len() as u64,
                    cut_width: width as u32,
                    keyed: false,
                    alignment_kept: false,
                })
            }
            Command::ExamplesRequest(request) => {
                let pass = v1::examples_request::Pass::try_from(request.pass).map_err(|_| {
                    refused(format!(
                        "pass {} is not one fedmesh draws examples for",
                        request.pass
                    ))
                })?;
                let pass = match pass {
                    v1::examples_request::Pass::Train => ExamplePass::Training,
                    v1::examples_request::Pass::Test => ExamplePass::Test,
                    v1::examples_request::Pass::Validation => ExamplePass::Validation,
                    v1::examples_request::Pass::Candidates => {
                        ncf.served_users += 1;
                        ExamplePass::Candidates(request.user)
                    }
                };
                let (users, items) = ncf.party.draw(pass)?;
                ncf.passes += 1;
                Reply::Examples(v1::Examples { users, items })
            }
            Command::ExampleEntities(rows) => {
                ncf.party.set_examples(&rows.entities)?;
                ncf.passes += 1;
                Reply::Ready(v1::Ready {
                    rows: rows.entities.len() as u64,
                    cut_width: ncf.party.cut_width() as u32,
                    keyed: false,
                    alignment_kept: false,
                })
            }
            Command::Rank(_) => {
                if ncf.share_labels {
                    return Err(refused(
                        "labels are shared in this job: governance ranks the test cases",
                    ));
                }
                let metrics = ncf.party.rank()?;
                Reply::ReportJson(serde_json::to_string(&metrics).expect("metrics serialize"))
            }
            Command::TopK(request) => {
                // A ranking is the operator's answer: bounded by the items sales holds.
                let scores = (!request.scores.is_empty()).then_some(request.scores);
                let ranked = ncf.party.top_k(request.k as usize, scores)?;
                let (items, scores) = ranked.into_iter().unzip();
                Reply::Ranked(v1::Ranked { items, scores })
            }
            _ => return Err(refused("not a message of a recommendation job")),
        })
    }

    fn open(&self, start: v1::JobStart) -> Result<OpenedJob, SplitError> {
        check_job_id(&start.job_id)?;
        let origin = PathBuf::from(format!("job `{}`", start.job_id));
        let mut job = Job::from_yaml(&start.spec_yaml, &origin)?;
        if job.spec.split.test_keys.is_some() {
            return Err(refused(format!(
                "job `{}` names a file of test keys; a node reads no file a job names: send the keys inline (`test_key_values`), as governance does",
                start.job_id
            )));
        }
        let domain = self.own_domain(&job, &start.domain, &format!("job `{}`", start.job_id))?;
        job.file = origin;
        // The domain's own admission, before any data is read: it never relies on governance
        // having asked.
        let contract = DataContract::from_path(&domain.contract)?;
        let usage = fedmesh_split::usage::usage(
            &job,
            &start.job_id,
            &domain.name,
            &contract,
            &start.requester,
            start.share_labels,
            Action::Train,
        )?;
        let (product, origin) = self.admit_and_read(
            &contract,
            &usage,
            || {
                job.load_product(
                    &domain,
                    self.product.data.as_deref(),
                    self.product.example_source.as_deref(),
                    &mut SourceCache::default(),
                )
            },
            |(product, _)| product,
        )?;
        let keys = product_keys(&product)?;
        let fingerprint = keys.as_deref().map(fingerprint);
        tracing::info!(
            "job `{}`: {} rows of `{}` from {origin}",
            start.job_id,
            product.rows(),
            product.name()
        );
        Ok(OpenedJob {
            id: start.job_id,
            job,
            domain,
            product,
            seed: start.seed,
            share_labels: start.share_labels,
            encoding: Encoding::try_from(start.encoding).unwrap_or(Encoding::F32),
            targets: None,
            keys,
            alignment: None,
            usage,
            alignment_id: start.alignment_id,
            fingerprint,
            partition_sizes: None,
            split_keys: None,
        })
    }

    /// The rows the alignment run named at `start` found for this very product, when the node
    /// still holds them.
    fn kept_alignment(&self, opened: &OpenedJob) -> Option<Arc<Vec<u32>>> {
        let fingerprint = opened.fingerprint?;
        if opened.alignment_id.is_empty() {
            return None;
        }
        self.context
            .alignments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&opened.alignment_id, &fingerprint)
            .cloned()
    }

    /// Takes the rows of an earlier run of the job's alignment, instead of aligning anew.
    fn reuse_alignment(&mut self) -> Result<u64, SplitError> {
        let opened = self.opened()?;
        if opened.keys.is_none() || opened.alignment.is_some() {
            return Err(refused(
                "this domain's product is aligned already, or being aligned, or has no key column",
            ));
        }
        let opened = self.opened.as_ref().expect("checked above");
        let rows = self.kept_alignment(opened).ok_or_else(|| {
            refused(format!(
                "this domain no longer holds alignment run `{}` for its product as it is now: governance must align anew",
                opened.alignment_id
            ))
        })?;
        let method = format!(
            "private set intersection, kept from `{}`",
            opened.alignment_id
        );
        self.take_aligned_rows(rows, &method)
    }

    /// Keeps the product's rows of the intersection, ordered by key; records the alignment and
    /// checks the contract's least number of records against what remains.
    fn take_aligned_rows(&mut self, rows: Arc<Vec<u32>>, method: &str) -> Result<u64, SplitError> {
        let opened = self.opened()?;
        let keys = opened
            .keys
            .take()
            .expect("an unaligned product has its keys");
        opened.product = opened.product.take_rows(&rows)?;
        tracing::info!(
            "job `{}`: aligned ({method}), {} of {} rows of `{}` are common to every domain",
            opened.id,
            rows.len(),
            keys.len(),
            opened.product.name()
        );
        let (id, usage) = (opened.id.clone(), opened.usage.clone());
        let contract = opened.product.contract.clone();
        self.context.audit(
            Entry::new(self.product.domain.clone(), "alignment.run", id)
                .detail("method", method)
                .detail("product_rows", keys.len())
                .detail("aligned_rows", rows.len()),
        )?;
        // Fewer common entities than the contract allows: the domain withdraws now, before a
        // model is fit to them.
        let denials = fedmesh_policy::check_contract(&contract, &usage, Some(rows.len()));
        if !denials.is_empty() {
            self.context.audit_decision(&usage, &denials, "alignment")?;
            return Err(crate::admission::denied(&denials));
        }
        Ok(rows.len() as u64)
    }

    /// A keyed product must be aligned before its rows mean anything to the others.
    fn check_aligned(&mut self) -> Result<(), SplitError> {
        if self.opened()?.keys.is_some() {
            return Err(refused(
                "the product's rows are not aligned yet: governance must run the alignment first",
            ));
        }
        Ok(())
    }

    /// Fits the pipeline on the training rows and builds the bottom.
    fn build(&mut self, partition: &Partition) -> Result<v1::Ready, SplitError> {
        self.check_aligned()?;
        let opened = self.opened()?;
        // The label owner's labels, drawn with the partition it was asked for.
        let targets = match (opened.owns_labels(), &opened.targets) {
            (false, _) => None,
            (true, Some(targets)) => Some(targets.clone()),
            (true, None) => {
                return Err(refused("the label owner was not asked for the partition"));
            }
        };
        let prepared =
            opened
                .job
                .prepare_domain(&opened.domain, &opened.product, &partition.train)?;
        let rows = opened.product.rows() as u64;
        opened.partition_sizes = Some([
            partition.train.len(),
            partition.valid.len(),
            partition.test.len(),
        ]);
        let mut session = PartySession::new(opened.domain.name.clone());
        if let Some(prepared) = &prepared {
            session = session.with_bottom(opened.job.spec.domain_party(prepared, opened.seed)?);
        }
        if let Some(targets) = targets {
            session = if opened.share_labels {
                session.with_shared_labels(targets)
            } else {
                let (spec, seed) = (opened.job.spec.clone(), opened.seed);
                let train = partition.train.clone();
                session.with_head_recipe(
                    targets,
                    Box::new(move |targets, width| spec.label_owner(targets, &train, width, seed)),
                )
            };
        }
        fedmesh_split::job::seed_training_randomness(opened.seed);
        let cut_width = session.cut_width() as u32;
        self.session = Some(session);
        self.prepared = prepared;
        Ok(v1::Ready {
            rows,
            cut_width,
            keyed: false,
            alignment_kept: false,
        })
    }

    /// What a horizontal job (or model run) `job` asks of this node's product for `action`:
    /// the domain's position in the spec, its contract, and the usage to check.
    fn horizontal_usage(
        &self,
        spec: &HorizontalSpec,
        domain: &str,
        job: &str,
        requester: &str,
        action: Action,
    ) -> Result<(usize, DataContract, Usage), SplitError> {
        self.check_serves(domain)?;
        let index = spec
            .domains
            .iter()
            .position(|d| d.name == domain)
            .ok_or_else(|| refused(format!("`{job}` has no domain `{domain}`")))?;
        let contract = DataContract::from_path(&self.product.contract)?;
        let usage = Usage {
            job: job.to_string(),
            requester: requester.to_string(),
            product: contract.product_name().to_string(),
            product_version: contract.version.clone(),
            ..fedmesh_split::usage::horizontal_usage(spec, domain, action)?
        };
        Ok((index, contract, usage))
    }

    /// Opens a horizontal job: checks the usage against the domain's rules, reads its product
    /// (from its own copy, never a path in the spec), and partitions its rows.
    fn open_horizontal(&self, start: v1::JobStart) -> Result<HorizontalJob, SplitError> {
        check_job_id(&start.job_id)?;
        let origin = PathBuf::from(format!("job `{}`", start.job_id));
        let spec = HorizontalSpec::from_yaml(&start.spec_yaml, &origin)?;
        if spec.split.test_keys.is_some() {
            return Err(refused(format!(
                "job `{}` names a file of test keys; a node reads no file a job names: send the keys inline (`test_key_values`), as governance does",
                start.job_id
            )));
        }
        let (index, contract, usage) = self.horizontal_usage(
            &spec,
            &start.domain,
            &start.job_id,
            &start.requester,
            Action::Train,
        )?;
        let contract_path = std::path::absolute(&self.product.contract)?;
        let (product, origin) = self.admit_and_read(
            &contract,
            &usage,
            || {
                spec.load_product(
                    Path::new("."),
                    index,
                    &contract_path,
                    self.product.data.as_deref(),
                    self.product.example_source.as_deref(),
                    &mut SourceCache::default(),
                )
            },
            |(product, _)| product,
        )?;
        let rows = product.rows();
        tracing::info!(
            "job `{}`: {rows} rows of `{}` from {origin}, as domain `{}` of a horizontal job",
            start.job_id,
            product.name(),
            start.domain
        );
        let domain = FederatedDomain::open(&spec, Path::new("."), product, index, start.seed)?;
        Ok(HorizontalJob {
            id: start.job_id,
            spec,
            domain,
            usage,
            rows,
        })
    }

    /// Saves the trained parts and the pipeline under `models/<job id>/`.
    fn save(&mut self) -> Result<Vec<PathBuf>, SplitError> {
        if let Some(job) = &self.horizontal {
            // The global model the domain was sent last: the run's kept model.
            let dir = self.product.models.join(&job.id);
            std::fs::create_dir_all(&dir)?;
            let (model, pipeline) = job
                .domain
                .model()
                .zip(job.domain.pipeline())
                .ok_or_else(|| refused("the domain holds no model of this job yet"))?;
            let path = dir.join("pipeline.json");
            std::fs::write(&path, pipeline.to_json())?;
            return Ok(vec![
                fedmesh_split::party::save_part(model, &dir, "model")?,
                path,
            ]);
        }
        let id = self.job_id()?;
        let dir = self.product.models.join(id);
        std::fs::create_dir_all(&dir)?;
        let mut parts = self.session()?.save(&dir)?;
        if let Some(prepared) = &self.prepared {
            let path = dir.join(pipeline_file(&prepared.name));
            std::fs::write(&path, prepared.pipeline.to_json())?;
            parts.push(path);
        }
        // A vertical job's label owner (a recommendation job opens no such job).
        if let Some((keys, partition)) = self.opened.as_ref().and_then(|o| o.split_keys.as_ref()) {
            parts.extend(write_split_keys(&dir, keys, partition)?);
        }
        Ok(parts)
    }

    /// Records what a prediction scored and sent.
    fn audit_prediction(&self, predicting: &Predicting) -> Result<(), SplitError> {
        self.context.audit(
            Entry::new(
                self.product.domain.clone(),
                "predictions.served",
                predicting.run_id.clone(),
            )
            .detail("requester", &predicting.usage.requester)
            .detail("purpose", &predicting.usage.purpose)
            .detail("keys_requested", predicting.requested)
            .detail("keys_found", predicting.rows.len())
            .detail("rows_scored", predicting.scored)
            .detail("bytes_sent", self.traffic.sent),
        )
    }

    /// Records what the finished run used and sent.
    fn audit_run(&self) -> Result<(), SplitError> {
        if let Some(job) = &self.horizontal {
            // Rows and rounds, never a weight.
            let partition = job.domain.partition();
            return self.context.audit(
                Entry::new(self.product.domain.clone(), "training.run", job.id.clone())
                    .detail(
                        "product",
                        format!("{} {}", job.usage.product, job.usage.product_version),
                    )
                    .detail("technique", &job.spec.technique)
                    .detail("columns", &job.usage.columns)
                    .detail("label_column", &job.usage.label_column)
                    .detail("rows", job.rows)
                    .detail(
                        "partition",
                        [
                            partition.train.len(),
                            partition.valid.len(),
                            partition.test.len(),
                        ],
                    )
                    .detail("rounds", job.domain.rounds)
                    .detail("rows_trained", job.domain.rows_trained)
                    .detail("bytes_sent", self.traffic.sent)
                    .detail("bytes_received", self.traffic.received),
            );
        }
        if let Some(ncf) = self.ncf.as_ref().filter(|ncf| ncf.party.serving()) {
            return self.context.audit(
                Entry::new(
                    self.product.domain.clone(),
                    "rankings.served",
                    ncf.id.clone(),
                )
                .detail("requester", &ncf.usage.requester)
                .detail("purpose", &ncf.usage.purpose)
                .detail(
                    "product",
                    format!("{} {}", ncf.usage.product, ncf.usage.product_version),
                )
                .detail("role", ncf.party.role.name())
                .detail("columns", &ncf.usage.columns)
                .detail("users", ncf.served_users)
                .detail("bytes_sent", self.traffic.sent),
            );
        }
        if let Some(ncf) = &self.ncf {
            return self.context.audit(
                Entry::new(self.product.domain.clone(), "training.run", ncf.id.clone())
                    .detail(
                        "product",
                        format!("{} {}", ncf.usage.product, ncf.usage.product_version),
                    )
                    .detail("role", ncf.party.role.name())
                    .detail("columns", &ncf.usage.columns)
                    .detail(
                        "labels_shared",
                        ncf.share_labels && ncf.party.role == NcfRole::Sales,
                    )
                    .detail("rows", ncf.rows)
                    .detail("epochs", ncf.spec.training.epochs)
                    .detail("example_passes", ncf.passes)
                    .detail("batches", ncf.party.session().plans())
                    .detail("bytes_sent", self.traffic.sent)
                    .detail("bytes_received", self.traffic.received),
            );
        }
        let Some(opened) = &self.opened else {
            return Ok(());
        };
        self.context.audit(
            Entry::new(
                self.product.domain.clone(),
                "training.run",
                opened.id.clone(),
            )
            .detail(
                "product",
                format!("{} {}", opened.usage.product, opened.usage.product_version),
            )
            .detail("columns", &opened.usage.columns)
            .detail("label_column", &opened.usage.label_column)
            .detail("labels_shared", opened.share_labels && opened.owns_labels())
            .detail("rows", opened.product.rows())
            .detail("partition", opened.partition_sizes)
            .detail("epochs", opened.job.spec.training.epochs)
            .detail(
                "batches",
                self.session.as_ref().map_or(0, PartySession::plans),
            )
            .detail("bytes_sent", self.traffic.sent)
            .detail("bytes_received", self.traffic.received),
        )
    }

    /// Opens split inference: checks the usage against the domain's rules, finds the requested
    /// keys in the product, and loads the run's pipeline, bottom and (lazily) head.
    fn start_prediction(&mut self, start: v1::PredictStart) -> Result<v1::Found, SplitError> {
        check_job_id(&start.run_id)?;
        if is_horizontal(&start.spec_yaml) {
            return self.start_horizontal_prediction(start);
        }
        let origin = PathBuf::from(format!("model run `{}`", start.run_id));
        let job = Job::from_yaml(&start.spec_yaml, &origin)?;
        let domain = self.own_domain(
            &job,
            &start.domain,
            &format!("model run `{}`", start.run_id),
        )?;
        let contract = DataContract::from_path(&domain.contract)?;
        let usage = fedmesh_split::usage::usage(
            &job,
            &start.run_id,
            &domain.name,
            &contract,
            &start.requester,
            start.share_labels,
            Action::Predict,
        )?;
        let denials = self.context.check(&contract, &usage, None);
        self.context
            .audit_decision(&usage, &denials, "prediction")?;
        if !denials.is_empty() {
            return Err(crate::admission::denied(&denials));
        }
        let (product, _) = job.load_product(
            &domain,
            self.product.data.as_deref(),
            self.product.example_source.as_deref(),
            &mut SourceCache::default(),
        )?;
        let found = requested_rows(&product, &start.keys)?;
        // The bottom sees only the requested rows, in request order.
        let product = product.take_rows(&found.iter().map(|&(_, row)| row).collect::<Vec<_>>())?;
        let run_dir = self.product.models.join(&start.run_id);
        let bottom = if domain.features.is_empty() {
            None
        } else {
            Some(job.spec.inference_bottom(&domain, &product, &run_dir)?)
        };
        let cut_width = bottom.as_ref().map_or(0, |b| b.cut_width() as u32);
        tracing::info!(
            "model run `{}`: {} of {} requested keys found in `{}`",
            start.run_id,
            found.len(),
            start.keys.len(),
            product.name()
        );
        let positions = found.iter().map(|&(position, _)| position).collect();
        self.predicting = Some(Predicting {
            run_id: start.run_id,
            job: Some(job),
            horizontal: None,
            usage,
            rows: found
                .iter()
                .enumerate()
                .map(|(i, &(position, _))| (position, i as u32))
                .collect(),
            requested: start.keys.len(),
            scored: 0,
            bottom,
            head: None,
            encoding: Encoding::F32,
        });
        Ok(v1::Found {
            positions,
            cut_width,
        })
    }

    /// Opens scoring with a horizontal model: the domain finds the requested keys in its
    /// product and scores them itself with the model and pipeline it saved.
    fn start_horizontal_prediction(
        &mut self,
        start: v1::PredictStart,
    ) -> Result<v1::Found, SplitError> {
        let origin = PathBuf::from(format!("model run `{}`", start.run_id));
        let spec = HorizontalSpec::from_yaml(&start.spec_yaml, &origin)?;
        let (index, contract, usage) = self.horizontal_usage(
            &spec,
            &start.domain,
            &start.run_id,
            &start.requester,
            Action::Predict,
        )?;
        let denials = self.context.check(&contract, &usage, None);
        self.context
            .audit_decision(&usage, &denials, "prediction")?;
        if !denials.is_empty() {
            return Err(crate::admission::denied(&denials));
        }
        let (product, _) = spec.load_product(
            Path::new("."),
            index,
            &std::path::absolute(&self.product.contract)?,
            self.product.data.as_deref(),
            self.product.example_source.as_deref(),
            &mut SourceCache::default(),
        )?;
        let found = requested_rows(&product, &start.keys)?;
        let product = product.take_rows(&found.iter().map(|&(_, row)| row).collect::<Vec<_>>())?;
        let scorer = fedmesh_split::horizontal::HorizontalScorer::load(
            &spec,
            &product,
            &self.product.models.join(&start.run_id),
        )?;
        self.predicting = Some(Predicting {
            run_id: start.run_id,
            job: None,
            horizontal: Some(scorer),
            usage,
            rows: found
                .iter()
                .enumerate()
                .map(|(i, &(position, _))| (position, i as u32))
                .collect(),
            requested: start.keys.len(),
            scored: 0,
            bottom: None,
            head: None,
            encoding: Encoding::F32,
        });
        Ok(v1::Found {
            positions: found.iter().map(|&(position, _)| position).collect(),
            cut_width: 0,
        })
    }

    fn predicting(&mut self) -> Result<&mut Predicting, SplitError> {
        self.predicting
            .as_mut()
            .ok_or_else(|| refused("no prediction was started on this stream"))
    }

    /// Answers one message; `None` for a gradient, which has no answer unless it fails.
    fn handle(&mut self, command: Command) -> Result<Option<Reply>, SplitError> {
        self.check_serving(&command)?;
        let reply = match command {
            command @ (Command::FeatureSums(_)
            | Command::FeatureTotalsJson(_)
            | Command::LocalRound(_)
            | Command::UpdateRequest(_)
            | Command::Roster(_)
            | Command::Inbox(_)
            | Command::Survivors(_)
            | Command::Evaluate(_)) => {
                let message = to_domain_from_wire(&command)?
                    .ok_or_else(|| refused("not a message of a horizontal job"))?;
                let job = self
                    .horizontal
                    .as_mut()
                    .ok_or_else(|| refused("no horizontal job was started on this stream"))?;
                from_domain_to_wire(&job.domain.handle(message)?)
            }
            command @ (Command::EntitiesRequest(_)
            | Command::Entities(_)
            | Command::ExamplesRequest(_)
            | Command::ExampleEntities(_)
            | Command::Rank(_)
            | Command::TopK(_)) => self.handle_ncf(command)?,
            Command::Predict(start) => Reply::Found(self.start_prediction(start)?),
            Command::PredictRows(request) => {
                let predicting = self.predicting()?;
                let rows = request
                    .positions
                    .iter()
                    .map(|p| {
                        predicting.rows.get(p).copied().ok_or_else(|| {
                            refused(format!(
                                "asked for request position {p}, which this domain does not hold"
                            ))
                        })
                    })
                    .collect::<Result<Vec<u32>, _>>()?;
                predicting.scored += rows.len();
                if let Some(scorer) = &predicting.horizontal {
                    let (values, cols) = scorer.scores(&rows)?;
                    return Ok(Some(Reply::Scores(v1::Scores {
                        values,
                        cols: cols as u32,
                    })));
                }
                let encoding = predicting.encoding;
                let bottom = predicting
                    .bottom
                    .as_mut()
                    .ok_or_else(|| refused("this domain contributes no features to the model"))?;
                let activation = bottom.forward(&fedmesh_split::BatchPlan::eval(
                    fedmesh_split::Part::Test,
                    rows,
                ))?;
                Reply::Activation(tensor_to_wire(&activation, encoding))
            }
            Command::PredictHead(tensor) => {
                let z = tensor_from_wire(Some(&tensor))?;
                let models = self.product.models.clone();
                let domain = self.product.domain.clone();
                let predicting = self.predicting()?;
                let job = predicting
                    .job
                    .as_ref()
                    .filter(|job| job.spec.label.domain == domain)
                    .filter(|_| !predicting.usage.share_labels)
                    .ok_or_else(|| refused("this domain holds no head in this model"))?;
                let spec = job.spec.clone();
                if predicting.head.is_none() {
                    let path = models
                        .join(&predicting.run_id)
                        .join(format!("head-{domain}.bpk"));
                    predicting.head = Some(fedmesh_split::inference::HeadScorer::load(
                        &spec, z.cols, &path,
                    )?);
                }
                let head = predicting.head.as_ref().expect("loaded above");
                let values = head.scores(&z)?;
                let cols = (values.len() / z.rows.max(1)) as u32;
                Reply::Scores(v1::Scores { values, cols })
            }
            Command::Start(start) if is_horizontal(&start.spec_yaml) => {
                if self.opened.is_some() || self.ncf.is_some() || self.horizontal.is_some() {
                    return Err(refused("a job was started on this stream already"));
                }
                let governance = start.governance_audit.clone();
                let job = self.open_horizontal(start)?;
                self.anchor_governance(&job.id, governance)?;
                let rows = job.rows as u64;
                self.horizontal = Some(job);
                Reply::Ready(v1::Ready {
                    rows,
                    cut_width: 0,
                    keyed: false,
                    alignment_kept: false,
                })
            }
            Command::Start(start) if is_recommendation(&start.spec_yaml) => {
                let governance = start.governance_audit.clone();
                let ncf = self.open_recommendation(start)?;
                self.anchor_governance(&ncf.id, governance)?;
                let rows = ncf.rows as u64;
                self.ncf = Some(ncf);
                Reply::Ready(v1::Ready {
                    rows,
                    cut_width: 0,
                    keyed: false,
                    alignment_kept: false,
                })
            }
            Command::Start(start) => {
                let governance = start.governance_audit.clone();
                let opened = self.open(start)?;
                self.anchor_governance(&opened.id, governance)?;
                let rows = opened.product.rows() as u64;
                let keyed = opened.keys.is_some();
                let alignment_kept = self.kept_alignment(&opened).is_some();
                self.opened = Some(opened);
                Reply::Ready(v1::Ready {
                    rows,
                    cut_width: 0,
                    keyed,
                    alignment_kept,
                })
            }
            Command::Align(_) => {
                self.align()?;
                return Ok(None);
            }
            Command::Reblind(chunk) => self.reblind(chunk)?,
            Command::KkrtReceive(_) => self.kkrt_receive()?,
            Command::KkrtSend(setup) => self.kkrt_send(setup)?,
            Command::KkrtSenderSetup(answer) => {
                self.kkrt_accept(answer)?;
                return Ok(None);
            }
            Command::KkrtColumns(chunk) => {
                self.kkrt_absorb(chunk)?;
                return Ok(None);
            }
            Command::KkrtValues(chunk) => match self.kkrt_take_values(chunk)? {
                Some(reply) => reply,
                None => return Ok(None),
            },
            Command::KkrtFinish(_) => {
                self.kkrt_finish()?;
                return Ok(None);
            }
            Command::Members(chunk) => match self.take_members(chunk)? {
                Some(rows) => Reply::Aligned(v1::Aligned { rows }),
                None => return Ok(None),
            },
            Command::ReuseAlignment(_) => Reply::Aligned(v1::Aligned {
                rows: self.reuse_alignment()?,
            }),
            Command::PartitionRequest(_) => {
                self.check_aligned()?;
                let opened = self.opened()?;
                if !opened.owns_labels() {
                    return Err(refused("this domain owns no labels in this job"));
                }
                let (targets, partition) = opened.job.labels_and_partition(&opened.product)?;
                opened.targets = Some(targets);
                opened.split_keys =
                    product_keys(&opened.product)?.map(|keys| (keys, partition.clone()));
                Reply::Partition(v1::Partition {
                    train: partition.train,
                    valid: partition.valid,
                    test: partition.test,
                })
            }
            Command::Partition(p) => Reply::Ready(self.build(&Partition {
                train: p.train,
                valid: p.valid,
                test: p.test,
            })?),
            Command::Plan(plan) => {
                let plan = plan_from_wire(&plan)?;
                let encoding = self.encoding()?;
                let activation = self.session()?.forward(&plan)?;
                Reply::Activation(tensor_to_wire(&activation, encoding))
            }
            Command::Gradient(gradient) => {
                let gradient = tensor_from_wire(Some(&gradient))?;
                self.session()?.backward(&gradient)?;
                return Ok(None);
            }
            Command::Step(step) => {
                let gradient = tensor_from_wire(step.gradient.as_ref())?;
                let plan = plan_from_wire(&step.plan.unwrap_or_default())?;
                let encoding = self.encoding()?;
                let activation = self.session()?.step(&gradient, &plan)?;
                Reply::Activation(tensor_to_wire(&activation, encoding))
            }
            Command::HeadTrain(input) => {
                let plan = plan_from_wire(&input.plan.unwrap_or_default())?;
                let z = tensor_from_wire(input.tower_output.as_ref())?;
                let encoding = self.encoding()?;
                let step = self.session()?.head_train(&plan, &z)?;
                Reply::HeadStep(v1::HeadStep {
                    loss: step.loss,
                    gradient: Some(tensor_to_wire(&step.gradient, encoding)),
                })
            }
            Command::HeadEval(input) => {
                let plan = plan_from_wire(&input.plan.unwrap_or_default())?;
                let z = tensor_from_wire(input.tower_output.as_ref())?;
                self.session()?.head_eval(&plan, &z)?;
                Reply::Ack(v1::Empty {})
            }
            Command::Report(_) => {
                let report = self.session()?.head_report()?;
                Reply::ReportJson(serde_json::to_string(&report).expect("reports serialize"))
            }
            Command::Labels(_) => Reply::Labels(labels_to_wire(self.session()?.shared_labels()?)),
            Command::Checkpoint(_) => {
                self.session()?.checkpoint();
                Reply::Ack(v1::Empty {})
            }
            Command::Restore(_) => {
                self.session()?.restore()?;
                Reply::Ack(v1::Empty {})
            }
            Command::Save(_) => Reply::Saved(v1::Saved {
                parts: self
                    .save()?
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            }),
            Command::Finish(_) => {
                // Recorded before the answer, so that whoever sees the answer finds the record.
                if let Some(predicting) = self.predicting.take() {
                    self.audit_prediction(&predicting)?;
                }
                self.audit_run()?;
                // The node's head after recording the run, for governance to note.
                match self.context.audit_head()? {
                    Some(head) => Reply::AuditHead(head),
                    None => Reply::Ack(v1::Empty {}),
                }
            }
        };
        Ok(Some(reply))
    }
}

/// The results of a node's recent alignment runs, by run id, so that a job's later runs skip
/// private set intersection. An entry is used only for the product it was computed on (the
/// fingerprint of its keys, in order): every domain that reuses a run then reuses the result
/// of the same intersection of unchanged products.
#[derive(Default)]
pub(crate) struct KeptAlignments {
    entries: std::collections::VecDeque<(String, [u8; 32], Arc<Vec<u32>>)>,
}

/// Alignment runs a node keeps (each a few bytes per aligned row).
const KEPT_ALIGNMENTS: usize = 8;

impl KeptAlignments {
    fn get(&self, id: &str, fingerprint: &[u8; 32]) -> Option<&Arc<Vec<u32>>> {
        self.entries
            .iter()
            .find(|(i, f, _)| i == id && f == fingerprint)
            .map(|(_, _, rows)| rows)
    }

    /// Keeps `rows` under `id`, replacing what was kept under it; the oldest goes first.
    fn keep(&mut self, id: &str, fingerprint: [u8; 32], rows: Arc<Vec<u32>>) {
        self.entries.retain(|(i, _, _)| i != id);
        if self.entries.len() == KEPT_ALIGNMENTS {
            self.entries.pop_front();
        }
        self.entries.push_back((id.to_string(), fingerprint, rows));
    }
}

/// SHA-256 of a product's keys in order, each length-prefixed.
fn fingerprint(keys: &[String]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for key in keys {
        hash.update((key.len() as u64).to_le_bytes());
        hash.update(key.as_bytes());
    }
    hash.finalize().into()
}

/// The requested keys the product holds: (position in the request, row of the product).
fn requested_rows(product: &DataProduct, keys: &[String]) -> Result<Vec<(u32, u32)>, SplitError> {
    let held = product_keys(product)?.ok_or_else(|| {
        refused("the product has no key column: its entities cannot be looked up by key")
    })?;
    let index: std::collections::HashMap<&str, u32> = held
        .iter()
        .enumerate()
        .map(|(row, key)| (key.as_str(), row as u32))
        .collect();
    Ok(keys
        .iter()
        .enumerate()
        .filter_map(|(position, key)| index.get(key.as_str()).map(|&row| (position as u32, row)))
        .collect())
}

/// A job id names the folder its parts are saved in: plain names and `/` only.
fn check_job_id(id: &str) -> Result<(), SplitError> {
    let plain = !id.is_empty()
        && Path::new(id)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(refused(format!(
            "job id `{id}` is not a relative path of plain names"
        )))
    }
}
