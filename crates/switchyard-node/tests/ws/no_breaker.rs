//! A remote handler, alone or as a group, has no circuit breaker on the node (review of
//! h-fixwsgroup): its `ok: false` answers are the client's, and a breaker counting them held
//! the next command silently for the cool-down (the member got nothing, the sender waited)
//! instead of handing it over.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{CommandResult, Envelope, SendError, Topic};

use crate::support::{Client, TestNode, WAIT};

const TOPIC: &str = "jobs.run";

fn job(n: u64) -> Envelope {
    Envelope::new(Topic::new(TOPIC).unwrap(), json!({ "job": n }).to_string())
}

fn send(node: &TestNode, n: u64) -> tokio::task::JoinHandle<Result<CommandResult, SendError>> {
    let bus = node.bus.clone();
    tokio::spawn(async move { bus.send_envelope(job(n)).await })
}

/// The next command `c` gets (within [`WAIT`], far less than the breaker's cool-down), with
/// what it carries.
async fn next_job(c: &mut Client) -> (Value, Value) {
    let cmd = c.expect("command").await;
    let call = cmd["call"].clone();
    let payload = cmd["message"]["payload"].clone();
    (call, payload)
}

async fn fail(c: &mut Client, call: Value) {
    c.send(json!({"op": "result", "call": call, "ok": false, "error": "not today"}))
        .await;
}

async fn answer(c: &mut Client, call: Value) {
    c.send(json!({"op": "result", "call": call, "ok": true, "payload": {"done": true}}))
        .await;
}

/// Whether `/metrics` has a breaker row for `handler`.
async fn breaker_row(node: &TestNode, handler: &str) -> bool {
    let text = reqwest::get(node.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // A prefix: a lone remote handler is `ws-handler:<principal>:<connection>:<id>`.
    let label = format!("handler=\"{handler}");
    text.lines()
        .any(|l| l.starts_with("switchyard_breaker_state") && l.contains(&label))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_group_failing_commands_still_gets_the_next_one_at_once() {
    let node = TestNode::start("").await;
    let mut member = node.client().await;
    let v = member
        .ask(json!({"op": "handle", "id": 1, "topic": TOPIC, "group": "workers"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");

    // More failures than the default breaker's threshold (5).
    for n in 0..7 {
        let sent = send(&node, n);
        let (call, payload) = next_job(&mut member).await;
        assert_eq!(payload, json!({ "job": n }));
        fail(&mut member, call).await;
        let res = tokio::time::timeout(WAIT, sent).await.unwrap().unwrap();
        assert!(
            matches!(res, Err(SendError::Failed { .. })),
            "command {n}: {res:?}"
        );
    }
    // The next command is handed to the member at once, not held for a cool-down.
    let sent = send(&node, 100);
    let (call, payload) = next_job(&mut member).await;
    assert_eq!(payload, json!({"job": 100}));
    answer(&mut member, call).await;
    let res = tokio::time::timeout(WAIT, sent).await.unwrap().unwrap();
    assert!(res.is_ok(), "{res:?}");
    assert!(
        !breaker_row(&node, "ws-handler:group:anonymous:workers").await,
        "no breaker to list"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_remote_handler_failing_commands_still_gets_the_next_one_at_once() {
    let node = TestNode::start("").await;
    let mut worker = node.client().await;
    let v = worker
        .ask(json!({"op": "handle", "id": 1, "topic": TOPIC}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");

    // Each command is tried 3 times by the node's retry policy: 6 failures in all.
    for n in 0..2 {
        let sent = send(&node, n);
        for _ in 0..3 {
            let (call, payload) = next_job(&mut worker).await;
            assert_eq!(payload, json!({ "job": n }));
            fail(&mut worker, call).await;
        }
        let res = tokio::time::timeout(Duration::from_secs(30), sent)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(res, Err(SendError::Failed { .. })),
            "command {n}: {res:?}"
        );
    }
    let sent = send(&node, 100);
    let (call, payload) = next_job(&mut worker).await;
    assert_eq!(payload, json!({"job": 100}));
    answer(&mut worker, call).await;
    let res = tokio::time::timeout(WAIT, sent).await.unwrap().unwrap();
    assert!(res.is_ok(), "{res:?}");
    assert!(
        !breaker_row(&node, "ws-handler:anonymous:").await,
        "no breaker to list"
    );
    node.stop().await;
}
