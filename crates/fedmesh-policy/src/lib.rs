//! Admission of federated jobs: may this job use this data product?
//!
//! In a data mesh, a job runs only when two independent parties agree. Governance applies the
//! mesh's global rules, written as [Cedar](https://www.cedarpolicy.com) policies that the mesh
//! operator edits ([`Policies`]). Each domain node, separately, applies its own rules: its data
//! contract's federated-learning terms and column classifications ([`check_contract`]), and
//! optionally a Cedar policy of its own. Neither can overrule the other: a domain can refuse a job
//! that governance admits, which is what keeps a domain in charge of its data.
//!
//! Both sides decide on the same facts, a [`Usage`]: who asks, for what purpose, by which
//! technique, whether labels leave their owner, and which columns of which product. A refusal is
//! a list of [`Denial`]s, each naming the rule that refused and why, so that the job's submitter
//! knows what to change or whom to ask.
//!
//! ```
//! use fedmesh_policy::{Policies, Usage};
//!
//! let policies = Policies::from_text(
//!     "governance.cedar",
//!     r#"@id("fraud-only")
//!        permit (principal, action == Action::"train", resource)
//!        when { context.purpose == "fraud-detection" };"#,
//! )?;
//! let mut usage = Usage::example();
//! assert!(policies.check(&usage).is_empty());
//! usage.purpose = "marketing".into();
//! let denials = policies.check(&usage);
//! assert!(denials[0].to_string().contains("no governance policy permits"));
//! # Ok::<(), fedmesh_policy::PolicyError>(())
//! ```

mod contract;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityUid, PolicyId, PolicySet, Request,
};
use serde::{Deserialize, Serialize};

pub use contract::check_contract;

/// The techniques fedmesh runs, as contracts name them in `flAllowedTechniques`.
pub const SPLIT_LEARNING: &str = "split-learning";

/// The rule a label owner's contract refuses label sharing by. Governance may answer such a
/// denial by keeping the labels at their owner (configuration 2) when the job spec says so.
pub const LABEL_SHARING_RULE: &str = "flLabelSharing";
/// The contract term that admits training on a product's labels only under label protection.
pub const LABEL_PROTECTION_RULE: &str = "flLabelProtection";

/// What governance's policies are asked to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Train a model on the product (alignment included).
    Train,
    /// Score entities with a model trained on the product.
    Predict,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Train => "train",
            Action::Predict => "predict",
        }
    }
}

/// What a job asks of one data product: the facts both governance and the product's domain
/// decide on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub action: Action,
    /// The job's id (or name, before it has one).
    pub job: String,
    /// Who submitted it: an operator's certificate name.
    pub requester: String,
    /// Why: matched against contracts' `flAllowedPurposes` and governance's policies.
    pub purpose: String,
    /// How: `split-learning`, matched against `flAllowedTechniques`.
    pub technique: String,
    /// Whether the labels go to governance (configuration 1) rather than stay at their owner.
    pub share_labels: bool,
    /// The domain that owns the labels.
    pub label_domain: String,
    /// The domain that serves the product.
    pub domain: String,
    /// The product's name and contract version.
    pub product: String,
    pub product_version: String,
    /// The product's columns the job uses as features.
    pub columns: Vec<String>,
    /// The label column, when this product holds the labels.
    pub label_column: Option<String>,
    /// How the job protects the labels at their owner: (`gradient-noise` | `shaped-noise` |
    /// `randomized-response`, its scale or ε), matched against the label owner's
    /// `flLabelProtection`.
    #[serde(default)]
    pub label_protection: Vec<(String, f64)>,
}

impl Usage {
    /// A usage of the fraud example's label owner, for documentation and tests.
    pub fn example() -> Self {
        Self {
            action: Action::Train,
            job: "fraud".into(),
            requester: "operator".into(),
            purpose: "fraud-detection".into(),
            technique: SPLIT_LEARNING.into(),
            share_labels: false,
            label_domain: "fraud-prevention".into(),
            domain: "fraud-prevention".into(),
            product: "card-cases".into(),
            product_version: "1.0.0".into(),
            columns: vec!["V20".into(), "Amount".into()],
            label_column: Some("Class".into()),
            label_protection: Vec::new(),
        }
    }
}

