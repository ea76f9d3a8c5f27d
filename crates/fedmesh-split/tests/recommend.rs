//! Centralized NeuMF under the NCF protocol on MovieLens 100K's standard split, against the
//! popularity baseline (skipped, saying why, without `../shared/data`; long: `--ignored`).

use std::path::Path;
use std::sync::atomic::AtomicBool;

use fedmesh_data::recommend::{self, LeaveOneOut};
use fedmesh_model::ncf::NeuMfConfig;
use fedmesh_split::recommend::{NcfTraining, popularity, train_neumf};

#[test]
#[ignore = "trains NeuMF for 20 epochs on MovieLens 100K (about a minute)"]
fn neumf_on_movielens_beats_popularity_far() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/ml-100k");
    if !dir.exists() {
        eprintln!("skipped: {} is not on this machine", dir.display());
        return;
    }
    let data = recommend::movielens(&dir).unwrap();
    let split =
        LeaveOneOut::from_file(data.standard_split.as_ref().unwrap(), &data.interactions).unwrap();
    let model = NeuMfConfig {
        users: data.interactions.users.len(),
        items: data.interactions.items.len(),
        factors: 8,
        layers: vec![64, 32, 16, 8],
    };
    let baseline = popularity(&split, data.interactions.items.len());
    for seed in [1, 2, 3] {
        let run = train_neumf(
            &data.interactions,
            &split,
            &model,
            &NcfTraining::default(),
            seed,
            &fedmesh_split::Silent,
            &AtomicBool::new(false),
        )
        .unwrap();
        eprintln!(
            "seed {seed}: NeuMF HR@10 {:.4} NDCG@10 {:.4} ({:.1} s, {:.0} examples/s); popularity {:.4} / {:.4}",
            run.metrics.hit_ratio,
            run.metrics.ndcg,
            run.train_seconds,
            run.samples_per_second,
            baseline.hit_ratio,
            baseline.ndcg
        );
        for e in &run.history {
            eprintln!(
                "  epoch {}: loss {:.4} HR@10 {:.4} NDCG@10 {:.4}",
                e.epoch, e.train_loss, e.metrics.hit_ratio, e.metrics.ndcg
            );
        }
        assert!(run.metrics.hit_ratio > baseline.hit_ratio + 0.15);
    }
}
