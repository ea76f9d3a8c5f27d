//! Running a horizontal job's configurations in one process: the centralized baseline on every
//! domain's rows pooled, and federated averaging, each domain training on its own rows.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use fedmesh_data::Partition;
use fedmesh_model::average::{float_tensors, with_float_tensors};
use fedmesh_model::{
    BottomConfig, HeadConfig, Objective, TargetScale, TowerConfig, deep_copy, seeded,
    training_device,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::aggregate::{plain_sum, secure_sum};
use super::prepare::PreparedHorizontal;
use super::privacy::{PrivacySpent, RdpAccountant, add_noise, clip_to_norm};
use super::strategy::FedAvg;
use crate::SplitError;
use crate::job::{
    FederationSummary, HEAD_PART, RunConfig, RunResult, TOWER_PART, part_seed,
    seed_training_randomness,
};
use crate::party::save_part;
use crate::trainer::{
    AfterEpoch, EpochChoice, FitOutcome, JointNetwork, JointTrainer, Observer, Trainer,
    TrainingSpec, close_epoch, final_evaluation, fit, train_epoch,
};
use crate::wire::BatchPlan;

/// The part number of a horizontal job's rounds' draws (which rows, in which order).
const ROUND_PART: u64 = 104;

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

    /// The model every configuration trains, initialized from `seed`: an MLP over the features
    /// (the one "bottom"), no tower layers, the objective's output layer. A regression head's
    /// target scale comes from the pooled training rows, which equal the domains' summed
    /// statistics.
    pub fn network(&self, seed: u64) -> JointNetwork {
        let device = training_device();
        let spec = &self.spec;
        let features = &self.parties[0].features;
        let bottom = BottomConfig {
            numeric: features.numeric_width,
            embeddings: features.embeddings.clone(),
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
        let head = HeadConfig {
            input: tower.output(),
            layers: Vec::new(),
            outputs: spec.objective.outputs(),
            target_scale: matches!(spec.objective, Objective::Mse).then_some(TargetScale::IDENTITY),
        };
        let (targets, partition) = self.pooled_labels();
        JointNetwork {
            bottoms: vec![seeded(&device, part_seed(seed, 0), || bottom.init(&device))],
            tower: seeded(&device, part_seed(seed, TOWER_PART), || tower.init(&device)),
            head: seeded(&device, part_seed(seed, HEAD_PART), || head.init(&device))
                .fitted_to(&targets, &partition.train),
        }
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
                self.federated(*secure, seed, observer, stop, save_to, drop_outs)?
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
            &partition,
            &trainer.network,
            save_to,
            None,
        )
    }

    /// Federated averaging: each round the strategy draws domains; each trains the global model
    /// on its own training rows for the local epochs and sends its change times its share of the
    /// round's rows; the (secure) sum, divided by the shares that arrived, moves the global model.
    /// After each round the global model is scored on the domains' validation rows; `keep` and
    /// `early_stopping` count rounds.
    fn federated(
        &self,
        secure: bool,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
        drop_outs: &BTreeSet<(usize, String)>,
    ) -> Result<RunResult, SplitError> {
        let spec = &self.spec;
        let federation = &spec.federation;
        let training = &spec.training;
        let device = training_device();
        let strategy = FedAvg {
            client_fraction: federation.client_fraction,
            min_clients: federation.min_clients,
        };
        // The evaluator holds the global model: it scores the domains' validation rows after
        // each round, and keeps the copy a `keep: best` run returns to.
        let global = self.network(seed);
        seed_training_randomness(seed);
        let (pooled, pooled_targets, pooled_partition) = self.pooled();
        let mut evaluator = JointTrainer::new(
            global,
            vec![pooled],
            pooled_targets,
            spec.objective.clone(),
            &training.optimizer,
            device.clone(),
        );
        let mut clients: Vec<JointTrainer> = self
            .parties
            .iter()
            .map(|party| {
                JointTrainer::new(
                    deep_copy(&evaluator.network),
                    vec![party.features.clone()],
                    party.targets.clone(),
                    spec.objective.clone(),
                    &training.optimizer,
                    device.clone(),
                )
            })
            .collect();
        let update_values: usize = float_tensors(&evaluator.network).iter().map(Vec::len).sum();
        let mut choice = EpochChoice::checked(training, federation.rounds, &pooled_partition)?;
        let mut history = Vec::with_capacity(federation.rounds);
        let mut dropped = Vec::new();
        let dp = federation.differential_privacy.as_ref();
        let mut accountant = RdpAccountant::default();
        let mut rows_trained = 0usize;
        let started = Instant::now();
        observer.training_started();
        for round in 1..=federation.rounds {
            if stop.load(Ordering::Relaxed) {
                return Err(SplitError::Interrupted);
            }
            let chosen = strategy.select(self.parties.len(), round, seed);
            let rows: Vec<usize> = chosen
                .iter()
                .map(|&k| self.parties[k].partition.train.len())
                .collect();
            let shares = FedAvg::shares(&rows);
            let learning_rate = training.learning_rate(round - 1, federation.rounds);
            // The most one domain can move the sum: its share times the clipping bound.
            let noise_std = dp.map(|dp| {
                dp.noise_multiplier * dp.clip_norm * shares.iter().cloned().fold(0.0, f64::max)
            });
            let mut noise_rng =
                ChaCha8Rng::seed_from_u64(part_seed(seed, ROUND_PART + 500 + round as u64));
            let batches: usize = rows
                .iter()
                .map(|&r| r.div_ceil(training.batch_size) * training.epochs)
                .sum();
            observer.epoch_started(round, batches);
            let before = float_tensors(&evaluator.network);
            let mut updates: Vec<Option<Vec<f32>>> = Vec::with_capacity(chosen.len());
            let mut loss_sum = 0.0;
            let mut loss_rows = 0usize;
            for (&k, share) in chosen.iter().zip(&shares) {
                let party = &self.parties[k];
                let client = &mut clients[k];
                client.restart(deep_copy(&evaluator.network), federation.proximal_mu);
                let mut rng = ChaCha8Rng::seed_from_u64(part_seed(
                    seed,
                    ROUND_PART + 1000 * round as u64 + k as u64,
                ));
                let mut order = party.partition.train.clone();
                for _ in 0..training.epochs {
                    order.shuffle(&mut rng);
                    let plans: Vec<BatchPlan> = order
                        .chunks(training.batch_size)
                        .filter(|b| b.len() > 1)
                        .map(|rows| BatchPlan::train(rows.to_vec(), learning_rate))
                        .collect();
                    loss_sum += train_epoch(client, &plans, round, observer, stop)?;
                    loss_rows += plans.iter().map(|p| p.rows.len()).sum::<usize>();
                }
                rows_trained += order.len() * training.epochs;
                if drop_outs.contains(&(round, party.name.clone())) {
                    tracing::warn!("round {round}: domain `{}` dropped out", party.name);
                    dropped.push((round, party.name.clone()));
                    updates.push(None);
                    continue;
                }
                let after = float_tensors(&client.network);
                let mut update: Vec<f32> = after
                    .iter()
                    .flatten()
                    .zip(before.iter().flatten())
                    .map(|(a, b)| a - b)
                    .collect();
                if let Some(dp) = dp {
                    clip_to_norm(&mut update, dp.clip_norm);
                }
                let mut weighted: Vec<f64> = update.iter().map(|&u| u as f64 * share).collect();
                if let (true, Some(std)) = (secure, noise_std) {
                    // Under secure aggregation every domain adds its part of the noise, so that
                    // governance never sees a sum without it.
                    add_noise(
                        &mut weighted,
                        std / (chosen.len() as f64).sqrt(),
                        &mut noise_rng,
                    );
                }
                updates.push(Some(weighted.into_iter().map(|v| v as f32).collect()));
            }
            let sum = if secure {
                secure_sum(
                    &updates,
                    update_values,
                    &federation.secure_aggregation,
                    part_seed(seed, ROUND_PART + round as u64),
                )
                .map_err(|e| round_failed(&spec.name, round, &e.to_string()))?
            } else {
                let mut sum = plain_sum(&updates);
                if let Some(std) = noise_std {
                    add_noise(&mut sum.values, std, &mut noise_rng);
                }
                sum
            };
            if let Some(dp) = dp {
                // Secure aggregation's sum carries the noise of the domains that sent theirs.
                let carried = if secure {
                    sum.contributors.len() as f64 / chosen.len() as f64
                } else {
                    1.0
                };
                accountant.round(dp.noise_multiplier * carried.sqrt());
            }
            if sum.contributors.len() < federation.min_clients {
                return Err(round_failed(
                    &spec.name,
                    round,
                    &format!(
                        "{} of its domains sent an update, and `federation.min_clients` is {} (dropped: {})",
                        sum.contributors.len(),
                        federation.min_clients,
                        sum.dropped
                            .iter()
                            .map(|&d| format!("`{}`", self.parties[chosen[d]].name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let arrived: f64 = sum.contributors.iter().map(|&c| shares[c]).sum();
            let next = FedAvg::next_global(&before, &sum.values, arrived);
            let moved = with_float_tensors(evaluator.network.clone(), next).ok_or_else(|| {
                SplitError::refused("governance", "the round's sum does not fit the model")
            })?;
            evaluator.network = deep_copy(&moved);
            match close_epoch(
                &mut evaluator,
                &pooled_partition.valid,
                training.eval_batch_size,
                round,
                loss_sum / loss_rows.max(1) as f64,
                &mut choice,
                observer,
                &mut history,
            )? {
                AfterEpoch::Checkpoint => evaluator.checkpoint()?,
                AfterEpoch::Stop => break,
                AfterEpoch::Continue => {}
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let (kept_round, report) = final_evaluation(
            &mut evaluator,
            &pooled_partition,
            &choice,
            history.len(),
            training.eval_batch_size,
            observer,
        )?;
        let rounds = history.len();
        let summary = FederationSummary {
            technique: spec.technique.clone(),
            secure_aggregation: secure,
            rounds,
            seconds_per_round: train_seconds / rounds.max(1) as f64,
            update_values,
            domain_rows: self
                .parties
                .iter()
                .map(|p| (p.name.clone(), p.partition.train.len()))
                .collect(),
            dropped,
            privacy: dp.map(|dp| PrivacySpent {
                epsilon: accountant.epsilon(dp.delta),
                delta: dp.delta,
                noise_multiplier: dp.noise_multiplier,
                clip_norm: dp.clip_norm,
            }),
        };
        let outcome = FitOutcome {
            history,
            kept_epoch: kept_round,
            report,
            train_seconds,
            cut_layer_bytes: 0,
        };
        finished(
            RunConfig::Federated { secure },
            seed,
            outcome,
            rows_trained,
            &pooled_partition,
            &evaluator.network,
            save_to,
            Some(summary),
        )
    }
}

/// A configuration's result from its training: the test metrics, the model saved where asked.
#[allow(clippy::too_many_arguments)]
fn finished(
    config: RunConfig,
    seed: u64,
    outcome: FitOutcome,
    rows_trained: usize,
    partition: &Partition,
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
        train_rows: partition.train.len(),
        valid_rows: partition.valid.len(),
        test_rows: partition.test.len(),
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

fn round_failed(job: &str, round: usize, reason: &str) -> SplitError {
    SplitError::Job {
        job: job.to_string(),
        reason: format!("round {round} failed: {reason}"),
    }
}
