//! Job specs: which products, which columns, which model, how to train — and running one.
//!
//! A job spec (`job.yaml`) names each domain's data product by its contract, the columns it
//! contributes and how they are transformed, the label (a column of the label owner's product),
//! the split, the model shape and the training schedule. [`Job::prepare`] loads and validates the
//! products, aligns them, draws the partition and fits each domain's feature pipeline on training
//! rows; [`PreparedJob::run`] then trains one configuration (centralized, split with or without
//! label sharing, or one domain alone) for one seed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use fedmesh_data::datasets::{self, fraud};
use fedmesh_data::resample::{self, ResampleSpec};
use fedmesh_data::{
    DataContract, DataError, DataProduct, FeatureMatrix, FeaturePipeline, FeatureSpec, Partition,
    SourceCache, SourceTable,
};
use fedmesh_model::{
    BottomConfig, HeadConfig, Objective, Targets, TowerConfig, reseed, seeded, training_device,
};
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::limits::{Limits, MAX_BATCH_ROWS, MAX_CLASSES, MAX_EMBEDDING_WIDTH, MAX_SYNTHETIC_ROWS};
use crate::party::{DomainParty, LabelOwner};
use crate::scores::{Curves, Metrics};
use crate::trainer::{
    EpochRecord, JointNetwork, JointTrainer, LabelPlacement, Observer, SplitTrainer, Trainer,
    TrainingSpec, fit,
};
use crate::transport::{InProcess, Transport};

/// A job spec as written in `job.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Why the model is trained: checked against governance's policies and each product's
    /// `flAllowedPurposes`. A mesh admits no job without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// How: checked against each product's `flAllowedTechniques`.
    #[serde(default = "default_technique")]
    pub technique: String,
    /// What a mesh does when the label owner's contract forbids label sharing and the job asks
    /// for `split-label-sharing`: run `split-label-owner` instead, or fail.
    #[serde(default, skip_serializing_if = "LabelSharingFallback::is_default")]
    pub on_label_sharing_forbidden: LabelSharingFallback,
    /// A known dataset whose generator stands in when the data file is absent, and whose shape
    /// is checked when a file is given (`fraud`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Rows generated for a known dataset when its file is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic_rows: Option<usize>,
    /// Examples only: how a domain's product is derived from one public table when its own
    /// file is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example_data: Option<ExampleData>,
    pub objective: Objective,
    pub label: LabelSpec,
    pub split: SplitSpec,
    pub domains: Vec<DomainSpec>,
    pub model: ModelSpec,
    pub training: TrainingSpec,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Also train each feature domain alone (to show what the mesh adds).
    #[serde(default)]
    pub single_domain_baselines: bool,
    /// SMOTE and/or undersampling of the training rows (binary tasks; off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample: Option<ResampleSpec>,
    /// How cut-layer tensors travel between nodes (runs over the network only).
    #[serde(default, skip_serializing_if = "WireSpec::is_default")]
    pub wire: WireSpec,
}

fn default_technique() -> String {
    "split-learning".into()
}

/// See [`JobSpec::on_label_sharing_forbidden`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelSharingFallback {
    /// Keep the labels at their owner: configuration 2 runs in place of configuration 1.
    #[default]
    SplitLabelOwner,
    /// The job fails at admission.
    Fail,
}

impl LabelSharingFallback {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How tensors are encoded on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireSpec {
    #[serde(default)]
    pub encoding: WireEncoding,
}

impl WireSpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `f32` is exact; `f16` and `bf16` halve the bytes of activations and gradients at the cost of
/// precision (the run then no longer equals the in-process one bit for bit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireEncoding {
    #[default]
    F32,
    F16,
    Bf16,
}

fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3, 4, 5]
}

/// The label: a column of one domain's product (that domain is the label owner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub domain: String,
    pub column: String,
}

/// Products derived from one public table, for examples (see [`datasets::example_product`]):
/// each domain holds the entities all share and some of its own, in an order of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleData {
    /// The table, relative to the job file. When it is absent, a known dataset's generator
    /// (`dataset`) stands in for it.
    pub source: PathBuf,
    /// Probability that an entity is held by every domain; any other is held by each domain
    /// with probability 1/2.
    pub shared: f64,
    #[serde(default = "default_split_seed")]
    pub seed: u64,
}

