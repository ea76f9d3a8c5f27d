//! The binary as a user runs it.

use std::path::Path;
use std::process::Command;

fn fedmesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedmesh"))
}

fn results(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn quickstart_compares_three_configurations() {
    let out = tempfile::tempdir().unwrap();
    let output = fedmesh()
        .args(["quickstart", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for config in ["centralized", "split-label-sharing", "split-label-owner"] {
        assert!(stdout.contains(&format!("| {config} |")), "{stdout}");
    }
    // Every audit log checked against its signatures and the others' anchors of it.
    assert!(
        stdout.contains("audit logs intact, signed and anchored in each other"),
        "{stdout}"
    );
    let results = results(out.path());
    assert_eq!(results["example"], "fraud");
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    // Every run, in this process or over the mesh (by private set intersection), trained on
    // the same entities: those all three products hold.
    assert!(
        stdout.contains("entities common to all 3 products"),
        "{stdout}"
    );
    let intersection = &runs[0]["alignment"]["intersection"];
    assert!(intersection.as_u64().unwrap() > 0);
    for run in runs {
        assert_eq!(&run["alignment"]["intersection"], intersection);
        assert_eq!(run["alignment"]["method"], "private-set-intersection");
        for metric in ["roc_auc", "pr_auc", "f1", "hard_label_auc"] {
            let value = run["metrics"][metric].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&value), "{metric} = {value}");
        }
        assert!(run["train_seconds"].as_f64().unwrap() > 0.0);
        assert!(run["seed"].is_u64());
    }
    assert_eq!(
        runs[0]["cut_layer_bytes"], 0,
        "the centralized model has no cut layer"
    );
    assert!(runs[1]["cut_layer_bytes"].as_u64().unwrap() > 0);
    // Without label sharing the tower's output and its gradient cross too.
    assert!(runs[2]["cut_layer_bytes"].as_u64() > runs[1]["cut_layer_bytes"].as_u64());
    for file in ["report.md", "loss.svg", "roc.svg", "pr.svg"] {
        assert!(out.path().join(file).exists(), "{file} missing");
    }
    // The split runs went over the mesh: bytes counted both ways.
    assert!(runs[0]["wire"].is_null());
    for run in &runs[1..] {
        assert_eq!(run["wire"]["encoding"], "f32");
        assert!(run["wire"]["to_domains"].as_u64().unwrap() > 0);
        assert!(run["wire"]["from_domains"].as_u64().unwrap() > 0);
    }
    // Each part is saved by its holder, in the holder's own folder: three bottoms and their
    // feature pipelines at the domain nodes, the tower at governance, the head at the label
    // owner.
    let saved = |run: &serde_json::Value| -> Vec<String> {
        run["model_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let path = Path::new(f.as_str().unwrap());
                assert!(path.exists(), "{} missing", path.display());
                let holder = path.strip_prefix(out.path().join("mesh")).unwrap();
                holder.iter().next().unwrap().to_string_lossy().into_owned()
                    + "/"
                    + &path.file_name().unwrap().to_string_lossy()
            })
            .collect()
    };
    let owner = saved(&runs[2]);
    for file in [
        "digital/bottom-digital.bpk",
        "retail/bottom-retail.bpk",
        "fraud-prevention/bottom-fraud-prevention.bpk",
        "runs/tower-governance.bpk",
        "fraud-prevention/head-fraud-prevention.bpk",
        "digital/pipeline-digital.json",
    ] {
        assert!(owner.iter().any(|f| f == file), "{file} not in {owner:?}");
    }
    assert!(!owner.iter().any(|f| f.ends_with("head-governance.bpk")));
    assert!(
        saved(&runs[1])
            .iter()
            .any(|f| f == "runs/head-governance.bpk")
    );
    assert!(stdout.contains("mesh stopped"), "{stdout}");
}

