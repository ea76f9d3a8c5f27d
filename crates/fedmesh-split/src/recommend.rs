//! Recommendation runs under the NCF protocol: the popularity baseline, centralized NeuMF, and
//! the ranking evaluation every recommender here is judged by (HR@10 and NDCG@10 of each held-out
//! item among its 99 negatives, see `fedmesh_data::recommend`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::optim::GradientsParams;
use burn::prelude::*;
use fedmesh_data::product::SourceTable;
use fedmesh_data::recommend::{
    InteractionColumns, Interactions, LeaveOneOut, NegativeSampler, RetailData, TestCase,
    rank_metrics,
};
use fedmesh_data::{DataContract, DataProduct};
use fedmesh_model::ncf::{NeuMf, NeuMfConfig, binary_cross_entropy};
use fedmesh_model::{seeded, training_device};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::job::{RunConfig, RunResult};
use crate::party::{OptimizerSpec, scalar};
use crate::scores::Metrics;
use crate::split_ncf::{
    EntityTable, NcfInProcess, NcfParty, NcfRole, SplitNcf, SplitNcfSpec, entity_features,
};
use crate::task::Task;
use crate::trainer::EpochRecord;
use crate::trainer::Observer;
use crate::trainer::{AfterEpoch, EarlyStopping, EpochChoice, KeptEpoch};

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
    score: impl FnMut(&[u32], &[u32]) -> Result<Vec<f32>, SplitError>,
) -> Result<RankingMetrics, SplitError> {
    rank_all(&split.test, score)
}

/// HR@10 and NDCG@10 over `all` cases (test or validation), each ranked by `score`.
pub fn rank_all(
    all: &[TestCase],
    mut score: impl FnMut(&[u32], &[u32]) -> Result<Vec<f32>, SplitError>,
) -> Result<RankingMetrics, SplitError> {
    const CASES_PER_CALL: usize = 64;
    let (mut hits, mut ndcg) = (0.0, 0.0);
    for cases in all.chunks(CASES_PER_CALL) {
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
    let users = all.len();
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NcfTraining {
    /// Passes over the training interactions.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Examples per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Sampled negatives per positive, drawn afresh every epoch.
    #[serde(default = "default_negatives")]
    pub negatives: usize,
    /// Adam's settings.
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// Which epoch's parts the run keeps: the last, or the one of best validation HR@10.
    #[serde(default, skip_serializing_if = "KeptEpoch::is_default")]
    pub keep: KeptEpoch,
    /// Stop once the validation HR@10 has not improved for a while (`min_delta` in HR@10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
}

impl NcfTraining {
    /// Whether the run holds out validation cases: to keep its best epoch, or to stop early.
    /// Without either, every epoch ranks the test cases (the NCF protocol's curve) and the last
    /// epoch's ranking is the result.
    pub fn validates(&self) -> bool {
        EpochChoice::new(self.keep, self.early_stopping, self.epochs).validates()
    }
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
            keep: KeptEpoch::default(),
            early_stopping: None,
        }
    }
}

/// One epoch of a recommender's training, and how it then ranked (the validation cases when the
/// run validates, else the test cases).
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
    /// Training examples of the last epoch (positives and negatives).
    #[serde(default)]
    pub examples_per_epoch: usize,
    /// The epoch whose parts were ranked on the test cases (a validating run's best).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_epoch: Option<usize>,
}

fn ids(values: &[u32], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    let len = values.len();
    Tensor::from_data(TensorData::new(values, [len]), device)
}

/// What sales draws from its interactions: each epoch's training examples and the test
/// cases' candidates.
pub struct SalesExamples {
    split: LeaveOneOut,
    sampler: NegativeSampler,
    rng: ChaCha8Rng,
    /// Every test case's candidates (user, item, label), case after case, each case's in an
    /// order of their own: whoever scores them cannot tell the held-out item by its place.
    test: Vec<(u32, u32, f32)>,
    /// The validation cases' candidates, likewise.
    valid: Vec<(u32, u32, f32)>,
}

/// The part numbers of the streams that order each test and validation case's candidates.
const TEST_ORDER_PART: u64 = 102;
const VALID_ORDER_PART: u64 = 103;

/// Every case's candidates (user, item, label), case after case, shuffled within each case by
/// the stream `part` of `seed`.
fn candidates_of(cases: &[TestCase], seed: u64, part: u64) -> Vec<(u32, u32, f32)> {
    let mut order = ChaCha8Rng::seed_from_u64(crate::job::part_seed(seed, part));
    cases
        .iter()
        .flat_map(|case| {
            let mut candidates: Vec<(u32, u32, f32)> = case
                .candidates()
                .enumerate()
                .map(|(k, item)| (case.user, item, if k == 0 { 1.0 } else { 0.0 }))
                .collect();
            candidates.shuffle(&mut order);
            candidates
        })
        .collect()
}

