//! Horizontal jobs: domains holding the same columns for different clients train one model by
//! federated averaging, with and without secure aggregation, beside the centralized baseline on
//! their rows pooled — in one process, and over a mesh of domain nodes, where a run equals the
//! in-process one and a node that dies drops out of the rounds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use std::sync::atomic::{AtomicUsize, Ordering};

use fedmesh_split::horizontal::{HorizontalJob, PreparedHorizontal};
use fedmesh_split::job::{RunConfig, RunResult};
use fedmesh_split::{AnyJob, Observer, Silent};
use fedmesh_testkit::{MeshBuilder, NodeSpec, TestMesh, run as mesh_run};
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;

const DOMAINS: [&str; 3] = ["north", "south", "east"];

fn contract(domain: &str) -> String {
    format!(
        r#"apiVersion: v3.1.0
kind: DataContract
id: urn:test:{domain}
name: {domain}-clients
version: 1.0.0
status: active
domain: {domain}
servers:
  - {{ server: local, type: local, format: csv, path: {domain}.csv }}
schema:
  - name: clients
    properties:
      - {{ name: id, logicalType: integer, required: true, unique: true, primaryKey: true, classification: restricted }}
      - {{ name: income, logicalType: number, required: true }}
      - {{ name: debt, logicalType: number, required: true }}
      - {{ name: segment, logicalType: string, required: true }}
      - {{ name: defaulted, logicalType: integer, required: true }}
customProperties:
  - {{ property: flAllowedPurposes, value: [credit-risk] }}
  - {{ property: flAllowedTechniques, value: [fedavg, fedprox] }}
"#
    )
}

/// Three domains of different sizes whose clients differ (each domain's incomes are shifted),
/// labelled by one rule: the federation can learn what no domain sees all of.
fn write_job(dir: &Path, extra: &str) -> PathBuf {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut id = 0;
    for (d, domain) in DOMAINS.iter().enumerate() {
        let mut csv = String::from("id,income,debt,segment,defaulted\n");
        for _ in 0..(600 + 300 * d) {
            id += 1;
            let income: f64 = rng.random::<f64>() * 4.0 + d as f64 - 1.0;
            let debt: f64 = rng.random::<f64>() * 4.0 - 2.0;
            let segment = ["gold", "silver", "basic"][rng.random_range(0..3)];
            let bonus = match segment {
                "gold" => -1.0,
                "basic" => 1.0,
                _ => 0.0,
            };
            let noise: f64 = rng.random::<f64>() - 0.5;
            let defaulted = (debt - 0.8 * (income - 1.0) + bonus + noise > 0.0) as u8;
            csv.push_str(&format!(
                "{id},{:.4},{:.4},{segment},{defaulted}\n",
                income * 10_000.0,
                debt
            ));
        }
        std::fs::write(dir.join(format!("{domain}.csv")), csv).unwrap();
        std::fs::write(dir.join(format!("{domain}.odcs.yaml")), contract(domain)).unwrap();
    }
    let spec = format!(
        r#"name: branches
purpose: credit-risk
technique: fedavg
objective: {{ kind: cross-entropy, classes: 2 }}
label: defaulted
features:
  - {{ column: income, transform: log-standardize }}
  - {{ column: debt }}
  - {{ column: segment, transform: embedding, dim: 2, categories: [gold, silver, basic] }}
domains:
  - {{ name: north, contract: north.odcs.yaml }}
  - {{ name: south, contract: south.odcs.yaml }}
  - {{ name: east, contract: east.odcs.yaml }}
split: {{ test_fraction: 0.3, valid_fraction: 0.1, seed: 3 }}
model: {{ layers: [16] }}
federation: {{ rounds: 16, min_clients: 2 }}
training: {{ epochs: 2, batch_size: 64, optimizer: {{ learning_rate: 0.01 }} }}
seeds: [1]
{extra}"#
    );
    let file = dir.join("job.yaml");
    std::fs::write(&file, spec).unwrap();
    file
}

fn prepared(dir: &Path, extra: &str) -> PreparedHorizontal {
    let file = write_job(dir, extra);
    match AnyJob::load(&file).unwrap() {
        AnyJob::Horizontal(job) => job.prepare().unwrap(),
        _ => panic!("a fedavg spec is a horizontal job"),
    }
}

