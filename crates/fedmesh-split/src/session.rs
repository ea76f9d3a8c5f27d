//! A domain's side of one split run, where every message from governance is checked.
//!
//! Governance asks; a domain answers only what its share of the run allows. A [`PartySession`]
//! holds what one domain holds of a run (a bottom, a head, labels it hands over) and answers the
//! cut-layer messages: batch plans, gradients, tower outputs, reports, labels. Both transports
//! drive the same sessions: the in-process one calls them directly, a domain node after decoding
//! governance's stream. So every check below holds wherever a run happens, and a message that
//! fails one (a row the domain does not hold, a tensor of the wrong shape or with a NaN, a
//! gradient with no batch in flight, a head message to a domain without a head) is refused with
//! a sentence naming the domain and what was wrong, before it touches a model.
//!
//! Errors never quote a value of the domain's data: only shapes, row positions and counts.

use std::path::{Path, PathBuf};

use fedmesh_model::Targets;

use crate::SplitError;
use crate::party::{DomainParty, HeadStep, LabelOwner};
use crate::scores::EvaluationReport;
use crate::wire::{BatchPlan, CutActivation, CutLayerGradient, Pass, WireTensor};

/// The widest tower output a head is built for: a wider one is a malformed message, not a model.
pub const MAX_TOWER_OUTPUT: usize = 1 << 14;

/// Builds a head for a tower output of the given width, over the given labels.
pub type HeadRecipe = Box<dyn FnOnce(Targets, usize) -> Result<LabelOwner, SplitError> + Send>;

/// The head a session holds, if any: built with the first tower output it is sent, whose width
/// is the head's input.
enum HeadSlot {
    Absent,
    Recipe {
        recipe: HeadRecipe,
        targets: Targets,
    },
    Built(Box<LabelOwner>),
}

/// One domain's share of one split run. See the module documentation.
///
/// ```
/// use fedmesh_split::session::PartySession;
/// use fedmesh_split::BatchPlan;
///
/// // A session that holds nothing refuses what it cannot answer, naming itself.
/// let mut session = PartySession::new("retail");
/// let error = session.forward(&BatchPlan::train(vec![0, 1], 0.01)).unwrap_err();
/// assert!(error.to_string().contains("`retail` contributes no features"));
/// ```
pub struct PartySession {
    name: String,
    bottom: Option<DomainParty>,
    head: HeadSlot,
    /// With label sharing: the labels this domain hands governance.
    shared_labels: Option<Targets>,
    /// The head keeps its scores (a recommender's label owner ranks the cases itself): it
    /// answers no report.
    ranks_itself: bool,
    /// Batch plans answered.
    plans: u64,
}

