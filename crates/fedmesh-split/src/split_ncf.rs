//! The split NCF: neural collaborative filtering across the retail mesh's sales, customer and
//! product domains.
//!
//! Sales owns the interactions: it draws each epoch's examples (every positive and fresh
//! negatives), embeds their users and items, and holds the labels. Customer and product own
//! entity tables, not interaction rows: for each example they get only the position of the
//! entity they own in a list of ids sales sent once, and look its attributes up themselves, so a
//! sampled negative item carries its own attributes. Governance trains the tower, and the head
//! with the labels (`split-label-sharing`) or leaves both at sales (`split-label-owner`), which
//! then ranks the test cases itself and returns HR@10 and NDCG@10 only.
//!
//! Each domain's share is an [`NcfParty`]; governance drives them through an [`NcfTransport`]:
//! [`NcfInProcess`] here, the gRPC transport of `fedmesh-net` over the mesh. Both run the same
//! [`SplitNcf`], so a mesh run computes what an in-process run computes.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use fedmesh_data::recommend::{
    Interactions, LeaveOneOut, RetailData, TEST_NEGATIVES, rank_metrics,
};
use fedmesh_data::{DataProduct, FeatureMatrix, FeatureSpec, SourceTable};
use fedmesh_model::{
    BottomConfig, HeadConfig, Objective, Targets, TowerConfig, seeded, training_device,
};
use serde::{Deserialize, Serialize};

use crate::SplitError;
use crate::job::{HEAD_PART, TOWER_PART, part_seed};
use crate::party::{DomainParty, LabelOwner, OptimizerSpec};
use crate::recommend::{Cases, NcfTraining, RankingMetrics, Recommender, SalesExamples, TOP_K};
use crate::scores::EvaluationReport;
use crate::session::PartySession;
use crate::trainer::{LabelPlacement, Observer, SplitTrainer, Trainer, evaluate, train_epoch};
use crate::transport::{HoldsSession, InProcess, Transport};
use crate::wire::{BatchPlan, Part};

/// The split NCF's shape: what each domain's bottom reads and how wide the parts are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitNcfSpec {
    /// Width of the sales domain's user and item embeddings.
    #[serde(default = "default_embedding")]
    pub embedding: usize,
    /// The sales bottom's layers over [user ‖ item] embeddings.
    #[serde(default = "default_sales_layers")]
    pub sales: Vec<usize>,
    /// The customer domain's features (its entity table's columns) and bottom layers.
    pub customer: EntityBottomSpec,
    /// The product domain's bottom: item features.
    pub product: EntityBottomSpec,
    /// Governance's tower over the three activations; a linear head follows.
    #[serde(default = "default_tower")]
    pub tower: Vec<usize>,
}

impl SplitNcfSpec {
    /// The layers of `role`'s bottom.
    pub fn layers(&self, role: NcfRole) -> &[usize] {
        match role {
            NcfRole::Sales => &self.sales,
            NcfRole::Customer => &self.customer.layers,
            NcfRole::Product => &self.product.layers,
        }
    }

    /// The entity-table columns `role`'s bottom reads (none for sales, which embeds ids).
    pub fn features(&self, role: NcfRole) -> &[FeatureSpec] {
        match role {
            NcfRole::Sales => &[],
            NcfRole::Customer => &self.customer.features,
            NcfRole::Product => &self.product.features,
        }
    }
}

fn default_embedding() -> usize {
    16
}
fn default_sales_layers() -> Vec<usize> {
    vec![32]
}
fn default_tower() -> Vec<usize> {
    vec![32, 16]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntityBottomSpec {
    /// The entity table's columns the bottom reads.
    pub features: Vec<FeatureSpec>,
    /// Widths of the bottom's layers.
    #[serde(default = "default_entity_layers")]
    pub layers: Vec<usize>,
}

fn default_entity_layers() -> Vec<usize> {
    vec![8]
}

/// The three domains of the retail mesh, in the order their activations meet at the cut layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NcfRole {
    /// Owns the interactions, and so the labels.
    Sales,
    /// Owns one row per customer (user).
    Customer,
    /// Owns one row per product (item).
    Product,
}

impl NcfRole {
    pub const ALL: [NcfRole; 3] = [NcfRole::Sales, NcfRole::Customer, NcfRole::Product];

    pub fn name(self) -> &'static str {
        match self {
            NcfRole::Sales => "sales",
            NcfRole::Customer => "customer",
            NcfRole::Product => "product",
        }
    }

    /// The part number its bottom's initial weights are drawn under.
    fn part(self) -> u64 {
        match self {
            NcfRole::Sales => 1,
            NcfRole::Customer => 2,
            NcfRole::Product => 3,
        }
    }

    /// The ids of the entities this role owns, in the interactions' order (none for sales).
    pub fn entity_ids(self, interactions: &Interactions) -> &[String] {
        match self {
            NcfRole::Sales => &[],
            NcfRole::Customer => &interactions.users,
            NcfRole::Product => &interactions.items,
        }
    }

    /// This role's product in a retail dataset.
    pub fn table(self, data: &RetailData) -> &SourceTable {
        match self {
            NcfRole::Sales => &data.sales,
            NcfRole::Customer => &data.customers,
            NcfRole::Product => &data.products,
        }
    }
}

