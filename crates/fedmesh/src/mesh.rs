//! A mesh on this machine: governance and one node per domain as separate OS processes on
//! 127.0.0.1, with certificates from a development CA. `fedmesh mesh up` and `quickstart` start
//! one; `fedmesh node` and `fedmesh governance` are the processes.

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fedmesh_governance::GovernanceConfig;
use fedmesh_governance::config::DomainEndpoint;
use fedmesh_net::{MeshIdentity, NodeEndpoint};
use fedmesh_node::NodeConfig;
use fedmesh_split::AnyJob;
use fedmesh_split::job::Job;
use fedmesh_split::recommend::RecommendationSpec;
use tokio::runtime::Runtime;

/// The certificate name `fedmesh job submit` presents.
pub const OPERATOR: &str = "operator";

/// The example policy set, written to a new mesh's `policies/` for the operator to edit.
pub const EXAMPLE_POLICIES: &str = include_str!("../../../examples/policies/governance.cedar");

/// Where a mesh folder keeps its parts.
pub struct MeshLayout {
    pub dir: PathBuf,
}

impl MeshLayout {
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }
    pub fn governance_config(&self) -> PathBuf {
        self.dir.join("governance.yaml")
    }
    pub fn node_config(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}.yaml"))
    }
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The operator's identity and governance's address, for submitting jobs.
    pub fn operator(&self) -> Result<(MeshIdentity, NodeEndpoint)> {
        let config = GovernanceConfig::load(&self.governance_config()).with_context(|| {
            format!(
                "no mesh in {} (start one with `fedmesh mesh up EXAMPLE --dir {}`)",
                self.dir.display(),
                self.dir.display()
            )
        })?;
        let identity = MeshIdentity::load(&self.certs(), OPERATOR)?;
        Ok((
            identity,
            NodeEndpoint {
                url: format!("https://{}", config.listen),
                name: config.name,
            },
        ))
    }
}

/// A job's domains and their contracts.
pub fn job_domains(job: &Job) -> Vec<(String, PathBuf)> {
    job.spec
        .domains
        .iter()
        .map(|d| (d.name.clone(), job.dir().join(&d.contract)))
        .collect()
}

/// A recommendation job's domains (sales, customer, product) and their contracts.
pub fn recommendation_domains(spec: &RecommendationSpec, file: &Path) -> Vec<(String, PathBuf)> {
    let dir = file.parent().unwrap_or(Path::new("."));
    [&spec.sales, &spec.customer, &spec.product]
        .into_iter()
        .map(|d| (d.name.clone(), dir.join(&d.contract)))
        .collect()
}

/// Each domain of a job with its product's contract.
pub type Domains = Vec<(String, PathBuf)>;

/// The domains of a job of any task, each with its product's contract.
pub fn domains_of(job: &AnyJob) -> Domains {
    match job {
        AnyJob::Vertical(job) => job_domains(job),
        AnyJob::Recommendation(spec) => recommendation_domains(spec, &spec.file),
        AnyJob::Horizontal(job) => {
            let dir = job.file.parent().unwrap_or(Path::new("."));
            job.spec
                .domains
                .iter()
                .map(|d| (d.name.clone(), dir.join(&d.contract)))
                .collect()
        }
    }
}

/// The domains of the example (a classification or a recommendation job) in `path`, and the
/// public table its products are derived from, if they are.
pub fn example_domains(path: &Path) -> Result<(Domains, Option<PathBuf>)> {
    let job = AnyJob::load(path)?;
    let example = match &job {
        AnyJob::Vertical(job) => job.example_path(),
        AnyJob::Horizontal(job) => job.spec.example_data.as_ref().map(|example| {
            job.file
                .parent()
                .unwrap_or(Path::new("."))
                .join(&example.source)
        }),
        AnyJob::Recommendation(_) => None,
    };
    Ok((domains_of(&job), example))
}

/// How to place the mesh's ports.
pub enum Ports {
    /// Governance on this port, the domains on the following ones.
    From(u16),
    /// Free ports chosen by the system.
    Any,
}

