//! Metrics computed from scores and labels, where the labels are.
//!
//! Binary tasks report the threshold-free ROC-AUC and PR-AUC (average precision), the
//! threshold metrics at 0.5 and at a threshold chosen on a validation slice, the confusion
//! matrix, and the seed paper's "hard-label AUC" — the AUC of 0/1 predictions, which equals
//! balanced accuracy — so its tables can be compared.

use serde::{Deserialize, Serialize};

/// A binary task's scores reduced to what every metric of them needs: at each distinct score,
/// from the highest down, how many positives and how many negatives have it. Built from scores
/// and labels where they are ([`ScoreCounts::of`]), or from counts that several parties add up
/// ([`ScoreCounts::from_levels`]), so that both give their metrics the same way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreCounts {
    /// (score, positives, negatives), by falling score, each score once.
    levels: Vec<(f32, f64, f64)>,
}

impl ScoreCounts {
    /// The counts of `scores` with labels `positive`.
    pub fn of(scores: &[f32], positive: &[bool]) -> Self {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut levels: Vec<(f32, f64, f64)> = Vec::new();
        for i in order {
            let (p, n) = if positive[i] { (1.0, 0.0) } else { (0.0, 1.0) };
            // `total_cmp`, not `==`: a NaN equals nothing.
            match levels.last_mut() {
                Some(level) if level.0.total_cmp(&scores[i]).is_eq() => {
                    level.1 += p;
                    level.2 += n;
                }
                _ => levels.push((scores[i], p, n)),
            }
        }
        Self { levels }
    }

    /// Counts given as (score, positives, negatives); sorted by falling score here, and levels
    /// without a row left out.
    pub fn from_levels(mut levels: Vec<(f32, f64, f64)>) -> Self {
        levels.retain(|l| l.1 + l.2 > 0.0);
        levels.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        Self { levels }
    }

    pub fn positives(&self) -> f64 {
        self.levels.iter().map(|l| l.1).sum()
    }

    pub fn negatives(&self) -> f64 {
        self.levels.iter().map(|l| l.2).sum()
    }

    /// (threshold, true positives, false positives) when predicting positive at score ≥
    /// threshold, for each distinct score from the highest down.
    fn cumulative(&self) -> Vec<(f32, f64, f64)> {
        let (mut tp, mut fp) = (0.0, 0.0);
        self.levels
            .iter()
            .map(|&(score, p, n)| {
                tp += p;
                fp += n;
                (score, tp, fp)
            })
            .collect()
    }

    /// ROC-AUC, ties counted half (Mann–Whitney U): each negative counts the positives above it,
    /// and half of those beside it.
    pub fn roc_auc(&self) -> f64 {
        let (n_pos, n_neg) = (self.positives(), self.negatives());
        if n_pos == 0.0 || n_neg == 0.0 {
            return f64::NAN;
        }
        let mut above = 0.0;
        let mut pairs = 0.0;
        for &(_, p, n) in &self.levels {
            pairs += n * (above + p / 2.0);
            above += p;
        }
        pairs / (n_pos * n_neg)
    }

    /// Precision and recall at each distinct score taken as threshold, from the highest down.
    pub fn pr_points(&self) -> Vec<PrPoint> {
        let n_pos = self.positives();
        self.cumulative()
            .into_iter()
            .map(|(threshold, tp, fp)| PrPoint {
                threshold,
                precision: tp / (tp + fp),
                recall: if n_pos > 0.0 { tp / n_pos } else { 0.0 },
            })
            .collect()
    }

    /// Average precision (as scikit-learn computes it): Σ (Rₙ − Rₙ₋₁)·Pₙ over distinct
    /// thresholds, highest first.
    pub fn pr_auc(&self) -> f64 {
        if self.positives() == 0.0 {
            return f64::NAN;
        }
        let mut ap = 0.0;
        let mut previous_recall = 0.0;
        for point in self.pr_points() {
            ap += (point.recall - previous_recall) * point.precision;
            previous_recall = point.recall;
        }
        ap
    }

    /// ROC curve points (false-positive rate, true-positive rate), from (0,0) to (1,1).
    pub fn roc_points(&self) -> Vec<(f64, f64)> {
        let (n_pos, n_neg) = (self.positives(), self.negatives());
        std::iter::once((0.0, 0.0))
            .chain(
                self.cumulative()
                    .into_iter()
                    .map(|(_, tp, fp)| (fp / n_neg.max(1.0), tp / n_pos.max(1.0))),
            )
            .collect()
    }

