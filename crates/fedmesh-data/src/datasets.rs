//! Readers and generators for the shipped use cases.
//!
//! Real data is read where the user keeps it; when it is absent, the examples run on generated
//! data of the same schema, so that every command works on a fresh machine.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{DataError, SourceTable};

/// The Kaggle ULB credit-card fraud data: `Time, V1..V28, Amount, Class`.
pub mod fraud {
    use super::*;

    /// Rows and columns of the published `creditcard.csv`.
    pub const FULL_SHAPE: (usize, usize) = (284_807, 31);

    /// The column names in file order.
    pub fn columns() -> Vec<String> {
        let mut names = vec!["Time".to_string()];
        names.extend((1..=28).map(|i| format!("V{i}")));
        names.push("Amount".into());
        names.push("Class".into());
        names
    }

    /// Checks that a file given as the real data is the published one: 284,807 rows of the 31
    /// named columns.
    pub fn check_shape(table: &SourceTable) -> Result<(), DataError> {
        let schema = table.batch.schema();
        for name in columns() {
            if schema.index_of(&name).is_err() {
                return Err(DataError::Invalid(format!(
                    "{} is not the Kaggle ULB creditcard.csv: column `{name}` is missing",
                    table.origin
                )));
            }
        }
        let shape = (table.batch.num_rows(), table.batch.num_columns());
        if shape != FULL_SHAPE {
            return Err(DataError::Invalid(format!(
                "{} has {} rows × {} columns; the Kaggle ULB creditcard.csv has {} × {}",
                table.origin, shape.0, shape.1, FULL_SHAPE.0, FULL_SHAPE.1
            )));
        }
        Ok(())
    }

    /// Positive rate of the generated data (the real data has 0.173 %).
    pub const POSITIVE_RATE: f64 = 0.002;

    /// Deterministic synthetic data of the same schema. Fraud shifts a few columns of every
    /// domain — digital (V1–V4), retail (V10, V12, V14, V17), fraud-prevention (V20–V23 and
    /// Amount) — each by about the same amount, so that each domain alone separates the classes
    /// only partly and the three together clearly better.
    pub fn generate(rows: usize, seed: u64) -> SourceTable {
        generate_with_rate(rows, seed, POSITIVE_RATE)
    }

