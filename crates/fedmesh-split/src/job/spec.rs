//! The job spec (`job.yaml`) as written: which products, which columns, which model, how to
//! train; read, bounded and checked before anything runs.

use std::path::{Path, PathBuf};

use fedmesh_data::FeatureSpec;
use fedmesh_data::datasets;
use fedmesh_data::resample::ResampleSpec;
use fedmesh_model::Objective;
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::limits::{Limits, MAX_BATCH_ROWS, MAX_CLASSES, MAX_EMBEDDING_WIDTH, MAX_SYNTHETIC_ROWS};
use crate::party::LabelProtection;
use crate::task::Task;
use crate::trainer::TrainingSpec;

/// A job spec as written in `job.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name: in results, the registry and audit records.
    pub name: String,
    /// What the job is for, in a sentence (shown in reports and `job list`).
    #[serde(default)]
    pub description: String,
    /// `classification` or `regression`; when left out, the objective says which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
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
    /// The loss the head trains on: `{ kind: cross-entropy, classes: k }` or `{ kind: mse }`.
    pub objective: Objective,
    /// Which domain owns the label, and its column.
    pub label: LabelSpec,
    /// How the aligned rows are divided into training, validation and test rows.
    pub split: SplitSpec,
    /// Every domain of the job: its product's contract and the columns it contributes.
    pub domains: Vec<DomainSpec>,
    /// The split network's layers.
    pub model: ModelSpec,
    /// Epochs, batches, optimizer, schedule, which epoch is kept, early stopping.
    pub training: TrainingSpec,
    /// The training seeds: every configuration runs once per seed (`--seeds N`: the first N).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Also train each feature domain alone (to show what the mesh adds).
    #[serde(default)]
    pub single_domain_baselines: bool,
    /// SMOTE and/or undersampling of the training rows (binary tasks; off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample: Option<ResampleSpec>,
    /// How the label owner hides its labels in what it returns (configuration 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_protection: Option<LabelProtection>,
    /// How cut-layer tensors travel between nodes (runs over the network only).
    #[serde(default, skip_serializing_if = "WireSpec::is_default")]
    pub wire: WireSpec,
    /// How a mesh aligns keyed products: which private set intersection protocol.
    #[serde(default, skip_serializing_if = "AlignmentSpec::is_default")]
    pub alignment: AlignmentSpec,
}

fn default_technique() -> String {
    "split-learning".into()
}

/// What a mesh does when a job asks for `split-label-sharing` and the label owner's contract
/// forbids label sharing.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireSpec {
    /// `f32` (exact), `f16` or `bf16` (half the bytes).
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
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum WireEncoding {
    #[default]
    F32,
    F16,
    Bf16,
}

/// How a mesh aligns the domains' keyed products (a run in one process joins them in the
/// clear: same rows, same order).
///
/// ```yaml
/// alignment: { protocol: kkrt }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlignmentSpec {
    /// `ecdh` (the default) or `kkrt`.
    #[serde(default)]
    pub protocol: PsiProtocol,
}

impl AlignmentSpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Private set intersection protocols (both semi-honest; `docs/psi.md` says what each party
/// learns from each).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PsiProtocol {
    /// The ECDH ring: every domain's blinded list visits every other, governance finds the
    /// common points. Each domain learns its own rows of the intersection and nothing else.
    #[default]
    Ecdh,
    /// KKRT (oblivious PRF from OT extension): the domain with the fewest rows runs a
    /// two-party protocol with every other in turn. Some 25 times faster; with three or more
    /// domains that one domain also learns which of its keys the first others share, and each
    /// later domain how many.
    Kkrt,
}

impl std::fmt::Display for PsiProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ecdh => "ECDH ring",
            Self::Kkrt => "KKRT",
        })
    }
}

fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3, 4, 5]
}

/// The label: a column of one domain's product (that domain is the label owner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    /// The domain whose product holds the label (the label owner).
    pub domain: String,
    /// The label column of that product.
    pub column: String,
}

/// Products derived from one public table, for examples (see [`datasets::example_product`]):
/// each domain holds the entities all share and some of its own, in an order of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExampleData {
    /// The table, relative to the job file. When it is absent, a known dataset's generator
    /// (`dataset`) stands in for it.
    pub source: PathBuf,
    /// Probability that an entity is held by every domain; any other is held by each domain
    /// with probability 1/2.
    pub shared: f64,
    /// Seeds which entities each domain holds, and their order.
    #[serde(default = "default_split_seed")]
    pub seed: u64,
}

