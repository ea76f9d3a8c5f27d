//! `fedmesh init FILE… --label COLUMN`: a job skeleton and one data contract per file, inferred
//! from the files, for the user to read and edit.
//!
//! Each file is one domain's data product (the domain is named after the file). The contracts
//! state each column's type, which columns may not be empty, the key the products are aligned on
//! and the usage terms fedmesh checks; the job lists every usable column as a feature, with a
//! transform chosen from what the column holds, and the label's task. Nothing is guessed
//! silently: the key, the task and every column left out are printed and commented in the files.
//!
//! The files are read once, here, on the user's machine; no value of a column is written to a
//! contract or the job (category lists and ranges would publish a domain's values with its
//! contract), only names, types and counts.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use fedmesh_data::SourceTable;
use fedmesh_data::product::column_as_strings;

/// What `fedmesh init` was asked.
#[derive(clap::Args, Debug, Clone)]
pub struct InitOptions {
    /// The data files, one per domain (CSV with a header line, or Parquet); the domain is named
    /// after the file.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The label column, or DOMAIN:COLUMN when several files hold a column of that name.
    #[arg(long)]
    pub label: String,
    /// The column the products are aligned on (default: the one column every file holds with a
    /// value on every row and no value twice, preferring one named like an id).
    #[arg(long)]
    pub key: Option<String>,
    /// `classification` or `regression` (default: from the label: whole numbers 0..k−1 with
    /// k ≤ 20 are classes, anything else is a value to regress).
    #[arg(long)]
    pub task: Option<String>,
    /// Why the model is trained: written to the job and to each contract's allowed purposes.
    #[arg(long, default_value = "benchmark")]
    pub purpose: String,
    /// The job's name (default: the folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where job.yaml and contracts/ are written (default: the current folder). Nothing there is
    /// overwritten.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

/// What a column holds, as far as its values tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Number,
    Boolean,
    Date,
    Text,
}

impl Kind {
    fn logical_type(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Date => "date",
            Kind::Text => "string",
        }
    }
}

/// One column's type and counts.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
    rows: usize,
    missing: usize,
    /// Distinct values.
    distinct: usize,
    /// Numbers only.
    min: f64,
    max: f64,
    median: f64,
}

impl Column {
    fn profile(name: &str, values: &[Option<String>]) -> Self {
        let present: Vec<&str> = values
            .iter()
            .flatten()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        let all =
            |test: &dyn Fn(&str) -> bool| !present.is_empty() && present.iter().all(|v| test(v));
        let kind = if all(&|v| v.parse::<i64>().is_ok()) {
            Kind::Integer
        } else if all(&|v| v.parse::<f64>().is_ok_and(f64::is_finite)) {
            Kind::Number
        } else if all(&|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "false")) {
            Kind::Boolean
        } else if all(&is_date) {
            Kind::Date
        } else {
            Kind::Text
        };
        let seen: HashSet<&str> = present.iter().copied().collect();
        let mut numbers: Vec<f64> = match kind {
            Kind::Integer | Kind::Number => present.iter().filter_map(|v| v.parse().ok()).collect(),
            _ => Vec::new(),
        };
        let (min, max) = numbers
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        numbers.sort_by(f64::total_cmp);
        let median = numbers.get(numbers.len() / 2).copied().unwrap_or(0.0);
        Column {
            name: name.to_string(),
            kind,
            rows: values.len(),
            missing: values.len() - present.len(),
            distinct: seen.len(),
            min,
            max,
            median,
        }
    }

    /// A value on every row, never the same twice: it can align rows.
    fn is_key_like(&self) -> bool {
        self.missing == 0
            && self.rows > 0
            && self.distinct == self.rows
            && matches!(self.kind, Kind::Integer | Kind::Text)
    }

    /// How much the name says "id": 2 for `id`, 1 for `…id`, `…_key`, 0 otherwise.
    fn id_name(&self) -> u8 {
        let name = self.name.to_ascii_lowercase();
        if name == "id" || name == "key" {
            2
        } else if name.ends_with("id") || name.ends_with("key") {
            1
        } else {
            0
        }
    }

    /// The feature line for this column, or why it is left out.
    fn feature(&self) -> Result<String, String> {
        if self.distinct <= 1 {
            return Err("the same value on every row: it tells the model nothing".into());
        }
        match self.kind {
            Kind::Date => {
                Err("a date: derive the features you need from it (a month, an age in days)".into())
            }
            // Text never the same twice, or whole numbers never the same twice under a name like
            // an id's: labels of entities, not properties of them.
            Kind::Text | Kind::Integer
                if self.distinct == self.rows - self.missing
                    && (self.kind == Kind::Text || self.id_name() > 0) =>
            {
                Err("a different value on every row (an identifier?): it cannot generalise".into())
            }
            Kind::Text if self.distinct > 50 => Err(format!(
                "text with {} distinct values: too many categories to learn from",
                self.distinct
            )),
            Kind::Text | Kind::Boolean => Ok(format!(
                "{{ column: {}, transform: embedding }}",
                yaml_key(&self.name)
            )),
            Kind::Integer if self.distinct <= 12 => Ok(format!(
                "{{ column: {}, transform: embedding }}",
                yaml_key(&self.name)
            )),
            Kind::Integer | Kind::Number => {
                // Money-like: non-negative, its largest values ten times the typical one or more.
                if self.min >= 0.0 && self.median > 0.0 && self.max > 10.0 * self.median {
                    Ok(format!(
                        "{{ column: {}, transform: log-standardize }}",
                        yaml_key(&self.name)
                    ))
                } else {
                    Ok(format!("{{ column: {} }}", yaml_key(&self.name)))
                }
            }
        }
    }
}

fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// A column name as a YAML scalar: quoted when plain YAML would read it otherwise.
fn yaml_key(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && !matches!(
            name.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// One file: its domain and its columns.
struct Table {
    domain: String,
    file: PathBuf,
    format: &'static str,
    rows: usize,
    columns: Vec<Column>,
}

impl Table {
    fn read(file: &Path) -> Result<Self> {
        let format = match file.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("parquet") => "parquet",
            _ => "csv",
        };
        let table = SourceTable::read(file, Some(format))
            .with_context(|| format!("reading {}", file.display()))?;
        let schema = table.batch.schema();
        let columns = schema
            .fields()
            .iter()
            .zip(table.batch.columns())
            .map(|(field, column)| Column::profile(field.name(), &column_as_strings(column)))
            .collect();
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        Ok(Self {
            domain: domain_name(&stem).with_context(|| {
                format!("{}: the file's name makes no domain name", file.display())
            })?,
            file: file.to_path_buf(),
            format,
            rows: table.batch.num_rows(),
            columns,
        })
    }

    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A domain name from a file name: lower-case letters, digits and dashes.
fn domain_name(stem: &str) -> Option<String> {
    let mut name = String::new();
    for c in stem.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') && !name.is_empty() {
            name.push('-');
        }
    }
    let name = name.trim_end_matches('-').to_string();
    (!name.is_empty()).then_some(name)
}

/// The task of a label column: classes (how many) or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelTask {
    Classes(usize),
    Values,
}

fn label_task(label: &Column, asked: Option<&str>) -> Result<LabelTask> {
    if label.missing > 0 {
        bail!(
            "the label `{}` is empty on {} of {} rows: every row a model trains on needs its label",
            label.name,
            label.missing,
            label.rows
        );
    }
    let classes = (label.kind == Kind::Integer && label.min >= 0.0 && label.max < 20.0)
        .then(|| label.max as usize + 1);
    match (asked, label.kind, classes) {
        (_, Kind::Text | Kind::Boolean | Kind::Date, _) => bail!(
            "the label `{}` holds {} values: fedmesh reads labels as numbers (classes 0..k−1, or values to regress); recode it first",
            label.name,
            label.kind.logical_type()
        ),
        (Some("regression"), _, _) => Ok(LabelTask::Values),
        (Some("classification"), _, Some(k)) if k >= 2 => Ok(LabelTask::Classes(k)),
        (Some("classification"), _, _) => bail!(
            "`--task classification` needs class labels 0..k−1 (whole numbers, k from 2 to 20) in `{}`",
            label.name
        ),
        (Some(other), _, _) => {
            bail!("`--task {other}`: fedmesh init writes `classification` or `regression` jobs")
        }
        (None, _, Some(k)) if k >= 2 && label.distinct == k => Ok(LabelTask::Classes(k)),
        (None, _, _) => Ok(LabelTask::Values),
    }
}

