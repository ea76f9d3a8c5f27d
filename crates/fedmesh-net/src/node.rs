//! A domain node's side of the training stream.
//!
//! Each job's stream gets its own thread that owns the domain's parties (its bottom model and,
//! for the label owner, the labels and head) and answers governance's messages one by one, in
//! order. Models never leave the thread; only activations, gradients, the loss and aggregate
//! metrics go back.

use std::path::PathBuf;
use std::sync::Arc;

use fedmesh_model::Targets;
use fedmesh_proto::Encoding;
use fedmesh_proto::v1::domain_message::Body as Reply;
use fedmesh_proto::v1::domain_node_server::DomainNode;
use fedmesh_proto::v1::governance_message::Body as Command;
use fedmesh_proto::v1::{self, DomainMessage, GovernanceMessage};
use fedmesh_split::{DomainParty, LabelOwner, SplitError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{labels_to_wire, plan_from_wire, tensor_from_wire, tensor_to_wire};
use crate::identity::authorize;

/// What a domain holds for one job.
#[derive(Default)]
pub struct NodeParty {
    /// The domain's bottom model and features (absent for a label owner without features).
    pub bottom: Option<DomainParty>,
    /// The labels, when this domain owns them.
    pub labels: Option<Targets>,
    /// The head, when this domain owns the labels and keeps them (no label sharing).
    pub head: Option<LabelOwner>,
}

/// Makes a domain's parties for a job when governance opens it; an `Err` refuses the job with
/// that reason.
pub type PartyFactory = Arc<dyn Fn(&v1::JobStart) -> Result<NodeParty, String> + Send + Sync>;

/// The `DomainNode` gRPC service.
pub struct DomainNodeService {
    /// Names allowed to open jobs (the mesh's governance).
    governance: Vec<String>,
    factory: PartyFactory,
    /// Where trained parts are saved (the domain's own storage).
    models: PathBuf,
}

impl DomainNodeService {
    pub fn new(governance: impl Into<String>, factory: PartyFactory, models: PathBuf) -> Self {
        Self {
            governance: vec![governance.into()],
            factory,
            models,
        }
    }
}

#[tonic::async_trait]
impl DomainNode for DomainNodeService {
    type TrainStream = ReceiverStream<Result<DomainMessage, Status>>;

    async fn train(
        &self,
        request: Request<Streaming<GovernanceMessage>>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        let caller = authorize(&request, &self.governance)?;
        let mut inbound = request.into_inner();
        let (commands, queue) = std::sync::mpsc::channel();
        let (replies, outbound) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if commands.send(message).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!("stream from `{caller}` broke: {status}");
                        break;
                    }
                }
            }
        });
        let factory = self.factory.clone();
        let models = self.models.clone();
        std::thread::spawn(move || serve(factory, models, queue, replies));
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}

/// Answers one job's messages until governance finishes it or goes away.
fn serve(
    factory: PartyFactory,
    models: PathBuf,
    queue: std::sync::mpsc::Receiver<GovernanceMessage>,
    replies: mpsc::Sender<Result<DomainMessage, Status>>,
) {
    let mut job = Job {
        factory,
        models,
        party: None,
        encoding: Encoding::F32,
    };
    for message in queue {
        let Some(command) = message.body else {
            continue;
        };
        let finish = matches!(command, Command::Finish(_));
        let reply = match job.handle(command) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!("job refused or failed: {e}");
                Reply::Failure(v1::Failure {
                    reason: e.to_string(),
                })
            }
        };
        let failed = matches!(reply, Reply::Failure(_));
        if replies
            .blocking_send(Ok(DomainMessage { body: Some(reply) }))
            .is_err()
            || finish
            || failed
        {
            break;
        }
    }
}

struct Job {
    factory: PartyFactory,
    models: PathBuf,
    party: Option<NodeParty>,
    encoding: Encoding,
}

impl Job {
    fn party(&mut self) -> Result<&mut NodeParty, SplitError> {
        self.party
            .as_mut()
            .ok_or_else(|| SplitError::Protocol("no job was started on this stream".into()))
    }

    fn bottom(&mut self) -> Result<&mut DomainParty, SplitError> {
        self.party()?
            .bottom
            .as_mut()
            .ok_or_else(|| SplitError::Protocol("this domain contributes no features".into()))
    }

    fn head(&mut self) -> Result<&mut LabelOwner, SplitError> {
        self.party()?
            .head
            .as_mut()
            .ok_or_else(|| SplitError::Protocol("this domain holds no head in this job".into()))
    }

    fn handle(&mut self, command: Command) -> Result<Reply, SplitError> {
        Ok(match command {
            Command::Start(start) => {
                self.encoding = Encoding::try_from(start.encoding).unwrap_or(Encoding::F32);
                let party = (self.factory)(&start).map_err(SplitError::Protocol)?;
                let ready = v1::Ready {
                    rows: party.bottom.as_ref().map_or(0, |b| b.features().rows) as u64,
                    cut_width: party.bottom.as_ref().map_or(0, |b| b.cut_width() as u32),
                };
                self.party = Some(party);
                Reply::Ready(ready)
            }
            Command::Plan(plan) => {
                let plan = plan_from_wire(&plan)?;
                let activation = self.bottom()?.forward(&plan)?;
                Reply::Activation(tensor_to_wire(&activation, self.encoding))
            }
            Command::Gradient(gradient) => {
                let gradient = tensor_from_wire(Some(&gradient))?;
                self.bottom()?.backward(&gradient)?;
                Reply::Ack(v1::Empty {})
            }
            Command::HeadTrain(input) => {
                let plan = plan_from_wire(&input.plan.unwrap_or_default())?;
                let z = tensor_from_wire(input.tower_output.as_ref())?;
                let encoding = self.encoding;
                let step = self.head()?.train(&plan, &z)?;
                Reply::HeadStep(v1::HeadStep {
                    loss: step.loss,
                    gradient: Some(tensor_to_wire(&step.gradient, encoding)),
                })
            }
            Command::HeadEval(input) => {
                let plan = plan_from_wire(&input.plan.unwrap_or_default())?;
                let z = tensor_from_wire(input.tower_output.as_ref())?;
                self.head()?.eval(&plan, &z)?;
                Reply::Ack(v1::Empty {})
            }
            Command::Report(_) => {
                let report = self.head()?.report();
                Reply::ReportJson(serde_json::to_string(&report).expect("reports serialize"))
            }
            Command::Labels(_) => {
                let labels = self.party()?.labels.as_ref().ok_or_else(|| {
                    SplitError::Protocol("this domain owns no labels in this job".into())
                })?;
                Reply::Labels(labels_to_wire(labels))
            }
            Command::Save(_) => {
                let dir = self.models.clone();
                let party = self.party()?;
                let mut parts = Vec::new();
                if let Some(bottom) = &party.bottom {
                    parts.push(bottom.save(&dir)?.display().to_string());
                }
                if let Some(head) = &party.head {
                    parts.push(head.save(&dir)?.display().to_string());
                }
                Reply::Saved(v1::Saved { parts })
            }
            Command::Finish(_) => Reply::Ack(v1::Empty {}),
        })
    }
}
