//! One mesh harness for fedmesh's tests: governance, domain nodes and an operator on loopback,
//! with mutual TLS, in one process.
//!
//! Every test that needs a mesh starts it here, so that there is one way to stand one up. Each
//! node runs on its own tokio runtime, so that a test can kill one ([`TestMesh::kill`]) and the
//! rest keep serving. A test that drives runs itself (as governance's run driver does) uses
//! [`TestMesh::mesh`]; one that goes through governance's service — admission, job states,
//! audit, registry, prediction — starts the mesh [`with_governance`](MeshBuilder::with_governance)
//! and acts as the operator. Everything a mesh writes (certificates, each node's models and audit
//! log, governance's state) lives in one temporary folder, [`TestMesh::state`].
//!
//! ```no_run
//! use fedmesh_testkit::{MeshBuilder, example};
//! use fedmesh_split::job::Job;
//!
//! let job = Job::load(&example("fraud")).unwrap();
//! let mesh = MeshBuilder::for_job(&job).start();
//! let driver = mesh.mesh(); // governance's run driver, reaching the three nodes
//! # let _ = driver;
//! ```
//!
//! The separate-process harness of the command line's tests (`fedmesh mesh up`) is a test of
//! the binary, not another harness: it starts this same mesh as processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fedmesh_audit::{AuditLog, Record};
use fedmesh_governance::{GovernanceService, GovernanceState, Mesh, Store};
use fedmesh_net::client::Operator;
use fedmesh_net::{MeshIdentity, NodeEndpoint};
use fedmesh_node::{DomainNodeService, DomainProduct};
use fedmesh_proto::v1::JobRequest;
use fedmesh_proto::v1::domain_node_server::{DomainNode, DomainNodeServer};
use fedmesh_proto::v1::governance_server::GovernanceServer;
use fedmesh_split::job::Job;
use serde_json::Value;
use tokio::runtime::Runtime;

/// The domains of the fraud example (the paper's first use case).
pub const FRAUD_DOMAINS: [&str; 3] = ["digital", "retail", "fraud-prevention"];

/// Names with a certificate in every test mesh besides its domains: governance, the operator,
/// and names that tests present in place of another's.
const OTHER_NAMES: [&str; 7] = [
    "governance",
    "operator",
    "guest",
    "host",
    "sales",
    "customer",
    "product",
];

/// Governance's policies unless a test gives its own: anything by split learning, except
/// marketing.
pub const POLICIES: &str = r#"
@id("split-learning")
permit (principal, action, resource) when { context.technique == "split-learning" };

@id("no-marketing")
@reason("no domain's data may train models for marketing")
forbid (principal, action, resource) when { context.purpose == "marketing" };
"#;

/// An example's folder in the repository (`examples/NAME`).
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// The fraud example copied to `dir/fraud` (so that a test can edit its contracts), on 4,000
/// synthetic rows and `epochs` epochs; returns the copy's folder.
pub fn small_fraud(dir: &Path, epochs: usize) -> PathBuf {
    let source = example("fraud");
    let job = dir.join("fraud");
    std::fs::create_dir_all(job.join("contracts")).unwrap();
    for domain in FRAUD_DOMAINS {
        let file = format!("contracts/{domain}.odcs.yaml");
        std::fs::copy(source.join(&file), job.join(&file)).unwrap();
    }
    let spec = std::fs::read_to_string(source.join("job.yaml")).unwrap();
    let small = spec
        .replace("epochs: 5", &format!("epochs: {epochs}"))
        .replace("synthetic_rows: 284807", "synthetic_rows: 4000");
    assert_ne!(
        small, spec,
        "the fraud example's spec changed: update small_fraud"
    );
    std::fs::write(job.join("job.yaml"), small).unwrap();
    job
}

/// A domain node to start: the product it serves and the name its certificate carries.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub domain: String,
    pub contract: PathBuf,
    /// The certificate name the node presents (its domain's unless a test swaps it).
    pub presented: String,
    /// The public table an example's product is derived from.
    pub example_source: Option<PathBuf>,
    /// A Cedar policy of the domain's own.
    pub policy: Option<String>,
}

impl NodeSpec {
    pub fn new(domain: impl Into<String>, contract: impl Into<PathBuf>) -> Self {
        let domain = domain.into();
        Self {
            presented: domain.clone(),
            domain,
            contract: contract.into(),
            example_source: None,
            policy: None,
        }
    }
}

/// What mesh to start.
pub struct MeshBuilder {
    nodes: Vec<NodeSpec>,
    governance: Option<String>,
}

impl MeshBuilder {
    /// One node per `(domain, contract)`.
    pub fn nodes(nodes: impl IntoIterator<Item = NodeSpec>) -> Self {
        Self {
            nodes: nodes.into_iter().collect(),
            governance: None,
        }
    }

    /// One node per domain of `job`, serving the job's contracts (and its example's table).
    pub fn for_job(job: &Job) -> Self {
        let example_source = job.example_path();
        Self::nodes(job.spec.domains.iter().map(|d| NodeSpec {
            example_source: example_source.clone(),
            ..NodeSpec::new(d.name.clone(), job.dir().join(&d.contract))
        }))
    }

