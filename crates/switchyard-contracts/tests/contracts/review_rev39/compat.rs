//! Compatibility verdicts on changes a Rust developer makes: integer widths, fixed arrays,
//! `char`, flattened enums, newtype variants of internally tagged enums, `Option`s of
//! one-field structs, serde renames, tags, defaults. Each verdict is checked against what
//! serde itself does with the data (the ground truth), not only against the table in
//! docs/contracts.md.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use switchyard_contracts::{IssueKind, JsonSchema, Mode};

use super::verdict;

/// What serde says when a reader of `R` reads `data`.
fn reads<R: DeserializeOwned>(data: Value) -> Result<(), String> {
    serde_json::from_value::<R>(data)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

mod narrow {
    use super::*;
    pub mod old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Reading {
            pub sensor: u32,
            pub delta: i64,
            pub code: String,
            pub mac: Vec<u8>,
            pub key: [u8; 4],
        }
    }
    pub mod new_u8 {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Reading {
            pub sensor: u8,
            pub delta: i64,
            pub code: String,
            pub mac: Vec<u8>,
            pub key: [u8; 4],
        }
    }
    pub mod new_unsigned {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Reading {
            pub sensor: u32,
            pub delta: u64,
            pub code: String,
            pub mac: Vec<u8>,
            pub key: [u8; 4],
        }
    }
    pub mod new_char {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Reading {
            pub sensor: u32,
            pub delta: i64,
            pub code: char,
            pub mac: Vec<u8>,
            pub key: [u8; 4],
        }
    }
    pub mod new_arrays {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Reading {
            pub sensor: u32,
            pub delta: i64,
            pub code: String,
            pub mac: [u8; 6],
            pub key: [u8; 8],
        }
    }
}

fn old_reading() -> Value {
    json!({"sensor": 300, "delta": -5, "code": "AB", "mac": [1, 2, 3], "key": [1, 2, 3, 4]})
}

/// u32 → u8: a reader on the new schema cannot read 300, which the old schema allows (and
/// old writers write). schemars says so (`maximum: 255`); the checker does not look.
#[test]
fn an_integer_narrowed_from_u32_to_u8_breaks_backward() {
    let serde = reads::<narrow::new_u8::Reading>(old_reading());
    assert!(serde.is_err(), "serde reads 300 into a u8?");
    let v = verdict::<narrow::old::Reading, narrow::new_u8::Reading>(Mode::Backward);
    assert!(
        !v.is_compatible() && v.issues.iter().any(|i| i.path == "/sensor"),
        "u32 -> u8 judged backward compatible, but a new reader fails on old data ({}); verdict: {v}",
        serde.unwrap_err()
    );
}

/// i64 → u64: old writers write negative numbers the new reader refuses (`minimum: 0`).
#[test]
fn a_signed_integer_made_unsigned_breaks_backward() {
    let serde = reads::<narrow::new_unsigned::Reading>(old_reading());
    assert!(serde.is_err(), "serde reads -5 into a u64?");
    let v = verdict::<narrow::old::Reading, narrow::new_unsigned::Reading>(Mode::Backward);
    assert!(
        !v.is_compatible() && v.issues.iter().any(|i| i.path == "/delta"),
        "i64 -> u64 judged backward compatible, but a new reader fails on old data ({}); verdict: {v}",
        serde.unwrap_err()
    );
}

/// String → char: a new reader refuses any string that is not one character
/// (`minLength` / `maxLength` 1).
#[test]
fn a_string_narrowed_to_char_breaks_backward() {
    let serde = reads::<narrow::new_char::Reading>(old_reading());
    assert!(serde.is_err(), "serde reads \"AB\" into a char?");
    let v = verdict::<narrow::old::Reading, narrow::new_char::Reading>(Mode::Backward);
    assert!(
        !v.is_compatible() && v.issues.iter().any(|i| i.path == "/code"),
        "String -> char judged backward compatible, but a new reader fails on old data ({}); verdict: {v}",
        serde.unwrap_err()
    );
}

