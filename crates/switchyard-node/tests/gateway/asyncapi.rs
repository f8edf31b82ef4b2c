//! `GET /v1/asyncapi.json`: the registered contracts with live consumers, as AsyncAPI 3.0.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use switchyard_contracts::{MessageType, Registry};

use crate::common::{MEMORY, TestNode, client};

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.insert(MessageType {
        name: "OrderPlaced".into(),
        topic: "orders.placed".into(),
        kind: "event".into(),
        version: 2,
        content_type: "application/json".into(),
        schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"order": {"type": "string"}, "line": {"$ref": "#/$defs/Line"}},
            "required": ["order", "line"],
            "$defs": {"Line": {"type": "object", "properties": {"sku": {"type": "string"}}}}
        }),
        producers: BTreeSet::from(["shop".to_owned()]),
        consumers: BTreeSet::new(),
    })
    .unwrap();
    reg
}

#[tokio::test]
async fn the_node_serves_its_contracts_as_asyncapi_with_live_consumers() {
    let node = TestNode::start_with(MEMORY, |n| n.set_contracts(registry())).await;
    let _sub = node
        .bus
        .subscribe(
            "billing",
            "orders.*",
            handler_fn(
                |_e: Envelope| async move { Ok::<_, std::convert::Infallible>(Outcome::Ack) },
            ),
        )
        .start()
        .await
        .unwrap();
    let http = client();
    let res = http
        .get(node.url("/v1/asyncapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(doc["channels"]["orders.placed"]["address"], "orders.placed");
    assert_eq!(doc["operations"]["shop.send.OrderPlaced"]["action"], "send");
    assert_eq!(
        doc["operations"]["billing.receive.OrderPlaced"]["action"], "receive",
        "the live subscription is a consumer: {}",
        doc["operations"]
    );
    assert_eq!(
        doc["components"]["messages"]["OrderPlaced"]["payload"]["properties"]["line"]["$ref"],
        "#/components/schemas/Line"
    );
    assert!(doc["components"]["schemas"]["Line"].is_object());
    let openapi: Value = http
        .get(node.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        openapi["paths"].get("/v1/asyncapi.json").is_some(),
        "documented"
    );
    node.stop().await.unwrap();
}