impl SalesExamples {
    /// `negatives` per positive each epoch; the draws (and the training order) from `seed`.
    pub fn new(
        interactions: &Interactions,
        split: LeaveOneOut,
        negatives: usize,
        seed: u64,
    ) -> Self {
        Self {
            sampler: NegativeSampler::new(interactions, negatives),
            test: candidates_of(&split.test, seed, TEST_ORDER_PART),
            valid: candidates_of(&split.valid, seed, VALID_ORDER_PART),
            split,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The next epoch's examples (user, item, label): every training positive and fresh
    /// negatives, shuffled.
    pub fn training(&mut self) -> Vec<(u32, u32, f32)> {
        let mut examples = self.sampler.epoch(&self.split.train, &mut self.rng);
        examples.shuffle(&mut self.rng);
        examples
    }

    /// Every test case's 100 candidates, case after case.
    pub fn test(&self) -> &[(u32, u32, f32)] {
        &self.test
    }

    /// Every validation case's 100 candidates, case after case.
    pub fn valid(&self) -> &[(u32, u32, f32)] {
        &self.valid
    }

    pub fn split(&self) -> &LeaveOneOut {
        &self.split
    }
}

/// A recommender that trains an epoch at a time and ranks the test cases: centralized NeuMF and
/// the split NCF train through the same loop ([`fit_ranking`]).
pub trait Recommender {
    /// Draws the next epoch's training examples where the interactions are, and hands them to
    /// whoever trains on them; returns how many there are.
    fn next_epoch(&mut self) -> Result<usize, SplitError>;

    /// One epoch over the examples drawn last, in batches; returns the mean loss.
    fn train_epoch(
        &mut self,
        training: &NcfTraining,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<f64, SplitError>;

    /// HR@10 and NDCG@10 over the test cases, or over the validation cases.
    fn evaluate(&mut self, cases: Cases) -> Result<RankingMetrics, SplitError>;

    /// Every holder keeps a copy of its parts as they are now (the best epoch so far).
    fn checkpoint(&mut self) -> Result<(), SplitError>;

    /// Every part back to its last checkpoint.
    fn restore(&mut self) -> Result<(), SplitError>;
}

/// Which held-out cases a recommender ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cases {
    Test,
    Validation,
}

/// Trains `model` for `training.epochs` epochs (fresh negatives every epoch). Without
/// validation, ranks the test cases after every epoch and the result is the last epoch's
/// ranking (the NCF protocol). With it (`keep: best` or early stopping), ranks the validation
/// cases after every epoch, keeps the parts of the best HR@10 as `keep` says, stops early as
/// `early_stopping` says, and ranks the test cases once at the end. The training time includes
/// drawing and handing out each epoch's examples.
pub fn fit_ranking(
    model: &mut dyn Recommender,
    training: &NcfTraining,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<RankingRun, SplitError> {
    let mut trained = Duration::ZERO;
    let mut samples = 0usize;
    let mut examples_per_epoch = 0;
    let mut history = Vec::new();
    let mut choice = EpochChoice::new(training.keep, training.early_stopping, training.epochs);
    let validates = choice.validates();
    observer.training_started();
    for epoch in 1..=training.epochs {
        let started = Instant::now();
        let examples = model.next_epoch()?;
        examples_per_epoch = examples;
        observer.epoch_started(epoch, examples.div_ceil(training.batch_size));
        let train_loss = model.train_epoch(training, observer, stop)?;
        trained += started.elapsed();
        samples += examples;
        let metrics = model.evaluate(if validates {
            Cases::Validation
        } else {
            Cases::Test
        })?;
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
        if validates {
            // Higher HR@10 is better: its negation is the loss the choice minimizes.
            match choice.after(epoch, -metrics.hit_ratio) {
                AfterEpoch::Checkpoint => model.checkpoint()?,
                AfterEpoch::Stop => break,
                AfterEpoch::Continue => {}
            }
        }
    }
    observer.evaluation_started();
    let last = history.len();
    let (metrics, kept_epoch) = if validates {
        let (kept, restore) = choice.kept(last);
        if restore {
            model.restore()?;
        }
        (model.evaluate(Cases::Test)?, (kept != last).then_some(kept))
    } else {
        let metrics = history
            .last()
            .map(|e| e.metrics)
            .map_or_else(|| model.evaluate(Cases::Test), Ok)?;
        (metrics, None)
    };
    Ok(RankingRun {
        metrics,
        history,
        train_seconds: trained.as_secs_f64(),
        samples_per_second: samples as f64 / trained.as_secs_f64().max(1e-9),
        examples_per_epoch,
        kept_epoch,
    })
}

/// NeuMF with its optimizer and the interactions, as a [`Recommender`].
struct NeuMfTrainer {
    net: NeuMf,
    kept: crate::party::Kept<NeuMf>,
    optimizer: burn::optim::ModuleOptimizer,
    device: Device,
    examples: SalesExamples,
    epoch: Vec<(u32, u32, f32)>,
}

impl Recommender for NeuMfTrainer {
    fn next_epoch(&mut self) -> Result<usize, SplitError> {
        self.epoch = self.examples.training();
        Ok(self.epoch.len())
    }

    fn train_epoch(
        &mut self,
        training: &NcfTraining,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<f64, SplitError> {
        let device = &self.device;
        let mut loss_sum = 0.0;
        for batch in self.epoch.chunks(training.batch_size) {
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
        Ok(loss_sum / self.epoch.len().max(1) as f64)
    }

    fn evaluate(&mut self, cases: Cases) -> Result<RankingMetrics, SplitError> {
        let split = self.examples.split();
        let cases = match cases {
            Cases::Test => &split.test,
            Cases::Validation => &split.valid,
        };
        rank_neumf(&self.net, cases)
    }

    fn checkpoint(&mut self) -> Result<(), SplitError> {
        self.kept.keep(&self.net);
        Ok(())
    }

    fn restore(&mut self) -> Result<(), SplitError> {
        self.net = self.kept.restored("the centralized recommender")?;
        Ok(())
    }
}

/// Trains NeuMF on the interactions' training positives (`training.negatives` fresh negatives
/// per positive each epoch) and ranks the test cases after every epoch; the result is the last
/// epoch's ranking.
pub fn train_neumf(
    interactions: &Interactions,
    split: &LeaveOneOut,
    model: &NeuMfConfig,
    training: &NcfTraining,
    seed: u64,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<RankingRun, SplitError> {
    let device = training_device();
    let mut trainer = NeuMfTrainer {
        net: seeded(&device, seed, || model.init(&device)),
        kept: Default::default(),
        optimizer: training.optimizer.init(),
        device,
        examples: SalesExamples::new(interactions, split.clone(), training.negatives, seed),
        epoch: Vec::new(),
    };
    fit_ranking(&mut trainer, training, observer, stop)
}

/// Ranks the test cases with NeuMF in inference mode.
pub fn evaluate_neumf(net: &NeuMf, split: &LeaveOneOut) -> Result<RankingMetrics, SplitError> {
    rank_neumf(net, &split.test)
}

/// Ranks `cases` with NeuMF in inference mode.
fn rank_neumf(net: &NeuMf, cases: &[TestCase]) -> Result<RankingMetrics, SplitError> {
    let net = net.valid();
    let device = training_device().inner();
    rank_all(cases, |users, items| {
        let logits = net.forward(ids(users, &device), ids(items, &device));
        Ok(logits
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 logits"))
    })
}

/// How a recommendation job's domains hold their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetailFormat {
    /// Each domain reads its own table where its contract's server says: sales the
    /// interactions, customer one row per user, product one row per item.
    Tables,
    /// MovieLens 100K (`u.data`, `u.user`, `u.item`), which a reader turns into the three
    /// tables (with its standard split, when the folder has one).
    Movielens,
    /// The H&M format (transactions, customers, articles), likewise.
    Hm,
}

/// Where a recommendation job's data comes from, and which columns join it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetailSource {
    /// `tables` (each domain reads its own table) or a reader: `movielens`, `hm`.
    pub format: RetailFormat,
    /// `movielens` and `hm`: the dataset's folder, relative to the job spec. `tables` takes
    /// none: each domain's contract says where its table is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The fewest distinct items a kept user has (`tables` and `hm`; MovieLens 100K's users
    /// all have 20 or more).
    #[serde(default = "default_min_interactions")]
    pub min_interactions: usize,
    /// `tables`: the interaction table's user column, and by default the key of customer's.
    #[serde(default = "default_user")]
    pub user: String,
    /// `tables`: the interaction table's item column, and by default the key of product's.
    #[serde(default = "default_item")]
    pub item: String,
    /// `tables`: the interaction table's time column (an integer, or a date `YYYY-MM-DD`):
    /// each user's latest interaction is held out for test.
    #[serde(default = "default_time")]
    pub time: String,
}

fn default_min_interactions() -> usize {
    5
}
fn default_user() -> String {
    InteractionColumns::default().user
}
fn default_item() -> String {
    InteractionColumns::default().item
}
fn default_time() -> String {
    InteractionColumns::default().time
}

impl RetailSource {
    /// The interaction table's columns: those the spec names for `tables`, the readers' own
    /// otherwise.
    pub fn columns(&self) -> InteractionColumns {
        match self.format {
            RetailFormat::Tables => InteractionColumns {
                user: self.user.clone(),
                item: self.item.clone(),
                time: self.time.clone(),
            },
            RetailFormat::Movielens | RetailFormat::Hm => InteractionColumns::default(),
        }
    }

    /// Reads a reader format's dataset in `dir` (the folder `path` names, or a domain's own
    /// copy); `named_by` is the file that names the folder, for the error when it is missing.
    pub fn read(&self, dir: &Path, named_by: &Path) -> Result<RetailData, SplitError> {
        let missing = |message: String| SplitError::Spec {
            path: named_by.to_path_buf(),
            message,
        };
        if !dir.exists() {
            return Err(missing(format!(
                "the data folder {} does not exist (see ../shared/data/README.md for where the datasets come from)",
                dir.display()
            )));
        }
        Ok(match self.format {
            RetailFormat::Movielens => fedmesh_data::recommend::movielens(dir)?,
            RetailFormat::Hm => fedmesh_data::recommend::hm(dir, self.min_interactions)?,
            RetailFormat::Tables => {
                return Err(missing(
                    "`format: tables` has no dataset folder: each domain reads its own table"
                        .into(),
                ));
            }
        })
    }
}

/// One domain of the retail mesh and its product's contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetailDomain {
    /// The domain's name.
    pub name: String,
    /// Its product's contract, relative to the job file.
    pub contract: std::path::PathBuf,
    /// Customer and product: the key column of the domain's entity table, when it is not the
    /// interaction table's user (item) column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// NeuMF's shape in a job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NcfModelSpec {
    /// Width of the GMF embeddings.
    #[serde(default = "default_factors")]
    pub factors: usize,
    /// Widths of the MLP layers (the first is the two MLP embeddings together).
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendationSpec {
    /// The job's name.
    pub name: String,
    /// What the job is for, in a sentence.
    #[serde(default)]
    pub description: String,
    /// Always `recommendation`.
    pub task: Task,
    /// Why the model is trained: checked against policies and contracts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Where the interactions and entity tables are, and their columns.
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
    /// Epochs, batches, sampled negatives, optimizer.
    #[serde(default)]
    pub training: NcfTraining,
    /// The training seeds.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The spec file (or what names a spec sent as text); its folder is where relative paths
    /// start. Not part of the spec's text.
    #[serde(skip)]
    pub file: PathBuf,
}

fn default_split_seed() -> u64 {
    42
}
fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3]
}

/// Whether a job spec's text is a recommendation job (`task: recommendation`).
pub fn is_recommendation(text: &str) -> bool {
    crate::task::Task::named_in(text, Path::new("")).is_ok_and(|t| t == Some(Task::Recommendation))
}

/// The configurations a recommendation job compares, in order.
pub const RANKING_CONFIGS: [RunConfig; 4] = [
    RunConfig::Popularity,
    RunConfig::Centralized,
    RunConfig::SplitLabelSharing,
    RunConfig::SplitLabelOwner,
];

impl RunResult {
    /// A recommender's run under the NCF protocol: HR@10 and NDCG@10 on the test users after
    /// every epoch (the per-epoch headline is the epoch's HR@10); `train_rows` counts an
    /// epoch's training examples (positives and their sampled negatives), `test_rows` the
    /// held-out users.
    pub fn ranking(config: &RunConfig, seed: u64, run: RankingRun) -> Self {
        Self {
            config: config.name(),
            seed,
            metrics: Metrics::Ranking(run.metrics),
            train_rows: run.examples_per_epoch,
            valid_rows: 0,
            test_rows: run.metrics.users,
            train_seconds: run.train_seconds,
            cut_layer_bytes: 0,
            samples_per_second: run.samples_per_second,
            history: run
                .history
                .iter()
                .map(|e| EpochRecord {
                    epoch: e.epoch,
                    train_loss: e.train_loss,
                    valid_loss: None,
                    valid_headline: Some(e.metrics.hit_ratio),
                })
                .collect(),
            kept_epoch: run.kept_epoch,
            curves: None,
            model_files: Vec::new(),
            wire: None,
            alignment: None,
            federation: None,
            test_scores: Vec::new(),
        }
    }
}

/// A loaded recommendation job: the products read and checked against their contracts, and
/// the split.
pub struct PreparedRecommendation {
    pub spec: RecommendationSpec,
    pub interactions: Interactions,
    pub split: LeaveOneOut,
    /// The customer and product domains' entity tables, checked against their contracts.
    pub entity_tables: [EntityTable; 2],
}

/// What one domain of a recommendation job reads for a run.
pub enum RetailShare {
    /// Sales: its interactions, and their leave-one-out split.
    Sales {
        product: DataProduct,
        interactions: Interactions,
        split: LeaveOneOut,
    },
    /// Customer or product: its entity table.
    Entity(EntityTable),
}

impl RetailShare {
    /// The data product the share was read from.
    pub fn product(&self) -> &DataProduct {
        match self {
            Self::Sales { product, .. } => product,
            Self::Entity(table) => &table.product,
        }
    }
}

impl RecommendationSpec {
    /// Reads `job.yaml` (or the folder holding it).
    pub fn load(path: &Path) -> Result<(Self, PathBuf), SplitError> {
        let (text, file) = crate::job::read_spec(path)?;
        Ok((Self::from_yaml(&text, &file)?, file))
    }

    /// Parses a spec's text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self, SplitError> {
        let spec_error = |message: String| SplitError::Spec {
            path: origin.to_path_buf(),
            message,
        };
        let mut spec: Self = serde_norway::from_str(text).map_err(|e| spec_error(e.to_string()))?;
        spec.file = origin.to_path_buf();
        if spec.task != Task::Recommendation {
            return Err(spec_error(format!(
                "`task: {}` is not `recommendation`",
                spec.task.name()
            )));
        }
        match (spec.data.format, &spec.data.path) {
            (RetailFormat::Tables, Some(_)) => {
                return Err(spec_error(
                    "`data.path` is for the dataset readers (`movielens`, `hm`): with `format: tables` each domain's contract says where its table is".into(),
                ));
            }
            (RetailFormat::Movielens | RetailFormat::Hm, None) => {
                return Err(spec_error(
                    "`data.path` is missing: the dataset reader needs the dataset's folder".into(),
                ));
            }
            _ => {}
        }
        let limits = spec.limit_problems();
        if !limits.is_empty() {
            return Err(spec_error(limits.join("; ")));
        }
        Ok(spec)
    }

    /// Every number of the spec outside its range (see [`crate::limits`]), one sentence each.
    pub fn limit_problems(&self) -> Vec<String> {
        use crate::limits::{MAX_EMBEDDING_WIDTH, MAX_NEGATIVES};
        let mut limits = crate::limits::Limits::default();
        let training = &self.training;
        limits.training(
            training.epochs,
            training.batch_size,
            1,
            &training.optimizer,
            &self.seeds,
        );
        limits.count("training.negatives", training.negatives, 1, MAX_NEGATIVES);
        limits.early_stopping(training.early_stopping.as_ref(), training.epochs);
        if let Some(model) = &self.model {
            limits.count("model.factors", model.factors, 1, MAX_EMBEDDING_WIDTH);
            limits.layers("model.layers", &model.layers, true);
        }
        if let Some(split) = &self.split_model {
            limits.count(
                "split_model.embedding",
                split.embedding,
                1,
                MAX_EMBEDDING_WIDTH,
            );
            limits.layers("split_model.sales", &split.sales, true);
            limits.layers("split_model.customer.layers", &split.customer.layers, true);
            limits.layers("split_model.product.layers", &split.product.layers, true);
            limits.layers("split_model.tower", &split.tower, false);
        }
        limits.problems()
    }

    /// The spec's text, for the nodes of a mesh.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a recommendation spec serializes")
    }

    /// The domain that plays `role`.
    pub fn domain(&self, role: NcfRole) -> &RetailDomain {
        match role {
            NcfRole::Sales => &self.sales,
            NcfRole::Customer => &self.customer,
            NcfRole::Product => &self.product,
        }
    }

    /// The role of the domain named `name`.
    pub fn role_of(&self, name: &str) -> Option<NcfRole> {
        NcfRole::ALL
            .into_iter()
            .find(|&role| self.domain(role).name == name)
    }

    /// The split model, which the split configurations need.
    pub fn split_model(&self) -> Result<&SplitNcfSpec, SplitError> {
        self.split_model.as_ref().ok_or_else(|| SplitError::Job {
            job: self.name.clone(),
            reason: "it has no `split_model`: the split configurations need one".into(),
        })
    }

    /// The key column of the entity table `role` owns (none for sales).
    pub fn entity_key(&self, role: NcfRole) -> Option<String> {
        let columns = self.data.columns();
        match role {
            NcfRole::Sales => None,
            NcfRole::Customer => Some(self.customer.key.clone().unwrap_or(columns.user)),
            NcfRole::Product => Some(self.product.key.clone().unwrap_or(columns.item)),
        }
    }

    /// Reads the product `role` serves (from `data` when given, else where its contract's
    /// server says) and checks it against the contract: sales's interactions and their split,
    /// or an entity table. With a reader format, `data` is the dataset's folder, of which the
    /// domain keeps only its own table.
    pub fn read_product(
        &self,
        role: NcfRole,
        contract: &Path,
        data: Option<&Path>,
    ) -> Result<RetailShare, SplitError> {
        let document = DataContract::from_path(contract)?;
        let (path, format) = match data {
            Some(path) => (
                path.to_path_buf(),
                document
                    .local_source(Path::new("."))
                    .and_then(|(_, format)| format),
            ),
            None => document
                .local_source(contract.parent().unwrap_or(Path::new(".")))
                .ok_or_else(|| fedmesh_data::DataError::NoSource {
                    product: document.product_name().to_string(),
                })?,
        };
        match self.data.format {
            RetailFormat::Tables => {
                if !path.is_file() {
                    return Err(SplitError::Spec {
                        path: contract.to_path_buf(),
                        message: format!(
                            "the table {} does not exist: with `format: tables` the contract's server names the domain's own file",
                            path.display()
                        ),
                    });
                }
                let table = SourceTable::read(&path, format.as_deref())?;
                self.share(role, document, &table, None)
            }
            RetailFormat::Movielens | RetailFormat::Hm => {
                let retail = self.data.read(&path, contract)?;
                self.share(role, document, role.table(&retail), Some(&retail))
            }
        }
    }

    /// `role`'s share of its product read from `table`; `dataset` is the reader's dataset the
    /// table came from, which holds sales's interactions already (and maybe a standard split).
    fn share(
        &self,
        role: NcfRole,
        contract: DataContract,
        table: &SourceTable,
        dataset: Option<&RetailData>,
    ) -> Result<RetailShare, SplitError> {
        let product = DataProduct::from_source(contract, table)?;
        let Some(key) = self.entity_key(role) else {
            let interactions = match dataset {
                Some(retail) => retail.interactions.clone(),
                None => Interactions::from_product(
                    &product,
                    &self.data.columns(),
                    self.data.min_interactions,
                )?,
            };
            if interactions.events.is_empty() {
                return Err(SplitError::Job {
                    job: self.name.clone(),
                    reason: format!(
                        "data product `{}` holds no user with {} or more distinct items (`data.min_interactions`)",
                        product.name(),
                        self.data.min_interactions
                    ),
                });
            }
            let mut split = match dataset.and_then(|retail| retail.standard_split.as_deref()) {
                Some(path) => LeaveOneOut::from_file(path, &interactions)?,
                None => LeaveOneOut::derive(&interactions, self.split_seed),
            };
            if self.training.validates() {
                split = split.with_validation(&interactions, self.split_seed);
            }
            return Ok(RetailShare::Sales {
                product,
                interactions,
                split,
            });
        };
        if product.contract.property(&key).is_none() {
            return Err(SplitError::Job {
                job: self.name.clone(),
                reason: format!(
                    "data product `{}` has no key column `{key}` in its contract: name the {} domain's key with `{}.key`",
                    product.name(),
                    role.name(),
                    role.name()
                ),
            });
        }
        Ok(RetailShare::Entity(EntityTable { product, key }))
    }

    /// Reads every domain's product where its contract says (a reader format: the dataset's
    /// folder the spec names, read once), checks each against its contract and the split
    /// model's features against the entity tables, and fixes the split.
    pub fn prepare(self, file: &Path) -> Result<PreparedRecommendation, SplitError> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let dataset = match &self.data.path {
            Some(path) => Some(self.data.read(&dir.join(path), file)?),
            None => None,
        };
        let mut sales = None;
        let mut entities = Vec::new();
        for role in NcfRole::ALL {
            let contract = dir.join(&self.domain(role).contract);
            let share = match &dataset {
                Some(retail) => self.share(
                    role,
                    DataContract::from_path(&contract)?,
                    role.table(retail),
                    Some(retail),
                )?,
                None => self.read_product(role, &contract, None)?,
            };
            match share {
                RetailShare::Sales {
                    interactions,
                    split,
                    ..
                } => sales = Some((interactions, split)),
                RetailShare::Entity(table) => entities.push((role, table)),
            }
        }
        let (interactions, split) = sales.expect("sales is a role");
        if let Some(model) = &self.split_model {
            for (role, table) in &entities {
                let ids = role.entity_ids(&interactions);
                entity_features(table, ids, model.features(*role))?;
            }
        }
        let [(_, customer), (_, product)]: [(NcfRole, EntityTable); 2] =
            entities.try_into().expect("two entity roles");
        Ok(PreparedRecommendation {
            spec: self,
            interactions,
            split,
            entity_tables: [customer, product],
        })
    }
}

