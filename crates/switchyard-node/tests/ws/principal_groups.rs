//! Consumer groups and handler groups belong to one principal (docs/gateway.md, "Groups
//! belong to a principal"): with auth on, a second principal using the same group name gets
//! a group of its own. It takes no share of the first one's messages, is not refused because
//! the first one chose another pattern, never learns that pattern, and never joins the first
//! one's handler group.

use serde_json::{Value, json};
use switchyard::{Envelope, Topic};
use switchyard_node::auth::sha256_hex;

use crate::support::{Client, TestNode};

const ALICE: &str = "groups-alice-token";
const BOB: &str = "groups-bob-token";

/// `alice` and `bob_svc` hold the same grants (a name with `_` shows the principal's
/// escaping in group bus names).
fn config() -> String {
    format!(
        r##"
[auth]
enabled = true
[[auth.principals]]
name = "alice"
subscribe = ["orders.#"]
publish = ["orders.#"]
send = ["jobs.run"]
[[auth.principals]]
name = "bob_svc"
subscribe = ["orders.#"]
publish = ["orders.#"]
send = ["jobs.run"]
[[auth.tokens]]
principal = "alice"
sha256 = "{}"
[[auth.tokens]]
principal = "bob_svc"
sha256 = "{}"
"##,
        sha256_hex(ALICE.as_bytes()),
        sha256_hex(BOB.as_bytes()),
    )
}

async fn publish(node: &TestNode, topic: &str) {
    node.bus
        .publish_envelope(Envelope::new(Topic::new(topic).unwrap(), "{}".to_owned()))
        .await
        .unwrap();
}

/// The topics of the next `n` message frames of `client`.
async fn topics(client: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        let m = client.expect("message").await;
        got.push(m["message"]["topic"].as_str().unwrap().to_owned());
    }
    got
}

/// The next frame of `client` is the answer to an op sent now: nothing else came before.
async fn nothing_pending(client: &mut Client, what: &str) {
    let v: Value = client
        .ask(json!({"op": "unsubscribe", "id": "probe", "subscription": "s999"}))
        .await;
    assert_eq!(v["op"], "error", "{what}: {v}");
    assert_eq!(v["id"], "probe", "{what}: {v}");
}

/// Work theft: bob_svc joining "workers" with alice's pattern took half of alice's messages
/// (the groups were node-global). Now each principal's group gets every message, and the
/// `subscribed` answers name two bus subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_principal_using_the_same_group_name_takes_none_of_the_first_ones_messages() {
    let node = TestNode::start(&config()).await;
    let mut alice = Client::connect(&node.ws_url(), Some(ALICE)).await;
    let v = alice
        .ask(json!({"op": "subscribe", "id": 1, "pattern": "orders.#", "group": "workers"}))
        .await;
    assert_eq!(v["op"], "subscribed", "{v}");
    let alice_name = v["name"].clone();

    let mut bob = Client::connect(&node.ws_url(), Some(BOB)).await;
    let v = bob
        .ask(json!({"op": "subscribe", "id": 2, "pattern": "orders.#", "group": "workers"}))
        .await;
    assert_eq!(v["op"], "subscribed", "{v}");
    let bob_name = v["name"].clone();

    let sent: Vec<String> = (0..6).map(|i| format!("orders.eu.o{i}")).collect();
    for t in &sent {
        publish(&node, t).await;
    }
    assert_eq!(
        topics(&mut alice, sent.len()).await,
        sent,
        "alice's group member"
    );
    assert_eq!(topics(&mut bob, sent.len()).await, sent, "bob_svc's group");
    nothing_pending(&mut alice, "alice got more than each message once").await;
    nothing_pending(&mut bob, "bob_svc got more than each message once").await;

    // The principal is in the bus name, escaped (`_` is `-5F`: docs/gateway.md).
    assert_eq!(alice_name, "ws:group:alice:workers");
    assert_eq!(bob_name, "ws:group:bob-5Fsvc:workers");
    let mut names: Vec<String> = node
        .bus
        .registry()
        .iter()
        .map(|s| s.name.clone())
        .filter(|n| n.starts_with("ws:group:"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ws:group:alice:workers", "ws:group:bob-5Fsvc:workers"]
    );
    node.stop().await;
}