/// `Vec<u8>` → `[u8; 6]` and `[u8; 4]` → `[u8; 8]`: serde reads a fixed array of exactly its
/// length (`minItems` = `maxItems`), as it does a tuple, which the checker compares by
/// length (docs: "a tuple of another length breaks both directions"); arrays it does not.
#[test]
fn a_fixed_size_array_of_another_length_breaks_both_directions() {
    let back = reads::<narrow::new_arrays::Reading>(old_reading());
    let fwd = reads::<narrow::old::Reading>(
        json!({"sensor": 1, "delta": 1, "code": "A", "mac": [1, 2, 3, 4, 5, 6], "key": [0, 0, 0, 0, 0, 0, 0, 0]}),
    );
    assert!(back.is_err() && fwd.is_err(), "serde: {back:?} {fwd:?}");
    let b = verdict::<narrow::old::Reading, narrow::new_arrays::Reading>(Mode::Backward);
    let f = verdict::<narrow::old::Reading, narrow::new_arrays::Reading>(Mode::Forward);
    assert!(
        b.issues.iter().any(|i| i.path == "/key") && f.issues.iter().any(|i| i.path == "/key"),
        "[u8; 4] -> [u8; 8] must break both directions (serde: new reads old: {}; old reads new: {}); verdicts: {b}{f}",
        back.unwrap_err(),
        fwd.unwrap_err()
    );
    assert!(
        b.issues.iter().any(|i| i.path == "/mac"),
        "Vec<u8> -> [u8; 6] must break backward; verdict: {b}"
    );
}

mod flat {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Method {
        Card { number: String },
        Cash { amount: u64 },
    }
    pub mod old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Payment {
            pub id: u64,
            #[serde(flatten)]
            pub method: Method,
        }
    }
    pub mod new {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Payment {
            pub id: String,
            pub merchant: String,
            #[serde(flatten)]
            pub method: Method,
        }
    }
}

/// A struct with a flattened enum: schemars writes its fields beside a `oneOf` of the
/// variants. The fields are the struct's: `id` changing type and a new required `merchant`
/// break as they would without the enum.
#[test]
fn the_fields_beside_a_flattened_enum_are_compared() {
    let old = json!({"id": 7, "Card": {"number": "4242"}});
    let serde = reads::<flat::new::Payment>(old);
    assert!(serde.is_err(), "serde reads id 7 as a String?");
    let v = verdict::<flat::old::Payment, flat::new::Payment>(Mode::Backward);
    let paths: Vec<&str> = v.issues.iter().map(|i| i.path.as_str()).collect();
    assert!(
        paths.contains(&"/id") && paths.contains(&"/merchant"),
        "u64 -> String and a new required field next to a flattened enum: expected issues at /id and /merchant (serde: {}); got {paths:?}: {v}",
        serde.unwrap_err()
    );
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Money {
    cents: u64,
}

mod tagged {
    use super::*;
    pub mod old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum Charge {
            Fee(Money),
            Tax(Money),
        }
    }
    pub mod new {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum Charge {
            Fee(Money),
            Tax(Money),
            Tip(Money),
        }
    }
}

/// A newtype variant of an internally tagged enum: schemars writes
/// `{"$ref": "#/$defs/Money", "properties": {"type": {"const": "tip"}}}`. A variant added is
/// a value an old reader does not know (forward breaks), as for the struct variants.
#[test]
fn a_newtype_variant_added_to_an_internally_tagged_enum_breaks_forward() {
    let serde = reads::<tagged::old::Charge>(json!({"type": "tip", "cents": 100}));
    assert!(serde.is_err(), "an old reader reads the variant `tip`?");
    let v = verdict::<tagged::old::Charge, tagged::new::Charge>(Mode::Forward);
    assert!(
        v.issues
            .iter()
            .any(|i| i.kind == IssueKind::UnknownEnumValue && i.detail.contains("tip")),
        "the variant `tip` added: an old reader fails ({}), yet the verdict is: {v}",
        serde.unwrap_err()
    );
    assert!(
        verdict::<tagged::old::Charge, tagged::new::Charge>(Mode::Backward).is_compatible(),
        "a variant added reads backward"
    );
}