/// How aligned rows are partitioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Share of the aligned rows held out for test when no test keys are given (stratified by class).
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Share of the remaining rows held out for validation: per-epoch losses, the decision threshold, `keep: best` and early stopping.
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// Seed of the partition, fixed across training seeds so that runs compare.
    #[serde(default = "default_split_seed")]
    pub seed: u64,
}

impl SplitSpec {
    /// Replaces the file of test keys (relative to `dir`) by the keys themselves, for a spec
    /// sent to other parties: a node reads no file a job spec names.
    pub(crate) fn inline_test_keys(&mut self, dir: &Path) -> Result<(), SplitError> {
        if let Some(keys) = self.test_keys.take() {
            let mut values: Vec<String> = datasets::read_key_list(&dir.join(keys))?
                .into_iter()
                .collect();
            values.sort();
            self.test_key_values = Some(values);
        }
        Ok(())
    }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// The domain's name, as its node and contract call it.
    pub name: String,
    /// The product's ODCS contract, relative to the job file.
    pub contract: PathBuf,
    /// The product's columns this domain's bottom reads, each with its transform (none: a pure label owner).
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
    /// This domain's bottom, when it differs from `model.bottom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottom: Option<LayersSpec>,
}

/// Hidden layers of an MLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayersSpec {
    /// Widths of the hidden layers, first to last (ReLU between).
    pub layers: Vec<usize>,
    /// Batch normalization after each hidden layer.
    #[serde(default)]
    pub batch_norm: bool,
    /// Dropout probability after each hidden layer (0: none).
    #[serde(default)]
    pub dropout: f64,
}

/// The split network's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
        spec.split.inline_test_keys(&dir)?;
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
        let problem = if spec.technique != default_technique() {
            // Anything else would run split learning under another name, and contracts would
            // admit it under the technique it claims.
            Some(format!(
                "`technique: {}` is not one a split job runs: domains that hold different columns of the same entities train by `split-learning`; domains that hold the same columns of different entities train by `fedavg` or `fedprox`, in a horizontal spec (docs/job-spec.md)",
                spec.technique
            ))
        } else if let Some(task) = spec.task.filter(|&t| t != spec.task()) {
            Some(format!(
                "`task: {}` does not match the objective: `{}` trains {}",
                task.name(),
                match spec.objective {
                    Objective::CrossEntropy { .. } => "cross-entropy",
                    Objective::Mse => "mse",
                },
                match spec.task() {
                    Task::Regression => "a regression (`task: regression`)",
                    _ => "a classifier (`task: classification`)",
                }
            ))
        } else if spec.task() == Task::Regression
            && spec
                .label_protection
                .as_ref()
                .is_some_and(|p| p.randomized_response.is_some())
        {
            Some(
                "`label_protection.randomized_response` protects class labels: this job regresses values (use `gradient_noise`)".to_string(),
            )
        } else if !matches!(spec.objective, Objective::CrossEntropy { classes: 2, .. })
            && spec
                .label_protection
                .as_ref()
                .is_some_and(|p| p.shaped_noise > 0.0)
        {
            Some(
                "`label_protection.shaped_noise` separates two classes: this job's label is not binary (use `gradient_noise`)".to_string(),
            )
        } else if spec.label_protection.as_ref().is_some_and(|p| {
            // The protection's terms, as a contract reads them, are its one list of what it
            // holds: equal norms alone is no protection.
            p.equal_norms && p.terms().iter().all(|(kind, _)| kind == "equal-norms")
        }) {
            Some(
                "`label_protection.equal_norms` hides how long each gradient is, not which way it points, and that gives the label away: set `shaped_noise` (or `gradient_noise`, `randomized_response`) beside it".to_string(),
            )
        } else if !spec.domains.iter().any(|d| d.name == spec.label.domain) {
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
}

impl JobSpec {
    /// What the job learns, as its objective says.
    pub fn task(&self) -> Task {
        match self.objective {
            Objective::CrossEntropy { .. } => Task::Classification,
            Objective::Mse => Task::Regression,
        }
    }

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
        limits.early_stopping(training.early_stopping.as_ref(), training.epochs);
        if let Some(protection) = &self.label_protection {
            limits.positive(
                "label_protection.gradient_noise",
                protection.gradient_noise,
                true,
                1000.0,
            );
            limits.positive(
                "label_protection.shaped_noise",
                protection.shaped_noise,
                true,
                1000.0,
            );
            if let Some(epsilon) = protection.randomized_response {
                limits.positive("label_protection.randomized_response", epsilon, false, 50.0);
            }
        }
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