#[test]
fn run_reports_a_contract_violation_and_trains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/credit");
    // A UCI_Credit_Card.csv whose LIMIT_BAL column holds text in its fourth row.
    let columns = "ID,LIMIT_BAL,SEX,EDUCATION,MARRIAGE,AGE,PAY_0,PAY_2,PAY_3,PAY_4,PAY_5,PAY_6,\
        BILL_AMT1,BILL_AMT2,BILL_AMT3,BILL_AMT4,BILL_AMT5,BILL_AMT6,\
        PAY_AMT1,PAY_AMT2,PAY_AMT3,PAY_AMT4,PAY_AMT5,PAY_AMT6,default.payment.next.month";
    let mut csv = format!("{columns}\n");
    for row in 1..=5 {
        let limit = if row == 4 { "lots" } else { "20000" };
        csv.push_str(&format!("{row},{limit},2,2,1,24{}\n", ",0".repeat(19)));
    }
    let data = dir.path().join("UCI_Credit_Card.csv");
    std::fs::write(&data, csv).unwrap();
    let out = dir.path().join("out");
    let output = fedmesh()
        .arg("run")
        .arg(&example)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`clients`") && stderr.contains("`LIMIT_BAL`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("row 4") && stderr.contains("logicalType"),
        "{stderr}"
    );
    assert!(!out.join("results.json").exists(), "nothing was trained");
}

#[test]
fn unknown_configuration_is_named() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/breast");
    let output = fedmesh()
        .arg("run")
        .arg(&example)
        .args(["--configs", "federated-magic"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("federated-magic"), "{stderr}");
}

#[test]
fn certs_make_a_ca_and_name_each_node() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    let certs = |args: &[&str]| {
        fedmesh()
            .arg("certs")
            .args(args)
            .arg("--dir")
            .arg(&mesh)
            .output()
            .unwrap()
    };
    assert!(certs(&["init"]).status.success());
    for node in ["governance", "digital"] {
        let out = certs(&["issue", node]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read_to_string(mesh.join(format!("{node}.pem"))).unwrap();
        assert_eq!(fedmesh_tls::names(&pem).unwrap(), vec![node]);
    }
    let again = certs(&["init"]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("already holds a mesh CA"),
        "{stderr}"
    );
}

#[test]
fn a_recommendation_job_reports_hr_and_ndcg_per_configuration_and_seed() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ml-100k");
    if !data.exists() {
        eprintln!("skipped: {} is not on this machine", data.display());
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/movielens");
    let output = fedmesh()
        .arg("run")
        .arg(&example)
        .args(["--epochs", "1", "--seeds", "2", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = results(out.path());
    assert_eq!(results["test_rows"], 943);
    assert_eq!(results["interactions"]["users"], 943);
    assert_eq!(results["interactions"]["items"], 1682);
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        8,
        "popularity, centralized and both split configurations, 2 seeds each"
    );
    // Every run reports its metrics as a classification run does: under `metrics`.
    let metric = |k: usize, name: &str| runs[k]["metrics"][name].as_f64().unwrap();
    for (k, run) in runs.iter().enumerate() {
        let (hr, ndcg) = (metric(k, "hr@10"), metric(k, "ndcg@10"));
        assert!(ndcg > 0.0 && ndcg < hr && hr < 1.0, "{run}");
        assert_eq!(run["metrics"]["users"], 943);
    }
    assert!((metric(0, "hr@10") - 0.4062).abs() < 1e-4, "popularity");
    // Where the split model's head runs changes who sees the labels, not the numbers.
    assert_eq!(runs[4]["config"], "split-label-sharing");
    assert_eq!(runs[6]["config"], "split-label-owner");
    assert_eq!(metric(4, "hr@10"), metric(6, "hr@10"));
    assert_eq!(metric(5, "ndcg@10"), metric(7, "ndcg@10"));
}

#[test]
fn check_says_what_a_mesh_would_deny_with_the_file_and_rule_to_edit() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud");
    let job = dir.path().join("fraud");
    std::fs::create_dir_all(job.join("contracts")).unwrap();
    std::fs::copy(example.join("job.yaml"), job.join("job.yaml")).unwrap();
    for domain in ["digital", "retail", "fraud-prevention"] {
        let file = format!("contracts/{domain}.odcs.yaml");
        std::fs::copy(example.join(&file), job.join(&file)).unwrap();
    }
    let edit = |file: &str, from: &str, to: &str| {
        let path = job.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no `{from}`");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    let check = || {
        let output = fedmesh().arg("check").arg(&job).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
        )
    };
    // As written: both configurations admitted.
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("split-label-owner: admitted"), "{out}");

    // A purpose no contract allows and governance forbids, and labels that may not leave.
    edit("job.yaml", "purpose: fraud-detection", "purpose: marketing");
    edit(
        "contracts/fraud-prevention.odcs.yaml",
        "value: allowed",
        "value: forbidden",
    );
    let (code, out) = check();
    assert_eq!(code, Some(1), "{out}");
    let digital = job.join("contracts/digital.odcs.yaml");
    assert!(
        out.contains(&format!(
            "{}: rule `flAllowedPurposes` (digital refuses)",
            digital.display()
        )),
        "{out}"
    );
    // Governance's rule is said once, for every domain it concerns, in every configuration.
    assert_eq!(out.matches("rule `no-marketing`").count(), 1, "{out}");
    assert!(
        out.contains("(for digital, retail, fraud-prevention)"),
        "{out}"
    );
    assert!(out.contains("every configuration is denied"), "{out}");
    // Only configuration 1 takes the labels away.
    let sharing = out
        .split("split-label-sharing: denied")
        .nth(1)
        .unwrap_or("");
    assert!(sharing.contains("rule `flLabelSharing`"), "{out}");

    // The purpose put right: configuration 2 is admitted, and the check passes.
    edit("job.yaml", "purpose: marketing", "purpose: fraud-detection");
    let (code, out) = check();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("split-label-owner: admitted"), "{out}");
    assert!(out.contains("split-label-sharing: denied"), "{out}");
}

