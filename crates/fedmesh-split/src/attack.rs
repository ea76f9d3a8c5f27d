//! Label leakage in split learning, measured on a job's own messages.
//!
//! Whoever receives per-example gradients of the loss can often read the labels off them. In a
//! split run:
//!
//! - every feature domain receives `∂L/∂h_d`, one row per example of its batch (both
//!   configurations);
//! - governance, in configuration 2, receives `∂L/∂z` from the label owner (in configuration 1 it
//!   holds the labels already).
//!
//! [`attack`] runs a split configuration in this process with an [`Eavesdropper`] on the
//! transport, and scores every training example as each receiver could, with the attacks of
//! Li et al. 2022 ("Label Leakage and Protection in Two-party Split Learning"):
//!
//! - **norm**: positives, the minority, get larger gradients: the score is `‖g_i‖`;
//! - **direction**: gradients of one class point the same way: the score is the cosine of `g_i`
//!   with the gradient of one example of the batch whose label the attacker knows (its first
//!   positive, else its first negative with the sign turned);
//! - **spectral**: with a linear head `∂L/∂z_i = Wᵀ(p_i − y_i)`, which lies on one line whose
//!   side is the label; generally, the batch's first principal direction splits the classes: the
//!   score is the projection on it.
//!
//! The leak AUC of an attack is the ROC-AUC of its scores against the true labels, each epoch,
//! turned the attacker's best way (`max(AUC, 1 − AUC)`): 0.5 is nothing learned, 1.0 every
//! label. The label owner itself is not attacked: it holds the labels.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use fedmesh_model::Targets;
use fedmesh_model::metrics::roc_auc;
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::job::{PreparedJob, RunConfig, RunResult};
use crate::party::{HeadStep, LabelProtection};
use crate::scores::EvaluationReport;
use crate::trainer::{EpochRecord, Observer};
use crate::transport::Transport;
use crate::wire::{BatchPlan, CutActivation, CutLayerGradient, Pass, WireTensor};

/// The attacks, in the order of [`LeakAuc::attack`]'s values.
pub const ATTACKS: [&str; 3] = ["norm", "direction", "spectral"];

/// What one party could learn of the training labels in one epoch by one attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeakAuc {
    pub party: String,
    pub attack: String,
    pub epoch: usize,
    /// `max(AUC, 1 − AUC)` of the attack's scores against the true labels.
    pub auc: f64,
    /// Training examples scored.
    pub examples: usize,
}

/// One attacked run: the leaks, and what the model scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackRun {
    pub config: String,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<LabelProtection>,
    pub leaks: Vec<LeakAuc>,
    pub result: RunResult,
}

impl AttackRun {
    /// The highest leak AUC of any attack on any party, over every epoch.
    pub fn worst_leak(&self) -> Option<&LeakAuc> {
        self.leaks.iter().max_by(|a, b| a.auc.total_cmp(&b.auc))
    }
}

/// An epoch's scores of one receiving party: for each training example, its label and each
/// attack's score.
#[derive(Default)]
struct PartyScores {
    party: String,
    positive: Vec<bool>,
    scores: [Vec<f32>; 3],
}

/// What the eavesdropper saw, scored as it arrives.
struct Interception {
    /// The true label of every aligned row (positive: class 1); the attacker knows none but
    /// the one reference of each batch.
    labels: Vec<bool>,
    /// The rows of the current training batch.
    rows: Vec<u32>,
    epoch: Vec<PartyScores>,
    leaks: Vec<LeakAuc>,
}

