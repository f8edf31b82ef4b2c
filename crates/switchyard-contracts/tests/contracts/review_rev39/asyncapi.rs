//! The AsyncAPI export: wildcard subscribers and declared patterns against what the bus
//! really delivers, command handlers, every registered type and topic present, and each
//! message's payload schema in the document (its `$ref`s resolved in the document) against
//! what serde writes for tagged, flattened and generic types.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::{Bus, Command, Envelope, Kind, Message, Topic, handler_fn};
use switchyard_contracts::{Contract, JsonSchema, Registry, asyncapi};

use super::shapes::{Order, Patch, orders};

/// The official AsyncAPI 3.0.0 JSON Schema (the committed fixture).
fn official() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(include_str!("../../fixtures/asyncapi-3.0.0.schema.json")).unwrap();
    jsonschema::draft7::new(&schema).unwrap()
}

fn assert_valid_asyncapi(doc: &Value) {
    let errors: Vec<String> = official().iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc:#}");
    let mut refs = Vec::new();
    collect_refs(doc, &mut refs);
    for r in refs {
        assert!(
            r.starts_with('#') && doc.pointer(&r[1..]).is_some(),
            "dangling {r}"
        );
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// (component, action, type name) of every operation, from the operation objects themselves
/// (not their keys).
fn operations(doc: &Value) -> BTreeSet<(String, String, String)> {
    doc["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|op| {
            let summary = op["summary"].as_str().unwrap();
            let action = op["action"].as_str().unwrap().to_owned();
            let msg_ref = op["messages"][0]["$ref"].as_str().unwrap();
            let msg = doc.pointer(&msg_ref[1..]).unwrap();
            let comp_ref = msg["$ref"].as_str().unwrap();
            let name = doc.pointer(&comp_ref[1..]).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_owned();
            let component = summary
                .strip_suffix(&format!(" {action}s {name}"))
                .unwrap_or_else(|| panic!("summary {summary:?}"))
                .to_owned();
            (component, action, name)
        })
        .collect()
}

macro_rules! on_topic {
    ($name:ident, $topic:literal) => {
        #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
        struct $name {
            id: u64,
        }
        impl Message for $name {
            const TOPIC: &'static str = $topic;
        }
        impl Contract for $name {}
    };
}
on_topic!(EuPlaced, "rev39.shop.eu.placed");
on_topic!(EuFrPlaced, "rev39.shop.eu.fr.placed");
on_topic!(Placed, "rev39.shop.placed");
on_topic!(Refunded, "rev39.shop.eu.refunded");

/// Subscriptions with `*` and `#` patterns, observed from a live bus: each is listed as a
/// consumer of exactly the registered types whose topics it really receives (ground truth:
/// a message published on each topic, waited for), no more, no fewer; declared component
/// patterns give the same sets; the document is valid AsyncAPI 3.0.0.
#[tokio::test]
async fn wildcard_subscribers_are_consumers_of_exactly_what_they_receive() {
    let bus = Bus::builder().build().unwrap();
    let got: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
    let patterns = [
        ("one-level", "rev39.shop.*.placed"),
        ("all", "rev39.shop.#"),
        ("eu", "rev39.shop.eu.*"),
    ];
    let mut subs = Vec::new();
    for (name, pattern) in patterns {
        let got = got.clone();
        subs.push(
            bus.subscribe(
                name,
                pattern,
                handler_fn(move |env: Envelope| {
                    let got = got.clone();
                    async move {
                        got.lock()
                            .unwrap()
                            .insert((name.to_owned(), env.topic.as_str().to_owned()));
                        Ok::<_, std::io::Error>(())
                    }
                }),
            )
            .start()
            .await
            .unwrap(),
        );
    }
    let mut registry = Registry::new();
    registry
        .register::<EuPlaced>()
        .unwrap()
        .register::<EuFrPlaced>()
        .unwrap()
        .register::<Placed>()
        .unwrap()
        .register::<Refunded>()
        .unwrap();
    let mut declared = registry.clone();
    registry.observe_bus(&bus).unwrap();
    for (name, pattern) in patterns {
        declared
            .declare_component(name, [pattern], Vec::<String>::new())
            .unwrap();
    }
    let topic_of: BTreeMap<String, String> = registry
        .types()
        .map(|t| (t.topic.clone(), t.name.clone()))
        .collect();
    for topic in topic_of.keys() {
        let env = Envelope::new(Topic::new(topic).unwrap(), "{\"id\": 1}");
        bus.publish_envelope_and_wait(env)
            .await
            .unwrap()
            .into_result()
            .unwrap();
    }
    let delivered: BTreeSet<(String, String, String)> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(sub, topic)| (sub.clone(), "receive".to_owned(), topic_of[topic].clone()))
        .collect();
    assert!(!delivered.is_empty());
    for (what, reg) in [("observed", &registry), ("declared", &declared)] {
        let doc = asyncapi::export(reg, &asyncapi::Info::default());
        assert_valid_asyncapi(&doc);
        assert_eq!(
            operations(&doc),
            delivered,
            "{what}: the receive operations of the document are not what the subscriptions receive"
        );
        // Every registered type is a message, on a channel whose address is its topic.
        for ty in reg.types() {
            let chan = doc["channels"]
                .as_object()
                .unwrap()
                .values()
                .find(|c| c["address"] == ty.topic.as_str())
                .unwrap_or_else(|| panic!("no channel for {}", ty.topic));
            let refs: Vec<&str> = chan["messages"]
                .as_object()
                .unwrap()
                .values()
                .map(|m| m["$ref"].as_str().unwrap())
                .collect();
            assert_eq!(refs.len(), 1, "{chan}");
            assert_eq!(
                doc.pointer(&refs[0][1..]).unwrap()["name"],
                ty.name.as_str()
            );
        }
    }
    drop(subs);
    bus.shutdown(super::WAIT).await.unwrap();
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Reserve {
    sku: String,
    qty: u32,
}
impl Message for Reserve {
    const TOPIC: &'static str = "rev39.stock.reserve";
    const KIND: Kind = Kind::Command;
    const VERSION: u32 = 3;
}
impl Command for Reserve {
    type Output = bool;
}
impl Contract for Reserve {}

/// A command handler on the bus is the command's consumer in the document (a `receive`
/// operation on the command's channel), the message says `command` and version 3, and the
/// document validates.
#[tokio::test]
async fn a_command_handler_is_the_receive_operation_of_its_command() {
    let bus = Bus::builder().build().unwrap();
    let sub = bus
        .handle(|r: Reserve, _| async move { Ok::<_, std::io::Error>(r.qty > 0) })
        .start()
        .await
        .unwrap();
    assert!(
        bus.send(Reserve {
            sku: "a".into(),
            qty: 1
        })
        .await
        .unwrap()
    );
    let mut registry = Registry::new();
    registry
        .register::<Reserve>()
        .unwrap()
        .produces::<Reserve>("checkout")
        .unwrap()
        .observe_bus(&bus)
        .unwrap();
    let doc = asyncapi::export(&registry, &asyncapi::Info::default());
    assert_valid_asyncapi(&doc);
    let msg = &doc["components"]["messages"]["Reserve"];
    assert_eq!(msg["x-switchyard-kind"], "command");
    assert_eq!(msg["headers"]["properties"]["type_version"]["const"], 3);
    let ops = operations(&doc);
    assert!(
        ops.contains(&("checkout".into(), "send".into(), "Reserve".into())),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|(_, action, name)| action == "receive" && name == "Reserve"),
        "the command's handler is not a receive operation: {ops:?}"
    );
    drop(sub);
    bus.shutdown(super::WAIT).await.unwrap();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Page<T> {
    items: Vec<T>,
    next: Option<String>,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Sku {
    code: String,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Tree {
    label: String,
    children: Vec<Tree>,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Listing {
    skus: Page<Sku>,
    counts: Page<u32>,
    trees: Page<Tree>,
}
impl Message for Listing {
    const TOPIC: &'static str = "rev39.catalog.listing";
}
impl Contract for Listing {}

/// The document's payload of `name`, as a schema whose `$ref`s resolve in the document.
fn payload_validator(doc: &Value, name: &str) -> jsonschema::Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/messages/{name}/payload"),
        "components": doc["components"],
    });
    jsonschema::validator_for(&root).unwrap()
}

/// Tagged, flattened, generic (three instantiations of one generic type in one message) and
/// recursive payloads: what serde writes is valid against the document's payload schema,
/// and a value of another instantiation (`Page<u32>` where `Page<Sku>` belongs) is not.
#[test]
fn the_documents_payloads_accept_what_serde_writes_for_tagged_flattened_and_generic_types() {
    let mut registry = Registry::new();
    registry
        .register::<Order>()
        .unwrap()
        .register::<Patch>()
        .unwrap()
        .register::<Listing>()
        .unwrap();
    let doc = asyncapi::export(&registry, &asyncapi::Info::default());
    assert_valid_asyncapi(&doc);
    let order = payload_validator(&doc, "Order");
    for o in orders() {
        let json = serde_json::to_value(&o).unwrap();
        let errors: Vec<String> = order.iter_errors(&json).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{json}: {errors:?}");
    }
    let patch = payload_validator(&doc, "Patch");
    let p = serde_json::to_value(Patch::Remove { path: "/x".into() }).unwrap();
    assert!(patch.is_valid(&p), "{p}");
    assert!(!patch.is_valid(&json!({"op": "remove", "path": "/x"})));

    let listing = Listing {
        skus: Page {
            items: vec![Sku { code: "a".into() }],
            next: None,
        },
        counts: Page {
            items: vec![1, 2],
            next: Some("n".into()),
        },
        trees: Page {
            items: vec![Tree {
                label: "root".into(),
                children: vec![Tree {
                    label: "leaf".into(),
                    children: vec![],
                }],
            }],
            next: None,
        },
    };
    let json = serde_json::to_value(&listing).unwrap();
    let v = payload_validator(&doc, "Listing");
    let errors: Vec<String> = v.iter_errors(&json).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{json}: {errors:?}\n{:#}",
        doc["components"]
    );
    let mut swapped = json.clone();
    swapped["skus"] = json["counts"].clone();
    assert!(
        !v.is_valid(&swapped),
        "Page<u32> accepted where Page<Sku> belongs: {:#}",
        doc["components"]
    );
    let mut bad_tree = json.clone();
    bad_tree["trees"]["items"][0]["children"][0]["children"] = json!([{"label": 1}]);
    assert!(!v.is_valid(&bad_tree), "a bad nested tree node accepted");
}

mod users {
    use super::*;
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Created {
        pub email: String,
    }
    impl Message for Created {
        const TOPIC: &'static str = "rev39.users.created";
    }
    impl Contract for Created {}
}
mod orders {
    use super::*;
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Created {
        pub total: u64,
    }
    impl Message for Created {
        const TOPIC: &'static str = "rev39.orders.created";
    }
    impl Contract for Created {}
}

/// Two message types of the same short name in two modules (`users::Created`,
/// `orders::Created`), each on its own topic, both registered without an error: the
/// document must have both topics and both schemas (or the second `register` must fail), and
/// the first type's producer must not become the second's.
#[test]
fn two_types_of_the_same_short_name_on_two_topics_are_both_exported() {
    let mut registry = Registry::new();
    registry
        .register::<users::Created>()
        .unwrap()
        .produces::<users::Created>("signup")
        .unwrap();
    let second = registry.register::<orders::Created>().map(|_| ());
    if let Err(e) = second {
        // Refused (the design chosen: names are unique), naming both topics, the first
        // type kept with its producer.
        let text = e.to_string();
        assert!(
            matches!(e, switchyard_contracts::RegistryError::NameTaken { .. })
                && text.contains("rev39.users.created")
                && text.contains("rev39.orders.created"),
            "{text}"
        );
        let kept = registry.get("Created").unwrap();
        assert_eq!(kept.topic, "rev39.users.created");
        assert!(kept.producers.contains("signup"));
        return;
    }
    let doc = asyncapi::export(&registry, &asyncapi::Info::default());
    let addresses: BTreeSet<&str> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| c["address"].as_str())
        .collect();
    let ops = operations(&doc);
    assert!(
        addresses.contains("rev39.users.created") && addresses.contains("rev39.orders.created"),
        "both registers returned Ok, yet the document's channels are only {addresses:?} (operations {ops:?})"
    );
    let orders_chan = doc["channels"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, c)| c["address"] == "rev39.orders.created")
        .map(|(k, _)| k.clone())
        .unwrap();
    let signup_sends_orders = doc["operations"].as_object().unwrap().values().any(|op| {
        op["action"] == "send"
            && op["channel"]["$ref"] == format!("#/channels/{orders_chan}").as_str()
    });
    assert!(
        !signup_sends_orders,
        "`signup` produces users::Created only, yet sends on rev39.orders.created: {ops:?}"
    );
}
