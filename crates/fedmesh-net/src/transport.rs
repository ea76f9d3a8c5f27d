//! Governance's side of the training streams: [`fedmesh_split::Transport`] over gRPC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fedmesh_data::Partition;
use fedmesh_model::Targets;
use fedmesh_proto::Encoding;
use fedmesh_proto::v1::domain_message::Body as Reply;
use fedmesh_proto::v1::domain_node_client::DomainNodeClient;
use fedmesh_proto::v1::governance_message::Body as Command;
use fedmesh_proto::v1::{self, DomainMessage, GovernanceMessage};
use fedmesh_split::job::{
    AlignmentMethod, AlignmentSummary, ProductRows, PsiProtocol, alignment_method,
    check_intersection,
};
use fedmesh_split::recommend::RankingMetrics;
use fedmesh_split::split_ncf::{ExamplePass, NcfTransport};
use fedmesh_split::transport::check_one_per_domain;
use fedmesh_split::{
    BatchPlan, CutActivation, CutLayerGradient, EvaluationReport, HeadStep, SplitError, Transport,
    WireTensor,
};
use futures::future::try_join_all;
use prost::Message;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::MeshIdentity;
use crate::convert::{labels_from_wire, plan_to_wire, tensor_from_wire, tensor_to_wire};
use crate::server::MAX_MESSAGE_BYTES;

/// Where a domain node listens.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    /// The node's name, which its certificate must carry.
    pub name: String,
    /// `https://host:port`.
    pub url: String,
}

/// One open job stream to a domain node: what governance sends on it and the node's answers,
/// with the bytes that crossed.
pub struct Link {
    pub(crate) name: String,
    outbound: mpsc::Sender<GovernanceMessage>,
    inbound: Streaming<DomainMessage>,
    rows: u64,
    keyed: bool,
    /// The node still holds the result of the alignment run the job's start named.
    alignment_kept: bool,
    cut_width: u32,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    /// The last training step's gradient, held back to travel with the next plan.
    pending_gradient: Option<v1::Tensor>,
    /// A plan sent ahead, whose activation the node is computing.
    in_flight: Option<v1::BatchPlan>,
}

impl Link {
    /// Opens a job stream to `node`, with nothing sent on it yet.
    pub async fn open(
        identity: &MeshIdentity,
        node: &NodeEndpoint,
        deadline: Duration,
    ) -> Result<Self, SplitError> {
        open_stream(identity, node, deadline).await
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, message: String) -> SplitError {
        SplitError::Node {
            node: self.name.clone(),
            message,
        }
    }

    /// Sends one message without waiting for an answer; a held-back gradient goes first,
    /// alone, unless the message is a plan it can travel with.
    async fn send(&mut self, body: Command) -> Result<(), SplitError> {
        let body = match (self.pending_gradient.take(), body) {
            (Some(gradient), Command::Plan(plan)) => Command::Step(v1::Step {
                gradient: Some(gradient),
                plan: Some(plan),
            }),
            (Some(gradient), body) => {
                self.send_now(Command::Gradient(gradient)).await?;
                body
            }
            (None, body) => body,
        };
        self.send_now(body).await
    }

    async fn send_now(&mut self, body: Command) -> Result<(), SplitError> {
        let message = GovernanceMessage { body: Some(body) };
        self.bytes_sent += message.encoded_len() as u64;
        self.outbound
            .send(message)
            .await
            .map_err(|_| self.error("the stream to the node is closed".into()))
    }

    /// Sends one message and waits for its answer, at most `deadline`.
    pub async fn call(&mut self, body: Command, deadline: Duration) -> Result<Reply, SplitError> {
        if self.in_flight.is_some() {
            return Err(SplitError::refused(
                "governance",
                format!(
                    "a plan announced to `{}` was never asked for; the stream is out of step",
                    self.name
                ),
            ));
        }
        self.send(body).await?;
        self.receive(deadline).await
    }

    /// Waits for the node's next answer, at most `deadline`.
    async fn receive(&mut self, deadline: Duration) -> Result<Reply, SplitError> {
        let gone = |what: String| SplitError::Node {
            node: self.name.clone(),
            message: what,
        };
        let reply = tokio::time::timeout(deadline, self.inbound.message())
            .await
            .map_err(|_| gone(format!("no answer within {} s", deadline.as_secs_f64())))?
            .map_err(|status| gone(status.message().to_string()))?
            .ok_or_else(|| gone("the node closed the stream".into()))?;
        self.bytes_received += reply.encoded_len() as u64;
        match reply.body {
            Some(Reply::Failure(failure)) => Err(gone(failure.reason)),
            Some(body) => Ok(body),
            None => Err(gone("an empty answer".into())),
        }
    }
}

/// A node answered with a message of the wrong kind.
pub fn unexpected(node: &str, reply: &Reply) -> SplitError {
    // The kind of answer only: a reply may hold a large tensor.
    let kind = format!("{reply:?}");
    let kind = kind.split(['(', ' ']).next().unwrap_or_default();
    SplitError::Node {
        node: node.to_string(),
        message: format!("unexpected answer `{kind}`"),
    }
}

/// Refuses an activation or gradient that does not have the expected shape or holds a value
/// that is not finite, before it reaches a model (where a wrong shape would panic, and a NaN
/// spread, instead of failing the job with the node's name).
fn check_shape(
    node: &str,
    what: &str,
    tensor: WireTensor,
    rows: usize,
    cols: usize,
) -> Result<WireTensor, SplitError> {
    if tensor.rows != rows || tensor.cols != cols {
        return Err(SplitError::Node {
            node: node.to_string(),
            message: format!(
                "sent a {}×{} {what}, expected {rows}×{cols}",
                tensor.rows, tensor.cols
            ),
        });
    }
    // A NaN from one domain would poison every other party's model.
    fedmesh_split::session::check_tensor(
        &tensor,
        &format!("the {what}"),
        &format!("`{node}`"),
        "governance",
    )?;
    Ok(tensor)
}

