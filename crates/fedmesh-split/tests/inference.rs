//! A saved split model, loaded part by part as a mesh holds it, scores each test entity exactly
//! as the run's evaluation pass did.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use fedmesh_data::SourceCache;
use fedmesh_model::Objective;
use fedmesh_split::inference::{HeadScorer, TopScorer};
use fedmesh_split::job::{Job, RunConfig, align_products};
use fedmesh_split::{BatchPlan, Part};

fn check_inference_equals_evaluation(config: RunConfig) {
    let job =
        Job::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud")).unwrap();
    check_job(job, config);
}

/// A regression of the transactions' `Amount` (its own units: tens to thousands): the saved
/// head maps its outputs back with the target's scale, as the evaluation did.
fn check_regression_inference_equals_evaluation(config: RunConfig) {
    let mut job =
        Job::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud")).unwrap();
    job.spec.objective = Objective::Mse;
    job.spec.task = None;
    job.spec.label.column = "Amount".into();
    job.spec.resample = None;
    for domain in &mut job.spec.domains {
        domain.features.retain(|f| f.column != "Amount");
    }
    let (scores, expected) = check_job(job, config);
    // In the target's units: a mean amount, not a standardized value near 0.
    let mean = expected.iter().sum::<f32>() / expected.len() as f32;
    assert!(mean > 10.0, "mean predicted amount {mean}");
    assert_eq!(scores.len(), expected.len());
}

/// Runs `job` with its parts saved, scores its test rows from the saved parts, and checks the
/// scores against the evaluation's; returns both.
fn check_job(mut job: Job, config: RunConfig) -> (Vec<f32>, Vec<f32>) {
    job.spec.synthetic_rows = Some(3_000);
    job.spec.training.epochs = 2;
    let dir = tempfile::tempdir().unwrap();
    let prepared = job.prepare(None).unwrap();
    let result = prepared
        .run(
            &config,
            1,
            &fedmesh_split::Silent,
            &AtomicBool::new(false),
            Some(dir.path()),
        )
        .unwrap();
    assert_eq!(result.test_scores.len(), result.test_rows);

    // Each domain's product, aligned as the run aligned it; the test rows' activations from
    // each domain's saved pipeline and bottom.
    let mut cache = SourceCache::default();
    let products = job
        .spec
        .domains
        .iter()
        .map(|d| {
            job.load_product(d, None, job.example_path().as_deref(), &mut cache)
                .map(|(p, _)| p)
        })
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let (products, _) = align_products(&job.spec.domains, products).unwrap();
    let rows: Vec<u32> = result.test_scores.iter().map(|(row, _)| *row).collect();
    let mut cut = Vec::new();
    for (domain, product) in job.spec.domains.iter().zip(&products) {
        let mut bottom = job
            .spec
            .inference_bottom(domain, product, dir.path())
            .unwrap();
        cut.push(
            bottom
                .forward(&BatchPlan::eval(Part::Test, rows.clone()))
                .unwrap(),
        );
    }
    let width = cut.iter().map(|a| a.cols).sum();
    let label_sharing = config == RunConfig::SplitLabelSharing;
    let top = TopScorer::load(&job.spec, width, dir.path(), label_sharing).unwrap();
    let z = top.tower_output(&cut);
    let scores = match top.head() {
        Some(head) => head.scores(&z).unwrap(),
        None => HeadScorer::load(
            &job.spec,
            z.cols,
            &dir.path().join("head-fraud-prevention.bpk"),
        )
        .unwrap()
        .scores(&z)
        .unwrap(),
    };
    if !label_sharing {
        // A tower output of another width than the saved head's is refused, not scored.
        let path = dir.path().join("head-fraud-prevention.bpk");
        let error = HeadScorer::load(&job.spec, z.cols + 1, &path)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("head-fraud-prevention.bpk") && error.contains("shape mismatch"),
            "{error}"
        );
        let head = HeadScorer::load(&job.spec, z.cols, &path).unwrap();
        let wide = fedmesh_split::WireTensor {
            rows: 1,
            cols: z.cols + 1,
            data: vec![0.0; z.cols + 1],
        };
        assert!(head.scores(&wide).is_err());
    }
    let expected: Vec<f32> = result
        .test_scores
        .iter()
        .flat_map(|(_, s)| s.clone())
        .collect();
    assert_eq!(scores.len(), expected.len());
    let worst = scores
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "largest relative difference {worst}");
    (scores, expected)
}

#[test]
fn a_loaded_regression_scores_in_the_targets_units_as_the_evaluation_did() {
    check_regression_inference_equals_evaluation(RunConfig::SplitLabelOwner);
    check_regression_inference_equals_evaluation(RunConfig::SplitLabelSharing);
}

#[test]
fn a_loaded_split_model_scores_as_the_evaluation_did_with_label_sharing() {
    check_inference_equals_evaluation(RunConfig::SplitLabelSharing);
}

#[test]
fn a_loaded_split_model_scores_as_the_evaluation_did_without_label_sharing() {
    check_inference_equals_evaluation(RunConfig::SplitLabelOwner);
}
