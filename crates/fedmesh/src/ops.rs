//! The operator's commands on a running mesh: jobs (`status`, `list`, `cancel`, `logs`), the
//! catalog, and verifying audit logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use fedmesh_audit::AuditLog;
use fedmesh_net::client::{JobProgress, Operator};
use serde_json::Value;

use crate::mesh::MeshLayout;
use crate::run::MeshClient;

fn operator(client: &MeshClient) -> Result<Operator> {
    Ok(client
        .runtime
        .block_on(Operator::connect(&client.identity, &client.governance))?)
}

fn time(ms: &Value) -> String {
    ms.as_i64()
        .map_or_else(|| "-".into(), fedmesh_audit::format_time)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `fedmesh job status ID`.
pub fn status(mesh: &Path, id: &str, json: bool) -> Result<()> {
    let client = MeshClient::of(mesh)?;
    let job = client.runtime.block_on(operator(&client)?.job(id))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(());
    }
    println!("job        {}", text(&job["id"]));
    println!("state      {}", text(&job["state"]));
    if !text(&job["reason"]).is_empty() {
        let mut lines = text(&job["reason"]).lines();
        println!("           {}", lines.next().unwrap_or_default());
        for line in lines {
            println!("           {line}");
        }
    }
    println!(
        "submitted  {} by {}",
        time(&job["submitted_ms"]),
        text(&job["submitted_by"])
    );
    println!("updated    {}", time(&job["updated_ms"]));
    println!("request    {}", text(&job["request_json"]));
    Ok(())
}

/// `fedmesh job list`.
pub fn list(mesh: &Path, json: bool) -> Result<()> {
    let client = MeshClient::of(mesh)?;
    let jobs = client.runtime.block_on(operator(&client)?.jobs())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    let jobs = jobs.as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!(
            "no jobs yet (submit one with `fedmesh job submit JOB --mesh {})`",
            mesh.display()
        );
        return Ok(());
    }
    println!("{:<32} {:<11} {:<20} reason", "job", "state", "submitted");
    for job in jobs {
        let reason = text(&job["reason"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        println!(
            "{:<32} {:<11} {:<20} {}",
            text(&job["id"]),
            text(&job["state"]),
            time(&job["submitted_ms"]),
            truncate(&reason, 80)
        );
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// `fedmesh job cancel ID`.
pub fn cancel(mesh: &Path, id: &str) -> Result<()> {
    let client = MeshClient::of(mesh)?;
    let job = client.runtime.block_on(operator(&client)?.cancel(id))?;
    println!(
        "job `{id}`: {} — it stops after its current batch (see `fedmesh job status {id}`)",
        text(&job["state"])
    );
    Ok(())
}

/// `fedmesh job logs ID [--follow]`: the job's events as lines.
pub fn logs(mesh: &Path, id: &str, follow: bool, stop: &AtomicBool) -> Result<()> {
    let client = MeshClient::of(mesh)?;
    let mut operator = operator(&client)?;
    let print = |event: JobProgress| match event {
        JobProgress::RunStarted(r) => println!(
            "run started: {} seed {} ({} epochs)",
            r.config, r.seed, r.epochs
        ),
        JobProgress::Epoch(e) => println!(
            "  epoch {}: loss {:.4}{}",
            e.epoch,
            e.train_loss,
            e.valid_headline
                .map_or(String::new(), |v| format!(", valid {v:.4}"))
        ),
        JobProgress::RunDone(r) => println!(
            "run done: {} seed {}: {} {:.4}",
            r.config,
            r.seed,
            r.metrics.headline_name(),
            r.metrics.headline()
        ),
        JobProgress::Log(line) => println!("{line}"),
        JobProgress::State { state, reason } if reason.is_empty() => println!("[{state}]"),
        JobProgress::State { state, reason } => println!("[{state}] {reason}"),
    };
    let outcome = client.runtime.block_on(async {
        tokio::select! {
            r = operator.watch(id, follow, print) => Some(r),
            _ = crate::mesh::stopped(stop) => None,
        }
    });
    match outcome {
        // Not following, or the job ended: its failure was printed as its last state.
        Some(Ok(_)) | Some(Err(fedmesh_split::SplitError::JobFailed(_))) | None => Ok(()),
        Some(Err(e)) => Err(e.into()),
    }
}

/// `fedmesh catalog list`.
pub fn catalog_list(mesh: &Path, json: bool) -> Result<()> {
    let client = MeshClient::of(mesh)?;
    let products = client.runtime.block_on(operator(&client)?.products())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&products)?);
        return Ok(());
    }
    let products = products.as_array().cloned().unwrap_or_default();
    if products.is_empty() {
        println!("the catalog is empty: domain nodes register their products when they start");
        return Ok(());
    }
    println!(
        "{:<18} {:<22} {:<8} {:<16} {:>9}  quality",
        "domain", "product", "version", "key", "rows"
    );
    for p in products {
        let quality = &p["quality"];
        let checked = quality["checked_ms"].as_i64().unwrap_or(0) > 0;
        let violations = quality["violations"].as_array().map_or(0, Vec::len);
        let verdict = match (checked, quality["blocking"].as_bool().unwrap_or(false)) {
            (false, _) => "not checked yet".to_string(),
            (true, true) => format!("BLOCKED ({violations} violations)"),
            (true, false) if violations == 0 => format!("ok ({})", time(&quality["checked_ms"])),
            (true, false) => format!("{violations} warnings ({})", time(&quality["checked_ms"])),
        };
        println!(
            "{:<18} {:<22} {:<8} {:<16} {:>9}  {verdict}",
            text(&p["domain"]),
            text(&p["name"]),
            text(&p["version"]),
            p["key_column"].as_str().unwrap_or("-"),
            p["rows"]
                .as_u64()
                .map_or("-".to_string(), |r| r.to_string()),
        );
    }
    Ok(())
}

