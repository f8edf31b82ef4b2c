//! `with_default_resilience` / `with_resilience` on the bus builder (issue 13, items 2, 3, 5):
//! batches are retried, settings do not depend on call order, and the attempts the layer
//! made are the attempts the bus reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{
    Backoff, BoxError, Bus, BusBuilder, Command, Envelope, Jitter, Kind, Message, Outcome,
    SendError, boxed,
};
use switchyard_middleware::dlq::{DeadLetterQueue, FileDeadLetterQueue, FileDlqOptions};
use switchyard_middleware::resilience::ResilienceConfig;
use switchyard_middleware::retry::RetryPolicy;
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    n: u64,
}
impl Message for Row {
    const TOPIC: &'static str = "rows.added";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    cents: u64,
}
impl Message for Charge {
    const TOPIC: &'static str = "billing.charge";
    const KIND: Kind = Kind::Command;
}
impl Command for Charge {
    type Output = u64;
}

/// One way of calling the builder: its name and the calls.
type Case<F> = (&'static str, F);
/// A builder made with a data directory.
type WithDir = fn(&std::path::Path) -> BusBuilder;

/// An event handler that always fails, counting its calls.
fn always_failing(calls: Arc<AtomicU32>) -> switchyard::BoxHandler {
    boxed(tower::service_fn(move |_e: Envelope| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<Outcome, BoxError>("backend down".into()) }
    }))
}

fn row(n: u64) -> Envelope {
    Row { n }.to_envelope().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_is_retried_under_default_resilience() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let handled = Arc::new(AtomicU32::new(0));
    let (c, h) = (calls.clone(), handled.clone());
    let _sub = bus
        .on_batch("store", move |rows: Vec<Row>, _| {
            let call = c.fetch_add(1, Ordering::SeqCst) + 1;
            let h = h.clone();
            async move {
                if call == 1 {
                    return Err("database briefly unavailable");
                }
                h.fetch_add(rows.len() as u32, Ordering::SeqCst);
                Ok(())
            }
        })
        .batch(10, Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    for n in 0..3 {
        bus.publish(Row { n }).await.unwrap();
    }
    bus.run_until_idle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the transient failure is retried"
    );
    assert_eq!(handled.load(Ordering::SeqCst), 3, "the batch went through");
    assert!(bus.dead_letters().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn data_dir_after_with_default_resilience_still_gets_the_file_dead_letter_queue() {
    let cases: [Case<WithDir>; 2] = [
        ("data_dir first", |d| {
            Bus::builder().data_dir(d).with_default_resilience()
        }),
        ("data_dir last", |d| {
            Bus::builder().with_default_resilience().data_dir(d)
        }),
    ];
    for (order, builder) in cases {
        let dir = tempfile::tempdir().unwrap();
        let bus = builder(dir.path()).build().unwrap();
        assert!(
            bus.dead_letters().is_none(),
            "{order}: letters go to the file, not the default store"
        );
        let _sub = bus
            .subscribe("orders", "orders.#", always_failing(Arc::default()))
            .start()
            .await
            .unwrap();
        let mut env = row(1);
        env.topic = switchyard::Topic::new("orders.placed").unwrap();
        bus.publish_envelope(env).await.unwrap();
        bus.run_until_idle().await;
        bus.shutdown(Duration::from_secs(1)).await.unwrap();
        let path = switchyard::resilience::dead_letter_file(dir.path());
        assert!(path.exists(), "{order}: no dead-letter file at {path:?}");
        let dlq = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
        assert_eq!(dlq.len(), 1, "{order}: the dead letter is in the file");
    }
}

#[tokio::test(start_paused = true)]
async fn max_attempts_means_the_same_before_and_after_with_default_resilience() {
    let cases: [Case<fn() -> BusBuilder>; 2] = [
        ("max_attempts first", || {
            Bus::builder().max_attempts(5).with_default_resilience()
        }),
        ("max_attempts last", || {
            Bus::builder().with_default_resilience().max_attempts(5)
        }),
    ];
    for (order, builder) in cases {
        let bus = builder().build().unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let _sub = bus
            .subscribe("rows", "rows.#", always_failing(calls.clone()))
            .start()
            .await
            .unwrap();
        bus.publish_envelope(row(1)).await.unwrap();
        bus.run_until_idle().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            5,
            "{order}: max_attempts(5) calls a failing handler 5 times"
        );
        let letters = bus.dead_letters().unwrap().list();
        assert_eq!(letters.len(), 1, "{order}");
        assert_eq!(
            letters[0].attempts, 5,
            "{order}: the dead letter counts them"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn failed_and_dead_letter_report_the_attempts_the_resilience_layer_made() {
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default().retry(
                RetryPolicy::default()
                    .max_attempts(3)
                    .initial_delay(Duration::from_millis(10)),
            )
        })
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _h = bus
        .handle(move |_: Charge, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<u64, _>("card processor down") }
        })
        .start()
        .await
        .unwrap();
    let err = bus.send(Charge { cents: 100 }).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    match &err {
        SendError::Failed { error, attempts } => {
            assert!(
                error.contains("gave up after 3 attempt(s)"),
                "error text: {error}"
            );
            assert_eq!(*attempts, 3, "attempts in SendError::Failed ({err})");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3, "attempts in the dead letter");
}

#[tokio::test(start_paused = true)]
async fn a_sink_given_explicitly_wins_over_the_data_dir_file_queue() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(switchyard::InMemoryDeadLetters::default());
    let s = sink.clone();
    let bus = Bus::builder()
        .dead_letters(s)
        .data_dir(dir.path())
        .with_default_resilience()
        .build()
        .unwrap();
    let _sub = bus
        .subscribe("rows", "rows.#", always_failing(Arc::default()))
        .start()
        .await
        .unwrap();
    bus.publish_envelope(row(1)).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(sink.len(), 1, "the given sink got the letter");
    assert!(
        !switchyard::resilience::dead_letter_file(dir.path()).exists(),
        "no file queue is opened beside it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriptions_max_attempts_sets_the_resilience_layers_attempts() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let _sub = bus
        .subscribe("rows", "rows.#", always_failing(calls.clone()))
        .max_attempts(2)
        .start()
        .await
        .unwrap();
    bus.publish_envelope(row(1)).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "2 calls, not 2 x 3");
    assert_eq!(bus.dead_letters().unwrap().list()[0].attempts, 2);
}

