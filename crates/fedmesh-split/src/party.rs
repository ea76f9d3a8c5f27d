//! The parties' sides of a split step: a domain's bottom model, and the label owner's head.
//!
//! Each party owns its model and optimizer and steps it itself when the gradient for its output
//! arrives. A domain keeps the activation of the current training batch until then: its backward
//! is `(activation · gradient).sum().backward()`, which gives exactly the parameter gradients the
//! joint network would.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, decay::WeightDecayConfig};
use burn::prelude::*;
use fedmesh_data::FeatureMatrix;
use fedmesh_model::{BottomModel, Head, Objective, Targets, deep_copy};
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::scores::{EvaluationReport, ScoreBook};
use crate::wire::{BatchPlan, CutActivation, CutLayerGradient, Pass, WireTensor};

/// Adam, with PyTorch's defaults (ε = 1e-8, not burn's 1e-5) unless configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Adam's step size (the schedule's start).
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Adam's ε.
    #[serde(default = "default_epsilon")]
    pub epsilon: f32,
    /// Adam's β₁.
    #[serde(default = "default_beta_1")]
    pub beta_1: f32,
    /// Adam's β₂.
    #[serde(default = "default_beta_2")]
    pub beta_2: f32,
    /// L2 penalty added to gradients (PyTorch `Adam(weight_decay=…)`).
    #[serde(default)]
    pub weight_decay: f32,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_epsilon() -> f32 {
    1e-8
}
fn default_beta_1() -> f32 {
    0.9
}
fn default_beta_2() -> f32 {
    0.999
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            learning_rate: default_lr(),
            epsilon: default_epsilon(),
            beta_1: default_beta_1(),
            beta_2: default_beta_2(),
            weight_decay: 0.0,
        }
    }
}

impl OptimizerSpec {
    pub fn init(&self) -> ModuleOptimizer {
        AdamConfig::new()
            .with_epsilon(self.epsilon)
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_weight_decay(
                (self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay)),
            )
            .init()
    }
}

/// Builds a batch's input tensors from a feature matrix.
pub fn batch_inputs(
    features: &FeatureMatrix,
    rows: &[u32],
    device: &Device,
) -> (Tensor<2>, Option<Tensor<2, Int>>) {
    let batch = features.gather(rows);
    let numeric = Tensor::from_data(
        TensorData::new(batch.numeric, [batch.rows, batch.numeric_width]),
        device,
    );
    let categorical = (!batch.embeddings.is_empty()).then(|| {
        Tensor::from_data(
            TensorData::new(batch.categorical, [batch.rows, batch.embeddings.len()]),
            device,
        )
    });
    (numeric, categorical)
}

/// A domain's side: its features (all aligned rows), bottom model and optimizer.
pub struct DomainParty {
    pub name: String,
    features: FeatureMatrix,
    model: BottomModel,
    optimizer: ModuleOptimizer,
    device: Device,
    /// The training activation awaiting its gradient, and the step's learning rate.
    pending: Option<(Tensor<2>, f64)>,
    kept: Kept<BottomModel>,
}

impl DomainParty {
    pub fn new(
        name: impl Into<String>,
        features: FeatureMatrix,
        model: BottomModel,
        optimizer: &OptimizerSpec,
        device: Device,
    ) -> Self {
        Self {
            name: name.into(),
            features,
            model,
            optimizer: optimizer.init(),
            device,
            pending: None,
            kept: Kept::default(),
        }
    }

    /// Keeps a copy of the bottom as it is now, for [`DomainParty::restore`].
    pub fn checkpoint(&mut self) {
        self.kept.keep(&self.model);
    }

    /// The bottom back to its last checkpoint. Refused without one, or while a training step
    /// waits for its gradient.
    pub fn restore(&mut self) -> Result<(), SplitError> {
        if self.pending.is_some() {
            return Err(SplitError::refused(
                self.name.clone(),
                format!(
                    "`{}` was asked to restore its bottom while a training step waits for its gradient",
                    self.name
                ),
            ));
        }
        self.model = self.kept.restored(&self.name)?;
        Ok(())
    }

