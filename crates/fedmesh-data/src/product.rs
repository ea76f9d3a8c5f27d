//! Data products: a contract plus the data it describes, read into Arrow and validated.
//!
//! Reading is two steps. [`SourceTable`] reads a file as it is (CSV as text columns, Parquet with
//! its own types). [`DataProduct::from_source`] then takes the contract's columns from it, gives
//! each its logical type, and checks the contract's schema and quality rules. Nothing becomes a
//! tensor before that check passed, and every failure names product, column, row and rule.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Array, Float64Builder, Int64Builder, RecordBatch,
    StringArray, StringBuilder,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::contract::{DataContract, LogicalType, SchemaProperty};
use crate::validate::validate;
use crate::{DataError, Violation};

/// A file's table as read, before any contract is applied.
#[derive(Debug, Clone)]
pub struct SourceTable {
    /// Where the table came from, for messages.
    pub origin: String,
    pub batch: RecordBatch,
}

impl SourceTable {
    /// Reads a CSV (header line first) or Parquet file; the format comes from `format` or, when
    /// absent, from the file's extension.
    pub fn read(path: &Path, format: Option<&str>) -> Result<Self, DataError> {
        let format = format
            .map(str::to_ascii_lowercase)
            .or_else(|| {
                path.extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
            })
            .unwrap_or_default();
        match format.as_str() {
            "parquet" => Self::read_parquet(path),
            _ => Self::read_csv(path, b','),
        }
    }

    /// Reads a CSV file with a header line; every column is read as text and typed later against
    /// the contract, so that a bad value is reported with its column and row.
    pub fn read_csv(path: &Path, delimiter: u8) -> Result<Self, DataError> {
        let io = |source| DataError::Io {
            path: path.to_path_buf(),
            error: source,
        };
        let bad = |message: String| DataError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let format = arrow::csv::reader::Format::default()
            .with_header(true)
            .with_delimiter(delimiter);
        let (header, _) = format
            .infer_schema(File::open(path).map_err(io)?, Some(0))
            .map_err(|e| bad(e.to_string()))?;
        let fields: Vec<Field> = header
            .fields()
            .iter()
            .map(|f| Field::new(f.name().trim_matches('"'), DataType::Utf8, true))
            .collect();
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let reader = arrow::csv::ReaderBuilder::new(schema.clone())
            .with_format(format)
            .with_batch_size(64 * 1024)
            .build(File::open(path).map_err(io)?)
            .map_err(|e| bad(e.to_string()))?;
        Self::collect(path, &schema, reader)
    }

    /// Reads a Parquet file with the types it was written with.
    pub fn read_parquet(path: &Path) -> Result<Self, DataError> {
        let bad = |message: String| DataError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| bad(e.to_string()))?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(|e| bad(e.to_string()))?;
        Self::collect(path, &schema, reader)
    }

    fn collect(
        path: &Path,
        schema: &SchemaRef,
        batches: impl Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>,
    ) -> Result<Self, DataError> {
        let bad = |e: arrow::error::ArrowError| DataError::Malformed {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let batches = batches.collect::<Result<Vec<_>, _>>().map_err(bad)?;
        let batch = concat_batches(schema, &batches).map_err(bad)?;
        Ok(Self {
            origin: display_path(path),
            batch,
        })
    }

    /// Wraps a table made in memory (generated data).
    pub fn from_batch(origin: impl Into<String>, batch: RecordBatch) -> Self {
        Self {
            origin: origin.into(),
            batch,
        }
    }
}

