//! ODCS v3.1.0 data contracts.
//!
//! A data product is described by an [Open Data Contract Standard][odcs] contract. fedmesh reads
//! the standard fields it acts on (schema, quality rules, servers, classification, tags) into typed
//! structs and keeps every other field in `extra`, so a contract written by another tool survives
//! a round trip through fedmesh unchanged. Federated-learning terms live in `customProperties`
//! under `fl`-prefixed camelCase keys (`flLabelColumns`, `flAllowedPurposes`, …).
//!
//! [odcs]: https://bitol-io.github.io/open-data-contract-standard/v3.1.0/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_norway::Value;

use crate::DataError;

/// Unknown fields of a contract object, kept as they were written.
pub type Extra = BTreeMap<String, Value>;

/// An ODCS v3.1.0 data contract (`*.odcs.yaml`).
///
/// ```
/// use fedmesh_data::DataContract;
///
/// let yaml = r#"
/// apiVersion: v3.1.0
/// kind: DataContract
/// id: urn:fedmesh:retail:card-spend
/// version: 1.0.0
/// status: active
/// schema:
///   - name: card_spend
///     properties:
///       - { name: customer_id, logicalType: string, required: true, unique: true, classification: restricted }
///       - { name: amount, logicalType: number, required: true }
/// customProperties:
///   - { property: flAllowedPurposes, value: [fraud-detection] }
/// "#;
/// let contract = DataContract::from_yaml(yaml).unwrap();
/// assert_eq!(contract.table().unwrap().properties.len(), 2);
/// assert!(contract.property("customer_id").unwrap().is_sensitive());
/// assert_eq!(contract.custom_strings("flAllowedPurposes"), vec!["fraud-detection"]);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataContract {
    pub api_version: String,
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub version: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_product: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema: Vec<SchemaObject>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_properties: Vec<CustomProperty>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One table (ODCS "schema object") of a contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaObject {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<SchemaProperty>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<QualityRule>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One column (ODCS "property") of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaProperty {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_name: Option<String>,
    pub logical_type: LogicalType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_type: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub unique: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub primary_key: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<QualityRule>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// ODCS logical types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogicalType {
    String,
    Date,
    Timestamp,
    Time,
    Number,
    Integer,
    Object,
    Array,
    Boolean,
}

impl std::fmt::Display for LogicalType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            LogicalType::String => "string",
            LogicalType::Date => "date",
            LogicalType::Timestamp => "timestamp",
            LogicalType::Time => "time",
            LogicalType::Number => "number",
            LogicalType::Integer => "integer",
            LogicalType::Object => "object",
            LogicalType::Array => "array",
            LogicalType::Boolean => "boolean",
        };
        f.write_str(name)
    }
}

/// An ODCS quality rule. fedmesh evaluates rules of the `library` type (the default when `type`
/// is absent); rules of other types (`sql`, `custom`, `text`) are kept and reported as not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QualityRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Pre-3.1 spelling of `metric`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_not_be: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_greater_than: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_greater_or_equal_to: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_less_than: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_less_or_equal_to: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_be_between: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub must_not_be_between: Option<[f64; 2]>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl QualityRule {
    /// The library metric this rule measures (`rowCount`, `nullValues`, `duplicateValues`, …).
    pub fn metric_name(&self) -> Option<&str> {
        self.metric.as_deref().or(self.rule.as_deref())
    }

    /// A name for messages: the rule's own name, else its metric.
    pub fn display_name(&self) -> String {
        match (&self.name, self.metric_name()) {
            (Some(name), _) => name.clone(),
            (None, Some(metric)) => metric.to_string(),
            (None, None) => "unnamed rule".to_string(),
        }
    }

    /// Whether a failure of this rule stops the product from being used (`severity: error`, the
    /// default) or is only reported (`warning`, `info`).
    pub fn is_blocking(&self) -> bool {
        !matches!(self.severity.as_deref(), Some("warning" | "info"))
    }

    /// Checks `value` against every comparison the rule states; returns the first one violated,
    /// as text for the error message.
    pub fn violated_bound(&self, value: f64) -> Option<String> {
        type Check = (Option<f64>, &'static str, fn(f64, f64) -> bool);
        let checks: [Check; 6] = [
            (self.must_be, "mustBe", |v, b| v == b),
            (self.must_not_be, "mustNotBe", |v, b| v != b),
            (self.must_be_greater_than, "mustBeGreaterThan", |v, b| v > b),
            (
                self.must_be_greater_or_equal_to,
                "mustBeGreaterOrEqualTo",
                |v, b| v >= b,
            ),
            (self.must_be_less_than, "mustBeLessThan", |v, b| v < b),
            (
                self.must_be_less_or_equal_to,
                "mustBeLessOrEqualTo",
                |v, b| v <= b,
            ),
        ];
        for (bound, name, holds) in checks {
            if let Some(b) = bound
                && !holds(value, b)
            {
                return Some(format!("{name} {b}"));
            }
        }
        if let Some([lo, hi]) = self.must_be_between
            && !(lo..=hi).contains(&value)
        {
            return Some(format!("mustBeBetween [{lo}, {hi}]"));
        }
        if let Some([lo, hi]) = self.must_not_be_between
            && (lo..=hi).contains(&value)
        {
            return Some(format!("mustNotBeBetween [{lo}, {hi}]"));
        }
        None
    }
}

