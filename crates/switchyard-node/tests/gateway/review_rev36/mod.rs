//! Review rev36: the HTTP gateway attacked as a client in another language would
//! (docs/gateway.md "HTTP API", "Errors", "Message JSON", and `/v1/openapi.json`): every
//! documented header round-trips exactly, payload kinds, send/request outcomes and deadlines,
//! many concurrent HTTP clients, the OpenAPI document against the real answers, DLQ paging
//! and filters, and `/v1/trace` deliveries of retried and dead-lettered messages.

use std::time::Duration;

use serde_json::Value;
use switchyard::{BoxHandler, Envelope};

use crate::common::{TestNode, client, get_json};

mod bodies;
mod commands;
mod headers;
mod openapi_dlq_trace;
mod replay_commands;

/// Registers `handler` as the command handler `name` of `topic`.
async fn handle(node: &TestNode, name: &str, topic: &str, handler: BoxHandler) {
    node.bus
        .handle_envelope(name, topic, handler)
        .start()
        .await
        .unwrap()
        .detach();
}

/// `POST path` with an optional content type and a body; the raw response.
async fn post(
    node: &TestNode,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = client().post(node.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

/// Waits (at most 10 s) until `/v1/status` says no send or request is pending.
async fn wait_nothing_pending(node: &TestNode) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = get_json(node, "/v1/status").await;
        if status["pending"] == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending after 10 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 10 s) until `/v1/dlq?<query>` lists `n` entries; returns the list.
async fn wait_dead_letters(node: &TestNode, query: &str, n: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = get_json(node, &format!("/v1/dlq?{query}")).await;
        if list["total"] == n {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the DLQ never held {n} entries for {query:?}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of a DLQ listing, in its order.
fn ids_of(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {list}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A reply to `env` carrying `payload` with `content_type`.
fn reply_with(env: &Envelope, content_type: &str, payload: Vec<u8>) -> Envelope {
    env.reply(payload)
        .with_content_type(content_type.to_owned())
}
