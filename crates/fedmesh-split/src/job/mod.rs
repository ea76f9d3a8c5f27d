//! Job specs: which products, which columns, which model, how to train — and running one.
//!
//! A job spec (`job.yaml`) names each domain's data product by its contract, the columns it
//! contributes and how they are transformed, the label (a column of the label owner's product),
//! the split, the model shape and the training schedule. [`Job::prepare`] loads and validates the
//! products, aligns them, draws the partition and fits each domain's feature pipeline on training
//! rows; [`PreparedJob::run`] then trains one configuration (centralized, split with or without
//! label sharing, or one domain alone) for one seed.
//!
//! In that order, one file each: `spec.rs` (the spec as written, bounded and checked),
//! `prepare.rs` (load, align, partition, fit pipelines), `build.rs` (each party's parts) and
//! `run.rs` (train and evaluate one configuration and seed).

mod build;
mod prepare;
mod run;
mod spec;

pub use build::*;
pub use prepare::*;
pub use run::*;
pub use spec::*;
