//! A domain node's config file (`node.yaml`) and the product it serves.
//!
//! Relative paths in the file start from the file's folder, so a mesh folder can be moved as a
//! whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fedmesh_net::NetError;
use fedmesh_net::config::{anchor, dir_of, read_yaml};
use serde::{Deserialize, Serialize};

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

fn default_governance() -> String {
    "governance".into()
}

/// The data product a domain node serves, and where it keeps what it trains.
#[derive(Debug, Clone)]
pub struct DomainProduct {
    /// The domain's name, as job specs and its certificate call it.
    pub domain: String,
    /// The product's ODCS contract.
    pub contract: PathBuf,
    /// The product's data, when not where the contract's server says.
    pub data: Option<PathBuf>,
    /// The public table an example's product is derived from, when the product's file is
    /// absent (see [`NodeConfig::example_source`]).
    pub example_source: Option<PathBuf>,
    /// Where trained parts and pipelines are saved, one folder per job and run.
    pub models: PathBuf,
    /// The domain's own Cedar policy (a file or folder), applied on top of its contract.
    pub policy: Option<PathBuf>,
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let mut config: Self = read_yaml(path)?;
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

    /// The node's audit log: the configured one, else `<domain>-audit.sqlite` (beside the config
    /// file, when it was loaded from one).
    pub fn audit_log(&self) -> PathBuf {
        self.audit
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}-audit.sqlite", self.domain)))
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
