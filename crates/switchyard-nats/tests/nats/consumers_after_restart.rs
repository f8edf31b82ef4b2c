//! A server restart that loses the streams (a memory-storage stream on a server of the
//! test's own, killed with SIGKILL and started again on the same port): the transport makes
//! the stream again, and every subscription's consumer (a group's durable one and an
//! ephemeral one) comes back promptly, well before its pull request would have expired, and
//! reads what is published on the new, empty stream (an ephemeral consumer that had seen
//! sequences 1..3 of the lost stream does not start at 4 and skip the new stream's 1..3).

use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_conformance::Setup;
use switchyard_core::{Delivery, Envelope, Publisher, Subscriber};
use switchyard_nats::{NatsConfig, NatsSubscription, NatsTransport, Storage};

use crate::harness::{NatsServer, server_binary_available};

/// Far longer than the test waits for anything after the restart: a consumer that is only
/// found lost when its pull request expires shows as a timeout.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How long a delivery after the restart may take.
const PROMPT: Duration = Duration::from_secs(8);

/// Waits (at most 20 s, checking every 20 ms: the transport has no event for it) until
/// `done` holds; panics naming `what` when it does not.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next delivery of `sub` within `within`, acked; its payload as text.
async fn next(sub: &mut NatsSubscription, who: &str, within: Duration) -> Result<String, String> {
    let d: Delivery = match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(d)) => d,
        Ok(None) => return Err(format!("{who}: the subscription ended")),
        Err(_) => return Err(format!("{who}: nothing delivered within {within:?}")),
    };
    let text = String::from_utf8_lossy(&d.envelope.payload).into_owned();
    d.ack()
        .await
        .map_err(|e| format!("{who}: ack failed: {e}"))?;
    Ok(text)
}

