//! Feature pipelines: from a product's validated columns to the numbers a bottom model reads.
//!
//! A pipeline is fitted on training rows only (statistics of test rows must not leak into the
//! model) and saved with the model, so that inference transforms new rows exactly as training did.
//! Numeric columns become one standardized value each; categorical columns become an index into
//! an embedding table (0 is kept for values never seen in training) or a one-hot block.

use serde::{Deserialize, Serialize};

use crate::{DataError, DataProduct};

/// How one column becomes model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureKind {
    /// (x − mean) / std.
    Standardize,
    /// (x − median) / IQR: robust to heavy tails (the seed's `Amount`).
    RobustScale,
    /// sign(x)·ln(1 + |x|), then standardized: for money amounts spanning orders of magnitude.
    LogStandardize,
    /// The value unchanged.
    Passthrough,
    /// An index into an embedding table learned by the bottom model.
    Embedding,
    /// One 0/1 input per category seen in training.
    OneHot,
}

/// One column of a domain's feature list, as a job spec states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// The product's column.
    pub column: String,
    /// How the column becomes model input (fitted on training rows only).
    #[serde(default = "default_kind")]
    pub transform: FeatureKind,
    /// Embedding width (for `embedding`; default: min(16, ⌈1.6·cardinality^0.56⌉)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
}

fn default_kind() -> FeatureKind {
    FeatureKind::Standardize
}

impl FeatureSpec {
    pub fn new(column: impl Into<String>, transform: FeatureKind) -> Self {
        Self {
            column: column.into(),
            transform,
            dim: None,
        }
    }
}

/// A fitted transform of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FittedFeature {
    Numeric {
        column: String,
        log: bool,
        center: f64,
        scale: f64,
    },
    Embedding {
        column: String,
        /// Category values seen in training; index i+1 in the table (0 = unseen).
        vocabulary: Vec<String>,
        dim: usize,
    },
    OneHot {
        column: String,
        vocabulary: Vec<String>,
    },
}

/// A domain's fitted feature pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeaturePipeline {
    pub product: String,
    pub features: Vec<FittedFeature>,
}

/// Model input for a set of rows: a dense numeric block and one index column per embedding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeatureMatrix {
    pub rows: usize,
    /// Row-major `rows × numeric_width`.
    pub numeric: Vec<f32>,
    pub numeric_width: usize,
    /// Row-major `rows × embeddings.len()`.
    pub categorical: Vec<i64>,
    /// (table size, width) of each embedding, in column order.
    pub embeddings: Vec<(usize, usize)>,
}

impl FeatureMatrix {
    /// The rows `indices`, in that order.
    pub fn gather(&self, indices: &[u32]) -> FeatureMatrix {
        let mut out = FeatureMatrix {
            rows: indices.len(),
            numeric: Vec::with_capacity(indices.len() * self.numeric_width),
            numeric_width: self.numeric_width,
            categorical: Vec::with_capacity(indices.len() * self.embeddings.len()),
            embeddings: self.embeddings.clone(),
        };
        let (w, c) = (self.numeric_width, self.embeddings.len());
        for &i in indices {
            let i = i as usize;
            out.numeric
                .extend_from_slice(&self.numeric[i * w..(i + 1) * w]);
            out.categorical
                .extend_from_slice(&self.categorical[i * c..(i + 1) * c]);
        }
        out
    }

    /// Columns of several matrices side by side (the centralized baseline's input).
    pub fn concat_columns(parts: &[&FeatureMatrix]) -> FeatureMatrix {
        let rows = parts.first().map_or(0, |p| p.rows);
        assert!(
            parts.iter().all(|p| p.rows == rows),
            "all parts describe the same rows"
        );
        let numeric_width = parts.iter().map(|p| p.numeric_width).sum();
        let cats: usize = parts.iter().map(|p| p.embeddings.len()).sum();
        let mut out = FeatureMatrix {
            rows,
            numeric: Vec::with_capacity(rows * numeric_width),
            numeric_width,
            categorical: Vec::with_capacity(rows * cats),
            embeddings: parts.iter().flat_map(|p| p.embeddings.clone()).collect(),
        };
        for r in 0..rows {
            for p in parts {
                let w = p.numeric_width;
                out.numeric
                    .extend_from_slice(&p.numeric[r * w..(r + 1) * w]);
                let c = p.embeddings.len();
                out.categorical
                    .extend_from_slice(&p.categorical[r * c..(r + 1) * c]);
            }
        }
        out
    }

