//! Auth on the socket: the bearer header or `?token=`, and every subscribe, publish,
//! handle and send checked against the principal's grants.

use serde_json::json;
use switchyard_node::auth::sha256_hex;
use tokio_tungstenite::tungstenite;

use crate::support::{Client, TestNode};

const ALICE: &str = "alice-secret-token";
const ADMIN: &str = "admin-secret-token";

fn config() -> String {
    format!(
        r#"
[auth]
enabled = true
[[auth.tokens]]
principal = "alice"
sha256 = "{}"
[[auth.tokens]]
principal = "ops"
sha256 = "{}"
[[auth.principals]]
name = "alice"
publish = ["orders.#"]
subscribe = ["orders.#"]
send = ["orders.cancel"]
[[auth.principals]]
name = "ops"
admin = true
"#,
        sha256_hex(ALICE.as_bytes()),
        sha256_hex(ADMIN.as_bytes())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_needs_a_valid_token_in_the_header_or_the_query() {
    let node = TestNode::start(&config()).await;
    for token in [None, Some("wrong")] {
        match Client::try_connect(&node.ws_url(), token).await {
            Err(tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 401);
                let body: serde_json::Value =
                    serde_json::from_slice(res.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["kind"], "unauthenticated");
            }
            Err(e) => panic!("expected a 401 answer, got {e}"),
            Ok(_) => panic!("connected without a valid token ({token:?})"),
        }
    }
    let mut by_header = Client::connect(&node.ws_url(), Some(ALICE)).await;
    by_header.subscribe("orders.#", json!({})).await;
    let mut by_query = Client::connect(&format!("{}?token={ALICE}", node.ws_url()), None).await;
    by_query.subscribe("orders.#", json!({})).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_is_checked_against_the_principals_grants_and_nothing_denied_gets_through() {
    let node = TestNode::start(&config()).await;
    let mut watcher = Client::connect(&node.ws_url(), Some(ALICE)).await;
    watcher.subscribe("orders.#", json!({})).await;
    let payments = switchyard::testkit::Recorder::start(&node.bus, "payments.#")
        .await
        .unwrap();

    let mut alice = Client::connect(&node.ws_url(), Some(ALICE)).await;
    let denied = [
        json!({"op": "subscribe", "id": 1, "pattern": "payments.#"}),
        json!({"op": "subscribe", "id": 2, "pattern": "#"}),
        json!({"op": "publish", "id": 3, "topic": "payments.made", "payload": {}}),
        json!({"op": "publish_batch", "id": 4, "messages": [
            {"topic": "orders.ok", "payload": 1}, {"topic": "payments.made", "payload": 2}]}),
        json!({"op": "handle", "id": 5, "topic": "payments.refund"}),
        json!({"op": "send", "id": 6, "topic": "payments.refund", "payload": {}}),
        json!({"op": "request", "id": 7, "topic": "orders.place", "payload": {}}),
    ];
    for frame in denied {
        let v = alice.ask(frame.clone()).await;
        assert_eq!(v["op"], "error", "{frame} → {v}");
        assert_eq!(v["id"], frame["id"]);
        assert_eq!(v["error"]["kind"], "forbidden", "{frame} → {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("alice"),
            "the reason names the principal: {v}"
        );
    }
    // Allowed ones still work on the same connection.
    let v = alice
        .ask(json!({"op": "publish", "id": 8, "topic": "orders.placed", "payload": {"n": 1}}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    let v = alice
        .ask(json!({"op": "handle", "id": 9, "topic": "orders.cancel"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");

    // Nothing denied reached anyone: the watcher's first message is the allowed publish,
    // the recorder on payments.# saw nothing.
    let m = watcher.expect("message").await;
    assert_eq!(m["message"]["topic"], "orders.placed");
    assert_eq!(m["message"]["headers"]["principal"], "alice");
    node.bus.run_until_idle().await;
    assert!(payments.envelopes().is_empty());

    // Denials are counted.
    let stats: serde_json::Value = reqwest::Client::new()
        .get(node.http("/v1/stats"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let forbidden = &stats["denials"]["forbidden"];
    assert_eq!(forbidden["subscribe"], 2, "{stats}");
    assert_eq!(forbidden["publish"], 2, "{stats}");
    assert_eq!(forbidden["send"], 3, "{stats}");
    node.stop().await;
}
