//! Split training over gRPC with mutual TLS on 127.0.0.1 equals the in-process run, and a node
//! with the wrong identity is refused before any of the job runs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fedmesh_data::{FeatureMatrix, Partition};
use fedmesh_model::{
    BottomConfig, BottomModel, Head, HeadConfig, Objective, Targets, Tower, TowerConfig, deep_copy,
    training_device,
};
use fedmesh_net::{
    DomainNodeService, GrpcTransport, MeshIdentity, NodeEndpoint, NodeParty, PartyFactory,
};
use fedmesh_proto::v1;
use fedmesh_proto::v1::domain_node_server::DomainNodeServer;
use fedmesh_split::{
    DomainParty, FitOutcome, InProcess, LabelOwner, LabelPlacement, Observer, OptimizerSpec,
    Silent, SplitError, SplitTrainer, Trainer, TrainingSpec, Transport, fit,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::runtime::Runtime;
use tonic::transport::Server;

const ROWS: usize = 120;
const DOMAINS: [&str; 3] = ["digital", "retail", "fraud-prevention"];

#[derive(Clone)]
struct Parts {
    features: Vec<FeatureMatrix>,
    targets: Targets,
    bottoms: Vec<BottomModel>,
    tower: Tower,
    head: Head,
}

fn parts() -> Parts {
    let device = training_device();
    device.seed(21);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let features: Vec<FeatureMatrix> = [3usize, 4, 2]
        .iter()
        .map(|&w| FeatureMatrix {
            rows: ROWS,
            numeric: (0..ROWS * w)
                .map(|_| rng.random::<f32>() * 2.0 - 1.0)
                .collect(),
            numeric_width: w,
            categorical: (0..ROWS).map(|_| rng.random_range(0..5)).collect(),
            embeddings: vec![(5, 2)],
        })
        .collect();
    // A label that depends on every domain.
    let targets = Targets::Classes(
        (0..ROWS)
            .map(|r| {
                let s: f32 = features
                    .iter()
                    .map(|f| f.numeric[r * f.numeric_width])
                    .sum();
                (s > 0.0) as i64
            })
            .collect(),
    );
    let bottoms = features
        .iter()
        .map(|f| {
            BottomConfig {
                numeric: f.numeric_width,
                embeddings: f.embeddings.clone(),
                layers: vec![8, 4],
                batch_norm: true,
                dropout: 0.0,
            }
            .init(&device)
        })
        .collect();
    let tower = TowerConfig {
        input: 12,
        layers: vec![8],
        batch_norm: false,
        dropout: 0.0,
    }
    .init(&device);
    let head = HeadConfig {
        input: 8,
        layers: vec![],
        outputs: 2,
    }
    .init(&device);
    Parts {
        features,
        targets,
        bottoms,
        tower,
        head,
    }
}

fn objective() -> Objective {
    Objective::CrossEntropy {
        classes: 2,
        class_weights: None,
    }
}

fn optimizer() -> OptimizerSpec {
    OptimizerSpec {
        learning_rate: 0.01,
        ..OptimizerSpec::default()
    }
}

fn run(transport: impl Transport, parts: &Parts, share_labels: bool) -> FitOutcome {
    try_run(transport, parts, share_labels, &Silent).unwrap()
}

fn try_run(
    transport: impl Transport,
    parts: &Parts,
    share_labels: bool,
    observer: &dyn Observer,
) -> Result<FitOutcome, SplitError> {
    let placement = if share_labels {
        LabelPlacement::Governance {
            head: parts.head.clone(),
        }
    } else {
        LabelPlacement::LabelOwner
    };
    let mut trainer = SplitTrainer::new(
        transport,
        parts.tower.clone(),
        placement,
        objective(),
        &optimizer(),
        training_device(),
    )
    .unwrap();
    let partition = Partition {
        train: (0..80).collect(),
        valid: (80..100).collect(),
        test: (100..ROWS as u32).collect(),
    };
    let spec = TrainingSpec {
        epochs: 3,
        batch_size: 16,
        eval_batch_size: 64,
        optimizer: optimizer(),
        schedule: Default::default(),
    };
    let outcome = fit(
        &mut trainer,
        &partition,
        &spec,
        5,
        observer,
        &AtomicBool::new(false),
    )?;
    assert!(trainer.cut_layer_bytes() > 0);
    Ok(outcome)
}

fn domain_party(parts: &Parts, d: usize) -> DomainParty {
    DomainParty::new(
        DOMAINS[d],
        parts.features[d].clone(),
        deep_copy(&parts.bottoms[d]),
        &optimizer(),
        training_device(),
    )
}

fn node_party(parts: &Parts, d: usize, share_labels: bool) -> NodeParty {
    let owner = d == 2;
    NodeParty {
        bottom: Some(domain_party(parts, d)),
        labels: (owner && share_labels).then(|| parts.targets.clone()),
        head: (owner && !share_labels).then(|| {
            LabelOwner::new(
                DOMAINS[d],
                parts.targets.clone(),
                objective(),
                parts.head.clone(),
                &optimizer(),
                training_device(),
            )
        }),
    }
}

fn in_process(parts: &Parts, share_labels: bool) -> InProcess {
    let mut owner = node_party(parts, 2, share_labels);
    InProcess {
        domains: (0..3).map(|d| domain_party(parts, d)).collect(),
        label_owner: owner.head.take(),
        labels: owner.labels.take(),
    }
}

struct Mesh {
    runtime: Arc<Runtime>,
    /// Each node's own runtime: dropping one kills that node's server and streams.
    nodes: Vec<Option<Runtime>>,
    certs: tempfile::TempDir,
    endpoints: Vec<NodeEndpoint>,
    jobs_started: Arc<AtomicUsize>,
}

fn issue_all(dir: &Path) {
    fedmesh_tls::init_ca(dir).unwrap();
    for name in ["governance"].iter().chain(DOMAINS.iter()) {
        fedmesh_tls::issue(dir, name).unwrap();
    }
}

/// Starts the three domain nodes on loopback; `presented[d]` is the certificate name node d
/// presents (its own unless a test swaps it).
fn mesh(parts: &Parts, share_labels: bool, presented: [&str; 3]) -> Mesh {
    let runtime = Arc::new(Runtime::new().unwrap());
    let certs = tempfile::tempdir().unwrap();
    issue_all(certs.path());
    let jobs_started = Arc::new(AtomicUsize::new(0));
    let mut endpoints = Vec::new();
    let mut nodes = Vec::new();
    for d in 0..3 {
        let node_runtime = Runtime::new().unwrap();
        let identity = MeshIdentity::load(certs.path(), presented[d]).unwrap();
        let parts = parts.clone();
        let counter = jobs_started.clone();
        let factory: PartyFactory = Arc::new(move |start: &v1::JobStart| {
            counter.fetch_add(1, Ordering::SeqCst);
            assert_eq!(start.domain, DOMAINS[d]);
            Ok(node_party(&parts, d, share_labels))
        });
        let service = DomainNodeService::new("governance", factory, certs.path().join("models"));
        let listener = node_runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        node_runtime.spawn(
            Server::builder()
                .tls_config(identity.server_config())
                .unwrap()
                .add_service(DomainNodeServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        endpoints.push(NodeEndpoint {
            name: DOMAINS[d].to_string(),
            url: format!("https://127.0.0.1:{port}"),
        });
        nodes.push(Some(node_runtime));
    }
    Mesh {
        runtime,
        nodes,
        certs,
        endpoints,
        jobs_started,
    }
}

fn connect(mesh: &Mesh, governance: &MeshIdentity) -> Result<GrpcTransport, SplitError> {
    GrpcTransport::connect(
        mesh.runtime.clone(),
        governance,
        &mesh.endpoints,
        "fraud-prevention",
        v1::JobStart {
            job_id: "test".into(),
            seed: 5,
            ..Default::default()
        },
        Duration::from_secs(20),
    )
}

fn check_network_equals_in_process(share_labels: bool) {
    let parts = parts();
    let local = run(in_process(&parts, share_labels), &parts, share_labels);
    let mesh = mesh(&parts, share_labels, DOMAINS);
    let governance = MeshIdentity::load(mesh.certs.path(), "governance").unwrap();
    let transport = connect(&mesh, &governance).unwrap();
    let remote = run(transport, &parts, share_labels);
    assert_eq!(mesh.jobs_started.load(Ordering::SeqCst), 3);
    // f32 on the wire is lossless: the same numbers, not merely close ones.
    let losses = |o: &FitOutcome| o.history.iter().map(|e| e.train_loss).collect::<Vec<_>>();
    assert_eq!(losses(&remote), losses(&local));
    assert_eq!(remote.report.metrics, local.report.metrics);
    assert_eq!(remote.report.valid_loss, local.report.valid_loss);
    assert_eq!(remote.cut_layer_bytes, local.cut_layer_bytes);
}

#[test]
fn network_run_equals_in_process_run_with_label_sharing() {
    check_network_equals_in_process(true);
}

#[test]
fn network_run_equals_in_process_run_without_label_sharing() {
    check_network_equals_in_process(false);
}

#[test]
fn governance_from_another_ca_is_refused_and_nothing_runs() {
    let parts = parts();
    let mesh = mesh(&parts, true, DOMAINS);
    let other = tempfile::tempdir().unwrap();
    issue_all(other.path());
    let impostor = MeshIdentity::load(other.path(), "governance").unwrap();
    let error = connect(&mesh, &impostor)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("domain node `"), "{error}");
    assert_eq!(
        mesh.jobs_started.load(Ordering::SeqCst),
        0,
        "no job started"
    );
}

#[test]
fn a_caller_that_is_not_governance_is_refused() {
    let parts = parts();
    let mesh = mesh(&parts, true, DOMAINS);
    // A real mesh certificate, but a domain's: domains may not open jobs on each other.
    let digital = MeshIdentity::load(mesh.certs.path(), "digital").unwrap();
    let error = connect(&mesh, &digital).err().expect("refused").to_string();
    assert!(
        error.contains("accepts only [\"governance\"]") && error.contains("digital"),
        "{error}"
    );
    assert_eq!(mesh.jobs_started.load(Ordering::SeqCst), 0);
}

#[test]
fn a_node_presenting_another_name_is_refused() {
    let parts = parts();
    // The node listening for `retail` presents `digital`'s certificate.
    let mesh = mesh(&parts, true, ["digital", "digital", "fraud-prevention"]);
    let governance = MeshIdentity::load(mesh.certs.path(), "governance").unwrap();
    let error = connect(&mesh, &governance)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("domain node `retail`"), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

/// Kills one node's runtime after a few training batches.
struct KillAfter {
    batches: AtomicUsize,
    victim: std::sync::Mutex<Option<Runtime>>,
}

impl Observer for KillAfter {
    fn batch_done(&self, _loss: f32) {
        if self.batches.fetch_add(1, Ordering::SeqCst) == 3
            && let Some(runtime) = self.victim.lock().unwrap().take()
        {
            runtime.shutdown_background();
        }
    }
}

#[test]
fn a_node_that_dies_mid_job_fails_it_with_its_name() {
    let parts = parts();
    let mut mesh = mesh(&parts, false, DOMAINS);
    let governance = MeshIdentity::load(mesh.certs.path(), "governance").unwrap();
    let transport = connect(&mesh, &governance).unwrap();
    let killer = KillAfter {
        batches: AtomicUsize::new(0),
        victim: std::sync::Mutex::new(mesh.nodes[1].take()),
    };
    let started = std::time::Instant::now();
    let error = try_run(transport, &parts, false, &killer)
        .expect_err("the job fails")
        .to_string();
    assert!(error.contains("domain node `retail`"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn half_precision_on_the_wire_halves_the_bytes_and_still_trains() {
    let parts = parts();
    let mesh = mesh(&parts, false, DOMAINS);
    let governance = MeshIdentity::load(mesh.certs.path(), "governance").unwrap();
    let mut totals = Vec::new();
    for encoding in [fedmesh_proto::Encoding::F32, fedmesh_proto::Encoding::F16] {
        let transport = GrpcTransport::connect(
            mesh.runtime.clone(),
            &governance,
            &mesh.endpoints,
            "fraud-prevention",
            v1::JobStart {
                job_id: format!("{encoding:?}"),
                encoding: encoding as i32,
                ..Default::default()
            },
            Duration::from_secs(20),
        )
        .unwrap();
        let shared = Arc::new(std::sync::Mutex::new(transport));
        let outcome = run(SharedTransport(shared.clone()), &parts, false);
        let (sent, received) = shared.lock().unwrap().bytes();
        totals.push((sent + received, outcome));
    }
    let (f32_bytes, f32_run) = &totals[0];
    let (f16_bytes, f16_run) = &totals[1];
    let ratio = *f16_bytes as f64 / *f32_bytes as f64;
    // Tensors dominate the messages; plans and framing do not halve.
    assert!((0.5..0.7).contains(&ratio), "f16/f32 bytes: {ratio}");
    let loss = |o: &FitOutcome| o.history.last().unwrap().train_loss;
    assert!(
        (loss(f32_run) - loss(f16_run)).abs() < 0.05,
        "{} vs {}",
        loss(f32_run),
        loss(f16_run)
    );
}

/// Lets the test read a transport's byte counters after the trainer used it.
struct SharedTransport(Arc<std::sync::Mutex<GrpcTransport>>);

impl Transport for SharedTransport {
    fn forward(
        &mut self,
        plan: &fedmesh_split::BatchPlan,
    ) -> Result<Vec<fedmesh_split::CutActivation>, SplitError> {
        self.0.lock().unwrap().forward(plan)
    }
    fn backward(&mut self, g: Vec<fedmesh_split::CutLayerGradient>) -> Result<(), SplitError> {
        self.0.lock().unwrap().backward(g)
    }
    fn head_train(
        &mut self,
        plan: &fedmesh_split::BatchPlan,
        z: fedmesh_split::CutActivation,
    ) -> Result<fedmesh_split::HeadStep, SplitError> {
        self.0.lock().unwrap().head_train(plan, z)
    }
    fn head_eval(
        &mut self,
        plan: &fedmesh_split::BatchPlan,
        z: fedmesh_split::CutActivation,
    ) -> Result<(), SplitError> {
        self.0.lock().unwrap().head_eval(plan, z)
    }
    fn head_report(&mut self) -> Result<fedmesh_split::EvaluationReport, SplitError> {
        self.0.lock().unwrap().head_report()
    }
    fn shared_labels(&mut self) -> Result<Targets, SplitError> {
        self.0.lock().unwrap().shared_labels()
    }
    fn save_parts(&mut self, dir: &Path) -> Result<Vec<std::path::PathBuf>, SplitError> {
        self.0.lock().unwrap().save_parts(dir)
    }
}