fn run(job: &PreparedHorizontal, config: RunConfig) -> RunResult {
    job.run(&config, 1, &Silent, &AtomicBool::new(false), None)
        .unwrap()
}

fn auc(result: &RunResult) -> f64 {
    result.metrics.headline()
}

/// Federated averaging learns what the pooled rows teach, with or without secure aggregation
/// (whose sums differ from the plain ones only by quantization), and its rounds are reported.
#[test]
fn federated_averaging_learns_as_the_pooled_baseline_does_and_secure_sums_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let job = prepared(dir.path(), "");
    assert_eq!(job.parties.len(), 3);
    let rows: usize = job.parties.iter().map(|p| p.features.rows).sum();
    assert_eq!(rows, 600 + 900 + 1200);
    let centralized = run(&job, RunConfig::Centralized);
    let federated = run(&job, RunConfig::Federated { secure: false });
    let secure = run(&job, RunConfig::Federated { secure: true });
    assert_eq!(centralized.test_rows, federated.test_rows);
    assert!(auc(&centralized) > 0.9, "{}", auc(&centralized));
    assert!(
        auc(&federated) > auc(&centralized) - 0.02,
        "federated {} centralized {}",
        auc(&federated),
        auc(&centralized)
    );
    assert!(
        (auc(&secure) - auc(&federated)).abs() < 0.002,
        "secure {} plain {}",
        auc(&secure),
        auc(&federated)
    );
    let summary = federated.federation.as_ref().unwrap();
    assert_eq!(summary.rounds, 16);
    assert_eq!(federated.history.len(), 16);
    assert!(summary.dropped.is_empty());
    assert!(secure.federation.as_ref().unwrap().secure_aggregation);
    // Rows per domain: its training rows, as each domain drew them.
    let trained: usize = summary.domain_rows.iter().map(|(_, r)| r).sum();
    assert_eq!(trained, federated.train_rows);
}

/// A domain that fails mid-round leaves the round to the others, and the result says who
/// dropped; with too few left the round fails, naming the round and the domain.
#[test]
fn a_domain_dropping_out_leaves_the_round_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let job = prepared(dir.path(), "");
    let drops: BTreeSet<(usize, String)> = [(2, "south".to_string()), (5, "east".to_string())]
        .into_iter()
        .collect();
    let stop = AtomicBool::new(false);
    for secure in [false, true] {
        let result = job
            .run_with_drop_outs(
                &RunConfig::Federated { secure },
                1,
                &Silent,
                &stop,
                None,
                &drops,
            )
            .unwrap();
        let dropped = &result.federation.as_ref().unwrap().dropped;
        assert_eq!(
            dropped,
            &vec![(2, "south".to_string()), (5, "east".to_string())]
        );
        assert!(auc(&result) > 0.85, "{}", auc(&result));
    }
    let two: BTreeSet<(usize, String)> = [(3, "north".to_string()), (3, "east".to_string())]
        .into_iter()
        .collect();
    let error = job
        .run_with_drop_outs(
            &RunConfig::Federated { secure: false },
            1,
            &Silent,
            &stop,
            None,
            &two,
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("round 3 failed"), "{error}");
    assert!(
        error.contains("`north`") && error.contains("`east`"),
        "{error}"
    );
    // Secure aggregation's threshold (a majority, 2 of 3) is not met either.
    let error = job
        .run_with_drop_outs(
            &RunConfig::Federated { secure: true },
            1,
            &Silent,
            &stop,
            None,
            &two,
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("round 3 failed"), "{error}");
}

