//! Private set intersection: aligning the rows of the domains' data products without any domain
//! revealing the keys the others lack (KKRT with three or more domains tells its receiver a
//! little more; see [`kkrt::ReceiverChain`]).
//!
//! ECDH-PSI on ristretto255, for N ≥ 2 parties (semi-honest). Every party shuffles its keys,
//! hashes each to the group with SHA-512 and raises it to a secret scalar of its own. The
//! blinded list then visits every other party in ring order, each raising every point to its
//! own scalar without changing the order, and ends at the coordinator (governance) blinded by
//! all N scalars. Exponentiation commutes, so a key every party holds ends up as the same point
//! in every list, and nobody can undo the blinding alone. The coordinator finds the points
//! present in all N lists and tells each party which positions of its (shuffled) list they
//! hold; each party maps the positions back to its rows and orders them by key, which every
//! party knows for the rows of the intersection: row k is then the same entity everywhere, with
//! no further message. See `docs/psi.md` for what each party learns.
//!
//! [`Party`] is one domain's share of the computation, batched over all cores (rayon);
//! [`Membership`] is the coordinator's; [`align`] runs the whole protocol in one process,
//! message for message, for tests and benchmarks. Lists travel as compressed points, 32 bytes
//! each, in chunks of at most [`CHUNK_POINTS`].

pub mod kkrt;

use std::collections::HashMap;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::{Rng, seq::SliceRandom};
use rayon::prelude::*;
use sha2::Sha512;

/// Bytes of one compressed ristretto255 point, as points travel.
pub const POINT_BYTES: usize = 32;

/// Points per message: 2 MiB, well under gRPC's 4 MiB limit, so that a list of 10 million keys
/// travels as 153 messages, not as one.
pub const CHUNK_POINTS: usize = 1 << 16;

/// The ranges of a list of `len` items sent in chunks of at most `size`, each with whether it
/// is the last: at least one, so that even an empty list has a chunk to mark as the last.
pub fn chunks(len: usize, size: usize) -> impl Iterator<Item = (std::ops::Range<usize>, bool)> {
    let count = len.div_ceil(size).max(1);
    (0..count).map(move |i| (i * size..((i + 1) * size).min(len), i + 1 == count))
}

/// Points converted per batch: compressing a batch shares one field inversion.
const BATCH: usize = 512;

/// Separates fedmesh's hashes to the group from any other use of the same keys.
const DOMAIN_SEPARATOR: &[u8] = b"fedmesh-psi-v1 ristretto255 SHA-512";

/// Errors of private set intersection.
#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    #[error("data product `{product}`, key column `{column}`, row {row}: the key is empty")]
    EmptyKey {
        product: String,
        column: String,
        row: usize,
    },
    #[error(
        "data product `{product}`, key column `{column}`, row {row}: the key already appears in row {first}; keys must be unique to align rows"
    )]
    // The key itself stays out of the message: a node's refusal reaches governance.
    DuplicateKey {
        product: String,
        column: String,
        row: usize,
        first: usize,
    },
    #[error("point {index} of a blinded list from {party} is not a valid ristretto255 point")]
    InvalidPoint { party: String, index: usize },
    #[error(
        "a blinded list from {party} holds {bytes} bytes, not a whole number of 32-byte points"
    )]
    PartialPoint { party: String, bytes: usize },
    #[error(
        "the coordinator's answer covers {got} positions of a list of {expected}: it is not an answer to this party's list"
    )]
    MembershipSize { expected: usize, got: usize },
    #[error("private set intersection refused a message: {0}")]
    Protocol(String),
}

/// Refuses a key column with an empty or a repeated key, naming the first offending row
/// (1-based, as in the product's data).
pub fn check_keys(product: &str, column: &str, keys: &[String]) -> Result<(), PsiError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        if key.is_empty() {
            return Err(PsiError::EmptyKey {
                product: product.into(),
                column: column.into(),
                row: i + 1,
            });
        }
        if let Some(first) = seen.insert(key, i + 1) {
            return Err(PsiError::DuplicateKey {
                product: product.into(),
                column: column.into(),
                row: i + 1,
                first,
            });
        }
    }
    Ok(())
}

/// One party's share of an alignment run: its secret exponent and the order in which it sent
/// its rows.
pub struct Party {
    /// Half the party's secret scalar: points are multiplied by it and then doubled as they are
    /// compressed in batches, which costs one shared inversion per batch instead of one each.
    half_secret: Scalar,
    /// `order[i]` is the row whose key is point `i` of the party's list.
    order: Vec<u32>,
}

