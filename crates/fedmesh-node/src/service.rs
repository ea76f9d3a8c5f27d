//! The `DomainNode` gRPC service: who may talk to the node, admission questions, and one
//! thread per job stream (the stream itself is [`crate::job`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fedmesh_audit::{AuditLog, Entry};
use fedmesh_data::DataContract;
use fedmesh_net::identity::authorize;
use fedmesh_policy::Usage;
use fedmesh_proto::v1::domain_node_server::DomainNode;
use fedmesh_proto::v1::{self, DomainMessage, GovernanceMessage};
use fedmesh_split::SplitError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::DomainProduct;

/// What a node shares among its jobs: its product, its audit log, and the channel that keeps
/// governance's catalog up to date.
#[derive(Clone)]
pub(crate) struct NodeContext {
    pub(crate) product: DomainProduct,
    /// The mesh's governance, whose audit head the node notes.
    pub(crate) governance: String,
    pub(crate) audit: Option<Arc<AuditLog>>,
    /// Results of recent alignment runs, shared by the node's job streams.
    pub(crate) alignments: Arc<std::sync::Mutex<crate::job::KeptAlignments>>,
    pub(crate) catalog: Option<mpsc::UnboundedSender<v1::ProductRegistration>>,
}

impl NodeContext {
    /// Appends to the node's audit log. The log fails closed: what cannot be recorded is not
    /// done, so a write that fails stops the job it was about.
    pub(crate) fn audit(&self, entry: Entry) -> Result<(), SplitError> {
        if let Some(log) = &self.audit
            && let Err(e) = log.append(entry)
        {
            tracing::error!("cannot write the audit log: {e}");
            return Err(SplitError::AuditFailed(e.to_string()));
        }
        Ok(())
    }

    /// The node's audit head, when it keeps a log.
    pub(crate) fn audit_head(&self) -> Result<Option<v1::AuditHead>, SplitError> {
        fedmesh_net::convert::audit_head_to_wire(self.audit.as_deref())
    }

    /// Tells governance's catalog what the node found in its product.
    pub(crate) fn register(&self, registration: v1::ProductRegistration) {
        if let Some(catalog) = &self.catalog {
            let _ = catalog.send(registration);
        }
    }

    /// The usage a job asks for, and the domain's denials of it (contract, then own policy).
    pub(crate) fn check(
        &self,
        contract: &DataContract,
        usage: &Usage,
        rows: Option<usize>,
    ) -> Vec<fedmesh_policy::Denial> {
        let mut denials = Vec::new();
        if usage.domain != self.product.domain || usage.product != contract.product_name() {
            denials.push(fedmesh_policy::Denial {
                by: self.product.domain.clone(),
                rule: "product".into(),
                source: self.product.contract.display().to_string(),
                reason: format!(
                    "this node serves `{}` of domain `{}`, not `{}` of `{}`",
                    contract.product_name(),
                    self.product.domain,
                    usage.product,
                    usage.domain
                ),
            });
        }
        denials.extend(crate::admission::domain_denials(
            contract,
            self.product.policy.as_deref(),
            usage,
            rows,
        ));
        denials
    }

    pub(crate) fn audit_decision(
        &self,
        usage: &Usage,
        denials: &[fedmesh_policy::Denial],
        at: &str,
    ) -> Result<(), SplitError> {
        let action = if denials.is_empty() {
            "job.admitted"
        } else {
            "job.denied"
        };
        self.audit(
            Entry::new(self.product.domain.clone(), action, usage.job.clone())
                .detail("at", at)
                .detail("requester", &usage.requester)
                .detail("purpose", &usage.purpose)
                .detail("technique", &usage.technique)
                .detail("share_labels", usage.share_labels)
                .detail(
                    "product",
                    format!("{} {}", usage.product, usage.product_version),
                )
                .detail("columns", &usage.columns)
                .detail("label_column", &usage.label_column)
                .detail(
                    "denials",
                    denials.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                ),
        )
    }
}

/// The `DomainNode` gRPC service.
pub struct DomainNodeService {
    /// Names allowed to open jobs (the mesh's governance).
    governance: Vec<String>,
    context: NodeContext,
    streams: Arc<AtomicUsize>,
}

impl DomainNodeService {
    pub fn new(governance: impl Into<String>, product: DomainProduct) -> Self {
        let governance = governance.into();
        Self {
            governance: vec![governance.clone()],
            context: NodeContext {
                product,
                governance,
                audit: None,
                alignments: Arc::default(),
                catalog: None,
            },
            streams: Arc::default(),
        }
    }

    /// Records admissions, alignments and training runs in `log`.
    pub fn with_audit(mut self, log: Arc<AuditLog>) -> Self {
        self.context.audit = Some(log);
        self
    }

    /// Sends what the node learns about its product (rows, quality) to governance's catalog.
    pub fn with_catalog(mut self, catalog: mpsc::UnboundedSender<v1::ProductRegistration>) -> Self {
        self.context.catalog = Some(catalog);
        self
    }

    /// How many job streams this node has accepted (callers it refused are not counted).
    pub fn accepted_streams(&self) -> Arc<AtomicUsize> {
        self.streams.clone()
    }
}

#[tonic::async_trait]
impl DomainNode for DomainNodeService {
    type TrainStream = ReceiverStream<Result<DomainMessage, Status>>;

    async fn admit(
        &self,
        request: Request<v1::AdmissionRequest>,
    ) -> Result<Response<v1::AdmissionReply>, Status> {
        authorize(&request, &self.governance)?;
        let mut usage: Usage = serde_json::from_str(&request.into_inner().usage_json)
            .map_err(|e| Status::invalid_argument(format!("a malformed usage: {e}")))?;
        let contract = DataContract::from_path(&self.context.product.contract)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        // Governance asks about the domain's product; the domain says which one, and which
        // version of its contract, is in force.
        if usage.product.is_empty() {
            usage.product = contract.product_name().to_string();
            usage.product_version = contract.version.clone();
        }
        let denials = self.context.check(&contract, &usage, None);
        self.context
            .audit_decision(&usage, &denials, "admission")
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(v1::AdmissionReply {
            denials_json: serde_json::to_string(&denials).expect("denials serialize"),
            usage_json: serde_json::to_string(&usage).expect("usages serialize"),
        }))
    }

    async fn train(
        &self,
        request: Request<Streaming<GovernanceMessage>>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        let caller = authorize(&request, &self.governance)?;
        self.streams.fetch_add(1, Ordering::SeqCst);
        let (replies, outbound) = mpsc::channel(4);
        let job = crate::job::serve(self.context.clone(), caller, request.into_inner(), replies);
        // One thread per job (see [`crate::job::serve`]): on a single-threaded runtime the job runs on the
        // runtime's own thread, so a message costs no hand-over between threads; on a
        // multi-threaded one it gets a thread of its own, as a task could move between workers.
        let runtime = tokio::runtime::Handle::current();
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            tokio::spawn(job);
        } else {
            std::thread::spawn(move || runtime.block_on(job));
        }
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}