/// The training streams of one job, one per domain node.
pub struct GrpcTransport {
    /// The transport's own runtime ([`stream_runtime`]): the trainer's thread drives the job
    /// while a worker keeps the connections answering.
    runtime: Runtime,
    links: Vec<Link>,
    /// Links whose domain contributes a bottom, in domain order.
    bottoms: Vec<usize>,
    /// The label owner's link.
    owner: usize,
    encoding: Encoding,
    deadline: Duration,
    partition: Partition,
    /// How the rows were aligned (none for a recommendation job, whose examples name entities
    /// by id).
    alignment: Option<AlignmentSummary>,
    alignment_seconds: f64,
}

impl GrpcTransport {
    /// Connects to every node over mutual TLS and opens the job on each (`start.domain` is set
    /// per node): each loads and validates its product, the products are aligned, the label
    /// owner draws the partition, and every domain fits its pipeline on the training rows and
    /// builds its bottom. `nodes` are in domain order; `label_owner` names one of them.
    /// `alignment` is the private set intersection protocol and, when the job has aligned
    /// before, `kept`: the entities alignment run `start.alignment_id` found. The domains then
    /// reuse that run's result when every one still holds it for its product as it is now,
    /// instead of aligning anew.
    pub fn connect(
        identity: &MeshIdentity,
        nodes: &[NodeEndpoint],
        label_owner: &str,
        start: v1::JobStart,
        alignment: (PsiProtocol, Option<usize>),
        deadline: Duration,
    ) -> Result<Self, SplitError> {
        let (protocol, kept) = alignment;
        let owner = nodes
            .iter()
            .position(|n| n.name == label_owner)
            .ok_or_else(|| {
                SplitError::refused(
                    "governance",
                    format!("the label owner `{label_owner}` is not a node of the job"),
                )
            })?;
        let encoding = Encoding::try_from(start.encoding).unwrap_or(Encoding::F32);
        let (runtime, mut links) = open_all(identity, nodes, &start, deadline)?;
        let started = std::time::Instant::now();
        let alignment = match kept {
            Some(intersection) if links.iter().all(|l| l.keyed && l.alignment_kept) => runtime
                .block_on(reuse_alignment(
                    &mut links,
                    &start.alignment_id,
                    intersection,
                    deadline,
                ))?,
            _ => runtime.block_on(align(&mut links, protocol, deadline))?,
        };
        let alignment_seconds = started.elapsed().as_secs_f64();
        let partition = runtime.block_on(setup(&mut links, owner, deadline))?;
        let bottoms = (0..links.len())
            .filter(|&i| links[i].cut_width > 0)
            .collect();
        Ok(Self {
            runtime,
            links,
            bottoms,
            owner,
            encoding,
            deadline,
            partition,
            alignment: Some(alignment),
            alignment_seconds,
        })
    }

    /// Connects to a recommendation job's nodes (sales, customer, product, in that order) and
    /// opens the job on each: each loads and checks its product; sales names the users and
    /// items its examples will use, and customer and product look them up in their own tables
    /// and build their bottoms.
    pub fn connect_recommendation(
        identity: &MeshIdentity,
        nodes: &[NodeEndpoint; 3],
        start: v1::JobStart,
        deadline: Duration,
    ) -> Result<Self, SplitError> {
        let encoding = Encoding::try_from(start.encoding).unwrap_or(Encoding::F32);
        let (runtime, mut links) = open_all(identity, nodes, &start, deadline)?;
        runtime.block_on(async {
            let [sales, customer, product] = &mut links[..] else {
                unreachable!("three nodes")
            };
            let entities = match sales
                .call(Command::EntitiesRequest(v1::Empty {}), deadline)
                .await?
            {
                Reply::Entities(entities) => entities,
                other => return Err(unexpected(&sales.name, &other)),
            };
            sales.cut_width = entities.cut_width;
            let users = v1::Entities {
                users: entities.users,
                ..Default::default()
            };
            let items = v1::Entities {
                items: entities.items,
                ..Default::default()
            };
            tokio::try_join!(
                customer.look_up(users, deadline),
                product.look_up(items, deadline)
            )?;
            Ok(())
        })?;
        Ok(Self {
            runtime,
            links,
            bottoms: vec![0, 1, 2],
            owner: 0,
            encoding,
            deadline,
            partition: Partition::default(),
            alignment: None,
            alignment_seconds: 0.0,
        })
    }

    /// How the domains' rows were aligned (all that governance learns of their keys).
    pub fn alignment(&self) -> Option<&AlignmentSummary> {
        self.alignment.as_ref()
    }

    /// Wall time of the alignment phase (private set intersection), from the first message to
    /// every domain's answer.
    pub fn alignment_seconds(&self) -> f64 {
        self.alignment_seconds
    }

    /// The partition the label owner drew.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// Total width of the cut layer (all bottoms' activations side by side).
    pub fn cut_width(&self) -> usize {
        self.links.iter().map(|l| l.cut_width as usize).sum()
    }

    /// Bytes sent to and received from the nodes so far (protobuf-encoded messages).
    pub fn bytes(&self) -> (u64, u64) {
        self.links
            .iter()
            .fold((0, 0), |(s, r), l| (s + l.bytes_sent, r + l.bytes_received))
    }

