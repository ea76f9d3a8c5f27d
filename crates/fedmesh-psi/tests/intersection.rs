//! The aligned result equals the plain intersection, for random sets of 2 and 3 parties.

use std::collections::HashSet;

use fedmesh_psi::{Party, PsiError, align, align_in_the_clear, check_keys};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Checks one run: every party's rows hold exactly the keys all parties share, and row k of
/// every party holds the same key.
fn check(sets: &[Vec<String>], seed: u64) {
    let alignments = align(sets, &mut StdRng::seed_from_u64(seed)).unwrap();
    assert_eq!(
        alignments,
        align_in_the_clear(sets),
        "the protocol computes the plain join"
    );
    let mut plain: HashSet<&String> = sets[0].iter().collect();
    for set in &sets[1..] {
        let other: HashSet<&String> = set.iter().collect();
        plain.retain(|k| other.contains(k));
    }
    let aligned: Vec<Vec<&String>> = sets
        .iter()
        .zip(&alignments)
        .map(|(keys, a)| a.rows.iter().map(|&r| &keys[r as usize]).collect())
        .collect();
    assert_eq!(aligned[0].len(), plain.len());
    assert_eq!(aligned[0].iter().copied().collect::<HashSet<_>>(), plain);
    for other in &aligned[1..] {
        assert_eq!(
            other, &aligned[0],
            "every party's k-th row is the same entity"
        );
    }
}

/// Distinct keys drawn from a small universe, so that random sets overlap.
fn key_set(max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::hash_set(0u32..60, 0..max)
        .prop_map(|s| s.into_iter().map(|k| format!("customer-{k}")).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn two_parties(a in key_set(40), b in key_set(40), seed in any::<u64>()) {
        check(&[a, b], seed);
    }

    #[test]
    fn three_parties(a in key_set(40), b in key_set(40), c in key_set(40), seed in any::<u64>()) {
        check(&[a, b, c], seed);
    }
}

fn keys(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|k| k.to_string()).collect()
}

#[test]
fn empty_identical_disjoint_and_mixed_sets() {
    for parties in [2, 3] {
        let cases: Vec<Vec<Vec<String>>> = vec![
            vec![Vec::new(); parties],
            vec![keys(0..50); parties],
            (0..parties as u32)
                .map(|p| keys(p * 100..p * 100 + 50))
                .collect(),
            (0..parties as u32)
                .map(|p| keys(p * 10..p * 10 + 50))
                .collect(),
        ];
        for (i, sets) in cases.iter().enumerate() {
            check(sets, i as u64);
        }
    }
    // Identical sets in different orders align completely; disjoint ones not at all.
    let mut reversed = keys(0..50);
    reversed.reverse();
    let alignments = align(&[keys(0..50), reversed], &mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(alignments[0].rows.len(), 50);
    let disjoint = align(&[keys(0..50), keys(50..100)], &mut StdRng::seed_from_u64(1)).unwrap();
    assert!(disjoint[0].rows.is_empty());
}

#[test]
fn duplicate_and_empty_keys_name_the_product_and_the_first_offending_row() {
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let err = check_keys("clients", "ID", &keys(&["a", "b", "a", "a"])).unwrap_err();
    assert!(matches!(
        err,
        PsiError::DuplicateKey {
            row: 3,
            first: 1,
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.contains("`clients`") && text.contains("`ID`") && text.contains("row 3"),
        "{text}"
    );
    // The key is a value of the domain's column: it never leaves in an error.
    let err = check_keys("clients", "ID", &keys(&["secret-id", "secret-id"])).unwrap_err();
    assert!(!err.to_string().contains("secret-id"), "{err}");
    let err = check_keys("clients", "ID", &keys(&["a", "", "b"])).unwrap_err();
    assert!(err.to_string().contains("row 2"), "{err}");
    assert!(check_keys("clients", "ID", &keys(&["a", "b"])).is_ok());
}

#[test]
fn the_agreed_order_is_the_keys_order_whatever_the_secrets() {
    let mut shuffled = keys(0..200);
    shuffled.reverse();
    let sets = [keys(0..150), shuffled, keys(50..300)];
    let first = align(&sets, &mut StdRng::seed_from_u64(1)).unwrap();
    let second = align(&sets, &mut StdRng::seed_from_u64(2)).unwrap();
    assert_eq!(first, second, "fresh secrets and orders, same alignment");
    let aligned: Vec<&String> = first[0]
        .rows
        .iter()
        .map(|&r| &sets[0][r as usize])
        .collect();
    let mut sorted = aligned.clone();
    sorted.sort();
    assert_eq!(aligned, sorted);
    assert_eq!(aligned.len(), 100);
}

#[test]
fn a_malformed_list_is_refused_naming_its_sender() {
    let party = Party::new(3, &mut StdRng::seed_from_u64(1));
    let list = party.blind(&keys(0..3), 0..3);
    let err = party.reblind(&list[..40], "domain `retail`").unwrap_err();
    assert!(err.to_string().contains("domain `retail`"), "{err}");
    let mut bad = list.clone();
    bad[32..64].fill(0xff);
    let err = party.reblind(&bad, "domain `retail`").unwrap_err();
    assert!(err.to_string().contains("point 1"), "{err}");
    let err = party.rows(&[0, 0], &keys(0..3)).unwrap_err();
    assert!(matches!(err, PsiError::MembershipSize { .. }), "{err}");
}
