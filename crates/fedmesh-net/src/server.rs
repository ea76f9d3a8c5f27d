//! Running a domain node or governance as a long-lived gRPC server: mutual TLS, the gRPC health
//! service, and a clean stop when `shutdown` resolves.

use std::future::Future;

use fedmesh_proto::v1::domain_node_server::DomainNodeServer;
use tonic::transport::Server;

use crate::config::NodeConfig;
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

/// A server with fedmesh's transport settings (no Nagle, keepalive, large windows).
pub fn builder() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
}

/// A shutdown signal that two parties can wait for: the server, to stop accepting and drain,
/// and a timer that ends the draining after [`GRACE`].
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    pub fn after(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tell, told) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tell.send(true);
        });
        Self(told)
    }

    pub fn signal(&self) -> impl Future<Output = ()> + use<> {
        let mut told = self.0.clone();
        async move {
            let _ = told.wait_for(|stop| *stop).await;
        }
    }

    pub async fn grace_over(&self) {
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
    let audit_path = config.audit.clone().expect("set by NodeConfig::load");
    // One node process per audit log (and so per domain's state): a second one fails here.
    let _lock = crate::state_lock::StateLock::acquire(
        &audit_path.with_extension("lock"),
        &format!("the node of `{}`", config.domain),
    )?;
    let audit = fedmesh_audit::AuditLog::open(&audit_path).map_err(|e| NetError::Config {
        path: audit_path.clone(),
        message: e.to_string(),
    })?;
    let mut node = DomainNodeService::new(config.governance.clone(), config.product())
        .with_audit(std::sync::Arc::new(audit));
    if let Some(url) = &config.governance_url {
        let catalog = crate::catalog::spawn_registrar(
            identity.clone(),
            crate::NodeEndpoint {
                name: config.governance.clone(),
                url: url.clone(),
            },
        );
        // Read after the server starts answering, so that a large product does not delay it.
        let product = config.product();
        let first = catalog.clone();
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(move || {
                crate::catalog::startup_registration(&product)
            })
            .await
            {
                Ok(Ok(registration)) => {
                    let _ = first.send(registration);
                }
                Ok(Err(e)) => {
                    tracing::error!("catalog: cannot read the product to register it: {e}")
                }
                Err(e) => tracing::error!("catalog: registration failed: {e}"),
            }
        });
        node = node.with_catalog(catalog);
    }
    let service = DomainNodeServer::new(node)
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