/// Which examples sales draws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExamplePass {
    /// An epoch's training examples: every positive and fresh negatives, shuffled.
    Training,
    /// Every test case's 100 candidates, case after case.
    Test,
    /// Every validation case's 100 candidates, case after case.
    Validation,
    /// Serving: the user with this id, and every item as a candidate.
    Candidates(String),
}

/// The table customer or product owns, one row per entity, and its key column.
#[derive(Debug, Clone)]
pub struct EntityTable {
    pub product: DataProduct,
    pub key: String,
}

/// An entity table's features, one row per id of `ids` (in that order). An id the table does
/// not hold fails the run, counted but not named: the ids are the domains' data.
pub fn entity_features(
    table: &EntityTable,
    ids: &[String],
    features: &[FeatureSpec],
) -> Result<FeatureMatrix, SplitError> {
    let (product, key) = (&table.product, &table.key);
    let keys = product.column_strings(key)?;
    let row_of: std::collections::HashMap<&str, u32> = keys
        .iter()
        .enumerate()
        .filter_map(|(r, k)| k.as_deref().map(|k| (k, r as u32)))
        .collect();
    let rows: Vec<Option<u32>> = ids
        .iter()
        .map(|id| row_of.get(id.as_str()).copied())
        .collect();
    let missing = rows.iter().filter(|r| r.is_none()).count();
    if missing > 0 {
        return Err(SplitError::refused(
            product.name(),
            format!(
                "data product `{}` has no row for {missing} of the {} {key} values the interactions name",
                product.name(),
                ids.len()
            ),
        ));
    }
    let rows: Vec<u32> = rows.into_iter().flatten().collect();
    let all: Vec<u32> = (0..product.rows() as u32).collect();
    // Entity attributes hold no labels: the pipeline is fitted on every entity.
    let pipeline = fedmesh_data::FeaturePipeline::fit(product, features, &all)?;
    Ok(pipeline.transform(product)?.gather(&rows))
}

/// The sales domain's rows for a list of examples: the user and the item, as embedding indices.
pub fn sales_features(
    users: &[u32],
    items: &[u32],
    user_count: usize,
    item_count: usize,
    width: usize,
) -> FeatureMatrix {
    FeatureMatrix {
        rows: users.len(),
        numeric: Vec::new(),
        numeric_width: 0,
        categorical: users
            .iter()
            .zip(items)
            .flat_map(|(&u, &i)| [u as i64, i as i64])
            .collect(),
        embeddings: vec![(user_count, width), (item_count, width)],
    }
}

/// The cross-entropy over {no interaction, interaction} every split NCF head is trained with.
fn objective() -> Objective {
    Objective::CrossEntropy {
        classes: 2,
        class_weights: None,
    }
}

/// A test case's candidates: the held-out item and its negatives.
pub const TEST_CANDIDATES: usize = TEST_NEGATIVES + 1;

/// HR@10 and NDCG@10 of test cases given as consecutive groups of [`TEST_CANDIDATES`] scores,
/// each group's held-out item marked by label 1 wherever it stands in the group.
pub fn rank_cases(scores: &[f32], labels: &[i64]) -> Result<RankingMetrics, SplitError> {
    if scores.len() != labels.len() || !scores.len().is_multiple_of(TEST_CANDIDATES) {
        return Err(SplitError::refused(
            "the label holder",
            format!(
                "{} scores and {} labels are not whole test cases of {TEST_CANDIDATES} candidates",
                scores.len(),
                labels.len()
            ),
        ));
    }
    let (mut hits, mut ndcg) = (0.0, 0.0);
    let mut ordered = Vec::with_capacity(TEST_CANDIDATES);
    for (case, (scores, labels)) in scores
        .chunks(TEST_CANDIDATES)
        .zip(labels.chunks(TEST_CANDIDATES))
        .enumerate()
    {
        let held_out: Vec<usize> = (0..labels.len()).filter(|&k| labels[k] == 1).collect();
        let [positive] = held_out[..] else {
            return Err(SplitError::refused(
                "the label holder",
                format!(
                    "test case {case} has {} held-out items, not one",
                    held_out.len()
                ),
            ));
        };
        ordered.clear();
        ordered.push(scores[positive]);
        ordered.extend(
            (0..scores.len())
                .filter(|&k| k != positive)
                .map(|k| scores[k]),
        );
        let (h, n) = rank_metrics(&ordered, TOP_K);
        hits += h;
        ndcg += n;
    }
    let users = scores.len() / TEST_CANDIDATES;
    Ok(RankingMetrics {
        hit_ratio: hits / users.max(1) as f64,
        ndcg: ndcg / users.max(1) as f64,
        users,
    })
}

/// The positive-class score of every row of an evaluation report's test rows, in row order.
fn positive_scores(report: &mut EvaluationReport) -> Vec<f32> {
    report.test_scores.sort_by_key(|(row, _)| *row);
    report.test_scores.iter().map(|(_, s)| s[1]).collect()
}

