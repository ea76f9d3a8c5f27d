//! What crosses the cut layer: batch plans, activations and gradients.
//!
//! Tensors travel as row-major f32 with their shape; nothing else about a party's model or data
//! does. The network transport encodes these as protobuf bytes of little-endian f32.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// A 2-D tensor on the wire: `rows × cols` f32, row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// A domain's bottom-model output for a batch (domain → governance), or governance's tower
/// output (governance → label owner).
pub type CutActivation = WireTensor;

/// d loss / d activation for a batch (the reverse direction).
pub type CutLayerGradient = WireTensor;

impl WireTensor {
    /// Copies a tensor's values off its device.
    pub fn from_tensor(tensor: &Tensor<2>) -> Self {
        let [rows, cols] = tensor.dims();
        let data = tensor
            .to_data()
            .try_into_vec::<f32>()
            .expect("cut-layer tensors are f32");
        Self { rows, cols, data }
    }

    /// A tensor on `device` holding these values.
    pub fn to_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), [self.rows, self.cols]),
            device,
        )
    }

    /// Payload size in bytes as f32.
    pub fn bytes(&self) -> u64 {
        4 * self.data.len() as u64
    }
}

/// Which rows a party needs for the current batch, and what for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchPlan {
    pub pass: Pass,
    /// Positions in the aligned row order shared by all parties.
    pub rows: Vec<u32>,
    /// The step's learning rate under the job's schedule (training plans only).
    #[serde(default)]
    pub learning_rate: f64,
}

impl BatchPlan {
    pub fn train(rows: Vec<u32>, learning_rate: f64) -> Self {
        Self {
            pass: Pass::Train,
            rows,
            learning_rate,
        }
    }

    pub fn eval(part: Part, rows: Vec<u32>) -> Self {
        Self {
            pass: Pass::Eval(part),
            rows,
            learning_rate: 0.0,
        }
    }
}

/// Training (gradients will follow) or evaluation (inference mode, no gradients) of one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pass {
    Train,
    Eval(Part),
}

/// A part of the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Part {
    Valid,
    Test,
}
