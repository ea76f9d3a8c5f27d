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

/// The audit logs of a mesh folder: governance's and each node's.
fn mesh_logs(mesh: &Path) -> Result<Vec<(String, PathBuf)>> {
    let layout = MeshLayout {
        dir: mesh.to_path_buf(),
    };
    let config =
        fedmesh_net::GovernanceConfig::load(&layout.governance_config()).with_context(|| {
            format!(
                "no mesh in {} (or pass the audit log's file)",
                mesh.display()
            )
        })?;
    let mut logs = vec![(config.name.clone(), config.audit_log())];
    for domain in &config.domains {
        let node = fedmesh_net::NodeConfig::load(&layout.node_config(&domain.name))?;
        if let Some(audit) = node.audit {
            logs.push((domain.name.clone(), audit));
        }
    }
    Ok(logs)
}

/// `fedmesh audit verify [FILE…] [--mesh DIR] [--head HASH]`.
pub fn verify(files: &[PathBuf], mesh: &Path, head: Option<&str>) -> Result<()> {
    let logs: Vec<(String, PathBuf)> = if files.is_empty() {
        mesh_logs(mesh)?
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
