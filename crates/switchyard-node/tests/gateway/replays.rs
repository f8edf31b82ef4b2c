//! `GET /v1/dlq/replays`: what became of each replayed dead letter, as the node saw it
//! (handled, failed again and dead-lettered, not yet handled, unknown), and the `replay`
//! events of `/v1/stream`.

use std::sync::Arc;

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use tokio::sync::Semaphore;

use crate::common::{MEMORY, TestNode, client};
use crate::live::Events;

async fn publish(node: &TestNode, topic: &str) -> String {
    let res = client()
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json")
        .body(r#"{"amount": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn replay(node: &TestNode, id: &str) {
    let report: Value = client()
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({ "ids": [id] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report, json!({"replayed": 1, "failed": []}));
}

async fn replays(node: &TestNode, ids: &str) -> (u16, Value) {
    let res = client()
        .get(node.url("/v1/dlq/replays"))
        .query(&[("ids", ids)])
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// `billing` on `billing.#`: rejects a first delivery; a replayed one (it carries
/// `replay-count`) is rejected too when `always` is set, else acked once `gate` lets it.
async fn billing(node: &TestNode, always: bool, gate: Arc<Semaphore>) {
    node.bus
        .subscribe(
            "billing",
            "billing.#",
            handler_fn(move |env: Envelope| {
                let gate = gate.clone();
                async move {
                    if always || env.header("replay-count").is_none() {
                        return Ok::<_, std::convert::Infallible>(Outcome::reject("card declined"));
                    }
                    let _permit = gate.acquire().await;
                    Ok(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
}

#[tokio::test]
async fn a_replay_is_pending_until_handled_then_handled_by_its_subscription() {
    let node = TestNode::start(MEMORY).await;
    let gate = Arc::new(Semaphore::new(0));
    billing(&node, false, gate.clone()).await;
    let id = publish(&node, "billing.charge").await;
    node.bus.run_until_idle().await;
    let mut events = Events::open(&node, None).await;

    replay(&node, &id).await;
    // The replayed delivery to billing waits on the gate: nothing to report from it yet.
    let (status, body) = replays(&node, &id).await;
    assert_eq!(status, 200, "{body}");
    let state = &body["replays"][0];
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["topic"], "billing.charge");
    assert!(state["replayed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(state["status"], "pending", "{state}");
    assert_eq!(state["outcomes"], json!([]));

    gate.add_permits(1);
    let event = events
        .until("replay", |v| {
            v["id"] == id.as_str()
                && v["outcomes"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|o| o["subscription"] == "billing"))
        })
        .await;
    assert_eq!(event["status"], "handled", "{event}");
    node.bus.run_until_idle().await;
    let (_, body) = replays(&node, &id).await;
    let state = &body["replays"][0];
    assert_eq!(state["status"], "handled", "{state}");
    let outcomes = state["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 1, "{state}");
    assert_eq!(outcomes[0]["subscription"], "billing");
    assert_eq!(outcomes[0]["outcome"], "handled");
    assert_eq!(outcomes[0]["error"], Value::Null);
    assert!(outcomes[0]["at"].as_str().unwrap().ends_with('Z'));
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_replay_that_fails_again_is_reported_dead_lettered_with_its_error() {
    let node = TestNode::start(MEMORY).await;
    billing(&node, true, Arc::new(Semaphore::new(0))).await;
    let id = publish(&node, "billing.charge").await;
    node.bus.run_until_idle().await;

    replay(&node, &id).await;
    node.bus.run_until_idle().await;
    let (_, body) = replays(&node, &id).await;
    let state = &body["replays"][0];
    assert_eq!(state["status"], "dead_lettered", "{state}");
    let outcomes = state["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{state}");
    assert_eq!(outcomes[0]["subscription"], "billing");
    assert_eq!(outcomes[0]["outcome"], "rejected");
    assert_eq!(outcomes[0]["error"], "card declined");
    assert_eq!(outcomes[1]["subscription"], "billing");
    assert_eq!(outcomes[1]["outcome"], "dead_lettered");
    assert!(
        outcomes[1]["error"]
            .as_str()
            .unwrap()
            .contains("card declined"),
        "{state}"
    );
    // It is in the queue again, under the same id.
    let res = client()
        .get(node.url(&format!("/v1/dlq/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn an_id_not_replayed_is_unknown_and_a_bad_query_is_refused() {
    let node = TestNode::start(MEMORY).await;
    billing(&node, true, Arc::new(Semaphore::new(0))).await;
    let id = publish(&node, "billing.charge").await;
    node.bus.run_until_idle().await;
    // Dead-lettered, never replayed: nothing is followed.
    let (status, body) = replays(&node, &format!("{id},01ARZ3NDEKTSV4RRFFQ69G5FAV")).await;
    assert_eq!(status, 200, "{body}");
    for (i, want) in [id.as_str(), "01ARZ3NDEKTSV4RRFFQ69G5FAV"]
        .iter()
        .enumerate()
    {
        let state = &body["replays"][i];
        assert_eq!(state["id"], *want);
        assert_eq!(state["status"], "unknown", "{state}");
        assert_eq!(state["outcomes"], json!([]));
        assert_eq!(state["topic"], Value::Null);
    }
    for bad in ["", ",", "a b"] {
        let (status, body) = replays(&node, bad).await;
        assert_eq!(status, 400, "ids={bad:?}: {body}");
    }
    let res = client()
        .get(node.url("/v1/dlq/replays"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "ids is required");
    node.stop().await.unwrap();
}
