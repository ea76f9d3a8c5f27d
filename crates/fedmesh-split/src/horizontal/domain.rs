//! A domain's side of a horizontal job: its rows, its copy of the global model, its local
//! training, and its share of each round's secure aggregation.
//!
//! Governance talks to a domain only through [`ToDomain`] messages, answered by
//! [`FromDomain`]s: the same [`FederatedDomain`] answers them in one process (a test, `fedmesh
//! run`) and at a domain node (over the mesh), and every message is checked here, at the
//! domain, before it touches the model. What leaves a domain: sums of its training rows'
//! features (count, sum, sum of squares per column), its rows' count, its training loss, its
//! update — scaled by its share of the round, clipped under differential privacy, masked under
//! secure aggregation — and evaluation sums. Never a row.

use std::path::Path;

use fedmesh_data::{DataProduct, FeaturePipeline, NumericSums, Partition};
use fedmesh_model::average::float_tensors;
use fedmesh_model::{Objective, Targets, reseed, training_device};
use fedmesh_secagg::{Advertisement, Client, MaskedInput, Reveal, SealedShares};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::evaluation::EvaluationSums;
use super::prepare::HorizontalParty;
use super::privacy::{add_noise, clip_to_norm};
use super::run::{ROUND_PART, global_network, model_from_values};
use super::spec::HorizontalSpec;
use crate::SplitError;
use crate::job::{part_seed, read_targets};
use crate::trainer::{JointTrainer, Silent, train_epoch};
use crate::wire::{BatchPlan, Part};

/// What a domain sums of its training rows for the job's one feature pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainSums {
    pub train_rows: u64,
    pub valid_rows: u64,
    pub test_rows: u64,
    /// One per feature of the spec, in its order (zero for categorical features).
    pub features: Vec<NumericSums>,
    /// The label's sums (regression; zero for classes), for the model's target scale.
    pub label: NumericSums,
}

/// Both domains' rows together.
impl std::ops::Add for DomainSums {
    type Output = DomainSums;
    fn add(self, other: DomainSums) -> DomainSums {
        DomainSums {
            train_rows: self.train_rows + other.train_rows,
            valid_rows: self.valid_rows + other.valid_rows,
            test_rows: self.test_rows + other.test_rows,
            features: self
                .features
                .into_iter()
                .zip(other.features)
                .map(|(a, b)| a + b)
                .collect(),
            label: self.label + other.label,
        }
    }
}

impl DomainSums {
    /// Checks sums a domain sent: one per feature, finite, counts no more than its rows.
    pub fn check(&self, features: usize, from: &str) -> Result<(), SplitError> {
        let bad = |what: &str| SplitError::Node {
            node: from.to_string(),
            message: format!("sent feature sums that {what}"),
        };
        if self.features.len() != features {
            return Err(bad(&format!(
                "number {}, for {features} features",
                self.features.len()
            )));
        }
        let finite = |s: &NumericSums| {
            s.count.is_finite()
                && s.sum.is_finite()
                && s.sum_of_squares.is_finite()
                && s.count >= 0.0
                && s.count <= self.train_rows as f64
                && s.sum_of_squares >= 0.0
        };
        if !self.features.iter().chain([&self.label]).all(finite) {
            return Err(bad("are not finite, or count more rows than it trains on"));
        }
        Ok(())
    }
}

/// One round's work for a domain.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRound {
    pub round: usize,
    pub learning_rate: f64,
    /// The domain's share of the round's rows: its update is multiplied by it.
    pub share: f64,
    /// The global model's values; `None`: the model governance sent last.
    pub model: Option<Vec<f32>>,
    /// Under secure aggregation: the domain's client id and the round's setup.
    pub secure: Option<(u32, fedmesh_secagg::Config)>,
    /// Differential privacy under secure aggregation: the standard deviation of the Gaussian
    /// noise this domain adds to its update before masking (0: none).
    pub noise_std: f64,
}