/// Sends the virtual time of every call of an always-failing handler.
fn timed_failing(tx: tokio::sync::mpsc::UnboundedSender<Instant>) -> switchyard::BoxHandler {
    boxed(tower::service_fn(move |_e: Envelope| {
        let _ = tx.send(Instant::now());
        async { Err::<Outcome, BoxError>("backend down".into()) }
    }))
}

/// The waits between the first `n` calls reported on `rx`.
async fn waits(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>, n: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..n {
        let t = tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .expect("the next attempt came")
            .expect("the handler is alive");
        times.push(t);
    }
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Within tokio's timer resolution (a deadline is rounded up to the next millisecond).
fn about(got: &[Duration], want_ms: &[u64]) -> bool {
    got.len() == want_ms.len()
        && got
            .iter()
            .zip(want_ms)
            .all(|(g, w)| g.abs_diff(Duration::from_millis(*w)) <= Duration::from_millis(1))
}

#[tokio::test(start_paused = true)]
async fn the_bus_backoff_sets_the_resilience_layers_backoff() {
    let bus = Bus::builder()
        .with_default_resilience()
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_secs(5)))
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .subscribe("rows", "rows.#", timed_failing(tx))
        .start()
        .await
        .unwrap();
    bus.publish_envelope(row(1)).await.unwrap();
    let got = waits(&mut rx, 3).await;
    assert!(about(&got, &[5_000, 5_000]), "waits {got:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_waits_the_resilience_policys_backoff() {
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default().retry(
                RetryPolicy::default()
                    .max_attempts(3)
                    .initial_delay(Duration::from_secs(2))
                    .jitter(Jitter::None),
            )
        })
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .on_batch("store", move |_: Vec<Row>, _| {
            let _ = tx.send(Instant::now());
            async { Err::<(), _>("database down") }
        })
        .batch(10, Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    bus.publish(Row { n: 1 }).await.unwrap();
    let got = waits(&mut rx, 3).await;
    assert!(
        about(&got, &[2_000, 4_000]),
        "a batch waits what a single message would: {got:?}"
    );
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3, "and is dead-lettered after as many");
}

/// What a handler saw of one attempt.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    payload: bytes::Bytes,
    header: Option<String>,
    added: Option<String>,
    attempt: u32,
    first_delivered_at: Option<std::time::SystemTime>,
}

