//! The training algorithms: split (governance's side, over a [`Transport`]) and joint (one
//! process: the centralized baseline, and the reference the split computation must equal), and
//! the epoch loop both run under.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use fedmesh_data::{FeatureMatrix, Partition};
use fedmesh_model::{BottomModel, Head, Objective, Targets, Tower};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::party::{
    GradientNoise, Kept, LabelProtection, OptimizerSpec, batch_inputs, equalize_norms, head_step,
    load_part, record_eval, save_part, scalar,
};
use crate::scores::{EvaluationReport, ScoreBook};
use crate::transport::Transport;
use crate::wire::{BatchPlan, Part, Pass, WireTensor};

/// One step of training and evaluation, whatever the placement of the model's parts.
pub trait Trainer {
    /// Trains on the plan's rows; returns the batch loss.
    fn train_step(&mut self, plan: &BatchPlan) -> Result<f32, SplitError>;
    /// Tells the trainer the training plan that will follow the next [`Trainer::train_step`],
    /// so that remote parties can start on it as soon as they have taken their step (`None`:
    /// the next plan is not a training step).
    fn announce(&mut self, _next: Option<&BatchPlan>) {}
    /// Scores the plan's rows in inference mode, for the next [`Trainer::report`].
    fn eval_batch(&mut self, plan: &BatchPlan) -> Result<(), SplitError>;
    /// Metrics of the evaluation batches since the last report.
    fn report(&mut self) -> Result<EvaluationReport, SplitError>;
    /// Bytes that crossed the cut layer so far, both directions.
    fn cut_layer_bytes(&self) -> u64 {
        0
    }
    /// Saves every part where its holder keeps it; returns what was written.
    fn save(&mut self, dir: &Path) -> Result<Vec<PathBuf>, SplitError>;
    /// Every holder keeps a copy of its parts as they are now (the best epoch so far).
    fn checkpoint(&mut self) -> Result<(), SplitError>;
    /// Every part back to its last checkpoint.
    fn restore(&mut self) -> Result<(), SplitError>;
}

/// Where the labels and the loss live in a split job.
pub enum LabelPlacement {
    /// Configuration 1: the label owner shared its labels; governance holds the head too.
    Governance { head: Box<Head> },
    /// Configuration 2 (U-shaped): the label owner keeps labels and head.
    LabelOwner,
}

struct SharedLabels {
    head: Head,
    optimizer: ModuleOptimizer,
    targets: Targets,
    scores: ScoreBook,
    kept: Kept<Head>,
    /// Noise on the head's gradient before it reaches the tower (and so the domains), when the
    /// job asks for label protection.
    noise: Option<GradientNoise>,
}

/// Governance's side of split training.
pub struct SplitTrainer<T: Transport> {
    transport: T,
    tower: Tower,
    optimizer: ModuleOptimizer,
    objective: Objective,
    labels: Option<SharedLabels>,
    device: Device,
    cut_layer_bytes: u64,
    /// The training plan after the current one, when known.
    next_plan: Option<BatchPlan>,
    kept: Kept<Tower>,
    /// Each domain's cut-layer gradient leaves with every example's row at one length
    /// ([`LabelProtection::equal_norms`]), vanished rows turned a random way by this stream.
    equal_norms: Option<ChaCha8Rng>,
}

impl<T: Transport> SplitTrainer<T> {
    pub fn new(
        mut transport: T,
        tower: Tower,
        placement: LabelPlacement,
        objective: Objective,
        optimizer: &OptimizerSpec,
        device: Device,
    ) -> Result<Self, SplitError> {
        let labels = match placement {
            LabelPlacement::Governance { head } => Some(SharedLabels {
                head: *head,
                optimizer: optimizer.init(),
                targets: transport.shared_labels()?,
                scores: ScoreBook::default(),
                kept: Kept::default(),
                noise: None,
            }),
            LabelPlacement::LabelOwner => None,
        };
        Ok(Self {
            transport,
            tower,
            optimizer: optimizer.init(),
            objective,
            labels,
            device,
            cut_layer_bytes: 0,
            next_plan: None,
            kept: Kept::default(),
            equal_norms: None,
        })
    }

    /// With label sharing, fits the head's target scale on the training rows `train` of the
    /// labels the label owner sent (regression).
    pub fn fit_target_scale(&mut self, train: &[u32]) {
        if let Some(shared) = &mut self.labels {
            shared.head = shared.head.clone().fitted_to(&shared.targets, train);
        }
    }

