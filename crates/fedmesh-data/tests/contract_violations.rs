//! A contract that does not match its data is refused with an error that names the product,
//! the column, the row where there is one, and the rule.

use std::io::Write;

use fedmesh_data::product::SourceTable;
use fedmesh_data::{DataContract, DataError, DataProduct};

const CONTRACT: &str = r#"
apiVersion: v3.1.0
kind: DataContract
id: urn:test:clients
version: 1.0.0
status: active
dataProduct: clients
schema:
  - name: clients
    quality:
      - { type: library, metric: rowCount, mustBeGreaterOrEqualTo: 3 }
    properties:
      - { name: id, logicalType: integer, required: true, unique: true, primaryKey: true }
      - { name: age, logicalType: integer, required: true }
      - { name: limit, logicalType: number }
      - name: segment
        logicalType: string
        quality:
          - { metric: invalidValues, arguments: { validValues: [retail, premium] }, mustBe: 0 }
          - { metric: nullValues, mustBeLessOrEqualTo: 0, severity: warning }
"#;

fn load(csv: &str) -> Result<DataProduct, DataError> {
    let mut file = tempfile::NamedTempFile::with_suffix(".csv").unwrap();
    file.write_all(csv.as_bytes()).unwrap();
    let table = SourceTable::read(file.path(), None)?;
    DataProduct::from_source(DataContract::from_yaml(CONTRACT).unwrap(), &table)
}

fn error(csv: &str) -> String {
    load(csv)
        .expect_err("the data breaks its contract")
        .to_string()
}

#[test]
fn valid_data_loads_typed() {
    let product =
        load("id,age,limit,segment,extra\n1,30,1000.5,retail,x\n2,41,,premium,y\n3,52,20,,z\n")
            .unwrap();
    assert_eq!(product.rows(), 3);
    assert_eq!(
        product.batch.num_columns(),
        4,
        "only the contract's columns are kept"
    );
    assert_eq!(
        product.column_f64("limit").unwrap(),
        vec![Some(1000.5), None, Some(20.0)]
    );
}

#[test]
fn a_missing_column_names_product_column_and_rule() {
    let e = error("id,limit,segment\n1,10,retail\n2,20,retail\n3,30,retail\n");
    assert!(e.contains("data product `clients`"), "{e}");
    assert!(e.contains("column `age`"), "{e}");
    assert!(e.contains("rule `schema`"), "{e}");
}

/// The violation a load fails with.
fn violation(csv: &str, contract: &str) -> fedmesh_data::Violation {
    let mut file = tempfile::NamedTempFile::with_suffix(".csv").unwrap();
    file.write_all(csv.as_bytes()).unwrap();
    let table = SourceTable::read(file.path(), None).unwrap();
    match DataProduct::from_source(DataContract::from_yaml(contract).unwrap(), &table) {
        Err(DataError::Violation(v)) => *v,
        other => panic!("expected a violation, got {:?}", other.map(|p| p.rows())),
    }
}

#[test]
fn a_wrong_type_names_the_row_and_keeps_the_value_for_the_domain_alone() {
    let csv = "id,age,limit,segment\n1,30,10,retail\n2,forty,20,retail\n3,50,30,retail\n";
    let e = error(csv);
    assert!(e.contains("column `age`") && e.contains("row 2"), "{e}");
    assert!(e.contains("rule `logicalType`"), "{e}");
    // What travels (to governance's catalog, job records and audit) holds no value of the data.
    assert!(!e.contains("forty"), "{e}");
    assert_eq!(violation(csv, CONTRACT).cell.as_deref(), Some("forty"));
    // A long cell is shortened; a restricted column's cell is not kept at all.
    let long = "x".repeat(5_000_000);
    let csv = format!("id,age,limit,segment\n1,{long},10,retail\n2,3,20,retail\n3,5,30,retail\n");
    let cell = violation(&csv, CONTRACT).cell.unwrap();
    assert_eq!(cell.chars().count(), 41);
    assert!(error(&csv).len() < 200);
    let restricted = CONTRACT.replace(
        "{ name: age, logicalType: integer, required: true }",
        "{ name: age, logicalType: integer, required: true, classification: restricted }",
    );
    assert_eq!(violation(&csv, &restricted).cell, None);
}

#[test]
fn a_null_in_a_required_column_is_refused() {
    let e = error("id,age,limit,segment\n1,30,10,retail\n2,41,20,retail\n3,,30,retail\n");
    assert!(e.contains("column `age`") && e.contains("row 3"), "{e}");
    assert!(e.contains("rule `required`"), "{e}");
}

#[test]
fn a_duplicate_in_a_unique_column_is_refused() {
    let e = error("id,age,limit,segment\n1,30,10,retail\n2,41,20,retail\n2,52,30,retail\n");
    assert!(e.contains("column `id`") && e.contains("row 3"), "{e}");
    assert!(e.contains("rule `unique`") && e.contains("row 2"), "{e}");
    assert!(e.contains("the value repeats the one at row 2"), "{e}");
}

#[test]
fn library_quality_rules_are_enforced() {
    let e = error("id,age,limit,segment\n1,30,10,retail\n2,41,20,retail\n");
    assert!(
        e.contains("rowCount") && e.contains("mustBeGreaterOrEqualTo 3"),
        "{e}"
    );
    let e = error("id,age,limit,segment\n1,30,10,retail\n2,41,20,gold\n3,41,20,retail\n");
    assert!(
        e.contains("column `segment`") && e.contains("invalidValues"),
        "{e}"
    );
}

#[test]
fn a_wrong_parquet_type_is_refused() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("age", DataType::Float64, false),
        Field::new("limit", DataType::Float64, true),
        Field::new("segment", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2, 3])),
        Arc::new(Float64Array::from(vec![30.0, 40.5, 50.0])),
        Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])),
        Arc::new(StringArray::from(vec!["retail", "retail", "premium"])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let file = tempfile::NamedTempFile::with_suffix(".parquet").unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file.reopen().unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let table = SourceTable::read(file.path(), None).unwrap();
    let e = DataProduct::from_source(DataContract::from_yaml(CONTRACT).unwrap(), &table)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("column `age`") && e.contains("rule `logicalType`"),
        "{e}"
    );
    assert!(e.contains("Float64"), "{e}");
}
