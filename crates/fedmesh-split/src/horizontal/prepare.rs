//! Each domain's side of a horizontal job's preparation: its product read and validated, its
//! own rows partitioned, and the one feature pipeline every domain applies, fitted from sums the
//! domains add up (no domain shows another a value).

use std::path::{Path, PathBuf};

use fedmesh_data::datasets;
use fedmesh_data::{
    DataContract, DataError, DataProduct, FeatureMatrix, FeaturePipeline, NumericSums, Partition,
    SourceCache, SourceTable,
};
use fedmesh_model::Targets;

use super::spec::{HorizontalDomain, HorizontalSpec, RowSplit};
use crate::SplitError;
use crate::job::read_targets;

/// One domain of a horizontal job: its rows as model input, its labels, its own partition.
#[derive(Debug, Clone)]
pub struct HorizontalParty {
    pub name: String,
    /// Its data product's name.
    pub product: String,
    pub features: FeatureMatrix,
    pub targets: Targets,
    pub partition: Partition,
}

/// A horizontal job with every domain's data read, checked and transformed.
#[derive(Debug, Clone)]
pub struct PreparedHorizontal {
    pub spec: HorizontalSpec,
    /// The spec file; relative paths start at its folder.
    pub file: PathBuf,
    pub parties: Vec<HorizontalParty>,
    /// The pipeline every domain applies (fitted from the sums of all domains' training rows).
    pub pipeline: FeaturePipeline,
    /// Where the data came from, for the report.
    pub source: String,
}

impl PreparedHorizontal {
    /// Reads every domain's product and prepares it as the domain itself would: each partitions
    /// its own rows, sums its training rows' numeric features, and applies the pipeline fitted
    /// from everyone's sums.
    pub fn prepare(spec: &HorizontalSpec, file: &Path) -> Result<Self, SplitError> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut cache = SourceCache::default();
        let mut products = Vec::with_capacity(spec.domains.len());
        let mut origins = Vec::new();
        for (index, domain) in spec.domains.iter().enumerate() {
            let (product, origin) = load_product(spec, dir, domain, index, &mut cache)?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
            products.push(product);
        }
        let mut partitions = Vec::with_capacity(products.len());
        let mut targets = Vec::with_capacity(products.len());
        let mut sums: Option<Vec<NumericSums>> = None;
        for (index, product) in products.iter().enumerate() {
            let (labels, partition) = labels_and_partition(spec, dir, product, index)?;
            let mine = FeaturePipeline::numeric_sums(product, &spec.features, &partition.train)?;
            sums = Some(match sums {
                None => mine,
                Some(total) => total.into_iter().zip(mine).map(|(a, b)| a + b).collect(),
            });
            targets.push(labels);
            partitions.push(partition);
        }
        let sums = sums.expect("a horizontal job has domains");
        let mut parties = Vec::with_capacity(products.len());
        let mut pipeline = None;
        for (((domain, product), labels), partition) in spec
            .domains
            .iter()
            .zip(&products)
            .zip(targets)
            .zip(partitions)
        {
            let fitted = FeaturePipeline::from_sums(product, &spec.features, &sums)?;
            let features = fitted.transform(product)?;
            pipeline.get_or_insert(fitted);
            parties.push(HorizontalParty {
                name: domain.name.clone(),
                product: product.name().to_string(),
                features,
                targets: labels,
                partition,
            });
        }
        if let Some(empty) = parties.iter().find(|p| p.partition.train.len() < 2) {
            return Err(SplitError::Job {
                job: spec.name.clone(),
                reason: format!(
                    "domain `{}` has {} training rows: a domain trains on at least 2",
                    empty.name,
                    empty.partition.train.len()
                ),
            });
        }
        Ok(Self {
            spec: spec.clone(),
            file: file.to_path_buf(),
            parties,
            pipeline: pipeline.expect("a horizontal job has domains"),
            source: origins.join("; "),
        })
    }

    /// Every domain's rows one after another, with the partition that keeps each row in its
    /// part: the centralized baseline's data, and where the global model is evaluated (the
    /// metrics of the union of the domains' validation or test rows).
    pub fn pooled(&self) -> (FeatureMatrix, Targets, Partition) {
        let matrices: Vec<&FeatureMatrix> = self.parties.iter().map(|p| &p.features).collect();
        let features = FeatureMatrix::stack_rows(&matrices).expect("one pipeline for every domain");
        let (targets, partition) = self.pooled_labels();
        (features, targets, partition)
    }

    /// The labels and the partition of [`PreparedHorizontal::pooled`], without copying the
    /// features.
    pub fn pooled_labels(&self) -> (Targets, Partition) {
        let mut partition = Partition {
            train: Vec::new(),
            valid: Vec::new(),
            test: Vec::new(),
        };
        let mut offset = 0u32;
        for party in &self.parties {
            let shift = |rows: &[u32]| rows.iter().map(|r| r + offset).collect::<Vec<_>>();
            partition.train.extend(shift(&party.partition.train));
            partition.valid.extend(shift(&party.partition.valid));
            partition.test.extend(shift(&party.partition.test));
            offset += party.features.rows as u32;
        }
        let targets = match &self.parties[0].targets {
            Targets::Classes(_) => Targets::Classes(
                self.parties
                    .iter()
                    .flat_map(|p| match &p.targets {
                        Targets::Classes(c) => c.clone(),
                        Targets::Values(_) => Vec::new(),
                    })
                    .collect(),
            ),
            Targets::Values(_) => Targets::Values(
                self.parties
                    .iter()
                    .flat_map(|p| match &p.targets {
                        Targets::Values(v) => v.clone(),
                        Targets::Classes(_) => Vec::new(),
                    })
                    .collect(),
            ),
        };
        (targets, partition)
    }
}

