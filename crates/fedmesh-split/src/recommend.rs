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

/// A recommender that trains an epoch at a time on given examples and ranks the test cases:
/// centralized NeuMF and the split NCF train through the same loop ([`fit_ranking`]).
pub trait Recommender {
    /// One epoch over `examples` ((user, item, label), in order); returns the mean loss.
    fn train_epoch(
        &mut self,
        examples: &[(u32, u32, f32)],
        training: &NcfTraining,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<f64, SplitError>;

    fn evaluate(&mut self, split: &LeaveOneOut) -> Result<RankingMetrics, SplitError>;
}

/// Trains `model` on the split's training interactions (fresh negatives every epoch, shuffled)
/// and ranks the test cases after every epoch; the result is the last epoch's ranking.
pub fn fit_ranking(
    model: &mut dyn Recommender,
    split: &LeaveOneOut,
    sampler: &NegativeSampler,
    training: &NcfTraining,
    seed: u64,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<RankingRun, SplitError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut trained = Duration::ZERO;
    let mut samples = 0usize;
    let mut history = Vec::new();
    observer.training_started();
    for epoch in 1..=training.epochs {
        let started = Instant::now();
        let mut examples = sampler.epoch(&split.train, &mut rng);
        examples.shuffle(&mut rng);
        observer.epoch_started(epoch, examples.len().div_ceil(training.batch_size));
        let train_loss = model.train_epoch(&examples, training, observer, stop)?;
        trained += started.elapsed();
        samples += examples.len();
        let metrics = model.evaluate(split)?;
        observer.epoch_done(&crate::trainer::EpochRecord {
            epoch,
            train_loss,
            valid_loss: None,
            valid_headline: Some(metrics.hit_ratio),
        });
        history.push(RankingEpoch {
            epoch,
            train_loss,
            metrics,
        });
    }
    observer.evaluation_started();
    let metrics = history
        .last()
        .map(|e| e.metrics)
        .map_or_else(|| model.evaluate(split), Ok)?;
    Ok(RankingRun {
        metrics,
        history,
        train_seconds: trained.as_secs_f64(),
        samples_per_second: samples as f64 / trained.as_secs_f64().max(1e-9),
    })
}

/// NeuMF with its optimizer, as a [`Recommender`].
struct NeuMfTrainer {
    net: NeuMf,
    optimizer: burn::optim::ModuleOptimizer,
    device: Device,
}

impl Recommender for NeuMfTrainer {
    fn train_epoch(
        &mut self,
        examples: &[(u32, u32, f32)],
        training: &NcfTraining,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<f64, SplitError> {
        let device = &self.device;
        let mut loss_sum = 0.0;
        for batch in examples.chunks(training.batch_size) {
            if stop.load(Ordering::Relaxed) {
                return Err(SplitError::Interrupted);
            }
            let users: Vec<u32> = batch.iter().map(|e| e.0).collect();
            let items: Vec<u32> = batch.iter().map(|e| e.1).collect();
            let labels: Vec<f32> = batch.iter().map(|e| e.2).collect();
            let labels = Tensor::<1>::from_data(TensorData::new(labels, [batch.len()]), device);
            let loss = binary_cross_entropy(
                self.net.forward(ids(&users, device), ids(&items, device)),
                labels,
            );
            let value = scalar(&loss);
            loss_sum += value as f64 * batch.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &self.net);
            self.net =
                self.optimizer
                    .step(training.optimizer.learning_rate, self.net.clone(), grads);
            observer.batch_done(value);
        }
        Ok(loss_sum / examples.len().max(1) as f64)
    }

