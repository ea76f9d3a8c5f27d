//! Federated averaging's server side, apart from any transport (as Flower keeps its strategies):
//! which domains train in a round, what share of the average each one's update gets, and how the
//! aggregate becomes the next global model.

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

/// FedAvg (McMahan et al. 2017), and FedProx when local training adds a proximal term (the
/// server side is the same).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FedAvg {
    /// Share of the domains drawn each round.
    pub client_fraction: f64,
    /// The fewest domains drawn, and the fewest whose updates a round may average.
    pub min_clients: usize,
}

impl FedAvg {
    /// The domains (indices into `0..domains`, ascending) that train in round `round`: ⌈fraction
    /// × domains⌉ of them but at least `min_clients`, drawn from the run's seed and the round.
    pub fn select(&self, domains: usize, round: usize, seed: u64) -> Vec<usize> {
        let wanted = ((self.client_fraction * domains as f64).ceil() as usize)
            .max(self.min_clients)
            .min(domains);
        if wanted == domains {
            return (0..domains).collect();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (round as u64).wrapping_mul(0x9e37_79b9));
        let mut chosen = sample(&mut rng, domains, wanted).into_vec();
        chosen.sort_unstable();
        chosen
    }

    /// Each chosen domain's share of the round's average: its training rows over the chosen
    /// domains' rows. A domain sends its update already multiplied by its share, so that the
    /// (secure) sum is the average without anyone dividing a single domain's update.
    pub fn shares(rows: &[usize]) -> Vec<f64> {
        let total: usize = rows.iter().sum();
        rows.iter()
            .map(|&r| r as f64 / total.max(1) as f64)
            .collect()
    }

    /// The next global model: `global` plus the summed shares of the updates, divided by the
    /// shares that arrived (1 when no domain dropped out), tensor by tensor.
    pub fn next_global(global: &[Vec<f32>], sum: &[f64], arrived_share: f64) -> Vec<Vec<f32>> {
        let mut values = sum.iter();
        global
            .iter()
            .map(|tensor| {
                tensor
                    .iter()
                    .map(|&w| {
                        let delta = values.next().copied().unwrap_or(0.0);
                        (w as f64 + delta / arrived_share) as f32
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_draws_the_fraction_but_never_fewer_than_the_minimum() {
        let strategy = FedAvg {
            client_fraction: 0.3,
            min_clients: 2,
        };
        assert_eq!(strategy.select(10, 1, 7).len(), 3);
        assert_eq!(strategy.select(4, 1, 7).len(), 2);
        let all = FedAvg {
            client_fraction: 1.0,
            min_clients: 2,
        };
        assert_eq!(all.select(3, 5, 1), vec![0, 1, 2]);
        // Rounds draw differently; the same round and seed draw the same.
        let draws: Vec<Vec<usize>> = (1..=6).map(|r| strategy.select(10, r, 7)).collect();
        assert!(draws.windows(2).any(|w| w[0] != w[1]), "{draws:?}");
        assert_eq!(strategy.select(10, 3, 7), draws[2]);
    }

    #[test]
    fn shares_weight_by_rows_and_a_dropped_share_is_divided_out() {
        let shares = FedAvg::shares(&[100, 300]);
        assert_eq!(shares, vec![0.25, 0.75]);
        // Only the second domain's update (+4 on one weight) arrived: the step is its own.
        let next = FedAvg::next_global(&[vec![1.0]], &[0.75 * 4.0], 0.75);
        assert_eq!(next, vec![vec![5.0]]);
    }
}
