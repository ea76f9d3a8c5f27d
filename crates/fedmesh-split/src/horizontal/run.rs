//! Running a horizontal job's configurations in one process: the centralized baseline on every
//! domain's rows pooled, and federated averaging over the domains in this process (the same
//! [`super::train_federated`] a mesh runs over its nodes).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use fedmesh_data::NumericSums;
use fedmesh_model::average::with_float_tensors;
use fedmesh_model::{
    BottomConfig, HeadConfig, Objective, TargetScale, TowerConfig, deep_copy, seeded,
    training_device,
};

use super::domain::FederatedDomain;
use super::federation::{FittedFederation, LocalFederation, train_federated};
use super::prepare::PreparedHorizontal;
use super::spec::HorizontalSpec;
use crate::SplitError;
use crate::job::{
    FederationSummary, HEAD_PART, RunConfig, RunResult, TOWER_PART, part_seed,
    seed_training_randomness,
};
use crate::party::save_part;
use crate::trainer::{FitOutcome, JointNetwork, JointTrainer, Observer, TrainingSpec, fit};

/// The part number of a horizontal job's rounds' draws (which rows, in which order).
pub(crate) const ROUND_PART: u64 = 104;

impl PreparedHorizontal {
    /// The configurations a horizontal job compares: the centralized baseline, and federated
    /// averaging with its updates summed in the clear and by secure aggregation.
    pub fn configs(&self) -> Vec<RunConfig> {
        vec![
            RunConfig::Centralized,
            RunConfig::Federated { secure: false },
            RunConfig::Federated { secure: true },
        ]
    }

    /// The domains in this process, as federated averaging with `seed` runs them; each
    /// `(round, domain)` of `drop_outs` fails in that round after it trained.
    pub fn federation(&self, seed: u64, drop_outs: BTreeSet<(usize, String)>) -> LocalFederation {
        LocalFederation {
            domains: self
                .parties
                .iter()
                .enumerate()
                .map(|(k, party)| {
                    FederatedDomain::prepared(&self.spec, k, party, &self.pipeline, seed)
                })
                .collect(),
            drop_outs,
            round: 0,
        }
    }

    /// What the domains' sums gave, for [`train_federated`].
    pub fn fitted(&self) -> FittedFederation {
        FittedFederation {
            pipeline: self.pipeline.clone(),
            totals: self.totals.clone(),
            train_rows: self
                .parties
                .iter()
                .map(|p| p.partition.train.len())
                .collect(),
        }
    }

    /// The model every configuration trains, initialized from `seed` (see [`global_network`]),
    /// its regression target scale from the domains' summed labels.
    pub fn network(&self, seed: u64) -> JointNetwork {
        global_network(
            &self.spec,
            &self.pipeline.shape(),
            Some(&self.totals.label),
            seed,
        )
    }

    /// Trains and evaluates one configuration for one seed; with `save_to`, writes the model and
    /// the feature pipeline there.
    pub fn run(
        &self,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
    ) -> Result<RunResult, SplitError> {
        self.run_with_drop_outs(config, seed, observer, stop, save_to, &BTreeSet::new())
    }

    /// [`PreparedHorizontal::run`], where each `(round, domain)` of `drop_outs` fails in that
    /// round after it was chosen (and, under secure aggregation, after it shared its keys): the
    /// round goes on without it when enough domains remain, and the result says who dropped.
    pub fn run_with_drop_outs(
        &self,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
        drop_outs: &BTreeSet<(usize, String)>,
    ) -> Result<RunResult, SplitError> {
        let mut result = match config {
            RunConfig::Centralized => self.centralized(seed, observer, stop, save_to)?,
            RunConfig::Federated { secure } => {
                let mut federation = self.federation(seed, drop_outs.clone());
                let run = train_federated(
                    &self.spec,
                    &mut federation,
                    &self.fitted(),
                    *secure,
                    seed,
                    observer,
                    stop,
                )?;
                run.result(seed, save_to)?
            }
            other => {
                return Err(SplitError::Job {
                    job: self.spec.name.clone(),
                    reason: format!(
                        "`{}` is not a configuration of a horizontal job: use centralized, federated or federated-secure",
                        other.name()
                    ),
                });
            }
        };
        if let Some(dir) = save_to {
            let path = dir.join("pipeline.json");
            std::fs::write(&path, self.pipeline.to_json())?;
            result.model_files.push(path.display().to_string());
        }
        Ok(result)
    }

    /// Every domain's rows in one place, trained for as many epochs as federated averaging's
    /// rounds × local epochs, with the same model, batches and optimizer.
    fn centralized(
        &self,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
    ) -> Result<RunResult, SplitError> {
        let (features, targets, partition) = self.pooled();
        let spec = &self.spec;
        let network = self.network(seed);
        seed_training_randomness(seed);
        let mut trainer = JointTrainer::new(
            network,
            vec![features],
            targets,
            spec.objective.clone(),
            &spec.training.optimizer,
            training_device(),
        );
        let local = spec.training.epochs;
        let training = TrainingSpec {
            epochs: spec.federation.rounds * local,
            early_stopping: spec.training.early_stopping.map(|mut e| {
                e.patience *= local;
                e
            }),
            ..spec.training.clone()
        };
        let outcome = fit(&mut trainer, &partition, &training, seed, observer, stop)?;
        let rows_trained = partition.train.len() * outcome.history.len();
        finished(
            RunConfig::Centralized,
            seed,
            outcome,
            rows_trained,
            [
                partition.train.len(),
                partition.valid.len(),
                partition.test.len(),
            ],
            &trainer.network,
            save_to,
            None,
        )
    }
}