impl PreparedRecommendation {
    /// The split NCF's three domains in this process, for one seed; with `trained`, every
    /// part loaded from the folder a run saved them in, to serve rankings.
    pub fn in_process_ncf(
        &self,
        share_labels: bool,
        seed: u64,
        trained: Option<&Path>,
    ) -> Result<SplitNcf<NcfInProcess>, SplitError> {
        let spec = self.spec.split_model()?;
        let training = &self.spec.training;
        let sales = NcfParty::sales(
            &self.spec.sales.name,
            spec,
            &self.interactions,
            self.split.clone(),
            training,
            !share_labels,
            seed,
            trained,
        )?;
        let [customer, product] = self.entity_tables.clone();
        let customer = NcfParty::entity(
            NcfRole::Customer,
            &self.spec.customer.name,
            spec,
            customer,
            &training.optimizer,
            seed,
            trained,
        )?;
        let product = NcfParty::entity(
            NcfRole::Product,
            &self.spec.product.name,
            spec,
            product,
            &training.optimizer,
            seed,
            trained,
        )?;
        let domains = NcfInProcess::with_parties(sales, customer, product)?;
        match trained {
            Some(dir) => SplitNcf::trained(domains, spec, share_labels, dir),
            None => SplitNcf::new(domains, spec, &training.optimizer, share_labels, seed),
        }
    }

