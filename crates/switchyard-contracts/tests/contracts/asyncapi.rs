//! The AsyncAPI 3.0 export: required fields and every `$ref` resolving inside the document.

use serde_json::Value;
use switchyard_contracts::{Registry, asyncapi};

use crate::schema::{BlockCustomer, CustomerSignedUp};

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.register::<CustomerSignedUp>()
        .unwrap()
        .register::<BlockCustomer>()
        .unwrap()
        .declare_component("signup", ["customers.block"], ["customers.signed_up"])
        .unwrap()
        .declare_component("mailer", ["customers.*"], Vec::<String>::new())
        .unwrap();
    reg
}

fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r);
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_export_has_the_required_asyncapi_3_fields_and_its_refs_resolve() {
    let info = asyncapi::Info {
        title: "signup".into(),
        version: "1.2.0".into(),
        server: Some(("localhost:8080".into(), "ws".into())),
    };
    let doc = asyncapi::export(&registry(), &info);
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "signup");
    assert_eq!(doc["info"]["version"], "1.2.0");
    assert_eq!(doc["servers"]["switchyard"]["protocol"], "ws");
    assert_eq!(
        doc["channels"]["customers.signed_up"]["address"],
        "customers.signed_up"
    );
    let msg = &doc["components"]["messages"]["CustomerSignedUp"];
    assert_eq!(msg["contentType"], "application/json");
    assert_eq!(msg["headers"]["properties"]["type_version"]["const"], 4);
    assert_eq!(
        msg["payload"]["properties"]["address"]["$ref"],
        "#/components/schemas/Address"
    );
    assert!(doc["components"]["schemas"]["Payment"]["oneOf"].is_array());
    let ops = doc["operations"].as_object().unwrap();
    let mut names: Vec<&str> = ops.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "mailer.receive.BlockCustomer",
            "mailer.receive.CustomerSignedUp",
            "signup.receive.BlockCustomer",
            "signup.send.CustomerSignedUp",
        ]
    );
    for (name, op) in ops {
        let action = op["action"].as_str().unwrap();
        assert!(action == "send" || action == "receive", "{name}");
        assert!(
            op["channel"]["$ref"]
                .as_str()
                .unwrap()
                .starts_with("#/channels/")
        );
    }
    // Every reference points at something in the document (AsyncAPI resolves them against
    // the whole document, so a schema's own `#/$defs/..` would dangle).
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 8, "{all:?}");
    for r in all {
        assert!(doc.pointer(&r[1..]).is_some(), "dangling {r}");
    }
}

#[test]
fn the_export_validates_against_the_official_asyncapi_3_schema() {
    let schema: Value =
        serde_json::from_str(include_str!("../fixtures/asyncapi-3.0.0.schema.json")).unwrap();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let info = asyncapi::Info {
        server: Some(("localhost:8080".into(), "http".into())),
        ..asyncapi::Info::default()
    };
    let doc = asyncapi::export(&registry(), &info);
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The validator does reject a broken document (so the check above can fail).
    let mut broken = doc.clone();
    broken["operations"]["signup.send.CustomerSignedUp"]["action"] = "publish".into();
    assert!(!validator.is_valid(&broken));
}

/// Two definitions of one name, for two message types.
mod eu {
    use serde::{Deserialize, Serialize};
    use switchyard_contracts::JsonSchema;

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Address {
        pub street: String,
    }
}

mod us {
    use serde::{Deserialize, Serialize};
    use switchyard_contracts::JsonSchema;

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Address {
        pub zip: u32,
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, switchyard_contracts::JsonSchema)]
struct EuOrderPlaced {
    ship_to: eu::Address,
}
impl switchyard::Message for EuOrderPlaced {
    // `/` is allowed in a topic, and is not in a document key.
    const TOPIC: &'static str = "orders/eu.placed";
}
impl switchyard_contracts::Contract for EuOrderPlaced {}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, switchyard_contracts::JsonSchema)]
struct UsOrderPlaced {
    ship_to: us::Address,
}
impl switchyard::Message for UsOrderPlaced {
    const TOPIC: &'static str = "orders_eu.placed";
}
impl switchyard_contracts::Contract for UsOrderPlaced {}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, switchyard_contracts::JsonSchema)]
struct EuOrderShipped {
    ship_to: eu::Address,
}
impl switchyard::Message for EuOrderShipped {
    const TOPIC: &'static str = "orders/eu.shipped";
}
impl switchyard_contracts::Contract for EuOrderShipped {}

