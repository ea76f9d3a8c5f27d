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

/// Where a recommendation job's data comes from: a public dataset the readers turn into the
/// sales, customer and product tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetailSource {
    /// `movielens` (MovieLens 100K) or `hm` (the H&M format).
    pub format: String,
    /// The dataset's folder, relative to the job spec.
    pub path: std::path::PathBuf,
    /// H&M: the fewest distinct items a kept user has.
    #[serde(default = "default_min_interactions")]
    pub min_interactions: usize,
}

fn default_min_interactions() -> usize {
    5
}

/// One domain of the retail mesh and its product's contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetailDomain {
    pub name: String,
    pub contract: std::path::PathBuf,
}

/// NeuMF's shape in a job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NcfModelSpec {
    #[serde(default = "default_factors")]
    pub factors: usize,
    #[serde(default = "default_layers")]
    pub layers: Vec<usize>,
}

fn default_factors() -> usize {
    8
}
fn default_layers() -> Vec<usize> {
    vec![64, 32, 16, 8]
}

/// A recommendation job (`task: recommendation` in `job.yaml`): the retail mesh's three
/// domains, the NCF protocol, the models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendationSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Always `recommendation`.
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    pub data: RetailSource,
    /// Owns the interactions (and the labels).
    pub sales: RetailDomain,
    /// Owns one row per customer.
    pub customer: RetailDomain,
    /// Owns one row per item.
    pub product: RetailDomain,
    /// Seeds the test negatives when the data has no standard split.
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
    #[serde(default)]
    pub model: Option<NcfModelSpec>,
    #[serde(default)]
    pub training: NcfTraining,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
}

fn default_split_seed() -> u64 {
    42
}
fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3]
}

/// Whether a job spec's text is a recommendation job.
pub fn is_recommendation(text: &str) -> bool {
    serde_norway::from_str::<serde_norway::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("task")
                .and_then(|t| t.as_str())
                .map(|t| t == "recommendation")
        })
        .unwrap_or(false)
}

/// The configurations a recommendation job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankingConfig {
    Popularity,
    /// NeuMF over all three domains' data in one place.
    Centralized,
}

impl RankingConfig {
    pub fn name(self) -> &'static str {
        match self {
            RankingConfig::Popularity => "popularity",
            RankingConfig::Centralized => "centralized",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "popularity" => Ok(Self::Popularity),
            "centralized" => Ok(Self::Centralized),
            "split-label-sharing" | "split-label-owner" => Err(format!(
                "`{name}` is not available for recommendation jobs yet: the split NCF across the sales, customer and product domains is being built (run `popularity` and `centralized`)"
            )),
            other => Err(format!(
                "unknown configuration `{other}` for a recommendation job: use popularity or centralized"
            )),
        }
    }
}

/// A recommendation run's result, as `results.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingResult {
    pub config: String,
    pub seed: u64,
    #[serde(flatten)]
    pub metrics: RankingMetrics,
    pub train_seconds: f64,
    pub samples_per_second: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RankingEpoch>,
}

/// A loaded recommendation job: the products read and checked against their contracts, and
/// the split.
pub struct PreparedRecommendation {
    pub spec: RecommendationSpec,
    pub data: fedmesh_data::recommend::RetailData,
    pub split: LeaveOneOut,
}

impl RecommendationSpec {
    /// Reads `job.yaml` (or the folder holding it).
    pub fn load(path: &std::path::Path) -> Result<(Self, std::path::PathBuf), SplitError> {
        let file = if path.is_dir() {
            path.join("job.yaml")
        } else {
            path.to_path_buf()
        };
        let spec_error = |message: String| SplitError::Spec {
            path: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| spec_error(e.to_string()))?;
        let spec: Self = serde_norway::from_str(&text).map_err(|e| spec_error(e.to_string()))?;
        if spec.task != "recommendation" {
            return Err(spec_error(format!(
                "`task: {}` is not `recommendation`",
                spec.task
            )));
        }
        if !["movielens", "hm"].contains(&spec.data.format.as_str()) {
            return Err(spec_error(format!(
                "data format `{}` is not one fedmesh reads: use movielens or hm",
                spec.data.format
            )));
        }
        Ok((spec, file))
    }

    /// Reads the data, checks each product against its contract, and fixes the split: the
    /// data's standard one when it has one, else one derived from `split_seed`.
    pub fn prepare(self, file: &std::path::Path) -> Result<PreparedRecommendation, SplitError> {
        let dir = file.parent().unwrap_or(std::path::Path::new("."));
        let source = dir.join(&self.data.path);
        if !source.exists() {
            return Err(SplitError::Spec {
                path: file.to_path_buf(),
                message: format!(
                    "the data folder {} does not exist (see ../shared/data/README.md for where the datasets come from)",
                    source.display()
                ),
            });
        }
        let data = match self.data.format.as_str() {
            "movielens" => fedmesh_data::recommend::movielens(&source)?,
            _ => fedmesh_data::recommend::hm(&source, self.data.min_interactions)?,
        };
        for (domain, table) in [
            (&self.sales, &data.sales),
            (&self.customer, &data.customers),
            (&self.product, &data.products),
        ] {
            let contract = fedmesh_data::DataContract::from_path(dir.join(&domain.contract))?;
            fedmesh_data::DataProduct::from_source(contract, table)?;
        }
        let split = match &data.standard_split {
            Some(path) => LeaveOneOut::from_file(path, &data.interactions)?,
            None => LeaveOneOut::derive(&data.interactions, self.split_seed),
        };
        Ok(PreparedRecommendation {
            spec: self,
            data,
            split,
        })
    }
}

impl PreparedRecommendation {
    /// Trains and evaluates one configuration for one seed.
    pub fn run(
        &self,
        config: RankingConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<RankingResult, SplitError> {
        let interactions = &self.data.interactions;
        match config {
            RankingConfig::Popularity => Ok(RankingResult {
                config: config.name().into(),
                seed,
                metrics: popularity(&self.split, interactions.items.len()),
                train_seconds: 0.0,
                samples_per_second: 0.0,
                history: Vec::new(),
            }),
            RankingConfig::Centralized => {
                let model = self.spec.model.clone().unwrap_or(NcfModelSpec {
                    factors: default_factors(),
                    layers: default_layers(),
                });
                let run = train_neumf(
                    &self.split,
                    &NegativeSampler::new(interactions, self.spec.training.negatives),
                    &NeuMfConfig {
                        users: interactions.users.len(),
                        items: interactions.items.len(),
                        factors: model.factors,
                        layers: model.layers,
                    },
                    &self.spec.training,
                    seed,
                    observer,
                    stop,
                )?;
                Ok(RankingResult {
                    config: config.name().into(),
                    seed,
                    metrics: run.metrics,
                    train_seconds: run.train_seconds,
                    samples_per_second: run.samples_per_second,
                    history: run.history,
                })
            }
        }
    }
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
