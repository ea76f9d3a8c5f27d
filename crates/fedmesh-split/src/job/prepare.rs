//! Preparing a job in one process: every domain's product loaded and validated against its
//! contract, the products aligned, the labels read, the partition drawn and each domain's
//! feature pipeline fitted on training rows. A node runs its own share of this (its product,
//! its pipeline) with the same functions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use fedmesh_data::datasets::{self, fraud};
use fedmesh_data::resample;
use fedmesh_data::{
    DataContract, DataError, DataProduct, FeatureMatrix, FeaturePipeline, Partition, SourceCache,
    SourceTable,
};
use fedmesh_model::{Objective, Targets};
use serde::{Deserialize, Serialize};

use super::spec::{DomainSpec, Job, JobSpec, LayersSpec, SplitSpec};
use crate::SplitError;

/// A domain after loading, validation and feature fitting.
#[derive(Debug, Clone)]
pub struct PreparedDomain {
    pub name: String,
    pub product: String,
    pub pipeline: FeaturePipeline,
    pub features: FeatureMatrix,
    pub bottom: LayersSpec,
}

/// Products loaded, aligned and partitioned; pipelines fitted.
#[derive(Debug, Clone)]
pub struct PreparedJob {
    pub spec: JobSpec,
    pub domains: Vec<PreparedDomain>,
    pub targets: Targets,
    pub partition: Partition,
    /// Aligned rows.
    pub rows: usize,
    /// How the products were aligned.
    pub alignment: AlignmentSummary,
    /// Synthetic training rows added by SMOTE (after the aligned rows).
    pub synthetic_rows: usize,
    /// Where the data came from, for the report.
    pub source: String,
    /// The label owner's key of each aligned row, when its product declares a key column.
    pub keys: Option<Vec<String>>,
}

