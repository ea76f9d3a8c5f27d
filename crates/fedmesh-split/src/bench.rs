//! Throughput of split training, measured the same way by `fedmesh bench split` and by
//! `cargo bench`.

use std::time::Instant;

use fedmesh_data::FeatureMatrix;
use fedmesh_model::{BottomConfig, HeadConfig, Objective, Targets, TowerConfig, training_device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
                InProcess {
                    domains,
                    label_owner: None,
                    labels: Some(labels),
                },
                tower,
                LabelPlacement::Governance { head },
                objective,
                &optimizer,
                device,
            )
            .expect("in-process labels are available"),
        )
    };
    let plans: Vec<BatchPlan> = (0..rows / bench.batch_size)
        .map(|b| {
            let rows = (b * bench.batch_size) as u32..((b + 1) * bench.batch_size) as u32;
            BatchPlan::train(rows.collect(), optimizer.learning_rate)
        })
        .collect();
    let mut step = |i: usize| {
        trainer
            .train_step(&plans[i % plans.len()])
            .expect("in-process steps do not fail");
    };
    for i in 0..bench.warmup_steps {
        step(i);
    }
    let started = Instant::now();
    for i in 0..bench.steps {
        step(i);
    }
    (bench.steps * bench.batch_size) as f64 / started.elapsed().as_secs_f64()
}
