//! Review rev3: a node on NATS. `x-message-id` is the JetStream dedup key (docs/gateway.md,
//! `POST /v1/publish`); a DLQ replay racing the handler that dead-letters it again.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use tokio::sync::mpsc;

use crate::common::{TestNode, client, forward, get_json};

const T: Duration = Duration::from_secs(20);

/// The same `x-message-id` published twice through the gateway is stored once: the
/// subscription gets it once (a later message shows the stream moved past it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_x_message_id_is_delivered_once_on_nats() {
    if !crate::nats_available().await {
        return;
    }
    let suffix = switchyard::MessageId::new().to_string();
    let (stream, prefix) = (format!("SYREV3_{suffix}"), format!("r{suffix}"));
    let node = TestNode::start(&crate::config(&stream, &prefix)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = node
        .bus
        .subscribe("dedup", &format!("{prefix}.#"), forward(tx))
        .start()
        .await
        .unwrap();
    let publish = |id: &'static str, body: &'static str| {
        client()
            .post(node.url(&format!("/v1/publish/{prefix}.orders")))
            .header("content-type", "application/json")
            .header("x-message-id", id)
            .body(body)
            .send()
    };
    assert_eq!(
        publish("order-42", r#"{"n":1}"#).await.unwrap().status(),
        202
    );
    assert_eq!(
        publish("order-42", r#"{"n":1}"#).await.unwrap().status(),
        202
    );
    assert_eq!(
        publish("order-43", r#"{"n":2}"#).await.unwrap().status(),
        202
    );
    let mut ids = Vec::new();
    loop {
        let env = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        ids.push(env.id.to_string());
        if env.id.to_string() == "order-43" {
            break;
        }
    }
    assert_eq!(ids, vec!["order-42", "order-43"]);
    node.stop().await.unwrap();
}

/// The gateway counterpart of switchyard-middleware's `review_rev3` replay tests, where the
/// race is widest: on NATS the replay's publish waits for JetStream's acknowledgement while
/// the consumer may already have the message, reject it and dead-letter it again; the
/// replay then removes every entry of the id, the new one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_dead_lettered_again_stays_in_the_queue_on_nats() {
    if !crate::nats_available().await {
        return;
    }
    let suffix = switchyard::MessageId::new().to_string();
    let (stream, prefix) = (format!("SYREV3_{suffix}"), format!("r{suffix}"));
    let node = TestNode::start(&crate::config(&stream, &prefix)).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    node.bus
        .subscribe(
            "billing",
            &format!("{prefix}.#"),
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(env.header("replay-count").unwrap_or("0").to_owned());
                    Ok::<_, std::convert::Infallible>(Outcome::reject("declined"))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let res = client()
        .post(node.url(&format!("/v1/publish/{prefix}.charge")))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut lost = None;
    for round in 0..30u32 {
        // The delivery of this round's message (replay-count = round).
        let seen = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        assert_eq!(seen, round.to_string());
        // Its dead letter is there once the bus is idle (the rejection settled).
        let status = loop {
            node.bus.run_until_idle().await;
            let item: Value = get_json(&node, &format!("/v1/dlq/{id}")).await;
            if item["message"]["headers"]["replay-count"]
                .as_str()
                .unwrap_or("0")
                == round.to_string()
                || item["error"]["kind"] == "not_found"
            {
                break item;
            }
            tokio::task::yield_now().await;
        };
        if status["error"]["kind"] == "not_found" {
            // Not a late put: it does not come back within 3 s either (polled; the queue has
            // no event to wait on from outside).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut back = false;
            while tokio::time::Instant::now() < deadline {
                let code = client()
                    .get(node.url(&format!("/v1/dlq/{id}")))
                    .send()
                    .await
                    .unwrap()
                    .status();
                if code == 200 {
                    back = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !back {
                let all: Value = get_json(&node, "/v1/dlq").await;
                eprintln!("round {round}: GET /v1/dlq/{id} is 404; the queue holds {all}");
                lost = Some(round);
                break;
            }
        }
        let report: Value = client()
            .post(node.url("/v1/dlq/replay"))
            .json(&json!({ "ids": [id] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(report["replayed"], 1, "{report}");
    }
    assert_eq!(
        lost, None,
        "the message was dead-lettered again but is gone from the queue"
    );
    node.stop().await.unwrap();
}
