//! Review rev3: outside-in attacks on the gateway's dead-letter queue and replay
//! (docs/gateway.md "Dead letters", README "nothing is lost").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use tokio::sync::mpsc;

use crate::common::{MEMORY, TestNode, client, get_json, recv};
use crate::live::Events;

/// `billing` on `billing.#`, rejecting everything (so every delivery is dead-lettered).
async fn always_rejecting(node: &TestNode) {
    node.bus
        .subscribe(
            "billing",
            "billing.#",
            handler_fn(|_env: Envelope| async {
                Ok::<_, std::convert::Infallible>(Outcome::reject("card declined"))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
}

async fn publish_json(node: &TestNode, topic: &str) -> String {
    let res = client()
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json")
        .body(r#"{"amount": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn replay_ids(node: &TestNode, ids: &[&str]) -> Value {
    let res = client()
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({ "ids": ids }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn dlq_status(node: &TestNode, id: &str) -> u16 {
    client()
        .get(node.url(&format!("/v1/dlq/{id}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Two operators replaying the same entry at once: the entry is re-published once (it
/// leaves the queue with the first replay; the second finds nothing to replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_of_one_entry_replay_it_once() {
    let node = TestNode::start(MEMORY).await;
    let replayed = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        let replayed = replayed.clone();
        node.bus
            .subscribe(
                "billing",
                "billing.#",
                handler_fn(move |env: Envelope| {
                    let replayed = replayed.clone();
                    let tx = tx.clone();
                    async move {
                        if env.header("replay-count").is_none() {
                            return Ok::<_, std::convert::Infallible>(Outcome::reject("declined"));
                        }
                        replayed.fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(env.id.to_string());
                        Ok(Outcome::Ack)
                    }
                }),
            )
            .start()
            .await
            .unwrap()
            .detach();
    }
    let mut events = Events::open(&node, None).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(publish_json(&node, "billing.charge").await);
        events
            .until("dead_letter", |v| v["topic"] == "billing.charge")
            .await;
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (a, b) = tokio::join!(replay_ids(&node, &refs), replay_ids(&node, &refs));
    let total = a["replayed"].as_u64().unwrap() + b["replayed"].as_u64().unwrap();
    for _ in 0..total {
        recv(&mut rx, "a replayed delivery").await;
    }
    node.bus.run_until_idle().await;
    assert_eq!(
        total, 20,
        "20 entries, replayed by two requests at once: each replayed once ({a} / {b})"
    );
    assert_eq!(replayed.load(Ordering::SeqCst), 20);
    node.stop().await.unwrap();
}

fn log_config(dir: &std::path::Path) -> String {
    format!(
        "[transport]\nkind = \"log\"\ndata_dir = \"{}\"\n",
        dir.display()
    )
}

/// On the log transport the dead-letter queue is a file that survives restarts: a message
/// with raw (non-UTF-8) bytes dead-lettered before a restart is listed after it with the
/// same bytes, and a replay after the restart delivers exactly those bytes.
#[tokio::test]
async fn raw_bytes_dead_lettered_before_a_restart_are_replayed_intact_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = vec![0x00, 0xff, 0xfe, b'\n', 0x80, b'"', b'\\', 0x7f];
    let node = TestNode::start(&log_config(dir.path())).await;
    always_rejecting(&node).await;
    let mut events = Events::open(&node, None).await;
    let res = client()
        .post(node.url("/v1/publish/billing.raw"))
        .header("content-type", "application/x-custom")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    events
        .until("dead_letter", |v| v["topic"] == "billing.raw")
        .await;
    drop(events);
    node.stop().await.unwrap();

    let node = TestNode::start(&log_config(dir.path())).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("billing", "billing.#", crate::common::forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let item: Value = get_json(&node, &format!("/v1/dlq/{id}")).await;
    assert_eq!(item["message"]["content_type"], "application/x-custom");
    assert!(item["message"]["payload_base64"].is_string(), "{item}");
    let report = replay_ids(&node, &[&id]).await;
    assert_eq!(report, json!({"replayed": 1, "failed": []}));
    let env = recv(&mut rx, "the replayed raw message").await;
    assert_eq!(env.id.to_string(), id);
    assert_eq!(env.payload.to_vec(), payload);
    assert_eq!(env.content_type(), "application/x-custom");
    node.stop().await.unwrap();
}

/// A torn last line in the dead-letter journal (a crash in the middle of a write) must not
/// cost the entries before it, and entries dead-lettered after the restart are kept too.
#[tokio::test]
async fn a_torn_dead_letter_journal_keeps_earlier_and_later_entries() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&log_config(dir.path())).await;
    always_rejecting(&node).await;
    let mut events = Events::open(&node, None).await;
    let first = publish_json(&node, "billing.one").await;
    events
        .until("dead_letter", |v| v["topic"] == "billing.one")
        .await;
    drop(events);
    node.stop().await.unwrap();

    let journal = dir.path().join("dead-letters.jsonl");
    let mut bytes = std::fs::read(&journal).unwrap();
    assert!(bytes.ends_with(b"\n"));
    bytes.extend_from_slice(br#"{"op":"put","letter":{"envel"#);
    std::fs::write(&journal, &bytes).unwrap();

    let node = TestNode::start(&log_config(dir.path())).await;
    always_rejecting(&node).await;
    assert_eq!(dlq_status(&node, &first).await, 200);
    let mut events = Events::open(&node, None).await;
    let second = publish_json(&node, "billing.two").await;
    events
        .until("dead_letter", |v| v["topic"] == "billing.two")
        .await;
    drop(events);
    node.stop().await.unwrap();

    let node = TestNode::start(&log_config(dir.path())).await;
    assert_eq!(dlq_status(&node, &first).await, 200);
    assert_eq!(dlq_status(&node, &second).await, 200);
    node.stop().await.unwrap();
}

fn auth_config() -> String {
    let t = |s: &str| switchyard_node::auth::sha256_hex(s.as_bytes());
    format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "shop"
publish = ["orders.#"]
send = ["users.*"]
[[auth.tokens]]
principal = "shop"
sha256 = "{}"
"#,
        t("shop-token")
    )
}

/// "The gateway stamps the `principal` header on everything it publishes": a client cannot
/// pass itself off as another principal through `x-meta-principal`.
#[tokio::test]
async fn a_client_cannot_spoof_the_principal_header_over_http() {
    let node = TestNode::start(&auth_config()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("audit", "orders.#", crate::common::forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let res = client()
        .post(node.url("/v1/publish/orders.placed"))
        .bearer_auth("shop-token")
        .header("content-type", "application/json")
        .header("x-meta-principal", "root")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let env = recv(&mut rx, "the published order").await;
    assert_eq!(env.header("principal"), Some("shop"));
    node.stop().await.unwrap();
}

/// A JSON content type with parameters or in another case is still JSON: a body that does
/// not parse is `400 malformed_json`, never stored as JSON that is not.
#[tokio::test]
async fn json_with_a_charset_or_in_capitals_is_still_checked() {
    let node = TestNode::start(MEMORY).await;
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/cloudevents+json",
    ] {
        let res = client()
            .post(node.url("/v1/publish/a.b"))
            .header("content-type", ct)
            .body(r#"{"id": 7,"#)
            .send()
            .await
            .unwrap();
        let (status, kind, _) = crate::common::error_of(res).await;
        assert_eq!((status, kind.as_str()), (400, "malformed_json"), "{ct}");
    }
    node.stop().await.unwrap();
}

/// Typed errors for bad input on the DLQ and command routes (docs/gateway.md, Errors).
#[tokio::test]
async fn bad_input_on_dlq_and_command_routes_is_typed() {
    let node = TestNode::start(MEMORY).await;
    let http = client();
    for (path, status, want) in [
        ("/v1/dlq?limit=0", 400, "bad_query"),
        ("/v1/dlq?limit=1001", 400, "bad_query"),
        ("/v1/dlq?since=yesterday", 400, "bad_query"),
        ("/v1/dlq/a%20b", 400, "bad_request"),
        ("/v1/dlq/01ARZ3NDEKTSV4RRFFQ69G5FAV", 404, "not_found"),
    ] {
        let res = http.get(node.url(path)).send().await.unwrap();
        let (s, kind, message) = crate::common::error_of(res).await;
        assert_eq!((s, kind.as_str()), (status, want), "{path}: {message}");
    }
    for (path, status, want) in [
        ("/v1/publish/orders.*", 400, "invalid_topic"),
        ("/v1/publish/orders.%23", 400, "invalid_topic"),
        ("/v1/send/users.nobody", 404, "no_handler"),
        ("/v1/request/users.nobody?timeout_ms=0", 400, "bad_query"),
        ("/v1/request/users.nobody?timeout_ms=-5", 400, "bad_query"),
    ] {
        let res = http
            .post(node.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let (s, kind, message) = crate::common::error_of(res).await;
        assert_eq!((s, kind.as_str()), (status, want), "{path}: {message}");
    }
    node.stop().await.unwrap();
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
}

impl switchyard::Message for Order {
    const TOPIC: &'static str = "orders.placed";
}

/// "nothing is lost": a gateway publish a typed subscription cannot decode (raw bytes, or
/// JSON of the wrong shape) is dead-lettered with its raw bytes, exactly as published, and
/// `GET /v1/dlq/{id}` shows those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_gateway_publishes_are_dead_lettered_with_their_exact_bytes() {
    use base64::Engine as _;
    let node = TestNode::start(MEMORY).await;
    node.bus
        .on("orders", |_o: Order, _ctx| async {
            Ok::<_, std::convert::Infallible>(())
        })
        .start()
        .await
        .unwrap()
        .detach();
    let mut events = Events::open(&node, None).await;
    let cases: [(&str, Vec<u8>); 2] = [
        (
            "application/octet-stream",
            vec![0xff, 0x00, 0xc3, 0x28, b'{'],
        ),
        (
            "application/json",
            br#"{"id": "not a number", "x": [1, 2]}"#.to_vec(),
        ),
    ];
    for (ct, body) in cases {
        let res = client()
            .post(node.url("/v1/publish/orders.placed"))
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{ct}");
        let id = res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        events
            .until("dead_letter", |v| v["topic"] == "orders.placed")
            .await;
        let item: Value = get_json(&node, &format!("/v1/dlq/{id}")).await;
        let message = &item["message"];
        let stored = match message["payload_base64"].as_str() {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            None => serde_json::to_vec(&message["payload"]).unwrap(),
        };
        if message["payload_base64"].is_string() {
            assert_eq!(stored, body, "{ct}: the raw bytes, exactly: {item}");
        } else {
            // Shown as JSON: the same value (the bytes parse).
            let want: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(message["payload"], want, "{ct}: {item}");
        }
        assert_eq!(message["content_type"], ct, "{item}");
    }
    node.stop().await.unwrap();
}

/// A subscription that rejects a first delivery and forwards a replayed one.
async fn rejecting_first(node: &TestNode, name: &'static str, tx: mpsc::UnboundedSender<String>) {
    node.bus
        .subscribe(
            name,
            "billing.#",
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    if env.header("replay-count").is_none() {
                        return Ok::<_, std::convert::Infallible>(Outcome::reject("declined"));
                    }
                    let _ = tx.send(name.to_owned());
                    Ok(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
}

/// One event rejected by two subscriptions is two entries (one per handler, same id). A
/// replay of `{"all": true}` must publish the message once: each subscription handles it
/// once, not once per entry.
#[tokio::test]
async fn replaying_all_publishes_a_message_with_two_entries_once() {
    let node = TestNode::start(MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    rejecting_first(&node, "billing-a", tx.clone()).await;
    rejecting_first(&node, "billing-b", tx).await;
    let id = publish_json(&node, "billing.charge").await;
    node.bus.run_until_idle().await;
    let list: Value = get_json(&node, "/v1/dlq").await;
    assert_eq!(list["total"], 2, "one entry per handler: {list}");

    let res = client()
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    let report: Value = res.json().await.unwrap();
    node.bus.run_until_idle().await;
    let mut handled = Vec::new();
    while let Ok(name) = rx.try_recv() {
        handled.push(name);
    }
    handled.sort();
    assert_eq!(
        dlq_status(&node, &id).await,
        404,
        "both entries left the queue"
    );
    assert_eq!(
        handled,
        vec!["billing-a".to_owned(), "billing-b".to_owned()],
        "each subscription handles the replayed message once (report {report})"
    );
    node.stop().await.unwrap();
}

/// The same two entries replayed by id: the message is published once and both entries
/// leave the queue.
#[tokio::test]
async fn replaying_by_id_publishes_a_message_with_two_entries_once() {
    let node = TestNode::start(MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    rejecting_first(&node, "billing-a", tx.clone()).await;
    rejecting_first(&node, "billing-b", tx).await;
    let id = publish_json(&node, "billing.charge").await;
    node.bus.run_until_idle().await;
    let report = replay_ids(&node, &[&id]).await;
    assert_eq!(report, json!({"replayed": 1, "failed": []}));
    node.bus.run_until_idle().await;
    let mut handled = Vec::new();
    while let Ok(name) = rx.try_recv() {
        handled.push(name);
    }
    handled.sort();
    assert_eq!(
        handled,
        vec!["billing-a".to_owned(), "billing-b".to_owned()]
    );
    assert_eq!(dlq_status(&node, &id).await, 404);
    node.stop().await.unwrap();
}

/// `x-message-id`: "any 1-256 visible ASCII characters ... a value that is not a valid id
/// (a space, non-ASCII) is kept in the `message-id` header and the message gets a ULID";
/// the same for a 257-character value, and for `x-correlation-id`.
#[tokio::test]
async fn an_invalid_x_message_id_is_kept_in_a_header_and_replaced() {
    let node = TestNode::start(MEMORY).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("ids", "ids.#", crate::common::forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let long = "x".repeat(257);
    let max = "y".repeat(256);
    for (given, valid) in [
        ("order 42", false),
        (long.as_str(), false),
        (max.as_str(), true),
        ("order-42", true),
    ] {
        let res = client()
            .post(node.url("/v1/publish/ids.a"))
            .header("content-type", "application/json")
            .header("x-message-id", given)
            .header("x-correlation-id", given)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{given}");
        let body: Value = res.json().await.unwrap();
        let env = recv(&mut rx, "the published message").await;
        assert_eq!(body["id"].as_str(), Some(env.id.to_string().as_str()));
        if valid {
            assert_eq!(env.id.to_string(), given);
            assert_eq!(env.correlation_id.to_string(), given);
        } else {
            assert_ne!(env.id.to_string(), given);
            assert_eq!(env.header("message-id"), Some(given), "kept in a header");
            assert_eq!(
                env.header("correlation-id"),
                Some(given),
                "kept in a header"
            );
        }
    }
    node.stop().await.unwrap();
}
