//! A job of any task, read from one `job.yaml`.
//!
//! A vertical split job ([`Job`]: classification or regression over the domains' columns of the
//! same entities) and a recommendation job ([`RecommendationSpec`]: interactions at sales,
//! entity tables at customer and product) differ in how their data is joined and ranked, not in
//! what a mesh does with them: both are admitted by every domain they name, run a list of
//! configurations × seeds, and register a model per run. [`AnyJob`] is what the CLI, the mesh
//! driver and governance's job service hold, so each has one path for every task.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::horizontal::{HorizontalJob, HorizontalSpec, PreparedHorizontal, is_horizontal};
use crate::job::{Job, LabelSharingFallback, PreparedJob, RunConfig, RunResult, read_spec};
use crate::recommend::{PreparedRecommendation, RANKING_CONFIGS, RecommendationSpec};
use crate::split_ncf::NcfRole;
use crate::trainer::Observer;

/// What a job learns: `task` in `job.yaml`. A vertical job's may be left out (its objective
/// says it); a recommendation job names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Classes of an entity, from the domains' columns of the same entities (cross-entropy).
    Classification,
    /// A number per entity, likewise (mean squared error).
    Regression,
    /// Items ranked for users, from interactions and the entity tables of users and items.
    Recommendation,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Regression => "regression",
            Self::Recommendation => "recommendation",
        }
    }

    /// The `task` a spec's text names, if it names one; `file` names the spec in errors.
    pub fn named_in(text: &str, file: &Path) -> Result<Option<Self>, SplitError> {
        let error = |message: String| SplitError::Spec {
            path: file.to_path_buf(),
            message,
        };
        let value: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| error(e.to_string()))?;
        let Some(task) = value.get("task") else {
            return Ok(None);
        };
        serde_norway::from_value(task.clone()).map(Some).map_err(|_| {
            error(format!(
                "`task: {}` is not one fedmesh runs: classification, regression or recommendation",
                task.as_str().unwrap_or("…")
            ))
        })
    }
}

/// The split configurations, which run over a mesh: the others need every domain's data in one
/// place.
pub const MESH_CONFIGS: [RunConfig; 2] = [RunConfig::SplitLabelSharing, RunConfig::SplitLabelOwner];

/// A job spec of any task. See the module documentation.
#[derive(Debug, Clone)]
pub enum AnyJob {
    /// Classification or regression over the domains' columns of the same entities.
    Vertical(Box<Job>),
    /// Ranking items for users (`task: recommendation`).
    Recommendation(Box<RecommendationSpec>),
    /// Classification or regression over domains that hold the same columns of different
    /// entities (`technique: fedavg` or `fedprox`).
    Horizontal(Box<HorizontalJob>),
}

impl AnyJob {
    /// The configurations that run over a mesh: each domain's rows stay at its node (split
    /// learning for vertical and recommendation jobs, federated averaging for horizontal ones).
    pub fn mesh_configs(&self) -> Vec<RunConfig> {
        match self {
            AnyJob::Horizontal(_) => vec![
                RunConfig::Federated { secure: false },
                RunConfig::Federated { secure: true },
            ],
            _ => MESH_CONFIGS.to_vec(),
        }
    }

    /// Reads a job spec; `path` may be the spec file or the folder holding `job.yaml`.
    pub fn load(path: &Path) -> Result<Self, SplitError> {
        let (text, file) = read_spec(path)?;
        Self::from_yaml(&text, &file)
    }

