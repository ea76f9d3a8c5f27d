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
    /// The categories of an `embedding` or `one-hot` column, when the job fixes them rather
    /// than taking those seen in training; any other value is "unseen". A horizontal job must
    /// list them: its domains share one model, so they must agree on what each index means
    /// without showing each other their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<Category>>,
}

/// One category of a column, as a job spec lists it (`1`, `"gold"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Category {
    Integer(i64),
    Text(String),
}

impl Category {
    /// The category as a column's values read as text.
    pub fn as_text(&self) -> String {
        match self {
            Category::Integer(i) => i.to_string(),
            Category::Text(t) => t.clone(),
        }
    }
}

/// Count, sum and sum of squares of a numeric feature's training values (after its logarithm,
/// if any): all a mean and a standard deviation need, and what adds up across domains that hold
/// different rows of the same columns (a horizontal job's pipeline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NumericSums {
    pub count: f64,
    pub sum: f64,
    pub sum_of_squares: f64,
}

/// Both domains' rows together.
impl std::ops::Add for NumericSums {
    type Output = NumericSums;
    fn add(self, other: NumericSums) -> NumericSums {
        NumericSums {
            count: self.count + other.count,
            sum: self.sum + other.sum,
            sum_of_squares: self.sum_of_squares + other.sum_of_squares,
        }
    }
}

impl NumericSums {
    pub fn of(xs: &[f64]) -> NumericSums {
        NumericSums {
            count: xs.len() as f64,
            sum: xs.iter().sum(),
            sum_of_squares: xs.iter().map(|x| x * x).sum(),
        }
    }

    /// Mean and standard deviation as [`FeaturePipeline::fit`] computes them from the values.
    fn mean_std(&self) -> (f64, f64) {
        if self.count.is_nan() || self.count <= 0.0 {
            return (0.0, 1.0);
        }
        let mean = self.sum / self.count;
        let var = (self.sum_of_squares / self.count - mean * mean).max(0.0);
        let std = var.sqrt();
        (mean, if std > 1e-12 { std } else { 1.0 })
    }
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
            categories: None,
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

