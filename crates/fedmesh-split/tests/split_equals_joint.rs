//! The split computation must be the joint network's computation, cut in pieces: the same
//! loss, the same gradients at the cut layer, and the same weights after the optimizers step —
//! in both configurations, with BatchNorm and embeddings in the bottoms.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use fedmesh_data::FeatureMatrix;
use fedmesh_model::{
    BottomConfig, HeadConfig, Objective, Targets, TowerConfig, deep_copy, seeded, training_device,
};
use fedmesh_split::party::batch_inputs;
use fedmesh_split::{
    BatchPlan, CutActivation, CutLayerGradient, DomainParty, EvaluationReport, HeadStep, InProcess,
    JointNetwork, LabelOwner, LabelPlacement, OptimizerSpec, SplitError, SplitTrainer, Trainer,
    Transport, WireTensor,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROWS: usize = 96;

/// A transport that records the gradients it carries back to the domains.
struct Recording {
    inner: InProcess,
    gradients: Vec<Vec<CutLayerGradient>>,
}

impl Transport for Recording {
    fn forward(&mut self, plan: &BatchPlan) -> Result<Vec<CutActivation>, SplitError> {
        self.inner.forward(plan)
    }
    fn backward(
        &mut self,
        gradients: Vec<CutLayerGradient>,
        next: Option<&BatchPlan>,
    ) -> Result<(), SplitError> {
        self.gradients.push(gradients.clone());
        self.inner.backward(gradients, next)
    }
    fn head_train(&mut self, plan: &BatchPlan, z: CutActivation) -> Result<HeadStep, SplitError> {
        self.inner.head_train(plan, z)
    }
    fn head_eval(&mut self, plan: &BatchPlan, z: CutActivation) -> Result<(), SplitError> {
        self.inner.head_eval(plan, z)
    }
    fn head_report(&mut self) -> Result<EvaluationReport, SplitError> {
        self.inner.head_report()
    }
    fn shared_labels(&mut self) -> Result<Targets, SplitError> {
        self.inner.shared_labels()
    }
    fn save_parts(&mut self, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, SplitError> {
        self.inner.save_parts(dir)
    }
    fn checkpoint(&mut self) -> Result<(), SplitError> {
        self.inner.checkpoint()
    }
    fn restore(&mut self) -> Result<(), SplitError> {
        self.inner.restore()
    }
}

fn features(rng: &mut ChaCha8Rng, numeric: usize, cardinalities: &[usize]) -> FeatureMatrix {
    FeatureMatrix {
        rows: ROWS,
        numeric: (0..ROWS * numeric)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect(),
        numeric_width: numeric,
        categorical: (0..ROWS)
            .flat_map(|_| {
                cardinalities
                    .iter()
                    .map(|&n| rng.random_range(0..n as i64))
                    .collect::<Vec<_>>()
            })
            .collect(),
        embeddings: cardinalities.iter().map(|&n| (n, 3)).collect(),
    }
}

struct Fixture {
    features: Vec<FeatureMatrix>,
    targets: Targets,
    network: JointNetwork,
    objective: Objective,
    optimizer: OptimizerSpec,
}

/// Every part is drawn with `seeded`, so its weights are the same whatever the other tests of
/// this binary draw at the same time (burn has one generator per process and draws lazily).
fn fixture() -> Fixture {
    let device = training_device();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let features = vec![
        features(&mut rng, 4, &[5, 7]),
        features(&mut rng, 3, &[]),
        features(&mut rng, 2, &[4]),
    ];
    let targets = Targets::Classes((0..ROWS).map(|_| rng.random_range(0..2)).collect());
    let bottoms: Vec<_> = features
        .iter()
        .enumerate()
        .map(|(d, f)| {
            let config = BottomConfig {
                numeric: f.numeric_width,
                embeddings: f.embeddings.clone(),
                layers: vec![8, 4],
                batch_norm: true,
                dropout: 0.0,
                interaction: false,
                embedding_std: None,
            };
            seeded(&device, 11 + d as u64, || config.init(&device))
        })
        .collect();
    let tower = TowerConfig {
        input: 12,
        layers: vec![10, 6],
        batch_norm: false,
        dropout: 0.0,
    };
    let tower = seeded(&device, 20, || tower.init(&device));
    let objective = Objective::CrossEntropy {
        classes: 2,
        class_weights: Some(vec![1.0, 3.0]),
    };
    let head = HeadConfig {
        input: 6,
        layers: vec![5],
        outputs: 2,
        target_scale: None,
    };
    let head = seeded(&device, 21, || head.init(&device));
    Fixture {
        features,
        targets,
        network: JointNetwork {
            bottoms,
            tower,
            head,
        },
        objective,
        optimizer: OptimizerSpec {
            learning_rate: 0.01,
            ..OptimizerSpec::default()
        },
    }
}

fn split_trainer(f: &Fixture, share_labels: bool) -> SplitTrainer<Recording> {
    let device = training_device();
    let domains = f
        .features
        .iter()
        .zip(&f.network.bottoms)
        .enumerate()
        .map(|(i, (features, bottom))| {
            DomainParty::new(
                format!("d{i}"),
                features.clone(),
                deep_copy(bottom),
                &f.optimizer,
                device.clone(),
            )
        })
        .collect();
    let (label_owner, labels, placement) = if share_labels {
        (
            None,
            Some(f.targets.clone()),
            LabelPlacement::Governance {
                head: Box::new(f.network.head.clone()),
            },
        )
    } else {
        (
            Some(LabelOwner::new(
                "owner",
                f.targets.clone(),
                f.objective.clone(),
                f.network.head.clone(),
                &f.optimizer,
                device.clone(),
            )),
            None,
            LabelPlacement::LabelOwner,
        )
    };
    let transport = Recording {
        inner: InProcess::new(domains, label_owner, labels),
        gradients: Vec::new(),
    };
    SplitTrainer::new(
        transport,
        f.network.tower.clone(),
        placement,
        f.objective.clone(),
        &f.optimizer,
        device,
    )
    .unwrap()
}

/// One joint step; returns the loss and d loss / d (each bottom's output).
fn joint_step(
    network: &mut JointNetwork,
    optimizer: &mut burn::optim::ModuleOptimizer,
    f: &Fixture,
    rows: &[u32],
) -> (f32, Vec<Vec<f32>>) {
    let device = training_device();
    // A zero leaf added to each bottom's output: its gradient is the cut-layer gradient.
    let mut probes = Vec::new();
    let cut: Vec<Tensor<2>> = network
        .bottoms
        .iter()
        .zip(&f.features)
        .map(|(bottom, features)| {
            let (numeric, categorical) = batch_inputs(features, rows, &device);
            let h = bottom.forward(numeric, categorical);
            let probe = Tensor::<2>::zeros(h.dims(), &device).require_grad();
            probes.push(probe.clone());
            h + probe
        })
        .collect();
    let outputs = network.head.forward(network.tower.forward(cut));
    let loss = f.objective.loss(outputs, &f.targets.gather(rows));
    let value = loss.to_data().try_into_vec::<f32>().unwrap()[0];
    let mut grads = loss.backward();
    let cut_grads = probes
        .iter()
        .map(|p| {
            p.grad_remove(&mut grads)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap()
        })
        .collect();
    let params = GradientsParams::from_grads(grads, network);
    *network = optimizer.step(f.optimizer.learning_rate, network.clone(), params);
    (value, cut_grads)
}

/// Every float parameter of a module, flattened in visiting order.
struct Flatten(Vec<f32>);
impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0
            .extend(param.val().into_data().try_into_vec::<f32>().unwrap());
    }
}

