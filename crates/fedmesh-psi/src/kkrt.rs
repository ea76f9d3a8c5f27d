//! Two-party PSI from oblivious transfer extension (Kolesnikov, Kumaresan, Rosulek, Trieu,
//! "Efficient Batched Oblivious PRF with Applications to Private Set Intersection", CCS 2016;
//! semi-honest).
//!
//! Why: the ECDH ring costs every key one elliptic-curve multiplication at every party, and
//! that is the whole of its time. Here the public-key work is 512 base OTs, whatever the number
//! of keys; each key then costs a few AES blocks and one SHA-256, so the protocol is bound by
//! memory bandwidth instead.
//!
//! The **receiver** learns which of its keys the sender also holds; the **sender** learns
//! nothing but the receiver's number of bins ([`bins_for`] its key count, so that count to
//! within 128).
//!
//! 1. The receiver cuckoo-hashes its keys into bins (three hash functions under a seed it
//!    draws; a key sits in one of its three bins) and sends the seed, the bin count and the
//!    first message of 512 base OTs (Chou–Orlandi "simplest OT" on ristretto255)
//!    ([`ReceiverSetup`]).
//! 2. The sender answers the base OTs with 512 secret choice bits `s`, and draws the key of
//!    the pseudo-random code `C` ([`SenderSetup`]).
//! 3. The OT extension, in chunks of [`CHUNK_BINS`] bins ([`ExtensionChunk`]): the receiver
//!    sends `u_j = G(k0_j) ⊕ G(k1_j) ⊕ c_j` for every column `j` (`c_j` the `j`-th bits of
//!    the code words of its bins' keys); the sender keeps `q_j = G(k_sj_j) ⊕ s_j·u_j`. Row by
//!    row, `q_i = t_i ⊕ (s ∧ C(x_i))` with `t_i` the receiver's, so
//!    `F_i(y) = H(i, q_i ⊕ (s ∧ C(y)))` is an oblivious PRF: the receiver knows it at its own
//!    `x_i` only (`H(i, t_i)`), the sender at every point.
//! 4. The sender evaluates `F` at each of its keys in each of the key's three bins and sends
//!    the values, sorted ([`SenderValues`]). A receiver's key is shared when its bin's value
//!    is among them.
//!
//! Memory is bounded by a chunk (512 columns × [`CHUNK_BINS`] bits, 4 MiB) beside each party's
//! own per-key state: the extension never holds the whole 512 × bins matrix.

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::PsiError;

/// Bits of a code word, and so base OTs: 512, as in the paper, for 128-bit security.
pub const CODE_BITS: usize = 512;
const CODE_BYTES: usize = CODE_BITS / 8;
const CODE_BLOCKS: usize = CODE_BYTES / 16;

/// Bins per message of the extension: 512 columns of 65,536 bits, 4 MiB.
pub const CHUNK_BINS: usize = 1 << 16;

/// Bytes of one value of the oblivious PRF, as the sender sends it.
pub const VALUE_BYTES: usize = 16;

/// The most bins a receiver may ask for: 2^31, for 1.6 billion keys.
pub const MAX_BINS: u64 = 1 << 31;

const HASHES: usize = 3;
const BIN_LOAD: f64 = 1.27;
const CUCKOO_EVICTIONS: usize = 2_000;
const CUCKOO_ATTEMPTS: usize = 16;
const SEPARATOR: &[u8] = b"fedmesh-psi-v1 kkrt";

/// The receiver's first message.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverSetup {
    /// `A = a·G`, the base OTs' first message (compressed ristretto255).
    pub base_ot: [u8; 32],
    /// The seed of the key digests and of the bins' hash functions.
    pub seed: [u8; 16],
    /// How many bins the receiver's keys are hashed into: a multiple of 128.
    pub bins: u64,
}

/// The sender's answer: its base OT messages and the code's key.
#[derive(Debug, Clone, PartialEq)]
pub struct SenderSetup {
    /// `B_j`, 512 compressed ristretto255 points, 32 bytes each.
    pub base_ot: Vec<u8>,
    /// The AES key of the pseudo-random code.
    pub code_key: [u8; 16],
}

/// One chunk of the OT extension: `u_j` for bins `first_bin..first_bin + len`, column after
/// column, `len / 8` bytes each.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionChunk {
    pub first_bin: u64,
    pub columns: Vec<u8>,
}

/// The sender's PRF values: for each of the three hash functions in turn, one 16-byte value
/// per sender key, sorted; `3 × 16 × keys` bytes in all. A value's position in this list is how
/// the receiver names it back (see [`SentOrder`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SenderValues {
    pub values: Vec<u8>,
}

