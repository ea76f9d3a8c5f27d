//! Running a prepared job: the configurations it compares, one configuration and seed trained
//! and evaluated, and the result every run reports.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use fedmesh_data::{FeatureMatrix, Partition};
use fedmesh_model::linear::LeastSquares;
use fedmesh_model::{TargetScale, Targets, seeded, training_device};
use serde::{Deserialize, Serialize};

use super::build::{
    HEAD_PART, TOWER_PART, bottom_config, part_seed, pipeline_file, seed_training_randomness,
};
use super::prepare::{AlignmentSummary, PreparedJob};
use super::spec::{JobSpec, LayersSpec, WireEncoding};
use crate::SplitError;
use crate::party::DomainParty;
use crate::scores::{Curves, Metrics, ScoreBook};
use crate::task::Task;
use crate::trainer::{
    EpochRecord, JointNetwork, JointTrainer, Observer, SplitTrainer, Trainer, fit,
};
use crate::transport::{InProcess, Transport};
use crate::wire::Part;

/// A configuration to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunConfig {
    /// A recommendation job's baseline: items ranked by how often they were chosen.
    Popularity,
    /// Every column (or, for a recommender, every domain's table) in one place: NeuMF for a
    /// recommendation job.
    Centralized,
    SplitLabelSharing,
    SplitLabelOwner,
    /// One domain's features alone, trained centrally.
    SingleDomain(String),
    /// A regression job's baseline: least squares over every domain's features in one place.
    Linear,
    /// A horizontal job's federated averaging (or FedProx), its updates summed in the clear or
    /// by secure aggregation.
    Federated {
        secure: bool,
    },
}

impl RunConfig {
    /// The name used in `results.json`.
    pub fn name(&self) -> String {
        match self {
            RunConfig::Popularity => "popularity".into(),
            RunConfig::Centralized => "centralized".into(),
            RunConfig::SplitLabelSharing => "split-label-sharing".into(),
            RunConfig::SplitLabelOwner => "split-label-owner".into(),
            RunConfig::SingleDomain(d) => format!("single-domain:{d}"),
            RunConfig::Linear => "linear".into(),
            RunConfig::Federated { secure: false } => "federated".into(),
            RunConfig::Federated { secure: true } => "federated-secure".into(),
        }
    }
}

impl std::str::FromStr for RunConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "popularity" => Ok(RunConfig::Popularity),
            "linear" => Ok(RunConfig::Linear),
            "federated" => Ok(RunConfig::Federated { secure: false }),
            "federated-secure" => Ok(RunConfig::Federated { secure: true }),
            "centralized" => Ok(RunConfig::Centralized),
            "split-label-sharing" => Ok(RunConfig::SplitLabelSharing),
            "split-label-owner" => Ok(RunConfig::SplitLabelOwner),
            other => match other.strip_prefix("single-domain:") {
                Some(d) => Ok(RunConfig::SingleDomain(d.to_string())),
                None => Err(format!(
                    "unknown configuration `{other}`: use centralized, split-label-sharing, split-label-owner, single-domain:NAME, linear (regression jobs), popularity (recommendation jobs), or federated and federated-secure (horizontal jobs)"
                )),
            },
        }
    }
}

/// One trained configuration and seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub config: String,
    pub seed: u64,
    pub metrics: Metrics,
    /// Rows trained on (after any resampling), used to choose the threshold, and tested on.
    #[serde(default)]
    pub train_rows: usize,
    #[serde(default)]
    pub valid_rows: usize,
    #[serde(default)]
    pub test_rows: usize,
    pub train_seconds: f64,
    pub cut_layer_bytes: u64,
    pub samples_per_second: f64,
    pub history: Vec<EpochRecord>,
    /// The epoch whose parts were evaluated and saved, when it is not the last one trained
    /// (`training.keep: best`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_epoch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curves: Option<Curves>,
    /// Trained parts and feature pipelines, when saved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_files: Vec<String>,
    /// Bytes on the wire, for runs over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire: Option<WireBytes>,
    /// How the domains' rows were aligned before the partition was drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<AlignmentSummary>,
    /// A horizontal run's rounds: who took part, who dropped out, how long a round took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationSummary>,
    /// Each test row's scores, when this process held the head (in-process runs, and label
    /// sharing); never written to `results.json`.
    #[serde(skip)]
    pub test_scores: Vec<(u32, Vec<f32>)>,
}

