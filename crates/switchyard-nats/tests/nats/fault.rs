//! The fault test: the server is killed (SIGKILL) mid-stream while publishers and a
//! consumer run, then restarted. Every publish that returned `Ok` is delivered, and the
//! stream holds each message once (resends were absorbed by `Nats-Msg-Id` dedup).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use switchyard_conformance::Setup;
use switchyard_core::{Envelope, MessageId, Publisher, Subscriber};
use switchyard_nats::NatsTransport;
use tokio::sync::Notify;

use crate::harness::{NatsHarness, server_binary_available};

const PUBLISHERS: usize = 4;
const EACH: usize = 500;
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_stream_loses_nothing_acknowledged() {
    if !server_binary_available() {
        return;
    }
    let harness = NatsHarness::owned();
    let setup = Setup::new().with_ack_wait(Duration::from_secs(5));
    let t = NatsTransport::connect(harness.config(&setup))
        .await
        .unwrap();
    let topic = setup.topic("fault").unwrap();

    let accepted: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let progress = Arc::new(Notify::new());
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let t = t.clone();
        let topic = topic.clone();
        let accepted = accepted.clone();
        let progress = progress.clone();
        publishers.push(tokio::spawn(async move {
            let mut failures = 0;
            for i in 0..EACH {
                let e = Envelope::new(topic.clone(), format!("{p}-{i}"));
                let id = e.id.clone();
                // A publish that fails is retried by the caller with the same envelope, as
                // an application would; dedup keeps one copy.
                loop {
                    match t.publish(vec![e.clone()]).await {
                        Ok(()) => break,
                        Err(_) => failures += 1,
                    }
                    assert!(failures < 20, "publishing kept failing");
                }
                accepted.lock().unwrap().insert(id);
                progress.notify_waiters();
            }
        }));
    }

    // The consumer acks everything it gets, across the outage.
    let seen: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let deliveries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let consumer = {
        let seen = seen.clone();
        let deliveries = deliveries.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                deliveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                seen.lock().unwrap().insert(d.envelope.id.clone());
                let _ = d.ack().await;
                progress.notify_waiters();
            }
        })
    };

    // Kill once a quarter is through, then bring it back.
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
    let server = harness_server(&harness);
    tokio::task::spawn_blocking(move || {
        let mut s = server.lock().unwrap();
        s.kill();
        s.restart();
    })
    .await
    .unwrap();

    for p in publishers {
        tokio::time::timeout(WAIT, p)
            .await
            .expect("publisher finished")
            .unwrap();
    }
    let want = accepted.lock().unwrap().clone();
    assert_eq!(want.len(), PUBLISHERS * EACH);
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

    // Dedup: the stream holds exactly one copy of each message.
    let client = async_nats::connect(harness_url(&harness)).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&setup.namespace).await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored as usize, want.len(), "duplicates stored");
    let health = t.health();
    assert!(health.disconnects >= 1, "{health:?}");
    assert!(health.reconnects >= 1, "{health:?}");
    eprintln!(
        "fault test: {} messages, {} deliveries, {:?}",
        want.len(),
        deliveries.load(std::sync::atomic::Ordering::Relaxed),
        health
    );
    t.close(std::time::Instant::now() + Duration::from_secs(10))
        .await
        .unwrap();
}

fn harness_server(h: &NatsHarness) -> Arc<Mutex<crate::harness::NatsServer>> {
    h.server().expect("owned server")
}

fn harness_url(h: &NatsHarness) -> String {
    h.url().to_owned()
}
