//! The spec of a horizontal job (`technique: fedavg` or `fedprox`) as written, bounded and
//! checked before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedmesh_data::{FeatureKind, FeatureSpec};
use fedmesh_model::Objective;
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::job::{SplitSpec, read_spec};
use crate::limits::{Limits, MAX_CLASSES, MAX_EMBEDDING_WIDTH};
use crate::task::Task;
use crate::trainer::TrainingSpec;

/// Federated averaging (McMahan et al. 2017): each round, every chosen domain trains the global
/// model on its own rows and governance averages what they send back, weighted by rows.
pub const FEDAVG: &str = "fedavg";
/// FedProx (Li et al. 2020): federated averaging whose local training is held near the round's
/// global model by a proximal term μ/2·‖w − w_global‖².
pub const FEDPROX: &str = "fedprox";

/// Whether a spec's text asks for horizontal learning (its `technique` is federated averaging
/// or FedProx).
pub fn is_horizontal(text: &str) -> bool {
    serde_norway::from_str::<serde_norway::Value>(text)
        .ok()
        .and_then(|v| v.get("technique")?.as_str().map(str::to_string))
        .is_some_and(|t| t == FEDAVG || t == FEDPROX)
}

/// A horizontal job: domains that hold the same columns for different entities (regional
/// subsidiaries, brands, branches) train one model together; every domain trains the whole model
/// on its own rows, governance aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HorizontalSpec {
    /// The job's name: in results, the registry and audit records.
    pub name: String,
    /// What the job is for, in a sentence.
    #[serde(default)]
    pub description: String,
    /// `classification` or `regression`; when left out, the objective says which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Why the model is trained: checked against governance's policies and each product's
    /// `flAllowedPurposes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// `fedavg`, or `fedprox` (with `federation.proximal_mu`): checked against each product's
    /// `flAllowedTechniques`.
    pub technique: String,
    /// The loss: `{ kind: cross-entropy, classes: k }` or `{ kind: mse }`.
    pub objective: Objective,
    /// The label column, which every domain's product holds.
    pub label: String,
    /// The columns the model reads, the same at every domain. A categorical column lists its
    /// `categories`; numeric columns are scaled by statistics summed over the domains.
    pub features: Vec<FeatureSpec>,
    /// Every domain of the job, each with its product's contract (the same columns, other rows).
    pub domains: Vec<HorizontalDomain>,
    /// Examples only: how each domain's rows are taken from one public table when its own file
    /// is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example_data: Option<RowSplitExample>,
    /// How each domain divides its own rows into training, validation and test rows (the same
    /// fractions and seed at every domain; test keys apply to each domain's key column).
    pub split: SplitSpec,
    /// The model every domain trains.
    pub model: HorizontalModel,
    /// Rounds, which domains take part in each, and how updates are combined.
    pub federation: FederationSpec,
    /// Each round's local training: `epochs` passes over the domain's training rows, batches and
    /// optimizer (a fresh optimizer each round). The schedule runs over the rounds; `keep` and
    /// `early_stopping` count rounds. The centralized baseline trains `rounds × epochs` epochs.
    pub training: TrainingSpec,
    /// The training seeds: every configuration runs once per seed.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
}

fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3]
}

/// One domain of a horizontal job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HorizontalDomain {
    /// The domain's name, as its node and contract call it.
    pub name: String,
    /// The product's ODCS contract, relative to the job file.
    pub contract: PathBuf,
}

/// The model: an MLP over the features, then the objective's output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HorizontalModel {
    /// Widths of the hidden layers, first to last (ReLU between).
    pub layers: Vec<usize>,
    /// Batch normalization after each hidden layer (its running statistics are averaged too).
    #[serde(default)]
    pub batch_norm: bool,
    /// Dropout probability after each hidden layer.
    #[serde(default)]
    pub dropout: f64,
}

/// The rounds of a horizontal job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FederationSpec {
    /// Rounds of local training and aggregation.
    pub rounds: usize,
    /// Share of the domains drawn to train in each round (at least `min_clients` are).
    #[serde(default = "default_fraction")]
    pub client_fraction: f64,
    /// The fewest domains a round may aggregate: fewer (after drop-outs) and the round fails.
    #[serde(default = "default_min_clients")]
    pub min_clients: usize,
    /// FedProx's μ: how strongly local training is held near the round's global model (0 for
    /// `fedavg`; above 0 for `fedprox`).
    #[serde(default)]
    pub proximal_mu: f64,
    /// Secure aggregation (Bonawitz et al. 2017): governance learns only the sum of the
    /// domains' updates.
    #[serde(default)]
    pub secure_aggregation: SecureAggregationSpec,
    /// Differential privacy of each domain's contribution (DP-FedAvg): updates clipped, Gaussian
    /// noise on every round's sum, the (ε, δ) spent reported with the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differential_privacy: Option<super::privacy::DifferentialPrivacySpec>,
}