    /// With label sharing, governance holds the labels, and protects them from the domains as
    /// the label owner does in configuration 2: noise on the head's gradient at the tower
    /// output, before it carries back through the tower to the cut layer (`gradient_noise`,
    /// `shaped_noise`; randomized response protects labels from whoever receives them, and
    /// here governance holds them). Refused for shaped noise on a label that is not binary.
    /// In both configurations, `equal_norms` has governance send each domain every example's
    /// gradient at one length.
    pub fn protect_labels(
        &mut self,
        protection: &LabelProtection,
        seed: u64,
    ) -> Result<(), SplitError> {
        // Its own stream: the label owner's noise draws from `seed` as it is.
        self.equal_norms = protection
            .equal_norms
            .then(|| ChaCha8Rng::seed_from_u64(seed ^ 0x65717561_6c6e6f72));
        if let Some(shared) = &mut self.labels {
            shared.noise = GradientNoise::of(protection, &self.objective, "governance", seed)?;
        }
        Ok(())
    }

    pub fn tower(&self) -> &Tower {
        &self.tower
    }

    /// With label sharing, fetches the label owner's labels again (a recommender's examples,
    /// and so their labels, change every epoch).
    pub fn reload_labels(&mut self) -> Result<(), SplitError> {
        if let Some(shared) = &mut self.labels {
            shared.targets = self.transport.shared_labels()?;
        }
        Ok(())
    }

    /// The labels governance holds (label sharing): the current rows'.
    pub fn shared_targets(&self) -> Option<&Targets> {
        self.labels.as_ref().map(|l| &l.targets)
    }

    /// The head, when governance holds it (label sharing).
    pub fn head(&self) -> Option<&Head> {
        self.labels.as_ref().map(|l| &l.head)
    }

    /// Governance's parts as [`Trainer::save`] wrote them in `dir`: the tower, and the head
    /// with label sharing.
    pub fn load(&mut self, dir: &Path) -> Result<(), SplitError> {
        self.tower = load_part(self.tower.clone(), &dir.join("tower-governance.bpk"))?;
        if let Some(shared) = &mut self.labels {
            shared.head = load_part(shared.head.clone(), &dir.join("head-governance.bpk"))?;
        }
        Ok(())
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn count(&mut self, tensors: &[WireTensor]) {
        self.cut_layer_bytes += tensors.iter().map(WireTensor::bytes).sum::<u64>();
    }
}

impl<T: Transport> Trainer for SplitTrainer<T> {
    fn announce(&mut self, next: Option<&BatchPlan>) {
        self.next_plan = next.cloned();
    }

    /// One split step, top to bottom.
    fn train_step(&mut self, plan: &BatchPlan) -> Result<f32, SplitError> {
        // 1. Domains forward: each sends its cut-layer activation.
        let activations = self.transport.forward(plan)?;
        self.count(&activations);
        let cut: Vec<Tensor<2>> = activations
            .iter()
            .map(|a| a.to_tensor(&self.device).require_grad())
            .collect();

        // 2. Governance forward through the tower.
        let z = self.tower.forward(cut.clone());

        // 3. Loss: at governance with shared labels, else at the label owner, which returns
        //    d loss / d z; `(z · dz).sum()` then carries it back through the tower.
        let mut head_stepped = false;
        let (loss, mut grads) = match &mut self.labels {
            Some(shared) if shared.noise.is_some() => {
                // As the label owner does in configuration 2: the head's gradient at the tower
                // output, noised, is what carries back through the tower.
                let step = head_step(
                    &mut shared.head,
                    &mut shared.optimizer,
                    &self.objective,
                    z.clone().detach(),
                    &shared.targets.gather(&plan.rows),
                    shared.noise.as_mut(),
                    plan.learning_rate,
                );
                head_stepped = true;
                let grads = (z * step.gradient.to_tensor(&self.device)).sum().backward();
                (step.loss, grads)
            }
            Some(shared) => {
                let targets = shared.targets.gather(&plan.rows);
                let loss = shared
                    .head
                    .loss(&self.objective, shared.head.forward(z), &targets);
                (scalar(&loss), loss.backward())
            }
            None => {
                let z_wire = WireTensor::from_tensor(&z);
                let step = self.transport.head_train(plan, z_wire.clone())?;
                self.count(&[z_wire, step.gradient.clone()]);
                let grads = (z * step.gradient.to_tensor(&self.device)).sum().backward();
                (step.loss, grads)
            }
        };

        // 4. Gradients back to the domains, which step their own optimizers.
        let cut_gradients: Vec<WireTensor> = cut
            .iter()
            .map(|h| {
                let mut gradient = WireTensor::from_tensor(
                    &h.grad_remove(&mut grads)
                        .expect("every activation takes part in the loss"),
                );
                if let Some(rng) = &mut self.equal_norms {
                    equalize_norms(&mut gradient, rng);
                }
                gradient
            })
            .collect();
        self.count(&cut_gradients);
        self.transport
            .backward(cut_gradients, self.next_plan.take().as_ref())?;

        // 5. Governance steps its own parts.
        let tower_grads = GradientsParams::from_module(&mut grads, &self.tower);
        self.tower = self
            .optimizer
            .step(plan.learning_rate, self.tower.clone(), tower_grads);
        if let Some(shared) = self.labels.as_mut().filter(|_| !head_stepped) {
            let head_grads = GradientsParams::from_module(&mut grads, &shared.head);
            shared.head =
                shared
                    .optimizer
                    .step(plan.learning_rate, shared.head.clone(), head_grads);
        }
        Ok(loss)
    }

