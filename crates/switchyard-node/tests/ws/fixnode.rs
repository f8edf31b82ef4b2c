//! Task fixnode: a manual subscription's `nack` with `hand_back: true` is the bus's
//! `HandBack` (not an attempt); `subscribed` and `handling` answers name the registration's
//! bus name; a WebSocket group's `/v1/stats` and `/metrics` rows go with its last member.

use serde_json::{Value, json};
use switchyard::{Envelope, Topic};

use crate::support::{TestNode, eventually};

async fn get(node: &TestNode, path: &str) -> Value {
    let resp = reqwest::get(node.http(path)).await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn metrics_text(node: &TestNode) -> String {
    reqwest::get(node.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn event(topic: &str, n: u64) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), json!({ "n": n }).to_string())
}

/// The `/v1/stats` `handlers` row of handler `name`, if any.
fn handler_row(stats: &Value, name: &str) -> Option<Value> {
    let rows = stats["handlers"]["handlers"]
        .as_array()
        .or_else(|| stats["handlers"].as_array())?;
    rows.iter().find(|r| r["handler"] == name).cloned()
}

/// The bus subscriptions `/v1/stats` lists, by name.
fn listed(stats: &Value) -> Vec<String> {
    stats["bus"]["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Before: `nack` had no `hand_back`, and a Python `HandBack` went as a plain nack, an
/// attempt of the node's retry policy: dead-lettered after 3 hand-backs. Now a hand-back on
/// the log goes back to the transport, is no attempt (the message comes back as attempt 1),
/// is counted in `handed_back` (not `failed`), and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_subscription_hands_a_delivery_back_without_using_attempts() {
    let node = TestNode::start_on_log("").await;
    let mut c = node.client().await;
    let v = c
        .ask(json!({"op": "subscribe", "id": "s", "pattern": "hb.#", "ack": "manual"}))
        .await;
    assert_eq!(v["op"], "subscribed", "{v}");
    node.bus.publish_envelope(event("hb.x", 1)).await.unwrap();
    let mut id = None;
    for round in 1..=4 {
        let m = c.expect("message").await;
        assert_eq!(
            m["message"]["attempt"], 1,
            "hand-back {round} counted as an attempt: {m}"
        );
        let mid = m["message"]["id"].clone();
        assert_eq!(*id.get_or_insert(mid.clone()), mid, "another message: {m}");
        c.send(json!({"op": "nack", "delivery": m["delivery"], "hand_back": true, "delay_ms": 5}))
            .await;
    }
    let m = c.expect("message").await;
    assert_eq!(m["message"]["id"], id.unwrap(), "{m}");
    c.send(json!({"op": "ack", "delivery": m["delivery"]}))
        .await;
    let name = listed(&get(&node, "/v1/stats").await)
        .into_iter()
        .find(|n| n.starts_with("ws:anonymous:"))
        .expect("the subscription is listed");
    let row = eventually("the ack to be counted", || async {
        let stats = get(&node, "/v1/stats").await;
        handler_row(&stats, &name).filter(|r| r["acked"] == 1)
    })
    .await;
    assert_eq!(row["handed_back"], 4, "{row}");
    assert_eq!(row["failed"], 0, "{row}");
    assert_eq!(row["retried"], 0, "{row}");
    let dlq = get(&node, "/v1/dlq").await;
    assert_eq!(
        dlq["total"], 0,
        "a hand-back dead-lettered the message: {dlq}"
    );
    let text = metrics_text(&node).await;
    let handed = format!("handler=\"{name}\"");
    assert!(
        text.lines()
            .any(|l| l.starts_with("switchyard_handed_back_total{")
                && l.contains(&handed)
                && l.ends_with(" 4")),
        "/metrics has no switchyard_handed_back_total 4 for {name}: {text}"
    );
    c.close().await;
    node.stop().await;
}

/// In memory a delivery has no transport to go back to: as a Rust handler's `HandBack`
/// (docs/bus.md), it fails for good at once, after one call, and is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_manual_hand_back_fails_for_good_at_once() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("hm.#", json!({"ack": "manual"})).await;
    node.bus.publish_envelope(event("hm.x", 1)).await.unwrap();
    let m = c.expect("message").await;
    // `delay_ms` alone stays a plain nack's; `hand_back: false` is a plain nack.
    c.send(json!({"op": "nack", "delivery": m["delivery"], "hand_back": false}))
        .await;
    let m = c.expect("message").await;
    assert_eq!(
        m["message"]["attempt"], 2,
        "a plain nack is an attempt: {m}"
    );
    c.send(json!({"op": "nack", "delivery": m["delivery"], "hand_back": true}))
        .await;
    let dlq = eventually("the hand-back to be dead-lettered", || async {
        let v = get(&node, "/v1/dlq").await;
        (v["total"] == 1).then_some(v)
    })
    .await;
    assert_eq!(dlq["items"][0]["id"], m["message"]["id"], "{dlq}");
    let error = dlq["items"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("handed back to the transport: handed back by WebSocket connection"),
        "{dlq}"
    );
    // Not offered a third time.
    let v = c
        .ask(json!({"op": "unsubscribe", "id": "u", "subscription": m["subscription"]}))
        .await;
    assert_eq!(v["op"], "unsubscribed", "the message came again: {v}");
    c.close().await;
    node.stop().await;
}