    fn evaluate(&mut self, split: &LeaveOneOut) -> Result<RankingMetrics, SplitError> {
        evaluate_neumf(&self.net, split)
    }
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
    let mut trainer = NeuMfTrainer {
        net: seeded(&device, seed, || model.init(&device)),
        optimizer: training.optimizer.init(),
        device,
    };
    fit_ranking(&mut trainer, split, sampler, training, seed, observer, stop)
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
    /// The centralized NeuMF baseline's shape.
    #[serde(default)]
    pub model: Option<NcfModelSpec>,
    /// The split NCF's shape (the split configurations need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_model: Option<SplitNcfSpec>,
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
    /// The split NCF, labels (and head) at governance.
    SplitLabelSharing,
    /// The split NCF, labels and head kept by sales.
    SplitLabelOwner,
}

impl RankingConfig {
    pub fn name(self) -> &'static str {
        match self {
            RankingConfig::Popularity => "popularity",
            RankingConfig::Centralized => "centralized",
            RankingConfig::SplitLabelSharing => "split-label-sharing",
            RankingConfig::SplitLabelOwner => "split-label-owner",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "popularity" => Ok(Self::Popularity),
            "centralized" => Ok(Self::Centralized),
            "split-label-sharing" => Ok(Self::SplitLabelSharing),
            "split-label-owner" => Ok(Self::SplitLabelOwner),
            other => Err(format!(
                "unknown configuration `{other}` for a recommendation job: use popularity, centralized, split-label-sharing or split-label-owner"
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

impl RankingResult {
    pub fn of(config: RankingConfig, seed: u64, run: RankingRun) -> Self {
        Self {
            config: config.name().into(),
            seed,
            metrics: run.metrics,
            train_seconds: run.train_seconds,
            samples_per_second: run.samples_per_second,
            history: run.history,
        }
    }
}

/// A loaded recommendation job: the products read and checked against their contracts, and
/// the split.
pub struct PreparedRecommendation {
    pub spec: RecommendationSpec,
    pub data: fedmesh_data::recommend::RetailData,
    pub split: LeaveOneOut,
    /// The customer and product domains' features, one row per user and per item, when the
    /// spec has a split model.
    pub entities: Option<(fedmesh_data::FeatureMatrix, fedmesh_data::FeatureMatrix)>,
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
        let mut contracts = Vec::new();
        for (domain, table) in [
            (&self.sales, &data.sales),
            (&self.customer, &data.customers),
            (&self.product, &data.products),
        ] {
            let contract = fedmesh_data::DataContract::from_path(dir.join(&domain.contract))?;
            fedmesh_data::DataProduct::from_source(contract.clone(), table)?;
            contracts.push(contract);
        }
        let split = match &data.standard_split {
            Some(path) => LeaveOneOut::from_file(path, &data.interactions)?,
            None => LeaveOneOut::derive(&data.interactions, self.split_seed),
        };
        let entities = match &self.split_model {
            Some(model) => Some((
                entity_features(
                    contracts[1].clone(),
                    &data.customers,
                    "user_id",
                    &data.interactions.users,
                    &model.customer.features,
                )?,
                entity_features(
                    contracts[2].clone(),
                    &data.products,
                    "item_id",
                    &data.interactions.items,
                    &model.product.features,
                )?,
            )),
            None => None,
        };
        Ok(PreparedRecommendation {
            spec: self,
            data,
            split,
            entities,
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
            RankingConfig::SplitLabelSharing | RankingConfig::SplitLabelOwner => {
                let (Some(spec), Some((customers, products))) =
                    (&self.spec.split_model, &self.entities)
                else {
                    return Err(SplitError::Protocol(format!(
                        "job `{}` has no `split_model`: the split configurations need one",
                        self.spec.name
                    )));
                };
                let mut model = SplitNcf::new(
                    spec,
                    customers.clone(),
                    products.clone(),
                    interactions.users.len(),
                    interactions.items.len(),
                    &self.spec.training.optimizer,
                    config == RankingConfig::SplitLabelSharing,
                    seed,
                )?;
                let run = train_split_ncf(
                    &mut model,
                    &self.split,
                    &NegativeSampler::new(interactions, self.spec.training.negatives),
                    &self.spec.training,
                    seed,
                    observer,
                    stop,
                )?;
                Ok(RankingResult::of(config, seed, run))
            }
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
                Ok(RankingResult::of(config, seed, run))
            }
        }
    }
}

/// The split NCF's shape: what each domain's bottom reads and how wide the parts are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitNcfSpec {
    /// Width of the sales domain's user and item embeddings.
    #[serde(default = "default_embedding")]
    pub embedding: usize,
    /// The sales bottom's layers over [user ‖ item] embeddings.
    #[serde(default = "default_sales_layers")]
    pub sales: Vec<usize>,
    /// The customer domain's features (its entity table's columns) and bottom layers.
    pub customer: EntityBottomSpec,
    pub product: EntityBottomSpec,
    /// Governance's tower over the three activations; a linear head follows.
    #[serde(default = "default_tower")]
    pub tower: Vec<usize>,
}

fn default_embedding() -> usize {
    16
}
fn default_sales_layers() -> Vec<usize> {
    vec![32]
}
fn default_tower() -> Vec<usize> {
    vec![32, 16]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityBottomSpec {
    pub features: Vec<fedmesh_data::FeatureSpec>,
    #[serde(default = "default_entity_layers")]
    pub layers: Vec<usize>,
}

fn default_entity_layers() -> Vec<usize> {
    vec![8]
}

/// An entity table's features, one row per user (or item) in the interactions' index order.
pub fn entity_features(
    contract: fedmesh_data::DataContract,
    table: &fedmesh_data::SourceTable,
    key: &str,
    ids: &[String],
    features: &[fedmesh_data::FeatureSpec],
) -> Result<fedmesh_data::FeatureMatrix, SplitError> {
    let product = fedmesh_data::DataProduct::from_source(contract, table)?;
    let keys = product.column_strings(key)?;
    let row_of: std::collections::HashMap<&str, u32> = keys
        .iter()
        .enumerate()
        .filter_map(|(r, k)| k.as_deref().map(|k| (k, r as u32)))
        .collect();
    let rows = ids
        .iter()
        .map(|id| {
            row_of.get(id.as_str()).copied().ok_or_else(|| {
                SplitError::Protocol(format!(
                    "data product `{}` has no row for `{id}`, which the interactions name",
                    product.name()
                ))
            })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let all: Vec<u32> = (0..product.rows() as u32).collect();
    // Entity attributes hold no labels: the pipeline is fitted on every entity.
    let pipeline = fedmesh_data::FeaturePipeline::fit(&product, features, &all)?;
    Ok(pipeline.transform(&product)?.gather(&rows))
}

/// The sales domain's rows for a list of examples: the user and the item, as embedding indices.
pub fn sales_features(
    examples: &[(u32, u32)],
    users: usize,
    items: usize,
    width: usize,
) -> fedmesh_data::FeatureMatrix {
    fedmesh_data::FeatureMatrix {
        rows: examples.len(),
        numeric: Vec::new(),
        numeric_width: 0,
        categorical: examples
            .iter()
            .flat_map(|&(u, i)| [u as i64, i as i64])
            .collect(),
        embeddings: vec![(users, width), (items, width)],
    }
}

/// The split NCF in one process: sales (user and item embeddings; the labels), customer (its
/// attributes of each example's user) and product (its attributes of each example's item)
/// bottoms, governance's tower, and the head at governance (`share_labels`) or at sales.
pub struct SplitNcf {
    trainer: crate::trainer::SplitTrainer<crate::transport::InProcess>,
    customers: fedmesh_data::FeatureMatrix,
    products: fedmesh_data::FeatureMatrix,
    users: usize,
    items: usize,
    embedding: usize,
    share_labels: bool,
}

/// The order of the split NCF's domains: sales, customer, product.
pub const NCF_DOMAINS: [&str; 3] = ["sales", "customer", "product"];

impl SplitNcf {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: &SplitNcfSpec,
        customers: fedmesh_data::FeatureMatrix,
        products: fedmesh_data::FeatureMatrix,
        users: usize,
        items: usize,
        optimizer: &OptimizerSpec,
        share_labels: bool,
        seed: u64,
    ) -> Result<Self, SplitError> {
        use fedmesh_model::{BottomConfig, HeadConfig, TowerConfig};
        let device = training_device();
        let objective = fedmesh_model::Objective::CrossEntropy {
            classes: 2,
            class_weights: None,
        };
        let bottom = |features: &fedmesh_data::FeatureMatrix, layers: &[usize], part: u64| {
            let config = BottomConfig {
                numeric: features.numeric_width,
                embeddings: features.embeddings.clone(),
                layers: layers.to_vec(),
                batch_norm: false,
                dropout: 0.0,
                // Sales holds user and item: it computes their GMF interaction itself.
                interaction: part == 1,
                embedding_std: Some(0.01),
            };
            seeded(&device, crate::job::part_seed(seed, part), || {
                config.init(&device)
            })
        };
        let sales_rows = sales_features(&[], users, items, spec.embedding);
        let parties = [
            (NCF_DOMAINS[0], sales_rows, spec.sales.as_slice()),
            (
                NCF_DOMAINS[1],
                customers.gather(&[]),
                spec.customer.layers.as_slice(),
            ),
            (
                NCF_DOMAINS[2],
                products.gather(&[]),
                spec.product.layers.as_slice(),
            ),
        ];
        let mut domains = Vec::new();
        for (part, (name, features, layers)) in parties.into_iter().enumerate() {
            let model = bottom(&features, layers, 1 + part as u64);
            domains.push(crate::party::DomainParty::new(
                name,
                features,
                model,
                optimizer,
                device.clone(),
            ));
        }
        let cut: usize = domains.iter().map(|d| d.cut_width()).sum();
        let tower = TowerConfig {
            input: cut,
            layers: spec.tower.clone(),
            batch_norm: false,
            dropout: 0.0,
        };
        let head = HeadConfig {
            input: tower.output(),
            layers: Vec::new(),
            outputs: 2,
        };
        let head = seeded(
            &device,
            crate::job::part_seed(seed, crate::job::HEAD_PART),
            || head.init(&device),
        );
        let empty = fedmesh_model::Targets::Classes(Vec::new());
        let transport = crate::transport::InProcess {
            domains,
            label_owner: (!share_labels).then(|| {
                crate::party::LabelOwner::new(
                    NCF_DOMAINS[0],
                    empty.clone(),
                    objective.clone(),
                    head.clone(),
                    optimizer,
                    device.clone(),
                )
            }),
            labels: share_labels.then(|| empty.clone()),
        };
        let tower = seeded(
            &device,
            crate::job::part_seed(seed, crate::job::TOWER_PART),
            || tower.init(&device),
        );
        let placement = if share_labels {
            crate::trainer::LabelPlacement::Governance { head }
        } else {
            crate::trainer::LabelPlacement::LabelOwner
        };
        let trainer = crate::trainer::SplitTrainer::new(
            transport, tower, placement, objective, optimizer, device,
        )?;
        Ok(Self {
            trainer,
            customers,
            products,
            users,
            items,
            embedding: spec.embedding,
            share_labels,
        })
    }

    /// Gives each domain its rows of `examples`: sales the (user, item) pairs and the labels,
    /// customer each example's user's attributes, product each example's item's attributes.
    pub fn set_examples(&mut self, examples: &[(u32, u32, f32)]) -> Result<(), SplitError> {
        let pairs: Vec<(u32, u32)> = examples.iter().map(|e| (e.0, e.1)).collect();
        let users: Vec<u32> = examples.iter().map(|e| e.0).collect();
        let items: Vec<u32> = examples.iter().map(|e| e.1).collect();
        let labels = fedmesh_model::Targets::Classes(examples.iter().map(|e| e.2 as i64).collect());
        let transport = self.trainer.transport_mut();
        transport.domains[0].set_features(sales_features(
            &pairs,
            self.users,
            self.items,
            self.embedding,
        ))?;
        transport.domains[1].set_features(self.customers.gather(&users))?;
        transport.domains[2].set_features(self.products.gather(&items))?;
        if self.share_labels {
            transport.labels = Some(labels);
        } else if let Some(owner) = &mut transport.label_owner {
            owner.set_targets(labels);
        }
        self.trainer.reload_labels()
    }

    /// The domains' current rows (for tests: each example's attributes).
    pub fn domain_features(&self, domain: usize) -> &fedmesh_data::FeatureMatrix {
        self.trainer.transport().domains[domain].features()
    }
}

impl Recommender for SplitNcf {
    /// One epoch over `examples` in batches; returns the mean loss.
    fn train_epoch(
        &mut self,
        examples: &[(u32, u32, f32)],
        training: &NcfTraining,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<f64, SplitError> {
        use crate::trainer::Trainer;
        self.set_examples(examples)?;
        let rows: Vec<u32> = (0..examples.len() as u32).collect();
        let batches: Vec<&[u32]> = rows.chunks(training.batch_size).collect();
        let mut loss_sum = 0.0;
        for batch in batches {
            if stop.load(Ordering::Relaxed) {
                return Err(SplitError::Interrupted);
            }
            let plan =
                crate::wire::BatchPlan::train(batch.to_vec(), training.optimizer.learning_rate);
            let loss = self.trainer.train_step(&plan)?;
            loss_sum += loss as f64 * batch.len() as f64;
            observer.batch_done(loss);
        }
        Ok(loss_sum / examples.len().max(1) as f64)
    }

    /// Ranks the test cases: every candidate scored with its own user's and item's attributes,
    /// the scores read where the head is.
    fn evaluate(&mut self, split: &LeaveOneOut) -> Result<RankingMetrics, SplitError> {
        use crate::trainer::Trainer;
        evaluate(split, |users, items| {
            let examples: Vec<(u32, u32, f32)> = users
                .iter()
                .zip(items)
                .enumerate()
                .map(|(k, (&u, &i))| (u, i, if k % (TEST_CANDIDATES) == 0 { 1.0 } else { 0.0 }))
                .collect();
            self.set_examples(&examples)?;
            let rows: Vec<u32> = (0..examples.len() as u32).collect();
            for chunk in rows.chunks(4096) {
                self.trainer.eval_batch(&crate::wire::BatchPlan::eval(
                    crate::wire::Part::Test,
                    chunk.to_vec(),
                ))?;
            }
            let mut report = self.trainer.report()?;
            report.test_scores.sort_by_key(|(row, _)| *row);
            Ok(report
                .test_scores
                .iter()
                .map(|(_, scores)| scores[1])
                .collect())
        })
    }
}

/// A test case's candidates: the held-out item and its negatives.
const TEST_CANDIDATES: usize = fedmesh_data::recommend::TEST_NEGATIVES + 1;

/// Trains the split NCF and ranks the test cases after every epoch.
pub fn train_split_ncf(
    model: &mut SplitNcf,
    split: &LeaveOneOut,
    sampler: &NegativeSampler,
    training: &NcfTraining,
    seed: u64,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<RankingRun, SplitError> {
    fit_ranking(model, split, sampler, training, seed, observer, stop)
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

    /// Each entity's taste group as its one attribute.
    fn group_attributes(ids: &[String]) -> fedmesh_data::FeatureMatrix {
        let numeric: Vec<f32> = ids
            .iter()
            .map(|id| {
                let n: u32 = id[1..].parse().unwrap();
                if id.starts_with('i') {
                    (n / 100) as f32
                } else {
                    (n % 2) as f32
                }
            })
            .collect();
        fedmesh_data::FeatureMatrix {
            rows: ids.len(),
            numeric,
            numeric_width: 1,
            categorical: Vec::new(),
            embeddings: Vec::new(),
        }
    }

    fn split_ncf(interactions: &Interactions, share_labels: bool) -> SplitNcf {
        let spec = SplitNcfSpec {
            embedding: 8,
            sales: vec![16],
            customer: EntityBottomSpec {
                features: Vec::new(),
                layers: vec![4],
            },
            product: EntityBottomSpec {
                features: Vec::new(),
                layers: vec![4],
            },
            tower: vec![16],
        };
        SplitNcf::new(
            &spec,
            group_attributes(&interactions.users),
            group_attributes(&interactions.items),
            interactions.users.len(),
            interactions.items.len(),
            &OptimizerSpec {
                learning_rate: 0.01,
                ..OptimizerSpec::default()
            },
            share_labels,
            3,
        )
        .unwrap()
    }

    #[test]
    fn the_split_ncf_learns_tastes_in_both_configurations_with_the_same_numbers() {
        let (interactions, split) = two_groups();
        let sampler = NegativeSampler::new(&interactions, 4);
        let training = NcfTraining {
            epochs: 8,
            batch_size: 64,
            optimizer: OptimizerSpec {
                learning_rate: 0.01,
                ..OptimizerSpec::default()
            },
            ..NcfTraining::default()
        };
        let mut runs = Vec::new();
        for share_labels in [true, false] {
            let mut model = split_ncf(&interactions, share_labels);
            runs.push(
                train_split_ncf(
                    &mut model,
                    &split,
                    &sampler,
                    &training,
                    1,
                    &crate::Silent,
                    &AtomicBool::new(false),
                )
                .unwrap(),
            );
        }
        let baseline = popularity(&split, interactions.items.len());
        eprintln!("split {:?}, popularity {baseline:?}", runs[0].metrics);
        assert!(
            runs[0].metrics.hit_ratio > baseline.hit_ratio + 0.2,
            "split {:?} vs popularity {baseline:?}",
            runs[0].metrics
        );
        // Where the head runs changes who sees what, not the arithmetic.
        assert_eq!(runs[0].metrics, runs[1].metrics);
        assert_eq!(
            runs[0]
                .history
                .iter()
                .map(|e| e.train_loss)
                .collect::<Vec<_>>(),
            runs[1]
                .history
                .iter()
                .map(|e| e.train_loss)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_candidate_is_scored_with_its_own_attributes() {
        let (interactions, split) = two_groups();
        let mut model = split_ncf(&interactions, false);
        let case = &split.test[0];
        let candidates: Vec<(u32, u32, f32)> = case
            .candidates()
            .enumerate()
            .map(|(k, i)| (case.user, i, if k == 0 { 1.0 } else { 0.0 }))
            .collect();
        assert_eq!(candidates.len(), 100);
        model.set_examples(&candidates).unwrap();
        let items = group_attributes(&interactions.items);
        let users = group_attributes(&interactions.users);
        let sales = model.domain_features(0);
        let product = model.domain_features(2);
        let customer = model.domain_features(1);
        for (k, &(u, i, _)) in candidates.iter().enumerate() {
            // Sales sees the pair; product the candidate's own attributes; customer the user's.
            assert_eq!(sales.categorical[2 * k..2 * k + 2], [u as i64, i as i64]);
            assert_eq!(product.numeric[k], items.numeric[i as usize]);
            assert_eq!(customer.numeric[k], users.numeric[u as usize]);
        }
        // Negatives are of the other group as often as not: attributes differ across candidates.
        assert!(product.numeric.iter().any(|&g| g != product.numeric[0]));
    }
}
