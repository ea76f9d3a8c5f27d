//! The retail readers against the real data in `../shared/data` (skipped, saying why, when it is
//! absent): the standard NCF splits load and agree with the readers' interactions, every test
//! item is ranked against exactly 99 items its user never interacted with, and the popularity
//! baseline scores what it should.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fedmesh_data::recommend::{self, LeaveOneOut, RetailData, TEST_NEGATIVES};

fn shared(relative: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(relative);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipped: {} is not on this machine", path.display());
        None
    }
}

/// HR@10 and NDCG@10 of ranking by training popularity.
fn popularity(data: &RetailData, split: &LeaveOneOut) -> (f64, f64) {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &(_, i) in &split.train {
        *counts.entry(i).or_default() += 1;
    }
    let (mut hr, mut ndcg) = (0.0, 0.0);
    for case in &split.test {
        let scores: Vec<f32> = case
            .candidates()
            .map(|i| counts.get(&i).copied().unwrap_or(0) as f32)
            .collect();
        let (h, n) = recommend::rank_metrics(&scores, 10);
        hr += h;
        ndcg += n;
    }
    let n = split.test.len() as f64;
    let _ = data;
    (hr / n, ndcg / n)
}

fn check_split(data: &RetailData, split: &LeaveOneOut) {
    let seen = data.interactions.seen();
    for case in &split.test {
        assert_eq!(case.negatives.len(), TEST_NEGATIVES);
        assert!(
            case.negatives
                .iter()
                .all(|n| !seen[case.user as usize].contains(n))
        );
        assert!(!split.train.contains(&(case.user, case.item)));
    }
    assert_eq!(
        split.train.len() + split.test.len(),
        data.interactions.events.len()
    );
}

#[test]
fn movielens_100k_and_its_standard_split() {
    let Some(dir) = shared("ml-100k") else { return };
    let data = recommend::movielens(&dir).unwrap();
    assert_eq!(data.interactions.events.len(), 100_000);
    assert_eq!(data.interactions.users.len(), 943);
    assert_eq!(data.interactions.items.len(), 1682);
    assert_eq!(data.customers.batch.num_rows(), 943);
    assert_eq!(data.products.batch.num_rows(), 1682);
    let split =
        LeaveOneOut::from_file(data.standard_split.as_ref().unwrap(), &data.interactions).unwrap();
    assert_eq!(split.test.len(), 943);
    check_split(&data, &split);
    let (hr, ndcg) = popularity(&data, &split);
    eprintln!("MovieLens 100K popularity: HR@10 {hr:.4}, NDCG@10 {ndcg:.4}");
    // Published popularity baselines on this protocol sit around 0.4 HR@10.
    assert!((0.3..0.55).contains(&hr), "{hr}");
}

#[test]
fn hm_sample_and_its_standard_split() {
    let Some(dir) = shared("hm-sample") else {
        return;
    };
    let data = recommend::hm(&dir, 5).unwrap();
    let split =
        LeaveOneOut::from_file(data.standard_split.as_ref().unwrap(), &data.interactions).unwrap();
    assert_eq!(split.test.len(), 498);
    assert_eq!(
        data.interactions.users.len(),
        498,
        "users with at least 5 interactions"
    );
    assert_eq!(data.customers.batch.num_rows(), 498);
    assert_eq!(
        data.products.batch.num_rows(),
        data.interactions.items.len()
    );
    check_split(&data, &split);
    let (hr, ndcg) = popularity(&data, &split);
    eprintln!("H&M sample popularity: HR@10 {hr:.4}, NDCG@10 {ndcg:.4}");
    assert!(hr > 0.0);
}