    /// Ends the job on every node.
    /// Ends the job on every node; returns the audit head each node that keeps a log answered
    /// with (after recording the run).
    pub fn finish(&mut self) -> Result<Vec<(String, v1::AuditHead)>, SplitError> {
        let deadline = self.deadline;
        let replies = self.runtime.block_on(try_join_all(
            self.links
                .iter_mut()
                .map(|l| l.call(Command::Finish(v1::Empty {}), deadline)),
        ))?;
        Ok(self
            .links
            .iter()
            .zip(replies)
            .filter_map(|(link, reply)| match reply {
                Reply::AuditHead(head) => Some((link.name.clone(), head)),
                _ => None,
            })
            .collect())
    }

    fn call_owner(&mut self, body: Command) -> Result<Reply, SplitError> {
        let deadline = self.deadline;
        let link = &mut self.links[self.owner];
        self.runtime.block_on(link.call(body, deadline))
    }
}

/// The runtime governance drives a job's streams on (training, alignment, prediction): the
/// connections run on a worker of their own, not on the thread that drives the job, since
/// governance's own computing between messages (the top model, an intersection over millions of
/// keys) would otherwise leave the nodes' keepalive pings unanswered, and a node drops a
/// connection silent for 20 s.
pub fn stream_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// The transport's runtime, and a stream to every node with the job opened on it (`start`'s
/// domain set per node).
pub(crate) fn open_all(
    identity: &MeshIdentity,
    nodes: &[NodeEndpoint],
    start: &v1::JobStart,
    deadline: Duration,
) -> Result<(Runtime, Vec<Link>), SplitError> {
    let runtime = stream_runtime()?;
    let links = runtime.block_on(try_join_all(nodes.iter().map(|node| {
        let mut start = start.clone();
        start.domain = node.name.clone();
        open(identity, node, start, deadline)
    })))?;
    Ok((runtime, links))
}

async fn open(
    identity: &MeshIdentity,
    node: &NodeEndpoint,
    start: v1::JobStart,
    deadline: Duration,
) -> Result<Link, SplitError> {
    let mut link = open_stream(identity, node, deadline).await?;
    match link.call(Command::Start(start), deadline).await? {
        Reply::Ready(ready) if ready.rows > MAX_PRODUCT_ROWS => {
            return Err(link.error(format!(
                "announced a product of {} rows; a node may hold at most {MAX_PRODUCT_ROWS}",
                ready.rows
            )));
        }
        Reply::Ready(ready) => {
            link.rows = ready.rows;
            link.keyed = ready.keyed;
            link.alignment_kept = ready.alignment_kept;
        }
        other => return Err(unexpected(&node.name, &other)),
    }
    Ok(link)
}

/// The most rows a node may announce for its product: governance sizes alignment buffers by
/// what a node announces, so an absurd count is refused before anything is allocated.
pub const MAX_PRODUCT_ROWS: u64 = 1 << 31;

/// Opens a stream to `node`, with nothing sent on it yet.
async fn open_stream(
    identity: &MeshIdentity,
    node: &NodeEndpoint,
    deadline: Duration,
) -> Result<Link, SplitError> {
    let failed = |message: String| SplitError::Node {
        node: node.name.clone(),
        message,
    };
    let channel = connect_with_retries(identity, node, deadline).await?;
    let (outbound, queue) = mpsc::channel(4);
    let mut client = DomainNodeClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let opened = client.train(ReceiverStream::new(queue));
    let inbound = tokio::time::timeout(deadline, opened)
        .await
        .map_err(|_| {
            failed(format!(
                "did not open the job's stream within {} s",
                deadline.as_secs_f64()
            ))
        })?
        .map_err(|status| failed(status.message().to_string()))?
        .into_inner();
    Ok(Link {
        name: node.name.clone(),
        outbound,
        inbound,
        rows: 0,
        keyed: false,
        alignment_kept: false,
        cut_width: 0,
        bytes_sent: 0,
        bytes_received: 0,
        pending_gradient: None,
        in_flight: None,
    })
}

