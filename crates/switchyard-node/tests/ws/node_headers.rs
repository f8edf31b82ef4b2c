//! Headers the node and the bus own (docs/gateway.md, "Message JSON"): a client cannot
//! write the DLQ replay provenance (`replayed-from`, `replay-count`) on what it publishes,
//! sends or requests, in any case, over the socket or HTTP; other headers it writes pass.

use serde_json::json;
use switchyard::{Envelope, Outcome, handler_fn};
use switchyard_core::dead_letter::{REPLAY_COUNT, REPLAYED_FROM};

use crate::support::{Client, TestNode, WAIT};

/// The headers of `env` named like one the node owns (any case).
fn forged(env: &Envelope) -> Vec<(String, String)> {
    env.headers()
        .iter()
        .filter(|(k, _)| {
            [REPLAYED_FROM, REPLAY_COUNT]
                .iter()
                .any(|owned| k.eq_ignore_ascii_case(owned))
        })
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_the_replay_provenance_headers() {
    let node = TestNode::start("").await;
    let seen = switchyard::testkit::Recorder::start(&node.bus, "orders.#")
        .await
        .unwrap();
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
    node.bus
        .handle_envelope(
            "cancel",
            "orders.cancel",
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    let reply = env.reply("{}");
                    tx.send(env).unwrap();
                    Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();

    let forge = json!({
        "replayed-from": "01J9Z5V7D3K4M0Q5W8Y2B6C1E0",
        "Replay-Count": "7",
        "REPLAYED-FROM": "x",
        "kept": "yes",
    });
    let mut client = Client::connect(&node.ws_url(), None).await;
    let v = client
        .ask(
            json!({"op": "publish", "id": 1, "topic": "orders.a", "payload": {}, "headers": forge}),
        )
        .await;
    assert_eq!(v["op"], "published", "{v}");
    let v = client
        .ask(json!({"op": "publish_batch", "id": 2, "messages": [
            {"topic": "orders.b", "payload": {}, "headers": forge}]}))
        .await;
    assert_eq!(v["op"], "published_batch", "{v}");
    let v = client
        .ask(json!({"op": "send", "id": 3, "topic": "orders.cancel", "payload": {}, "headers": forge}))
        .await;
    assert_eq!(v["op"], "reply", "{v}");
    let res = reqwest::Client::new()
        .post(node.http("/v1/publish/orders.c"))
        .header("x-meta-replayed-from", "01J9Z5V7D3K4M0Q5W8Y2B6C1E0")
        .header("x-meta-Replay-Count", "7")
        .header("x-meta-kept", "yes")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);

    let mut envs = seen.wait_for(3, WAIT).await.unwrap();
    envs.push(
        tokio::time::timeout(WAIT, commands.recv())
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(envs.len(), 4);
    for env in &envs {
        assert_eq!(
            forged(env),
            [],
            "{}: forged replay headers kept: {:?}",
            env.topic,
            env.headers()
        );
        assert_eq!(
            env.headers().get("kept"),
            Some("yes"),
            "{:?}",
            env.headers()
        );
        assert_eq!(
            env.headers().get("principal"),
            Some("anonymous"),
            "{:?}",
            env.headers()
        );
    }
    node.stop().await;
}