    fn eval_batch(&mut self, plan: &BatchPlan) -> Result<(), SplitError> {
        let Pass::Eval(part) = plan.pass else {
            return Err(SplitError::refused(
                "governance",
                "eval_batch needs an evaluation plan",
            ));
        };
        let activations = self.transport.forward(plan)?;
        self.count(&activations);
        let device = self.device.clone().inner();
        let cut = activations.iter().map(|a| a.to_tensor(&device)).collect();
        let z = self.tower.valid().forward(cut);
        match &mut self.labels {
            Some(shared) => {
                let head = shared.head.valid();
                let outputs = head.forward(z);
                record_eval(
                    &mut shared.scores,
                    &self.objective,
                    &head,
                    &shared.targets,
                    part,
                    &plan.rows,
                    outputs,
                );
                Ok(())
            }
            None => {
                let z_wire = WireTensor::from_tensor(&z);
                self.count(std::slice::from_ref(&z_wire));
                self.transport.head_eval(plan, z_wire)
            }
        }
    }

    fn report(&mut self) -> Result<EvaluationReport, SplitError> {
        match &mut self.labels {
            Some(shared) => Ok(shared.scores.report(&self.objective, &shared.targets)),
            None => self.transport.head_report(),
        }
    }

    fn cut_layer_bytes(&self) -> u64 {
        self.cut_layer_bytes
    }

    fn save(&mut self, dir: &Path) -> Result<Vec<PathBuf>, SplitError> {
        let mut written = self.transport.save_parts(dir)?;
        written.push(save_part(&self.tower, dir, "tower-governance")?);
        if let Some(shared) = &self.labels {
            written.push(save_part(&shared.head, dir, "head-governance")?);
        }
        Ok(written)
    }

    fn checkpoint(&mut self) -> Result<(), SplitError> {
        self.transport.checkpoint()?;
        self.kept.keep(&self.tower);
        if let Some(shared) = &mut self.labels {
            shared.kept.keep(&shared.head);
        }
        Ok(())
    }

    fn restore(&mut self) -> Result<(), SplitError> {
        self.transport.restore()?;
        self.tower = self.kept.restored("governance")?;
        if let Some(shared) = &mut self.labels {
            shared.head = shared.kept.restored("governance")?;
        }
        Ok(())
    }
}

/// Every part of a split network in one module: the function the split computation must equal.
#[derive(Module, Debug)]
pub struct JointNetwork {
    pub bottoms: Vec<BottomModel>,
    pub tower: Tower,
    pub head: Head,
}

impl JointNetwork {
    pub fn forward(&self, inputs: Vec<(Tensor<2>, Option<Tensor<2, Int>>)>) -> Tensor<2> {
        let cut = self
            .bottoms
            .iter()
            .zip(inputs)
            .map(|(bottom, (numeric, categorical))| bottom.forward(numeric, categorical))
            .collect();
        self.head.forward(self.tower.forward(cut))
    }
}

/// Training of a [`JointNetwork`] in one process, on all features: the centralized baseline.
pub struct JointTrainer {
    pub network: JointNetwork,
    features: Vec<FeatureMatrix>,
    targets: Targets,
    objective: Objective,
    optimizer_spec: OptimizerSpec,
    optimizer: ModuleOptimizer,
    device: Device,
    scores: ScoreBook,
    kept: Kept<JointNetwork>,
    /// FedProx: μ and the round's global model's trainable tensors.
    proximal: Option<(f64, Vec<Tensor<1>>)>,
}

impl JointTrainer {
    /// `features[i]` feeds `network.bottoms[i]`.
    pub fn new(
        network: JointNetwork,
        features: Vec<FeatureMatrix>,
        targets: Targets,
        objective: Objective,
        optimizer: &OptimizerSpec,
        device: Device,
    ) -> Self {
        Self {
            network,
            features,
            targets,
            objective,
            optimizer_spec: optimizer.clone(),
            optimizer: optimizer.init(),
            device,
            scores: ScoreBook::default(),
            kept: Kept::default(),
            proximal: None,
        }
    }