impl SenderValues {
    /// How many keys the sender evaluated: each has one value per hash function.
    pub fn keys(&self) -> Result<usize, PsiError> {
        let per_key = HASHES * VALUE_BYTES;
        if !self.values.len().is_multiple_of(per_key) {
            return Err(refused(format!(
                "the sender's values hold {} bytes, not {HASHES} lists of whole {VALUE_BYTES}-byte values",
                self.values.len()
            )));
        }
        Ok(self.values.len() / per_key)
    }
}

/// Bytes of one membership bitmap over a sender's values: one bit per value (bit `i % 8` of
/// byte `i / 8`).
pub fn bitmap_bytes(sender_keys: usize) -> usize {
    (HASHES * sender_keys).div_ceil(8)
}

/// The sender's own record of what it sent: which of its rows each value is of, so that the
/// receiver's answer (the positions of the values that matched) names its rows of the
/// intersection without naming a key.
pub struct SentOrder {
    rows: Vec<u32>,
}

impl SentOrder {
    /// The rows whose values `members` marks (one bit per value, as [`bitmap_bytes`]), ordered
    /// by key, as every party orders the intersection.
    pub fn rows<S: AsRef<str> + Sync>(
        &self,
        members: &[u8],
        keys: &[S],
    ) -> Result<Vec<u32>, PsiError> {
        crate::marked_rows(&self.rows, members, keys)
    }

    /// How many values the sender sent (one membership bit each).
    pub fn values(&self) -> usize {
        self.rows.len()
    }
}

/// A key's 128-bit digest under the run's seed, and its three bins.
fn digest(seed: &[u8; 16], key: &str, bins: u64) -> (u128, [u64; HASHES]) {
    let hash = Sha256::new()
        .chain_update(SEPARATOR)
        .chain_update(seed)
        .chain_update(key.as_bytes())
        .finalize();
    let identity = u128::from_le_bytes(hash[..16].try_into().expect("16 bytes"));
    let mut bin = [0u64; HASHES];
    for (h, b) in bin.iter_mut().enumerate() {
        let word = u32::from_le_bytes(hash[16 + 4 * h..20 + 4 * h].try_into().expect("4 bytes"));
        // Scaled to [0, bins).
        *b = (u64::from(word) * bins) >> 32;
    }
    (identity, bin)
}

/// The code word of `(identity, hash)`: four AES blocks under the code's key. The low four
/// bits of each block say which hash function and which block, so that a key's three inputs
/// get unrelated code words.
fn code_word(cipher: &Aes128, identity: u128, hash: usize) -> [u8; CODE_BYTES] {
    let mut blocks = [GenericArray::default(); CODE_BLOCKS];
    for (j, block) in blocks.iter_mut().enumerate() {
        let input = (identity & !0xF) | ((hash as u128) << 2) | j as u128;
        *block = GenericArray::from(input.to_le_bytes());
    }
    cipher.encrypt_blocks(&mut blocks);
    let mut word = [0u8; CODE_BYTES];
    for (j, block) in blocks.iter().enumerate() {
        word[16 * j..16 * (j + 1)].copy_from_slice(block);
    }
    word
}

/// `bytes` bytes of AES-128-CTR under `seed` from block `first_block` on: the extension's PRG,
/// which can start anywhere, so that chunks need no state.
fn prg(seed: &[u8; 16], first_block: u64, bytes: usize) -> Vec<u8> {
    let cipher = Aes128::new(GenericArray::from_slice(seed));
    let mut blocks: Vec<GenericArray<u8, _>> = (0..bytes.div_ceil(16) as u64)
        .map(|i| GenericArray::from(u128::from(first_block + i).to_le_bytes()))
        .collect();
    cipher.encrypt_blocks(&mut blocks);
    let mut out: Vec<u8> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
    out.truncate(bytes);
    out
}

/// The PRF value of row `bin` of the extension: `H(bin, row)`, truncated to 16 bytes.
fn prf_value(bin: u64, row: &[u8]) -> [u8; VALUE_BYTES] {
    let hash = Sha256::new()
        .chain_update(SEPARATOR)
        .chain_update(bin.to_le_bytes())
        .chain_update(row)
        .finalize();
    hash[..VALUE_BYTES].try_into().expect("16 bytes")
}

/// The key of base OT `j` from the shared point.
fn base_ot_key(j: usize, a: &[u8; 32], b: &[u8], shared: &RistrettoPoint) -> [u8; 16] {
    let hash = Sha256::new()
        .chain_update(SEPARATOR)
        .chain_update((j as u64).to_le_bytes())
        .chain_update(a)
        .chain_update(b)
        .chain_update(shared.compress().as_bytes())
        .finalize();
    hash[..16].try_into().expect("16 bytes")
}

