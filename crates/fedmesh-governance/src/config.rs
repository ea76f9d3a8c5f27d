//! Governance's config file (`governance.yaml`).
//!
//! Relative paths in the file start from the file's folder, so a mesh folder can be moved as a
//! whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedmesh_net::config::{anchor, dir_of, read_yaml};
use fedmesh_net::{NetError, NodeEndpoint};
use serde::{Deserialize, Serialize};

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

impl GovernanceConfig {
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let mut config: Self = read_yaml(path)?;
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