/// FedProx's proximal term changes local training (μ = 0 would be federated averaging).
#[test]
fn fedprox_holds_local_training_near_the_global_model() {
    let dir = tempfile::tempdir().unwrap();
    let fedavg = run(
        &prepared(dir.path(), ""),
        RunConfig::Federated { secure: false },
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(write_job(dir.path(), ""))
        .unwrap()
        .replace("technique: fedavg", "technique: fedprox")
        .replace(
            "federation: { rounds: 16, min_clients: 2 }",
            "federation: { rounds: 16, min_clients: 2, proximal_mu: 0.5 }",
        );
    std::fs::write(dir.path().join("job.yaml"), spec).unwrap();
    let job = HorizontalJob::load(&dir.path().join("job.yaml"))
        .unwrap()
        .prepare()
        .unwrap();
    let fedprox = run(&job, RunConfig::Federated { secure: false });
    assert_eq!(fedprox.federation.as_ref().unwrap().technique, "fedprox");
    assert_ne!(fedprox.history[0].train_loss, fedavg.history[0].train_loss);
    assert!(auc(&fedprox) > 0.85, "{}", auc(&fedprox));
}

/// What a horizontal spec must say, refused with what to fix.
#[test]
fn a_horizontal_spec_says_what_a_shared_model_needs() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_job(dir.path(), "");
    let text = std::fs::read_to_string(&file).unwrap();
    let refused = |text: String| AnyJob::from_yaml(&text, &file).unwrap_err().to_string();
    let error = refused(text.replace(", categories: [gold, silver, basic]", ""));
    assert!(error.contains("lists its `categories`"), "{error}");
    let error = refused(text.replace(
        "{ column: debt }",
        "{ column: debt, transform: robust-scale }",
    ));
    assert!(error.contains("robust-scaled"), "{error}");
    let error = refused(text.replace("technique: fedavg", "technique: fedprox"));
    assert!(error.contains("needs `federation.proximal_mu`"), "{error}");
    let error = refused(text.replace("min_clients: 2", "min_clients: 4"));
    assert!(error.contains("`federation.min_clients` is 4"), "{error}");
    let error = refused(text.replace("rounds: 16", "rounds: 0"));
    assert!(error.contains("federation.rounds"), "{error}");
    let error = refused(text.replace(
        "label: defaulted",
        "label: { domain: north, column: defaulted }",
    ));
    assert!(error.contains("shaped for split learning"), "{error}");
    // A split configuration is not one of a horizontal job's.
    let job = prepared(dir.path(), "");
    let error = job
        .run(
            &RunConfig::SplitLabelOwner,
            1,
            &Silent,
            &AtomicBool::new(false),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("not a configuration of a horizontal job"),
        "{error}"
    );
}

/// `keep: best` and early stopping count rounds: the run stops `patience` rounds after its best
/// validation loss and returns to that round's global model.
#[test]
fn the_best_round_is_kept_and_training_stops_once_it_is_old_enough() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_job(dir.path(), "");
    let spec = std::fs::read_to_string(&file).unwrap().replace(
        "optimizer: { learning_rate: 0.01 } }",
        "optimizer: { learning_rate: 0.05 }, keep: best, early_stopping: { patience: 2 } }",
    );
    std::fs::write(&file, spec).unwrap();
    let job = HorizontalJob::load(&file).unwrap().prepare().unwrap();
    let result = run(&job, RunConfig::Federated { secure: false });
    let losses: Vec<f64> = result
        .history
        .iter()
        .map(|r| r.valid_loss.unwrap())
        .collect();
    let best = 1 + losses
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(
        result.kept_epoch.unwrap_or(losses.len()),
        best,
        "{losses:?}"
    );
    // At this learning rate the validation loss turns up early: the run stops before its 16
    // rounds, exactly 2 after its best, and returns to it.
    assert_eq!(losses.len(), best + 2, "{losses:?}");
    assert!(
        losses.len() < 16 && result.kept_epoch.is_some(),
        "{losses:?}"
    );
}

/// Differential privacy: updates clipped, noise on every round's sum (added by the domains under
/// secure aggregation), and the ε spent reported; more noise, a smaller ε and a worse model.
#[test]
fn differential_privacy_reports_what_it_spent_and_costs_accuracy_with_noise() {
    let with_noise = |z: f64| {
        let dir = tempfile::tempdir().unwrap();
        let file = write_job(dir.path(), "");
        let spec = std::fs::read_to_string(&file).unwrap().replace(
            "federation: { rounds: 16, min_clients: 2 }",
            &format!(
                "federation: {{ rounds: 16, min_clients: 2, differential_privacy: {{ clip_norm: 0.5, noise_multiplier: {z} }} }}"
            ),
        );
        std::fs::write(&file, spec).unwrap();
        let job = HorizontalJob::load(&file).unwrap().prepare().unwrap();
        let plain = run(&job, RunConfig::Federated { secure: false });
        let secure = run(&job, RunConfig::Federated { secure: true });
        (plain, secure)
    };
    let (quiet, quiet_secure) = with_noise(0.01);
    let (loud, _) = with_noise(20.0);
    let spent = |r: &RunResult| r.federation.as_ref().unwrap().privacy.unwrap();
    let mut accountant = fedmesh_split::horizontal::RdpAccountant::default();
    for _ in 0..16 {
        accountant.round(20.0);
    }
    assert!((spent(&loud).epsilon - accountant.epsilon(1e-5)).abs() < 1e-9);
    assert_eq!(spent(&quiet).epsilon, spent(&quiet_secure).epsilon);
    assert!(spent(&loud).epsilon < spent(&quiet).epsilon);
    assert!(auc(&quiet) > 0.85, "{}", auc(&quiet));
    assert!(auc(&quiet_secure) > 0.85, "{}", auc(&quiet_secure));
    assert!(
        auc(&loud) < auc(&quiet) - 0.02,
        "loud {} quiet {}",
        auc(&loud),
        auc(&quiet)
    );
}