/// Each user's items, by position, sorted (a user's interactions, as a set).
fn seen_items(interactions: &Interactions) -> Vec<Vec<u32>> {
    let mut seen = vec![Vec::new(); interactions.users.len()];
    for &(user, item, _) in &interactions.events {
        if let Some(items) = seen.get_mut(user as usize) {
            items.push(item);
        }
    }
    for items in &mut seen {
        items.sort_unstable();
        items.dedup();
    }
    seen
}

/// What sales holds of a run besides its bottom.
struct SalesShare {
    examples: SalesExamples,
    users: Vec<String>,
    items: Vec<String>,
    /// The items each user has interacted with, by position: what a ranking served to the user
    /// leaves out.
    seen: Vec<Vec<u32>>,
    /// The current examples' labels.
    labels: Vec<i64>,
    /// Serving: the user whose candidates are the current examples.
    serving: Option<u32>,
}

/// What customer or product holds of a run besides its bottom.
struct EntityShare {
    entities: EntityTable,
    /// Its features of each entity sales named, in sales's order.
    table: Option<FeatureMatrix>,
}

enum Share {
    Sales(Box<SalesShare>),
    Entity(Box<EntityShare>),
}

/// One domain's share of a split NCF run: its bottom and what it keeps for itself.
pub struct NcfParty {
    pub role: NcfRole,
    /// The domain's name in the mesh.
    pub name: String,
    spec: SplitNcfSpec,
    optimizer: OptimizerSpec,
    seed: u64,
    /// The bottom, and sales's head or the labels it shares: what governance's messages reach.
    session: PartySession,
    share: Share,
    /// Serving: the folder of the trained run whose parts the bottom (and head) load.
    trained: Option<PathBuf>,
}

impl NcfParty {
    /// Sales: its interactions and the split; `keeps_labels` without label sharing. With
    /// `trained`, the folder of a trained run: its bottom (and head) are loaded from there, to
    /// serve rankings.
    #[allow(clippy::too_many_arguments)]
    pub fn sales(
        name: impl Into<String>,
        spec: &SplitNcfSpec,
        interactions: &Interactions,
        split: LeaveOneOut,
        training: &NcfTraining,
        keeps_labels: bool,
        seed: u64,
        trained: Option<&Path>,
    ) -> Result<Self, SplitError> {
        let name = name.into();
        let no_labels = Targets::Classes(Vec::new());
        let session = if keeps_labels {
            let (name, optimizer) = (name.clone(), training.optimizer.clone());
            let trained = trained.map(Path::to_path_buf);
            PartySession::new(name.clone())
                .with_head_recipe(
                    no_labels,
                    Box::new(move |targets, width| {
                        let head = sales_head(name, targets, width, &optimizer, seed);
                        match &trained {
                            Some(dir) => head.load(dir),
                            None => Ok(head),
                        }
                    }),
                )
                .ranking_itself()
        } else {
            PartySession::new(name.clone()).with_shared_labels(no_labels)
        };
        let mut party = Self {
            role: NcfRole::Sales,
            name,
            spec: spec.clone(),
            optimizer: training.optimizer.clone(),
            seed,
            session,
            share: Share::Sales(Box::new(SalesShare {
                examples: SalesExamples::new(interactions, split, training.negatives, seed),
                users: interactions.users.clone(),
                items: interactions.items.clone(),
                seen: seen_items(interactions),
                labels: Vec::new(),
                serving: None,
            })),
            trained: trained.map(Path::to_path_buf),
        };
        let features = sales_features(
            &[],
            &[],
            interactions.users.len(),
            interactions.items.len(),
            spec.embedding,
        );
        let bottom = party.build_bottom(features)?;
        party.session.set_bottom(bottom);
        Ok(party)
    }

    /// Customer or product: its entity table (validated against its contract). The bottom is
    /// built once sales's entities arrive ([`NcfParty::set_entities`]), and loaded from the
    /// folder of a `trained` run to serve rankings.
    pub fn entity(
        role: NcfRole,
        name: impl Into<String>,
        spec: &SplitNcfSpec,
        entities: EntityTable,
        optimizer: &OptimizerSpec,
        seed: u64,
        trained: Option<&Path>,
    ) -> Result<Self, SplitError> {
        if role == NcfRole::Sales {
            return Err(SplitError::refused(
                role.name(),
                "sales holds interactions, not an entity table",
            ));
        }
        let name = name.into();
        Ok(Self {
            role,
            session: PartySession::new(&name),
            name,
            spec: spec.clone(),
            optimizer: optimizer.clone(),
            seed,
            share: Share::Entity(Box::new(EntityShare {
                entities,
                table: None,
            })),
            trained: trained.map(Path::to_path_buf),
        })
    }

    /// Whether the party serves a trained run's rankings instead of training.
    pub fn serving(&self) -> bool {
        self.trained.is_some()
    }

    fn build_bottom(&self, features: FeatureMatrix) -> Result<DomainParty, SplitError> {
        let config = BottomConfig {
            numeric: features.numeric_width,
            embeddings: features.embeddings.clone(),
            layers: self.spec.layers(self.role).to_vec(),
            batch_norm: false,
            dropout: 0.0,
            // Sales holds user and item: it computes their GMF interaction itself.
            interaction: self.role == NcfRole::Sales,
            embedding_std: Some(0.01),
        };
        let device = training_device();
        let model = seeded(&device, part_seed(self.seed, self.role.part()), || {
            config.init(&device)
        });
        let bottom = DomainParty::new(self.name.clone(), features, model, &self.optimizer, device);
        match &self.trained {
            Some(dir) => bottom.load(&dir.join(format!("bottom-{}.bpk", self.name))),
            None => Ok(bottom),
        }
    }

