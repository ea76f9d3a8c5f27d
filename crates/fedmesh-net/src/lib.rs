//! The split protocol over the network.
//!
//! Governance reaches each domain node over one bidirectional gRPC stream per job, authenticated
//! both ways with mutual TLS: a node's identity is the DNS name in its certificate, and both
//! sides check the other's name, not only its CA. [`DomainNodeService`] is a domain node's side
//! of the stream: it owns the domain's parties and answers governance's messages in order.
//! [`GrpcTransport`] is governance's side: it implements [`fedmesh_split::Transport`], so the
//! training algorithm runs unchanged over the network, and it sends each batch plan to every
//! domain at once so that the domains compute their activations in parallel. [`Mesh`] runs one
//! configuration and seed of a job on the nodes; [`admission`] and [`catalog`] are a node's
//! side of admitting jobs and of governance's catalog; [`server`] runs a node as a long-lived
//! service with health checks, and [`client`] is the operator's side. The governance service
//! itself is the `fedmesh-governance` crate. The messages are described in `docs/protocol.md`.

pub mod admission;
pub mod catalog;
pub mod client;
pub mod config;
pub mod convert;
pub mod governance;
pub mod identity;
pub mod node;
pub mod server;
pub mod state_lock;
pub mod transport;

pub use config::{GovernanceConfig, NodeConfig};
pub use governance::Mesh;
pub use identity::MeshIdentity;
pub use node::{DomainNodeService, DomainProduct};
pub use transport::{GrpcTransport, NodeEndpoint};

/// Errors of setting up the network side.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tls(#[from] fedmesh_tls::TlsError),
    #[error("cannot read {path}: {error}")]
    Io {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("config {path}: {message}")]
    Config {
        path: std::path::PathBuf,
        message: String,
    },
}
