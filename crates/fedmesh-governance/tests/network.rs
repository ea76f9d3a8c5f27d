//! A job over gRPC with mutual TLS on 127.0.0.1 equals the same job in one process, a node with
//! the wrong identity is refused before any of the job runs, and a node that dies fails the job
//! with its name.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fedmesh_governance::Mesh;
use fedmesh_proto::v1::domain_node_server::DomainNodeServer;
use fedmesh_split::job::{Job, PsiProtocol, RunConfig, RunResult, WireEncoding};
use fedmesh_split::recommend::{
    PreparedRecommendation, RecommendationSpec, popularity, write_synthetic_movielens_job,
};
use fedmesh_split::{AnyJob, Observer, Silent, SplitError};
use fedmesh_testkit::{
    FRAUD_DOMAINS as DOMAINS, MeshBuilder, NodeSpec, TestMesh, example, run, serve,
};
use tokio::runtime::Runtime;

/// The fraud example on 4,000 synthetic rows, 2 epochs: small enough for a test.
fn job() -> Job {
    let mut job = Job::load(&example("fraud")).unwrap();
    job.spec.synthetic_rows = Some(4_000);
    job.spec.training.epochs = 2;
    job
}

fn run_on(
    mesh: &Mesh,
    job: &Job,
    config: &RunConfig,
    observer: &dyn Observer,
    save_to: Option<&Path>,
) -> Result<RunResult, SplitError> {
    mesh.run(
        &AnyJob::Vertical(Box::new(job.clone())),
        &run(&format!("test/{}", config.name()), config, save_to),
        observer,
        &AtomicBool::new(false),
    )
}

fn check_network_equals_in_process(config: RunConfig) {
    let job = job();
    let local = job
        .prepare(None)
        .unwrap()
        .run(&config, 1, &Silent, &AtomicBool::new(false), None)
        .unwrap();
    let mesh = MeshBuilder::for_job(&job).start();
    let governance_parts = tempfile::tempdir().unwrap();
    let remote = run_on(
        &mesh.mesh(),
        &job,
        &config,
        &Silent,
        Some(governance_parts.path()),
    )
    .unwrap();
    // f32 on the wire is lossless: the same numbers, not merely close ones.
    let losses = |r: &RunResult| r.history.iter().map(|e| e.train_loss).collect::<Vec<_>>();
    assert_eq!(losses(&remote), losses(&local));
    // Evaluation too: BatchNorm's running statistics came out the same (burn keeps them per
    // thread, so a node must train a job on one thread).
    let valid = |r: &RunResult| r.history.iter().map(|e| e.valid_loss).collect::<Vec<_>>();
    assert_eq!(valid(&remote), valid(&local));
    assert_eq!(remote.metrics, local.metrics);
    assert_eq!(remote.cut_layer_bytes, local.cut_layer_bytes);
    assert_eq!(
        (remote.train_rows, remote.test_rows),
        (local.train_rows, local.test_rows)
    );
    let wire = remote.wire.expect("bytes counted on the wire");
    assert!(wire.to_domains > 0 && wire.from_domains > 0);
    // Every party saved its own parts, on its own side.
    let saved = |dir: PathBuf| {
        std::fs::read_dir(dir)
            .map(|d| d.count())
            .unwrap_or_default()
    };
    for domain in DOMAINS {
        let dir = mesh.models(domain).join("test").join(config.name());
        // The bottom and the feature pipeline; the label owner's head too without sharing, and
        // the run's validation and test keys.
        let expected = match (domain, &config) {
            ("fraud-prevention", RunConfig::SplitLabelOwner) => 5,
            ("fraud-prevention", _) => 4,
            _ => 2,
        };
        assert_eq!(saved(dir), expected, "{domain}");
    }
    assert!(saved(governance_parts.path().to_path_buf()) >= 1);
}

