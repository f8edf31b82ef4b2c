//! Sizes at their exact limits, content types kept as sent, node-owned headers on a send.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use tokio::sync::mpsc;

use super::{handle, post};
use crate::common::{TestNode, client, error_of, forward, get_json, recv};

/// `limits.max_message_bytes` on a send or request: exactly the limit passes, one byte more is
/// `413 too_large` naming the limit and never reaches the handler; a body over
/// `limits.max_body_bytes` is `413` naming that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_of_send_and_request_hold_to_the_byte() {
    let node = TestNode::start(
        r#"
[transport]
kind = "memory"
[limits]
max_message_bytes = 32
max_body_bytes = 64
"#,
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    handle(
        &node,
        "sizer",
        "blob.put",
        handler_fn(move |env: Envelope| {
            c.fetch_add(1, Ordering::SeqCst);
            let n = env.payload.len();
            async move { Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply(n.to_string()))) }
        }),
    )
    .await;
    for path in ["/v1/send/blob.put", "/v1/request/blob.put?timeout_ms=5000"] {
        let res = post(&node, path, None, vec![7u8; 32]).await;
        assert_eq!(res.status(), 200, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["payload"], 32, "{path}: {body}");
        let res = post(&node, path, None, vec![7u8; 33]).await;
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (413, "too_large"),
            "{path}: {message}"
        );
        assert!(
            message.contains("max_message_bytes = 32"),
            "{path}: {message}"
        );
        let res = post(&node, path, None, vec![7u8; 65]).await;
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (413, "too_large"),
            "{path}: {message}"
        );
        assert!(message.contains("max_body_bytes = 64"), "{path}: {message}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "only the payloads within the limit"
    );
    node.stop().await.unwrap();
}

/// "any other type is kept as raw bytes with that content type": the handler and the trace see
/// the content type exactly as sent (parameters and case included); JSON is recognised with
/// a charset, in capitals and as `+json`, and shown as `payload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_types_are_kept_exactly_as_sent() {
    let node = TestNode::start(crate::common::MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("sink", "docs.#", forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let cases: [(&str, &[u8], Option<Value>); 4] = [
        ("text/plain; charset=utf-8", b"hello", None),
        ("Application/JSON", br#"{"a": 1}"#, Some(json!({"a": 1}))),
        (
            "application/json; charset=UTF-8",
            b"[true]",
            Some(json!([true])),
        ),
        (
            "application/problem+json",
            br#"{"title": "x"}"#,
            Some(json!({"title": "x"})),
        ),
    ];
    for (i, (ct, bytes, json_form)) in cases.into_iter().enumerate() {
        let id = format!("doc-{i}");
        let res = client()
            .post(node.url("/v1/publish/docs.new"))
            .header("content-type", ct)
            .header("x-message-id", &id)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{ct}");
        let env = recv(&mut rx, ct).await;
        assert_eq!(env.content_type(), ct);
        assert_eq!(&env.payload[..], bytes, "{ct}");
        let trace = get_json(&node, &format!("/v1/trace/{id}")).await;
        let msg = &trace["messages"][0];
        assert_eq!(msg["content_type"], ct, "{trace}");
        match json_form {
            Some(v) => assert_eq!(msg["payload"], v, "{ct}: {trace}"),
            None => assert!(
                msg["payload"].is_null() && msg["payload_base64"].is_string(),
                "{ct}: {trace}"
            ),
        }
    }
    node.stop().await.unwrap();
}

/// Node-owned headers written by a client on a send (`x-meta-principal`,
/// `x-meta-replayed-from`, `x-meta-replay-count`, any case) are dropped; the rest of the
/// command, its other `x-meta-` headers included, goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cannot_forge_node_owned_headers() {
    let node = TestNode::start(crate::common::MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    handle(
        &node,
        "admin-ops",
        "ops.run",
        handler_fn(move |env: Envelope| {
            let tx = tx.clone();
            async move {
                let reply = env.reply("null");
                let _ = tx.send(env);
                Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
            }
        }),
    )
    .await;
    let res = client()
        .post(node.url("/v1/request/ops.run?timeout_ms=5000"))
        .header("x-meta-principal", "root")
        .header("X-Meta-Replayed-From", "billing")
        .header("x-meta-replay-count", "3")
        .header("x-meta-ticket", "T-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let env = recv(&mut rx, "the request").await;
    assert_eq!(env.header("principal"), Some("anonymous"));
    assert_eq!(env.header("replayed-from"), None);
    assert_eq!(env.header("replay-count"), None);
    assert_eq!(env.header("ticket"), Some("T-1"));
    node.stop().await.unwrap();
}

/// Ids at the documented length limit: a 256-character `x-message-id` and `x-causation-id`
/// are kept exactly; a 257-character message id is kept in the `message-id` header and the
/// command gets a ULID (as documented), while a 257-character causation id is `400 bad_header`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_at_256_characters_are_kept_and_at_257_are_handled_as_documented() {
    let node = TestNode::start(crate::common::MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    handle(
        &node,
        "ids",
        "ids.check",
        handler_fn(move |env: Envelope| {
            let tx = tx.clone();
            async move {
                let reply = env.reply("null");
                let _ = tx.send(env);
                Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
            }
        }),
    )
    .await;
    let id256: String = "a-~!".repeat(64);
    let id257 = format!("{id256}z");
    let res = client()
        .post(node.url("/v1/send/ids.check"))
        .header("x-message-id", &id256)
        .header("x-causation-id", &id256)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], id256.as_str(), "{body}");
    let env = recv(&mut rx, "the 256 command").await;
    assert_eq!(env.id.to_string(), id256);
    assert_eq!(
        env.causation_id().map(ToString::to_string),
        Some(id256.clone())
    );

    let res = client()
        .post(node.url("/v1/send/ids.check"))
        .header("x-message-id", &id257)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let given = body["id"].as_str().unwrap();
    assert!(
        given.parse::<switchyard::MessageId>().is_ok() && given.len() == 26,
        "{body}"
    );
    let env = recv(&mut rx, "the 257 command").await;
    assert_eq!(env.header("message-id"), Some(id257.as_str()));
    assert_eq!(env.id.to_string(), given);

    let res = client()
        .post(node.url("/v1/send/ids.check"))
        .header("x-causation-id", &id257)
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "bad_header"), "{message}");
    node.stop().await.unwrap();
}
