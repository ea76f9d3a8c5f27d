//! Governance over a real mesh on loopback (mutual TLS): a job runs only when every domain and
//! governance's policies admit it, each denial names its rule, label sharing falls back or fails
//! as the spec says, a product that breaks its contract keeps its domain out, and every decision
//! is in the audit logs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fedmesh_proto::v1::JobRequest;
use fedmesh_split::job::{Job, RunConfig, RunResult};
use fedmesh_split::recommend::{RecommendationSpec, write_synthetic_tables_job};
use fedmesh_testkit::{FRAUD_DOMAINS as DOMAINS, MeshBuilder, NodeSpec, POLICIES, TestMesh};
use serde_json::Value;

/// The fraud example copied to a folder of its own (so that a test can edit its contracts),
/// on 4,000 synthetic rows and one epoch.
struct Example {
    _dir: tempfile::TempDir,
    folder: PathBuf,
}

impl Example {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let folder = fedmesh_testkit::small_fraud(dir.path(), 1);
        Self { _dir: dir, folder }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.folder.join(file)
    }

    fn edit(&self, file: &str, change: impl Fn(&str) -> String) {
        let path = self.path(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let changed = change(&text);
        assert_ne!(changed, text, "the edit of {file} must change it");
        std::fs::write(path, changed).unwrap();
    }

    fn contract(&self, domain: &str) -> String {
        format!("contracts/{domain}.odcs.yaml")
    }

    fn job(&self) -> Job {
        Job::load(&self.folder).unwrap()
    }
}

/// One node per domain of `example` and governance, on loopback with mutual TLS.
fn start(example: &Example) -> TestMesh {
    MeshBuilder::for_job(&example.job())
        .with_governance(POLICIES)
        .start()
}

/// As [`start`], with one domain's node applying a Cedar policy of its own.
fn start_with(example: &Example, node_policy: (&str, &str)) -> TestMesh {
    MeshBuilder::for_job(&example.job())
        .node_policy(node_policy.0, node_policy.1)
        .with_governance(POLICIES)
        .start()
}

/// Governance and one node per `(domain, contract)`.
fn start_domains(domains: &[(String, PathBuf)]) -> TestMesh {
    MeshBuilder::nodes(
        domains
            .iter()
            .map(|(domain, contract)| NodeSpec::new(domain.clone(), contract.clone())),
    )
    .with_governance(POLICIES)
    .start()
}

fn reason(job: &Value) -> &str {
    job["reason"].as_str().unwrap()
}

#[test]
fn a_purpose_one_product_does_not_allow_is_denied_by_its_domain_though_governance_permits_it() {
    let example = Example::new();
    example.edit(&example.contract("retail"), |t| {
        t.replace("value: [fraud-detection]", "value: [chargeback-analytics]")
    });
    let mesh = start(&example);
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(job["state"], "denied", "{job}");
    let reason = reason(&job);
    assert!(reason.contains("retail refuses"), "{reason}");
    assert!(reason.contains("flAllowedPurposes"), "{reason}");
    assert!(reason.contains("`fraud-detection`"), "{reason}");
    assert!(
        !reason.contains("digital refuses"),
        "only retail refuses: {reason}"
    );
    assert!(
        !reason.contains("governance refuses"),
        "governance permits it: {reason}"
    );
    // Both sides keep the refusal on record, and nothing ran.
    let retail = mesh.audit("retail");
    assert!(
        retail
            .iter()
            .any(|r| r.action == "job.denied" && r.details.contains("flAllowedPurposes"))
    );
    let governance = mesh.audit("governance");
    assert!(governance.iter().any(|r| r.action == "job.denied"));
    assert!(!governance.iter().any(|r| r.action == "training.run"));
}

#[test]
fn a_restricted_column_requested_as_a_feature_is_denied() {
    let example = Example::new();
    example.edit("job.yaml", |t| {
        t.replace(
            "      - { column: V1 }\n",
            "      - { column: V1 }\n      - { column: transaction_id }\n",
        )
    });
    let mesh = start(&example);
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(job["state"], "denied", "{job}");
    let reason = reason(&job);
    assert!(reason.contains("digital refuses"), "{reason}");
    assert!(
        reason.contains("`transaction_id` is classified `restricted`"),
        "{reason}"
    );
    assert!(reason.contains("rule `classification`"), "{reason}");
}

