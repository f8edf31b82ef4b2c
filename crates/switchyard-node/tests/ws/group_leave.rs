//! A group's last member on this node leaves holding unacked deliveries: on a shared
//! transport (the log here; NATS in `switchyard-cli`'s review_rev25) they go back to the
//! transport for the group's next member, without counting an attempt; on the memory
//! transport nothing else could take them, so they are dead-lettered.

use serde_json::{Value, json};
use switchyard::{Envelope, Topic};

use crate::support::{TestNode, eventually};

fn event(topic: &str, n: u64) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), json!({ "n": n }).to_string())
}

async fn dlq(node: &TestNode) -> Value {
    reqwest::get(node.http("/v1/dlq"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_log_a_group_whose_last_member_leaves_keeps_its_unacked_delivery_for_the_next() {
    let node = TestNode::start_on_log("").await;
    let mut first = node.client().await;
    first
        .subscribe("lv.#", json!({"group": "g", "ack": "manual"}))
        .await;
    node.bus
        .publish_envelope(event("lv.item", 1))
        .await
        .unwrap();
    let m = first.expect("message").await;
    let id = m["message"]["id"].as_str().unwrap().to_owned();
    assert_eq!(m["message"]["attempt"], 1, "{m}");
    first.close().await; // the group's last member leaves without acking
    // The group's bus subscription ends with its last member.
    eventually("the group's subscription ended", || async {
        (!node
            .bus
            .registry()
            .iter()
            .any(|s| s.name == "ws:group:anonymous:g"))
        .then_some(())
    })
    .await;
    assert_eq!(dlq(&node).await["total"], 0, "nothing dead-lettered");
    // The next member gets it, as the same attempt (the hand-back is not one).
    let mut next = node.client().await;
    next.subscribe("lv.#", json!({"group": "g", "ack": "manual"}))
        .await;
    let m = next.expect("message").await;
    assert_eq!(m["message"]["id"], id.as_str(), "{m}");
    assert_eq!(
        m["message"]["attempt"], 1,
        "the hand-back counted as an attempt: {m}"
    );
    next.send(json!({"op": "ack", "delivery": m["delivery"]}))
        .await;
    node.bus.run_until_idle().await;
    assert_eq!(dlq(&node).await["total"], 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_a_group_whose_last_member_leaves_dead_letters_its_unacked_delivery() {
    let node = TestNode::start("").await;
    let mut only = node.client().await;
    only.subscribe("lv.#", json!({"group": "g", "ack": "manual"}))
        .await;
    node.bus
        .publish_envelope(event("lv.item", 1))
        .await
        .unwrap();
    let m = only.expect("message").await;
    only.close().await;
    node.bus.run_until_idle().await;
    let v = dlq(&node).await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["items"][0]["id"], m["message"]["id"], "{v}");
    assert_eq!(v["items"][0]["reason"], "rejected", "{v}");
    node.stop().await;
}
