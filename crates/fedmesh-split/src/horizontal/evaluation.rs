//! Evaluation where the rows are: each domain scores the global model on its own validation or
//! test rows and reports sums that add up across domains — the loss, and per task the counts
//! the metrics need — never a row's score or label.
//!
//! A binary task's scores are counted in [`SCORE_BINS`] bins of the positive class's
//! probability, per label: the summed histograms give ROC-AUC and PR-AUC (scores in one bin
//! count as ties), F1 at a threshold on a bin edge chosen on the validation rows, and the
//! confusion at 0.5 exactly (0.5 is a bin edge). A multi-class task's sums are its confusion
//! matrix, a regression's the sums of its targets and errors: their metrics are exact.

use fedmesh_model::metrics::{MultiClassMetrics, RegressionMetrics, ScoreCounts};
use fedmesh_model::{Objective, Targets};
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::scores::{EvaluationReport, Metrics, binary_metrics};
use crate::wire::Part;

/// Bins of a binary task's score histograms: ROC-AUC from them is within about 1e-4 of the
/// exact one on credit-scoring data.
pub const SCORE_BINS: u32 = 10_000;

/// What one domain (or several, summed) reports of an evaluation pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationSums {
    /// Rows scored.
    pub rows: u64,
    /// The loss summed over them.
    pub loss_sum: f64,
    pub outcome: OutcomeSums,
}

/// The task's counts, which add up across domains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OutcomeSums {
    /// Positive-class probabilities by bin, as (bin, count) in rising bin order, for the rows
    /// labelled positive and negative.
    Binary {
        positives: Vec<(u32, u64)>,
        negatives: Vec<(u32, u64)>,
    },
    /// `confusion[actual × classes + predicted]`.
    MultiClass { classes: usize, confusion: Vec<u64> },
    /// Σy, Σy², Σ(ŷ − y)², Σ|ŷ − y|.
    Regression {
        sum: f64,
        sum_of_squares: f64,
        squared_error: f64,
        absolute_error: f64,
    },
}

impl EvaluationSums {
    /// The sums of `scores` (row-major, as [`Objective::scores`] gives them) of `rows` against
    /// `targets`, with their summed loss.
    pub fn of(
        objective: &Objective,
        targets: &Targets,
        rows: &[u32],
        scores: &[f32],
        loss_sum: f64,
    ) -> Self {
        let width = objective.outputs().max(1);
        let outcome = match (objective, targets.gather(rows)) {
            (Objective::CrossEntropy { classes: 2, .. }, Targets::Classes(labels)) => {
                let mut positives = vec![0u64; SCORE_BINS as usize];
                let mut negatives = vec![0u64; SCORE_BINS as usize];
                for (row, &label) in scores.chunks(width).zip(&labels) {
                    let bin = bin_of(row[1]);
                    if label == 1 {
                        positives[bin as usize] += 1;
                    } else {
                        negatives[bin as usize] += 1;
                    }
                }
                OutcomeSums::Binary {
                    positives: sparse(&positives),
                    negatives: sparse(&negatives),
                }
            }
            (Objective::CrossEntropy { classes, .. }, Targets::Classes(labels)) => {
                let mut confusion = vec![0u64; classes * classes];
                for (row, &label) in scores.chunks(width).zip(&labels) {
                    let predicted = row
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    let actual = (label.max(0) as usize).min(classes - 1);
                    confusion[actual * classes + predicted] += 1;
                }
                OutcomeSums::MultiClass {
                    classes: *classes,
                    confusion,
                }
            }
            (_, gathered) => {
                // A regression (an objective over classes never has values for targets).
                let values: Vec<f64> = match gathered {
                    Targets::Values(v) => v.iter().map(|&y| y as f64).collect(),
                    Targets::Classes(c) => c.iter().map(|&y| y as f64).collect(),
                };
                let mut sums = [0.0f64; 4];
                for (&p, &y) in scores.iter().zip(&values) {
                    let p = p as f64;
                    sums[0] += y;
                    sums[1] += y * y;
                    sums[2] += (p - y) * (p - y);
                    sums[3] += (p - y).abs();
                }
                OutcomeSums::Regression {
                    sum: sums[0],
                    sum_of_squares: sums[1],
                    squared_error: sums[2],
                    absolute_error: sums[3],
                }
            }
        };
        Self {
            rows: rows.len() as u64,
            loss_sum,
            outcome,
        }
    }

