//! The parts of a split network: domain bottoms, governance's tower, and the head.
//!
//! ```text
//!   domain d:     x_d ──embed/concat──▶ bottom_d ──▶ h_d          (cut layer)
//!   governance:   [h_1 ‖ … ‖ h_k] ──▶ tower ──▶ z
//!   head:         z ──▶ hidden ──▶ linear ──▶ logits ──▶ loss      (governance or label owner)
//! ```

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::mlp::{Mlp, MlpConfig};
use crate::objective::{Objective, TargetScale, Targets};

/// A domain's bottom network: embeddings for its categorical columns, concatenated with its
/// numeric columns, then an MLP whose output is the domain's cut-layer activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BottomConfig {
    /// Width of the numeric input block.
    pub numeric: usize,
    /// (table size, width) per categorical column.
    pub embeddings: Vec<(usize, usize)>,
    pub layers: Vec<usize>,
    #[serde(default)]
    pub batch_norm: bool,
    #[serde(default)]
    pub dropout: f64,
    /// Recommenders: the element-wise product of the first two embeddings (user ⊙ item, the
    /// GMF of neural collaborative filtering) joins the MLP's output in the activation.
    #[serde(default)]
    pub interaction: bool,
    /// The embeddings' initial standard deviation (burn's default N(0, 1) when unset;
    /// recommenders start near zero, N(0, 0.01²)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_std: Option<f64>,
}

impl BottomConfig {
    pub fn input_width(&self) -> usize {
        self.numeric + self.embeddings.iter().map(|e| e.1).sum::<usize>()
    }

    /// Width of the cut-layer activation.
    pub fn output(&self) -> usize {
        self.mlp().output() + self.interaction_width()
    }

    fn interaction_width(&self) -> usize {
        if self.interaction {
            self.embeddings.first().map_or(0, |e| e.1)
        } else {
            0
        }
    }

    fn mlp(&self) -> MlpConfig {
        MlpConfig::new(self.input_width(), self.layers.clone())
            .with_batch_norm(self.batch_norm)
            .with_dropout(self.dropout)
    }

    pub fn init(&self, device: &Device) -> BottomModel {
        BottomModel {
            embeddings: self
                .embeddings
                .iter()
                .map(|&(n, d)| {
                    let config = EmbeddingConfig::new(n, d);
                    match self.embedding_std {
                        Some(std) => {
                            config.with_initializer(Initializer::Normal { mean: 0.0, std })
                        }
                        None => config,
                    }
                    .init(device)
                })
                .collect(),
            mlp: self.mlp().init(device),
            interaction: self.interaction,
        }
    }
}

#[derive(Module, Debug)]
pub struct BottomModel {
    pub embeddings: Vec<Embedding>,
    pub mlp: Mlp,
    pub interaction: bool,
}

impl BottomModel {
    /// Width of the cut-layer activation (the last layer's outputs).
    pub fn output_width(&self) -> usize {
        let last = self
            .mlp
            .blocks
            .last()
            .expect("a bottom model has at least one layer");
        // burn stores a linear layer's weight as [inputs, outputs].
        let interaction = match self.embeddings.first() {
            Some(e) if self.interaction => e.weight.dims()[1],
            _ => 0,
        };
        last.linear.weight.dims()[1] + interaction
    }

    /// `numeric`: `[batch, numeric]`; `categorical`: `[batch, embeddings]` indices (ignored when
    /// the model has no embeddings).
    pub fn forward(&self, numeric: Tensor<2>, categorical: Option<Tensor<2, Int>>) -> Tensor<2> {
        let x = match categorical {
            Some(indices) if !self.embeddings.is_empty() => {
                let [batch, _] = indices.dims();
                let mut inputs = Vec::with_capacity(self.embeddings.len() + 1);
                if numeric.dims()[1] > 0 {
                    inputs.push(numeric);
                }
                let mut embedded = Vec::with_capacity(self.embeddings.len());
                for (c, embedding) in self.embeddings.iter().enumerate() {
                    let column = indices.clone().narrow(1, c, 1);
                    let [_, width] = embedding.weight.dims();
                    embedded.push(embedding.forward(column).reshape([batch, width]));
                }
                inputs.extend(embedded.iter().cloned());
                let h = self.mlp.forward(Tensor::cat(inputs, 1));
                return match &embedded[..] {
                    [user, item, ..] if self.interaction => {
                        Tensor::cat(vec![user.clone() * item.clone(), h], 1)
                    }
                    _ => h,
                };
            }
            _ => numeric,
        };
        self.mlp.forward(x)
    }
}