    /// Node `d` presents `name`'s certificate instead of its own.
    pub fn presenting(mut self, d: usize, name: &str) -> Self {
        self.nodes[d].presented = name.to_string();
        self
    }

    /// `domain`'s node applies a Cedar policy of its own.
    pub fn node_policy(mut self, domain: &str, policy: &str) -> Self {
        for node in self.nodes.iter_mut().filter(|n| n.domain == domain) {
            node.policy = Some(policy.to_string());
        }
        self
    }

    /// Starts governance's service too, with `policies` (Cedar), taking jobs from `operator`;
    /// the nodes then register their products in its catalog.
    pub fn with_governance(mut self, policies: &str) -> Self {
        self.governance = Some(policies.to_string());
        self
    }

    /// Starts the mesh on loopback.
    pub fn start(self) -> TestMesh {
        let state = tempfile::tempdir().unwrap();
        let certs = state.path().join("certs");
        fedmesh_tls::init_ca(&certs).unwrap();
        let mut names: Vec<&str> = OTHER_NAMES.to_vec();
        for node in &self.nodes {
            if !names.contains(&node.domain.as_str()) {
                names.push(&node.domain);
            }
        }
        for name in names {
            fedmesh_tls::issue(&certs, name).unwrap();
        }
        let governance_runtime = self.governance.as_ref().map(|_| Runtime::new().unwrap());
        let governance_listener = governance_runtime.as_ref().map(listen);
        let governance = governance_listener.as_ref().map(|(_, url)| NodeEndpoint {
            name: "governance".into(),
            url: url.clone(),
        });
        let mut nodes = Vec::new();
        let mut endpoints = Vec::new();
        let mut streams = Vec::new();
        for node in &self.nodes {
            let runtime = Runtime::new().unwrap();
            let identity = MeshIdentity::load(&certs, &node.presented).unwrap();
            let home = state.path().join(&node.domain);
            let policy = node.policy.as_ref().map(|text| {
                let path = state.path().join(format!("{}.cedar", node.domain));
                std::fs::write(&path, text).unwrap();
                path
            });
            let audit = AuditLog::open(&home.join("audit.sqlite"))
                .unwrap()
                .with_signer(fedmesh_net::identity::audit_signer(&certs, &node.domain).unwrap());
            let mut service = DomainNodeService::new(
                "governance",
                DomainProduct {
                    domain: node.domain.clone(),
                    contract: node.contract.clone(),
                    data: None,
                    example_source: node.example_source.clone(),
                    models: home.join("models"),
                    policy,
                },
            )
            .with_audit(Arc::new(audit));
            if let Some(governance) = &governance {
                let catalog = runtime.block_on(async {
                    fedmesh_node::catalog::spawn_registrar(identity.clone(), governance.clone())
                });
                service = service.with_catalog(catalog);
            }
            streams.push(service.accepted_streams());
            endpoints.push(NodeEndpoint {
                name: node.domain.clone(),
                url: serve(&runtime, &identity, DomainNodeServer::new(service)),
            });
            nodes.push(Some(runtime));
        }
        let mut mesh = TestMesh {
            nodes,
            endpoints,
            streams,
            governance: None,
            client: Runtime::new().unwrap(),
            state,
        };
        if let (Some(policies), Some(runtime), Some((listener, _)), Some(endpoint)) = (
            self.governance,
            governance_runtime,
            governance_listener,
            governance,
        ) {
            let policies_file = mesh.state.path().join("policies.cedar");
            std::fs::write(&policies_file, policies).unwrap();
            let identity = mesh.identity("governance");
            let (store, _) = Store::open(&mesh.state.path().join("governance.sqlite")).unwrap();
            let audit = AuditLog::open(&mesh.audit_path("governance"))
                .unwrap()
                .with_signer(
                    fedmesh_net::identity::audit_signer(&mesh.certs(), "governance").unwrap(),
                );
            let shared = Arc::new(GovernanceState::new(
                "governance".into(),
                Mesh::new(
                    mesh.identity("governance"),
                    mesh.endpoints.clone(),
                    Duration::from_secs(20),
                ),
                vec!["operator".into()],
                mesh.state.path().join("runs"),
                policies_file,
                store,
                audit,
            ));
            let incoming = runtime
                .block_on(async { fedmesh_net::server::tls_incoming(listener, &identity) })
                .unwrap();
            runtime.spawn(
                fedmesh_net::server::builder()
                    .add_service(GovernanceServer::new(GovernanceService::new(shared)))
                    .serve_with_incoming(incoming),
            );
            mesh.governance = Some((runtime, endpoint));
        }
        mesh
    }
}

