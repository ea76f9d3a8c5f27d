//! KKRT's receiver learns exactly which of its keys the sender holds: the plain intersection,
//! for random sets, the edge cases, and sets that span several chunks of the extension; a
//! message that does not fit the run is refused.

use std::collections::HashSet;

use fedmesh_psi::align_in_the_clear;
use fedmesh_psi::kkrt::{
    CHUNK_BINS, ExtensionChunk, KkrtReceiver, KkrtSender, ReceiverChain, SenderValues, align,
    bitmap_bytes, intersect,
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
        values: vec![0; 47],
    };
    assert!(receiver.intersect(&broken).is_err());
    let (values, order) = sender.finish().unwrap();
    // Values out of order (the receiver searches them as sorted).
    let mut unsorted = values.clone();
    unsorted.values[..32].rotate_left(16);
    let error = receiver.intersect(&unsorted).unwrap_err().to_string();
    assert!(error.contains("not sorted"), "{error}");
    let rows = receiver.intersect(&values).unwrap();
    assert_eq!(rows, plain(&a, &b));
    // A membership bitmap of the wrong length.
    let bits = vec![0u8; bitmap_bytes(b.len()) + 1];
    assert!(order.rows(&bits, &b).is_err());
}

/// Every party's rows of the intersection, ordered by key: N-party KKRT (a chain from the
/// party with the fewest keys) gives what the plain join gives, to every party.
fn check_parties(sets: &[Vec<String>], seed: u64) {
    let got = align(sets, &mut StdRng::seed_from_u64(seed)).unwrap();
    assert_eq!(got, align_in_the_clear(sets));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn two_and_three_parties_learn_their_rows(
        sets in proptest::collection::vec(key_set(40), 2..=3),
        seed in any::<u64>(),
    ) {
        check_parties(&sets, seed);
    }
}

#[test]
fn parties_empty_identical_disjoint_and_mixed() {
    check_parties(&[keys(0..10), Vec::new()], 1);
    check_parties(&[keys(0..100), keys(0..100), keys(0..100)], 2);
    check_parties(&[keys(0..100), keys(100..200), keys(0..100)], 3);
    check_parties(&[keys(0..300), keys(100..400), keys(50..250)], 4);
    // The receiver (fewest keys) is not the first party, and the second run is over the keys
    // the first left.
    check_parties(&[keys(0..500), keys(400..450), keys(420..900)], 5);
}

#[test]
fn every_sender_learns_its_rows_from_the_receivers_bitmap_alone() {
    let mut rng = StdRng::seed_from_u64(9);
    let (a, b) = (keys(0..200), keys(150..400));
    let mut chain = ReceiverChain::new(a.len());
    let setup = chain.start_run(&a, &mut rng).unwrap();
    // A second run cannot open before the first is closed.
    assert!(chain.start_run(&a, &mut rng).is_err());
    let (mut sender, answer) = KkrtSender::new(&b, &setup, &mut rng).unwrap();
    chain.accept(&answer).unwrap();
    while let Some(chunk) = chain.next_chunk().unwrap() {
        sender.absorb(&chunk).unwrap();
    }
    let (values, order) = sender.finish().unwrap();
    assert_eq!(chain.take_values(&values).unwrap(), 50);
    let (rows, bitmaps) = chain.finish(&a).unwrap();
    assert_eq!(rows, (150..200).collect::<Vec<u32>>());
    // One bit per value, 3 per sender key; one set per shared key.
    assert_eq!(bitmaps[0].len(), bitmap_bytes(b.len()));
    let set: u32 = bitmaps[0].iter().map(|b| b.count_ones()).sum();
    assert_eq!(set, 50);
    assert_eq!(
        order.rows(&bitmaps[0], &b).unwrap(),
        (0..50).collect::<Vec<u32>>()
    );
}