/// Two domains' raw tables as a new user brings them: a guest with a label, a regression target
/// and a few measurements, a host with other measurements, a category and an amount; each holds
/// some clients the other lacks, in an order of its own. Returns the two files.
fn two_party_tables(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    // A small deterministic generator: the test needs no randomness crate.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let rows = 1200;
    let mut guest = vec!["client_id,label,spend,g0,g1,g2".to_string()];
    let mut host = vec!["client_id,h0,h1,segment,amount".to_string()];
    let colours = ["north", "south", "east", "west"];
    for i in 0..rows {
        let g: Vec<f64> = (0..3).map(|_| uniform() * 2.0 - 1.0).collect();
        let h: Vec<f64> = (0..2).map(|_| uniform() * 2.0 - 1.0).collect();
        let segment = (uniform() * 4.0) as usize;
        let amount = (uniform() * 6.0).exp();
        // Both domains are needed, and not linearly.
        let score = g[0] * h[0] + g[1] - h[1] + 0.5 * (segment as f64 - 1.5);
        let label = u8::from(score + 0.3 * (uniform() - 0.5) > 0.0);
        let spend = 300.0 + 120.0 * (g[0] * h[0] * 2.0 + (3.0 * h[1]).sin() + g[2].abs());
        let id = 10_000 + i * 7;
        if i % 13 != 0 {
            guest.push(format!(
                "{id},{label},{spend:.2},{:.4},{:.4},{:.4}",
                g[0], g[1], g[2]
            ));
        }
        if i % 17 != 0 {
            host.push(format!(
                "{id},{:.4},{:.4},{},{amount:.2}",
                h[0], h[1], colours[segment]
            ));
        }
    }
    // The host's rows in another order.
    let header = host.remove(0);
    host.reverse();
    host.insert(0, header);
    let (g, h) = (dir.join("guest.csv"), dir.join("host.csv"));
    std::fs::write(&g, guest.join("\n") + "\n").unwrap();
    std::fs::write(&h, host.join("\n") + "\n").unwrap();
    (g, h)
}