    /// Starts over from `network` with a fresh optimizer, as a domain does each round of
    /// federated averaging; with `proximal_mu` above 0 (FedProx) every step's loss adds
    /// μ/2·‖w − w₀‖², w₀ being `network` as given.
    pub fn restart(&mut self, network: JointNetwork, proximal_mu: f64) {
        self.proximal = (proximal_mu > 0.0).then(|| {
            (
                proximal_mu,
                fedmesh_model::average::proximal_anchor(&network),
            )
        });
        self.network = network;
        self.optimizer = self.optimizer_spec.init();
    }

    /// The network's scores of `rows` (row-major, as [`Objective::scores`] gives them) and their
    /// summed loss, `batch` rows at a time, without training.
    pub fn score(&self, rows: &[u32], batch: usize) -> (Vec<f32>, f64) {
        let device = self.device.clone().inner();
        let network = self.network.valid();
        let mut scores = Vec::with_capacity(rows.len() * self.objective.outputs());
        let mut loss_sum = 0.0;
        for chunk in rows.chunks(batch.max(1)) {
            let outputs = network.forward(self.inputs(chunk, &device));
            let loss = network.head.loss(
                &self.objective,
                outputs.clone(),
                &self.targets.gather(chunk),
            );
            loss_sum += crate::party::scalar(&loss) as f64 * chunk.len() as f64;
            scores.extend(self.objective.scores(outputs));
        }
        (scores, loss_sum)
    }

    /// The feature matrices, one per bottom.
    pub fn features(&self) -> &[FeatureMatrix] {
        &self.features
    }

    fn inputs(&self, rows: &[u32], device: &Device) -> Vec<(Tensor<2>, Option<Tensor<2, Int>>)> {
        self.features
            .iter()
            .map(|f| batch_inputs(f, rows, device))
            .collect()
    }
}

impl Trainer for JointTrainer {
    fn train_step(&mut self, plan: &BatchPlan) -> Result<f32, SplitError> {
        let outputs = self.network.forward(self.inputs(&plan.rows, &self.device));
        let loss =
            self.network
                .head
                .loss(&self.objective, outputs, &self.targets.gather(&plan.rows));
        let value = scalar(&loss);
        let loss = match &self.proximal {
            Some((mu, anchor)) => {
                let term = fedmesh_model::average::proximal_term(&self.network, anchor, *mu)
                    .ok_or_else(|| {
                        SplitError::refused(
                            "a domain",
                            "the proximal anchor does not fit the model",
                        )
                    })?;
                loss + term
            }
            None => loss,
        };
        let grads = GradientsParams::from_grads(loss.backward(), &self.network);
        self.network = self
            .optimizer
            .step(plan.learning_rate, self.network.clone(), grads);
        Ok(value)
    }

    fn eval_batch(&mut self, plan: &BatchPlan) -> Result<(), SplitError> {
        let Pass::Eval(part) = plan.pass else {
            return Err(SplitError::refused(
                "governance",
                "eval_batch needs an evaluation plan",
            ));
        };
        let device = self.device.clone().inner();
        let network = self.network.valid();
        let outputs = network.forward(self.inputs(&plan.rows, &device));
        record_eval(
            &mut self.scores,
            &self.objective,
            &network.head,
            &self.targets,
            part,
            &plan.rows,
            outputs,
        );
        Ok(())
    }

