//! Recommendation runs under the NCF protocol: the popularity baseline, centralized NeuMF, and
//! the ranking evaluation every recommender here is judged by (HR@10 and NDCG@10 of each held-out
//! item among its 99 negatives, see `fedmesh_data::recommend`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::optim::GradientsParams;
use burn::prelude::*;
use fedmesh_data::recommend::{LeaveOneOut, NegativeSampler, rank_metrics};
use fedmesh_model::ncf::{NeuMf, NeuMfConfig, binary_cross_entropy};
use fedmesh_model::{seeded, training_device};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::party::{OptimizerSpec, scalar};
use crate::trainer::Observer;

/// The cut-off of the ranking metrics.
pub const TOP_K: usize = 10;

/// HR@10 and NDCG@10 over the test users.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankingMetrics {
    #[serde(rename = "hr@10")]
    pub hit_ratio: f64,
    #[serde(rename = "ndcg@10")]
    pub ndcg: f64,
    pub users: usize,
}

/// Ranks every test case's candidates by `score` (called with parallel user and item lists,
/// many test cases at a time) and averages HR@10 and NDCG@10.
pub fn evaluate(
    split: &LeaveOneOut,
    mut score: impl FnMut(&[u32], &[u32]) -> Result<Vec<f32>, SplitError>,
) -> Result<RankingMetrics, SplitError> {
    const CASES_PER_CALL: usize = 64;
    let (mut hits, mut ndcg) = (0.0, 0.0);
    for cases in split.test.chunks(CASES_PER_CALL) {
        let mut users = Vec::new();
        let mut items = Vec::new();
        for case in cases {
            for item in case.candidates() {
                users.push(case.user);
                items.push(item);
            }
        }
        let scores = score(&users, &items)?;
        let per_case = scores.len() / cases.len().max(1);
        for chunk in scores.chunks(per_case.max(1)) {
            let (h, n) = rank_metrics(chunk, TOP_K);
            hits += h;
            ndcg += n;
        }
    }
    let users = split.test.len();
    Ok(RankingMetrics {
        hit_ratio: hits / users.max(1) as f64,
        ndcg: ndcg / users.max(1) as f64,
        users,
    })
}

/// Ranks candidates by how many training interactions they have.
pub fn popularity(split: &LeaveOneOut, items: usize) -> RankingMetrics {
    let mut counts = vec![0f32; items];
    for &(_, i) in &split.train {
        counts[i as usize] += 1.0;
    }
    evaluate(split, |_, candidates| {
        Ok(candidates.iter().map(|&i| counts[i as usize]).collect())
    })
    .expect("scoring by counts cannot fail")
}

/// How NeuMF trains: the paper's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NcfTraining {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Sampled negatives per positive, drawn afresh every epoch.
    #[serde(default = "default_negatives")]
    pub negatives: usize,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
}

fn default_epochs() -> usize {
    20
}
fn default_batch() -> usize {
    256
}
fn default_negatives() -> usize {
    4
}

impl Default for NcfTraining {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            batch_size: default_batch(),
            negatives: default_negatives(),
            optimizer: OptimizerSpec::default(),
        }
    }
}

/// One epoch of a recommender's training, and how it then ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingEpoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub metrics: RankingMetrics,
}

/// A trained recommender's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingRun {
    pub metrics: RankingMetrics,
    pub history: Vec<RankingEpoch>,
    pub train_seconds: f64,
    /// Training examples (positives and negatives) per second.
    pub samples_per_second: f64,
}

fn ids(values: &[u32], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), device)
}

