//! Governance's side of federated averaging, over any [`Federation`]: the domains in this
//! process ([`LocalFederation`]) or domain nodes over the mesh.
//!
//! Governance fits the feature pipeline from the domains' summed statistics, then runs the
//! rounds: the strategy draws domains, each trains the global model on its own rows, their
//! updates are summed (in the clear, or by secure aggregation with every message routed through
//! governance), the sum moves the global model, and every domain scores it on its own validation
//! rows. A domain that fails in a round — a node that dies, a message that does not check —
//! drops out of that round, which completes without it while enough remain.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use fedmesh_data::FeaturePipeline;
use fedmesh_model::average::float_tensors;
use fedmesh_secagg::{Aggregator, Config};

use super::aggregate::{RoundSum, plain_sum, quantization, threshold};
use super::domain::{DomainSums, FederatedDomain, FromDomain, LocalRound, ToDomain};
use super::evaluation::{EvaluationSums, report};
use super::privacy::{PrivacySpent, RdpAccountant, add_noise};
use super::run::{finished, global_network, model_from_values};
use super::spec::HorizontalSpec;
use super::strategy::FedAvg;
use crate::SplitError;
use crate::job::{FederationSummary, RunConfig, RunResult};
use crate::scores::EvaluationReport;
use crate::trainer::{AfterEpoch, EpochChoice, FitOutcome, JointNetwork, Observer, record_epoch};
use crate::wire::Part;

/// Governance's line to a horizontal job's domains.
pub trait Federation {
    /// The domains' names, in the spec's order.
    fn domains(&self) -> Vec<String>;

    /// Sends each `(domain, message)` and waits for every answer, in the same order: a domain
    /// that fails answers with its error and holds up no other.
    fn exchange(&mut self, messages: Vec<(usize, ToDomain)>)
    -> Vec<Result<FromDomain, SplitError>>;
}

/// The domains of a horizontal job in this process; each `(round, domain)` of `drop_outs` fails
/// in that round after it trained (before its update or masked input is sent).
pub struct LocalFederation {
    pub domains: Vec<FederatedDomain>,
    pub drop_outs: BTreeSet<(usize, String)>,
    pub round: usize,
}

impl Federation for LocalFederation {
    fn domains(&self) -> Vec<String> {
        self.domains.iter().map(|d| d.name().to_string()).collect()
    }

    fn exchange(
        &mut self,
        messages: Vec<(usize, ToDomain)>,
    ) -> Vec<Result<FromDomain, SplitError>> {
        messages
            .into_iter()
            .map(|(k, message)| {
                let domain = &mut self.domains[k];
                if let ToDomain::Train(round) = &message {
                    self.round = round.round;
                }
                let sends = matches!(message, ToDomain::Update | ToDomain::Inbox(_));
                if sends
                    && self
                        .drop_outs
                        .contains(&(self.round, domain.name().to_string()))
                {
                    return Err(SplitError::Node {
                        node: domain.name().to_string(),
                        message: format!("dropped out of round {}", self.round),
                    });
                }
                domain.handle(message)
            })
            .collect()
    }
}

/// The answers of the domains that answered `kind`, by domain; the others are noted in
/// `dropped` with `round`, and their errors logged.
fn answers(
    federation: &mut dyn Federation,
    messages: Vec<(usize, ToDomain)>,
    round: usize,
    dropped: &mut Vec<(usize, String)>,
) -> Vec<(usize, FromDomain)> {
    let names = federation.domains();
    let to: Vec<usize> = messages.iter().map(|(k, _)| *k).collect();
    let mut out = Vec::with_capacity(to.len());
    for (k, answer) in to.into_iter().zip(federation.exchange(messages)) {
        match answer {
            Ok(answer) => out.push((k, answer)),
            Err(e) => {
                tracing::warn!("round {round}: domain `{}` dropped out: {e}", names[k]);
                if !dropped.contains(&(round, names[k].clone())) {
                    dropped.push((round, names[k].clone()));
                }
            }
        }
    }
    out
}