impl Party {
    /// Draws a fresh secret, and a fresh order for the party's `rows` keys.
    pub fn new(rows: usize, rng: &mut impl Rng) -> Self {
        let mut wide = [0u8; 64];
        rng.fill(&mut wide[..]);
        let secret = Scalar::from_bytes_mod_order_wide(&wide);
        let mut order: Vec<u32> = (0..rows as u32).collect();
        order.shuffle(rng);
        Self {
            half_secret: secret * Scalar::from(2u64).invert(),
            order,
        }
    }

    /// Positions `positions` of the party's list: `H(key)^secret` for the keys of those rows
    /// in the party's order. The list is what the party sends, chunk by chunk.
    pub fn blind(&self, keys: &[String], positions: std::ops::Range<usize>) -> Vec<u8> {
        let rows = &self.order[positions];
        let mut list = vec![0u8; rows.len() * POINT_BYTES];
        list.par_chunks_mut(BATCH * POINT_BYTES)
            .zip(rows.par_chunks(BATCH))
            .for_each(|(out, rows)| {
                let points: Vec<RistrettoPoint> = rows
                    .iter()
                    .map(|&row| hash_to_group(&keys[row as usize]) * self.half_secret)
                    .collect();
                write_doubled(&points, out);
            });
        list
    }