    /// [`generate`] with another share of fraud (tests that need many positives).
    pub fn generate_with_rate(rows: usize, seed: u64, positive_rate: f64) -> SourceTable {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // About 2 standard deviations of shift per domain: each domain alone reaches a ROC-AUC
        // near 0.9, the three together near 0.99.
        let shifts: [(usize, f64); 12] = [
            (1, -1.15),
            (2, 1.0),
            (3, -1.1),
            (4, 0.95),
            (10, -1.1),
            (12, -1.15),
            (14, -1.0),
            (17, -0.95),
            (20, 0.95),
            (21, 0.9),
            (22, -0.95),
            (23, 0.8),
        ];
        let mut time = Vec::with_capacity(rows);
        let mut v: Vec<Vec<f64>> = (0..28).map(|_| Vec::with_capacity(rows)).collect();
        let mut amount = Vec::with_capacity(rows);
        let mut class = Vec::with_capacity(rows);
        for _ in 0..rows {
            let fraud = rng.random_bool(positive_rate.clamp(0.0, 1.0));
            time.push((rng.random::<f64>() * 172_792.0).floor());
            for (j, column) in v.iter_mut().enumerate() {
                let mut x = normal(&mut rng);
                if fraud {
                    if let Some((_, s)) = shifts.iter().find(|(c, _)| *c == j + 1) {
                        x += s;
                    }
                    // Fraud is also more spread on V7 and V15: a signal a linear model misses.
                    if j + 1 == 7 || j + 1 == 15 {
                        x *= 1.8;
                    }
                }
                column.push(x);
            }
            let log_amount = 3.0 + 1.2 * normal(&mut rng) + if fraud { 0.6 } else { 0.0 };
            amount.push((log_amount.exp() * 100.0).round() / 100.0);
            class.push(fraud as i64);
        }
        let mut fields = vec![Field::new("Time", DataType::Float64, false)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(Float64Array::from(time))];
        for (j, column) in v.into_iter().enumerate() {
            fields.push(Field::new(format!("V{}", j + 1), DataType::Float64, false));
            arrays.push(Arc::new(Float64Array::from(column)));
        }
        fields.push(Field::new("Amount", DataType::Float64, false));
        arrays.push(Arc::new(Float64Array::from(amount)));
        fields.push(Field::new("Class", DataType::Int64, false));
        arrays.push(Arc::new(Int64Array::from(class)));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .expect("generated columns agree");
        SourceTable::from_batch(
            format!("synthetic fraud data ({rows} rows, seed {seed})"),
            batch,
        )
    }
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Reads a list of keys, one per line (`#` comments and blank lines ignored), e.g. the standard
/// test split `uci-credit/test-ids.txt`.
pub fn read_key_list(path: &Path) -> Result<HashSet<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// One domain's product derived from a public table, for examples: real meshes have products
/// that overlap without matching, and the examples' public datasets come as one table.
///
/// Every entity (row of `source`) is held by all domains with probability `shared`; any other
/// entity by each domain with probability 1/2, drawn per domain. The domain's rows come in an
/// order of its own. Where `source` lacks the key column `key`, it is numbered from 1 in the
/// source's row order (the Kaggle fraud table has no transaction id). Deterministic in `seed`
/// and `domain` (the domain's position in the job), so every node derives its own product alone.
pub fn example_product(
    source: &SourceTable,
    key: &str,
    domain: usize,
    shared: f64,
    seed: u64,
) -> Result<SourceTable, DataError> {
    use rand::seq::SliceRandom;
    let rows = source.batch.num_rows();
    let mut everyone = ChaCha8Rng::seed_from_u64(seed);
    let mut own = ChaCha8Rng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15 ^ domain as u64));
    let mut kept: Vec<u32> = (0..rows as u32)
        .filter(|_| {
            let common = everyone.random::<f64>() < shared;
            // Drawn for every row, so that each domain's draws line up with the same rows.
            let mine = own.random::<bool>();
            common || mine
        })
        .collect();
    kept.shuffle(&mut own);
    let mut batch = source.batch.clone();
    if batch.schema().index_of(key).is_err() {
        let numbers: ArrayRef = Arc::new(Int64Array::from_iter_values(1..=rows as i64));
        let mut fields: Vec<Field> = vec![Field::new(key, DataType::Int64, false)];
        fields.extend(batch.schema().fields().iter().map(|f| f.as_ref().clone()));
        let mut columns = vec![numbers];
        columns.extend(batch.columns().iter().cloned());
        batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
            DataError::Invalid(format!("numbering the rows of {}: {e}", source.origin))
        })?;
    }
    take(&SourceTable::from_batch(source.origin.clone(), batch), kept)
}

/// The rows of `source` whose `column` reads as one of `values`, in the source's order: one
/// domain's product in a horizontal example split by a natural attribute (a region, a branch, a
/// level of education).
pub fn rows_where(
    source: &SourceTable,
    column: &str,
    values: &[String],
) -> Result<SourceTable, DataError> {
    let index = source.batch.schema().index_of(column).map_err(|_| {
        DataError::Invalid(format!(
            "{} has no column `{column}` to divide its rows by",
            source.origin
        ))
    })?;
    let wanted: HashSet<&str> = values.iter().map(String::as_str).collect();
    let rows: Vec<u32> = crate::product::column_as_strings(source.batch.column(index))
        .iter()
        .enumerate()
        .filter(|(_, v)| v.as_deref().is_some_and(|v| wanted.contains(v)))
        .map(|(r, _)| r as u32)
        .collect();
    take(source, rows)
}