/// A horizontal run's rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FederationSummary {
    /// `fedavg` or `fedprox`.
    pub technique: String,
    /// Whether the updates were summed by secure aggregation.
    pub secure_aggregation: bool,
    /// Rounds trained (fewer than the spec's after an early stop).
    pub rounds: usize,
    /// Wall time of a round, on average: local training, aggregation and evaluation.
    pub seconds_per_round: f64,
    /// Values in one domain's update (every float tensor of the model).
    pub update_values: usize,
    /// Training rows per domain, in the spec's order.
    pub domain_rows: Vec<(String, usize)>,
    /// The rounds in which a domain dropped out, and which.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<(usize, String)>,
    /// With differential privacy: the (ε, δ) the run spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::horizontal::PrivacySpent>,
}

/// What a run over the network sent, counted as encoded protobuf messages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WireBytes {
    pub encoding: WireEncoding,
    /// Governance to the domain nodes (batch plans, gradients, tower outputs).
    pub to_domains: u64,
    /// Domain nodes to governance (activations, the head's gradient, reports).
    pub from_domains: u64,
}

impl PreparedJob {
    /// The configurations this job compares.
    pub fn configs(&self) -> Vec<RunConfig> {
        let mut configs = vec![
            RunConfig::Centralized,
            RunConfig::SplitLabelSharing,
            RunConfig::SplitLabelOwner,
        ];
        if self.spec.task() == Task::Regression {
            configs.insert(0, RunConfig::Linear);
        }
        if self.spec.single_domain_baselines {
            configs.extend(
                self.domains
                    .iter()
                    .map(|d| RunConfig::SingleDomain(d.name.clone())),
            );
        }
        configs
    }

    /// The centralized baseline's bottom: as wide as all domain bottoms together.
    fn centralized_layers(&self) -> LayersSpec {
        if let Some(layers) = &self.spec.model.centralized {
            return layers.clone();
        }
        let depth = self
            .domains
            .iter()
            .map(|d| d.bottom.layers.len())
            .max()
            .unwrap_or(0);
        LayersSpec {
            layers: (0..depth)
                .map(|i| {
                    self.domains
                        .iter()
                        .filter_map(|d| d.bottom.layers.get(i))
                        .sum()
                })
                .collect(),
            batch_norm: self.domains.iter().any(|d| d.bottom.batch_norm),
            dropout: self.spec.model.bottom.dropout,
        }
    }

    /// Builds the trainer of a configuration, every part initialized from `seed`.
    pub fn trainer(&self, config: &RunConfig, seed: u64) -> Result<Box<dyn Trainer>, SplitError> {
        let trainer = self.build_trainer(config, seed)?;
        seed_training_randomness(seed);
        Ok(trainer)
    }

    fn build_trainer(&self, config: &RunConfig, seed: u64) -> Result<Box<dyn Trainer>, SplitError> {
        let device = training_device();
        let spec = &self.spec;
        let optimizer = &spec.training.optimizer;
        let joint = |features: FeatureMatrix, layers: &LayersSpec| {
            let bottom = bottom_config(&features, layers);
            let bottoms = vec![seeded(&device, part_seed(seed, 0), || bottom.init(&device))];
            let (tower, head) = spec.tower_and_head(bottom.output());
            let tower = seeded(&device, part_seed(seed, TOWER_PART), || tower.init(&device));
            let head = seeded(&device, part_seed(seed, HEAD_PART), || head.init(&device))
                .fitted_to(&self.targets, &self.partition.train);
            Box::new(JointTrainer::new(
                JointNetwork {
                    bottoms,
                    tower,
                    head,
                },
                vec![features],
                self.targets.clone(),
                self.spec.objective.clone(),
                optimizer,
                device.clone(),
            )) as Box<dyn Trainer>
        };
        Ok(match config {
            RunConfig::Popularity => {
                return Err(SplitError::Spec {
                    path: PathBuf::from(&self.spec.name),
                    message: "`popularity` ranks items: it is a baseline of recommendation jobs (`task: recommendation`)".into(),
                });
            }
            RunConfig::Linear => {
                return Err(SplitError::Spec {
                    path: PathBuf::from(&self.spec.name),
                    message: "`linear` is solved in closed form, not trained step by step".into(),
                });
            }
            RunConfig::Federated { .. } => {
                return Err(SplitError::Spec {
                    path: PathBuf::from(&self.spec.name),
                    message: format!(
                        "`{}` is a configuration of horizontal jobs (`technique: fedavg` or `fedprox`): this job is split across the domains' columns",
                        config.name()
                    ),
                });
            }
            RunConfig::Centralized => {
                let parts: Vec<&FeatureMatrix> = self.domains.iter().map(|d| &d.features).collect();
                joint(
                    FeatureMatrix::concat_columns(&parts),
                    &self.centralized_layers(),
                )
            }
            RunConfig::SingleDomain(name) => {
                let domain = self
                    .domains
                    .iter()
                    .find(|d| &d.name == name)
                    .ok_or_else(|| SplitError::Job {
                        job: spec.name.clone(),
                        reason: format!("it has no feature domain `{name}`"),
                    })?;
                joint(domain.features.clone(), &domain.bottom)
            }
            RunConfig::SplitLabelSharing | RunConfig::SplitLabelOwner => {
                let share_labels = *config == RunConfig::SplitLabelSharing;
                let (transport, cut_width) = self.in_process(share_labels, seed)?;
                Box::new(spec.split_trainer(
                    transport,
                    share_labels,
                    cut_width,
                    seed,
                    &self.partition.train,
                )?)
            }
        })
    }

