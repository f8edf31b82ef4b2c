//! Contracts through the gateway (review rev22): a refusal of a payload with many schema
//! issues stays small (the first issues, then a count) in the HTTP body, the WebSocket error
//! frame and the dead letter alike; a gateway client sets a message's `type_name` and
//! `type_version` (HTTP `x-type-name` / `x-type-version`, WebSocket `type_name` /
//! `type_version`), so the validator narrows to its type and upcasts an older version.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::Envelope;
use switchyard_contracts::{MessageType, Registry, Upcasters, Validator};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{MEMORY, TestNode, client, error_of, forward, recv};

/// `Samples` (`xs`: integers) on `sensors.samples`; `OrderPlaced` version 2 (`order`,
/// `amount` required) on `orders.placed`.
fn registry() -> Registry {
    let mut reg = Registry::new();
    let ty = |name: &str, topic: &str, version: u32, schema: Value| MessageType {
        name: name.into(),
        topic: topic.into(),
        kind: "event".into(),
        version,
        content_type: "application/json".into(),
        schema,
        producers: BTreeSet::new(),
        consumers: BTreeSet::new(),
    };
    reg.insert(ty(
        "Samples",
        "sensors.samples",
        1,
        json!({"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"}}}, "required": ["xs"]}),
    ))
    .unwrap();
    reg.insert(ty(
        "OrderPlaced",
        "orders.placed",
        2,
        json!({"type": "object", "properties": {"order": {"type": "integer"}, "amount": {"type": "number"}}, "required": ["order", "amount"]}),
    ))
    .unwrap();
    reg
}

/// Version 1 of `OrderPlaced` called the amount `total`.
fn upcasters() -> Upcasters {
    Upcasters::new().step("OrderPlaced", 1, |mut v: Value| {
        let total = v
            .as_object_mut()
            .and_then(|o| o.remove("total"))
            .ok_or("no total")?;
        v["amount"] = total;
        Ok::<_, String>(v)
    })
}

async fn node() -> (
    TestNode,
    mpsc::UnboundedReceiver<Envelope>,
    switchyard::Subscription,
) {
    let validator = Validator::new(&registry()).unwrap().upcasters(upcasters());
    let node = TestNode::start_with(MEMORY, |n| n.set_validation(validator)).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = node
        .bus
        .subscribe("everything", "#", forward(tx))
        .start()
        .await
        .unwrap();
    (node, rx, sub)
}