/// `keep: best` over the network: every node keeps a copy of its parts at each new best
/// validation loss and returns to it at the end, as the parties in one process do.
#[test]
fn a_network_run_keeps_the_best_epoch_as_the_in_process_run_does() {
    let mut job = job();
    job.spec.training.epochs = 6;
    job.spec.training.optimizer.learning_rate = 0.05;
    job.spec.training.keep = fedmesh_split::KeptEpoch::Best;
    let (local, remote, _mesh) = in_process_and_on_a_mesh(&job);
    let kept = local
        .kept_epoch
        .expect("an earlier epoch than the last was best");
    let valid = |r: &RunResult| r.history.iter().map(|e| e.valid_loss).collect::<Vec<_>>();
    let best = valid(&local)[kept - 1].unwrap();
    assert!(valid(&local).iter().all(|l| l.unwrap() >= best));
    assert_eq!(valid(&remote), valid(&local));
    assert_eq!(remote.kept_epoch, Some(kept));
    assert_eq!(remote.metrics, local.metrics);
}

#[test]
fn network_run_equals_in_process_run_with_label_sharing() {
    check_network_equals_in_process(RunConfig::SplitLabelSharing);
}

#[test]
fn network_run_equals_in_process_run_without_label_sharing() {
    check_network_equals_in_process(RunConfig::SplitLabelOwner);
}

#[test]
fn governance_from_another_ca_is_refused_and_nothing_runs() {
    let job = job();
    let mesh = MeshBuilder::for_job(&job).start();
    // Another mesh's governance: the same name, another CA.
    let other = MeshBuilder::nodes([]).start();
    let impostor = other.identity("governance");
    let error = run_on(
        &mesh.mesh_as(impostor),
        &job,
        &RunConfig::SplitLabelOwner,
        &Silent,
        None,
    )
    .expect_err("refused")
    .to_string();
    assert!(error.contains("domain node `"), "{error}");
    assert_eq!(mesh.streams_accepted(), 0, "no job stream was opened");
}

#[test]
fn a_caller_that_is_not_governance_is_refused() {
    let job = job();
    let mesh = MeshBuilder::for_job(&job).start();
    // A real mesh certificate, but a domain's: domains may not open jobs on each other.
    let digital = mesh.identity("digital");
    let error = run_on(
        &mesh.mesh_as(digital),
        &job,
        &RunConfig::SplitLabelOwner,
        &Silent,
        None,
    )
    .expect_err("refused")
    .to_string();
    assert!(
        error.contains("accepts only [\"governance\"]") && error.contains("digital"),
        "{error}"
    );
    assert_eq!(mesh.streams_accepted(), 0);
}

