//! The mesh's transport: who is who, and how messages cross between governance, the domain
//! nodes and the operator.
//!
//! Governance reaches each domain node over one bidirectional gRPC stream per job, authenticated
//! both ways with mutual TLS: a node's identity is the DNS name in its certificate, and both
//! sides check the other's name, not only its CA ([`identity`]). [`GrpcTransport`] is
//! governance's side of a training run: it implements [`fedmesh_split::Transport`], so the
//! training algorithm runs unchanged over the network, and it sends each batch plan to every
//! domain at once so that the domains compute their activations in parallel. [`convert`] maps
//! the engine's messages to the wire's; [`server`] holds what both long-lived servers share;
//! [`client`] is the operator's side of governance's service.
//!
//! The domain node is the `fedmesh-node` crate; governance (its service and the run driver) is
//! `fedmesh-governance`. The messages are described in `docs/protocol.md`.

pub mod client;
pub mod config;
pub mod convert;
pub mod horizontal;
pub mod identity;
pub mod server;
pub mod state_lock;
pub mod transport;

pub use horizontal::GrpcFederation;
pub use identity::MeshIdentity;
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
    #[error(
        "no {path} for `{name}`: make the mesh's certificates with `fedmesh certs init --dir {dir}` and `fedmesh certs issue {name} --dir {dir}`",
        path = path.display(),
        dir = dir.display()
    )]
    NoCertificate {
        path: std::path::PathBuf,
        name: String,
        dir: std::path::PathBuf,
    },
    #[error("the certificate given for `{name}` names {names:?}")]
    WrongName { name: String, names: Vec<String> },
    #[error("cannot listen on {address}: {error}")]
    Listen {
        address: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Config {
        path: std::path::PathBuf,
        message: String,
    },
}