    /// The cut-layer activation of the plan's rows. For training, the activation is kept until
    /// its gradient arrives; for evaluation the model runs in inference mode.
    pub fn forward(&mut self, plan: &BatchPlan) -> Result<CutActivation, SplitError> {
        if let Some(&row) = plan
            .rows
            .iter()
            .find(|&&r| r as usize >= self.features.rows)
        {
            return Err(SplitError::refused(
                self.name.clone(),
                format!(
                    "domain `{}` was asked for row {row}, but holds {} aligned rows",
                    self.name, self.features.rows
                ),
            ));
        }
        match plan.pass {
            Pass::Train => {
                let (numeric, categorical) = batch_inputs(&self.features, &plan.rows, &self.device);
                let activation = self.model.forward(numeric, categorical);
                let wire = WireTensor::from_tensor(&activation);
                self.pending = Some((activation, plan.learning_rate));
                Ok(wire)
            }
            Pass::Eval(_) => {
                let model = self.model.valid();
                let device = self.device.clone().inner();
                let (numeric, categorical) = batch_inputs(&self.features, &plan.rows, &device);
                Ok(WireTensor::from_tensor(
                    &model.forward(numeric, categorical),
                ))
            }
        }
    }

    /// Backpropagates governance's gradient through the bottom model and steps the optimizer.
    pub fn backward(&mut self, gradient: &CutLayerGradient) -> Result<(), SplitError> {
        let (activation, learning_rate) = self.pending.take().ok_or_else(|| {
            SplitError::refused(
                self.name.clone(),
                format!(
                    "domain `{}` received a gradient with no training batch in flight",
                    self.name
                ),
            )
        })?;
        let [rows, cols] = activation.dims();
        if (gradient.rows, gradient.cols) != (rows, cols) {
            return Err(SplitError::refused(
                self.name.clone(),
                format!(
                    "domain `{}` received a {}×{} gradient for a {rows}×{cols} activation",
                    self.name, gradient.rows, gradient.cols
                ),
            ));
        }
        let grads = (activation * gradient.to_tensor(&self.device))
            .sum()
            .backward();
        let grads = GradientsParams::from_grads(grads, &self.model);
        self.model = self
            .optimizer
            .step(learning_rate, self.model.clone(), grads);
        Ok(())
    }

    pub fn model(&self) -> &BottomModel {
        &self.model
    }

    /// Replaces the bottom's parameters with those saved at `path` (`bottom-<domain>.bpk`).
    pub fn load(mut self, path: &Path) -> Result<Self, SplitError> {
        self.model = load_part(self.model, path)?;
        Ok(self)
    }

    /// Writes the bottom model to `dir/bottom-<domain>.bpk`.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, SplitError> {
        save_part(&self.model, dir, &format!("bottom-{}", self.name))
    }

    pub fn features(&self) -> &FeatureMatrix {
        &self.features
    }

    /// Replaces the rows the plans refer to (a recommender's examples change every epoch);
    /// the model and its optimizer carry on.
    pub fn set_features(&mut self, features: FeatureMatrix) -> Result<(), SplitError> {
        if self.pending.is_some() {
            return Err(SplitError::refused(
                self.name.clone(),
                format!(
                    "domain `{}` was given new rows with a training batch in flight",
                    self.name
                ),
            ));
        }
        self.features = features;
        Ok(())
    }

    /// Width of this domain's cut-layer activation.
    pub fn cut_width(&self) -> usize {
        self.model.output_width()
    }
}

/// Loss and gradient the label owner returns for a training batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadStep {
    pub loss: f32,
    pub gradient: CutLayerGradient,
}

