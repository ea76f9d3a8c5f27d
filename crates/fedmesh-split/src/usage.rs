//! What a job asks of a domain's product: the [`Usage`] that the domain's contract and
//! policies and governance's policies judge.
//!
//! Governance and the domain node both derive it from the job spec, each on its own side, so
//! that a domain judges what the job will do rather than what it was told.

use crate::horizontal::HorizontalSpec;
use crate::job::Job;
use crate::party::LabelProtection;
use crate::recommend::RecommendationSpec;
use crate::split_ncf::NcfRole;
use crate::{AnyJob, SplitError};
use fedmesh_data::DataContract;
use fedmesh_policy::{Action, Usage};

/// What `job` asks of `domain`'s product for `action`: purpose, technique, where the labels
/// go, the columns. The job id, the requester and the product are the caller's to fill in.
pub fn requested(
    job: &Job,
    domain: &str,
    action: Action,
    share_labels: bool,
) -> Result<Usage, SplitError> {
    let spec = &job.spec;
    let purpose = spec.purpose.clone().ok_or_else(|| SplitError::Spec {
        path: job.file.clone(),
        message: "the job declares no `purpose`: a mesh admits no job without one (e.g. `purpose: fraud-detection`; each product's contract lists the purposes it allows in flAllowedPurposes)".into(),
    })?;
    let entry = spec
        .domains
        .iter()
        .find(|d| d.name == domain)
        .ok_or_else(|| SplitError::Job {
            job: spec.name.clone(),
            reason: format!("it has no domain `{domain}`"),
        })?;
    Ok(Usage {
        action,
        job: String::new(),
        requester: String::new(),
        purpose,
        technique: spec.technique.clone(),
        share_labels,
        label_domain: spec.label.domain.clone(),
        domain: domain.to_string(),
        product: String::new(),
        product_version: String::new(),
        columns: entry.features.iter().map(|f| f.column.clone()).collect(),
        label_column: (spec.label.domain == domain).then(|| spec.label.column.clone()),
        label_protection: spec
            .label_protection
            .as_ref()
            .map(LabelProtection::terms)
            .unwrap_or_default(),
    })
}

/// What a job of any task asks of `domain`'s product for `action`; see [`requested`] and
/// [`recommendation_usage`].
pub fn requested_of(
    job: &AnyJob,
    domain: &str,
    action: Action,
    share_labels: bool,
) -> Result<Usage, SplitError> {
    match job {
        AnyJob::Vertical(job) => requested(job, domain, action, share_labels),
        AnyJob::Recommendation(spec) => {
            let role = spec.role_of(domain).ok_or_else(|| SplitError::Job {
                job: spec.name.clone(),
                reason: format!("it has no domain `{domain}`"),
            })?;
            recommendation_usage(spec, role, action, share_labels)
        }
        AnyJob::Horizontal(job) => horizontal_usage(&job.spec, domain, action),
    }
}

/// What a horizontal job asks of `domain`'s product: the purpose, its technique, the feature
/// columns, and the label column, which stays at the domain (each domain is the label owner of
/// its own rows; nothing per row leaves it).
pub fn horizontal_usage(
    spec: &HorizontalSpec,
    domain: &str,
    action: Action,
) -> Result<Usage, SplitError> {
    let purpose = spec.purpose.clone().ok_or_else(|| SplitError::Job {
        job: spec.name.clone(),
        reason: "it declares no `purpose`: a mesh admits no job without one".into(),
    })?;
    if !spec.domains.iter().any(|d| d.name == domain) {
        return Err(SplitError::Job {
            job: spec.name.clone(),
            reason: format!("it has no domain `{domain}`"),
        });
    }
    Ok(Usage {
        action,
        job: String::new(),
        requester: String::new(),
        purpose,
        technique: spec.technique.clone(),
        share_labels: false,
        label_domain: domain.to_string(),
        domain: domain.to_string(),
        product: String::new(),
        product_version: String::new(),
        columns: spec.features.iter().map(|f| f.column.clone()).collect(),
        label_column: Some(spec.label.clone()),
        label_protection: Vec::new(),
    })
}

/// What a recommendation job asks of the product `role` serves, for `action`: the purpose,
/// split learning, whether the labels (sales's interactions) go to governance, and the columns
/// the domain's bottom reads. Sales's `user_id` keys the user embedding; it is not a feature.
/// The job id, the requester and the product are the caller's to fill in.
pub fn recommendation_usage(
    spec: &RecommendationSpec,
    role: NcfRole,
    action: Action,
    share_labels: bool,
) -> Result<Usage, SplitError> {
    let purpose = spec.purpose.clone().ok_or_else(|| {
        SplitError::Job {
            job: spec.name.clone(),
            reason: "it declares no `purpose`: a mesh admits no job without one (e.g. `purpose: recommendation`)".into(),
        }
    })?;
    let columns = match (role, &spec.split_model) {
        (NcfRole::Sales, _) => vec!["item_id".to_string()],
        (_, Some(model)) => model
            .features(role)
            .iter()
            .map(|f| f.column.clone())
            .collect(),
        (_, None) => Vec::new(),
    };
    Ok(Usage {
        action,
        job: String::new(),
        requester: String::new(),
        purpose,
        technique: fedmesh_policy::SPLIT_LEARNING.into(),
        share_labels,
        label_domain: spec.sales.name.clone(),
        domain: spec.domain(role).name.clone(),
        product: String::new(),
        product_version: String::new(),
        columns,
        label_column: None,
        label_protection: Vec::new(),
    })
}

/// The usage of `domain`'s product (described by `contract`) that `job` asks for.
pub fn usage(
    job: &Job,
    job_id: &str,
    domain: &str,
    contract: &DataContract,
    requester: &str,
    share_labels: bool,
    action: Action,
) -> Result<Usage, SplitError> {
    Ok(Usage {
        job: job_id.to_string(),
        requester: requester.to_string(),
        product: contract.product_name().to_string(),
        product_version: contract.version.clone(),
        ..requested(job, domain, action, share_labels)?
    })
}
