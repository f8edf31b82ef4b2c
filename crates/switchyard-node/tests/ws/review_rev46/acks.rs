//! Manual acks as a client in another language uses them: `max_in_flight`, nacks with and
//! without a delay, acks of deliveries that are not waiting, a member that leaves
//! mid-stream, and per-key order.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::{dlq, event};
use crate::support::{Client, TestNode, WAIT, eventually};

/// The next `message` frame, or `None` when none comes within `quiet` (an absence check:
/// a late frame makes a later assertion fail, never a false pass of a wrong bound).
async fn next_message_within(c: &mut Client, quiet: Duration) -> Option<Value> {
    match tokio::time::timeout(quiet, c.recv()).await {
        Ok(v) => {
            assert_eq!(v["op"], "message", "{v}");
            Some(v)
        }
        Err(_) => None,
    }
}

/// "`max_in_flight` bounds the unacked deliveries of the subscription; past it the bus
/// queue holds the rest": a client that holds 2 never sees a third before it acks, and
/// every message arrives once it acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_deliveries_wait_for_an_ack_and_none_is_lost() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("r46.mif.#", json!({"ack": "manual", "max_in_flight": 2}))
        .await;
    for n in 0..6 {
        node.bus
            .publish_envelope(event("r46.mif.x", n))
            .await
            .unwrap();
    }
    let mut held: VecDeque<Value> = VecDeque::new();
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 6 || !held.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "seen {seen:?}");
        match next_message_within(&mut c, Duration::from_millis(300)).await {
            Some(m) => {
                assert!(
                    held.len() < 2,
                    "a third delivery while 2 are unacked (max_in_flight 2): {m}"
                );
                assert!(seen.insert(m["message"]["payload"]["n"].as_u64().unwrap()));
                held.push_back(m["delivery"].clone());
            }
            None => {
                let d = held
                    .pop_front()
                    .expect("nothing held and nothing delivered");
                c.send(json!({"op": "ack", "delivery": d})).await;
            }
        }
    }
    assert_eq!(seen, (0..6).collect::<BTreeSet<u64>>());
    node.bus.run_until_idle().await;
    assert_eq!(dlq(&node).await["total"], 0);
    node.stop().await;
}

/// "`ack` ... none (an error op if that delivery is not waiting)": an ack or nack of an
/// unknown delivery, or of one already acked, is a `not_found` error op echoing the id, and
/// changes nothing: the acked message is neither redelivered nor dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_unknown_or_settled_deliveries_are_not_found_and_change_nothing() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("r46.dup.#", json!({"ack": "manual"})).await;
    node.bus
        .publish_envelope(event("r46.dup.x", 1))
        .await
        .unwrap();
    let m = c.expect("message").await;
    let d = m["delivery"].clone();
    c.send(json!({"op": "ack", "delivery": d})).await;
    let frames = [
        json!({"op": "ack", "id": "again", "delivery": d}),
        json!({"op": "nack", "id": "nack-settled", "delivery": d}),
        json!({"op": "nack", "id": "reject-settled", "delivery": d, "reject": true}),
        json!({"op": "ack", "id": "unknown", "delivery": "d-does-not-exist"}),
        json!({"op": "nack", "id": "unknown-nack", "delivery": "d-does-not-exist", "delay_ms": 5}),
    ];
    for f in frames {
        let v = c.ask(f.clone()).await;
        assert_eq!(v["op"], "error", "{f} -> {v}");
        assert_eq!(v["error"]["kind"], "not_found", "{f} -> {v}");
        assert_eq!(v["id"], f["id"], "{f} -> {v}");
    }
    node.bus
        .publish_envelope(event("r46.dup.x", 2))
        .await
        .unwrap();
    let m = c.expect("message").await;
    assert_eq!(m["message"]["payload"]["n"], 2, "no redelivery of 1: {m}");
    c.send(json!({"op": "ack", "delivery": m["delivery"]}))
        .await;
    node.bus.run_until_idle().await;
    assert_eq!(dlq(&node).await["total"], 0, "nothing dead-lettered");
    node.stop().await;
}

