//! Each domain's side of a horizontal job's preparation: its product read and validated, its
//! own rows partitioned, and the one feature pipeline every domain applies, fitted from sums the
//! domains add up (no domain shows another a value).

use std::path::{Path, PathBuf};

use fedmesh_data::datasets;
use fedmesh_data::{
    DataError, DataProduct, FeatureMatrix, FeaturePipeline, Partition, SourceCache, SourceTable,
};
use fedmesh_model::Targets;

use super::domain::{DomainSums, FederatedDomain};
use super::federation::{LocalFederation, federated_pipeline};
use super::spec::{HorizontalSpec, RowSplit};
use crate::SplitError;

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
    /// The domains' summed statistics the pipeline was fitted from.
    pub totals: DomainSums,
    /// Where the data came from, for the report.
    pub source: String,
}

impl PreparedHorizontal {
    /// Reads every domain's product and prepares it as the domain itself would, each a
    /// [`FederatedDomain`] in this process: each partitions its own rows and sums its training
    /// rows' features, and all apply the pipeline fitted from everyone's sums.
    pub fn prepare(spec: &HorizontalSpec, file: &Path) -> Result<Self, SplitError> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut cache = SourceCache::default();
        let mut domains = Vec::with_capacity(spec.domains.len());
        let mut products = Vec::with_capacity(spec.domains.len());
        let mut origins = Vec::new();
        for (index, domain) in spec.domains.iter().enumerate() {
            let contract = dir.join(&domain.contract);
            let (product, origin) =
                spec.load_product(dir, index, &contract, None, None, &mut cache)?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
            products.push(product.name().to_string());
            domains.push(FederatedDomain::open(spec, dir, product, index, 0)?);
        }
        let mut federation = LocalFederation {
            domains,
            drop_outs: Default::default(),
            round: 0,
        };
        let fitted = federated_pipeline(spec, &mut federation)?;
        let parties = federation
            .domains
            .iter()
            .zip(&products)
            .map(|(domain, product)| domain.party(product).expect("the pipeline is fitted"))
            .collect();
        Ok(Self {
            spec: spec.clone(),
            file: file.to_path_buf(),
            parties,
            pipeline: fitted.pipeline,
            totals: fitted.totals,
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

impl HorizontalSpec {
    /// Domain `index`'s product under `contract`: the file `data` names, or where the contract's
    /// server says, or — for an example whose file is absent — the domain's rows of the
    /// example's public table (`example_source`, or the spec's, relative to `dir`).
    pub fn load_product(
        &self,
        dir: &Path,
        index: usize,
        contract: &Path,
        data: Option<&Path>,
        example_source: Option<&Path>,
        cache: &mut SourceCache,
    ) -> Result<(DataProduct, String), SplitError> {
        let spec = self;
        let domain = spec.domains.get(index).ok_or_else(|| {
            SplitError::refused("the domain", format!("the job has no domain {index}"))
        })?;
        let (contract, path, format) = crate::job::product_file(contract, data)?;
        let table = match (&spec.example_data, data) {
            (Some(example), None) if !path.exists() => {
                let source_path =
                    example_source.map_or_else(|| dir.join(&example.source), Path::to_path_buf);
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
            (_, _) => {
                let table = cache.get(&path, format.as_deref())?.clone();
                let origin = table.origin.clone();
                (table, origin)
            }
        };
        let (table, origin) = table;
        Ok((DataProduct::from_source(contract, &table)?, origin))
    }
}
