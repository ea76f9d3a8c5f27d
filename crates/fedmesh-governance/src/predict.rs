//! Governance's side of split inference: which domains hold each requested entity, their
//! activations batch by batch, the tower here, and the head here or at the label owner.

use std::time::Duration;

use fedmesh_net::convert::{tensor_from_wire, tensor_to_wire};
use fedmesh_net::transport::{Link, stream_runtime, unexpected};
use fedmesh_net::{MeshIdentity, NodeEndpoint};
use fedmesh_proto::Encoding;
use fedmesh_proto::v1::{self, domain_message::Body as Reply, governance_message::Body as Command};
use fedmesh_split::SplitError;
use futures::future::try_join_all;

/// A node's stream for one prediction, with the requested entities it holds.
struct Holder {
    link: Link,
    /// The width of its activations (0: a domain without a bottom).
    cut_width: u32,
    /// The request positions of the entities it holds.
    positions: Vec<u32>,
}

/// Entities scored by split inference, and those that could not be.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// Each scored entity's key and scores (class probabilities, or values), in request order.
    pub scores: Vec<(String, Vec<f32>)>,
    /// Each key some domain does not hold, with those domains.
    pub missing: Vec<(String, Vec<String>)>,
}

/// Opens a prediction on every node: each answers with the requested keys it holds.
async fn holders(
    identity: &MeshIdentity,
    nodes: &[NodeEndpoint],
    start: &v1::PredictStart,
    deadline: Duration,
) -> Result<Vec<Holder>, SplitError> {
    try_join_all(nodes.iter().map(|node| async {
        let mut link = Link::open(identity, node, deadline).await?;
        let mut start = start.clone();
        start.domain = node.name.clone();
        match link.call(Command::Predict(start), deadline).await? {
            Reply::Found(found) => Ok(Holder {
                link,
                cut_width: found.cut_width,
                positions: found.positions,
            }),
            other => Err(unexpected(&node.name, &other)),
        }
    }))
    .await
}

/// How many entities one inference message scores.
const PREDICT_BATCH: usize = 4096;

/// Split inference over the nodes (in domain order): each domain finds the requested keys and
/// computes its activations with its saved parts; governance runs the tower that `top` loads
/// for the cut layer's width, and the head runs at governance (when `top` has it) or at the
/// label owner.
pub fn predict(
    identity: &MeshIdentity,
    nodes: &[NodeEndpoint],
    label_owner: &str,
    start: v1::PredictStart,
    deadline: Duration,
    top: impl FnOnce(usize) -> Result<fedmesh_split::inference::TopScorer, SplitError>,
) -> Result<Prediction, SplitError> {
    let runtime = stream_runtime()?;
    runtime.block_on(async {
        let keys = start.keys.clone();
        let mut links = holders(identity, nodes, &start, deadline).await?;
        // An entity is scored when every domain with features holds it.
        let mut held_by = vec![Vec::new(); keys.len()];
        for holder in &links {
            for &p in &holder.positions {
                if let Some(holders) = held_by.get_mut(p as usize) {
                    holders.push(holder.link.name().to_string());
                }
            }
        }
        let bottoms: Vec<String> = links
            .iter()
            .filter(|h| h.cut_width > 0)
            .map(|h| h.link.name().to_string())
            .collect();
        let mut scored = Vec::new();
        let mut missing = Vec::new();
        for (p, holders) in held_by.iter().enumerate() {
            let lacking: Vec<String> = bottoms
                .iter()
                .filter(|b| !holders.contains(b))
                .cloned()
                .collect();
            if lacking.is_empty() {
                scored.push(p as u32);
            } else {
                missing.push((keys[p].clone(), lacking));
            }
        }
        let cut_width = links.iter().map(|h| h.cut_width as usize).sum();
        let top = top(cut_width)?;
        let owner = links
            .iter()
            .position(|h| h.link.name() == label_owner)
            .ok_or_else(|| {
                SplitError::refused(
                    "governance",
                    format!("the label owner `{label_owner}` is not a node of the model"),
                )
            })?;
        let mut scores = Vec::with_capacity(scored.len());
        for batch in scored.chunks(PREDICT_BATCH) {
            let request = v1::PredictRows {
                positions: batch.to_vec(),
            };
            let cut = try_join_all(links.iter_mut().filter(|h| h.cut_width > 0).map(
                |Holder { link, .. }| {
                    let request = request.clone();
                    async move {
                        match link.call(Command::PredictRows(request), deadline).await? {
                            Reply::Activation(a) => tensor_from_wire(Some(&a)),
                            other => Err(unexpected(link.name(), &other)),
                        }
                    }
                },
            ))
            .await?;
            let z = top.tower_output(&cut);
            let (values, cols) = match top.head() {
                Some(head) => {
                    let values = head.scores(&z)?;
                    let cols = values.len() / batch.len().max(1);
                    (values, cols)
                }
                None => {
                    let link = &mut links[owner].link;
                    let tensor = tensor_to_wire(&z, Encoding::F32);
                    match link.call(Command::PredictHead(tensor), deadline).await? {
                        Reply::Scores(s) => (s.values, s.cols as usize),
                        other => return Err(unexpected(link.name(), &other)),
                    }
                }
            };
            if values.len() != batch.len() * cols {
                return Err(SplitError::refused(
                    "governance",
                    format!("{} scores for {} entities", values.len(), batch.len()),
                ));
            }
            for (&p, row) in batch.iter().zip(values.chunks(cols.max(1))) {
                scores.push((keys[p as usize].clone(), row.to_vec()));
            }
        }
        for Holder { link, .. } in &mut links {
            // The scores are computed: a node that does not acknowledge the end costs nothing.
            let _ = link.call(Command::Finish(v1::Empty {}), deadline).await;
        }
        Ok(Prediction { scores, missing })
    })
}