#[tokio::test(start_paused = true)]
async fn a_retry_under_the_bus_sees_the_envelope_as_delivered_after_the_handler_changed_its_copy() {
    // Issue 18: the stack keeps the bus's shared envelope for retries instead of a copy; a
    // retry must still get the message as delivered, not the handler's changes to its own.
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = boxed(tower::service_fn(move |mut e: Envelope| {
        let _ = tx.send(Seen {
            payload: e.payload.clone(),
            header: e.header("origin").map(str::to_owned),
            added: e.header("added").map(str::to_owned),
            attempt: e.delivery.attempt,
            first_delivered_at: e.delivery.first_delivered_at,
        });
        // The handler changes its copy before failing.
        e.payload = bytes::Bytes::from_static(b"changed");
        e.headers_mut().insert("origin", "changed");
        e.headers_mut().insert("added", "by the handler");
        e.delivery.attempt = 99;
        async { Err::<Outcome, BoxError>("backend down".into()) }
    }));
    let _sub = bus
        .subscribe("rows", "rows.#", handler)
        .start()
        .await
        .unwrap();
    let mut env = row(7);
    env.headers_mut().insert("origin", "publisher");
    let payload = env.payload.clone();
    bus.publish_envelope(env).await.unwrap();
    bus.run_until_idle().await;
    let mut seen = Vec::new();
    while let Ok(s) = rx.try_recv() {
        seen.push(s);
    }
    assert_eq!(
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        [1, 2, 3],
        "three attempts, numbered: {seen:?}"
    );
    let first_delivered_at = seen[0].first_delivered_at;
    assert!(first_delivered_at.is_some(), "stamped on delivery");
    for s in &seen {
        assert_eq!(s.payload, payload, "payload as delivered: {s:?}");
        assert_eq!(
            s.header.as_deref(),
            Some("publisher"),
            "header as delivered"
        );
        assert_eq!(s.added, None, "no header the handler added");
        assert_eq!(
            s.first_delivered_at, first_delivered_at,
            "same first delivery"
        );
    }
    assert_eq!(bus.dead_letters().unwrap().list()[0].attempts, 3);
}

/// The bus holds the stack as it is and runs each call's future in a box the handler clone
/// keeps from call to call: message after message (some waiting before they answer, some
/// failing once and retried by the stack), on a worker and on commands run by their senders
/// or queued, every call ends as its handler said and nothing is left over from the last.
#[tokio::test(start_paused = true)]
async fn calls_through_the_stack_end_as_the_handler_said_message_after_message() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let handled = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (c, h) = (calls.clone(), handled.clone());
    let sub = bus
        .subscribe(
            "rows",
            "rows.#",
            boxed(tower::service_fn(move |e: Envelope| {
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                async move {
                    let n = serde_json::from_slice::<Row>(&e.payload)?.n;
                    if n % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                    if n % 3 == 0 && e.delivery.attempt == 1 {
                        return Err::<Outcome, BoxError>(format!("row {n} fails once").into());
                    }
                    h.lock().push(n);
                    Ok(Outcome::Ack)
                }
            })),
        )
        .start()
        .await
        .unwrap();
    for n in 0..20 {
        bus.publish_envelope(row(n)).await.unwrap();
    }
    bus.run_until_idle().await;
    let mut got = handled.lock().clone();
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>(), "every row handled once");
    // Rows 0, 3, 6, 9, 12, 15 and 18 took a second attempt.
    assert_eq!(calls.load(Ordering::SeqCst), 27);
    // The stack's re-attempts are the subscription's retries, though its worker called it
    // once per message.
    let stats = sub.stats();
    assert_eq!((stats.delivered, stats.retried), (20, 7), "{stats:?}");
    assert!(bus.dead_letters().unwrap().list().is_empty());

    let _charges = bus
        .handle(|c: Charge, _| async move {
            if c.cents % 2 == 1 {
                tokio::task::yield_now().await;
            }
            Ok::<_, BoxError>(c.cents * 2)
        })
        .workers(2)
        .start()
        .await
        .unwrap();
    // One after another: each runs on its sender's task, in the handler clone's kept box.
    for cents in 0..10 {
        assert_eq!(bus.send(Charge { cents }).await.unwrap(), cents * 2);
    }
    // Together: two run inline (two workers), the rest queue for the workers.
    let sends = (10..30).map(|cents| {
        let bus = bus.clone();
        async move { (cents, bus.send(Charge { cents }).await) }
    });
    for (cents, answer) in futures::future::join_all(sends).await {
        assert_eq!(answer.unwrap(), cents * 2, "charge {cents}");
    }
}
