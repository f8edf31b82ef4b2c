//! The registered schema against what serde really writes: docs/contracts.md says messages
//! from switchyard's own typed publishers "match their schema by construction". Each type
//! below uses a serde attribute that changes the JSON (`rename_all`, `rename`, `flatten`,
//! internal / adjacent / untagged enums, `skip_serializing_if`, `default`, maps, tuples,
//! fixed arrays, integer extremes): every value serde writes must be `Valid` for the
//! validator the node and the bus's intake use, and hand-made near misses must not be.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::Message;
use switchyard_contracts::{Contract, JsonSchema, Registry, Validator, Verdict};

use super::envelope;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Address {
    street_name: String,
    #[serde(rename = "ZIP")]
    zip_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Audit {
    created_by: String,
    revision: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
enum Method {
    Card { last4: String },
    Transfer(String),
    Cash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Money {
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Item { sku: String, qty: u16 },
    Fee(Money),
    Discount,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "data")]
enum Note {
    Text(String),
    Pair(u8, bool),
    Empty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Ref {
    Id(u64),
    Name { name: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(super) struct Order {
    id: u64,
    delta: i64,
    ratio: f64,
    grade: char,
    key: [u8; 4],
    pair: (String, u8),
    ship_to: Address,
    #[serde(flatten)]
    audit: Audit,
    method: Method,
    lines: Vec<Line>,
    note: Note,
    owner: Ref,
    labels: BTreeMap<String, i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon: Option<String>,
    #[serde(default)]
    priority: u8,
}
impl Message for Order {
    const TOPIC: &'static str = "rev39.shapes.order";
    const VERSION: u32 = 2;
}
impl Contract for Order {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "UPPERCASE")]
pub(super) enum Patch {
    Set {
        path: String,
        value: Value,
    },
    Remove {
        path: String,
    },
    Move {
        #[serde(flatten)]
        span: Span,
    },
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(super) struct Span {
    from: String,
    to: String,
}
impl Message for Patch {
    const TOPIC: &'static str = "rev39.shapes.patch";
}
impl Contract for Patch {}

pub(super) fn orders() -> Vec<Order> {
    let base = Order {
        id: u64::MAX,
        delta: i64::MIN,
        ratio: -0.5,
        grade: 'é',
        key: [0, 1, 254, 255],
        pair: ("a".into(), 255),
        ship_to: Address {
            street_name: "Main".into(),
            zip_code: None,
        },
        audit: Audit {
            created_by: "ada".into(),
            revision: 3,
        },
        method: Method::Cash,
        lines: vec![],
        note: Note::Empty,
        owner: Ref::Id(1),
        labels: BTreeMap::new(),
        tags: vec![],
        coupon: None,
        priority: 0,
    };
    let mut full = base.clone();
    full.ship_to.zip_code = Some("0150".into());
    full.method = Method::Card {
        last4: "4242".into(),
    };
    full.lines = vec![
        Line::Item {
            sku: "s".into(),
            qty: 2,
        },
        Line::Fee(Money { cents: 5 }),
        Line::Discount,
    ];
    full.note = Note::Pair(7, true);
    full.owner = Ref::Name { name: "n".into() };
    full.labels = BTreeMap::from([("x".into(), -1), ("".into(), i32::MAX)]);
    full.tags = vec!["t".into()];
    full.coupon = Some("C".into());
    full.priority = 9;
    let mut transfer = base.clone();
    transfer.method = Method::Transfer("IBAN".into());
    transfer.note = Note::Text("hi".into());
    vec![base, full, transfer]
}

fn validator() -> Validator {
    let mut registry = Registry::new();
    registry
        .register::<Order>()
        .unwrap()
        .register::<Patch>()
        .unwrap();
    Validator::new(&registry).unwrap()
}

fn check<M: Message>(v: &Validator, payload: &Value, typed: bool) -> Verdict {
    let name = typed.then(|| M::type_name());
    v.check(&envelope(M::TOPIC, payload, name))
}

#[test]
fn every_order_serde_writes_is_valid_against_its_registered_schema() {
    let v = validator();
    for order in orders() {
        let json = serde_json::to_value(&order).unwrap();
        // The flattened struct's fields are at the top, `None` options left out, the tags
        // as serde puts them.
        assert_eq!(json["created_by"], "ada", "{json}");
        for typed in [true, false] {
            let verdict = check::<Order>(&v, &json, typed);
            assert_eq!(
                verdict,
                Verdict::Valid {
                    type_name: "Order".into()
                },
                "serde wrote {json}, the validator says {:?}",
                verdict.describe()
            );
        }
        // And it decodes back: the schema describes what serde reads too.
        assert_eq!(serde_json::from_value::<Order>(json).unwrap(), order);
    }
}

#[test]
fn every_patch_serde_writes_is_valid_against_its_registered_schema() {
    let v = validator();
    for patch in [
        Patch::Set {
            path: "/a".into(),
            value: json!({"x": [1, null]}),
        },
        Patch::Remove { path: "/b".into() },
        Patch::Move {
            span: Span {
                from: "/c".into(),
                to: "/d".into(),
            },
        },
    ] {
        let json = serde_json::to_value(&patch).unwrap();
        let verdict = check::<Patch>(&v, &json, true);
        assert!(
            matches!(verdict, Verdict::Valid { .. }),
            "serde wrote {json}, the validator says {:?}",
            verdict.describe()
        );
    }
}

/// A change that spoils a valid payload.
type Spoil = Box<dyn Fn(&mut Value)>;

/// Near misses of what serde writes: each is refused by serde AND by the validator, at the
/// path named.
#[test]
fn near_misses_of_the_serde_form_are_invalid_where_serde_refuses_them() {
    let v = validator();
    let good = serde_json::to_value(&orders()[1]).unwrap();
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "the Rust field name instead of the camelCase one",
            Box::new(|o| {
                let a = o["ship_to"].as_object_mut().unwrap();
                let s = a.remove("streetName").unwrap();
                a.insert("street_name".into(), s);
            }),
        ),
        (
            "an internal tag nobody declared",
            Box::new(|o| o["lines"][2] = json!({"type": "coupon"})),
        ),
        (
            "the enum's Rust name as internal tag (rename_all is snake_case)",
            Box::new(|o| o["lines"][2] = json!({"type": "Discount"})),
        ),
        (
            "an adjacent tag's content of the wrong shape",
            Box::new(|o| o["note"] = json!({"kind": "Pair", "data": [7]})),
        ),
        (
            "u16 out of range",
            Box::new(|o| o["lines"][0]["qty"] = json!(70_000)),
        ),
        (
            "a char of two characters",
            Box::new(|o| o["grade"] = json!("ab")),
        ),
        (
            "a fixed array of 3",
            Box::new(|o| o["key"] = json!([1, 2, 3])),
        ),
        (
            "the flattened struct nested instead",
            Box::new(|o| {
                let m = o.as_object_mut().unwrap();
                let c = m.remove("created_by").unwrap();
                let r = m.remove("revision").unwrap();
                m.insert("audit".into(), json!({"created_by": c, "revision": r}));
            }),
        ),
        ("a negative u64", Box::new(|o| o["id"] = json!(-1))),
        (
            "a map value of the wrong type",
            Box::new(|o| o["labels"]["x"] = json!("one")),
        ),
        (
            "an untagged value matching no variant",
            Box::new(|o| o["owner"] = json!({"id": 1})),
        ),
    ];
    for (what, spoil) in cases {
        let mut bad = good.clone();
        spoil(&mut bad);
        assert!(
            serde_json::from_value::<Order>(bad.clone()).is_err(),
            "{what}: serde reads it"
        );
        let verdict = check::<Order>(&v, &bad, true);
        assert!(
            matches!(verdict, Verdict::Invalid { .. }),
            "{what}: serde refuses {bad}, the validator says {verdict:?}"
        );
    }
}

/// docs/contracts.md (Python): "an internally tagged variant's tag is a `Literal` field
/// defaulting to its value". For a newtype variant (`Line::Fee(Money)`, written
/// `{"type": "fee", "cents": 5}`) schemars puts the tag beside a `$ref` to the inner struct;
/// the generator follows the `$ref` and drops the tag, so `Line` is
/// `Union[LineItem, Money, LineDiscount]` and a Python `Money(cents=5)` encodes as
/// `{"cents": 5}`, which serde refuses (the validator too).
#[test]
fn python_keeps_the_tag_of_an_internally_tagged_newtype_variant() {
    let mut registry = Registry::new();
    registry.register::<Order>().unwrap();
    let py = switchyard_contracts::python::from_registry(&registry).unwrap();
    let serde_form = serde_json::to_value(Line::Fee(Money { cents: 5 })).unwrap();
    assert_eq!(serde_form, json!({"type": "fee", "cents": 5}));
    assert!(
        serde_json::from_value::<Line>(json!({"cents": 5})).is_err(),
        "serde reads the variant without its tag?"
    );
    let line = py
        .lines()
        .find(|l| l.starts_with("Line = "))
        .unwrap_or_default();
    assert!(
        py.contains(r#"Literal["fee"]"#),
        "no class of the Python module carries the tag `fee` of Line::Fee(Money), which serde writes as {serde_form}; the union is `{line}`"
    );
}
