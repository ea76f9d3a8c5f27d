//! What a model is trained to do: the loss on the head's outputs, and the scores it reports.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use serde::{Deserialize, Serialize};

/// The training objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Objective {
    /// Softmax cross-entropy over `classes` logits (binary tasks use two), optionally weighted
    /// per class against imbalance, as PyTorch's `CrossEntropyLoss(weight=…)`: the weighted
    /// mean −Σ w_{y_i} log p_i(y_i) / Σ w_{y_i}.
    CrossEntropy {
        classes: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        class_weights: Option<Vec<f32>>,
    },
    /// Mean squared error on one output.
    Mse,
}

/// Labels of a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Targets {
    Classes(Vec<i64>),
    Values(Vec<f32>),
}

impl Targets {
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The labels of rows `indices`, in that order.
    pub fn gather(&self, indices: &[u32]) -> Targets {
        match self {
            Targets::Classes(c) => {
                Targets::Classes(indices.iter().map(|&i| c[i as usize]).collect())
            }
            Targets::Values(v) => Targets::Values(indices.iter().map(|&i| v[i as usize]).collect()),
        }
    }

    /// Class labels for stratification (one stratum for regression).
    pub fn strata(&self) -> Vec<i64> {
        match self {
            Targets::Classes(c) => c.clone(),
            Targets::Values(v) => vec![0; v.len()],
        }
    }
}

impl Objective {
    /// Outputs the head must produce.
    pub fn outputs(&self) -> usize {
        match self {
            Objective::CrossEntropy { classes, .. } => *classes,
            Objective::Mse => 1,
        }
    }

    /// The scalar loss of `outputs` (`[batch, outputs]`) against `targets` of the same rows.
    pub fn loss(&self, outputs: Tensor<2>, targets: &Targets) -> Tensor<1> {
        let device = outputs.device();
        let [batch, _] = outputs.dims();
        match (self, targets) {
            (Objective::CrossEntropy { class_weights, .. }, Targets::Classes(classes)) => {
                let index = Tensor::<2, Int>::from_data(
                    TensorData::new(classes.clone(), [batch, 1]),
                    &device,
                );
                let log_p = log_softmax(outputs, 1).gather(1, index).reshape([batch]);
                let weights: Vec<f32> = match class_weights {
                    Some(w) => classes.iter().map(|&c| w[c as usize]).collect(),
                    None => vec![1.0; batch],
                };
                let total: f32 = weights.iter().sum();
                let weights = Tensor::<1>::from_data(TensorData::new(weights, [batch]), &device);
                (log_p * weights).sum().div_scalar(-total)
            }
            (Objective::Mse, Targets::Values(values)) => {
                let y =
                    Tensor::<2>::from_data(TensorData::new(values.clone(), [batch, 1]), &device);
                (outputs - y).square().mean()
            }
            (objective, _) => panic!("targets do not match objective {objective:?}"),
        }
    }

    /// Scores for metrics, row-major: class probabilities (`[batch, classes]`) or predicted
    /// values (`[batch, 1]`).
    pub fn scores(&self, outputs: Tensor<2>) -> Vec<f32> {
        let scores = match self {
            Objective::CrossEntropy { .. } => softmax(outputs, 1),
            Objective::Mse => outputs,
        };
        scores
            .into_data()
            .try_into_vec::<f32>()
            .expect("scores are f32")
    }
}

/// A regression target's mean and standard deviation over the training rows.
///
/// A head trained on raw values starts near 0 while a target may sit at 170,000 with a spread
/// of 130,000: its bias alone would need thousands of optimizer steps to get there, and the
/// model scores below a constant. The head learns the standardized target instead and maps its
/// output back ([`crate::Head::forward`]), so that reports and predictions are in the target's
/// own units and learning behaves the same whatever those units are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TargetScale {
    pub mean: f32,
    pub std: f32,
}

impl TargetScale {
    /// The scale of a head before it is fitted or loaded: outputs unchanged.
    pub const IDENTITY: TargetScale = TargetScale {
        mean: 0.0,
        std: 1.0,
    };

    /// The mean and (population) standard deviation of targets from their count, sum and sum
    /// of squares, as the domains of a horizontal job add them up; a constant target keeps a
    /// spread of 1, as in [`TargetScale::fit`].
    pub fn from_sums(count: f64, sum: f64, sum_of_squares: f64) -> TargetScale {
        let n = count.max(1.0);
        let mean = sum / n;
        let std = (sum_of_squares / n - mean * mean).max(0.0).sqrt();
        let std = if std.is_finite() && std > 1e-12 * mean.abs().max(1.0) {
            std
        } else {
            1.0
        };
        TargetScale {
            mean: mean as f32,
            std: std as f32,
        }
    }

    /// The mean and standard deviation of `targets` over `rows` (the training rows), for
    /// regression targets; `None` for classes. A constant target keeps a spread of 1.
    pub fn fit(targets: &Targets, rows: &[u32]) -> Option<TargetScale> {
        let Targets::Values(values) = targets else {
            return None;
        };
        let n = rows.len().max(1) as f64;
        let mean = rows.iter().map(|&r| values[r as usize] as f64).sum::<f64>() / n;
        let var = rows
            .iter()
            .map(|&r| (values[r as usize] as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt();
        let std = if std.is_finite() && std > 1e-12 * mean.abs().max(1.0) {
            std
        } else {
            1.0
        };
        Some(TargetScale {
            mean: mean as f32,
            std: std as f32,
        })
    }
}