/// Governance's messages to a domain.
#[derive(Debug, Clone, PartialEq)]
pub enum ToDomain {
    /// Sum your training rows' features (answered with [`FromDomain::Sums`]).
    Sums,
    /// Every domain's sums: fit the pipeline, build the model (answered with the pipeline).
    Pipeline(DomainSums),
    /// Train the global model on your rows (answered with [`FromDomain::Trained`]).
    Train(LocalRound),
    /// Send your update in the clear (answered with [`FromDomain::Update`]).
    Update,
    /// Secure aggregation: the round's roster (answered with your sealed shares).
    Roster(Vec<Advertisement>),
    /// Secure aggregation: the shares sealed for you (answered with your masked input).
    Inbox(Vec<SealedShares>),
    /// Secure aggregation: who sent an input (answered with your reveal).
    Survivors(Vec<u32>),
    /// Score the global model `model` on your rows of `part`.
    Evaluate { model: Vec<f32>, part: Part },
}

/// A domain's answers.
#[derive(Debug, Clone, PartialEq)]
pub enum FromDomain {
    Sums(DomainSums),
    Pipeline(FeaturePipeline),
    /// Local training done: the loss summed over the rows trained on, and (secure aggregation)
    /// the domain's keys for the round.
    Trained {
        loss_sum: f64,
        rows: u64,
        advert: Option<Advertisement>,
    },
    Update(Vec<f32>),
    Shares(Vec<SealedShares>),
    Masked(MaskedInput),
    Reveal(Reveal),
    Evaluation(EvaluationSums),
}

impl FromDomain {
    /// The kind of answer, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            FromDomain::Sums(_) => "sums",
            FromDomain::Pipeline(_) => "pipeline",
            FromDomain::Trained { .. } => "trained",
            FromDomain::Update(_) => "update",
            FromDomain::Shares(_) => "shares",
            FromDomain::Masked(_) => "masked input",
            FromDomain::Reveal(_) => "reveal",
            FromDomain::Evaluation(_) => "evaluation",
        }
    }
}

/// A domain's share of a horizontal job.
pub struct FederatedDomain {
    spec: HorizontalSpec,
    /// Its position in the spec's domains.
    index: usize,
    seed: u64,
    /// Its product, until the pipeline is fitted.
    product: Option<DataProduct>,
    targets: Targets,
    partition: Partition,
    pipeline: Option<FeaturePipeline>,
    trainer: Option<JointTrainer>,
    /// The values of every float tensor of the model, in order.
    tensor_sizes: Vec<usize>,
    /// The global model governance sent last.
    global: Option<Vec<f32>>,
    last_round: usize,
    /// The round's update, scaled, until it is sent.
    update: Option<Vec<f32>>,
    secagg: Option<Client>,
    /// Rounds trained and rows trained on, for the audit.
    pub rounds: usize,
    pub rows_trained: u64,
}

fn refused(reason: impl Into<String>) -> SplitError {
    SplitError::refused("the domain", reason)
}

impl FederatedDomain {
    /// Domain `index` of `spec` over its `product`: its labels read, its own rows partitioned
    /// (the spec's test keys, or a stratified draw from the split seed and its position).
    pub fn open(
        spec: &HorizontalSpec,
        dir: &Path,
        product: DataProduct,
        index: usize,
        seed: u64,
    ) -> Result<Self, SplitError> {
        let name = &spec
            .domains
            .get(index)
            .ok_or_else(|| refused(format!("the job has no domain {index}")))?
            .name;
        let targets = read_targets(&product, &spec.label, &spec.objective)?;
        // A domain holds only its own clients' share of the test keys: the rest are not missing.
        let (partition, _) = spec.split.partition(
            dir,
            &product,
            &targets,
            spec.split.seed.wrapping_add(index as u64),
        )?;
        if partition.train.len() < 2 {
            return Err(SplitError::Job {
                job: spec.name.clone(),
                reason: format!(
                    "domain `{name}` has {} training rows: a domain trains on at least 2",
                    partition.train.len()
                ),
            });
        }
        Ok(Self::new(
            spec,
            index,
            seed,
            Some(product),
            targets,
            partition,
        ))
    }