/// Transposes a bit matrix of `rows` rows of `cols` bits each (row-major, bit `c` of a row in
/// byte `c / 8`, least significant bit first) into `cols` rows of `rows` bits. Both are
/// multiples of 8.
pub fn transpose(matrix: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    debug_assert!(rows.is_multiple_of(8) && cols.is_multiple_of(8));
    debug_assert_eq!(matrix.len(), rows * cols / 8);
    let (row_bytes, out_row_bytes) = (cols / 8, rows / 8);
    let mut out = vec![0u8; matrix.len()];
    for r8 in 0..rows / 8 {
        for c8 in 0..row_bytes {
            // An 8 × 8 block: byte r is row 8·r8 + r, bit c of it column 8·c8 + c.
            let mut x = 0u64;
            for r in 0..8 {
                x |= (matrix[(8 * r8 + r) * row_bytes + c8] as u64) << (8 * r);
            }
            // Swap bit (r, c) with bit (c, r), at 8·r + c (Hacker's Delight, transpose8).
            let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
            x ^= t ^ (t << 7);
            let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
            x ^= t ^ (t << 14);
            let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
            x ^= t ^ (t << 28);
            for c in 0..8 {
                out[(8 * c8 + c) * out_row_bytes + r8] = (x >> (8 * c)) as u8;
            }
        }
    }
    out
}

/// The bins of a chunk starting at `first_bin` of `bins`.
fn chunk_len(first_bin: u64, bins: u64) -> usize {
    (bins - first_bin).min(CHUNK_BINS as u64) as usize
}

/// How many bins a receiver with `keys` keys hashes them into: 1.27 per key, a multiple of
/// 128 (at least 128).
pub fn bins_for(keys: usize) -> u64 {
    ((keys as f64 * BIN_LOAD).ceil() as u64)
        .max(1)
        .div_ceil(128)
        * 128
}

/// Bytes of the extension chunk that starts at `first_bin` of `bins`, or `None` past the end
/// or off a chunk's start.
pub fn chunk_bytes(first_bin: u64, bins: u64) -> Option<usize> {
    (first_bin < bins && first_bin.is_multiple_of(CHUNK_BINS as u64))
        .then(|| CODE_BITS * chunk_len(first_bin, bins) / 8)
}

fn refused(message: impl Into<String>) -> PsiError {
    PsiError::Protocol(message.into())
}

/// The receiver's side: its keys in bins, its base OT secrets, and its own PRF values.
pub struct KkrtReceiver {
    bins: u64,
    /// For each bin, the key (row) in it and by which hash function, or none.
    table: Vec<Option<(u32, u8)>>,
    identities: Vec<u128>,
    secret: Scalar,
    base_ot: [u8; 32],
    /// `(k0_j, k1_j)` once the sender has answered.
    seeds: Vec<([u8; 16], [u8; 16])>,
    code: Option<Aes128>,
    next_bin: u64,
    /// The PRF value of each occupied bin, by row: `own[row]`.
    own: Vec<[u8; VALUE_BYTES]>,
}

impl KkrtReceiver {
    /// Hashes `keys` (distinct, see [`crate::check_keys`]) into bins, and draws the base OT
    /// secret: the receiver and its first message.
    pub fn new<S: AsRef<str> + Sync>(
        keys: &[S],
        rng: &mut impl Rng,
    ) -> Result<(Self, ReceiverSetup), PsiError> {
        let bins = bins_for(keys.len());
        if bins > MAX_BINS {
            return Err(refused(format!(
                "{} keys need more than the {MAX_BINS} bins one run can hold",
                keys.len()
            )));
        }
        for _ in 0..CUCKOO_ATTEMPTS {
            let mut seed = [0u8; 16];
            rng.fill(&mut seed);
            let digests: Vec<(u128, [u64; HASHES])> = keys
                .par_iter()
                .map(|k| digest(&seed, k.as_ref(), bins))
                .collect();
            if let Some(table) = cuckoo(&digests, bins as usize, rng) {
                let mut wide = [0u8; 64];
                rng.fill(&mut wide[..]);
                let secret = Scalar::from_bytes_mod_order_wide(&wide);
                let base_ot = RistrettoPoint::mul_base(&secret).compress().to_bytes();
                let receiver = Self {
                    bins,
                    table,
                    identities: digests.iter().map(|d| d.0).collect(),
                    secret,
                    base_ot,
                    seeds: Vec::new(),
                    code: None,
                    next_bin: 0,
                    own: vec![[0u8; VALUE_BYTES]; keys.len()],
                };
                return Ok((
                    receiver,
                    ReceiverSetup {
                        base_ot,
                        seed,
                        bins,
                    },
                ));
            }
        }
        Err(refused(format!(
            "{} keys did not fit their bins in {CUCKOO_ATTEMPTS} attempts",
            keys.len()
        )))
    }

