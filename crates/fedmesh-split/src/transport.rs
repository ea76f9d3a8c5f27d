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
use crate::session::PartySession;
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

    /// Every party keeps a copy of the parts it holds (the best epoch so far).
    fn checkpoint(&mut self) -> Result<(), SplitError>;

    /// Every party puts the parts it holds back to their last checkpoint.
    fn restore(&mut self) -> Result<(), SplitError>;
}

/// Refuses a gradient list that does not hold one gradient per feature domain.
pub fn check_one_per_domain(gradients: usize, domains: usize) -> Result<(), SplitError> {
    if gradients == domains {
        Ok(())
    } else {
        Err(SplitError::refused(
            "governance",
            format!("{gradients} gradients for {domains} domains"),
        ))
    }
}

/// What the in-process transport holds for each domain: its [`PartySession`], or a domain's
/// share that wraps one (a recommender's domains keep their examples beside it).
pub trait HoldsSession {
    fn session(&self) -> &PartySession;
    fn session_mut(&mut self) -> &mut PartySession;
}

impl HoldsSession for PartySession {
    fn session(&self) -> &PartySession {
        self
    }

    fn session_mut(&mut self) -> &mut PartySession {
        self
    }
}

/// All parties in this process, each behind the [`PartySession`] a domain node would drive: the
/// same checks and arithmetic as over the network.
pub struct InProcess<P = PartySession> {
    /// The feature domains (those with a bottom) answer plans and gradients in this order; the
    /// first party with a head answers the head's messages, the first with shared labels hands
    /// them over.
    pub parties: Vec<P>,
}

impl InProcess {
    /// The domains' bottoms and, without label sharing, the label owner's head, or, with it,
    /// the labels it hands governance. A head or labels join the session of the domain of the
    /// same name, or a session of their own.
    pub fn new(
        domains: Vec<DomainParty>,
        label_owner: Option<LabelOwner>,
        labels: Option<Targets>,
    ) -> Self {
        let mut parties: Vec<PartySession> = domains
            .into_iter()
            .map(|d| PartySession::new(d.name.clone()).with_bottom(d))
            .collect();
        if let Some(owner) = label_owner {
            let name = owner.name.clone();
            attach(&mut parties, &name, |session| session.with_head(owner));
        }
        if let Some(labels) = labels {
            attach(&mut parties, "label owner", |session| {
                session.with_shared_labels(labels)
            });
        }
        Self { parties }
    }
}

/// Adds to the session named `name`, or to a new one.
fn attach(
    parties: &mut Vec<PartySession>,
    name: &str,
    add: impl FnOnce(PartySession) -> PartySession,
) {
    let i = match parties.iter().position(|p| p.name() == name) {
        Some(i) => i,
        None => {
            parties.push(PartySession::new(name));
            parties.len() - 1
        }
    };
    let session = std::mem::replace(&mut parties[i], PartySession::new(name));
    parties[i] = add(session);
}

impl<P: HoldsSession> InProcess<P> {
    fn bottoms(&mut self) -> impl Iterator<Item = &mut PartySession> {
        self.parties
            .iter_mut()
            .map(HoldsSession::session_mut)
            .filter(|s| s.has_bottom())
    }

    fn label_owner(&mut self) -> Result<&mut PartySession, SplitError> {
        self.parties
            .iter_mut()
            .map(HoldsSession::session_mut)
            .find(|s| s.has_head())
            .ok_or_else(|| {
                SplitError::refused(
                    "governance",
                    "this job shares labels: there is no label-owner head",
                )
            })
    }
}

impl<P: HoldsSession> Transport for InProcess<P> {
    fn forward(&mut self, plan: &BatchPlan) -> Result<Vec<CutActivation>, SplitError> {
        self.bottoms().map(|d| d.forward(plan)).collect()
    }

    fn backward(
        &mut self,
        gradients: Vec<CutLayerGradient>,
        _next: Option<&BatchPlan>,
    ) -> Result<(), SplitError> {
        check_one_per_domain(gradients.len(), self.bottoms().count())?;
        for (domain, gradient) in self.bottoms().zip(&gradients) {
            domain.backward(gradient)?;
        }
        Ok(())
    }

    fn head_train(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<HeadStep, SplitError> {
        self.label_owner()?.head_train(plan, &tower_output)
    }

    fn head_eval(
        &mut self,
        plan: &BatchPlan,
        tower_output: CutActivation,
    ) -> Result<(), SplitError> {
        self.label_owner()?.head_eval(plan, &tower_output)
    }

    fn head_report(&mut self) -> Result<EvaluationReport, SplitError> {
        self.label_owner()?.head_report()
    }

    fn shared_labels(&mut self) -> Result<Targets, SplitError> {
        self.parties
            .iter()
            .map(HoldsSession::session)
            .find_map(|s| s.shared_labels().ok())
            .cloned()
            .ok_or_else(|| {
                SplitError::refused("governance", "the label owner keeps its labels in this job")
            })
    }

    fn save_parts(&mut self, dir: &Path) -> Result<Vec<PathBuf>, SplitError> {
        let mut written = Vec::new();
        for party in &self.parties {
            written.extend(party.session().save(dir)?);
        }
        Ok(written)
    }

    fn checkpoint(&mut self) -> Result<(), SplitError> {
        for party in &mut self.parties {
            party.session_mut().checkpoint();
        }
        Ok(())
    }

    fn restore(&mut self) -> Result<(), SplitError> {
        for party in &mut self.parties {
            party.session_mut().restore()?;
        }
        Ok(())
    }
}