impl Job {
    /// Loads every domain's product (from `data` when given, else where its contract says),
    /// validates it, aligns the domains, draws the partition and fits the pipelines: every
    /// party's preparation, run in one process.
    pub fn prepare(&self, data: Option<&Path>) -> Result<PreparedJob, SplitError> {
        let spec = &self.spec;
        let mut cache = SourceCache::default();
        let products = spec
            .domains
            .iter()
            .map(|domain| {
                self.load_product(domain, data, self.example_path().as_deref(), &mut cache)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Every product's source, each once with the domains read from it.
        let mut origins: Vec<(&str, Vec<&str>)> = Vec::new();
        for (domain, (_, origin)) in spec.domains.iter().zip(&products) {
            match origins.iter_mut().find(|(o, _)| o == origin) {
                Some((_, domains)) => domains.push(&domain.name),
                None => origins.push((origin, vec![&domain.name])),
            }
        }
        let source = match origins.as_slice() {
            [(origin, _)] => origin.to_string(),
            _ => origins
                .iter()
                .map(|(origin, domains)| format!("{origin} ({})", domains.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        };
        let products: Vec<DataProduct> = products.into_iter().map(|(p, _)| p).collect();
        let (products, alignment) = align_products(&spec.domains, products)?;
        let rows = alignment.intersection;
        let owner = spec
            .domains
            .iter()
            .position(|d| d.name == spec.label.domain)
            .expect("checked when the spec was read");
        let (mut targets, mut partition) = self.labels_and_partition(&products[owner])?;
        let keys = product_keys(&products[owner])?;
        let mut domains = Vec::new();
        for (domain, product) in spec.domains.iter().zip(&products) {
            if let Some(prepared) = self.prepare_domain(domain, product, &partition.train)? {
                domains.push(prepared);
            }
        }
        let mut synthetic_rows = 0;
        if let Some(resample) = &spec.resample {
            let forbids = products[owner]
                .contract
                .custom_strings("flLabelSharing")
                .iter()
                .any(|v| v == "forbidden");
            let problem = match (&targets, forbids) {
                (_, true) => Some(format!(
                    "`resample` shows every domain which training rows are minority rows, and data product `{}` forbids label sharing (flLabelSharing: forbidden)",
                    products[owner].name()
                )),
                (Targets::Classes(_), false) if spec.objective.outputs() == 2 => None,
                _ => Some("`resample` applies to binary classification only".to_string()),
            };
            if let Some(message) = problem {
                return Err(SplitError::Spec {
                    path: self.file.clone(),
                    message,
                });
            }
            let Targets::Classes(labels) = &mut targets else {
                unreachable!("checked above")
            };
            let matrices: Vec<&FeatureMatrix> = domains.iter().map(|d| &d.features).collect();
            let plan = resample::plan(
                &matrices,
                labels,
                &partition.train,
                resample,
                spec.split.seed,
            );
            for domain in &mut domains {
                domain.features = domain.features.with_synthetic(&plan.synthetic);
            }
            synthetic_rows = plan.synthetic.len();
            labels.extend(std::iter::repeat_n(1, synthetic_rows));
            partition.train = plan.kept;
            partition
                .train
                .extend((rows..rows + synthetic_rows).map(|r| r as u32));
            tracing::info!(
                "resampled training rows: {} kept, {synthetic_rows} synthetic",
                partition.train.len() - synthetic_rows
            );
        }
        Ok(PreparedJob {
            spec: spec.clone(),
            domains,
            targets,
            partition,
            rows,
            alignment,
            synthetic_rows,
            source,
            keys,
        })
    }

    /// The public table an example's products are derived from, as the spec names it (relative
    /// to the spec's folder). Only the process that owns the spec reads it: a node derives its
    /// product from the table its own config names, never from a path in a job spec.
    pub fn example_path(&self) -> Option<PathBuf> {
        let example = self.spec.example_data.as_ref()?;
        Some(self.dir().join(&example.source))
    }

    /// Reads `domain`'s product: from `data` when given, else where its contract's server
    /// says; when that file is absent and the spec derives example products, from the public
    /// table `example_table` (or a known dataset's generator when there is none).
    pub fn load_product(
        &self,
        domain: &DomainSpec,
        data: Option<&Path>,
        example_table: Option<&Path>,
        cache: &mut SourceCache,
    ) -> Result<(DataProduct, String), SplitError> {
        let spec = &self.spec;
        let (contract, path, format) = product_file(&self.dir().join(&domain.contract), data)?;
        let table = match (&spec.example_data, data) {
            (Some(example), None) if !path.exists() => {
                let derived = {
                    let source = self.example_source(example_table, cache)?;
                    let key = contract.key_column().ok_or_else(|| {
                        DataError::Invalid(format!(
                            "data product `{}` declares no key column (primaryKey): an example's products are derived by entity",
                            contract.product_name()
                        ))
                    })?;
                    let index = spec
                        .domains
                        .iter()
                        .position(|d| d.name == domain.name)
                        .expect("a domain of the job");
                    datasets::example_product(
                        source,
                        key.column_name(),
                        index,
                        example.shared,
                        example.seed,
                    )?
                };
                cache.insert(path.clone(), derived);
                cache.get(&path, None)?
            }
            _ => cache.get(&path, format.as_deref())?,
        };
        let origin = table.origin.clone();
        Ok((DataProduct::from_source(contract, table)?, origin))
    }

    /// The public table an example's products are derived from: its file, or the generator of
    /// a known dataset when the file is absent.
    fn example_source<'c>(
        &self,
        example: Option<&Path>,
        cache: &'c mut SourceCache,
    ) -> Result<&'c SourceTable, SplitError> {
        let spec = &self.spec;
        let Some(path) = example.filter(|p| p.exists()).map(Path::to_path_buf) else {
            // No table: a known dataset's generator stands in for it (code, not a file).
            if spec.dataset.as_deref() == Some("fraud") {
                let path = PathBuf::from("generated:fraud");
                let rows = spec.synthetic_rows.unwrap_or(fraud::FULL_SHAPE.0);
                if !cache.contains(&path) {
                    tracing::info!(
                        "{} not found: generating {rows} synthetic rows of the same schema",
                        example
                            .map_or_else(|| "no example table".into(), |p| p.display().to_string())
                    );
                    cache.insert(path.clone(), fraud::generate(rows, spec.split.seed));
                }
                return Ok(cache.get(&path, None)?);
            }
            return Err(DataError::Invalid(match example {
                Some(path) => format!(
                    "the example's source table {} is missing (see ../shared/data/README.md for where to get it)",
                    path.display()
                ),
                None => "the job derives its products from an example table, and this node's config names none (`example_source`): a node reads no file a job spec names".into(),
            })
            .into());
        };
        let table = cache.get(&path, None)?;
        if spec.dataset.as_deref() == Some("fraud") {
            fraud::check_shape(table)?;
        }
        Ok(table)
    }

    /// The label owner's part: the labels of its rows, and the partition of the aligned rows
    /// (the published test keys, or a stratified draw from the job's split seed).
    pub fn labels_and_partition(
        &self,
        owner: &DataProduct,
    ) -> Result<(Targets, Partition), SplitError> {
        let spec = &self.spec;
        let targets = read_targets(owner, &spec.label.column, &spec.objective)?;
        let (partition, missing) =
            spec.split
                .partition(self.dir(), owner, &targets, spec.split.seed)?;
        if missing > 0 {
            tracing::warn!("{missing} test keys are not in the data");
        }
        Ok((targets, partition))
    }

    /// One domain's features: its pipeline fitted on the training rows `train` and applied to
    /// all of its rows. `None` for a domain that contributes no feature (a pure label owner).
    pub fn prepare_domain(
        &self,
        domain: &DomainSpec,
        product: &DataProduct,
        train: &[u32],
    ) -> Result<Option<PreparedDomain>, SplitError> {
        let spec = &self.spec;
        if domain.features.is_empty() {
            return Ok(None);
        }
        if domain.name == spec.label.domain
            && domain
                .features
                .iter()
                .any(|f| f.column == spec.label.column)
        {
            return Err(SplitError::Spec {
                path: self.file.clone(),
                message: format!(
                    "domain `{}` lists its label column `{}` as a feature",
                    domain.name, spec.label.column
                ),
            });
        }
        let pipeline = FeaturePipeline::fit(product, &domain.features, train)?;
        spec.prepared_domain(domain, product, pipeline).map(Some)
    }
}

impl SplitSpec {
    /// The partition of `product`'s rows, labelled `targets`: the rows whose key is one of the
    /// split's test keys (`test_key_values`, or the file `test_keys` relative to `dir`) are the
    /// test rows, or, without test keys, a stratified `test_fraction` of them; a stratified
    /// `valid_fraction` of the rest validates. Drawn from `seed`. Also returns how many of the
    /// test keys the product does not hold.
    pub(crate) fn partition(
        &self,
        dir: &Path,
        product: &DataProduct,
        targets: &Targets,
        seed: u64,
    ) -> Result<(Partition, usize), SplitError> {
        let test_keys: Option<HashSet<String>> = match (&self.test_key_values, &self.test_keys) {
            (Some(values), _) => Some(values.iter().cloned().collect()),
            (None, Some(file)) => Some(datasets::read_key_list(&dir.join(file))?),
            (None, None) => None,
        };
        let Some(test_keys) = test_keys else {
            let partition = Partition::stratified(
                &targets.strata(),
                self.test_fraction,
                self.valid_fraction,
                seed,
            );
            return Ok((partition, 0));
        };
        let keys = product.keys()?.ok_or_else(|| {
            DataError::Invalid(format!(
                "the split names test keys, but data product `{}` declares no key column (primaryKey)",
                product.name()
            ))
        })?;
        let known: HashSet<&String> = keys.iter().collect();
        let missing = test_keys.iter().filter(|k| !known.contains(k)).count();
        let partition = Partition::with_test_keys(
            &keys,
            &test_keys,
            &targets.strata(),
            self.valid_fraction,
            seed,
        );
        Ok((partition, missing))
    }
}

/// How the domains' rows were aligned.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AlignmentMethod {
    /// On the products' key columns: by private set intersection over a mesh, by a plain join
    /// in one process (same rows, same order).
    PrivateSetIntersection,
    /// Products without key columns: the same rows in the same order, by position.
    Positional,
}

/// The rows each domain's product holds and the entities all of them share: what an alignment
/// run reveals (to governance and to every domain).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlignmentSummary {
    pub method: AlignmentMethod,
    /// The private set intersection protocol a mesh ran (none in one process, by position, or
    /// when the domains reused an earlier run's result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<crate::job::PsiProtocol>,
    /// Rows of each domain's product before alignment, in domain order.
    pub products: Vec<ProductRows>,
    /// Entities present in every product: the rows the job trains and tests on.
    pub intersection: usize,
    /// The earlier alignment run whose result every domain reused (its products unchanged),
    /// instead of running private set intersection again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProductRows {
    pub domain: String,
    pub rows: usize,
}