    fn sales_share(&mut self) -> Result<&mut SalesShare, SplitError> {
        match &mut self.share {
            Share::Sales(share) => Ok(share),
            Share::Entity(_) => Err(SplitError::refused(
                self.name.clone(),
                format!(
                    "`{}` is the {} domain: it holds no interactions",
                    self.name,
                    self.role.name()
                ),
            )),
        }
    }

    /// Sales: the ids of the users and items its examples name, by position.
    pub fn entities(&mut self) -> Result<(Vec<String>, Vec<String>), SplitError> {
        let share = self.sales_share()?;
        Ok((share.users.clone(), share.items.clone()))
    }

    /// Customer or product: looks up every entity sales named (an id it does not hold fails,
    /// naming the id) and builds the bottom over their attributes. Returns the cut width.
    pub fn set_entities(&mut self, ids: &[String]) -> Result<usize, SplitError> {
        let Share::Entity(share) = &self.share else {
            return Err(SplitError::refused(
                self.name.clone(),
                "sales names the entities; it is not sent them",
            ));
        };
        let table = entity_features(&share.entities, ids, self.spec.features(self.role))?;
        let bottom = self.build_bottom(table.gather(&[]))?;
        let width = bottom.cut_width();
        self.session.set_bottom(bottom);
        if let Share::Entity(share) = &mut self.share {
            share.table = Some(table);
        }
        Ok(width)
    }

    /// Sales: draws the pass's examples, takes their rows and labels, and returns each
    /// example's user and item by position (never the label).
    pub fn draw(&mut self, pass: ExamplePass) -> Result<(Vec<u32>, Vec<u32>), SplitError> {
        let serving = self.serving();
        let name = self.name.clone();
        let share = self.sales_share()?;
        // The test cases are sales's own, fixed for the run: read in place, not copied.
        let drawn: std::borrow::Cow<[(u32, u32, f32)]> = match pass {
            ExamplePass::Training | ExamplePass::Test | ExamplePass::Validation if serving => {
                return Err(SplitError::refused(
                    name.clone(),
                    format!(
                        "`{name}` serves a trained run's rankings: it draws no training or test examples"
                    ),
                ));
            }
            ExamplePass::Training => share.examples.training().into(),
            ExamplePass::Test => share.examples.test().into(),
            ExamplePass::Validation => share.examples.valid().into(),
            ExamplePass::Candidates(_) if !serving => {
                return Err(SplitError::refused(
                    name.clone(),
                    format!("`{name}` is training: it serves no rankings"),
                ));
            }
            ExamplePass::Candidates(user) => {
                // A user sales does not know has no candidates (and the stream goes on).
                let position = share.users.iter().position(|u| *u == user);
                share.serving = position.map(|p| p as u32);
                // No label: with label sharing they would reach governance, and what the user
                // has seen is sales's to know.
                match position {
                    Some(p) => (0..share.items.len() as u32)
                        .map(|item| (p as u32, item, 0.0))
                        .collect::<Vec<_>>()
                        .into(),
                    None => Vec::new().into(),
                }
            }
        };
        let users: Vec<u32> = drawn.iter().map(|e| e.0).collect();
        let items: Vec<u32> = drawn.iter().map(|e| e.1).collect();
        share.labels = drawn.iter().map(|e| e.2 as i64).collect();
        let labels = Targets::Classes(share.labels.clone());
        let features = sales_features(
            &users,
            &items,
            share.users.len(),
            share.items.len(),
            self.spec.embedding,
        );
        self.bottom_mut()?.set_features(features)?;
        self.session.set_labels(labels);
        Ok((users, items))
    }

    /// Customer or product: the rows of the current examples, each the attributes of the
    /// entity at that position of sales's list.
    pub fn set_examples(&mut self, entities: &[u32]) -> Result<(), SplitError> {
        let Share::Entity(share) = &self.share else {
            return Err(SplitError::refused(
                self.name.clone(),
                "sales draws the examples; it is not sent them",
            ));
        };
        let table = share.table.as_ref().ok_or_else(|| {
            SplitError::refused(
                self.name.clone(),
                "examples arrived before the entities they name",
            )
        })?;
        if let Some(&bad) = entities.iter().find(|&&e| e as usize >= table.rows) {
            return Err(SplitError::refused(
                self.name.clone(),
                format!(
                    "an example names entity {bad}, but sales named {} entities",
                    table.rows
                ),
            ));
        }
        let rows = table.gather(entities);
        self.bottom_mut()?.set_features(rows)
    }

    pub fn bottom_mut(&mut self) -> Result<&mut DomainParty, SplitError> {
        if !self.session.has_bottom() {
            return Err(SplitError::refused(
                self.name.clone(),
                format!(
                    "`{}` has no bottom yet: it was not sent the entities its examples name",
                    self.name
                ),
            ));
        }
        self.session.bottom_mut()
    }