    fn new(
        spec: &HorizontalSpec,
        index: usize,
        seed: u64,
        product: Option<DataProduct>,
        targets: Targets,
        partition: Partition,
    ) -> Self {
        Self {
            spec: spec.clone(),
            index,
            seed,
            product,
            targets,
            partition,
            pipeline: None,
            trainer: None,
            tensor_sizes: Vec::new(),
            global: None,
            last_round: 0,
            update: None,
            secagg: None,
            rounds: 0,
            rows_trained: 0,
        }
    }

    /// Domain `index` whose rows are transformed already (`party`) by `pipeline`.
    pub fn prepared(
        spec: &HorizontalSpec,
        index: usize,
        party: &HorizontalParty,
        pipeline: &FeaturePipeline,
        seed: u64,
    ) -> Self {
        let mut domain = Self::new(
            spec,
            index,
            seed,
            None,
            party.targets.clone(),
            party.partition.clone(),
        );
        domain.pipeline = Some(pipeline.clone());
        domain.build_trainer(party.features.clone());
        domain
    }

    pub fn name(&self) -> &str {
        &self.spec.domains[self.index].name
    }

    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The pipeline the domain applies, once fitted.
    pub fn pipeline(&self) -> Option<&FeaturePipeline> {
        self.pipeline.as_ref()
    }

    /// The domain's rows as model input, once the pipeline is fitted.
    pub fn party(&self, product: &str) -> Option<HorizontalParty> {
        Some(HorizontalParty {
            name: self.name().to_string(),
            product: product.to_string(),
            features: self.trainer.as_ref()?.features()[0].clone(),
            targets: self.targets.clone(),
            partition: self.partition.clone(),
        })
    }

    /// The model the domain holds: the global model governance sent last.
    pub fn model(&self) -> Option<&crate::trainer::JointNetwork> {
        self.trainer.as_ref().map(|t| &t.network)
    }

    fn build_trainer(&mut self, features: fedmesh_data::FeatureMatrix) {
        let spec = &self.spec;
        let shape = (features.numeric_width, features.embeddings.clone());
        let network = global_network(spec, &shape, None, self.seed);
        self.tensor_sizes = float_tensors(&network).iter().map(Vec::len).collect();
        self.trainer = Some(JointTrainer::new(
            network,
            vec![features],
            self.targets.clone(),
            spec.objective.clone(),
            &spec.training.optimizer,
            training_device(),
        ));
    }

    fn trainer(&mut self) -> Result<&mut JointTrainer, SplitError> {
        self.trainer.as_mut().ok_or_else(|| {
            refused("the job's pipeline is not fitted yet: governance sends the feature sums first")
        })
    }