impl PartySession {
    /// A session that holds nothing yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            bottom: None,
            head: HeadSlot::Absent,
            shared_labels: None,
            ranks_itself: false,
            plans: 0,
        }
    }

    /// The domain's bottom: it answers batch plans and gradients.
    pub fn with_bottom(mut self, bottom: DomainParty) -> Self {
        self.bottom = Some(bottom);
        self
    }

    /// A head built already (in-process runs, where the tower's width is known).
    pub fn with_head(mut self, head: LabelOwner) -> Self {
        self.head = HeadSlot::Built(Box::new(head));
        self
    }

    /// The label owner without label sharing: a head over `targets`, built by `recipe` for the
    /// width of the first tower output.
    pub fn with_head_recipe(mut self, targets: Targets, recipe: HeadRecipe) -> Self {
        self.head = HeadSlot::Recipe { recipe, targets };
        self
    }

    /// The label owner with label sharing: the labels it hands governance.
    pub fn with_shared_labels(mut self, targets: Targets) -> Self {
        self.shared_labels = Some(targets);
        self
    }

    /// The head's scores stay here: [`PartySession::head_report`] is refused and the owner
    /// reads them with [`PartySession::own_report`].
    pub fn ranking_itself(mut self) -> Self {
        self.ranks_itself = true;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn has_bottom(&self) -> bool {
        self.bottom.is_some()
    }

    pub fn has_head(&self) -> bool {
        !matches!(self.head, HeadSlot::Absent)
    }

    pub fn bottom(&self) -> Option<&DomainParty> {
        self.bottom.as_ref()
    }

    /// The head, once built.
    pub fn head(&self) -> Option<&LabelOwner> {
        match &self.head {
            HeadSlot::Built(head) => Some(head),
            _ => None,
        }
    }

    /// Installs (or replaces) the bottom: a recommender's entity domains build theirs once
    /// they know which entities the examples name.
    pub fn set_bottom(&mut self, bottom: DomainParty) {
        self.bottom = Some(bottom);
    }

    pub fn bottom_mut(&mut self) -> Result<&mut DomainParty, SplitError> {
        let name = &self.name;
        self.bottom.as_mut().ok_or_else(|| {
            SplitError::refused(
                name.clone(),
                format!("`{name}` contributes no features to this run: it holds no bottom"),
            )
        })
    }

    /// Width of this domain's cut-layer activation (0 without a bottom).
    pub fn cut_width(&self) -> usize {
        self.bottom.as_ref().map_or(0, DomainParty::cut_width)
    }

    /// Batch plans answered so far.
    pub fn plans(&self) -> u64 {
        self.plans
    }

    /// New labels for the rows the plans refer to (a recommender's examples change every
    /// epoch): the head's, and those handed to governance with label sharing.
    pub fn set_labels(&mut self, targets: Targets) {
        match &mut self.head {
            HeadSlot::Absent => {}
            HeadSlot::Recipe { targets: t, .. } => *t = targets.clone(),
            HeadSlot::Built(head) => head.set_targets(targets.clone()),
        }
        if self.shared_labels.is_some() {
            self.shared_labels = Some(targets);
        }
    }

    /// The cut-layer activation of the plan's rows.
    pub fn forward(&mut self, plan: &BatchPlan) -> Result<CutActivation, SplitError> {
        let name = self.name.clone();
        let bottom = self.bottom_mut()?;
        check_plan(&name, plan, bottom.features().rows)?;
        let activation = bottom.forward(plan)?;
        // A bottom that diverged must not pass NaN on: the others would train on it.
        check_tensor(&activation, "its own bottom's activation", &name, &name).map_err(|e| {
            SplitError::refused(self.name.clone(), format!(
                "{e}; the bottom's training diverged (lower the learning rate or check the optimizer settings)"
            ))
        })?;
        self.plans += 1;
        Ok(activation)
    }

    /// Backpropagates governance's gradient through the bottom and steps its optimizer.
    pub fn backward(&mut self, gradient: &CutLayerGradient) -> Result<(), SplitError> {
        let name = self.name.clone();
        check_tensor(
            gradient,
            &format!("the gradient sent to `{name}`"),
            "governance",
            &name,
        )?;
        self.bottom_mut()?.backward(gradient)
    }

    /// A gradient and the next plan in one message: steps, then answers the plan.
    pub fn step(
        &mut self,
        gradient: &CutLayerGradient,
        next: &BatchPlan,
    ) -> Result<CutActivation, SplitError> {
        self.backward(gradient)?;
        self.forward(next)
    }

    /// Without label sharing: the loss of the tower's output on the plan's rows, its gradient,
    /// and a step of the head.
    pub fn head_train(
        &mut self,
        plan: &BatchPlan,
        tower_output: &CutActivation,
    ) -> Result<HeadStep, SplitError> {
        if plan.pass != Pass::Train {
            return Err(self.refuse("a training step with an evaluation plan"));
        }
        let name = self.name.clone();
        let head = self.head_for(plan, tower_output)?;
        let step = head.train(plan, tower_output)?;
        if !step.loss.is_finite() {
            return Err(SplitError::refused(
                name.clone(),
                format!(
                    "the loss at `{name}` is not finite: training diverged (lower the learning rate or check the optimizer settings)"
                ),
            ));
        }
        Ok(step)
    }

    /// Without label sharing: scores an evaluation batch; the scores stay here.
    pub fn head_eval(
        &mut self,
        plan: &BatchPlan,
        tower_output: &CutActivation,
    ) -> Result<(), SplitError> {
        if plan.pass == Pass::Train {
            return Err(self.refuse("an evaluation with a training plan"));
        }
        self.head_for(plan, tower_output)?.eval(plan, tower_output)
    }

    /// Without label sharing: the aggregate metrics of the batches scored since the last report.
    pub fn head_report(&mut self) -> Result<EvaluationReport, SplitError> {
        if self.ranks_itself {
            return Err(self.refuse(
                "a report: this domain ranks its test cases itself and reports only the ranking metrics",
            ));
        }
        self.own_report()
    }

    /// The head's report, for the domain's own use (a recommender ranks with its scores).
    pub fn own_report(&mut self) -> Result<EvaluationReport, SplitError> {
        match &mut self.head {
            HeadSlot::Built(head) => Ok(head.report()),
            HeadSlot::Recipe { .. } => Err(self.refuse("a report before any batch was scored")),
            HeadSlot::Absent => Err(self.no_head()),
        }
    }

    /// With label sharing: the labels of the current rows.
    pub fn shared_labels(&self) -> Result<&Targets, SplitError> {
        self.shared_labels.as_ref().ok_or_else(|| {
            SplitError::refused(
                self.name.clone(),
                format!(
                    "`{}` shares no labels in this run: it does not own them, or keeps them",
                    self.name
                ),
            )
        })
    }

    /// Saves the bottom and the head (when built) under `dir`.
    /// Keeps a copy of every part this party holds (the best epoch so far). A head still
    /// waiting to be built has nothing to keep yet.
    pub fn checkpoint(&mut self) {
        if let Some(bottom) = &mut self.bottom {
            bottom.checkpoint();
        }
        if let HeadSlot::Built(head) = &mut self.head {
            head.checkpoint();
        }
    }

    /// Every part this party holds back to its last checkpoint; refused for a part that has
    /// none.
    pub fn restore(&mut self) -> Result<(), SplitError> {
        if let Some(bottom) = &mut self.bottom {
            bottom.restore()?;
        }
        if let HeadSlot::Built(head) = &mut self.head {
            head.restore()?;
        }
        Ok(())
    }

    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>, SplitError> {
        let mut written = Vec::new();
        if let Some(bottom) = &self.bottom {
            written.push(bottom.save(dir)?);
        }
        if let HeadSlot::Built(head) = &self.head {
            written.push(head.save(dir)?);
        }
        Ok(written)
    }

    /// The head for a tower output, built from its recipe on first use; checks the output's
    /// shape, values and the plan's rows against the head's labels.
    fn head_for(
        &mut self,
        plan: &BatchPlan,
        tower_output: &CutActivation,
    ) -> Result<&mut LabelOwner, SplitError> {
        let name = self.name.clone();
        check_tensor(
            tower_output,
            &format!("the tower output sent to `{name}`"),
            "governance",
            &name,
        )?;
        if tower_output.rows != plan.rows.len() {
            return Err(SplitError::refused(
                name.clone(),
                format!(
                    "governance sent `{name}` a tower output of {} rows for a plan of {} rows",
                    tower_output.rows,
                    plan.rows.len()
                ),
            ));
        }
        check_tower_width(tower_output.cols).map_err(|e| {
            SplitError::refused(name.clone(), format!("governance sent `{name}` {e}"))
        })?;
        let held = match &self.head {
            HeadSlot::Absent => return Err(self.no_head()),
            HeadSlot::Recipe { targets, .. } => targets.len(),
            HeadSlot::Built(head) => head.targets().len(),
        };
        check_plan(&name, plan, held)?;
        self.head = match std::mem::replace(&mut self.head, HeadSlot::Absent) {
            HeadSlot::Recipe { recipe, targets } => {
                HeadSlot::Built(Box::new(recipe(targets, tower_output.cols)?))
            }
            slot => slot,
        };
        let HeadSlot::Built(head) = &mut self.head else {
            unreachable!("built above")
        };
        let width = head.head().input_width();
        if width != tower_output.cols {
            return Err(SplitError::refused(
                name.clone(),
                format!(
                    "governance sent `{name}` a tower output {} columns wide; its head takes {width}",
                    tower_output.cols
                ),
            ));
        }
        Ok(head)
    }

    fn no_head(&self) -> SplitError {
        SplitError::refused(
            self.name.clone(),
            format!("`{}` holds no head in this run", self.name),
        )
    }

    fn refuse(&self, what: &str) -> SplitError {
        SplitError::refused(self.name.clone(), format!("`{}` refuses {what}", self.name))
    }
}