/// How aligned rows are partitioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// A file of keys (one per line) that make up the test part, relative to the job file; when
    /// it is absent the split is stratified with `test_fraction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_keys: Option<PathBuf>,
    /// The test keys themselves, in place of `test_keys` in a spec sent to the nodes: a node
    /// reads no file a job spec names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_key_values: Option<Vec<String>>,
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// Seed of the partition, fixed across training seeds so that runs compare.
    #[serde(default = "default_split_seed")]
    pub seed: u64,
}

fn default_test_fraction() -> f64 {
    0.3
}
fn default_valid_fraction() -> f64 {
    0.1
}
fn default_split_seed() -> u64 {
    42
}

/// One domain of the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    pub name: String,
    /// The product's ODCS contract, relative to the job file.
    pub contract: PathBuf,
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
    /// This domain's bottom, when it differs from `model.bottom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottom: Option<LayersSpec>,
}

/// Hidden layers of an MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayersSpec {
    pub layers: Vec<usize>,
    #[serde(default)]
    pub batch_norm: bool,
    #[serde(default)]
    pub dropout: f64,
}

/// The split network's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Every domain's bottom unless the domain says otherwise.
    pub bottom: LayersSpec,
    /// Governance's tower.
    pub tower: LayersSpec,
    /// Hidden layers of the head before its output layer (often none: the head is the last
    /// layer, as in the seed's U-shaped configuration).
    #[serde(default)]
    pub head: Vec<usize>,
    /// The centralized baseline's bottom over all columns; by default as wide as all domain
    /// bottoms together, layer by layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub centralized: Option<LayersSpec>,
}

/// A job spec and the file it was read from.
#[derive(Debug, Clone)]
pub struct Job {
    pub spec: JobSpec,
    /// The spec file; its folder is where relative paths start.
    pub file: PathBuf,
}

/// A configuration to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunConfig {
    /// A recommendation job's baseline: items ranked by how often they were chosen.
    Popularity,
    /// Every column (or, for a recommender, every domain's table) in one place: NeuMF for a
    /// recommendation job.
    Centralized,
    SplitLabelSharing,
    SplitLabelOwner,
    /// One domain's features alone, trained centrally.
    SingleDomain(String),
}

impl RunConfig {
    /// The name used in `results.json`.
    pub fn name(&self) -> String {
        match self {
            RunConfig::Popularity => "popularity".into(),
            RunConfig::Centralized => "centralized".into(),
            RunConfig::SplitLabelSharing => "split-label-sharing".into(),
            RunConfig::SplitLabelOwner => "split-label-owner".into(),
            RunConfig::SingleDomain(d) => format!("single-domain:{d}"),
        }
    }
}

impl std::str::FromStr for RunConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "popularity" => Ok(RunConfig::Popularity),
            "centralized" => Ok(RunConfig::Centralized),
            "split-label-sharing" => Ok(RunConfig::SplitLabelSharing),
            "split-label-owner" => Ok(RunConfig::SplitLabelOwner),
            other => match other.strip_prefix("single-domain:") {
                Some(d) => Ok(RunConfig::SingleDomain(d.to_string())),
                None => Err(format!(
                    "unknown configuration `{other}`: use centralized, split-label-sharing, split-label-owner, single-domain:NAME, or popularity (recommendation jobs)"
                )),
            },
        }
    }
}

/// One trained configuration and seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub config: String,
    pub seed: u64,
    pub metrics: Metrics,
    /// Rows trained on (after any resampling), used to choose the threshold, and tested on.
    #[serde(default)]
    pub train_rows: usize,
    #[serde(default)]
    pub valid_rows: usize,
    #[serde(default)]
    pub test_rows: usize,
    pub train_seconds: f64,
    pub cut_layer_bytes: u64,
    pub samples_per_second: f64,
    pub history: Vec<EpochRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curves: Option<Curves>,
    /// Trained parts and feature pipelines, when saved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_files: Vec<String>,
    /// Bytes on the wire, for runs over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire: Option<WireBytes>,
    /// How the domains' rows were aligned before the partition was drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<AlignmentSummary>,
    /// Each test row's scores, when this process held the head (in-process runs, and label
    /// sharing); never written to `results.json`.
    #[serde(skip)]
    pub test_scores: Vec<(u32, Vec<f32>)>,
}