fn default_fraction() -> f64 {
    1.0
}
fn default_min_clients() -> usize {
    2
}

/// How secure aggregation runs in a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecureAggregationSpec {
    /// Reveals needed to unmask a round's sum (at least 2): that many of the round's domains must
    /// stay to the end, and fewer than that many colluding with governance learn nothing. By
    /// default a majority of the round's domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Each value a domain sends (its share of the update) is clipped to ±`clip` before it is
    /// quantized; the scale is the finest the sum's 32-bit integers allow.
    #[serde(default = "default_clip")]
    pub clip: f32,
}

impl Default for SecureAggregationSpec {
    fn default() -> Self {
        Self {
            threshold: None,
            clip: default_clip(),
        }
    }
}

fn default_clip() -> f32 {
    16.0
}

/// Products taken by rows from one public table, for examples: each domain gets the rows whose
/// `by` column holds one of its values, or the rows a label-skewed Dirichlet draw deals it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RowSplitExample {
    /// The table, relative to the job file.
    pub source: PathBuf,
    /// How the table's rows are dealt to the domains.
    pub rows: RowSplit,
}

/// How a public table's rows are dealt to an example's domains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RowSplit {
    /// By a natural attribute: each domain holds the rows whose `column` has one of its values.
    ByColumn {
        column: String,
        /// For each domain, the values of `column` whose rows it holds.
        values: BTreeMap<String, Vec<fedmesh_data::Category>>,
    },
    /// Each class's rows dealt to the domains in Dirichlet(`alpha`) proportions (label skew).
    LabelSkew { alpha: f64, seed: u64 },
}

/// A horizontal spec and the file it was read from.
#[derive(Debug, Clone)]
pub struct HorizontalJob {
    pub spec: HorizontalSpec,
    /// The spec file; its folder is where relative paths start.
    pub file: PathBuf,
}

impl HorizontalJob {
    /// Reads a horizontal spec; `path` may be the spec file or the folder holding `job.yaml`.
    pub fn load(path: &Path) -> Result<Self, SplitError> {
        let (text, file) = read_spec(path)?;
        Ok(Self {
            spec: HorizontalSpec::from_yaml(&text, &file)?,
            file,
        })
    }

    /// Reads every domain's data in this process (see [`super::PreparedHorizontal::prepare`]).
    pub fn prepare(&self) -> Result<super::PreparedHorizontal, SplitError> {
        super::PreparedHorizontal::prepare(&self.spec, &self.file)
    }

    /// The spec as sent to other parties: paths made absolute, the test keys inlined.
    pub fn to_portable_yaml(&self) -> Result<String, SplitError> {
        let mut spec = self.spec.clone();
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        for domain in &mut spec.domains {
            domain.contract = dir.join(&domain.contract);
        }
        if let Some(example) = &mut spec.example_data {
            example.source = dir.join(&example.source);
        }
        spec.split.inline_test_keys(&dir)?;
        Ok(serde_norway::to_string(&spec).expect("job specs serialize"))
    }
}

