//! A domain's own admission rules, read from its data contract.
//!
//! The contract's `customProperties` carry the product owner's federated-learning terms:
//! `flAllowedPurposes` and `flAllowedTechniques` (a job must name one of each; a contract that
//! lists none allows no federated use), `flLabelSharing` (`forbidden` keeps labels at their
//! owner), `flLabelColumns` (the only columns a job may train on as labels) and `flMinRecords`
//! (the fewest rows a job may use, so that a model is never fit to a handful of people). Columns
//! classified `restricted` or `confidential`, or tagged `pii`, are never features.

use fedmesh_data::DataContract;
use fedmesh_data::contract::LabelProtectionTerm;

use crate::{Action, Denial, LABEL_PROTECTION_RULE, LABEL_SHARING_RULE, Usage};

/// Why the product's contract refuses `usage`; empty when it allows it. `rows` is how many rows
/// the job would use (the product's, or its aligned rows once known), checked against
/// `flMinRecords`.
/// Whether a job's label protections meet one `flLabelProtection` term (see
/// [`LabelProtectionTerm`]); a term that does not parse is met by nothing.
fn protection_meets(term: &str, used: &[(String, f64)]) -> bool {
    LabelProtectionTerm::parse(term).is_ok_and(|term| term.met_by(used))
}

pub fn check_contract(contract: &DataContract, usage: &Usage, rows: Option<usize>) -> Vec<Denial> {
    let source = format!(
        "data contract `{}` {}",
        contract.product_name(),
        contract.version
    );
    let by = contract
        .domain
        .clone()
        .unwrap_or_else(|| usage.domain.clone());
    let mut denials = Vec::new();
    let mut deny = |rule: &str, reason: String| {
        denials.push(Denial {
            by: by.clone(),
            rule: rule.to_string(),
            source: source.clone(),
            reason,
        })
    };
    let listed = |values: &[String]| {
        if values.is_empty() {
            "none".to_string()
        } else {
            values.join(", ")
        }
    };

    let purposes = contract.custom_strings("flAllowedPurposes");
    if !purposes.iter().any(|p| p == &usage.purpose) {
        deny(
            "flAllowedPurposes",
            format!(
                "purpose `{}` is not one the product may be used for (allowed: {})",
                usage.purpose,
                listed(&purposes)
            ),
        );
    }
    let techniques = contract.custom_strings("flAllowedTechniques");
    if !techniques.iter().any(|t| t == &usage.technique) {
        deny(
            "flAllowedTechniques",
            format!(
                "technique `{}` is not allowed on the product (allowed: {})",
                usage.technique,
                listed(&techniques)
            ),
        );
    }
    if let Some(label) = &usage.label_column {
        let labels = contract.label_columns();
        if !labels.is_empty() && !labels.contains(label) {
            deny(
                "flLabelColumns",
                format!(
                    "column `{label}` is not one of the product's label columns ({})",
                    labels.join(", ")
                ),
            );
        }
        let sharing = contract.custom_strings(LABEL_SHARING_RULE);
        if usage.action == Action::Train
            && usage.share_labels
            && sharing.iter().any(|v| v == "forbidden")
        {
            deny(
                LABEL_SHARING_RULE,
                format!(
                    "labels may not leave `{}` (flLabelSharing: forbidden): keep them at the label owner (split-label-owner)",
                    usage.domain
                ),
            );
        }
    }
    if usage.label_column.is_some() && usage.action == Action::Train {
        let required = contract.custom_strings(LABEL_PROTECTION_RULE);
        if !required.is_empty() {
            let accepted = || listed(&required);
            if usage.share_labels {
                deny(
                    LABEL_PROTECTION_RULE,
                    format!(
                        "the labels of `{}` train only under label protection ({}): they may not leave for governance; run split-label-owner",
                        usage.domain,
                        accepted()
                    ),
                );
            } else if !required
                .iter()
                .any(|term| protection_meets(term, &usage.label_protection))
            {
                let used: Vec<String> = usage
                    .label_protection
                    .iter()
                    .map(|(kind, strength)| match kind.as_str() {
                        "equal-norms" => kind.clone(),
                        _ => format!("{kind} {strength}"),
                    })
                    .collect();
                deny(
                    LABEL_PROTECTION_RULE,
                    format!(
                        "the job protects the labels of `{}` with {}; the contract requires one of: {} (set `label_protection` in the job spec, e.g. `label_protection: {{ shaped_noise: 2 }}`)",
                        usage.domain,
                        if used.is_empty() {
                            "nothing".to_string()
                        } else {
                            used.join(", ")
                        },
                        accepted()
                    ),
                );
            }
        }
    }
    for column in &usage.columns {
        match contract.property(column) {
            None => deny("schema", format!("the product has no column `{column}`")),
            Some(p) if p.is_sensitive() => deny(
                "classification",
                format!(
                    "column `{column}` is {}: it may be a join key, never a feature",
                    match p.classification.as_deref() {
                        Some(c @ ("restricted" | "confidential")) => format!("classified `{c}`"),
                        _ => "tagged `pii`".to_string(),
                    }
                ),
            ),
            Some(_) => {}
        }
    }
    if let Some(rows) = rows
        && let Some(min) = min_records(contract)
        && (rows as u64) < min
    {
        deny(
            "flMinRecords",
            format!("the job would use {rows} rows; the contract requires at least {min}"),
        );
    }
    denials
}

