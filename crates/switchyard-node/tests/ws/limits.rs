//! Connection limits: a frame over `ws.max_frame_bytes` closes the connection with 1009
//! naming the limit; past `ws.max_connections` (or a principal past
//! `ws.max_connections_per_principal`) the upgrade is refused with 503 while the connections
//! already open keep working.

use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use switchyard_node::auth::sha256_hex;

use crate::support::{Client, TestNode, WAIT, eventually};

/// Reads until the close frame (skipping text, pings and pongs) and returns it.
async fn close_frame(c: &mut Client) -> (CloseCode, String) {
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("no close in time")
            .expect("stream ended without a close frame")
            .expect("read failed");
        match msg {
            Message::Close(Some(frame)) => return (frame.code, frame.reason.as_str().to_owned()),
            Message::Close(None) => panic!("a close frame without a code"),
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_closes_the_connection_with_1009_naming_it() {
    let node = TestNode::start("[ws]\nmax_frame_bytes = 4096").await;
    let mut c = node.client().await;
    // Under the limit: an ordinary answer.
    let v = c
        .ask(json!({"op": "publish", "id": 1, "topic": "a.b", "payload": "x".repeat(1000)}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    // Over it: the frame cannot be read, so the node closes with "message too big".
    let big = json!({"op": "publish", "id": 2, "topic": "a.b", "payload": "x".repeat(8192)});
    c.send(big).await;
    let (code, reason) = close_frame(&mut c).await;
    assert_eq!(code, CloseCode::Size, "close code 1009, reason {reason:?}");
    assert!(
        reason.contains("ws.max_frame_bytes") && reason.contains("4096"),
        "the reason names the limit: {reason:?}"
    );
    eventually("the connection to be counted as gone", || async {
        (node.gateway_stats(None).await["ws_connections"] == 0).then_some(())
    })
    .await;
    // The node itself is fine: a new connection works.
    let mut again = node.client().await;
    let v = again
        .ask(json!({"op": "publish", "id": 3, "topic": "a.b", "payload": 1}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_upgrade_is_a_503_and_open_connections_keep_working() {
    let node = TestNode::start("[ws]\nmax_connections = 2").await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    // Both are counted once their first answer came (the upgrade finished).
    for c in [&mut a, &mut b] {
        let v = c
            .ask(json!({"op": "publish", "id": 0, "topic": "a.b", "payload": 0}))
            .await;
        assert_eq!(v["op"], "published", "{v}");
    }

    let refused = match tokio_tungstenite::connect_async(node.ws_url()).await {
        Err(WsError::Http(res)) => res,
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("a third connection was accepted past ws.max_connections = 2"),
    };
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value =
        serde_json::from_slice(refused.body().as_deref().expect("an error body")).unwrap();
    assert_eq!(body["error"]["kind"], "not_ready", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ws.max_connections = 2"),
        "{body}"
    );

    // The two open connections still work: one publishes, the other receives it.
    b.subscribe("limits.#", json!({})).await;
    let v = a
        .ask(json!({"op": "publish", "id": 1, "topic": "limits.ok", "payload": {"still": "here"}}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    let m = b.expect("message").await;
    assert_eq!(m["message"]["payload"], json!({"still": "here"}));

    // When one leaves, a new connection is accepted again.
    a.close().await;
    let mut c = eventually("a slot to free up", || async {
        Client::try_connect(&node.ws_url(), None).await.ok()
    })
    .await;
    let v = c
        .ask(json!({"op": "publish", "id": 2, "topic": "a.b", "payload": 2}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    node.stop().await;
}

/// One token could take every connection of the node: past
/// `ws.max_connections_per_principal` that principal's upgrade is refused as past the global
/// limit, while another principal still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_per_principal_that_principal_gets_a_503_and_others_connect() {
    const ALICE: &str = "alice-secret-token";
    const BOB: &str = "bob-secret-token";
    let config = format!(
        r#"
[ws]
max_connections = 10
max_connections_per_principal = 2
[auth]
enabled = true
[[auth.tokens]]
principal = "alice"
sha256 = "{}"
[[auth.tokens]]
principal = "bob"
sha256 = "{}"
[[auth.principals]]
name = "alice"
publish = ["a.#"]
[[auth.principals]]
name = "bob"
publish = ["a.#"]
"#,
        sha256_hex(ALICE.as_bytes()),
        sha256_hex(BOB.as_bytes())
    );
    let node = TestNode::start(&config).await;
    let url = node.ws_url();
    let mut a1 = Client::connect(&url, Some(ALICE)).await;
    let mut a2 = Client::connect(&url, Some(ALICE)).await;
    for c in [&mut a1, &mut a2] {
        let v = c
            .ask(json!({"op": "publish", "id": 0, "topic": "a.b", "payload": 0}))
            .await;
        assert_eq!(v["op"], "published", "{v}");
    }
    let refused = match Client::try_connect(&url, Some(ALICE)).await {
        Err(WsError::Http(res)) => res,
        Err(other) => panic!("expected an HTTP refusal, got {other:?}"),
        Ok(_) => panic!("alice's third connection was accepted past the per-principal limit"),
    };
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value =
        serde_json::from_slice(refused.body().as_deref().expect("an error body")).unwrap();
    assert_eq!(body["error"]["kind"], "not_ready", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ws.max_connections_per_principal = 2") && message.contains("alice"),
        "{body}"
    );
    // Another principal is not held back by alice's connections.
    let mut b = Client::connect(&url, Some(BOB)).await;
    let v = b
        .ask(json!({"op": "publish", "id": 1, "topic": "a.b", "payload": 1}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    // Alice's refused attempt took nothing: once one of hers leaves, she connects again.
    a1.close().await;
    let mut a3 = eventually("a slot of alice's to free up", || async {
        Client::try_connect(&url, Some(ALICE)).await.ok()
    })
    .await;
    let v = a3
        .ask(json!({"op": "publish", "id": 2, "topic": "a.b", "payload": 2}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    node.stop().await;
}
