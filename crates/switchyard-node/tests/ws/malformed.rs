//! Malformed frames get an `error` op naming the problem; the connection stays usable.

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::TestNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_op_and_the_connection_stays() {
    let node = TestNode::start("[limits]\nmax_message_bytes = 64").await;
    let mut c = node.client().await;
    let cases = [
        ("not json at all", "malformed_json", None),
        (
            r#"{"op":"publish","id":"t","topic":"a.b""#,
            "malformed_json",
            None,
        ),
        (r#"{"id":"x"}"#, "bad_request", Some(json!("x"))),
        (
            r#"{"op":"dance","id":"d"}"#,
            "bad_request",
            Some(json!("d")),
        ),
        (
            r#"{"op":"publish","id":1,"topic":"a.b","payload":1,"pattern":"a"}"#,
            "bad_request",
            Some(json!(1)),
        ),
        (
            r#"{"op":"publish","id":2,"topik":"a.b"}"#,
            "bad_request",
            Some(json!(2)),
        ),
        (
            r#"{"op":"publish","id":3,"payload":1}"#,
            "bad_request",
            Some(json!(3)),
        ),
        (
            r#"{"op":"publish","id":4,"topic":"a..b","payload":1}"#,
            "invalid_topic",
            Some(json!(4)),
        ),
        (
            r#"{"op":"subscribe","id":5,"pattern":"a.#.#x"}"#,
            "invalid_topic",
            Some(json!(5)),
        ),
        (
            r#"{"op":"subscribe","id":6,"pattern":"a","ack":"sometimes"}"#,
            "bad_request",
            Some(json!(6)),
        ),
        (
            r#"{"op":"subscribe","id":7,"pattern":"a","group":"no spaces"}"#,
            "bad_request",
            Some(json!(7)),
        ),
        (
            r#"{"op":"publish","id":8,"topic":"a.b","payload":"this payload is well over the sixty-four byte limit of this node"}"#,
            "too_large",
            Some(json!(8)),
        ),
        (
            r#"{"op":"publish","id":9,"topic":"a.b","payload_base64":"%%%"}"#,
            "bad_request",
            Some(json!(9)),
        ),
        (
            r#"{"op":"publish","id":10,"topic":"a.b","payload_base64":"e30=","content_type":"application/json","payload":1}"#,
            "bad_request",
            Some(json!(10)),
        ),
        (
            r#"{"op":"publish","id":11,"topic":"a.b","payload":1,"content_type":"text/plain"}"#,
            "unsupported_content_type",
            Some(json!(11)),
        ),
        (
            r#"{"op":"publish","id":12,"topic":"a.b","payload_base64":"bm9wZQ==","content_type":"application/json"}"#,
            "malformed_json",
            Some(json!(12)),
        ),
        (
            r#"{"op":"publish","id":13,"topic":"a.b","payload":1,"causation_id":"not a ulid"}"#,
            "bad_header",
            Some(json!(13)),
        ),
        (
            r#"{"op":"ack","id":14,"delivery":"nope"}"#,
            "not_found",
            Some(json!(14)),
        ),
        (
            r#"{"op":"unsubscribe","id":15,"subscription":"s99"}"#,
            "not_found",
            Some(json!(15)),
        ),
        (
            r#"{"op":"publish_batch","id":16,"messages":[]}"#,
            "bad_request",
            Some(json!(16)),
        ),
        (
            r#"{"op":"send","id":17,"topic":"a.b","payload":1,"timeout_ms":0}"#,
            "bad_request",
            Some(json!(17)),
        ),
    ];
    for (frame, kind, id) in cases {
        let v = c.ask_raw(Message::text(frame)).await;
        assert_eq!(v["op"], "error", "{frame} → {v}");
        assert_eq!(v["error"]["kind"], kind, "{frame} → {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        match id {
            Some(id) => assert_eq!(v["id"], id, "{frame} → {v}"),
            None => assert!(v.get("id").is_none(), "{frame} → {v}"),
        }
    }
    let v = c.ask_raw(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(v["error"]["kind"], "bad_request", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("text"),
        "{v}"
    );

    // Still connected and working.
    let v = c
        .ask(json!({"op": "publish", "id": "ok", "topic": "a.b", "payload": {"fine": true}}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    let stats = node.gateway_stats(None).await;
    assert_eq!(stats["ws_connections"], 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_on_the_socket_route_is_a_json_400() {
    let node = TestNode::start("").await;
    let res = reqwest::get(node.http("/v1/ws")).await.unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "bad_request");
    node.stop().await;
}