/// Opens a channel, retrying with exponential backoff while the node is not (yet) reachable —
/// connecting is safe to repeat — for at most `deadline`. A TLS refusal is not retried.
pub async fn connect_with_retries(
    identity: &MeshIdentity,
    node: &NodeEndpoint,
    deadline: Duration,
) -> Result<Channel, SplitError> {
    let failed = |message: String| SplitError::Node {
        node: node.name.clone(),
        message,
    };
    let endpoint = Channel::from_shared(node.url.clone())
        .map_err(|e| failed(format!("bad address {}: {e}", node.url)))?
        .tls_config(identity.client_config(&node.name))
        .map_err(|e| failed(format!("TLS setup: {e}")))?
        .connect_timeout(deadline)
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::server::WINDOW_BYTES)
        .initial_connection_window_size(crate::server::WINDOW_BYTES)
        .http2_keep_alive_interval(crate::server::KEEPALIVE)
        .keep_alive_timeout(crate::server::KEEPALIVE)
        .keep_alive_while_idle(true);
    let give_up = tokio::time::Instant::now() + deadline;
    let mut wait = Duration::from_millis(50);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => {
                let reason = error_chain(&e);
                let refused = reason.contains("Connection refused");
                if !refused || tokio::time::Instant::now() + wait > give_up {
                    return Err(failed(format!("cannot connect to {}: {reason}", node.url)));
                }
                tracing::debug!("{} not reachable yet, retrying in {wait:?}", node.url);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The job's second phase: the label owner draws the partition, every domain fits its pipeline
/// on the training rows and builds its bottom.
async fn setup(
    links: &mut [Link],
    owner: usize,
    deadline: Duration,
) -> Result<Partition, SplitError> {
    let partition = match links[owner]
        .call(Command::PartitionRequest(v1::Empty {}), deadline)
        .await?
    {
        Reply::Partition(p) => p,
        other => return Err(unexpected(&links[owner].name, &other)),
    };
    try_join_all(links.iter_mut().map(|link| {
        let body = Command::Partition(partition.clone());
        async move {
            match link.call(body, deadline).await? {
                Reply::Ready(ready) => {
                    link.cut_width = ready.cut_width;
                    Ok(())
                }
                other => Err(unexpected(&link.name, &other)),
            }
        }
    }))
    .await?;
    Ok(Partition {
        train: partition.train,
        valid: partition.valid,
        test: partition.test,
    })
}

/// Every domain takes the rows alignment run `id` found for its (unchanged) product: the same
/// intersection, without computing it again. Each must find the `intersection` entities that run
/// found.
async fn reuse_alignment(
    links: &mut [Link],
    id: &str,
    intersection: usize,
    deadline: Duration,
) -> Result<AlignmentSummary, SplitError> {
    try_join_all(links.iter_mut().map(|link| async move {
        match link
            .call(Command::ReuseAlignment(v1::Empty {}), deadline)
            .await?
        {
            Reply::Aligned(aligned) if aligned.rows == intersection as u64 => Ok(()),
            Reply::Aligned(aligned) => Err(link.error(format!(
                "kept {} rows of alignment run `{id}`, which found {intersection} entities",
                aligned.rows
            ))),
            other => Err(unexpected(&link.name, &other)),
        }
    }))
    .await?;
    let products = links
        .iter()
        .map(|l| ProductRows {
            domain: l.name.clone(),
            rows: l.rows as usize,
        })
        .collect();
    tracing::info!(
        "aligned as alignment run `{id}` found: {intersection} entities common to all {} domains (every product unchanged since)",
        links.len()
    );
    Ok(AlignmentSummary {
        method: AlignmentMethod::PrivateSetIntersection,
        protocol: None,
        products,
        intersection,
        kept_from: Some(id.to_string()),
    })
}

/// The alignment phase. Products with key columns are aligned by private set intersection
/// under `protocol`, with governance relaying every message; products without key columns must
/// have the same number of rows.
async fn align(
    links: &mut [Link],
    protocol: PsiProtocol,
    deadline: Duration,
) -> Result<AlignmentSummary, SplitError> {
    let products: Vec<ProductRows> = links
        .iter()
        .map(|l| ProductRows {
            domain: l.name.clone(),
            rows: l.rows as usize,
        })
        .collect();
    let keyed: Vec<bool> = links.iter().map(|l| l.keyed).collect();
    if alignment_method(&products, &keyed)? == AlignmentMethod::Positional {
        return Ok(AlignmentSummary {
            kept_from: None,
            method: AlignmentMethod::Positional,
            protocol: None,
            intersection: links.first().map_or(0, |l| l.rows as usize),
            products,
        });
    }
    let intersection = match protocol {
        PsiProtocol::Ecdh => align_ecdh(links, deadline).await?,
        PsiProtocol::Kkrt => align_kkrt(links, deadline).await?,
    };
    let summary = AlignmentSummary {
        kept_from: None,
        method: AlignmentMethod::PrivateSetIntersection,
        protocol: Some(protocol),
        products,
        intersection,
    };
    check_intersection(summary.intersection, &summary.products)?;
    tracing::info!(
        "aligned by private set intersection ({protocol}): {} entities common to all {} domains",
        summary.intersection,
        links.len()
    );
    Ok(summary)
}

/// The ECDH ring: every domain sends its blinded list; in round r the list of domain p goes to
/// domain p + r (mod N) to be blinded again; after N - 1 rounds every list is blinded by all N
/// secrets, and governance tells each domain which positions of its list are in every list.
/// Returns the intersection's size.
async fn align_ecdh(links: &mut [Link], deadline: Duration) -> Result<usize, SplitError> {
    let mut lists = try_join_all(links.iter_mut().map(|link| link.blinded_list(deadline))).await?;
    let n = links.len();
    for round in 1..n {
        // Link i blinds the list of domain i - round.
        let reblinded = try_join_all(links.iter_mut().enumerate().map(|(i, link)| {
            let list = &lists[(i + n - round) % n];
            link.reblind(list, deadline)
        }))
        .await?;
        for (i, list) in reblinded.into_iter().enumerate() {
            lists[(i + n - round) % n] = list;
        }
    }
    for (link, list) in links.iter().zip(&lists) {
        if list.len() != link.rows as usize * fedmesh_psi::POINT_BYTES {
            return Err(link.error(format!(
                "its list came back with {} points for {} keys",
                list.len() / fedmesh_psi::POINT_BYTES,
                link.rows
            )));
        }
    }
    let membership = fedmesh_psi::Membership::of(&lists);
    drop(lists);
    let size = membership.size as u64;
    try_join_all(
        links
            .iter_mut()
            .zip(membership.members)
            .map(|(link, members)| link.send_members(members, size, deadline)),
    )
    .await?;
    Ok(membership.size)
}

/// KKRT: the domain with the fewest rows receives, and runs the two-party protocol with every
/// other domain in turn, each run over its keys still matched; governance relays each run's
/// messages between the two (see `fedmesh_psi::kkrt`). At the end the receiver hands governance
/// one bitmap per sender over the values that sender sent — positions in lists of
/// pseudo-random values, which name no key — and each sender reads its rows from its bitmap.
/// Returns the intersection's size.
async fn align_kkrt(links: &mut [Link], deadline: Duration) -> Result<usize, SplitError> {
    use fedmesh_psi::kkrt;
    let sizes: Vec<usize> = links.iter().map(|l| l.rows as usize).collect();
    let names: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    let r = kkrt::receiver_of(&sizes);
    let senders: Vec<usize> = (0..links.len()).filter(|&s| s != r).collect();
    let mut matched = sizes[r];
    for &s in &senders {
        let (receiver, sender) = pair(links, r, s);
        matched = kkrt_run(receiver, sender, matched, deadline).await?;
    }
    // The receiver's bitmaps, one per sender in run order, then its own row count.
    let receiver = &mut links[r];
    receiver.send(Command::KkrtFinish(v1::Empty {})).await?;
    let mut bitmaps = Vec::with_capacity(senders.len());
    for &s in &senders {
        let expected = kkrt::bitmap_bytes(sizes[s]);
        let bits = receiver
            .collect_chunks(expected, members, deadline, || {
                format!(
                    "sent a membership of more than {expected} bytes for `{}`'s values",
                    names[s]
                )
            })
            .await?;
        if bits.len() != expected {
            return Err(receiver.error(format!(
                "sent a membership of {} bytes for `{}`'s values, not {expected}",
                bits.len(),
                names[s]
            )));
        }
        // One value of each sender marked per common key: no more, no fewer, and no bit past
        // the sender's values.
        let marked: u64 = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        let values = 3 * sizes[s];
        let padding = match (values % 8, bits.last()) {
            (0, _) | (_, None) => 0,
            (used, Some(last)) => last >> used,
        };
        if marked != matched as u64 || padding != 0 {
            return Err(receiver.error(format!(
                "marked {marked} of `{}`'s values, but {matched} keys are common to all domains",
                names[s]
            )));
        }
        bitmaps.push(bits);
    }
    match receiver.receive(deadline).await? {
        Reply::Aligned(aligned) if aligned.rows == matched as u64 => receiver.rows = aligned.rows,
        Reply::Aligned(aligned) => {
            return Err(receiver.error(format!(
                "aligned {} rows, but its last run matched {matched} keys",
                aligned.rows
            )));
        }
        other => return Err(unexpected(&receiver.name, &other)),
    }
    let size = matched as u64;
    try_join_all(
        links
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| *i != r)
            .zip(bitmaps)
            .map(|((_, link), bits)| link.send_members(bits, size, deadline)),
    )
    .await?;
    Ok(matched)
}