    /// Checks what a domain sent before it is added: the task's kind and shape, counts that add
    /// up to its rows, finite sums. `from` names the sender.
    pub fn check(&self, objective: &Objective, from: &str) -> Result<(), SplitError> {
        let bad = |what: String| SplitError::Node {
            node: from.to_string(),
            message: format!("sent evaluation sums that {what}"),
        };
        if !self.loss_sum.is_finite() {
            return Err(bad("hold a loss that is not finite".into()));
        }
        let counted = match (&self.outcome, objective) {
            (
                OutcomeSums::Binary {
                    positives,
                    negatives,
                },
                Objective::CrossEntropy { classes: 2, .. },
            ) => {
                for bins in [positives, negatives] {
                    if bins.iter().any(|&(bin, _)| bin >= SCORE_BINS)
                        || bins.windows(2).any(|w| w[0].0 >= w[1].0)
                    {
                        return Err(bad(format!(
                            "name bins outside 0..{SCORE_BINS} or out of order"
                        )));
                    }
                }
                positives
                    .iter()
                    .chain(negatives)
                    .try_fold(0u64, |n, &(_, c)| n.checked_add(c))
            }
            (
                OutcomeSums::MultiClass { classes, confusion },
                Objective::CrossEntropy { classes: k, .. },
            ) if classes == k && confusion.len() == k * k => {
                confusion.iter().try_fold(0u64, |n, &c| n.checked_add(c))
            }
            (
                OutcomeSums::Regression {
                    sum,
                    sum_of_squares,
                    squared_error,
                    absolute_error,
                },
                Objective::Mse,
            ) => {
                if [sum, sum_of_squares, squared_error, absolute_error]
                    .iter()
                    .any(|v| !v.is_finite())
                {
                    return Err(bad("are not finite".into()));
                }
                Some(self.rows)
            }
            _ => return Err(bad("are not of the job's task".into())),
        };
        if counted != Some(self.rows) {
            return Err(bad(format!("count other than their {} rows", self.rows)));
        }
        Ok(())
    }

    /// Both evaluations' rows together (checked sums of one task).
    pub fn merge(self, other: EvaluationSums) -> EvaluationSums {
        let outcome = match (self.outcome, other.outcome) {
            (
                OutcomeSums::Binary {
                    positives: p1,
                    negatives: n1,
                },
                OutcomeSums::Binary {
                    positives: p2,
                    negatives: n2,
                },
            ) => OutcomeSums::Binary {
                positives: add_sparse(&p1, &p2),
                negatives: add_sparse(&n1, &n2),
            },
            (
                OutcomeSums::MultiClass { classes, confusion },
                OutcomeSums::MultiClass {
                    confusion: other, ..
                },
            ) => OutcomeSums::MultiClass {
                classes,
                confusion: confusion.iter().zip(&other).map(|(a, b)| a + b).collect(),
            },
            (
                OutcomeSums::Regression {
                    sum,
                    sum_of_squares,
                    squared_error,
                    absolute_error,
                },
                OutcomeSums::Regression {
                    sum: s2,
                    sum_of_squares: q2,
                    squared_error: e2,
                    absolute_error: a2,
                },
            ) => OutcomeSums::Regression {
                sum: sum + s2,
                sum_of_squares: sum_of_squares + q2,
                squared_error: squared_error + e2,
                absolute_error: absolute_error + a2,
            },
            (outcome, _) => outcome,
        };
        EvaluationSums {
            rows: self.rows + other.rows,
            loss_sum: self.loss_sum + other.loss_sum,
            outcome,
        }
    }
}

/// The bin of a positive-class probability.
fn bin_of(p: f32) -> u32 {
    let p = if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((p as f64 * SCORE_BINS as f64) as u32).min(SCORE_BINS - 1)
}

fn sparse(counts: &[u64]) -> Vec<(u32, u64)> {
    counts
        .iter()
        .enumerate()
        .filter(|&(_, &c)| c > 0)
        .map(|(bin, &c)| (bin as u32, c))
        .collect()
}

fn add_sparse(a: &[(u32, u64)], b: &[(u32, u64)]) -> Vec<(u32, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for &(bin, c) in a.iter().chain(b) {
        *counts.entry(bin).or_insert(0u64) += c;
    }
    counts.into_iter().collect()
}

