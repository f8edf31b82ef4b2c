//! Review rev32, outside in: one request followed end to end through the gateway (HTTP in,
//! a Rust handler on the node, WebSocket out, `GET /v1/trace/{correlation_id}`), against
//! docs/gateway.md (`x-correlation-id`, `traceparent`, Message JSON, the trace endpoint) and
//! docs/bus.md "Correlation and causation".

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, Topic, handler_fn};

use crate::support::{TestNode, WAIT};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Subscribes a Rust relay on the node: `r32.in` -> publishes `r32.out` through the bus
/// handle, failing its first attempt after publishing (so `r32.out` is published twice).
async fn relay(node: &TestNode) -> Arc<AtomicU32> {
    let calls = Arc::new(AtomicU32::new(0));
    let (bus, n) = (node.bus.clone(), calls.clone());
    node.bus
        .subscribe(
            "r32-relay",
            "r32.in",
            handler_fn(move |_env: Envelope| {
                let (bus, n) = (bus.clone(), n.clone());
                async move {
                    bus.publish_envelope(Envelope::new(Topic::new("r32.out")?, "{}"))
                        .await?;
                    if n.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err::<Outcome, BoxErr>("first attempt fails".into());
                    }
                    Ok(Outcome::Ack)
                }
            }),
        )
        .retry_delay(Duration::from_millis(1))
        .start()
        .await
        .unwrap()
        .detach();
    calls
}