/// Takes a streamed answer's chunk out of a reply: its bytes and last mark, or the reply back
/// when it is no such chunk.
type ChunkOf = fn(Reply) -> Result<(Vec<u8>, bool), Reply>;

/// A chunk of blinded points: its bytes and last mark.
fn points(reply: Reply) -> Result<(Vec<u8>, bool), Reply> {
    match reply {
        Reply::Points(chunk) => Ok((chunk.points, chunk.last)),
        other => Err(other),
    }
}

/// A chunk of a membership bitmap: its bytes and last mark.
fn members(reply: Reply) -> Result<(Vec<u8>, bool), Reply> {
    match reply {
        Reply::Members(chunk) => Ok((chunk.bits, chunk.last)),
        other => Err(other),
    }
}

/// A node that streams an answer in chunks must make progress: an empty chunk is only ever the
/// one chunk of an empty answer.
const EMPTY_CHUNK: &str = "sent an empty chunk that is not the last: an answer never ends that way";

/// Two distinct links, both mutable.
fn pair(links: &mut [Link], a: usize, b: usize) -> (&mut Link, &mut Link) {
    assert_ne!(a, b, "two distinct links");
    if a < b {
        let (left, right) = links.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = links.split_at_mut(a);
        (&mut right[0], &mut left[b])
    }
}

