//! A domain's answer to what a job asks of its product.
//!
//! Governance asks each domain before a job runs (the node's `Admit`), and the domain checks
//! again when the job starts, because a domain never relies on governance having asked. Both
//! checks are [`domain_denials`]: the product's contract, then the node's own Cedar policy when
//! it has one.

use std::path::Path;

use fedmesh_data::DataContract;
use fedmesh_policy::{Denial, Policies, Usage};
use fedmesh_split::SplitError;

/// Why the domain refuses `usage`: its contract's terms, then its own policy (when it has
/// one). `rows` is the number of rows the job would use, when known.
pub fn domain_denials(
    contract: &DataContract,
    policy: Option<&Path>,
    usage: &Usage,
    rows: Option<usize>,
) -> Vec<Denial> {
    let mut denials = fedmesh_policy::check_contract(contract, usage, rows);
    if let Some(path) = policy {
        // An unreadable policy refuses: a domain's rules fail closed.
        match Policies::load(path) {
            Ok(policies) => denials.extend(policies.applied_by(usage.domain.clone()).check(usage)),
            Err(e) => denials.push(Denial {
                by: usage.domain.clone(),
                rule: "policy".into(),
                source: path.display().to_string(),
                reason: format!("the domain's own policy cannot be read ({e}); it admits nothing until it is fixed"),
            }),
        }
    }
    denials
}

/// The refusal as an error whose message lists every reason.
pub fn denied(denials: &[Denial]) -> SplitError {
    SplitError::Denied(denials.iter().map(Denial::to_string).collect())
}
