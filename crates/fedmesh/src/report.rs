//! The comparison table and the report (Markdown with SVG charts).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use fedmesh_split::Metrics;
use fedmesh_split::job::RunResult;
use plotters::prelude::*;

use crate::run::Results;

/// Mean and sample standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if n == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    let var = if n > 1.0 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Configurations in the order they were run.
fn configs(results: &Results) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for run in &results.runs {
        if !names.contains(&run.config.as_str()) {
            names.push(&run.config);
        }
    }
    names
}

fn runs_of<'a>(results: &'a Results, config: &str) -> Vec<&'a RunResult> {
    results.runs.iter().filter(|r| r.config == config).collect()
}

fn cell(runs: &[&RunResult], metric: impl Fn(&RunResult) -> f64) -> String {
    let values: Vec<f64> = runs.iter().map(|r| metric(r)).collect();
    let (mean, std) = mean_std(&values);
    // Four decimals for scores and seconds; whole units for errors in a target's own large
    // units (an RMSE of 95,262 NT$ gains nothing from .3552).
    let places = if mean.abs() >= 1000.0 { 0 } else { 4 };
    if values.len() > 1 {
        format!("{mean:.places$} ± {std:.places$}")
    } else {
        format!("{mean:.places$}")
    }
}

/// The comparison table, one row per configuration, mean ± std over seeds.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let binary = results
        .runs
        .first()
        .is_some_and(|r| matches!(r.metrics, Metrics::Binary(_)));
    let ranking = results
        .runs
        .first()
        .is_some_and(|r| matches!(r.metrics, Metrics::Ranking(_)));
    let regression = results
        .runs
        .first()
        .is_some_and(|r| matches!(r.metrics, Metrics::Regression(_)));
    let multiclass = results
        .runs
        .first()
        .is_some_and(|r| matches!(r.metrics, Metrics::MultiClass(_)));
    let headline = results
        .runs
        .first()
        .map_or("headline", |r| r.metrics.headline_name());
    let seeds = results
        .runs
        .first()
        .map_or(0, |r| runs_of(results, &r.config).len());
    // A horizontal job sends no cut layer: its last column is the time of a round (of an
    // epoch, for the centralized baseline).
    let horizontal = results.runs.iter().any(|r| r.federation.is_some());
    let last = if horizontal {
        "s/round"
    } else {
        "cut-layer MB"
    };
    let _ = writeln!(
        out,
        "{} — {} runs, {} seed(s) each, test rows: {}",
        results.example,
        results.runs.len(),
        seeds,
        results.test_rows
    );
    if binary {
        let _ = writeln!(
            out,
            "| configuration | ROC-AUC | PR-AUC | F1 (valid. threshold) | F1 @0.5 | hard-label AUC | train s | {last} |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    } else if ranking {
        let _ = writeln!(
            out,
            "| configuration | HR@10 | NDCG@10 | train s | examples/s |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
    } else if regression {
        let _ = writeln!(
            out,
            "| configuration | RMSE | MAE | R² | train s | {last} |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
    } else if multiclass {
        let _ = writeln!(
            out,
            "| configuration | accuracy | macro F1 | train s | {last} |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
    } else {
        let _ = writeln!(out, "| configuration | {headline} | train s | {last} |");
        let _ = writeln!(out, "|---|---|---|---|");
    }
    for config in configs(results) {
        let runs = runs_of(results, config);
        let seconds = cell(&runs, |r| r.train_seconds);
        let mb = if horizontal {
            cell(&runs, |r| r.train_seconds / r.history.len().max(1) as f64)
        } else {
            cell(&runs, |r| r.cut_layer_bytes as f64 / 1e6)
        };
        if binary {
            let b = |f: fn(&fedmesh_model::BinaryMetrics) -> f64| {
                move |r: &RunResult| match &r.metrics {
                    Metrics::Binary(m) => f(m),
                    _ => f64::NAN,
                }
            };
            let _ = writeln!(
                out,
                "| {config} | {} | {} | {} | {} | {} | {seconds} | {mb} |",
                cell(&runs, b(|m| m.roc_auc)),
                cell(&runs, b(|m| m.pr_auc)),
                cell(&runs, b(|m| m.f1)),
                cell(&runs, b(|m| m.f1_at_0_5)),
                cell(&runs, b(|m| m.hard_label_auc)),
            );
        } else if regression {
            let r = |f: fn(&fedmesh_model::metrics::RegressionMetrics) -> f64| {
                move |run: &RunResult| match &run.metrics {
                    Metrics::Regression(m) => f(m),
                    _ => f64::NAN,
                }
            };
            let _ = writeln!(
                out,
                "| {config} | {} | {} | {} | {seconds} | {mb} |",
                cell(&runs, r(|m| m.rmse)),
                cell(&runs, r(|m| m.mae)),
                cell(&runs, r(|m| m.r2)),
            );
        } else if multiclass {
            let m = |f: fn(&fedmesh_model::metrics::MultiClassMetrics) -> f64| {
                move |run: &RunResult| match &run.metrics {
                    Metrics::MultiClass(m) => f(m),
                    _ => f64::NAN,
                }
            };
            let _ = writeln!(
                out,
                "| {config} | {} | {} | {seconds} | {mb} |",
                cell(&runs, m(|m| m.accuracy)),
                cell(&runs, m(|m| m.macro_f1)),
            );
        } else if ranking {
            let ndcg = |r: &RunResult| r.metrics.ranking().map_or(f64::NAN, |m| m.ndcg);
            let _ = writeln!(
                out,
                "| {config} | {} | {} | {seconds} | {:.0} |",
                cell(&runs, |r| r.metrics.headline()),
                cell(&runs, ndcg),
                mean_std(
                    &runs
                        .iter()
                        .map(|r| r.samples_per_second)
                        .collect::<Vec<_>>()
                )
                .0
            );
        } else {
            let _ = writeln!(
                out,
                "| {config} | {} | {seconds} | {mb} |",
                cell(&runs, |r| r.metrics.headline())
            );
        }
    }
    out
}

/// Writes `report.md` with the table and the charts beside it.
pub fn write(out: &Path, results: &Results) -> Result<()> {
    let mut md = format!(
        "# {}\n\n{}\n\nData: {} — {} rows ({} train, {} validation, {} test).\n\n{}\n",
        results.example,
        results.description,
        results.source,
        results.rows,
        results.train_rows,
        results.valid_rows,
        results.test_rows,
        table(results)
    );
    if results.runs.is_empty() {
        std::fs::write(out.join("report.md"), md)?;
        return Ok(());
    }
    // The first seed of each configuration.
    let firsts: Vec<&RunResult> = configs(results)
        .into_iter()
        .map(|c| runs_of(results, c)[0])
        .collect();
    let loss: Vec<(String, Vec<(f64, f64)>)> = firsts
        .iter()
        .map(|r| {
            (
                r.config.clone(),
                r.history
                    .iter()
                    .map(|e| (e.epoch as f64, e.train_loss))
                    .collect(),
            )
        })
        .collect();
    chart(
        &out.join("loss.svg"),
        "training loss per epoch",
        "epoch",
        "loss",
        &loss,
    )?;
    md.push_str("\n![training loss](loss.svg)\n");
    let curves: Vec<_> = firsts
        .iter()
        .filter_map(|r| Some((r, r.curves.as_ref()?)))
        .collect();
    if !curves.is_empty() {
        let roc: Vec<_> = curves
            .iter()
            .map(|(r, c)| (r.config.clone(), c.roc.clone()))
            .collect();
        chart(
            &out.join("roc.svg"),
            "ROC (test)",
            "false-positive rate",
            "true-positive rate",
            &roc,
        )?;
        let pr: Vec<_> = curves
            .iter()
            .map(|(r, c)| (r.config.clone(), c.pr.clone()))
            .collect();
        chart(
            &out.join("pr.svg"),
            "precision–recall (test)",
            "recall",
            "precision",
            &pr,
        )?;
        md.push_str("\n![ROC curves](roc.svg)\n\n![precision-recall curves](pr.svg)\n");
    }
    std::fs::write(out.join("report.md"), md)?;
    Ok(())
}

fn chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let points = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 >= x1 {
        x1 = x0 + 1.0;
    }
    if y0 >= y1 {
        y1 = y0 + 1.0;
    }
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()?;
    for (i, (name, data)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_model::metrics::{MultiClassMetrics, RegressionMetrics};

    fn results(metrics: Vec<Metrics>) -> Results {
        let runs = metrics
            .into_iter()
            .enumerate()
            .map(|(k, metrics)| RunResult {
                config: "split-label-owner".into(),
                seed: k as u64 + 1,
                metrics,
                train_rows: 10,
                valid_rows: 2,
                test_rows: 4,
                train_seconds: 1.0,
                cut_layer_bytes: 0,
                samples_per_second: 10.0,
                history: Vec::new(),
                kept_epoch: None,
                curves: None,
                model_files: Vec::new(),
                wire: None,
                alignment: None,
                federation: None,
                test_scores: Vec::new(),
            })
            .collect();
        Results {
            example: "t".into(),
            description: String::new(),
            source: "mem".into(),
            rows: 16,
            train_rows: 10,
            valid_rows: 2,
            test_rows: 4,
            interactions: None,
            runs,
        }
    }

    #[test]
    fn a_regression_and_a_multiclass_table_name_each_metric() {
        let regression = results(vec![
            Metrics::Regression(RegressionMetrics {
                rmse: 2.0,
                mae: 1.5,
                r2: 0.6,
            }),
            Metrics::Regression(RegressionMetrics {
                rmse: 4.0,
                mae: 2.5,
                r2: 0.4,
            }),
        ]);
        let shown = table(&regression);
        assert!(
            shown.contains("| configuration | RMSE | MAE | R² |"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "| split-label-owner | 3.0000 ± 1.4142 | 2.0000 ± 0.7071 | 0.5000 ± 0.1414 |"
            ),
            "{shown}"
        );
        let multiclass = results(vec![Metrics::MultiClass(MultiClassMetrics {
            accuracy: 0.9,
            macro_f1: 0.8,
        })]);
        let shown = table(&multiclass);
        assert!(shown.contains("| accuracy | macro F1 |"), "{shown}");
        assert!(shown.contains("| 0.9000 | 0.8000 |"), "{shown}");
    }
}
