//! Label leakage measured, and the label owner's defences against it: on a small synthetic
//! fraud job, every party reads the labels off an undefended run's gradients, and noise shaped
//! to hide them leaves each party little better than a guess.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use fedmesh_data::datasets::fraud;
use fedmesh_data::product::write_csv;
use fedmesh_split::Silent;
use fedmesh_split::attack::{AttackRun, attack};
use fedmesh_split::job::{Job, PreparedJob, RunConfig};
use fedmesh_split::party::LabelProtection;

/// The fraud example over 20,000 synthetic rows of its schema, a fifth of them fraud (the
/// generator's usual 0.2 % leaves too few positives per batch to measure a leak), 2 epochs.
fn fraud(protection: Option<LabelProtection>) -> PreparedJob {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fraud.csv");
    write_csv(&fraud::generate_with_rate(20_000, 42, 0.2), &data).unwrap();
    // Keyed as the example's contracts say.
    let keyed: String = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, line)| match i {
            0 => format!("transaction_id,{line}\n"),
            _ => format!("{i},{line}\n"),
        })
        .collect();
    std::fs::write(&data, keyed).unwrap();
    let mut job =
        Job::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fraud")).unwrap();
    job.spec.training.epochs = 2;
    job.spec.label_protection = protection;
    job.prepare(Some(&data)).unwrap()
}

fn attacked(job: &PreparedJob, config: RunConfig) -> AttackRun {
    attack(job, &config, 1, &Silent, &AtomicBool::new(false)).unwrap()
}

fn leak(run: &AttackRun, party: &str, attack: &str) -> f64 {
    run.leaks
        .iter()
        .filter(|l| l.party == party && l.attack == attack)
        .map(|l| l.auc)
        .max_by(f64::total_cmp)
        .unwrap_or_else(|| panic!("no {attack} leak measured at {party}"))
}

/// Every attack at every one of `parties` reads little more than a guess off the defended run.
fn near_a_guess(undefended: &AttackRun, defended: &AttackRun, parties: &[&str]) {
    for party in parties {
        for attack in ["norm", "direction", "spectral"] {
            let (before, after) = (
                leak(undefended, party, attack),
                leak(defended, party, attack),
            );
            assert!(
                after < 0.65,
                "{attack} at {party}: {before:.3} undefended, {after:.3} defended"
            );
        }
    }
}

#[test]
fn every_party_reads_the_labels_off_an_undefended_run_and_the_eavesdropper_changes_nothing() {
    let job = fraud(None);
    let run = attacked(&job, RunConfig::SplitLabelOwner);
    // Governance, from the label owner's gradient of the tower output.
    assert!(
        leak(&run, "governance", "spectral") > 0.9,
        "{:?}",
        run.leaks
    );
    // The feature domains that do not hold the labels, from their cut-layer gradients.
    for domain in ["digital", "retail"] {
        assert!(
            leak(&run, domain, "direction") > 0.9,
            "{domain}: {:?}",
            run.leaks
        );
    }
    // The label owner is not attacked: it holds the labels.
    assert!(run.leaks.iter().all(|l| l.party != "fraud-prevention"));
    assert_eq!(run.leaks.iter().filter(|l| l.epoch == 2).count(), 9);
    // Listening changes nothing of the run.
    let plain = job
        .run(
            &RunConfig::SplitLabelOwner,
            1,
            &Silent,
            &AtomicBool::new(false),
            None,
        )
        .unwrap();
    assert_eq!(run.result.metrics, plain.metrics);
    // With label sharing governance holds the labels: only the domains are attacked.
    let shared = attacked(&job, RunConfig::SplitLabelSharing);
    assert!(shared.leaks.iter().all(|l| l.party != "governance"));
    assert!(leak(&shared, "digital", "direction") > 0.9);
}

#[test]
fn noise_shaped_to_hide_the_label_leaves_every_party_near_a_guess() {
    let undefended = attacked(&fraud(None), RunConfig::SplitLabelOwner);
    let defended = attacked(
        &fraud(Some(LabelProtection {
            shaped_noise: 8.0,
            ..LabelProtection::default()
        })),
        RunConfig::SplitLabelOwner,
    );
    near_a_guess(&undefended, &defended, &["governance", "digital", "retail"]);
    assert_eq!(
        defended.protection.as_ref().map(|p| p.shaped_noise),
        Some(8.0)
    );
}

