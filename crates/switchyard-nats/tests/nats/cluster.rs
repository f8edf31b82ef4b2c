//! A real NATS cluster on one machine: three `nats-server` processes with cluster routes, a stream
//! replicated R3, one node SIGKILLed mid-stream. Every acknowledged publish is delivered and
//! stored once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_conformance::Setup;
use switchyard_core::{Envelope, MessageId, Publisher, Subscriber};
use switchyard_nats::{NatsConfig, NatsTransport};
use tokio::sync::Notify;

use crate::harness::{Cluster, server_binary_available};

const PUBLISHERS: usize = 2;
const EACH: usize = 300;
const WAIT: Duration = Duration::from_secs(60);

async fn connect(config: NatsConfig) -> NatsTransport {
    // The cluster elects its JetStream meta leader after the servers are up: until then
    // stream creation fails, so retry (bounded).
    let deadline = Instant::now() + WAIT;
    let mut backoff = Duration::from_millis(100);
    loop {
        match NatsTransport::connect(config.clone()).await {
            Ok(t) => return t,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster not ready yet: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => panic!("cluster never became ready: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_survives_a_killed_node() {
    if !server_binary_available() {
        return;
    }
    let mut cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let setup = Setup::new().with_ack_wait(Duration::from_secs(5));
    let mut config = NatsConfig::new(cluster.url())
        .with_stream(setup.namespace.clone(), [setup.all().unwrap()])
        .with_publish_timeout(Duration::from_secs(30))
        .with_ack_timeout(Duration::from_secs(1));
    config.replicas = 3;
    let t = connect(config).await;
    let topic = setup.topic("cluster").unwrap();

    let accepted: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let seen: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let progress = Arc::new(Notify::new());
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let consumer = {
        let seen = seen.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                seen.lock().unwrap().insert(d.envelope.id.clone());
                let _ = d.ack().await;
                progress.notify_waiters();
            }
        })
    };
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let t = t.clone();
        let topic = topic.clone();
        let accepted = accepted.clone();
        let progress = progress.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let e = Envelope::new(topic.clone(), format!("{p}-{i}"));
                let mut failures = 0;
                while t.publish(vec![e.clone()]).await.is_err() {
                    failures += 1;
                    assert!(failures < 5, "publishing kept failing");
                }
                accepted.lock().unwrap().insert(e.id);
                progress.notify_waiters();
            }
        }));
    }
    let quarter = async {
        loop {
            let n = progress.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if accepted.lock().unwrap().len() >= PUBLISHERS * EACH / 4 {
                return;
            }
            n.await;
        }
    };
    tokio::time::timeout(WAIT, quarter)
        .await
        .expect("a quarter published");
    // Kill the node this client is connected to: the client must fail over.
    let port = t.client().server_info().port;
    let victim = cluster.node_on(port).unwrap_or(0);
    cluster.kill(victim);
    for p in publishers {
        tokio::time::timeout(WAIT, p)
            .await
            .expect("publisher finished")
            .unwrap();
    }
    let want = accepted.lock().unwrap().clone();
    let all_seen = async {
        loop {
            let n = progress.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if want.is_subset(&seen.lock().unwrap()) {
                return;
            }
            n.await;
        }
    };
    tokio::time::timeout(WAIT, all_seen)
        .await
        .unwrap_or_else(|_| {
            let missing = want.difference(&seen.lock().unwrap()).count();
            panic!("{missing} acknowledged messages never delivered");
        });
    consumer.abort();
    // Resends were absorbed: the stream holds each message once.
    let client = async_nats::connect(
        cluster
            .url()
            .split(',')
            .filter(|u| !u.ends_with(&format!(":{port}")))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(&setup.namespace)
        .await
        .unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored as usize, want.len(), "duplicates stored");
    let health = t.health();
    assert!(health.disconnects >= 1, "{health:?}");
    eprintln!(
        "cluster test: {} messages, killed node {victim}, {health:?}",
        want.len()
    );
    let _ = t.close(Instant::now() + Duration::from_secs(5)).await;
}