/// One node per domain of the job in `dir`, each serving its own contract and file.
fn branch_nodes(dir: &Path) -> MeshBuilder {
    MeshBuilder::nodes(
        DOMAINS
            .iter()
            .map(|d| NodeSpec::new(*d, dir.join(format!("{d}.odcs.yaml")))),
    )
}

fn mesh_job(dir: &Path) -> AnyJob {
    AnyJob::Horizontal(Box::new(
        HorizontalJob::load(&dir.join("job.yaml")).unwrap(),
    ))
}

/// Over the mesh, each node trains on its own rows and governance sees sums: the run computes
/// what the same job computes in one process, round by round, with and without secure
/// aggregation; every node saves the model and records rows and rounds, never weights.
#[test]
fn a_mesh_run_equals_the_in_process_run() {
    let dir = tempfile::tempdir().unwrap();
    let local_job = prepared(dir.path(), "");
    let mesh = branch_nodes(dir.path()).start();
    let job = mesh_job(dir.path());
    for secure in [false, true] {
        let config = RunConfig::Federated { secure };
        let local = run(&local_job, config.clone());
        let parts = tempfile::tempdir().unwrap();
        let id = format!("branches/{}", config.name());
        let remote = mesh
            .mesh()
            .run(
                &job,
                &mesh_run(&id, &config, Some(parts.path())),
                &Silent,
                &AtomicBool::new(false),
            )
            .unwrap();
        assert_eq!(remote.history.len(), local.history.len());
        for (r, l) in remote.history.iter().zip(&local.history) {
            assert!(
                (r.train_loss - l.train_loss).abs() < 1e-9
                    && (r.valid_loss.unwrap() - l.valid_loss.unwrap()).abs() < 1e-9,
                "round {}: {r:?} {l:?}",
                r.epoch
            );
        }
        assert!(
            (auc(&remote) - auc(&local)).abs() < 1e-9,
            "{} {}",
            auc(&remote),
            auc(&local)
        );
        assert_eq!(
            (remote.train_rows, remote.valid_rows, remote.test_rows),
            (local.train_rows, local.valid_rows, local.test_rows)
        );
        let summary = remote.federation.as_ref().unwrap();
        assert_eq!(summary.secure_aggregation, secure);
        assert!(summary.dropped.is_empty());
        assert!(remote.wire.unwrap().from_domains > 0);
        // Governance's copy and every node's.
        assert!(parts.path().join("model.bpk").exists());
        for domain in DOMAINS {
            let saved = mesh.models(domain).join(&id);
            assert!(saved.join("model.bpk").exists(), "{domain}");
            assert!(saved.join("pipeline.json").exists(), "{domain}");
        }
    }
    for domain in DOMAINS {
        let runs: Vec<_> = mesh
            .audit(domain)
            .into_iter()
            .filter(|r| r.action == "training.run")
            .collect();
        assert_eq!(runs.len(), 2, "{domain}");
        let details = runs[0].details.to_string();
        assert!(details.contains("\"rounds\":16"), "{details}");
        assert!(
            !details.contains("weight") && details.len() < 2_000,
            "{details}"
        );
    }
}

/// Kills one node's runtime once the domains have trained `after` times.
struct KillAfter {
    trained: AtomicUsize,
    after: usize,
    victim: std::sync::Mutex<Option<Runtime>>,
}

impl Observer for KillAfter {
    fn batch_done(&self, _loss: f32) {
        if self.trained.fetch_add(1, Ordering::SeqCst) + 1 == self.after
            && let Some(runtime) = self.victim.lock().unwrap().take()
        {
            runtime.shutdown_background();
        }
    }
}