    /// The threshold that maximizes F1.
    pub fn best_f1_threshold(&self) -> f32 {
        let n_pos = self.positives();
        let mut best = (f64::MIN, 0.5);
        for point in self.pr_points() {
            let tp = point.recall * n_pos;
            // F1 = 2TP / (2TP + FP + FN) = 2PR / (P + R).
            let f1 = if tp > 0.0 {
                2.0 * point.precision * point.recall / (point.precision + point.recall)
            } else {
                0.0
            };
            if f1 > best.0 {
                best = (f1, point.threshold);
            }
        }
        best.1
    }

    /// The decision "positive at score ≥ `threshold`".
    pub fn confusion_at(&self, threshold: f32) -> Confusion {
        let mut c = Confusion::default();
        for &(score, p, n) in &self.levels {
            let (p, n) = (p as u64, n as u64);
            if score >= threshold {
                c.tp += p;
                c.fp += n;
            } else {
                c.fn_ += p;
                c.tn += n;
            }
        }
        c
    }
}

/// ROC-AUC of `scores` for labels `positive`, ties counted half (Mann–Whitney U).
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> f64 {
    ScoreCounts::of(scores, positive).roc_auc()
}

/// Average precision (the area under the precision–recall curve as scikit-learn computes it).
pub fn pr_auc(scores: &[f32], positive: &[bool]) -> f64 {
    ScoreCounts::of(scores, positive).pr_auc()
}

/// A point of the precision–recall curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrPoint {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
}

/// Precision and recall at each distinct score taken as threshold (predict positive when
/// score ≥ threshold), from the highest threshold down.
pub fn pr_points(scores: &[f32], positive: &[bool]) -> Vec<PrPoint> {
    ScoreCounts::of(scores, positive).pr_points()
}

/// ROC curve points (false-positive rate, true-positive rate), from (0,0) to (1,1).
pub fn roc_points(scores: &[f32], positive: &[bool]) -> Vec<(f64, f64)> {
    ScoreCounts::of(scores, positive).roc_points()
}

/// Counts of a binary decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
}

impl Confusion {
    pub fn at(scores: &[f32], positive: &[bool], threshold: f32) -> Self {
        ScoreCounts::of(scores, positive).confusion_at(threshold)
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn_)
    }

    /// AUC of the 0/1 predictions: (TPR + TNR) / 2.
    pub fn hard_label_auc(&self) -> f64 {
        (self.recall() + ratio(self.tn, self.tn + self.fp)) / 2.0
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The threshold that maximizes F1 on (validation) scores.
pub fn best_f1_threshold(scores: &[f32], positive: &[bool]) -> f32 {
    ScoreCounts::of(scores, positive).best_f1_threshold()
}

/// Metrics of a binary classifier on one test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub roc_auc: f64,
    pub pr_auc: f64,
    /// F1 at the threshold chosen on the validation slice (`threshold`).
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub accuracy: f64,
    pub threshold: f32,
    pub confusion: Confusion,
    pub f1_at_0_5: f64,
    pub precision_at_0_5: f64,
    pub recall_at_0_5: f64,
    pub accuracy_at_0_5: f64,
    pub confusion_at_0_5: Confusion,
    /// The seed paper's AUC of 0/1 predictions at 0.5.
    pub hard_label_auc: f64,
}

impl BinaryMetrics {
    /// Metrics of `scores` (probability of the positive class) on the test set, with the F1
    /// threshold chosen on the validation scores.
    pub fn compute(
        test_scores: &[f32],
        test_positive: &[bool],
        valid_scores: &[f32],
        valid_positive: &[bool],
    ) -> Self {
        let valid =
            (!valid_scores.is_empty()).then(|| ScoreCounts::of(valid_scores, valid_positive));
        Self::of_counts(&ScoreCounts::of(test_scores, test_positive), valid.as_ref())
    }

    /// Metrics of the test counts, with the F1 threshold chosen on the validation counts (0.5
    /// without them).
    pub fn of_counts(test: &ScoreCounts, valid: Option<&ScoreCounts>) -> Self {
        let threshold = valid.map_or(0.5, ScoreCounts::best_f1_threshold);
        let at = test.confusion_at(threshold);
        let half = test.confusion_at(0.5);
        Self {
            roc_auc: test.roc_auc(),
            pr_auc: test.pr_auc(),
            f1: at.f1(),
            precision: at.precision(),
            recall: at.recall(),
            accuracy: at.accuracy(),
            threshold,
            confusion: at,
            f1_at_0_5: half.f1(),
            precision_at_0_5: half.precision(),
            recall_at_0_5: half.recall(),
            accuracy_at_0_5: half.accuracy(),
            confusion_at_0_5: half,
            hard_label_auc: half.hard_label_auc(),
        }
    }
}

/// Metrics of a multi-class classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiClassMetrics {
    pub accuracy: f64,
    pub macro_f1: f64,
}

