//! Horizontal federated learning: domains that hold the same columns for different entities
//! (regional subsidiaries, brands, branches) train one model together.
//!
//! Split learning joins domains that hold different columns of the same entities; here every
//! domain holds whole rows, so every domain trains the whole model on its own rows and governance
//! only combines the results (federated averaging, McMahan et al. 2017; FedProx, Li et al. 2020).
//! The pieces are kept apart as Flower keeps them:
//!
//! - `spec.rs`: the job as written (`technique: fedavg` or `fedprox`, a `federation` section);
//! - `prepare.rs`: every domain's data read in one process (`fedmesh run`);
//! - `domain.rs`: a domain's side ([`FederatedDomain`]): its rows and partition, its sums for the
//!   one feature pipeline, its local training, its share of secure aggregation, its evaluation;
//!   the same code answers governance in one process and at a domain node;
//! - `federation.rs`: governance's side over any [`Federation`] (domains in this process, or
//!   nodes over the mesh): the pipeline from summed statistics, the rounds, the evaluation;
//! - `evaluation.rs`: metrics from sums each domain reports of its own rows ([`EvaluationSums`]);
//! - `strategy.rs`: the server's algorithm ([`FedAvg`]): who trains each round, each update's
//!   share, the next global model;
//! - `aggregate.rs`: how the round's updates are summed, in the clear or by secure aggregation
//!   (`fedmesh-secagg`), where governance learns only the sum and survives drop-outs;
//! - `privacy.rs`: optional differential privacy of each domain's contribution (clipping,
//!   Gaussian noise, the accounting of ε);
//! - `run.rs`: the configurations run in one process (the centralized baseline on all rows
//!   pooled, federated averaging with and without secure aggregation) and the one model.
//!
//! ```
//! use fedmesh_split::horizontal::HorizontalSpec;
//! let spec = HorizontalSpec::from_yaml(r#"
//! name: regions
//! purpose: credit-risk
//! technique: fedavg
//! objective: { kind: cross-entropy, classes: 2 }
//! label: defaulted
//! features: [ { column: income }, { column: age } ]
//! domains:
//!   - { name: north, contract: north.odcs.yaml }
//!   - { name: south, contract: south.odcs.yaml }
//! split: { test_fraction: 0.3 }
//! model: { layers: [32] }
//! federation: { rounds: 10 }
//! training: { epochs: 1 }
//! "#, std::path::Path::new("job.yaml")).unwrap();
//! assert_eq!(spec.federation.rounds, 10);
//! ```

mod aggregate;
mod domain;
mod evaluation;
mod federation;
mod prepare;
mod privacy;
mod run;
mod spec;
mod strategy;

pub use aggregate::{RoundSum, plain_sum, quantization, threshold};
pub use domain::{DomainSums, FederatedDomain, FromDomain, LocalRound, ToDomain};
pub use evaluation::{EvaluationSums, OutcomeSums, SCORE_BINS};
pub use federation::{
    FederatedRun, Federation, FittedFederation, LocalFederation, federated_pipeline,
    train_federated,
};
pub use prepare::{HorizontalParty, PreparedHorizontal};
pub use privacy::{DifferentialPrivacySpec, PrivacySpent, RdpAccountant, add_noise, clip_to_norm};
pub use run::{HorizontalScorer, global_network, model_from_values};
pub use spec::*;
pub use strategy::FedAvg;
