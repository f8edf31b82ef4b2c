//! Remote handlers and calls as a client in another language drives them: answers out of
//! order, ids reused across calls in flight, a handler that leaves holding commands, a
//! handler that never answers; and frame-level odds (duplicate JSON keys, pings).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::dlq;
use crate::support::{Client, TestNode, WAIT};

/// A client handling `topic`.
async fn handler(node: &TestNode, topic: &str) -> Client {
    let mut h = node.client().await;
    let v = h
        .ask(json!({"op": "handle", "id": "h", "topic": topic}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");
    h
}

/// "Calls run concurrently: the connection keeps being read while they wait" and "the answer
/// to that op echoes it verbatim": three sends in flight, answered by the handler in reverse
/// order, each reply carries its own call's id and its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_answering_out_of_order_gives_each_sender_its_own_reply() {
    let node = TestNode::start("").await;
    let mut h = handler(&node, "r46.calc").await;
    let mut s = node.client().await;
    for n in 1..=3 {
        s.send(
            json!({"op": "send", "id": format!("c{n}"), "topic": "r46.calc", "payload": {"n": n}}),
        )
        .await;
    }
    let mut cmds = Vec::new();
    for _ in 0..3 {
        cmds.push(h.expect("command").await);
    }
    for cmd in cmds.iter().rev() {
        let n = cmd["message"]["payload"]["n"].as_u64().unwrap();
        h.send(
            json!({"op": "result", "call": cmd["call"], "ok": true, "payload": {"n10": n * 10}}),
        )
        .await;
    }
    let mut replies = BTreeMap::new();
    for _ in 0..3 {
        let r = s.expect("reply").await;
        replies.insert(
            r["id"].as_str().unwrap().to_owned(),
            r["payload"]["n10"].clone(),
        );
    }
    let want: BTreeMap<String, Value> = (1..=3u64)
        .map(|n| (format!("c{n}"), json!(n * 10)))
        .collect();
    assert_eq!(replies, want);
    node.stop().await;
}

/// "Every client op may carry an `"id"` (any JSON value); the answer to that op echoes it
/// verbatim": a client that reuses one id for two requests in flight gets two replies, each
/// with its own result (none lost, none doubled), both echoing the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_across_calls_in_flight_gets_both_answers() {
    let node = TestNode::start("").await;
    let mut h = handler(&node, "r46.same").await;
    let mut s = node.client().await;
    for n in [1, 2] {
        s.send(json!({"op": "request", "id": "same", "topic": "r46.same", "payload": {"n": n}}))
            .await;
    }
    let a = h.expect("command").await;
    let b = h.expect("command").await;
    for cmd in [b, a] {
        let n = cmd["message"]["payload"]["n"].as_u64().unwrap();
        h.send(json!({"op": "result", "call": cmd["call"], "ok": true, "payload": {"echo": n}}))
            .await;
    }
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let r = s.expect("reply").await;
        assert_eq!(r["id"], "same", "{r}");
        got.insert(r["payload"]["echo"].as_u64().unwrap());
    }
    assert_eq!(got, BTreeSet::from([1, 2]));
    node.stop().await;
}

