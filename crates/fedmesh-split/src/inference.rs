//! Split inference: scoring entities with a trained split model, each part where it was trained.
//!
//! A trained split model never exists in one place. A domain scores its rows with its own
//! saved feature pipeline and bottom ([`JobSpec::inference_bottom`]); governance runs the tower
//! ([`TopScorer`]); the head runs at governance when the labels were shared, else at the label
//! owner ([`HeadScorer`]). Every part runs in inference mode (BatchNorm's running statistics,
//! no dropout), exactly as in the run's evaluation pass, so a prediction for an entity equals
//! the score the evaluation gave it.

use std::path::Path;

use burn::prelude::*;
use fedmesh_data::{DataProduct, FeaturePipeline};
use fedmesh_model::{Head, Objective, Tower};

use crate::SplitError;
use crate::job::{DomainSpec, JobSpec, pipeline_file};
use crate::party::{DomainParty, load_part};
use crate::wire::{CutActivation, WireTensor};
use fedmesh_model::training_device;

impl JobSpec {
    /// A domain's bottom as trained in the run saved in `run_dir`, over `product`'s rows: the
    /// run's pipeline (fitted on its training rows) turns them into features.
    pub fn inference_bottom(
        &self,
        domain: &DomainSpec,
        product: &DataProduct,
        run_dir: &Path,
    ) -> Result<DomainParty, SplitError> {
        let path = run_dir.join(pipeline_file(&domain.name));
        let text = std::fs::read_to_string(&path).map_err(|e| SplitError::Record {
            path: path.clone(),
            message: format!("the run's feature pipeline cannot be read: {e}"),
        })?;
        let pipeline = FeaturePipeline::from_json(&text)?;
        let prepared = self.prepared_domain(domain, product, pipeline)?;
        self.domain_party(&prepared, 0)?
            .load(&run_dir.join(format!("bottom-{}.bpk", domain.name)))
    }
}

/// Governance's part of scoring: the tower, and the head when the labels were shared.
pub struct TopScorer {
    tower: Tower,
    head: Option<HeadScorer>,
    device: Device,
}

impl TopScorer {
    /// Loads `tower-governance.bpk` (and `head-governance.bpk` with `with_head`) from `dir`, for
    /// a cut layer `cut_width` wide.
    pub fn load(
        spec: &JobSpec,
        cut_width: usize,
        dir: &Path,
        with_head: bool,
    ) -> Result<Self, SplitError> {
        let device = training_device().inner();
        let (tower, head) = spec.tower_and_head(cut_width);
        let tower = load_part(tower.init(&device), &dir.join("tower-governance.bpk"))?;
        let head = if with_head {
            Some(HeadScorer {
                head: load_part(head.init(&device), &dir.join("head-governance.bpk"))?,
                objective: spec.objective.clone(),
                device: device.clone(),
            })
        } else {
            None
        };
        Ok(Self {
            tower,
            head,
            device,
        })
    }

    /// The tower's output for the domains' activations (in domain order).
    pub fn tower_output(&self, cut: &[CutActivation]) -> CutActivation {
        let cut = cut.iter().map(|a| a.to_tensor(&self.device)).collect();
        WireTensor::from_tensor(&self.tower.forward(cut))
    }

    /// The head, when governance holds it.
    pub fn head(&self) -> Option<&HeadScorer> {
        self.head.as_ref()
    }
}

/// The head in inference mode: tower outputs in, scores out.
pub struct HeadScorer {
    head: Head,
    objective: Objective,
    device: Device,
}

impl HeadScorer {
    /// Loads the head saved at `path`, for a tower output `input` wide (loading refuses a saved
    /// head of another width).
    pub fn load(spec: &JobSpec, input: usize, path: &Path) -> Result<Self, SplitError> {
        crate::session::check_tower_width(input).map_err(|e| SplitError::refused("the head", e))?;
        let device = training_device().inner();
        let head = load_part(spec.head_config(input).init(&device), path)?;
        Ok(Self {
            head,
            objective: spec.objective.clone(),
            device,
        })
    }

    /// Scores, row-major, as the evaluation records them: class probabilities, or values. A
    /// tower output that is not finite, or of another width than the head's, is refused.
    pub fn scores(&self, tower_output: &CutActivation) -> Result<Vec<f32>, SplitError> {
        crate::session::check_tensor(tower_output, "the tower output", "governance", "the head")?;
        let width = self.head.input_width();
        if tower_output.cols != width {
            return Err(SplitError::refused(
                "the head",
                format!(
                    "a tower output {} columns wide; the saved head takes {width}",
                    tower_output.cols
                ),
            ));
        }
        Ok(self
            .objective
            .scores(self.head.forward(tower_output.to_tensor(&self.device))))
    }
}