    /// Governance's side of a split run whose parties are in this process behind the transport
    /// `wrap` makes of them (an eavesdropper, in the attack harness), built and seeded as
    /// [`PreparedJob::trainer`] builds them.
    pub fn split_trainer_over<T: Transport>(
        &self,
        share_labels: bool,
        seed: u64,
        wrap: impl FnOnce(InProcess) -> T,
    ) -> Result<SplitTrainer<T>, SplitError> {
        let (transport, cut_width) = self.in_process(share_labels, seed)?;
        let trainer = self.spec.split_trainer(
            wrap(transport),
            share_labels,
            cut_width,
            seed,
            &self.partition.train,
        )?;
        seed_training_randomness(seed);
        Ok(trainer)
    }

    /// Every party of a split run in this process, built from `seed`, and the cut width.
    pub fn in_process(
        &self,
        share_labels: bool,
        seed: u64,
    ) -> Result<(InProcess, usize), SplitError> {
        let spec = &self.spec;
        let domains: Vec<DomainParty> = self
            .domains
            .iter()
            .map(|d| spec.domain_party(d, seed))
            .collect::<Result<_, _>>()?;
        let cut_width = domains.iter().map(DomainParty::cut_width).sum();
        let label_owner = if share_labels {
            None
        } else {
            let tower_output = spec.tower_and_head(cut_width).0.output();
            Some(spec.label_owner(
                self.targets.clone(),
                &self.partition.train,
                tower_output,
                seed,
            )?)
        };
        let transport = InProcess::new(
            domains,
            label_owner,
            share_labels.then(|| self.targets.clone()),
        );
        Ok((transport, cut_width))
    }

    /// Trains and evaluates one configuration for one seed; with `save_to`, writes the trained
    /// parts (burnpack, one file per part and holder) and the feature pipelines there.
    pub fn run(
        &self,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
    ) -> Result<RunResult, SplitError> {
        if *config == RunConfig::Linear {
            let mut result = self.least_squares(seed)?;
            result.alignment = Some(self.alignment.clone());
            return Ok(result);
        }
        let mut trainer = self.trainer(config, seed)?;
        let mut result = self.spec.train_and_evaluate(
            trainer.as_mut(),
            &self.partition,
            config,
            seed,
            observer,
            stop,
            save_to,
        )?;
        if let Some(dir) = save_to {
            for domain in &self.domains {
                let path = dir.join(pipeline_file(&domain.name));
                std::fs::write(&path, domain.pipeline.to_json())?;
                result.model_files.push(path.display().to_string());
            }
        }
        result.alignment = Some(self.alignment.clone());
        Ok(result)
    }
}