    /// The current rows of the domain's bottom (for tests: each example's attributes).
    pub fn features(&self) -> Option<&FeatureMatrix> {
        self.session.bottom().map(DomainParty::features)
    }

    pub fn cut_width(&self) -> usize {
        self.session.cut_width()
    }

    /// Sales without label sharing: HR@10 and NDCG@10 of the test examples its head scored.
    pub fn rank(&mut self) -> Result<RankingMetrics, SplitError> {
        let scores = positive_scores(&mut self.session.own_report()?);
        rank_cases(&scores, &self.sales_share()?.labels)
    }

    /// Sales, serving: the served user's `k` best items and their scores, best first, leaving
    /// out the items the user already has. `scores` are governance's, one per candidate (labels
    /// shared); without them, sales's own head scored the candidates.
    pub fn top_k(
        &mut self,
        k: usize,
        scores: Option<Vec<f32>>,
    ) -> Result<Vec<(String, f32)>, SplitError> {
        let name = self.name.clone();
        let scores = match (scores, self.session.has_head()) {
            (None, true) => positive_scores(&mut self.session.own_report()?),
            (Some(scores), false) => scores,
            (Some(_), true) => {
                return Err(SplitError::refused(
                    name.clone(),
                    format!(
                        "`{name}` keeps the head in this model: it ranks by its own scores, not by scores it is sent"
                    ),
                ));
            }
            (None, false) => {
                return Err(SplitError::refused(
                    name.clone(),
                    format!(
                        "the labels were shared in this model: `{name}` ranks by governance's scores, and none were sent"
                    ),
                ));
            }
        };
        let share = self.sales_share()?;
        let user = share.serving.ok_or_else(|| {
            SplitError::refused(
                name.clone(),
                format!("`{name}` was asked for a ranking before any user"),
            )
        })?;
        if scores.len() != share.items.len() {
            return Err(SplitError::refused(
                name.clone(),
                format!(
                    "{} scores for {} candidate items",
                    scores.len(),
                    share.items.len()
                ),
            ));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(SplitError::refused(
                name.clone(),
                format!("the score of candidate {i} is not finite"),
            ));
        }
        let seen = &share.seen[user as usize];
        let mut ranked: Vec<(u32, f32)> = (0..share.items.len() as u32)
            .filter(|item| seen.binary_search(item).is_err())
            .map(|item| (item, scores[item as usize]))
            .collect();
        // Best first; ties by position, so that every party ranks alike.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        Ok(ranked
            .into_iter()
            .map(|(item, score)| (share.items[item as usize].clone(), score))
            .collect())
    }
}

impl HoldsSession for NcfParty {
    fn session(&self) -> &PartySession {
        &self.session
    }

    fn session_mut(&mut self) -> &mut PartySession {
        &mut self.session
    }
}

/// Sales's head without label sharing, for a tower output `width` wide.
fn sales_head(
    name: String,
    targets: Targets,
    width: usize,
    optimizer: &OptimizerSpec,
    seed: u64,
) -> LabelOwner {
    let device = training_device();
    let config = HeadConfig {
        input: width,
        layers: Vec::new(),
        outputs: 2,
        target_scale: None,
    };
    let head = seeded(&device, part_seed(seed, HEAD_PART), || config.init(&device));
    LabelOwner::new(name, targets, objective(), head, optimizer, device)
}

/// Governance's view of a split NCF run's domains: a split job's [`Transport`], plus the routing
/// of examples.
pub trait NcfTransport: Transport {
    /// Total width of the three activations at the cut layer.
    fn cut_width(&self) -> usize;

    /// Sales draws the pass's examples and sends each example's user and item; customer gets the
    /// users, product the items, and each takes its rows. Returns how many examples there are.
    fn examples(&mut self, pass: ExamplePass) -> Result<usize, SplitError>;

    /// Without label sharing: sales ranks the test examples its head scored since the last
    /// ranking, and returns HR@10 and NDCG@10 only.
    fn head_ranking(&mut self) -> Result<RankingMetrics, SplitError>;

    /// Serving: sales's `k` best items for the served user, best first, by governance's
    /// `scores` of the candidates (labels shared) or its own head's.
    fn top_k(
        &mut self,
        k: usize,
        scores: Option<Vec<f32>>,
    ) -> Result<Vec<(String, f32)>, SplitError>;
}

/// The three domains in this process: sales, customer, product.
pub type NcfInProcess = InProcess<NcfParty>;

impl NcfInProcess {
    /// Hands sales's entity ids to customer and product, as governance does over the mesh.
    pub fn with_parties(
        mut sales: NcfParty,
        mut customer: NcfParty,
        mut product: NcfParty,
    ) -> Result<Self, SplitError> {
        let (users, items) = sales.entities()?;
        customer.set_entities(&users)?;
        product.set_entities(&items)?;
        Ok(Self {
            parties: vec![sales, customer, product],
        })
    }
}

impl NcfTransport for NcfInProcess {
    fn cut_width(&self) -> usize {
        self.parties.iter().map(NcfParty::cut_width).sum()
    }