/// One reason a job may not use a product: the rule that refuses, where it is written, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// Who refused: `governance` or the domain's name.
    pub by: String,
    /// The rule: a Cedar policy's `@id`, or a contract term (`flAllowedPurposes`, …).
    pub rule: String,
    /// Where the rule is written: a policy file, or a contract and its version.
    pub source: String,
    pub reason: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} refuses: {} (rule `{}`, {})",
            self.by, self.reason, self.rule, self.source
        )
    }
}

/// Errors of loading policies.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policies from {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("policy file {path} does not parse: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("policy file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A set of Cedar policies: governance's, or a domain node's own.
///
/// Requests are `principal: Operator::"<requester>"`, `action: Action::"train"` or
/// `Action::"predict"`, `resource: DataProduct::"<product>"` (attributes `domain`, `version`),
/// with the context `job`, `purpose`, `technique`, `shareLabels`, `labelDomain`, `domain`,
/// `columns` (a set) and, for the label owner's product, `labelColumn`. A policy's `@id`
/// annotation names it in denials and its `@reason` annotation explains them.
#[derive(Debug, Clone)]
pub struct Policies {
    set: PolicySet,
    /// The file each policy came from, by policy id.
    files: Vec<(PolicyId, PathBuf)>,
    /// Who applies these policies (`governance` or a domain), for denials.
    by: String,
    origin: PathBuf,
}

impl Policies {
    /// Loads every `*.cedar` file of `path` (a file, or a folder read in name order).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let io = |error| PolicyError::Io {
            path: path.to_path_buf(),
            error,
        };
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut policies = Self::empty(path);
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|error| PolicyError::Io {
                path: file.clone(),
                error,
            })?;
            policies.add_text(&file, &text)?;
        }
        Ok(policies)
    }

    /// Policies from one text, `origin` naming it in errors and denials.
    pub fn from_text(origin: impl AsRef<Path>, text: &str) -> Result<Self, PolicyError> {
        let mut policies = Self::empty(origin.as_ref());
        policies.add_text(origin.as_ref(), text)?;
        Ok(policies)
    }

    fn empty(origin: &Path) -> Self {
        Self {
            set: PolicySet::new(),
            files: Vec::new(),
            by: "governance".into(),
            origin: origin.to_path_buf(),
        }
    }

    /// Names who applies these policies in denials (default `governance`).
    pub fn applied_by(mut self, by: impl Into<String>) -> Self {
        self.by = by.into();
        self
    }

    fn add_text(&mut self, file: &Path, text: &str) -> Result<(), PolicyError> {
        let parsed = PolicySet::from_str(text).map_err(|e| PolicyError::Parse {
            path: file.to_path_buf(),
            message: parse_message(text, &e),
        })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Invalid {
                path: file.to_path_buf(),
                message: "templates (policies with ?principal or ?resource slots) are not supported: write the entity out".into(),
            });
        }
        for (n, policy) in parsed.policies().enumerate() {
            let name = policy
                .annotation("id")
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
                    format!("{stem}#{}", n + 1)
                });
            let id = PolicyId::new(&name);
            if self.set.policy(&id).is_some() {
                return Err(PolicyError::Invalid {
                    path: file.to_path_buf(),
                    message: format!("two policies have the id `{name}`: ids must be unique"),
                });
            }
            self.set
                .add(policy.new_id(id.clone()))
                .map_err(|e| PolicyError::Invalid {
                    path: file.to_path_buf(),
                    message: e.to_string(),
                })?;
            self.files.push((id, file.to_path_buf()));
        }
        Ok(())
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn file_of(&self, id: &PolicyId) -> String {
        self.files.iter().find(|(i, _)| i == id).map_or_else(
            || self.origin.display().to_string(),
            |(_, f)| f.display().to_string(),
        )
    }

    /// Why the policies refuse `usage`; empty when they allow it. Cedar denies what no policy
    /// permits, and any `forbid` that matches overrides every `permit`.
    pub fn check(&self, usage: &Usage) -> Vec<Denial> {
        let denial = |rule: String, source: String, reason: String| Denial {
            by: self.by.clone(),
            rule,
            source,
            reason,
        };
        let (request, entities) = match cedar_request(usage) {
            Ok(r) => r,
            Err(message) => {
                return vec![denial(
                    "request".into(),
                    self.origin.display().to_string(),
                    message,
                )];
            }
        };
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        // A policy that fails to evaluate (a misspelled attribute, a type error) is skipped by
        // Cedar, and a skipped `forbid` would let through what it was written to stop: any
        // error refuses.
        let mut denials: Vec<Denial> = response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                let id = e.policy_id().clone();
                denial(
                    id.to_string(),
                    self.file_of(&id),
                    format!("policy `{id}` cannot be evaluated ({e}); fix it, as nothing passes it until then"),
                )
            })
            .collect();
        if response.decision() == Decision::Allow {
            return denials;
        }
        denials.extend(response.diagnostics().reason().map(|id| {
            let reason = self
                .set
                .annotation(id, "reason")
                .map(str::to_string)
                .unwrap_or_else(|| format!("policy `{id}` forbids it"));
            denial(id.to_string(), self.file_of(id), reason)
        }));
        if denials.is_empty() {
            denials.push(denial(
                "default-deny".into(),
                self.origin.display().to_string(),
                format!(
                    "no {} policy permits `{}` of data product `{}` for purpose `{}` by {} ({}) for `{}`",
                    self.by,
                    usage.action.name(),
                    usage.product,
                    usage.purpose,
                    usage.technique,
                    if usage.share_labels {
                        "labels shared with governance"
                    } else {
                        "labels kept by their owner"
                    },
                    usage.requester
                ),
            ));
        }
        denials
    }
}

