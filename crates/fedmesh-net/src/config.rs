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
/// contract: contracts/retail.odcs.yaml
/// models: retail-models
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
    /// The data product's ODCS contract.
    pub contract: PathBuf,
    /// The product's data, when not where the contract's server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Where trained parts are kept.
    pub models: PathBuf,
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
        if let Some(data) = &mut config.data {
            anchor(dir, data);
        }
        Ok(config)
    }

    pub fn product(&self) -> DomainProduct {
        DomainProduct {
            domain: self.domain.clone(),
            contract: self.contract.clone(),
            data: self.data.clone(),
            models: self.models.clone(),
        }
    }
}

impl GovernanceConfig {
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let mut config: Self = read(path)?;
        let dir = dir_of(path);
        anchor(dir, &mut config.mesh);
        anchor(dir, &mut config.runs);
        if !config.deadline_seconds.is_finite() || config.deadline_seconds <= 0.0 {
            return Err(NetError::Config {
                path: path.to_path_buf(),
                message: "`deadline_seconds` must be positive".into(),
            });
        }
        Ok(config)
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
