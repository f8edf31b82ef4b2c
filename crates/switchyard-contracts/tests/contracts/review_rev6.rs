//! Review rev6: outside-in attacks on compatibility verdicts, boundary validation, the
//! AsyncAPI export and payload encryption, from the public API only.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::{Envelope, Message, Topic};
use switchyard_contracts::{
    Contract, Encryption, EncryptionError, JsonSchema, KEY_HEADER, Keyring, Mode, Registry,
    Validator, Verdict, asyncapi, check_compatibility, schemars,
};

fn schema<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// (backward, forward) compatibility of `old` → `new`.
fn bf(old: &Value, new: &Value) -> (bool, bool) {
    (
        check_compatibility(old, new, Mode::Backward).is_compatible(),
        check_compatibility(old, new, Mode::Forward).is_compatible(),
    )
}

mod v1 {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Opt {
        pub id: u64,
        pub note: Option<String>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Scores {
        pub by_name: std::collections::BTreeMap<String, i64>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Items {
        pub items: Vec<i64>,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Price {
        pub amount: f64,
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Pair {
        pub pair: (u32, String),
    }
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Open {
        pub id: u64,
        pub legacy: String,
    }
}

mod v2 {
    use super::*;
    /// `note` made required.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Opt {
        pub id: u64,
        pub note: String,
    }
    /// Map values changed from integers to strings.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Scores {
        pub by_name: std::collections::BTreeMap<String, String>,
    }
    /// Array items changed from integers to strings.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Items {
        pub items: Vec<String>,
    }
    /// Narrowed from number to integer.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Price {
        pub amount: i64,
    }
    /// A tuple's second element changed type.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Pair {
        pub pair: (u32, u32),
    }
    /// `legacy` dropped and the object closed: old data (which has `legacy`) is refused.
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Open {
        pub id: u64,
    }
}

/// An `Option` made required: old data without it (or `null`) no longer reads, so backward
/// breaks; new data always has it, which the old reader accepts.
#[test]
fn an_optional_field_made_required_breaks_backward_only() {
    assert_eq!(
        bf(&schema::<v1::Opt>(), &schema::<v2::Opt>()),
        (false, true)
    );
}

/// A required field made optional: the old reader gets `null`/nothing from new data, so
/// forward breaks; backward is fine.
#[test]
fn a_required_field_made_optional_breaks_forward_only() {
    assert_eq!(
        bf(&schema::<v2::Opt>(), &schema::<v1::Opt>()),
        (true, false)
    );
}

/// Was a defect (fixed): `BTreeMap<String, i64>` → `BTreeMap<String, String>` breaks both
/// directions (serde cannot read either side's data with the other's type: the docs' "type
/// changed breaks both"); the map's value schema (`additionalProperties`) is now compared.
#[test]
fn a_map_value_type_change_breaks_both_directions() {
    assert_eq!(
        bf(&schema::<v1::Scores>(), &schema::<v2::Scores>()),
        (false, false)
    );
}

#[test]
fn an_array_item_type_change_breaks_both_directions() {
    assert_eq!(
        bf(&schema::<v1::Items>(), &schema::<v2::Items>()),
        (false, false)
    );
}

/// `number` narrowed to `integer`: old data may hold 1.5 (backward breaks); the old reader
/// reads any integer (forward fine).
#[test]
fn number_narrowed_to_integer_breaks_backward_only() {
    assert_eq!(
        bf(&schema::<v1::Price>(), &schema::<v2::Price>()),
        (false, true)
    );
}

/// Was a defect (fixed): a tuple element's type change (`(u32, String)` → `(u32, u32)`)
/// breaks both directions; tuples (`prefixItems`) are now compared element by element.
#[test]
fn a_tuple_element_type_change_breaks_both_directions() {
    assert_eq!(
        bf(&schema::<v1::Pair>(), &schema::<v2::Pair>()),
        (false, false)
    );
}

/// A field dropped while the new reader's object is closed (`deny_unknown_fields`): old data
/// carries the dropped field, which the new reader refuses, so backward breaks.
#[test]
fn a_field_dropped_into_a_closed_object_breaks_backward() {
    let (backward, _) = bf(&schema::<v1::Open>(), &schema::<v2::Open>());
    assert!(!backward);
}