/// The files a run's validation and test keys are written to, one key per line: the format
/// `split.test_keys` reads, so that another run can be held to the same test rows.
pub const SPLIT_KEY_FILES: [&str; 2] = ["valid-keys.txt", "test-keys.txt"];

/// Writes the keys of the validation and test rows of `partition` to `dir` (see
/// [`SPLIT_KEY_FILES`]); `keys` holds each aligned row's key. Returns the files written.
pub fn write_split_keys(
    dir: &Path,
    keys: &[String],
    partition: &Partition,
) -> Result<Vec<PathBuf>, SplitError> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (file, rows) in SPLIT_KEY_FILES
        .iter()
        .zip([&partition.valid, &partition.test])
    {
        let mut text = String::new();
        for &row in rows.iter() {
            // Rows past the keys are synthetic (SMOTE): never in validation or test.
            if let Some(key) = keys.get(row as usize) {
                text.push_str(key);
                text.push('\n');
            }
        }
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// Refuses a key column that cannot align rows (an empty or repeated key), naming the product
/// and the first offending row, and returns the keys; `None` for a product without one.
pub fn product_keys(product: &DataProduct) -> Result<Option<Vec<String>>, SplitError> {
    let Some(keys) = product.keys()? else {
        return Ok(None);
    };
    let column = &product.contract.key_column().expect("has keys").name;
    fedmesh_psi::check_keys(product.name(), column, &keys)?;
    Ok(Some(keys))
}

/// Aligns the domains' products in this process: with key columns, each keeps the rows of the
/// entities all products share, ordered by key — the rows private set intersection gives each
/// domain over a mesh, computed here by a plain join, since this process holds every product
/// anyway (`fedmesh-psi`'s tests check that both agree); without key columns, the products must
/// already hold the same entities in the same order.
pub fn align_products(
    domains: &[DomainSpec],
    products: Vec<DataProduct>,
) -> Result<(Vec<DataProduct>, AlignmentSummary), SplitError> {
    let sizes: Vec<ProductRows> = domains
        .iter()
        .zip(&products)
        .map(|(d, p)| ProductRows {
            domain: d.name.clone(),
            rows: p.rows(),
        })
        .collect();
    let keys = products
        .iter()
        .map(product_keys)
        .collect::<Result<Vec<_>, _>>()?;
    let keyed: Vec<bool> = keys.iter().map(Option::is_some).collect();
    if alignment_method(&sizes, &keyed)? == AlignmentMethod::Positional {
        let summary = AlignmentSummary {
            kept_from: None,
            method: AlignmentMethod::Positional,
            protocol: None,
            intersection: sizes.first().map_or(0, |p| p.rows),
            products: sizes,
        };
        return Ok((products, summary));
    }
    let keys: Vec<Vec<String>> = keys.into_iter().flatten().collect();
    let alignments = fedmesh_psi::align_in_the_clear(&keys);
    let intersection = alignments.first().map_or(0, |a| a.rows.len());
    check_intersection(intersection, &sizes)?;
    let products = products
        .iter()
        .zip(&alignments)
        .map(|(product, alignment)| product.take_rows(&alignment.rows))
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(
        "aligned on the products' keys: {intersection} entities common to all {} products",
        products.len()
    );
    let summary = AlignmentSummary {
        kept_from: None,
        method: AlignmentMethod::PrivateSetIntersection,
        protocol: None,
        products: sizes,
        intersection,
    };
    Ok((products, summary))
}

/// How the domains' products are aligned, given their sizes and whether each declares a key
/// column: on their keys when all do; by position when none does, which needs the same number
/// of rows everywhere. A mix is refused: rows cannot be matched on keys some products lack.
pub fn alignment_method(
    products: &[ProductRows],
    keyed: &[bool],
) -> Result<AlignmentMethod, SplitError> {
    match (
        keyed.iter().position(|&k| k),
        keyed.iter().position(|&k| !k),
    ) {
        (Some(with), Some(without)) => Err(DataError::Invalid(format!(
            "the product of domain `{}` declares no key column (primaryKey) but that of `{}` does: products are aligned on their keys, so every product of the job needs one",
            products[without].domain, products[with].domain
        ))
        .into()),
        (Some(_), None) => Ok(AlignmentMethod::PrivateSetIntersection),
        (None, _) => match products.iter().find(|p| p.rows != products[0].rows) {
            Some(other) => Err(DataError::Invalid(format!(
                "data products are not aligned: domain `{}` has {} rows, `{}` has {}, and they declare no key column (primaryKey) to align them on",
                other.domain, other.rows, products[0].domain, products[0].rows
            ))
            .into()),
            None => Ok(AlignmentMethod::Positional),
        },
    }
}

/// An empty intersection leaves nothing to train on: said plainly, with the products' sizes.
pub fn check_intersection(intersection: usize, sizes: &[ProductRows]) -> Result<(), SplitError> {
    if intersection == 0 {
        let sizes: Vec<String> = sizes
            .iter()
            .map(|p| format!("`{}` {} rows", p.domain, p.rows))
            .collect();
        return Err(DataError::Invalid(format!(
            "the domains' products share no entity ({}): check that their key columns hold the same identifiers",
            sizes.join(", ")
        ))
        .into());
    }
    Ok(())
}

pub(crate) fn read_targets(
    product: &DataProduct,
    column: &str,
    objective: &Objective,
) -> Result<Targets, SplitError> {
    let values = product.column_f64(column)?;
    if let Some(row) = values.iter().position(Option::is_none) {
        return Err(DataError::Invalid(format!(
            "data product `{}`, column `{column}`, row {}: the label is missing",
            product.name(),
            row + 1
        ))
        .into());
    }
    let values = values.into_iter().map(|v| v.expect("checked above"));
    Ok(match objective {
        Objective::CrossEntropy { classes, .. } => {
            let mut labels = Vec::with_capacity(product.rows());
            for (row, v) in values.enumerate() {
                // The value itself stays out of the message: errors travel to governance.
                if v.fract() != 0.0 || v < 0.0 || v as usize >= *classes {
                    return Err(DataError::Invalid(format!(
                        "data product `{}`, column `{column}`, row {}: the label is not a class in 0..{classes} (an integer from 0 to {})",
                        product.name(),
                        row + 1,
                        classes - 1
                    ))
                    .into());
                }
                labels.push(v as i64);
            }
            Targets::Classes(labels)
        }
        Objective::Mse => {
            let mut targets = Vec::with_capacity(product.rows());
            for (row, v) in values.enumerate() {
                if !(v as f32).is_finite() {
                    return Err(DataError::Invalid(format!(
                        "data product `{}`, column `{column}`, row {}: the label is not a finite number a 32-bit float can hold",
                        product.name(),
                        row + 1
                    ))
                    .into());
                }
                targets.push(v as f32);
            }
            Targets::Values(targets)
        }
    })
}

/// A product's contract, and the file its rows are read from and that file's format: `data`
/// when given, or where the contract's server says (relative to the contract).
pub(crate) fn product_file(
    contract_path: &Path,
    data: Option<&Path>,
) -> Result<(DataContract, PathBuf, Option<String>), SplitError> {
    let contract = DataContract::from_path(contract_path)?;
    let contract_dir = contract_path.parent().unwrap_or(Path::new("."));
    let (path, format) = match (data, contract.local_source(contract_dir)) {
        (Some(path), source) => (path.to_path_buf(), source.and_then(|s| s.1)),
        (None, Some(source)) => source,
        (None, None) => {
            return Err(DataError::NoSource {
                product: contract.product_name().to_string(),
            }
            .into());
        }
    };
    Ok((contract, path, format))
}