    /// Takes the sender's answer: derives both keys of every base OT.
    pub fn accept(&mut self, setup: &SenderSetup) -> Result<(), PsiError> {
        if setup.base_ot.len() != CODE_BITS * 32 {
            return Err(refused(format!(
                "the sender's base OT message holds {} bytes, not {} points of 32",
                setup.base_ot.len(),
                CODE_BITS
            )));
        }
        let a = RistrettoPoint::mul_base(&self.secret);
        self.seeds = setup
            .base_ot
            .par_chunks_exact(32)
            .enumerate()
            .map(|(j, b)| {
                let point = CompressedRistretto(b.try_into().expect("32 bytes"))
                    .decompress()
                    .ok_or_else(|| {
                        refused(format!(
                            "point {j} of the sender's base OT message is not a valid ristretto255 point"
                        ))
                    })?;
                Ok((
                    base_ot_key(j, &self.base_ot, b, &(point * self.secret)),
                    base_ot_key(j, &self.base_ot, b, &((point - a) * self.secret)),
                ))
            })
            .collect::<Result<_, PsiError>>()?;
        self.code = Some(Aes128::new(GenericArray::from_slice(&setup.code_key)));
        Ok(())
    }

    /// The next chunk of the extension, or `None` once every bin was sent.
    pub fn next_chunk(&mut self) -> Result<Option<ExtensionChunk>, PsiError> {
        let code = self
            .code
            .as_ref()
            .ok_or_else(|| refused("the extension starts after the sender's answer"))?;
        if self.next_bin >= self.bins {
            return Ok(None);
        }
        let first_bin = self.next_bin;
        let len = chunk_len(first_bin, self.bins);
        // The code words of the chunk's bins, row by row; an empty bin gets a random-looking
        // word of its own (never compared).
        let mut words = vec![0u8; len * CODE_BYTES];
        words
            .par_chunks_mut(CODE_BYTES)
            .enumerate()
            .for_each(|(i, word)| {
                let bin = first_bin + i as u64;
                let (identity, hash) = match self.table[bin as usize] {
                    Some((row, hash)) => (self.identities[row as usize], hash as usize),
                    None => ((u128::from(bin) << 64) | 0xF0, 3),
                };
                word.copy_from_slice(&code_word(code, identity, hash));
            });
        let columns_of_code = transpose(&words, len, CODE_BITS);
        let block = first_bin / 128;
        let column_bytes = len / 8;
        let (t, u): (Vec<Vec<u8>>, Vec<Vec<u8>>) = self
            .seeds
            .par_iter()
            .enumerate()
            .map(|(j, (k0, k1))| {
                let t = prg(k0, block, column_bytes);
                let mut u = prg(k1, block, column_bytes);
                let c = &columns_of_code[j * column_bytes..(j + 1) * column_bytes];
                for ((u, t), c) in u.iter_mut().zip(&t).zip(c) {
                    *u ^= t ^ c;
                }
                (t, u)
            })
            .unzip();
        let rows = transpose(&t.concat(), CODE_BITS, len);
        let values: Vec<(u32, [u8; VALUE_BYTES])> = rows
            .par_chunks(CODE_BYTES)
            .enumerate()
            .filter_map(|(i, row)| {
                let bin = first_bin + i as u64;
                self.table[bin as usize].map(|(key, _)| (key, prf_value(bin, row)))
            })
            .collect();
        for (key, value) in values {
            self.own[key as usize] = value;
        }
        self.next_bin += len as u64;
        Ok(Some(ExtensionChunk {
            first_bin,
            columns: u.concat(),
        }))
    }

    /// The receiver's keys (indices into the keys it started with) that the sender holds too,
    /// in increasing order.
    pub fn intersect(&self, values: &SenderValues) -> Result<Vec<u32>, PsiError> {
        Ok(self
            .matches(values)?
            .into_iter()
            .map(|(row, _)| row)
            .collect())
    }