/// A recursive type (a tree) is compared without overflowing the stack, and identical
/// versions are compatible.
#[test]
fn recursive_schemas_are_compared_without_looping() {
    #[derive(Serialize, Deserialize, JsonSchema)]
    struct Node {
        name: String,
        children: Vec<Node>,
    }
    let s = schema::<Node>();
    let result = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || bf(&s, &s))
        .unwrap()
        .join();
    assert_eq!(
        result.ok(),
        Some((true, true)),
        "overflowed or incompatible"
    );
}

/// Schemas that are not what schemars writes (booleans, a number, an array, dangling
/// `$ref`s) are reported, never a panic.
#[test]
fn odd_schemas_never_panic() {
    let odd = [
        json!(true),
        json!(false),
        json!(42),
        json!([]),
        json!({"$ref": "#/$defs/Nowhere"}),
        json!({"type": ["string", "null"]}),
        json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}, "required": ["a"]}),
    ];
    for old in &odd {
        for new in &odd {
            for mode in [Mode::Backward, Mode::Forward, Mode::Full] {
                let r = std::panic::catch_unwind(|| check_compatibility(old, new, mode));
                assert!(r.is_ok(), "panicked on {old} -> {new} ({mode:?})");
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Reading {
    celsius: f64,
}
impl Message for Reading {
    const TOPIC: &'static str = "sensors.reading";
}
impl Contract for Reading {}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Anything {
    note: Option<String>,
}
impl Message for Anything {
    const TOPIC: &'static str = "misc.anything";
}
impl Contract for Anything {}

fn validator() -> Validator {
    let mut registry = Registry::new();
    registry.register::<Reading>().unwrap();
    registry.register::<Anything>().unwrap();
    Validator::new(&registry).unwrap()
}

fn foreign(topic: &str, payload: &str) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), payload.to_owned())
}

