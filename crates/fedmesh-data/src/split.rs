//! Train / validation / test partitions of aligned rows.
//!
//! Every party of a vertical job holds the same entities in the same (aligned) order, so a
//! partition is a list of row positions that all parties share. The validation slice is cut from
//! training rows; it picks the decision threshold and is never trained on.

use std::collections::HashSet;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Row positions of each part, each list sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Partition {
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
}

impl Partition {
    /// Draws a test part of `test_fraction` of the rows and a validation slice of
    /// `valid_fraction` of the rest, both stratified by `strata` (class labels; use one stratum
    /// for regression).
    pub fn stratified(strata: &[i64], test_fraction: f64, valid_fraction: f64, seed: u64) -> Self {
        let all: Vec<u32> = (0..strata.len() as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (test, rest) = stratified_take(&all, strata, test_fraction, &mut rng);
        let (valid, train) = stratified_take(&rest, strata, valid_fraction, &mut rng);
        Self { train, valid, test }
    }

    /// Uses the rows whose key is in `test_keys` as the test part (a standard split published
    /// with a dataset) and cuts a stratified validation slice from the others.
    pub fn with_test_keys(
        keys: &[String],
        test_keys: &HashSet<String>,
        strata: &[i64],
        valid_fraction: f64,
        seed: u64,
    ) -> Self {
        let (test, rest): (Vec<u32>, Vec<u32>) =
            (0..keys.len() as u32).partition(|&r| test_keys.contains(&keys[r as usize]));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (valid, train) = stratified_take(&rest, strata, valid_fraction, &mut rng);
        Self { train, valid, test }
    }

    pub fn len(&self) -> usize {
        self.train.len() + self.valid.len() + self.test.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits `rows` into (taken, kept): `fraction` of each stratum taken at random, both sorted.
fn stratified_take(
    rows: &[u32],
    strata: &[i64],
    fraction: f64,
    rng: &mut ChaCha8Rng,
) -> (Vec<u32>, Vec<u32>) {
    let mut classes: Vec<i64> = rows.iter().map(|&r| strata[r as usize]).collect();
    classes.sort_unstable();
    classes.dedup();
    let (mut taken, mut kept) = (Vec::new(), Vec::new());
    for class in classes {
        let mut members: Vec<u32> = rows
            .iter()
            .copied()
            .filter(|&r| strata[r as usize] == class)
            .collect();
        members.shuffle(rng);
        let n = (members.len() as f64 * fraction).round() as usize;
        taken.extend_from_slice(&members[..n]);
        kept.extend_from_slice(&members[n..]);
    }
    taken.sort_unstable();
    kept.sort_unstable();
    (taken, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_keeps_class_ratios_and_covers_every_row_once() {
        let strata: Vec<i64> = (0..1000).map(|i| (i % 10 == 0) as i64).collect();
        let p = Partition::stratified(&strata, 0.3, 0.1, 7);
        assert_eq!(p.len(), 1000);
        let mut all: Vec<u32> = [p.train.clone(), p.valid.clone(), p.test.clone()].concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 1000);
        let positives = |rows: &[u32]| rows.iter().filter(|&&r| strata[r as usize] == 1).count();
        assert_eq!(positives(&p.test), 30);
        assert_eq!(p.test.len(), 300);
        assert_eq!(positives(&p.valid), 7);
        assert_ne!(p, Partition::stratified(&strata, 0.3, 0.1, 8));
        assert_eq!(p, Partition::stratified(&strata, 0.3, 0.1, 7));
    }

    #[test]
    fn test_keys_fix_the_test_part() {
        let keys: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let test: HashSet<String> = ["2", "5"].iter().map(|s| s.to_string()).collect();
        let p = Partition::with_test_keys(&keys, &test, &[0; 10], 0.25, 1);
        assert_eq!(p.test, vec![2, 5]);
        assert_eq!(p.valid.len(), 2);
        assert_eq!(p.train.len(), 6);
    }
}