    /// Each receiver key the sender holds too (in increasing order), with the position of its
    /// matching value in the sender's list.
    pub fn matches(&self, values: &SenderValues) -> Result<Vec<(u32, u32)>, PsiError> {
        if self.next_bin < self.bins {
            return Err(refused(
                "the sender's values came before the extension's last chunk",
            ));
        }
        let keys = values.keys()?;
        if HASHES * keys > u32::MAX as usize {
            return Err(refused(format!(
                "the sender's values name {keys} keys, more than one run can hold"
            )));
        }
        // A key in a bin by hash function h is compared with the sender's values under h
        // only, by binary search: each list is sorted (checked), so no index is built beside
        // the values, which at 10 million keys would be larger than they are.
        let list = |h: usize| {
            let start = h * keys * VALUE_BYTES;
            &values.values[start..start + keys * VALUE_BYTES]
        };
        for h in 0..HASHES {
            let sorted = list(h)
                .par_chunks_exact(VALUE_BYTES)
                .zip(list(h).par_chunks_exact(VALUE_BYTES).skip(1))
                .all(|(a, b)| a <= b);
            if !sorted {
                return Err(refused(format!(
                    "the sender's values for hash function {h} are not sorted"
                )));
            }
        }
        let mut matches: Vec<(u32, u32)> = self
            .table
            .par_iter()
            .flatten()
            .filter_map(|&(row, hash)| {
                let list = list(hash as usize);
                let own = &self.own[row as usize];
                let (mut low, mut high) = (0, keys);
                while low < high {
                    let middle = (low + high) / 2;
                    match list[middle * VALUE_BYTES..(middle + 1) * VALUE_BYTES].cmp(own) {
                        std::cmp::Ordering::Less => low = middle + 1,
                        std::cmp::Ordering::Greater => high = middle,
                        std::cmp::Ordering::Equal => {
                            return Some((row, (hash as usize * keys + middle) as u32));
                        }
                    }
                }
                None
            })
            .collect();
        matches.sort_unstable();
        Ok(matches)
    }
}

/// Places each key in one of its bins (random-walk cuckoo hashing), or `None` when a walk
/// runs too long (a new seed then gives new bins).
fn cuckoo(
    digests: &[(u128, [u64; HASHES])],
    bins: usize,
    rng: &mut impl Rng,
) -> Option<Vec<Option<(u32, u8)>>> {
    let mut table: Vec<Option<(u32, u8)>> = vec![None; bins];
    for key in 0..digests.len() as u32 {
        let mut current = (key, 0u8);
        let mut placed = false;
        for step in 0..CUCKOO_EVICTIONS {
            let (k, _) = current;
            let choices = digests[k as usize].1;
            // First look for a free bin among the key's three; else evict from a random one.
            if let Some(h) = (0..HASHES).find(|&h| table[choices[h] as usize].is_none()) {
                table[choices[h] as usize] = Some((k, h as u8));
                placed = true;
                break;
            }
            let h = if step == 0 {
                rng.random_range(0..HASHES)
            } else {
                // Not back into the bin it was just evicted from.
                let previous = current.1 as usize;
                (previous + 1 + rng.random_range(0..HASHES - 1)) % HASHES
            };
            let bin = choices[h] as usize;
            let evicted = table[bin]
                .replace((k, h as u8))
                .expect("every bin was full");
            current = evicted;
        }
        if !placed {
            return None;
        }
    }
    Some(table)
}

/// The sender's side: its keys' bins, its choice bits and the keys it chose.
pub struct KkrtSender {
    bins: u64,
    /// Each (bin, key, hash function) the sender evaluates, ordered by bin.
    evaluations: Vec<(u64, u32, u8)>,
    identities: Vec<u128>,
    choices: [u8; CODE_BYTES],
    seeds: Vec<[u8; 16]>,
    code: Aes128,
    next_bin: u64,
    next_evaluation: usize,
    /// Each value computed so far, with its key's row, by hash function.
    by_hash: [Vec<([u8; VALUE_BYTES], u32)>; HASHES],
}