/// How the label owner hides its labels in what it returns to governance (configuration 2):
/// every gradient of the tower's output, and so every cut-layer gradient a domain receives,
/// derives from it. See docs/label-privacy.md for what each setting buys, measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelProtection {
    /// Gaussian noise added to every value of the gradient the label owner returns, with a
    /// standard deviation of `gradient_noise` times the batch's root-mean-square gradient
    /// value (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gradient_noise: f64,
    /// Noise shaped to hide the label (after Marvell, Li et al. 2022), binary jobs: Gaussian
    /// noise along the line that separates the batch's classes (the difference of the mean
    /// gradients of positives and negatives), drawn alike for every example, with a standard
    /// deviation of `shaped_noise` times that difference's length (0: none). It spends the
    /// noise where the labels show, and none elsewhere.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shaped_noise: f64,
    /// ε of randomized response: the head trains on labels each kept with probability
    /// e^ε / (e^ε + k − 1) and otherwise replaced by one of the k − 1 other classes, drawn once
    /// per run: ε-label differential privacy for everything the label owner sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub randomized_response: Option<f64>,
    /// Every per-example gradient leaves its party at one length: the label owner's rows to
    /// governance (configuration 2) and governance's to each domain, each scaled to its
    /// batch's root-mean-square row length, after the noise. A gradient's length then tells
    /// nothing (the norm attack), nor does the receiving domain's own Jacobian, and what the
    /// noise leaves of the label is the side each row points to. Needs a protection beside
    /// it (`shaped_noise`, `gradient_noise` or `randomized_response`): alone, that side is
    /// the label.
    #[serde(default, skip_serializing_if = "is_false")]
    pub equal_norms: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

impl LabelProtection {
    /// Each protection in force, as a contract's `flLabelProtection` names it, with its scale
    /// or ε.
    pub fn terms(&self) -> Vec<(String, f64)> {
        let mut terms = Vec::new();
        if self.gradient_noise > 0.0 {
            terms.push(("gradient-noise".to_string(), self.gradient_noise));
        }
        if self.shaped_noise > 0.0 {
            terms.push(("shaped-noise".to_string(), self.shaped_noise));
        }
        if let Some(epsilon) = self.randomized_response {
            terms.push(("randomized-response".to_string(), epsilon));
        }
        if self.equal_norms {
            terms.push(("equal-norms".to_string(), 1.0));
        }
        terms
    }

    /// Labels after randomized response with `epsilon`, over `classes` classes, from `seed`.
    pub fn randomize(labels: &[i64], classes: usize, epsilon: f64, seed: u64) -> Vec<i64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let others = classes.saturating_sub(1).max(1) as f64;
        let keep = epsilon.exp() / (epsilon.exp() + others);
        labels
            .iter()
            .map(|&label| {
                if classes < 2 || rng.random::<f64>() < keep {
                    return label;
                }
                // One of the other classes, uniformly.
                let other = rng.random_range(0..classes as i64 - 1);
                if other >= label { other + 1 } else { other }
            })
            .collect()
    }
}