impl HorizontalSpec {
    /// Reads a spec sent as text; `file` names it in errors.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Self, SplitError> {
        let value: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| SplitError::Spec {
                path: file.to_path_buf(),
                message: e.to_string(),
            })?;
        if value
            .get("label")
            .is_some_and(serde_norway::Value::is_mapping)
        {
            return Err(SplitError::Spec {
                path: file.to_path_buf(),
                message: "this spec is shaped for split learning (a label owned by one domain, features per domain), but its `technique` is horizontal: a `fedavg` or `fedprox` job names its `label` column, which every domain holds, and lists its `features` once (docs/job-spec.md)".into(),
            });
        }
        let spec: HorizontalSpec = serde_norway::from_str(text).map_err(|e| SplitError::Spec {
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut problems = spec.limit_problems();
        if problems.is_empty()
            && let Some(problem) = spec.problem()
        {
            problems.push(problem);
        }
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(SplitError::Spec {
                path: file.to_path_buf(),
                message: problems.join("; "),
            })
        }
    }

    /// What the job learns, as its objective says.
    pub fn task(&self) -> Task {
        match self.objective {
            Objective::CrossEntropy { .. } => Task::Classification,
            Objective::Mse => Task::Regression,
        }
    }

    /// The first inconsistency between fields, in a sentence.
    fn problem(&self) -> Option<String> {
        let mut names: Vec<&str> = self.domains.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        let repeated = names.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
        if self.technique != FEDAVG && self.technique != FEDPROX {
            Some(format!(
                "`technique: {}` is not a horizontal technique: use `fedavg` or `fedprox`",
                self.technique
            ))
        } else if self.technique == FEDPROX && self.federation.proximal_mu <= 0.0 {
            Some("`technique: fedprox` needs `federation.proximal_mu` above 0".into())
        } else if self.technique == FEDAVG && self.federation.proximal_mu > 0.0 {
            Some(
                "`federation.proximal_mu` is FedProx's: set `technique: fedprox`, or leave it out"
                    .into(),
            )
        } else if let Some(task) = self.task.filter(|&t| t != self.task()) {
            Some(format!(
                "`task: {}` does not match the objective, which trains a {}",
                task.name(),
                self.task().name()
            ))
        } else if self.domains.len() < 2 {
            Some("a horizontal job needs at least 2 domains".into())
        } else if let Some(name) = repeated {
            Some(format!("domain `{name}` is named twice"))
        } else if self.federation.min_clients > self.domains.len() {
            Some(format!(
                "`federation.min_clients` is {}, but the job has {} domains",
                self.federation.min_clients,
                self.domains.len()
            ))
        } else if self.features.iter().any(|f| f.column == self.label) {
            Some(format!(
                "the label column `{}` is listed as a feature",
                self.label
            ))
        } else if let Some(f) = self.features.iter().find(|f| {
            matches!(f.transform, FeatureKind::Embedding | FeatureKind::OneHot)
                && f.categories.as_ref().is_none_or(Vec::is_empty)
        }) {
            Some(format!(
                "feature `{}` is categorical: a horizontal job lists its `categories` (the domains share one model, so they agree on what each index means without showing each other their values)",
                f.column
            ))
        } else if let Some(f) = self
            .features
            .iter()
            .find(|f| f.transform == FeatureKind::RobustScale)
        {
            Some(format!(
                "feature `{}` is robust-scaled: its median and quartiles need every domain's values in one place; use `standardize` or `log-standardize`",
                f.column
            ))
        } else if let Some(RowSplit::ByColumn { values, .. }) =
            self.example_data.as_ref().map(|e| &e.rows)
            && let Some(domain) = self.domains.iter().find(|d| !values.contains_key(&d.name))
        {
            Some(format!(
                "`example_data.rows.values` gives domain `{}` no values",
                domain.name
            ))
        } else {
            None
        }
    }

    /// Every number of the spec outside its range, one sentence each.
    pub fn limit_problems(&self) -> Vec<String> {
        let mut limits = Limits::default();
        let training = &self.training;
        limits.training(
            training.epochs,
            training.batch_size,
            2,
            &training.optimizer,
            &self.seeds,
        );
        limits.epochs("federation.rounds", self.federation.rounds);
        limits.early_stopping(training.early_stopping.as_ref(), self.federation.rounds);
        limits.fraction(
            "federation.client_fraction",
            self.federation.client_fraction,
            true,
            true,
        );
        limits.count(
            "federation.min_clients",
            self.federation.min_clients,
            1,
            1 << 16,
        );
        limits.positive(
            "federation.proximal_mu",
            self.federation.proximal_mu,
            true,
            1e3,
        );
        limits.positive(
            "federation.secure_aggregation.clip",
            self.federation.secure_aggregation.clip as f64,
            false,
            1e6,
        );
        if let Some(dp) = &self.federation.differential_privacy {
            let field = "federation.differential_privacy";
            limits.positive(&format!("{field}.clip_norm"), dp.clip_norm, false, 1e6);
            limits.positive(
                &format!("{field}.noise_multiplier"),
                dp.noise_multiplier,
                false,
                1e3,
            );
            limits.fraction(&format!("{field}.delta"), dp.delta, true, false);
        }
        if let Some(threshold) = self.federation.secure_aggregation.threshold {
            limits.count(
                "federation.secure_aggregation.threshold",
                threshold as usize,
                2,
                self.domains.len().max(2),
            );
        }
        limits.count(
            "domains (number of domains)",
            self.domains.len(),
            2,
            1 << 16,
        );
        limits.count(
            "features (number of features)",
            self.features.len(),
            1,
            1 << 16,
        );
        limits.fraction("split.test_fraction", self.split.test_fraction, true, false);
        limits.fraction(
            "split.valid_fraction",
            self.split.valid_fraction,
            false,
            false,
        );
        limits.layers("model.layers", &self.model.layers, true);
        limits.fraction("model.dropout", self.model.dropout, false, false);
        for feature in &self.features {
            if let Some(dim) = feature.dim {
                limits.count(
                    &format!("features.{}.dim", feature.column),
                    dim,
                    1,
                    MAX_EMBEDDING_WIDTH,
                );
            }
            if let Some(categories) = &feature.categories {
                limits.count(
                    &format!("features.{}.categories (number)", feature.column),
                    categories.len(),
                    1,
                    1 << 20,
                );
            }
        }
        if let Objective::CrossEntropy { classes, .. } = &self.objective {
            limits.count("objective.classes", *classes, 2, MAX_CLASSES);
        }
        if let Some(RowSplit::LabelSkew { alpha, .. }) = self.example_data.as_ref().map(|e| &e.rows)
        {
            limits.positive("example_data.rows.alpha", *alpha, false, 1e6);
        }
        limits.problems()
    }
}