#[test]
fn names_that_reduce_to_the_same_key_keep_their_own_channel_operation_and_schema() {
    let mut reg = Registry::new();
    reg.register::<EuOrderPlaced>()
        .unwrap()
        .register::<UsOrderPlaced>()
        .unwrap()
        .produces::<EuOrderPlaced>("billing svc")
        .unwrap()
        .produces::<EuOrderPlaced>("billing_svc")
        .unwrap()
        // Shares its definition of `eu::Address`: kept once.
        .register::<EuOrderShipped>()
        .unwrap()
        // A third `Address`, of its own.
        .register::<CustomerSignedUp>()
        .unwrap();
    let doc = asyncapi::export(&reg, &asyncapi::Info::default());

    // Each topic has its own channel, holding only its own message.
    let channels = doc["channels"].as_object().unwrap();
    let mut addresses: Vec<&str> = channels
        .values()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    addresses.sort_unstable();
    assert_eq!(
        addresses,
        [
            "customers.signed_up",
            "orders/eu.placed",
            "orders/eu.shipped",
            "orders_eu.placed"
        ]
    );
    for channel in channels.values() {
        assert_eq!(
            channel["messages"].as_object().unwrap().len(),
            1,
            "{channel}"
        );
    }

    // Both producers have their own operation.
    let summaries: Vec<&str> = doc["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|op| op["summary"].as_str().unwrap())
        .collect();
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    assert!(summaries.contains(&"billing svc sends EuOrderPlaced"));
    assert!(summaries.contains(&"billing_svc sends EuOrderPlaced"));

    // Each message's address resolves to its own definition.
    let resolve = |msg: &str| {
        let r = doc["components"]["messages"][msg]["payload"]["properties"]["ship_to"]["$ref"]
            .as_str()
            .unwrap()
            .to_owned();
        doc.pointer(&r[1..]).unwrap().clone()
    };
    assert_eq!(
        resolve("EuOrderPlaced")["properties"]["street"]["type"],
        "string"
    );
    assert_eq!(
        resolve("UsOrderPlaced")["properties"]["zip"]["type"],
        "integer"
    );
    assert_eq!(resolve("EuOrderShipped"), resolve("EuOrderPlaced"));
    let addresses = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("Address"))
        .count();
    assert_eq!(addresses, 3, "{}", doc["components"]["schemas"]);
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        assert!(doc.pointer(&r[1..]).is_some(), "dangling {r}");
    }
}

/// Two `Address`es of the same text, each referring to a `Country` of its own type.
mod nested_a {
    use serde::{Deserialize, Serialize};
    use switchyard_contracts::JsonSchema;

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Country {
        pub iso: String,
    }
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Address {
        pub country: Country,
    }
}

mod nested_b {
    use serde::{Deserialize, Serialize};
    use switchyard_contracts::JsonSchema;

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Country {
        pub code: u32,
    }
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Address {
        pub country: Country,
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, switchyard_contracts::JsonSchema)]
struct ParcelA {
    to: nested_a::Address,
}
impl switchyard::Message for ParcelA {
    const TOPIC: &'static str = "parcels.a";
}
impl switchyard_contracts::Contract for ParcelA {}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, switchyard_contracts::JsonSchema)]
struct ParcelB {
    to: nested_b::Address,
}
impl switchyard::Message for ParcelB {
    const TOPIC: &'static str = "parcels.b";
}
impl switchyard_contracts::Contract for ParcelB {}

/// A definition is the same as another only when what it refers to is the same too (found by
/// review: two `Address`es of the same text were shared, and the second type's address
/// pointed at the first type's `Country`).
#[test]
fn nested_definitions_resolve_to_their_own_types_definitions() {
    let mut reg = Registry::new();
    reg.register::<ParcelA>()
        .unwrap()
        .register::<ParcelB>()
        .unwrap();
    let doc = asyncapi::export(&reg, &asyncapi::Info::default());
    let follow = |v: &Value| {
        doc.pointer(&v["$ref"].as_str().unwrap()[1..])
            .unwrap()
            .clone()
    };
    let country = |msg: &str| {
        let address = follow(&doc["components"]["messages"][msg]["payload"]["properties"]["to"]);
        follow(&address["properties"]["country"])
    };
    assert_eq!(country("ParcelA")["properties"]["iso"]["type"], "string");
    assert_eq!(country("ParcelB")["properties"]["code"]["type"], "integer");
}
