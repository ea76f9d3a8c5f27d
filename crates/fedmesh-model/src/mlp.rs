//! A multilayer perceptron: Linear → BatchNorm? → ReLU → Dropout?, layer after layer.

use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

/// Shape of an [`Mlp`]: every layer is Linear, then BatchNorm if asked, then ReLU, then Dropout
/// if asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    pub input: usize,
    pub layers: Vec<usize>,
    #[serde(default)]
    pub batch_norm: bool,
    #[serde(default)]
    pub dropout: f64,
}

impl MlpConfig {
    pub fn new(input: usize, layers: Vec<usize>) -> Self {
        Self {
            input,
            layers,
            batch_norm: false,
            dropout: 0.0,
        }
    }

    pub fn with_batch_norm(mut self, on: bool) -> Self {
        self.batch_norm = on;
        self
    }

    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    /// Width of the output: the last layer's, or the input's when there are no layers.
    pub fn output(&self) -> usize {
        self.layers.last().copied().unwrap_or(self.input)
    }

    pub fn init(&self, device: &Device) -> Mlp {
        let mut width = self.input;
        let blocks = self
            .layers
            .iter()
            .map(|&out| {
                let block = MlpBlock {
                    linear: LinearConfig::new(width, out).init(device),
                    norm: self
                        .batch_norm
                        .then(|| BatchNormConfig::new(out).init(device)),
                    dropout: (self.dropout > 0.0).then(|| DropoutConfig::new(self.dropout).init()),
                };
                width = out;
                block
            })
            .collect();
        Mlp { blocks }
    }
}

/// One layer of an [`Mlp`].
#[derive(Module, Debug)]
pub struct MlpBlock {
    pub linear: Linear,
    pub norm: Option<BatchNorm>,
    pub dropout: Option<Dropout>,
}

/// A stack of [`MlpBlock`]s; with no blocks it is the identity.
#[derive(Module, Debug)]
pub struct Mlp {
    pub blocks: Vec<MlpBlock>,
}

impl Mlp {
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for block in &self.blocks {
            x = block.linear.forward(x);
            if let Some(norm) = &block.norm {
                x = norm.forward(x);
            }
            x = relu(x);
            if let Some(dropout) = &block.dropout {
                x = dropout.forward(x);
            }
        }
        x
    }
}
