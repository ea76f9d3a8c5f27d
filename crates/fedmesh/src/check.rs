//! `fedmesh check JOB`: the admission a mesh would give a job, decided here, before anything
//! runs: every domain's contract (and, with `--mesh`, its own policy) and governance's policies,
//! for each configuration a mesh runs, one line per reason with the file and the rule to edit.
//!
//! The rules are those of the mesh (`fedmesh_policy::check_contract`, the domain's policy,
//! governance's Cedar policies) applied to the usage `fedmesh_split::usage` derives from the
//! job, as governance and each node do at admission. What only the data can tell (a contract's
//! `flMinRecords`, its quality rules) is left to the run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fedmesh_data::DataContract;
use fedmesh_policy::{Action, Policies, Usage};
use fedmesh_split::AnyJob;
use fedmesh_split::job::RunConfig;
use fedmesh_split::usage::requested_of;

use crate::mesh::{EXAMPLE_POLICIES, MeshLayout, domains_of};

/// What `fedmesh check` was asked.
pub struct CheckOptions {
    /// A mesh folder (`fedmesh mesh up`): its nodes' contracts and policies, and its policies.
    pub mesh: Option<PathBuf>,
    /// Governance's policies, a file or a folder (default: the mesh's, else the example set).
    pub policies: Option<PathBuf>,
    /// Who submits: the principal the policies see.
    pub requester: String,
}

/// One domain as the check sees it: its contract (read once, or why it cannot be), and its own
/// policy.
struct Domain {
    name: String,
    contract: PathBuf,
    read: Result<DataContract, String>,
    policy: Option<PathBuf>,
}

/// What a mesh would decide: per split configuration, the reasons it would be denied (none:
/// admitted).
pub struct Admission {
    /// Which policies were applied, in words.
    pub policy_origin: String,
    pub reasons: Vec<(RunConfig, Vec<String>)>,
}

/// Checks the job; prints one line per reason, and returns whether any configuration the job
/// can run is admitted.
pub fn run(job_path: &Path, options: &CheckOptions) -> Result<bool> {
    let job = AnyJob::load(job_path)?;
    let Admission {
        policy_origin,
        reasons,
    } = admission(&job, options)?;
    let domains = domains_of(&job).len();
    println!(
        "checking `{}` ({}) against {domains} domain contracts and {policy_origin}",
        job.name(),
        job.task().name(),
    );
    // A reason that denies every configuration is said once.
    let common: Vec<String> = reasons[0]
        .1
        .iter()
        .filter(|line| reasons.iter().all(|(_, lines)| lines.contains(line)))
        .cloned()
        .collect();
    if !common.is_empty() {
        println!("every configuration is denied:");
        for line in &common {
            println!("  {line}");
        }
    }
    let mut admitted_any = false;
    for (config, lines) in &reasons {
        let own: Vec<&String> = lines.iter().filter(|l| !common.contains(l)).collect();
        if lines.is_empty() {
            admitted_any = true;
            println!("{}: admitted", config.name());
        } else if !own.is_empty() {
            println!(
                "{}: denied{}",
                config.name(),
                if common.is_empty() { "" } else { " (also)" }
            );
            for line in own {
                println!("  {line}");
            }
        }
    }
    if admitted_any {
        println!("the rows' counts and quality rules are checked when the job runs");
    }
    Ok(admitted_any)
}

/// The admission of `job` as a mesh would decide it, without printing.
pub fn admission(job: &AnyJob, options: &CheckOptions) -> Result<Admission> {
    let listed = domains_of(job);
    let layout = options
        .mesh
        .as_ref()
        .map(|dir| MeshLayout { dir: dir.clone() });
    let domains: Vec<Domain> = listed
        .into_iter()
        .map(|(name, contract)| {
            let (contract, policy) = match &layout {
                // On a mesh, a domain answers with its node's contract and policy, not the job's.
                Some(layout) => {
                    let config = layout.node_config(&name);
                    let node =
                        fedmesh_node::config::NodeConfig::load(&config).with_context(|| {
                            format!(
                                "the mesh in {} has no node for domain `{name}`",
                                layout.dir.display()
                            )
                        })?;
                    (node.contract, node.policy)
                }
                None => (contract, None),
            };
            let read = DataContract::from_path(&contract).map_err(|e| e.to_string());
            Ok(Domain {
                name,
                contract,
                read,
                policy,
            })
        })
        .collect::<Result<_>>()?;
    let (policies, policy_origin) = match (&options.policies, &layout) {
        (Some(path), _) => (Policies::load(path)?, path.display().to_string()),
        (None, Some(layout)) => {
            let path = layout.dir.join("policies");
            (Policies::load(&path)?, path.display().to_string())
        }
        (None, None) => (
            Policies::from_text("examples/policies/governance.cedar", EXAMPLE_POLICIES)?,
            "the example policies (examples/policies/governance.cedar; --policies or --mesh for others)".to_string(),
        ),
    };
    let mut reasons: Vec<(RunConfig, Vec<String>)> = Vec::new();
    let configs = match job {
        AnyJob::Horizontal(_) => vec![
            RunConfig::Federated { secure: false },
            RunConfig::Federated { secure: true },
        ],
        _ => vec![RunConfig::SplitLabelSharing, RunConfig::SplitLabelOwner],
    };
    for config in configs {
        let share_labels = config == RunConfig::SplitLabelSharing;
        let mut lines = Vec::new();
        // Governance's denials, once per rule and reason, naming every domain they concern.
        let mut governance: Vec<(String, Vec<String>)> = Vec::new();
        for domain in &domains {
            let contract = match &domain.read {
                Ok(contract) => contract,
                Err(e) => {
                    lines.push(format!("{}: {e}", domain.contract.display()));
                    continue;
                }
            };
            let usage = match requested_of(job, &domain.name, Action::Train, share_labels) {
                Ok(usage) => Usage {
                    job: job.name().to_string(),
                    requester: options.requester.clone(),
                    product: contract.product_name().to_string(),
                    product_version: contract.version.clone(),
                    ..usage
                },
                Err(e) => {
                    lines.push(format!("{}: {e}", job.file().display()));
                    continue;
                }
            };
            for denial in fedmesh_node::admission::domain_denials(
                contract,
                domain.policy.as_deref(),
                &usage,
                None,
            ) {
                let file = if denial.source.starts_with("data contract") {
                    domain.contract.display().to_string()
                } else {
                    denial.source.clone()
                };
                lines.push(format!(
                    "{file}: rule `{}` ({} refuses): {}",
                    denial.rule, denial.by, denial.reason
                ));
            }
            for denial in policies.check(&usage) {
                let line = format!(
                    "{}: rule `{}` (governance refuses): {}",
                    denial.source, denial.rule, denial.reason
                );
                match governance.iter_mut().find(|(l, _)| *l == line) {
                    Some((_, names)) => names.push(domain.name.clone()),
                    None => governance.push((line, vec![domain.name.clone()])),
                }
            }
        }
        for (line, names) in governance {
            lines.push(format!("{line} (for {})", names.join(", ")));
        }
        lines.dedup();
        reasons.push((config, lines));
    }
    Ok(Admission {
        policy_origin,
        reasons,
    })
}
