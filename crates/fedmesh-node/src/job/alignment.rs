//! A domain's share of aligning the job's products by private set intersection, under the
//! protocol the job spec names: the ECDH ring (`fedmesh_psi::Party`) or KKRT
//! (`fedmesh_psi::kkrt`), as the receiver or as a sender.
//!
//! Every message is checked against the spec's protocol and the domain's state in the run: a
//! KKRT message in an ECDH job, a sender's message to the receiver, a second run opened before
//! the first is closed, all are refused with what was expected.

use std::sync::Arc;

use fedmesh_proto::v1;
use fedmesh_proto::v1::domain_message::Body as Reply;
use fedmesh_psi::kkrt::{self, KkrtSender, ReceiverChain, SentOrder};
use fedmesh_split::SplitError;
use fedmesh_split::job::PsiProtocol;

use super::{NodeJob, refused};

/// This domain's share of an alignment run in progress.
pub(super) enum AlignmentRun {
    /// The ECDH ring: its secret and order, and the coordinator's answer so far.
    Ecdh(fedmesh_psi::Party, Vec<u8>),
    /// KKRT's receiver: its runs with the other domains so far, and the values of the open
    /// run's sender so far.
    KkrtReceiver(ReceiverChain, Vec<u8>),
    /// KKRT's sender, while the receiver's extension arrives.
    KkrtSender(KkrtSender),
    /// KKRT's sender once its values are out: whose each value is, and the receiver's answer
    /// so far.
    KkrtSent(SentOrder, Vec<u8>),
}

/// An answer that travels as several messages, which `serve` sends one after another.
pub(super) enum Outgoing {
    /// The ECDH ring: the domain's keys, blinded a chunk at a time as it goes, `sent` of them
    /// so far.
    BlindedList { sent: usize },
    /// The receiver's extension, each chunk computed as it goes.
    Extension,
    /// The sender's values.
    Values { values: Vec<u8>, sent: usize },
    /// The receiver's bitmaps, one per sender in run order, then its aligned row count.
    Bitmaps {
        bitmaps: std::collections::VecDeque<Vec<u8>>,
        sent: usize,
        rows: u64,
    },
}

/// Bytes of values or bitmap per message.
const CHUNK_BYTES: usize = 4 << 20;

impl NodeJob {
    /// Refuses an alignment message of another protocol than the job spec's.
    fn check_protocol(&mut self, protocol: PsiProtocol) -> Result<(), SplitError> {
        let spec = self.opened()?.job.spec.alignment.protocol;
        if spec != protocol {
            return Err(refused(format!(
                "governance sent a message of the {protocol} protocol, but the job spec aligns by {spec}"
            )));
        }
        Ok(())
    }

    /// The product's keys, while it waits for alignment.
    fn unaligned_keys(&mut self) -> Result<&[String], SplitError> {
        self.opened()?.keys.as_deref().ok_or_else(|| {
            refused("this domain's product has no key column, or is aligned already")
        })
    }

    /// Answers `align`: draws this domain's secret and order for an ECDH alignment run; its
    /// blinded keys follow.
    pub(super) fn align(&mut self) -> Result<(), SplitError> {
        self.check_protocol(PsiProtocol::Ecdh)?;
        let len = self.unaligned_keys()?.len();
        let opened = self.opened()?;
        if opened.alignment.is_some() {
            return Err(refused("an alignment run is under way on this stream"));
        }
        let party = fedmesh_psi::Party::new(len, &mut rand::rng());
        opened.alignment = Some(AlignmentRun::Ecdh(party, Vec::new()));
        self.outgoing = Some(Outgoing::BlindedList { sent: 0 });
        Ok(())
    }

    /// Blinds a chunk of another domain's list again (the ECDH ring).
    pub(super) fn reblind(&mut self, chunk: v1::PointChunk) -> Result<Reply, SplitError> {
        match &self.opened()?.alignment {
            Some(AlignmentRun::Ecdh(party, _)) => Ok(Reply::Points(v1::PointChunk {
                points: party.reblind(&chunk.points, "governance (another domain's list)")?,
                last: chunk.last,
            })),
            _ => Err(refused("no ECDH alignment run was started on this stream")),
        }
    }

    /// Takes in one chunk of the coordinator's answer (the ECDH ring) or of the receiver's
    /// (a KKRT sender): which positions of the list the domain sent are in the intersection.
    /// With the last, keeps the product's rows of the intersection, ordered by key, and returns
    /// how many there are.
    pub(super) fn take_members(
        &mut self,
        chunk: v1::MemberChunk,
    ) -> Result<Option<u64>, SplitError> {
        let opened = self.opened()?;
        let (members, positions) = match &mut opened.alignment {
            Some(AlignmentRun::Ecdh(party, members)) => (members, party.len()),
            Some(AlignmentRun::KkrtSent(order, members)) => (members, order.values()),
            _ => {
                return Err(refused(
                    "no alignment run awaits its membership on this stream",
                ));
            }
        };
        if members.len() + chunk.bits.len() > positions.div_ceil(8) {
            return Err(refused(format!(
                "governance's membership runs past the {positions} positions of the list this domain sent"
            )));
        }
        members.extend_from_slice(&chunk.bits);
        if !chunk.last {
            return Ok(None);
        }
        let keys = opened.keys.as_ref().expect("alignment needs keys");
        let (rows, protocol) = match opened.alignment.take().expect("checked above") {
            AlignmentRun::Ecdh(party, members) => (party.rows(&members, keys)?, PsiProtocol::Ecdh),
            AlignmentRun::KkrtSent(order, members) => {
                (order.rows(&members, keys)?, PsiProtocol::Kkrt)
            }
            _ => unreachable!("checked above"),
        };
        self.keep_alignment(rows, protocol).map(Some)
    }