/// "`nack` asks for redelivery (after `delay_ms`); it counts as an attempt ... (3 attempts,
/// then the message is dead-lettered with its reason). A `nack` with an `error` ... the dead
/// letter's `error` keep it": a delayed nack comes back no sooner than its delay, attempt 2;
/// one without a delay comes back as attempt 3; the last nack's error is in the dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_with_and_without_delay_are_attempts_and_the_last_error_is_dead_lettered() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("r46.nack.#", json!({"ack": "manual"})).await;
    node.bus
        .publish_envelope(event("r46.nack.x", 7))
        .await
        .unwrap();
    let m = c.expect("message").await;
    assert_eq!(m["message"]["attempt"], 1, "{m}");
    let id = m["message"]["id"].clone();
    let nacked = tokio::time::Instant::now();
    c.send(json!({"op": "nack", "delivery": m["delivery"], "delay_ms": 400}))
        .await;
    let m = c.expect("message").await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(400),
        "redelivered after {:?}, before its 400 ms delay",
        nacked.elapsed()
    );
    assert_eq!(
        (m["message"]["attempt"].clone(), m["message"]["id"].clone()),
        (json!(2), id.clone())
    );
    c.send(json!({"op": "nack", "delivery": m["delivery"]}))
        .await;
    let m = c.expect("message").await;
    assert_eq!(m["message"]["attempt"], 3, "{m}");
    c.send(json!({"op": "nack", "delivery": m["delivery"], "error": "r46 cannot parse"}))
        .await;
    let items = eventually("the message is dead-lettered", || async {
        let v = dlq(&node).await;
        let items = v["items"].as_array()?.clone();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["id"], id);
    assert!(
        items[0].to_string().contains("r46 cannot parse"),
        "the nack's error is kept: {}",
        items[0]
    );
    // Nothing more reaches `c`: a fresh publish is its next frame.
    node.bus
        .publish_envelope(event("r46.nack.x", 99))
        .await
        .unwrap();
    let m = c.expect("message").await;
    assert_eq!(m["message"]["payload"]["n"], 99, "no fourth attempt: {m}");
    node.stop().await;
}

/// "When a connection ends ... each manual delivery it has not acked is handed at once to
/// another live member of its group ... Nothing is dropped without being handed back,
/// counted or dead-lettered": a member that leaves mid-stream holding deliveries loses
/// nothing; every message is acked by someone, none is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_leaving_mid_stream_loses_nothing() {
    const N: u64 = 40;
    let node = TestNode::start("").await;
    let opts = json!({"group": "r46g", "ack": "manual", "max_in_flight": 4});
    let mut a = node.client().await;
    a.subscribe("r46.grp.#", opts.clone()).await;
    let mut b = node.client().await;
    b.subscribe("r46.grp.#", opts).await;
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let by_b = acked.clone();
    let b_task = tokio::spawn(async move {
        loop {
            let m = b.expect("message").await;
            b.send(json!({"op": "ack", "delivery": m["delivery"]}))
                .await;
            let mut v = by_b.lock().unwrap();
            v.push(m["message"]["payload"]["n"].as_u64().unwrap());
            if v.iter().collect::<BTreeSet<_>>().len() as u64 == N {
                drop(v);
                return b;
            }
        }
    });
    for n in 0..N {
        node.bus
            .publish_envelope(event("r46.grp.x", n))
            .await
            .unwrap();
    }
    // A acks its first delivery, then leaves holding the next ones.
    let first = a.expect("message").await;
    a.send(json!({"op": "ack", "delivery": first["delivery"]}))
        .await;
    acked
        .lock()
        .unwrap()
        .push(first["message"]["payload"]["n"].as_u64().unwrap());
    let _held = a.expect("message").await;
    a.close().await;
    let b = tokio::time::timeout(WAIT * 2, b_task)
        .await
        .unwrap_or_else(|_| panic!("not every message was acked: {:?}", acked.lock().unwrap()))
        .unwrap();
    let all: BTreeSet<u64> = acked.lock().unwrap().iter().copied().collect();
    assert_eq!(all, (0..N).collect::<BTreeSet<u64>>());
    // B stays connected (a client that drops its socket without a close handshake, with
    // frames unread, resets the TCP connection: its last acks may never be read).
    tokio::time::timeout(WAIT, node.bus.run_until_idle())
        .await
        .expect("deliveries still unsettled although every message was acked");
    let d = dlq(&node).await;
    assert_eq!(d["total"], 0, "{d}");
    b.close().await;
    node.stop().await;
}