/// A node that dies in the middle of a job drops out of the rounds: they complete without it
/// while `min_clients` (and secure aggregation's threshold) remain, and the result names it;
/// with too few left, the job fails naming the round.
#[test]
fn a_node_that_dies_mid_job_drops_out_and_the_rounds_go_on() {
    let dir = tempfile::tempdir().unwrap();
    write_job(dir.path(), "");
    let job = mesh_job(dir.path());
    for secure in [false, true] {
        let mut mesh: TestMesh = branch_nodes(dir.path()).start();
        // Domain updates reach governance three per round: the third node dies in round 2.
        let killer = KillAfter {
            trained: AtomicUsize::new(0),
            after: 4,
            victim: std::sync::Mutex::new(mesh.kill(2)),
        };
        let config = RunConfig::Federated { secure };
        let result = mesh
            .mesh()
            .run(
                &job,
                &mesh_run("branches/dies", &config, None),
                &killer,
                &AtomicBool::new(false),
            )
            .unwrap();
        let summary = result.federation.as_ref().unwrap();
        assert_eq!(summary.rounds, 16);
        let rounds: Vec<usize> = summary
            .dropped
            .iter()
            .filter(|(_, d)| d == "east")
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(rounds.first(), Some(&2), "{:?}", summary.dropped);
        assert!(summary.dropped.iter().all(|(_, d)| d == "east"));
        assert!(auc(&result) > 0.85, "{}", auc(&result));
    }
    // Every domain is needed: the round the node dies in fails, by number.
    let mut mesh: TestMesh = branch_nodes(dir.path()).start();
    let text = std::fs::read_to_string(dir.path().join("job.yaml"))
        .unwrap()
        .replace("min_clients: 2", "min_clients: 3");
    std::fs::write(dir.path().join("job.yaml"), text).unwrap();
    let killer = KillAfter {
        trained: AtomicUsize::new(0),
        after: 4,
        victim: std::sync::Mutex::new(mesh.kill(2)),
    };
    let error = mesh
        .mesh()
        .run(
            &mesh_job(dir.path()),
            &mesh_run(
                "branches/fails",
                &RunConfig::Federated { secure: false },
                None,
            ),
            &killer,
            &AtomicBool::new(false),
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("round 2 failed"), "{error}");
    assert!(error.contains("`east`"), "{error}");
}

/// Submitted to governance, a horizontal job is admitted by its policies and every domain's,
/// runs on the nodes, is registered, and scores each key at the domain that holds it.
#[test]
fn a_submitted_horizontal_job_is_registered_and_scores_where_each_key_is() {
    let dir = tempfile::tempdir().unwrap();
    write_job(dir.path(), "");
    let policies = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/governance.cedar"),
    )
    .unwrap();
    let mesh = branch_nodes(dir.path()).with_governance(&policies).start();
    let AnyJob::Horizontal(job) = mesh_job(dir.path()) else {
        unreachable!("a horizontal job")
    };
    let record = mesh.submit_spec(&job.to_portable_yaml().unwrap(), &["federated-secure"]);
    let id = record["id"].as_str().unwrap().to_string();
    let done = mesh.wait(&id);
    assert_eq!(done["state"], "done", "{done}");
    let mut operator = mesh.operator();
    let models = mesh.block_on(operator.models()).unwrap().to_string();
    assert!(models.contains("branches"), "{models}");
    // Ids 1–600 are north's clients, 601–1500 south's, 1501–2700 east's.
    let keys = vec!["5".to_string(), "1600".into(), "999999".into()];
    let scored = mesh
        .block_on(operator.predict("branches", keys, 0))
        .unwrap();
    let scores = scored["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2, "{scored}");
    assert_eq!(scores[0]["key"], "5");
    assert_eq!(scores[1]["key"], "1600");
    let p: f64 = scores[0]["scores"][1].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{scored}");
    assert_eq!(scored["missing"][0]["key"], "999999", "{scored}");
    // Each domain recorded its run (rows and rounds) and the scoring of its own keys.
    for domain in DOMAINS {
        let actions: Vec<String> = mesh.audit(domain).into_iter().map(|r| r.action).collect();
        assert!(
            actions.contains(&"training.run".to_string()),
            "{domain}: {actions:?}"
        );
        assert!(
            actions.contains(&"predictions.served".to_string()),
            "{domain}: {actions:?}"
        );
    }
}

