//! Multi-class and regression objectives train through the split path too.

use std::sync::atomic::AtomicBool;

use fedmesh_data::{FeatureMatrix, Partition};
use fedmesh_model::{
    BottomConfig, HeadConfig, Objective, Targets, TowerConfig, seeded, training_device,
};
use fedmesh_split::{
    DomainParty, InProcess, LabelOwner, LabelPlacement, Metrics, OptimizerSpec, Silent,
    SplitTrainer, TrainingSpec, fit,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROWS: usize = 3000;

/// Two domains of two columns each; the target depends on all four.
fn data(rng: &mut ChaCha8Rng) -> (Vec<FeatureMatrix>, Vec<[f32; 4]>) {
    let xs: Vec<[f32; 4]> = (0..ROWS)
        .map(|_| std::array::from_fn(|_| rng.random::<f32>() * 2.0 - 1.0))
        .collect();
    let matrix = |cols: [usize; 2]| FeatureMatrix {
        rows: ROWS,
        numeric: xs.iter().flat_map(|x| [x[cols[0]], x[cols[1]]]).collect(),
        numeric_width: 2,
        categorical: vec![],
        embeddings: vec![],
    };
    (vec![matrix([0, 1]), matrix([2, 3])], xs)
}

fn train(objective: Objective, targets: Targets, features: Vec<FeatureMatrix>) -> Metrics {
    let device = training_device();
    let optimizer = OptimizerSpec {
        learning_rate: 0.01,
        ..OptimizerSpec::default()
    };
    let domains = features
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let config = BottomConfig {
                numeric: 2,
                embeddings: vec![],
                layers: vec![16, 8],
                batch_norm: false,
                dropout: 0.0,
                interaction: false,
                embedding_std: None,
            };
            let bottom = seeded(&device, 3 + i as u64, || config.init(&device));
            DomainParty::new(format!("d{i}"), f, bottom, &optimizer, device.clone())
        })
        .collect();
    let tower = TowerConfig {
        input: 16,
        layers: vec![16],
        batch_norm: false,
        dropout: 0.0,
    };
    let tower = seeded(&device, 10, || tower.init(&device));
    let head = HeadConfig {
        input: 16,
        layers: vec![],
        outputs: objective.outputs(),
    };
    let head = seeded(&device, 11, || head.init(&device));
    let owner = LabelOwner::new(
        "owner",
        targets,
        objective.clone(),
        head,
        &optimizer,
        device.clone(),
    );
    let mut trainer = SplitTrainer::new(
        InProcess::new(domains, Some(owner), None),
        tower,
        LabelPlacement::LabelOwner,
        objective,
        &optimizer,
        device,
    )
    .unwrap();
    let partition = Partition {
        train: (0..2000).collect(),
        valid: (2000..2300).collect(),
        test: (2300..ROWS as u32).collect(),
    };
    let spec = TrainingSpec {
        epochs: 40,
        batch_size: 64,
        eval_batch_size: 1024,
        optimizer,
        schedule: Default::default(),
    };
    fit(
        &mut trainer,
        &partition,
        &spec,
        1,
        &Silent,
        &AtomicBool::new(false),
    )
    .unwrap()
    .report
    .metrics
    .unwrap()
}

#[test]
fn multi_class_reaches_high_accuracy_and_macro_f1() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (features, xs) = data(&mut rng);
    // Three classes by the sign pattern of a sum across both domains.
    let labels = xs
        .iter()
        .map(|x| {
            let s = x[0] + x[2];
            if s < -0.5 {
                0
            } else if s < 0.5 {
                1
            } else {
                2
            }
        })
        .collect();
    let objective = Objective::CrossEntropy {
        classes: 3,
        class_weights: None,
    };
    match train(objective, Targets::Classes(labels), features) {
        Metrics::MultiClass(m) => {
            assert!(m.accuracy > 0.9, "accuracy {}", m.accuracy);
            assert!(m.macro_f1 > 0.85, "macro-F1 {}", m.macro_f1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn regression_reaches_high_r2() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (features, xs) = data(&mut rng);
    let values: Vec<f32> = xs.iter().map(|x| x[0] * x[3] + x[1] - x[2]).collect();
    // Variance of the test rows' targets: RMSE and R² must tell the same story.
    let test = &values[2300..];
    let mean = test.iter().sum::<f32>() as f64 / test.len() as f64;
    let variance = test.iter().map(|&y| (y as f64 - mean).powi(2)).sum::<f64>() / test.len() as f64;
    match train(Objective::Mse, Targets::Values(values), features) {
        Metrics::Regression(m) => {
            assert!(m.r2 > 0.9, "R² {}", m.r2);
            let implied = ((1.0 - m.r2) * variance).sqrt();
            assert!(
                (m.rmse - implied).abs() < 1e-6,
                "RMSE {} vs {implied}",
                m.rmse
            );
        }
        other => panic!("{other:?}"),
    }
}
