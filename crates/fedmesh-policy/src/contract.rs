//! A domain's own admission rules, read from its data contract.
//!
//! The contract's `customProperties` carry the product owner's federated-learning terms:
//! `flAllowedPurposes` and `flAllowedTechniques` (a job must name one of each; a contract that
//! lists none allows no federated use), `flLabelSharing` (`forbidden` keeps labels at their
//! owner), `flLabelColumns` (the only columns a job may train on as labels) and `flMinRecords`
//! (the fewest rows a job may use, so that a model is never fit to a handful of people). Columns
//! classified `restricted` or `confidential`, or tagged `pii`, are never features.

use fedmesh_data::DataContract;

use crate::{Action, Denial, LABEL_SHARING_RULE, Usage};

/// Why the product's contract refuses `usage`; empty when it allows it. `rows` is how many rows
/// the job would use (the product's, or its aligned rows once known), checked against
/// `flMinRecords`.
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