async fn http_publish(node: &TestNode, topic: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = reqwest::Client::new()
        .post(node.http(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.body("{}").send().await.unwrap();
    assert_eq!(res.status(), 202);
    res.json().await.unwrap()
}

/// A Rust handler of command topic `r32.cmd` that publishes an event on `r32.done` and
/// replies `reply`.
async fn command_publishing_done(node: &TestNode, reply: &'static str) {
    let bus = node.bus.clone();
    node.bus
        .handle_envelope(
            "r32-cmd",
            "r32.cmd",
            handler_fn(move |env: Envelope| {
                let bus = bus.clone();
                async move {
                    bus.publish_envelope(Envelope::new(Topic::new("r32.done")?, "{}"))
                        .await?;
                    Ok::<_, BoxErr>(Outcome::reply(env.reply(reply)))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
}

/// `POST /v1/request/r32.cmd` with `x-correlation-id: correlation`: asserts a 200 and returns
/// the answer's JSON.
async fn http_request(node: &TestNode, correlation: &str) -> Value {
    let res = reqwest::Client::new()
        .post(node.http("/v1/request/r32.cmd?timeout_ms=5000"))
        .header("content-type", "application/json")
        .header("x-correlation-id", correlation)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn trace_of(node: &TestNode, correlation: &str) -> Value {
    let res = reqwest::Client::new()
        .get(node.http(&format!("/v1/trace/{correlation}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "trace of {correlation}");
    res.json().await.unwrap()
}

fn trace_id_of(msg: &Value) -> Option<String> {
    let tp = msg["headers"]["traceparent"].as_str()?;
    tp.split('-').nth(1).map(str::to_owned)
}

/// Promise (gateway.md `x-correlation-id` "kept as given", bus.md "Correlation and
/// causation"): an HTTP publish with a correlation id, handled by a Rust handler that
/// publishes (once per attempt, one retry), reaches a WebSocket subscriber as Message JSON
/// with the same correlation id, caused by the published message, `attempt` 1.
#[tokio::test]
async fn an_http_flow_reaches_a_ws_subscriber_with_its_correlation_and_cause() {
    let node = TestNode::start("").await;
    let calls = relay(&node).await;
    let mut ws = node.client().await;
    ws.subscribe("r32.out", json!({})).await;
    let res = http_publish(
        &node,
        "r32.in",
        &[
            ("x-correlation-id", "corr-gw-1"),
            ("traceparent", TRACEPARENT),
        ],
    )
    .await;
    assert_eq!(res["correlation_id"], "corr-gw-1");
    for _ in 0..2 {
        let m = ws.expect("message").await;
        let msg = &m["message"];
        assert_eq!(msg["topic"], "r32.out", "{m}");
        assert_eq!(msg["correlation_id"], "corr-gw-1", "{m}");
        assert_eq!(msg["causation_id"], res["id"], "{m}");
        assert_eq!(msg["attempt"], 1, "{m}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    ws.close().await;
    node.stop().await;
}

/// Promise (gateway.md `traceparent` "W3C trace context"; middleware.md: the node's publish
/// hook `ensure_traceparent` continues "the trace of the handler that published it"; python.md
/// "one correlation id and one trace span the Rust node, HTTP callers and Python"): what a
/// Rust handler on the node publishes while handling an HTTP publish that came with a
/// `traceparent` carries a `traceparent` of the same trace id (with another parent span).
#[tokio::test]
async fn a_rust_handlers_event_stays_in_the_http_callers_trace() {
    let node = TestNode::start("").await;
    let _calls = relay(&node).await;
    let mut ws = node.client().await;
    ws.subscribe("r32.out", json!({})).await;
    http_publish(
        &node,
        "r32.in",
        &[
            ("x-correlation-id", "corr-gw-2"),
            ("traceparent", TRACEPARENT),
        ],
    )
    .await;
    let m = ws.expect("message").await;
    let msg = &m["message"];
    assert_eq!(
        trace_id_of(msg).as_deref(),
        Some(TRACE),
        "the event is in the caller's trace: {m}"
    );
    assert_ne!(
        msg["headers"]["traceparent"], TRACEPARENT,
        "a new span: {m}"
    );
    ws.close().await;
    node.stop().await;
}

/// Promise (gateway.md `GET /v1/trace/{correlation_id}`): the trace lists every message
/// published in the flow, in order, each as published (`attempt` 0): the HTTP publish and
/// the relay's publish on each of its two attempts, each caused by the HTTP message; the tree
/// has the HTTP publish as its root and both follow-ups as its children. A dead letter of
/// the flow replayed through `POST /v1/dlq/replay` is published again in the same flow.
#[tokio::test]
async fn the_trace_lists_every_publish_of_the_flow_in_order() {
    let node = TestNode::start("").await;
    let _calls = relay(&node).await;
    // A subscriber of the follow-up that always fails: its copies are dead-lettered.
    node.bus
        .subscribe(
            "r32-broken",
            "r32.out",
            handler_fn(|_env: Envelope| async {
                Err::<Outcome, BoxErr>(Box::new(switchyard::Permanent::new("broken")))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let res = http_publish(&node, "r32.in", &[("x-correlation-id", "corr-gw-3")]).await;
    node.bus.run_until_idle().await;
    let trace = trace_of(&node, "corr-gw-3").await;
    assert_eq!(trace["correlation_id"], "corr-gw-3");
    let msgs = trace["messages"].as_array().unwrap().clone();
    let topics: Vec<&str> = msgs.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    assert_eq!(topics, ["r32.in", "r32.out", "r32.out"], "{trace}");
    assert_eq!(msgs[0]["id"], res["id"]);
    for m in &msgs {
        assert_eq!(m["correlation_id"], "corr-gw-3", "{m}");
        assert_eq!(m["attempt"], 0, "{m}");
    }
    for m in &msgs[1..] {
        assert_eq!(m["causation_id"], res["id"], "{m}");
    }
    let roots = trace["tree"]["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{trace}");
    assert_eq!(roots[0]["topic"], "r32.in");
    assert_eq!(roots[0]["children"].as_array().unwrap().len(), 2, "{trace}");

    // The broken subscriber's dead letters: replay them, they are published again in the flow.
    let dlq: Value = reqwest::Client::new()
        .get(node.http("/v1/dlq?subscription=r32-broken"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = dlq["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 2, "{dlq}");
    for item in &items {
        let msg = if item["message"].is_object() {
            &item["message"]
        } else {
            item
        };
        assert_eq!(msg["correlation_id"], "corr-gw-3", "{item}");
    }
    let first_id = items[0]["message"]["id"]
        .as_str()
        .or(items[0]["id"].as_str())
        .unwrap()
        .to_owned();
    let replay = reqwest::Client::new()
        .post(node.http("/v1/dlq/replay"))
        .json(&json!({"ids": [first_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    node.bus.run_until_idle().await;
    let trace = trace_of(&node, "corr-gw-3").await;
    let msgs = trace["messages"].as_array().unwrap();
    let replayed = msgs
        .iter()
        .find(|m| m["headers"]["replayed-from"].is_string())
        .unwrap_or_else(|| panic!("the replay is in the trace: {trace}"));
    assert_eq!(replayed["id"], first_id.as_str());
    assert_eq!(replayed["correlation_id"], "corr-gw-3");
    assert_eq!(
        replayed["causation_id"], res["id"],
        "the replay keeps its cause"
    );
    node.stop().await;
}

/// Promise (gateway.md: `x-correlation-id` "an invalid value is kept in the `correlation-id`
/// header"): a correlation id the bus cannot take (spaces, non-ASCII) does not refuse the
/// publish; the message gets a correlation id of its own (the one the 202 answers), the
/// given value is in its `correlation-id` header for a subscriber to see, the trace finds the
/// flow under the answered id, and the Rust handler's follow-up is in that flow.
#[tokio::test]
async fn an_invalid_correlation_id_is_kept_as_a_header_and_the_flow_still_correlates() {
    let node = TestNode::start("").await;
    let _calls = relay(&node).await;
    let mut ws = node.client().await;
    ws.subscribe("r32.#", json!({})).await;
    let given = "order 42 from the shop";
    let res = http_publish(&node, "r32.in", &[("x-correlation-id", given)]).await;
    let corr = res["correlation_id"].as_str().unwrap().to_owned();
    assert_ne!(corr, given);
    let m = ws.expect("message").await;
    let msg = &m["message"];
    assert_eq!(msg["topic"], "r32.in", "{m}");
    assert_eq!(msg["correlation_id"], corr.as_str(), "{m}");
    assert_eq!(msg["headers"]["correlation-id"], given, "{m}");
    let m = ws.expect("message").await;
    assert_eq!(m["message"]["topic"], "r32.out", "{m}");
    assert_eq!(m["message"]["correlation_id"], corr.as_str(), "{m}");
    node.bus.run_until_idle().await;
    let trace = trace_of(&node, &corr).await;
    assert!(trace["messages"].as_array().unwrap().len() >= 2, "{trace}");
    ws.close().await;
    node.stop().await;
}

/// Promise (gateway.md `POST /v1/request` answer `{"id", "correlation_id", ...}`, bus.md
/// "Correlation and causation"): an HTTP request with a correlation id to a Rust command
/// handler that publishes an event: the answer names the given correlation id, and the event
/// (seen over WebSocket) carries it, caused by the request.
#[tokio::test]
async fn an_http_request_correlates_the_events_its_handler_publishes() {
    let node = TestNode::start("").await;
    command_publishing_done(&node, "{\"ok\":true}").await;
    let mut ws = node.client().await;
    ws.subscribe("r32.done", json!({})).await;
    let answer = http_request(&node, "corr-gw-5").await;
    assert_eq!(answer["correlation_id"], "corr-gw-5", "{answer}");
    let m = tokio::time::timeout(WAIT, ws.expect("message"))
        .await
        .unwrap();
    assert_eq!(m["message"]["correlation_id"], "corr-gw-5", "{m}");
    assert_eq!(m["message"]["causation_id"], answer["id"], "{m}");
    ws.close().await;
    node.stop().await;
}

/// Promise (gateway.md `GET /v1/trace/{correlation_id}`: "messages published or sent through
/// this node"): a flow begun by `POST /v1/request` lists the request itself (kind `request`)
/// as its root and the event its handler published as its child.
#[tokio::test]
async fn the_trace_of_an_http_request_lists_the_request_and_what_it_caused() {
    let node = TestNode::start("").await;
    command_publishing_done(&node, "{}").await;
    let answer = http_request(&node, "corr-gw-6").await;
    node.bus.run_until_idle().await;
    let trace = trace_of(&node, "corr-gw-6").await;
    let msgs = trace["messages"].as_array().unwrap();
    let request = msgs
        .iter()
        .find(|m| m["topic"] == "r32.cmd" && m["kind"] == "request")
        .unwrap_or_else(|| panic!("the request is in the trace: {trace}"));
    assert_eq!(request["id"], answer["id"], "{trace}");
    let done = msgs
        .iter()
        .find(|m| m["topic"] == "r32.done")
        .unwrap_or_else(|| panic!("the event is in the trace: {trace}"));
    assert_eq!(done["causation_id"], answer["id"], "{trace}");
    assert_eq!(trace["tree"]["roots"][0]["topic"], "r32.cmd", "{trace}");
    node.stop().await;
}

/// Promise (gateway.md `traceparent` "otherwise one is started", `x-causation-id` "causation
/// id (any valid id)"): an HTTP publish without a traceparent reaches a WebSocket subscriber
/// with a W3C traceparent the gateway started, the given causation id as it was given, and the
/// Rust handler's follow-up is in the same trace, caused by the published message.
#[tokio::test]
async fn a_started_trace_and_a_given_cause_reach_the_subscriber_and_the_follow_up() {
    let node = TestNode::start("").await;
    let _calls = relay(&node).await;
    let mut ws = node.client().await;
    ws.subscribe("r32.#", json!({})).await;
    let res = http_publish(&node, "r32.in", &[("x-causation-id", "upstream-7")]).await;
    let m = ws.expect("message").await;
    let first = m["message"].clone();
    assert_eq!(first["topic"], "r32.in", "{m}");
    assert_eq!(first["causation_id"], "upstream-7", "{m}");
    let tp = first["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("a traceparent was started: {m}"));
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len()),
        ("00", 32, 16),
        "{tp}"
    );
    let m = ws.expect("message").await;
    let follow = &m["message"];
    assert_eq!(follow["topic"], "r32.out", "{m}");
    assert_eq!(follow["causation_id"], res["id"], "{m}");
    assert_eq!(
        trace_id_of(follow).as_deref(),
        Some(parts[1]),
        "same trace: {m}"
    );
    ws.close().await;
    node.stop().await;
}

/// Promise (bus.md: ids are opaque, any 1-256 visible ASCII characters, "kept exactly as it
/// is"; gateway.md `GET /v1/trace/{correlation_id}`): a correlation id with characters a URL
/// path must escape (`/`, `?`, `#`, `%`, a space is not allowed) is kept on the message and
/// its flow is found by the trace endpoint under the percent-encoded id.
#[tokio::test]
async fn a_correlation_id_with_url_characters_is_kept_and_traceable() {
    let node = TestNode::start("").await;
    let _calls = relay(&node).await;
    for (given, encoded) in [
        ("tenant/7?x=1#frag", "tenant%2F7%3Fx%3D1%23frag"),
        ("50%off", "50%25off"),
    ] {
        let res = http_publish(&node, "r32.in", &[("x-correlation-id", given)]).await;
        assert_eq!(res["correlation_id"], given, "{res}");
        node.bus.run_until_idle().await;
        let trace = trace_of(&node, encoded).await;
        assert_eq!(trace["correlation_id"], given, "{trace}");
        let topics: Vec<&str> = trace["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["topic"].as_str().unwrap())
            .collect();
        assert_eq!(topics[0], "r32.in", "{trace}");
        assert!(topics.len() >= 2, "the follow-up too: {trace}");
    }
    node.stop().await;
}
