//! How governance reaches the other parties of a split job.
//!
//! The training algorithm ([`crate::SplitTrainer`]) is written once against [`Transport`]. The
//! in-process transport below calls the parties directly and serves tests and single-machine
//! runs; the gRPC transport sends the same messages to domain nodes over mutual TLS.

use std::path::{Path, PathBuf};

use fedmesh_model::Targets;

use crate::SplitError;
use crate::party::{DomainParty, HeadStep, LabelOwner};
use crate::scores::EvaluationReport;
use crate::wire::{BatchPlan, CutActivation, CutLayerGradient};

/// Governance's view of the domains of a split job.
pub trait Transport {
    /// Every feature domain's cut-layer activation for the plan's rows, in domain order.
    fn forward(&mut self, plan: &BatchPlan) -> Result<Vec<CutActivation>, SplitError>;

    /// Sends each domain the gradient of its activation (domain order); each domain then
    /// steps its own optimizer. `next`, when known, is the plan of the next [`Transport::forward`]:
    /// a remote domain may start on it right after its step, while governance takes its own.
    fn backward(
        &mut self,
        gradients: Vec<CutLayerGradient>,
        next: Option<&BatchPlan>,
    ) -> Result<(), SplitError>;

    /// Without label sharing: the label owner computes the loss of the tower's output, returns
    /// its gradient, and steps its head.
    fn head_train(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<HeadStep, SplitError>;

    /// Without label sharing: the label owner scores an evaluation batch and keeps the scores.
    fn head_eval(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<(), SplitError>;

    /// Without label sharing: the label owner's metrics of the batches since the last report.
    fn head_report(&mut self) -> Result<EvaluationReport, SplitError>;

    /// With label sharing: the labels of all aligned rows, sent once by the label owner.
    fn shared_labels(&mut self) -> Result<Targets, SplitError>;

    /// Every party saves the parts it holds under `dir` in its own storage; returns what was
    /// written.
    fn save_parts(&mut self, dir: &Path) -> Result<Vec<PathBuf>, SplitError>;
}

/// Refuses a gradient list that does not hold one gradient per feature domain.
pub fn check_one_per_domain(gradients: usize, domains: usize) -> Result<(), SplitError> {
    if gradients == domains {
        Ok(())
    } else {
        Err(SplitError::Protocol(format!(
            "{gradients} gradients for {domains} domains"
        )))
    }
}

/// All parties in this process.
pub struct InProcess {
    pub domains: Vec<DomainParty>,
    /// Present without label sharing.
    pub label_owner: Option<LabelOwner>,
    /// Present with label sharing: what the label owner hands governance.
    pub labels: Option<Targets>,
}

impl InProcess {
    fn label_owner(&mut self) -> Result<&mut LabelOwner, SplitError> {
        self.label_owner.as_mut().ok_or_else(|| {
            SplitError::Protocol("this job shares labels: there is no label-owner head".into())
        })
    }
}

impl Transport for InProcess {
    fn forward(&mut self, plan: &BatchPlan) -> Result<Vec<CutActivation>, SplitError> {
        self.domains.iter_mut().map(|d| d.forward(plan)).collect()
    }

    fn backward(
        &mut self,
        gradients: Vec<CutLayerGradient>,
        _next: Option<&BatchPlan>,
    ) -> Result<(), SplitError> {
        check_one_per_domain(gradients.len(), self.domains.len())?;
        for (domain, gradient) in self.domains.iter_mut().zip(&gradients) {
            domain.backward(gradient)?;
        }
        Ok(())
    }

    fn head_train(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<HeadStep, SplitError> {
        self.label_owner()?.train(plan, &tower_output)
    }

    fn head_eval(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<(), SplitError> {
        self.label_owner()?.eval(plan, &tower_output)
    }

    fn head_report(&mut self) -> Result<EvaluationReport, SplitError> {
        Ok(self.label_owner()?.report())
    }

    fn shared_labels(&mut self) -> Result<Targets, SplitError> {
        self.labels.clone().ok_or_else(|| {
            SplitError::Protocol("the label owner keeps its labels in this job".into())
        })
    }

    fn save_parts(&mut self, dir: &Path) -> Result<Vec<PathBuf>, SplitError> {
        let mut written = self
            .domains
            .iter()
            .map(|d| d.save(dir))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(owner) = &self.label_owner {
            written.push(owner.save(dir)?);
        }
        Ok(written)
    }
}
