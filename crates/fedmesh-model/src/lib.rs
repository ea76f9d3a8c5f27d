//! fedmesh models: the parts of a split network, the objectives they train on, and the metrics
//! they are judged by.
//!
//! A split network is an ordinary network cut in pieces that live with different parties: each
//! domain's [`BottomModel`] reads its own columns, governance's [`Tower`] reads the concatenated
//! cut-layer activations, and the [`Head`] maps the tower's output to predictions — at governance
//! when labels are shared, at the label owner when they are not. Placing the same parts in one
//! process gives the joint network that the split computation must equal.
//!
//! Model code is written against burn 0.22 (`Tensor<D>`, backend chosen by the device).

pub mod metrics;
pub mod mlp;
pub mod objective;
pub mod parts;

pub use burn;
pub use metrics::{BinaryMetrics, MultiClassMetrics, RegressionMetrics};
pub use mlp::{Mlp, MlpConfig};
pub use objective::{Objective, Targets};
pub use parts::{BottomConfig, BottomModel, Head, HeadConfig, Tower, TowerConfig};

use burn::tensor::Device;

/// The device models train on: burn's pure-Rust `flex` CPU backend with autodiff.
pub fn training_device() -> Device {
    Device::flex().autodiff()
}

/// Seeds burn's parameter initialisation (and dropout masks) for reproducible runs.
pub fn seed(device: &Device, seed: u64) {
    device.seed(seed);
}