/// `subscribed` and `handling` name the registration's bus name, the one `/v1/stats`
/// lists (before: only the subscription id / topic, so a client could not find its rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_and_handling_answers_name_the_bus_registration() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    let own = c
        .ask(json!({"op": "subscribe", "id": "a", "pattern": "nm.#"}))
        .await;
    assert_eq!(own["op"], "subscribed", "{own}");
    let grouped = c
        .ask(json!({"op": "subscribe", "id": "b", "pattern": "ng.#", "group": "names"}))
        .await;
    let lone = c
        .ask(json!({"op": "handle", "id": "c", "topic": "nm.run"}))
        .await;
    assert_eq!(lone["op"], "handling", "{lone}");
    let in_group = c
        .ask(json!({"op": "handle", "id": "d", "topic": "ng.run", "group": "workers"}))
        .await;
    let names: Vec<String> = [&own, &grouped, &lone, &in_group]
        .iter()
        .map(|v| {
            v["name"]
                .as_str()
                .unwrap_or_else(|| panic!("no name in the answer: {v}"))
                .to_owned()
        })
        .collect();
    let sid = own["subscription"].as_str().unwrap();
    assert!(
        names[0].starts_with("ws:anonymous:") && names[0].ends_with(&format!(":{sid}")),
        "{names:?}"
    );
    assert_eq!(names[1], "ws:group:anonymous:names");
    assert!(names[2].starts_with("ws-handler:anonymous:"), "{names:?}");
    assert_eq!(names[3], "ws-handler:group:anonymous:workers");
    let stats = get(&node, "/v1/stats").await;
    let bus_names = listed(&stats);
    for n in &names {
        assert!(
            bus_names.contains(n),
            "{n} not listed in /v1/stats: {bus_names:?}"
        );
    }
    c.close().await;
    node.stop().await;
}

/// A WebSocket group's `/v1/stats` `handlers` / `latency` rows went nowhere after its last
/// member left (before: "/v1/stats keeps rows of the ended group ws:group:leaving"; its
/// `/metrics` series did go). Group names are the clients' choice: kept rows grew with churn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_leaves_no_rows_after_its_last_member() {
    let node = TestNode::start("").await;
    let name = "ws:group:anonymous:leaving";
    let mut a = node.client().await;
    let mut b = node.client().await;
    for c in [&mut a, &mut b] {
        c.subscribe("gl.#", json!({"group": "leaving"})).await;
    }
    node.bus.publish_envelope(event("gl.x", 1)).await.unwrap();
    node.bus.publish_envelope(event("gl.x", 2)).await.unwrap();
    a.expect("message").await;
    b.expect("message").await;
    node.bus.run_until_idle().await;
    let stats = get(&node, "/v1/stats").await;
    assert!(
        handler_row(&stats, name).is_some(),
        "no handlers row while subscribed: {}",
        stats["handlers"]
    );
    assert!(
        stats["latency"].to_string().contains(name),
        "no latency row while subscribed: {}",
        stats["latency"]
    );
    assert!(metrics_text(&node).await.contains(name));
    a.close().await;
    b.close().await;
    assert_group_left_no_rows(node, name, "group").await;
}

/// The same for a remote handler group (`ws-handler:group:<principal>:<group>`): its `/v1/stats` rows
/// go when its last member leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_group_leaves_no_rows_after_its_last_member() {
    let node = TestNode::start("").await;
    let name = "ws-handler:group:anonymous:hleaving";
    let mut a = node.client().await;
    let mut b = node.client().await;
    for c in [&mut a, &mut b] {
        let v = c
            .ask(json!({"op": "handle", "id": "h", "topic": "hl.run", "group": "hleaving"}))
            .await;
        assert_eq!(v["op"], "handling", "{v}");
    }
    let bus = node.bus.clone();
    let sent = tokio::spawn(async move {
        bus.send_envelope(Envelope::new(Topic::new("hl.run").unwrap(), "{}"))
            .await
    });
    // One of the two members gets it.
    let got = tokio::select! {
        cmd = a.expect("command") => Ok(cmd),
        cmd = b.expect("command") => Err(cmd),
    };
    let (worker, cmd) = match got {
        Ok(cmd) => (&mut a, cmd),
        Err(cmd) => (&mut b, cmd),
    };
    worker
        .send(json!({"op": "result", "call": cmd["call"], "ok": true, "payload": 1}))
        .await;
    tokio::time::timeout(crate::support::WAIT, sent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let stats = eventually("the handler row", || async {
        let stats = get(&node, "/v1/stats").await;
        handler_row(&stats, name).map(|_| stats)
    })
    .await;
    assert!(
        stats["latency"].to_string().contains(name),
        "no latency row while handling: {}",
        stats["latency"]
    );
    a.close().await;
    b.close().await;
    assert_group_left_no_rows(node, name, "handler group").await;
}