/// Publishes three messages of one `ordering-key` over the socket and checks that `c`
/// (subscribed with room for 16) gets each only after acking the one before.
async fn one_key_in_order(node: &TestNode, c: &mut Client) {
    let mut p = node.client().await;
    for n in 0..3 {
        let v = p
            .ask(
                json!({"op": "publish", "id": n, "topic": "r46.key.x", "payload": {"n": n},
                        "headers": {"ordering-key": "k1"}}),
            )
            .await;
        assert_eq!(v["op"], "published", "{v}");
    }
    for n in 0..3 {
        let m = c.expect("message").await;
        assert_eq!(m["message"]["payload"]["n"], n, "key order: {m}");
        let early = next_message_within(c, Duration::from_millis(300)).await;
        assert!(
            early.is_none(),
            "message of key k1 delivered before {n} was acked: {}",
            early.unwrap_or_default()
        );
        c.send(json!({"op": "ack", "delivery": m["delivery"]}))
            .await;
    }
}

/// "Deliveries in flight at once may reach the client out of publish order ...; messages
/// with one ordering key are in order, each after the previous one's ack" (memory transport,
/// an ephemeral subscription).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "defect: on the memory transport a manual WS subscription hands out one ordering key's messages in parallel, not each after the previous ack"]
async fn messages_of_one_ordering_key_wait_for_the_previous_ack() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("r46.key.#", json!({"ack": "manual", "max_in_flight": 16}))
        .await;
    one_key_in_order(&node, &mut c).await;
    node.stop().await;
}

/// The same promise on the log, through a group (docs/bus.md: "The log also hands out a
/// key's next message of its `ordering-key` header only once the one before it is settled").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_log_a_group_gets_one_key_in_order_each_after_the_ack() {
    let node = TestNode::start_on_log("").await;
    let mut c = node.client().await;
    c.subscribe(
        "r46.key.#",
        json!({"group": "r46k", "ack": "manual", "max_in_flight": 16}),
    )
    .await;
    one_key_in_order(&node, &mut c).await;
    node.stop().await;
}

/// "One connection can subscribe, publish, handle commands ... all at once": 200
/// subscriptions on one connection each get what is published on their topic, under their
/// own subscription id, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_subscriptions_on_one_connection_each_get_their_own_topic() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    let mut sids = std::collections::BTreeMap::new();
    for n in 0..200u64 {
        let v = c
            .ask(json!({"op": "subscribe", "id": n, "pattern": format!("r46.many.t{n}")}))
            .await;
        assert_eq!(v["op"], "subscribed", "{v}");
        assert!(
            sids.insert(v["subscription"].as_str().unwrap().to_owned(), n)
                .is_none()
        );
    }
    for n in 0..200u64 {
        node.bus
            .publish_envelope(event(&format!("r46.many.t{n}"), n))
            .await
            .unwrap();
    }
    let mut got = BTreeSet::new();
    for _ in 0..200 {
        let m = c.expect("message").await;
        let n = m["message"]["payload"]["n"].as_u64().unwrap();
        assert_eq!(sids[m["subscription"].as_str().unwrap()], n, "{m}");
        assert_eq!(m["message"]["topic"], format!("r46.many.t{n}"));
        assert!(got.insert(n), "twice: {m}");
    }
    node.stop().await;
}