/// One domain's rows when each class's rows are dealt to `domains` domains in proportions drawn
/// from a symmetric Dirichlet(`alpha`), the label-skew partition of Hsu et al. 2019 (small
/// `alpha`: each domain sees mostly some classes). Every row goes to exactly one domain;
/// deterministic in `seed`, so every node derives its own rows alone.
pub fn label_skewed_rows(
    source: &SourceTable,
    label: &str,
    domains: usize,
    domain: usize,
    alpha: f64,
    seed: u64,
) -> Result<SourceTable, DataError> {
    use rand::seq::SliceRandom;
    let index = source.batch.schema().index_of(label).map_err(|_| {
        DataError::Invalid(format!("{} has no label column `{label}`", source.origin))
    })?;
    let values = crate::product::column_as_strings(source.batch.column(index));
    let mut classes: Vec<&str> = values.iter().filter_map(|v| v.as_deref()).collect();
    classes.sort_unstable();
    classes.dedup();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut mine = Vec::new();
    for class in classes {
        let mut rows: Vec<u32> = (0..values.len() as u32)
            .filter(|&r| values[r as usize].as_deref() == Some(class))
            .collect();
        rows.shuffle(&mut rng);
        let shares: Vec<f64> = (0..domains).map(|_| gamma(alpha, &mut rng)).collect();
        let total: f64 = shares.iter().sum();
        // Cumulative cut points, so that the domains' slices cover the class exactly once.
        let cut = |d: usize| -> usize {
            let before: f64 = shares[..d].iter().sum();
            ((before / total) * rows.len() as f64).round() as usize
        };
        let (start, end) = (
            cut(domain),
            if domain + 1 == domains {
                rows.len()
            } else {
                cut(domain + 1)
            },
        );
        mine.extend_from_slice(&rows[start..end.max(start)]);
    }
    mine.sort_unstable();
    take(source, mine)
}

/// A Gamma(`shape`, 1) draw (Marsaglia and Tsang 2000), for Dirichlet proportions.
fn gamma(shape: f64, rng: &mut ChaCha8Rng) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

fn take(source: &SourceTable, rows: Vec<u32>) -> Result<SourceTable, DataError> {
    let indices = arrow::array::UInt32Array::from(rows);
    let batch = arrow::compute::take_record_batch(&source.batch, &indices)
        .map_err(|e| DataError::Invalid(format!("{}: {e}", source.origin)))?;
    Ok(SourceTable::from_batch(source.origin.clone(), batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label-skew partition gives every row to exactly one domain, and a small alpha skews
    /// the domains' class mixes apart.
    #[test]
    fn label_skewed_domains_cover_every_row_once_with_different_class_mixes() {
        let rows: Vec<Vec<String>> = (0..2000)
            .map(|i| vec![i.to_string(), (i % 2).to_string()])
            .collect();
        let table = crate::product::text_table("mem", &["id", "y"], &rows);
        let parts: Vec<SourceTable> = (0..3)
            .map(|d| label_skewed_rows(&table, "y", 3, d, 0.3, 5).unwrap())
            .collect();
        let mut ids: Vec<String> = parts
            .iter()
            .flat_map(|p| crate::product::column_as_strings(p.batch.column(0)))
            .map(Option::unwrap)
            .collect();
        assert_eq!(ids.len(), 2000);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2000);
        let positive_share: Vec<f64> = parts
            .iter()
            .map(|p| {
                let y = crate::product::column_as_strings(p.batch.column(1));
                y.iter().filter(|v| v.as_deref() == Some("1")).count() as f64
                    / y.len().max(1) as f64
            })
            .collect();
        let spread = positive_share.iter().cloned().fold(f64::MIN, f64::max)
            - positive_share.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 0.2, "{positive_share:?}");
        let graduate = rows_where(&table, "y", &["1".into()]).unwrap();
        assert_eq!(graduate.batch.num_rows(), 1000);
        assert!(rows_where(&table, "nope", &[]).is_err());
    }

    #[test]
    fn generated_fraud_data_has_the_published_schema() {
        let table = fraud::generate(20_000, 1);
        let schema = table.batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, fraud::columns());
        let class = table
            .batch
            .column(30)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let positives: i64 = class.values().iter().sum();
        assert!((20..=60).contains(&positives), "{positives} positives");
        // Deterministic.
        assert_eq!(fraud::generate(100, 1).batch, fraud::generate(100, 1).batch);
        // Not the real file.
        assert!(
            fraud::check_shape(&table)
                .unwrap_err()
                .to_string()
                .contains("284807")
        );
    }
}