/// Once the bus no longer has `name` (the group's last member gone), neither `/v1/stats`
/// (`handlers`, `latency`) nor `/metrics` mention it; then stops the node.
async fn assert_group_left_no_rows(node: TestNode, name: &str, what: &str) {
    eventually("the group's registration to end", || async {
        (!node.bus.registry().iter().any(|s| &*s.name == name)).then_some(())
    })
    .await;
    let stats = get(&node, "/v1/stats").await;
    let text = stats["handlers"].to_string() + &stats["latency"].to_string();
    assert!(
        !text.contains(name),
        "/v1/stats keeps rows of the ended {what} {name}: {text}"
    );
    let metrics = metrics_text(&node).await;
    let left: Vec<&str> = metrics.lines().filter(|l| l.contains(name)).collect();
    assert!(left.is_empty(), "/metrics keeps series of {name}: {left:?}");
    node.stop().await;
}

/// Publishes one message to `topic`, lets a manual subscriber nack it with `nack` (plus the
/// delivery) on every delivery until it is dead-lettered, and returns the dead letter and how
/// many deliveries the subscriber got.
async fn nacked_until_dead_lettered(topic: &str, nack: Value) -> (Value, usize) {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe(&format!("{topic}.#"), json!({"ack": "manual"}))
        .await;
    node.bus
        .publish_envelope(event(&format!("{topic}.x"), 1))
        .await
        .unwrap();
    let mut deliveries = 0;
    let dlq = loop {
        let m = c.recv().await;
        match m["op"].as_str() {
            Some("message") => {
                deliveries += 1;
                let mut frame = nack.clone();
                frame["op"] = json!("nack");
                frame["delivery"] = m["delivery"].clone();
                c.send(frame).await;
            }
            _ => panic!("expected a message: {m}"),
        }
        let v = get(&node, "/v1/dlq").await;
        if v["total"] == 1 {
            break v;
        }
        if deliveries == 3 {
            break eventually("the message to be dead-lettered", || async {
                let v = get(&node, "/v1/dlq").await;
                (v["total"] == 1).then_some(v)
            })
            .await;
        }
    };
    c.close().await;
    node.stop().await;
    (dlq["items"][0].clone(), deliveries)
}

/// A subscriber's `nack` with an `error` is a failed attempt whose text the dead letter keeps
/// (before: `nack` had no `error`, a Python handler's exception was only logged on the
/// client, and the dead letter said "handler asked for a retry").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_s_error_is_kept_in_the_dead_letter() {
    let (letter, deliveries) = nacked_until_dead_lettered(
        "nerr",
        json!({"error": "ZeroDivisionError: division by zero"}),
    )
    .await;
    assert_eq!(deliveries, 3, "the node's 3 attempts: {letter}");
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("ZeroDivisionError: division by zero"),
        "the dead letter lost the subscriber's error: {letter}"
    );
}

/// `reject: true` refuses the message for good: dead-lettered at once (reason `rejected`),
/// with the subscriber's `error` as its reason; not offered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_with_reject_dead_letters_at_once() {
    let (letter, deliveries) =
        nacked_until_dead_lettered("nrej", json!({"reject": true, "error": "not an order"})).await;
    assert_eq!(
        deliveries, 1,
        "a rejected message was offered again: {letter}"
    );
    assert_eq!(letter["reason"], "rejected", "{letter}");
    assert!(
        letter["error"].as_str().unwrap().contains("not an order"),
        "{letter}"
    );
}

/// A hand-back's `error` says why; in memory (nowhere to go back to) the dead letter keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_back_s_reason_is_kept_in_the_dead_letter() {
    let (letter, deliveries) = nacked_until_dead_lettered(
        "nhb",
        json!({"hand_back": true, "error": "tenant 7 lives elsewhere"}),
    )
    .await;
    assert_eq!(deliveries, 1, "{letter}");
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("handed back by WebSocket connection")
            && error.contains("tenant 7 lives elsewhere"),
        "{letter}"
    );
}

/// `hand_back` and `reject` together are refused with `bad_request`, the delivery still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_cannot_both_hand_back_and_reject() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("nboth.#", json!({"ack": "manual"})).await;
    node.bus
        .publish_envelope(event("nboth.x", 1))
        .await
        .unwrap();
    let m = c.expect("message").await;
    let v = c
        .ask(json!({"op": "nack", "id": "n", "delivery": m["delivery"], "hand_back": true, "reject": true}))
        .await;
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["error"]["kind"], "bad_request", "{v}");
    // The ack finds the delivery still waiting (else an error op comes before the answer).
    c.send(json!({"op": "ack", "delivery": m["delivery"]}))
        .await;
    let v = c
        .ask(json!({"op": "unsubscribe", "id": "u", "subscription": m["subscription"]}))
        .await;
    assert_eq!(
        v["op"], "unsubscribed",
        "the delivery no longer waited: {v}"
    );
    c.close().await;
    node.stop().await;
}
