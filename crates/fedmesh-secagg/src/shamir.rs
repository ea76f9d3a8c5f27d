//! Shamir's secret sharing of 32-byte secrets over the prime field of p = 2⁶¹ − 1.
//!
//! A secret is cut into five 56-bit limbs (each below p); every limb gets its own random
//! polynomial of degree `threshold − 1`, and share `x` holds the five polynomials' values at `x`.
//! Any `threshold` shares give back the secret by Lagrange interpolation at 0; fewer say nothing
//! about it.

use rand::Rng;

/// The field's prime, 2⁶¹ − 1.
const P: u64 = (1 << 61) - 1;
/// Bytes per limb: 56 bits, below p.
const LIMB_BYTES: usize = 7;
/// Limbs per 32-byte secret (35 bytes of room).
pub const LIMBS: usize = 5;

fn add(a: u64, b: u64) -> u64 {
    (a + b) % P
}

fn sub(a: u64, b: u64) -> u64 {
    (a + P - b) % P
}

fn mul(a: u64, b: u64) -> u64 {
    ((a as u128 * b as u128) % P as u128) as u64
}

fn pow(mut base: u64, mut exponent: u64) -> u64 {
    let mut result = 1;
    while exponent > 0 {
        if exponent & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        exponent >>= 1;
    }
    result
}

/// The inverse of a non-zero element (Fermat).
fn inverse(a: u64) -> u64 {
    pow(a, P - 2)
}

/// One share of a secret: the polynomials' values at `x` (1 ≤ x).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub x: u64,
    pub y: [u64; LIMBS],
}

impl Share {
    /// 8 bytes of `x`, then 8 per limb, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * (1 + LIMBS));
        out.extend_from_slice(&self.x.to_le_bytes());
        for limb in self.y {
            out.extend_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// The share [`Share::to_bytes`] wrote; `None` for bytes that are not one (a wrong length, a
    /// value outside the field, x = 0).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 8 * (1 + LIMBS) {
            return None;
        }
        let word =
            |i: usize| u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let x = word(0);
        let y: [u64; LIMBS] = std::array::from_fn(|k| word(k + 1));
        (x != 0 && x < P && y.iter().all(|&v| v < P)).then_some(Self { x, y })
    }

    /// Bytes of one share.
    pub const BYTES: usize = 8 * (1 + LIMBS);
}

/// `shares` shares of `secret`, any `threshold` of which give it back; share k is at x = k + 1.
pub fn share(secret: &[u8; 32], threshold: usize, shares: usize, rng: &mut impl Rng) -> Vec<Share> {
    assert!(
        (1..=shares).contains(&threshold),
        "a threshold from 1 to the number of shares"
    );
    let mut limbs = [0u64; LIMBS];
    for (k, chunk) in secret.chunks(LIMB_BYTES).enumerate() {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        limbs[k] = u64::from_le_bytes(bytes);
    }
    // Coefficients of each limb's polynomial, constant term first.
    let polynomials: Vec<Vec<u64>> = limbs
        .iter()
        .map(|&limb| {
            std::iter::once(limb)
                .chain((1..threshold).map(|_| rng.random_range(0..P)))
                .collect()
        })
        .collect();
    (1..=shares as u64)
        .map(|x| Share {
            x,
            y: std::array::from_fn(|k| {
                polynomials[k]
                    .iter()
                    .rev()
                    .fold(0, |acc, &c| add(mul(acc, x), c))
            }),
        })
        .collect()
}

/// The secret behind `shares` (the first `threshold` of them are used); `None` with fewer than
/// `threshold` shares, or two at the same x.
pub fn reconstruct(shares: &[Share], threshold: usize) -> Option<[u8; 32]> {
    let used = shares.get(..threshold)?;
    let xs: Vec<u64> = used.iter().map(|s| s.x).collect();
    for (i, &x) in xs.iter().enumerate() {
        if x == 0 || xs[..i].contains(&x) {
            return None;
        }
    }
    // Lagrange coefficients at 0: Π_{m≠j} x_m / (x_m − x_j).
    let coefficients: Vec<u64> = (0..used.len())
        .map(|j| {
            let (mut numerator, mut denominator) = (1, 1);
            for (m, &x) in xs.iter().enumerate() {
                if m != j {
                    numerator = mul(numerator, x);
                    denominator = mul(denominator, sub(x, xs[j]));
                }
            }
            mul(numerator, inverse(denominator))
        })
        .collect();
    let mut secret = [0u8; 32];
    for k in 0..LIMBS {
        let limb = used
            .iter()
            .zip(&coefficients)
            .fold(0, |acc, (s, &c)| add(acc, mul(s.y[k], c)));
        let bytes = limb.to_le_bytes();
        if bytes[LIMB_BYTES] != 0 {
            return None;
        }
        let start = k * LIMB_BYTES;
        let end = (start + LIMB_BYTES).min(32);
        secret[start..end].copy_from_slice(&bytes[..end - start]);
    }
    Some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn any_threshold_shares_give_the_secret_back_and_fewer_do_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let secret: [u8; 32] = std::array::from_fn(|i| (i * 37 + 250) as u8);
        let shares = share(&secret, 3, 5, &mut rng);
        for picked in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let chosen: Vec<Share> = picked.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(reconstruct(&chosen, 3), Some(secret));
        }
        // Two shares interpolate a line through them: another value than the secret.
        assert_ne!(reconstruct(&shares[..2], 2), Some(secret));
        assert_eq!(reconstruct(&shares[..2], 3), None);
        let twice = vec![shares[0].clone(), shares[0].clone(), shares[1].clone()];
        assert_eq!(reconstruct(&twice, 3), None);
        let bytes = shares[3].to_bytes();
        assert_eq!(Share::from_bytes(&bytes), Some(shares[3].clone()));
        assert_eq!(Share::from_bytes(&bytes[1..]), None);
    }
}