    /// The rows of several matrices of the same columns, one after another (the rows of a
    /// horizontal job's domains, pooled for the centralized baseline); `None` when they differ in
    /// columns.
    pub fn stack_rows(parts: &[&FeatureMatrix]) -> Option<FeatureMatrix> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.numeric_width != first.numeric_width || p.embeddings != first.embeddings)
        {
            return None;
        }
        Some(FeatureMatrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            numeric: parts
                .iter()
                .flat_map(|p| p.numeric.iter().copied())
                .collect(),
            numeric_width: first.numeric_width,
            categorical: parts
                .iter()
                .flat_map(|p| p.categorical.iter().copied())
                .collect(),
            embeddings: first.embeddings.clone(),
        })
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
        let mut features = Vec::with_capacity(specs.len());
        for spec in specs {
            check_feature(product, spec)?;
            let fitted = match spec.transform {
                FeatureKind::Embedding | FeatureKind::OneHot => {
                    let vocabulary = match &spec.categories {
                        Some(categories) => listed(categories),
                        None => {
                            let values = product.column_strings(&spec.column)?;
                            let mut seen: Vec<String> = train
                                .iter()
                                .filter_map(|&r| values[r as usize].clone())
                                .collect();
                            seen.sort_unstable();
                            seen.dedup();
                            seen
                        }
                    };
                    categorical(spec, vocabulary)
                }
                kind => {
                    let mut xs = numeric_values(product, spec, train)?;
                    let (center, scale) = match kind {
                        FeatureKind::Passthrough => (0.0, 1.0),
                        FeatureKind::RobustScale => robust_stats(&mut xs),
                        _ => mean_std(&xs),
                    };
                    numeric(spec, center, scale)
                }
            };
            features.push(fitted);
        }
        Ok(Self {
            product: product.name().to_string(),
            features,
        })
    }

    /// Each feature's [`NumericSums`] over the rows `train` (all zero for a categorical one): what
    /// a domain of a horizontal job contributes to the pipeline every domain applies.
    pub fn numeric_sums(
        product: &DataProduct,
        specs: &[FeatureSpec],
        train: &[u32],
    ) -> Result<Vec<NumericSums>, DataError> {
        specs
            .iter()
            .map(|spec| {
                check_feature(product, spec)?;
                Ok(match spec.transform {
                    FeatureKind::Embedding | FeatureKind::OneHot => NumericSums::default(),
                    _ => NumericSums::of(&numeric_values(product, spec, train)?),
                })
            })
            .collect()
    }

    /// The pipeline of a horizontal job, the same at every domain: numeric features scaled by
    /// `sums` (every domain's [`NumericSums`] added up), categorical ones indexed by the
    /// categories the spec lists. Equal to [`FeaturePipeline::fit`] on all domains' training
    /// rows together, except for `robust-scale`, whose quantiles no sum gives: it is refused.
    pub fn from_sums(
        product: &DataProduct,
        specs: &[FeatureSpec],
        sums: &[NumericSums],
    ) -> Result<Self, DataError> {
        if sums.len() != specs.len() {
            return Err(DataError::Invalid(format!(
                "{} feature sums for {} features",
                sums.len(),
                specs.len()
            )));
        }
        let mut features = Vec::with_capacity(specs.len());
        for (spec, sums) in specs.iter().zip(sums) {
            check_feature(product, spec)?;
            features.push(match spec.transform {
                FeatureKind::Embedding | FeatureKind::OneHot => {
                    let categories = spec.categories.as_ref().ok_or_else(|| {
                        DataError::Invalid(format!(
                            "feature `{}` is a category index: a horizontal job lists its `categories`, since the domains share one model and must agree on what each index means",
                            spec.column
                        ))
                    })?;
                    categorical(spec, listed(categories))
                }
                FeatureKind::RobustScale => {
                    return Err(DataError::Invalid(format!(
                        "feature `{}` is robust-scaled: its median and quartiles need every domain's values in one place; use `standardize` or `log-standardize` in a horizontal job",
                        spec.column
                    )));
                }
                FeatureKind::Passthrough => numeric(spec, 0.0, 1.0),
                _ => {
                    let (center, scale) = sums.mean_std();
                    numeric(spec, center, scale)
                }
            });
        }
        Ok(Self {
            product: product.name().to_string(),
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

    /// The model input [`FeaturePipeline::transform`] gives: the numeric width and each
    /// embedding's (table size, width), known without any row.
    pub fn shape(&self) -> (usize, Vec<(usize, usize)>) {
        let mut numeric = 0;
        let mut embeddings = Vec::new();
        for feature in &self.features {
            match feature {
                FittedFeature::Numeric { .. } => numeric += 1,
                FittedFeature::Embedding {
                    vocabulary, dim, ..
                } => {
                    embeddings.push((vocabulary.len() + 1, *dim));
                }
                FittedFeature::OneHot { vocabulary, .. } => numeric += vocabulary.len(),
            }
        }
        (numeric, embeddings)
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

/// A column a model may read: one of the product's, and not a sensitive one.
fn check_feature(product: &DataProduct, spec: &FeatureSpec) -> Result<(), DataError> {
    let property =
        product
            .contract
            .property(&spec.column)
            .ok_or_else(|| DataError::UnknownColumn {
                product: product.name().to_string(),
                column: spec.column.clone(),
            })?;
    if property.is_sensitive() {
        return Err(DataError::SensitiveFeature {
            product: product.name().to_string(),
            column: spec.column.clone(),
        });
    }
    Ok(())
}

/// The training values of a numeric feature, after its logarithm if it takes one.
fn numeric_values(
    product: &DataProduct,
    spec: &FeatureSpec,
    train: &[u32],
) -> Result<Vec<f64>, DataError> {
    let values = product.column_f64(&spec.column)?;
    let log = spec.transform == FeatureKind::LogStandardize;
    Ok(train
        .iter()
        .filter_map(|&r| values[r as usize])
        .map(|x| if log { signed_log1p(x) } else { x })
        .collect())
}

fn numeric(spec: &FeatureSpec, center: f64, scale: f64) -> FittedFeature {
    FittedFeature::Numeric {
        column: spec.column.clone(),
        log: spec.transform == FeatureKind::LogStandardize,
        center,
        scale,
    }
}

fn categorical(spec: &FeatureSpec, vocabulary: Vec<String>) -> FittedFeature {
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

/// A spec's categories as a sorted vocabulary (lookups are binary searches).
fn listed(categories: &[Category]) -> Vec<String> {
    let mut vocabulary: Vec<String> = categories.iter().map(Category::as_text).collect();
    vocabulary.sort_unstable();
    vocabulary.dedup();
    vocabulary
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

    /// A horizontal job's pipeline, from sums two domains add up, is the one fitted on both
    /// domains' training rows in one place; a categorical column needs its categories listed, and
    /// robust scaling (quantiles) is refused.
    #[test]
    fn sums_from_two_domains_give_the_pipeline_fitted_on_their_rows_together() {
        let p = product();
        let mut colour = FeatureSpec::new("colour", FeatureKind::Embedding);
        let specs = vec![
            FeatureSpec::new("amount", FeatureKind::Standardize),
            FeatureSpec::new("amount", FeatureKind::LogStandardize),
            colour.clone(),
        ];
        let (a, b) = (p.take_rows(&[0, 1]).unwrap(), p.take_rows(&[2, 3]).unwrap());
        let sums =
            |part: &DataProduct| FeaturePipeline::numeric_sums(part, &specs, &[0, 1]).unwrap();
        let total: Vec<NumericSums> = sums(&a)
            .into_iter()
            .zip(sums(&b))
            .map(|(x, y)| x + y)
            .collect();
        let error = FeaturePipeline::from_sums(&a, &specs, &total)
            .unwrap_err()
            .to_string();
        assert!(error.contains("lists its `categories`"), "{error}");
        colour.categories = Some(vec![
            Category::Text("red".into()),
            Category::Text("blue".into()),
            Category::Text("green".into()),
        ]);
        let specs = vec![specs[0].clone(), specs[1].clone(), colour];
        let federated = FeaturePipeline::from_sums(&a, &specs, &total).unwrap();
        let pooled = FeaturePipeline::fit(&p, &specs, &[0, 1, 2, 3]).unwrap();
        for (f, c) in federated.features.iter().zip(&pooled.features) {
            match (f, c) {
                (
                    FittedFeature::Numeric {
                        center: cf,
                        scale: sf,
                        ..
                    },
                    FittedFeature::Numeric {
                        center: cc,
                        scale: sc,
                        ..
                    },
                ) => {
                    assert!((cf - cc).abs() < 1e-9 * cc.abs().max(1.0), "{cf} {cc}");
                    assert!((sf - sc).abs() < 1e-9 * sc.abs().max(1.0), "{sf} {sc}");
                }
                (f, c) => assert_eq!(f, c),
            }
        }
        // Domain b transforms its rows as the pooled pipeline transforms them.
        let mine = federated.transform(&b).unwrap();
        let all = pooled.transform(&p).unwrap().gather(&[2, 3]);
        assert_eq!(mine.embeddings, all.embeddings);
        assert_eq!(mine.categorical, all.categorical);
        for (x, y) in mine.numeric.iter().zip(&all.numeric) {
            assert!((x - y).abs() < 1e-6);
        }
        let robust = vec![FeatureSpec::new("amount", FeatureKind::RobustScale)];
        let error = FeaturePipeline::from_sums(&a, &robust, &total[..1])
            .unwrap_err()
            .to_string();
        assert!(error.contains("robust-scaled"), "{error}");
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