impl MultiClassMetrics {
    /// `probabilities`: row-major `[n, classes]`.
    pub fn compute(probabilities: &[f32], classes: usize, labels: &[i64]) -> Self {
        let mut confusion = vec![0u64; classes * classes];
        for (row, &label) in probabilities.chunks(classes).zip(labels) {
            let predicted = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            let actual = (label.max(0) as usize).min(classes.saturating_sub(1));
            confusion[actual * classes + predicted] += 1;
        }
        Self::of_confusion(classes, &confusion)
    }

    /// The metrics of a confusion matrix, `confusion[actual × classes + predicted]`.
    pub fn of_confusion(classes: usize, confusion: &[u64]) -> Self {
        let cell = |actual: usize, predicted: usize| confusion[actual * classes + predicted];
        let total: u64 = confusion.iter().sum();
        let correct: u64 = (0..classes).map(|k| cell(k, k)).sum();
        let macro_f1 = (0..classes)
            .map(|k| {
                let tp = cell(k, k);
                let fp: u64 = (0..classes).filter(|&a| a != k).map(|a| cell(a, k)).sum();
                let fn_: u64 = (0..classes).filter(|&p| p != k).map(|p| cell(k, p)).sum();
                ratio(2 * tp, 2 * tp + fp + fn_)
            })
            .sum::<f64>()
            / classes.max(1) as f64;
        Self {
            accuracy: ratio(correct, total),
            macro_f1,
        }
    }
}

/// Metrics of a regression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub rmse: f64,
    /// Mean absolute error (absent from results written before it was reported).
    #[serde(default)]
    pub mae: f64,
    pub r2: f64,
}

impl RegressionMetrics {
    /// The metrics of `n` predictions from Σy, Σy², Σ(ŷ − y)² and Σ|ŷ − y| (which add up across
    /// the parties that hold the rows).
    pub fn from_sums(
        n: f64,
        sum: f64,
        sum_of_squares: f64,
        squared_error: f64,
        absolute_error: f64,
    ) -> Self {
        let n = n.max(1.0);
        let total = sum_of_squares - sum * sum / n;
        Self {
            rmse: (squared_error / n).sqrt(),
            mae: absolute_error / n,
            r2: if total > 0.0 {
                1.0 - squared_error / total
            } else {
                0.0
            },
        }
    }

    pub fn compute(predicted: &[f32], actual: &[f32]) -> Self {
        let n = actual.len().max(1) as f64;
        let mean = actual.iter().map(|&y| y as f64).sum::<f64>() / n;
        let ss_res: f64 = predicted
            .iter()
            .zip(actual)
            .map(|(&p, &y)| (p as f64 - y as f64).powi(2))
            .sum();
        let ss_tot: f64 = actual.iter().map(|&y| (y as f64 - mean).powi(2)).sum();
        let abs: f64 = predicted
            .iter()
            .zip(actual)
            .map(|(&p, &y)| (p as f64 - y as f64).abs())
            .sum();
        Self {
            rmse: (ss_res / n).sqrt(),
            mae: abs / n,
            r2: if ss_tot > 0.0 {
                1.0 - ss_res / ss_tot
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_known_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        // scikit-learn: roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) == 0.75
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &labels), 0.75);
        // Ties count half.
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &labels), 0.5);
    }

    #[test]
    fn average_precision_matches_scikit_learn() {
        // average_precision_score([0,0,1,1],[0.1,0.4,0.35,0.8]) == 0.8333…
        let ap = pr_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]);
        assert!((ap - 5.0 / 6.0).abs() < 1e-12, "{ap}");
    }

    #[test]
    fn threshold_metrics_and_hard_label_auc() {
        let scores = [0.9, 0.6, 0.4, 0.3, 0.2, 0.7];
        let labels = [true, true, true, false, false, false];
        let c = Confusion::at(&scores, &labels, 0.5);
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (2, 1, 2, 1));
        assert!((c.f1() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.hard_label_auc() - (2.0 / 3.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // Best F1 on these scores: threshold 0.4 catches all three positives with one FP... and
        // 0.7's false positive: TP 3, FP 1 → F1 = 6/7.
        assert_eq!(best_f1_threshold(&scores, &labels), 0.4);
    }

    #[test]
    fn multiclass_and_regression() {
        let p = [0.8, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1, 0.8, 0.8, 0.1, 0.1];
        let m = MultiClassMetrics::compute(&p, 3, &[0, 1, 2, 2]);
        assert_eq!(m.accuracy, 0.75);
        let r = RegressionMetrics::compute(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]);
        assert!((r.mae - 1.0 / 3.0).abs() < 1e-9);
        assert!((r.rmse - (1.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert!((r.r2 - (1.0 - 1.0 / (14.0 / 3.0))).abs() < 1e-6);
    }
}