/// A domain answered with the wrong kind of message.
fn unexpected(name: &str, answer: &FromDomain, wanted: &str) -> SplitError {
    SplitError::Node {
        node: name.to_string(),
        message: format!("answered `{}` where `{wanted}` was due", answer.kind()),
    }
}

/// The job's one feature pipeline: every domain sums its training rows, governance adds the
/// sums up and sends the totals back, every domain fits the same pipeline from them. Every
/// domain must take part.
pub fn federated_pipeline(
    spec: &HorizontalSpec,
    federation: &mut dyn Federation,
) -> Result<FittedFederation, SplitError> {
    let names = federation.domains();
    let all = |message: ToDomain| (0..names.len()).map(|k| (k, message.clone())).collect();
    let mut totals: Option<DomainSums> = None;
    let mut train_rows = Vec::with_capacity(names.len());
    for (k, answer) in federation
        .exchange(all(ToDomain::Sums))
        .into_iter()
        .enumerate()
    {
        let sums = match answer? {
            FromDomain::Sums(sums) => sums,
            other => return Err(unexpected(&names[k], &other, "sums")),
        };
        sums.check(spec.features.len(), &names[k])?;
        train_rows.push(sums.train_rows as usize);
        totals = Some(match totals {
            None => sums,
            Some(total) => total + sums,
        });
    }
    let totals = totals.ok_or_else(|| SplitError::Job {
        job: spec.name.clone(),
        reason: "it has no domains".into(),
    })?;
    let mut pipeline: Option<FeaturePipeline> = None;
    for (k, answer) in federation
        .exchange(all(ToDomain::Pipeline(totals.clone())))
        .into_iter()
        .enumerate()
    {
        let fitted = match answer? {
            FromDomain::Pipeline(fitted) => fitted,
            other => return Err(unexpected(&names[k], &other, "pipeline")),
        };
        match &pipeline {
            Some(first) if first.features != fitted.features => {
                return Err(SplitError::Node {
                    node: names[k].clone(),
                    message: "fitted another pipeline from the same totals than the others".into(),
                });
            }
            Some(_) => {}
            None => pipeline = Some(fitted),
        }
    }
    Ok(FittedFederation {
        pipeline: pipeline.expect("a domain answered"),
        totals,
        train_rows,
    })
}

/// What the domains' sums gave: the one pipeline, the totals, each domain's training rows
/// (which weigh its updates).
#[derive(Debug, Clone)]
pub struct FittedFederation {
    pub pipeline: FeaturePipeline,
    pub totals: DomainSums,
    pub train_rows: Vec<usize>,
}

/// A finished federated run: what governance trained and measured.
pub struct FederatedRun {
    pub config: RunConfig,
    pub outcome: FitOutcome,
    pub model: JointNetwork,
    pub summary: FederationSummary,
    pub rows: [usize; 3],
    pub rows_trained: usize,
}

impl FederatedRun {
    /// The run's result; with `save_to`, governance's copy of the model saved there.
    pub fn result(self, seed: u64, save_to: Option<&Path>) -> Result<RunResult, SplitError> {
        finished(
            self.config,
            seed,
            self.outcome,
            self.rows_trained,
            self.rows,
            &self.model,
            save_to,
            Some(self.summary),
        )
    }
}

