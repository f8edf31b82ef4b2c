//! Scale-out on NATS JetStream: two nodes on one NATS share consumer groups, and a message
//! published through one node is handled through the other. Needs NATS with JetStream on
//! 127.0.0.1:4222 (skipped loudly when absent, unless CI is set).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::Envelope;
use tokio::sync::mpsc;

use common::{TestNode, client, error_of};

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
max_bytes = 67108864
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

/// Node to node: a command or request sent through node A's gateway is executed by a handler
/// on node B (both on NATS; A has no handler of its own), with B's result or typed failure
/// back; once B is stopped, A answers `no_handler` at once rather than waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_through_node_a_is_handled_on_node_b() {
    if !nats_available().await {
        return;
    }
    let suffix = switchyard::MessageId::new().to_string();
    let stream = format!("SYCMD_{suffix}");
    let prefix = format!("c{suffix}");
    let a = TestNode::start(&config(&stream, &prefix)).await;
    let b = TestNode::start(&config(&stream, &prefix)).await;
    let create = format!("{prefix}.invoices.create");
    let delete = format!("{prefix}.invoices.delete");
    b.bus
        .handle_envelope(
            "billing",
            &create,
            switchyard::handler_fn(|env: Envelope| async move {
                let input: Value = serde_json::from_slice(&env.payload)?;
                let reply = env.reply(serde_json::to_vec(
                    &json!({"handled_by": "b", "amount": input["amount"]}),
                )?);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(switchyard::Outcome::reply(reply))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    b.bus
        .handle_envelope(
            "billing-guard",
            &delete,
            switchyard::handler_fn(|_env: Envelope| async move {
                Ok::<_, std::convert::Infallible>(switchyard::Outcome::reject(
                    "invoices are never deleted",
                ))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();

    for path in [
        format!("/v1/send/{create}"),
        format!("/v1/request/{create}?timeout_ms=5000"),
    ] {
        let res = http
            .post(a.url(&path))
            .header("content-type", "application/json")
            .body(r#"{"amount": 42}"#)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            body["payload"],
            json!({"handled_by": "b", "amount": 42}),
            "{path}"
        );
    }

    // B's typed failure reaches A's caller as the same typed error.
    let res = http
        .post(a.url(&format!("/v1/send/{delete}")))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (422, "handler_rejected"));
    assert!(message.contains("never deleted"), "{message}");

    // B gone: no process serves the topic, and A says so promptly.
    b.stop().await.unwrap();
    for path in [
        format!("/v1/send/{create}"),
        format!("/v1/request/{create}?timeout_ms=20000"),
    ] {
        let started = std::time::Instant::now();
        let res = http.post(a.url(&path)).body("{}").send().await.unwrap();
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (404, "no_handler"),
            "{path}: {message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path}: no_handler took {:?}",
            started.elapsed()
        );
    }
    a.stop().await.unwrap();
    if let Ok(t) =
        switchyard_nats::NatsTransport::connect(switchyard_nats::NatsConfig::new(NATS)).await
    {
        let _ = t.delete_stream(&stream).await;
    }
}

mod review_rev3;
mod review_rev38;