    /// Sets the trainer's network to `values` (the global model), checking its size.
    fn load_global(&mut self, values: Vec<f32>) -> Result<(), SplitError> {
        let expected: usize = self.tensor_sizes.iter().sum();
        if values.len() != expected {
            return Err(refused(format!(
                "governance sent a model of {} values; the job's model has {expected}",
                values.len()
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(refused(
                "governance sent a model with values that are not finite",
            ));
        }
        let sizes = self.tensor_sizes.clone();
        let trainer = self.trainer()?;
        let network = model_from_values(&trainer.network, &values, &sizes)
            .ok_or_else(|| refused("governance sent a model of another shape"))?;
        trainer.network = network;
        self.global = Some(values);
        Ok(())
    }

    /// Answers one message from governance.
    pub fn handle(&mut self, message: ToDomain) -> Result<FromDomain, SplitError> {
        match message {
            ToDomain::Sums => {
                let product = self
                    .product
                    .as_ref()
                    .ok_or_else(|| refused("the pipeline is fitted already: the sums were sent"))?;
                let train = &self.partition.train;
                let features = FeaturePipeline::numeric_sums(product, &self.spec.features, train)?;
                let label = match &self.targets {
                    Targets::Values(values) => NumericSums::of(
                        &train
                            .iter()
                            .map(|&r| values[r as usize] as f64)
                            .collect::<Vec<_>>(),
                    ),
                    Targets::Classes(_) => NumericSums::default(),
                };
                Ok(FromDomain::Sums(DomainSums {
                    train_rows: train.len() as u64,
                    valid_rows: self.partition.valid.len() as u64,
                    test_rows: self.partition.test.len() as u64,
                    features,
                    label,
                }))
            }
            ToDomain::Pipeline(totals) => {
                let product = self
                    .product
                    .take()
                    .ok_or_else(|| refused("the pipeline is fitted already"))?;
                totals.check(self.spec.features.len(), "governance")?;
                if totals.train_rows < self.partition.train.len() as u64 {
                    self.product = Some(product);
                    return Err(refused(format!(
                        "governance's totals hold {} training rows, fewer than this domain's {}",
                        totals.train_rows,
                        self.partition.train.len()
                    )));
                }
                let pipeline =
                    FeaturePipeline::from_sums(&product, &self.spec.features, &totals.features)?;
                let features = pipeline.transform(&product)?;
                self.build_trainer(features);
                self.pipeline = Some(pipeline.clone());
                Ok(FromDomain::Pipeline(pipeline))
            }
            ToDomain::Train(round) => self.train(round),
            ToDomain::Update => {
                if self.secagg.is_some() {
                    return Err(refused(
                        "this round sums updates by secure aggregation: the update is sent masked only",
                    ));
                }
                let update = self
                    .update
                    .take()
                    .ok_or_else(|| refused("there is no trained update to send"))?;
                Ok(FromDomain::Update(update))
            }
            ToDomain::Roster(roster) => {
                let client = self
                    .secagg
                    .as_mut()
                    .ok_or_else(|| refused("no secure aggregation round is open"))?;
                Ok(FromDomain::Shares(
                    client
                        .share_keys(&roster, &mut rand::rng())
                        .map_err(secagg_failed)?,
                ))
            }
            ToDomain::Inbox(shares) => {
                let update = self
                    .update
                    .take()
                    .ok_or_else(|| refused("there is no trained update to mask"))?;
                let client = self
                    .secagg
                    .as_mut()
                    .ok_or_else(|| refused("no secure aggregation round is open"))?;
                Ok(FromDomain::Masked(
                    client
                        .masked_input(&update, &shares)
                        .map_err(secagg_failed)?,
                ))
            }
            ToDomain::Survivors(survivors) => {
                let mut client = self
                    .secagg
                    .take()
                    .ok_or_else(|| refused("no secure aggregation round is open"))?;
                Ok(FromDomain::Reveal(
                    client.reveal(&survivors).map_err(secagg_failed)?,
                ))
            }
            ToDomain::Evaluate { model, part } => {
                self.load_global(model)?;
                let rows = match part {
                    Part::Valid => self.partition.valid.clone(),
                    Part::Test => self.partition.test.clone(),
                };
                let batch = self.spec.training.eval_batch_size;
                let objective = self.spec.objective.clone();
                let trainer = self.trainer()?;
                let (scores, loss_sum) = trainer.score(&rows, batch);
                Ok(FromDomain::Evaluation(EvaluationSums::of(
                    &objective,
                    &self.targets,
                    &rows,
                    &scores,
                    loss_sum,
                )))
            }
        }
    }

    /// Local training of one round: the global model on the domain's training rows for the
    /// spec's local epochs, with a fresh optimizer (and FedProx's proximal term); the change,
    /// clipped under differential privacy and multiplied by the domain's share, is kept until
    /// governance asks for it.
    fn train(&mut self, round: LocalRound) -> Result<FromDomain, SplitError> {
        let LocalRound {
            round,
            learning_rate,
            share,
            model,
            secure,
            noise_std,
        } = round;
        if round <= self.last_round {
            return Err(refused(format!(
                "round {round} comes after round {}: rounds only go forward",
                self.last_round
            )));
        }
        if !(learning_rate.is_finite() && learning_rate > 0.0 && learning_rate <= 10.0) {
            return Err(refused(format!(
                "a learning rate of {learning_rate} is not one to train with"
            )));
        }
        if !(share > 0.0 && share <= 1.0) {
            return Err(refused(format!(
                "a share of {share} of the round is not in (0, 1]"
            )));
        }
        if !(noise_std.is_finite() && noise_std >= 0.0) {
            return Err(refused(format!("a noise deviation of {noise_std}")));
        }
        if let Some(values) = model {
            self.load_global(values)?;
        }
        let before = self
            .global
            .clone()
            .ok_or_else(|| refused("governance sent no global model to train"))?;
        // The round's secure aggregation is checked before any training, so that a setup the
        // domain cannot take part in costs nothing.
        if let Some((client, config)) = &secure {
            if *client >= config.clients {
                return Err(refused(format!(
                    "client id {client} in a secure aggregation round of {} clients",
                    config.clients
                )));
            }
            if config.length != before.len() {
                return Err(refused(format!(
                    "the secure aggregation round sums {} values; this model has {}",
                    config.length,
                    before.len()
                )));
            }
            config.check().map_err(secagg_failed)?;
        }
        self.last_round = round;
        self.update = None;
        let spec = self.spec.clone();
        let training = &spec.training;
        let index = self.index;
        let draws = part_seed(self.seed, ROUND_PART + 1000 * round as u64 + index as u64);
        let mut order = self.partition.train.clone();
        let trainer = self.trainer()?;
        let network = fedmesh_model::deep_copy(&trainer.network);
        trainer.restart(network, spec.federation.proximal_mu);
        // Dropout draws from the round and the domain, whichever process it runs in.
        reseed(&training_device(), draws);
        let mut rng = ChaCha8Rng::seed_from_u64(draws);
        let (mut loss_sum, mut rows) = (0.0, 0u64);
        let never = std::sync::atomic::AtomicBool::new(false);
        for _ in 0..training.epochs {
            order.shuffle(&mut rng);
            let plans: Vec<BatchPlan> = order
                .chunks(training.batch_size)
                .filter(|b| b.len() > 1)
                .map(|rows| BatchPlan::train(rows.to_vec(), learning_rate))
                .collect();
            loss_sum += train_epoch(trainer, &plans, round, &Silent, &never)?;
            rows += plans.iter().map(|p| p.rows.len() as u64).sum::<u64>();
        }
        let after: Vec<f32> = float_tensors(&trainer.network).concat();
        let mut update: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        if let Some(dp) = &spec.federation.differential_privacy {
            clip_to_norm(&mut update, dp.clip_norm);
        }
        let mut weighted: Vec<f64> = update.iter().map(|&u| u as f64 * share).collect();
        if noise_std > 0.0 {
            // Drawn from the operating system, not the job's seed: governance knows the seed.
            add_noise(&mut weighted, noise_std, &mut rand::rng());
        }
        self.update = Some(weighted.into_iter().map(|v| v as f32).collect());
        self.rounds += 1;
        self.rows_trained += order.len() as u64 * training.epochs as u64;
        let advert = match secure {
            Some((client, config)) => {
                let (client, advert) = Client::new(client, config, &mut rand::rng());
                self.secagg = Some(client);
                Some(advert)
            }
            None => {
                self.secagg = None;
                None
            }
        };
        Ok(FromDomain::Trained {
            loss_sum,
            rows,
            advert,
        })
    }

    /// The objective, for whoever reads the domain's answers.
    pub fn objective(&self) -> &Objective {
        &self.spec.objective
    }
}

fn secagg_failed(e: fedmesh_secagg::SecAggError) -> SplitError {
    refused(format!("secure aggregation: {e}"))
}