/// A parse error with the line and column it points at.
fn parse_message(text: &str, error: &cedar_policy::ParseErrors) -> String {
    use std::fmt::Write as _;
    let mut message = String::new();
    for (i, e) in error.iter().enumerate() {
        if i > 0 {
            message.push_str("; ");
        }
        let _ = write!(message, "{e}");
        let offset = miette_offset(e);
        if let Some(offset) = offset.filter(|&o| o <= text.len()) {
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
            let _ = write!(message, " (line {line}, column {column})");
        }
    }
    message
}

fn miette_offset(error: &impl miette::Diagnostic) -> Option<usize> {
    error.labels()?.next().map(|l| l.offset())
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let escaped = serde_json::to_string(id).expect("strings serialize");
    EntityUid::from_str(&format!("{kind}::{escaped}")).map_err(|e| e.to_string())
}

fn cedar_request(usage: &Usage) -> Result<(Request, Entities), String> {
    let principal = uid("Operator", &usage.requester)?;
    let action = uid("Action", usage.action.name())?;
    let resource = uid("DataProduct", &usage.product)?;
    let mut context = serde_json::json!({
        "job": usage.job,
        "purpose": usage.purpose,
        "technique": usage.technique,
        "shareLabels": usage.share_labels,
        "labelDomain": usage.label_domain,
        "domain": usage.domain,
        "columns": usage.columns,
    });
    if let Some(label) = &usage.label_column {
        context["labelColumn"] = label.clone().into();
    }
    let context = Context::from_json_value(context, None).map_err(|e| e.to_string())?;
    let entities = Entities::from_json_value(
        serde_json::json!([
            {
                "uid": { "type": "DataProduct", "id": usage.product },
                "attrs": { "domain": usage.domain, "version": usage.product_version },
                "parents": []
            },
            {
                "uid": { "type": "Operator", "id": usage.requester },
                "attrs": {},
                "parents": []
            }
        ]),
        None,
    )
    .map_err(|e| e.to_string())?;
    let request =
        Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())?;
    Ok((request, entities))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = r#"
@id("split-learning-for-fraud")
permit (principal, action == Action::"train", resource)
when { context.technique == "split-learning" && context.purpose == "fraud-detection" };

@id("no-marketing")
@reason("card data may not be used for marketing")
forbid (principal, action, resource)
when { context.purpose == "marketing" };