/// Refuses a tower output width no head is built for: 0, or more than [`MAX_TOWER_OUTPUT`]
/// (the sentence names the width, for the caller to say who sent it).
pub fn check_tower_width(cols: usize) -> Result<(), String> {
    if cols == 0 || cols > MAX_TOWER_OUTPUT {
        Err(format!(
            "a tower output {cols} columns wide; a head takes 1 to {MAX_TOWER_OUTPUT}"
        ))
    } else {
        Ok(())
    }
}

/// Refuses a batch plan a domain holding `held` rows cannot answer: empty, longer than what it
/// holds, naming a row it does not hold, or with a learning rate that is not a finite,
/// non-negative number.
pub fn check_plan(name: &str, plan: &BatchPlan, held: usize) -> Result<(), SplitError> {
    let refuse = |what: String| {
        Err(SplitError::refused(
            name,
            format!("governance sent `{name}` {what}"),
        ))
    };
    if plan.rows.is_empty() {
        return refuse("an empty batch plan".into());
    }
    if plan.rows.len() > held {
        return refuse(format!(
            "a batch plan of {} rows, but it holds {held}",
            plan.rows.len()
        ));
    }
    if let Some(&row) = plan.rows.iter().find(|&&r| r as usize >= held) {
        return refuse(format!(
            "a batch plan naming row {row}, but it holds {held} rows"
        ));
    }
    if !(plan.learning_rate.is_finite() && plan.learning_rate >= 0.0) {
        return refuse(format!(
            "a learning rate of {}: it must be a finite number ≥ 0",
            plan.learning_rate
        ));
    }
    Ok(())
}