/// Where a product's data is served (`servers` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub server: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A `customProperties` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomProperty {
    pub property: String,
    pub value: Value,
}

impl DataContract {
    /// Parses a contract from YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, DataError> {
        Self::parse(text, Path::new("<inline>"))
    }

    /// Reads and parses a contract file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, DataError> {
        let contract: DataContract =
            serde_norway::from_str(text).map_err(|e| DataError::Contract {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let problem = if contract.kind != "DataContract" {
            Some(format!(
                "kind is `{}`, expected `DataContract`",
                contract.kind
            ))
        } else if !contract.api_version.starts_with("v3.") {
            Some(format!(
                "apiVersion is `{}`; fedmesh reads ODCS v3.x contracts",
                contract.api_version
            ))
        } else if contract.schema.len() != 1 {
            Some(format!(
                "has {} schema objects; a fedmesh data product is one table",
                contract.schema.len()
            ))
        } else {
            None
        };
        let problems: Vec<String> = problem
            .into_iter()
            .chain(contract.term_problems())
            .collect();
        if problems.is_empty() {
            Ok(contract)
        } else {
            Err(DataError::Contract {
                path: path.to_path_buf(),
                message: problems.join("; "),
            })
        }
    }

    /// What in the contract fedmesh cannot read for certain: a federated-learning term it does
    /// not know (`fl…`, in any case), a known one in the wrong case or with a value of the wrong
    /// kind, a classification outside [`CLASSIFICATIONS`], or a field that looks like a
    /// misspelling of one fedmesh acts on. A product's rules fail closed: a term that would
    /// otherwise be skipped (and so allow what its owner meant to forbid) stops the contract.
    fn term_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for custom in &self.custom_properties {
            let name = custom.property.as_str();
            match FL_TERMS.iter().find(|t| t.eq_ignore_ascii_case(name)) {
                Some(&term) if term != name => problems.push(format!(
                    "customProperties: `{name}` must be spelled `{term}`"
                )),
                Some(_) => problems.extend(fl_value_problem(name, &custom.value)),
                None if name.len() >= 2 && name[..2].eq_ignore_ascii_case("fl") => {
                    problems.push(format!(
                        "customProperties: `{name}` is not a federated-learning term fedmesh knows ({})",
                        FL_TERMS.join(", ")
                    ))
                }
                None => {
                    // `lfLabelSharing`, `LabelSharing`: a term whose prefix was mistyped.
                    let lower = name.to_ascii_lowercase();
                    if let Some(term) = FL_TERMS.iter().find(|t| {
                        let t = t.to_ascii_lowercase();
                        edit_distance(&t, &lower) <= 2 || edit_distance(&t[2..], &lower) <= 1
                    }) {
                        problems.push(format!(
                            "customProperties: `{name}` is not a federated-learning term; did you mean `{term}`?"
                        ));
                    }
                }
            }
        }
        problems.extend(misspelt("the contract", &self.extra, CONTRACT_FIELDS));
        for table in &self.schema {
            let at = format!("schema `{}`", table.name);
            problems.extend(misspelt(&at, &table.extra, TABLE_FIELDS));
            for column in &table.properties {
                let at = format!("column `{}`", column.name);
                if let Some(class) = &column.classification
                    && !CLASSIFICATIONS.contains(&class.as_str())
                {
                    problems.push(format!(
                        "{at}: classification `{class}` is not one fedmesh knows ({}); a column it cannot classify is refused, never taken as public",
                        CLASSIFICATIONS.join(", ")
                    ));
                }
                problems.extend(misspelt(&at, &column.extra, PROPERTY_FIELDS));
            }
        }
        problems
    }

    /// Serializes the contract back to YAML, unknown fields included.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a contract always serializes")
    }

    /// SHA-256 of the contract's schema (hex): two versions of a contract with the same hash
    /// describe the same columns.
    pub fn schema_hash(&self) -> String {
        use sha2::Digest as _;
        let schema = serde_json::to_string(&self.schema).unwrap_or_default();
        sha2::Sha256::digest(schema.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The product's name: `dataProduct`, else `name`, else the schema object's name.
    pub fn product_name(&self) -> &str {
        self.data_product
            .as_deref()
            .or(self.name.as_deref())
            .or(self.schema.first().map(|s| s.name.as_str()))
            .unwrap_or(&self.id)
    }

    /// The product's one table.
    pub fn table(&self) -> Option<&SchemaObject> {
        self.schema.first()
    }

    /// A column by name.
    pub fn property(&self, name: &str) -> Option<&SchemaProperty> {
        self.table()?.properties.iter().find(|p| p.name == name)
    }

    /// The value of a custom property, if set.
    pub fn custom(&self, property: &str) -> Option<&Value> {
        self.custom_properties
            .iter()
            .find(|c| c.property == property)
            .map(|c| &c.value)
    }

    /// A custom property read as a list of strings (a lone string counts as a list of one).
    pub fn custom_strings(&self, property: &str) -> Vec<String> {
        match self.custom(property) {
            Some(Value::Sequence(items)) => items.iter().filter_map(value_as_string).collect(),
            Some(other) => value_as_string(other).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// The columns that hold labels (`flLabelColumns`).
    pub fn label_columns(&self) -> Vec<String> {
        self.custom_strings("flLabelColumns")
    }

    /// The column whose values identify entities: the primary key, else the first unique column.
    pub fn key_column(&self) -> Option<&SchemaProperty> {
        let props = &self.table()?.properties;
        props
            .iter()
            .find(|p| p.primary_key)
            .or_else(|| props.iter().find(|p| p.unique))
    }

    /// The first `servers` entry, with its path resolved against the contract's folder.
    pub fn local_source(&self, contract_dir: &Path) -> Option<(PathBuf, Option<String>)> {
        let server = self.servers.first()?;
        let path = server.path.as_ref()?;
        Some((contract_dir.join(path), server.format.clone()))
    }
}

impl SchemaProperty {
    /// The column name in the data (`physicalName`, else `name`).
    pub fn column_name(&self) -> &str {
        self.physical_name.as_deref().unwrap_or(&self.name)
    }

    /// `restricted` or `confidential` classification, or a `pii` tag: such a column is never a
    /// feature, and may only serve as a join key inside PSI.
    pub fn is_sensitive(&self) -> bool {
        matches!(
            self.classification.as_deref(),
            Some("restricted" | "confidential")
        ) || self.tags.iter().any(|t| t.eq_ignore_ascii_case("pii"))
    }
}

/// The federated-learning terms of a contract's `customProperties`.
pub const FL_TERMS: [&str; 6] = [
    "flAllowedPurposes",
    "flAllowedTechniques",
    "flLabelColumns",
    "flLabelProtection",
    "flLabelSharing",
    "flMinRecords",
];

/// The label protections a `flLabelProtection` term may name. `equal-norms` hides only how
/// long gradients are, so a term asks for it beside a protection, never alone.
pub const LABEL_PROTECTIONS: [&str; 4] = [
    "gradient-noise",
    "shaped-noise",
    "randomized-response",
    "equal-norms",
];

/// One `flLabelProtection` term: the protections the label owner's product trains under, all
/// of them, joined by `&`, and how strong each must be: noise at least a scale
/// (`shaped-noise >= 2`), randomized response at most an ε (`randomized-response <= 1`); a bare
/// name asks for any strength (`shaped-noise >= 3 & equal-norms`).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelProtectionTerm {
    /// Each protection the term requires: its kind, and the bound on its strength.
    pub requires: Vec<(String, Option<f64>)>,
}

impl LabelProtectionTerm {
    /// Reads a term, or says why it cannot.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requires = Vec::new();
        for part in text.split('&') {
            let part = part.trim();
            let (kind, bound) = match part.split_once(">=").or_else(|| part.split_once("<=")) {
                Some((kind, bound)) => {
                    let bound = bound.trim().parse::<f64>().ok().filter(|b| b.is_finite());
                    match bound {
                        Some(bound) => (kind.trim(), Some(bound)),
                        None => {
                            return Err(format!("`{part}` has no number after its comparison"));
                        }
                    }
                }
                None => (part, None),
            };
            if !LABEL_PROTECTIONS.contains(&kind) {
                return Err(format!(
                    "`{kind}` is not a label protection fedmesh has ({})",
                    LABEL_PROTECTIONS.join(", ")
                ));
            }
            if kind == "equal-norms" && bound.is_some() {
                return Err(format!("`{part}`: equal-norms takes no number"));
            }
            let wanted = if Self::at_most(kind) { "<=" } else { ">=" };
            if bound.is_some() && !part.contains(wanted) {
                return Err(format!(
                    "`{part}`: {kind} is bounded with `{wanted}` (stronger is {})",
                    if wanted == "<=" {
                        "a smaller ε"
                    } else {
                        "more noise"
                    }
                ));
            }
            if requires.iter().any(|(k, _)| k == kind) {
                return Err(format!("`{text}` names {kind} twice"));
            }
            requires.push((kind.to_string(), bound));
        }
        if requires.iter().all(|(kind, _)| kind == "equal-norms") {
            return Err(format!(
                "`{text}`: equal-norms hides how long gradients are, not which way they point; require it beside a protection, e.g. `shaped-noise >= 3 & equal-norms`"
            ));
        }
        Ok(Self { requires })
    }

    /// Whether the kind's strength is bounded from above: a smaller ε of randomized response
    /// protects more, a larger scale of noise does.
    fn at_most(kind: &str) -> bool {
        kind == "randomized-response"
    }

    /// Whether a job's protections (kind, scale or ε) meet every part of the term.
    pub fn met_by(&self, used: &[(String, f64)]) -> bool {
        self.requires.iter().all(|(kind, bound)| {
            used.iter().any(|(used, strength)| {
                used == kind
                    && match *bound {
                        None => *strength > 0.0,
                        Some(bound) if Self::at_most(kind) => *strength <= bound,
                        Some(bound) => *strength >= bound,
                    }
            })
        })
    }
}

/// The column classifications fedmesh reads; `restricted` and `confidential` columns are never
/// features.
pub const CLASSIFICATIONS: [&str; 4] = ["public", "internal", "restricted", "confidential"];

/// Fields fedmesh acts on, per level: an unknown field that differs from one of these only in
/// case or by a letter or two is a misspelling that would drop a rule.
const CONTRACT_FIELDS: &[&str] = &[
    "customProperties",
    "schema",
    "servers",
    "domain",
    "dataProduct",
    "version",
    "status",
];
const TABLE_FIELDS: &[&str] = &["properties", "quality", "physicalName"];
const PROPERTY_FIELDS: &[&str] = &[
    "classification",
    "tags",
    "logicalType",
    "physicalName",
    "required",
    "unique",
    "primaryKey",
    "quality",
];

/// Unknown fields in `extra` that look like a misspelling of one of `fields`.
fn misspelt(at: &str, extra: &Extra, fields: &[&str]) -> Vec<String> {
    extra
        .keys()
        .filter_map(|key| {
            // Compared in lower case: a difference of case alone is a distance of 0.
            let key_lower = key.to_ascii_lowercase();
            let near = fields
                .iter()
                .find(|f| edit_distance(&f.to_ascii_lowercase(), &key_lower) <= 2)?;
            Some(format!(
                "{at}: `{key}` is not an ODCS field; did you mean `{near}`?"
            ))
        })
        .collect()
}

/// Levenshtein distance (the keys compared are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Why a known term's value cannot be read, if it cannot.
fn fl_value_problem(term: &str, value: &Value) -> Option<String> {
    let strings = |value: &Value| match value {
        Value::String(_) => true,
        Value::Sequence(items) => items.iter().all(|v| matches!(v, Value::String(_))),
        _ => false,
    };
    match term {
        "flLabelSharing" => match value {
            Value::String(v) if v == "allowed" || v == "forbidden" => None,
            _ => Some(format!(
                "customProperties: flLabelSharing is `{}`; it must be `allowed` or `forbidden`",
                show(value)
            )),
        },
        "flMinRecords" => match value {
            Value::Number(n) if n.as_u64().is_some() => None,
            Value::String(v) if v.parse::<u64>().is_ok() => None,
            _ => Some(format!(
                "customProperties: flMinRecords is `{}`; it must be a whole number of rows",
                show(value)
            )),
        },
        "flLabelProtection" if strings(value) => {
            let terms: Vec<&str> = match value {
                Value::String(v) => vec![v.as_str()],
                Value::Sequence(items) => items.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            terms
                .into_iter()
                .find_map(|t| LabelProtectionTerm::parse(t).err())
                .map(|problem| format!("customProperties: flLabelProtection: {problem}"))
        }
        _ if strings(value) => None,
        _ => Some(format!(
            "customProperties: {term} must be a name or a list of names"
        )),
    }
}

/// A short rendering of a term's value (the contract's own text, never data).
fn show(value: &Value) -> String {
    let text = serde_norway::to_string(value).unwrap_or_default();
    let text = text.trim();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn value_as_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r#"
apiVersion: v3.1.0
kind: DataContract
id: urn:test
name: customers
version: 2.1.0
status: active
domain: customer
team:
  name: customer-analytics
slaProperties:
  - { property: latency, value: 4, unit: d }
schema:
  - name: customers
    physicalType: table
    properties:
      - name: id
        logicalType: integer
        primaryKey: true
        classification: restricted
        x-vendor-note: keep me
      - name: age
        logicalType: integer
        required: true
        quality:
          - { metric: nullValues, mustBe: 0, severity: error }
    quality:
      - { type: library, metric: rowCount, mustBeGreaterThan: 100 }
customProperties:
  - { property: flLabelColumns, value: default }
"#;

    #[test]
    fn keeps_unknown_fields_through_a_round_trip() {
        let contract = DataContract::from_yaml(CONTRACT).unwrap();
        assert!(contract.extra.contains_key("team"));
        assert!(contract.extra.contains_key("slaProperties"));
        let id = contract.property("id").unwrap();
        assert!(id.extra.contains_key("x-vendor-note"));
        let again = DataContract::from_yaml(&contract.to_yaml()).unwrap();
        assert_eq!(contract, again);
    }

    #[test]
    fn reads_fl_properties_and_keys() {
        let contract = DataContract::from_yaml(CONTRACT).unwrap();
        assert_eq!(contract.label_columns(), vec!["default"]);
        assert_eq!(contract.key_column().unwrap().name, "id");
        assert!(contract.property("id").unwrap().is_sensitive());
        assert!(!contract.property("age").unwrap().is_sensitive());
        assert_eq!(contract.product_name(), "customers");
    }

    #[test]
    fn rejects_a_contract_of_the_wrong_kind() {
        let text = CONTRACT.replace("kind: DataContract", "kind: Something");
        let err = DataContract::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("expected `DataContract`"), "{err}");
    }

    /// Each change, and the sentence the refusal must hold.
    const FAIL_OPEN: &[(&str, &str, &str)] = &[
        (
            "classification: restricted",
            "classification: Restricted",
            "column `id`: classification `Restricted` is not one fedmesh knows",
        ),
        (
            "classification: restricted",
            "classification: secret",
            "classification `secret` is not one fedmesh knows",
        ),
        (
            "classification: restricted",
            "clasification: restricted",
            "column `id`: `clasification` is not an ODCS field; did you mean `classification`?",
        ),
        (
            "classification: restricted",
            "Classification: restricted",
            "did you mean `classification`?",
        ),
        (
            "customProperties:",
            "customproperties:",
            "the contract: `customproperties` is not an ODCS field; did you mean `customProperties`?",
        ),
        (
            "property: flLabelColumns",
            "property: FLLabelColumns",
            "`FLLabelColumns` must be spelled `flLabelColumns`",
        ),
        (
            "property: flLabelColumns",
            "property: flLabelColumn",
            "`flLabelColumn` is not a federated-learning term fedmesh knows",
        ),
        (
            "property: flLabelColumns",
            "property: lfLabelColumns",
            "`lfLabelColumns` is not a federated-learning term; did you mean `flLabelColumns`?",
        ),
        (
            "{ property: flLabelColumns, value: default }",
            "{ property: flLabelProtection, value: [shaped-noise >= 2, noise-ish] }",
            "flLabelProtection: `noise-ish` is not a label protection fedmesh has",
        ),
        (
            "{ property: flLabelColumns, value: default }",
            "{ property: flLabelProtection, value: [equal-norms] }",
            "require it beside a protection",
        ),
        (
            "{ property: flLabelColumns, value: default }",
            "{ property: flLabelProtection, value: [shaped-noise >= 3 & equal-norms >= 1] }",
            "equal-norms takes no number",
        ),
        (
            "{ property: flLabelColumns, value: default }",
            "{ property: flLabelProtection, value: randomized-response >= 1 }",
            "randomized-response is bounded with `<=` (stronger is a smaller ε)",
        ),
        (
            "{ property: flLabelColumns, value: default }",
            "{ property: flLabelSharing, value: Forbidden }",
            "flLabelSharing is `Forbidden`; it must be `allowed` or `forbidden`",
        ),
        (
            "{ property: flLabelColumns, value: default }",
            "{ property: flMinRecords, value: 10.5 }",
            "flMinRecords is `10.5`; it must be a whole number of rows",
        ),
        (
            "{ property: flLabelColumns, value: default }",
            "{ property: flMinRecords, value: -3 }",
            "flMinRecords is `-3`",
        ),
        (
            "{ property: flLabelColumns, value: default }",
            "{ property: flAllowedPurposes, value: { any: true } }",
            "flAllowedPurposes must be a name or a list of names",
        ),
    ];

    #[test]
    fn terms_fedmesh_cannot_read_for_certain_stop_the_contract() {
        for (from, to, expected) in FAIL_OPEN {
            assert!(CONTRACT.contains(from), "{from}");
            let text = CONTRACT.replacen(from, to, 1);
            let error = DataContract::from_yaml(&text)
                .map(|_| "accepted".to_string())
                .unwrap_or_else(|e| e.to_string());
            assert!(error.contains(expected), "{to}: {error}");
        }
        // Every problem at once, so that one edit fixes the contract.
        let text = CONTRACT
            .replace("classification: restricted", "classification: Restricted")
            .replace("property: flLabelColumns", "property: flLabelColumn");
        let error = DataContract::from_yaml(&text).unwrap_err().to_string();
        assert!(
            error.contains("`Restricted`") && error.contains("`flLabelColumn`"),
            "{error}"
        );
    }

    #[test]
    fn the_terms_in_their_right_form_and_other_tools_fields_are_read() {
        let text = CONTRACT
            .replace(
                "{ property: flLabelColumns, value: default }",
                "{ property: flLabelColumns, value: [default] }\n  - { property: flLabelSharing, value: forbidden }\n  - { property: flMinRecords, value: 100 }\n  - { property: flAllowedPurposes, value: [credit-risk, fraud] }\n  - { property: owner-team, value: risk }",
            )
            .replace("x-vendor-note: keep me", "x-vendor-note: keep me\n        businessName: Customer id\n        criticalDataElement: true");
        let contract = DataContract::from_yaml(&text).unwrap();
        assert_eq!(contract.custom_strings("flMinRecords"), vec!["100"]);
        assert_eq!(contract.label_columns(), vec!["default"]);
        for class in CLASSIFICATIONS {
            let text = CONTRACT.replace(
                "classification: restricted",
                &format!("classification: {class}"),
            );
            assert!(DataContract::from_yaml(&text).is_ok(), "{class}");
        }
    }

    #[test]
    fn quality_bounds() {
        let rule: QualityRule =
            serde_norway::from_str("{ metric: rowCount, mustBeBetween: [10, 20] }").unwrap();
        assert_eq!(rule.violated_bound(15.0), None);
        assert!(rule.violated_bound(25.0).unwrap().contains("mustBeBetween"));
        let rule: QualityRule =
            serde_norway::from_str("{ metric: nullValues, mustBe: 0, severity: warning }").unwrap();
        assert!(!rule.is_blocking());
        assert_eq!(rule.violated_bound(1.0).as_deref(), Some("mustBe 0"));
    }
}