    fn report(&mut self) -> Result<EvaluationReport, SplitError> {
        Ok(self.scores.report(&self.objective, &self.targets))
    }

    fn save(&mut self, dir: &Path) -> Result<Vec<PathBuf>, SplitError> {
        Ok(vec![save_part(&self.network, dir, "joint")?])
    }

    fn checkpoint(&mut self) -> Result<(), SplitError> {
        self.kept.keep(&self.network);
        Ok(())
    }

    fn restore(&mut self) -> Result<(), SplitError> {
        self.network = self.kept.restored("the centralized trainer")?;
        Ok(())
    }
}

/// Epochs, batches and evaluation cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Passes over the training rows (fewer with early stopping).
    pub epochs: usize,
    /// Training rows per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Rows per evaluation batch (memory, not results).
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Adam's settings.
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// `constant` or `cosine` learning rate.
    #[serde(default)]
    pub schedule: Schedule,
    /// Which epoch's parts the run keeps: the last, or the one of lowest validation loss.
    #[serde(default, skip_serializing_if = "KeptEpoch::is_default")]
    pub keep: KeptEpoch,
    /// Stop once the validation loss has not improved for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
}

/// Which epoch's parts a run keeps (and evaluates on the test rows, and saves).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum KeptEpoch {
    /// The parts as the last epoch left them.
    #[default]
    Last,
    /// The parts of the epoch with the lowest validation loss: every holder keeps a copy of
    /// its parts at each new best, and returns to it when training ends.
    Best,
}

impl KeptEpoch {
    pub(crate) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Which epoch a run keeps and when it stops, from each epoch's validation loss: the one rule of
/// every task (a recommender's loss is its negated validation HR@10).
pub(crate) struct EpochChoice {
    keep: KeptEpoch,
    early: Option<EarlyStopping>,
    epochs: usize,
    /// The epoch of the best loss so far, and that loss.
    best: Option<(usize, f64)>,
}

/// What a run does after an epoch, as [`EpochChoice::after`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterEpoch {
    Continue,
    /// A new best that may be returned to: every holder keeps a copy of its parts.
    Checkpoint,
    Stop,
}

impl EpochChoice {
    pub(crate) fn new(keep: KeptEpoch, early: Option<EarlyStopping>, epochs: usize) -> Self {
        Self {
            keep,
            early,
            epochs,
            best: None,
        }
    }

    /// The choice `spec` asks for over `epochs` epochs; refused when it needs validation rows and
    /// there are none.
    pub(crate) fn checked(
        spec: &TrainingSpec,
        epochs: usize,
        valid_rows: usize,
    ) -> Result<Self, SplitError> {
        let choice = Self::new(spec.keep, spec.early_stopping, epochs);
        if choice.validates() && valid_rows == 0 {
            return Err(SplitError::refused(
                "governance",
                "`training.keep: best` and `training.early_stopping` need validation rows: set `split.valid_fraction` above 0",
            ));
        }
        Ok(choice)
    }

    /// Whether the run needs a validation score each epoch.
    pub(crate) fn validates(&self) -> bool {
        self.keep == KeptEpoch::Best || self.early.is_some()
    }

    /// After epoch `epoch` (from 1) of validation loss `loss`: a new best is one lower than the
    /// best by more than `min_delta`; the run stops `patience` epochs after its best.
    pub(crate) fn after(&mut self, epoch: usize, loss: f64) -> AfterEpoch {
        let min_delta = self.early.map_or(0.0, |e| e.min_delta);
        if self.best.is_none_or(|(_, b)| loss < b - min_delta) {
            self.best = Some((epoch, loss));
            // The last epoch needs no copy: training ends on it.
            if self.keep == KeptEpoch::Best && epoch < self.epochs {
                return AfterEpoch::Checkpoint;
            }
        } else if let (Some(early), Some((at, _))) = (self.early, self.best)
            && epoch - at >= early.patience
        {
            tracing::info!("early stop after epoch {epoch}: the best validation epoch was {at}");
            return AfterEpoch::Stop;
        }
        AfterEpoch::Continue
    }

    /// The epoch whose parts the run keeps when training ended after `last` epochs, and whether
    /// the holders must return to their checkpoint for it.
    pub(crate) fn kept(&self, last: usize) -> (usize, bool) {
        match (self.keep, self.best) {
            (KeptEpoch::Best, Some((epoch, _))) => (epoch, epoch < last),
            _ => (last, false),
        }
    }
}