    /// Reads a job spec sent as text; `file` names it in errors and anchors relative paths.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Self, SplitError> {
        if is_horizontal(text) {
            Ok(Self::Horizontal(Box::new(HorizontalJob {
                spec: HorizontalSpec::from_yaml(text, file)?,
                file: file.to_path_buf(),
            })))
        } else if Task::named_in(text, file)? == Some(Task::Recommendation) {
            Ok(Self::Recommendation(Box::new(
                RecommendationSpec::from_yaml(text, file)?,
            )))
        } else {
            Ok(Self::Vertical(Box::new(Job::from_yaml(text, file)?)))
        }
    }

    /// What the job learns.
    pub fn task(&self) -> Task {
        match self {
            Self::Vertical(job) => job.spec.task(),
            Self::Recommendation(_) => Task::Recommendation,
            Self::Horizontal(job) => job.spec.task(),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Vertical(job) => &job.spec.name,
            Self::Recommendation(spec) => &spec.name,
            Self::Horizontal(job) => &job.spec.name,
        }
    }

    pub fn description(&self) -> &str {
        match self {
            Self::Vertical(job) => &job.spec.description,
            Self::Recommendation(spec) => &spec.description,
            Self::Horizontal(job) => &job.spec.description,
        }
    }

    /// What the job's data is used for, as each contract's `flAllowedPurposes` must allow.
    pub fn purpose(&self) -> Option<&str> {
        match self {
            Self::Vertical(job) => job.spec.purpose.as_deref(),
            Self::Recommendation(spec) => spec.purpose.as_deref(),
            Self::Horizontal(job) => job.spec.purpose.as_deref(),
        }
    }

    /// How the job learns, as each contract's `flAllowedTechniques` must allow.
    pub fn technique(&self) -> &str {
        match self {
            Self::Vertical(job) => &job.spec.technique,
            Self::Recommendation(_) => "split-learning",
            Self::Horizontal(job) => &job.spec.technique,
        }
    }

    pub fn seeds(&self) -> &[u64] {
        match self {
            Self::Vertical(job) => &job.spec.seeds,
            Self::Recommendation(spec) => &spec.seeds,
            Self::Horizontal(job) => &job.spec.seeds,
        }
    }

    pub fn epochs(&self) -> usize {
        match self {
            Self::Vertical(job) => job.spec.training.epochs,
            Self::Recommendation(spec) => spec.training.epochs,
            // A horizontal job's progress is counted in rounds.
            Self::Horizontal(job) => job.spec.federation.rounds,
        }
    }

    /// Trains for `epochs` instead of the spec's; refused outside `1..=MAX_EPOCHS`.
    pub fn set_epochs(&mut self, epochs: usize) -> Result<(), SplitError> {
        let epochs = crate::limits::checked_epochs("epochs", epochs).map_err(|message| {
            SplitError::Spec {
                path: self.file(),
                message,
            }
        })?;
        match self {
            Self::Vertical(job) => job.spec.training.epochs = epochs,
            Self::Recommendation(spec) => spec.training.epochs = epochs,
            Self::Horizontal(job) => job.spec.federation.rounds = epochs,
        }
        Ok(())
    }

    /// The domains the job involves, in the order their activations meet at the cut layer.
    pub fn domains(&self) -> Vec<&str> {
        match self {
            Self::Vertical(job) => job.spec.domains.iter().map(|d| d.name.as_str()).collect(),
            Self::Recommendation(spec) => NcfRole::ALL
                .map(|role| spec.domain(role).name.as_str())
                .to_vec(),
            Self::Horizontal(job) => job.spec.domains.iter().map(|d| d.name.as_str()).collect(),
        }
    }

    /// The domain that owns the labels.
    pub fn label_domain(&self) -> &str {
        match self {
            Self::Vertical(job) => &job.spec.label.domain,
            Self::Recommendation(spec) => &spec.sales.name,
            // Every domain of a horizontal job holds its own labels; none owns them all.
            Self::Horizontal(job) => &job.spec.domains[0].name,
        }
    }

    /// What happens when the label owner forbids label sharing.
    pub fn on_label_sharing_forbidden(&self) -> LabelSharingFallback {
        match self {
            Self::Vertical(job) => job.spec.on_label_sharing_forbidden,
            Self::Recommendation(_) | Self::Horizontal(_) => LabelSharingFallback::SplitLabelOwner,
        }
    }

    /// The spec as text for another process: every path absolute, so that it means the same
    /// wherever it is read (a node still reads its own data, never a path a spec names).
    pub fn to_portable_yaml(&self) -> Result<String, SplitError> {
        match self {
            Self::Vertical(job) => job.to_portable_yaml(),
            Self::Recommendation(spec) => Ok(spec.to_yaml()),
            Self::Horizontal(job) => job.to_portable_yaml(),
        }
    }

    /// The file the spec was read from (or what names it, for a spec sent as text).
    pub fn file(&self) -> PathBuf {
        match self {
            Self::Vertical(job) => job.file.clone(),
            Self::Recommendation(spec) => spec.file.clone(),
            Self::Horizontal(job) => job.file.clone(),
        }
    }

    /// Reads every domain's data in this process and checks it against the contracts, for the
    /// configurations that run here (and the split ones, unless a mesh runs them). `data`
    /// replaces a vertical job's products with one table; a recommendation job reads each
    /// domain's data where its contract says.
    pub fn prepare(&self, data: Option<&Path>) -> Result<PreparedAnyJob, SplitError> {
        match self {
            Self::Vertical(job) => Ok(PreparedAnyJob::Vertical(Box::new(job.prepare(data)?))),
            Self::Recommendation(spec) => {
                if data.is_some() {
                    return Err(SplitError::Job {
                        job: spec.name.clone(),
                        reason: "a recommendation job reads each domain's data where its contract says: it takes no data file".into(),
                    });
                }
                let prepared = spec.as_ref().clone().prepare(&spec.file)?;
                Ok(PreparedAnyJob::Recommendation(Box::new(prepared)))
            }
            Self::Horizontal(job) => {
                if data.is_some() {
                    return Err(SplitError::Job {
                        job: job.spec.name.clone(),
                        reason: "a horizontal job reads each domain's rows where its contract says: it takes no data file".into(),
                    });
                }
                Ok(PreparedAnyJob::Horizontal(Box::new(job.prepare()?)))
            }
        }
    }
}