#[test]
fn a_node_presenting_another_name_is_refused() {
    let job = job();
    // The node listening for `retail` presents `digital`'s certificate.
    let mesh = MeshBuilder::for_job(&job).presenting(1, "digital").start();
    let error = run_on(
        &mesh.mesh(),
        &job,
        &RunConfig::SplitLabelOwner,
        &Silent,
        None,
    )
    .expect_err("refused")
    .to_string();
    assert!(error.contains("domain node `retail`"), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[test]
fn a_label_owner_that_forbids_sharing_refuses_configuration_1() {
    let job = job();
    let dir = tempfile::tempdir().unwrap();
    // The fraud-prevention product's contract, with label sharing forbidden.
    let contract = job.dir().join(&job.spec.domains[2].contract);
    let text = std::fs::read_to_string(&contract).unwrap();
    assert!(text.contains("flLabelSharing"), "the example declares it");
    let forbidding = dir.path().join("fraud-prevention.odcs.yaml");
    std::fs::write(
        &forbidding,
        text.replace("value: allowed", "value: forbidden"),
    )
    .unwrap();
    let mut job = job;
    job.spec.domains[2].contract = forbidding;
    let mesh = MeshBuilder::for_job(&job).start();
    let error = run_on(
        &mesh.mesh(),
        &job,
        &RunConfig::SplitLabelSharing,
        &Silent,
        None,
    )
    .expect_err("refused")
    .to_string();
    assert!(
        error.contains("domain node `fraud-prevention`")
            && error.contains("fraud-prevention refuses")
            && error.contains("flLabelSharing"),
        "{error}"
    );
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
    let job = job();
    let mut mesh = MeshBuilder::for_job(&job).start();
    let killer = KillAfter {
        batches: AtomicUsize::new(0),
        victim: std::sync::Mutex::new(mesh.kill(1)),
    };
    let started = Instant::now();
    let error = run_on(
        &mesh.mesh(),
        &job,
        &RunConfig::SplitLabelOwner,
        &killer,
        None,
    )
    .expect_err("the job fails")
    .to_string();
    assert!(error.contains("domain node `retail`"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// `job`'s label-owner configuration (seed 1) run in this process, and on a mesh of its own,
/// which is returned for a look at its nodes.
fn in_process_and_on_a_mesh(job: &Job) -> (RunResult, RunResult, TestMesh) {
    let config = RunConfig::SplitLabelOwner;
    let local = job
        .prepare(None)
        .unwrap()
        .run(&config, 1, &Silent, &AtomicBool::new(false), None)
        .unwrap();
    let mesh = MeshBuilder::for_job(job).start();
    let remote = run_on(&mesh.mesh(), job, &config, &Silent, None).unwrap();
    (local, remote, mesh)
}

/// KKRT as the job's alignment, with three domains and with two: the domains take the rows the
/// plain join gives in this process (the run is the same, number for number), the run reports
/// the protocol, and every domain records it.
#[test]
fn kkrt_aligns_two_and_three_domains_over_the_network_as_in_process() {
    for domains in [3, 2] {
        let mut job = job();
        job.spec.alignment.protocol = PsiProtocol::Kkrt;
        if domains == 2 {
            job.spec.domains.retain(|d| d.name != "retail");
        }
        let (local, remote, mesh) = in_process_and_on_a_mesh(&job);
        let alignment = remote.alignment.as_ref().unwrap();
        assert_eq!(alignment.protocol, Some(PsiProtocol::Kkrt));
        assert_eq!(alignment.products.len(), domains);
        let smallest = alignment.products.iter().map(|p| p.rows).min().unwrap();
        // Some keys of every product are its own: the intersection is a real one.
        assert!(alignment.intersection < smallest, "{alignment:?}");
        assert_eq!(
            alignment.intersection,
            local.alignment.as_ref().unwrap().intersection
        );
        let losses = |r: &RunResult| r.history.iter().map(|e| e.train_loss).collect::<Vec<_>>();
        assert_eq!(losses(&remote), losses(&local), "{domains} domains");
        assert_eq!(remote.metrics, local.metrics, "{domains} domains");
        for domain in &job.spec.domains {
            let records: Vec<String> = mesh
                .audit(&domain.name)
                .into_iter()
                .filter(|r| r.action == "alignment.run")
                .map(|r| r.details)
                .collect();
            assert_eq!(records.len(), 1, "{}", domain.name);
            assert!(records[0].contains("KKRT"), "{}: {records:?}", domain.name);
        }
    }
}

#[test]
fn a_later_run_over_unchanged_products_reuses_the_alignment_and_computes_the_same() {
    // The ECDH ring (the example aligns by KKRT, which the test above runs).
    let mut job = job();
    job.spec.alignment.protocol = PsiProtocol::Ecdh;
    let mesh = MeshBuilder::for_job(&job).start();
    let governance = mesh.mesh();
    let first = run_on(
        &governance,
        &job,
        &RunConfig::SplitLabelOwner,
        &Silent,
        None,
    )
    .unwrap();
    let second = run_on(
        &governance,
        &job,
        &RunConfig::SplitLabelOwner,
        &Silent,
        None,
    )
    .unwrap();
    let (a, b) = (first.alignment.unwrap(), second.alignment.unwrap());
    assert_eq!(a.kept_from, None, "the first run aligns");
    assert!(b.kept_from.is_some(), "the second reuses: {b:?}");
    assert_eq!((a.intersection, &a.products), (b.intersection, &b.products));
    // The same rows in the same order: the same run.
    assert_eq!(first.metrics, second.metrics);
    // A product that changed (fewer rows generated) is aligned anew, and still right.
    let mut smaller = job.clone();
    smaller.spec.synthetic_rows = Some(3_000);
    let third = run_on(
        &governance,
        &smaller,
        &RunConfig::SplitLabelOwner,
        &Silent,
        None,
    )
    .unwrap();
    let local = smaller
        .prepare(None)
        .unwrap()
        .run(
            &RunConfig::SplitLabelOwner,
            1,
            &Silent,
            &AtomicBool::new(false),
            None,
        )
        .unwrap();
    let c = third.alignment.unwrap();
    assert_eq!(c.kept_from, None, "{c:?}");
    assert_eq!(third.metrics, local.metrics);
    // Every node recorded where its rows came from.
    for domain in DOMAINS {
        let methods: Vec<String> = mesh
            .audit(domain)
            .into_iter()
            .filter(|r| r.action == "alignment.run")
            .map(|r| r.details)
            .collect();
        assert_eq!(methods.len(), 3, "{domain}");
        assert!(
            methods[1].contains("kept from `alignment-"),
            "{domain}: {methods:?}"
        );
    }
}

#[test]
fn half_precision_on_the_wire_halves_the_bytes_and_still_trains() {
    let mut job = job();
    let mesh = MeshBuilder::for_job(&job).start();
    let mut runs = Vec::new();
    for encoding in [WireEncoding::F32, WireEncoding::F16] {
        job.spec.wire.encoding = encoding;
        // A run driver of its own each time, so that both align (and count alike).
        runs.push(
            run_on(
                &mesh.mesh(),
                &job,
                &RunConfig::SplitLabelOwner,
                &Silent,
                None,
            )
            .unwrap(),
        );
    }
    let bytes = |r: &RunResult| {
        let wire = r.wire.unwrap();
        (wire.to_domains + wire.from_domains) as f64
    };
    let ratio = bytes(&runs[1]) / bytes(&runs[0]);
    // Tensors dominate the messages; plans and framing do not halve.
    assert!((0.5..0.7).contains(&ratio), "f16/f32 bytes: {ratio}");
    let loss = |r: &RunResult| r.history.last().unwrap().train_loss;
    assert!(
        (loss(&runs[0]) - loss(&runs[1])).abs() < 0.05,
        "{} vs {}",
        loss(&runs[0]),
        loss(&runs[1])
    );
}

#[test]
fn unaligned_products_are_aligned_over_the_network_as_in_process() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/breast");
    if !data.exists() {
        eprintln!("skipped: {} is not on this machine", data.display());
        return;
    }
    // The breast example, each party with its own subset in its own order: the guest lacks
    // its first 40 rows, the host its last 30 and holds the rest reversed.
    let dir = tempfile::tempdir().unwrap();
    let example = example("breast");
    std::fs::create_dir_all(dir.path().join("contracts")).unwrap();
    std::fs::copy(example.join("job.yaml"), dir.path().join("job.yaml")).unwrap();
    for (party, file) in [
        ("guest", "breast_hetero_guest.csv"),
        ("host", "breast_hetero_host.csv"),
    ] {
        let text = std::fs::read_to_string(data.join(file)).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        let header = lines.remove(0);
        let n = lines.len();
        let mut rows = if party == "guest" {
            lines[40..].to_vec()
        } else {
            lines[..n - 30].to_vec()
        };
        if party == "host" {
            rows.reverse();
        }
        let text = std::iter::once(header)
            .chain(rows)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        std::fs::write(dir.path().join(file), text).unwrap();
        let contract =
            std::fs::read_to_string(example.join(format!("contracts/{party}.odcs.yaml")))
                .unwrap()
                .replace(
                    &format!("../../../../shared/data/breast/{file}"),
                    &format!("../{file}"),
                );
        std::fs::write(
            dir.path().join(format!("contracts/{party}.odcs.yaml")),
            contract,
        )
        .unwrap();
    }
    let job = Job::load(dir.path()).unwrap();
    let (local, remote, _mesh) = in_process_and_on_a_mesh(&job);
    let alignment = remote
        .alignment
        .as_ref()
        .expect("the run reports its alignment");
    assert_eq!(alignment.intersection, 569 - 70);
    assert_eq!(alignment.products[0].rows, 529);
    assert_eq!(alignment.products[1].rows, 539);
    assert_eq!(
        remote.train_rows + remote.valid_rows + remote.test_rows,
        569 - 70
    );
    // Fresh secrets on every side, yet the same rows in the same order: the same run.
    assert_eq!(remote.metrics, local.metrics);
    let losses = |r: &RunResult| r.history.iter().map(|e| e.train_loss).collect::<Vec<_>>();
    assert_eq!(losses(&remote), losses(&local));
}

/// The MovieLens example's job over a synthetic dataset of its format (60 users of two taste
/// groups, 200 films), written to `dir`, with 6 epochs.
fn recommendation_job(dir: &Path) -> (RecommendationSpec, PreparedRecommendation) {
    let file = write_synthetic_movielens_job(dir, 60, 200, 12).unwrap();
    let (mut spec, file) = RecommendationSpec::load(&file).unwrap();
    spec.training.epochs = 6;
    spec.training.batch_size = 64;
    spec.training.optimizer.learning_rate = 0.01;
    (spec.clone(), spec.prepare(&file).unwrap())
}

fn recommendation_nodes(spec: &RecommendationSpec, dir: &Path) -> TestMesh {
    MeshBuilder::nodes(
        [&spec.sales, &spec.customer, &spec.product]
            .map(|d| NodeSpec::new(d.name.clone(), dir.join(&d.contract))),
    )
    .start()
}

/// The split NCF over three nodes, each reading its own product, computes what the in-process
/// split NCF computes: the same losses every epoch and the same rankings.
fn check_split_ncf_over_the_network(config: RunConfig) {
    let dir = tempfile::tempdir().unwrap();
    let (spec, prepared) = recommendation_job(dir.path());
    let stop = AtomicBool::new(false);
    let local = prepared.run(&config, 1, &Silent, &stop).unwrap();
    let nodes = recommendation_nodes(&spec, dir.path());
    let job = AnyJob::Recommendation(Box::new(spec.clone()));
    let remote = nodes
        .mesh()
        .run(&job, &run("test/ncf", &config, None), &Silent, &stop)
        .unwrap();
    assert_eq!(remote.history.len(), 6);
    for (l, r) in local.history.iter().zip(&remote.history) {
        assert!(
            (l.train_loss - r.train_loss).abs() < 1e-5,
            "epoch {}: loss {} in process, {} over the network",
            l.epoch,
            l.train_loss,
            r.train_loss
        );
    }
    assert_eq!(local.metrics, remote.metrics);
    let popularity = popularity(&prepared.split, prepared.interactions.items.len());
    let ranking = remote.metrics.ranking().unwrap();
    assert!(
        ranking.hit_ratio > popularity.hit_ratio + 0.2,
        "{ranking:?} vs popularity {popularity:?}"
    );
    assert_eq!(
        (local.train_rows, local.test_rows),
        (remote.train_rows, remote.test_rows)
    );
    let wire = remote.wire.expect("a network run counts its bytes");
    assert!(wire.to_domains > 0 && wire.from_domains > 0);
}

#[test]
fn the_split_ncf_over_the_network_equals_in_process_with_label_sharing() {
    check_split_ncf_over_the_network(RunConfig::SplitLabelSharing);
}

#[test]
fn the_split_ncf_over_the_network_equals_in_process_with_labels_at_sales() {
    check_split_ncf_over_the_network(RunConfig::SplitLabelOwner);
}

#[test]
fn a_stream_serving_rankings_trains_nothing_and_checks_what_it_is_sent() {
    use fedmesh_proto::v1;
    use fedmesh_proto::v1::domain_message::Body as Reply;
    use fedmesh_proto::v1::governance_message::Body as Command;
    let dir = tempfile::tempdir().unwrap();
    let (spec, _) = recommendation_job(dir.path());
    let nodes = recommendation_nodes(&spec, dir.path());
    let parts = dir.path().join("governance-parts");
    let stop = AtomicBool::new(false);
    nodes
        .mesh()
        .run(
            &AnyJob::Recommendation(Box::new(spec.clone())),
            &run("test/served", &RunConfig::SplitLabelOwner, Some(&parts)),
            &Silent,
            &stop,
        )
        .unwrap();
    let runtime = Runtime::new().unwrap();
    let deadline = Duration::from_secs(10);
    // Sales, opened to serve the run it saved.
    let open = |run: &str| {
        let mut sales = runtime
            .block_on(fedmesh_net::transport::Link::open(
                &nodes.identity("governance"),
                &nodes.endpoints[0],
                deadline,
            ))
            .unwrap();
        let start = v1::JobStart {
            job_id: run.into(),
            spec_yaml: spec.to_yaml(),
            domain: "sales".into(),
            requester: "operator".into(),
            trained_run: run.into(),
            ..Default::default()
        };
        let opened = runtime.block_on(sales.call(Command::Start(start), deadline));
        (sales, opened)
    };
    // A run it never saved: nothing to load, said at once.
    let (_, opened) = open("test/never-trained");
    let error = opened.expect_err("refused").to_string();
    assert!(error.contains("bottom-sales.bpk"), "{error}");

    let (mut sales, opened) = open("test/served");
    assert!(matches!(opened.unwrap(), Reply::Ready(_)));
    let mut call = |command| runtime.block_on(sales.call(command, deadline));
    assert!(matches!(
        call(Command::EntitiesRequest(v1::Empty {})).unwrap(),
        Reply::Entities(_)
    ));
    let request = v1::ExamplesRequest {
        pass: v1::examples_request::Pass::Candidates as i32,
        user: "1".into(),
    };
    let Reply::Examples(examples) = call(Command::ExamplesRequest(request)).unwrap() else {
        panic!("candidates expected")
    };
    assert_eq!(examples.items.len(), 200, "every film is a candidate");
    // A training plan on a serving stream is refused, and the stream ends.
    let train = v1::BatchPlan {
        pass: v1::batch_plan::Pass::Train as i32,
        rows: vec![0, 1],
        learning_rate: 0.1,
    };
    let error = call(Command::Plan(train)).unwrap_err().to_string();
    assert!(
        error.contains("serves a trained model's rankings"),
        "{error}"
    );

    // Sales keeps the head in this model: scores governance sends are refused.
    let (mut sales, _) = open("test/served");
    let mut call = |command| runtime.block_on(sales.call(command, deadline));
    call(Command::EntitiesRequest(v1::Empty {})).unwrap();
    call(Command::ExamplesRequest(v1::ExamplesRequest {
        pass: v1::examples_request::Pass::Candidates as i32,
        user: "1".into(),
    }))
    .unwrap();
    let error = call(Command::TopK(v1::TopK {
        k: 10,
        scores: vec![0.5; 200],
    }))
    .unwrap_err()
    .to_string();
    assert!(error.contains("ranks by its own scores"), "{error}");
}

#[test]
fn a_product_that_lacks_an_entity_sales_names_fails_the_job_counting_it() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, _) = recommendation_job(dir.path());
    // Customer's table loses user 7: sales still names it.
    let users = dir.path().join("data/u.user");
    let text = std::fs::read_to_string(&users).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("7|"))
        .map(|l| format!("{l}\n"))
        .collect();
    let customer_data = dir.path().join("customer-data");
    std::fs::create_dir_all(&customer_data).unwrap();
    for file in ["u.data", "u.item"] {
        std::fs::copy(dir.path().join("data").join(file), customer_data.join(file)).unwrap();
    }
    std::fs::write(customer_data.join("u.user"), kept).unwrap();
    let contract = dir.path().join("contracts/customer.odcs.yaml");
    let text = std::fs::read_to_string(&contract).unwrap();
    std::fs::write(
        &contract,
        text.replace("path: ../data", "path: ../customer-data"),
    )
    .unwrap();
    let nodes = recommendation_nodes(&spec, dir.path());
    let error = nodes
        .mesh()
        .run(
            &AnyJob::Recommendation(Box::new(spec)),
            &run("test/ncf-missing", &RunConfig::SplitLabelOwner, None),
            &Silent,
            &AtomicBool::new(false),
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("customer"), "{error}");
    assert!(error.contains("no row for 1 of the"), "{error}");
}

#[test]
fn a_node_reads_no_file_a_job_spec_names() {
    // The spec names an example table the nodes can reach; their configs name none.
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("planted.csv");
    std::fs::write(&planted, "not,a,transaction\n1,2,3\n").unwrap();
    let mut job = job();
    job.spec.example_data.as_mut().unwrap().source = planted.clone();
    // Its owner reads it (and finds it is not the example's table)...
    let error = job.prepare(None).map(|_| ()).unwrap_err().to_string();
    assert!(
        error.contains("planted.csv") || error.contains("column"),
        "{error}"
    );
    // ...the nodes never do: they derive their products from the generator, as their configs
    // name no table, and the run trains.
    let mesh = MeshBuilder::nodes(
        job.spec
            .domains
            .iter()
            .map(|d| NodeSpec::new(d.name.clone(), job.dir().join(&d.contract))),
    )
    .start();
    let result = run_on(
        &mesh.mesh(),
        &job,
        &RunConfig::SplitLabelOwner,
        &Silent,
        None,
    )
    .unwrap();
    assert!(result.test_rows > 0);
}

/// A node that answers each of governance's messages with what `lie` makes of it (`None`: the
/// honest-looking silence of a peer that keeps the stream open).
struct LyingNode {
    lie: fn(
        &fedmesh_proto::v1::governance_message::Body,
    ) -> Option<fedmesh_proto::v1::domain_message::Body>,
}

#[tonic::async_trait]
impl fedmesh_proto::v1::domain_node_server::DomainNode for LyingNode {
    type TrainStream = tokio_stream::wrappers::ReceiverStream<
        Result<fedmesh_proto::v1::DomainMessage, tonic::Status>,
    >;

    async fn admit(
        &self,
        _: tonic::Request<fedmesh_proto::v1::AdmissionRequest>,
    ) -> Result<tonic::Response<fedmesh_proto::v1::AdmissionReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("a liar admits nothing"))
    }

    async fn train(
        &self,
        request: tonic::Request<tonic::Streaming<fedmesh_proto::v1::GovernanceMessage>>,
    ) -> Result<tonic::Response<Self::TrainStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (replies, outbound) = tokio::sync::mpsc::channel(4);
        let lie = self.lie;
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let Some(body) = message.body else { continue };
                if let Some(reply) = lie(&body) {
                    let reply = fedmesh_proto::v1::DomainMessage { body: Some(reply) };
                    if replies.send(Ok(reply)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(tonic::Response::new(
            tokio_stream::wrappers::ReceiverStream::new(outbound),
        ))
    }
}

