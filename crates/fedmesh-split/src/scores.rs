//! Evaluation where the labels are: scores are collected batch by batch and turned into
//! metrics by the party that holds the labels — governance with label sharing, the label owner
//! without. Only the aggregate [`EvaluationReport`] leaves that party.

use fedmesh_model::metrics::{BinaryMetrics, MultiClassMetrics, RegressionMetrics, ScoreCounts};
use fedmesh_model::{Objective, Targets};
use serde::{Deserialize, Serialize};

use crate::recommend::RankingMetrics;
use crate::wire::Part;

/// Metrics of one test set, by task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Metrics {
    Binary(Box<BinaryMetrics>),
    MultiClass(MultiClassMetrics),
    Regression(RegressionMetrics),
    /// A recommender's ranking of held-out items (the NCF protocol).
    Ranking(RankingMetrics),
}

impl Metrics {
    /// What [`Metrics::headline`] measures.
    pub fn headline_name(&self) -> &'static str {
        match self {
            Metrics::Binary(_) => "ROC-AUC",
            Metrics::MultiClass(_) => "accuracy",
            Metrics::Regression(_) => "R²",
            Metrics::Ranking(_) => "HR@10",
        }
    }

    /// The headline number: ROC-AUC, accuracy, R², or HR@10.
    pub fn headline(&self) -> f64 {
        match self {
            Metrics::Binary(m) => m.roc_auc,
            Metrics::MultiClass(m) => m.accuracy,
            Metrics::Regression(m) => m.r2,
            Metrics::Ranking(m) => m.hit_ratio,
        }
    }

    /// A recommender's metrics, if these are.
    pub fn ranking(&self) -> Option<&RankingMetrics> {
        match self {
            Metrics::Ranking(m) => Some(m),
            _ => None,
        }
    }
}

/// The ROC and PR curves of a binary test set, read at [`CURVE_GRID`], for reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Curves {
    /// (false-positive rate, true-positive rate).
    pub roc: Vec<(f64, f64)>,
    /// (recall, precision).
    pub pr: Vec<(f64, f64)>,
}

/// What the label holder reports after an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct EvaluationReport {
    pub valid_loss: Option<f64>,
    /// The headline metric on the validation slice.
    pub valid_headline: Option<f64>,
    pub test_loss: Option<f64>,
    pub metrics: Option<Metrics>,
    pub curves: Option<Curves>,
    /// Each test row's scores (aligned row, row-major scores), for whoever holds the head.
    /// Never serialized: a label owner's report crosses to governance without them, so that
    /// governance learns the metrics, not the predictions.
    #[serde(skip)]
    pub test_scores: Vec<(u32, Vec<f32>)>,
}

/// Scores of the evaluation batches seen since the last report.
#[derive(Debug, Default)]
pub struct ScoreBook {
    parts: Vec<(Part, Vec<u32>, Vec<f32>, f64)>,
}

impl ScoreBook {
    /// Keeps a batch's scores (row-major, as [`Objective::scores`] gives them) and summed loss.
    pub fn record(&mut self, part: Part, rows: &[u32], scores: Vec<f32>, loss_sum: f64) {
        match self.parts.iter_mut().find(|p| p.0 == part) {
            Some(entry) => {
                entry.1.extend_from_slice(rows);
                entry.2.extend(scores);
                entry.3 += loss_sum;
            }
            None => self.parts.push((part, rows.to_vec(), scores, loss_sum)),
        }
    }

    /// Metrics of what was recorded, against `targets` (labels of all aligned rows); clears the
    /// book.
    pub fn report(&mut self, objective: &Objective, targets: &Targets) -> EvaluationReport {
        let parts = std::mem::take(&mut self.parts);
        let find = |part| parts.iter().find(|p| p.0 == part);
        let mut report = EvaluationReport::default();
        let valid = find(Part::Valid);
        let test = find(Part::Test);
        if let Some((_, rows, scores, loss)) = valid {
            report.valid_loss = Some(loss / rows.len().max(1) as f64);
            report.valid_headline =
                Some(compute(objective, targets, rows, scores, None).0.headline());
        }
        if let Some((_, rows, scores, loss)) = test {
            report.test_loss = Some(loss / rows.len().max(1) as f64);
            let (metrics, curves) = compute(
                objective,
                targets,
                rows,
                scores,
                valid.map(|v| (v.1.as_slice(), v.2.as_slice())),
            );
            report.metrics = Some(metrics);
            report.curves = curves;
            let width = scores.len() / rows.len().max(1);
            report.test_scores = rows
                .iter()
                .zip(scores.chunks(width.max(1)))
                .map(|(&row, s)| (row, s.to_vec()))
                .collect();
        }
        report
    }
}

fn positive_scores(objective: &Objective, scores: &[f32]) -> Vec<f32> {
    let classes = objective.outputs();
    scores.chunks(classes).map(|row| row[1]).collect()
}