/// Scales every row of `gradient` (one per example) to the batch's root-mean-square row
/// length, so that no row's length says anything about its example. A row of (nearly) zeros,
/// an example whose gradient vanished (dead units, dropout), would stand out by its length;
/// it gets a direction drawn at random, which trains nothing on average.
pub(crate) fn equalize_norms(gradient: &mut WireTensor, rng: &mut impl rand::Rng) {
    let cols = gradient.cols.max(1);
    let norms: Vec<f64> = gradient
        .data
        .chunks(cols)
        .map(|row| row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .collect();
    let rows = norms.len().max(1) as f64;
    let rms = (norms.iter().map(|n| n * n).sum::<f64>() / rows).sqrt();
    if !(rms > 0.0 && rms.is_finite()) {
        return;
    }
    for (row, norm) in gradient.data.chunks_mut(cols).zip(norms) {
        if norm > 1e-6 * rms {
            let scale = rms / norm;
            row.iter_mut().for_each(|v| *v = (*v as f64 * scale) as f32);
        } else {
            let direction: Vec<f64> = (0..row.len())
                .map(|_| fedmesh_data::datasets::normal(rng))
                .collect();
            let length = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
            let scale = rms / length.max(f64::MIN_POSITIVE);
            for (v, d) in row.iter_mut().zip(direction) {
                *v = (d * scale) as f32;
            }
        }
    }
}

/// Gaussian noise for gradients, drawn from its own stream.
pub(crate) struct GradientNoise {
    /// Isotropic: × the batch's root-mean-square gradient value.
    isotropic: f64,
    /// Along the classes' separating line: × the length of the class-mean difference.
    shaped: f64,
    /// That difference, averaged over the batches that held both classes: a batch of one
    /// class gets noise along it, as loud as any other's, or its quietness would tell.
    separation: Option<Vec<f64>>,
    /// Every row at the batch's RMS length once noised ([`LabelProtection::equal_norms`]).
    equal_norms: bool,
    rng: rand_chacha::ChaCha8Rng,
}

impl GradientNoise {
    /// The noise `protection` asks for of the head of `objective` held by `holder`, drawn
    /// from `seed`; `None` when it asks for none. Shaped noise on a label that is not binary is
    /// refused.
    pub(crate) fn of(
        protection: &LabelProtection,
        objective: &Objective,
        holder: &str,
        seed: u64,
    ) -> Result<Option<Self>, SplitError> {
        use rand::SeedableRng;
        if protection.shaped_noise > 0.0
            && !matches!(objective, Objective::CrossEntropy { classes: 2, .. })
        {
            return Err(SplitError::refused(
                holder.to_string(),
                "shaped noise separates two classes: this job's label is not binary",
            ));
        }
        Ok((protection.gradient_noise > 0.0
            || protection.shaped_noise > 0.0
            || protection.equal_norms)
            .then(|| GradientNoise {
                isotropic: protection.gradient_noise,
                shaped: protection.shaped_noise,
                separation: None,
                equal_norms: protection.equal_norms,
                rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6e6f697365),
            }))
    }

    fn normal(&mut self) -> f64 {
        fedmesh_data::datasets::normal(&mut self.rng)
    }

    /// Adds the noise to a batch's gradient (one row per example), then equalizes the rows'
    /// lengths when asked; `positive` marks the rows of class 1, for the shaped part.
    pub(crate) fn add(&mut self, gradient: &mut WireTensor, positive: &[bool]) {
        self.add_noise(gradient, positive);
        if self.equal_norms {
            equalize_norms(gradient, &mut self.rng);
        }
    }

    fn add_noise(&mut self, gradient: &mut WireTensor, positive: &[bool]) {
        let cols = gradient.cols.max(1);
        if self.isotropic > 0.0 {
            let n = gradient.data.len().max(1) as f64;
            let squares: f64 = gradient.data.iter().map(|&v| (v as f64).powi(2)).sum();
            let std = self.isotropic * (squares / n).sqrt();
            for k in 0..gradient.data.len() {
                gradient.data[k] += (std * self.normal()) as f32;
            }
        }
        if self.shaped <= 0.0 {
            return;
        }
        let count = |class: bool| positive.iter().filter(|&&p| p == class).count();
        let (positives, negatives) = (count(true), count(false));
        if positives > 0 && negatives > 0 && positive.len() == gradient.rows {
            let mut difference = vec![0f64; cols];
            for (row, &is_positive) in gradient.data.chunks(cols).zip(positive) {
                let weight = if is_positive {
                    1.0 / positives as f64
                } else {
                    -1.0 / negatives as f64
                };
                for (d, &v) in difference.iter_mut().zip(row) {
                    *d += weight * v as f64;
                }
            }
            self.separation = Some(match self.separation.take() {
                None => difference.clone(),
                Some(average) => average
                    .iter()
                    .zip(&difference)
                    .map(|(a, d)| 0.9 * a + 0.1 * d)
                    .collect(),
            });
            self.shape(gradient, &difference);
        } else if let Some(separation) = self.separation.clone() {
            self.shape(gradient, &separation);
        }
    }

    /// Adds noise along `separation`, with a standard deviation of `shaped` × its length.
    fn shape(&mut self, gradient: &mut WireTensor, separation: &[f64]) {
        let cols = gradient.cols.max(1);
        let length = separation.iter().map(|d| d * d).sum::<f64>().sqrt();
        if length <= 0.0 || separation.len() != cols {
            return;
        }
        // Along the unit direction, with a standard deviation of `shaped` × the length.
        let std = self.shaped * length;
        for r in 0..gradient.rows {
            let step = std * self.normal() / length;
            for (v, d) in gradient.data[r * cols..(r + 1) * cols]
                .iter_mut()
                .zip(separation)
            {
                *v += (step * d) as f32;
            }
        }
    }
}