#[test]
fn a_node_that_lies_fails_the_run_by_name_and_the_mesh_then_runs_a_good_job() {
    use fedmesh_proto::v1::domain_message::Body as Reply;
    use fedmesh_proto::v1::governance_message::Body as Command;
    use fedmesh_proto::v1::{KkrtColumns, KkrtReceiverSetup, PointChunk, Ready};
    let job = job();
    let mesh = MeshBuilder::for_job(&job).start();
    let runtime = Runtime::new().unwrap();
    /// Ten keyed rows: the fewest, so KKRT's receiver.
    fn ten_rows(command: &Command) -> Option<Reply> {
        match command {
            Command::Start(_) => Some(Reply::Ready(Ready {
                rows: 10,
                cut_width: 0,
                keyed: true,
                alignment_kept: false,
            })),
            _ => None,
        }
    }
    let lies: [(LyingNode, &str, PsiProtocol); 5] = [
        (
            // A product of 2^40 rows: governance would size its buffers by it.
            LyingNode {
                lie: |_| {
                    Some(Reply::Ready(Ready {
                        rows: 1 << 40,
                        cut_width: 0,
                        keyed: true,
                        alignment_kept: false,
                    }))
                },
            },
            "announced a product of 1099511627776 rows",
            PsiProtocol::Ecdh,
        ),
        (
            // Ten rows announced, then blinded keys without end.
            LyingNode {
                lie: |command| match command {
                    Command::Start(_) => Some(Reply::Ready(Ready {
                        rows: 10,
                        cut_width: 0,
                        keyed: true,
                        alignment_kept: false,
                    })),
                    _ => Some(Reply::Points(PointChunk {
                        points: vec![7; 32 * 64],
                        last: false,
                    })),
                },
            },
            "sent more blinded keys than the 10 rows it announced",
            PsiProtocol::Ecdh,
        ),
        (
            // An answer of the wrong kind.
            LyingNode {
                lie: |_| Some(Reply::Labels(Default::default())),
            },
            "unexpected answer `Labels`",
            PsiProtocol::Ecdh,
        ),
        (
            // KKRT's receiver asking a sender for a million bins for its ten keys.
            LyingNode {
                lie: |command| match command {
                    Command::KkrtReceive(_) => Some(Reply::KkrtReceiverSetup(KkrtReceiverSetup {
                        bins: 1 << 20,
                        ..Default::default()
                    })),
                    other => ten_rows(other),
                },
            },
            "opened a run of 1048576 bins over 10 keys, which take 128",
            PsiProtocol::Kkrt,
        ),
        (
            // KKRT's receiver sending an extension that never ends.
            LyingNode {
                lie: |command| match command {
                    // A well-formed setup (the identity point, a zero seed): the sender answers.
                    Command::KkrtReceive(_) => Some(Reply::KkrtReceiverSetup(KkrtReceiverSetup {
                        base_ot: vec![0; 32],
                        seed: vec![0; 16],
                        bins: 128,
                    })),
                    Command::KkrtSenderSetup(_) => Some(Reply::KkrtColumns(KkrtColumns {
                        first_bin: 0,
                        columns: vec![0; 64 * 128],
                        last: false,
                    })),
                    other => ten_rows(other),
                },
            },
            "marked its extension's end at bin 128 of 128",
            PsiProtocol::Kkrt,
        ),
    ];
    for (liar, expected, protocol) in lies {
        let mut job = job.clone();
        job.spec.alignment.protocol = protocol;
        let identity = mesh.identity("retail");
        let url = serve(&runtime, &identity, DomainNodeServer::new(liar));
        let mut governance = mesh.mesh();
        governance
            .nodes
            .iter_mut()
            .find(|n| n.name == "retail")
            .unwrap()
            .url = url;
        let error = run_on(
            &governance,
            &job,
            &RunConfig::SplitLabelOwner,
            &Silent,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("retail") && error.contains(expected),
            "{expected}: {error}"
        );
    }
    // The honest nodes are unharmed: the same mesh runs a good job.
    let result = run_on(
        &mesh.mesh(),
        &job,
        &RunConfig::SplitLabelOwner,
        &Silent,
        None,
    )
    .unwrap();
    assert!(result.test_rows > 0);
}

