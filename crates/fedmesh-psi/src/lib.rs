//! Private set intersection: aligning the rows of the domains' data products without any domain
//! revealing the keys the others lack.
//!
//! ECDH-PSI on ristretto255, for N ≥ 2 parties (semi-honest). Every party hashes each of its
//! keys to the group with SHA-512 and raises it to a secret scalar of its own; the blinded list
//! then visits every other party, which raises each point to its own scalar without changing the
//! order, and comes back to its owner blinded by all N scalars. Exponentiation commutes, so a
//! key every party holds ends up as the same point everywhere, and nobody can undo the blinding
//! alone. Each party sends its fully blinded points, shuffled, to the coordinator (governance),
//! which intersects them and returns the intersection in a canonical order (by the points'
//! bytes); each party maps the points back to its own rows. See `docs/psi.md` for what each
//! party learns.
//!
//! [`Blinder`] is one party's share of the computation, batched over all cores; [`align`] runs
//! the whole protocol in one process, message for message, for tests and benchmarks.

use std::collections::{HashMap, HashSet};

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::{Rng, seq::SliceRandom};
use rayon::prelude::*;
use sha2::Sha512;

/// A compressed ristretto255 point: what travels on the wire.
pub type BlindedKey = [u8; 32];

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
        "data product `{product}`, key column `{column}`, row {row}: key {key:?} already appears in row {first}; keys must be unique to align rows"
    )]
    DuplicateKey {
        product: String,
        column: String,
        row: usize,
        first: usize,
        key: String,
    },
    #[error("point {index} of a blinded list from `{party}` is not a valid ristretto255 point")]
    InvalidPoint { party: String, index: usize },
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
                key: key.clone(),
            });
        }
    }
    Ok(())
}

/// One party's secret exponent for one alignment run.
pub struct Blinder {
    secret: Scalar,
}

impl Blinder {
    /// A fresh secret, uniformly random.
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut wide = [0u8; 64];
        rng.fill(&mut wide[..]);
        Self {
            secret: Scalar::from_bytes_mod_order_wide(&wide),
        }
    }

    /// `H(key)^secret` for each key, in order.
    pub fn blind_keys(&self, keys: &[String]) -> Vec<BlindedKey> {
        keys.par_iter()
            .map(|key| {
                let mut input = Vec::with_capacity(DOMAIN_SEPARATOR.len() + key.len());
                input.extend_from_slice(DOMAIN_SEPARATOR);
                input.extend_from_slice(key.as_bytes());
                (RistrettoPoint::hash_from_bytes::<Sha512>(&input) * self.secret)
                    .compress()
                    .to_bytes()
            })
            .collect()
    }

    /// `point^secret` for each point of another party's list, in order. `party` names the
    /// sender in errors.
    pub fn reblind(&self, points: &[BlindedKey], party: &str) -> Result<Vec<BlindedKey>, PsiError> {
        points
            .par_iter()
            .enumerate()
            .map(|(index, bytes)| {
                let point = CompressedRistretto(*bytes).decompress().ok_or_else(|| {
                    PsiError::InvalidPoint {
                        party: party.to_string(),
                        index,
                    }
                })?;
                Ok((point * self.secret).compress().to_bytes())
            })
            .collect()
    }
}

/// The coordinator's part: the points present in every party's fully blinded list, in the
/// canonical order (ascending bytes) every party will use.
pub fn intersect(lists: &[Vec<BlindedKey>]) -> Vec<BlindedKey> {
    let Some((first, rest)) = lists.split_first() else {
        return Vec::new();
    };
    let others: Vec<HashSet<&BlindedKey>> = rest.iter().map(|l| l.iter().collect()).collect();
    let mut common: Vec<BlindedKey> = first
        .iter()
        .filter(|p| others.iter().all(|o| o.contains(p)))
        .copied()
        .collect();
    common.sort_unstable();
    common
}

/// A party's rows in the agreed order: `rows[k]` is the row of its product that holds the k-th
/// entity of the intersection.
pub fn rows_in_order(own: &[BlindedKey], intersection: &[BlindedKey]) -> Vec<u32> {
    let position: HashMap<&BlindedKey, u32> =
        own.iter().enumerate().map(|(i, p)| (p, i as u32)).collect();
    intersection.iter().map(|p| position[p]).collect()
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
    let blinders: Vec<Blinder> = sets.iter().map(|_| Blinder::random(rng)).collect();
    let n = sets.len();
    // Each party's list, blinded by its owner, then by every other party in ring order.
    let mut fully_blinded = Vec::with_capacity(n);
    for (owner, keys) in sets.iter().enumerate() {
        let mut list = blinders[owner].blind_keys(keys);
        for step in 1..n {
            let party = (owner + step) % n;
            list = blinders[party].reblind(&list, &format!("party {owner}"))?;
        }
        fully_blinded.push(list);
    }
    // Shuffled on the way to the coordinator, which thus sees values, not positions.
    let to_coordinator: Vec<Vec<BlindedKey>> = fully_blinded
        .iter()
        .map(|list| {
            let mut shuffled = list.clone();
            shuffled.shuffle(rng);
            shuffled
        })
        .collect();
    let intersection = intersect(&to_coordinator);
    Ok(fully_blinded
        .iter()
        .map(|own| Alignment {
            rows: rows_in_order(own, &intersection),
        })
        .collect())
}