/// A path as a user would write it: canonical (no `a/../b`) when the file exists.
fn display_path(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// A contract and its validated data: one column per contract property, in contract order, typed
/// as Int64 (integer), Float64 (number), Boolean (boolean) or Utf8 (everything else).
#[derive(Debug, Clone)]
pub struct DataProduct {
    pub contract: DataContract,
    pub batch: RecordBatch,
}

impl DataProduct {
    /// The product's name, for messages.
    pub fn name(&self) -> &str {
        self.contract.product_name()
    }

    /// Takes the contract's columns from `source`, types them and validates them.
    pub fn from_source(contract: DataContract, source: &SourceTable) -> Result<Self, DataError> {
        let product = contract.product_name().to_string();
        let table = contract.table().ok_or_else(|| DataError::Contract {
            path: PathBuf::from(&product),
            message: "has no schema".into(),
        })?;
        let source_schema = source.batch.schema();
        let mut fields = Vec::with_capacity(table.properties.len());
        let mut columns = Vec::with_capacity(table.properties.len());
        for property in &table.properties {
            let name = property.column_name();
            let index = source_schema
                .index_of(name)
                .map_err(|_| DataError::MissingColumn {
                    product: product.clone(),
                    column: name.to_string(),
                    origin: source.origin.clone(),
                })?;
            let typed = typed_column(&product, property, source.batch.column(index))?;
            fields.push(Field::new(&property.name, typed.data_type().clone(), true));
            columns.push(typed);
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema, columns).map_err(|e| DataError::Malformed {
            path: PathBuf::from(&source.origin),
            message: e.to_string(),
        })?;
        let product = Self { contract, batch };
        let report = validate(&product);
        match report.into_iter().find(|v| v.blocking) {
            Some(violation) => Err(DataError::Violation(Box::new(violation))),
            None => Ok(product),
        }
    }

    /// The product restricted to `rows`, in that order: how a product is aligned with the
    /// others once private set intersection has found the entities they share.
    pub fn take_rows(&self, rows: &[u32]) -> Result<Self, DataError> {
        let indices = arrow::array::UInt32Array::from(rows.to_vec());
        let batch = arrow::compute::take_record_batch(&self.batch, &indices)
            .map_err(|e| DataError::Invalid(format!("data product `{}`: {e}", self.name())))?;
        Ok(Self {
            contract: self.contract.clone(),
            batch,
        })
    }

    /// The product's keys, row by row, as text (a null key is empty): the contract's key
    /// column (`primaryKey`), or `None` when it declares none.
    pub fn keys(&self) -> Result<Option<Vec<String>>, DataError> {
        let Some(key) = self.contract.key_column() else {
            return Ok(None);
        };
        let keys: Vec<String> = self
            .column_strings(&key.name)?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
        Ok(Some(keys))
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// A column by contract name.
    pub fn column(&self, name: &str) -> Result<&ArrayRef, DataError> {
        self.batch
            .column_by_name(name)
            .ok_or_else(|| DataError::UnknownColumn {
                product: self.name().to_string(),
                column: name.to_string(),
            })
    }

    /// A column as text, row by row (null stays `None`); used for keys and categories.
    pub fn column_strings(&self, name: &str) -> Result<Vec<Option<String>>, DataError> {
        Ok(column_as_strings(self.column(name)?))
    }

    /// A numeric column as f64 (null stays `None`).
    pub fn column_f64(&self, name: &str) -> Result<Vec<Option<f64>>, DataError> {
        let column = self.column(name)?;
        let as_float = cast(column, &DataType::Float64).map_err(|_| DataError::NotNumeric {
            product: self.name().to_string(),
            column: name.to_string(),
        })?;
        let floats = as_float
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("cast to Float64 gives a Float64Array");
        Ok(floats.iter().collect())
    }
}

/// Renders any column as text, row by row.
pub fn column_as_strings(column: &ArrayRef) -> Vec<Option<String>> {
    let text = cast(column, &DataType::Utf8).expect("every column type here casts to text");
    let text = text
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8 gives a StringArray");
    text.iter().map(|v| v.map(str::to_string)).collect()
}

fn typed_column(
    product: &str,
    property: &SchemaProperty,
    column: &ArrayRef,
) -> Result<ArrayRef, DataError> {
    let wrong_type = |found: String| DataError::WrongType {
        product: product.to_string(),
        column: property.name.clone(),
        expected: property.logical_type,
        found,
    };
    if let Some(text) = column.as_any().downcast_ref::<StringArray>() {
        return parse_text_column(product, property, text);
    }
    let target = canonical_type(property.logical_type);
    let compatible = match property.logical_type {
        LogicalType::Integer => column.data_type().is_integer(),
        LogicalType::Number => column.data_type().is_numeric(),
        LogicalType::Boolean => matches!(column.data_type(), DataType::Boolean),
        _ => true,
    };
    if !compatible {
        return Err(wrong_type(column.data_type().to_string()));
    }
    cast(column, &target).map_err(|e| wrong_type(e.to_string()))
}

fn canonical_type(logical: LogicalType) -> DataType {
    match logical {
        LogicalType::Integer => DataType::Int64,
        LogicalType::Number => DataType::Float64,
        LogicalType::Boolean => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

fn parse_text_column(
    product: &str,
    property: &SchemaProperty,
    text: &StringArray,
) -> Result<ArrayRef, DataError> {
    let invalid = |row: usize, value: &str| {
        DataError::Violation(Box::new(Violation {
            product: product.to_string(),
            column: Some(property.name.clone()),
            row: Some(row + 1),
            rule: "logicalType".into(),
            message: format!("the cell is not a valid {}", property.logical_type),
            blocking: true,
            cell: Violation::cell_of(property, value),
        }))
    };
    let cells = text
        .iter()
        .map(|v| v.map(str::trim).filter(|v| !v.is_empty()));
    Ok(match property.logical_type {
        LogicalType::Integer => {
            let mut out = Int64Builder::with_capacity(text.len());
            for (row, cell) in cells.enumerate() {
                match cell {
                    None => out.append_null(),
                    Some(v) => out.append_value(parse_integer(v).ok_or_else(|| invalid(row, v))?),
                }
            }
            Arc::new(out.finish()) as ArrayRef
        }
        LogicalType::Number => {
            let mut out = Float64Builder::with_capacity(text.len());
            for (row, cell) in cells.enumerate() {
                match cell {
                    None => out.append_null(),
                    Some(v) => match v.parse::<f64>() {
                        Ok(x) if x.is_finite() => out.append_value(x),
                        _ => return Err(invalid(row, v)),
                    },
                }
            }
            Arc::new(out.finish())
        }
        LogicalType::Boolean => {
            let mut out = BooleanBuilder::with_capacity(text.len());
            for (row, cell) in cells.enumerate() {
                match cell.map(str::to_ascii_lowercase).as_deref() {
                    None => out.append_null(),
                    Some("true" | "1" | "yes") => out.append_value(true),
                    Some("false" | "0" | "no") => out.append_value(false),
                    Some(v) => return Err(invalid(row, v)),
                }
            }
            Arc::new(out.finish())
        }
        _ => {
            let mut out = StringBuilder::with_capacity(text.len(), text.value_data().len());
            for cell in cells {
                out.append_option(cell);
            }
            Arc::new(out.finish())
        }
    })
}

/// Integers may be written as `3` or `3.0` (files exported through floating point).
fn parse_integer(v: &str) -> Option<i64> {
    v.parse::<i64>().ok().or_else(|| {
        let x = v.parse::<f64>().ok()?;
        (x.fract() == 0.0 && x.abs() < 9.0e15).then_some(x as i64)
    })
}

/// Reads each distinct source file once when several products share it (a vertical split of one
/// file, as in the examples).
#[derive(Default)]
pub struct SourceCache {
    tables: HashMap<PathBuf, SourceTable>,
}

impl SourceCache {
    pub fn get(&mut self, path: &Path, format: Option<&str>) -> Result<&SourceTable, DataError> {
        if !self.tables.contains_key(path) {
            let table = SourceTable::read(path, format)?;
            self.tables.insert(path.to_path_buf(), table);
        }
        Ok(&self.tables[path])
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.tables.contains_key(path)
    }

    pub fn insert(&mut self, path: PathBuf, table: SourceTable) {
        self.tables.insert(path, table);
    }
}

/// Builds a text-column table from rows (tests, generators).
pub fn text_table(origin: &str, columns: &[&str], rows: &[Vec<String>]) -> SourceTable {
    let fields: Vec<Field> = columns
        .iter()
        .map(|c| Field::new(*c, DataType::Utf8, true))
        .collect();
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|c| {
            let values: Vec<Option<&str>> = rows
                .iter()
                .map(|r| Some(r[c].as_str()).filter(|v| !v.is_empty()))
                .collect();
            Arc::new(StringArray::from(values)) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .expect("columns and rows agree");
    SourceTable::from_batch(origin, batch)
}

/// Builds a numeric table from columns of f64 (generators).
pub fn float_table(origin: &str, columns: Vec<(String, Vec<f64>)>) -> SourceTable {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, _)| Field::new(n, DataType::Float64, false))
        .collect();
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|(_, v)| Arc::new(Float64Array::from(v)) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .expect("columns have equal lengths");
    SourceTable::from_batch(origin, batch)
}

/// Writes a source table to CSV (used to hand generated data to a node, and by tests).
pub fn write_csv(table: &SourceTable, path: &Path) -> Result<(), DataError> {
    let file = File::create(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(file);
    writer
        .write(&table.batch)
        .map_err(|e| DataError::Malformed {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}