/// The label owner's side without label sharing: the labels, the head, and the evaluation.
pub struct LabelOwner {
    pub name: String,
    targets: Targets,
    /// The labels the head trains on, when randomized response replaces some (evaluation keeps
    /// the true ones: its metrics stay with the label owner, and only aggregates leave).
    training_targets: Option<Targets>,
    noise: Option<GradientNoise>,
    objective: Objective,
    head: Head,
    optimizer: ModuleOptimizer,
    device: Device,
    scores: ScoreBook,
    kept: Kept<Head>,
}

impl LabelOwner {
    pub fn new(
        name: impl Into<String>,
        targets: Targets,
        objective: Objective,
        head: Head,
        optimizer: &OptimizerSpec,
        device: Device,
    ) -> Self {
        Self {
            name: name.into(),
            targets,
            training_targets: None,
            noise: None,
            objective,
            head,
            optimizer: optimizer.init(),
            device,
            scores: ScoreBook::default(),
            kept: Kept::default(),
        }
    }

    /// Keeps a copy of the head as it is now, for [`LabelOwner::restore`].
    pub fn checkpoint(&mut self) {
        self.kept.keep(&self.head);
    }

    /// The head back to its last checkpoint; refused without one.
    pub fn restore(&mut self) -> Result<(), SplitError> {
        self.head = self.kept.restored(&self.name)?;
        Ok(())
    }

    /// Protects the labels as `protection` says, its draws from `seed`. Randomized response
    /// needs classes: with values to regress it is refused.
    pub fn with_protection(
        mut self,
        protection: &LabelProtection,
        seed: u64,
    ) -> Result<Self, SplitError> {
        if let Some(epsilon) = protection.randomized_response {
            let (Targets::Classes(labels), Objective::CrossEntropy { classes, .. }) =
                (&self.targets, &self.objective)
            else {
                return Err(SplitError::refused(
                    self.name.clone(),
                    "randomized response protects class labels: this job regresses values",
                ));
            };
            self.training_targets = Some(Targets::Classes(LabelProtection::randomize(
                labels, *classes, epsilon, seed,
            )));
        }
        self.noise = GradientNoise::of(protection, &self.objective, &self.name, seed)?;
        Ok(self)
    }

    /// Loss of the batch, the gradient for governance's tower output, and a head step.
    pub fn train(
        &mut self,
        plan: &BatchPlan,
        tower_output: &CutActivation,
    ) -> Result<HeadStep, SplitError> {
        let targets = self
            .training_targets
            .as_ref()
            .unwrap_or(&self.targets)
            .gather(&plan.rows);
        Ok(head_step(
            &mut self.head,
            &mut self.optimizer,
            &self.objective,
            tower_output.to_tensor(&self.device),
            &targets,
            self.noise.as_mut(),
            plan.learning_rate,
        ))
    }

    /// Scores an evaluation batch and keeps the scores for [`LabelOwner::report`].
    pub fn eval(
        &mut self,
        plan: &BatchPlan,
        tower_output: &CutActivation,
    ) -> Result<(), SplitError> {
        let Pass::Eval(part) = plan.pass else {
            return Err(SplitError::refused(
                self.name.clone(),
                "head eval called with a training plan",
            ));
        };
        let device = self.device.clone().inner();
        let head = self.head.valid();
        let outputs = head.forward(tower_output.to_tensor(&device));
        record_eval(
            &mut self.scores,
            &self.objective,
            &head,
            &self.targets,
            part,
            &plan.rows,
            outputs,
        );
        Ok(())
    }