/// Governance's side of a `federated-secure` run, watched: it is sent no domain's update, only
/// masked inputs that look nothing like one, and the sum it unmasks moves the model as the plain
/// sum does.
#[test]
fn under_secure_aggregation_governance_sees_masked_inputs_never_an_update() {
    use fedmesh_split::horizontal::{
        Federation, FromDomain, LocalFederation, ToDomain, train_federated,
    };

    /// The domains in this process, and every answer they give governance.
    struct Watched {
        inner: LocalFederation,
        seen: Vec<FromDomain>,
    }

    impl Federation for Watched {
        fn domains(&self) -> Vec<String> {
            self.inner.domains()
        }

        fn exchange(
            &mut self,
            messages: Vec<(usize, ToDomain)>,
        ) -> Vec<Result<FromDomain, fedmesh_split::SplitError>> {
            let answers = self.inner.exchange(messages);
            self.seen.extend(answers.iter().flatten().cloned());
            answers
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let job = prepared(dir.path(), "");
    let train = |secure: bool| {
        let mut watched = Watched {
            inner: job.federation(1, BTreeSet::new()),
            seen: Vec::new(),
        };
        let run = train_federated(
            &job.spec,
            &mut watched,
            &job.fitted(),
            secure,
            1,
            &Silent,
            &AtomicBool::new(false),
        )
        .unwrap();
        (run, watched.seen)
    };
    let (plain, seen_plain) = train(false);
    let (secure, seen) = train(true);
    let updates: Vec<&Vec<f32>> = seen_plain
        .iter()
        .filter_map(|m| match m {
            FromDomain::Update(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 3 * 16);
    assert!(!seen.iter().any(|m| matches!(m, FromDomain::Update(_))));
    let masked: Vec<&Vec<u32>> = seen
        .iter()
        .filter_map(|m| match m {
            FromDomain::Masked(input) => Some(&input.values),
            _ => None,
        })
        .collect();
    assert_eq!(masked.len(), 3 * 16);
    // An update's values are tiny; read as the fixed-point values they would quantize to, a
    // masked input's are spread over the whole 32-bit range.
    let q = fedmesh_split::horizontal::quantization(3, 16.0);
    for input in masked {
        // Uniform over ±128 (2³¹ / 2²⁴): 99 % of them beyond ±1.
        let large = input
            .iter()
            .filter(|&&v| ((v as i32) as f64 / q.scale as f64).abs() > 1.0)
            .count();
        assert!(large * 10 > input.len() * 9, "{large} of {}", input.len());
    }
    for update in updates {
        assert!(update.iter().all(|v| v.abs() < 1.0));
    }
    // The unmasked sums moved the model as the plain sums did.
    let (p, s) = (
        plain.outcome.report.metrics.unwrap().headline(),
        secure.outcome.report.metrics.unwrap().headline(),
    );
    assert!((p - s).abs() < 0.002, "plain {p} secure {s}");
}

/// A domain refuses what a hostile or broken governance could send, with a reason, and keeps
/// working; governance drops a domain whose update does not check from every round it sends
/// one, and the job completes without it.
#[test]
fn hostile_messages_are_refused_at_both_ends() {
    use fedmesh_secagg::{Advertisement, Config, SealedShares};
    use fedmesh_split::horizontal::{
        Federation, FromDomain, LocalRound, ToDomain, quantization, train_federated,
    };
    use fedmesh_split::wire::Part;

    let dir = tempfile::tempdir().unwrap();
    let job = prepared(dir.path(), "");
    let mut federation = job.federation(1, BTreeSet::new());
    let domain = &mut federation.domains[0];
    let model: Vec<f32> = fedmesh_model::average::float_tensors(domain.model().unwrap()).concat();
    let round = |round: usize, model: Option<Vec<f32>>| LocalRound {
        round,
        learning_rate: 0.01,
        share: 0.5,
        model,
        secure: None,
        noise_std: 0.0,
    };
    let config = Config {
        clients: 3,
        threshold: 2,
        length: model.len(),
        quantization: quantization(3, 16.0),
    };
    fn refused(
        domain: &mut fedmesh_split::horizontal::FederatedDomain,
        message: ToDomain,
        because: &str,
    ) {
        let error = domain.handle(message).unwrap_err().to_string();
        assert!(error.contains(because), "{because}: {error}");
    }
    refused(domain, ToDomain::Update, "no trained update");
    refused(
        domain,
        ToDomain::Roster(Vec::new()),
        "no secure aggregation round",
    );
    refused(
        domain,
        ToDomain::Survivors(vec![0, 9]),
        "no secure aggregation round",
    );
    refused(domain, ToDomain::Sums, "fitted already");
    refused(
        domain,
        ToDomain::Train(round(1, Some(vec![0.0; 3]))),
        "the job's model has",
    );
    let mut poisoned = model.clone();
    poisoned[0] = f32::NAN;
    refused(
        domain,
        ToDomain::Train(round(1, Some(poisoned))),
        "not finite",
    );
    refused(
        domain,
        ToDomain::Evaluate {
            model: vec![1.0; model.len() + 1],
            part: Part::Test,
        },
        "the job's model has",
    );
    refused(
        domain,
        ToDomain::Train(LocalRound {
            share: 1.5,
            ..round(1, Some(model.clone()))
        }),
        "share",
    );
    refused(
        domain,
        ToDomain::Train(LocalRound {
            learning_rate: f64::NAN,
            ..round(1, Some(model.clone()))
        }),
        "learning rate",
    );
    refused(
        domain,
        ToDomain::Train(LocalRound {
            secure: Some((7, config)),
            ..round(1, Some(model.clone()))
        }),
        "client id 7",
    );
    refused(
        domain,
        ToDomain::Train(LocalRound {
            secure: Some((
                0,
                Config {
                    length: 5,
                    ..config
                },
            )),
            ..round(1, Some(model.clone()))
        }),
        "sums 5 values",
    );
    // A good secure round, then what a lying router could send it.
    let answer = domain
        .handle(ToDomain::Train(LocalRound {
            secure: Some((0, config)),
            ..round(2, Some(model.clone()))
        }))
        .unwrap();
    let FromDomain::Trained {
        advert: Some(mine), ..
    } = answer
    else {
        panic!("a trained answer with keys")
    };
    let forged = Advertisement {
        client: 0,
        channel_key: [7; 32],
        mask_key: [9; 32],
    };
    let other = Advertisement { client: 1, ..mine };
    refused(domain, ToDomain::Roster(vec![forged, other]), "other keys");
    refused(
        domain,
        ToDomain::Train(round(1, Some(model.clone()))),
        "rounds only go forward",
    );
    let FromDomain::Shares(_) = domain.handle(ToDomain::Roster(vec![mine, other])).unwrap() else {
        panic!("shares")
    };
    let garbage = SealedShares {
        from: 1,
        to: 0,
        ciphertext: vec![0; 80],
    };
    assert!(domain.handle(ToDomain::Inbox(vec![garbage])).is_err());
    // The domain still trains and scores.
    assert!(matches!(
        domain.handle(ToDomain::Train(round(3, Some(model.clone())))),
        Ok(FromDomain::Trained { .. })
    ));
    assert!(matches!(
        domain.handle(ToDomain::Evaluate {
            model: model.clone(),
            part: Part::Valid
        }),
        Ok(FromDomain::Evaluation(_))
    ));

    /// South answers every update request with a value that is not finite.
    struct Lying(fedmesh_split::horizontal::LocalFederation);
    impl Federation for Lying {
        fn domains(&self) -> Vec<String> {
            self.0.domains()
        }
        fn exchange(
            &mut self,
            messages: Vec<(usize, ToDomain)>,
        ) -> Vec<Result<FromDomain, fedmesh_split::SplitError>> {
            let to: Vec<usize> = messages.iter().map(|(k, _)| *k).collect();
            let mut answers = self.0.exchange(messages);
            for (k, answer) in to.into_iter().zip(&mut answers) {
                if let (1, Ok(FromDomain::Update(values))) = (k, answer) {
                    values[0] = f32::INFINITY;
                }
            }
            answers
        }
    }
    let mut lying = Lying(job.federation(1, BTreeSet::new()));
    let run = train_federated(
        &job.spec,
        &mut lying,
        &job.fitted(),
        false,
        1,
        &Silent,
        &AtomicBool::new(false),
    )
    .unwrap();
    let dropped = &run.summary.dropped;
    assert_eq!(dropped.len(), 16, "{dropped:?}");
    assert!(dropped.iter().all(|(_, d)| d == "south"), "{dropped:?}");
    assert!(run.outcome.report.metrics.unwrap().headline() > 0.85);
}