    /// Keeps the rows an alignment run found, under the job's alignment id when it has one,
    /// and takes them.
    fn keep_alignment(&mut self, rows: Vec<u32>, protocol: PsiProtocol) -> Result<u64, SplitError> {
        let alignments = self.context.alignments.clone();
        let opened = self.opened()?;
        let rows = Arc::new(rows);
        if let (false, Some(fingerprint)) = (opened.alignment_id.is_empty(), opened.fingerprint) {
            alignments.lock().unwrap_or_else(|p| p.into_inner()).keep(
                &opened.alignment_id,
                fingerprint,
                Arc::clone(&rows),
            );
        }
        self.take_aligned_rows(rows, &format!("private set intersection, {protocol}"))
    }

    /// KKRT's receiver: opens a run with the next sender, over the keys every run so far
    /// matched.
    pub(super) fn kkrt_receive(&mut self) -> Result<Reply, SplitError> {
        self.check_protocol(PsiProtocol::Kkrt)?;
        let keys = self.unaligned_keys()?.len();
        let opened = self.opened()?;
        let run = opened.alignment.get_or_insert_with(|| {
            AlignmentRun::KkrtReceiver(ReceiverChain::new(keys), Vec::new())
        });
        let AlignmentRun::KkrtReceiver(chain, _) = run else {
            return Err(refused(
                "this domain is already a sender of this alignment: it cannot receive",
            ));
        };
        let keys = opened.keys.as_ref().expect("checked above");
        let setup = chain.start_run(keys, &mut rand::rng())?;
        Ok(Reply::KkrtReceiverSetup(v1::KkrtReceiverSetup {
            base_ot: setup.base_ot.to_vec(),
            seed: setup.seed.to_vec(),
            bins: setup.bins,
        }))
    }

    /// KKRT's sender: answers the receiver's first message.
    pub(super) fn kkrt_send(&mut self, setup: v1::KkrtReceiverSetup) -> Result<Reply, SplitError> {
        self.check_protocol(PsiProtocol::Kkrt)?;
        self.unaligned_keys()?;
        let opened = self.opened()?;
        if opened.alignment.is_some() {
            return Err(refused(
                "this domain already takes part in this alignment: it cannot open a run as a sender",
            ));
        }
        let setup = kkrt::ReceiverSetup {
            base_ot: exact_bytes(&setup.base_ot, "the receiver's base OT message")?,
            seed: exact_bytes(&setup.seed, "the receiver's seed")?,
            bins: setup.bins,
        };
        let keys = opened.keys.as_ref().expect("checked above");
        let (sender, answer) = KkrtSender::new(keys, &setup, &mut rand::rng())?;
        opened.alignment = Some(AlignmentRun::KkrtSender(sender));
        Ok(Reply::KkrtSenderSetup(v1::KkrtSenderSetup {
            base_ot: answer.base_ot,
            code_key: answer.code_key.to_vec(),
        }))
    }

    fn chain(&mut self) -> Result<(&mut ReceiverChain, &mut Vec<u8>), SplitError> {
        match &mut self.opened()?.alignment {
            Some(AlignmentRun::KkrtReceiver(chain, values)) => Ok((chain, values)),
            _ => Err(refused(
                "this domain is not KKRT's receiver in this alignment",
            )),
        }
    }

    /// KKRT's receiver: takes the sender's answer; the extension follows.
    pub(super) fn kkrt_accept(&mut self, answer: v1::KkrtSenderSetup) -> Result<(), SplitError> {
        self.check_protocol(PsiProtocol::Kkrt)?;
        let answer = kkrt::SenderSetup {
            base_ot: answer.base_ot,
            code_key: exact_bytes(&answer.code_key, "the sender's code key")?,
        };
        self.chain()?.0.accept(&answer)?;
        self.outgoing = Some(Outgoing::Extension);
        Ok(())
    }

    /// KKRT's sender: takes a chunk of the extension; after the last, its values follow.
    pub(super) fn kkrt_absorb(&mut self, chunk: v1::KkrtColumns) -> Result<(), SplitError> {
        self.check_protocol(PsiProtocol::Kkrt)?;
        let opened = self.opened()?;
        let Some(AlignmentRun::KkrtSender(sender)) = &mut opened.alignment else {
            return Err(refused(
                "this domain is not a KKRT sender awaiting the extension",
            ));
        };
        sender.absorb(&kkrt::ExtensionChunk {
            first_bin: chunk.first_bin,
            columns: chunk.columns,
        })?;
        if chunk.last {
            let Some(AlignmentRun::KkrtSender(sender)) = opened.alignment.take() else {
                unreachable!("matched above")
            };
            let (values, order) = sender.finish()?;
            opened.alignment = Some(AlignmentRun::KkrtSent(order, Vec::new()));
            self.outgoing = Some(Outgoing::Values {
                values: values.values,
                sent: 0,
            });
        }
        Ok(())
    }