    /// Input width of the first dense layer given embedding widths.
    pub fn input_width(&self) -> usize {
        self.numeric_width + self.embeddings.iter().map(|e| e.1).sum::<usize>()
    }
}

impl FeaturePipeline {
    /// Fits every spec on the rows `train` of `product`.
    ///
    /// A column classified `restricted`/`confidential` or tagged `pii` is refused: such columns
    /// may join rows, never feed a model.
    pub fn fit(
        product: &DataProduct,
        specs: &[FeatureSpec],
        train: &[u32],
    ) -> Result<Self, DataError> {
        let name = product.name().to_string();
        let mut features = Vec::with_capacity(specs.len());
        for spec in specs {
            let property = product.contract.property(&spec.column).ok_or_else(|| {
                DataError::UnknownColumn {
                    product: name.clone(),
                    column: spec.column.clone(),
                }
            })?;
            if property.is_sensitive() {
                return Err(DataError::SensitiveFeature {
                    product: name.clone(),
                    column: spec.column.clone(),
                });
            }
            let fitted = match spec.transform {
                FeatureKind::Embedding | FeatureKind::OneHot => {
                    let values = product.column_strings(&spec.column)?;
                    let mut vocabulary: Vec<String> = train
                        .iter()
                        .filter_map(|&r| values[r as usize].clone())
                        .collect();
                    vocabulary.sort_unstable();
                    vocabulary.dedup();
                    if spec.transform == FeatureKind::OneHot {
                        FittedFeature::OneHot {
                            column: spec.column.clone(),
                            vocabulary,
                        }
                    } else {
                        let dim = spec
                            .dim
                            .unwrap_or_else(|| default_dim(vocabulary.len() + 1));
                        FittedFeature::Embedding {
                            column: spec.column.clone(),
                            vocabulary,
                            dim,
                        }
                    }
                }
                kind => {
                    let values = product.column_f64(&spec.column)?;
                    let log = kind == FeatureKind::LogStandardize;
                    let mut xs: Vec<f64> = train
                        .iter()
                        .filter_map(|&r| values[r as usize])
                        .map(|x| if log { signed_log1p(x) } else { x })
                        .collect();
                    let (center, scale) = match kind {
                        FeatureKind::Passthrough => (0.0, 1.0),
                        FeatureKind::RobustScale => robust_stats(&mut xs),
                        _ => mean_std(&xs),
                    };
                    FittedFeature::Numeric {
                        column: spec.column.clone(),
                        log,
                        center,
                        scale,
                    }
                }
            };
            features.push(fitted);
        }
        Ok(Self {
            product: name,
            features,
        })
    }

    /// Transforms every row of `product`. Missing numbers become the training center (0 after
    /// scaling); unseen categories become index 0 or an all-zero one-hot block.
    pub fn transform(&self, product: &DataProduct) -> Result<FeatureMatrix, DataError> {
        let rows = product.rows();
        let mut numeric_cols: Vec<Vec<f32>> = Vec::new();
        let mut categorical_cols: Vec<Vec<i64>> = Vec::new();
        let mut embeddings = Vec::new();
        for feature in &self.features {
            match feature {
                FittedFeature::Numeric {
                    column,
                    log,
                    center,
                    scale,
                } => {
                    let values = product.column_f64(column)?;
                    numeric_cols.push(
                        values
                            .iter()
                            .map(|v| match v {
                                Some(x) => {
                                    let x = if *log { signed_log1p(*x) } else { *x };
                                    ((x - center) / scale) as f32
                                }
                                None => 0.0,
                            })
                            .collect(),
                    );
                }
                FittedFeature::Embedding {
                    column,
                    vocabulary,
                    dim,
                } => {
                    let values = product.column_strings(column)?;
                    categorical_cols.push(
                        values
                            .iter()
                            .map(|v| category_index(vocabulary, v.as_deref()) as i64)
                            .collect(),
                    );
                    embeddings.push((vocabulary.len() + 1, *dim));
                }
                FittedFeature::OneHot { column, vocabulary } => {
                    let values = product.column_strings(column)?;
                    let indices: Vec<usize> = values
                        .iter()
                        .map(|v| category_index(vocabulary, v.as_deref()))
                        .collect();
                    for k in 1..=vocabulary.len() {
                        numeric_cols.push(indices.iter().map(|&i| (i == k) as u8 as f32).collect());
                    }
                }
            }
        }
        Ok(FeatureMatrix {
            rows,
            numeric: interleave(&numeric_cols, rows),
            numeric_width: numeric_cols.len(),
            categorical: interleave(&categorical_cols, rows),
            embeddings,
        })
    }