    /// How many keys the party holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// `point^secret` for each point of another party's list (or a chunk of it), in order.
    /// `sender` names where the list came from in errors.
    pub fn reblind(&self, points: &[u8], sender: &str) -> Result<Vec<u8>, PsiError> {
        if !points.len().is_multiple_of(POINT_BYTES) {
            return Err(PsiError::PartialPoint {
                party: sender.to_string(),
                bytes: points.len(),
            });
        }
        let mut out = vec![0u8; points.len()];
        out.par_chunks_mut(BATCH * POINT_BYTES)
            .zip(points.par_chunks(BATCH * POINT_BYTES))
            .enumerate()
            .try_for_each(|(batch, (out, input))| {
                let points = input
                    .chunks_exact(POINT_BYTES)
                    .enumerate()
                    .map(|(i, bytes)| {
                        let bytes: [u8; POINT_BYTES] = bytes.try_into().expect("exact chunks");
                        CompressedRistretto(bytes)
                            .decompress()
                            .map(|p| p * self.half_secret)
                            .ok_or_else(|| PsiError::InvalidPoint {
                                party: sender.to_string(),
                                index: batch * BATCH + i,
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                write_doubled(&points, out);
                Ok(())
            })?;
        Ok(out)
    }

    /// The party's rows in the intersection, in the agreed order, from the coordinator's
    /// answer (`members`: one bit per point of the list the party sent, see [`Membership`]).
    /// The agreed order is the order of the keys: every party knows the keys of the
    /// intersection's rows, so no further message is needed to agree on it.
    pub fn rows(&self, members: &[u8], keys: &[String]) -> Result<Vec<u32>, PsiError> {
        marked_rows(&self.order, members, keys)
    }
}

/// The rows `members` marks (bit `i` for the row at position `i` of `order`, the list a party
/// sent), in the agreed order: by key, each row once.
pub(crate) fn marked_rows<S: AsRef<str> + Sync>(
    order: &[u32],
    members: &[u8],
    keys: &[S],
) -> Result<Vec<u32>, PsiError> {
    if members.len() != order.len().div_ceil(8) {
        return Err(PsiError::MembershipSize {
            expected: order.len(),
            got: members.len() * 8,
        });
    }
    let rows = order
        .iter()
        .enumerate()
        .filter(|(i, _)| members[i / 8] >> (i % 8) & 1 == 1)
        .map(|(_, &row)| row)
        .collect();
    in_key_order(rows, keys)
}

/// `rows` ordered by their keys, each once: the order every party of an alignment reaches on
/// its own, since all know the keys of the intersection's rows.
pub(crate) fn in_key_order<S: AsRef<str> + Sync>(
    mut rows: Vec<u32>,
    keys: &[S],
) -> Result<Vec<u32>, PsiError> {
    if rows.iter().any(|&r| r as usize >= keys.len()) {
        return Err(PsiError::Protocol(format!(
            "a row past the party's {} keys",
            keys.len()
        )));
    }
    rows.par_sort_unstable_by(|&a, &b| keys[a as usize].as_ref().cmp(keys[b as usize].as_ref()));
    // A key marked twice (under two of KKRT's hash functions) is still one row.
    rows.dedup();
    Ok(rows)
}

fn hash_to_group(key: &str) -> RistrettoPoint {
    let mut input = Vec::with_capacity(DOMAIN_SEPARATOR.len() + key.len());
    input.extend_from_slice(DOMAIN_SEPARATOR);
    input.extend_from_slice(key.as_bytes());
    RistrettoPoint::hash_from_bytes::<Sha512>(&input)
}

/// Writes `2·P` for each point, compressed, into `out` (32 bytes each).
fn write_doubled(points: &[RistrettoPoint], out: &mut [u8]) {
    for (bytes, compressed) in out
        .chunks_exact_mut(POINT_BYTES)
        .zip(RistrettoPoint::double_and_compress_batch(points))
    {
        bytes.copy_from_slice(compressed.as_bytes());
    }
}

/// The coordinator's part: which positions of each party's fully blinded list hold a point
/// present in every list.
pub struct Membership {
    /// Per party, one bit per point of its list (bit `i % 8` of byte `i / 8`).
    pub members: Vec<Vec<u8>>,
    /// How many entities all parties share.
    pub size: usize,
}

impl Membership {
    /// Intersects the fully blinded lists (flat, 32 bytes per point; a party's keys are unique,
    /// so are its points).
    pub fn of(lists: &[Vec<u8>]) -> Self {
        let Some((first, rest)) = lists.split_first() else {
            return Self {
                members: Vec::new(),
                size: 0,
            };
        };
        // How many lists hold each point of the first list: a point of the intersection is in
        // all of them, and every other list's points matter only if the first holds them.
        let mut counts: HashMap<&[u8], usize> = first
            .chunks_exact(POINT_BYTES)
            .map(|point| (point, 1))
            .collect();
        for list in rest {
            for point in list.chunks_exact(POINT_BYTES) {
                if let Some(count) = counts.get_mut(point) {
                    *count += 1;
                }
            }
        }
        let everywhere = |point: &[u8]| counts.get(point) == Some(&lists.len());
        let members = lists
            .iter()
            .map(|list| {
                let mut bits = vec![0u8; (list.len() / POINT_BYTES).div_ceil(8)];
                for (i, point) in list.chunks_exact(POINT_BYTES).enumerate() {
                    if everywhere(point) {
                        bits[i / 8] |= 1 << (i % 8);
                    }
                }
                bits
            })
            .collect();
        let size = counts.values().filter(|&&c| c == lists.len()).count();
        Self { members, size }
    }
}

/// The rows the protocol gives each party, computed in the clear: for a process that holds
/// every party's keys anyway (a centralized baseline, a test), where secrecy protects nothing.
/// The same rows in the same order as [`align`].
pub fn align_in_the_clear(sets: &[Vec<String>]) -> Vec<Alignment> {
    let Some((first, rest)) = sets.split_first() else {
        return Vec::new();
    };
    let others: Vec<std::collections::HashSet<&String>> =
        rest.iter().map(|keys| keys.iter().collect()).collect();
    let mut common: Vec<&String> = first
        .iter()
        .filter(|key| others.iter().all(|o| o.contains(key)))
        .collect();
    common.sort_unstable();
    sets.iter()
        .map(|keys| {
            let row: HashMap<&String, u32> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k, i as u32))
                .collect();
            Alignment {
                rows: common.iter().map(|key| row[key]).collect(),
            }
        })
        .collect()
}

/// What one party learns from an alignment run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alignment {
    /// The party's rows, in the agreed order.
    pub rows: Vec<u32>,
}

/// Runs the whole protocol for `sets` (one key list per party) in this process, passing the
/// same messages the parties would send each other.
pub fn align(sets: &[Vec<String>], rng: &mut impl Rng) -> Result<Vec<Alignment>, PsiError> {
    let parties: Vec<Party> = sets
        .iter()
        .map(|keys| Party::new(keys.len(), rng))
        .collect();
    let mut lists: Vec<Vec<u8>> = parties
        .iter()
        .zip(sets)
        .map(|(party, keys)| party.blind(keys, 0..keys.len()))
        .collect();
    let n = parties.len();
    // Round r: party p's list is reblinded by party p + r, around the ring.
    for round in 1..n {
        for (owner, list) in lists.iter_mut().enumerate() {
            *list = parties[(owner + round) % n].reblind(list, &format!("party {owner}"))?;
        }
    }
    let membership = Membership::of(&lists);
    parties
        .iter()
        .zip(&membership.members)
        .zip(sets)
        .map(|((party, members), keys)| {
            Ok(Alignment {
                rows: party.rows(members, keys)?,
            })
        })
        .collect()
}