/// Writes the job skeleton and the contracts; returns the job file.
pub fn run(options: &InitOptions) -> Result<PathBuf> {
    let tables = options
        .files
        .iter()
        .map(|f| Table::read(f))
        .collect::<Result<Vec<_>>>()?;
    let mut names = HashSet::new();
    for t in &tables {
        if !names.insert(&t.domain) {
            bail!(
                "two files make domain `{}`: rename one (a domain is named after its file)",
                t.domain
            );
        }
    }

    // The label: which domain holds it.
    let (label_domain, label_column) = match options.label.split_once(':') {
        Some((domain, column)) => (Some(domain.to_string()), column.to_string()),
        None => (None, options.label.clone()),
    };
    let holders: Vec<&Table> = tables
        .iter()
        .filter(|t| label_domain.as_ref().is_none_or(|d| *d == t.domain))
        .filter(|t| t.column(&label_column).is_some())
        .collect();
    let owner = match holders.as_slice() {
        [one] => *one,
        [] => bail!(
            "no file has a column `{label_column}`{}",
            label_domain
                .map(|d| format!(" in domain `{d}`"))
                .unwrap_or_default()
        ),
        several => bail!(
            "`{label_column}` is a column of {}: say whose label it is with --label DOMAIN:{label_column}",
            several
                .iter()
                .map(|t| format!("`{}`", t.domain))
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    };
    let label = owner.column(&label_column).expect("found above");
    let task = label_task(label, options.task.as_deref())?;

    // The key every product is aligned on.
    let key = match &options.key {
        Some(key) => {
            let missing: Vec<&str> = tables
                .iter()
                .filter(|t| t.column(key).is_none())
                .map(|t| t.domain.as_str())
                .collect();
            if !missing.is_empty() {
                bail!("--key `{key}` is not a column of {}", missing.join(", "));
            }
            for t in &tables {
                let column = t.column(key).expect("checked");
                if !column.is_key_like() {
                    bail!(
                        "--key `{key}` cannot align the rows of {}: {} of its {} rows are empty and it holds {} distinct values (a key has a value on every row, never twice)",
                        t.file.display(),
                        column.missing,
                        column.rows,
                        column.distinct
                    );
                }
            }
            key.clone()
        }
        None => {
            let mut candidates: Vec<&Column> = tables[0]
                .columns
                .iter()
                .filter(|c| c.name != label_column)
                .filter(|c| {
                    tables
                        .iter()
                        .all(|t| t.column(&c.name).is_some_and(Column::is_key_like))
                })
                .collect();
            candidates.sort_by_key(|c| std::cmp::Reverse(c.id_name()));
            match candidates.first() {
                Some(c) => c.name.clone(),
                None => bail!(
                    "no column is in every file with a value on every row and no value twice: name the key the products share with --key COLUMN"
                ),
            }
        }
    };

    let name = match &options.name {
        Some(name) => name.clone(),
        None => {
            let dir = std::path::absolute(&options.out)?;
            dir.file_name()
                .and_then(|n| domain_name(&n.to_string_lossy()))
                .unwrap_or_else(|| "job".into())
        }
    };
    let out = &options.out;
    let contracts = out.join("contracts");
    let job_file = out.join("job.yaml");
    let mut targets = vec![job_file.clone()];
    targets.extend(
        tables
            .iter()
            .map(|t| contracts.join(format!("{}.odcs.yaml", t.domain))),
    );
    if let Some(existing) = targets.iter().find(|p| p.exists()) {
        bail!(
            "{} already exists: fedmesh init overwrites nothing (choose another --out)",
            existing.display()
        );
    }
    std::fs::create_dir_all(&contracts)
        .with_context(|| format!("creating {}", contracts.display()))?;

    for table in &tables {
        let path = contracts.join(format!("{}.odcs.yaml", table.domain));
        let text = contract_yaml(
            table,
            &key,
            &name,
            &options.purpose,
            (table.domain == owner.domain).then_some(label_column.as_str()),
            &contracts,
        )?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let rows = tables.iter().map(|t| t.rows).min().unwrap_or(0);
    let job = job_yaml(&JobDraft {
        name: &name,
        purpose: &options.purpose,
        tables: &tables,
        key: &key,
        owner: &owner.domain,
        label: &label_column,
        task,
        rows,
    });
    std::fs::write(&job_file, job).with_context(|| format!("writing {}", job_file.display()))?;

    println!("key: `{key}` (in every file, a value on every row, never twice)");
    match task {
        LabelTask::Classes(k) => println!(
            "label: `{label_column}` of `{}`: classification, {k} classes",
            owner.domain
        ),
        LabelTask::Values => println!(
            "label: `{label_column}` of `{}`: regression (mean squared error, on the standardized target)",
            owner.domain
        ),
    }
    for table in &tables {
        let features = table
            .columns
            .iter()
            .filter(|c| c.name != key && !(table.domain == owner.domain && c.name == label_column))
            .filter(|c| c.feature().is_ok())
            .count();
        println!(
            "domain `{}`: {} rows, {} columns, {features} features",
            table.domain,
            table.rows,
            table.columns.len()
        );
    }
    println!(
        "wrote {} and {} contracts in {}",
        job_file.display(),
        tables.len(),
        contracts.display()
    );
    println!(
        "next: read them, then `fedmesh check {0}` and `fedmesh run {0}`",
        out.display()
    );
    Ok(job_file)
}

/// `to` relative to the folder `from` when both can be made absolute, else `to` absolute.
fn relative_to(to: &Path, from: &Path) -> Result<String> {
    let to = std::path::absolute(to)?;
    let from = std::path::absolute(from)?;
    let to: Vec<Component> = to.components().collect();
    let from: Vec<Component> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part);
    }
    Ok(path.to_string_lossy().replace('\\', "/"))
}

