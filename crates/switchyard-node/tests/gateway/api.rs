//! Publish, send, request and the registry.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{Envelope, MessageId, Outcome, handler_fn};
use tokio::sync::{Notify, mpsc};

use crate::common::{MEMORY, TestNode, client, error_of, forward, recv};

#[tokio::test]
async fn a_json_publish_reaches_subscribers_with_its_headers() {
    let node = TestNode::start(MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("orders-audit", "orders.#", forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let correlation = MessageId::new();
    let res = client()
        .post(node.url("/v1/publish/orders.placed"))
        .header("content-type", "application/json")
        .header("x-correlation-id", correlation.to_string())
        .header("x-meta-tenant", "acme")
        .header("x-priority", "200")
        .header("x-source", "shop")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(r#"{"id": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["correlation_id"], correlation.to_string());

    let env = recv(&mut rx, "the published event").await;
    assert_eq!(env.id.to_string(), id);
    assert_eq!(env.topic.as_str(), "orders.placed");
    assert_eq!(env.correlation_id, correlation);
    assert_eq!(env.header("tenant"), Some("acme"));
    assert_eq!(env.header("principal"), Some("anonymous"));
    assert_eq!(
        env.header("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(env.priority.0, 200);
    assert_eq!(env.source(), Some("shop"));
    assert_eq!(env.content_type(), "application/json");
    assert_eq!(
        serde_json::from_slice::<Value>(&env.payload).unwrap(),
        json!({"id": 7})
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn raw_bytes_keep_their_content_type_and_dedup_ids_are_kept() {
    let node = TestNode::start(MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("raw", "blobs.#", forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let ulid = MessageId::new();
    let res = http
        .post(node.url("/v1/publish/blobs.image"))
        .header("content-type", "image/png")
        .header("x-message-id", ulid.to_string())
        .body(vec![0u8, 159, 255, 10])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let env = recv(&mut rx, "the raw message").await;
    assert_eq!(env.id, ulid, "a ULID x-message-id becomes the message id");
    assert_eq!(env.content_type(), "image/png");
    assert_eq!(&env.payload[..], &[0u8, 159, 255, 10]);

    let res = http
        .post(node.url("/v1/publish/blobs.text"))
        .body("plain")
        .header("x-message-id", "order-42")
        .header("x-correlation-id", "6f1c2a9e-4b7d-4c3e-9a51-0d2e8f7b3c14")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], "order-42");
    let env = recv(&mut rx, "the second message").await;
    assert_eq!(
        env.id.to_string(),
        "order-42",
        "a foreign id is the message id"
    );
    assert_eq!(
        env.correlation_id.to_string(),
        "6f1c2a9e-4b7d-4c3e-9a51-0d2e8f7b3c14",
        "a foreign correlation id is kept as it is"
    );
    assert_eq!(env.header("message-id"), None);
    assert_eq!(env.header("correlation-id"), None);

    // Not a valid id (a space): kept in a header, the message gets an id of its own.
    let res = http
        .post(node.url("/v1/publish/blobs.text"))
        .body("plain")
        .header("x-message-id", "order 42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let env = recv(&mut rx, "the third message").await;
    assert!(env.id.is_ulid());
    assert_eq!(env.header("message-id"), Some("order 42"));
    assert_eq!(env.content_type(), "application/octet-stream");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn send_returns_the_handlers_reply_and_typed_errors() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .handle_envelope(
            "user-service",
            "users.create",
            handler_fn(|env: Envelope| async move {
                let input: Value = serde_json::from_slice(&env.payload)?;
                let name = input["name"].as_str().unwrap_or_default().to_owned();
                let reply = env.reply(serde_json::to_vec(&json!({"id": name.len()}))?);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Outcome::reply(reply))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    node.bus
        .handle_envelope(
            "picky",
            "users.delete",
            handler_fn(|_env: Envelope| async move {
                Ok::<_, std::convert::Infallible>(Outcome::reject("users are never deleted"))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let res = http
        .post(node.url("/v1/send/users.create"))
        .header("content-type", "application/json")
        .body(r#"{"name": "ada"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["payload"], json!({"id": 3}));
    assert_eq!(body["attempts"], 1);
    assert_eq!(body["content_type"], "application/json");
    assert!(body["id"].as_str().unwrap().parse::<MessageId>().is_ok());

    let res = http
        .post(node.url("/v1/send/users.unknown"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (404, "no_handler"));
    assert!(message.contains("users.unknown"), "{message}");

    let res = http
        .post(node.url("/v1/send/users.delete"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (422, "handler_rejected"));
    assert!(message.contains("never deleted"), "{message}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_handler_gives_handler_failed() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .handle_envelope(
            "broken",
            "jobs.run",
            handler_fn(|_env: Envelope| async move {
                Err::<Outcome, _>(std::io::Error::other("database down"))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let res = client()
        .post(node.url("/v1/send/jobs.run"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (422, "handler_failed"));
    assert!(message.contains("database down"), "{message}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_past_its_deadline_is_a_504() {
    let node = TestNode::start(MEMORY).await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    node.bus
        .handle_envelope(
            "slow",
            "reports.build",
            handler_fn(move |env: Envelope| {
                let r = r.clone();
                async move {
                    r.notified().await;
                    Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply("\"late\"")))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let res = http
        .post(node.url("/v1/request/reports.build?timeout_ms=50"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (504, "timeout"));
    release.notify_one();

    // Within the deadline, the reply comes back.
    release.notify_one();
    let res = http
        .post(node.url("/v1/request/reports.build?timeout_ms=5000"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["payload"], json!("late"));
    node.stop().await.unwrap();
}

#[tokio::test]
async fn topics_and_subscriptions_list_the_registry() {
    let node = TestNode::start(MEMORY).await;
    let (tx, _rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("mailer", "users.#", forward(tx.clone()))
        .workers(2)
        .start()
        .await
        .unwrap()
        .detach();
    node.bus
        .handle_envelope("creator", "users.create", forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let topics: Value = http
        .get(node.url("/v1/topics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let topics = topics["topics"].as_array().unwrap();
    assert!(
        topics
            .contains(&json!({"pattern": "users.#", "subscriptions": ["mailer"], "kind": "event"})),
        "{topics:?}"
    );
    assert!(
        topics.contains(
            &json!({"pattern": "users.create", "subscriptions": ["creator"], "kind": "command"})
        ),
        "{topics:?}"
    );

    let subs: Value = http
        .get(node.url("/v1/subscriptions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mailer = subs["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "mailer")
        .expect("mailer listed")
        .clone();
    assert_eq!(mailer["workers"], 2);
    assert_eq!(mailer["queue_capacity"], 1024);
    assert_eq!(mailer["kind"], "event");
    for key in [
        "overflow",
        "depth",
        "in_flight",
        "handled",
        "failed",
        "dead_lettered",
    ] {
        assert!(mailer.get(key).is_some(), "{key} missing in {mailer}");
    }
    node.stop().await.unwrap();
}

/// The router embedded without `serve` (as another axum app would): once the node shuts
/// down, publishes get 503 shutting_down and /ready says why, instead of a hang or a 500.
#[tokio::test]
async fn after_shutdown_publishes_are_503_and_ready_says_why() {
    use tower::ServiceExt;
    let config = switchyard_node::NodeConfig::from_toml(MEMORY).unwrap();
    let node = switchyard_node::Node::start(config).await.unwrap();
    let router = node.router();
    node.shutdown().await.unwrap();
    let req = axum::http::Request::post("/v1/publish/a.b")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["kind"], "shutting_down");
    let res = router
        .oneshot(
            axum::http::Request::get("/ready")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["reasons"][0], "node is shutting down");
    let _ = Duration::ZERO;
}
