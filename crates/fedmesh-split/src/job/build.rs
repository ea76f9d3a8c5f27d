//! Building each party's share of a split run from the spec — bottoms, tower, head, the
//! trainer — the same way in one process and on separate nodes, with weights drawn from seeds
//! that do not depend on who builds what first.

use fedmesh_data::{DataProduct, FeatureMatrix, FeaturePipeline};
use fedmesh_model::{
    BottomConfig, HeadConfig, Objective, TargetScale, Targets, TowerConfig, reseed, seeded,
    training_device,
};

use super::prepare::PreparedDomain;
use super::spec::{DomainSpec, JobSpec, LayersSpec};
use crate::SplitError;
use crate::party::{DomainParty, LabelOwner};
use crate::trainer::{LabelPlacement, SplitTrainer};
use crate::transport::Transport;

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
/// The part number of the label owner's protection draws (randomized response, noise).
const LABEL_PROTECTION_PART: u64 = 103;

pub(super) fn bottom_config(features: &FeatureMatrix, layers: &LayersSpec) -> BottomConfig {
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
            target_scale: matches!(self.objective, Objective::Mse).then_some(TargetScale::IDENTITY),
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
            .ok_or_else(|| SplitError::Job {
                job: self.name.clone(),
                reason: format!("`{}` is not one of its feature domains", domain.name),
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
    /// `tower_output` columns, its target's scale fitted on the training rows `train`.
    pub fn label_owner(
        &self,
        targets: Targets,
        train: &[u32],
        tower_output: usize,
        seed: u64,
    ) -> Result<LabelOwner, SplitError> {
        let device = training_device();
        let head = self.head_config(tower_output);
        let head = seeded(&device, part_seed(seed, HEAD_PART), || head.init(&device))
            .fitted_to(&targets, train);
        let owner = LabelOwner::new(
            self.label.domain.clone(),
            targets,
            self.objective.clone(),
            head,
            &self.training.optimizer,
            device,
        );
        match &self.label_protection {
            Some(protection) => {
                owner.with_protection(protection, part_seed(seed, LABEL_PROTECTION_PART))
            }
            None => Ok(owner),
        }
    }

    /// Governance's side of a split run over `transport`: the tower, and the head too when the
    /// labels are shared (its target's scale fitted on the training rows `train`).
    pub fn split_trainer<T: Transport>(
        &self,
        transport: T,
        share_labels: bool,
        cut_width: usize,
        seed: u64,
        train: &[u32],
    ) -> Result<SplitTrainer<T>, SplitError> {
        let device = training_device();
        let (tower, head) = self.tower_and_head(cut_width);
        let tower = seeded(&device, part_seed(seed, TOWER_PART), || tower.init(&device));
        let placement = if share_labels {
            LabelPlacement::Governance {
                head: Box::new(seeded(&device, part_seed(seed, HEAD_PART), || {
                    head.init(&device)
                })),
            }
        } else {
            LabelPlacement::LabelOwner
        };
        let mut trainer = SplitTrainer::new(
            transport,
            tower,
            placement,
            self.objective.clone(),
            &self.training.optimizer,
            device,
        )?;
        trainer.fit_target_scale(train);
        if let Some(protection) = &self.label_protection {
            trainer.protect_labels(protection, part_seed(seed, LABEL_PROTECTION_PART))?;
        }
        Ok(trainer)
    }
}

/// The file a domain's fitted feature pipeline is saved in, beside its bottom.
pub fn pipeline_file(domain: &str) -> String {
    format!("pipeline-{domain}.json")
}