/// A mesh on loopback: its nodes, governance when started, and a runtime for the operator.
pub struct TestMesh {
    /// Each node's runtime: dropping one kills that node's server and streams.
    pub nodes: Vec<Option<Runtime>>,
    /// Where each node listens, in the order they were given.
    pub endpoints: Vec<NodeEndpoint>,
    streams: Vec<Arc<AtomicUsize>>,
    governance: Option<(Runtime, NodeEndpoint)>,
    /// The operator's runtime.
    client: Runtime,
    /// Certificates (`certs/`), each domain's `models/` and `audit.sqlite` under its name,
    /// governance's `governance.sqlite`, `audit.sqlite` and `runs/`.
    pub state: tempfile::TempDir,
}

impl TestMesh {
    /// The folder of the mesh's CA and certificates.
    pub fn certs(&self) -> PathBuf {
        self.state.path().join("certs")
    }

    /// The identity (certificate and key) of `name`.
    pub fn identity(&self, name: &str) -> MeshIdentity {
        MeshIdentity::load(&self.certs(), name).unwrap()
    }

    /// Governance's run driver over the nodes, as governance.
    pub fn mesh(&self) -> Mesh {
        self.mesh_as(self.identity("governance"))
    }

    /// Governance's run driver over the nodes, presenting `identity`.
    pub fn mesh_as(&self, identity: MeshIdentity) -> Mesh {
        Mesh::new(identity, self.endpoints.clone(), Duration::from_secs(10))
    }

    /// Where `domain`'s node saves what it trains.
    pub fn models(&self, domain: &str) -> PathBuf {
        self.state.path().join(domain).join("models")
    }

    /// Kills node `d`: its server and streams stop at once.
    pub fn kill(&mut self, d: usize) -> Option<Runtime> {
        self.nodes[d].take()
    }

    /// How many job streams the nodes have accepted (refused callers are not counted).
    pub fn streams_accepted(&self) -> usize {
        self.streams.iter().map(|s| s.load(Ordering::SeqCst)).sum()
    }

    /// Runs `future` on the operator's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.client.block_on(future)
    }

    /// The operator, connected to governance.
    pub fn operator(&self) -> Operator {
        let (_, governance) = self
            .governance
            .as_ref()
            .expect("the mesh was started without governance");
        self.block_on(Operator::connect(&self.identity("operator"), governance))
            .unwrap()
    }

    /// Submits `job` for `configs` and seed 1; returns the job's record at admission.
    pub fn submit(&self, job: &Job, configs: &[&str]) -> Value {
        self.submit_spec(&job.to_portable_yaml().unwrap(), configs)
    }

    /// Submits a job spec's text for `configs` and seed 1; returns the job's record at
    /// admission.
    pub fn submit_spec(&self, spec_yaml: &str, configs: &[&str]) -> Value {
        let request = JobRequest {
            spec_yaml: spec_yaml.to_string(),
            configs: configs.iter().map(|c| c.to_string()).collect(),
            seeds: vec![1],
            epochs: 0,
        };
        self.block_on(self.operator().submit(request)).unwrap()
    }

    /// Waits (at most 2 minutes) for a job to reach a final state; returns its record.
    pub fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job = self.block_on(self.operator().job(id)).unwrap();
            if ["done", "failed", "denied", "cancelled"].contains(&job["state"].as_str().unwrap()) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not end: {job}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The audit log of `who` (`governance` or a domain).
    pub fn audit_path(&self, who: &str) -> PathBuf {
        if who == "governance" {
            self.state.path().join("audit.sqlite")
        } else {
            self.state.path().join(who).join("audit.sqlite")
        }
    }

    /// The records of `who`'s audit log, after checking its chain.
    pub fn audit(&self, who: &str) -> Vec<Record> {
        let log = AuditLog::open_existing(&self.audit_path(who)).unwrap();
        log.verify().unwrap();
        log.records(0).unwrap()
    }
}

/// Run `id` of a job with `config` and seed 1, asked by `operator`; with `save_to`,
/// governance's parts go there (and every node saves its own).
pub fn run<'a>(
    id: &'a str,
    config: &'a fedmesh_split::job::RunConfig,
    save_to: Option<&'a Path>,
) -> fedmesh_governance::MeshRun<'a> {
    fedmesh_governance::MeshRun {
        id,
        requester: "operator",
        config,
        seed: 1,
        save_to,
    }
}

/// A listener on a free loopback port of `runtime`, and its URL.
fn listen(runtime: &Runtime) -> (tokio::net::TcpListener, String) {
    let listener = runtime
        .block_on(fedmesh_net::server::listen(([127, 0, 0, 1], 0).into()))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, format!("https://127.0.0.1:{port}"))
}

/// Serves a domain node (honest or not) with `identity`'s certificate on a free loopback port
/// of `runtime`; returns its URL.
pub fn serve<S: DomainNode>(
    runtime: &Runtime,
    identity: &MeshIdentity,
    node: DomainNodeServer<S>,
) -> String {
    let (listener, url) = listen(runtime);
    let incoming = runtime
        .block_on(async { fedmesh_net::server::tls_incoming(listener, identity) })
        .unwrap();
    runtime.spawn(
        fedmesh_net::server::builder()
            .add_service(node)
            .serve_with_incoming(incoming),
    );
    url
}
