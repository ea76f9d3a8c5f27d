//! A data mesh's federated computational governance.
//!
//! In a data mesh, governance is what lets domains trust the platform: the mesh's global rules
//! are enforced automatically, each domain keeps its own veto, and every use of a data product
//! is on record. This crate is the governance node:
//!
//! - [`mesh`]: the run driver: one configuration and seed of a job over the domain nodes.
//! - [`predict`]: split inference coordinated across the nodes that hold a model's parts.
//! - [`store`]: the catalog of data products (contracts and facts, never rows), the jobs with
//!   their state machine and event log, and the model registry, in one SQLite file that
//!   survives restarts.
//! - [`admission`]: a job runs only if every involved domain admits it (its contract and own
//!   policy) and governance's Cedar policies allow it.
//! - [`service`]: the `Governance` gRPC service over all of it, with every decision and run in a
//!   hash-chained audit log (`fedmesh-audit`).
//!
//! [`serve`] runs it as a long-lived server, configured by [`config`] (`governance.yaml`).

pub mod admission;
pub mod config;
pub mod mesh;
pub mod predict;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use fedmesh_net::identity::audit_signer;
use fedmesh_net::server::{MAX_MESSAGE_BYTES, Stopping, builder, listen, tls_incoming};
use fedmesh_net::{MeshIdentity, NetError};
use fedmesh_proto::v1::governance_server::GovernanceServer;

pub use config::GovernanceConfig;
pub use mesh::{Mesh, MeshRun};
pub use service::{GovernanceService, GovernanceState};
pub use store::{JobState, Store, StoreError};

/// Serves governance until `shutdown` resolves. Jobs run on their own threads, each reaching
/// the nodes through its own transport; on shutdown they stop after their current batch and
/// are recorded as failed.
pub async fn serve(
    config: &GovernanceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NetError> {
    let identity = MeshIdentity::load(&config.mesh, &config.name)?;
    if !config.policies.exists() {
        return Err(NetError::Config {
            path: config.policies.clone(),
            message: "governance's policies are not there: without a policy that permits a job, every job is denied (start from examples/policies)".into(),
        });
    }
    let mesh = Mesh::new(identity.clone(), config.endpoints(), config.deadline());
    let (store, audit, _lock) = service::open_state(
        &config.state,
        &config.name,
        Some(audit_signer(&config.mesh, &config.name)?),
    )
    .map_err(|message| NetError::Config {
        path: config.state.clone(),
        message,
    })?;
    let state = Arc::new(GovernanceState::new(
        config.name.clone(),
        mesh,
        config.operators.clone(),
        config.runs.clone(),
        config.policies.clone(),
        store,
        audit,
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    let service = GovernanceServer::new(GovernanceService::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    health
        .set_serving::<GovernanceServer<GovernanceService>>()
        .await;
    tracing::info!(
        "governance `{}` listening on {} (jobs from {:?}; domains {:?}; policies {}; state {})",
        config.name,
        config.listen,
        config.operators,
        config.domains.iter().map(|d| &d.name).collect::<Vec<_>>(),
        config.policies.display(),
        config.state.display()
    );
    let incoming = tls_incoming(listen(config.listen).await?, &identity)?;
    let server = builder().add_service(health_service).add_service(service);
    let jobs = state.clone();
    let stopping = Stopping::after(async move {
        shutdown.await;
        jobs.stop_all();
    });
    tokio::select! {
        served = server.serve_with_incoming_shutdown(incoming, stopping.signal()) => served?,
        _ = stopping.grace_over() => {}
    }
    tracing::info!("governance `{}` stopped", config.name);
    Ok(())
}