    /// KKRT's receiver: takes a chunk of the sender's values; the last closes the run.
    pub(super) fn kkrt_take_values(
        &mut self,
        chunk: v1::KkrtValues,
    ) -> Result<Option<Reply>, SplitError> {
        self.check_protocol(PsiProtocol::Kkrt)?;
        let (chain, values) = self.chain()?;
        values.extend_from_slice(&chunk.values);
        if !chunk.last {
            return Ok(None);
        }
        let values = kkrt::SenderValues {
            values: std::mem::take(values),
        };
        let keys = chain.take_values(&values)? as u64;
        Ok(Some(Reply::KkrtMatched(v1::KkrtMatched { keys })))
    }

    /// KKRT's receiver, after its last run: keeps its rows of the intersection; the bitmaps
    /// for the senders and its row count follow.
    pub(super) fn kkrt_finish(&mut self) -> Result<(), SplitError> {
        self.check_protocol(PsiProtocol::Kkrt)?;
        let keys = self.unaligned_keys()?.len();
        let opened = self.opened()?;
        let chain = match opened.alignment.take() {
            Some(AlignmentRun::KkrtReceiver(chain, _)) => chain,
            // A job of one domain: no run, so every row.
            None => ReceiverChain::new(keys),
            other => {
                opened.alignment = other;
                return Err(refused(
                    "this domain is not KKRT's receiver in this alignment",
                ));
            }
        };
        let keys = opened.keys.as_ref().expect("alignment needs keys");
        let (rows, bitmaps) = chain.finish(keys)?;
        let rows = self.keep_alignment(rows, PsiProtocol::Kkrt)?;
        self.outgoing = Some(Outgoing::Bitmaps {
            bitmaps: bitmaps.into(),
            sent: 0,
            rows,
        });
        Ok(())
    }

    /// The next message of an answer that travels as several, or `None` once it is all out.
    pub(super) fn next_outgoing(&mut self) -> Result<Option<Reply>, SplitError> {
        let Some(outgoing) = &mut self.outgoing else {
            return Ok(None);
        };
        let alignment = self.opened.as_mut().and_then(|o| {
            let keys = o.keys.as_deref();
            o.alignment.as_mut().map(|a| (a, keys))
        });
        // The answer's next message, and whether it is the answer's last.
        let (reply, last) = match outgoing {
            Outgoing::BlindedList { sent } => {
                let Some((AlignmentRun::Ecdh(party, _), Some(keys))) = alignment else {
                    unreachable!("blinded keys follow `align`")
                };
                let end = (*sent + fedmesh_psi::CHUNK_POINTS).min(party.len());
                let points = party.blind(keys, *sent..end);
                *sent = end;
                let last = end == party.len();
                (Reply::Points(v1::PointChunk { points, last }), last)
            }
            Outgoing::Extension => {
                let Some((AlignmentRun::KkrtReceiver(chain, _), _)) = alignment else {
                    unreachable!("the extension follows the receiver's accept")
                };
                let Some(chunk) = chain.next_chunk()? else {
                    self.outgoing = None;
                    return Ok(None);
                };
                let last = chain.extension_sent();
                let columns = v1::KkrtColumns {
                    first_bin: chunk.first_bin,
                    columns: chunk.columns,
                    last,
                };
                (Reply::KkrtColumns(columns), last)
            }
            Outgoing::Values { values, sent } => {
                let (values, last) = next_slice(values, sent);
                (Reply::KkrtValues(v1::KkrtValues { values, last }), last)
            }
            Outgoing::Bitmaps {
                bitmaps,
                sent,
                rows,
            } => match bitmaps.front() {
                Some(bits) => {
                    let (bits, last) = next_slice(bits, sent);
                    if last {
                        bitmaps.pop_front();
                        *sent = 0;
                    }
                    (Reply::Members(v1::MemberChunk { bits, last }), false)
                }
                None => (Reply::Aligned(v1::Aligned { rows: *rows }), true),
            },
        };
        if last {
            self.outgoing = None;
        }
        Ok(Some(reply))
    }
}

/// The next message's bytes of `bytes`, `sent` of which are out, and whether they are the last.
fn next_slice(bytes: &[u8], sent: &mut usize) -> (Vec<u8>, bool) {
    let end = (*sent + CHUNK_BYTES).min(bytes.len());
    let slice = bytes[*sent..end].to_vec();
    *sent = end;
    (slice, end == bytes.len())
}

/// `bytes` as exactly `N` bytes, or a refusal naming `what`.
fn exact_bytes<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], SplitError> {
    bytes
        .try_into()
        .map_err(|_| refused(format!("{what} holds {} bytes, not {N}", bytes.len())))
}
