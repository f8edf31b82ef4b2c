//! Compatibility verdicts on the real v1 → v2 change and on compatible ones; the AsyncAPI
//! export against what a validating bus accepts.

use switchyard::DeadLetterReason;
use switchyard_contracts::{Enforcement, Mode, Registry, Validator, asyncapi, check_compatibility};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Address {
    city: String,
    zip: Option<String>,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
enum Tier {
    Free,
    Pro,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
enum TierWithTeam {
    Free,
    Pro,
    Team,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Shipped {
    id: u64,
    to: Address,
    tier: Tier,
    lines: Vec<Address>,
}
impl Message for Shipped {
    const TOPIC: &'static str = "rev29.shipped";
    const VERSION: u32 = 3;
}
impl Contract for Shipped {}

#[test]
fn the_real_v1_to_v2_change_is_refused_backward_and_forward_naming_the_fields() {
    let (old, new) = (v1::Order::schema(), v2::Order::schema());
    let back = check_compatibility(&old, &new, Mode::Backward);
    assert!(!back.is_compatible());
    let text = back.to_string();
    assert!(text.starts_with("INCOMPATIBLE (backward)"), "{text}");
    assert!(
        text.contains("/amount_cents") && text.contains("/currency"),
        "{text}"
    );
    let fwd = check_compatibility(&old, &new, Mode::Forward);
    assert!(!fwd.is_compatible());
    assert!(fwd.to_string().contains("/amount"), "{fwd}");
    let full = check_compatibility(&old, &new, Mode::Full);
    assert!(!full.is_compatible());
    assert!(
        full.issues.len() >= back.issues.len() + fwd.issues.len(),
        "full = backward + forward: {full}"
    );
}

#[test]
fn an_optional_field_added_is_compatible_in_every_mode() {
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    struct Order {
        id: u64,
        amount: f64,
        note: Option<String>,
    }
    let (old, new) = (v1::Order::schema(), schemars::schema_for!(Order).to_value());
    for mode in [Mode::Backward, Mode::Forward, Mode::Full] {
        let v = check_compatibility(&old, &new, mode);
        assert!(v.is_compatible(), "{mode:?}: {v}");
    }
}

#[test]
fn an_enum_variant_added_is_backward_only_and_removing_it_forward_only() {
    let (old, new) = (
        schemars::schema_for!(Tier).to_value(),
        schemars::schema_for!(TierWithTeam).to_value(),
    );
    assert!(check_compatibility(&old, &new, Mode::Backward).is_compatible());
    let fwd = check_compatibility(&old, &new, Mode::Forward);
    assert!(!fwd.is_compatible());
    assert!(fwd.to_string().contains("Team"), "{fwd}");
    assert!(!check_compatibility(&old, &new, Mode::Full).is_compatible());
    // And the other way round.
    assert!(check_compatibility(&new, &old, Mode::Forward).is_compatible());
    assert!(!check_compatibility(&new, &old, Mode::Backward).is_compatible());
}

/// What the AsyncAPI document says is valid, a bus validating with the same registry accepts;
/// what it says is invalid, the bus rejects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_the_asyncapi_export_calls_valid_is_accepted_by_a_validating_bus() {
    let mut registry = Registry::new();
    registry
        .register::<Shipped>()
        .unwrap()
        .register::<v2::Order>()
        .unwrap();
    let doc = asyncapi::export(&registry, &asyncapi::Info::default());
    let msg = &doc["components"]["messages"]["Shipped"];
    assert_eq!(msg["headers"]["properties"]["type_version"]["const"], 3);
    assert_eq!(doc["channels"]["rev29.shipped"]["address"], "rev29.shipped");
    // Validate against the document's own payload schema (its `$ref`s resolve in the document).
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/components/messages/Shipped/payload",
        "components": doc["components"],
    });
    let doc_validator = jsonschema::validator_for(&root).unwrap();
    let valid = json!({"id": 7, "to": {"city": "Oslo", "zip": null},
                       "tier": "Pro", "lines": [{"city": "Bergen"}]});
    let invalid = json!({"id": 7, "to": {"city": "Oslo"}, "tier": "Gold", "lines": []});
    assert!(doc_validator.is_valid(&valid));
    assert!(!doc_validator.is_valid(&invalid));

    let dir = tempfile::tempdir().unwrap();
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .transport(LogTransport::open(LogConfig::new(dir.path())).unwrap())
        .dead_letters(Letters(ltx))
        .intake_check(
            Validator::new(&registry)
                .unwrap()
                .default_mode(Enforcement::Enforce)
                .intake_check(),
        )
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("ship", move |s: Shipped, _ctx| {
            let tx = tx.clone();
            async move { tx.send(s).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    for payload in [&invalid, &valid] {
        // As a foreign producer (Python, a gateway client) that read the document sends it.
        let mut env = Envelope::new(
            Topic::new("rev29.shipped").unwrap(),
            serde_json::to_vec(payload).unwrap(),
        );
        env.type_name = Some("Shipped".into());
        env.type_version = 3;
        bus.publish_envelope(env).await.unwrap();
    }
    let letter = next(&mut letters).await;
    assert_eq!(letter.reason, DeadLetterReason::Rejected, "{letter:?}");
    assert!(letter.error.contains("/tier"), "{}", letter.error);
    let got = next(&mut rx).await;
    assert_eq!(got.to.city, "Oslo");
    assert_eq!(got.tier, Tier::Pro);
    assert_eq!(got.lines[0].zip, None);
    bus.shutdown(WAIT).await.unwrap();
}
