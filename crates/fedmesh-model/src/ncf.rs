//! Neural collaborative filtering (He et al. 2017): NeuMF, the centralized recommender the
//! retail mesh's split model is measured against.
//!
//! ```text
//!   GMF:  p_u ⊙ q_i                                  (user and item embeddings, `factors` wide)
//!   MLP:  [p'_u ‖ q'_i] ──▶ ReLU layers ──▶ h
//!   out:  σ(w · [GMF ‖ h])                           (the probability that u interacts with i)
//! ```
//!
//! GMF and MLP keep separate embeddings, as in the paper; the loss is binary cross-entropy on
//! logits (implicit feedback: interactions are 1, sampled negatives 0).

use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softplus;
use serde::{Deserialize, Serialize};

use crate::mlp::{Mlp, MlpConfig};

/// NeuMF's shape. The MLP's first layer reads both MLP embeddings, each half its width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeuMfConfig {
    pub users: usize,
    pub items: usize,
    /// Width of the GMF embeddings (the paper's "predictive factors").
    pub factors: usize,
    /// Widths of the MLP tower, e.g. `[64, 32, 16, 8]`.
    pub layers: Vec<usize>,
}

impl NeuMfConfig {
    pub fn init(&self, device: &Device) -> NeuMf {
        let half = (self.layers.first().copied().unwrap_or(2 * self.factors) / 2).max(1);
        let mlp = MlpConfig::new(2 * half, self.layers.iter().skip(1).copied().collect());
        let mlp_output = mlp.output();
        // Embeddings start near zero, N(0, 0.01²), as in the paper: unit-variance ones make
        // every early score noise.
        let embedding = |n: usize, d: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.01,
                })
                .init(device)
        };
        NeuMf {
            gmf_user: embedding(self.users, self.factors),
            gmf_item: embedding(self.items, self.factors),
            mlp_user: embedding(self.users, half),
            mlp_item: embedding(self.items, half),
            mlp: mlp.init(device),
            output: LinearConfig::new(self.factors + mlp_output, 1).init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct NeuMf {
    pub gmf_user: Embedding,
    pub gmf_item: Embedding,
    pub mlp_user: Embedding,
    pub mlp_item: Embedding,
    pub mlp: Mlp,
    pub output: Linear,
}

/// One embedding lookup per row: `ids` `[batch]` → `[batch, width]`.
pub fn lookup(embedding: &Embedding, ids: Tensor<1, Int>) -> Tensor<2> {
    let [batch] = ids.dims();
    let [_, width] = embedding.weight.dims();
    embedding
        .forward(ids.reshape([batch, 1]))
        .reshape([batch, width])
}

impl NeuMf {
    /// Logits `[batch, 1]` of (user, item) pairs.
    pub fn forward(&self, users: Tensor<1, Int>, items: Tensor<1, Int>) -> Tensor<2> {
        let gmf = lookup(&self.gmf_user, users.clone()) * lookup(&self.gmf_item, items.clone());
        let mlp = self.mlp.forward(Tensor::cat(
            vec![lookup(&self.mlp_user, users), lookup(&self.mlp_item, items)],
            1,
        ));
        self.output.forward(Tensor::cat(vec![gmf, mlp], 1))
    }
}

/// Binary cross-entropy on logits `[batch, 1]` against 0/1 `labels` `[batch]`, averaged:
/// `softplus(x) − y·x`, which never takes the log of a rounded-off probability.
pub fn binary_cross_entropy(logits: Tensor<2>, labels: Tensor<1>) -> Tensor<1> {
    let [batch, _] = logits.dims();
    let x = logits.reshape([batch]);
    (softplus(x.clone(), 1.0) - x * labels).mean()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_cross_entropy_matches_its_definition() {
        let device = Device::flex();
        let logits =
            Tensor::<2>::from_data(TensorData::new(vec![2.0f32, -1.0, 0.0], [3, 1]), &device);
        let labels = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0], [3]), &device);
        let loss: f32 = binary_cross_entropy(logits, labels).into_scalar();
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected =
            -((sigmoid(2.0)).ln() + (1.0 - sigmoid(-1.0)).ln() + (sigmoid(0.0)).ln()) / 3.0;
        assert!(
            (loss as f64 - expected).abs() < 1e-5,
            "{loss} vs {expected}"
        );
    }

    #[test]
    fn neumf_scores_a_batch_of_pairs() {
        let device = Device::flex();
        // Built under the generator's lock: drawn outside it, its weights would land in the
        // middle of another test's seeded part (burn's generator is one per process).
        let config = NeuMfConfig {
            users: 5,
            items: 7,
            factors: 4,
            layers: vec![8, 4],
        };
        let model = crate::seeded(&device, 1, || config.init(&device));
        let users = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 4, 2], [3]), &device);
        let items = Tensor::<1, Int>::from_data(TensorData::new(vec![6i64, 0, 3], [3]), &device);
        assert_eq!(model.forward(users, items).dims(), [3, 1]);
    }
}