/// Governance's part: an MLP over the concatenated cut-layer activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TowerConfig {
    pub input: usize,
    pub layers: Vec<usize>,
    #[serde(default)]
    pub batch_norm: bool,
    #[serde(default)]
    pub dropout: f64,
}

impl TowerConfig {
    pub fn output(&self) -> usize {
        self.layers.last().copied().unwrap_or(self.input)
    }

    pub fn init(&self, device: &Device) -> Tower {
        Tower {
            mlp: MlpConfig::new(self.input, self.layers.clone())
                .with_batch_norm(self.batch_norm)
                .with_dropout(self.dropout)
                .init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct Tower {
    pub mlp: Mlp,
}

impl Tower {
    /// `cut`: one activation per domain, in domain order.
    pub fn forward(&self, cut: Vec<Tensor<2>>) -> Tensor<2> {
        let x = if cut.len() == 1 {
            cut.into_iter().next().expect("one activation")
        } else {
            Tensor::cat(cut, 1)
        };
        self.mlp.forward(x)
    }
}

/// The last layers: optional hidden MLP, then a linear map to the outputs (logits or values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub input: usize,
    #[serde(default)]
    pub layers: Vec<usize>,
    pub outputs: usize,
    /// Regression: the target's scale; the linear map gives the standardized target and the
    /// head's output is mapped back to the target's units. A head that will be loaded from a
    /// record takes [`TargetScale::IDENTITY`] here, and the record's scale replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_scale: Option<TargetScale>,
}

impl HeadConfig {
    pub fn init(&self, device: &Device) -> Head {
        let hidden = MlpConfig::new(self.input, self.layers.clone());
        Head {
            output: LinearConfig::new(hidden.output(), self.outputs).init(device),
            hidden: hidden.init(device),
            target_scale: self.target_scale.map(|s| scale_param(s, device)),
        }
    }
}

fn scale_param(scale: TargetScale, device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(vec![scale.mean, scale.std], [1, 2]),
        device,
    ))
}

#[derive(Module, Debug)]
pub struct Head {
    pub hidden: Mlp,
    pub output: Linear,
    /// `[[mean, std]]` of a regression target: saved with the head so that a loaded head maps
    /// its outputs back as the trained one did. Never trained: it is read detached, so no
    /// gradient reaches it.
    pub target_scale: Option<Param<Tensor<2>>>,
}

impl Head {
    /// The head's outputs: logits, or values in the target's units.
    pub fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        let out = self.output.forward(self.hidden.forward(z));
        match &self.target_scale {
            Some(scale) => {
                let scale = scale.val().detach();
                let mean = scale.clone().slice([0..1, 0..1]);
                let std = scale.slice([0..1, 1..2]);
                out * std + mean
            }
            None => out,
        }
    }

    /// The objective's loss of `outputs` (this head's) against `targets`; for a regression
    /// target, on the standardized scale (the squared error divided by the target's variance).
    pub fn loss(&self, objective: &Objective, outputs: Tensor<2>, targets: &Targets) -> Tensor<1> {
        let loss = objective.loss(outputs, targets);
        match &self.target_scale {
            Some(scale) => {
                let std = scale.val().detach().slice([0..1, 1..2]).reshape([1]);
                loss / std.square()
            }
            None => loss,
        }
    }

    /// The same head with its target's scale fitted to `targets` over the training rows `train`
    /// (regression; a head over classes is returned as it is).
    pub fn fitted_to(mut self, targets: &Targets, train: &[u32]) -> Self {
        if let Some(scale) = TargetScale::fit(targets, train) {
            let device = self.output.weight.device();
            self.target_scale = Some(scale_param(scale, &device));
        }
        self
    }

    /// The target's scale this head maps its outputs to (regression).
    pub fn target_scale(&self) -> Option<TargetScale> {
        let values = self
            .target_scale
            .as_ref()?
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .ok()?;
        Some(TargetScale {
            mean: values[0],
            std: values[1],
        })
    }

    /// Width of the tower output the head takes.
    pub fn input_width(&self) -> usize {
        // burn stores a linear layer's weight as [inputs, outputs].
        let first = match self.hidden.blocks.first() {
            Some(block) => &block.linear,
            None => &self.output,
        };
        first.weight.dims()[0]
    }
}