/// Squatting and the leak: bob_svc made "ledger" first with another pattern; alice's join
/// was refused, and the refusal told her bob_svc's pattern. Now alice gets a group of her
/// own; a refusal names only the asking principal's own pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_name_taken_by_another_principal_neither_refuses_nor_reveals_its_pattern() {
    let node = TestNode::start(&config()).await;
    let mut bob = Client::connect(&node.ws_url(), Some(BOB)).await;
    bob.subscribe("orders.eu.#", json!({"group": "ledger"}))
        .await;

    let mut alice = Client::connect(&node.ws_url(), Some(ALICE)).await;
    let v = alice
        .ask(json!({"op": "subscribe", "id": "a1", "pattern": "orders.#", "group": "ledger"}))
        .await;
    assert!(
        !v.to_string().contains("orders.eu.#"),
        "bob_svc's pattern told to alice: {v}"
    );
    assert_eq!(v["op"], "subscribed", "alice refused a group name: {v}");
    assert_eq!(v["name"], "ws:group:alice:ledger", "{v}");

    // Another connection of the same principal may be told its own group's pattern.
    let mut alice2 = Client::connect(&node.ws_url(), Some(ALICE)).await;
    let v = alice2
        .ask(json!({"op": "subscribe", "id": "a2", "pattern": "orders.eu.#", "group": "ledger"}))
        .await;
    assert_eq!(v["op"], "error", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"orders.#\""), "{v}");
    assert!(!message.contains("orders.eu.#\" with"), "{v}");
    let mut bob2 = Client::connect(&node.ws_url(), Some(BOB)).await;
    let v = bob2
        .ask(json!({"op": "subscribe", "id": "b2", "pattern": "orders.#", "group": "ledger"}))
        .await;
    assert_eq!(v["op"], "error", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"orders.eu.#\""), "{v}");
    assert!(
        !message.contains("\"orders.#\""),
        "alice's pattern told to bob_svc: {v}"
    );

    // Each group gets what its own pattern matches.
    publish(&node, "orders.us.1").await;
    publish(&node, "orders.eu.2").await;
    assert_eq!(topics(&mut alice, 2).await, ["orders.us.1", "orders.eu.2"]);
    assert_eq!(topics(&mut bob, 1).await, ["orders.eu.2"]);
    nothing_pending(&mut bob, "bob_svc's group").await;
    node.stop().await;
}

/// The handler-group twin: bob_svc, granted `jobs.run`, joined alice's handler group
/// "workers" and took her commands. A topic has one handler on the bus, so bob_svc is refused
/// now, without being told alice's name or registration; alice's member gets every command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_principal_cannot_join_the_first_ones_handler_group() {
    let node = TestNode::start(&config()).await;
    let mut alice = Client::connect(&node.ws_url(), Some(ALICE)).await;
    let v = alice
        .ask(json!({"op": "handle", "id": "h", "topic": "jobs.run", "group": "workers"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");
    let alice_name = v["name"].clone();

    let mut bob = Client::connect(&node.ws_url(), Some(BOB)).await;
    for (id, frame) in [
        (
            "g",
            json!({"op": "handle", "id": "g", "topic": "jobs.run", "group": "workers"}),
        ),
        (
            "o",
            json!({"op": "handle", "id": "o", "topic": "jobs.run", "group": "others"}),
        ),
        ("l", json!({"op": "handle", "id": "l", "topic": "jobs.run"})),
    ] {
        let v = bob.ask(frame).await;
        assert_eq!(
            v["op"], "error",
            "bob_svc handles alice's topic ({id}): {v}"
        );
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["error"]["kind"], "bad_request", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("alice"),
            "alice's registration named to bob_svc: {v}"
        );
    }

    let mut sender = Client::connect(&node.ws_url(), Some(ALICE)).await;
    for i in 0..4 {
        sender
            .send(json!({"op": "send", "id": i, "topic": "jobs.run", "payload": {"n": i}}))
            .await;
        let cmd = alice.expect("command").await;
        assert_eq!(cmd["message"]["payload"], json!({"n": i}), "{cmd}");
        alice
            .send(json!({"op": "result", "call": cmd["call"], "ok": true, "payload": {"done": i}}))
            .await;
        let reply = sender.expect("reply").await;
        assert_eq!(reply["payload"], json!({"done": i}), "{reply}");
    }
    nothing_pending(&mut bob, "bob_svc got a command of alice's group").await;
    assert_eq!(alice_name, "ws-handler:group:alice:workers");

    // A second member of alice's own group joins as before.
    let mut alice2 = Client::connect(&node.ws_url(), Some(ALICE)).await;
    let v = alice2
        .ask(json!({"op": "handle", "id": "h2", "topic": "jobs.run", "group": "workers"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");
    assert_eq!(v["name"], "ws-handler:group:alice:workers", "{v}");
    node.stop().await;
}
