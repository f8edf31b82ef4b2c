//! A command that failed over HTTP, dead-lettered and replayed by an admin; the OpenAPI
//! parameters of send and request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{Envelope, Kind, Outcome, handler_fn};
use tokio::sync::mpsc;

use super::{handle, wait_dead_letters};
use crate::common::{MEMORY, TestNode, client, error_of, get_json, recv};

/// "commands sent to their handler again": a send whose handler failed every attempt is
/// `422 handler_failed` and one dead letter (the command, its 3 attempts); once the handler
/// works, a replay delivers the same command (id, payload, content type) with `replayed-from`
/// and `replay-count`, the entry leaves the queue and `/v1/dlq/replays` says `handled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_is_dead_lettered_and_a_replay_hands_it_to_its_handler_again() {
    let node = TestNode::start(MEMORY).await;
    let fixed = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let f = fixed.clone();
    handle(
        &node,
        "payments",
        "payments.charge",
        handler_fn(move |env: Envelope| {
            let ok = f.load(Ordering::SeqCst);
            let tx = tx.clone();
            async move {
                if !ok {
                    return Err(std::io::Error::other("gateway down"));
                }
                let _ = tx.send(env);
                Ok(Outcome::Ack)
            }
        }),
    )
    .await;
    let res = client()
        .post(node.url("/v1/send/payments.charge"))
        .header("content-type", "application/json")
        .header("x-message-id", "charge-1")
        .body(r#"{"eur": 5}"#)
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!(
        (status, kind.as_str()),
        (422, "handler_failed"),
        "{message}"
    );
    let list = wait_dead_letters(&node, "topic=payments.charge", 1).await;
    let item = &list["items"][0];
    assert_eq!(item["id"], "charge-1", "{list}");
    assert_eq!(item["handler"], "payments", "{list}");
    assert_eq!(item["attempts"], 3, "{list}");
    assert_eq!(item["message"]["kind"], "command", "{list}");
    assert_eq!(item["message"]["payload"], json!({"eur": 5}), "{list}");

    fixed.store(true, Ordering::SeqCst);
    let res = client()
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({"ids": ["charge-1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let replayed: Value = res.json().await.unwrap();
    assert_eq!(replayed, json!({"replayed": 1, "failed": []}));
    let env = recv(&mut rx, "the replayed command").await;
    assert_eq!(env.id.to_string(), "charge-1");
    assert_eq!(env.kind, Kind::Command);
    assert_eq!(&env.payload[..], br#"{"eur": 5}"#);
    assert_eq!(env.content_type(), "application/json");
    assert_eq!(env.header("replayed-from"), Some("payments"));
    assert_eq!(env.header("replay-count"), Some("1"));
    assert_eq!(env.header("principal"), Some("anonymous"));
    assert_eq!(get_json(&node, "/v1/dlq").await["total"], 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let replays = get_json(&node, "/v1/dlq/replays?ids=charge-1").await;
        if replays["replays"][0]["status"] == "handled" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never handled: {replays}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await.unwrap();
}

/// A client generated from `/v1/openapi.json` can set what docs/gateway.md says send and
/// request take: "Same body and headers" as publish (`x-message-id`, `x-correlation-id`,
/// `x-causation-id`, `traceparent`, `x-priority`, ...).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Fixed: the OpenAPI document declares it.
async fn the_openapi_document_declares_the_headers_send_and_request_take() {
    let node = TestNode::start(MEMORY).await;
    let doc = get_json(&node, "/v1/openapi.json").await;
    let params = |path: &str| -> Vec<(String, String)> {
        doc["paths"][path]["post"]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (
                    p["in"].as_str().unwrap_or_default().to_owned(),
                    p["name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let publish = params("/v1/publish/{topic}");
    let headers: Vec<&(String, String)> = publish.iter().filter(|(at, _)| at == "header").collect();
    assert!(
        headers.iter().any(|(_, n)| n == "x-priority"),
        "publish declares its headers: {publish:?}"
    );
    for path in ["/v1/send/{topic}", "/v1/request/{topic}"] {
        let declared = params(path);
        let missing: Vec<&String> = headers
            .iter()
            .filter(|h| !declared.contains(h))
            .map(|(_, n)| n)
            .collect();
        assert!(
            missing.is_empty(),
            "{path} does not declare the headers {missing:?}"
        );
    }
    node.stop().await.unwrap();
}

/// Every parameter of `/v1/openapi.json` is where the route reads it: a `path` parameter
/// has its `{name}` in the path template (the query parameters `timeout_ms`, the DLQ
/// filters, `ids`, `format`, `since_ms` are `query`), so a generated client sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Fixed: the OpenAPI document declares it.
async fn the_openapi_parameters_are_where_the_routes_read_them() {
    let node = TestNode::start(MEMORY).await;
    let doc = get_json(&node, "/v1/openapi.json").await;
    let mut wrong = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().cloned().unwrap_or_default() {
                let (at, name) = (p["in"].as_str().unwrap(), p["name"].as_str().unwrap());
                if at == "path" && !path.contains(&format!("{{{name}}}")) {
                    wrong.push(format!(
                        "{} {path}: {name} declared in: path",
                        method.to_uppercase()
                    ));
                }
            }
        }
    }
    let request = &doc["paths"]["/v1/request/{topic}"]["post"]["parameters"];
    let timeout = request
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "timeout_ms")
        .unwrap_or_else(|| panic!("no timeout_ms: {request}"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(timeout["in"], "query", "{timeout}");
    node.stop().await.unwrap();
}