impl PreparedJob {
    /// The `linear` baseline: least squares over every domain's features in one place (numeric
    /// columns as the pipelines standardized them, categorical ones one-hot), fitted on the
    /// training rows and scored on validation and test as every other configuration is. The
    /// same for every seed: there is nothing random in it.
    fn least_squares(&self, seed: u64) -> Result<RunResult, SplitError> {
        let started = Instant::now();
        let Targets::Values(values) = &self.targets else {
            return Err(SplitError::Spec {
                path: PathBuf::from(&self.spec.name),
                message: "`linear` is least squares: a baseline of regression jobs".into(),
            });
        };
        let parts: Vec<&FeatureMatrix> = self.domains.iter().map(|d| &d.features).collect();
        let (x, width) = design_matrix(&FeatureMatrix::concat_columns(&parts));
        let row = |r: u32| &x[r as usize * width..(r as usize + 1) * width];
        let train = &self.partition.train;
        let train_x: Vec<f64> = train.iter().flat_map(|&r| row(r).to_vec()).collect();
        let train_y: Vec<f64> = train.iter().map(|&r| values[r as usize] as f64).collect();
        let fit = LeastSquares::fit(&train_x, width, &train_y, 1e-6).ok_or_else(|| {
            SplitError::refused(
                "the linear baseline",
                "least squares has no solution on the training rows",
            )
        })?;
        let scale = TargetScale::fit(&self.targets, train).unwrap_or(TargetScale::IDENTITY);
        let mut book = ScoreBook::default();
        for (part, rows) in [
            (Part::Valid, &self.partition.valid),
            (Part::Test, &self.partition.test),
        ] {
            let scores: Vec<f32> = rows.iter().map(|&r| fit.predict(row(r)) as f32).collect();
            // The loss on the standardized scale, as a head reports it.
            let loss: f64 = rows
                .iter()
                .zip(&scores)
                .map(|(&r, &s)| ((s - values[r as usize]) as f64 / scale.std as f64).powi(2))
                .sum();
            book.record(part, rows, scores, loss);
        }
        let report = book.report(&self.spec.objective, &self.targets);
        let metrics = report.metrics.ok_or_else(|| {
            SplitError::refused("the linear baseline", "there are no test rows to score")
        })?;
        let train_seconds = started.elapsed().as_secs_f64();
        Ok(RunResult {
            config: RunConfig::Linear.name(),
            seed,
            metrics,
            train_rows: train.len(),
            valid_rows: self.partition.valid.len(),
            test_rows: self.partition.test.len(),
            train_seconds,
            cut_layer_bytes: 0,
            samples_per_second: train.len() as f64 / train_seconds.max(1e-9),
            history: Vec::new(),
            kept_epoch: None,
            curves: None,
            model_files: Vec::new(),
            wire: None,
            alignment: None,
            federation: None,
            test_scores: report.test_scores,
        })
    }
}

/// Features as least squares reads them: each row's numeric columns, then each categorical
/// column one-hot over its table; row-major, with the row width.
fn design_matrix(features: &FeatureMatrix) -> (Vec<f64>, usize) {
    let tables: Vec<usize> = features.embeddings.iter().map(|e| e.0).collect();
    let width = features.numeric_width + tables.iter().sum::<usize>();
    let mut x = vec![0.0; features.rows * width];
    for r in 0..features.rows {
        let out = &mut x[r * width..(r + 1) * width];
        let numeric =
            &features.numeric[r * features.numeric_width..(r + 1) * features.numeric_width];
        for (o, &v) in out.iter_mut().zip(numeric) {
            *o = v as f64;
        }
        let mut at = features.numeric_width;
        for (c, &table) in tables.iter().enumerate() {
            let index = features.categorical[r * tables.len() + c];
            if (0..table as i64).contains(&index) {
                out[at + index as usize] = 1.0;
            }
            at += table;
        }
    }
    (x, width)
}

impl JobSpec {
    /// Trains `trainer` on `partition`, evaluates it on the test rows and, with `save_to`,
    /// has every party save its parts: the same for every configuration and transport.
    #[allow(clippy::too_many_arguments)]
    pub fn train_and_evaluate(
        &self,
        trainer: &mut dyn Trainer,
        partition: &Partition,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
    ) -> Result<RunResult, SplitError> {
        let outcome = fit(trainer, partition, &self.training, seed, observer, stop)?;
        let metrics = outcome.report.metrics.ok_or_else(|| {
            SplitError::refused("the label holder", "it reported no test metrics")
        })?;
        let model_files = match save_to {
            Some(dir) => trainer
                .save(dir)?
                .into_iter()
                .map(|path| path.display().to_string())
                .collect(),
            None => Vec::new(),
        };
        let samples = (partition.train.len() * outcome.history.len()) as f64;
        let kept_epoch =
            (outcome.kept_epoch != outcome.history.len()).then_some(outcome.kept_epoch);
        Ok(RunResult {
            model_files,
            config: config.name(),
            seed,
            metrics,
            train_rows: partition.train.len(),
            valid_rows: partition.valid.len(),
            test_rows: partition.test.len(),
            train_seconds: outcome.train_seconds,
            cut_layer_bytes: outcome.cut_layer_bytes,
            samples_per_second: samples / outcome.train_seconds.max(1e-9),
            history: outcome.history,
            kept_epoch,
            curves: outcome.report.curves,
            wire: None,
            alignment: None,
            federation: None,
            test_scores: outcome.report.test_scores,
        })
    }
}