/// Four deliveries of `sub`, each by [`PROMPT`] after `since`; the error that stopped it.
async fn read_four(
    sub: &mut NatsSubscription,
    who: &str,
    since: Instant,
) -> (Vec<String>, Option<String>) {
    let mut got = Vec::new();
    for _ in 0..4 {
        let left = PROMPT.saturating_sub(since.elapsed());
        match next(sub, who, left).await {
            Ok(text) => got.push(text),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_that_lost_the_stream_group_and_ephemeral_consumers_come_back_promptly() {
    if !server_binary_available() {
        return;
    }
    let mut server = NatsServer::start();
    let setup = Setup::new();
    let config = NatsConfig::new(server.url())
        .with_stream(setup.namespace.clone(), [setup.all().unwrap()])
        .with_storage(Storage::Memory)
        .with_max_age(Duration::from_secs(600))
        .with_pull_expires(PULL_EXPIRES)
        .with_publish_timeout(Duration::from_secs(5));
    let t = NatsTransport::connect(config).await.unwrap();
    let all = setup.all().unwrap();
    let mut group = t.subscribe(&all, Some("workers")).await.unwrap();
    let mut solo = t.subscribe(&all, None).await.unwrap();
    let topic = setup.topic("jobs").unwrap();

    // Sequences 1..3 of the first stream, read by both.
    for i in 0..3 {
        t.publish(vec![Envelope::new(topic.clone(), format!("before-{i}"))])
            .await
            .unwrap();
    }
    for i in 0..3 {
        assert_eq!(
            next(&mut group, "group", PROMPT).await.unwrap(),
            format!("before-{i}")
        );
        assert_eq!(
            next(&mut solo, "ephemeral", PROMPT).await.unwrap(),
            format!("before-{i}")
        );
    }

    let reconnects = t.health().reconnects;
    let mut server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    until("the reconnect and the stream made again", || {
        let h = t.health();
        h.reconnects > reconnects && h.streams_ready
    })
    .await;

    // Sequences 1..4 of the new stream.
    let since = Instant::now();
    for i in 0..4 {
        t.publish(vec![Envelope::new(topic.clone(), format!("after-{i}"))])
            .await
            .unwrap();
    }
    // Both read at once, each within PROMPT of the publishes.
    let ((group_got, group_err), (solo_got, solo_err)) = tokio::join!(
        read_four(&mut group, "group", since),
        read_four(&mut solo, "ephemeral", since)
    );
    let failures: Vec<String> = [group_err, solo_err].into_iter().flatten().collect();
    let got = [("group", &group_got), ("ephemeral", &solo_got)]
        .iter()
        .flat_map(|(who, texts)| texts.iter().map(move |t| format!("{who}: {t}")))
        .collect::<Vec<_>>();
    let took = since.elapsed();
    assert!(
        failures.is_empty(),
        "after the restart (pull_expires {PULL_EXPIRES:?}): {failures:?}; got {got:?} in {took:?}"
    );
    let expected: Vec<String> = ["group", "ephemeral"]
        .iter()
        .flat_map(|who| (0..4).map(move |i| format!("{who}: after-{i}")))
        .collect();
    assert_eq!(got, expected, "each new message once, in order, to each");
    // Nothing more (no duplicate) shortly after.
    for (who, sub) in [("group", &mut group), ("ephemeral", &mut solo)] {
        if let Ok(text) = next(sub, who, Duration::from_millis(500)).await {
            panic!("{who}: a further delivery {text:?} after the four new messages");
        }
    }
    eprintln!("consumers back after the restart: 8 deliveries in {took:?}");
    drop(group);
    drop(solo);
    let _ = t
        .close(std::time::Instant::now() + Duration::from_secs(5))
        .await;
    server.kill();
}

/// The new stream already holds messages when the ephemeral consumer is made again: an
/// ephemeral subscription that read sequences 1..2 of the lost stream does not resume at
/// sequence 3 of the new one (skipping its first two messages) but reads it from its start.
///
/// One message at a time (`pull_batch` 1, so the subscription holds at most one message and
/// one more waits in the worker): the test does not read while the server restarts, the
/// stream is made again and four messages are stored, so the worker (waiting to hand out
/// the second message) makes its consumer again only once the new stream holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_consumer_made_again_on_a_new_stream_that_holds_messages_reads_them_all() {
    if !server_binary_available() {
        return;
    }
    let mut server = NatsServer::start();
    let setup = Setup::new();
    let config = NatsConfig::new(server.url())
        .with_stream(setup.namespace.clone(), [setup.all().unwrap()])
        .with_storage(Storage::Memory)
        .with_max_age(Duration::from_secs(600))
        .with_pull_batch(1)
        .with_pull_expires(PULL_EXPIRES)
        .with_publish_timeout(Duration::from_secs(5));
    let t = NatsTransport::connect(config).await.unwrap();
    let mut solo = t.subscribe(&setup.all().unwrap(), None).await.unwrap();
    let topic = setup.topic("jobs").unwrap();
    for i in 0..3 {
        t.publish(vec![Envelope::new(topic.clone(), format!("before-{i}"))])
            .await
            .unwrap();
    }
    let reconnects = t.health().reconnects;
    let mut server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    until("the reconnect and the stream made again", || {
        let h = t.health();
        h.reconnects > reconnects && h.streams_ready
    })
    .await;
    let since = Instant::now();
    for i in 0..4 {
        t.publish(vec![Envelope::new(topic.clone(), format!("after-{i}"))])
            .await
            .unwrap();
    }
    // What the subscription had pulled before the restart (at most two), then the new
    // stream's four messages.
    let mut got = Vec::new();
    let mut failure = None;
    while got
        .iter()
        .filter(|t: &&String| t.starts_with("after"))
        .count()
        < 4
    {
        let left = PROMPT.saturating_sub(since.elapsed());
        match next(&mut solo, "ephemeral", left).await {
            Ok(text) => got.push(text),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let took = since.elapsed();
    let before: Vec<&String> = got.iter().filter(|t| t.starts_with("before")).collect();
    let after: Vec<&String> = got.iter().filter(|t| t.starts_with("after")).collect();
    assert!(
        failure.is_none() && after == ["after-0", "after-1", "after-2", "after-3"],
        "the new stream's four messages, in order, once: got {got:?} in {took:?} ({failure:?})"
    );
    assert!(
        before.len() <= 2
            && before
                .iter()
                .enumerate()
                .all(|(i, t)| **t == format!("before-{i}")),
        "only what was pulled before the restart, in order: {got:?}"
    );
    if let Ok(text) = next(&mut solo, "ephemeral", Duration::from_millis(500)).await {
        panic!("a further delivery {text:?} after {got:?}");
    }
    eprintln!("ephemeral consumer on the new stream: {got:?} in {took:?}");
    drop(solo);
    let _ = t
        .close(std::time::Instant::now() + Duration::from_secs(5))
        .await;
    server.kill();
}