impl KkrtSender {
    /// Takes the receiver's first message: hashes `keys` (distinct) to their bins, draws the
    /// choice bits and the code's key, and answers the base OTs.
    pub fn new<S: AsRef<str> + Sync>(
        keys: &[S],
        setup: &ReceiverSetup,
        rng: &mut impl Rng,
    ) -> Result<(Self, SenderSetup), PsiError> {
        if setup.bins == 0 || setup.bins > MAX_BINS || !setup.bins.is_multiple_of(128) {
            return Err(refused(format!(
                "the receiver asks for {} bins: not a positive multiple of 128 up to {MAX_BINS}",
                setup.bins
            )));
        }
        let a = CompressedRistretto(setup.base_ot)
            .decompress()
            .ok_or_else(|| {
                refused("the receiver's base OT message is not a valid ristretto255 point")
            })?;
        let digests: Vec<(u128, [u64; HASHES])> = keys
            .par_iter()
            .map(|k| digest(&setup.seed, k.as_ref(), setup.bins))
            .collect();
        let mut evaluations: Vec<(u64, u32, u8)> = digests
            .iter()
            .enumerate()
            .flat_map(|(key, (_, bins))| (0..HASHES).map(move |h| (bins[h], key as u32, h as u8)))
            .collect();
        evaluations.par_sort_unstable();
        let mut choices = [0u8; CODE_BYTES];
        rng.fill(&mut choices);
        let mut code_key = [0u8; 16];
        rng.fill(&mut code_key);
        let secrets: Vec<Scalar> = (0..CODE_BITS)
            .map(|_| {
                let mut wide = [0u8; 64];
                rng.fill(&mut wide[..]);
                Scalar::from_bytes_mod_order_wide(&wide)
            })
            .collect();
        let (messages, seeds): (Vec<[u8; 32]>, Vec<[u8; 16]>) = secrets
            .par_iter()
            .enumerate()
            .map(|(j, b)| {
                let mut point = RistrettoPoint::mul_base(b);
                if choices[j / 8] >> (j % 8) & 1 == 1 {
                    point += a;
                }
                let message = point.compress().to_bytes();
                let seed = base_ot_key(j, &setup.base_ot, &message, &(a * b));
                (message, seed)
            })
            .unzip();
        let sender = Self {
            bins: setup.bins,
            evaluations,
            identities: digests.iter().map(|d| d.0).collect(),
            choices,
            seeds,
            code: Aes128::new(GenericArray::from_slice(&code_key)),
            next_bin: 0,
            next_evaluation: 0,
            by_hash: Default::default(),
        };
        Ok((
            sender,
            SenderSetup {
                base_ot: messages.concat(),
                code_key,
            },
        ))
    }

    /// Takes the next chunk of the extension and evaluates the PRF of its bins at the
    /// sender's keys that fall in them.
    pub fn absorb(&mut self, chunk: &ExtensionChunk) -> Result<(), PsiError> {
        if chunk.first_bin != self.next_bin || self.next_bin >= self.bins {
            return Err(refused(format!(
                "an extension chunk from bin {} where the sender expects bin {} of {}",
                chunk.first_bin, self.next_bin, self.bins
            )));
        }
        let len = chunk_len(chunk.first_bin, self.bins);
        let column_bytes = len / 8;
        if chunk.columns.len() != CODE_BITS * column_bytes {
            return Err(refused(format!(
                "the extension chunk from bin {} holds {} bytes, not {} columns of {column_bytes}",
                chunk.first_bin,
                chunk.columns.len(),
                CODE_BITS
            )));
        }
        let block = chunk.first_bin / 128;
        let q: Vec<u8> = self
            .seeds
            .par_iter()
            .enumerate()
            .flat_map_iter(|(j, seed)| {
                let mut q = prg(seed, block, column_bytes);
                if self.choices[j / 8] >> (j % 8) & 1 == 1 {
                    let u = &chunk.columns[j * column_bytes..(j + 1) * column_bytes];
                    q.iter_mut().zip(u).for_each(|(q, u)| *q ^= u);
                }
                q
            })
            .collect();
        let rows = transpose(&q, CODE_BITS, len);
        let end = chunk.first_bin + len as u64;
        let start = self.next_evaluation;
        let stop = start + self.evaluations[start..].partition_point(|e| e.0 < end);
        let values: Vec<(u8, [u8; VALUE_BYTES], u32)> = self.evaluations[start..stop]
            .par_iter()
            .map(|&(bin, key, hash)| {
                let offset = (bin - chunk.first_bin) as usize * CODE_BYTES;
                let word = code_word(&self.code, self.identities[key as usize], hash as usize);
                let mut row = [0u8; CODE_BYTES];
                for (i, r) in row.iter_mut().enumerate() {
                    *r = rows[offset + i] ^ (word[i] & self.choices[i]);
                }
                (hash, prf_value(bin, &row), key)
            })
            .collect();
        for (hash, value, key) in values {
            self.by_hash[hash as usize].push((value, key));
        }
        self.next_evaluation = stop;
        self.next_bin = end;
        Ok(())
    }

