//! Remote handler groups: several connections `handle` one command topic as a group; a
//! command whose member disconnects or fails goes to each other member at most once, then
//! the sender gets a typed error.

use std::time::Duration;

use futures::future::select_all;
use serde_json::{Value, json};
use switchyard::{CommandResult, Envelope, SendError, Topic};

use crate::support::{Client, TestNode, WAIT, eventually};

const TOPIC: &str = "jobs.run";

fn job(n: u64) -> Envelope {
    Envelope::new(Topic::new(TOPIC).unwrap(), json!({ "job": n }).to_string())
}

/// Connects `n` clients, each joining handler group `workers` for [`TOPIC`].
async fn members(node: &TestNode, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut c = node.client().await;
        let v = c
            .ask(json!({"op": "handle", "id": i, "topic": TOPIC, "group": "workers"}))
            .await;
        assert_eq!(
            v,
            json!({"op": "handling", "id": i, "topic": TOPIC, "name": "ws-handler:group:anonymous:workers"}),
            "member {i}"
        );
        out.push(c);
    }
    out
}

/// The next `command` frame any of `clients` receives: which one, and the frame.
async fn next_command(clients: &mut [Client]) -> (usize, Value) {
    let (v, i, _) = select_all(clients.iter_mut().map(|c| Box::pin(c.recv()))).await;
    assert_eq!(v["op"], "command", "client {i}: {v}");
    (i, v)
}

/// Sends `job(n)` from Rust in a task.
fn send(node: &TestNode, n: u64) -> tokio::task::JoinHandle<Result<CommandResult, SendError>> {
    let bus = node.bus.clone();
    tokio::spawn(async move { bus.send_envelope(job(n)).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_goes_on_to_the_next_member_when_one_disconnects_or_fails() {
    let node = TestNode::start("").await;
    let mut clients = members(&node, 3).await;
    assert!(
        node.bus
            .registry()
            .iter()
            .any(|s| s.pattern == TOPIC && s.name == "ws-handler:group:anonymous:workers"),
        "one bus handler for the group"
    );
    let sent = send(&node, 1);

    // The first member to get it disconnects without answering.
    let (first, cmd) = next_command(&mut clients).await;
    assert_eq!(cmd["message"]["payload"], json!({"job": 1}));
    clients.remove(first).close().await;
    // The next one fails it.
    let (second, cmd) = next_command(&mut clients).await;
    assert_eq!(cmd["message"]["payload"], json!({"job": 1}));
    clients[second]
        .send(json!({"op": "result", "call": cmd["call"], "ok": false, "error": "disk full"}))
        .await;
    // The last one answers; the sender gets its reply.
    let (third, cmd) = next_command(&mut clients).await;
    assert_ne!(
        third, second,
        "a member that failed it does not get it again"
    );
    assert_eq!(cmd["message"]["payload"], json!({"job": 1}));
    clients[third]
        .send(json!({"op": "result", "call": cmd["call"], "ok": true, "payload": {"done": 1}}))
        .await;
    let reply = tokio::time::timeout(WAIT, sent)
        .await
        .expect("the sender must not hang")
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.reply.unwrap().payload).unwrap(),
        json!({"done": 1})
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_member_disconnected_or_failed_the_sender_gets_a_typed_error_without_ping_pong()
{
    let node = TestNode::start("").await;
    let mut clients = members(&node, 2).await;
    let sent = send(&node, 1);
    let (first, cmd) = next_command(&mut clients).await;
    clients[first]
        .send(json!({"op": "result", "call": cmd["call"], "ok": false, "error": "no can do"}))
        .await;
    let second = 1 - first;
    let cmd = clients[second].expect("command").await;
    assert_eq!(cmd["message"]["payload"], json!({"job": 1}));
    let failed_member = clients.remove(first);
    clients.remove(0).close().await; // the other one disconnects holding it

    // The handler's own deadline is 30 s; the typed error comes within the guard below.
    let result = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("the sender must not hang until a timeout")
        .unwrap();
    match result {
        Err(SendError::Failed { error, attempts }) => {
            assert!(error.contains("workers"), "names the group: {error}");
            assert!(error.contains("2 member(s) tried once each"), "{error}");
            assert!(error.contains("disconnected"), "the last reason: {error}");
            assert_eq!(attempts, 1, "not retried through the whole group again");
        }
        other => panic!("expected SendError::Failed, got {other:?}"),
    }

    // The member that failed it never got it again: the next frame it sees is a new
    // command, which it answers.
    let mut failed_member = failed_member;
    let sent = send(&node, 2);
    let cmd = failed_member.expect("command").await;
    assert_eq!(cmd["message"]["payload"], json!({"job": 2}), "{cmd}");
    failed_member
        .send(json!({"op": "result", "call": cmd["call"], "ok": true, "payload": 2}))
        .await;
    tokio::time::timeout(WAIT, sent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Over HTTP the same failure is 422 handler_failed.
    let http = reqwest::Client::new();
    let url = node.http(&format!("/v1/send/{TOPIC}"));
    let call = tokio::spawn(async move {
        http.post(url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap()
    });
    let cmd = failed_member.expect("command").await;
    failed_member
        .send(json!({"op": "result", "call": cmd["call"], "ok": false, "error": "again"}))
        .await;
    let res = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "handler_failed", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 member(s) tried once each"),
        "{body}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_one_handler_of_its_topic_and_ends_with_its_last_member() {
    let node = TestNode::start("").await;
    let mut clients = members(&node, 2).await;
    let mut other = node.client().await;
    // Another group, or a lone handler, for the same topic is refused.
    let v = other
        .ask(json!({"op": "handle", "id": 1, "topic": TOPIC, "group": "others"}))
        .await;
    assert_eq!(v["error"]["kind"], "bad_request", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("workers"),
        "{v}"
    );
    let v = other
        .ask(json!({"op": "handle", "id": 2, "topic": TOPIC}))
        .await;
    assert_eq!(v["error"]["kind"], "bad_request", "{v}");
    // Joining with another concurrency than the first member's is refused.
    let v = other
        .ask(json!({"op": "handle", "id": 3, "topic": TOPIC, "group": "workers", "concurrency": 3}))
        .await;
    assert_eq!(v["error"]["kind"], "bad_request", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrency"),
        "{v}"
    );

    // Commands are shared: two commands held at once go to both members.
    let a = send(&node, 1);
    let b = send(&node, 2);
    let (i, c1) = next_command(&mut clients).await;
    let c2 = clients[1 - i].expect("command").await;
    for (k, cmd) in [(i, c1), (1 - i, c2)] {
        clients[k]
            .send(json!({"op": "result", "call": cmd["call"], "ok": true, "payload": k}))
            .await;
    }
    for s in [a, b] {
        tokio::time::timeout(WAIT, s)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    // One member unhandles, the other disconnects: the group's handler ends.
    let v = clients[0]
        .ask(json!({"op": "unhandle", "id": 4, "topic": TOPIC}))
        .await;
    assert_eq!(v["op"], "unhandled", "{v}");
    clients.remove(1).close().await;
    eventually("the group's bus handler to end", || async {
        (!node
            .bus
            .registry()
            .iter()
            .any(|s| s.name == "ws-handler:group:anonymous:workers"))
        .then_some(())
    })
    .await;
    let next = send(&node, 3).await.unwrap();
    assert!(matches!(next, Err(SendError::NoHandler { .. })), "{next:?}");
    // And the topic is free for another group.
    let v = other
        .ask(json!({"op": "handle", "id": 5, "topic": TOPIC, "group": "others"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");
    node.stop().await;
}