/// `fedmesh catalog show PRODUCT`.
pub fn catalog_show(mesh: &Path, name: &str, json: bool) -> Result<()> {
    let client = MeshClient::of(mesh)?;
    let p = client.runtime.block_on(operator(&client)?.product(name))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    println!(
        "product     {} (domain {})",
        text(&p["name"]),
        text(&p["domain"])
    );
    println!(
        "version     {} ({})",
        text(&p["version"]),
        text(&p["status"])
    );
    println!(
        "key         {}",
        p["key_column"]
            .as_str()
            .unwrap_or("none (aligned by position)")
    );
    println!(
        "rows        {}",
        p["rows"]
            .as_u64()
            .map_or("unknown until the node reads its data".into(), |r| r
                .to_string())
    );
    println!("schema      sha256 {}", text(&p["schema_hash"]));
    println!(
        "registered  {}; updated {}",
        time(&p["registered_ms"]),
        time(&p["updated_ms"])
    );
    let quality = &p["quality"];
    if quality["checked_ms"].as_i64().unwrap_or(0) > 0 {
        println!(
            "quality     checked {}: {}",
            time(&quality["checked_ms"]),
            if quality["blocking"].as_bool().unwrap_or(false) {
                "BLOCKED: a severity-error rule fails; the domain stays out of jobs"
            } else {
                "usable"
            }
        );
        for v in quality["violations"].as_array().into_iter().flatten() {
            println!("              {}", text(v));
        }
    } else {
        println!("quality     not checked yet");
    }
    println!("\ncontract:\n{}", text(&p["contract_yaml"]));
    Ok(())
}

/// The audit logs of a mesh folder, governance's and each node's, and the folder of the mesh's
/// certificates.
fn mesh_logs(mesh: &Path) -> Result<(Vec<(String, PathBuf)>, PathBuf)> {
    let layout = MeshLayout {
        dir: mesh.to_path_buf(),
    };
    let config = fedmesh_governance::GovernanceConfig::load(&layout.governance_config())
        .with_context(|| {
            format!(
                "no mesh in {} (or pass the audit log's file)",
                mesh.display()
            )
        })?;
    let mut logs = vec![(config.name.clone(), config.audit_log())];
    for domain in &config.domains {
        let node = fedmesh_node::NodeConfig::load(&layout.node_config(&domain.name))?;
        if let Some(audit) = node.audit {
            logs.push((domain.name.clone(), audit));
        }
    }
    Ok((logs, config.mesh))
}

/// `fedmesh audit verify [FILE…] [--mesh DIR] [--head HASH]`: without files, every log of the
/// mesh, each checked against the anchors the others hold of it.
pub fn verify(files: &[PathBuf], mesh: &Path, head: Option<&str>) -> Result<()> {
    if files.is_empty() && head.is_none() {
        return verify_mesh(mesh);
    }
    let logs: Vec<(String, PathBuf)> = if files.is_empty() {
        mesh_logs(mesh)?.0
    } else {
        files
            .iter()
            .map(|f| (f.display().to_string(), f.clone()))
            .collect()
    };
    if head.is_some() && logs.len() != 1 {
        bail!("--head checks one log: name its file");
    }
    let mut broken = 0;
    for (name, path) in &logs {
        let outcome = AuditLog::open_existing(path).and_then(|log| match head {
            Some(head) => log.verify_against(head),
            None => log.verify(),
        });
        match outcome {
            Ok(intact) => println!(
                "{name}: intact, {} records, head {} ({})",
                intact.records,
                intact.head,
                path.display()
            ),
            Err(e) => {
                broken += 1;
                println!("{name}: {e}");
            }
        }
    }
    if broken > 0 {
        bail!("{broken} of {} audit logs do not verify", logs.len());
    }
    Ok(())
}

