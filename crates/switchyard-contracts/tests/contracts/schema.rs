use serde::{Deserialize, Serialize};
use switchyard::{Bus, Kind, Message, handler_fn};
use switchyard_contracts::{Contract, JsonSchema, Registry};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Address {
    pub city: String,
    pub zip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub enum Tier {
    Free,
    Pro,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub enum Payment {
    Card { last4: String },
    Invoice(u32),
    Cash,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CustomerSignedUp {
    pub id: u64,
    pub address: Address,
    pub tier: Tier,
    pub payment: Payment,
    pub tags: Vec<String>,
}
impl Message for CustomerSignedUp {
    const TOPIC: &'static str = "customers.signed_up";
    const VERSION: u32 = 4;
}
impl Contract for CustomerSignedUp {}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BlockCustomer {
    pub id: u64,
}
impl Message for BlockCustomer {
    const TOPIC: &'static str = "customers.block";
    const KIND: Kind = Kind::Command;
}
impl Contract for BlockCustomer {}
impl switchyard::Command for BlockCustomer {
    type Output = ();
}

#[test]
fn nested_struct_and_enum_schemas_are_derived_with_name_and_version() {
    let s = CustomerSignedUp::schema();
    assert_eq!(CustomerSignedUp::contract_name(), "CustomerSignedUp");
    assert_eq!(CustomerSignedUp::contract_version(), 4);
    assert_eq!(s["type"], "object");
    let req: Vec<&str> = s["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for f in ["id", "address", "tier", "payment", "tags"] {
        assert!(req.contains(&f), "{f} required: {s}");
    }
    // The nested struct sits under $defs, with its own optional field not required.
    assert_eq!(s["properties"]["address"]["$ref"], "#/$defs/Address");
    let addr = &s["$defs"]["Address"];
    assert_eq!(addr["properties"]["city"]["type"], "string");
    assert_eq!(addr["required"], serde_json::json!(["city"]));
    // A unit-only enum is a string enum; a data enum is a oneOf of its variants.
    let tier = &s["$defs"]["Tier"];
    assert_eq!(tier["enum"], serde_json::json!(["Free", "Pro"]), "{tier}");
    let pay = s["$defs"]["Payment"]["oneOf"].as_array().unwrap();
    let text = serde_json::to_string(pay).unwrap();
    for variant in ["Card", "Invoice", "Cash", "last4"] {
        assert!(text.contains(variant), "{variant} in {text}");
    }
    assert_eq!(s["properties"]["tags"]["items"]["type"], "string");
}

#[tokio::test]
async fn a_typed_publish_carries_type_name_and_version_in_the_envelope() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(
            "raw",
            "customers.#",
            handler_fn(move |env: switchyard::Envelope| {
                let tx = tx.clone();
                async move { tx.send(env).map_err(|e| e.to_string()) }
            }),
        )
        .start()
        .await
        .unwrap();
    bus.publish(CustomerSignedUp {
        id: 1,
        address: Address {
            city: "Oslo".into(),
            zip: None,
        },
        tier: Tier::Pro,
        payment: Payment::Cash,
        tags: vec![],
    })
    .await
    .unwrap();
    let env = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env.type_name.as_deref(), Some("CustomerSignedUp"));
    assert_eq!(env.type_version, 4);
}

#[tokio::test]
async fn the_registry_knows_topic_kind_version_schema_producers_and_consumers() {
    let bus = Bus::new();
    let _sub = bus
        .on("mailer", |_: CustomerSignedUp, _| async {
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await
        .unwrap();
    let _cmd = bus
        .handle(|_: BlockCustomer, _| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap();
    let mut reg = Registry::new();
    reg.register::<CustomerSignedUp>()
        .unwrap()
        .register::<BlockCustomer>()
        .unwrap()
        .produces::<CustomerSignedUp>("signup-api")
        .unwrap()
        .declare_component("audit", ["customers.#"], ["customers.block"])
        .unwrap()
        .observe_bus(&bus)
        .unwrap();
    let ev = reg.get("CustomerSignedUp").unwrap();
    assert_eq!(ev.topic, "customers.signed_up");
    assert_eq!(ev.kind, "event");
    assert_eq!(ev.version, 4);
    assert_eq!(ev.schema, CustomerSignedUp::schema());
    assert_eq!(ev.producers.iter().collect::<Vec<_>>(), ["signup-api"]);
    assert!(
        ev.consumers.contains("mailer") && ev.consumers.contains("audit"),
        "{:?}",
        ev.consumers
    );
    let cmd = reg.get("BlockCustomer").unwrap();
    assert_eq!(cmd.kind, "command");
    assert!(cmd.producers.contains("audit"));
    assert!(
        !cmd.consumers.contains("mailer"),
        "mailer's pattern does not match the command topic"
    );
    assert_eq!(
        cmd.consumers.len(),
        2,
        "audit and the command handler: {:?}",
        cmd.consumers
    );
    assert!(reg.produces::<Unregistered>("x").is_err());
}

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
struct Unregistered {}
impl Message for Unregistered {
    const TOPIC: &'static str = "nowhere";
}
impl Contract for Unregistered {}
