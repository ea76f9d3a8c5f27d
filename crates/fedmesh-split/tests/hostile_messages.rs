//! Whatever governance sends, a domain's session answers with its result or a named error:
//! never a panic, never a NaN passed on. Sequences of cut-layer messages with NaN, infinite,
//! huge, zero, negative and truncated values, rows the domain does not hold and plans of the
//! wrong kind, checkpoints and restores, in any order; after them the same session still takes a
//! good step.

use fedmesh_data::FeatureMatrix;
use fedmesh_model::{BottomConfig, HeadConfig, Objective, Targets, seeded, training_device};
use fedmesh_split::session::PartySession;
use fedmesh_split::wire::{Part, Pass};
use fedmesh_split::{BatchPlan, DomainParty, LabelOwner, OptimizerSpec, SplitError, WireTensor};
use proptest::prelude::*;

const ROWS: usize = 8;
const WIDTH: usize = 3;

/// A domain holding a bottom, and the labels and head (labels kept, configuration 2).
fn session() -> PartySession {
    let device = training_device();
    let features = FeatureMatrix {
        rows: ROWS,
        numeric: (0..ROWS * 2).map(|v| v as f32 / 10.0).collect(),
        numeric_width: 2,
        categorical: vec![],
        embeddings: vec![],
    };
    let config = BottomConfig {
        numeric: 2,
        embeddings: vec![],
        layers: vec![WIDTH],
        batch_norm: false,
        dropout: 0.0,
        interaction: false,
        embedding_std: None,
    };
    let model = seeded(&device, 1, || config.init(&device));
    let bottom = DomainParty::new("retail", features, model, &OptimizerSpec::default(), device);
    let labels = Targets::Classes((0..ROWS as i64).map(|i| i % 2).collect());
    PartySession::new("retail")
        .with_bottom(bottom)
        .with_head_recipe(
            labels,
            Box::new(|targets, width| {
                let device = training_device();
                let config = HeadConfig {
                    input: width,
                    layers: vec![],
                    outputs: 2,
                    target_scale: None,
                };
                let head = seeded(&device, 2, || config.init(&device));
                let objective = Objective::CrossEntropy {
                    classes: 2,
                    class_weights: None,
                };
                Ok(LabelOwner::new(
                    "retail",
                    targets,
                    objective,
                    head,
                    &OptimizerSpec::default(),
                    device,
                ))
            }),
        )
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -2.0f32..2.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
        1 => Just(0.0),
    ]
}

/// A tensor of any small shape, its values sometimes one short or one too many.
fn tensor() -> impl Strategy<Value = WireTensor> {
    (0usize..6, 0usize..6, -1i32..=1).prop_flat_map(|(rows, cols, skew)| {
        let len = ((rows * cols) as i32 + skew).max(0) as usize;
        proptest::collection::vec(value(), len).prop_map(move |data| WireTensor {
            rows,
            cols,
            data,
        })
    })
}

fn plan() -> impl Strategy<Value = BatchPlan> {
    let row = prop_oneof![
        6 => 0u32..ROWS as u32,
        1 => Just(ROWS as u32),
        1 => Just(u32::MAX),
    ];
    let pass = prop_oneof![
        Just(Pass::Train),
        Just(Pass::Eval(Part::Valid)),
        Just(Pass::Eval(Part::Test)),
    ];
    let rate = prop_oneof![
        4 => Just(0.01f64),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-1.0),
        1 => Just(0.0),
        1 => Just(1e300),
    ];
    (pass, proptest::collection::vec(row, 0..12), rate).prop_map(|(pass, rows, learning_rate)| {
        BatchPlan {
            pass,
            rows,
            learning_rate,
        }
    })
}

#[derive(Debug, Clone)]
enum Message {
    Plan(BatchPlan),
    Gradient(WireTensor),
    Step(WireTensor, BatchPlan),
    HeadTrain(BatchPlan, WireTensor),
    HeadEval(BatchPlan, WireTensor),
    Report,
    Labels,
    Checkpoint,
    Restore,
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        plan().prop_map(Message::Plan),
        tensor().prop_map(Message::Gradient),
        (tensor(), plan()).prop_map(|(g, p)| Message::Step(g, p)),
        (plan(), tensor()).prop_map(|(p, z)| Message::HeadTrain(p, z)),
        (plan(), tensor()).prop_map(|(p, z)| Message::HeadEval(p, z)),
        Just(Message::Report),
        Just(Message::Labels),
        Just(Message::Checkpoint),
        Just(Message::Restore),
    ]
}

/// Sends one message; an error must be a sentence that names who it is about.
fn send(session: &mut PartySession, message: &Message) -> Result<(), SplitError> {
    let result = match message {
        Message::Plan(plan) => session.forward(plan).map(|a| check_finite(&a)),
        Message::Gradient(g) => session.backward(g),
        Message::Step(g, plan) => session.step(g, plan).map(|a| check_finite(&a)),
        Message::HeadTrain(plan, z) => session.head_train(plan, z).map(|step| {
            assert!(step.loss.is_finite(), "a non-finite loss was returned");
            check_finite(&step.gradient);
        }),
        Message::HeadEval(plan, z) => session.head_eval(plan, z),
        Message::Report => session.head_report().map(|_| ()),
        Message::Labels => session.shared_labels().map(|_| ()),
        Message::Checkpoint => {
            session.checkpoint();
            Ok(())
        }
        // Without a checkpoint, or while a step waits for its gradient: refused.
        Message::Restore => session.restore(),
    };
    if let Err(e) = &result {
        let text = e.to_string();
        assert!(
            text.contains("retail") || text.contains("governance") || text.contains("diverged"),
            "an error that names no one: {text}"
        );
    }
    result
}

fn check_finite(tensor: &WireTensor) {
    assert!(
        tensor.data.iter().all(|v| v.is_finite()),
        "a non-finite tensor was sent on"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn no_message_sequence_panics_or_passes_on_a_nan(
        messages in proptest::collection::vec(message(), 1..12)
    ) {
        let mut session = session();
        for message in &messages {
            let _ = send(&mut session, message);
        }
        // The same session then takes a good step, or says its training diverged (a huge but
        // finite gradient may have been taken).
        let good = BatchPlan::train(vec![0, 1, 2], 0.01);
        match session.forward(&good) {
            Ok(activation) => {
                check_finite(&activation);
                let gradient = WireTensor { rows: 3, cols: WIDTH, data: vec![0.1; 3 * WIDTH] };
                session.backward(&gradient).unwrap();
            }
            Err(e) => prop_assert!(e.to_string().contains("diverged"), "{e}"),
        }
    }
}