fn compute(
    objective: &Objective,
    targets: &Targets,
    rows: &[u32],
    scores: &[f32],
    valid: Option<(&[u32], &[f32])>,
) -> (Metrics, Option<Curves>) {
    match (objective, targets.gather(rows)) {
        (Objective::CrossEntropy { classes: 2, .. }, Targets::Classes(labels)) => {
            let positive: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
            let test_scores = positive_scores(objective, scores);
            let (valid_scores, valid_positive) = match valid {
                Some((rows, scores)) => {
                    let Targets::Classes(labels) = targets.gather(rows) else {
                        unreachable!("classification targets")
                    };
                    (
                        positive_scores(objective, scores),
                        labels.iter().map(|&l| l == 1).collect(),
                    )
                }
                None => (Vec::new(), Vec::new()),
            };
            let valid =
                (!valid_scores.is_empty()).then(|| ScoreCounts::of(&valid_scores, &valid_positive));
            let (metrics, curves) =
                binary_metrics(&ScoreCounts::of(&test_scores, &positive), valid.as_ref());
            (metrics, Some(curves))
        }
        (Objective::CrossEntropy { classes, .. }, Targets::Classes(labels)) => (
            Metrics::MultiClass(MultiClassMetrics::compute(scores, *classes, &labels)),
            None,
        ),
        (_, Targets::Values(values)) => (
            Metrics::Regression(RegressionMetrics::compute(scores, &values)),
            None,
        ),
        (objective, _) => panic!("targets do not match objective {objective:?}"),
    }
}

/// A binary task's metrics and curves from its test counts, F1's threshold chosen on the
/// validation counts.
pub(crate) fn binary_metrics(test: &ScoreCounts, valid: Option<&ScoreCounts>) -> (Metrics, Curves) {
    let metrics = BinaryMetrics::of_counts(test, valid);
    let curves = Curves {
        roc: roc_on_grid(&test.roc_points()),
        pr: pr_on_grid(
            &test
                .pr_points()
                .into_iter()
                .map(|p| (p.recall, p.precision))
                .collect::<Vec<_>>(),
        ),
    };
    (Metrics::Binary(Box::new(metrics)), curves)
}

/// Where a report's curves are read: the false-positive rates of the ROC curve and the
/// recalls of the precision-recall curve. A curve through every threshold would tell, score by
/// score, whether the next test example is a positive — the labels in score order — and a label
/// owner's report crosses to governance; read at fixed places, it holds counts over many
/// examples, never one example's label.
pub const CURVE_GRID: [f64; 21] = [
    0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
    0.85, 0.9, 0.95, 1.0,
];

/// The ROC curve's true-positive rate at each false-positive rate of [`CURVE_GRID`]: the best
/// reached without exceeding it (`points` from (0, 0) by rising false-positive rate).
fn roc_on_grid(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    CURVE_GRID
        .iter()
        .map(|&fpr| {
            let tpr = points
                .iter()
                .filter(|p| p.0 <= fpr + 1e-12)
                .map(|p| p.1)
                .fold(0.0, f64::max);
            (fpr, tpr)
        })
        .collect()
}

/// The precision-recall curve's interpolated precision at each recall of [`CURVE_GRID`]: the
/// best precision at that recall or more (0 where none reaches it).
fn pr_on_grid(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    CURVE_GRID
        .iter()
        .map(|&recall| {
            let precision = points
                .iter()
                .filter(|p| p.0 + 1e-12 >= recall && p.1.is_finite())
                .map(|p| p.1)
                .fold(0.0, f64::max);
            (recall, precision)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest array in a JSON value.
    fn longest_array(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => items
                .iter()
                .map(longest_array)
                .max()
                .unwrap_or(0)
                .max(items.len()),
            serde_json::Value::Object(map) => map.values().map(longest_array).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn a_label_holders_report_holds_no_per_example_value() {
        // 400 test examples, scores that rank positives higher on the whole.
        let rows: Vec<u32> = (0..400).collect();
        let labels: Vec<i64> = (0..400).map(|i| i64::from(i % 3 == 0)).collect();
        let scores: Vec<f32> = labels
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| {
                let p = (0.3 + 0.4 * l as f32 + (i * 37 % 100) as f32 / 250.0).min(1.0);
                [1.0 - p, p]
            })
            .collect();
        let objective = Objective::CrossEntropy {
            classes: 2,
            class_weights: None,
        };
        let mut book = ScoreBook::default();
        book.record(Part::Test, &rows, scores, 0.0);
        let report = book.report(&objective, &Targets::Classes(labels));
        let json = serde_json::to_value(&report).unwrap();
        // Every array is at most the curve grid long: 400 labels cannot be read back from it.
        assert_eq!(longest_array(&json), CURVE_GRID.len(), "{json}");
        let curves = report.curves.unwrap();
        for curve in [&curves.roc, &curves.pr] {
            let at: Vec<f64> = curve.iter().map(|p| p.0).collect();
            assert_eq!(at, CURVE_GRID);
        }
        // Still the curves: the ROC rises to (1, 1), above the diagonal here.
        assert_eq!(curves.roc.last().unwrap().1, 1.0);
        assert!(curves.roc.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(curves.roc[4].1 > 0.2, "{:?}", curves.roc);
    }
}