/// The report of the summed validation and test passes, as a label holder's: losses, the
/// validation headline, the test metrics (F1's threshold chosen on validation) and curves.
pub fn report(valid: Option<&EvaluationSums>, test: Option<&EvaluationSums>) -> EvaluationReport {
    let mut report = EvaluationReport::default();
    if let Some(valid) = valid {
        report.valid_loss = Some(valid.loss_sum / valid.rows.max(1) as f64);
    }
    if let Some(test) = test {
        report.test_loss = Some(test.loss_sum / test.rows.max(1) as f64);
    }
    // Metrics straight from the counts, never a row per count: a domain that claims a billion
    // rows costs governance no more than one that claims ten.
    let mut valid_counts = None;
    for (part, sums) in [(Part::Valid, valid), (Part::Test, test)] {
        let Some(sums) = sums else { continue };
        match &sums.outcome {
            OutcomeSums::Binary {
                positives,
                negatives,
            } => {
                let counts = binned_counts(positives, negatives);
                match part {
                    Part::Valid => {
                        report.valid_headline = Some(counts.roc_auc());
                        valid_counts = Some(counts);
                    }
                    Part::Test => {
                        let (metrics, curves) = binary_metrics(&counts, valid_counts.as_ref());
                        report.metrics = Some(metrics);
                        report.curves = Some(curves);
                    }
                }
            }
            OutcomeSums::MultiClass { classes, confusion } => {
                let metrics = MultiClassMetrics::of_confusion(*classes, confusion);
                match part {
                    Part::Valid => report.valid_headline = Some(metrics.accuracy),
                    Part::Test => report.metrics = Some(Metrics::MultiClass(metrics)),
                }
            }
            OutcomeSums::Regression {
                sum,
                sum_of_squares,
                squared_error,
                absolute_error,
            } => {
                let metrics = RegressionMetrics::from_sums(
                    sums.rows as f64,
                    *sum,
                    *sum_of_squares,
                    *squared_error,
                    *absolute_error,
                );
                match part {
                    Part::Valid => report.valid_headline = Some(metrics.r2),
                    Part::Test => report.metrics = Some(Metrics::Regression(metrics)),
                }
            }
        }
    }
    report
}