/// Governance and domain nodes running as child processes. Dropping it stops them.
pub struct LocalMesh {
    pub layout: MeshLayout,
    children: Vec<(String, Child)>,
    endpoints: Vec<NodeEndpoint>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalMesh {
    /// Writes certificates (unless the folder has a CA already) and configs for `domains`
    /// (name, contract) into `dir`, and starts one node per domain and, with `with_governance`,
    /// governance (without it, the calling process acts as governance). Every node reads
    /// `data` when given, and derives an example's product from `example_source` (the operator's
    /// choice, written into each node's config: a node reads no path a job spec names).
    pub fn start(
        domains: &[(String, PathBuf)],
        dir: &Path,
        ports: Ports,
        data: Option<&Path>,
        example_source: Option<&Path>,
        with_governance: bool,
    ) -> Result<Self> {
        let layout = MeshLayout {
            dir: std::path::absolute(dir)?,
        };
        let certs = layout.certs();
        std::fs::create_dir_all(layout.dir.join("logs"))?;
        let names: Vec<String> = ["governance", OPERATOR]
            .into_iter()
            .map(String::from)
            .chain(domains.iter().map(|(name, _)| name.clone()))
            .collect();
        if !certs.join(fedmesh_tls::CA_CERT).exists() {
            fedmesh_tls::init_ca(&certs)?;
        }
        for name in &names {
            if !certs.join(format!("{name}.pem")).exists() {
                fedmesh_tls::issue(&certs, name)?;
            }
        }
        let port = |i: u16| -> Result<u16> {
            match ports {
                Ports::From(base) => Ok(base + i),
                Ports::Any => free_port(),
            }
        };
        let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let policies = layout.dir.join("policies");
        if !policies.exists() {
            std::fs::create_dir_all(&policies)?;
            std::fs::write(policies.join("governance.cedar"), EXAMPLE_POLICIES)?;
        }
        let governance = GovernanceConfig {
            name: "governance".into(),
            listen: address(port(0)?),
            mesh: certs.clone(),
            operators: vec![OPERATOR.into()],
            domains: Vec::new(),
            runs: layout.dir.join("runs"),
            state: layout.dir.join("governance"),
            policies,
            deadline_seconds: 30.0,
        };
        let mut registered = Vec::new();
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        let started = (|| -> Result<()> {
            for (i, (name, contract)) in domains.iter().enumerate() {
                let config = NodeConfig {
                    domain: name.clone(),
                    listen: address(port(1 + i as u16)?),
                    mesh: certs.clone(),
                    governance: governance.name.clone(),
                    governance_url: with_governance
                        .then(|| format!("https://{}", governance.listen)),
                    contract: std::path::absolute(contract)?,
                    data: data.map(std::path::absolute).transpose()?,
                    example_source: example_source.map(std::path::absolute).transpose()?,
                    models: layout.dir.join(name).join("models"),
                    audit: Some(layout.dir.join(name).join("audit.sqlite")),
                    policy: None,
                };
                let path = layout.node_config(name);
                std::fs::write(&path, serde_norway::to_string(&config)?)?;
                let url = format!("https://{}", config.listen);
                registered.push(DomainEndpoint {
                    name: name.clone(),
                    url: url.clone(),
                });
                endpoints.push(NodeEndpoint {
                    name: name.clone(),
                    url,
                });
                children.push((name.clone(), spawn("node", &path, &layout.log(name))?));
            }
            if !with_governance {
                return Ok(());
            }
            let governance = GovernanceConfig {
                domains: registered.clone(),
                ..governance.clone()
            };
            let path = layout.governance_config();
            std::fs::write(&path, serde_norway::to_string(&governance)?)?;
            endpoints.push(NodeEndpoint {
                name: governance.name.clone(),
                url: format!("https://{}", governance.listen),
            });
            children.push((
                governance.name.clone(),
                spawn("governance", &path, &layout.log("governance"))?,
            ));
            Ok(())
        })();
        let mesh = Self {
            layout,
            children,
            endpoints,
        };
        started?;
        Ok(mesh)
    }

    /// Waits until every process answers its health check.
    pub fn wait_ready(&mut self, runtime: &Runtime, timeout: Duration) -> Result<()> {
        let identity = MeshIdentity::load(&self.layout.certs(), OPERATOR)?;
        let deadline = Instant::now() + timeout;
        for endpoint in &self.endpoints {
            let (name, child) = self
                .children
                .iter_mut()
                .find(|(n, _)| *n == endpoint.name)
                .expect("one process per endpoint");
            let left = deadline.saturating_duration_since(Instant::now());
            let ready =
                runtime.block_on(fedmesh_net::client::wait_ready(&identity, endpoint, left));
            if let Err(e) = ready {
                let exited = child.try_wait()?;
                let log = self.layout.log(name);
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                bail!(
                    "`{name}` did not become ready ({e}){}; its log {}:\n{}",
                    exited.map_or(String::new(), |s| format!(", it exited with {s}")),
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// The first process that is no longer running, if any.
    pub fn exited(&mut self) -> Result<Option<String>> {
        for (name, child) in &mut self.children {
            if child.try_wait()?.is_some() {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }

    pub fn endpoints(&self) -> &[NodeEndpoint] {
        &self.endpoints
    }

    /// Asks every process to stop (closing its stdin), and kills those still running after
    /// five seconds.
    pub fn stop(&mut self) {
        for (_, child) in &mut self.children {
            drop(child.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (name, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        tracing::warn!("`{name}` did not stop within 5 s: killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `fedmesh ROLE --config CONFIG` with its log in `log`; it stops when its stdin closes,
/// so that it never outlives this process.
fn spawn(role: &str, config: &Path, log: &Path) -> Result<Child> {
    let exe = std::env::current_exe()?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(exe)
        .arg(role)
        .arg("--config")
        .arg(config)
        .arg("--exit-with-parent")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or(crate::DEFAULT_LOG.into()),
        )
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting the {role} process"))
}

/// Sets `stop` when this process's stdin reaches its end (the parent closed it, or died).
pub fn stop_with_parent(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        stop.store(true, Ordering::SeqCst);
    });
}

/// Resolves once `stop` is set (an `Arc` for a server's shutdown, a reference otherwise).
pub async fn stopped(stop: impl std::ops::Deref<Target = AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `fedmesh node --config node.yaml`. Connections are served by the runtime's workers and each
/// job by a thread of its own (see `fedmesh_node`), so that a long step of a job (aligning or
/// fitting millions of rows) never keeps the node from answering its peers' keepalive pings.
pub fn node(config: &Path, stop: Arc<AtomicBool>) -> Result<()> {
    let config = NodeConfig::load(config)?;
    // A contract that does not parse is the operator's to fix now, not at the first job.
    let contract = fedmesh_data::DataContract::from_path(&config.contract)?;
    tracing::info!(
        "serving data product `{}` ({})",
        contract.product_name(),
        config.contract.display()
    );
    let runtime = Runtime::new()?;
    runtime.block_on(fedmesh_node::serve(&config, stopped(stop)))?;
    Ok(())
}

/// `fedmesh governance --config governance.yaml`.
pub fn governance(config: &Path, stop: Arc<AtomicBool>) -> Result<()> {
    let config = GovernanceConfig::load(config)?;
    let runtime = Runtime::new()?;
    runtime.block_on(fedmesh_governance::serve(&config, stopped(stop)))?;
    Ok(())
}

/// `fedmesh mesh up EXAMPLE`: starts a mesh and keeps it running until Ctrl-C.
pub fn up(
    example: &Path,
    dir: &Path,
    port: u16,
    data: Option<&Path>,
    stop: &AtomicBool,
) -> Result<()> {
    let runtime = Runtime::new()?;
    let (domains, example_table) = example_domains(example)?;
    let mut mesh = LocalMesh::start(
        &domains,
        dir,
        Ports::From(port),
        data,
        example_table.as_deref(),
        true,
    )?;
    mesh.wait_ready(&runtime, Duration::from_secs(30))?;
    println!("mesh up in {}:", mesh.layout.dir.display());
    for endpoint in mesh.endpoints() {
        println!("  {:<20} {}", endpoint.name, endpoint.url);
    }
    println!(
        "from another terminal:\n  fedmesh catalog list --mesh {dir}\n  fedmesh job submit {} --mesh {dir}\n  fedmesh job list --mesh {dir}\n  fedmesh model list --mesh {dir}\n  fedmesh audit verify --mesh {dir}\npolicies: {}\nlogs: {}\nCtrl-C stops the mesh.",
        example.display(),
        mesh.layout.dir.join("policies").display(),
        mesh.layout.dir.join("logs").display(),
        dir = dir.display(),
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(name) = mesh.exited()? {
            bail!(
                "`{name}` stopped unexpectedly; its log: {}",
                mesh.layout.log(&name).display()
            );
        }
    }
    mesh.stop();
    println!("mesh stopped");
    Ok(())
}
