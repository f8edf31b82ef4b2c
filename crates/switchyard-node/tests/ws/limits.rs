//! Connection limits: a frame over `ws.max_frame_bytes` closes the connection with 1009
//! naming the limit; past `ws.max_connections` the upgrade is refused with 503 while the
//! connections already open keep working.

use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

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
