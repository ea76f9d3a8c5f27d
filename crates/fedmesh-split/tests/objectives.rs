//! Multi-class and regression objectives train through the split path too.

use std::sync::atomic::AtomicBool;

use fedmesh_data::{FeatureMatrix, Partition};
use fedmesh_model::{
    BottomConfig, HeadConfig, Objective, Targets, TowerConfig, seeded, training_device,
};
use fedmesh_split::{
    DomainParty, EarlyStopping, FitOutcome, InProcess, KeptEpoch, LabelOwner, LabelPlacement,
    Metrics, OptimizerSpec, Silent, SplitTrainer, TrainingSpec, fit,
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
    let partition = Partition {
        train: (0..2000).collect(),
        valid: (2000..2300).collect(),
        test: (2300..ROWS as u32).collect(),
    };
    let spec = TrainingSpec {
        epochs: 40,
        batch_size: 64,
        eval_batch_size: 1024,
        optimizer: optimizer(),
        schedule: Default::default(),
        keep: Default::default(),
        early_stopping: None,
    };
    train_on(objective, targets, features, &partition, &spec)
        .report
        .metrics
        .unwrap()
}

fn optimizer() -> OptimizerSpec {
    OptimizerSpec {
        learning_rate: 0.01,
        ..OptimizerSpec::default()
    }
}

/// Trains a split network of two domains, the label owner's head fitted to the training rows.
fn train_on(
    objective: Objective,
    targets: Targets,
    features: Vec<FeatureMatrix>,
    partition: &Partition,
    spec: &TrainingSpec,
) -> FitOutcome {
    let device = training_device();
    let optimizer = spec.optimizer.clone();
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
        target_scale: None,
    };
    let head = seeded(&device, 11, || head.init(&device)).fitted_to(&targets, &partition.train);
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
    fit(
        &mut trainer,
        partition,
        spec,
        1,
        &Silent,
        &AtomicBool::new(false),
    )
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

/// A target far from zero in large units (a credit limit: mean 170,000, spread 90,000) trains
/// as well as a standardized one: the head learns the standardized target and maps it back, so
/// the metrics come out in the target's units.
#[test]
fn a_regression_target_in_large_units_is_learned_on_its_standardized_scale() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (features, xs) = data(&mut rng);
    let values: Vec<f32> = xs
        .iter()
        .map(|x| 170_000.0 + 90_000.0 * (x[0] * x[3] + x[1] - x[2]) / 2.0)
        .collect();
    let test = &values[2300..];
    let mean = test.iter().map(|&y| y as f64).sum::<f64>() / test.len() as f64;
    let spread =
        (test.iter().map(|&y| (y as f64 - mean).powi(2)).sum::<f64>() / test.len() as f64).sqrt();
    match train(Objective::Mse, Targets::Values(values), features) {
        Metrics::Regression(m) => {
            assert!(m.r2 > 0.9, "R² {}", m.r2);
            // In NT$, not in standard deviations: the error is a fraction of the spread.
            assert!(
                m.rmse > 0.01 * spread && m.rmse < 0.35 * spread,
                "RMSE {} (spread {spread})",
                m.rmse
            );
        }
        other => panic!("{other:?}"),
    }
}

/// With `keep: best`, the parts evaluated at the end are those of the epoch of lowest
/// validation loss, restored at every party; early stopping ends training `patience` epochs
/// after that epoch. A small training set makes the network overfit, so both happen.
#[test]
fn the_best_epoch_is_restored_and_training_stops_once_it_is_old_enough() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (features, xs) = data(&mut rng);
    let values: Vec<f32> = xs
        .iter()
        .map(|x| x[0] * x[3] + x[1] - x[2] + (rng.random::<f32>() - 0.5))
        .collect();
    let partition = Partition {
        train: (0..60).collect(),
        valid: (2000..2300).collect(),
        test: (2300..ROWS as u32).collect(),
    };
    let spec = TrainingSpec {
        epochs: 300,
        batch_size: 8,
        eval_batch_size: 1024,
        optimizer: OptimizerSpec {
            learning_rate: 0.02,
            ..OptimizerSpec::default()
        },
        schedule: Default::default(),
        keep: KeptEpoch::Best,
        early_stopping: Some(EarlyStopping {
            patience: 10,
            min_delta: 0.0,
        }),
    };
    let outcome = train_on(
        Objective::Mse,
        Targets::Values(values),
        features,
        &partition,
        &spec,
    );
    let epochs = outcome.history.len();
    assert!(epochs < 300, "never stopped early");
    assert_eq!(outcome.kept_epoch + 10, epochs);
    let best = outcome
        .history
        .iter()
        .map(|e| e.valid_loss.unwrap())
        .fold(f64::INFINITY, f64::min);
    let kept = outcome.history[outcome.kept_epoch - 1].valid_loss.unwrap();
    assert_eq!(kept, best);
    let last = outcome.history.last().unwrap().valid_loss.unwrap();
    assert!(last > best, "the last epoch {last} is the best {best}");
    // The final evaluation scores the restored parts: their validation loss is the best one.
    let final_loss = outcome.report.valid_loss.unwrap();
    assert!(
        (final_loss - best).abs() < 1e-6 * best.max(1.0),
        "restored parts score {final_loss}, the best epoch {best}"
    );
}
