//! A contract's rules fail closed, whatever their spelling: a contract either reads every term
//! exactly as fedmesh acts on it, or is refused. Never a restricted column read as public,
//! never `Forbidden` read as no rule.

use fedmesh_data::DataContract;
use proptest::prelude::*;

const CONTRACT: &str = r#"
apiVersion: v3.1.0
kind: DataContract
id: urn:test
version: 1.0.0
status: active
domain: risk
schema:
  - name: clients
    properties:
      - { name: id, logicalType: integer, primaryKey: true, CLASS_KEY: CLASS_VALUE }
      - { name: age, logicalType: integer }
customProperties:
  - { property: SHARING_KEY, value: SHARING_VALUE }
"#;

/// A word as written, in another case, or with one letter dropped, doubled or swapped.
fn variant(word: &'static str) -> impl Strategy<Value = String> {
    let n = word.len();
    prop_oneof![
        3 => Just(word.to_string()),
        1 => Just(word.to_uppercase()),
        1 => Just(format!("{}{}", word[..1].to_uppercase(), &word[1..])),
        1 => (0..n).prop_map(move |i| format!("{}{}", &word[..i], &word[i + 1..])),
        1 => (0..n).prop_map(move |i| format!("{}{}", &word[..=i], &word[i..])),
        1 => (0..n - 1).prop_map(move |i| {
            let mut c: Vec<char> = word.chars().collect();
            c.swap(i, i + 1);
            c.into_iter().collect()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn a_contract_reads_its_terms_exactly_or_not_at_all(
        class_key in variant("classification"),
        class_value in prop_oneof![variant("restricted"), variant("confidential"), Just("public".to_string())],
        sharing_key in variant("flLabelSharing"),
        sharing_value in prop_oneof![variant("forbidden"), variant("allowed")],
    ) {
        let text = CONTRACT
            .replace("CLASS_KEY", &class_key)
            .replace("CLASS_VALUE", &class_value)
            .replace("SHARING_KEY", &sharing_key)
            .replace("SHARING_VALUE", &sharing_value);
        let Ok(contract) = DataContract::from_yaml(&text) else {
            return Ok(());
        };
        // Read: then every term was spelled as fedmesh acts on it.
        let id = contract.property("id").unwrap();
        prop_assert_eq!(class_key.as_str(), "classification");
        prop_assert_eq!(id.classification.as_deref(), Some(class_value.as_str()));
        let meant_sensitive = ["restricted", "confidential"]
            .iter()
            .any(|c| c.eq_ignore_ascii_case(&class_value));
        prop_assert_eq!(id.is_sensitive(), meant_sensitive);
        prop_assert_eq!(sharing_key.as_str(), "flLabelSharing");
        prop_assert!(["allowed", "forbidden"].contains(&sharing_value.as_str()));
    }
}
