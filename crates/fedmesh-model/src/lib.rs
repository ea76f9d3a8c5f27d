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

pub mod average;
pub mod linear;
pub mod metrics;
pub mod mlp;
pub mod ncf;
pub mod objective;
pub mod parts;

pub use burn;
pub use metrics::{BinaryMetrics, MultiClassMetrics, RegressionMetrics};
pub use mlp::{Mlp, MlpConfig};
pub use objective::{Objective, TargetScale, Targets};
pub use parts::{BottomConfig, BottomModel, Head, HeadConfig, Tower, TowerConfig};

use burn::tensor::Device;

/// The device models train on: burn's pure-Rust `flex` CPU backend with autodiff.
pub fn training_device() -> Device {
    Device::flex().autodiff()
}

/// A copy of a module that shares no state with the original.
///
/// `Clone` shares BatchNorm's running statistics (burn keeps them behind an `Arc`), so two
/// parties built from clones of one module would quietly update one set of statistics between
/// them. Round-tripping through inference mode gives each copy its own.
pub fn deep_copy<M: burn::module::Module>(module: &M) -> M {
    module.valid().train()
}

/// Initializes a part with burn's random generator seeded to `seed`.
///
/// burn's generator is global to the process, so seeding and drawing are done under one lock:
/// a part's initial weights then depend on its seed alone, not on what other threads initialize
/// at the same time (tests run in parallel; a node may host several jobs). burn draws a
/// parameter's values lazily, on its first use, so the part is materialized here, under the
/// lock — otherwise the weights would depend on which party first used its part.
pub fn seeded<M: burn::module::Module>(device: &Device, seed: u64, init: impl FnOnce() -> M) -> M {
    let _guard = generator_lock();
    device.seed(seed);
    deep_copy(&init())
}

/// Reseeds burn's generator (the one dropout draws from), under the lock [`seeded`] holds, so
/// that it never lands in the middle of another part's initialization.
///
/// Draws made while training are not under the lock: a process that trains with dropout while
/// it initializes another run's parts can still disturb those parts' weights (burn has one
/// generator per process).
pub fn reseed(device: &Device, seed: u64) {
    let _guard = generator_lock();
    device.seed(seed);
}

fn generator_lock() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(tower: &Tower) -> Vec<f32> {
        tower.mlp.blocks[0]
            .linear
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn seeded_weights_do_not_depend_on_when_the_part_is_first_used() {
        let device = training_device();
        let config = TowerConfig {
            input: 6,
            layers: vec![4],
            batch_norm: false,
            dropout: 0.0,
        };
        let first = seeded(&device, 7, || config.init(&device));
        // Other draws between building the part and using it.
        device.seed(99);
        let _other = seeded(&device, 8, || config.init(&device));
        let again = seeded(&device, 7, || config.init(&device));
        assert_eq!(weights(&first), weights(&again));
        let different = seeded(&device, 9, || config.init(&device));
        assert_ne!(weights(&first), weights(&different));
    }
}