/// A binary task's bins as score counts: each bin's rows scored at its lower edge.
fn binned_counts(positives: &[(u32, u64)], negatives: &[(u32, u64)]) -> ScoreCounts {
    let mut levels = std::collections::BTreeMap::new();
    for (bins, positive) in [(positives, true), (negatives, false)] {
        for &(bin, count) in bins {
            let level = levels.entry(bin).or_insert((0.0, 0.0));
            if positive {
                level.0 += count as f64;
            } else {
                level.1 += count as f64;
            }
        }
    }
    ScoreCounts::from_levels(
        levels
            .into_iter()
            .map(|(bin, (p, n))| (bin as f32 / SCORE_BINS as f32, p, n))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scores::ScoreBook;

    fn binary() -> Objective {
        Objective::CrossEntropy {
            classes: 2,
            class_weights: None,
        }
    }

    /// 3,000 rows of three domains: the summed histograms give the pooled metrics to within the
    /// bins' width, and the confusion at 0.5 exactly.
    #[test]
    fn summed_histograms_give_the_pooled_metrics() {
        let n = 3000u32;
        let labels: Vec<i64> = (0..n).map(|i| i64::from(i % 4 == 0)).collect();
        let scores: Vec<f32> = (0..n)
            .flat_map(|i| {
                let noise = ((i * 7919) % 1000) as f32 / 1000.0;
                let p = (0.2 + 0.35 * labels[i as usize] as f32 + 0.5 * noise).min(0.999);
                [1.0 - p, p]
            })
            .collect();
        let targets = Targets::Classes(labels);
        let all: Vec<u32> = (0..n).collect();
        let (valid, test) = all.split_at(1000);
        let mut book = ScoreBook::default();
        let slice = |rows: &[u32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| scores[2 * r as usize..2 * r as usize + 2].to_vec())
                .collect()
        };
        book.record(Part::Valid, valid, slice(valid), 10.0);
        book.record(Part::Test, test, slice(test), 20.0);
        let exact = book.report(&binary(), &targets);
        // Each domain sums its third of each part.
        let sums = |rows: &[u32], loss: f64| {
            rows.chunks(rows.len().div_ceil(3))
                .map(|chunk| {
                    EvaluationSums::of(&binary(), &targets, chunk, &slice(chunk), loss / 3.0)
                })
                .inspect(|s| s.check(&binary(), "a domain").unwrap())
                .reduce(EvaluationSums::merge)
                .unwrap()
        };
        let (v, t) = (sums(valid, 10.0), sums(test, 20.0));
        assert_eq!(t.rows, 2000);
        let federated = report(Some(&v), Some(&t));
        assert!((federated.test_loss.unwrap() - exact.test_loss.unwrap()).abs() < 1e-12);
        let (Some(Metrics::Binary(f)), Some(Metrics::Binary(e))) =
            (&federated.metrics, &exact.metrics)
        else {
            panic!("binary metrics")
        };
        assert!(
            (f.roc_auc - e.roc_auc).abs() < 1e-3,
            "{} {}",
            f.roc_auc,
            e.roc_auc
        );
        assert!(
            (f.pr_auc - e.pr_auc).abs() < 1e-3,
            "{} {}",
            f.pr_auc,
            e.pr_auc
        );
        assert_eq!(f.confusion_at_0_5, e.confusion_at_0_5);
        // No per-row value: a histogram entry per occupied bin, never a row's position.
        let json = serde_json::to_string(&t).unwrap();
        assert!(
            !json.contains("\"rows\":[") && json.len() < 40_000,
            "{}",
            json.len()
        );
    }

    /// Metrics come from the counts, not from a row per count: sums that claim 2·10¹² rows cost
    /// what ten do.
    #[test]
    fn counts_are_not_expanded_into_rows() {
        let huge = EvaluationSums {
            rows: 2_000_000_000_000,
            loss_sum: 1.0,
            outcome: OutcomeSums::Binary {
                positives: vec![(9_000, 1_000_000_000_000)],
                negatives: vec![(100, 999_999_999_999), (9_000, 1)],
            },
        };
        huge.check(&binary(), "a domain").unwrap();
        let report = report(Some(&huge), Some(&huge));
        let Some(Metrics::Binary(m)) = report.metrics else {
            panic!("binary metrics")
        };
        assert!(m.roc_auc > 0.999_999 && m.roc_auc < 1.0, "{}", m.roc_auc);
        assert_eq!(m.confusion_at_0_5.tp, 1_000_000_000_000);
    }

    #[test]
    fn regression_and_multi_class_sums_are_exact() {
        let objective = Objective::Mse;
        let targets = Targets::Values(vec![1.0, 2.0, 4.0, 8.0]);
        let scores = [1.5f32, 2.0, 3.0, 9.0];
        let whole = EvaluationSums::of(&objective, &targets, &[0, 1, 2, 3], &scores, 4.0);
        let split = EvaluationSums::of(&objective, &targets, &[0, 1], &scores[..2], 1.0).merge(
            EvaluationSums::of(&objective, &targets, &[2, 3], &scores[2..], 3.0),
        );
        let (a, b) = (report(None, Some(&whole)), report(None, Some(&split)));
        let exact = RegressionMetrics::compute(&scores, &[1.0, 2.0, 4.0, 8.0]);
        for r in [a, b] {
            let Some(Metrics::Regression(m)) = r.metrics else {
                panic!()
            };
            assert!((m.rmse - exact.rmse).abs() < 1e-9 && (m.r2 - exact.r2).abs() < 1e-9);
        }
        let three = Objective::CrossEntropy {
            classes: 3,
            class_weights: None,
        };
        let targets = Targets::Classes(vec![0, 1, 2, 2]);
        let scores = [
            0.8f32, 0.1, 0.1, 0.2, 0.7, 0.1, 0.1, 0.1, 0.8, 0.6, 0.3, 0.1,
        ];
        let sums = EvaluationSums::of(&three, &targets, &[0, 1, 2, 3], &scores, 0.0);
        sums.check(&three, "a domain").unwrap();
        let Some(Metrics::MultiClass(m)) = report(None, Some(&sums)).metrics else {
            panic!()
        };
        assert_eq!(m.accuracy, 0.75);
        // A domain's sums of another task, or that miscount their rows, are refused.
        assert!(sums.check(&binary(), "east").is_err());
        let mut lying = sums.clone();
        lying.rows = 5;
        let error = lying.check(&three, "east").unwrap_err().to_string();
        assert!(
            error.contains("east") && error.contains("5 rows"),
            "{error}"
        );
    }
}