/// One two-party KKRT run, relayed: the receiver's keys still matched (`candidates`) against
/// the sender's. Returns how many of them the sender holds too.
async fn kkrt_run(
    receiver: &mut Link,
    sender: &mut Link,
    candidates: usize,
    deadline: Duration,
) -> Result<usize, SplitError> {
    use fedmesh_psi::kkrt;
    let setup = match receiver
        .call(Command::KkrtReceive(v1::Empty {}), deadline)
        .await?
    {
        Reply::KkrtReceiverSetup(setup) => setup,
        other => return Err(unexpected(&receiver.name, &other)),
    };
    let bins = kkrt::bins_for(candidates);
    if setup.bins != bins {
        return Err(receiver.error(format!(
            "opened a run of {} bins over {candidates} keys, which take {bins}",
            setup.bins
        )));
    }
    let answer = match sender.call(Command::KkrtSend(setup), deadline).await? {
        Reply::KkrtSenderSetup(answer) => answer,
        other => return Err(unexpected(&sender.name, &other)),
    };
    // The extension, receiver to sender, chunk by chunk: governance holds a few at a time.
    receiver.send(Command::KkrtSenderSetup(answer)).await?;
    let mut next_bin = 0;
    loop {
        match receiver.receive(deadline).await? {
            Reply::KkrtColumns(chunk) => {
                let expected = kkrt::chunk_bytes(next_bin, bins);
                if chunk.first_bin != next_bin || Some(chunk.columns.len()) != expected {
                    return Err(receiver.error(format!(
                        "sent an extension chunk from bin {} of {} bytes where bin {next_bin} of {bins} was due",
                        chunk.first_bin,
                        chunk.columns.len()
                    )));
                }
                next_bin += (chunk.columns.len() / kkrt::CODE_BITS * 8) as u64;
                let last = chunk.last;
                if last != (next_bin == bins) {
                    return Err(receiver.error(format!(
                        "marked its extension's end at bin {next_bin} of {bins}"
                    )));
                }
                sender.send(Command::KkrtColumns(chunk)).await?;
                if last {
                    break;
                }
            }
            other => return Err(unexpected(&receiver.name, &other)),
        }
    }
    // The sender's values, sender to receiver, chunk by chunk.
    let expected = sender.rows as usize * 3 * kkrt::VALUE_BYTES;
    let mut relayed = 0;
    loop {
        match sender.receive(deadline).await? {
            Reply::KkrtValues(chunk) => {
                if chunk.values.is_empty() && !chunk.last {
                    return Err(sender.error(EMPTY_CHUNK.into()));
                }
                relayed += chunk.values.len();
                if relayed > expected || (chunk.last && relayed != expected) {
                    return Err(sender.error(format!(
                        "sent {relayed} bytes of values for its {} keys, which take {expected}",
                        sender.rows
                    )));
                }
                let last = chunk.last;
                receiver.send(Command::KkrtValues(chunk)).await?;
                if last {
                    break;
                }
            }
            other => return Err(unexpected(&sender.name, &other)),
        }
    }
    match receiver.receive(deadline).await? {
        Reply::KkrtMatched(m) if m.keys as usize <= candidates => Ok(m.keys as usize),
        Reply::KkrtMatched(m) => Err(receiver.error(format!(
            "matched {} keys of the {candidates} it ran with",
            m.keys
        ))),
        other => Err(unexpected(&receiver.name, &other)),
    }
}

impl Link {
    /// Asks the domain for its blinded list and collects it, chunk by chunk.
    async fn blinded_list(&mut self, deadline: Duration) -> Result<Vec<u8>, SplitError> {
        self.send(Command::Align(v1::Empty {})).await?;
        let announced = self.rows as usize * fedmesh_psi::POINT_BYTES;
        let rows = self.rows;
        self.collect_chunks(announced, points, deadline, || {
            format!("sent more blinded keys than the {rows} rows it announced")
        })
        .await
    }

    /// Collects an answer the node streams in chunks (each taken out of its reply by `chunk`),
    /// grown as chunks arrive, never past `cap` bytes: more is refused, saying what the node
    /// did (`too_long`).
    async fn collect_chunks(
        &mut self,
        cap: usize,
        chunk: ChunkOf,
        deadline: Duration,
        too_long: impl Fn() -> String,
    ) -> Result<Vec<u8>, SplitError> {
        let mut bytes = Vec::with_capacity(cap.min(64 << 20));
        loop {
            let (part, last) = chunk(self.receive(deadline).await?)
                .map_err(|other| unexpected(&self.name, &other))?;
            if part.is_empty() && !last {
                return Err(self.error(EMPTY_CHUNK.into()));
            }
            if bytes.len() + part.len() > cap {
                return Err(self.error(too_long()));
            }
            bytes.extend_from_slice(&part);
            if last {
                return Ok(bytes);
            }
        }
    }

    /// Has the domain blind `list` (another domain's) again: chunks go out while blinded ones
    /// come back, so the domain always has the next chunk at hand.
    async fn reblind(&mut self, list: &[u8], deadline: Duration) -> Result<Vec<u8>, SplitError> {
        let name = self.name.clone();
        let closed = || SplitError::Node {
            node: name.clone(),
            message: "the stream to the node is closed".into(),
        };
        let outbound = self.outbound.clone();
        let mut sent = 0u64;
        let sending = async {
            let size = fedmesh_psi::CHUNK_POINTS * fedmesh_psi::POINT_BYTES;
            for (range, last) in fedmesh_psi::chunks(list.len(), size) {
                let message = GovernanceMessage {
                    body: Some(Command::Reblind(v1::PointChunk {
                        points: list[range].to_vec(),
                        last,
                    })),
                };
                sent += message.encoded_len() as u64;
                outbound.send(message).await.map_err(|_| closed())?;
            }
            Ok::<(), SplitError>(())
        };
        let receiving = self.collect_chunks(list.len(), points, deadline, || {
            format!(
                "sent back more than the {} bytes of the list it blinds",
                list.len()
            )
        });
        let ((), out) = tokio::try_join!(sending, receiving)?;
        self.bytes_sent += sent;
        if out.len() != list.len() {
            return Err(self.error(format!(
                "sent back {} bytes for a list of {}",
                out.len(),
                list.len()
            )));
        }
        Ok(out)
    }

    /// Tells the domain which positions of its list are in the intersection and waits for its
    /// aligned row count.
    async fn send_members(
        &mut self,
        members: Vec<u8>,
        size: u64,
        deadline: Duration,
    ) -> Result<(), SplitError> {
        for (range, last) in fedmesh_psi::chunks(members.len(), 1 << 20) {
            self.send(Command::Members(v1::MemberChunk {
                bits: members[range].to_vec(),
                last,
            }))
            .await?;
        }
        match self.receive(deadline).await? {
            Reply::Aligned(aligned) if aligned.rows == size => {
                self.rows = aligned.rows;
                Ok(())
            }
            Reply::Aligned(aligned) => Err(self.error(format!(
                "aligned {} rows, but {size} entities are common to all domains",
                aligned.rows
            ))),
            other => Err(unexpected(&self.name, &other)),
        }
    }
}