    /// Metrics of the evaluation batches since the last report.
    pub fn report(&mut self) -> EvaluationReport {
        self.scores.report(&self.objective, &self.targets)
    }

    /// Labels of all aligned rows, for configuration 1 (labels shared with governance).
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// Replaces the labels the plans refer to (a recommender's examples change every epoch).
    pub fn set_targets(&mut self, targets: Targets) {
        self.targets = targets;
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Writes the head to `dir/head-<domain>.bpk`.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, SplitError> {
        save_part(&self.head, dir, &format!("head-{}", self.name))
    }

    /// The head as [`LabelOwner::save`] wrote it in `dir`.
    pub fn load(mut self, dir: &Path) -> Result<Self, SplitError> {
        self.head = load_part(self.head, &dir.join(format!("head-{}.bpk", self.name)))?;
        Ok(self)
    }
}

/// A head's training step on the tower output `z`: the batch loss against `targets`, and the
/// loss's gradient at `z`, with `noise` added when the labels are protected; the head steps.
/// Whoever holds the head takes it so: the label owner in configuration 2, governance in
/// configuration 1 when it protects the labels from the domains.
pub(crate) fn head_step(
    head: &mut Head,
    optimizer: &mut ModuleOptimizer,
    objective: &Objective,
    z: Tensor<2>,
    targets: &Targets,
    noise: Option<&mut GradientNoise>,
    learning_rate: f64,
) -> HeadStep {
    let z = z.require_grad();
    let loss = head.loss(objective, head.forward(z.clone()), targets);
    let loss_value = scalar(&loss);
    let mut grads = loss.backward();
    let mut gradient = WireTensor::from_tensor(
        &z.grad_remove(&mut grads)
            .expect("the tower output takes part in the loss"),
    );
    if let Some(noise) = noise {
        let positive: Vec<bool> = match targets {
            Targets::Classes(classes) => classes.iter().map(|&c| c == 1).collect(),
            Targets::Values(_) => Vec::new(),
        };
        noise.add(&mut gradient, &positive);
    }
    let grads = GradientsParams::from_grads(grads, &*head);
    *head = optimizer.step(learning_rate, head.clone(), grads);
    HeadStep {
        loss: loss_value,
        gradient,
    }
}

/// A part as it was at its last checkpoint (the best epoch so far), to return to at the end of
/// training. The optimizer's state is not kept: training does not go on after a restore.
pub(crate) struct Kept<M>(Option<M>);

impl<M> Default for Kept<M> {
    fn default() -> Self {
        Self(None)
    }
}

impl<M: Module> Kept<M> {
    /// Keeps a deep copy: a clone would share BatchNorm's running statistics with the part that
    /// trains on.
    pub(crate) fn keep(&mut self, part: &M) {
        self.0 = Some(deep_copy(part));
    }