/// Refuses a tensor whose values do not fill its shape, or that holds a NaN or an infinity.
/// `what` names the tensor, `from` who sent it, `by` who refuses it; the error gives the
/// position, never the value around it.
pub fn check_tensor(
    tensor: &WireTensor,
    what: &str,
    from: &str,
    by: &str,
) -> Result<(), SplitError> {
    if tensor.rows.checked_mul(tensor.cols) != Some(tensor.data.len()) {
        return Err(SplitError::refused(
            by,
            format!(
                "{what} from {from} holds {} values for a {}×{} shape",
                tensor.data.len(),
                tensor.rows,
                tensor.cols
            ),
        ));
    }
    if let Some(at) = tensor.data.iter().position(|v| !v.is_finite()) {
        let cols = tensor.cols.max(1);
        return Err(SplitError::refused(
            by,
            format!(
                "{what} from {from} is not finite (NaN or ±∞) at row {}, column {}: refused",
                at / cols,
                at % cols
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fedmesh_data::FeatureMatrix;
    use fedmesh_model::{BottomConfig, HeadConfig, Objective, seeded, training_device};

    use super::*;
    use crate::OptimizerSpec;
    use crate::wire::Part;

    const ROWS: usize = 8;

    fn features(rows: usize) -> FeatureMatrix {
        FeatureMatrix {
            rows,
            numeric: (0..rows * 2).map(|v| v as f32 / 10.0).collect(),
            numeric_width: 2,
            categorical: vec![],
            embeddings: vec![],
        }
    }

    fn bottom(features: FeatureMatrix) -> DomainParty {
        let device = training_device();
        let config = BottomConfig {
            numeric: 2,
            embeddings: vec![],
            layers: vec![3],
            batch_norm: false,
            dropout: 0.0,
            interaction: false,
            embedding_std: None,
        };
        let model = seeded(&device, 1, || config.init(&device));
        DomainParty::new("retail", features, model, &OptimizerSpec::default(), device)
    }

    fn head(targets: Targets, width: usize) -> LabelOwner {
        let device = training_device();
        let config = HeadConfig {
            input: width,
            layers: vec![],
            outputs: 2,
            target_scale: None,
        };
        let head = seeded(&device, 2, || config.init(&device));
        let objective = Objective::CrossEntropy {
            classes: 2,
            class_weights: None,
        };
        LabelOwner::new(
            "fraud",
            targets,
            objective,
            head,
            &OptimizerSpec::default(),
            device,
        )
    }

    fn owner() -> PartySession {
        let labels = Targets::Classes((0..ROWS as i64).map(|i| i % 2).collect());
        PartySession::new("fraud").with_head_recipe(labels, Box::new(|t, w| Ok(head(t, w))))
    }

    fn tensor(rows: usize, cols: usize) -> WireTensor {
        WireTensor {
            rows,
            cols,
            data: vec![0.5; rows * cols],
        }
    }

    fn error<T>(result: Result<T, SplitError>) -> String {
        match result {
            Ok(_) => panic!("the message was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_nan_gradient_is_refused_naming_its_sender_and_leaves_the_bottom_as_it_was() {
        let mut session = PartySession::new("retail").with_bottom(bottom(features(ROWS)));
        let plan = BatchPlan::train(vec![0, 1, 2], 0.1);
        let before = session.forward(&plan).unwrap();
        let mut gradient = tensor(3, 3);
        gradient.data[4] = f32::NAN;
        let e = error(session.backward(&gradient));
        assert!(
            e.contains("the gradient sent to `retail` from governance is not finite")
                && e.contains("row 1, column 1"),
            "{e}"
        );
        // The activation is still in flight: a good gradient is taken.
        session.backward(&tensor(3, 3)).unwrap();
        let after = session.forward(&plan).unwrap();
        assert_ne!(before, after, "the good gradient stepped the bottom");
        gradient.data[4] = f32::INFINITY;
        assert!(error(session.backward(&gradient)).contains("not finite"));
    }

    #[test]
    fn a_gradient_whose_values_do_not_fill_its_shape_is_refused() {
        let mut session = PartySession::new("retail").with_bottom(bottom(features(ROWS)));
        session.forward(&BatchPlan::train(vec![0, 1], 0.1)).unwrap();
        let mut gradient = tensor(2, 3);
        gradient.data.pop();
        let e = error(session.backward(&gradient));
        assert!(e.contains("holds 5 values for a 2×3 shape"), "{e}");
        let e = error(session.backward(&tensor(2, 4)));
        assert!(e.contains("a 2×4 gradient for a 2×3 activation"), "{e}");
    }

    #[test]
    fn plans_a_domain_cannot_answer_are_refused() {
        let mut session = PartySession::new("retail").with_bottom(bottom(features(ROWS)));
        let cases = [
            (BatchPlan::train(vec![], 0.1), "an empty batch plan"),
            (
                BatchPlan::train(vec![0; ROWS + 1], 0.1),
                "a batch plan of 9 rows, but it holds 8",
            ),
            (
                BatchPlan::eval(Part::Test, vec![1, 8]),
                "naming row 8, but it holds 8 rows",
            ),
            (
                BatchPlan::train(vec![u32::MAX], 0.1),
                "naming row 4294967295",
            ),
            (
                BatchPlan::train(vec![0], f64::NAN),
                "a learning rate of NaN",
            ),
            (BatchPlan::train(vec![0], -1.0), "a learning rate of -1"),
            (
                BatchPlan::train(vec![0], f64::INFINITY),
                "a learning rate of inf",
            ),
        ];
        for (plan, expected) in cases {
            let e = error(session.forward(&plan));
            assert!(
                e.contains("governance sent `retail`") && e.contains(expected),
                "{expected}: {e}"
            );
        }
        assert_eq!(session.plans(), 0);
        session.forward(&BatchPlan::train(vec![7], 0.1)).unwrap();
        assert_eq!(session.plans(), 1);
    }

    #[test]
    fn a_gradient_without_a_batch_in_flight_is_refused() {
        let mut session = PartySession::new("retail").with_bottom(bottom(features(ROWS)));
        let e = error(session.backward(&tensor(2, 3)));
        assert!(e.contains("no training batch in flight"), "{e}");
        // An evaluation batch expects no gradient either.
        session
            .forward(&BatchPlan::eval(Part::Valid, vec![0, 1]))
            .unwrap();
        assert!(error(session.backward(&tensor(2, 3))).contains("no training batch"));
    }

    #[test]
    fn a_bottom_that_produces_nan_does_not_send_it() {
        let mut poisoned = features(ROWS);
        poisoned.numeric[2] = f32::NAN;
        let mut session = PartySession::new("retail").with_bottom(bottom(poisoned));
        let e = error(session.forward(&BatchPlan::train(vec![0, 1], 0.1)));
        assert!(
            e.contains("its own bottom's activation from retail is not finite")
                && e.contains("row 1")
                && e.contains("diverged"),
            "{e}"
        );
    }

    #[test]
    fn tower_outputs_a_head_cannot_take_are_refused() {
        let mut session = owner();
        let plan = BatchPlan::train(vec![0, 1], 0.1);
        let mut nan = tensor(2, 4);
        nan.data[7] = f32::NAN;
        let wide = tensor(2, MAX_TOWER_OUTPUT + 1);
        let cases = [
            (&plan, nan, "is not finite (NaN or ±∞) at row 1, column 3"),
            (
                &plan,
                tensor(3, 4),
                "a tower output of 3 rows for a plan of 2 rows",
            ),
            (&plan, tensor(2, 0), "0 columns wide; a head takes 1 to"),
            (&plan, wide, "16385 columns wide; a head takes 1 to 16384"),
        ];
        for (plan, z, expected) in cases {
            let e = error(session.head_train(plan, &z));
            assert!(e.contains(expected), "{expected}: {e}");
        }
        // The first good output builds the head; later ones must keep its width.
        session.head_train(&plan, &tensor(2, 4)).unwrap();
        let e = error(session.head_train(&plan, &tensor(2, 5)));
        assert!(e.contains("5 columns wide; its head takes 4"), "{e}");
        let e = error(session.head_train(&BatchPlan::train(vec![0, 8], 0.1), &tensor(2, 4)));
        assert!(e.contains("naming row 8, but it holds 8 rows"), "{e}");
        let e = error(session.head_eval(&plan, &tensor(2, 4)));
        assert!(
            e.contains("refuses an evaluation with a training plan"),
            "{e}"
        );
        let eval = BatchPlan::eval(Part::Test, vec![0, 1]);
        let e = error(session.head_train(&eval, &tensor(2, 4)));
        assert!(
            e.contains("refuses a training step with an evaluation plan"),
            "{e}"
        );
        session.head_eval(&eval, &tensor(2, 4)).unwrap();
        assert!(session.head_report().unwrap().metrics.is_some());
    }

    #[test]
    fn a_session_answers_only_what_it_holds() {
        let mut retail = PartySession::new("retail").with_bottom(bottom(features(ROWS)));
        let plan = BatchPlan::train(vec![0, 1], 0.1);
        for e in [
            error(retail.head_train(&plan, &tensor(2, 4))),
            error(retail.head_eval(&BatchPlan::eval(Part::Test, vec![0]), &tensor(1, 4))),
            error(retail.head_report()),
        ] {
            assert!(e.contains("`retail` holds no head in this run"), "{e}");
        }
        assert!(error(retail.shared_labels()).contains("`retail` shares no labels"));
        let mut fraud = owner();
        assert!(error(fraud.forward(&plan)).contains("`fraud` contributes no features"));
        assert!(error(fraud.backward(&tensor(2, 3))).contains("`fraud` contributes no features"));
        assert!(error(fraud.head_report()).contains("before any batch was scored"));
        let mut ranking = owner().ranking_itself();
        ranking.head_train(&plan, &tensor(2, 4)).unwrap();
        assert!(error(ranking.head_report()).contains("ranks its test cases itself"));
        assert!(ranking.own_report().is_ok());
    }

    #[test]
    fn new_labels_reach_the_head_and_what_is_shared() {
        let mut sharing = PartySession::new("sales").with_shared_labels(Targets::Classes(vec![]));
        sharing.set_labels(Targets::Classes(vec![1, 0, 1]));
        assert_eq!(
            sharing.shared_labels().unwrap(),
            &Targets::Classes(vec![1, 0, 1])
        );
        let mut keeping = PartySession::new("sales")
            .with_head_recipe(Targets::Classes(vec![]), Box::new(|t, w| Ok(head(t, w))));
        let plan = BatchPlan::train(vec![0, 1], 0.1);
        // No labels yet: no row to train on.
        assert!(error(keeping.head_train(&plan, &tensor(2, 4))).contains("it holds 0"));
        keeping.set_labels(Targets::Classes(vec![1, 0]));
        keeping.head_train(&plan, &tensor(2, 4)).unwrap();
        keeping.set_labels(Targets::Classes(vec![1]));
        assert!(error(keeping.head_train(&plan, &tensor(2, 4))).contains("it holds 1"));
        assert!(error(keeping.shared_labels()).contains("shares no labels"));
    }
}