impl Link {
    /// Recommendation jobs: sends customer or product `body` (the entities sales named, or each
    /// example's entity) and waits for a `ready` that holds `rows` rows, `what` naming them.
    async fn ready_with(
        &mut self,
        body: Command,
        rows: usize,
        what: &str,
        deadline: Duration,
    ) -> Result<v1::Ready, SplitError> {
        match self.call(body, deadline).await? {
            Reply::Ready(ready) if ready.rows as usize == rows => Ok(ready),
            Reply::Ready(ready) => {
                Err(self.error(format!("holds {} rows for {rows} {what}", ready.rows)))
            }
            other => Err(unexpected(&self.name, &other)),
        }
    }

    /// Recommendation jobs: sends customer or product the entities the examples will name,
    /// and waits for its bottom.
    async fn look_up(
        &mut self,
        entities: v1::Entities,
        deadline: Duration,
    ) -> Result<(), SplitError> {
        let named = entities.users.len() + entities.items.len();
        let body = Command::Entities(entities);
        let ready = self
            .ready_with(body, named, "entities sales named", deadline)
            .await?;
        self.cut_width = ready.cut_width;
        Ok(())
    }

    /// Recommendation jobs: sends customer or product each current example's entity, and
    /// waits until it holds their rows.
    async fn take_examples(
        &mut self,
        entities: Vec<u32>,
        deadline: Duration,
    ) -> Result<(), SplitError> {
        let count = entities.len();
        let body = Command::ExampleEntities(v1::EntityRows { entities });
        self.ready_with(body, count, "examples", deadline).await?;
        Ok(())
    }
}

/// The links of domains that contribute a bottom, in domain order.
fn bottom_links<'a>(
    links: &'a mut [Link],
    bottoms: &'a [usize],
) -> impl Iterator<Item = &'a mut Link> {
    links
        .iter_mut()
        .enumerate()
        .filter(move |(i, _)| bottoms.contains(i))
        .map(|(_, link)| link)
}

