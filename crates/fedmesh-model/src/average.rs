//! Federated averaging's aggregation step: the weighted mean of models of one shape.
//!
//! Every float tensor a module holds is averaged: trainable parameters and buffers alike
//! (BatchNorm's running statistics, a regression head's target scale), as averaging PyTorch
//! state dicts does. Whoever calls it decides the weights (rows trained on, for FedAvg).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// Every float tensor of a module, flattened, in visiting order.
struct Collect(Vec<Vec<f32>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(
            param
                .val()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("float tensors convert to f32"),
        );
    }
}

/// Replaces every float tensor, in visiting order, by the next values.
struct Replace(std::vec::IntoIter<Vec<f32>>);

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let values = self.0.next().expect("one value list per tensor");
        param.map(|tensor| {
            let (shape, device) = (tensor.shape(), tensor.device());
            let averaged = Tensor::from_data(TensorData::new(values, shape), &device);
            if tensor.is_require_grad() {
                averaged.require_grad()
            } else {
                averaged
            }
        })
    }
}

/// The flattened float tensors of `module`, in the order [`weighted_average`] reads them.
pub fn float_tensors<M: Module>(module: &M) -> Vec<Vec<f32>> {
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// `module` with its float tensors, in [`float_tensors`]'s order, replaced by `values`; `None`
/// when `values` does not have the module's shape.
pub fn with_float_tensors<M: Module>(module: M, values: Vec<Vec<f32>>) -> Option<M> {
    let shape: Vec<usize> = float_tensors(&module).iter().map(Vec::len).collect();
    if values.iter().map(Vec::len).collect::<Vec<_>>() != shape {
        return None;
    }
    Some(module.map(&mut Replace(values.into_iter())))
}

/// Every trainable tensor of a module, flattened (buffers such as BatchNorm's running
/// statistics left out), still on the autodiff graph.
struct Trainable(Vec<Tensor<1>>);

impl ModuleVisitor for Trainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        if tensor.is_require_grad() {
            self.0.push(tensor.flatten::<1>(0, D - 1));
        }
    }
}

/// FedProx's anchor: the trainable tensors of the round's global model, detached.
pub fn proximal_anchor<M: Module>(global: &M) -> Vec<Tensor<1>> {
    let mut trainable = Trainable(Vec::new());
    global.visit(&mut trainable);
    trainable.0.into_iter().map(Tensor::detach).collect()
}

/// FedProx's proximal term μ/2·‖w − w₀‖² over the trainable tensors of `module`, against the
/// `anchor` of [`proximal_anchor`]: added to a local loss, it holds local training near the
/// round's global model (Li et al. 2020).
pub fn proximal_term<M: Module>(module: &M, anchor: &[Tensor<1>], mu: f64) -> Option<Tensor<1>> {
    let mut trainable = Trainable(Vec::new());
    module.visit(&mut trainable);
    if trainable.0.len() != anchor.len() {
        return None;
    }
    trainable
        .0
        .into_iter()
        .zip(anchor)
        .map(|(w, a)| (w - a.clone()).powi_scalar(2).sum())
        .reduce(|a, b| a + b)
        .map(|sum| sum.mul_scalar(mu / 2.0))
}

