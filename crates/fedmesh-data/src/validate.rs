//! Checks a product's data against its contract: schema (`required`, `unique`) and the `library`
//! quality rules (`rowCount`, `nullValues`, `missingValues`, `duplicateValues`, `invalidValues`).
//!
//! Types were already checked while the columns were read ([`crate::DataProduct::from_source`]).

use std::collections::HashMap;

use arrow::array::Array;
use serde_norway::Value;

use crate::Violation;
use crate::contract::QualityRule;
use crate::product::{DataProduct, column_as_strings};

/// The outcome of checking a product's data against its contract, as a node reports it to
/// governance's catalog: the rules that did not hold, never the values that broke them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QualityReport {
    /// When it was checked (ms since the epoch); 0: never.
    pub checked_ms: i64,
    /// Whether a `severity: error` rule failed: the product is then kept out of jobs.
    pub blocking: bool,
    /// Each rule that did not hold.
    pub violations: Vec<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl QualityReport {
    /// The warnings of a product that loaded (blocking rules held, or it would not have).
    pub fn of(product: &DataProduct) -> Self {
        Self {
            checked_ms: now_ms(),
            blocking: false,
            violations: validate(product).iter().map(ToString::to_string).collect(),
        }
    }

    /// A product that a blocking rule keeps out of jobs.
    pub fn blocked(violation: String) -> Self {
        Self {
            checked_ms: now_ms(),
            blocking: true,
            violations: vec![violation],
        }
    }
}

/// Every violation of the product's contract, blocking ones and warnings, in contract order.
pub fn validate(product: &DataProduct) -> Vec<Violation> {
    let name = product.name().to_string();
    let mut found = Vec::new();
    let Some(table) = product.contract.table() else {
        return found;
    };
    let rows = product.rows();
    for rule in &table.quality {
        if let Some(v) = check_table_rule(&name, rule, rows) {
            found.push(v);
        }
    }
    for (index, property) in table.properties.iter().enumerate() {
        let column = product.batch.column(index);
        let violation = |row: Option<usize>, rule: &str, message: String| Violation {
            product: name.clone(),
            column: Some(property.name.clone()),
            row,
            rule: rule.to_string(),
            message,
            blocking: true,
            cell: None,
        };
        if property.required && column.null_count() > 0 {
            let row = (0..column.len()).find(|&r| column.is_null(r)).unwrap_or(0);
            found.push(violation(
                Some(row + 1),
                "required",
                "null in a required column".into(),
            ));
        }
        let needs_values = property.unique
            || property
                .quality
                .iter()
                .any(|q| matches!(q.metric_name(), Some("duplicateValues" | "invalidValues")));
        let values = needs_values.then(|| column_as_strings(column));
        if property.unique
            && let Some((row, first)) = first_duplicate(values.as_deref().unwrap_or_default())
        {
            let cell = values.as_ref().unwrap()[row].as_deref().unwrap_or("");
            found.push(Violation {
                cell: Violation::cell_of(property, cell),
                ..violation(
                    Some(row + 1),
                    "unique",
                    format!("the value repeats the one at row {}", first + 1),
                )
            });
        }
        for rule in &property.quality {
            let measured = match rule.metric_name() {
                Some("nullValues" | "missingValues") => Some(column.null_count()),
                Some("duplicateValues") => Some(count_duplicates(values.as_deref().unwrap())),
                Some("invalidValues") => valid_values(rule).map(|allowed| {
                    values
                        .as_deref()
                        .unwrap()
                        .iter()
                        .flatten()
                        .filter(|v| !allowed.contains(v))
                        .count()
                }),
                _ => None,
            };
            let Some(count) = measured else { continue };
            let value = in_unit(rule, count, rows);
            if let Some(bound) = rule.violated_bound(value) {
                let mut v = violation(
                    None,
                    &rule.display_name(),
                    format!(
                        "{} is {value}{}, which breaks {bound}",
                        rule.metric_name().unwrap_or_default(),
                        unit_suffix(rule)
                    ),
                );
                v.blocking = rule.is_blocking();
                found.push(v);
            }
        }
    }
    found
}

fn check_table_rule(product: &str, rule: &QualityRule, rows: usize) -> Option<Violation> {
    if rule.kind.as_deref().is_some_and(|k| k != "library") {
        return None;
    }
    if rule.metric_name() != Some("rowCount") {
        return None;
    }
    let bound = rule.violated_bound(rows as f64)?;
    Some(Violation {
        product: product.to_string(),
        column: None,
        row: None,
        rule: rule.display_name(),
        message: format!("rowCount is {rows}, which breaks {bound}"),
        blocking: rule.is_blocking(),
        cell: None,
    })
}

fn in_unit(rule: &QualityRule, count: usize, rows: usize) -> f64 {
    if rule.unit.as_deref() == Some("percent") {
        if rows == 0 {
            0.0
        } else {
            100.0 * count as f64 / rows as f64
        }
    } else {
        count as f64
    }
}

fn unit_suffix(rule: &QualityRule) -> &'static str {
    if rule.unit.as_deref() == Some("percent") {
        " %"
    } else {
        " rows"
    }
}

/// `arguments.validValues` of an `invalidValues` rule.
fn valid_values(rule: &QualityRule) -> Option<Vec<String>> {
    let Some(Value::Mapping(arguments)) = rule.extra.get("arguments") else {
        return None;
    };
    let Some(Value::Sequence(values)) = arguments.get("validValues") else {
        return None;
    };
    Some(
        values
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => serde_norway::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            })
            .collect(),
    )
}

/// The first row whose value was seen before, with the row it was first seen at.
pub fn first_duplicate(values: &[Option<String>]) -> Option<(usize, usize)> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(values.len());
    for (row, value) in values.iter().enumerate() {
        if let Some(v) = value
            && let Some(&first) = seen.get(v.as_str())
        {
            return Some((row, first));
        } else if let Some(v) = value {
            seen.insert(v.as_str(), row);
        }
    }
    None
}

/// Rows whose non-null value appeared in an earlier row.
fn count_duplicates(values: &[Option<String>]) -> usize {
    let mut seen = std::collections::HashSet::with_capacity(values.len());
    values
        .iter()
        .flatten()
        .filter(|v| !seen.insert(v.as_str()))
        .count()
}
