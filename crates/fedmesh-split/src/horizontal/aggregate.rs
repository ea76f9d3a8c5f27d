//! Summing a round's updates: in the clear, or by secure aggregation, where governance learns the
//! sum and who sent, never one domain's update.
//!
//! Every domain's update is its model's change over the round, multiplied by its share of the
//! round's rows (see [`super::FedAvg::shares`]), flattened: the sum is the round's weighted
//! average step. Under secure aggregation each value is clipped to ±`clip` and quantized with the
//! finest scale the sum's 32-bit integers allow for the round's domains, so the secure sum equals
//! the plain one to within `domains / scale`.

use fedmesh_secagg::Quantization;

use super::spec::SecureAggregationSpec;

/// A round's sum and who is in it (indices into the round's list of updates).
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSum {
    pub values: Vec<f64>,
    /// Domains whose updates are in the sum.
    pub contributors: Vec<usize>,
    /// Domains that took part in the round but sent no update.
    pub dropped: Vec<usize>,
}

/// The finest quantization whose sum over `clients` values clipped to ±`clip` fits the
/// aggregate's signed 32-bit integers (a power of two, so that it is exact in floating point).
pub fn quantization(clients: usize, clip: f32) -> Quantization {
    let room = (i32::MAX as f64) / (clients.max(1) as f64 * clip as f64);
    let scale = 2f64.powi(room.log2().floor() as i32 - 1).max(1.0);
    Quantization {
        clip,
        scale: scale as f32,
    }
}

/// The threshold of a round of `clients` domains: the spec's, or a majority (at least 2).
pub fn threshold(spec: &SecureAggregationSpec, clients: usize) -> u32 {
    spec.threshold
        .unwrap_or((clients / 2 + 1) as u32)
        .clamp(2, clients.max(2) as u32)
}

/// The sum of the updates that arrived (`None`: that domain dropped out after the round began).
pub fn plain_sum(updates: &[Option<Vec<f32>>]) -> RoundSum {
    let length = updates.iter().flatten().map(Vec::len).max().unwrap_or(0);
    let mut values = vec![0.0f64; length];
    let mut contributors = Vec::new();
    let mut dropped = Vec::new();
    for (k, update) in updates.iter().enumerate() {
        match update {
            Some(update) => {
                for (v, u) in values.iter_mut().zip(update) {
                    *v += *u as f64;
                }
                contributors.push(k);
            }
            None => dropped.push(k),
        }
    }
    RoundSum {
        values,
        contributors,
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantization_is_as_fine_as_the_sum_allows() {
        let q = quantization(3, 16.0);
        assert!(3.0 * 16.0 * q.scale as f64 * 2.0 >= i32::MAX as f64 / 2.0);
        assert!(3.0 * 16.0 * (q.scale as f64) < i32::MAX as f64);
    }
}
