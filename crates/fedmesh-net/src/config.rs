//! The config files of a domain node (`node.yaml`) and of governance (`governance.yaml`).
//!
//! Relative paths in a config file start from the file's folder, so a mesh folder can be moved
//! as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::NetError;
use crate::node::DomainProduct;
use crate::transport::NodeEndpoint;

/// A domain node: the product it serves and the mesh it belongs to.
///
/// ```yaml
/// domain: retail
/// listen: 127.0.0.1:7102
/// mesh: certs               # ca.pem, retail.pem, retail.key
/// governance: governance    # the only name allowed to open jobs
/// governance_url: https://127.0.0.1:7100   # where the catalog is (registration)
/// contract: contracts/retail.odcs.yaml
/// models: retail-models
/// audit: retail-audit.sqlite   # the node's own audit log
/// policy: retail-policy.cedar  # optional: the domain's own Cedar policy
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub domain: String,
    pub listen: SocketAddr,
    /// The folder with the mesh CA and this node's certificate and key.
    pub mesh: PathBuf,
    #[serde(default = "default_governance")]
    pub governance: String,
    /// Governance's address, to register the product in its catalog (none: not registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance_url: Option<String>,
    /// The data product's ODCS contract.
    pub contract: PathBuf,
    /// The product's data, when not where the contract's server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// For examples whose products are derived from one public table (`example_data` in a job
    /// spec): that table on this node, used when the product's own file is absent. A node reads
    /// no file a job spec names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example_source: Option<PathBuf>,
    /// Where trained parts are kept.
    pub models: PathBuf,
    /// The node's audit log (default: `<domain>-audit.sqlite` beside this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<PathBuf>,
    /// The domain's own Cedar policy, a file or a folder, applied on top of its contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
}

/// Governance: the domain nodes it may use and who may submit jobs.
///
/// ```yaml
/// name: governance
/// listen: 127.0.0.1:7100
/// mesh: certs
/// operators: [operator]     # certificate names allowed to submit jobs
/// domains:
///   - { name: digital, url: "https://127.0.0.1:7101" }
/// runs: runs                # results and governance's parts, one folder per job
/// state: state              # governance.sqlite (catalog, jobs, models) and audit.sqlite
/// policies: policies        # the mesh's Cedar policies (a file or folder of *.cedar)
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    #[serde(default = "default_governance")]
    pub name: String,
    pub listen: SocketAddr,
    pub mesh: PathBuf,
    pub operators: Vec<String>,
    pub domains: Vec<DomainEndpoint>,
    pub runs: PathBuf,
    /// Where governance keeps its state: `governance.sqlite` and `audit.sqlite`.
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// The mesh's policies: a `.cedar` file or a folder of them. Without a policy that permits
    /// a job, governance denies it.
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    /// How long any one call to a node may take before the job fails naming it.
    #[serde(default = "default_deadline")]
    pub deadline_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEndpoint {
    pub name: String,
    pub url: String,
}

fn default_governance() -> String {
    "governance".into()
}

fn default_state() -> PathBuf {
    PathBuf::from("state")
}

fn default_policies() -> PathBuf {
    PathBuf::from("policies")
}

fn default_deadline() -> f64 {
    30.0
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, NetError> {
    let text = std::fs::read_to_string(path).map_err(|error| NetError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    serde_norway::from_str(&text).map_err(|e| NetError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn anchor(dir: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = dir.join(&*path);
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let mut config: Self = read(path)?;
        let dir = dir_of(path);
        anchor(dir, &mut config.mesh);
        anchor(dir, &mut config.contract);
        anchor(dir, &mut config.models);
        for path in [
            &mut config.data,
            &mut config.policy,
            &mut config.example_source,
        ]
        .into_iter()
        .flatten()
        {
            anchor(dir, path);
        }
        let mut audit = config
            .audit
            .take()
            .unwrap_or_else(|| PathBuf::from(format!("{}-audit.sqlite", config.domain)));
        anchor(dir, &mut audit);
        config.audit = Some(audit);
        Ok(config)
    }

    pub fn product(&self) -> DomainProduct {
        DomainProduct {
            domain: self.domain.clone(),
            contract: self.contract.clone(),
            data: self.data.clone(),
            example_source: self.example_source.clone(),
            models: self.models.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl GovernanceConfig {
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let mut config: Self = read(path)?;
        let dir = dir_of(path);
        anchor(dir, &mut config.mesh);
        anchor(dir, &mut config.runs);
        anchor(dir, &mut config.state);
        anchor(dir, &mut config.policies);
        if !config.deadline_seconds.is_finite() || config.deadline_seconds <= 0.0 {
            return Err(NetError::Config {
                path: path.to_path_buf(),
                message: "`deadline_seconds` must be positive".into(),
            });
        }
        Ok(config)
    }

    pub fn state_db(&self) -> PathBuf {
        self.state.join("governance.sqlite")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.state.join("audit.sqlite")
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_secs_f64(self.deadline_seconds)
    }

    pub fn endpoints(&self) -> Vec<NodeEndpoint> {
        self.domains
            .iter()
            .map(|d| NodeEndpoint {
                name: d.name.clone(),
                url: d.url.clone(),
            })
            .collect()
    }
}
