//! Running a domain node or governance as a long-lived gRPC server: mutual TLS, the gRPC health
//! service, and a clean stop when `shutdown` resolves.

use std::future::Future;

use fedmesh_proto::v1::domain_node_server::DomainNodeServer;
use fedmesh_proto::v1::governance_server::GovernanceServer;
use tonic::transport::Server;

use crate::config::{GovernanceConfig, NodeConfig};
use crate::governance::{GovernanceService, Mesh};
use crate::{DomainNodeService, MeshIdentity, NetError};

/// The largest message either side accepts: a batch of activations of a few hundred thousand
/// rows, never a whole dataset (batches bound every message).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// HTTP/2 flow-control windows: large enough that a batch's tensors never wait for a window
/// update (the default 64 KiB costs extra round trips at a few batches in flight).
pub const WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// How long a stopping server waits for open streams (a job's last batch, a peer that has
/// not closed its connection) before it closes anyway.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// HTTP/2 keepalive: a peer that vanishes without closing its connection (a partition, a
/// crashed host) is noticed within two intervals instead of never.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

fn builder() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
}

/// A shutdown signal that two parties can wait for: the server, to stop accepting and drain,
/// and a timer that ends the draining after [`GRACE`].
struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    fn after(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tell, told) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tell.send(true);
        });
        Self(told)
    }

    fn signal(&self) -> impl Future<Output = ()> + use<> {
        let mut told = self.0.clone();
        async move {
            let _ = told.wait_for(|stop| *stop).await;
        }
    }

    async fn grace_over(&self) {
        self.signal().await;
        tokio::time::sleep(GRACE).await;
        tracing::warn!(
            "streams still open {} s after the stop signal: closing them",
            GRACE.as_secs()
        );
    }
}

/// Serves a domain node until `shutdown` resolves.
pub async fn serve_node(
    config: &NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NetError> {
    let identity = MeshIdentity::load(&config.mesh, &config.domain)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let service = DomainNodeServer::new(DomainNodeService::new(
        config.governance.clone(),
        config.product(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    health
        .set_serving::<DomainNodeServer<DomainNodeService>>()
        .await;
    tracing::info!(
        "domain node `{}` listening on {} (jobs from `{}` only)",
        config.domain,
        config.listen,
        config.governance
    );
    let server = builder()
        .tls_config(identity.server_config())?
        .add_service(health_service)
        .add_service(service);
    let stopping = Stopping::after(shutdown);
    tokio::select! {
        served = server.serve_with_shutdown(config.listen, stopping.signal()) => served?,
        _ = stopping.grace_over() => {}
    }
    tracing::info!("domain node `{}` stopped", config.domain);
    Ok(())
}

/// Serves governance until `shutdown` resolves. Jobs run on their own threads, each reaching
/// the nodes through its own transport.
pub async fn serve_governance(
    config: &GovernanceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NetError> {
    let identity = MeshIdentity::load(&config.mesh, &config.name)?;
    let mesh = Mesh {
        identity: identity.clone(),
        nodes: config.endpoints(),
        deadline: config.deadline(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let governance = GovernanceService::new(mesh, config.operators.clone(), config.runs.clone());
    let jobs = governance.running_jobs();
    let service = GovernanceServer::new(governance);
    health
        .set_serving::<GovernanceServer<GovernanceService>>()
        .await;
    tracing::info!(
        "governance `{}` listening on {} (jobs from {:?}; domains {:?})",
        config.name,
        config.listen,
        config.operators,
        config.domains.iter().map(|d| &d.name).collect::<Vec<_>>()
    );
    let server = builder()
        .tls_config(identity.server_config())?
        .add_service(health_service)
        .add_service(service);
    let stopping = Stopping::after(async move {
        shutdown.await;
        jobs.stop_all();
    });
    tokio::select! {
        served = server.serve_with_shutdown(config.listen, stopping.signal()) => served?,
        _ = stopping.grace_over() => {}
    }
    tracing::info!("governance `{}` stopped", config.name);
    Ok(())
}