/// Trains NeuMF on the split's training interactions (4 fresh negatives per positive each
/// epoch) and ranks the test cases after every epoch; the result is the last epoch's ranking.
pub fn train_neumf(
    split: &LeaveOneOut,
    sampler: &NegativeSampler,
    model: &NeuMfConfig,
    training: &NcfTraining,
    seed: u64,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<RankingRun, SplitError> {
    let device = training_device();
    let mut net: NeuMf = seeded(&device, seed, || model.init(&device));
    let mut optimizer = training.optimizer.init();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let mut trained = Duration::ZERO;
    let mut samples = 0usize;
    let mut history = Vec::new();
    observer.training_started();
    for epoch in 1..=training.epochs {
        let epoch_started = Instant::now();
        let mut examples = sampler.epoch(&split.train, &mut rng);
        examples.shuffle(&mut rng);
        let batches: Vec<_> = examples.chunks(training.batch_size).collect();
        observer.epoch_started(epoch, batches.len());
        let mut loss_sum = 0.0;
        for batch in batches {
            if stop.load(Ordering::Relaxed) {
                return Err(SplitError::Interrupted);
            }
            let users: Vec<u32> = batch.iter().map(|e| e.0).collect();
            let items: Vec<u32> = batch.iter().map(|e| e.1).collect();
            let labels: Vec<f32> = batch.iter().map(|e| e.2).collect();
            let labels = Tensor::<1>::from_data(TensorData::new(labels, [batch.len()]), &device);
            let loss = binary_cross_entropy(
                net.forward(ids(&users, &device), ids(&items, &device)),
                labels,
            );
            let value = scalar(&loss);
            loss_sum += value as f64 * batch.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimizer.step(training.optimizer.learning_rate, net, grads);
            observer.batch_done(value);
        }
        samples += examples.len();
        trained += epoch_started.elapsed();
        let metrics = evaluate_neumf(&net, split)?;
        let record = RankingEpoch {
            epoch,
            train_loss: loss_sum / examples.len().max(1) as f64,
            metrics,
        };
        observer.epoch_done(&crate::trainer::EpochRecord {
            epoch,
            train_loss: record.train_loss,
            valid_loss: None,
            valid_headline: Some(metrics.hit_ratio),
        });
        history.push(record);
    }
    observer.evaluation_started();
    let metrics = evaluate_neumf(&net, split)?;
    tracing::debug!(
        "NeuMF trained and evaluated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(RankingRun {
        metrics,
        history,
        train_seconds: trained.as_secs_f64(),
        samples_per_second: samples as f64 / trained.as_secs_f64().max(1e-9),
    })
}

/// Ranks the test cases with NeuMF in inference mode.
pub fn evaluate_neumf(net: &NeuMf, split: &LeaveOneOut) -> Result<RankingMetrics, SplitError> {
    let net = net.valid();
    let device = training_device().inner();
    evaluate(split, |users, items| {
        let logits = net.forward(ids(users, &device), ids(items, &device));
        Ok(logits
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 logits"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_data::recommend::Interactions;

    /// Two taste groups: users of group g interact with items of group g only. A model that
    /// learns anything ranks a user's held-out item (of its group) above most negatives (mostly
    /// the other group's); popularity, blind to taste, cannot.
    fn two_groups() -> (Interactions, LeaveOneOut) {
        let mut events = Vec::new();
        for u in 0..60 {
            let group = u % 2;
            for k in 0..12 {
                let item = group * 100 + (u * 7 + k * 13) % 100;
                events.push((format!("u{u}"), format!("i{item}"), k as i64));
            }
        }
        // Every item appears at least once, so each user has unseen items of both groups.
        for item in 0..200 {
            events.push((format!("u{}", 60 + item % 2), format!("i{item}"), -1));
        }
        let interactions =
            Interactions::from_events(events.iter().map(|(u, i, t)| (u.as_str(), i.as_str(), *t)));
        let split = LeaveOneOut::derive(&interactions, 5);
        (interactions, split)
    }

    #[test]
    fn neumf_learns_tastes_that_popularity_cannot_see() {
        let (interactions, split) = two_groups();
        let sampler = NegativeSampler::new(&interactions, 4);
        let model = NeuMfConfig {
            users: interactions.users.len(),
            items: interactions.items.len(),
            factors: 8,
            layers: vec![16, 8],
        };
        let training = NcfTraining {
            epochs: 8,
            batch_size: 64,
            optimizer: OptimizerSpec {
                learning_rate: 0.01,
                ..OptimizerSpec::default()
            },
            ..NcfTraining::default()
        };
        let run = train_neumf(
            &split,
            &sampler,
            &model,
            &training,
            1,
            &crate::Silent,
            &AtomicBool::new(false),
        )
        .unwrap();
        let baseline = popularity(&split, interactions.items.len());
        assert_eq!(run.metrics.users, split.test.len());
        assert!(
            run.metrics.hit_ratio > baseline.hit_ratio + 0.2,
            "NeuMF {:?} vs popularity {baseline:?}",
            run.metrics
        );
        assert_eq!(run.history.len(), 8);
    }

    #[test]
    fn a_perfect_scorer_hits_every_time_and_a_constant_one_never() {
        let (_, split) = two_groups();
        let constant = evaluate(&split, |_, items| {
            Ok(items.iter().map(|_| 0.0).collect::<Vec<_>>())
        })
        .unwrap();
        assert_eq!(constant.hit_ratio, 0.0);
        // Scores the held-out item (the first of each 100) highest.
        let mut position = 0usize;
        let best = evaluate(&split, |_, items| {
            Ok(items
                .iter()
                .map(|_| {
                    position += 1;
                    if (position - 1).is_multiple_of(100) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect())
        })
        .unwrap();
        assert_eq!((best.hit_ratio, best.ndcg), (1.0, 1.0));
    }
}