/// `flMinRecords`, read as a whole number.
fn min_records(contract: &DataContract) -> Option<u64> {
    contract
        .custom_strings("flMinRecords")
        .first()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v.max(0.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r#"
apiVersion: v3.1.0
kind: DataContract
id: urn:test:card-cases
name: card-cases
version: 1.2.0
status: active
domain: fraud-prevention
schema:
  - name: card_cases
    properties:
      - { name: transaction_id, logicalType: integer, primaryKey: true, classification: restricted }
      - { name: email, logicalType: string, tags: [pii] }
      - { name: V20, logicalType: number }
      - { name: Amount, logicalType: number }
      - { name: Class, logicalType: integer }
customProperties:
  - { property: flAllowedPurposes, value: [fraud-detection] }
  - { property: flAllowedTechniques, value: [split-learning] }
  - { property: flLabelColumns, value: [Class] }
  - { property: flLabelSharing, value: forbidden }
  - { property: flMinRecords, value: 1000 }
"#;

    fn contract() -> DataContract {
        DataContract::from_yaml(CONTRACT).unwrap()
    }

    fn rules(denials: &[Denial]) -> Vec<&str> {
        denials.iter().map(|d| d.rule.as_str()).collect()
    }

    #[test]
    fn a_usage_within_the_contract_is_allowed() {
        assert_eq!(
            check_contract(&contract(), &Usage::example(), Some(1000)),
            vec![]
        );
    }

    #[test]
    fn a_purpose_the_contract_does_not_list_is_refused_by_the_domain() {
        let usage = Usage {
            purpose: "marketing".into(),
            ..Usage::example()
        };
        let denials = check_contract(&contract(), &usage, None);
        assert_eq!(rules(&denials), ["flAllowedPurposes"]);
        let text = denials[0].to_string();
        assert!(text.starts_with("fraud-prevention refuses"), "{text}");
        assert!(
            text.contains("`marketing`") && text.contains("fraud-detection"),
            "{text}"
        );
        assert!(text.contains("card-cases` 1.2.0"), "{text}");
    }

    #[test]
    fn a_contract_without_fl_terms_allows_no_federated_use() {
        let bare = DataContract::from_yaml(&CONTRACT[..CONTRACT.find("customProperties").unwrap()])
            .unwrap();
        let denials = check_contract(&bare, &Usage::example(), Some(10));
        assert_eq!(
            rules(&denials),
            ["flAllowedPurposes", "flAllowedTechniques"]
        );
        assert!(
            denials[0].reason.contains("allowed: none"),
            "{}",
            denials[0]
        );
    }

    #[test]
    fn a_contract_that_requires_label_protection_refuses_a_job_without_enough_of_it() {
        let contract = DataContract::from_yaml(&CONTRACT.replace(
            "  - { property: flMinRecords, value: 1000 }",
            "  - { property: flMinRecords, value: 1000 }\n  - { property: flLabelProtection, value: [shaped-noise >= 2, randomized-response <= 1] }",
        ))
        .unwrap();
        let protected = |protection: &[(&str, f64)], share_labels: bool| Usage {
            label_protection: protection
                .iter()
                .map(|(kind, strength)| (kind.to_string(), *strength))
                .collect(),
            share_labels,
            ..Usage::example()
        };
        let denied = |usage: &Usage| {
            check_contract(&contract, usage, Some(1000))
                .into_iter()
                .filter(|d| d.rule == LABEL_PROTECTION_RULE)
                .map(|d| d.reason)
                .collect::<Vec<_>>()
        };
        let none = denied(&protected(&[], false));
        assert_eq!(none.len(), 1);
        assert!(
            none[0].contains("with nothing") && none[0].contains("shaped_noise"),
            "{none:?}"
        );
        // Too weak a protection is no protection; either term, strong enough, is.
        assert_eq!(denied(&protected(&[("shaped-noise", 1.0)], false)).len(), 1);
        assert_eq!(
            denied(&protected(&[("randomized-response", 2.0)], false)).len(),
            1
        );
        assert_eq!(
            denied(&protected(&[("gradient-noise", 50.0)], false)).len(),
            1
        );
        assert!(denied(&protected(&[("shaped-noise", 2.0)], false)).is_empty());
        assert!(denied(&protected(&[("randomized-response", 0.5)], false)).is_empty());
        // Labels that leave for governance are not protected, whatever the noise.
        let shared = denied(&protected(&[("shaped-noise", 4.0)], true));
        assert!(shared[0].contains("may not leave"), "{shared:?}");
        // The term binds the label owner's product only, and training only.
        let feature_domain = Usage {
            label_column: None,
            ..protected(&[], false)
        };
        assert!(denied(&feature_domain).is_empty());
        let serving = Usage {
            action: Action::Predict,
            ..protected(&[], false)
        };
        assert!(denied(&serving).is_empty());
        assert!(!protection_meets(
            "shaped-noise >= lots",
            &[("shaped-noise".into(), 9.0)]
        ));
        // A term joined by `&` asks for all of its parts.
        let strong = "shaped-noise >= 3 & equal-norms";
        let with_norms = [("shaped-noise".into(), 3.0), ("equal-norms".into(), 1.0)];
        assert!(protection_meets(strong, &with_norms));
        assert!(!protection_meets(strong, &with_norms[..1]));
        assert!(!protection_meets(
            strong,
            &[("shaped-noise".into(), 2.0), ("equal-norms".into(), 1.0)]
        ));
        // Equal norms alone hide nothing: such a term is met by nothing.
        assert!(!protection_meets("equal-norms", &with_norms));
    }

    #[test]
    fn sensitive_and_unknown_columns_are_never_features() {
        let usage = Usage {
            columns: vec![
                "transaction_id".into(),
                "email".into(),
                "V99".into(),
                "V20".into(),
            ],
            ..Usage::example()
        };
        let denials = check_contract(&contract(), &usage, None);
        assert_eq!(
            rules(&denials),
            ["classification", "classification", "schema"]
        );
        assert!(
            denials[0].reason.contains("classified `restricted`"),
            "{}",
            denials[0]
        );
        assert!(denials[1].reason.contains("tagged `pii`"), "{}", denials[1]);
        assert!(
            denials[2].reason.contains("no column `V99`"),
            "{}",
            denials[2]
        );
    }

    #[test]
    fn label_sharing_and_label_columns_and_min_records() {
        let sharing = Usage {
            share_labels: true,
            ..Usage::example()
        };
        assert_eq!(
            rules(&check_contract(&contract(), &sharing, None)),
            [LABEL_SHARING_RULE]
        );
        let predicting = Usage {
            action: Action::Predict,
            ..sharing
        };
        assert!(check_contract(&contract(), &predicting, None).is_empty());
        let other_label = Usage {
            label_column: Some("Amount".into()),
            ..Usage::example()
        };
        assert_eq!(
            rules(&check_contract(&contract(), &other_label, None)),
            ["flLabelColumns"]
        );
        let denials = check_contract(&contract(), &Usage::example(), Some(999));
        assert_eq!(rules(&denials), ["flMinRecords"]);
        assert!(denials[0].reason.contains("999 rows"), "{}", denials[0]);
    }
}