/// Stops training once `patience` epochs in a row have not lowered the validation loss by more
/// than `min_delta`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs without a new best validation loss before training stops (at least 1).
    pub patience: usize,
    /// How much lower than the best a validation loss must be to count as a new best.
    #[serde(default)]
    pub min_delta: f64,
}

/// How the learning rate moves over training.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The optimizer's learning rate throughout.
    #[default]
    Constant,
    /// Cosine decay from the optimizer's learning rate to zero over all steps.
    Cosine,
}

impl TrainingSpec {
    /// The learning rate of step `step` (0-based) of `total`.
    pub fn learning_rate(&self, step: usize, total: usize) -> f64 {
        let base = self.optimizer.learning_rate;
        match self.schedule {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let progress = step as f64 / total.max(1) as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

fn default_batch() -> usize {
    256
}
fn default_eval_batch() -> usize {
    8192
}

/// One epoch's numbers, for loss curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub valid_loss: Option<f64>,
    pub valid_headline: Option<f64>,
}

/// A batch's loss, or [`SplitError::Diverged`] when it is NaN or infinite (`epoch` and `batch`
/// count from 1): the models would only get worse from there.
pub(crate) fn finite_loss(loss: f32, epoch: usize, batch: usize) -> Result<f32, SplitError> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(SplitError::Diverged { epoch, batch })
    }
}

/// Follows a training run (progress bars, logs).
pub trait Observer {
    /// The first batch is about to be trained (the rows are aligned and partitioned).
    fn training_started(&self) {}
    /// Training is over; the final evaluation on the validation and test rows begins.
    fn evaluation_started(&self) {}
    fn epoch_started(&self, _epoch: usize, _batches: usize) {}
    fn batch_done(&self, _loss: f32) {}
    fn epoch_done(&self, _record: &EpochRecord) {}
}

/// An observer that does nothing.
pub struct Silent;
impl Observer for Silent {}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct FitOutcome {
    /// One record per epoch trained (fewer than the spec's epochs after an early stop).
    pub history: Vec<EpochRecord>,
    /// The epoch whose parts were kept, evaluated and saved.
    pub kept_epoch: usize,
    pub report: EvaluationReport,
    pub train_seconds: f64,
    pub cut_layer_bytes: u64,
}