    fn examples(&mut self, pass: ExamplePass) -> Result<usize, SplitError> {
        let (users, items) = self.parties[0].draw(pass)?;
        self.parties[1].set_examples(&users)?;
        self.parties[2].set_examples(&items)?;
        Ok(users.len())
    }

    fn head_ranking(&mut self) -> Result<RankingMetrics, SplitError> {
        self.parties[0].rank()
    }

    fn top_k(
        &mut self,
        k: usize,
        scores: Option<Vec<f32>>,
    ) -> Result<Vec<(String, f32)>, SplitError> {
        self.parties[0].top_k(k, scores)
    }
}

/// Governance's side of the split NCF: the tower (and the head, with label sharing) over the
/// domains behind `T`.
pub struct SplitNcf<T: NcfTransport> {
    trainer: SplitTrainer<T>,
    share_labels: bool,
    /// How many examples the domains hold now.
    examples: usize,
    /// Training epochs begun.
    epochs: usize,
}

/// Rows scored per evaluation plan.
const EVAL_BATCH: usize = 4096;

impl<T: NcfTransport> SplitNcf<T> {
    /// Builds governance's parts for the domains behind `transport` (their bottoms built).
    pub fn new(
        transport: T,
        spec: &SplitNcfSpec,
        optimizer: &OptimizerSpec,
        share_labels: bool,
        seed: u64,
    ) -> Result<Self, SplitError> {
        let device = training_device();
        let tower = TowerConfig {
            input: transport.cut_width(),
            layers: spec.tower.clone(),
            batch_norm: false,
            dropout: 0.0,
        };
        let placement = if share_labels {
            let head = HeadConfig {
                input: tower.output(),
                layers: Vec::new(),
                outputs: 2,
                target_scale: None,
            };
            LabelPlacement::Governance {
                head: Box::new(seeded(&device, part_seed(seed, HEAD_PART), || {
                    head.init(&device)
                })),
            }
        } else {
            LabelPlacement::LabelOwner
        };
        let tower = seeded(&device, part_seed(seed, TOWER_PART), || tower.init(&device));
        let trainer =
            SplitTrainer::new(transport, tower, placement, objective(), optimizer, device)?;
        Ok(Self {
            trainer,
            share_labels,
            examples: 0,
            epochs: 0,
        })
    }

    /// Governance's parts of a trained run, loaded from `dir` (where [`SplitNcf::save`] wrote
    /// them), over domains that loaded theirs: to serve rankings.
    pub fn trained(
        transport: T,
        spec: &SplitNcfSpec,
        share_labels: bool,
        dir: &Path,
    ) -> Result<Self, SplitError> {
        let mut ncf = Self::new(transport, spec, &OptimizerSpec::default(), share_labels, 0)?;
        ncf.trainer.load(dir)?;
        Ok(ncf)
    }

