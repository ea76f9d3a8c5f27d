//! docs/job-spec.schema.json and the field reference in docs/job-spec.md are what the types
//! generate: a field added, renamed or documented anew shows here until the docs are rewritten
//! (`cargo run --release -- schema --write docs`).

use std::path::Path;

use fedmesh_split::schema::{REFERENCE_BEGIN, REFERENCE_END, job_reference, job_schema};

fn docs(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const REWRITE: &str = "the docs are out of date: run `cargo run --release -- schema --write docs`";

#[test]
fn the_published_schema_is_the_one_the_types_generate() {
    let generated = serde_json::to_string_pretty(&job_schema()).unwrap() + "\n";
    assert!(docs("job-spec.schema.json") == generated, "{REWRITE}");
}

#[test]
fn the_field_reference_is_the_one_the_types_generate() {
    let text = docs("job-spec.md");
    let begin = text
        .find(REFERENCE_BEGIN)
        .expect("the reference's first marker")
        + REFERENCE_BEGIN.len();
    let end = text
        .find(REFERENCE_END)
        .expect("the reference's last marker");
    assert!(
        text[begin..end].trim() == job_reference(&job_schema()).trim(),
        "{REWRITE}"
    );
}