/// A job of any task with its data read and checked: what runs its configurations in this
/// process.
pub enum PreparedAnyJob {
    Vertical(Box<PreparedJob>),
    Recommendation(Box<PreparedRecommendation>),
    Horizontal(Box<PreparedHorizontal>),
}

impl PreparedAnyJob {
    /// The configurations the job compares, in order.
    pub fn configs(&self) -> Vec<RunConfig> {
        match self {
            Self::Vertical(job) => job.configs(),
            Self::Recommendation(_) => RANKING_CONFIGS.to_vec(),
            Self::Horizontal(job) => job.configs(),
        }
    }

    /// Trains and evaluates one configuration for one seed; with `save_to`, a vertical job
    /// writes its trained parts there (a recommender's are saved by the mesh that trains it).
    pub fn run(
        &self,
        config: &RunConfig,
        seed: u64,
        observer: &dyn Observer,
        stop: &AtomicBool,
        save_to: Option<&Path>,
    ) -> Result<RunResult, SplitError> {
        match self {
            Self::Vertical(job) => job.run(config, seed, observer, stop, save_to),
            Self::Recommendation(job) => job.run(config, seed, observer, stop),
            Self::Horizontal(job) => job.run(config, seed, observer, stop, save_to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> (String, PathBuf) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples")
            .join(name);
        read_spec(&dir).unwrap()
    }

    #[test]
    fn every_example_is_one_job_kind_with_a_task() {
        for (name, task) in [
            ("credit", Task::Classification),
            ("credit-branches", Task::Classification),
            ("fraud", Task::Classification),
            ("movielens", Task::Recommendation),
            ("retail", Task::Recommendation),
        ] {
            let (text, file) = example(name);
            assert_eq!(
                AnyJob::from_yaml(&text, &file).unwrap().task(),
                task,
                "{name}"
            );
        }
    }

    #[test]
    fn a_task_is_checked_against_the_objective_and_an_unknown_one_named() {
        let (text, file) = example("credit");
        let named =
            |task: &str| text.replacen("name: credit", &format!("name: credit\ntask: {task}"), 1);
        let job = AnyJob::from_yaml(&named("classification"), &file).unwrap();
        assert_eq!(job.task(), Task::Classification);
        let error = AnyJob::from_yaml(&named("regression"), &file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`task: regression` does not match the objective"),
            "{error}"
        );
        let error = AnyJob::from_yaml(&named("horizontal"), &file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("classification, regression or recommendation"),
            "{error}"
        );
    }

    #[test]
    fn a_technique_fedmesh_does_not_run_is_refused_not_run_as_split_learning() {
        let (text, file) = example("credit");
        let with = |technique: &str| {
            text.replacen(
                "name: credit",
                &format!("name: credit\ntechnique: {technique}"),
                1,
            )
        };
        assert!(AnyJob::from_yaml(&with("split-learning"), &file).is_ok());
        let error = AnyJob::from_yaml(&with("fedavg"), &file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("this spec is shaped for split learning"),
            "{error}"
        );
        let error = AnyJob::from_yaml(&with("gossip"), &file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`technique: gossip` is not one a split job runs"),
            "{error}"
        );
    }
}
