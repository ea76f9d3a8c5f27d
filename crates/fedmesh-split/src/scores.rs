//! Evaluation where the labels are: scores are collected batch by batch and turned into
//! metrics by the party that holds the labels — governance with label sharing, the label owner
//! without. Only the aggregate [`EvaluationReport`] leaves that party.

use fedmesh_model::metrics::{self, BinaryMetrics, MultiClassMetrics, RegressionMetrics};
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

/// Points of the ROC and PR curves of a binary test set (at most ~200 each), for reports.
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
            let m = BinaryMetrics::compute(&test_scores, &positive, &valid_scores, &valid_positive);
            let curves = Curves {
                roc: thin(metrics::roc_points(&test_scores, &positive)),
                pr: thin(
                    metrics::pr_points(&test_scores, &positive)
                        .into_iter()
                        .map(|p| (p.recall, p.precision))
                        .collect(),
                ),
            };
            (Metrics::Binary(Box::new(m)), Some(curves))
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

/// Keeps at most ~200 evenly spaced points, first and last included.
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    const MAX: usize = 200;
    if points.len() <= MAX {
        return points;
    }
    let step = points.len() as f64 / (MAX - 1) as f64;
    let mut out: Vec<(f64, f64)> = (0..MAX - 1)
        .map(|i| points[(i as f64 * step) as usize])
        .collect();
    out.push(*points.last().expect("non-empty"));
    out
}