    /// The values to send, once every chunk was absorbed: sorted, so that their order says
    /// nothing of the sender's keys; and the sender's record of whose each value is.
    pub fn finish(mut self) -> Result<(SenderValues, SentOrder), PsiError> {
        if self.next_bin < self.bins {
            return Err(refused(format!(
                "the extension stopped at bin {} of {}",
                self.next_bin, self.bins
            )));
        }
        let keys = self.identities.len();
        // Freed before the lists are copied out: at 10 million keys, hundreds of MB each.
        drop(std::mem::take(&mut self.evaluations));
        drop(std::mem::take(&mut self.identities));
        let mut values = Vec::with_capacity(HASHES * keys * VALUE_BYTES);
        let mut rows = Vec::with_capacity(HASHES * keys);
        for list in &mut self.by_hash {
            let mut list = std::mem::take(list);
            list.par_sort_unstable();
            for (value, row) in &list {
                values.extend_from_slice(value);
                rows.push(*row);
            }
        }
        Ok((SenderValues { values }, SentOrder { rows }))
    }
}

/// Both sides in one process, message for message: the rows of `receiver` whose keys
/// `sender` holds too, in increasing order.
pub fn intersect(
    receiver: &[String],
    sender: &[String],
    rng: &mut impl Rng,
) -> Result<Vec<u32>, PsiError> {
    let (mut receiving, setup) = KkrtReceiver::new(receiver, rng)?;
    let (mut sending, answer) = KkrtSender::new(sender, &setup, rng)?;
    receiving.accept(&answer)?;
    while let Some(chunk) = receiving.next_chunk()? {
        sending.absorb(&chunk)?;
    }
    receiving.intersect(&sending.finish()?.0)
}

/// Which party receives in an alignment of N parties: the one with the fewest keys (the first
/// of them on a tie), since the extension's size follows the receiver's keys and every later
/// run is over what is left of them.
pub fn receiver_of(sizes: &[usize]) -> usize {
    (0..sizes.len()).min_by_key(|&p| sizes[p]).unwrap_or(0)
}

/// The receiver's side of an alignment of N parties: one two-party run with each other party
/// in turn, each over the receiver's keys still matched by every run before. At the end it
/// knows its rows of the intersection, and for each run which of that sender's values they
/// matched: the membership it hands each sender (see [`SentOrder::rows`]).
///
/// What it learns beyond the intersection: for each run, which of its keys the senders so far
/// all hold (the intersection of a prefix of the parties), so the first sender's overlap with
/// it in full. `docs/psi.md` sets this beside the ECDH ring's leakage.
pub struct ReceiverChain {
    /// Rows of the receiver's keys still matched by every run so far, in increasing order.
    candidates: Vec<u32>,
    /// For each finished run: each candidate's position in that sender's values, and how many
    /// keys that sender evaluated.
    runs: Vec<(Vec<u32>, usize)>,
    current: Option<KkrtReceiver>,
}

impl ReceiverChain {
    /// A chain over `keys` keys, every one still a candidate.
    pub fn new(keys: usize) -> Self {
        Self {
            candidates: (0..keys as u32).collect(),
            runs: Vec::new(),
            current: None,
        }
    }

    /// How many of the receiver's keys every run so far matched.
    pub fn candidates(&self) -> usize {
        self.candidates.len()
    }