    /// Trains and evaluates one configuration for one seed.
    pub fn run(
        &self,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<RunResult, SplitError> {
        let interactions = &self.interactions;
        let run = match config {
            RunConfig::Popularity => RankingRun {
                metrics: popularity(&self.split, interactions.items.len()),
                history: Vec::new(),
                train_seconds: 0.0,
                samples_per_second: 0.0,
                examples_per_epoch: 0,
                kept_epoch: None,
            },
            RunConfig::SplitLabelSharing | RunConfig::SplitLabelOwner => {
                let mut model =
                    self.in_process_ncf(*config == RunConfig::SplitLabelSharing, seed, None)?;
                fit_ranking(&mut model, &self.spec.training, observer, stop)?
            }
            RunConfig::SingleDomain(_) | RunConfig::Linear | RunConfig::Federated { .. } => {
                return Err(SplitError::Spec {
                    path: PathBuf::from(&self.spec.name),
                    message: format!(
                        "`{}`: a recommendation job compares popularity, centralized, split-label-sharing and split-label-owner",
                        config.name()
                    ),
                });
            }
            RunConfig::Centralized => {
                let model = self.spec.model.clone().unwrap_or(NcfModelSpec {
                    factors: default_factors(),
                    layers: default_layers(),
                });
                train_neumf(
                    interactions,
                    &self.split,
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
                )?
            }
        };
        Ok(RunResult::ranking(config, seed, run))
    }
}

/// The MovieLens example's job over a synthetic dataset of MovieLens's format
/// ([`fedmesh_data::recommend::write_synthetic_movielens`]), written to `dir`: `data/`, the
/// example's contracts (pointing at `data/`) and `job.yaml`. Returns the job file.
pub fn write_synthetic_movielens_job(
    dir: &Path,
    users: usize,
    items: usize,
    per_user: usize,
) -> Result<PathBuf, SplitError> {
    fedmesh_data::recommend::write_synthetic_movielens(&dir.join("data"), users, items, per_user)?;
    write_movielens_example(
        dir,
        |_| "../data".into(),
        "data: { format: movielens, path: data }",
    )
}

/// The MovieLens example's job with `format: tables` over the same synthetic data as
/// [`write_synthetic_movielens_job`], written to `dir`: each domain's table in a folder of its
/// own (`sales/ratings.csv`, `customer/viewers.csv`, `product/films.csv`), the example's
/// contracts pointing at them, and `job.yaml`. Returns the job file.
pub fn write_synthetic_tables_job(
    dir: &Path,
    users: usize,
    items: usize,
    per_user: usize,
) -> Result<PathBuf, SplitError> {
    let table = |domain: &str| {
        let name = match domain {
            "sales" => "ratings",
            "customer" => "viewers",
            _ => "films",
        };
        format!("{domain}/{name}.csv")
    };
    fedmesh_data::recommend::write_synthetic_tables(
        &dir.join(table("sales")),
        &dir.join(table("customer")),
        &dir.join(table("product")),
        (users, items, per_user),
    )?;
    write_movielens_example(
        dir,
        |domain| format!("../{}", table(domain)),
        "data: { format: tables, user: user_id, item: item_id, time: time }",
    )
}

/// Writes the MovieLens example's contracts to `dir/contracts`, each server's path replaced by
/// `server(domain)`, and its `job.yaml` with `data` as its data line. Returns the job file.
fn write_movielens_example(
    dir: &Path,
    server: impl Fn(&str) -> String,
    data: &str,
) -> Result<PathBuf, SplitError> {
    const REAL: &str = "shared/data/ml-100k";
    std::fs::create_dir_all(dir.join("contracts"))?;
    for (domain, text) in [
        (
            "sales",
            include_str!("../../../examples/movielens/contracts/sales.odcs.yaml"),
        ),
        (
            "customer",
            include_str!("../../../examples/movielens/contracts/customer.odcs.yaml"),
        ),
        (
            "product",
            include_str!("../../../examples/movielens/contracts/product.odcs.yaml"),
        ),
    ] {
        let text = text.replace(
            &format!("../../../../{REAL}   # read by the MovieLens reader"),
            &server(domain),
        );
        std::fs::write(
            dir.join("contracts").join(format!("{domain}.odcs.yaml")),
            text,
        )?;
    }
    let job = include_str!("../../../examples/movielens/job.yaml").replace(
        &format!("data: {{ format: movielens, path: ../../../{REAL} }}"),
        data,
    );
    let file = dir.join("job.yaml");
    std::fs::write(&file, job)?;
    Ok(file)
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
    fn a_domain_reading_its_own_table_reads_what_the_movielens_reader_gives_it() {
        let dir = tempfile::tempdir().unwrap();
        let tables = write_synthetic_tables_job(&dir.path().join("tables"), 60, 200, 12).unwrap();
        let reader =
            write_synthetic_movielens_job(&dir.path().join("reader"), 60, 200, 12).unwrap();
        let prepare = |file: &Path| {
            let (mut spec, file) = RecommendationSpec::load(file).unwrap();
            spec.training.epochs = 2;
            spec.training.batch_size = 64;
            spec.prepare(&file).unwrap()
        };
        let (tables, reader) = (prepare(&tables), prepare(&reader));
        assert_eq!(tables.spec.data.format, RetailFormat::Tables);
        assert_eq!(tables.interactions, reader.interactions);
        assert_eq!(tables.split.test, reader.split.test);
        assert_eq!(tables.split.train, reader.split.train);
        // The same data trains the same model, whoever read it.
        let stop = AtomicBool::new(false);
        let config = RunConfig::SplitLabelOwner;
        let (a, b) = (
            tables.run(&config, 1, &crate::Silent, &stop).unwrap(),
            reader.run(&config, 1, &crate::Silent, &stop).unwrap(),
        );
        assert_eq!(a.metrics, b.metrics);
        assert_eq!(a.history, b.history);
    }

    /// With `keep: best` and early stopping, each epoch ranks validation cases held out of
    /// training (never the test cases), the run stops `patience` epochs after its best, and the
    /// test cases are ranked once, by the best epoch's parts.
    #[test]
    fn a_validating_recommender_keeps_its_best_epoch_and_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_synthetic_tables_job(dir.path(), 60, 200, 12).unwrap();
        let (mut spec, file) = RecommendationSpec::load(&file).unwrap();
        spec.training.epochs = 40;
        spec.training.batch_size = 64;
        spec.training.optimizer.learning_rate = 0.02;
        spec.training.keep = KeptEpoch::Best;
        spec.training.early_stopping = Some(EarlyStopping {
            patience: 3,
            min_delta: 0.0,
        });
        let plain = {
            let mut spec = spec.clone();
            spec.training.keep = KeptEpoch::Last;
            spec.training.early_stopping = None;
            spec.prepare(&file).unwrap()
        };
        let prepared = spec.prepare(&file).unwrap();
        let valid = &prepared.split.valid;
        assert!(valid.len() > 40, "{} validation cases", valid.len());
        assert_eq!(prepared.split.test, plain.split.test);
        assert_eq!(
            prepared.split.train.len() + valid.len(),
            plain.split.train.len()
        );
        let stop = AtomicBool::new(false);
        for config in [RunConfig::Centralized, RunConfig::SplitLabelOwner] {
            let run = prepared.run(&config, 1, &crate::Silent, &stop).unwrap();
            let hr: Vec<f64> = run
                .history
                .iter()
                .map(|e| e.valid_headline.unwrap())
                .collect();
            let best = hr.iter().copied().fold(f64::MIN, f64::max);
            let kept = run.kept_epoch.unwrap_or(hr.len());
            assert_eq!(hr[kept - 1], best, "{}: {hr:?}", config.name());
            assert!(
                hr[..kept - 1].iter().all(|&h| h < best),
                "the first best is kept"
            );
            if hr.len() < 40 {
                assert_eq!(kept + 3, hr.len(), "{}: {hr:?}", config.name());
            }
            assert_eq!(
                run.metrics.ranking().unwrap().users,
                prepared.split.test.len()
            );
        }
    }