/// "If the connection closes while it holds a command, the sender gets a typed error at once
/// (not a timeout): ... HTTP 422 `handler_failed`; the command is dead-lettered. The
/// registration ends with the connection: later sends get `no_handler` at once": with two
/// commands in hand, both senders are told within a second, both are dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_leaving_with_two_commands_in_hand_fails_both_senders_at_once() {
    let node = TestNode::start("").await;
    let h = handler(&node, "r46.gone").await;
    let mut h = h;
    let mut s = node.client().await;
    for n in 1..=2 {
        s.send(json!({"op": "send", "id": n, "topic": "r46.gone", "payload": {"n": n}}))
            .await;
    }
    h.expect("command").await;
    h.expect("command").await;
    let left = tokio::time::Instant::now();
    h.close().await;
    let mut ids = BTreeSet::new();
    for _ in 0..2 {
        let e = s.expect("error").await;
        assert_eq!(e["error"]["kind"], "handler_failed", "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("disconnected"),
            "{e}"
        );
        ids.insert(e["id"].as_u64().unwrap());
    }
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "told after {:?}",
        left.elapsed()
    );
    assert_eq!(ids, BTreeSet::from([1, 2]));
    let v = s
        .ask(json!({"op": "send", "id": "later", "topic": "r46.gone", "payload": 1}))
        .await;
    assert_eq!(v["error"]["kind"], "no_handler", "{v}");
    node.bus.run_until_idle().await;
    assert_eq!(dlq(&node).await["total"], 2);
    node.stop().await;
}

/// "a bad frame gets an error op and the connection stays open": a frame with a key written
/// twice (which JavaScript's `JSON.parse` and Go's `encoding/json` read as the last value)
/// is either refused as `bad_request` or taken with its last value; it is never published
/// under the first value, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_with_a_duplicate_key_is_refused_or_read_as_its_last_value() {
    let node = TestNode::start("").await;
    let mut sub = node.client().await;
    sub.subscribe("r46.dk.#", json!({})).await;
    let mut c = node.client().await;
    let v = c
        .ask_raw(Message::text(
            r#"{"op":"publish","id":"dk","topic":"r46.dk.first","topic":"r46.dk.last","payload":1}"#,
        ))
        .await;
    let marker = c
        .ask(json!({"op": "publish", "id": "m", "topic": "r46.dk.marker", "payload": 2}))
        .await;
    assert_eq!(marker["op"], "published", "{marker}");
    let first = sub.expect("message").await;
    match v["op"].as_str() {
        Some("error") => {
            assert_eq!(v["error"]["kind"], "bad_request", "{v}");
            assert_eq!(v["id"], "dk", "{v}");
            assert_eq!(first["message"]["topic"], "r46.dk.marker", "{first}");
        }
        Some("published") => {
            assert_eq!(first["message"]["topic"], "r46.dk.last", "{first}");
        }
        _ => panic!("neither refused nor published: {v}"),
    }
    node.stop().await;
}

/// "The node pings every `ws.ping_interval_ms` ... and closes a connection that sent
/// nothing, not even a pong, for two intervals (code 1008)": a client whose library answers
/// pings stays open past many intervals; one that sends nothing is closed with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_a_reading_client_open_and_a_silent_one_is_closed_with_1008() {
    let node = TestNode::start("[ws]\nping_interval_ms = 100").await;
    let mut live = node.client().await;
    let mut silent = node.client().await;
    // `live` reads (its library answers each ping) for ten intervals.
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    let mut pings = 0;
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, live.ws.next()).await {
        match msg.unwrap() {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(pings >= 3, "only {pings} pings in 1 s at a 100 ms interval");
    let v = live
        .ask(json!({"op": "publish", "id": "still", "topic": "r46.ping", "payload": 1}))
        .await;
    assert_eq!(v["op"], "published", "{v}");
    // `silent` has read nothing (so answered no ping) all that time: it was closed. Its
    // library answers the pings queued before the close frame as it reads them, and that
    // write may fail on the closed socket (broken pipe) before the close frame is read; so
    // the code is checked when the close frame is reached, and the node's figures say the
    // connection is gone either way.
    loop {
        match tokio::time::timeout(WAIT, silent.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => {
                let f = f.expect("a close frame with a code");
                assert_eq!(f.code, CloseCode::Policy, "{f:?}");
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(_)) | None => break,
            Some(Ok(other)) => panic!("expected a close, got {other:?}"),
        }
    }
    let stats = node.gateway_stats(None).await;
    assert_eq!(
        stats["ws_connections"], 1,
        "only the reading client is open: {stats}"
    );
    node.stop().await;
}