    /// How many runs have finished.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Whether the open run's extension has all been sent.
    pub fn extension_sent(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|receiver| receiver.next_bin >= receiver.bins)
    }

    /// Opens the next run, over the candidates among `keys` (the receiver's keys, all of them):
    /// its first message.
    pub fn start_run<S: AsRef<str> + Sync>(
        &mut self,
        keys: &[S],
        rng: &mut impl Rng,
    ) -> Result<ReceiverSetup, PsiError> {
        if self.current.is_some() {
            return Err(refused("a run was opened while the last one is unfinished"));
        }
        let candidates: Vec<&str> = self
            .candidates
            .iter()
            .map(|&row| keys.get(row as usize).map(AsRef::as_ref))
            .collect::<Option<_>>()
            .ok_or_else(|| refused("the chain does not fit the receiver's keys"))?;
        let (receiver, setup) = KkrtReceiver::new(&candidates, rng)?;
        self.current = Some(receiver);
        Ok(setup)
    }

    fn current(&mut self) -> Result<&mut KkrtReceiver, PsiError> {
        self.current
            .as_mut()
            .ok_or_else(|| refused("no run is open at the receiver"))
    }

    /// Takes the sender's answer to the open run.
    pub fn accept(&mut self, setup: &SenderSetup) -> Result<(), PsiError> {
        self.current()?.accept(setup)
    }

    /// The open run's next chunk of the extension, or `None` once every bin was sent.
    pub fn next_chunk(&mut self) -> Result<Option<ExtensionChunk>, PsiError> {
        self.current()?.next_chunk()
    }

    /// Takes the sender's values, which close the open run: the candidates the sender holds
    /// too remain. Returns how many.
    pub fn take_values(&mut self, values: &SenderValues) -> Result<usize, PsiError> {
        let matches = self.current()?.matches(values)?;
        let sender_keys = values.keys()?;
        self.current = None;
        let kept: Vec<usize> = matches.iter().map(|&(i, _)| i as usize).collect();
        self.candidates = kept.iter().map(|&i| self.candidates[i]).collect();
        for (positions, _) in &mut self.runs {
            *positions = kept.iter().map(|&i| positions[i]).collect();
        }
        self.runs.push((
            matches.into_iter().map(|(_, position)| position).collect(),
            sender_keys,
        ));
        Ok(self.candidates.len())
    }

    /// After the last run: the receiver's rows of the intersection ordered by key, and for each
    /// run (sender) the bitmap over its values that marks its rows of the intersection.
    pub fn finish<S: AsRef<str> + Sync>(
        self,
        keys: &[S],
    ) -> Result<(Vec<u32>, Vec<Vec<u8>>), PsiError> {
        if self.current.is_some() {
            return Err(refused(
                "the alignment was closed while a run is unfinished",
            ));
        }
        let bitmaps = self
            .runs
            .iter()
            .map(|(positions, sender_keys)| {
                let mut bits = vec![0u8; bitmap_bytes(*sender_keys)];
                for &p in positions {
                    bits[p as usize / 8] |= 1 << (p % 8);
                }
                bits
            })
            .collect();
        Ok((crate::in_key_order(self.candidates, keys)?, bitmaps))
    }
}

/// Aligns N parties' keys in this process, message for message as over a mesh: the party with
/// the fewest keys receives ([`receiver_of`]) and runs with every other in turn
/// ([`ReceiverChain`]); each sender learns its rows from the bitmap the receiver hands it. Each
/// party's rows of the intersection, ordered by key.
pub fn align(sets: &[Vec<String>], rng: &mut impl Rng) -> Result<Vec<crate::Alignment>, PsiError> {
    let receiver = receiver_of(&sets.iter().map(Vec::len).collect::<Vec<_>>());
    let Some(keys) = sets.get(receiver) else {
        return Ok(Vec::new());
    };
    let mut chain = ReceiverChain::new(keys.len());
    let mut orders = Vec::new();
    for (p, sender_keys) in sets.iter().enumerate() {
        if p == receiver {
            continue;
        }
        let setup = chain.start_run(keys, rng)?;
        let (mut sender, answer) = KkrtSender::new(sender_keys, &setup, rng)?;
        chain.accept(&answer)?;
        while let Some(chunk) = chain.next_chunk()? {
            sender.absorb(&chunk)?;
        }
        let (values, order) = sender.finish()?;
        chain.take_values(&values)?;
        orders.push((p, order));
    }
    let (rows, bitmaps) = chain.finish(keys)?;
    let mut alignments = vec![crate::Alignment { rows: Vec::new() }; sets.len()];
    alignments[receiver].rows = rows;
    for ((p, order), bits) in orders.into_iter().zip(bitmaps) {
        alignments[p].rows = order.rows(&bits, &sets[p])?;
    }
    Ok(alignments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn transpose_swaps_rows_and_columns_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (rows, cols) = (24, 40);
        let mut matrix = vec![0u8; rows * cols / 8];
        rng.fill(&mut matrix[..]);
        let bit =
            |m: &[u8], width: usize, r: usize, c: usize| m[r * width / 8 + c / 8] >> (c % 8) & 1;
        let out = transpose(&matrix, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    bit(&matrix, cols, r, c),
                    bit(&out, rows, c, r),
                    "({r}, {c})"
                );
            }
        }
        assert_eq!(transpose(&out, cols, rows), matrix);
    }

    #[test]
    fn the_base_ots_give_the_sender_the_key_of_its_choice_and_the_receiver_both() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let (mut receiver, setup) = KkrtReceiver::new(&keys, &mut rng).unwrap();
        let (sender, answer) = KkrtSender::new(&keys, &setup, &mut rng).unwrap();
        receiver.accept(&answer).unwrap();
        for j in 0..CODE_BITS {
            let (k0, k1) = receiver.seeds[j];
            let chosen = sender.choices[j / 8] >> (j % 8) & 1;
            assert_eq!(sender.seeds[j], if chosen == 1 { k1 } else { k0 }, "OT {j}");
            assert_ne!(k0, k1);
        }
    }
}