fn flatten<M: Module>(module: &M) -> Vec<f32> {
    let mut v = Flatten(Vec::new());
    module.visit(&mut v);
    v.0
}

fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    assert!(!a.is_empty(), "{what}: nothing compared");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let tolerance = 1e-5 * (1.0 + x.abs().max(y.abs()));
        assert!(
            (x - y).abs() <= tolerance,
            "{what}[{i}]: split {x} vs joint {y}"
        );
    }
}

fn check(share_labels: bool) {
    let f = fixture();
    let mut split = split_trainer(&f, share_labels);
    let mut joint = deep_copy(&f.network);
    let mut joint_optimizer = f.optimizer.init();
    let plans: Vec<Vec<u32>> = vec![
        (0..32).collect(),
        (32..64).rev().collect(),
        (10..90).step_by(2).collect(),
    ];
    for (step, rows) in plans.iter().enumerate() {
        let plan = BatchPlan::train(rows.clone(), f.optimizer.learning_rate);
        let split_loss = split.train_step(&plan).unwrap();
        let (joint_loss, joint_cut_grads) = joint_step(&mut joint, &mut joint_optimizer, &f, rows);
        assert_close(
            &format!("loss at step {step}"),
            &[split_loss],
            &[joint_loss],
        );
        let sent = &split.transport().gradients[step];
        assert_eq!(sent.len(), 3);
        for (d, (s, j)) in sent.iter().zip(&joint_cut_grads).enumerate() {
            assert_close(
                &format!("cut gradient of domain {d} at step {step}"),
                &s.data,
                j,
            );
            assert!(
                s.data.iter().any(|g| *g != 0.0),
                "a gradient that is all zero proves nothing"
            );
        }
    }
    // Same weights after three optimizer steps, part by part.
    let inner = &split.transport().inner;
    let bottoms = inner.parties.iter().filter_map(|p| p.bottom());
    for (d, (party, bottom)) in bottoms.zip(&joint.bottoms).enumerate() {
        assert_close(
            &format!("bottom {d} weights"),
            &flatten(party.model()),
            &flatten(bottom),
        );
        assert_ne!(
            flatten(party.model()),
            flatten(&f.network.bottoms[d]),
            "weights moved"
        );
    }
    assert_close(
        "tower weights",
        &flatten(split.tower()),
        &flatten(&joint.tower),
    );
    let owner = inner.parties.iter().find_map(|p| p.head());
    let head = match (owner, split.head()) {
        (Some(owner), None) => owner.head().clone(),
        (None, Some(head)) => head.clone(),
        _ => panic!("the head lives in exactly one place"),
    };
    assert_close("head weights", &flatten(&head), &flatten(&joint.head));

    // Inference (BatchNorm running statistics included) gives the same scores.
    let rows: Vec<u32> = (0..ROWS as u32).collect();
    let device = training_device().inner();
    let inputs = f
        .features
        .iter()
        .map(|m| batch_inputs(m, &rows, &device))
        .collect();
    let joint_scores = f.objective.scores(joint.valid().forward(inputs));
    let eval = BatchPlan::eval(fedmesh_split::Part::Test, rows.clone());
    let cut: Vec<WireTensor> = split.transport_mut().forward(&eval).unwrap();
    let cut = cut.iter().map(|a| a.to_tensor(&device)).collect();
    let z = split.tower().valid().forward(cut);
    let split_scores = f.objective.scores(head.valid().forward(z));
    assert_close("inference scores", &split_scores, &joint_scores);
}

#[test]
fn split_with_label_sharing_equals_the_joint_network() {
    check(true);
}

#[test]
fn split_without_label_sharing_equals_the_joint_network() {
    check(false);
}