impl Interception {
    /// Scores a received gradient, one row per example of the current batch.
    fn observe(&mut self, party: &str, gradient: &WireTensor) {
        let (rows, cols) = (gradient.rows, gradient.cols);
        if rows != self.rows.len() || cols == 0 || rows < 2 {
            return;
        }
        let g: Vec<&[f32]> = gradient.data.chunks(cols).collect();
        let labels: Vec<bool> = self
            .rows
            .iter()
            .map(|&r| self.labels.get(r as usize).copied().unwrap_or(false))
            .collect();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        // The reference: the batch's first positive, else its first negative (sign turned).
        let (reference, sign) = match labels.iter().position(|&l| l) {
            Some(i) => (i, 1.0),
            None => (0, -1.0),
        };
        let reference_norm = norm(g[reference]).max(f32::MIN_POSITIVE);
        let (mean, direction) = principal_direction(&g, cols);
        let scores = match self.epoch.iter().position(|p| p.party == party) {
            Some(i) => &mut self.epoch[i],
            None => {
                self.epoch.push(PartyScores {
                    party: party.to_string(),
                    ..PartyScores::default()
                });
                self.epoch.last_mut().expect("just pushed")
            }
        };
        for (i, row) in g.iter().enumerate() {
            if i == reference {
                continue;
            }
            let dot: f32 = row.iter().zip(g[reference]).map(|(a, b)| a * b).sum();
            let cosine = sign * dot / (norm(row).max(f32::MIN_POSITIVE) * reference_norm);
            let projection: f32 = row
                .iter()
                .zip(&mean)
                .zip(&direction)
                .map(|((&x, m), v)| (x as f64 - m) as f32 * v)
                .sum();
            scores.positive.push(labels[i]);
            scores.scores[0].push(norm(row));
            scores.scores[1].push(cosine);
            scores.scores[2].push(projection);
        }
    }

    /// Turns the epoch's scores into leak AUCs.
    fn finish_epoch(&mut self, epoch: usize) {
        for party in std::mem::take(&mut self.epoch) {
            let both = party.positive.iter().any(|&p| p) && party.positive.iter().any(|&p| !p);
            if !both {
                continue;
            }
            for (attack, scores) in ATTACKS.iter().zip(&party.scores) {
                let auc = roc_auc(scores, &party.positive);
                self.leaks.push(LeakAuc {
                    party: party.party.clone(),
                    attack: attack.to_string(),
                    epoch,
                    auc: auc.max(1.0 - auc),
                    examples: scores.len(),
                });
            }
        }
    }
}

/// The rows' mean, and their first principal direction (centered) by power iteration, of unit
/// length.
fn principal_direction(rows: &[&[f32]], cols: usize) -> (Vec<f64>, Vec<f32>) {
    let n = rows.len() as f64;
    let mean: Vec<f64> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c] as f64).sum::<f64>() / n)
        .collect();
    let mut covariance = vec![0f64; cols * cols];
    for row in rows {
        for a in 0..cols {
            let da = row[a] as f64 - mean[a];
            for b in 0..cols {
                covariance[a * cols + b] += da * (row[b] as f64 - mean[b]);
            }
        }
    }
    // A start with a part along every axis, so that no direction is missed.
    let mut v: Vec<f64> = (0..cols).map(|c| 1.0 + c as f64 / cols as f64).collect();
    for _ in 0..50 {
        let next: Vec<f64> = (0..cols)
            .map(|a| (0..cols).map(|b| covariance[a * cols + b] * v[b]).sum())
            .collect();
        let length = next.iter().map(|x| x * x).sum::<f64>().sqrt();
        if length <= f64::MIN_POSITIVE {
            break;
        }
        v = next.into_iter().map(|x| x / length).collect();
    }
    (mean, v.into_iter().map(|x| x as f32).collect())
}

/// A transport that hands every message on, and scores each per-example gradient it carries
/// as its receiver could.
pub struct Eavesdropper<T> {
    inner: T,
    /// The feature domains, in the order their gradients are sent.
    domains: Vec<String>,
    /// Who holds the labels (not attacked).
    label_owner: String,
    seen: Arc<Mutex<Interception>>,
}

impl<T> Eavesdropper<T> {
    fn seen(&self) -> MutexGuard<'_, Interception> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Transport> Transport for Eavesdropper<T> {
    fn forward(&mut self, plan: &BatchPlan) -> Result<Vec<CutActivation>, SplitError> {
        if plan.pass == Pass::Train {
            self.seen().rows = plan.rows.clone();
        }
        self.inner.forward(plan)
    }