/// Checks every log of the mesh: its chain, its owner's signatures (against the owner's
/// certificate from the mesh CA), and every anchor of it in the others.
pub fn check_mesh_logs(mesh: &Path) -> Result<Vec<fedmesh_audit::LogCheck>> {
    let (logs, certs) = mesh_logs(mesh)?;
    let ca = std::fs::read_to_string(certs.join(fedmesh_tls::CA_CERT))
        .with_context(|| format!("reading the mesh CA in {}", certs.display()))?;
    // Each owner's certificate, checked against the mesh CA once.
    let certificates: std::collections::HashMap<String, Result<String, String>> = logs
        .iter()
        .map(|(owner, _)| {
            let path = certs.join(format!("{owner}.pem"));
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|pem| {
                    fedmesh_tls::verify_signed_by(&pem, &ca)
                        .map(|()| pem)
                        .map_err(|e| e.to_string())
                });
            (owner.clone(), pem)
        })
        .collect();
    let signed_by = |owner: &str, hash: &[u8], signature: &[u8]| match certificates.get(owner) {
        Some(Ok(pem)) => {
            fedmesh_tls::verify_signature(pem, hash, signature).map_err(|e| e.to_string())
        }
        Some(Err(e)) => Err(e.clone()),
        None => Err(format!("no certificate of `{owner}`")),
    };
    Ok(fedmesh_audit::verify_mesh(&logs, Some(&signed_by)))
}

/// Every log of the mesh: its chain, its signatures, and every anchor of it in the others.
fn verify_mesh(mesh: &Path) -> Result<()> {
    let checks = check_mesh_logs(mesh)?;
    let mut broken = 0;
    for check in &checks {
        match (&check.intact, check.problems.is_empty()) {
            (Some(intact), true) => println!(
                "{}: intact, {} records, head {}, {} anchors of other logs checked ({})",
                check.name,
                intact.records,
                intact.head,
                check.anchors_checked,
                check.path.display()
            ),
            _ => {
                broken += 1;
                println!("{}: does not verify ({})", check.name, check.path.display());
                for problem in &check.problems {
                    println!("  {problem}");
                }
            }
        }
    }
    if broken > 0 {
        bail!(
            "{broken} of {} audit logs do not verify against their chains and the others' anchors",
            checks.len()
        );
    }
    Ok(())
}

/// `fedmesh audit show FILE`: the records, oldest first.
pub fn show(file: &Path, json: bool) -> Result<()> {
    let log = AuditLog::open_existing(file)?;
    for record in log.records(0)? {
        if json {
            println!("{}", serde_json::to_string(&record)?);
        } else {
            println!(
                "{:>5} {} {:<12} {:<20} {:<28} {}",
                record.seq,
                record.time(),
                record.actor,
                record.action,
                record.subject,
                record.details
            );
        }
    }
    Ok(())
}

/// `fedmesh model list`.
pub fn models(mesh: &Path, json: bool) -> Result<()> {
    let client = MeshClient::of(mesh)?;
    let models = client.runtime.block_on(operator(&client)?.models())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    let models = models.as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        println!("no models yet: every run of a job that finishes registers one");
        return Ok(());
    }
    println!(
        "{:<20} {:<20} {:<5} {:<32} created",
        "model", "configuration", "seed", "job"
    );
    for m in models {
        println!(
            "{:<20} {:<20} {:<5} {:<32} {}",
            format!("{}@{}", text(&m["name"]), m["version"]),
            text(&m["config"]),
            m["seed"].to_string(),
            text(&m["job"]),
            time(&m["created_ms"])
        );
    }
    Ok(())
}

/// `fedmesh model show NAME[@VERSION]`.
pub fn model(mesh: &Path, name: &str, json: bool) -> Result<()> {
    let client = MeshClient::of(mesh)?;
    let m = client.runtime.block_on(operator(&client)?.model(name))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    println!("model   {}@{}", text(&m["name"]), m["version"]);
    println!(
        "trained by job {} ({} seed {}), {}",
        text(&m["job"]),
        text(&m["config"]),
        m["seed"],
        time(&m["created_ms"])
    );
    println!("inputs:");
    for i in m["inputs"].as_array().into_iter().flatten() {
        println!(
            "  {}/{} {}",
            text(&i["domain"]),
            text(&i["product"]),
            text(&i["version"])
        );
    }
    println!("parts (each kept by its holder):");
    for p in m["parts"].as_array().into_iter().flatten() {
        println!(
            "  {:<18} {:<9} {}",
            text(&p["holder"]),
            text(&p["layers"]),
            text(&p["location"])
        );
    }
    let metrics: Value = serde_json::from_str(text(&m["metrics_json"])).unwrap_or_default();
    println!("metrics {}", serde_json::to_string(&metrics)?);
    Ok(())
}

