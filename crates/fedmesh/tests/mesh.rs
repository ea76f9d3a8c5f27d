//! The mesh as separate OS processes: governance and three domain nodes, each a `fedmesh`
//! process, over mutual TLS on 127.0.0.1. This tests the binary (its configs, signals, exit
//! codes and logs); what a mesh computes is tested in process with `fedmesh-testkit`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DOMAINS: [&str; 3] = ["digital", "retail", "fraud-prevention"];

fn fedmesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedmesh"))
}

fn check(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA in `certs` and a certificate for each name, made with `fedmesh certs`.
fn make_certs(certs: &Path, names: &[&str]) {
    let cert = |args: &[&str]| {
        check(
            &fedmesh()
                .arg("certs")
                .args(args)
                .arg("--dir")
                .arg(certs)
                .output()
                .unwrap(),
        )
    };
    cert(&["init"]);
    for name in names {
        cert(&["issue", name]);
    }
}

/// Starts `fedmesh ROLE --config CONFIG`, its output appended to `dir/NAME.log`.
fn spawn(dir: &Path, role: &str, config: &Path, name: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    fedmesh()
        .arg(role)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Governance and one node per domain, each its own `fedmesh` process.
struct Processes {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes {
    /// Writes certificates and configs for the job's domains and starts the processes.
    fn start(dir: &Path, job: &Path) -> Self {
        let certs = dir.join("certs");
        make_certs(
            &certs,
            &[&["governance", "operator"][..], &DOMAINS].concat(),
        );
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/governance.cedar"),
            policies.join("governance.cedar"),
        )
        .unwrap();
        let governance_port = free_port();
        let mut domains = String::new();
        let mut children = Vec::new();
        let spawn = |role: &str, config: &Path, name: &str| spawn(dir, role, config, name);
        for domain in DOMAINS {
            let port = free_port();
            let config = dir.join(format!("{domain}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "domain: {domain}\nlisten: 127.0.0.1:{port}\nmesh: certs\n\
                     governance_url: https://127.0.0.1:{governance_port}\n\
                     contract: {}\nmodels: {domain}-models\n",
                    job.join(format!("contracts/{domain}.odcs.yaml")).display()
                ),
            )
            .unwrap();
            domains.push_str(&format!(
                "  - {{ name: {domain}, url: \"https://127.0.0.1:{port}\" }}\n"
            ));
            children.push((domain.to_string(), spawn("node", &config, domain)));
        }
        let config = dir.join("governance.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{governance_port}\nmesh: certs\noperators: [operator]\n\
                 runs: runs\ndeadline_seconds: 10\ndomains:\n{domains}"
            ),
        )
        .unwrap();
        children.push((
            "governance".into(),
            spawn("governance", &config, "governance"),
        ));
        let processes = Self {
            dir: dir.to_path_buf(),
            children,
        };
        for (name, _) in &processes.children {
            processes.wait_for_log(name, "listening on");
        }
        processes
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn wait_for_log(&self, name: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log(name).contains(text) {
            assert!(
                Instant::now() < deadline,
                "`{name}` never logged {text:?}:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn submit(&self, job: &Path, out: &Path, epochs: usize) -> Command {
        let mut command = fedmesh();
        command
            .args(["job", "submit"])
            .arg(job)
            .arg("--mesh")
            .arg(&self.dir)
            .args(["--configs", "split-label-owner", "--seeds", "1"])
            .args(["--epochs", &epochs.to_string()])
            .arg("--out")
            .arg(out);
        command
    }
}

impl Processes {
    /// `fedmesh ARGS… --mesh DIR`.
    fn fedmesh(&self, args: &[&str]) -> Output {
        fedmesh()
            .args(args)
            .arg("--mesh")
            .arg(&self.dir)
            .output()
            .unwrap()
    }

    fn job_json(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&check(&self.fedmesh(&["job", "status", id, "--json"]))).unwrap()
    }

    /// Waits until job `id` is in `state`.
    fn wait_for_state(&self, id: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.job_json(id);
            if job["state"] == state {
                return job;
            }
            assert!(Instant::now() < deadline, "job never became {state}: {job}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The id in `fedmesh job submit --detach`'s answer: "job `ID` admitted: …".
fn submitted_id(stdout: &str) -> String {
    stdout
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no job id in {stdout:?}"))
        .to_string()
}

/// Every file and folder under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

fn results(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_job_over_separate_processes_equals_the_in_process_run() {
    let dir = tempfile::tempdir().unwrap();
    let job = fedmesh_testkit::small_fraud(dir.path(), 2);
    let mesh = Processes::start(&dir.path().join("mesh"), &job);
    let remote = dir.path().join("remote");
    check(&mesh.submit(&job, &remote, 2).output().unwrap());
    let local = dir.path().join("local");
    check(
        &fedmesh()
            .arg("run")
            .arg(&job)
            .args(["--configs", "split-label-owner", "--seeds", "1", "--out"])
            .arg(&local)
            .output()
            .unwrap(),
    );
    let (remote, local) = (results(&remote), results(&local));
    let (remote, local) = (&remote["runs"][0], &local["runs"][0]);
    // f32 on the wire is lossless: the same numbers, not merely close ones.
    assert_eq!(remote["metrics"], local["metrics"]);
    let losses = |run: &serde_json::Value| {
        run["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["train_loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(remote), losses(local));
    assert!(remote["wire"]["to_domains"].as_u64().unwrap() > 0);
    assert!(local["wire"].is_null());
    // The label owner saved its head on its own side.
    assert!(
        remote["model_files"].as_array().unwrap().iter().any(|f| f
            .as_str()
            .unwrap()
            .contains("fraud-prevention-models")
            && f.as_str().unwrap().ends_with("head-fraud-prevention.bpk"))
    );
}

#[test]
fn a_killed_node_process_fails_the_job_naming_it_within_30_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let job = fedmesh_testkit::small_fraud(dir.path(), 200);
    let mut mesh = Processes::start(&dir.path().join("mesh"), &job);
    let out = dir.path().join("out");
    let submit = mesh
        .submit(&job, &out, 200)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Training has started once governance has laid out the run.
    mesh.wait_for_log("governance", "cut layer");
    std::thread::sleep(Duration::from_millis(300));
    let (_, retail) = mesh
        .children
        .iter_mut()
        .find(|(name, _)| name == "retail")
        .unwrap();
    retail.kill().unwrap();
    retail.wait().unwrap();
    let killed = Instant::now();
    let output = submit.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the job cannot succeed");
    assert!(stderr.contains("domain node `retail`"), "{stderr}");
    assert!(waited < Duration::from_secs(30), "took {waited:?}");
    // Governance itself survives a node's death and says which node failed the job.
    assert!(mesh.log("governance").contains("domain node `retail`"));
    assert!(
        mesh.children
            .iter_mut()
            .all(|(name, child)| name == "retail" || child.try_wait().unwrap().is_none())
    );
}

#[test]
fn mesh_up_stops_every_process_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let job = fedmesh_testkit::small_fraud(dir.path(), 1);
    let port = free_port();
    let mut up = fedmesh()
        .args(["mesh", "up"])
        .arg(&job)
        .arg("--dir")
        .arg(dir.path().join("mesh"))
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = up.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains("Ctrl-C stops the mesh") {
        assert!(Instant::now() < deadline, "mesh never came up: {seen}");
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(n > 0, "mesh up exited: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // A job runs on it from another "terminal".
    let out = dir.path().join("out");
    let submitted = fedmesh()
        .args(["job", "submit"])
        .arg(&job)
        .arg("--mesh")
        .arg(dir.path().join("mesh"))
        .args(["--seeds", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    check(&submitted);
    assert_eq!(results(&out)["runs"].as_array().unwrap().len(), 2);
    // Ctrl-C (SIGINT to `mesh up`): everything stops and the ports are free again.
    assert!(
        Command::new("kill")
            .args(["-INT", &up.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "mesh up did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("mesh stopped"), "{rest}");
    for offset in 0..4 {
        assert!(
            TcpListener::bind(("127.0.0.1", port + offset)).is_ok(),
            "port {} still in use",
            port + offset
        );
    }
}

#[test]
fn an_operator_from_another_ca_is_refused_with_a_log_line_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let job = fedmesh_testkit::small_fraud(dir.path(), 1);
    let mesh = Processes::start(&dir.path().join("mesh"), &job);
    // A mesh folder of its own: the real governance's address, but certificates from a CA the
    // mesh never trusted.
    let impostor = dir.path().join("impostor");
    make_certs(&impostor.join("certs"), &["operator"]);
    std::fs::copy(
        mesh.dir.join("governance.yaml"),
        impostor.join("governance.yaml"),
    )
    .unwrap();
    let output = fedmesh()
        .args(["job", "submit"])
        .arg(&job)
        .arg("--mesh")
        .arg(&impostor)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("governance `governance`") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    // Governance says who it turned away, at WARN, with the address.
    mesh.wait_for_log("governance", "refused a TLS connection from 127.0.0.1");
    assert!(!mesh.log("governance").contains("submitted job"));
}

/// The mesh processes (started to exit with their parent) whose command line mentions `path`.
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.ok()?.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(&needle) && cmdline.contains("--exit-with-parent")).then_some(cmdline)
        })
        .collect()
}

#[test]
fn quickstart_interrupted_leaves_no_process_behind() {
    if !Path::new("/proc/self/cmdline").exists() {
        eprintln!("skipped: no /proc to look for leftover processes in");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quickstart");
    let mut quickstart = fedmesh()
        .arg("quickstart")
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = quickstart.stdout.take().unwrap();
    let mut seen = String::new();
    while !seen.contains("mesh up:") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(n > 0, "quickstart exited early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The mesh's processes run from the quickstart's folder.
    assert_eq!(
        processes_mentioning(&out).len(),
        4,
        "governance and three nodes"
    );
    // Ctrl-C, delivered to the quickstart alone: its processes must stop with it.
    assert!(
        Command::new("kill")
            .args(["-INT", &quickstart.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = quickstart.wait().unwrap();
    assert!(!status.success(), "an interrupted quickstart says so");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&out).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            processes_mentioning(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn jobs_catalog_and_audit_logs_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let job = fedmesh_testkit::small_fraud(dir.path(), 1);
    let mesh = Processes::start(&dir.path().join("mesh"), &job);
    let job_arg = job.to_str().unwrap();
    // Submitted detached, followed through its log to the end.
    let submitted = check(&mesh.fedmesh(&[
        "job",
        "submit",
        job_arg,
        "--detach",
        "--configs",
        "split-label-owner",
        "--seeds",
        "1",
    ]));
    assert!(submitted.contains("admitted"), "{submitted}");
    let id = submitted_id(&submitted);
    let logs = check(&mesh.fedmesh(&["job", "logs", &id, "--follow"]));
    for state in [
        "[submitted]",
        "[admitted]",
        "[aligning]",
        "[training]",
        "[evaluating]",
        "[done]",
    ] {
        assert!(logs.contains(state), "{state} missing from:\n{logs}");
    }
    assert!(logs.contains("split-label-owner seed 1: ROC-AUC"), "{logs}");
    let list = check(&mesh.fedmesh(&["job", "list"]));
    assert!(list.contains(&id) && list.contains("done"), "{list}");
    // Every domain registered its product; the job's check filled in rows and quality.
    let catalog = check(&mesh.fedmesh(&["catalog", "list"]));
    for product in ["card-sessions", "card-purchases", "card-cases"] {
        assert!(catalog.contains(product), "{catalog}");
    }
    let shown = check(&mesh.fedmesh(&["catalog", "show", "card-cases"]));
    assert!(
        shown.contains("transaction_id") && shown.contains("flAllowedPurposes"),
        "{shown}"
    );
    // A job whose purpose no product allows is denied, and says by whom.
    let marketing = dir.path().join("marketing");
    std::fs::create_dir_all(marketing.join("contracts")).unwrap();
    for file in [
        "contracts/digital.odcs.yaml",
        "contracts/retail.odcs.yaml",
        "contracts/fraud-prevention.odcs.yaml",
    ] {
        std::fs::copy(job.join(file), marketing.join(file)).unwrap();
    }
    let spec = std::fs::read_to_string(job.join("job.yaml")).unwrap();
    std::fs::write(
        marketing.join("job.yaml"),
        spec.replace("purpose: fraud-detection", "purpose: marketing"),
    )
    .unwrap();
    let denied = mesh.fedmesh(&["job", "submit", marketing.to_str().unwrap(), "--detach"]);
    assert!(!denied.status.success());
    let said = String::from_utf8_lossy(&denied.stdout);
    assert!(
        said.contains("denied") && said.contains("digital refuses"),
        "{said}"
    );

    // Every audit log of the mesh verifies untouched: its chain, its signatures, and every
    // anchor the other logs hold of it.
    let verified = check(&mesh.fedmesh(&["audit", "verify"]));
    assert_eq!(verified.matches("intact").count(), 4, "{verified}");
    assert!(
        verified.contains("anchors of other logs checked"),
        "{verified}"
    );

    // What the processes wrote is theirs alone: state, audit logs and models.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let state = mesh.dir.join("state");
        for file in ["governance.sqlite", "audit.sqlite"] {
            assert_eq!(mode(&state.join(file)), 0o600, "{file}");
        }
        assert_eq!(mode(&state), 0o700);
        let models = mesh.dir.join("retail-models");
        let mut saved = 0;
        for entry in walk(&models) {
            let expected = if entry.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(&entry), expected, "{}", entry.display());
            saved += 1;
        }
        assert!(saved > 0, "retail saved its parts in {}", models.display());
    }

    // A reader that goes away (`fedmesh … | head`) ends the command quietly, not with a panic.
    let mut reader = fedmesh()
        .args(["audit", "show"])
        .arg(mesh.dir.join("state").join("audit.sqlite"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(reader.stdout.take());
    let closed = reader.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // One record of governance's log edited by someone with the file: verify names it.
    let log = mesh.dir.join("state").join("audit.sqlite");
    let conn = rusqlite::Connection::open(&log).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_append_only_update;
         UPDATE audit SET details = replace(details, 'marketing', 'fraud-detection') WHERE action = 'job.submitted' AND details LIKE '%marketing%';",
    )
    .unwrap();
    let edited: u64 = conn
        .query_row(
            "SELECT seq FROM audit WHERE action = 'job.submitted' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    let output = mesh.fedmesh(&["audit", "verify"]);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!("record {edited} was altered")),
        "{said}"
    );
    assert_eq!(
        said.matches("intact").count(),
        3,
        "the nodes' logs still hold: {said}"
    );
}

#[test]
fn a_job_in_flight_when_governance_dies_is_marked_failed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let job = fedmesh_testkit::small_fraud(dir.path(), 200);
    let mut mesh = Processes::start(&dir.path().join("mesh"), &job);
    let submitted = check(&mesh.fedmesh(&[
        "job",
        "submit",
        job.to_str().unwrap(),
        "--detach",
        "--configs",
        "split-label-owner",
        "--seeds",
        "1",
    ]));
    let id = submitted_id(&submitted);
    mesh.wait_for_state(&id, "training");
    // Governance dies without a chance to record anything.
    let (_, governance) = mesh
        .children
        .iter_mut()
        .find(|(name, _)| name == "governance")
        .unwrap();
    governance.kill().unwrap();
    governance.wait().unwrap();
    *governance = spawn(
        &mesh.dir,
        "governance",
        &mesh.dir.join("governance.yaml"),
        "governance",
    );
    let job = mesh.job_json(&id);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("governance stopped while the job was training"),
        "{job}"
    );
    // And the mesh takes new jobs.
    let list = check(&mesh.fedmesh(&["job", "list"]));
    assert!(list.contains(&id), "{list}");
}