    /// A copy of the kept part; refused (as `holder`) when nothing was kept.
    pub(crate) fn restored(&self, holder: &str) -> Result<M, SplitError> {
        self.0.as_ref().map(deep_copy).ok_or_else(|| {
            SplitError::refused(
                holder.to_string(),
                format!("`{holder}` was asked to restore its parts, but it kept no checkpoint"),
            )
        })
    }
}

/// Writes a module's parameters (burnpack) to `dir/<name>.bpk`.
pub fn save_part<M: Module>(module: &M, dir: &Path, name: &str) -> Result<PathBuf, SplitError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.bpk"));
    module
        .clone()
        .into_record()
        .save(&path)
        .map_err(|e| SplitError::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(path)
}

/// Reads a part written by [`save_part`] into `module` (which must have the part's shape).
pub fn load_part<M: Module>(module: M, path: &Path) -> Result<M, SplitError> {
    let failed = |message: String| SplitError::Record {
        path: path.to_path_buf(),
        message,
    };
    let record = burn::store::ModuleRecord::load(path).map_err(|e| failed(e.to_string()))?;
    module
        .try_load_record(record)
        .map_err(|e| failed(e.to_string()))
}

/// Records an evaluation batch's scores and summed loss.
pub(crate) fn record_eval(
    book: &mut ScoreBook,
    objective: &Objective,
    head: &Head,
    targets: &Targets,
    part: crate::wire::Part,
    rows: &[u32],
    outputs: Tensor<2>,
) {
    let batch_targets = targets.gather(rows);
    let loss =
        scalar(&head.loss(objective, outputs.clone(), &batch_targets)) as f64 * rows.len() as f64;
    book.record(part, rows, objective.scores(outputs), loss);
}

/// The value of a one-element tensor.
pub(crate) fn scalar(t: &Tensor<1>) -> f32 {
    t.to_data().try_into_vec::<f32>().expect("f32 loss")[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn equal_norms_give_every_row_the_batch_rms_length_and_keep_its_direction() {
        let rows = [[3.0f32, 4.0], [0.0, 1.0], [0.0, 0.0], [-6.0, 8.0]];
        let mut gradient = WireTensor {
            rows: 4,
            cols: 2,
            data: rows.iter().flatten().copied().collect(),
        };
        equalize_norms(
            &mut gradient,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
        );
        // Lengths 5, 1, 0, 10: RMS √(126 / 4).
        let rms = (126f64 / 4.0).sqrt();
        for (r, row) in rows.iter().enumerate() {
            let new = &gradient.data[r * 2..r * 2 + 2];
            let length = new.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (length - rms).abs() < 1e-5,
                "row {r}: {length} against {rms}"
            );
            let old = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            if old == 0.0 {
                // A vanished gradient gets a direction of its own.
                assert_ne!(new, row);
                continue;
            }
            // The same direction: a positive multiple of the row.
            let scale = rms / old;
            for (n, o) in new.iter().zip(row) {
                assert!((*n as f64 - scale * *o as f64).abs() < 1e-5, "row {r}");
            }
        }
    }

    #[test]
    fn shaped_noise_moves_each_gradient_only_along_the_line_between_the_classes() {
        // Four examples of width 3: positives around (1, 2, 0), negatives around (-1, 0, 0).
        let rows = [
            [1.0, 2.0, 0.5],
            [1.2, 2.1, -0.5],
            [-1.0, 0.1, 0.3],
            [-0.8, -0.1, -0.3],
        ];
        let positive = [true, true, false, false];
        let mut gradient = WireTensor {
            rows: 4,
            cols: 3,
            data: rows.iter().flatten().copied().collect(),
        };
        let mut noise = GradientNoise {
            isotropic: 0.0,
            shaped: 3.0,
            separation: None,
            equal_norms: false,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(1),
        };
        noise.add(&mut gradient, &positive);
        // The class-mean difference: (2.0, 2.05, 0).
        let d = [2.0f64, 2.05, 0.0];
        let length = d.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut moved = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            let change: Vec<f64> = (0..3)
                .map(|c| gradient.data[r * 3 + c] as f64 - row[c] as f64)
                .collect();
            let along = change.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>() / length;
            let across: f64 = change
                .iter()
                .zip(&d)
                .map(|(a, b)| (a - along * b / length).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(across < 1e-5, "row {r} moved across the line by {across}");
            moved.push(along.abs());
        }
        // Each example draws its own amount, of the order of 3 × the length.
        assert!(moved.iter().any(|&m| m > 0.3 * length), "{moved:?}");
        assert!(moved.windows(2).all(|w| w[0] != w[1]), "{moved:?}");
        // A batch of one class is noised along the line seen before, not left quiet.
        let before = gradient.data.clone();
        noise.add(&mut gradient, &[false; 4]);
        assert_ne!(gradient.data, before);
    }
}
