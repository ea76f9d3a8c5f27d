//! A domain node's side of governance's catalog: what it tells governance about its product.
//!
//! A node registers its product when it starts, and again whenever a job has read the data, so
//! that the catalog shows the contract in force, the row count and the last quality check.
//! Only facts about the product cross, never rows. Registrations go through one background task
//! that retries until governance answers, so that a node never waits for governance to serve.

use std::time::Duration;

use fedmesh_data::{DataContract, DataProduct, QualityReport, SourceCache};
use fedmesh_proto::v1::{self, governance_client::GovernanceClient};
use tokio::sync::mpsc;

use fedmesh_net::transport::connect_with_retries;
use fedmesh_net::{MeshIdentity, NodeEndpoint};

use crate::DomainProduct;

/// A registration of `contract` with what the node found in its data (`rows` and `quality`,
/// when it read them).
pub fn registration(
    contract: &DataContract,
    rows: Option<usize>,
    quality: &QualityReport,
) -> v1::ProductRegistration {
    v1::ProductRegistration {
        contract_yaml: contract.to_yaml(),
        rows: rows.map(|r| r as u64),
        quality_json: if quality.checked_ms > 0 {
            serde_json::to_string(quality).expect("reports serialize")
        } else {
            String::new()
        },
    }
}

/// What a node registers when it starts: its contract, and its data's rows and quality when
/// the data is where the contract (or the node's config) says. A product an example derives
/// per job has no file yet; its facts arrive with the first job.
pub fn startup_registration(
    product: &DomainProduct,
) -> Result<v1::ProductRegistration, fedmesh_data::DataError> {
    let contract = DataContract::from_path(&product.contract)?;
    let dir = product
        .contract
        .parent()
        .unwrap_or(std::path::Path::new("."));
    let source = match (&product.data, contract.local_source(dir)) {
        (Some(path), source) => Some((path.clone(), source.and_then(|s| s.1))),
        (None, source) => source,
    };
    let Some((path, format)) = source.filter(|(path, _)| path.exists()) else {
        return Ok(registration(&contract, None, &QualityReport::default()));
    };
    let mut cache = SourceCache::default();
    let table = cache.get(&path, format.as_deref())?;
    Ok(match DataProduct::from_source(contract.clone(), table) {
        Ok(loaded) => registration(&contract, Some(loaded.rows()), &QualityReport::of(&loaded)),
        Err(fedmesh_data::DataError::Violation(v)) => registration(
            &contract,
            Some(table.batch.num_rows()),
            &QualityReport::blocked(v.to_string()),
        ),
        Err(e) => return Err(e),
    })
}

/// Starts the task that delivers registrations to governance, newest first: a registration
/// that has not reached governance yet is replaced by a newer one.
pub fn spawn_registrar(
    identity: MeshIdentity,
    governance: NodeEndpoint,
) -> mpsc::UnboundedSender<v1::ProductRegistration> {
    let (send, mut receive) = mpsc::unbounded_channel::<v1::ProductRegistration>();
    tokio::spawn(async move {
        while let Some(mut registration) = receive.recv().await {
            let mut wait = Duration::from_millis(200);
            loop {
                while let Ok(newer) = receive.try_recv() {
                    registration = newer;
                }
                match deliver(&identity, &governance, registration.clone()).await {
                    Ok(()) => {
                        tracing::info!(
                            "catalog: registered the product with `{}`",
                            governance.name
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(
                            "catalog: `{}` not reached yet ({e}); retrying",
                            governance.name
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    });
    send
}

async fn deliver(
    identity: &MeshIdentity,
    governance: &NodeEndpoint,
    registration: v1::ProductRegistration,
) -> Result<(), String> {
    let channel = connect_with_retries(identity, governance, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    GovernanceClient::new(channel)
        .register_product(registration)
        .await
        .map_err(|s| s.message().to_string())?;
    Ok(())
}
