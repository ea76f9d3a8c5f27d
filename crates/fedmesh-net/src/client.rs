//! An operator's side: waiting for a node to be ready, and submitting a job to governance.

use std::time::Duration;

use fedmesh_proto::v1::governance_client::GovernanceClient;
use fedmesh_proto::v1::{JobRequest, RunStarted, job_event};
use fedmesh_split::job::RunResult;
use fedmesh_split::{EpochRecord, SplitError};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::server::MAX_MESSAGE_BYTES;
use crate::transport::connect_with_retries;
use crate::{MeshIdentity, NodeEndpoint};

/// Waits until `node` answers the gRPC health check as serving, at most `timeout`.
pub async fn wait_ready(
    identity: &MeshIdentity,
    node: &NodeEndpoint,
    timeout: Duration,
) -> Result<(), SplitError> {
    let failed = |message: String| {
        SplitError::Protocol(format!("`{}` at {}: {message}", node.name, node.url))
    };
    let give_up = tokio::time::Instant::now() + timeout;
    let channel = connect_with_retries(identity, node, timeout)
        .await
        .map_err(|e| match e {
            SplitError::Node { message, .. } => failed(message),
            other => other,
        })?;
    let mut health = HealthClient::new(channel);
    loop {
        let check = health.check(HealthCheckRequest {
            service: String::new(),
        });
        let status = match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(answer) => answer
                .map(|r| r.into_inner().status())
                .map_err(|s| s.to_string()),
            Err(_) => Err("no answer to the health check within 2 s".to_string()),
        };
        match status {
            Ok(ServingStatus::Serving) => return Ok(()),
            _ if tokio::time::Instant::now() >= give_up => {
                return Err(failed(format!(
                    "not ready within {} s ({status:?})",
                    timeout.as_secs_f64()
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// What a submitted job reports while it runs.
pub enum JobProgress {
    RunStarted(RunStarted),
    Epoch(EpochRecord),
    RunDone(Box<RunResult>),
}

/// Submits a job to governance and follows it to its end, calling `progress` with each event;
/// returns every run's result. Dropping the returned future cancels the job.
pub async fn submit(
    identity: &MeshIdentity,
    governance: &NodeEndpoint,
    request: JobRequest,
    mut progress: impl FnMut(JobProgress),
) -> Result<Vec<RunResult>, SplitError> {
    let failed = |message: String| SplitError::Governance {
        name: governance.name.clone(),
        message,
    };
    let channel = connect_with_retries(identity, governance, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            SplitError::Node { message, .. } => failed(message),
            other => other,
        })?;
    let mut events = GovernanceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .submit_job(request)
        .await
        .map_err(|status| failed(status.message().to_string()))?
        .into_inner();
    let mut results = Vec::new();
    loop {
        let event = events
            .message()
            .await
            .map_err(|status| failed(status.message().to_string()))?;
        let Some(body) = event.and_then(|e| e.body) else {
            return Err(failed(
                "the job's stream ended before the job finished (did governance stop?)".into(),
            ));
        };
        let malformed = |e: serde_json::Error| failed(format!("a malformed report: {e}"));
        match body {
            job_event::Body::RunStarted(started) => progress(JobProgress::RunStarted(started)),
            job_event::Body::EpochJson(json) => {
                progress(JobProgress::Epoch(
                    serde_json::from_str(&json).map_err(malformed)?,
                ));
            }
            job_event::Body::RunJson(json) => {
                let result: RunResult = serde_json::from_str(&json).map_err(malformed)?;
                results.push(result.clone());
                progress(JobProgress::RunDone(Box::new(result)));
            }
            // Governance's own message already names the node that failed.
            job_event::Body::Failure(failure) => {
                return Err(SplitError::JobFailed(failure.reason));
            }
            job_event::Body::Done(_) => return Ok(results),
        }
    }
}