/// What a run over the network sent, counted as encoded protobuf messages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WireBytes {
    pub encoding: WireEncoding,
    /// Governance to the domain nodes (batch plans, gradients, tower outputs).
    pub to_domains: u64,
    /// Domain nodes to governance (activations, the head's gradient, reports).
    pub from_domains: u64,
}

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
}

/// The text of a job spec (classification or recommendation) and its file: `path` may be the
/// spec file or the folder holding `job.yaml`.
pub fn read_spec(path: &Path) -> Result<(String, PathBuf), SplitError> {
    let file = if path.is_dir() {
        path.join("job.yaml")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| SplitError::Spec {
        path: file.clone(),
        message: e.to_string(),
    })?;
    Ok((text, file))
}

impl Job {
    /// The folder relative paths in the spec start from.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    /// Reads a job spec; `path` may be the spec file or the folder holding `job.yaml`.
    pub fn load(path: &Path) -> Result<Self, SplitError> {
        let (text, file) = read_spec(path)?;
        Self::from_yaml(&text, &file)
    }

    /// Reads a job spec sent as text; `file` names it in errors and anchors relative paths.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Self, SplitError> {
        Ok(Self {
            spec: Self::parse(text, file)?,
            file: file.to_path_buf(),
        })
    }

    /// The spec as sent to other parties: contract paths made absolute (for reference only;
    /// a node serves its own product) and the test keys inlined, since a node reads no file a
    /// job spec names.
    pub fn to_portable_yaml(&self) -> Result<String, SplitError> {
        let mut spec = self.spec.clone();
        let dir = std::path::absolute(self.dir()).unwrap_or_else(|_| self.dir().to_path_buf());
        for domain in &mut spec.domains {
            domain.contract = dir.join(&domain.contract);
        }
        if let Some(example) = &mut spec.example_data {
            example.source = dir.join(&example.source);
        }
        if let Some(keys) = spec.split.test_keys.take() {
            let mut values: Vec<String> = datasets::read_key_list(&dir.join(keys))?
                .into_iter()
                .collect();
            values.sort();
            spec.split.test_key_values = Some(values);
        }
        Ok(serde_norway::to_string(&spec).expect("job specs serialize"))
    }

    fn parse(text: &str, file: &Path) -> Result<JobSpec, SplitError> {
        let spec: JobSpec = serde_norway::from_str(text).map_err(|e| SplitError::Spec {
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
        let limits = spec.limit_problems();
        if !limits.is_empty() {
            return Err(SplitError::Spec {
                path: file.to_path_buf(),
                message: limits.join("; "),
            });
        }
        let problem = if !spec.domains.iter().any(|d| d.name == spec.label.domain) {
            Some(format!(
                "the label's domain `{}` is not one of the job's domains",
                spec.label.domain
            ))
        } else if !spec.domains.iter().any(|d| !d.features.is_empty()) {
            Some("no domain contributes a feature".to_string())
        } else if spec.seeds.is_empty() {
            Some("`seeds` is empty".to_string())
        } else {
            None
        };
        match problem {
            Some(message) => Err(SplitError::Spec {
                path: file.to_path_buf(),
                message,
            }),
            None => Ok(spec),
        }
    }

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
        let source = products
            .last()
            .map(|(_, origin)| origin.clone())
            .unwrap_or_default();
        let products: Vec<DataProduct> = products.into_iter().map(|(p, _)| p).collect();
        let (products, alignment) = align_products(&spec.domains, products)?;
        let rows = alignment.intersection;
        let owner = spec
            .domains
            .iter()
            .position(|d| d.name == spec.label.domain)
            .expect("checked when the spec was read");
        let (mut targets, mut partition) = self.labels_and_partition(&products[owner])?;
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
        })
    }
}