/// With label sharing (configuration 1) governance holds the labels and the head; the same
/// protection, applied by governance to the head's gradient before it reaches the tower,
/// keeps the domains near a guess.
#[test]
fn with_label_sharing_governance_protects_the_labels_from_the_domains() {
    let undefended = attacked(&fraud(None), RunConfig::SplitLabelSharing);
    let defended = attacked(
        &fraud(Some(LabelProtection {
            shaped_noise: 8.0,
            ..LabelProtection::default()
        })),
        RunConfig::SplitLabelSharing,
    );
    for party in ["digital", "retail"] {
        assert!(leak(&undefended, party, "direction") > 0.9);
    }
    near_a_guess(&undefended, &defended, &["digital", "retail"]);
}

/// With `equal_norms`, every gradient a party receives has one length per batch, in both
/// configurations: the norm attack reads nothing anywhere, where without it the lengths tell.
#[test]
fn with_equal_norms_no_gradient_length_tells_a_label() {
    let noise = |equal_norms| LabelProtection {
        shaped_noise: 8.0,
        equal_norms,
        ..LabelProtection::default()
    };
    let lengths_tell = attacked(&fraud(Some(noise(false))), RunConfig::SplitLabelOwner);
    for (config, parties) in [
        (
            RunConfig::SplitLabelOwner,
            &["governance", "digital", "retail"][..],
        ),
        (RunConfig::SplitLabelSharing, &["digital", "retail"][..]),
    ] {
        let equal = attacked(&fraud(Some(noise(true))), config);
        for party in parties {
            let norm = leak(&equal, party, "norm");
            // One length per batch, up to f32 rounding: a guess.
            assert!(norm < 0.52, "{party}: {norm:.3} ({:?})", equal.leaks);
        }
    }
    assert!(
        ["digital", "retail"]
            .iter()
            .any(|party| leak(&lengths_tell, party, "norm") > 0.55),
        "{:?}",
        lengths_tell.leaks
    );
}

#[test]
fn randomized_response_keeps_each_label_with_the_probability_its_epsilon_gives() {
    let labels: Vec<i64> = (0..100_000).map(|i| i % 2).collect();
    let flipped = LabelProtection::randomize(&labels, 2, 1.0, 7);
    let kept = labels.iter().zip(&flipped).filter(|(a, b)| a == b).count() as f64;
    // e / (e + 1) = 0.731
    let expected = 1f64.exp() / (1f64.exp() + 1.0);
    assert!((kept / 1e5 - expected).abs() < 0.01, "{}", kept / 1e5);
    assert_eq!(flipped, LabelProtection::randomize(&labels, 2, 1.0, 7));
    // Three classes, ε = ln 2: kept with probability 2 / (2 + 2), else one of the two others,
    // never the label itself.
    let labels: Vec<i64> = (0..90_000).map(|i| i % 3).collect();
    let randomized = LabelProtection::randomize(&labels, 3, 2f64.ln(), 7);
    let kept = labels
        .iter()
        .zip(&randomized)
        .filter(|(a, b)| a == b)
        .count() as f64;
    assert!((kept / 9e4 - 0.5).abs() < 0.01, "{}", kept / 9e4);
    assert!(randomized.iter().all(|&c| (0..3).contains(&c)));
    let to_next = labels
        .iter()
        .zip(&randomized)
        .filter(|(a, b)| (*a + 1) % 3 == **b)
        .count() as f64;
    assert!((to_next / 9e4 - 0.25).abs() < 0.01, "{}", to_next / 9e4);
}

#[test]
fn a_protection_a_job_cannot_use_is_refused_when_the_spec_is_read() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/credit/job.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let with = |protection: &str| {
        Job::from_yaml(&format!("{text}\nlabel_protection: {protection}\n"), &path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(with("{ shaped_noise: 2 }").is_ok());
    assert!(with("{ randomized_response: 1 }").is_ok());
    assert!(with("{ shaped_noise: 3, equal_norms: true }").is_ok());
    for (bad, says) in [
        ("{ shaped_noise: -1 }", "label_protection.shaped_noise"),
        (
            "{ gradient_noise: .nan }",
            "label_protection.gradient_noise",
        ),
        (
            "{ randomized_response: 0 }",
            "label_protection.randomized_response",
        ),
        ("{ laplace: 1 }", "unknown field"),
        ("{ equal_norms: true }", "set `shaped_noise`"),
    ] {
        let error = with(bad).unwrap_err();
        assert!(error.contains(says), "{bad}: {error}");
    }
}