/// An error with its causes, for messages (TLS failures hide the reason in the chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        // Wrapped errors often repeat their cause's text.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Transport for GrpcTransport {
    fn forward(&mut self, plan: &BatchPlan) -> Result<Vec<CutActivation>, SplitError> {
        let deadline = self.deadline;
        let wire = plan_to_wire(plan);
        let calls = bottom_links(&mut self.links, &self.bottoms).map(|link| {
            let wire = wire.clone();
            let rows = wire.rows.len();
            async move {
                // The plan may have gone out already, with the last step's gradient.
                let reply = match link.in_flight.take() {
                    Some(sent) if sent == wire => link.receive(deadline).await?,
                    Some(_) => {
                        return Err(link
                            .error("governance asked for another plan than it announced".into()));
                    }
                    None => link.call(Command::Plan(wire), deadline).await?,
                };
                match reply {
                    Reply::Activation(tensor) => check_shape(
                        &link.name,
                        "activation",
                        tensor_from_wire(Some(&tensor))?,
                        rows,
                        link.cut_width as usize,
                    ),
                    other => Err(unexpected(&link.name, &other)),
                }
            }
        });
        self.runtime.block_on(try_join_all(calls))
    }

    fn backward(
        &mut self,
        gradients: Vec<CutLayerGradient>,
        next: Option<&BatchPlan>,
    ) -> Result<(), SplitError> {
        check_one_per_domain(gradients.len(), self.bottoms.len())?;
        let encoding = self.encoding;
        let Some(next) = next else {
            // Held back: each gradient travels with its domain's next message.
            for (link, gradient) in bottom_links(&mut self.links, &self.bottoms).zip(gradients) {
                link.pending_gradient = Some(tensor_to_wire(&gradient, encoding));
            }
            return Ok(());
        };
        // The gradient and the next plan in one message, sent now: each domain steps and
        // computes its next activation while governance steps its own parts.
        let next = plan_to_wire(next);
        let sends = bottom_links(&mut self.links, &self.bottoms)
            .zip(gradients)
            .map(|(link, gradient)| {
                let body = Command::Step(v1::Step {
                    gradient: Some(tensor_to_wire(&gradient, encoding)),
                    plan: Some(next.clone()),
                });
                link.in_flight = Some(next.clone());
                link.send(body)
            });
        self.runtime.block_on(async {
            try_join_all(sends).await?;
            // The streams' connection tasks run only while this thread drives the runtime: let
            // them write the steps out now, so the domains work while governance takes its own
            // step rather than after it.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            Ok::<_, SplitError>(())
        })?;
        Ok(())
    }

    fn head_train(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<HeadStep, SplitError> {
        let (rows, cols) = (tower_output.rows, tower_output.cols);
        let body = Command::HeadTrain(v1::HeadInput {
            plan: Some(plan_to_wire(plan)),
            tower_output: Some(tensor_to_wire(&tower_output, self.encoding)),
        });
        match self.call_owner(body)? {
            Reply::HeadStep(step) if !step.loss.is_finite() => Err(SplitError::Node {
                node: self.links[self.owner].name.clone(),
                message: "sent a loss that is not finite: refused".into(),
            }),
            Reply::HeadStep(step) => Ok(HeadStep {
                loss: step.loss,
                gradient: check_shape(
                    &self.links[self.owner].name,
                    "head gradient",
                    tensor_from_wire(step.gradient.as_ref())?,
                    rows,
                    cols,
                )?,
            }),
            other => Err(unexpected(&self.links[self.owner].name, &other)),
        }
    }

    fn head_eval(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<(), SplitError> {
        let body = Command::HeadEval(v1::HeadInput {
            plan: Some(plan_to_wire(plan)),
            tower_output: Some(tensor_to_wire(&tower_output, self.encoding)),
        });
        match self.call_owner(body)? {
            Reply::Ack(_) => Ok(()),
            other => Err(unexpected(&self.links[self.owner].name, &other)),
        }
    }

    fn head_report(&mut self) -> Result<EvaluationReport, SplitError> {
        match self.call_owner(Command::Report(v1::Empty {}))? {
            Reply::ReportJson(json) => serde_json::from_str(&json).map_err(|e| SplitError::Node {
                node: self.links[self.owner].name.clone(),
                message: format!("sent a malformed report: {e}"),
            }),
            other => Err(unexpected(&self.links[self.owner].name, &other)),
        }
    }

    fn shared_labels(&mut self) -> Result<Targets, SplitError> {
        match self.call_owner(Command::Labels(v1::Empty {}))? {
            Reply::Labels(labels) => Ok(labels_from_wire(labels)),
            other => Err(unexpected(&self.links[self.owner].name, &other)),
        }
    }

    fn save_parts(&mut self, _dir: &Path) -> Result<Vec<PathBuf>, SplitError> {
        let deadline = self.deadline;
        let replies = self.runtime.block_on(try_join_all(
            self.links
                .iter_mut()
                .map(|l| l.call(Command::Save(v1::Empty {}), deadline)),
        ))?;
        Ok(replies
            .into_iter()
            .flat_map(|r| match r {
                Reply::Saved(saved) => saved.parts,
                _ => Vec::new(),
            })
            .map(PathBuf::from)
            .collect())
    }

    fn checkpoint(&mut self) -> Result<(), SplitError> {
        self.call_every(Command::Checkpoint(v1::Empty {}))
    }

    fn restore(&mut self) -> Result<(), SplitError> {
        self.call_every(Command::Restore(v1::Empty {}))
    }
}

impl GrpcTransport {
    /// Sends `body` to every party and waits for each one's `ack`.
    fn call_every(&mut self, body: Command) -> Result<(), SplitError> {
        let deadline = self.deadline;
        let calls = self.links.iter_mut().map(|link| {
            let body = body.clone();
            async move {
                match link.call(body, deadline).await? {
                    Reply::Ack(_) => Ok(()),
                    other => Err(unexpected(&link.name, &other)),
                }
            }
        });
        self.runtime.block_on(try_join_all(calls))?;
        Ok(())
    }
}

impl NcfTransport for GrpcTransport {
    fn cut_width(&self) -> usize {
        GrpcTransport::cut_width(self)
    }

    /// Sales draws the examples and sends each one's user and item by position; governance
    /// forwards the users to customer and the items to product.
    fn examples(&mut self, pass: ExamplePass) -> Result<usize, SplitError> {
        let deadline = self.deadline;
        let (pass, user) = match pass {
            ExamplePass::Training => (v1::examples_request::Pass::Train, String::new()),
            ExamplePass::Test => (v1::examples_request::Pass::Test, String::new()),
            ExamplePass::Validation => (v1::examples_request::Pass::Validation, String::new()),
            ExamplePass::Candidates(user) => (v1::examples_request::Pass::Candidates, user),
        };
        let request = Command::ExamplesRequest(v1::ExamplesRequest {
            pass: pass as i32,
            user,
        });
        let [sales, customer, product] = &mut self.links[..] else {
            return Err(SplitError::refused(
                "governance",
                "a recommendation job has three domains: sales, customer, product",
            ));
        };
        self.runtime.block_on(async {
            let examples = match sales.call(request, deadline).await? {
                Reply::Examples(examples) if examples.users.len() == examples.items.len() => {
                    examples
                }
                Reply::Examples(examples) => {
                    return Err(sales.error(format!(
                        "sent {} users for {} items",
                        examples.users.len(),
                        examples.items.len()
                    )));
                }
                other => return Err(unexpected(&sales.name, &other)),
            };
            let count = examples.users.len();
            tokio::try_join!(
                customer.take_examples(examples.users, deadline),
                product.take_examples(examples.items, deadline)
            )?;
            Ok(count)
        })
    }

    fn head_ranking(&mut self) -> Result<RankingMetrics, SplitError> {
        match self.call_owner(Command::Rank(v1::Empty {}))? {
            Reply::ReportJson(json) => serde_json::from_str(&json).map_err(|e| SplitError::Node {
                node: self.links[self.owner].name.clone(),
                message: format!("sent a malformed ranking: {e}"),
            }),
            other => Err(unexpected(&self.links[self.owner].name, &other)),
        }
    }

    fn top_k(
        &mut self,
        k: usize,
        scores: Option<Vec<f32>>,
    ) -> Result<Vec<(String, f32)>, SplitError> {
        let request = v1::TopK {
            k: k as u32,
            scores: scores.unwrap_or_default(),
        };
        let owner = self.links[self.owner].name.clone();
        match self.call_owner(Command::TopK(request))? {
            Reply::Ranked(ranked)
                if ranked.items.len() == ranked.scores.len() && ranked.items.len() <= k =>
            {
                Ok(ranked.items.into_iter().zip(ranked.scores).collect())
            }
            Reply::Ranked(ranked) => Err(SplitError::Node {
                node: owner,
                message: format!(
                    "ranked {} items with {} scores when asked for {k}",
                    ranked.items.len(),
                    ranked.scores.len()
                ),
            }),
            other => Err(unexpected(&owner, &other)),
        }
    }
}