/// The control: an invalid foreign payload on an enforced topic is refused.
#[test]
fn an_invalid_foreign_payload_is_refused() {
    let v = validator().check(&foreign("sensors.reading", r#"{"celsius": "hot"}"#));
    assert!(!v.deliver(), "{v:?}");
}

/// Was a defect (fixed). docs/contracts.md: `Unchecked` only "when validation is off for
/// the topic, no type is registered on it, or the message is an older version of its type";
/// enforce means "dead-letter, never deliver". A foreign publisher that sets a type name
/// nobody registered (`Sy-Type-Name: Whatever` on NATS) on a topic that has a registered type
/// skipped validation entirely; the payload is now checked against the topic's types.
#[test]
fn an_unknown_type_name_does_not_bypass_validation() {
    let mut env = foreign("sensors.reading", r#"{"celsius": "hot"}"#);
    env.type_name = Some("Whatever".into());
    let v = validator().check(&env);
    assert!(!v.deliver(), "an invalid payload would be delivered: {v:?}");
    let Verdict::Invalid {
        type_name, issues, ..
    } = &v
    else {
        panic!("expected Invalid: {v:?}");
    };
    assert_eq!(type_name, "Reading");
    assert!(
        issues[0].reason.contains("`Whatever` is not registered"),
        "{issues:?}"
    );
    assert!(issues.iter().any(|i| i.path == "/celsius"), "{issues:?}");

    // A valid payload under an unknown name is delivered: it was checked, and it matches.
    env.payload = r#"{"celsius": 21.5}"#.into();
    assert_eq!(
        validator().check(&env),
        Verdict::Valid {
            type_name: "Reading".into()
        }
    );
}

/// Was a defect (fixed). Same bypass with a registered type of another topic: a message on
/// `sensors.reading` that names `Anything` (whose schema accepts `{}`) was not checked
/// against `Reading`, the only type registered on its topic; it is now, and never against
/// `Anything`'s schema (which would accept it).
#[test]
fn a_type_name_of_another_topic_does_not_bypass_validation() {
    let mut env = foreign("sensors.reading", r#"{"celsius": "hot"}"#);
    env.type_name = Some("Anything".into());
    let v = validator().check(&env);
    assert!(!v.deliver(), "an invalid payload would be delivered: {v:?}");
    let Verdict::Invalid {
        type_name, issues, ..
    } = &v
    else {
        panic!("expected Invalid: {v:?}");
    };
    assert_eq!(type_name, "Reading");
    assert!(
        issues[0]
            .reason
            .contains("`Anything` is not registered on topic `sensors.reading`"),
        "{issues:?}"
    );
    // `{}` matches `Anything` but not `Reading`: the other topic's schema is not used.
    env.payload = "{}".into();
    assert!(!validator().check(&env).deliver());
}

/// A huge or deeply nested payload is one typed verdict, never a panic or a stack overflow.
#[test]
fn a_deeply_nested_payload_is_a_verdict_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let v = validator().check(&foreign("sensors.reading", &deep));
    assert!(!v.deliver(), "{v:?}");
    let Verdict::Invalid { issues, .. } = v else {
        panic!("expected Invalid");
    };
    assert!(!issues.is_empty());
}

/// The export of an empty registry and of a registry whose names need rewriting are valid
/// AsyncAPI 3.0.0 documents (against the official schema).
#[test]
fn edge_case_exports_validate_against_the_official_schema() {
    let official: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/asyncapi-3.0.0.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&official).unwrap();
    let info = asyncapi::Info {
        title: "t".into(),
        version: "0".into(),
        server: None,
    };
    let empty = asyncapi::export(&Registry::new(), &info);
    let errors: Vec<String> = validator
        .iter_errors(&empty)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "empty registry: {errors:?}\n{empty:#}");

    let mut reg = Registry::new();
    reg.register::<Reading>()
        .unwrap()
        .declare_component("weird name/with:chars", ["sensors.#"], ["misc.*"])
        .unwrap()
        .declare_component("", Vec::<String>::new(), ["sensors.reading"])
        .ok();
    let doc = asyncapi::export(&reg, &info);
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc:#}");
}

fn encryption() -> Encryption {
    Encryption::new(Keyring::new().with_key("k1", &[1; 32]).unwrap())
        .unwrap()
        .topic("payments.#")
        .unwrap()
}

/// Bad input to `open` is a typed error: a sealed payload that is too short, or empty.
#[test]
fn short_sealed_payloads_are_typed_errors() {
    let enc = encryption();
    for len in [0usize, 1, 39] {
        let mut env = Envelope::new(Topic::new("payments.card").unwrap(), vec![7u8; len]);
        env.headers_mut().insert(KEY_HEADER, "k1");
        let r = enc.open(&mut env);
        assert!(
            matches!(r, Err(EncryptionError::Truncated { len: l, min: 40 }) if l == len),
            "{len}: {r:?}"
        );
    }
}

/// Keys of the wrong size and bad ids are refused with their own errors.
#[test]
fn bad_keys_are_refused() {
    assert!(matches!(
        Keyring::new().with_key("k1", &[0; 31]),
        Err(EncryptionError::InvalidKey { .. })
    ));
    assert!(matches!(
        Keyring::new().with_base64_key("k1", "not base64!"),
        Err(EncryptionError::InvalidKey { .. })
    ));
    assert!(matches!(
        Keyring::new().with_key("k 1", &[0; 32]),
        Err(EncryptionError::InvalidKeyId(_))
    ));
    assert!(matches!(
        Encryption::new(Keyring::new()),
        Err(EncryptionError::NoKeys)
    ));
}

/// Was a defect (fixed). docs/contracts.md: on an encrypted topic "the embedded log's segment
/// files and NATS JetStream streams hold ciphertext". `seal` skipped any envelope that
/// carried an `encryption-key` header, whatever its payload: a publisher (or a gateway client,
/// whose headers are user input) that set that header on a `payments.#` event got its
/// plaintext written to the transport as it is. `seal` now refuses it (`NotSealed`): only a
/// payload that opens with the key it names is left as it is.
#[test]
fn a_spoofed_key_header_does_not_skip_encryption() {
    let enc = encryption();
    let mut env = Envelope::new(Topic::new("payments.card").unwrap(), "4111-1111-1111-1111");
    env.headers_mut().insert(KEY_HEADER, "k1");
    let r = enc.seal(&mut env);
    assert!(
        r.is_err() || env.payload.as_ref() != b"4111-1111-1111-1111",
        "sealed as {r:?}, payload still plaintext: {:?}",
        env.payload
    );
    assert!(
        matches!(&r, Err(EncryptionError::NotSealed { id, .. }) if id == "k1"),
        "{r:?}"
    );
}

/// Sealing then opening round-trips any payload size, including empty, and restores the
/// content type.
#[test]
fn seal_open_round_trips_every_size_and_restores_the_content_type() {
    let enc = encryption();
    for len in [0usize, 1, 23, 24, 40, 65_536] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut env = Envelope::new(Topic::new("payments.card").unwrap(), payload.clone());
        env.set_content_type("application/octet-stream");
        enc.seal(&mut env).unwrap();
        assert_ne!(env.payload.as_ref(), payload.as_slice());
        enc.open(&mut env).unwrap();
        assert_eq!(env.payload.as_ref(), payload.as_slice(), "{len}");
        assert_eq!(env.content_type(), "application/octet-stream");
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Priced {
    cents: u64,
}
impl Message for Priced {
    const TOPIC: &'static str = "shop.priced";
    const VERSION: u32 = 2;
}

struct Letters(tokio::sync::mpsc::UnboundedSender<switchyard::DeadLetter>);
impl switchyard::DeadLetterSink for Letters {
    fn put(&self, letter: switchyard::DeadLetter) {
        let _ = self.0.send(letter);
    }
}

fn v1_priced(payload: &str) -> Envelope {
    let mut env = Envelope::new(Topic::new("shop.priced").unwrap(), payload.to_owned());
    env.type_name = Some("Priced".into());
    env.type_version = 1;
    env
}

/// An upcaster step that panics, or one that returns a shape the handler cannot decode,
/// dead-letters that message with its original bytes (the handler never runs on it), and
/// the bus keeps handling the next messages; an upcaster given a payload that is not JSON
/// does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_or_wrong_upcaster_dead_letters_and_the_bus_goes_on() {
    let (dtx, mut letters) = tokio::sync::mpsc::unbounded_channel();
    let upcasters = switchyard_contracts::Upcasters::new().step_for::<Priced, _, _>(1, |v| match v
        .get("mode")
        .and_then(Value::as_str)
    {
        Some("panic") => panic!("upcaster exploded"),
        Some("wrong") => Ok::<_, String>(json!({"cents": "not a number"})),
        _ => Ok(json!({"cents": v["euros"].as_u64().unwrap_or(0) * 100})),
    });
    let bus = switchyard::Bus::builder()
        .upcaster(upcasters)
        .dead_letters(Letters(dtx))
        .max_attempts(1)
        .build()
        .unwrap();
    let (htx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .on("priced", move |p: Priced, _ctx| {
            let htx = htx.clone();
            async move { htx.send(p.cents).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    let bad = [
        r#"{"mode": "panic"}"#,
        r#"{"mode": "wrong"}"#,
        "not json at all",
    ];
    for payload in bad {
        bus.publish_envelope(v1_priced(payload)).await.unwrap();
        let letter = tokio::time::timeout(std::time::Duration::from_secs(10), letters.recv())
            .await
            .unwrap_or_else(|_| panic!("{payload:?} was not dead-lettered"))
            .unwrap();
        assert_eq!(letter.envelope.payload.as_ref(), payload.as_bytes());
        assert_eq!(letter.envelope.type_version, 1, "kept as it was written");
    }
    bus.publish_envelope(v1_priced(r#"{"euros": 3}"#))
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), handled.recv())
        .await
        .expect("the bus stopped handling after a bad upcast");
    assert_eq!(got, Some(300));
    assert!(
        handled.try_recv().is_err(),
        "a bad message reached the handler"
    );
    bus.publish(Priced { cents: 7 }).await.unwrap();
    assert_eq!(handled.recv().await, Some(7));
}