#[test]
fn governance_policy_denials_name_the_policy_and_its_reason() {
    let example = Example::new();
    // Every domain allows marketing; governance forbids it.
    for domain in DOMAINS {
        example.edit(&example.contract(domain), |t| {
            t.replace(
                "value: [fraud-detection]",
                "value: [fraud-detection, marketing]",
            )
        });
    }
    example.edit("job.yaml", |t| {
        t.replace("purpose: fraud-detection", "purpose: marketing")
    });
    let mesh = start(&example);
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(job["state"], "denied", "{job}");
    let reason = reason(&job);
    assert!(reason.contains("governance refuses"), "{reason}");
    assert!(reason.contains("rule `no-marketing`"), "{reason}");
    assert!(
        reason.contains("no domain's data may train models for marketing"),
        "{reason}"
    );
}

#[test]
fn a_label_owner_that_forbids_sharing_gets_configuration_2_or_fails_as_the_spec_says() {
    let example = Example::new();
    example.edit(&example.contract("fraud-prevention"), |t| {
        t.replace("value: allowed", "value: forbidden")
    });
    let mesh = start(&example);

    // Default (on_label_sharing_forbidden: split-label-owner): the labels stay home.
    let job = mesh.submit(&example.job(), &["split-label-sharing"]);
    assert_eq!(job["state"], "admitted", "{job}");
    assert!(
        reason(&job).starts_with("split-label-owner × seeds [1]"),
        "{job}"
    );
    let id = job["id"].as_str().unwrap().to_string();
    let done = mesh.wait(&id);
    assert_eq!(done["state"], "done", "{done}");
    let mut operator = mesh.operator();
    let mut logs = Vec::new();
    let results = mesh
        .block_on(operator.watch(&id, false, |e| {
            if let fedmesh_net::client::JobProgress::Log(line) = e {
                logs.push(line);
            }
        }))
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].config, "split-label-owner");
    assert!(
        logs.iter().any(
            |l| l.contains("split-label-sharing is replaced by split-label-owner")
                && l.contains("flLabelSharing")
        ),
        "{logs:?}"
    );

    // With on_label_sharing_forbidden: fail, the same request is denied.
    example.edit("job.yaml", |t| {
        t.replace(
            "purpose: fraud-detection",
            "purpose: fraud-detection\non_label_sharing_forbidden: fail",
        )
    });
    let job = mesh.submit(&example.job(), &["split-label-sharing"]);
    assert_eq!(job["state"], "denied", "{job}");
    assert!(reason(&job).contains("fraud-prevention refuses"), "{job}");
    assert!(reason(&job).contains("rule `flLabelSharing`"), "{job}");
}

#[test]
fn a_label_owner_that_requires_label_protection_admits_only_a_job_that_protects_enough() {
    let example = Example::new();
    example.edit(&example.contract("fraud-prevention"), |t| {
        t.replace(
            "  - property: flLabelSharing",
            "  - property: flLabelProtection\n    value: [shaped-noise >= 2, randomized-response <= 1]\n  - property: flLabelSharing",
        )
    });
    let mesh = start(&example);
    // No protection: denied by the label owner, naming the rule and what to set.
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(job["state"], "denied", "{job}");
    assert!(reason(&job).contains("rule `flLabelProtection`"), "{job}");
    assert!(reason(&job).contains("label_protection"), "{job}");
    // Too little of it: denied too.
    let protect = |protection: &str| {
        example.edit("job.yaml", |t| {
            let kept: String = t
                .lines()
                .filter(|l| !l.starts_with("label_protection:"))
                .map(|l| format!("{l}\n"))
                .collect();
            format!("{kept}label_protection: {protection}\n")
        })
    };
    protect("{ shaped_noise: 1 }");
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(job["state"], "denied", "{job}");
    assert!(reason(&job).contains("shaped-noise 1"), "{job}");
    // Labels that would leave for governance: denied, protected or not.
    protect("{ shaped_noise: 2 }");
    let job = mesh.submit(&example.job(), &["split-label-sharing"]);
    assert_eq!(job["state"], "denied", "{job}");
    assert!(reason(&job).contains("may not leave"), "{job}");
    // Enough of it, labels at home: admitted, and it trains.
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(job["state"], "admitted", "{job}");
    let done = mesh.wait(job["id"].as_str().unwrap());
    assert_eq!(done["state"], "done", "{done}");
}