    /// The `k` items the user with id `user` is likeliest to interact with next, best first,
    /// with their scores: every item is a candidate, scored with the user's and its own
    /// attributes; sales ranks them and leaves out what the user already has. Only sales learns
    /// which items those are; governance sees the candidates' activations, as in evaluation.
    /// `None`: sales holds no interactions of the user.
    pub fn recommend(
        &mut self,
        user: &str,
        k: usize,
    ) -> Result<Option<Vec<(String, f32)>>, SplitError> {
        // The candidates' labels are all 0 (sales tells no one what the user has seen).
        let n = self.take_examples(ExamplePass::Candidates(user.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        let rows: Vec<u32> = (0..n as u32).collect();
        evaluate(&mut self.trainer, &rows, Part::Test, EVAL_BATCH)?;
        let scores = if self.share_labels {
            Some(positive_scores(&mut self.trainer.report()?))
        } else {
            None
        };
        self.trainer.transport_mut().top_k(k, scores).map(Some)
    }

    pub fn transport(&self) -> &T {
        self.trainer.transport()
    }

    /// Every party saves the parts it holds: each domain its bottom (and sales its head) in its
    /// own storage, governance its tower (and the head, with label sharing) under `dir`.
    pub fn save(&mut self, dir: &Path) -> Result<Vec<PathBuf>, SplitError> {
        self.trainer.save(dir)
    }

    pub fn transport_mut(&mut self) -> &mut T {
        self.trainer.transport_mut()
    }

    /// Has the domains take the pass's examples; with label sharing, fetches their labels.
    fn take_examples(&mut self, pass: ExamplePass) -> Result<usize, SplitError> {
        self.examples = self.trainer.transport_mut().examples(pass)?;
        self.trainer.reload_labels()?;
        Ok(self.examples)
    }
}

impl<T: NcfTransport> Recommender for SplitNcf<T> {
    fn next_epoch(&mut self) -> Result<usize, SplitError> {
        self.epochs += 1;
        self.take_examples(ExamplePass::Training)
    }

    fn train_epoch(
        &mut self,
        training: &NcfTraining,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<f64, SplitError> {
        let rows: Vec<u32> = (0..self.examples as u32).collect();
        let plans: Vec<BatchPlan> = rows
            .chunks(training.batch_size)
            .map(|batch| BatchPlan::train(batch.to_vec(), training.optimizer.learning_rate))
            .collect();
        let loss_sum = train_epoch(&mut self.trainer, &plans, self.epochs, observer, stop)?;
        Ok(loss_sum / self.examples.max(1) as f64)
    }

    /// Ranks the test (or validation) cases: every candidate scored with its own user's and
    /// item's attributes; the label holder ranks them.
    fn evaluate(&mut self, cases: Cases) -> Result<RankingMetrics, SplitError> {
        let n = self.take_examples(match cases {
            Cases::Test => ExamplePass::Test,
            Cases::Validation => ExamplePass::Validation,
        })?;
        let rows: Vec<u32> = (0..n as u32).collect();
        evaluate(&mut self.trainer, &rows, Part::Test, EVAL_BATCH)?;
        if !self.share_labels {
            return self.trainer.transport_mut().head_ranking();
        }
        let scores = positive_scores(&mut self.trainer.report()?);
        let Some(Targets::Classes(labels)) = self.trainer.shared_targets() else {
            return Err(SplitError::refused(
                "governance",
                "sales shared no class labels for the test cases",
            ));
        };
        rank_cases(&scores, labels)
    }

    fn checkpoint(&mut self) -> Result<(), SplitError> {
        self.trainer.checkpoint()
    }

    fn restore(&mut self) -> Result<(), SplitError> {
        self.trainer.restore()
    }
}

/// The in-process split NCF of a prepared recommendation job.
pub type InProcessNcf = SplitNcf<NcfInProcess>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::{
        PreparedRecommendation, RecommendationSpec, popularity, write_synthetic_movielens_job,
    };

    /// The MovieLens example's job over 60 synthetic users of two taste groups, 200 films.
    fn synthetic(dir: &Path, epochs: usize) -> PreparedRecommendation {
        let file = write_synthetic_movielens_job(dir, 60, 200, 12).unwrap();
        let (mut spec, file) = RecommendationSpec::load(&file).unwrap();
        spec.training = NcfTraining {
            epochs,
            batch_size: 64,
            optimizer: OptimizerSpec {
                learning_rate: 0.01,
                ..OptimizerSpec::default()
            },
            ..NcfTraining::default()
        };
        spec.prepare(&file).unwrap()
    }

    #[test]
    fn the_split_ncf_learns_tastes_in_both_configurations_with_the_same_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let job = synthetic(dir.path(), 6);
        let stop = AtomicBool::new(false);
        let runs: Vec<_> = [
            crate::job::RunConfig::SplitLabelSharing,
            crate::job::RunConfig::SplitLabelOwner,
        ]
        .iter()
        .map(|config| job.run(config, 1, &crate::Silent, &stop).unwrap())
        .collect();
        let baseline = popularity(&job.split, job.interactions.items.len());
        let split = runs[0].metrics.ranking().unwrap();
        assert_eq!(split.users, 60);
        assert!(
            split.hit_ratio > baseline.hit_ratio + 0.2,
            "split {split:?} vs popularity {baseline:?}"
        );
        // Where the head runs changes who sees what, not the arithmetic.
        assert_eq!(runs[0].metrics, runs[1].metrics);
        assert_eq!(runs[0].history, runs[1].history);
    }

    #[test]
    fn a_trained_run_ranks_each_user_unseen_items_of_their_taste_in_both_configurations() {
        let dir = tempfile::tempdir().unwrap();
        let job = synthetic(dir.path(), 6);
        let interactions = &job.interactions;
        // The synthetic films of one taste group are numbered up to 100, the other's above.
        let action = |item: &str| item.parse::<usize>().unwrap() <= 100;
        let stop = AtomicBool::new(false);
        let mut served = Vec::new();
        for share_labels in [true, false] {
            let parts = dir.path().join(format!("parts-{share_labels}"));
            let mut trained = job.in_process_ncf(share_labels, 1, None).unwrap();
            crate::recommend::fit_ranking(&mut trained, &job.spec.training, &crate::Silent, &stop)
                .unwrap();
            trained.save(&parts).unwrap();
            let mut serving = job.in_process_ncf(share_labels, 1, Some(&parts)).unwrap();
            // A serving model trains on nothing and evaluates nothing.
            assert!(
                serving
                    .transport_mut()
                    .examples(ExamplePass::Training)
                    .is_err()
            );
            let mut rankings = Vec::new();
            let mut of_their_taste = 0;
            for (u, user) in interactions.users.iter().enumerate().take(20) {
                let top = serving.recommend(user, 10).unwrap().expect("a known user");
                assert_eq!(top.len(), 10);
                assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
                assert!(top.iter().all(|(_, s)| (0.0..=1.0).contains(s)));
                let seen: Vec<&str> = interactions
                    .events
                    .iter()
                    .filter(|e| e.0 as usize == u)
                    .map(|e| interactions.items[e.1 as usize].as_str())
                    .collect();
                assert!(top.iter().all(|(item, _)| !seen.contains(&item.as_str())));
                let likes_action = seen.iter().filter(|i| action(i)).count() * 2 > seen.len();
                of_their_taste += top
                    .iter()
                    .filter(|(item, _)| action(item) == likes_action)
                    .count();
                rankings.push(top);
            }
            // Untrained weights would pick either taste alike (about 100 of 200).
            assert!(of_their_taste >= 160, "{of_their_taste} of 200");
            // Sales checks the scores it ranks by: governance's, with the labels shared.
            let items = interactions.items.len();
            let mut nan = vec![0.5; items];
            nan[7] = f32::NAN;
            for (scores, expected) in [
                (Some(nan), "candidate 7 is not finite"),
                (Some(vec![0.5; items - 1]), "scores for"),
                (None, "none were sent"),
            ] {
                let expected = if share_labels {
                    expected
                } else {
                    "by its own scores"
                };
                if !share_labels && scores.is_none() {
                    continue;
                }
                let error = serving
                    .transport_mut()
                    .top_k(10, scores)
                    .unwrap_err()
                    .to_string();
                assert!(error.contains(expected), "{error}");
            }
            assert_eq!(serving.recommend("no such user", 10).unwrap(), None);
            served.push(rankings);
        }
        // Where the head runs changes who sees what, not the arithmetic.
        assert_eq!(served[0], served[1]);
    }

    #[test]
    fn every_candidate_is_scored_with_its_own_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let job = synthetic(dir.path(), 1);
        let mut model = job.in_process_ncf(false, 1, None).unwrap();
        let n = model.transport_mut().examples(ExamplePass::Test).unwrap();
        assert_eq!(n, job.split.test.len() * TEST_CANDIDATES);
        let parties = &model.transport().parties;
        let [sales, customer, product] =
            [0, 1, 2].map(|d| parties[d].features().expect("bottoms are built"));
        let interactions = &job.interactions;
        // The synthetic films' genres: action (column 1) for one group, romance for the other.
        let action = |item: u32| interactions.items[item as usize].parse::<usize>().unwrap() <= 100;
        let pairs: Vec<(u32, u32)> = sales
            .categorical
            .chunks(2)
            .map(|c| (c[0] as u32, c[1] as u32))
            .collect();
        for (k, &(user, item)) in pairs.iter().enumerate() {
            // Product holds the candidate's own genres, customer the user's own attributes.
            let genres = &product.numeric[k * 19..(k + 1) * 19];
            assert_eq!(genres[1] > genres[14], action(item), "example {k}");
            let gender = customer.categorical[k * 2];
            let user_number: usize = interactions.users[user as usize].parse().unwrap();
            let first_of_gender = pairs
                .iter()
                .position(|&(u, _)| {
                    interactions.users[u as usize].parse::<usize>().unwrap() % 2 == user_number % 2
                })
                .unwrap();
            assert_eq!(gender, customer.categorical[first_of_gender * 2]);
        }
        // Every test case: its user's 100 candidates, the held-out item among them once.
        for (case, candidates) in job.split.test.iter().zip(pairs.chunks(TEST_CANDIDATES)) {
            assert!(candidates.iter().all(|&(u, _)| u == case.user));
            let mut items: Vec<u32> = candidates.iter().map(|&(_, i)| i).collect();
            items.sort_unstable();
            let mut expected: Vec<u32> = case.candidates().collect();
            expected.sort_unstable();
            assert_eq!(items, expected);
        }
        // Negatives come from both groups: candidates' attributes differ within a case.
        assert!(
            pairs[..TEST_CANDIDATES].iter().any(|&(_, i)| action(i))
                && pairs[..TEST_CANDIDATES].iter().any(|&(_, i)| !action(i))
        );
    }

