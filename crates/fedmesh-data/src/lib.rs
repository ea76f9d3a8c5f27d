//! Data products for fedmesh.
//!
//! In a data mesh each domain serves its data as products under contracts. This crate is the
//! domain's side of that: it reads ODCS v3.1.0 contracts ([`DataContract`]), loads the data they
//! describe from CSV or Parquet into Apache Arrow ([`DataProduct`]), refuses data that breaks its
//! contract with an error naming product, column, row and rule, and turns validated columns into
//! model inputs through feature pipelines fitted on training rows only ([`FeaturePipeline`]). It
//! also holds the dataset readers and generators of the shipped use cases ([`datasets`]).
//!
//! Nothing here trains or talks to the network: it is what a domain node does with its own data
//! before anything leaves it.

pub mod contract;
pub mod datasets;
pub mod pipeline;
pub mod product;
pub mod recommend;
pub mod resample;
pub mod split;
pub mod validate;

use std::path::PathBuf;

pub use contract::{DataContract, LogicalType, QualityRule, SchemaProperty};
pub use pipeline::{
    Category, FeatureKind, FeatureMatrix, FeaturePipeline, FeatureSpec, NumericSums,
};
pub use product::{DataProduct, SourceCache, SourceTable};
pub use split::Partition;
pub use validate::QualityReport;

/// A broken contract rule, located as precisely as the rule allows.
///
/// What it displays names the product, column, row and rule, never a value of the data: a
/// violation travels to governance's catalog, its job records and audit log. The offending cell
/// is in [`Violation::cell`], for the domain's own log only.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub product: String,
    pub column: Option<String>,
    /// 1-based data row (the header line of a CSV is not counted).
    pub row: Option<usize>,
    pub rule: String,
    pub message: String,
    /// `severity: error` (the default): the product may not be used.
    pub blocking: bool,
    /// The offending cell, shortened, for the domain's own log; never set for a column
    /// classified `restricted` or `confidential` or tagged `pii`.
    pub cell: Option<String>,
}

impl Violation {
    /// The cell of `property` to keep with a violation (see [`Violation::cell`]).
    pub fn cell_of(property: &SchemaProperty, value: &str) -> Option<String> {
        if property.is_sensitive() {
            return None;
        }
        let mut shown: String = value.chars().take(40).collect();
        if value.chars().nth(40).is_some() {
            shown.push('…');
        }
        Some(shown)
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "data product `{}`", self.product)?;
        if let Some(column) = &self.column {
            write!(f, ", column `{column}`")?;
        }
        if let Some(row) = self.row {
            write!(f, ", row {row}")?;
        }
        write!(f, ": rule `{}` failed: {}", self.rule, self.message)
    }
}

/// Errors of reading, validating and transforming data products.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a readable table: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("contract {path} is invalid: {message}")]
    Contract { path: PathBuf, message: String },
    #[error(
        "data product `{product}` has no local `servers` entry with a path, and no file was given"
    )]
    NoSource { product: String },
    #[error(
        "data product `{product}`, column `{column}`: rule `schema` failed: the column is in the contract but not in {origin}"
    )]
    MissingColumn {
        product: String,
        column: String,
        origin: String,
    },
    #[error(
        "data product `{product}`, column `{column}`: rule `logicalType` failed: the contract says {expected}, the data holds {found}"
    )]
    WrongType {
        product: String,
        column: String,
        expected: LogicalType,
        found: String,
    },
    #[error("data product `{product}` has no column `{column}` in its contract")]
    UnknownColumn { product: String, column: String },
    #[error("data product `{product}`, column `{column}` is not numeric")]
    NotNumeric { product: String, column: String },
    #[error(
        "data product `{product}`, column `{column}` is classified `restricted`/`confidential` or tagged `pii`: it may be a join key, never a feature"
    )]
    SensitiveFeature { product: String, column: String },
    #[error("{0}")]
    Violation(Box<Violation>),
    #[error("{0}")]
    Invalid(String),
}