#[test]
fn an_admitted_job_walks_its_states_and_leaves_a_verifiable_record() {
    let example = Example::new();
    let mesh = start(&example);
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    let id = job["id"].as_str().unwrap().to_string();
    let done = mesh.wait(&id);
    assert_eq!(done["state"], "done", "{done}");
    let mut states = Vec::new();
    mesh.block_on(mesh.operator().watch(&id, false, |e| {
        if let fedmesh_net::client::JobProgress::State { state, .. } = e {
            states.push(state);
        }
    }))
    .unwrap();
    assert_eq!(
        states,
        [
            "submitted",
            "admitted",
            "aligning",
            "training",
            "evaluating",
            "done"
        ]
    );
    let listed = mesh.block_on(mesh.operator().jobs()).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    // The catalog has every domain's product, with the rows the job's check found.
    let products = mesh.block_on(mesh.operator().products()).unwrap();
    let products = products.as_array().unwrap();
    assert_eq!(products.len(), 3, "{products:?}");
    for p in products {
        assert!(p["rows"].as_u64().unwrap() > 3_000, "{p}");
        assert_eq!(p["quality"]["blocking"], false, "{p}");
        assert_eq!(p["key_column"], "transaction_id");
    }
    let governance: Vec<String> = mesh
        .audit("governance")
        .into_iter()
        .filter(|r| r.subject == id)
        .map(|r| r.action)
        .collect();
    assert_eq!(
        governance,
        [
            "job.submitted",
            "job.admitted",
            "alignment.run",
            "training.run",
            "job.done"
        ]
    );
    for domain in DOMAINS {
        let actions: Vec<String> = mesh
            .audit(domain)
            .into_iter()
            .filter(|r| r.subject.starts_with(&id))
            .map(|r| r.action)
            .collect();
        assert_eq!(
            actions,
            [
                "job.admitted",
                "job.admitted",
                "audit.anchor",
                "alignment.run",
                "training.run"
            ],
            "{domain}: admission, the check at job start, governance's head, alignment, training"
        );
    }

    // The logs anchor each other: governance noted every node's head at the run's end, every
    // node governance's at its start, and all of it checks out.
    let logs: Vec<(String, PathBuf)> = ["governance"]
        .into_iter()
        .chain(DOMAINS)
        .map(|who| (who.to_string(), mesh.audit_path(who)))
        .collect();
    // Every record is signed with its writer's key.
    let certs = mesh.certs();
    let signed_by = |owner: &str, hash: &[u8], signature: &[u8]| {
        let pem = std::fs::read_to_string(certs.join(format!("{owner}.pem"))).unwrap();
        fedmesh_tls::verify_signature(&pem, hash, signature).map_err(|e| e.to_string())
    };
    let checks = fedmesh_audit::verify_mesh(&logs, Some(&signed_by));
    assert!(checks.iter().all(|c| c.problems.is_empty()), "{checks:?}");
    assert_eq!(checks[0].anchors_checked, 3, "one per node");
    assert!(checks[1..].iter().all(|c| c.anchors_checked == 1));
    // A record given another record's signature (the writer's key is needed to sign anew).
    let digital = rusqlite::Connection::open(mesh.audit_path("digital")).unwrap();
    digital
        .execute_batch(
            "DROP TRIGGER audit_append_only_update;
             UPDATE audit SET signature = (SELECT signature FROM audit WHERE seq = 2) WHERE seq = 1;",
        )
        .unwrap();
    let checks = fedmesh_audit::verify_mesh(&logs, Some(&signed_by));
    let broken: Vec<_> = checks.iter().filter(|c| !c.problems.is_empty()).collect();
    assert_eq!(broken.len(), 1, "{checks:?}");
    assert_eq!(broken[0].name, "digital");
    assert!(
        broken[0].problems[0].starts_with("record 1 is not signed by `digital`"),
        "{:?}",
        broken[0].problems
    );
    // A node's training record cut off the end leaves a chain that holds on its own; governance's
    // anchor of it does not.
    let retail = rusqlite::Connection::open(mesh.audit_path("retail")).unwrap();
    retail
        .execute_batch(
            "DROP TRIGGER audit_append_only_delete;
             DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit);",
        )
        .unwrap();
    let retail_log = fedmesh_audit::AuditLog::open_existing(&mesh.audit_path("retail")).unwrap();
    retail_log
        .verify()
        .expect("the shortened chain holds on its own");
    let checks = fedmesh_audit::verify_mesh(&logs, None);
    let broken: Vec<_> = checks.iter().filter(|c| !c.problems.is_empty()).collect();
    assert_eq!(broken.len(), 1, "{checks:?}");
    assert_eq!(broken[0].name, "retail");
    assert!(
        broken[0].problems[0].contains("is gone, though `governance` anchored it"),
        "{:?}",
        broken[0].problems
    );
}