    fn backward(
        &mut self,
        gradients: Vec<CutLayerGradient>,
        next: Option<&BatchPlan>,
    ) -> Result<(), SplitError> {
        {
            let mut seen = self.seen();
            for (domain, gradient) in self.domains.iter().zip(&gradients) {
                if *domain != self.label_owner {
                    seen.observe(domain, gradient);
                }
            }
        }
        self.inner.backward(gradients, next)
    }

    fn head_train(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<HeadStep, SplitError> {
        let step = self.inner.head_train(plan, tower_output)?;
        self.seen().observe("governance", &step.gradient);
        Ok(step)
    }

    fn head_eval(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<(), SplitError> {
        self.inner.head_eval(plan, tower_output)
    }

    fn head_report(&mut self) -> Result<EvaluationReport, SplitError> {
        self.inner.head_report()
    }

    fn shared_labels(&mut self) -> Result<Targets, SplitError> {
        self.inner.shared_labels()
    }

    fn save_parts(&mut self, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, SplitError> {
        self.inner.save_parts(dir)
    }

    fn checkpoint(&mut self) -> Result<(), SplitError> {
        self.inner.checkpoint()
    }

    fn restore(&mut self) -> Result<(), SplitError> {
        self.inner.restore()
    }
}

/// Closes each epoch's scores, and tells the caller's observer everything.
struct EpochCloser<'a> {
    inner: &'a dyn Observer,
    seen: Arc<Mutex<Interception>>,
}

impl Observer for EpochCloser<'_> {
    fn training_started(&self) {
        self.inner.training_started();
    }
    fn evaluation_started(&self) {
        self.inner.evaluation_started();
    }
    fn epoch_started(&self, epoch: usize, batches: usize) {
        self.inner.epoch_started(epoch, batches);
    }
    fn batch_done(&self, loss: f32) {
        self.inner.batch_done(loss);
    }
    fn epoch_done(&self, record: &EpochRecord) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish_epoch(record.epoch);
        self.inner.epoch_done(record);
    }
}

/// Trains a split configuration of `job` in this process for `seed`, with an eavesdropper on
/// every message, and returns what each party could learn of the labels, each epoch, beside the
/// run's own result. Binary jobs only: the attacks score one class against the other.
pub fn attack(
    job: &PreparedJob,
    config: &RunConfig,
    seed: u64,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<AttackRun, SplitError> {
    let share_labels = match config {
        RunConfig::SplitLabelSharing => true,
        RunConfig::SplitLabelOwner => false,
        other => {
            return Err(SplitError::Job {
                job: job.spec.name.clone(),
                reason: format!(
                    "`{}` sends no gradients between parties: the attacks read split-label-sharing and split-label-owner runs",
                    other.name()
                ),
            });
        }
    };
    let labels = match &job.targets {
        Targets::Classes(classes) if classes.iter().all(|&c| c == 0 || c == 1) => {
            classes.iter().map(|&c| c == 1).collect()
        }
        _ => {
            return Err(SplitError::Job {
                job: job.spec.name.clone(),
                reason: "the attacks score one class against another: they need a binary label"
                    .into(),
            });
        }
    };
    let seen = Arc::new(Mutex::new(Interception {
        labels,
        rows: Vec::new(),
        epoch: Vec::new(),
        leaks: Vec::new(),
    }));
    let domains = job.domains.iter().map(|d| d.name.clone()).collect();
    let label_owner = job.spec.label.domain.clone();
    let mut trainer = job.split_trainer_over(share_labels, seed, |transport| Eavesdropper {
        inner: transport,
        domains,
        label_owner,
        seen: Arc::clone(&seen),
    })?;
    let closer = EpochCloser {
        inner: observer,
        seen: Arc::clone(&seen),
    };
    let result = job.spec.train_and_evaluate(
        &mut trainer,
        &job.partition,
        config,
        seed,
        &closer,
        stop,
        None,
    )?;
    let leaks = std::mem::take(&mut seen.lock().unwrap_or_else(|e| e.into_inner()).leaks);
    Ok(AttackRun {
        config: config.name(),
        seed,
        protection: job.spec.label_protection.clone(),
        leaks,
        result,
    })
}
