//! A horizontal job's messages ([`ToDomain`], [`FromDomain`]) in their protobuf form, both ways:
//! governance encodes what it sends and decodes what domains answer, a node the reverse. Every
//! decoding checks what it can before the engine sees the message: key and share sizes, a
//! model's bytes, a pass that exists.

use fedmesh_data::FeaturePipeline;
use fedmesh_proto::v1;
use fedmesh_proto::v1::domain_message::Body as Reply;
use fedmesh_proto::v1::governance_message::Body as Command;
use fedmesh_secagg::shamir::Share;
use fedmesh_secagg::{Advertisement, Config, MaskedInput, Quantization, Reveal, SealedShares};
use fedmesh_split::SplitError;
use fedmesh_split::horizontal::{DomainSums, EvaluationSums, FromDomain, LocalRound, ToDomain};
use fedmesh_split::wire::Part;

fn bad(from: &str, what: impl Into<String>) -> SplitError {
    SplitError::refused(from.to_string(), what.into())
}

/// Float values as little-endian f32 bytes.
pub fn floats_to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The floats [`floats_to_bytes`] wrote.
pub fn floats_from_bytes(bytes: &[u8], from: &str) -> Result<Vec<f32>, SplitError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(bad(
            from,
            format!("{} bytes are not whole f32 values", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

fn key(bytes: &[u8], from: &str) -> Result<[u8; 32], SplitError> {
    bytes
        .try_into()
        .map_err(|_| bad(from, format!("a key of {} bytes, not 32", bytes.len())))
}

fn advert_to_wire(a: &Advertisement) -> v1::SecAggAdvert {
    v1::SecAggAdvert {
        client: a.client,
        channel_key: a.channel_key.to_vec(),
        mask_key: a.mask_key.to_vec(),
    }
}

fn advert_from_wire(a: &v1::SecAggAdvert, from: &str) -> Result<Advertisement, SplitError> {
    Ok(Advertisement {
        client: a.client,
        channel_key: key(&a.channel_key, from)?,
        mask_key: key(&a.mask_key, from)?,
    })
}

fn shares_to_wire(shares: &[SealedShares]) -> v1::SealedShareList {
    v1::SealedShareList {
        shares: shares
            .iter()
            .map(|s| v1::SealedShare {
                from: s.from,
                to: s.to,
                ciphertext: s.ciphertext.clone(),
            })
            .collect(),
    }
}

fn shares_from_wire(list: v1::SealedShareList) -> Vec<SealedShares> {
    list.shares
        .into_iter()
        .map(|s| SealedShares {
            from: s.from,
            to: s.to,
            ciphertext: s.ciphertext,
        })
        .collect()
}

fn owned_to_wire(shares: &[(u32, Share)]) -> Vec<v1::OwnedShare> {
    shares
        .iter()
        .map(|(owner, share)| v1::OwnedShare {
            owner: *owner,
            share: share.to_bytes(),
        })
        .collect()
}

fn owned_from_wire(shares: &[v1::OwnedShare], from: &str) -> Result<Vec<(u32, Share)>, SplitError> {
    shares
        .iter()
        .map(|s| {
            Share::from_bytes(&s.share)
                .map(|share| (s.owner, share))
                .ok_or_else(|| bad(from, "a Shamir share that is not one"))
        })
        .collect()
}

fn part_to_wire(part: Part) -> i32 {
    match part {
        Part::Valid => v1::batch_plan::Pass::EvalValid as i32,
        Part::Test => v1::batch_plan::Pass::EvalTest as i32,
    }
}

/// What governance sends a domain, on the wire.
pub fn to_domain_to_wire(message: &ToDomain) -> Command {
    match message {
        ToDomain::Sums => Command::FeatureSums(v1::Empty {}),
        ToDomain::Pipeline(totals) => {
            Command::FeatureTotalsJson(serde_json::to_string(totals).expect("sums serialize"))
        }
        ToDomain::Train(round) => Command::LocalRound(v1::LocalRound {
            round: round.round as u32,
            learning_rate: round.learning_rate,
            share: round.share,
            model: round
                .model
                .as_deref()
                .map(floats_to_bytes)
                .unwrap_or_default(),
            secure: round.secure.map(|(client, config)| v1::SecAggSetup {
                client,
                clients: config.clients,
                threshold: config.threshold,
                length: config.length as u64,
                clip: config.quantization.clip,
                scale: config.quantization.scale,
            }),
            noise_std: round.noise_std,
        }),
        ToDomain::Update => Command::UpdateRequest(v1::Empty {}),
        ToDomain::Roster(roster) => Command::Roster(v1::SecAggRoster {
            adverts: roster.iter().map(advert_to_wire).collect(),
        }),
        ToDomain::Inbox(shares) => Command::Inbox(shares_to_wire(shares)),
        ToDomain::Survivors(clients) => Command::Survivors(v1::Survivors {
            clients: clients.clone(),
        }),
        ToDomain::Evaluate { model, part } => Command::Evaluate(v1::Evaluate {
            model: floats_to_bytes(model),
            pass: part_to_wire(*part),
        }),
    }
}

/// A horizontal job's message from governance, checked; `Ok(None)` for any other message.
pub fn to_domain_from_wire(command: &Command) -> Result<Option<ToDomain>, SplitError> {
    let from = "governance";
    Ok(Some(match command {
        Command::FeatureSums(_) => ToDomain::Sums,
        Command::FeatureTotalsJson(json) => ToDomain::Pipeline(
            serde_json::from_str::<DomainSums>(json)
                .map_err(|e| bad(from, format!("sent malformed feature totals: {e}")))?,
        ),
        Command::LocalRound(round) => ToDomain::Train(LocalRound {
            round: round.round as usize,
            learning_rate: round.learning_rate,
            share: round.share,
            model: if round.model.is_empty() {
                None
            } else {
                Some(floats_from_bytes(&round.model, from)?)
            },
            secure: round.secure.map(|s| {
                (
                    s.client,
                    Config {
                        clients: s.clients,
                        threshold: s.threshold,
                        length: s.length as usize,
                        quantization: Quantization {
                            clip: s.clip,
                            scale: s.scale,
                        },
                    },
                )
            }),
            noise_std: round.noise_std,
        }),
        Command::UpdateRequest(_) => ToDomain::Update,
        Command::Roster(roster) => ToDomain::Roster(
            roster
                .adverts
                .iter()
                .map(|a| advert_from_wire(a, from))
                .collect::<Result<_, _>>()?,
        ),
        Command::Inbox(list) => ToDomain::Inbox(shares_from_wire(list.clone())),
        Command::Survivors(s) => ToDomain::Survivors(s.clients.clone()),
        Command::Evaluate(e) => ToDomain::Evaluate {
            model: floats_from_bytes(&e.model, from)?,
            part: match v1::batch_plan::Pass::try_from(e.pass) {
                Ok(v1::batch_plan::Pass::EvalValid) => Part::Valid,
                Ok(v1::batch_plan::Pass::EvalTest) => Part::Test,
                _ => return Err(bad(from, format!("asked to evaluate pass {}", e.pass))),
            },
        },
        _ => return Ok(None),
    }))
}

/// A domain's answer, on the wire.
pub fn from_domain_to_wire(answer: &FromDomain) -> Reply {
    match answer {
        FromDomain::Sums(sums) => {
            Reply::SumsJson(serde_json::to_string(sums).expect("sums serialize"))
        }
        FromDomain::Pipeline(pipeline) => Reply::PipelineJson(pipeline.to_json()),
        FromDomain::Trained {
            loss_sum,
            rows,
            advert,
        } => Reply::Trained(v1::Trained {
            loss_sum: *loss_sum,
            rows: *rows,
            advert: advert.as_ref().map(advert_to_wire),
        }),
        FromDomain::Update(values) => Reply::Update(v1::FloatValues {
            values: floats_to_bytes(values),
        }),
        FromDomain::Shares(shares) => Reply::SealedShares(shares_to_wire(shares)),
        FromDomain::Masked(input) => Reply::MaskedInput(v1::MaskedInput {
            client: input.client,
            values: input.values.clone(),
        }),
        FromDomain::Reveal(reveal) => Reply::Reveal(v1::SecAggReveal {
            client: reveal.client,
            self_mask_shares: owned_to_wire(&reveal.self_mask_shares),
            mask_key_shares: owned_to_wire(&reveal.mask_key_shares),
        }),
        FromDomain::Evaluation(sums) => {
            Reply::EvaluationJson(serde_json::to_string(sums).expect("sums serialize"))
        }
    }
}

/// A domain's answer to a horizontal job's message, checked; `node` names it in errors.
pub fn from_domain_from_wire(reply: Reply, node: &str) -> Result<FromDomain, SplitError> {
    let malformed = |what: &str, e: serde_json::Error| SplitError::Node {
        node: node.to_string(),
        message: format!("sent malformed {what}: {e}"),
    };
    Ok(match reply {
        Reply::SumsJson(json) => {
            FromDomain::Sums(serde_json::from_str(&json).map_err(|e| malformed("feature sums", e))?)
        }
        Reply::PipelineJson(json) => {
            FromDomain::Pipeline(FeaturePipeline::from_json(&json).map_err(|e| {
                SplitError::Node {
                    node: node.to_string(),
                    message: e.to_string(),
                }
            })?)
        }
        Reply::Trained(t) => FromDomain::Trained {
            loss_sum: t.loss_sum,
            rows: t.rows,
            advert: t
                .advert
                .as_ref()
                .map(|a| advert_from_wire(a, node))
                .transpose()?,
        },
        Reply::Update(values) => FromDomain::Update(floats_from_bytes(&values.values, node)?),
        Reply::SealedShares(list) => FromDomain::Shares(shares_from_wire(list)),
        Reply::MaskedInput(input) => FromDomain::Masked(MaskedInput {
            client: input.client,
            values: input.values,
        }),
        Reply::Reveal(reveal) => FromDomain::Reveal(Reveal {
            client: reveal.client,
            self_mask_shares: owned_from_wire(&reveal.self_mask_shares, node)?,
            mask_key_shares: owned_from_wire(&reveal.mask_key_shares, node)?,
        }),
        Reply::EvaluationJson(json) => FromDomain::Evaluation(
            serde_json::from_str::<EvaluationSums>(&json)
                .map_err(|e| malformed("evaluation sums", e))?,
        ),
        other => return Err(crate::transport::unexpected(node, &other)),
    })
}

/// Governance's line to a horizontal job's domain nodes, one stream each: messages to several
/// nodes go out at once, so that the domains train in parallel. A node that fails — it died,
/// timed out, or broke the protocol — stays out of the rest of the job; the rounds go on
/// without it while enough domains remain.
pub struct GrpcFederation {
    runtime: tokio::runtime::Runtime,
    links: Vec<crate::transport::Link>,
    /// Why each node left the job, if it did.
    gone: Vec<Option<String>>,
    deadline: std::time::Duration,
}

impl GrpcFederation {
    /// Connects to every node over mutual TLS and opens the job on each (`start.domain` set per
    /// node): each checks the job against its contract and policy, and loads its product.
    pub fn connect(
        identity: &crate::MeshIdentity,
        nodes: &[crate::NodeEndpoint],
        start: v1::JobStart,
        deadline: std::time::Duration,
    ) -> Result<Self, SplitError> {
        let (runtime, links) = crate::transport::open_all(identity, nodes, &start, deadline)?;
        Ok(Self {
            runtime,
            gone: vec![None; links.len()],
            links,
            deadline,
        })
    }

    /// Bytes sent to and received from the nodes so far (protobuf-encoded messages).
    pub fn bytes(&self) -> (u64, u64) {
        self.links
            .iter()
            .fold((0, 0), |(s, r), l| (s + l.bytes_sent, r + l.bytes_received))
    }

    /// Calls every node still in the job with `body`.
    fn call_live(&mut self, body: Command) -> Vec<(String, Result<Reply, SplitError>)> {
        let deadline = self.deadline;
        let calls = self
            .links
            .iter_mut()
            .zip(&self.gone)
            .filter(|(_, gone)| gone.is_none())
            .map(|(link, _)| {
                let body = body.clone();
                async move {
                    let name = link.name.clone();
                    (name, link.call(body, deadline).await)
                }
            });
        self.runtime.block_on(futures::future::join_all(calls))
    }

    /// Has every node still in the job save its model and pipeline under the run's id; returns
    /// the files they wrote.
    pub fn save(&mut self) -> Result<Vec<std::path::PathBuf>, SplitError> {
        let mut parts = Vec::new();
        for (node, reply) in self.call_live(Command::Save(v1::Empty {})) {
            match reply? {
                Reply::Saved(saved) => parts.extend(saved.parts.into_iter().map(Into::into)),
                other => return Err(crate::transport::unexpected(&node, &other)),
            }
        }
        Ok(parts)
    }

    /// Ends the job on every node still in it; returns the audit head each node that keeps a
    /// log answered with.
    pub fn finish(&mut self) -> Result<Vec<(String, v1::AuditHead)>, SplitError> {
        let mut heads = Vec::new();
        for (node, reply) in self.call_live(Command::Finish(v1::Empty {})) {
            if let Reply::AuditHead(head) = reply? {
                heads.push((node, head));
            }
        }
        Ok(heads)
    }
}

impl fedmesh_split::horizontal::Federation for GrpcFederation {
    fn domains(&self) -> Vec<String> {
        self.links.iter().map(|l| l.name.clone()).collect()
    }

    fn exchange(
        &mut self,
        messages: Vec<(usize, ToDomain)>,
    ) -> Vec<Result<FromDomain, SplitError>> {
        let deadline = self.deadline;
        let order: Vec<usize> = messages.iter().map(|(k, _)| *k).collect();
        let mut by_link: Vec<Option<Command>> = vec![None; self.links.len()];
        let mut results: Vec<Option<Result<FromDomain, SplitError>>> =
            (0..self.links.len()).map(|_| None).collect();
        for (k, message) in messages {
            match (&self.gone[k], by_link[k].is_some()) {
                (Some(reason), _) => {
                    results[k] = Some(Err(SplitError::Node {
                        node: self.links[k].name.clone(),
                        message: format!("left the job earlier: {reason}"),
                    }));
                }
                (None, true) => {
                    results[k] = Some(Err(SplitError::refused(
                        "governance",
                        "two messages to one domain at once",
                    )));
                }
                (None, false) => by_link[k] = Some(to_domain_to_wire(&message)),
            }
        }
        let calls = self
            .links
            .iter_mut()
            .zip(by_link)
            .enumerate()
            .filter_map(|(k, (link, body))| body.map(|body| (k, link, body)))
            .map(|(k, link, body)| async move {
                let answer = match link.call(body, deadline).await {
                    Ok(reply) => from_domain_from_wire(reply, &link.name),
                    Err(e) => Err(e),
                };
                (k, answer)
            });
        for (k, answer) in self.runtime.block_on(futures::future::join_all(calls)) {
            if let Err(e) = &answer {
                // The stream is out of step or gone: the node takes no further part.
                self.gone[k] = Some(e.to_string());
            }
            results[k] = Some(answer);
        }
        order
            .into_iter()
            .map(|k| {
                results[k]
                    .take()
                    .unwrap_or_else(|| Err(SplitError::refused("governance", "no answer was kept")))
            })
            .collect()
    }
}