    #[test]
    fn a_tables_spec_takes_no_dataset_folder_and_a_reader_needs_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_synthetic_tables_job(dir.path(), 10, 200, 6).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let with_path = text.replace("format: tables,", "format: tables, path: data,");
        let error = RecommendationSpec::from_yaml(&with_path, &file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("each domain's contract says where"),
            "{error}"
        );
        let reader = text.replace("format: tables,", "format: movielens,");
        let error = RecommendationSpec::from_yaml(&reader, &file)
            .unwrap_err()
            .to_string();
        assert!(error.contains("`data.path` is missing"), "{error}");
        let unknown = text.replace("format: tables,", "format: parquet-lake,");
        assert!(RecommendationSpec::from_yaml(&unknown, &file).is_err());
    }

    #[test]
    fn an_entity_table_without_the_key_column_is_named_with_the_setting_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_synthetic_tables_job(dir.path(), 10, 200, 6).unwrap();
        let text = std::fs::read_to_string(&file).unwrap().replace(
            "customer: { name: customer,",
            "customer: { name: customer, key: customer_id,",
        );
        std::fs::write(&file, text).unwrap();
        let (spec, file) = RecommendationSpec::load(&file).unwrap();
        let error = spec.prepare(&file).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("no key column `customer_id`"), "{error}");
        assert!(error.contains("`customer.key`"), "{error}");
    }

    #[test]
    fn neumf_learns_tastes_that_popularity_cannot_see() {
        let (interactions, split) = two_groups();
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
            &interactions,
            &split,
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
