//! An operator's side: waiting for a node to be ready, and governance's API (jobs, catalog).

use std::time::Duration;

use fedmesh_proto::v1::governance_client::GovernanceClient;
use fedmesh_proto::v1::{self, JobRequest, RunStarted, job_event};
use fedmesh_split::job::RunResult;
use fedmesh_split::{EpochRecord, SplitError};
use tonic::transport::Channel;
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
    let failed = |message: String| SplitError::Node {
        node: node.name.clone(),
        message: format!("at {}: {message}", node.url),
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

/// What a job reports while it runs.
pub enum JobProgress {
    RunStarted(RunStarted),
    Epoch(EpochRecord),
    RunDone(Box<RunResult>),
    /// A line of the job's log.
    Log(String),
    /// The job changed state.
    State {
        state: String,
        reason: String,
    },
}

/// An operator's connection to governance: jobs and the catalog.
pub struct Operator {
    client: GovernanceClient<Channel>,
    governance: String,
}

fn json<T: serde::de::DeserializeOwned>(
    governance: &str,
    reply: Result<tonic::Response<v1::Json>, tonic::Status>,
) -> Result<T, SplitError> {
    let reply = reply.map_err(|status| SplitError::Governance {
        name: governance.to_string(),
        message: status.message().to_string(),
    })?;
    serde_json::from_str(&reply.into_inner().json).map_err(|e| SplitError::Governance {
        name: governance.to_string(),
        message: format!("a malformed answer: {e}"),
    })
}

impl Operator {
    /// Connects to governance, retrying for up to 10 s while it starts.
    pub async fn connect(
        identity: &MeshIdentity,
        governance: &NodeEndpoint,
    ) -> Result<Self, SplitError> {
        let channel = connect_with_retries(identity, governance, Duration::from_secs(10))
            .await
            .map_err(|e| match e {
                SplitError::Node { message, .. } => SplitError::Governance {
                    name: governance.name.clone(),
                    message,
                },
                other => other,
            })?;
        Ok(Self {
            client: GovernanceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
            governance: governance.name.clone(),
        })
    }

    fn failed(&self, status: tonic::Status) -> SplitError {
        SplitError::Governance {
            name: self.governance.clone(),
            message: status.message().to_string(),
        }
    }

    /// Submits a job; governance records it and admits or denies it. Returns the job's record
    /// (JSON), whose `state` says which.
    pub async fn submit(&mut self, request: JobRequest) -> Result<serde_json::Value, SplitError> {
        let reply = self.client.submit_job(request).await;
        json(&self.governance, reply)
    }

    pub async fn job(&mut self, id: &str) -> Result<serde_json::Value, SplitError> {
        let reply = self.client.get_job(v1::JobRef { id: id.into() }).await;
        json(&self.governance, reply)
    }

    pub async fn jobs(&mut self) -> Result<serde_json::Value, SplitError> {
        let reply = self.client.list_jobs(v1::Empty {}).await;
        json(&self.governance, reply)
    }

    pub async fn cancel(&mut self, id: &str) -> Result<serde_json::Value, SplitError> {
        let reply = self.client.cancel_job(v1::JobRef { id: id.into() }).await;
        json(&self.governance, reply)
    }

    pub async fn products(&mut self) -> Result<serde_json::Value, SplitError> {
        let reply = self.client.list_products(v1::Empty {}).await;
        json(&self.governance, reply)
    }

    pub async fn product(&mut self, name: &str) -> Result<serde_json::Value, SplitError> {
        let reply = self
            .client
            .get_product(v1::ProductRef { name: name.into() })
            .await;
        json(&self.governance, reply)
    }

    pub async fn models(&mut self) -> Result<serde_json::Value, SplitError> {
        let reply = self.client.list_models(v1::Empty {}).await;
        json(&self.governance, reply)
    }

    pub async fn model(&mut self, name: &str) -> Result<serde_json::Value, SplitError> {
        let reply = self
            .client
            .get_model(v1::ModelRef { name: name.into() })
            .await;
        json(&self.governance, reply)
    }

    /// Scores entities (by key) with a registered model: `{model, config, scores: [{key,
    /// scores}], missing: [{key, missing_at}]}`; for a recommender, ranks `top` items (0: 10)
    /// for each user in `keys`: `{model, config, rankings: [{user, items: [{item, score}]}],
    /// missing: [user]}`.
    pub async fn predict(
        &mut self,
        model: &str,
        keys: Vec<String>,
        top: u32,
    ) -> Result<serde_json::Value, SplitError> {
        let reply = self
            .client
            .predict(v1::PredictRequest {
                model: model.into(),
                keys,
                top,
            })
            .await;
        json(&self.governance, reply)
    }

    /// Follows a job's events from the start (or only those stored so far, without `follow`),
    /// calling `progress` with each. Returns the results of the runs it saw finish; a job that
    /// ends failed, denied or cancelled is an error with governance's reason.
    pub async fn watch(
        &mut self,
        id: &str,
        follow: bool,
        mut progress: impl FnMut(JobProgress),
    ) -> Result<Vec<RunResult>, SplitError> {
        let mut events = self
            .client
            .watch_job(v1::WatchRequest {
                id: id.into(),
                after: 0,
                follow,
            })
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        let mut results = Vec::new();
        loop {
            let event = events.message().await.map_err(|s| self.failed(s))?;
            let Some(event) = event else {
                if follow {
                    return Err(SplitError::Governance {
                        name: self.governance.clone(),
                        message: format!(
                            "the stream of job `{id}` ended before the job did (did governance stop?)"
                        ),
                    });
                }
                return Ok(results);
            };
            let Some(body) = event.body else { continue };
            let malformed = |e: serde_json::Error| SplitError::Governance {
                name: self.governance.clone(),
                message: format!("a malformed report: {e}"),
            };
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
                job_event::Body::Log(line) => progress(JobProgress::Log(line)),
                job_event::Body::StateJson(json) => {
                    let v: serde_json::Value = serde_json::from_str(&json).map_err(malformed)?;
                    progress(JobProgress::State {
                        state: v["state"].as_str().unwrap_or_default().to_string(),
                        reason: v["reason"].as_str().unwrap_or_default().to_string(),
                    });
                }
                // Governance's own message already names the node that failed.
                job_event::Body::Failure(failure) => {
                    return Err(SplitError::JobFailed(failure.reason));
                }
                job_event::Body::Done(_) => return Ok(results),
            }
        }
    }
}

/// Submits a job and follows it to its end, calling `progress` with each event; returns every
/// run's result, and the job's id. A denied job is an error naming every denial.
pub async fn submit(
    identity: &MeshIdentity,
    governance: &NodeEndpoint,
    request: JobRequest,
    progress: impl FnMut(JobProgress),
    job_id: &mut Option<String>,
) -> Result<Vec<RunResult>, SplitError> {
    let mut operator = Operator::connect(identity, governance).await?;
    let record = operator.submit(request).await?;
    let id = record["id"].as_str().unwrap_or_default().to_string();
    *job_id = Some(id.clone());
    if record["state"] == "denied" {
        return Err(SplitError::Denied(
            record["reason"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect(),
        ));
    }
    operator.watch(&id, true, progress).await
}
