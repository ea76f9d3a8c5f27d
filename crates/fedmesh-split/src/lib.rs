//! The fedmesh split-training engine.
//!
//! Split learning across the domains of a data mesh, as in *Empowering Data Mesh with Federated
//! Learning* (Li & Toor, 2024): every domain trains a bottom network on its own columns,
//! governance trains the tower over their cut-layer activations, and the loss is computed by
//! governance (labels shared, configuration 1) or by the label owner, which keeps labels and head
//! (configuration 2, U-shaped). Raw rows and labels never leave their domain; only activations,
//! gradients and aggregate metrics cross the cut.
//!
//! The algorithm ([`SplitTrainer::train_step`]) is written once against a [`Transport`]; the
//! in-process transport ([`InProcess`]) runs every party in one process, the network transport
//! runs them on separate nodes. [`JointTrainer`] trains the same parts as one network: the
//! centralized baseline, and the computation the split one is tested against.

pub mod attack;
pub mod bench;
pub mod horizontal;
pub mod inference;
pub mod job;
pub mod limits;
pub mod party;
pub mod recommend;
pub mod schema;
pub mod scores;
pub mod session;
pub mod split_ncf;
pub mod task;
pub mod trainer;
pub mod transport;
pub mod usage;
pub mod wire;

pub use party::{DomainParty, HeadStep, LabelOwner, OptimizerSpec};
pub use scores::{Curves, EvaluationReport, Metrics};
pub use session::PartySession;
pub use task::{AnyJob, MESH_CONFIGS, PreparedAnyJob, Task};
pub use trainer::{
    EarlyStopping, EpochRecord, FitOutcome, JointNetwork, JointTrainer, KeptEpoch, LabelPlacement,
    Observer, Schedule, Silent, SplitTrainer, Trainer, TrainingSpec, fit,
};
pub use transport::{HoldsSession, InProcess, Transport};
pub use wire::{BatchPlan, CutActivation, CutLayerGradient, Part, Pass, WireTensor};

impl SplitError {
    /// `by` refuses, for `reason`.
    pub fn refused(by: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Refused {
            by: by.into(),
            reason: reason.into(),
        }
    }
}

/// Errors of a split job.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// A party refused what it was sent or asked: a message out of order or of the wrong kind,
    /// a shape that does not fit, rows it does not hold, values that are not finite. `by` is
    /// the party that refused; `reason` says what and where, never a value of a domain's data.
    #[error("{reason}")]
    Refused { by: String, reason: String },
    /// A job (or recommendation job) that cannot run as specified: `job` names it.
    #[error("job `{job}`: {reason}")]
    Job { job: String, reason: String },
    #[error(transparent)]
    Data(#[from] fedmesh_data::DataError),
    #[error("job spec {path}: {message}")]
    Spec {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("domain node `{node}`: {message}")]
    Node { node: String, message: String },
    #[error("governance `{name}`: {message}")]
    Governance { name: String, message: String },
    /// Governance's or a domain's policy refuses the job: every reason, one per line.
    #[error("the job is denied:\n  {}", .0.join("\n  "))]
    Denied(Vec<String>),
    /// Governance's account of why a submitted job failed.
    #[error("the job failed: {0}")]
    JobFailed(String),
    /// A batch's loss is NaN or infinite: the models would only get worse from here.
    #[error(
        "training diverged: the loss of batch {batch} of epoch {epoch} is not finite (lower the learning rate, or check the optimizer's epsilon and betas)"
    )]
    Diverged { epoch: usize, batch: usize },
    /// A party could not write its audit log: what it did would go unrecorded, so it stops.
    #[error("the audit log cannot be written, so the job stops: {0}")]
    AuditFailed(String),
    #[error("interrupted: the run was stopped before it finished; nothing was saved")]
    Interrupted,
    #[error(transparent)]
    Alignment(#[from] fedmesh_psi::PsiError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot save or load model part {path}: {message}")]
    Record {
        path: std::path::PathBuf,
        message: String,
    },
}