    /// Saves the pipeline as JSON beside a model.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a pipeline always serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, DataError> {
        serde_json::from_str(text).map_err(|e| DataError::Invalid(format!("feature pipeline: {e}")))
    }
}

fn interleave<T: Copy + Default>(columns: &[Vec<T>], rows: usize) -> Vec<T> {
    let width = columns.len();
    let mut out = vec![T::default(); rows * width];
    for (c, column) in columns.iter().enumerate() {
        for (r, &v) in column.iter().enumerate() {
            out[r * width + c] = v;
        }
    }
    out
}

fn category_index(vocabulary: &[String], value: Option<&str>) -> usize {
    value
        .and_then(|v| vocabulary.binary_search_by(|x| x.as_str().cmp(v)).ok())
        .map_or(0, |i| i + 1)
}

/// The fastai rule of thumb for embedding width, capped at 16 for tabular columns.
fn default_dim(cardinality: usize) -> usize {
    ((1.6 * (cardinality as f64).powf(0.56)).ceil() as usize).clamp(2, 16)
}

fn signed_log1p(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 1.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    (mean, if std > 1e-12 { std } else { 1.0 })
}

fn robust_stats(xs: &mut [f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 1.0);
    }
    xs.sort_unstable_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (xs.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64)
    };
    let iqr = q(0.75) - q(0.25);
    (q(0.5), if iqr > 1e-12 { iqr } else { 1.0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataContract;
    use crate::product::text_table;

    fn product() -> DataProduct {
        let contract = DataContract::from_yaml(
            r#"
apiVersion: v3.1.0
kind: DataContract
id: t
version: 1.0.0
status: active
schema:
  - name: t
    properties:
      - { name: id, logicalType: integer, classification: restricted }
      - { name: amount, logicalType: number }
      - { name: colour, logicalType: string }
"#,
        )
        .unwrap();
        let rows: Vec<Vec<String>> = [
            ["1", "10", "red"],
            ["2", "20", "blue"],
            ["3", "30", "red"],
            ["4", "1000", "green"],
        ]
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect();
        let table = text_table("mem", &["id", "amount", "colour"], &rows);
        DataProduct::from_source(contract, &table).unwrap()
    }

    #[test]
    fn fits_on_training_rows_only() {
        let p = product();
        let specs = [
            FeatureSpec::new("amount", FeatureKind::Standardize),
            FeatureSpec::new("colour", FeatureKind::Embedding),
        ];
        let pipeline = FeaturePipeline::fit(&p, &specs, &[0, 1, 2]).unwrap();
        let m = pipeline.transform(&p).unwrap();
        // mean 20 and std sqrt(200/3) of rows 0..3; row 3 (test) does not move them.
        let std = (200.0f64 / 3.0).sqrt();
        assert!((m.numeric[0] as f64 - (-10.0 / std)).abs() < 1e-6);
        assert!((m.numeric[3] as f64 - (980.0 / std)).abs() < 1e-3);
        // "green" was never seen in training: index 0.
        assert_eq!(m.categorical, vec![2, 1, 2, 0]);
        assert_eq!(m.embeddings[0].0, 3);
        let again = FeaturePipeline::from_json(&pipeline.to_json()).unwrap();
        assert_eq!(again, pipeline);
    }

    #[test]
    fn refuses_a_restricted_column_as_feature() {
        let p = product();
        let err = FeaturePipeline::fit(
            &p,
            &[FeatureSpec::new("id", FeatureKind::Standardize)],
            &[0],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`id`") && err.contains("restricted"), "{err}");
    }

    #[test]
    fn one_hot_and_gather() {
        let p = product();
        let specs = [FeatureSpec::new("colour", FeatureKind::OneHot)];
        let m = FeaturePipeline::fit(&p, &specs, &[0, 1, 2, 3])
            .unwrap()
            .transform(&p)
            .unwrap();
        assert_eq!(m.numeric_width, 3); // blue, green, red
        let g = m.gather(&[3, 0]);
        assert_eq!(g.numeric, vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    }
}
