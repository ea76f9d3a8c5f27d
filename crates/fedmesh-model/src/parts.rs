//! The parts of a split network: domain bottoms, governance's tower, and the head.
//!
//! ```text
//!   domain d:     x_d ──embed/concat──▶ bottom_d ──▶ h_d          (cut layer)
//!   governance:   [h_1 ‖ … ‖ h_k] ──▶ tower ──▶ z
//!   head:         z ──▶ hidden ──▶ linear ──▶ logits ──▶ loss      (governance or label owner)
//! ```

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::mlp::{Mlp, MlpConfig};

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
}

impl BottomConfig {
    pub fn input_width(&self) -> usize {
        self.numeric + self.embeddings.iter().map(|e| e.1).sum::<usize>()
    }

    /// Width of the cut-layer activation.
    pub fn output(&self) -> usize {
        self.mlp().output()
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
                .map(|&(n, d)| EmbeddingConfig::new(n, d).init(device))
                .collect(),
            mlp: self.mlp().init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct BottomModel {
    pub embeddings: Vec<Embedding>,
    pub mlp: Mlp,
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
        last.linear.weight.dims()[1]
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
                for (c, embedding) in self.embeddings.iter().enumerate() {
                    let column = indices.clone().narrow(1, c, 1);
                    let [_, width] = embedding.weight.dims();
                    inputs.push(embedding.forward(column).reshape([batch, width]));
                }
                Tensor::cat(inputs, 1)
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
}

impl HeadConfig {
    pub fn init(&self, device: &Device) -> Head {
        let hidden = MlpConfig::new(self.input, self.layers.clone());
        Head {
            output: LinearConfig::new(hidden.output(), self.outputs).init(device),
            hidden: hidden.init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct Head {
    pub hidden: Mlp,
    pub output: Linear,
}

impl Head {
    pub fn forward(&self, z: Tensor<2>) -> Tensor<2> {
        self.output.forward(self.hidden.forward(z))
    }
}