impl Job {
    /// One domain's part: reads its product where its contract says (or from `data`; a known
    /// dataset's generator stands in for an absent file) and validates it against the contract.
    /// Returns the product and where its data came from.
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
        let contract_path = self.dir().join(&domain.contract);
        let contract = DataContract::from_path(&contract_path)?;
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
        let test_keys = match (&spec.split.test_key_values, &spec.split.test_keys) {
            (Some(values), _) => Some(values.iter().cloned().collect()),
            (None, Some(file)) => Some(datasets::read_key_list(&self.dir().join(file))?),
            (None, None) => None,
        };
        let partition = match test_keys {
            Some(test_keys) => {
                let key = owner
                    .contract
                    .key_column()
                    .ok_or_else(|| {
                        DataError::Invalid(format!(
                            "the split names test keys, but data product `{}` declares no key column (primaryKey)",
                            owner.name()
                        ))
                    })?
                    .name
                    .clone();
                let keys: Vec<String> = owner
                    .column_strings(&key)?
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect();
                let known: HashSet<&String> = keys.iter().collect();
                let missing = test_keys.iter().filter(|k| !known.contains(k)).count();
                if missing > 0 {
                    tracing::warn!("{missing} test keys are not in the data");
                }
                Partition::with_test_keys(
                    &keys,
                    &test_keys,
                    &targets.strata(),
                    spec.split.valid_fraction,
                    spec.split.seed,
                )
            }
            None => Partition::stratified(
                &targets.strata(),
                spec.split.test_fraction,
                spec.split.valid_fraction,
                spec.split.seed,
            ),
        };
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
    /// Rows of each domain's product before alignment, in domain order.
    pub products: Vec<ProductRows>,
    /// Entities present in every product: the rows the job trains and tests on.
    pub intersection: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProductRows {
    pub domain: String,
    pub rows: usize,
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
            method: AlignmentMethod::Positional,
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
        method: AlignmentMethod::PrivateSetIntersection,
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

fn read_targets(
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
                if v.fract() != 0.0 || v < 0.0 || v as usize >= *classes {
                    return Err(DataError::Invalid(format!(
                        "data product `{}`, column `{column}`, row {}: label {v} is not a class in 0..{classes}",
                        product.name(),
                        row + 1
                    ))
                    .into());
                }
                labels.push(v as i64);
            }
            Targets::Classes(labels)
        }
        Objective::Mse => Targets::Values(values.map(|v| v as f32).collect()),
    })
}

/// Every part's initial weights are drawn from a seed of its own, derived from the run's seed
/// and the part's number, so that they do not depend on which party builds which part first:
/// the joint (centralized or single-domain) bottom is part 0, the feature domains' bottoms are
/// parts 1, 2, … in the order of the spec, the tower and the head are [`TOWER_PART`] and
/// [`HEAD_PART`].
pub fn part_seed(seed: u64, part: u64) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(part)
}

/// Dropout draws from burn's process-wide generator: every process reseeds it from the run's
/// seed once its parts are built, so that the draws depend on the seed, not on which parts were
/// built before (in one process the split configurations then train alike). Separate processes
/// draw separately, so with dropout a run over the network equals the in-process one in
/// distribution, not bit for bit.
pub fn seed_training_randomness(seed: u64) {
    reseed(&training_device(), part_seed(seed, TRAINING_PART));
}

const TRAINING_PART: u64 = 102;

/// The part number of governance's tower.
pub const TOWER_PART: u64 = 100;
/// The part number of the head (at governance or at the label owner).
pub const HEAD_PART: u64 = 101;

fn bottom_config(features: &FeatureMatrix, layers: &LayersSpec) -> BottomConfig {
    BottomConfig {
        numeric: features.numeric_width,
        embeddings: features.embeddings.clone(),
        layers: layers.layers.clone(),
        batch_norm: layers.batch_norm,
        dropout: layers.dropout,
        interaction: false,
        embedding_std: None,
    }
}

/// Each party's share of a split run, built the same way in one process and on separate nodes.
impl JobSpec {
    /// The tower over a cut layer `cut_width` wide, and the head over the tower.
    pub fn tower_and_head(&self, cut_width: usize) -> (TowerConfig, HeadConfig) {
        let tower = TowerConfig {
            input: cut_width,
            layers: self.model.tower.layers.clone(),
            batch_norm: self.model.tower.batch_norm,
            dropout: self.model.tower.dropout,
        };
        let head = self.head_config(tower.output());
        (tower, head)
    }

    /// The head over `input` columns (the tower's output).
    pub fn head_config(&self, input: usize) -> HeadConfig {
        HeadConfig {
            input,
            layers: self.model.head.clone(),
            outputs: self.objective.outputs(),
        }
    }