mod one_field {
    use super::*;
    pub mod old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Price {
            pub cents: u64,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Item {
            pub sku: String,
            pub price: Option<Price>,
        }
    }
    pub mod new {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Price {
            pub cents: u64,
            pub note: Option<String>,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Item {
            pub sku: String,
            pub price: Option<Price>,
        }
    }
}

/// An `Option` field's struct gains an optional field: compatible both ways (the table's
/// first row). When the struct had ONE required field, its `anyOf` alternative looks like an
/// externally tagged variant to the checker, and the verdict breaks.
#[test]
fn an_optional_field_added_to_a_one_field_struct_behind_an_option_is_compatible() {
    assert!(reads::<one_field::new::Item>(json!({"sku": "a", "price": {"cents": 5}})).is_ok());
    assert!(
        reads::<one_field::old::Item>(json!({"sku": "a", "price": {"cents": 5, "note": "x"}}))
            .is_ok()
    );
    let v = verdict::<one_field::old::Item, one_field::new::Item>(Mode::Full);
    assert!(
        v.is_compatible(),
        "Option<Price {{ cents }}> -> Option<Price {{ cents, note: Option }}> reads both ways with serde, yet: {v}"
    );
}

/// The same change in a struct with two fields is compatible (the control for the test
/// above).
#[test]
fn an_optional_field_added_to_a_struct_behind_an_option_is_compatible() {
    mod o {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Price {
            pub cents: u64,
            pub currency: String,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Item {
            pub price: Option<Price>,
        }
    }
    mod n {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Price {
            pub cents: u64,
            pub currency: String,
            pub note: Option<String>,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Item {
            pub price: Option<Price>,
        }
    }
    let v = verdict::<o::Item, n::Item>(Mode::Full);
    assert!(v.is_compatible(), "{v}");
}

mod renames {
    use super::*;
    pub mod old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct User {
            pub name: String,
            pub tier: Tier,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Tier {
            Free,
            Pro,
        }
    }
    /// The Rust field renamed, the wire name kept with `#[serde(rename)]`.
    pub mod kept {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct User {
            #[serde(rename = "name")]
            pub full_name: String,
            pub tier: Tier,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Tier {
            Free,
            Pro,
        }
    }
    /// The wire names changed: the field, and the enum's values with `rename_all`.
    pub mod changed {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct User {
            pub full_name: String,
            pub tier: Tier,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum Tier {
            Free,
            Pro,
        }
    }
}

#[test]
fn a_field_renamed_in_rust_but_kept_on_the_wire_is_fully_compatible() {
    let v = verdict::<renames::old::User, renames::kept::User>(Mode::Full);
    assert!(v.is_compatible(), "{v}");
}

#[test]
fn wire_renames_of_fields_and_enum_values_break_both_directions() {
    let data = json!({"name": "Ada", "tier": "Pro"});
    assert!(reads::<renames::changed::User>(data).is_err());
    let b = verdict::<renames::old::User, renames::changed::User>(Mode::Backward);
    let f = verdict::<renames::old::User, renames::changed::User>(Mode::Forward);
    let text = format!("{b}{f}");
    for (verdict, path, kind) in [
        (&b, "/fullName", IssueKind::MissingRequiredField),
        (&f, "/name", IssueKind::MissingRequiredField),
    ] {
        assert!(
            verdict
                .issues
                .iter()
                .any(|i| i.path == path && i.kind == kind),
            "{path}: {text}"
        );
    }
    // `tier` values Free/Pro -> free/pro: every old value unknown to the new reader, and
    // the reverse.
    for v in [&b, &f] {
        assert!(
            v.issues
                .iter()
                .filter(|i| i.kind == IssueKind::UnknownEnumValue)
                .count()
                >= 2,
            "{text}"
        );
    }
}

mod internal {
    use super::*;
    pub mod old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum Event {
            Created { id: u64 },
            Deleted,
        }
    }
    pub mod added {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum Event {
            Created { id: u64 },
            Deleted,
            Renamed { id: u64, to: String },
        }
    }
    pub mod retagged {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "kind")]
        pub enum Event {
            Created { id: u64 },
            Deleted,
        }
    }
    pub mod adjacent_old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "t", content = "c")]
        pub enum Event {
            Created(u64),
        }
    }
    pub mod adjacent_new {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "t", content = "c")]
        pub enum Event {
            Created(u64),
            Deleted,
        }
    }
}

