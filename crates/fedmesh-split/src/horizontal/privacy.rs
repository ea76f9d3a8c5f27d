//! Differential privacy of each domain's contribution to a horizontal job (DP-FedAvg, McMahan et
//! al. 2018): every domain's update is clipped to an L2 norm, and Gaussian noise in proportion
//! to that bound is added to each round's sum, so that the trained model says little about
//! whether any one domain took part, and with what data. The privacy spent is accounted with
//! Rényi differential privacy (Mironov 2017) and reported as (ε, δ).
//!
//! The unit protected is a whole domain (all of its rows), the one federated averaging exchanges;
//! with few domains the noise this needs for a small ε is large against the signal. No sampling
//! amplification is counted: the accounting holds whichever domains a round draws.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// `federation.differential_privacy` in a horizontal spec.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DifferentialPrivacySpec {
    /// Each domain's update (its model's change over a round) is scaled down to at most this L2
    /// norm before it is weighted.
    pub clip_norm: f64,
    /// z: the noise added to a round's sum has standard deviation z × `clip_norm` × the largest
    /// share of the round (the most any one domain can move the sum).
    pub noise_multiplier: f64,
    /// The δ of the (ε, δ) reported.
    #[serde(default = "default_delta")]
    pub delta: f64,
}

fn default_delta() -> f64 {
    1e-5
}

/// What a run spent, as `results.json` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpent {
    pub epsilon: f64,
    pub delta: f64,
    pub noise_multiplier: f64,
    pub clip_norm: f64,
}

/// Scales `update` down to L2 norm `bound` when it is longer (a shorter one is left alone).
pub fn clip_to_norm(update: &mut [f32], bound: f64) {
    let norm = update
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt();
    if norm > bound {
        let scale = (bound / norm) as f32;
        update.iter_mut().for_each(|v| *v *= scale);
    }
}

/// Adds Gaussian noise of standard deviation `std` to every value.
pub fn add_noise(values: &mut [f64], std: f64, rng: &mut impl Rng) {
    for v in values {
        *v += std * fedmesh_data::datasets::normal(rng);
    }
}

/// Rényi DP accountant of Gaussian mechanisms of sensitivity 1 (Mironov 2017): a round with
/// noise multiplier z costs α / (2z²) at every order α; costs add up over rounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RdpAccountant {
    /// Σ 1 / (2 z²) over the rounds: the RDP at order α is α times this.
    per_order: f64,
}

/// The orders α the conversion to (ε, δ) minimizes over.
const ORDERS: [f64; 24] = [
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0,
    24.0, 32.0, 48.0, 64.0, 128.0, 256.0, 512.0,
];

impl RdpAccountant {
    /// One round whose sum carried noise of `noise_multiplier` times its sensitivity.
    pub fn round(&mut self, noise_multiplier: f64) {
        self.per_order += 1.0 / (2.0 * noise_multiplier * noise_multiplier);
    }

    /// ε at `delta`: min over α of RDP(α) + ln(1/δ) / (α − 1).
    pub fn epsilon(&self, delta: f64) -> f64 {
        ORDERS
            .iter()
            .map(|&alpha| alpha * self.per_order + (1.0 / delta).ln() / (alpha - 1.0))
            .fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_longer_update_is_scaled_to_the_bound_and_a_shorter_one_kept() {
        let mut long = vec![3.0f32, 4.0];
        clip_to_norm(&mut long, 1.0);
        assert!((long[0] - 0.6).abs() < 1e-6 && (long[1] - 0.8).abs() < 1e-6);
        let mut short = vec![0.3f32, 0.4];
        clip_to_norm(&mut short, 1.0);
        assert_eq!(short, vec![0.3, 0.4]);
    }

    /// One Gaussian round at z = 1, δ = 1e-5: RDP gives ε = min_α α/2 + ln(10⁵)/(α − 1), about
    /// 5.3 at α ≈ 5.8 (on the grid, α = 6: 3 + 2.30 = 5.30). More rounds cost more, more noise
    /// less.
    #[test]
    fn the_accountant_adds_rounds_and_converts_to_epsilon_delta() {
        let mut one = RdpAccountant::default();
        one.round(1.0);
        let epsilon = one.epsilon(1e-5);
        let expected = 3.0 + (1e5f64).ln() / 5.0;
        assert!((epsilon - expected).abs() < 1e-9, "{epsilon} {expected}");
        let mut ten = RdpAccountant::default();
        let mut quiet = RdpAccountant::default();
        for _ in 0..10 {
            ten.round(1.0);
            quiet.round(4.0);
        }
        assert!(ten.epsilon(1e-5) > epsilon);
        assert!(quiet.epsilon(1e-5) < ten.epsilon(1e-5));
    }
}