/// Σ wₖ·mₖ / Σ wₖ, tensor by tensor, on the first module's structure; `None` when there is no
/// module, a weight is negative or not finite, the weights sum to 0, or the modules differ in
/// shape.
pub fn weighted_average<M: Module + Clone>(models: &[(M, f64)]) -> Option<M> {
    let (first, _) = models.first()?;
    let total: f64 = models.iter().map(|(_, w)| *w).sum();
    if models.iter().any(|(_, w)| !(w.is_finite() && *w >= 0.0)) || total <= 0.0 {
        return None;
    }
    let tensors: Vec<Vec<Vec<f32>>> = models.iter().map(|(m, _)| float_tensors(m)).collect();
    let shape: Vec<usize> = tensors[0].iter().map(Vec::len).collect();
    if tensors
        .iter()
        .any(|t| t.iter().map(Vec::len).collect::<Vec<_>>() != shape)
    {
        return None;
    }
    let averaged: Vec<Vec<f32>> = (0..shape.len())
        .map(|k| {
            (0..shape[k])
                .map(|i| {
                    (tensors
                        .iter()
                        .zip(models)
                        .map(|(t, (_, w))| t[k][i] as f64 * w)
                        .sum::<f64>()
                        / total) as f32
                })
                .collect()
        })
        .collect();
    with_float_tensors(first.clone(), averaged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeadConfig, Objective, Targets, seeded, training_device};
    use burn::optim::{GradientsParams, SgdConfig};

    fn head(seed: u64) -> crate::Head {
        let device = training_device();
        let config = HeadConfig {
            input: 3,
            layers: vec![4],
            outputs: 1,
            target_scale: None,
        };
        seeded(&device, seed, || config.init(&device))
    }

    #[test]
    fn the_average_is_the_weighted_mean_of_every_tensor() {
        let (a, b) = (head(1), head(2));
        let mean = weighted_average(&[(a.clone(), 1.0), (b.clone(), 3.0)]).unwrap();
        for ((m, x), y) in float_tensors(&mean)
            .iter()
            .zip(float_tensors(&a))
            .zip(float_tensors(&b))
        {
            for ((m, x), y) in m.iter().zip(&x).zip(&y) {
                assert!((m - (x + 3.0 * y) / 4.0).abs() < 1e-6);
            }
        }
        assert!(weighted_average::<crate::Head>(&[]).is_none());
        assert!(weighted_average(&[(a.clone(), -1.0), (b.clone(), 2.0)]).is_none());
        assert!(weighted_average(&[(a, 0.0), (b, 0.0)]).is_none());
    }

    /// FedProx's term is μ/2·‖w − w₀‖², and its gradient μ·(w − w₀) (checked through one SGD
    /// step of rate 1: w − μ(w − w₀)).
    #[test]
    fn the_proximal_term_pulls_each_weight_towards_the_anchor() {
        let (anchor_model, model) = (head(5), head(6));
        let anchor = proximal_anchor(&anchor_model);
        let mu = 0.5;
        let term = proximal_term(&model, &anchor, mu).unwrap();
        let expected: f64 = float_tensors(&model)
            .iter()
            .zip(float_tensors(&anchor_model))
            .flat_map(|(w, a)| {
                w.iter()
                    .zip(a)
                    .map(|(w, a)| ((w - a) as f64).powi(2))
                    .collect::<Vec<_>>()
            })
            .sum::<f64>()
            * mu
            / 2.0;
        let value = term.clone().into_data().try_to_vec::<f32>().unwrap()[0] as f64;
        assert!(
            (value - expected).abs() < 1e-4 * expected.max(1.0),
            "{value} {expected}"
        );
        let grads = GradientsParams::from_grads(term.backward(), &model);
        let stepped = SgdConfig::new().init().step(1.0, model.clone(), grads);
        for ((s, w), a) in float_tensors(&stepped)
            .iter()
            .zip(float_tensors(&model))
            .zip(float_tensors(&anchor_model))
        {
            for ((s, w), a) in s.iter().zip(&w).zip(&a) {
                let want = w - mu as f32 * (w - a);
                assert!((s - want).abs() < 1e-5, "{s} {want}");
            }
        }
        assert!(proximal_term(&model, &anchor[1..], mu).is_none());
    }

    /// Federated averaging checked against the joint computation: two clients each take one SGD
    /// step from the same model on their own rows; the average weighted by rows is the model one
    /// step on all the rows at once gives (the mean loss's gradient is the rows-weighted mean of
    /// the clients' mean-loss gradients).
    #[test]
    fn one_sgd_step_per_client_averaged_by_rows_equals_one_step_on_all_rows() {
        let device = training_device();
        let global = head(5);
        let rows = |n: usize, offset: f32| -> (Tensor<2>, Targets) {
            let x: Vec<f32> = (0..n * 3)
                .map(|i| (i as f32 * 0.37 + offset).sin())
                .collect();
            let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11 + offset).cos()).collect();
            (
                Tensor::from_data(TensorData::new(x, [n, 3]), &device),
                Targets::Values(y),
            )
        };
        let step = |model: crate::Head, x: Tensor<2>, y: &Targets| {
            let loss = Objective::Mse.loss(model.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            SgdConfig::new().init().step(0.1, model, grads)
        };
        let (xa, ya) = rows(5, 0.0);
        let (xb, yb) = rows(11, 1.0);
        let a = step(global.clone(), xa.clone(), &ya);
        let b = step(global.clone(), xb.clone(), &yb);
        let averaged = weighted_average(&[(a, 5.0), (b, 11.0)]).unwrap();
        let (Targets::Values(va), Targets::Values(vb)) = (&ya, &yb) else {
            unreachable!()
        };
        let all_y = Targets::Values(va.iter().chain(vb).copied().collect());
        let joint = step(global, Tensor::cat(vec![xa, xb], 0), &all_y);
        for (m, j) in float_tensors(&averaged)
            .iter()
            .flatten()
            .zip(float_tensors(&joint).iter().flatten())
        {
            assert!((m - j).abs() < 1e-5, "{m} vs {j}");
        }
    }
}
