//! A domain node: the server through which a domain takes part in the mesh's jobs.
//!
//! A domain keeps its data, its trained parts and its veto. The node serves one data product
//! (its contract and data, named in its own config, never in a job spec) and answers only
//! governance, authenticated by mutual TLS:
//!
//! - [`service`]: the `DomainNode` gRPC service: who may call, admission questions, one thread
//!   per job stream.
//! - [`job`]: one job stream: open the job, align entities, then let the domain's
//!   [`fedmesh_split::PartySession`] answer every cut-layer message; or score entities with a
//!   trained model.
//! - [`admission`]: the domain's answer to what a job asks of its product (contract, then own
//!   policy), checked again when a job starts.
//! - [`catalog`]: what the node tells governance's catalog about its product (facts, never
//!   rows).
//! - [`config`]: the node's config file, `node.yaml`.
//!
//! [`serve`] runs a node as a long-lived server with health checks.

pub mod admission;
pub mod catalog;
pub mod config;
pub mod job;
pub mod service;

use std::future::Future;
use std::path::PathBuf;

use fedmesh_net::server::{MAX_MESSAGE_BYTES, Stopping, builder, listen, tls_incoming};
use fedmesh_net::{MeshIdentity, NetError, NodeEndpoint};
use fedmesh_proto::v1::domain_node_server::DomainNodeServer;

pub use config::{DomainProduct, NodeConfig};
pub use service::DomainNodeService;

/// Why a domain node cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the node's audit log {path} cannot be opened: {error}")]
    Audit {
        path: PathBuf,
        error: fedmesh_audit::AuditError,
    },
}

/// Serves a domain node until `shutdown` resolves.
pub async fn serve(
    config: &NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let identity = MeshIdentity::load(&config.mesh, &config.domain)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let audit_path = config.audit_log();
    // One node process per audit log (and so per domain's state): a second one fails here.
    let _lock = fedmesh_net::state_lock::StateLock::acquire(
        &audit_path.with_extension("lock"),
        &format!("the node of `{}`", config.domain),
    )?;
    let signer = fedmesh_net::identity::audit_signer(&config.mesh, &config.domain)?;
    let audit = fedmesh_audit::AuditLog::open(&audit_path)
        .map_err(|error| NodeError::Audit {
            path: audit_path.clone(),
            error,
        })?
        .with_signer(signer);
    let mut node = DomainNodeService::new(config.governance.clone(), config.product())
        .with_audit(std::sync::Arc::new(audit));
    if let Some(url) = &config.governance_url {
        let catalog = crate::catalog::spawn_registrar(
            identity.clone(),
            NodeEndpoint {
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
    let incoming = tls_incoming(listen(config.listen).await?, &identity)?;
    let server = builder().add_service(health_service).add_service(service);
    let stopping = Stopping::after(shutdown);
    tokio::select! {
        served = server.serve_with_incoming_shutdown(incoming, stopping.signal()) => served.map_err(NetError::from)?,
        _ = stopping.grace_over() => {}
    }
    tracing::info!("domain node `{}` stopped", config.domain);
    Ok(())
}