    /// A domain's product turned into features by `pipeline`, with the bottom it trains.
    pub fn prepared_domain(
        &self,
        domain: &DomainSpec,
        product: &DataProduct,
        pipeline: FeaturePipeline,
    ) -> Result<PreparedDomain, SplitError> {
        let features = pipeline.transform(product)?;
        Ok(PreparedDomain {
            name: domain.name.clone(),
            product: product.name().to_string(),
            pipeline,
            features,
            bottom: domain
                .bottom
                .clone()
                .unwrap_or_else(|| self.model.bottom.clone()),
        })
    }

    /// A feature domain's party: its features and its bottom, initialized from `seed`.
    pub fn domain_party(
        &self,
        domain: &PreparedDomain,
        seed: u64,
    ) -> Result<DomainParty, SplitError> {
        let index = self
            .domains
            .iter()
            .filter(|d| !d.features.is_empty())
            .position(|d| d.name == domain.name)
            .ok_or_else(|| {
                SplitError::Protocol(format!(
                    "`{}` is not a feature domain of job `{}`",
                    domain.name, self.name
                ))
            })?;
        let device = training_device();
        let config = bottom_config(&domain.features, &domain.bottom);
        let model = seeded(&device, part_seed(seed, 1 + index as u64), || {
            config.init(&device)
        });
        Ok(DomainParty::new(
            domain.name.clone(),
            domain.features.clone(),
            model,
            &self.training.optimizer,
            device,
        ))
    }

    /// The label owner's party without label sharing: its labels and the head over the tower's
    /// `tower_output` columns.
    pub fn label_owner(&self, targets: Targets, tower_output: usize, seed: u64) -> LabelOwner {
        let device = training_device();
        let head = self.head_config(tower_output);
        let head = seeded(&device, part_seed(seed, HEAD_PART), || head.init(&device));
        LabelOwner::new(
            self.label.domain.clone(),
            targets,
            self.objective.clone(),
            head,
            &self.training.optimizer,
            device,
        )
    }

    /// Governance's side of a split run over `transport`: the tower, and the head too when the
    /// labels are shared.
    pub fn split_trainer<T: Transport>(
        &self,
        transport: T,
        share_labels: bool,
        cut_width: usize,
        seed: u64,
    ) -> Result<SplitTrainer<T>, SplitError> {
        let device = training_device();
        let (tower, head) = self.tower_and_head(cut_width);
        let tower = seeded(&device, part_seed(seed, TOWER_PART), || tower.init(&device));
        let placement = if share_labels {
            LabelPlacement::Governance {
                head: seeded(&device, part_seed(seed, HEAD_PART), || head.init(&device)),
            }
        } else {
            LabelPlacement::LabelOwner
        };
        SplitTrainer::new(
            transport,
            tower,
            placement,
            self.objective.clone(),
            &self.training.optimizer,
            device,
        )
    }
}