async fn dlq(node: &TestNode) -> Value {
    client()
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(node: &TestNode) -> WsStream {
    let url = node.url("/v1/ws").replacen("http://", "ws://", 1);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Sends `frame` and returns the answer carrying its `id`, with the answer's size in bytes.
async fn ask(ws: &mut WsStream, frame: Value) -> (Value, usize) {
    let id = frame["id"].clone();
    ws.send(Ws::Text(frame.to_string().into())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("an answer within 30 s")
            .unwrap()
            .unwrap();
        if let Ws::Text(t) = frame {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                return (v, t.len());
            }
        }
    }
}

const ELEMENTS: usize = 90_000;
/// What a refusal of `ELEMENTS` wrong elements may weigh at most: the first issues and a
/// count, not one issue per element (3.7 MB before the cap).
const BOUND: usize = 8 * 1024;

#[tokio::test]
async fn a_refusal_of_many_issues_lists_the_first_and_counts_the_rest_everywhere() {
    let (node, mut rx, _sub) = node().await;
    let body = json!({ "xs": vec!["a"; ELEMENTS] }).to_string();
    let more = format!("and {} more", ELEMENTS - 20);

    // HTTP: 422 with the first issues and the count of the others.
    let res = client()
        .post(node.url("/v1/publish/sensors.samples"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    let head = &message[..message.len().min(400)];
    assert_eq!((status, kind.as_str()), (422, "invalid_message"), "{head}");
    assert!(message.len() < BOUND, "{} bytes: {head}", message.len());
    assert!(
        message.contains("/xs/0:") && message.contains("/xs/19:"),
        "{message}"
    );
    assert!(!message.contains("/xs/20:"), "{message}");
    assert!(message.contains(&more), "{message}");

    // The dead letter's reason: the same text.
    let letters = dlq(&node).await;
    assert_eq!(letters["total"], 1, "{}", &letters.to_string()[..400]);
    let error = letters["items"][0]["error"].as_str().unwrap();
    assert!(
        error.len() < BOUND,
        "dead letter reason of {} bytes",
        error.len()
    );
    assert!(error.contains("/xs/0:") && error.contains(&more), "{error}");
    // The dead letter keeps the whole message.
    assert_eq!(
        letters["items"][0]["message"]["payload"]["xs"]
            .as_array()
            .map(Vec::len),
        Some(ELEMENTS)
    );

    // WebSocket: the error frame the same.
    let mut ws = ws(&node).await;
    let frame = json!({"op": "publish", "id": 7, "topic": "sensors.samples",
        "payload": {"xs": vec!["a"; ELEMENTS]}});
    let (answer, size) = ask(&mut ws, frame).await;
    assert_eq!(answer["error"]["kind"], "invalid_message", "{answer}");
    assert!(size < BOUND, "error frame of {size} bytes");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/xs/0:") && message.contains(&more),
        "{message}"
    );

    node.bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "an invalid message was delivered");
}

#[tokio::test]
async fn http_headers_set_type_name_and_version_and_the_validator_upcasts_them() {
    let (node, mut rx, _sub) = node().await;
    let post = |headers: &[(&str, &str)], body: &str| {
        let mut req = client()
            .post(node.url("/v1/publish/orders.placed"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let v1 = r#"{"order": 1, "total": 9.5}"#;
    // Without a type, a version-1 payload is checked as it is against version 2: refused.
    let (status, kind, message) = error_of(post(&[], v1).await.unwrap()).await;
    assert_eq!(
        (status, kind.as_str()),
        (422, "invalid_message"),
        "{message}"
    );
    assert!(message.contains("amount"), "{message}");
    // Said to be OrderPlaced version 1, it is checked as upcast to version 2: delivered,
    // with the type and version it was published with.
    let res = post(
        &[("x-type-name", "OrderPlaced"), ("x-type-version", "1")],
        v1,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let got = recv(&mut rx, "the version-1 order").await;
    assert_eq!(got.type_name.as_deref(), Some("OrderPlaced"));
    assert_eq!(got.type_version, 1);
    assert_eq!(
        &got.payload[..],
        v1.as_bytes(),
        "the message itself is not changed"
    );
    // A name alone: version 1, the envelope's default.
    let res = post(
        &[("x-type-name", "OrderPlaced")],
        r#"{"order": 2, "total": 1}"#,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let got = recv(&mut rx, "the order with a name").await;
    assert_eq!(got.type_name.as_deref(), Some("OrderPlaced"));
    assert_eq!(got.type_version, 1);
    // Said to be version 2, the version-1 payload is refused; the dead letter's Message JSON
    // shows the type and version it claimed.
    let (status, _, message) = error_of(
        post(
            &[("x-type-name", "OrderPlaced"), ("x-type-version", "2")],
            v1,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{message}");
    let letters = dlq(&node).await;
    let claimed: Vec<(Value, Value)> = letters["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["message"]["type_name"].clone(),
                l["message"]["type_version"].clone(),
            )
        })
        .collect();
    assert!(
        claimed.contains(&(json!("OrderPlaced"), json!(2))),
        "{claimed:?}"
    );
    assert!(claimed.contains(&(Value::Null, json!(1))), "{claimed:?}");

    // Bad values: 400 bad_header naming the header, nothing published.
    for (headers, expect) in [
        (
            vec![("x-type-name", "OrderPlaced"), ("x-type-version", "two")],
            "x-type-version",
        ),
        (
            vec![("x-type-name", "OrderPlaced"), ("x-type-version", "-1")],
            "x-type-version",
        ),
        (
            vec![
                ("x-type-name", "OrderPlaced"),
                ("x-type-version", "4294967296"),
            ],
            "x-type-version",
        ),
        (vec![("x-type-version", "2")], "x-type-name"),
        (vec![("x-type-name", "")], "x-type-name"),
    ] {
        let (status, kind, message) = error_of(post(&headers, v1).await.unwrap()).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "bad_header"),
            "{headers:?}: {message}"
        );
        assert!(message.contains(expect), "{headers:?}: {message}");
    }
    node.bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "a refused message was delivered");
}

#[tokio::test]
async fn websocket_fields_set_type_name_and_version_and_the_validator_upcasts_them() {
    let (node, mut rx, _sub) = node().await;
    let mut ws = ws(&node).await;
    let publish = |id: u32, extra: Value| {
        let mut f = json!({"op": "publish", "id": id, "topic": "orders.placed",
            "payload": {"order": 1, "total": 9.5}});
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        f
    };
    let (answer, _) = ask(&mut ws, publish(1, json!({}))).await;
    assert_eq!(answer["error"]["kind"], "invalid_message", "{answer}");
    let (answer, _) = ask(
        &mut ws,
        publish(2, json!({"type_name": "OrderPlaced", "type_version": 1})),
    )
    .await;
    assert_eq!(answer["op"], "published", "{answer}");
    let got = recv(&mut rx, "the version-1 order").await;
    assert_eq!(got.type_name.as_deref(), Some("OrderPlaced"));
    assert_eq!(got.type_version, 1);
    // In a batch too.
    let (answer, _) = ask(
        &mut ws,
        json!({"op": "publish_batch", "id": 3, "messages": [
            {"topic": "orders.placed", "payload": {"order": 3, "total": 1},
             "type_name": "OrderPlaced", "type_version": 1}]}),
    )
    .await;
    assert_eq!(answer["op"], "published_batch", "{answer}");
    assert_eq!(
        recv(&mut rx, "the batched order")
            .await
            .type_name
            .as_deref(),
        Some("OrderPlaced")
    );
    for (id, extra, expect) in [
        (
            4,
            json!({"type_name": "OrderPlaced", "type_version": "1"}),
            "type_version",
        ),
        (
            5,
            json!({"type_name": "OrderPlaced", "type_version": -1}),
            "type_version",
        ),
        (6, json!({"type_version": 2}), "type_name"),
        (7, json!({"type_name": " "}), "type_name"),
    ] {
        let (answer, _) = ask(&mut ws, publish(id, extra.clone())).await;
        assert_eq!(answer["op"], "error", "{extra}: {answer}");
        // As for `causation_id`, the kind of a bad metadata field is the HTTP one's.
        assert_eq!(answer["error"]["kind"], "bad_header", "{extra}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{extra}: {message}");
    }
    node.bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "a refused message was delivered");
}