/// Federated averaging over `federation`, whose domains fitted `pipeline` from `totals`: each
/// round the strategy draws domains, each trains the global model on its own rows and sends its
/// change times its share of the round's rows, the (secure) sum divided by the shares that
/// arrived moves the global model, and the domains score it on their validation rows; `keep`
/// and `early_stopping` count rounds. Ends with the kept model scored on every domain's
/// validation and test rows.
#[allow(clippy::too_many_arguments)]
pub fn train_federated(
    spec: &HorizontalSpec,
    federation: &mut dyn Federation,
    fitted: &FittedFederation,
    secure: bool,
    seed: u64,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<FederatedRun, SplitError> {
    let settings = &spec.federation;
    let training = &spec.training;
    let names = federation.domains();
    let domains = names.len();
    let strategy = FedAvg {
        client_fraction: settings.client_fraction,
        min_clients: settings.min_clients,
    };
    let FittedFederation {
        pipeline,
        totals,
        train_rows,
    } = fitted;
    let template = global_network(spec, &pipeline.shape(), Some(&totals.label), seed);
    let sizes: Vec<usize> = float_tensors(&template).iter().map(Vec::len).collect();
    let update_values: usize = sizes.iter().sum();
    let mut global: Vec<f32> = float_tensors(&template).concat();
    let mut kept = global.clone();
    let mut choice = EpochChoice::checked(training, settings.rounds, totals.valid_rows as usize)?;
    let dp = settings.differential_privacy.as_ref();
    let mut accountant = RdpAccountant::default();
    let mut history = Vec::with_capacity(settings.rounds);
    let mut dropped: Vec<(usize, String)> = Vec::new();
    let mut rows_trained = 0usize;
    let started = Instant::now();
    observer.training_started();
    for round in 1..=settings.rounds {
        if stop.load(Ordering::Relaxed) {
            return Err(SplitError::Interrupted);
        }
        let chosen = strategy.select(domains, round, seed);
        observer.epoch_started(round, chosen.len());
        // Shares by each domain's training rows, as it reported them with its sums.
        let rows: Vec<usize> = chosen.iter().map(|&k| train_rows[k]).collect();
        let shares = FedAvg::shares(&rows);
        let learning_rate = training.learning_rate(round - 1, settings.rounds);
        let noise_std = dp.map(|dp| {
            dp.noise_multiplier * dp.clip_norm * shares.iter().cloned().fold(0.0, f64::max)
        });
        let config = Config {
            clients: chosen.len() as u32,
            threshold: threshold(&settings.secure_aggregation, chosen.len()),
            length: update_values,
            quantization: quantization(chosen.len(), settings.secure_aggregation.clip),
        };
        let messages = chosen
            .iter()
            .zip(&shares)
            .enumerate()
            .map(|(position, (&k, &share))| {
                (
                    k,
                    ToDomain::Train(LocalRound {
                        round,
                        learning_rate,
                        share,
                        model: Some(global.clone()),
                        secure: secure.then_some((position as u32, config)),
                        // Under secure aggregation every domain adds its part of the noise, so
                        // that governance never sees a sum without it.
                        noise_std: match (secure, noise_std) {
                            (true, Some(std)) => std / (chosen.len() as f64).sqrt(),
                            _ => 0.0,
                        },
                    }),
                )
            })
            .collect();
        let mut loss_sum = 0.0;
        let mut loss_rows = 0u64;
        let mut trained = Vec::new();
        for (k, answer) in answers(federation, messages, round, &mut dropped) {
            match answer {
                FromDomain::Trained {
                    loss_sum: loss,
                    rows,
                    advert,
                } if loss.is_finite() && rows > 0 && advert.is_some() == secure => {
                    loss_sum += loss;
                    loss_rows += rows;
                    rows_trained += rows as usize;
                    observer.batch_done((loss / rows as f64) as f32);
                    trained.push((k, advert));
                }
                other => {
                    tracing::warn!(
                        "round {round}: domain `{}` dropped out: {}",
                        names[k],
                        unexpected(&names[k], &other, "trained")
                    );
                    dropped.push((round, names[k].clone()));
                }
            }
        }
        let sum = if secure {
            secure_round(federation, &chosen, &trained, config, round, &mut dropped)
                .map_err(|e| round_failed(&spec.name, round, &e.to_string()))?
        } else {
            let messages = trained
                .iter()
                .map(|&(k, _)| (k, ToDomain::Update))
                .collect();
            let mut updates: Vec<Option<Vec<f32>>> = vec![None; chosen.len()];
            for (k, answer) in answers(federation, messages, round, &mut dropped) {
                let position = chosen.iter().position(|&c| c == k).expect("chosen");
                match answer {
                    FromDomain::Update(values)
                        if values.len() == update_values
                            && values.iter().all(|v| v.is_finite()) =>
                    {
                        updates[position] = Some(values);
                    }
                    other => {
                        tracing::warn!(
                            "round {round}: the update of `{}` was refused: {} values or not finite ({})",
                            names[k],
                            update_values,
                            other.kind()
                        );
                        dropped.push((round, names[k].clone()));
                    }
                }
            }
            let mut sum = plain_sum(&updates);
            sum.values.resize(update_values, 0.0);
            if let Some(std) = noise_std {
                add_noise(&mut sum.values, std, &mut rand::rng());
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
        if sum.contributors.len() < settings.min_clients {
            let gone: Vec<String> = dropped
                .iter()
                .filter(|(r, _)| *r == round)
                .map(|(_, d)| format!("`{d}`"))
                .collect();
            return Err(round_failed(
                &spec.name,
                round,
                &format!(
                    "{} of its domains sent an update, and `federation.min_clients` is {} (dropped: {})",
                    sum.contributors.len(),
                    settings.min_clients,
                    gone.join(", ")
                ),
            ));
        }
        let arrived: f64 = sum.contributors.iter().map(|&c| shares[c]).sum();
        global = FedAvg::next_global(std::slice::from_ref(&global), &sum.values, arrived).concat();
        let valid = evaluate(federation, &global, Part::Valid, spec, round, &mut dropped)?;
        let report = report(Some(&valid), None);
        match record_epoch(
            &report,
            round,
            loss_sum / loss_rows.max(1) as f64,
            &mut choice,
            observer,
            &mut history,
        )? {
            AfterEpoch::Checkpoint => kept = global.clone(),
            AfterEpoch::Stop => break,
            AfterEpoch::Continue => {}
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let rounds = history.len();
    let (kept_round, restore) = choice.kept(rounds);
    if restore {
        global = kept;
    }
    observer.evaluation_started();
    let valid = evaluate(federation, &global, Part::Valid, spec, rounds, &mut dropped)?;
    let test = evaluate(federation, &global, Part::Test, spec, rounds, &mut dropped)?;
    let report: EvaluationReport = report(Some(&valid), Some(&test));
    let model = model_from_values(&template, &global, &sizes).ok_or_else(|| {
        SplitError::refused("governance", "the round's sum does not fit the model")
    })?;
    let summary = FederationSummary {
        technique: spec.technique.clone(),
        secure_aggregation: secure,
        rounds,
        seconds_per_round: train_seconds / rounds.max(1) as f64,
        update_values,
        domain_rows: names
            .iter()
            .cloned()
            .zip(train_rows.iter().copied())
            .collect(),
        dropped,
        privacy: dp.map(|dp| PrivacySpent {
            epsilon: accountant.epsilon(dp.delta),
            delta: dp.delta,
            noise_multiplier: dp.noise_multiplier,
            clip_norm: dp.clip_norm,
        }),
    };
    Ok(FederatedRun {
        config: RunConfig::Federated { secure },
        outcome: FitOutcome {
            history,
            kept_epoch: kept_round,
            report,
            train_seconds,
            cut_layer_bytes: 0,
        },
        model,
        summary,
        rows: [
            totals.train_rows as usize,
            valid.rows as usize,
            test.rows as usize,
        ],
        rows_trained,
    })
}

/// Every domain scores `model` on its rows of `part`; the sums of those that answered.
fn evaluate(
    federation: &mut dyn Federation,
    model: &[f32],
    part: Part,
    spec: &HorizontalSpec,
    round: usize,
    dropped: &mut Vec<(usize, String)>,
) -> Result<EvaluationSums, SplitError> {
    let names = federation.domains();
    let messages = (0..names.len())
        .map(|k| {
            (
                k,
                ToDomain::Evaluate {
                    model: model.to_vec(),
                    part,
                },
            )
        })
        .collect();
    let mut total: Option<EvaluationSums> = None;
    for (k, answer) in answers(federation, messages, round, dropped) {
        let sums = match answer {
            FromDomain::Evaluation(sums) => sums,
            other => return Err(unexpected(&names[k], &other, "evaluation")),
        };
        sums.check(&spec.objective, &names[k])?;
        total = Some(match total {
            None => sums,
            Some(total) => total.merge(sums),
        });
    }
    total.ok_or_else(|| {
        SplitError::refused(
            "governance",
            format!("no domain scored the model after round {round}"),
        )
    })
}

/// One round of secure aggregation over the domains that trained (`trained`: domain and its
/// keys), every message routed through governance: governance learns the sum of the updates
/// that arrived and who sent them, never one update.
fn secure_round(
    federation: &mut dyn Federation,
    chosen: &[usize],
    trained: &[(usize, Option<fedmesh_secagg::Advertisement>)],
    config: Config,
    round: usize,
    dropped: &mut Vec<(usize, String)>,
) -> Result<RoundSum, SplitError> {
    let names = federation.domains();
    let failed =
        |e: fedmesh_secagg::SecAggError| SplitError::refused("secure aggregation", e.to_string());
    let client_of = |k: usize| chosen.iter().position(|&c| c == k).expect("chosen") as u32;
    let domain_of = |client: u32| chosen[client as usize];
    let mut aggregator = Aggregator::new(config).map_err(failed)?;
    let adverts = trained
        .iter()
        .filter_map(|&(k, advert)| advert.filter(|a| a.client == client_of(k)))
        .collect();
    let roster = aggregator.roster(adverts).map_err(failed)?;
    let messages = roster
        .iter()
        .map(|a| (domain_of(a.client), ToDomain::Roster(roster.clone())))
        .collect();
    let mut sealed = Vec::new();
    for (k, answer) in answers(federation, messages, round, dropped) {
        match answer {
            FromDomain::Shares(shares) if shares.iter().all(|s| s.from == client_of(k)) => {
                sealed.extend(shares);
            }
            other => {
                tracing::warn!(
                    "round {round}: `{}` sent {} for its shares",
                    names[k],
                    other.kind()
                );
                dropped.push((round, names[k].clone()));
            }
        }
    }
    let inbox = aggregator.route(sealed).map_err(failed)?;
    let messages = inbox
        .iter()
        .map(|(&client, shares)| (domain_of(client), ToDomain::Inbox(shares.clone())))
        .collect();
    for (k, answer) in answers(federation, messages, round, dropped) {
        let accepted = match answer {
            FromDomain::Masked(input) if input.client == client_of(k) => {
                aggregator.receive(input).map_err(|e| e.to_string())
            }
            other => Err(format!("sent {} for its masked input", other.kind())),
        };
        if let Err(reason) = accepted {
            tracing::warn!(
                "round {round}: `{}`'s masked input was refused: {reason}",
                names[k]
            );
            dropped.push((round, names[k].clone()));
        }
    }
    let survivors = aggregator.survivors().map_err(failed)?;
    let messages = survivors
        .iter()
        .map(|&client| (domain_of(client), ToDomain::Survivors(survivors.clone())))
        .collect();
    let mut reveals = Vec::new();
    for (k, answer) in answers(federation, messages, round, dropped) {
        match answer {
            FromDomain::Reveal(reveal) if reveal.client == client_of(k) => reveals.push(reveal),
            other => {
                tracing::warn!(
                    "round {round}: `{}` sent {} for its reveal",
                    names[k],
                    other.kind()
                );
                dropped.push((round, names[k].clone()));
            }
        }
    }
    let aggregate = aggregator.aggregate(reveals).map_err(failed)?;
    Ok(RoundSum {
        values: aggregate.values,
        contributors: aggregate.contributors.iter().map(|&c| c as usize).collect(),
        dropped: aggregate.dropped.iter().map(|&c| c as usize).collect(),
    })
}

fn round_failed(job: &str, round: usize, reason: &str) -> SplitError {
    SplitError::Job {
        job: job.to_string(),
        reason: format!("round {round} failed: {reason}"),
    }
}