fn succeeds(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The path for a new user: raw CSVs → `init` → `check` → `run`, with no hand edit, for
/// a classification label and a regression target of the same two tables.
#[test]
fn raw_tables_go_through_init_check_and_run_without_a_hand_edit() {
    let dir = tempfile::tempdir().unwrap();
    let (guest, host) = two_party_tables(dir.path());

    // Classification.
    let job = dir.path().join("churn");
    let said = succeeds(
        fedmesh()
            .arg("init")
            .args([&guest, &host])
            .args(["--label", "label", "--out"])
            .arg(&job),
    );
    assert!(said.contains("key: `client_id`"), "{said}");
    assert!(said.contains("classification, 2 classes"), "{said}");
    let spec = std::fs::read_to_string(job.join("job.yaml")).unwrap();
    // Every usable column, with a transform that fits it; the other target is a feature here.
    for line in [
        "{ column: segment, transform: embedding }",
        "{ column: amount, transform: log-standardize }",
        "{ column: spend }",
        "{ column: h0 }",
    ] {
        assert!(spec.contains(line), "{line} missing from\n{spec}");
    }
    assert!(!spec.contains("{ column: client_id"), "{spec}");
    let contract = std::fs::read_to_string(job.join("contracts/guest.odcs.yaml")).unwrap();
    assert!(contract.contains("primaryKey: true"), "{contract}");
    assert!(contract.contains("value: forbidden"), "{contract}");
    // Nothing is overwritten.
    let again = fedmesh()
        .arg("init")
        .args([&guest, &host])
        .args(["--label", "label", "--out"])
        .arg(&job)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("overwrites nothing"));

    let checked = succeeds(fedmesh().arg("check").arg(&job));
    assert!(checked.contains("split-label-owner: admitted"), "{checked}");
    let out = dir.path().join("churn-out");
    let said = succeeds(
        fedmesh()
            .arg("run")
            .arg(&job)
            .args(["--seeds", "1", "--out"])
            .arg(&out),
    );
    // In one process every configuration runs; the run says which one a mesh would refuse.
    assert!(
        said.contains("note: a mesh would deny split-label-sharing")
            && !said.contains("deny split-label-owner"),
        "{said}"
    );
    let classified = results(&out);
    let runs = classified["runs"].as_array().unwrap();
    let owner = runs
        .iter()
        .find(|r| r["config"] == "split-label-owner")
        .unwrap();
    let auc = owner["metrics"]["roc_auc"].as_f64().unwrap();
    assert!(auc > 0.9, "ROC-AUC {auc}");
    // The run wrote the keys of its validation and test rows, one per line.
    for (file, rows) in [
        ("valid-keys.txt", "valid_rows"),
        ("test-keys.txt", "test_rows"),
    ] {
        let keys = std::fs::read_to_string(out.join(file)).unwrap();
        assert_eq!(
            keys.lines().count() as u64,
            owner[rows].as_u64().unwrap(),
            "{file}"
        );
        assert!(
            keys.lines()
                .all(|k| k.parse::<u32>().is_ok_and(|k| k >= 10_000))
        );
    }

    // Regression: the guest's spend, beside the least-squares baseline.
    let job = dir.path().join("spend");
    let said = succeeds(
        fedmesh()
            .arg("init")
            .args([&guest, &host])
            .args(["--label", "spend", "--out"])
            .arg(&job),
    );
    assert!(said.contains("regression"), "{said}");
    succeeds(fedmesh().arg("check").arg(&job));
    let out = dir.path().join("spend-out");
    succeeds(
        fedmesh()
            .arg("run")
            .arg(&job)
            .args(["--seeds", "1", "--out"])
            .arg(&out),
    );
    let regressed = results(&out);
    let r2 = |config: &str| {
        regressed["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["config"] == config)
            .unwrap_or_else(|| panic!("no {config} run"))["metrics"]["r2"]
            .as_f64()
            .unwrap()
    };
    let (linear, split) = (r2("linear"), r2("split-label-owner"));
    assert!(
        split > linear + 0.1 && split > 0.6,
        "split R² {split}, linear {linear}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| RMSE | MAE | R² |"), "{report}");
}

#[test]
fn bench_psi_with_kkrt_finds_the_shared_keys_over_the_network_and_in_process() {
    // Two node processes and this binary as governance, as a job aligns.
    let stdout = succeeds(
        fedmesh()
            .args(["bench", "psi", "--protocol", "kkrt"])
            .args(["--size", "3000", "--overlap", "0.3"]),
    );
    assert!(
        stdout.contains("psi (KKRT) over the network") && stdout.contains("intersection 900,"),
        "{stdout}"
    );
    // Three parties in this process: a chain of two runs.
    let stdout = succeeds(
        fedmesh()
            .args(["bench", "psi", "--in-process", "--protocol", "kkrt"])
            .args(["--parties", "3", "--size", "2000", "--overlap", "0.5"]),
    );
    assert!(
        stdout.contains("psi (KKRT), 3 parties") && stdout.contains("intersection 1000,"),
        "{stdout}"
    );
    let output = fedmesh()
        .args(["bench", "psi", "--size", "10", "--protocol", "rsa"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("[possible values: ecdh, kkrt]"),
        "{stderr}"
    );
}
