//! Metrics computed from scores and labels, where the labels are.
//!
//! Binary tasks report the threshold-free ROC-AUC and PR-AUC (average precision), the
//! threshold metrics at 0.5 and at a threshold chosen on a validation slice, the confusion
//! matrix, and the seed paper's "hard-label AUC" — the AUC of 0/1 predictions, which equals
//! balanced accuracy — so its tables can be compared.

use serde::{Deserialize, Serialize};

/// ROC-AUC of `scores` for labels `positive`, ties counted half (Mann–Whitney U).
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> f64 {
    let order = sorted_by_score(scores);
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    // Sum of the (average) ranks of positives, ranks 1-based ascending.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += average_rank * order[i..=j].iter().filter(|&&k| positive[k]).count() as f64;
        i = j + 1;
    }
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Average precision (the area under the precision–recall curve as scikit-learn computes it):
/// Σ (Rₙ − Rₙ₋₁)·Pₙ over distinct thresholds, highest first.
pub fn pr_auc(scores: &[f32], positive: &[bool]) -> f64 {
    let n_pos = positive.iter().filter(|&&p| p).count();
    if n_pos == 0 {
        return f64::NAN;
    }
    let mut ap = 0.0;
    let mut previous_recall = 0.0;
    for point in pr_points(scores, positive) {
        ap += (point.recall - previous_recall) * point.precision;
        previous_recall = point.recall;
    }
    ap
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
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    cumulative_counts(scores, positive)
        .into_iter()
        .map(|(threshold, tp, fp)| PrPoint {
            threshold,
            precision: tp / (tp + fp),
            recall: if n_pos > 0.0 { tp / n_pos } else { 0.0 },
        })
        .collect()
}

/// ROC curve points (false-positive rate, true-positive rate), from (0,0) to (1,1).
pub fn roc_points(scores: &[f32], positive: &[bool]) -> Vec<(f64, f64)> {
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    std::iter::once((0.0, 0.0))
        .chain(
            cumulative_counts(scores, positive)
                .into_iter()
                .map(|(_, tp, fp)| (fp / n_neg.max(1.0), tp / n_pos.max(1.0))),
        )
        .collect()
}

/// (threshold, true positives, false positives) when predicting positive at score ≥ threshold,
/// for each distinct score from the highest down.
fn cumulative_counts(scores: &[f32], positive: &[bool]) -> Vec<(f32, f64, f64)> {
    let mut order = sorted_by_score(scores);
    order.reverse();
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut counts = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let threshold = scores[order[i]];
        // `total_cmp`, not `==`: a NaN equals nothing, and the loop would never move past it.
        while i < order.len() && scores[order[i]].total_cmp(&threshold).is_eq() {
            if positive[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        counts.push((threshold, tp, fp));
    }
    counts
}

fn sorted_by_score(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order
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
        let mut c = Confusion::default();
        for (&s, &p) in scores.iter().zip(positive) {
            match (s >= threshold, p) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
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
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let mut best = (f64::MIN, 0.5);
    for point in pr_points(scores, positive) {
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
        let threshold = if valid_scores.is_empty() {
            0.5
        } else {
            best_f1_threshold(valid_scores, valid_positive)
        };
        let at = Confusion::at(test_scores, test_positive, threshold);
        let half = Confusion::at(test_scores, test_positive, 0.5);
        Self {
            roc_auc: roc_auc(test_scores, test_positive),
            pr_auc: pr_auc(test_scores, test_positive),
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
        let predicted: Vec<usize> = probabilities
            .chunks(classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i)
            })
            .collect();
        let correct = predicted
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p as i64 == **l)
            .count();
        let macro_f1 = (0..classes)
            .map(|k| {
                let tp = predicted
                    .iter()
                    .zip(labels)
                    .filter(|(p, l)| **p == k && **l == k as i64)
                    .count();
                let fp = predicted
                    .iter()
                    .zip(labels)
                    .filter(|(p, l)| **p == k && **l != k as i64)
                    .count();
                let fn_ = predicted
                    .iter()
                    .zip(labels)
                    .filter(|(p, l)| **p != k && **l == k as i64)
                    .count();
                ratio(2 * tp as u64, (2 * tp + fp + fn_) as u64)
            })
            .sum::<f64>()
            / classes as f64;
        Self {
            accuracy: ratio(correct as u64, labels.len() as u64),
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