/// A split NCF that validates over the network: sales holds out the same validation cases as
/// the in-process run, every node keeps and restores its parts with the same epoch, and the
/// test cases are ranked once, by those parts.
#[test]
fn a_validating_split_ncf_over_the_network_keeps_the_epoch_the_in_process_one_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_synthetic_movielens_job(dir.path(), 60, 200, 12).unwrap();
    let (mut spec, file) = RecommendationSpec::load(&file).unwrap();
    spec.training.epochs = 8;
    spec.training.batch_size = 64;
    spec.training.optimizer.learning_rate = 0.05;
    spec.training.keep = fedmesh_split::KeptEpoch::Best;
    let prepared = spec.clone().prepare(&file).unwrap();
    let config = RunConfig::SplitLabelOwner;
    let stop = AtomicBool::new(false);
    let local = prepared.run(&config, 1, &Silent, &stop).unwrap();
    let kept = local
        .kept_epoch
        .expect("an earlier epoch than the last was best");
    let nodes = recommendation_nodes(&spec, dir.path());
    let job = AnyJob::Recommendation(Box::new(spec.clone()));
    let remote = nodes
        .mesh()
        .run(&job, &run("test/ncf-valid", &config, None), &Silent, &stop)
        .unwrap();
    let hr = |r: &RunResult| {
        r.history
            .iter()
            .map(|e| e.valid_headline)
            .collect::<Vec<_>>()
    };
    assert_eq!(hr(&remote), hr(&local));
    assert_eq!(remote.kept_epoch, Some(kept));
    assert_eq!(remote.metrics, local.metrics);
}