#[test]
fn a_struct_variant_added_to_an_internally_tagged_enum_breaks_forward_only() {
    let b = verdict::<internal::old::Event, internal::added::Event>(Mode::Backward);
    let f = verdict::<internal::old::Event, internal::added::Event>(Mode::Forward);
    assert!(b.is_compatible(), "{b}");
    assert!(
        f.issues
            .iter()
            .any(|i| i.kind == IssueKind::UnknownEnumValue && i.detail.contains("Renamed")),
        "{f}"
    );
}

#[test]
fn a_unit_variant_added_to_an_adjacently_tagged_enum_breaks_forward_only() {
    assert!(reads::<internal::adjacent_old::Event>(json!({"t": "Deleted"})).is_err());
    let b = verdict::<internal::adjacent_old::Event, internal::adjacent_new::Event>(Mode::Backward);
    let f = verdict::<internal::adjacent_old::Event, internal::adjacent_new::Event>(Mode::Forward);
    assert!(b.is_compatible(), "{b}");
    assert!(
        f.issues
            .iter()
            .any(|i| i.kind == IssueKind::UnknownEnumValue && i.detail.contains("Deleted")),
        "{f}"
    );
}

#[test]
fn the_tag_of_an_internally_tagged_enum_renamed_breaks_both_directions() {
    assert!(reads::<internal::retagged::Event>(json!({"type": "Deleted"})).is_err());
    assert!(reads::<internal::old::Event>(json!({"kind": "Deleted"})).is_err());
    let v = verdict::<internal::old::Event, internal::retagged::Event>(Mode::Full);
    let breaks = |d: Mode| v.issues.iter().any(|i| i.direction == d);
    assert!(
        breaks(Mode::Backward) && breaks(Mode::Forward),
        "both directions break: {v}"
    );
}

mod defaults {
    use super::*;
    pub mod old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Settings {
            pub retries: Option<u32>,
        }
    }
    /// `Option<u32>` made a plain `u32` with `#[serde(default)]`.
    pub mod new {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Settings {
            #[serde(default)]
            pub retries: u32,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub tags: Vec<String>,
        }
    }
}

/// `Option<u32>` → `#[serde(default)] u32`: absent reads (the default), but the `null` old
/// writers write for `None` does not: backward breaks at `/retries`, forward does not; the
/// field added with a default and `skip_serializing_if` is no issue either way.
#[test]
fn an_option_made_a_defaulted_plain_field_breaks_backward_on_null_only() {
    assert!(reads::<defaults::new::Settings>(json!({})).is_ok());
    assert!(reads::<defaults::new::Settings>(json!({"retries": null})).is_err());
    assert!(reads::<defaults::old::Settings>(json!({"retries": 3, "tags": ["a"]})).is_ok());
    let b = verdict::<defaults::old::Settings, defaults::new::Settings>(Mode::Backward);
    let f = verdict::<defaults::old::Settings, defaults::new::Settings>(Mode::Forward);
    assert!(
        b.issues.len() == 1
            && b.issues[0].path == "/retries"
            && b.issues[0].kind == IssueKind::TypeChanged,
        "{b}"
    );
    assert!(f.is_compatible(), "{f}");
}

mod optional_enum {
    use super::*;
    pub mod old {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Tier {
            Free,
            Pro,
            Team,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Account {
            pub tier: Option<Tier>,
            pub history: Vec<Option<Tier>>,
        }
    }
    pub mod new {
        use super::*;
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub enum Tier {
            Free,
            Pro,
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        pub struct Account {
            pub tier: Option<Tier>,
            pub history: Vec<Option<Tier>>,
        }
    }
}

/// An enum value removed behind an `Option` (and in a list of them): old data may hold
/// `"Team"`, which the new reader refuses; the old reader reads everything new writes.
#[test]
fn an_enum_value_removed_behind_an_option_breaks_backward_only() {
    let data = json!({"tier": "Team", "history": [null, "Team"]});
    assert!(reads::<optional_enum::new::Account>(data).is_err());
    let b = verdict::<optional_enum::old::Account, optional_enum::new::Account>(Mode::Backward);
    let f = verdict::<optional_enum::old::Account, optional_enum::new::Account>(Mode::Forward);
    for path in ["/tier", "/history/*"] {
        assert!(
            b.issues.iter().any(|i| i.path == path
                && i.kind == IssueKind::UnknownEnumValue
                && i.detail.contains("Team")),
            "{path}: {b}"
        );
    }
    assert!(f.is_compatible(), "{f}");
}
