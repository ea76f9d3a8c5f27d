//! Every number of a job spec is checked when the spec is read: a value outside its range is
//! refused naming the field, the value and the range, instead of panicking in training,
//! allocating without bound, or training a model that can only produce NaN.

use std::path::Path;

use fedmesh_split::AnyJob;
use fedmesh_split::job::Job;

const FRAUD: &str = include_str!("../../../examples/fraud/job.yaml");
const MOVIELENS: &str = include_str!("../../../examples/movielens/job.yaml");

fn refusal(spec: &str) -> String {
    match AnyJob::from_yaml(spec, Path::new("job.yaml")) {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

/// (the example's text, what replaces it, what the refusal must say)
const VERTICAL: &[(&str, &str, &str)] = &[
    (
        "epochs: 5",
        "epochs: 4294967295",
        "`training.epochs` is 4294967295; it must be between 1 and 10000",
    ),
    ("epochs: 5", "epochs: 0", "`training.epochs` is 0"),
    (
        "batch_size: 256",
        "batch_size: 0",
        "`training.batch_size` is 0; it must be between 2 and 1048576",
    ),
    (
        "test_fraction: 0.3",
        "test_fraction: 2",
        "`split.test_fraction` is 2; it must be greater than 0 and less than 1",
    ),
    (
        "valid_fraction: 0.1",
        "valid_fraction: -0.5",
        "`split.valid_fraction` is -0.5",
    ),
    (
        "bottom: { layers: [32, 16], batch_norm: true }",
        "bottom: { layers: [32, 16], batch_norm: true, dropout: 2 }",
        "`model.bottom.dropout` is 2; it must be at least 0 and less than 1",
    ),
    (
        "bottom: { layers: [32, 16], batch_norm: true }",
        "bottom: { layers: [0], batch_norm: true }",
        "`model.bottom.layers[0]` is 0; it must be between 1 and 16384",
    ),
    (
        "bottom: { layers: [32, 16], batch_norm: true }",
        "bottom: { layers: [], batch_norm: true }",
        "`model.bottom.layers (number of layers)` is 0; it must be between 1 and 64",
    ),
    (
        "tower: { layers: [32, 32] }",
        "tower: { layers: [32, 1000000000] }",
        "`model.tower.layers[1]` is 1000000000",
    ),
    (
        "objective: { kind: cross-entropy, classes: 2 }",
        "objective: { kind: cross-entropy, classes: 2, class_weights: [1.0] }",
        "`objective.class_weights (one per class)` is 1; it must be between 2 and 2",
    ),
    (
        "objective: { kind: cross-entropy, classes: 2 }",
        "objective: { kind: cross-entropy, classes: 2, class_weights: [1.0, .nan] }",
        "`objective.class_weights[1]` is NaN",
    ),
    (
        "objective: { kind: cross-entropy, classes: 2 }",
        "objective: { kind: cross-entropy, classes: 1 }",
        "`objective.classes` is 1; it must be between 2 and 16384",
    ),
    (
        "optimizer: { learning_rate: 0.001 }",
        "optimizer: { learning_rate: 0.001, epsilon: 0.0 }",
        "`training.optimizer.epsilon` is 0; it must be a finite number greater than 0",
    ),
    (
        "optimizer: { learning_rate: 0.001 }",
        "optimizer: { learning_rate: 0.001, beta_1: 1.0 }",
        "`training.optimizer.beta_1` is 1; it must be at least 0 and less than 1",
    ),
    (
        "optimizer: { learning_rate: 0.001 }",
        "optimizer: { learning_rate: .inf }",
        "`training.optimizer.learning_rate` is inf",
    ),
    (
        "seeds: [1, 2, 3]",
        "seeds: []",
        "`seeds (number of seeds)` is 0",
    ),
    (
        "synthetic_rows: 284807",
        "synthetic_rows: 18446744073709551615",
        "`synthetic_rows` is 18446744073709551615",
    ),
    (
        "shared: 0.85",
        "shared: 1.5",
        "`example_data.shared` is 1.5; it must be greater than 0 and at most 1",
    ),
    (
        "      - { column: V1 }",
        "      - { column: V1, transform: embedding, dim: 0 }",
        "`domains.digital.features.V1.dim` is 0",
    ),
];

#[test]
fn every_number_of_a_vertical_spec_outside_its_range_is_named() {
    assert_eq!(refusal(FRAUD), "accepted");
    for (from, to, expected) in VERTICAL {
        assert!(FRAUD.contains(from), "the example has `{from}`");
        let error = refusal(&FRAUD.replacen(from, to, 1));
        assert!(
            error.contains("job spec job.yaml") && error.contains(expected),
            "{to}: {error}"
        );
    }
    // Every problem at once.
    let error = refusal(
        &FRAUD
            .replace("epochs: 5", "epochs: 0")
            .replace("batch_size: 256", "batch_size: 0"),
    );
    assert!(
        error.contains("training.epochs") && error.contains("training.batch_size"),
        "{error}"
    );
}

#[test]
fn every_number_of_a_recommendation_spec_outside_its_range_is_named() {
    assert_eq!(refusal(MOVIELENS), "accepted");
    for (from, to, expected) in [
        (
            "epochs: 20",
            "epochs: 100000",
            "`training.epochs` is 100000",
        ),
        ("negatives: 4", "negatives: 0", "`training.negatives` is 0"),
        (
            "batch_size: 256",
            "batch_size: 0",
            "`training.batch_size` is 0",
        ),
        (
            "embedding: 16",
            "embedding: 100000000",
            "`split_model.embedding` is 100000000",
        ),
        (
            "tower: [32, 16]",
            "tower: [32, 0]",
            "`split_model.tower[1]` is 0",
        ),
        (
            "model: { factors: 8, layers: [64, 32, 16, 8] }",
            "model: { factors: 0, layers: [64, 32, 16, 8] }",
            "`model.factors` is 0",
        ),
    ] {
        assert!(MOVIELENS.contains(from), "the example has `{from}`");
        let error = refusal(&MOVIELENS.replacen(from, to, 1));
        assert!(error.contains(expected), "{to}: {error}");
    }
}

#[test]
fn an_epochs_override_is_checked_too() {
    let mut job = AnyJob::from_yaml(FRAUD, Path::new("job.yaml")).unwrap();
    let error = job.set_epochs(u32::MAX as usize).unwrap_err().to_string();
    assert!(error.contains("`epochs` is 4294967295"), "{error}");
    assert_eq!(job.epochs(), 5, "a refused override changes nothing");
    job.set_epochs(3).unwrap();
    assert_eq!(job.epochs(), 3);
    // The vertical reader is the same check.
    assert!(Job::from_yaml(&FRAUD.replace("epochs: 5", "epochs: 0"), Path::new("j")).is_err());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// What a hostile or careless author might write where a number goes.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_string()),
            Just("-1".to_string()),
            Just("4294967295".to_string()),
            Just("18446744073709551615".to_string()),
            Just("1e308".to_string()),
            Just(".nan".to_string()),
            Just(".inf".to_string()),
            Just("-.inf".to_string()),
            Just("\"seven\"".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("".to_string()),
            (-1000i64..1000).prop_map(|v| v.to_string()),
            (-10.0f64..10.0).prop_map(|v| v.to_string()),
        ]
    }

    /// The numbers of the fraud example's spec, as written there.
    const NUMBERS: &[&str] = &[
        "synthetic_rows: 284807",
        "shared: 0.85",
        "seed: 7",
        "classes: 2",
        "test_fraction: 0.3",
        "valid_fraction: 0.1",
        "seed: 42",
        "layers: [32, 16]",
        "layers: [32, 32]",
        "epochs: 5",
        "batch_size: 256",
        "learning_rate: 0.001",
        "seeds: [1, 2, 3]",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Any value in any numeric field, and the spec cut short anywhere: read, or refused
        /// with a sentence naming the spec, never a panic.
        #[test]
        fn a_spec_with_any_values_is_read_or_refused_by_name(
            picks in proptest::collection::vec((0..NUMBERS.len(), number()), 1..4),
            cut in proptest::option::of(0usize..FRAUD.len()),
        ) {
            let mut spec = FRAUD.to_string();
            for (field, value) in picks {
                let (key, _) = NUMBERS[field].split_once(':').unwrap();
                spec = spec.replacen(NUMBERS[field], &format!("{key}: {value}"), 1);
            }
            if let Some(cut) = cut {
                let cut = (0..=cut).rev().find(|&i| spec.is_char_boundary(i)).unwrap_or(0);
                spec.truncate(cut);
            }
            let outcome = refusal(&spec);
            prop_assert!(
                outcome == "accepted" || outcome.contains("job spec job.yaml"),
                "{outcome}"
            );
        }
    }
}