/// The keys of a CSV with a header row: its `column`, or its first column.
pub fn read_keys(path: &Path, column: Option<&str>) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().with_context(|| {
        format!(
            "{} is empty: it needs a header row and one key per row",
            path.display()
        )
    })?;
    let index = match column {
        None => 0,
        Some(name) => header
            .split(',')
            .position(|h| h.trim().trim_matches('"') == name)
            .with_context(|| {
                format!(
                    "{} has no column `{name}` (its header: {header})",
                    path.display()
                )
            })?,
    };
    lines
        .enumerate()
        .map(|(i, line)| {
            line.split(',')
                .nth(index)
                .map(|k| k.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty())
                .with_context(|| {
                    format!(
                        "{}, row {}: no key in column {}",
                        path.display(),
                        i + 1,
                        index + 1
                    )
                })
        })
        .collect()
}

/// `fedmesh predict --model NAME --keys keys.csv`: scores as CSV (`key,score` for two
/// classes, `key,prediction` for a regression, one column per class otherwise); keys no domain can score are reported on stderr.
/// For a recommender (`--user U`), each user's `top` items as `user,rank,item,score`.
pub fn predict(
    mesh: &Path,
    model: &str,
    keys: Vec<String>,
    top: u32,
    out: Option<&Path>,
    json: bool,
) -> Result<()> {
    let requested = keys.len();
    let client = MeshClient::of(mesh)?;
    let answer = client
        .runtime
        .block_on(operator(&client)?.predict(model, keys, top))?;
    let mut text = String::new();
    if json {
        text = serde_json::to_string_pretty(&answer)?;
        text.push('\n');
    } else if let Some(rankings) = answer["rankings"].as_array() {
        text.push_str("user,rank,item,score\n");
        for ranking in rankings {
            let items = ranking["items"].as_array().cloned().unwrap_or_default();
            for (rank, item) in items.iter().enumerate() {
                text.push_str(&format!(
                    "{},{},{},{:.6}\n",
                    text_of(&ranking["user"]),
                    rank + 1,
                    text_of(&item["item"]),
                    item["score"].as_f64().unwrap_or(f64::NAN)
                ));
            }
        }
    } else {
        let scores = answer["scores"].as_array().cloned().unwrap_or_default();
        let width = scores
            .first()
            .and_then(|s| s["scores"].as_array())
            .map_or(1, Vec::len);
        // Two classes: the positive class's probability; one output: the value (regression, in
        // the target's units); more: one probability per class.
        text.push_str(match width {
            2 => "key,score\n",
            1 => "key,prediction\n",
            _ => "key",
        });
        if width > 2 {
            for i in 0..width {
                text.push_str(&format!(",score_{i}"));
            }
            text.push('\n');
        }
        for s in &scores {
            let values: Vec<f64> = s["scores"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect();
            let shown: Vec<String> = if width == 2 {
                vec![format!("{:.6}", values.get(1).copied().unwrap_or(f64::NAN))]
            } else {
                values.iter().map(|v| format!("{v:.6}")).collect()
            };
            text.push_str(&format!("{},{}\n", text_of(&s["key"]), shown.join(",")));
        }
    }
    match out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    let missing = answer["missing"].as_array().cloned().unwrap_or_default();
    if let Some(rankings) = answer["rankings"].as_array() {
        eprintln!(
            "{}: items ranked for {} of {requested} users{}",
            text_of(&answer["model"]),
            rankings.len(),
            out.map_or(String::new(), |p| format!(" ({})", p.display()))
        );
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(10).map(text_of).collect();
            eprintln!(
                "{} users have no interactions at sales, so nothing to rank from: {}{}",
                missing.len(),
                shown.join(", "),
                if missing.len() > 10 { ", …" } else { "" }
            );
        }
        return Ok(());
    }
    eprintln!(
        "{}: {} of {requested} entities scored{}",
        text_of(&answer["model"]),
        answer["scores"].as_array().map_or(0, Vec::len),
        out.map_or(String::new(), |p| format!(" ({})", p.display()))
    );
    if !missing.is_empty() {
        eprintln!(
            "{} keys were not scored (not guessed): a domain does not hold them",
            missing.len()
        );
        for m in missing.iter().take(10) {
            let at: Vec<&str> = m["missing_at"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            eprintln!("  {}: not held by {}", text_of(&m["key"]), at.join(", "));
        }
        if missing.len() > 10 {
            eprintln!(
                "  … and {} more (--json lists them all)",
                missing.len() - 10
            );
        }
    }
    Ok(())
}

fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}
