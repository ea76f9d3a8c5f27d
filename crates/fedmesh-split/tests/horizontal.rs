//! Horizontal jobs: domains holding the same columns for different clients train one model by
//! federated averaging, with and without secure aggregation, beside the centralized baseline on
//! their rows pooled.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use fedmesh_split::horizontal::{HorizontalJob, PreparedHorizontal};
use fedmesh_split::job::{RunConfig, RunResult};
use fedmesh_split::{AnyJob, Silent};
use rand::{Rng, SeedableRng};

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
