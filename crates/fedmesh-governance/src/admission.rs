//! Governance's side of admitting a job: every involved domain first, then the mesh's policies.
//!
//! Domains are asked first because only a domain knows which product and contract version it
//! serves, and because a label owner's contract may turn label sharing into configuration 2
//! (when the job spec allows that) before governance's policies see the plan.

use std::time::Duration;

use fedmesh_net::{MeshIdentity, NodeEndpoint};
use fedmesh_policy::{Action, Denial, LABEL_SHARING_RULE, Policies, Usage};
use fedmesh_proto::v1::{self, domain_node_client::DomainNodeClient};
use fedmesh_split::AnyJob;
use fedmesh_split::job::{LabelSharingFallback, RunConfig};
use fedmesh_split::usage::requested_of;

/// A job's plan after admission: the configurations it may run, and what changed on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub configs: Vec<RunConfig>,
    /// The usages the domains admitted, one per domain.
    pub usages: Vec<Usage>,
    /// What admission changed, for the job's log.
    pub notes: Vec<String>,
}

/// Asks every domain of `job`, then governance's `policies`, whether the job may run
/// `configs`. The error lists every denial.
#[allow(clippy::too_many_arguments)]
pub async fn admit(
    job: &AnyJob,
    job_id: &str,
    requester: &str,
    configs: &[RunConfig],
    policies: Result<Policies, String>,
    identity: &MeshIdentity,
    nodes: &[NodeEndpoint],
    deadline: Duration,
) -> Result<Admission, Vec<Denial>> {
    let governance = |rule: &str, source: &str, reason: String| Denial {
        by: "governance".into(),
        rule: rule.into(),
        source: source.into(),
        reason,
    };
    if job.purpose().is_none() {
        return Err(vec![governance(
            "purpose",
            "the job spec",
            "the job declares no `purpose`: a mesh admits no job without one (e.g. `purpose: fraud-detection`)".into(),
        )]);
    }
    let mut configs = configs.to_vec();
    let mut notes = Vec::new();
    let share_labels = configs.contains(&RunConfig::SplitLabelSharing);
    let mut denials = Vec::new();
    let mut usages = Vec::new();
    for domain in job.domains() {
        // The domain fills in the product it serves.
        let usage = match requested_of(job, domain, Action::Train, share_labels) {
            Ok(usage) => Usage {
                job: job_id.to_string(),
                requester: requester.to_string(),
                ..usage
            },
            Err(e) => {
                denials.push(governance("spec", "the job spec", e.to_string()));
                continue;
            }
        };
        let Some(node) = nodes.iter().find(|n| n.name == domain) else {
            denials.push(governance(
                "mesh",
                "governance's config",
                format!("the mesh has no node for domain `{domain}`"),
            ));
            continue;
        };
        match ask(identity, node, &usage, deadline).await {
            Ok((usage, mut refused)) => {
                if let Some(i) = refused.iter().position(|d| d.rule == LABEL_SHARING_RULE)
                    && job.on_label_sharing_forbidden() == LabelSharingFallback::SplitLabelOwner
                {
                    let denial = refused.remove(i);
                    configs.retain(|c| *c != RunConfig::SplitLabelSharing);
                    if !configs.contains(&RunConfig::SplitLabelOwner) {
                        configs.push(RunConfig::SplitLabelOwner);
                    }
                    notes.push(format!(
                        "split-label-sharing is replaced by split-label-owner: {denial} (the job spec's on_label_sharing_forbidden: split-label-owner)"
                    ));
                }
                denials.extend(refused);
                usages.push(usage);
            }
            Err(reason) => denials.push(Denial {
                by: domain.to_string(),
                rule: "reachable".into(),
                source: node.url.clone(),
                reason: format!("the domain's node did not answer the admission request: {reason}"),
            }),
        }
    }
    if !denials.is_empty() {
        return Err(denials);
    }
    let policies = policies.map_err(|reason| {
        vec![governance(
            "policies",
            "governance's policies",
            format!("{reason}; governance admits nothing until they load"),
        )]
    })?;
    for usage in &usages {
        for config in &configs {
            let usage = Usage {
                share_labels: *config == RunConfig::SplitLabelSharing,
                ..usage.clone()
            };
            for denial in policies.check(&usage) {
                if !denials.contains(&denial) {
                    denials.push(denial);
                }
            }
        }
    }
    if denials.is_empty() {
        Ok(Admission {
            configs,
            usages,
            notes,
        })
    } else {
        Err(denials)
    }
}

/// One domain's answer: the usage as it reads it, and its denials.
async fn ask(
    identity: &MeshIdentity,
    node: &NodeEndpoint,
    usage: &Usage,
    deadline: Duration,
) -> Result<(Usage, Vec<Denial>), String> {
    let channel = fedmesh_net::transport::connect_with_retries(identity, node, deadline)
        .await
        .map_err(|e| e.to_string())?;
    let request = v1::AdmissionRequest {
        usage_json: serde_json::to_string(usage).expect("usages serialize"),
    };
    let reply = tokio::time::timeout(deadline, DomainNodeClient::new(channel).admit(request))
        .await
        .map_err(|_| format!("no answer within {} s", deadline.as_secs_f64()))?
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let denials: Vec<Denial> = serde_json::from_str(&reply.denials_json)
        .map_err(|e| format!("a malformed answer: {e}"))?;
    let usage: Usage =
        serde_json::from_str(&reply.usage_json).map_err(|e| format!("a malformed answer: {e}"))?;
    Ok((usage, denials))
}