    #[test]
    fn ranking_finds_the_held_out_item_wherever_it_stands() {
        let mut scores = vec![0.0; 2 * TEST_CANDIDATES];
        let mut labels = vec![0; 2 * TEST_CANDIDATES];
        // Case 0: held out at 37, scored highest; case 1: held out at 0, scored below 20.
        labels[37] = 1;
        scores[37] = 1.0;
        labels[TEST_CANDIDATES] = 1;
        scores[TEST_CANDIDATES] = 0.5;
        for k in 1..=20 {
            scores[TEST_CANDIDATES + k] = 0.9;
        }
        let metrics = rank_cases(&scores, &labels).unwrap();
        assert_eq!(metrics.users, 2);
        assert_eq!(metrics.hit_ratio, 0.5);
        assert_eq!(metrics.ndcg, 0.5);
        labels[38] = 1;
        let error = rank_cases(&scores, &labels).unwrap_err().to_string();
        assert!(
            error.contains("test case 0 has 2 held-out items"),
            "{error}"
        );
    }

    #[test]
    fn an_entity_sales_names_but_the_domain_lacks_is_counted_not_named() {
        let dir = tempfile::tempdir().unwrap();
        let job = synthetic(dir.path(), 1);
        let spec = job.spec.split_model().unwrap();
        let [customers, _] = job.entity_tables.clone();
        let mut customer = NcfParty::entity(
            NcfRole::Customer,
            "customer",
            spec,
            customers,
            &OptimizerSpec::default(),
            1,
            None,
        )
        .unwrap();
        let error = customer
            .set_entities(&["1".into(), "9999".into(), "99999".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("no row for 2 of the 3 user_id values"),
            "{error}"
        );
        assert!(
            !error.contains("9999"),
            "an id is the domains' data: {error}"
        );
    }
}