/// A domain's labels and its partition: the spec's test keys found in its key column, or a
/// stratified draw from the split seed and the domain's position.
fn labels_and_partition(
    spec: &HorizontalSpec,
    dir: &Path,
    product: &DataProduct,
    index: usize,
) -> Result<(Targets, Partition), SplitError> {
    let targets = read_targets(product, &spec.label, &spec.objective)?;
    // Each domain holds only its own clients' share of the test keys: the rest are not missing.
    let (partition, _) = spec.split.partition(
        dir,
        product,
        &targets,
        spec.split.seed.wrapping_add(index as u64),
    )?;
    Ok((targets, partition))
}

/// A domain's product: where its contract's server says, or, for an example whose file is
/// absent, the domain's rows of the example's public table.
fn load_product(
    spec: &HorizontalSpec,
    dir: &Path,
    domain: &HorizontalDomain,
    index: usize,
    cache: &mut SourceCache,
) -> Result<(DataProduct, String), SplitError> {
    let contract_path = dir.join(&domain.contract);
    let contract = DataContract::from_path(&contract_path)?;
    let contract_dir = contract_path.parent().unwrap_or(Path::new("."));
    let (path, format) = contract.local_source(contract_dir).ok_or_else(|| {
        SplitError::from(DataError::NoSource {
            product: contract.product_name().to_string(),
        })
    })?;
    let table = match &spec.example_data {
        Some(example) if !path.exists() => {
            let source_path = dir.join(&example.source);
            if !source_path.exists() {
                return Err(DataError::Invalid(format!(
                    "neither domain `{}`'s file {} nor the example's source table {} exists (see ../shared/data/README.md for where to get it)",
                    domain.name,
                    path.display(),
                    source_path.display()
                ))
                .into());
            }
            let source: &SourceTable = cache.get(&source_path, None)?;
            let derived = match &example.rows {
                RowSplit::ByColumn { column, values } => {
                    let mine: Vec<String> = values
                        .get(&domain.name)
                        .map(|v| v.iter().map(fedmesh_data::Category::as_text).collect())
                        .unwrap_or_default();
                    datasets::rows_where(source, column, &mine)?
                }
                RowSplit::LabelSkew { alpha, seed } => datasets::label_skewed_rows(
                    source,
                    &spec.label,
                    spec.domains.len(),
                    index,
                    *alpha,
                    *seed,
                )?,
            };
            let origin = match &example.rows {
                RowSplit::ByColumn { column, .. } => {
                    format!(
                        "{}, its rows dealt to the domains by `{column}`",
                        source.origin
                    )
                }
                RowSplit::LabelSkew { alpha, .. } => format!(
                    "{}, its rows dealt to the domains by a label skew (Dirichlet α = {alpha})",
                    source.origin
                ),
            };
            (derived, origin)
        }
        _ => {
            let table = cache.get(&path, format.as_deref())?.clone();
            let origin = table.origin.clone();
            (table, origin)
        }
    };
    let (table, origin) = table;
    Ok((DataProduct::from_source(contract, &table)?, origin))
}
