//! Summing a round's updates: in the clear, or by secure aggregation, where governance learns the
//! sum and who sent, never one domain's update.
//!
//! Every domain's update is its model's change over the round, multiplied by its share of the
//! round's rows (see [`super::FedAvg::shares`]), flattened: the sum is the round's weighted
//! average step. Under secure aggregation each value is clipped to ±`clip` and quantized with the
//! finest scale the sum's 32-bit integers allow for the round's domains, so the secure sum equals
//! the plain one to within `domains / scale`.

use fedmesh_secagg::{Aggregator, Client, Config, Quantization, SecAggError};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::spec::SecureAggregationSpec;
use crate::SplitError;

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

/// The same sum by one round of secure aggregation, every party's state machine run in this
/// process (a mesh runs each at its own node and routes their messages through governance). A
/// domain whose update is `None` shared its keys and then dropped out: the others' shares unmask
/// the sum without it.
pub fn secure_sum(
    updates: &[Option<Vec<f32>>],
    length: usize,
    spec: &SecureAggregationSpec,
    seed: u64,
) -> Result<RoundSum, SplitError> {
    let clients = updates.len();
    let config = Config {
        clients: clients as u32,
        threshold: threshold(spec, clients),
        length,
        quantization: quantization(clients, spec.clip),
    };
    let failed = |e: SecAggError| SplitError::Job {
        job: "secure aggregation".into(),
        reason: e.to_string(),
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (mut parties, adverts): (Vec<Client>, Vec<_>) = (0..clients as u32)
        .map(|id| Client::new(id, config, &mut rng))
        .unzip();
    let mut server = Aggregator::new(config).map_err(failed)?;
    let roster = server.roster(adverts).map_err(failed)?;
    let mut sealed = Vec::new();
    for party in &mut parties {
        sealed.extend(party.share_keys(&roster, &mut rng).map_err(failed)?);
    }
    let inbox = server.route(sealed).map_err(failed)?;
    for (party, update) in parties.iter_mut().zip(updates) {
        if let Some(update) = update {
            let mine = inbox.get(&party.id()).map_or(&[][..], Vec::as_slice);
            let input = party.masked_input(update, mine).map_err(failed)?;
            server.receive(input).map_err(failed)?;
        }
    }
    let survivors = server.survivors().map_err(failed)?;
    let reveals = parties
        .iter_mut()
        .filter(|p| survivors.contains(&p.id()))
        .map(|p| p.reveal(&survivors))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    let aggregate = server.aggregate(reveals).map_err(failed)?;
    Ok(RoundSum {
        values: aggregate.values,
        contributors: aggregate.contributors.iter().map(|&c| c as usize).collect(),
        dropped: aggregate.dropped.iter().map(|&c| c as usize).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn updates() -> Vec<Option<Vec<f32>>> {
        (0..4)
            .map(|k| {
                Some(
                    (0..300)
                        .map(|i| ((k * 37 + i * 11) % 23) as f32 / 7.0 - 1.5)
                        .collect(),
                )
            })
            .collect()
    }

    /// Governance's secure sum equals the plain sum up to quantization, and a domain that drops
    /// out after sharing its keys leaves the exact (quantized) sum of the others.
    #[test]
    fn the_secure_sum_is_the_plain_sum_and_survives_a_drop_out() {
        let spec = SecureAggregationSpec::default();
        let mut updates = updates();
        let q = quantization(updates.len(), spec.clip);
        let tolerance = updates.len() as f64 / q.scale as f64;
        let secure = secure_sum(&updates, 300, &spec, 1).unwrap();
        let plain = plain_sum(&updates);
        assert_eq!(secure.contributors, vec![0, 1, 2, 3]);
        for (s, p) in secure.values.iter().zip(&plain.values) {
            assert!((s - p).abs() <= tolerance, "{s} {p}");
        }
        updates[2] = None;
        let secure = secure_sum(&updates, 300, &spec, 2).unwrap();
        let plain = plain_sum(&updates);
        assert_eq!(secure.dropped, vec![2]);
        assert_eq!(plain.dropped, vec![2]);
        for (s, p) in secure.values.iter().zip(&plain.values) {
            assert!((s - p).abs() <= tolerance, "{s} {p}");
        }
        // Too many drop-outs for the threshold: the round fails, saying how many it had.
        updates[0] = None;
        updates[1] = None;
        let error = secure_sum(&updates, 300, &spec, 3).unwrap_err().to_string();
        assert!(
            error.contains("1 clients sent their input; unmasking needs 3"),
            "{error}"
        );
    }

    #[test]
    fn the_quantization_is_as_fine_as_the_sum_allows() {
        let q = quantization(3, 16.0);
        assert!(3.0 * 16.0 * q.scale as f64 * 2.0 >= i32::MAX as f64 / 2.0);
        assert!(3.0 * 16.0 * (q.scale as f64) < i32::MAX as f64);
    }
}
