//! Remote handlers (`handle`, `command`, `result`) and `send` / `request` from a client.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::{Command, Envelope, Message, Outcome, SendError};

use crate::support::{TestNode, WAIT};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CreateUser {
    name: String,
}
impl Message for CreateUser {
    const TOPIC: &'static str = "users.create";
}
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Created {
    id: u64,
    name: String,
}
impl Command for CreateUser {
    type Output = Created;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_in_rust_is_executed_by_a_websocket_client() {
    let node = TestNode::start("").await;
    let mut worker = node.client().await;
    let v = worker
        .ask(json!({"op": "handle", "id": "h", "topic": "users.create"}))
        .await;
    let name = v["name"].as_str().unwrap_or_default().to_owned();
    assert!(name.starts_with("ws-handler:anonymous:"), "{v}");
    assert_eq!(
        v,
        json!({"op": "handling", "id": "h", "topic": "users.create", "name": name})
    );

    let bus = node.bus.clone();
    let sent = tokio::spawn(async move { bus.send(CreateUser { name: "ada".into() }).await });
    let cmd = worker.expect("command").await;
    assert_eq!(cmd["message"]["kind"], "command");
    assert_eq!(cmd["message"]["topic"], "users.create");
    assert_eq!(cmd["message"]["payload"], json!({"name": "ada"}));
    worker
        .send(json!({"op": "result", "call": cmd["call"], "ok": true,
                     "payload": {"id": 7, "name": "ada"}}))
        .await;
    let created = tokio::time::timeout(WAIT, sent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        created,
        Created {
            id: 7,
            name: "ada".into()
        }
    );
    // The registration is visible like any handler.
    assert!(
        node.bus
            .registry()
            .iter()
            .any(|s| s.pattern == "users.create" && s.name.starts_with("ws-handler:anonymous:"))
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_over_http_is_executed_by_a_websocket_client() {
    let node = TestNode::start("").await;
    let mut worker = node.client().await;
    worker
        .ask(json!({"op": "handle", "id": "h", "topic": "users.create"}))
        .await;
    let http = reqwest::Client::new();
    let url = node.http("/v1/send/users.create");
    let sent = tokio::spawn({
        let http = http.clone();
        let url = url.clone();
        async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(r#"{"name":"grace"}"#)
                .send()
                .await
                .unwrap()
        }
    });
    let cmd = worker.expect("command").await;
    assert_eq!(cmd["message"]["payload"], json!({"name": "grace"}));
    worker
        .send(json!({"op": "result", "call": cmd["call"], "ok": true, "payload": {"id": 8}}))
        .await;
    let res = tokio::time::timeout(WAIT, sent).await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["payload"], json!({"id": 8}));
    assert_eq!(body["content_type"], "application/json");

    // A rejection comes back as 422 handler_rejected, at once (not retried).
    let sent = tokio::spawn(async move {
        http.post(url)
            .header("content-type", "application/json")
            .body(r#"{"name":""}"#)
            .send()
            .await
            .unwrap()
    });
    let cmd = worker.expect("command").await;
    worker
        .send(json!({"op": "result", "call": cmd["call"], "ok": false,
                     "error": "name must not be empty", "reject": true}))
        .await;
    let res = tokio::time::timeout(WAIT, sent).await.unwrap().unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "handler_rejected");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("name must not be empty")
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_handler_disconnecting_mid_command_fails_the_sender_at_once() {
    let node = TestNode::start("").await;
    let mut worker = node.client().await;
    worker
        .ask(json!({"op": "handle", "id": "h", "topic": "users.create"}))
        .await;
    let bus = node.bus.clone();
    let sent = tokio::spawn(async move {
        bus.send(CreateUser {
            name: "linus".into(),
        })
        .await
    });
    worker.expect("command").await;
    worker.close().await; // never answers
    // The handler's own deadline is 30 s; the sender hears within the guard below.
    let result = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("the sender must not hang until a timeout")
        .unwrap();
    match result {
        Err(SendError::Failed { error, attempts }) => {
            assert!(error.contains("remote handler disconnected"), "{error}");
            assert_eq!(attempts, 1, "not retried");
        }
        other => panic!("expected SendError::Failed, got {other:?}"),
    }
    // The registration went with the connection: the next command has no handler.
    let next = node
        .bus
        .send(CreateUser {
            name: "again".into(),
        })
        .await;
    assert!(matches!(next, Err(SendError::NoHandler { .. })), "{next:?}");
    let res = reqwest::Client::new()
        .post(node.http("/v1/send/users.create"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sends_and_requests_commands_handled_in_rust() {
    let node = TestNode::start("").await;
    let _double = node
        .bus
        .handle_envelope(
            "double",
            "math.double",
            switchyard::handler_fn(|env: Envelope| async move {
                let v: Value = serde_json::from_slice(&env.payload)?;
                let n = v["n"].as_i64().unwrap_or_default();
                if n < 0 {
                    return Ok::<_, serde_json::Error>(Outcome::reject("negative"));
                }
                Ok(Outcome::reply(env.reply(json!({"n": n * 2}).to_string())))
            }),
        )
        .start()
        .await
        .unwrap();
    // Answers only once the test opens the gate (before stopping the node).
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let _slow = node
        .bus
        .handle_envelope(
            "slow",
            "math.slow",
            switchyard::handler_fn(move |_env: Envelope| {
                let held = held.clone();
                async move {
                    let _ = held.acquire().await;
                    Ok::<_, std::convert::Infallible>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let mut c = node.client().await;
    let v = c
        .ask(json!({"op": "send", "id": "s1", "topic": "math.double", "payload": {"n": 21}}))
        .await;
    assert_eq!(v["op"], "reply", "{v}");
    assert_eq!(v["id"], "s1");
    assert_eq!(v["payload"], json!({"n": 42}));
    assert_eq!(v["attempts"], 1);
    assert!(v["message_id"].is_string());

    let v = c
        .ask(json!({"op": "request", "id": "r1", "topic": "math.double", "payload": {"n": -1}}))
        .await;
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["id"], "r1");
    assert_eq!(v["error"]["kind"], "handler_rejected");

    let v = c
        .ask(json!({"op": "request", "id": "r2", "topic": "nobody.home", "payload": {}}))
        .await;
    assert_eq!(v["error"]["kind"], "no_handler", "{v}");

    let v = c
        .ask(json!({"op": "request", "id": "r3", "topic": "math.slow", "payload": {}, "timeout_ms": 50}))
        .await;
    assert_eq!(v["error"]["kind"], "timeout", "{v}");
    assert_eq!(v["id"], "r3");

    // A slow call does not hold the connection up: the publish behind it is answered first.
    c.send(json!({"op": "request", "id": "slow", "topic": "math.slow", "payload": {}, "timeout_ms": 2000}))
        .await;
    let v = c
        .ask(json!({"op": "publish", "id": "p", "topic": "x.y", "payload": 1}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    assert_eq!(c.expect("error").await["id"], "slow");
    gate.add_permits(16);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_handler_for_a_topic_and_unknown_calls_are_refused() {
    let node = TestNode::start("").await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    a.ask(json!({"op": "handle", "id": 1, "topic": "t.x"}))
        .await;
    let v = b
        .ask(json!({"op": "handle", "id": 2, "topic": "t.x"}))
        .await;
    assert_eq!(v["op"], "error");
    assert_eq!(v["error"]["kind"], "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already has a handler"),
        "{v}"
    );
    let v = a
        .ask(json!({"op": "result", "id": 3, "call": "999", "ok": true, "payload": 1}))
        .await;
    assert_eq!(v["error"]["kind"], "not_found", "{v}");
    let v = a
        .ask(json!({"op": "unhandle", "id": 4, "topic": "t.x"}))
        .await;
    assert_eq!(v["op"], "unhandled");
    let v = b
        .ask(json!({"op": "handle", "id": 5, "topic": "t.x"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");
    node.stop().await;
}