/// A configuration's result from its training: the test metrics, the model saved where asked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finished(
    config: RunConfig,
    seed: u64,
    outcome: FitOutcome,
    rows_trained: usize,
    [train_rows, valid_rows, test_rows]: [usize; 3],
    model: &JointNetwork,
    save_to: Option<&Path>,
    federation: Option<FederationSummary>,
) -> Result<RunResult, SplitError> {
    let metrics = outcome
        .report
        .metrics
        .ok_or_else(|| SplitError::refused("governance", "there are no test rows to score"))?;
    let model_files = match save_to {
        Some(dir) => vec![save_part(model, dir, "model")?.display().to_string()],
        None => Vec::new(),
    };
    let epochs = outcome.history.len();
    Ok(RunResult {
        config: config.name(),
        seed,
        metrics,
        train_rows,
        valid_rows,
        test_rows,
        train_seconds: outcome.train_seconds,
        cut_layer_bytes: 0,
        samples_per_second: rows_trained as f64 / outcome.train_seconds.max(1e-9),
        history: outcome.history,
        kept_epoch: (outcome.kept_epoch != epochs).then_some(outcome.kept_epoch),
        curves: outcome.report.curves,
        model_files,
        wire: None,
        alignment: None,
        federation,
        test_scores: outcome.report.test_scores,
    })
}

/// The model of a horizontal job, initialized from `seed`: an MLP over the features of `shape`
/// (the pipeline's numeric width and embeddings) as the one "bottom", no tower layers, the
/// objective's output layer; a regression head maps to the target scale of the summed `label`
/// sums (the identity without them). Governance and every domain build it alike.
pub fn global_network(
    spec: &HorizontalSpec,
    (numeric, embeddings): &(usize, Vec<(usize, usize)>),
    label: Option<&NumericSums>,
    seed: u64,
) -> JointNetwork {
    let device = training_device();
    let bottom = BottomConfig {
        numeric: *numeric,
        embeddings: embeddings.clone(),
        layers: spec.model.layers.clone(),
        batch_norm: spec.model.batch_norm,
        dropout: spec.model.dropout,
        interaction: false,
        embedding_std: None,
    };
    let tower = TowerConfig {
        input: bottom.output(),
        layers: Vec::new(),
        batch_norm: false,
        dropout: 0.0,
    };
    let scale = label
        .filter(|l| l.count > 0.0)
        .map_or(TargetScale::IDENTITY, |l| {
            TargetScale::from_sums(l.count, l.sum, l.sum_of_squares)
        });
    let head = HeadConfig {
        input: tower.output(),
        layers: Vec::new(),
        outputs: spec.objective.outputs(),
        target_scale: matches!(spec.objective, Objective::Mse).then_some(scale),
    };
    JointNetwork {
        bottoms: vec![seeded(&device, part_seed(seed, 0), || bottom.init(&device))],
        tower: seeded(&device, part_seed(seed, TOWER_PART), || tower.init(&device)),
        head: seeded(&device, part_seed(seed, HEAD_PART), || head.init(&device)),
    }
}

/// `network` with its float tensors set from `values`, all of them one after another (`sizes`
/// long each); `None` when they do not fit.
pub fn model_from_values(
    network: &JointNetwork,
    values: &[f32],
    sizes: &[usize],
) -> Option<JointNetwork> {
    if values.len() != sizes.iter().sum::<usize>() {
        return None;
    }
    let mut rest = values;
    let tensors = sizes
        .iter()
        .map(|&n| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head.to_vec()
        })
        .collect();
    with_float_tensors(network.clone(), tensors).map(|n| deep_copy(&n))
}

/// A horizontal model as a domain saved it (`model.bpk` and `pipeline.json` in `dir`), with the
/// rows of its product it is asked to score: scoring happens where the rows are.
pub struct HorizontalScorer {
    network: JointNetwork,
    features: fedmesh_data::FeatureMatrix,
    objective: Objective,
}

impl HorizontalScorer {
    /// The model saved in `dir` over `product`'s rows, transformed by the saved pipeline.
    pub fn load(
        spec: &HorizontalSpec,
        product: &fedmesh_data::DataProduct,
        dir: &Path,
    ) -> Result<Self, SplitError> {
        let pipeline_path = dir.join("pipeline.json");
        let text = std::fs::read_to_string(&pipeline_path).map_err(|e| SplitError::Record {
            path: pipeline_path.clone(),
            message: e.to_string(),
        })?;
        let pipeline = fedmesh_data::FeaturePipeline::from_json(&text)?;
        let features = pipeline.transform(product)?;
        let network = global_network(spec, &pipeline.shape(), None, 0);
        let network = crate::party::load_part(network, &dir.join("model.bpk"))?;
        Ok(Self {
            network,
            features,
            objective: spec.objective.clone(),
        })
    }

    /// The scores of `rows` (positions among the rows it was given), row-major, and their
    /// width.
    pub fn scores(&self, rows: &[u32]) -> Result<(Vec<f32>, usize), SplitError> {
        if let Some(&row) = rows.iter().find(|&&r| r as usize >= self.features.rows) {
            return Err(SplitError::refused(
                "the domain",
                format!(
                    "asked to score row {row} of the {} it found",
                    self.features.rows
                ),
            ));
        }
        use burn::module::Module as _;
        let device = training_device().inner();
        let network = self.network.valid();
        let outputs = network.forward(vec![crate::party::batch_inputs(
            &self.features,
            rows,
            &device,
        )]);
        Ok((self.objective.scores(outputs), self.objective.outputs()))
    }
}