impl JobSpec {
    /// Every number of the spec outside its range (see [`crate::limits`]), one sentence each.
    pub fn limit_problems(&self) -> Vec<String> {
        let mut limits = Limits::default();
        let training = &self.training;
        // A batch of one row is skipped (BatchNorm needs two): a batch size of 1 trains nothing.
        limits.training(
            training.epochs,
            training.batch_size,
            2,
            &training.optimizer,
            &self.seeds,
        );
        limits.count(
            "training.eval_batch_size",
            training.eval_batch_size,
            1,
            MAX_BATCH_ROWS,
        );
        limits.fraction("split.test_fraction", self.split.test_fraction, true, false);
        limits.fraction(
            "split.valid_fraction",
            self.split.valid_fraction,
            false,
            false,
        );
        let model = &self.model;
        let mut parts = vec![
            ("model.bottom", &model.bottom, true),
            ("model.tower", &model.tower, false),
        ];
        if let Some(centralized) = &model.centralized {
            parts.push(("model.centralized", centralized, true));
        }
        let domain_bottoms: Vec<(String, &LayersSpec)> = self
            .domains
            .iter()
            .filter_map(|d| Some((format!("domains.{}.bottom", d.name), d.bottom.as_ref()?)))
            .collect();
        for (field, layers, at_least_one) in parts
            .into_iter()
            .map(|(f, l, one)| (f.to_string(), l, one))
            .chain(domain_bottoms.into_iter().map(|(f, l)| (f, l, true)))
        {
            limits.layers(&format!("{field}.layers"), &layers.layers, at_least_one);
            limits.fraction(&format!("{field}.dropout"), layers.dropout, false, false);
        }
        limits.layers("model.head", &model.head, false);
        for domain in &self.domains {
            for feature in &domain.features {
                if let Some(dim) = feature.dim {
                    limits.count(
                        &format!("domains.{}.features.{}.dim", domain.name, feature.column),
                        dim,
                        1,
                        MAX_EMBEDDING_WIDTH,
                    );
                }
            }
        }
        if let Objective::CrossEntropy {
            classes,
            class_weights,
        } = &self.objective
        {
            limits.count("objective.classes", *classes, 2, MAX_CLASSES);
            if let Some(weights) = class_weights {
                limits.count(
                    "objective.class_weights (one per class)",
                    weights.len(),
                    *classes,
                    *classes,
                );
                for (class, &weight) in weights.iter().enumerate() {
                    limits.positive(
                        &format!("objective.class_weights[{class}]"),
                        weight as f64,
                        false,
                        1e6,
                    );
                }
            }
        }
        if let Some(rows) = self.synthetic_rows {
            limits.count("synthetic_rows", rows, 10, MAX_SYNTHETIC_ROWS);
        }
        if let Some(example) = &self.example_data {
            limits.fraction("example_data.shared", example.shared, true, true);
        }
        if let Some(resample) = &self.resample {
            if let Some(smote) = resample.smote {
                limits.fraction("resample.smote", smote, true, true);
            }
            if let Some(undersample) = resample.undersample {
                limits.fraction("resample.undersample", undersample, true, true);
            }
            limits.count("resample.k", resample.k, 1, 100);
        }
        limits.problems()
    }
}

impl PreparedJob {
    /// The configurations this job compares.
    pub fn configs(&self) -> Vec<RunConfig> {
        let mut configs = vec![
            RunConfig::Centralized,
            RunConfig::SplitLabelSharing,
            RunConfig::SplitLabelOwner,
        ];
        if self.spec.single_domain_baselines {
            configs.extend(
                self.domains
                    .iter()
                    .map(|d| RunConfig::SingleDomain(d.name.clone())),
            );
        }
        configs
    }

    /// The centralized baseline's bottom: as wide as all domain bottoms together.
    fn centralized_layers(&self) -> LayersSpec {
        if let Some(layers) = &self.spec.model.centralized {
            return layers.clone();
        }
        let depth = self
            .domains
            .iter()
            .map(|d| d.bottom.layers.len())
            .max()
            .unwrap_or(0);
        LayersSpec {
            layers: (0..depth)
                .map(|i| {
                    self.domains
                        .iter()
                        .filter_map(|d| d.bottom.layers.get(i))
                        .sum()
                })
                .collect(),
            batch_norm: self.domains.iter().any(|d| d.bottom.batch_norm),
            dropout: self.spec.model.bottom.dropout,
        }
    }

    /// Builds the trainer of a configuration, every part initialized from `seed`.
    pub fn trainer(&self, config: &RunConfig, seed: u64) -> Result<Box<dyn Trainer>, SplitError> {
        let trainer = self.build_trainer(config, seed)?;
        seed_training_randomness(seed);
        Ok(trainer)
    }