fn contract_yaml(
    table: &Table,
    key: &str,
    job: &str,
    purpose: &str,
    label: Option<&str>,
    contracts: &Path,
) -> Result<String> {
    let mut y = String::new();
    let d = &table.domain;
    writeln!(
        y,
        "# Written by `fedmesh init` from {} ({} rows). Check every type, rule and term: this is\n# what domain `{d}` promises about its data product, and what it allows a job to do with it.",
        table.file.display(),
        table.rows
    )?;
    writeln!(y, "apiVersion: v3.1.0")?;
    writeln!(y, "kind: DataContract")?;
    writeln!(y, "id: urn:fedmesh:{job}:{d}")?;
    writeln!(y, "name: {d}")?;
    writeln!(y, "version: 0.1.0")?;
    writeln!(y, "status: active")?;
    writeln!(y, "domain: {d}")?;
    writeln!(y, "dataProduct: {d}")?;
    writeln!(y, "description:")?;
    writeln!(y, "  purpose: The data product of domain {d}.")?;
    writeln!(y, "servers:")?;
    writeln!(y, "  - server: local")?;
    writeln!(y, "    type: local")?;
    writeln!(y, "    format: {}", table.format)?;
    writeln!(
        y,
        "    path: {}",
        yaml_key(&relative_to(&table.file, contracts)?)
    )?;
    writeln!(y, "schema:")?;
    writeln!(y, "  - name: {d}")?;
    writeln!(y, "    physicalType: table")?;
    writeln!(y, "    quality:")?;
    writeln!(
        y,
        "      - {{ type: library, metric: rowCount, mustBeGreaterThan: 0, severity: error }}"
    )?;
    writeln!(y, "    properties:")?;
    for column in &table.columns {
        writeln!(y, "      - name: {}", yaml_key(&column.name))?;
        writeln!(y, "        logicalType: {}", column.kind.logical_type())?;
        if column.missing == 0 {
            writeln!(y, "        required: true")?;
        }
        if column.name == key {
            writeln!(y, "        unique: true")?;
            writeln!(y, "        primaryKey: true")?;
            writeln!(y, "        classification: restricted")?;
            writeln!(
                y,
                "        description: \"The key the products are aligned on: never a feature.\""
            )?;
        } else if column.missing > 0 {
            writeln!(
                y,
                "        # empty on {} of {} rows when the contract was written",
                column.missing, column.rows
            )?;
        }
        if Some(column.name.as_str()) == label {
            writeln!(y, "        description: \"The label of job {job}.\"")?;
        }
    }
    writeln!(y, "customProperties:")?;
    writeln!(y, "  - property: flAllowedPurposes")?;
    writeln!(y, "    value: [{}]", yaml_key(purpose))?;
    writeln!(y, "  - property: flAllowedTechniques")?;
    writeln!(y, "    value: [split-learning]")?;
    if label.is_some() {
        writeln!(
            y,
            "  # forbidden: the labels never leave this domain (a job that asks to share them runs\n  # as split-label-owner instead); `allowed` lets governance hold them."
        )?;
        writeln!(y, "  - property: flLabelSharing")?;
        writeln!(y, "    value: forbidden")?;
    }
    writeln!(
        y,
        "  # The fewest entities a job may train on with this product: fewer would say too much\n  # about each one."
    )?;
    writeln!(y, "  - property: flMinRecords")?;
    writeln!(y, "    value: {}", table.rows.clamp(1, 100))?;
    Ok(y)
}