@id("amount-stays-home")
@reason("the Amount column of card-cases never leaves fraud-prevention's models")
forbid (principal, action, resource == DataProduct::"card-cases")
when { context.columns.contains("Amount") && context.purpose != "fraud-detection" };
"#;

    fn policies() -> Policies {
        Policies::from_text("governance.cedar", POLICIES).unwrap()
    }

    #[test]
    fn a_permitted_usage_is_allowed() {
        assert_eq!(policies().check(&Usage::example()), Vec::new());
        assert_eq!(policies().len(), 3);
    }

    #[test]
    fn a_forbid_names_its_policy_and_reason() {
        let usage = Usage {
            purpose: "marketing".into(),
            ..Usage::example()
        };
        let denials = policies().check(&usage);
        let rules: Vec<&str> = denials.iter().map(|d| d.rule.as_str()).collect();
        assert!(rules.contains(&"no-marketing"), "{denials:?}");
        assert!(rules.contains(&"amount-stays-home"), "{denials:?}");
        let text = denials
            .iter()
            .find(|d| d.rule == "no-marketing")
            .unwrap()
            .to_string();
        assert!(
            text.contains("card data may not be used for marketing"),
            "{text}"
        );
        assert!(text.contains("governance.cedar"), "{text}");
    }

    #[test]
    fn what_no_policy_permits_is_denied_by_default() {
        let usage = Usage {
            technique: "horizontal".into(),
            ..Usage::example()
        };
        let denials = policies().check(&usage);
        assert_eq!(denials.len(), 1);
        assert_eq!(denials[0].rule, "default-deny");
        assert!(denials[0].reason.contains("horizontal"), "{}", denials[0]);
        let empty = Policies::from_text("none.cedar", "").unwrap();
        assert_eq!(empty.check(&Usage::example())[0].rule, "default-deny");
    }

    #[test]
    fn a_policy_that_cannot_be_evaluated_refuses() {
        // `resource.owner` does not exist: the forbid cannot be evaluated, and must not be
        // skipped silently.
        let policies = Policies::from_text(
            "p.cedar",
            r#"permit (principal, action, resource);
               @id("owner-only")
               forbid (principal, action, resource) unless { resource.owner == principal };"#,
        )
        .unwrap();
        let denials = policies.check(&Usage::example());
        assert_eq!(denials.len(), 1, "{denials:?}");
        assert_eq!(denials[0].rule, "owner-only");
        assert!(
            denials[0].reason.contains("cannot be evaluated"),
            "{}",
            denials[0]
        );
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let err = Policies::from_text(
            "bad.cedar",
            "permit (principal, action, resource);\nforbid (principal action, resource);",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bad.cedar"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_folder_of_policy_files_loads_in_order_and_ids_stay_unique() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.cedar"),
            "permit (principal, action, resource);",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.cedar"),
            "forbid (principal, action, resource) when { context.purpose == \"ads\" };",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        let policies = Policies::load(dir.path()).unwrap();
        assert_eq!(policies.len(), 2);
        let usage = Usage {
            purpose: "ads".into(),
            ..Usage::example()
        };
        let denials = policies.check(&usage);
        assert_eq!(denials[0].rule, "b#1");
        assert!(denials[0].source.ends_with("b.cedar"), "{:?}", denials[0]);
        std::fs::write(
            dir.path().join("c.cedar"),
            "@id(\"b#1\") permit (principal, action, resource);",
        )
        .unwrap();
        let err = Policies::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("two policies have the id `b#1`"), "{err}");
    }

    #[test]
    fn policies_see_the_product_and_the_operator() {
        let policies = Policies::from_text(
            "p.cedar",
            r#"permit (principal == Operator::"alice", action, resource)
               when { resource.domain == "fraud-prevention" && context has labelColumn };"#,
        )
        .unwrap();
        let alice = Usage {
            requester: "alice".into(),
            ..Usage::example()
        };
        assert!(policies.check(&alice).is_empty());
        assert!(!policies.check(&Usage::example()).is_empty(), "not alice");
        let no_label = Usage {
            label_column: None,
            ..alice
        };
        assert!(!policies.check(&no_label).is_empty());
    }
}