    fn build_trainer(&self, config: &RunConfig, seed: u64) -> Result<Box<dyn Trainer>, SplitError> {
        let device = training_device();
        let spec = &self.spec;
        let optimizer = &spec.training.optimizer;
        let joint = |features: FeatureMatrix, layers: &LayersSpec| {
            let bottom = bottom_config(&features, layers);
            let bottoms = vec![seeded(&device, part_seed(seed, 0), || bottom.init(&device))];
            let (tower, head) = spec.tower_and_head(bottom.output());
            let tower = seeded(&device, part_seed(seed, TOWER_PART), || tower.init(&device));
            let head = seeded(&device, part_seed(seed, HEAD_PART), || head.init(&device));
            Box::new(JointTrainer::new(
                JointNetwork {
                    bottoms,
                    tower,
                    head,
                },
                vec![features],
                self.targets.clone(),
                self.spec.objective.clone(),
                optimizer,
                device.clone(),
            )) as Box<dyn Trainer>
        };
        Ok(match config {
            RunConfig::Popularity => {
                return Err(SplitError::Spec {
                    path: PathBuf::from(&self.spec.name),
                    message: "`popularity` ranks items: it is a baseline of recommendation jobs (`task: recommendation`)".into(),
                });
            }
            RunConfig::Centralized => {
                let parts: Vec<&FeatureMatrix> = self.domains.iter().map(|d| &d.features).collect();
                joint(
                    FeatureMatrix::concat_columns(&parts),
                    &self.centralized_layers(),
                )
            }
            RunConfig::SingleDomain(name) => {
                let domain = self
                    .domains
                    .iter()
                    .find(|d| &d.name == name)
                    .ok_or_else(|| SplitError::Protocol(format!("no feature domain `{name}`")))?;
                joint(domain.features.clone(), &domain.bottom)
            }
            RunConfig::SplitLabelSharing | RunConfig::SplitLabelOwner => {
                let domains: Vec<DomainParty> = self
                    .domains
                    .iter()
                    .map(|d| spec.domain_party(d, seed))
                    .collect::<Result<_, _>>()?;
                let cut_width = domains.iter().map(DomainParty::cut_width).sum();
                let share_labels = *config == RunConfig::SplitLabelSharing;
                let transport = InProcess::new(
                    domains,
                    (!share_labels).then(|| {
                        let tower_output = spec.tower_and_head(cut_width).0.output();
                        spec.label_owner(self.targets.clone(), tower_output, seed)
                    }),
                    share_labels.then(|| self.targets.clone()),
                );
                Box::new(spec.split_trainer(transport, share_labels, cut_width, seed)?)
            }
        })
    }

    /// Trains and evaluates one configuration for one seed; with `save_to`, writes the trained
    /// parts (burnpack, one file per part and holder) and the feature pipelines there.
    pub fn run(
        &self,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
    ) -> Result<RunResult, SplitError> {
        let mut trainer = self.trainer(config, seed)?;
        let mut result = self.spec.train_and_evaluate(
            trainer.as_mut(),
            &self.partition,
            config,
            seed,
            observer,
            stop,
            save_to,
        )?;
        if let Some(dir) = save_to {
            for domain in &self.domains {
                let path = dir.join(pipeline_file(&domain.name));
                std::fs::write(&path, domain.pipeline.to_json())?;
                result.model_files.push(path.display().to_string());
            }
        }
        result.alignment = Some(self.alignment.clone());
        Ok(result)
    }
}

/// The file a domain's fitted feature pipeline is saved in, beside its bottom.
pub fn pipeline_file(domain: &str) -> String {
    format!("pipeline-{domain}.json")
}

impl JobSpec {
    /// Trains `trainer` on `partition`, evaluates it on the test rows and, with `save_to`,
    /// has every party save its parts: the same for every configuration and transport.
    #[allow(clippy::too_many_arguments)]
    pub fn train_and_evaluate(
        &self,
        trainer: &mut dyn Trainer,
        partition: &Partition,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
    ) -> Result<RunResult, SplitError> {
        let outcome = fit(trainer, partition, &self.training, seed, observer, stop)?;
        let metrics = outcome.report.metrics.ok_or_else(|| {
            SplitError::Protocol("the label holder reported no test metrics".into())
        })?;
        let model_files = match save_to {
            Some(dir) => trainer
                .save(dir)?
                .into_iter()
                .map(|path| path.display().to_string())
                .collect(),
            None => Vec::new(),
        };
        let samples = (partition.train.len() * self.training.epochs) as f64;
        Ok(RunResult {
            model_files,
            config: config.name(),
            seed,
            metrics,
            train_rows: partition.train.len(),
            valid_rows: partition.valid.len(),
            test_rows: partition.test.len(),
            train_seconds: outcome.train_seconds,
            cut_layer_bytes: outcome.cut_layer_bytes,
            samples_per_second: samples / outcome.train_seconds.max(1e-9),
            history: outcome.history,
            curves: outcome.report.curves,
            wire: None,
            alignment: None,
            test_scores: outcome.report.test_scores,
        })
    }
}
