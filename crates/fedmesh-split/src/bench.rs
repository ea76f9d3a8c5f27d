//! Throughput of split training, measured the same way by `fedmesh bench split` and by
//! `cargo bench`.

use std::time::Instant;

use fedmesh_data::FeatureMatrix;
use fedmesh_model::{BottomConfig, HeadConfig, Objective, Targets, TowerConfig, training_device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SplitError;
use crate::party::{DomainParty, OptimizerSpec};
use crate::trainer::{JointNetwork, JointTrainer, LabelPlacement, SplitTrainer, Trainer};
use crate::transport::InProcess;
use crate::wire::BatchPlan;

/// The seed's fraud model: three bottoms 10→32→16 with BatchNorm, top 48→32→32→2.
pub struct SplitBench {
    pub batch_size: usize,
    pub warmup_steps: usize,
    pub steps: usize,
}

impl Default for SplitBench {
    fn default() -> Self {
        Self {
            batch_size: 256,
            warmup_steps: 50,
            steps: 1000,
        }
    }
}

/// Samples per second of split training steps (label sharing, in-process transport).
pub fn split_throughput(bench: &SplitBench) -> f64 {
    throughput(bench, false)
}

/// Samples per second of the same network trained as one module (no cut layer): what the split
/// protocol costs on top.
pub fn joint_throughput(bench: &SplitBench) -> f64 {
    throughput(bench, true)
}

fn throughput(bench: &SplitBench, joint: bool) -> f64 {
    let rows = 65_536;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let device = training_device();
    device.seed(7);
    let optimizer = OptimizerSpec::default();
    let domains: Vec<DomainParty> = (0..3)
        .map(|d| {
            let features = FeatureMatrix {
                rows,
                numeric: (0..rows * 10).map(|_| rng.random::<f32>() - 0.5).collect(),
                numeric_width: 10,
                categorical: Vec::new(),
                embeddings: Vec::new(),
            };
            let bottom = BottomConfig {
                numeric: 10,
                embeddings: Vec::new(),
                layers: vec![32, 16],
                batch_norm: true,
                dropout: 0.0,
                interaction: false,
                embedding_std: None,
            }
            .init(&device);
            DomainParty::new(
                format!("d{d}"),
                features,
                bottom,
                &optimizer,
                device.clone(),
            )
        })
        .collect();
    let labels = Targets::Classes((0..rows).map(|_| rng.random_bool(0.1) as i64).collect());
    let tower = TowerConfig {
        input: 48,
        layers: vec![32, 32],
        batch_norm: false,
        dropout: 0.0,
    }
    .init(&device);
    let head = HeadConfig {
        input: 32,
        layers: Vec::new(),
        outputs: 2,
        target_scale: None,
    }
    .init(&device);
    let objective = Objective::CrossEntropy {
        classes: 2,
        class_weights: None,
    };
    let mut trainer: Box<dyn Trainer> = if joint {
        let (features, bottoms) = domains
            .into_iter()
            .map(|d: DomainParty| (d.features().clone(), d.model().clone()))
            .unzip();
        Box::new(JointTrainer::new(
            JointNetwork {
                bottoms,
                tower,
                head,
            },
            features,
            labels,
            objective,
            &optimizer,
            device,
        ))
    } else {
        Box::new(
            SplitTrainer::new(
                InProcess::new(domains, None, Some(labels)),
                tower,
                LabelPlacement::Governance {
                    head: Box::new(head),
                },
                objective,
                &optimizer,
                device,
            )
            .expect("in-process labels are available"),
        )
    };
    let rows: Vec<u32> = (0..rows as u32).collect();
    samples_per_second(trainer.as_mut(), &rows, bench, optimizer.learning_rate)
        .expect("in-process steps do not fail")
}

/// Samples per second of `trainer`'s training steps over consecutive batches of `rows`, after
/// `bench.warmup_steps` untimed steps: the same measurement for every transport.
pub fn samples_per_second(
    trainer: &mut dyn Trainer,
    rows: &[u32],
    bench: &SplitBench,
    learning_rate: f64,
) -> Result<f64, SplitError> {
    let plans: Vec<BatchPlan> = rows
        .chunks_exact(bench.batch_size)
        .map(|batch| BatchPlan::train(batch.to_vec(), learning_rate))
        .collect();
    assert!(!plans.is_empty(), "fewer rows than one batch");
    // As `fit` does: each step announces the next, so remote domains can start on it early.
    let mut step = |i: usize| {
        let last = i + 1 == bench.warmup_steps + bench.steps;
        trainer.announce((!last).then(|| &plans[(i + 1) % plans.len()]));
        trainer.train_step(&plans[i % plans.len()])
    };
    for i in 0..bench.warmup_steps {
        step(i)?;
    }
    let started = Instant::now();
    for i in bench.warmup_steps..bench.warmup_steps + bench.steps {
        step(i)?;
    }
    Ok((bench.steps * bench.batch_size) as f64 / started.elapsed().as_secs_f64())
}
