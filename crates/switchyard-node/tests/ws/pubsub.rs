//! Subscribe, publish, manual ack/nack, consumer groups.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use switchyard::{Envelope, Topic};

use crate::support::{Client, TestNode};

fn event(topic: &str, n: u64) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), json!({ "n": n }).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_from_one_socket_reaches_a_subscriber_on_another_as_message_json() {
    let node = TestNode::start("").await;
    let mut sub = node.client().await;
    let sid = sub.subscribe("orders.#", json!({})).await;
    let mut publisher = node.client().await;
    let answer = publisher
        .ask(json!({
            "op": "publish", "id": "c2", "topic": "orders.placed",
            "payload": {"order": 42, "items": ["a", "b"]},
            "headers": {"tenant": "acme"},
            "correlation_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "priority": 200,
            "source": "shop"
        }))
        .await;
    assert_eq!(answer["op"], "published", "{answer}");
    assert_eq!(answer["id"], "c2");
    assert_eq!(answer["correlation_id"], "01ARZ3NDEKTSV4RRFFQ69G5FAV");

    let m = sub.expect("message").await;
    assert_eq!(m["subscription"], sid.as_str());
    assert!(m["delivery"].is_string());
    let msg = &m["message"];
    assert_eq!(msg["id"], answer["message_id"]);
    assert_eq!(msg["topic"], "orders.placed");
    assert_eq!(msg["kind"], "event");
    assert_eq!(msg["correlation_id"], "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    assert_eq!(msg["priority"], 200);
    assert_eq!(msg["source"], "shop");
    assert_eq!(msg["content_type"], "application/json");
    assert_eq!(msg["payload"], json!({"order": 42, "items": ["a", "b"]}));
    assert_eq!(msg["headers"]["tenant"], "acme");
    assert_eq!(msg["headers"]["principal"], "anonymous");
    assert_eq!(msg["attempt"], 1);

    // Bytes travel as base64 with their content type; events from Rust arrive too.
    let answer = publisher
        .ask(json!({"op": "publish", "id": 3, "topic": "orders.raw",
                    "payload_base64": "AAEC/w==", "content_type": "application/x-thing"}))
        .await;
    assert_eq!(answer["op"], "published", "{answer}");
    assert_eq!(answer["id"], 3);
    let m = sub.expect("message").await;
    assert_eq!(m["message"]["payload_base64"], "AAEC/w==");
    assert_eq!(m["message"]["content_type"], "application/x-thing");
    assert!(m["message"].get("payload").is_none());

    node.bus
        .publish_envelope(event("orders.shipped", 7))
        .await
        .unwrap();
    let m = sub.expect("message").await;
    assert_eq!(m["message"]["topic"], "orders.shipped");
    assert_eq!(m["message"]["payload"], json!({"n": 7}));

    // Not matching the pattern: not delivered (the next frame is the unsubscribe answer).
    node.bus
        .publish_envelope(event("users.created", 1))
        .await
        .unwrap();
    node.bus.run_until_idle().await;
    let v = sub
        .ask(json!({"op": "unsubscribe", "id": "u", "subscription": sid}))
        .await;
    assert_eq!(v["op"], "unsubscribed", "{v}");
    assert_eq!(v["subscription"], sid.as_str());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_batch_publishes_in_order_and_refuses_the_whole_batch_when_one_is_invalid() {
    let node = TestNode::start("").await;
    let mut sub = node.client().await;
    sub.subscribe("b.#", json!({})).await;
    let mut c = node.client().await;
    let messages: Vec<Value> = (0..50)
        .map(|n| json!({"topic": "b.x", "payload": {"n": n}}))
        .collect();
    let v = c
        .ask(json!({"op": "publish_batch", "id": "b1", "messages": messages}))
        .await;
    assert_eq!(v["op"], "published_batch", "{v}");
    assert_eq!(v["count"], 50);
    let ids = v["message_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 50);
    for (n, id) in ids.iter().enumerate() {
        let m = sub.expect("message").await;
        assert_eq!(m["message"]["payload"]["n"], n);
        assert_eq!(&m["message"]["id"], id);
    }

    let v = c
        .ask(json!({"op": "publish_batch", "id": "b2", "messages": [
            {"topic": "b.ok", "payload": 1},
            {"topic": "b..bad", "payload": 2}
        ]}))
        .await;
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["id"], "b2");
    assert_eq!(v["error"]["kind"], "invalid_topic");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[1]"),
        "{v}"
    );
    // Nothing of the refused batch was published: the next message is this one.
    node.bus
        .publish_envelope(event("b.after", 0))
        .await
        .unwrap();
    assert_eq!(sub.expect("message").await["message"]["topic"], "b.after");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_manual_delivery_is_redelivered_and_an_acked_one_is_settled() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("jobs.#", json!({"ack": "manual"})).await;
    node.bus
        .publish_envelope(event("jobs.run", 1))
        .await
        .unwrap();

    let first = c.expect("message").await;
    assert_eq!(first["message"]["attempt"], 1);
    c.send(json!({"op": "nack", "delivery": first["delivery"], "delay_ms": 10}))
        .await;
    let second = c.expect("message").await;
    assert_eq!(
        second["message"]["id"], first["message"]["id"],
        "same message again"
    );
    assert_eq!(second["message"]["attempt"], 2);
    assert_ne!(second["delivery"], first["delivery"]);

    // The first delivery was settled by the nack: acking it now is refused.
    let v = c
        .ask(json!({"op": "ack", "id": "late", "delivery": first["delivery"]}))
        .await;
    assert_eq!(v["op"], "error");
    assert_eq!(v["id"], "late");
    assert_eq!(v["error"]["kind"], "not_found");

    c.send(json!({"op": "ack", "delivery": second["delivery"]}))
        .await;
    node.bus.run_until_idle().await; // settled: nothing pending on the bus
    let stats = node
        .bus
        .registry()
        .into_iter()
        .find(|s| s.name.starts_with("ws:anonymous:"))
        .unwrap()
        .stats;
    assert_eq!(stats.acked, 1);
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(node.bus.pending(), 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_delivery_not_acked_by_the_last_subscriber_is_dead_lettered_when_it_leaves() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("jobs.#", json!({"ack": "manual"})).await;
    node.bus
        .publish_envelope(event("jobs.run", 5))
        .await
        .unwrap();
    let m = c.expect("message").await;
    let id = m["message"]["id"].as_str().unwrap().to_owned();
    c.close().await;
    node.bus.run_until_idle().await;
    let v: Value = reqwest::get(node.http("/v1/dlq"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["id"], id.as_str());
    assert!(
        items[0]["error"]
            .as_str()
            .unwrap()
            .contains("no connected WebSocket subscriber"),
        "{v}"
    );
    node.stop().await;
}

/// Reads from both clients until `n` messages arrived in all; returns the `n` of each
/// message per client.
async fn collect_two(a: &mut Client, b: &mut Client, n: usize) -> (Vec<u64>, Vec<u64>) {
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while got_a.len() + got_b.len() < n {
        tokio::select! {
            m = a.expect("message") => got_a.push(m["message"]["payload"]["n"].as_u64().unwrap()),
            m = b.expect("message") => got_b.push(m["message"]["payload"]["n"].as_u64().unwrap()),
        }
    }
    (got_a, got_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sockets_in_one_group_share_its_messages_and_an_ephemeral_one_gets_all() {
    let node = TestNode::start("").await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    let mut watcher = node.client().await;
    a.subscribe("work.#", json!({"group": "workers"})).await;
    b.subscribe("work.#", json!({"group": "workers"})).await;
    watcher.subscribe("work.#", json!({})).await;
    // Joining with another pattern is refused.
    let v = watcher
        .ask(json!({"op": "subscribe", "id": "x", "pattern": "other.#", "group": "workers"}))
        .await;
    assert_eq!(v["error"]["kind"], "bad_request", "{v}");

    for n in 0..20 {
        node.bus
            .publish_envelope(event("work.item", n))
            .await
            .unwrap();
    }
    let (got_a, got_b) = collect_two(&mut a, &mut b, 20).await;
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "a {got_a:?} b {got_b:?}"
    );
    let all: BTreeSet<u64> = got_a.iter().chain(&got_b).copied().collect();
    assert_eq!(all.len(), 20, "each message once: a {got_a:?} b {got_b:?}");
    assert_eq!(all, (0..20).collect());
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(
            watcher.expect("message").await["message"]["payload"]["n"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    // One bus subscription for the group, one for the ephemeral subscriber.
    let names: Vec<String> = node.bus.registry().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "ws:group:anonymous:workers")
            .count(),
        1,
        "{names:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_of_a_member_that_disconnects_goes_to_the_other_member_at_once() {
    let node = TestNode::start("").await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    a.subscribe(
        "work.#",
        json!({"group": "g", "ack": "manual", "max_in_flight": 1}),
    )
    .await;
    b.subscribe(
        "work.#",
        json!({"group": "g", "ack": "manual", "max_in_flight": 1}),
    )
    .await;
    node.bus
        .publish_envelope(event("work.item", 1))
        .await
        .unwrap();
    let (first, holder_is_a) = tokio::select! {
        m = a.expect("message") => (m, true),
        m = b.expect("message") => (m, false),
    };
    let (holder, mut other) = if holder_is_a { (a, b) } else { (b, a) };
    holder.close().await; // leaves without acking
    let m = other.expect("message").await;
    assert_eq!(m["message"]["id"], first["message"]["id"]);
    assert_eq!(
        m["message"]["attempt"], 1,
        "handed over within the same attempt, without a retry delay"
    );
    other
        .send(json!({"op": "ack", "delivery": m["delivery"]}))
        .await;
    node.bus.run_until_idle().await;
    let v: Value = reqwest::get(node.http("/v1/dlq"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 0, "{v}");
    node.stop().await;
}

/// A nack is the client's choice, not a handler failure: however many come in, the
/// subscription keeps delivering (a circuit breaker counting them would pause it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_never_pause_a_subscription() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("jobs.#", json!({"ack": "manual"})).await;
    for n in 0..3 {
        node.bus
            .publish_envelope(event("jobs.run", n))
            .await
            .unwrap();
        // Nacked on every attempt until the retry policy gives up (3 attempts).
        for attempt in 1..=3 {
            let m = c.expect("message").await;
            assert_eq!(m["message"]["payload"]["n"], n);
            assert_eq!(m["message"]["attempt"], attempt);
            c.send(json!({"op": "nack", "delivery": m["delivery"], "delay_ms": 1}))
                .await;
        }
    }
    node.bus
        .publish_envelope(event("jobs.run", 99))
        .await
        .unwrap();
    let m = c.expect("message").await;
    assert_eq!(m["message"]["payload"]["n"], 99);
    c.send(json!({"op": "ack", "delivery": m["delivery"]}))
        .await;
    node.bus.run_until_idle().await;
    let v: Value = reqwest::get(node.http("/v1/dlq"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["total"], 3,
        "the three nacked to the end are dead letters: {v}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_subscription_works_on_the_log_transport() {
    let node = TestNode::start_on_log("").await;
    // Published before anyone subscribed: kept in the log, but not for a subscriber that
    // comes later without a group.
    node.bus
        .publish_envelope(event("log.before", 0))
        .await
        .unwrap();
    let mut sub = node.client().await;
    let sid = sub.subscribe("log.#", json!({})).await;
    assert!(
        node.bus
            .registry()
            .iter()
            .any(|s| s.name.starts_with("ws:anonymous:")),
        "the ephemeral subscription is on the bus"
    );
    let mut publisher = node.client().await;
    for n in 1..=3u64 {
        let v = publisher
            .ask(json!({"op": "publish", "id": n, "topic": "log.after", "payload": {"n": n}}))
            .await;
        assert_eq!(v["op"], "published", "{v}");
    }
    node.bus
        .publish_envelope(event("log.rust", 4))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = sub.expect("message").await;
        assert_eq!(m["subscription"], sid.as_str());
        seen.push((
            m["message"]["topic"].as_str().unwrap().to_owned(),
            m["message"]["payload"]["n"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("log.after".to_owned(), 1),
            ("log.after".to_owned(), 2),
            ("log.after".to_owned(), 3),
            ("log.rust".to_owned(), 4),
        ],
        "what was published while subscribed, in order, and not what came before"
    );
    // Unsubscribing ends the bus subscription.
    let v = sub
        .ask(json!({"op": "unsubscribe", "id": "u", "subscription": sid}))
        .await;
    assert_eq!(v["op"], "unsubscribed", "{v}");
    assert!(
        !node
            .bus
            .registry()
            .iter()
            .any(|s| s.name.starts_with("ws:anonymous:"))
    );
    node.stop().await;
}