/// Trains for `spec.epochs` over shuffled batches of `partition.train` (the order drawn from
/// `seed`), evaluates the validation slice after each epoch, and evaluates validation and test at
/// the end, on the epoch `spec.keep` names. Stops early as `spec.early_stopping` says, and
/// between batches, with [`SplitError::Interrupted`], once `stop` is set.
pub fn fit(
    trainer: &mut dyn Trainer,
    partition: &Partition,
    spec: &TrainingSpec,
    seed: u64,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<FitOutcome, SplitError> {
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut history = Vec::with_capacity(spec.epochs);
    let mut order = partition.train.clone();
    let steps_per_epoch = order
        .chunks(spec.batch_size)
        .filter(|b| b.len() > 1)
        .count();
    let total_steps = steps_per_epoch * spec.epochs;
    let mut step = 0;
    let mut choice = EpochChoice::checked(spec, spec.epochs, partition.valid.len())?;
    observer.training_started();
    for epoch in 1..=spec.epochs {
        order.shuffle(&mut rng);
        // A last batch of one row would give BatchNorm no variance to normalize by.
        let batches: Vec<&[u32]> = order
            .chunks(spec.batch_size)
            .filter(|b| b.len() > 1)
            .collect();
        observer.epoch_started(epoch, batches.len());
        let plans: Vec<BatchPlan> = batches
            .iter()
            .enumerate()
            .map(|(i, rows)| {
                BatchPlan::train(rows.to_vec(), spec.learning_rate(step + i, total_steps))
            })
            .collect();
        step += plans.len();
        let loss_sum = train_epoch(trainer, &plans, epoch, observer, stop)?;
        let train_loss = loss_sum / order.len().max(1) as f64;
        match close_epoch(
            trainer,
            &partition.valid,
            spec.eval_batch_size,
            epoch,
            train_loss,
            &mut choice,
            observer,
            &mut history,
        )? {
            AfterEpoch::Checkpoint => trainer.checkpoint()?,
            AfterEpoch::Stop => break,
            AfterEpoch::Continue => {}
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let (kept_epoch, report) = final_evaluation(
        trainer,
        partition,
        &choice,
        history.len(),
        spec.eval_batch_size,
        observer,
    )?;
    Ok(FitOutcome {
        history,
        kept_epoch,
        report,
        train_seconds,
        cut_layer_bytes: trainer.cut_layer_bytes(),
    })
}

/// After epoch `epoch` (a round, for a horizontal job) of training loss `train_loss`: scores
/// the validation rows, records the epoch, and says by `choice` whether the holders keep a
/// checkpoint, training stops, or goes on.
#[allow(clippy::too_many_arguments)]
pub(crate) fn close_epoch(
    trainer: &mut dyn Trainer,
    valid: &[u32],
    eval_batch_size: usize,
    epoch: usize,
    train_loss: f64,
    choice: &mut EpochChoice,
    observer: &dyn Observer,
    history: &mut Vec<EpochRecord>,
) -> Result<AfterEpoch, SplitError> {
    evaluate(trainer, valid, Part::Valid, eval_batch_size)?;
    let report = trainer.report()?;
    record_epoch(&report, epoch, train_loss, choice, observer, history)
}

/// After epoch `epoch` of training loss `train_loss`, validated as `report` says: records the
/// epoch, and says by `choice` whether the holders keep a checkpoint, training stops, or goes
/// on.
pub(crate) fn record_epoch(
    report: &EvaluationReport,
    epoch: usize,
    train_loss: f64,
    choice: &mut EpochChoice,
    observer: &dyn Observer,
    history: &mut Vec<EpochRecord>,
) -> Result<AfterEpoch, SplitError> {
    let record = EpochRecord {
        epoch,
        train_loss,
        valid_loss: report.valid_loss,
        valid_headline: report.valid_headline,
    };
    observer.epoch_done(&record);
    let valid_loss = record.valid_loss;
    history.push(record);
    if !choice.validates() {
        return Ok(AfterEpoch::Continue);
    }
    let loss = valid_loss.filter(|l| l.is_finite()).ok_or_else(|| {
        SplitError::refused(
            "governance",
            format!("the label holder reported no finite validation loss for epoch {epoch}"),
        )
    })?;
    Ok(choice.after(epoch, loss))
}

/// Once training ended after `epochs` epochs: the holders return to the epoch `choice` keeps,
/// and the validation and test rows are scored. Returns the kept epoch and the report.
pub(crate) fn final_evaluation(
    trainer: &mut dyn Trainer,
    partition: &Partition,
    choice: &EpochChoice,
    epochs: usize,
    eval_batch_size: usize,
    observer: &dyn Observer,
) -> Result<(usize, EvaluationReport), SplitError> {
    let (kept_epoch, restore) = choice.kept(epochs);
    if restore {
        trainer.restore()?;
    }
    observer.evaluation_started();
    evaluate(trainer, &partition.valid, Part::Valid, eval_batch_size)?;
    evaluate(trainer, &partition.test, Part::Test, eval_batch_size)?;
    Ok((kept_epoch, trainer.report()?))
}

/// One epoch's training steps, for every task: each plan in turn, the next one announced (so
/// that a transport can send it ahead), stopping between batches once `stop` is set and with
/// [`SplitError::Diverged`] at a loss that is not finite. Returns the batches' losses summed,
/// each weighted by its rows.
pub fn train_epoch(
    trainer: &mut dyn Trainer,
    plans: &[BatchPlan],
    epoch: usize,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<f64, SplitError> {
    let mut loss_sum = 0.0;
    for (i, plan) in plans.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            return Err(SplitError::Interrupted);
        }
        trainer.announce(plans.get(i + 1));
        let loss = finite_loss(trainer.train_step(plan)?, epoch, i + 1)?;
        loss_sum += loss as f64 * plan.rows.len() as f64;
        observer.batch_done(loss);
    }
    Ok(loss_sum)
}

/// Scores `rows` for `part`, `batch` rows per plan; the label holder keeps the scores for its
/// report.
pub fn evaluate(
    trainer: &mut dyn Trainer,
    rows: &[u32],
    part: Part,
    batch: usize,
) -> Result<(), SplitError> {
    for chunk in rows.chunks(batch.max(1)) {
        trainer.eval_batch(&BatchPlan::eval(part, chunk.to_vec()))?;
    }
    Ok(())
}
