//! Compatibility verdicts on schemas derived from real Rust types (old and new versions of
//! one message), against what schema registries answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_contracts::{IssueKind, JsonSchema, Mode, check_compatibility, schemars};

fn schema<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// (backward, forward) verdicts, and the kinds reported.
fn verdicts(old: &Value, new: &Value) -> (bool, bool, bool, Vec<IssueKind>) {
    let full = check_compatibility(old, new, Mode::Full);
    (
        check_compatibility(old, new, Mode::Backward).is_compatible(),
        check_compatibility(old, new, Mode::Forward).is_compatible(),
        full.is_compatible(),
        full.issues.iter().map(|i| i.kind).collect(),
    )
}

mod v1 {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct User {
        pub id: u64,
        pub name: String,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Status {
        Active,
        Suspended,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Account {
        pub status: Status,
    }
}

mod added_with_default {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct User {
        pub id: u64,
        pub name: String,
        #[serde(default)]
        pub email: String,
    }
}

mod added_without_default {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct User {
        pub id: u64,
        pub name: String,
        pub email: String,
    }
}

mod removed {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct User {
        pub id: u64,
    }
}

mod retyped {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct User {
        pub id: String,
        pub name: String,
    }
}

mod variant_added {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Status {
        Active,
        Suspended,
        Closed,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Account {
        pub status: Status,
    }
}

#[test]
fn a_field_added_with_a_default_is_fully_compatible() {
    let (b, f, full, kinds) =
        verdicts(&schema::<v1::User>(), &schema::<added_with_default::User>());
    assert!(b && f && full, "{kinds:?}");
}

#[test]
fn a_field_added_without_a_default_breaks_backward_only() {
    let old = schema::<v1::User>();
    let new = schema::<added_without_default::User>();
    let (b, f, full, kinds) = verdicts(&old, &new);
    assert!(!b && f && !full);
    assert_eq!(kinds, [IssueKind::MissingRequiredField]);
    let report = check_compatibility(&old, &new, Mode::Backward);
    assert_eq!(report.issues[0].path, "/email");
    let text = report.to_string();
    assert!(
        text.contains("INCOMPATIBLE (backward): 1 problem"),
        "{text}"
    );
    assert!(
        text.contains("/email: field `email` is required (no default) in the new schema"),
        "{text}"
    );
}

#[test]
fn a_required_field_removed_breaks_forward_only() {
    let (b, f, _, kinds) = verdicts(&schema::<v1::User>(), &schema::<removed::User>());
    assert!(b && !f);
    assert_eq!(kinds, [IssueKind::MissingRequiredField]);
}

#[test]
fn a_type_change_breaks_both_directions() {
    let old = schema::<v1::User>();
    let new = schema::<retyped::User>();
    let (b, f, _, kinds) = verdicts(&old, &new);
    assert!(!b && !f);
    assert_eq!(kinds, [IssueKind::TypeChanged, IssueKind::TypeChanged]);
    let r = check_compatibility(&old, &new, Mode::Backward);
    assert_eq!(r.issues[0].path, "/id");
    assert!(
        r.issues[0].detail.contains("may write integer"),
        "{}",
        r.issues[0].detail
    );
}

#[test]
fn an_enum_variant_added_breaks_forward_and_removed_breaks_backward() {
    let old = schema::<v1::Account>();
    let new = schema::<variant_added::Account>();
    let (b, f, _, kinds) = verdicts(&old, &new);
    assert!(b && !f, "old readers cannot read `Closed`");
    assert_eq!(kinds, [IssueKind::UnknownEnumValue]);
    // The same pair the other way round is a removal.
    let (b, f, _, _) = verdicts(&new, &old);
    assert!(!b && f);
}

mod pay_v1 {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Payment {
        Card { last4: String },
        Cash,
    }
}

mod pay_v2 {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Payment {
        Card { last4: String, brand: String },
        Cash,
        Invoice(u32),
    }
}

#[test]
fn data_enums_are_compared_variant_by_variant() {
    let old = schema::<pay_v1::Payment>();
    let new = schema::<pay_v2::Payment>();
    let back = check_compatibility(&old, &new, Mode::Backward);
    // New readers require `brand` inside `Card`, which old writers never wrote.
    assert_eq!(back.issues.len(), 1, "{back}");
    assert_eq!(back.issues[0].kind, IssueKind::MissingRequiredField);
    assert!(back.issues[0].path.ends_with("/brand"), "{back}");
    let fwd = check_compatibility(&old, &new, Mode::Forward);
    assert_eq!(fwd.issues.len(), 1, "{fwd}");
    assert_eq!(fwd.issues[0].kind, IssueKind::UnknownEnumValue);
    assert!(fwd.issues[0].detail.contains("Invoice"), "{fwd}");
}

#[test]
fn identical_and_widening_changes_are_compatible() {
    let s = schema::<v1::User>();
    assert!(check_compatibility(&s, &s, Mode::Full).is_compatible());
    let int = serde_json::json!({"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]});
    let num = serde_json::json!({"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]});
    assert!(check_compatibility(&int, &num, Mode::Backward).is_compatible());
    assert!(!check_compatibility(&int, &num, Mode::Forward).is_compatible());
    assert_eq!("FULL".parse::<Mode>().unwrap(), Mode::Full);
    assert!("sideways".parse::<Mode>().is_err());
}

/// Map values (`additionalProperties` schemas) are compared like any other type: widened
/// `integer` → `number` values break forward only; a map written into a closed object breaks;
/// a struct's unlisted field read by a map reader must fit the map's value schema.
#[test]
fn map_values_are_compared() {
    use std::collections::BTreeMap;
    let ints = schema::<BTreeMap<String, i64>>();
    let floats = schema::<BTreeMap<String, f64>>();
    assert!(
        verdicts(&ints, &floats).0,
        "widening must not break backward"
    );
    assert!(!verdicts(&ints, &floats).1, "widening must break forward");
    assert!(check_compatibility(&ints, &ints, Mode::Full).is_compatible());

    let closed =
        serde_json::json!({"type": "object", "properties": {}, "additionalProperties": false});
    let back = check_compatibility(&ints, &closed, Mode::Backward);
    assert_eq!(
        back.issues.iter().map(|i| i.kind).collect::<Vec<_>>(),
        [IssueKind::ForbiddenField],
        "{back}"
    );

    let strukt = serde_json::json!({"type": "object", "properties": {"n": {"type": "string"}}, "required": ["n"]});
    let back = check_compatibility(&strukt, &ints, Mode::Backward);
    assert_eq!(back.issues.len(), 1, "{back}");
    assert_eq!(back.issues[0].path, "/n");
    assert_eq!(back.issues[0].kind, IssueKind::TypeChanged);
}

/// Tuples are compared element by element and by length: a longer tuple breaks both ways
/// (serde reads a tuple of exactly its length); draft-07 `items` arrays are tuples too.
#[test]
fn tuples_are_compared_element_by_element_and_by_length() {
    let pair = schema::<(u32, String)>();
    let triple = schema::<(u32, String, bool)>();
    assert!(check_compatibility(&pair, &pair, Mode::Full).is_compatible());
    let back = check_compatibility(&pair, &triple, Mode::Backward);
    assert_eq!(
        back.issues.iter().map(|i| i.kind).collect::<Vec<_>>(),
        [IssueKind::MissingRequiredField],
        "{back}"
    );
    let fwd = check_compatibility(&pair, &triple, Mode::Forward);
    assert_eq!(
        fwd.issues.iter().map(|i| i.kind).collect::<Vec<_>>(),
        [IssueKind::ForbiddenField],
        "{fwd}"
    );

    let old =
        serde_json::json!({"type": "array", "items": [{"type": "integer"}, {"type": "string"}]});
    let new =
        serde_json::json!({"type": "array", "items": [{"type": "integer"}, {"type": "integer"}]});
    let full = check_compatibility(&old, &new, Mode::Full);
    assert_eq!(full.issues.len(), 2, "{full}");
    assert!(
        full.issues
            .iter()
            .all(|i| i.path == "/1" && i.kind == IssueKind::TypeChanged)
    );
}
