//! Scale-out on NATS JetStream: two nodes on one NATS share consumer groups, and a message
//! published through one node is handled through the other. Needs NATS with JetStream on
//! 127.0.0.1:4222 (skipped loudly when absent, unless CI is set).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;
use switchyard::Envelope;
use tokio::sync::mpsc;

use common::{TestNode, client};

const NATS: &str = "nats://127.0.0.1:4222";

async fn nats_available() -> bool {
    let up = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect("127.0.0.1:4222"),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !up {
        assert!(
            std::env::var_os("CI").is_none(),
            "NATS is not running on 127.0.0.1:4222 and CI is set"
        );
        eprintln!("SKIPPED: NATS is not running on 127.0.0.1:4222");
    }
    up
}

fn config(stream: &str, prefix: &str) -> String {
    format!(
        r#"
[transport]
kind = "nats"
url = "{NATS}"
storage = "memory"
[[transport.streams]]
name = "{stream}"
patterns = ["{prefix}.#"]
[retention]
trace_messages = 0
"#
    )
}

async fn publish(node: &TestNode, topic: &str) -> String {
    let res = client()
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_nats_share_consumer_groups() {
    if !nats_available().await {
        return;
    }
    let suffix = switchyard::MessageId::new().to_string();
    let stream = format!("SYNODE_{suffix}");
    let prefix = format!("t{suffix}");
    let a = TestNode::start(&config(&stream, &prefix)).await;
    let b = TestNode::start(&config(&stream, &prefix)).await;

    // 1. Only node B has the subscription: a publish through A is handled through B.
    let (tx_b, mut rx_b) = mpsc::unbounded_channel::<(char, Envelope)>();
    let tx = tx_b.clone();
    let sub_b = b
        .bus
        .subscribe("workers", &format!("{prefix}.jobs.#"), tagged('b', tx))
        .start()
        .await
        .unwrap();
    let id = publish(&a, &format!("{prefix}.jobs.first")).await;
    let (who, env) = tokio::time::timeout(Duration::from_secs(20), rx_b.recv())
        .await
        .expect("B handles what A accepted")
        .unwrap();
    assert_eq!((who, env.id.to_string()), ('b', id));

    // 2. Both nodes have "workers": one consumer group, every message handled once in all.
    let sub_a = a
        .bus
        .subscribe(
            "workers",
            &format!("{prefix}.jobs.#"),
            tagged('a', tx_b.clone()),
        )
        .start()
        .await
        .unwrap();
    let mut expected = HashSet::new();
    for i in 0..20 {
        expected.insert(publish(&a, &format!("{prefix}.jobs.a{i}")).await);
        expected.insert(publish(&b, &format!("{prefix}.jobs.b{i}")).await);
    }
    let mut seen: HashMap<String, Vec<char>> = HashMap::new();
    while expected.iter().any(|id| !seen.contains_key(id)) {
        let (who, env) = tokio::time::timeout(Duration::from_secs(20), rx_b.recv())
            .await
            .expect("every message is handled by one of the nodes")
            .unwrap();
        seen.entry(env.id.to_string()).or_default().push(who);
    }
    // A last message through B, after the others: once it is in, a second (unshared)
    // group would have delivered the earlier ones twice by now.
    let last = publish(&b, &format!("{prefix}.jobs.last")).await;
    loop {
        let (who, env) = tokio::time::timeout(Duration::from_secs(20), rx_b.recv())
            .await
            .expect("the last message is handled")
            .unwrap();
        let id = env.id.to_string();
        seen.entry(id.clone()).or_default().push(who);
        if id == last {
            break;
        }
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, w)| w.len() > 1).collect();
    assert!(dupes.is_empty(), "handled more than once: {dupes:?}");
    assert_eq!(seen.len(), 41);

    drop((sub_a, sub_b));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    if let Ok((who, env)) = rx_b.try_recv() {
        panic!("{who} handled {} again after the run", env.id);
    }
    // Remove the test's stream from the shared server.
    if let Ok(t) =
        switchyard_nats::NatsTransport::connect(switchyard_nats::NatsConfig::new(NATS)).await
    {
        let _ = t.delete_stream(&stream).await;
    }
}

fn tagged(who: char, tx: mpsc::UnboundedSender<(char, Envelope)>) -> switchyard::BoxHandler {
    switchyard::handler_fn(move |env: Envelope| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((who, env));
            Ok::<_, std::convert::Infallible>(switchyard::Outcome::Ack)
        }
    })
}