/// Scoring with a horizontal model: every domain holds the whole model and some of the
/// entities, so each requested key is scored at the domain that holds it (the first in domain
/// order, should two hold it), with the model and pipeline it saved; governance only gathers
/// the scores.
pub fn predict_horizontal(
    identity: &MeshIdentity,
    nodes: &[NodeEndpoint],
    start: v1::PredictStart,
    deadline: Duration,
) -> Result<Prediction, SplitError> {
    let runtime = stream_runtime()?;
    runtime.block_on(async {
        let keys = start.keys.clone();
        let mut links = holders(identity, nodes, &start, deadline).await?;
        let mut scorer: Vec<Option<usize>> = vec![None; keys.len()];
        for (d, holder) in links.iter_mut().enumerate() {
            holder.positions.retain(|&p| {
                let first = scorer.get(p as usize).is_some_and(Option::is_none);
                if first {
                    scorer[p as usize] = Some(d);
                }
                first
            });
        }
        let mut found: Vec<Option<Vec<f32>>> = vec![None; keys.len()];
        for Holder {
            link, positions, ..
        } in &mut links
        {
            for batch in positions.chunks(PREDICT_BATCH) {
                let request = v1::PredictRows {
                    positions: batch.to_vec(),
                };
                let (values, cols) =
                    match link.call(Command::PredictRows(request), deadline).await? {
                        Reply::Scores(s) => (s.values, s.cols as usize),
                        other => return Err(unexpected(link.name(), &other)),
                    };
                if cols == 0 || values.len() != batch.len() * cols {
                    return Err(SplitError::Node {
                        node: link.name().to_string(),
                        message: format!(
                            "sent {} scores for {} entities",
                            values.len(),
                            batch.len()
                        ),
                    });
                }
                for (&p, row) in batch.iter().zip(values.chunks(cols)) {
                    found[p as usize] = Some(row.to_vec());
                }
            }
        }
        for Holder { link, .. } in &mut links {
            let _ = link.call(Command::Finish(v1::Empty {}), deadline).await;
        }
        let domains: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let mut scores = Vec::new();
        let mut missing = Vec::new();
        for (key, row) in keys.into_iter().zip(found) {
            match row {
                Some(row) => scores.push((key, row)),
                None => missing.push((key, domains.clone())),
            }
        }
        Ok(Prediction { scores, missing })
    })
}
