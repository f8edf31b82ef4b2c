//! Every documented header of a send / request round-trips exactly (to the handler, into the
//! reply and into `/v1/trace`); bad values are `400 bad_header` and reach nobody; JSON, bytes
//! and empty payloads both ways.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde_json::{Value, json};
use switchyard::{Envelope, Kind, Outcome, handler_fn};
use tokio::sync::mpsc;

use super::{handle, post, reply_with};
use crate::common::{MEMORY, TestNode, client, error_of, get_json, recv};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A handler that forwards what it got and replies `{"ok": true}`.
fn forwarding(tx: mpsc::UnboundedSender<Envelope>) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let tx = tx.clone();
        async move {
            let reply = env.reply(r#"{"ok":true}"#);
            let _ = tx.send(env);
            Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
        }
    })
}

/// A send with every header set: the handler sees each value exactly, the answer names the
/// given ids, and `/v1/trace/<correlation>` shows the command as the handler saw it (attempt
/// 0) with one `handled` delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_header_of_a_send_reaches_the_handler_and_the_trace_exactly() {
    let node = TestNode::start(MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    handle(&node, "orders", "orders.place", forwarding(tx)).await;
    let res = client()
        .post(node.url("/v1/send/orders.place"))
        .header("content-type", "application/json")
        .header("x-message-id", "order-42")
        .header("x-correlation-id", "checkout-7")
        .header("x-causation-id", "cart-3")
        .header("traceparent", TRACEPARENT)
        .header("x-priority", "0")
        .header("x-source", "shop")
        .header("x-meta-tenant", "acme")
        .body(r#"{"n": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], "order-42", "{body}");
    assert_eq!(body["correlation_id"], "checkout-7", "{body}");
    assert_eq!(body["payload"], json!({"ok": true}), "{body}");
    let env = recv(&mut rx, "the command").await;
    assert_eq!(env.id.to_string(), "order-42");
    assert_eq!(env.correlation_id.to_string(), "checkout-7");
    assert_eq!(
        env.causation_id().map(ToString::to_string).as_deref(),
        Some("cart-3")
    );
    assert_eq!(env.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(env.priority.0, 0);
    assert_eq!(env.source(), Some("shop"));
    assert_eq!(env.header("tenant"), Some("acme"));
    assert_eq!(env.header("principal"), Some("anonymous"));
    assert_eq!(env.kind, Kind::Command);
    assert_eq!(env.content_type(), "application/json");
    assert_eq!(&env.payload[..], br#"{"n": 1}"#);

    let trace = get_json(&node, "/v1/trace/checkout-7").await;
    let msg = &trace["messages"][0];
    assert_eq!(msg["id"], "order-42", "{trace}");
    assert_eq!(msg["kind"], "command", "{trace}");
    assert_eq!(msg["correlation_id"], "checkout-7", "{trace}");
    assert_eq!(msg["causation_id"], "cart-3", "{trace}");
    assert_eq!(msg["priority"], 0, "{trace}");
    assert_eq!(msg["source"], "shop", "{trace}");
    assert_eq!(msg["headers"]["traceparent"], TRACEPARENT, "{trace}");
    assert_eq!(msg["headers"]["tenant"], "acme", "{trace}");
    assert_eq!(msg["headers"]["principal"], "anonymous", "{trace}");
    assert_eq!(msg["attempt"], 0, "{trace}");
    assert_eq!(msg["payload"], json!({"n": 1}), "{trace}");
    let handled: Vec<(&str, &str, u64, &str)> = trace["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("no deliveries: {trace}"))
        .iter()
        .filter(|d| d["message_id"] == "order-42")
        .map(|d| {
            (
                d["handler"].as_str().unwrap(),
                d["outcome"].as_str().unwrap(),
                d["attempt"].as_u64().unwrap(),
                d["message_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(handled, [("orders", "handled", 1, "order-42")], "{trace}");

    // The top priority and a ULID message id through `request`; without `x-correlation-id`
    // the correlation is the message id.
    let ulid = switchyard::MessageId::new().to_string();
    let res = client()
        .post(node.url("/v1/request/orders.place?timeout_ms=5000"))
        .header("x-priority", "255")
        .header("x-message-id", &ulid)
        .body("raw")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["id"].as_str(), body["correlation_id"].as_str()),
        (Some(ulid.as_str()), Some(ulid.as_str()))
    );
    let env = recv(&mut rx, "the request").await;
    assert_eq!(env.priority.0, 255);
    assert_eq!(env.kind, Kind::Request);
    assert_eq!(env.id.to_string(), ulid);
    assert_eq!(env.content_type(), "application/octet-stream");
    assert!(env.causation_id().is_none());
    node.stop().await.unwrap();
}

/// Each documented bad value of a header, on `send` and on `request`, is `400 bad_header`
/// naming the header, and the handler is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_header_values_on_send_and_request_are_bad_header_and_reach_no_handler() {
    let node = TestNode::start(MEMORY).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    handle(
        &node,
        "jobs",
        "jobs.run",
        handler_fn(move |env: Envelope| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply("1"))) }
        }),
    )
    .await;
    let long_id = "x".repeat(257);
    let cases: [(&str, &str, &str); 9] = [
        ("x-priority", "256", "x-priority"),
        ("x-priority", "-1", "x-priority"),
        ("x-priority", "high", "x-priority"),
        ("x-priority", "", "x-priority"),
        ("x-causation-id", "", "x-causation-id"),
        ("x-causation-id", "a b", "x-causation-id"),
        ("x-causation-id", &long_id, "x-causation-id"),
        ("traceparent", "00-xyz", "traceparent"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "traceparent",
        ),
    ];
    for path in ["/v1/send/jobs.run", "/v1/request/jobs.run?timeout_ms=2000"] {
        for (name, value, named) in cases {
            let res = client()
                .post(node.url(path))
                .header(name, value)
                .body("{}")
                .send()
                .await
                .unwrap();
            let (status, kind, message) = error_of(res).await;
            assert_eq!(
                (status, kind.as_str()),
                (400, "bad_header"),
                "{path} {name}: {value:?}: {message}"
            );
            assert!(message.contains(named), "{path} {name}: {message}");
        }
        // A non-ASCII value of an ASCII-only header.
        let res = client()
            .post(node.url(path))
            .header(
                "x-source",
                reqwest::header::HeaderValue::from_bytes("café".as_bytes()).unwrap(),
            )
            .body("{}")
            .send()
            .await
            .unwrap();
        let (status, kind, message) = error_of(res).await;
        assert_eq!((status, kind.as_str()), (400, "bad_header"), "{message}");
    }
    // The same handler answers a good call, so the refusals above were the headers'.
    let res = post(&node, "/v1/send/jobs.run", None, "{}").await;
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    node.stop().await.unwrap();
}

/// Payloads both ways: JSON in and out as JSON, other types as base64 with their type, an
/// empty body (no type: empty bytes; `application/json`: malformed), a reply that says JSON
/// but is not as base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bytes_and_empty_payloads_round_trip_through_send() {
    let node = TestNode::start(MEMORY).await;
    // Echoes the command's bytes with its content type; `echo.lie` says JSON over bytes
    // that are not.
    for (name, topic) in [("echo", "echo.back"), ("liar", "echo.lie")] {
        handle(
            &node,
            name,
            topic,
            handler_fn(|env: Envelope| async move {
                let reply = if env.topic.as_str() == "echo.lie" {
                    reply_with(&env, "application/json", b"{not json".to_vec())
                } else {
                    reply_with(&env, env.content_type(), env.payload.to_vec())
                };
                Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
            }),
        )
        .await;
    }
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let cases: Vec<(Option<&str>, Vec<u8>, &str, Value)> = vec![
        (
            Some("application/json"),
            br#"{"a": [1, 2]}"#.to_vec(),
            "application/json",
            json!({"payload": {"a": [1, 2]}}),
        ),
        (
            Some("application/vnd.shop+json"),
            b"[1]".to_vec(),
            "application/vnd.shop+json",
            json!({"payload": [1]}),
        ),
        (
            Some("text/plain"),
            b"hello".to_vec(),
            "text/plain",
            json!({"payload_base64": b64(b"hello")}),
        ),
        (
            None,
            vec![0, 255, 1],
            "application/octet-stream",
            json!({"payload_base64": b64(&[0, 255, 1])}),
        ),
        (
            None,
            Vec::new(),
            "application/octet-stream",
            json!({"payload_base64": ""}),
        ),
    ];
    for (ct, bytes, want_ct, want) in cases {
        let res = post(&node, "/v1/send/echo.back", ct, bytes.clone()).await;
        assert_eq!(res.status(), 200, "{ct:?} {bytes:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["content_type"], want_ct, "{ct:?}: {body}");
        let (key, value) = want.as_object().unwrap().iter().next().unwrap();
        assert_eq!(&body[key], value, "{ct:?}: {body}");
        let other = if key == "payload" {
            "payload_base64"
        } else {
            "payload"
        };
        assert!(body.get(other).is_none(), "{ct:?}: both forms in {body}");
    }
    let res = post(&node, "/v1/send/echo.back", Some("application/json"), "").await;
    let (status, kind, message) = error_of(res).await;
    assert_eq!(
        (status, kind.as_str()),
        (400, "malformed_json"),
        "{message}"
    );

    let res = post(&node, "/v1/send/echo.lie", None, "x").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["content_type"], "application/json", "{body}");
    assert_eq!(body["payload_base64"], b64(b"{not json"), "{body}");
    assert!(body.get("payload").is_none(), "{body}");
    node.stop().await.unwrap();
}