struct JobDraft<'a> {
    name: &'a str,
    purpose: &'a str,
    tables: &'a [Table],
    key: &'a str,
    owner: &'a str,
    label: &'a str,
    task: LabelTask,
    rows: usize,
}

fn job_yaml(draft: &JobDraft) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Written by `fedmesh init`: a starting point. The reference of every field is docs/job-spec.md;\n# `fedmesh check` says what a mesh would refuse, `fedmesh run` trains every configuration here."
    );
    let _ = writeln!(y, "name: {}", yaml_key(draft.name));
    let _ = writeln!(
        y,
        "description: {} across {}",
        match draft.task {
            LabelTask::Classes(_) => "Classification",
            LabelTask::Values => "Regression",
        },
        draft
            .tables
            .iter()
            .map(|t| t.domain.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (task, objective) = match draft.task {
        LabelTask::Classes(k) => (
            "classification",
            format!("{{ kind: cross-entropy, classes: {k} }}"),
        ),
        LabelTask::Values => ("regression", "{ kind: mse }".to_string()),
    };
    let _ = writeln!(y, "task: {task}");
    let _ = writeln!(
        y,
        "purpose: {}   # checked against governance's policies and each contract's flAllowedPurposes",
        yaml_key(draft.purpose)
    );
    let _ = writeln!(y, "objective: {objective}");
    let _ = writeln!(
        y,
        "label: {{ domain: {}, column: {} }}",
        draft.owner,
        yaml_key(draft.label)
    );
    let _ = writeln!(
        y,
        "# Rows are aligned on `{}` by private set intersection; the test and validation rows are\n# drawn from `seed` (a run writes their keys: `split.test_keys` holds a later run to them).",
        draft.key
    );
    let _ = writeln!(y, "split:");
    let _ = writeln!(y, "  test_fraction: 0.2");
    let _ = writeln!(y, "  valid_fraction: 0.1");
    let _ = writeln!(y, "  seed: 42");
    let _ = writeln!(y, "domains:");
    for table in draft.tables {
        let _ = writeln!(y, "  - name: {}", table.domain);
        let _ = writeln!(y, "    contract: contracts/{}.odcs.yaml", table.domain);
        let mut features = Vec::new();
        let mut left_out = Vec::new();
        for column in &table.columns {
            if column.name == draft.key
                || (table.domain == draft.owner && column.name == draft.label)
            {
                continue;
            }
            match column.feature() {
                Ok(line) => features.push(line),
                Err(why) => left_out.push(format!("`{}`: {why}", column.name)),
            }
        }
        for why in left_out {
            let _ = writeln!(y, "    # left out: {why}");
        }
        if features.is_empty() {
            let _ = writeln!(y, "    features: []");
        } else {
            let _ = writeln!(y, "    features:");
            for line in features {
                let _ = writeln!(y, "      - {line}");
            }
        }
    }
    // Batches of about a twentieth of the rows, from 16 to 256.
    let batch = (draft.rows / 20)
        .clamp(16, 256)
        .next_power_of_two()
        .min(256);
    let _ = writeln!(y, "model:");
    let _ = writeln!(y, "  bottom: {{ layers: [32, 16], batch_norm: true }}");
    let _ = writeln!(y, "  tower: {{ layers: [32] }}");
    let _ = writeln!(y, "  head: []");
    let _ = writeln!(y, "training:");
    let _ = writeln!(y, "  epochs: 50");
    let _ = writeln!(y, "  batch_size: {batch}");
    let _ = writeln!(y, "  optimizer: {{ learning_rate: 0.003 }}");
    let _ = writeln!(
        y,
        "  # The epoch of lowest validation loss is kept; training stops once it is 5 epochs old."
    );
    let _ = writeln!(y, "  keep: best");
    let _ = writeln!(y, "  early_stopping: {{ patience: 5 }}");
    let _ = writeln!(y, "seeds: [1, 2, 3]");
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, values: &[&str]) -> Column {
        let values: Vec<Option<String>> = values
            .iter()
            .map(|v| (!v.is_empty()).then(|| v.to_string()))
            .collect();
        Column::profile(name, &values)
    }

    #[test]
    fn columns_are_typed_and_turned_into_features_by_what_they_hold() {
        let id = column("id", &["1", "2", "3", "4"]);
        assert_eq!(id.kind, Kind::Integer);
        assert!(id.is_key_like());
        assert!(id.feature().is_err());
        let amount = column("amount", &["1.5", "2", "3.25", "400"]);
        assert_eq!(amount.kind, Kind::Number);
        assert_eq!(
            amount.feature().unwrap(),
            "{ column: amount, transform: log-standardize }"
        );
        let ages: Vec<String> = (0..40).map(|i| (20 + i * 7 % 45).to_string()).collect();
        let ages: Vec<&str> = ages.iter().map(String::as_str).collect();
        let age = column("age", &ages);
        assert_eq!(age.feature().unwrap(), "{ column: age }");
        let colour = column("colour", &["red", "blue", "", "red"]);
        assert_eq!(colour.kind, Kind::Text);
        assert_eq!(colour.missing, 1);
        assert_eq!(
            colour.feature().unwrap(),
            "{ column: colour, transform: embedding }"
        );
        let day = column("day", &["2024-01-02", "2024-03-04", "2024-01-02", ""]);
        assert_eq!(day.kind, Kind::Date);
        assert!(day.feature().unwrap_err().contains("date"));
        assert!(column("flat", &["7", "7", "7"]).feature().is_err());
        assert_eq!(yaml_key("default.payment"), "default.payment");
        assert_eq!(yaml_key("no"), "\"no\"");
        assert_eq!(yaml_key("a b"), "\"a b\"");
    }

    #[test]
    fn the_task_follows_the_label() {
        let classes = column("y", &["0", "1", "1", "0", "2"]);
        assert_eq!(label_task(&classes, None).unwrap(), LabelTask::Classes(3));
        assert_eq!(
            label_task(&classes, Some("regression")).unwrap(),
            LabelTask::Values
        );
        let values = column("price", &["10.5", "3", "7"]);
        assert_eq!(label_task(&values, None).unwrap(), LabelTask::Values);
        assert!(label_task(&values, Some("classification")).is_err());
        let text = column("kind", &["a", "b"]);
        assert!(
            label_task(&text, None)
                .unwrap_err()
                .to_string()
                .contains("recode")
        );
        let gaps = column("y", &["0", "1", ""]);
        assert!(
            label_task(&gaps, None)
                .unwrap_err()
                .to_string()
                .contains("empty on 1")
        );
    }

    #[test]
    fn a_file_name_makes_a_domain_name() {
        assert_eq!(
            domain_name("Breast_Hetero Guest").unwrap(),
            "breast-hetero-guest"
        );
        assert_eq!(domain_name("__").as_deref(), None);
        assert_eq!(
            relative_to(Path::new("/data/a/x.csv"), Path::new("/data/job/contracts")).unwrap(),
            "../../a/x.csv"
        );
    }
}