#[test]
fn a_product_that_breaks_a_blocking_rule_keeps_its_domain_out() {
    let example = Example::new();
    // A row count no 4,000-row product meets, as a severity-error rule.
    example.edit(&example.contract("retail"), |t| {
        t.replace(
            "mustBeGreaterThan: 1000, severity: error",
            "mustBeGreaterThan: 100000, severity: error",
        )
    });
    let mesh = start(&example);
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(
        job["state"], "admitted",
        "the contract's terms allow it: {job}"
    );
    let ended = mesh.wait(job["id"].as_str().unwrap());
    assert_eq!(ended["state"], "failed", "{ended}");
    let reason = reason(&ended);
    assert!(reason.contains("retail refuses"), "{reason}");
    assert!(reason.contains("rowCount"), "{reason}");
    assert!(reason.contains("stays out of the job"), "{reason}");
    // The catalog shows the product as blocked (the node's report arrives on its own).
    let deadline = Instant::now() + Duration::from_secs(10);
    let retail = loop {
        let retail = mesh
            .block_on(mesh.operator().product("retail/card-purchases"))
            .unwrap();
        if retail["quality"]["blocking"] == true || Instant::now() > deadline {
            break retail;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(retail["quality"]["blocking"], true, "{retail}");
    let violation = retail["quality"]["violations"][0].as_str().unwrap();
    assert!(violation.contains("rowCount"), "{retail}");
}

/// The keys of each aligned row, as the run's alignment ordered them, and a key only some
/// domains hold.
fn aligned_keys(job: &Job) -> (Vec<String>, String) {
    let mut cache = fedmesh_data::SourceCache::default();
    let products = job
        .spec
        .domains
        .iter()
        .map(|d| {
            job.load_product(d, None, job.example_path().as_deref(), &mut cache)
                .map(|(p, _)| p)
        })
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let partial = {
        let digital = products[0].keys().unwrap().unwrap();
        let retail: std::collections::HashSet<String> =
            products[1].keys().unwrap().unwrap().into_iter().collect();
        digital.into_iter().find(|k| !retail.contains(k)).unwrap()
    };
    let (aligned, _) = fedmesh_split::job::align_products(&job.spec.domains, products).unwrap();
    (aligned[0].keys().unwrap().unwrap(), partial)
}

#[test]
fn predict_scores_the_test_entities_as_the_evaluation_did_and_reports_missing_keys() {
    let example = Example::new();
    let mesh = start(&example);
    let job = example.job();
    let submitted = mesh.submit(&job, &["split-label-sharing", "split-label-owner"]);
    let done = mesh.wait(submitted["id"].as_str().unwrap());
    assert_eq!(done["state"], "done", "{done}");
    let models = mesh.block_on(mesh.operator().models()).unwrap();
    assert_eq!(models.as_array().unwrap().len(), 2, "{models}");
    let (keys, partial) = aligned_keys(&job);
    let prepared = job.prepare(None).unwrap();
    for (version, config) in [
        (1, fedmesh_split::job::RunConfig::SplitLabelSharing),
        (2, fedmesh_split::job::RunConfig::SplitLabelOwner),
    ] {
        let model = mesh
            .block_on(mesh.operator().model(&format!("fraud@{version}")))
            .unwrap();
        assert_eq!(model["config"], config.name().as_str(), "{model}");
        let holders: Vec<&str> = model["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["holder"].as_str().unwrap())
            .collect();
        assert!(
            holders.contains(&"digital") && holders.contains(&"governance"),
            "{holders:?}"
        );
        // The evaluation pass of the same run, in this process (a mesh run equals it exactly).
        let local = prepared
            .run(
                &config,
                1,
                &fedmesh_split::Silent,
                &std::sync::atomic::AtomicBool::new(false),
                None,
            )
            .unwrap();
        let mut request: Vec<String> = local
            .test_scores
            .iter()
            .map(|(row, _)| keys[*row as usize].clone())
            .collect();
        request.push("no-such-transaction".into());
        request.push(partial.clone());
        let answer = mesh
            .block_on(
                mesh.operator()
                    .predict(&format!("fraud@{version}"), request, 0),
            )
            .unwrap();
        let scores = answer["scores"].as_array().unwrap();
        assert_eq!(
            scores.len(),
            local.test_scores.len(),
            "every test entity is scored"
        );
        let mut worst = 0.0f64;
        for ((row, expected), got) in local.test_scores.iter().zip(scores) {
            assert_eq!(got["key"], keys[*row as usize].as_str());
            let got: Vec<f64> = got["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(expected) {
                worst = worst.max((g - *e as f64).abs());
            }
        }
        assert!(
            worst < 1e-5,
            "{}: largest difference {worst}",
            config.name()
        );
        let missing = answer["missing"].as_array().unwrap();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert_eq!(missing[0]["key"], "no-such-transaction");
        assert_eq!(missing[0]["missing_at"].as_array().unwrap().len(), 3);
        assert_eq!(missing[1]["key"], partial.as_str());
        assert!(
            missing[1]["missing_at"]
                .as_array()
                .unwrap()
                .contains(&Value::from("retail")),
            "{missing:?}"
        );
    }
    let served = mesh
        .audit("governance")
        .into_iter()
        .filter(|r| r.action == "predictions.served")
        .count();
    assert_eq!(served, 2);
    assert!(
        mesh.audit("retail")
            .iter()
            .any(|r| r.action == "predictions.served")
    );
}

#[test]
fn a_domains_own_policy_can_refuse_what_its_contract_and_governance_allow() {
    let example = Example::new();
    let policy = r#"
@id("labels-stay-home")
@reason("fraud-prevention trains only models whose labels stay with it")
forbid (principal, action, resource) when { context.shareLabels };
permit (principal, action, resource);
"#;
    let mesh = start_with(&example, ("fraud-prevention", policy));
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(job["state"], "admitted", "{job}");
    example.edit("job.yaml", |t| {
        t.replace(
            "purpose: fraud-detection",
            "purpose: fraud-detection\non_label_sharing_forbidden: fail",
        )
    });
    let job = mesh.submit(&example.job(), &["split-label-sharing"]);
    assert_eq!(job["state"], "denied", "{job}");
    let reason = reason(&job);
    assert!(reason.contains("fraud-prevention refuses"), "{reason}");
    assert!(reason.contains("rule `labels-stay-home`"), "{reason}");
    assert!(reason.contains("labels stay with it"), "{reason}");
    assert!(reason.contains("fraud-prevention.cedar"), "{reason}");
}

#[test]
fn a_cancelled_job_stops_and_keeps_its_record() {
    let example = Example::new();
    example.edit("job.yaml", |t| t.replace("epochs: 1", "epochs: 500"));
    let mesh = start(&example);
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    let id = job["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while mesh.block_on(mesh.operator().job(&id)).unwrap()["state"] != "training" {
        assert!(Instant::now() < deadline, "the job never trained");
        std::thread::sleep(Duration::from_millis(50));
    }
    mesh.block_on(mesh.operator().cancel(&id)).unwrap();
    let ended = mesh.wait(&id);
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(
        reason(&ended).contains("cancelled by an operator"),
        "{ended}"
    );
    let again = mesh.block_on(mesh.operator().cancel(&id));
    assert!(
        again
            .unwrap_err()
            .to_string()
            .contains("is cancelled already")
    );
    assert!(
        mesh.audit("governance")
            .iter()
            .any(|r| r.action == "job.cancelled" && r.subject == id)
    );
}

/// The MovieLens example's recommendation job over 60 synthetic users (two epochs) as
/// `format: tables`, each domain's table in a folder of its own, and the `(domain, contract)`
/// of its sales, customer and product nodes.
fn recommendation_example(dir: &Path) -> (RecommendationSpec, Vec<(String, PathBuf)>) {
    let file = write_synthetic_tables_job(dir, 60, 200, 12).unwrap();
    let (mut spec, _) = RecommendationSpec::load(&file).unwrap();
    spec.training.epochs = 2;
    spec.training.batch_size = 64;
    spec.training.optimizer.learning_rate = 0.01;
    let domains = [&spec.sales, &spec.customer, &spec.product]
        .map(|d| (d.name.clone(), dir.join(&d.contract)))
        .to_vec();
    (spec, domains)
}

#[test]
fn a_recommendation_job_runs_through_governance_as_it_runs_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, domains) = recommendation_example(dir.path());
    // Each domain holds its own table and nothing else: customer and product never see the
    // interactions.
    for domain in ["sales", "customer", "product"] {
        let held: Vec<_> = std::fs::read_dir(dir.path().join(domain))
            .unwrap()
            .map(|f| f.unwrap().file_name())
            .collect();
        assert_eq!(held.len(), 1, "{domain}: {held:?}");
    }
    let mesh = start_domains(&domains);
    let job = mesh.submit_spec(&spec.to_yaml(), &["split-label-owner"]);
    assert_eq!(job["state"], "admitted", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = mesh.wait(&id);
    assert_eq!(done["state"], "done", "{done}");

    // The run governance recorded is the in-process run, epoch by epoch.
    let results = mesh
        .state
        .path()
        .join("runs")
        .join(&id)
        .join("results.json");
    let results: Vec<RunResult> = serde_json::from_slice(&std::fs::read(results).unwrap()).unwrap();
    let local = spec
        .clone()
        .prepare(&dir.path().join("job.yaml"))
        .unwrap()
        .run(
            &RunConfig::SplitLabelOwner,
            1,
            &fedmesh_split::Silent,
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].metrics, local.metrics);
    assert!(results[0].metrics.ranking().is_some());
    assert_eq!(results[0].history.len(), 2);
    for (l, r) in local.history.iter().zip(&results[0].history) {
        assert!(
            (l.train_loss - r.train_loss).abs() < 1e-5,
            "epoch {}: {} in process, {} through governance",
            l.epoch,
            l.train_loss,
            r.train_loss
        );
    }

    // A registered model, whose parts stay with their holders: the head with sales.
    let models = mesh.block_on(mesh.operator().models()).unwrap();
    let model = &models.as_array().unwrap()[0];
    assert_eq!(model["name"], "movielens", "{model}");
    let mut parts: Vec<String> = model["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{} {}", p["layers"], p["holder"]).replace('"', ""))
        .collect();
    parts.sort();
    assert_eq!(
        parts,
        [
            "bottom customer",
            "bottom product",
            "bottom sales",
            "head sales",
            "tower governance"
        ]
    );

    // On record at governance and at every domain.
    let governance: Vec<String> = mesh
        .audit("governance")
        .into_iter()
        .filter(|r| r.subject == id)
        .map(|r| r.action)
        .collect();
    assert_eq!(
        governance,
        ["job.submitted", "job.admitted", "training.run", "job.done"]
    );
    for (domain, _) in &domains {
        let actions: Vec<String> = mesh
            .audit(domain)
            .into_iter()
            .filter(|r| r.subject.starts_with(&id))
            .map(|r| r.action)
            .collect();
        assert_eq!(
            actions,
            [
                "job.admitted",
                "job.admitted",
                "audit.anchor",
                "training.run"
            ],
            "{domain}"
        );
    }

    // Each user's top items, served by the parts where they are kept, are the in-process
    // model's: trained alike, saved, loaded and asked alike.
    let answer = mesh
        .block_on(mesh.operator().predict(
            "movielens@1",
            vec!["1".into(), "2".into(), "no-such-user".into()],
            5,
        ))
        .unwrap();
    assert_eq!(
        answer["missing"],
        serde_json::json!(["no-such-user"]),
        "{answer}"
    );
    let prepared = spec.prepare(&dir.path().join("job.yaml")).unwrap();
    let parts = dir.path().join("in-process-parts");
    let mut trained = prepared.in_process_ncf(false, 1, None).unwrap();
    fedmesh_split::recommend::fit_ranking(
        &mut trained,
        &prepared.spec.training,
        &fedmesh_split::Silent,
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    trained.save(&parts).unwrap();
    let mut serving = prepared.in_process_ncf(false, 1, Some(&parts)).unwrap();
    let rankings = answer["rankings"].as_array().unwrap();
    assert_eq!(rankings.len(), 2, "{answer}");
    for ranking in rankings {
        let user = ranking["user"].as_str().unwrap();
        let local = serving.recommend(user, 5).unwrap().unwrap();
        let served: Vec<(String, f64)> = ranking["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["item"].as_str().unwrap().to_string(),
                    i["score"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(served.len(), 5);
        for ((item, score), (local_item, local_score)) in served.iter().zip(&local) {
            assert_eq!(item, local_item, "user {user}");
            assert!((score - *local_score as f64).abs() < 1e-5, "user {user}");
        }
    }
    // Served on record: by governance, and by every domain that took part.
    assert!(
        mesh.audit("governance")
            .iter()
            .any(|r| r.action == "rankings.served" && r.subject == "movielens@1")
    );
    for (domain, _) in &domains {
        assert!(
            mesh.audit(domain)
                .iter()
                .any(|r| r.action == "rankings.served"),
            "{domain}"
        );
    }
}

#[test]
fn a_recommendation_job_for_a_purpose_the_domains_do_not_allow_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, domains) = recommendation_example(dir.path());
    spec.purpose = Some("marketing".into());
    let mesh = start_domains(&domains);
    let job = mesh.submit_spec(&spec.to_yaml(), &[]);
    assert_eq!(job["state"], "denied", "{job}");
    let reason = reason(&job);
    for domain in ["sales", "customer", "product"] {
        assert!(
            reason.contains(&format!("{domain} refuses")) && reason.contains("flAllowedPurposes"),
            "{domain}: {reason}"
        );
    }
}

#[test]
fn a_contract_term_in_the_wrong_case_denies_the_job_instead_of_being_ignored() {
    let example = Example::new();
    // `Forbidden` was once read as no rule at all, and the labels were shared.
    example.edit(&example.contract("fraud-prevention"), |t| {
        t.replacen(
            "property: flLabelSharing\n    value: allowed",
            "property: flLabelSharing\n    value: Forbidden",
            1,
        )
    });
    let mesh = start(&example);
    let job = mesh.submit(&example.job(), &["split-label-sharing"]);
    assert_eq!(job["state"], "denied", "{job}");
    let reason = reason(&job);
    assert!(
        reason.contains("fraud-prevention")
            && reason
                .contains("flLabelSharing is `Forbidden`; it must be `allowed` or `forbidden`"),
        "{reason}"
    );
}

#[test]
fn governance_reads_no_file_a_submitted_spec_names() {
    let example = Example::new();
    let mesh = start(&example);
    let portable = example.job().to_portable_yaml().unwrap();
    assert!(portable.contains("\nsplit:\n"));
    let spec = portable.replace("\nsplit:\n", "\nsplit:\n  test_keys: /etc/hostname\n");
    let request = JobRequest {
        spec_yaml: spec,
        configs: vec![],
        seeds: vec![1],
        epochs: 0,
    };
    let error = mesh
        .block_on(mesh.operator().submit(request))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("governance reads no file a job spec names")
            && error.contains("/etc/hostname"),
        "{error}"
    );
    // Nothing was recorded or run: the spec never got past reading.
    let jobs = mesh.block_on(mesh.operator().jobs()).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 0, "{jobs}");
}

#[test]
fn a_node_whose_audit_log_is_removed_records_nothing_it_does_not_record() {
    let example = Example::new();
    let mesh = start(&example);
    // Removed while the node runs: once, such a node ran a whole job writing 0 records.
    std::fs::remove_file(mesh.audit_path("retail")).unwrap();
    let job = mesh.submit(&example.job(), &["split-label-owner"]);
    assert_eq!(job["state"], "denied", "{job}");
    let reason = reason(&job);
    assert!(
        reason.contains("retail")
            && reason.contains("audit log cannot be written")
            && reason.contains("removed or replaced"),
        "{reason}"
    );
}
