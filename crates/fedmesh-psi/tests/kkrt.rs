//! KKRT's receiver learns exactly which of its keys the sender holds: the plain intersection,
//! for random sets, the edge cases, and sets that span several chunks of the extension; a
//! message that does not fit the run is refused.

use std::collections::HashSet;

use fedmesh_psi::kkrt::{
    CHUNK_BINS, ExtensionChunk, KkrtReceiver, KkrtSender, SenderValues, intersect,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The receiver's rows whose keys the sender holds, computed in the clear.
fn plain(receiver: &[String], sender: &[String]) -> Vec<u32> {
    let sender: HashSet<&String> = sender.iter().collect();
    (0..receiver.len() as u32)
        .filter(|&r| sender.contains(&receiver[r as usize]))
        .collect()
}

fn check(receiver: &[String], sender: &[String], seed: u64) {
    let rows = intersect(receiver, sender, &mut StdRng::seed_from_u64(seed)).unwrap();
    assert_eq!(rows, plain(receiver, sender));
}

fn key_set(max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::hash_set(0u32..60, 0..max)
        .prop_map(|s| s.into_iter().map(|k| format!("customer-{k}")).collect())
}

fn keys(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|k| k.to_string()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn random_sets(a in key_set(40), b in key_set(40), seed in any::<u64>()) {
        check(&a, &b, seed);
    }
}

#[test]
fn empty_identical_disjoint_and_mixed() {
    check(&[], &keys(0..10), 1);
    check(&keys(0..10), &[], 2);
    check(&[], &[], 3);
    check(&keys(0..500), &keys(0..500), 4);
    check(&keys(0..500), &keys(500..1000), 5);
    check(&keys(0..500), &keys(250..750), 6);
}

#[test]
fn sets_larger_than_a_chunk_of_the_extension() {
    // 1.27 × 120,000 bins: three chunks, the last one short.
    let n = 120_000u32;
    assert!(n as usize * 127 / 100 > 2 * CHUNK_BINS);
    check(&keys(0..n), &keys(n / 2..n / 2 + n), 7);
}

#[test]
fn a_message_that_does_not_fit_the_run_is_refused() {
    let mut rng = StdRng::seed_from_u64(8);
    let (a, b) = (keys(0..100), keys(50..150));
    let (mut receiver, setup) = KkrtReceiver::new(&a, &mut rng).unwrap();
    // Bins that are no multiple of 128.
    let mut odd = setup.clone();
    odd.bins += 1;
    let error = KkrtSender::new(&b, &odd, &mut rng)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("bins"), "{error}");
    let (mut sender, answer) = KkrtSender::new(&b, &setup, &mut rng).unwrap();
    let mut short = answer.clone();
    short.base_ot.truncate(100);
    assert!(receiver.accept(&short).is_err());
    receiver.accept(&answer).unwrap();
    let chunk = receiver.next_chunk().unwrap().unwrap();
    // A chunk cut short, or one out of order.
    let cut = ExtensionChunk {
        first_bin: chunk.first_bin,
        columns: chunk.columns[..chunk.columns.len() - 1].to_vec(),
    };
    assert!(sender.absorb(&cut).is_err());
    let later = ExtensionChunk {
        first_bin: chunk.first_bin + 128,
        ..chunk.clone()
    };
    assert!(sender.absorb(&later).is_err());
    sender.absorb(&chunk).unwrap();
    // Values that are not whole.
    let broken = SenderValues {
        by_hash: [vec![0; 15], Vec::new(), Vec::new()],
    };
    assert!(receiver.intersect(&broken).is_err());
    let rows = receiver.intersect(&sender.finish().unwrap()).unwrap();
    assert_eq!(rows, plain(&a, &b));
}
