//! Review rev5: outside-in attacks on the bus's promises (docs/bus.md, ARCHITECTURE.md
//! "Invariants"), through the public API only. Attacks that found no defect pass and are kept
//! for their coverage; a defect is an `#[ignore = "defect: ..."]` test whose doc comment says
//! what is expected and what was observed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{
    Bus, DeadLetterReason, Envelope, MessageId, Outcome, Overflow, PublishError, SendError,
    SubscribeError, Topic, handler_fn,
};
use tokio::sync::{Semaphore, mpsc};

use crate::{Double, Ping, WAIT};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Waits for a permit of `gate` (and keeps it used).
async fn pass(gate: &Semaphore) -> Result<(), String> {
    gate.acquire()
        .await
        .map(|p| p.forget())
        .map_err(|e| e.to_string())
}

/// The ids of the dead letters with `reason`.
fn letters_with(bus: &Bus, reason: DeadLetterReason) -> Vec<MessageId> {
    bus.dead_letters()
        .unwrap()
        .list()
        .into_iter()
        .filter(|l| l.reason == reason)
        .map(|l| l.envelope.id)
        .collect()
}

/// docs/bus.md "Shutdown": "From the call on, publishes and sends get `ShuttingDown`."
/// Publishers already waiting for room in a full `Block` queue (with a long timeout) are
/// woken by the shutdown and refused, not left waiting for their block timeout; what was
/// accepted before drains and is counted once.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_refuses_publishers_blocked_on_a_full_queue() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut started) = mpsc::unbounded_channel();
    let g = gate.clone();
    let sub = bus
        .on("slow", move |p: Ping, _| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send(p.n);
                pass(&g).await
            }
        })
        .queue_capacity(1)
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(3600),
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 0 }).await.unwrap();
    assert_eq!(started.recv().await, Some(0));
    bus.publish(Ping { n: 1 }).await.unwrap(); // fills the queue
    let publishers: Vec<_> = (2..5)
        .map(|n| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish(Ping { n }).await })
        })
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        publishers.iter().all(|p| !p.is_finished()),
        "they wait for room"
    );
    let t0 = clock.now();
    let shutdown = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.shutdown(Duration::from_secs(7200)).await })
    };
    for p in publishers {
        let got = tokio::time::timeout(WAIT, p).await;
        match got {
            Ok(Ok(Err(PublishError::ShuttingDown))) => {}
            other => panic!("a blocked publisher should be refused by the shutdown, got {other:?}"),
        }
    }
    assert!(clock.now() - t0 < WAIT);
    gate.add_permits(100);
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!(report.drained, 2, "{report:?}");
    assert!(report.left.is_empty());
    let mut handled = vec![0];
    while let Ok(n) = started.try_recv() {
        handled.push(n);
    }
    assert_eq!(handled, [0, 1], "only the accepted messages were handled");
    assert_eq!(sub.stats().acked, 2);
    assert!(bus.dead_letters().unwrap().is_empty());
}

/// A message waiting in its retry backoff when the shutdown starts, with a deadline longer
/// than the backoff: it is retried (the retry still happens during the drain), handled, and
/// counted once in `drained` though it took two attempts.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_lets_a_retry_in_backoff_finish_within_the_deadline() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut failed) = mpsc::unbounded_channel();
    let c = calls.clone();
    let sub = bus
        .on("flaky", move |_: Ping, ctx| {
            let (c, tx) = (c.clone(), tx.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if ctx.attempt() == 1 {
                    let _ = tx.send(());
                    return Err("first attempt fails".to_owned());
                }
                Ok(())
            }
        })
        .retry_delay(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    failed.recv().await.unwrap();
    let report = bus.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(report.drained, 1, "{report:?}");
    assert!(report.left.is_empty());
    assert_eq!(sub.stats().acked, 1);
    assert!(bus.dead_letters().unwrap().is_empty());
    assert_eq!(bus.pending(), 0);
}

/// The same with a deadline shorter than the backoff: the message is left (named once,
/// dead-lettered with reason `Shutdown` after 1 attempt), not handled a second time, and
/// not counted as drained.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_deadline_during_a_retry_backoff_leaves_the_message_once() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut failed) = mpsc::unbounded_channel();
    let c = calls.clone();
    let _sub = bus
        .subscribe(
            "flaky",
            "test.ping",
            handler_fn(move |_env: Envelope| {
                let (c, tx) = (c.clone(), tx.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(());
                    Err::<Outcome, _>("always fails".to_owned())
                }
            }),
        )
        .retry_delay(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let env = Envelope::new(Topic::new("test.ping").unwrap(), "{\"n\":1}");
    let id = env.id.clone();
    bus.publish_envelope(env).await.unwrap();
    failed.recv().await.unwrap();
    let report = bus.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no attempt after the deadline"
    );
    assert_eq!(report.left, std::slice::from_ref(&id), "{report:?}");
    assert_eq!(report.drained, 0);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, DeadLetterReason::Shutdown);
    assert_eq!(letters[0].envelope.id, id);
    assert_eq!(bus.pending(), 0);
}

/// A queued (not inline) command waiting in its retry backoff at the shutdown deadline: its
/// sender gets `NotProcessed`, it is named in `report.left` and dead-lettered once.
#[tokio::test(flavor = "current_thread")]
async fn a_queued_command_in_its_retry_backoff_at_the_deadline_answers_not_processed() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut calls) = mpsc::unbounded_channel();
    let g = gate.clone();
    let _h = bus
        .handle(move |d: Double, ctx| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send((d.n, ctx.attempt()));
                if d.n == 0 {
                    pass(&g).await?; // occupies the one worker
                    return Ok(0);
                }
                Err::<u64, String>("fails".into())
            }
        })
        .retry_delay(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let first = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send(Double { n: 0 }).await })
    };
    assert_eq!(calls.recv().await, Some((0, 1)));
    let second = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send(Double { n: 1 }).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1); // the first answers, the worker takes the second from the queue
    assert_eq!(first.await.unwrap().unwrap(), 0);
    assert_eq!(calls.recv().await, Some((1, 1)));
    let report = bus.shutdown(Duration::from_secs(1)).await.unwrap();
    match second.await.unwrap() {
        Err(SendError::NotProcessed(_)) => {}
        other => panic!("expected NotProcessed, got {other:?}"),
    }
    assert_eq!(report.left.len(), 1, "{report:?}");
    assert_eq!(letters_with(&bus, DeadLetterReason::Shutdown), report.left);
    assert!(calls.try_recv().is_err(), "no attempt after the deadline");
}

/// Shutdown deadline with keyed lanes: one lane's head is stuck (its handler never ends),
/// two more of that key wait behind it, and another key's three messages are released once
/// the shutdown has started. The other key is drained; the stuck lane's three messages are each named once in `left` and dead-lettered
/// once; `drained` counts exactly the handled ones.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_deadline_with_a_stuck_lane_names_each_of_its_messages_once() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (tx, mut handled) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let _sub = bus
        .subscribe(
            "lanes",
            "orders.#",
            handler_fn(move |env: Envelope| {
                let (tx, g) = (tx.clone(), g.clone());
                async move {
                    let key = env.header("key").unwrap_or_default().to_owned();
                    if key == "a" {
                        std::future::pending::<()>().await;
                    }
                    pass(&g).await?;
                    let _ = tx.send(env.id.clone());
                    Ok::<_, BoxErr>(Outcome::Ack)
                }
            }),
        )
        .workers(2)
        .ordering_header("key")
        .start()
        .await
        .unwrap();
    let topic = Topic::new("orders.placed").unwrap();
    let mut stuck = HashSet::new();
    let mut flowing = HashSet::new();
    for (i, key) in ["a", "b", "a", "b", "a", "b"].into_iter().enumerate() {
        let env = Envelope::new(topic.clone(), i.to_string()).with_header("key", key);
        if key == "a" {
            stuck.insert(env.id.clone());
        } else {
            flowing.insert(env.id.clone());
        }
        bus.publish_envelope(env).await.unwrap();
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let shutdown = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.shutdown(Duration::from_secs(1)).await })
    };
    tokio::task::yield_now().await;
    gate.add_permits(3); // key b drains during the shutdown
    let got: HashSet<_> = crate::received(&mut handled, 3).await.into_iter().collect();
    assert_eq!(got, flowing);
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!(report.drained, 3, "{report:?}");
    let left: HashSet<_> = report.left.iter().cloned().collect();
    assert_eq!(
        left.len(),
        report.left.len(),
        "a message named twice: {report:?}"
    );
    assert_eq!(left, stuck);
    let mut letters = letters_with(&bus, DeadLetterReason::Shutdown);
    letters.sort();
    let mut expected: Vec<_> = stuck.into_iter().collect();
    expected.sort();
    assert_eq!(letters, expected);
    assert_eq!(bus.pending(), 0);
}

/// Backpressure for commands (docs/bus.md: a full queue tells the publisher): a command
/// handler with its one worker busy and its queue full answers a further send with
/// `SendError::Full` naming the handler, at once under `RejectNew`, after the timeout
/// under `Block`; the accepted commands are all answered.
#[tokio::test(flavor = "current_thread")]
async fn a_full_command_queue_answers_full_under_reject_new_and_block() {
    let clock = VirtualClock::pause();
    for overflow in [
        Overflow::RejectNew,
        Overflow::Block {
            timeout: Duration::from_millis(50),
        },
    ] {
        let bus = Bus::new();
        let gate = Arc::new(Semaphore::new(0));
        let (tx, mut started) = mpsc::unbounded_channel();
        let g = gate.clone();
        let h = bus
            .handle(move |d: Double, _| {
                let (g, tx) = (g.clone(), tx.clone());
                async move {
                    let _ = tx.send(d.n);
                    pass(&g).await?;
                    Ok::<_, String>(d.n * 2)
                }
            })
            .queue_capacity(1)
            .overflow(overflow)
            .start()
            .await
            .unwrap();
        let spawn_send = |n| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.send(Double { n }).await })
        };
        let a = spawn_send(1);
        assert_eq!(started.recv().await, Some(1));
        let b = spawn_send(2);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let t0 = clock.now();
        match bus.send(Double { n: 3 }).await {
            Err(SendError::Full { handler }) => assert_eq!(handler, h.name()),
            other => panic!("{overflow:?}: expected Full, got {other:?}"),
        }
        let waited = clock.now() - t0;
        match overflow {
            Overflow::RejectNew => assert_eq!(waited, Duration::ZERO),
            _ => assert!(waited >= Duration::from_millis(50), "{waited:?}"),
        }
        assert_eq!(h.stats().refused_full, 1);
        gate.add_permits(10);
        assert_eq!(a.await.unwrap().unwrap(), 2);
        assert_eq!(b.await.unwrap().unwrap(), 4);
        bus.run_until_idle().await;
        assert_eq!(h.stats().acked, 2);
    }
}

/// Per-key order under retries and panics with four workers: every message's first attempt
/// fails (an error for even numbers, a panic for odd), the retry succeeds. Within a key the
/// successes come in publish order, no two messages of a key run at once, and every message
/// is handled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_through_retries_and_panics_with_four_workers() {
    let bus = Bus::new();
    let order: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let (o, f, ov) = (order.clone(), in_flight.clone(), overlap.clone());
    let sub = bus
        .subscribe(
            "ordered",
            "orders.#",
            handler_fn(move |env: Envelope| {
                let (o, f, ov) = (o.clone(), f.clone(), ov.clone());
                async move {
                    let key = env.header("key").unwrap_or_default().to_owned();
                    let seq: u64 = std::str::from_utf8(&env.payload)?.parse()?;
                    if !f.lock().unwrap().insert(key.clone()) {
                        ov.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    f.lock().unwrap().remove(&key);
                    if env.delivery.attempt == 1 {
                        if seq % 2 == 1 {
                            panic!("first attempt of {seq} panics");
                        }
                        return Err::<Outcome, BoxErr>("first attempt fails".into());
                    }
                    o.lock().unwrap().entry(key).or_default().push(seq);
                    Ok(Outcome::Ack)
                }
            }),
        )
        .workers(4)
        .queue_capacity(1000)
        .retry_delay(Duration::from_millis(1))
        .ordering_header("key")
        .start()
        .await
        .unwrap();
    let topic = Topic::new("orders.placed").unwrap();
    for i in 0..200u64 {
        let env =
            Envelope::new(topic.clone(), i.to_string()).with_header("key", format!("k{}", i % 5));
        bus.publish_envelope(env).await.unwrap();
    }
    tokio::time::timeout(WAIT * 4, bus.run_until_idle())
        .await
        .unwrap();
    assert_eq!(overlap.load(Ordering::SeqCst), 0, "a key ran twice at once");
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 5);
    for (key, seqs) in order.iter() {
        assert_eq!(seqs.len(), 40, "{key}: {seqs:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: {seqs:?}");
    }
    let s = sub.stats();
    assert_eq!(
        (s.acked, s.failed, s.panicked, s.retried, s.dead_lettered),
        (200, 200, 100, 200, 0),
        "{s:?}"
    );
    assert_eq!(s.delivered, 400);
}

/// A request whose deadline passes while it waits in the queue: the sender gets `Timeout`
/// at the deadline; the command is still settled later (handled at most once, its result
/// discarded), nothing stays pending, and a later send is answered.
#[tokio::test(flavor = "current_thread")]
async fn a_request_that_expires_while_queued_times_out_and_is_still_settled() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut seen) = mpsc::unbounded_channel();
    let g = gate.clone();
    let _h = bus
        .handle(move |d: Double, ctx| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send((d.n, ctx.remaining()));
                if d.n == 0 {
                    pass(&g).await?;
                }
                Ok::<_, String>(d.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let busy = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send(Double { n: 0 }).await })
    };
    assert_eq!(seen.recv().await.unwrap().0, 0);
    let t0 = clock.now();
    match bus
        .request(Double { n: 1 }, Duration::from_millis(100))
        .await
    {
        Err(SendError::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    let waited = clock.now() - t0;
    assert!(
        (100..=101).contains(&waited.as_millis()),
        "timed out at the deadline, not after {waited:?}"
    );
    gate.add_permits(10);
    assert_eq!(busy.await.unwrap().unwrap(), 0);
    bus.run_until_idle().await;
    assert_eq!(bus.pending(), 0);
    if let Ok((n, _)) = seen.try_recv() {
        assert_eq!(n, 1, "the expired command, handled late, once");
    }
    assert!(seen.try_recv().is_err());
    assert_eq!(bus.send(Double { n: 5 }).await.unwrap(), 10);
}

/// Defect: under the paused (virtual) clock the handler's view of a request's deadline is on
/// the real clock while the sender's timeout is on tokio's. docs/bus.md: `ctx.remaining()`
/// is "what is left, zero once passed", and the test kit runs "deadlines ... in virtual
/// time, instant and exact"; ARCHITECTURE.md: "every deadline ... stays on the tokio clock
/// so virtual-time tests keep working".
///
/// Expected: a request queued behind a busy handler, whose sender already got `Timeout`
/// after 100 ms of virtual time, is handled with `ctx.remaining() == Some(0)`.
/// Observed: `left: Some(99.9..ms), right: Some(0ns)`: the handler believes nearly all of
/// the deadline is left (`ctx.deadline()` is a `std::time::Instant` set from
/// `std::time::Instant::now()`, command.rs:321, and `DeliveryInfo::remaining` reads
/// `std::time::Instant::now()`, switchyard-core envelope.rs:184). A handler that
/// cuts its work short on `remaining()` (as the docs suggest) never does in a virtual-time
/// test, and one that waits `tokio::time::sleep(ctx.remaining())` waits past the deadline.
#[tokio::test(flavor = "current_thread")]
#[ignore = "defect: ctx.remaining()/deadline() use the real clock, not the tokio clock the sender's timeout uses (paused clock: 99.9 ms left after Timeout)"]
async fn a_request_expired_while_queued_shows_no_time_remaining_under_the_virtual_clock() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut seen) = mpsc::unbounded_channel();
    let g = gate.clone();
    let _h = bus
        .handle(move |d: Double, ctx| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send((d.n, ctx.remaining()));
                if d.n == 0 {
                    pass(&g).await?;
                }
                Ok::<_, String>(d.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let busy = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send(Double { n: 0 }).await })
    };
    assert_eq!(seen.recv().await.unwrap().0, 0);
    let late = bus
        .request(Double { n: 1 }, Duration::from_millis(100))
        .await;
    assert!(matches!(late, Err(SendError::Timeout { .. })), "{late:?}");
    gate.add_permits(10);
    busy.await.unwrap().unwrap();
    bus.run_until_idle().await;
    let (n, remaining) = seen.try_recv().expect("the expired command was handled");
    assert_eq!(n, 1);
    assert_eq!(
        remaining,
        Some(Duration::ZERO),
        "handled after its deadline"
    );
}

/// A request whose deadline passes while its command waits in a long retry backoff: the
/// sender gets `Timeout` at its deadline, not after the backoff.
#[tokio::test(flavor = "current_thread")]
async fn a_request_expiring_during_a_retry_backoff_times_out_at_its_deadline() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let _h = bus
        .handle(move |d: Double, ctx| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                if ctx.attempt() == 1 {
                    return Err("first attempt fails".to_owned());
                }
                Ok(d.n * 2)
            }
        })
        .retry_delay(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let t0 = clock.now();
    match bus
        .request(Double { n: 1 }, Duration::from_millis(200))
        .await
    {
        Err(SendError::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    let waited = clock.now() - t0;
    assert!(
        (200..=201).contains(&waited.as_millis()),
        "timed out at the deadline, not after {waited:?}"
    );
    bus.run_until_idle().await;
    assert_eq!(bus.pending(), 0);
}

/// `run_until_idle` does not return while a message waits in its retry backoff, nor while
/// a fan-out copy is still queued behind a slow subscriber; after it returns every copy was
/// handled (including the retry) and nothing is pending.
#[tokio::test(flavor = "current_thread")]
async fn run_until_idle_waits_for_retries_in_backoff() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let sub = bus
        .on("flaky", move |_: Ping, ctx| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if ctx.attempt() < 3 {
                    return Err("not yet".to_owned());
                }
                Ok(())
            }
        })
        .retry_delay(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let other = bus
        .on("other", |_: Ping, _| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, String>(())
        })
        .start()
        .await
        .unwrap();
    let t0 = clock.now();
    for n in 0..3 {
        bus.publish(Ping { n }).await.unwrap();
    }
    bus.run_until_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 9);
    assert!(clock.now() - t0 >= Duration::from_secs(10));
    assert_eq!(sub.stats().acked, 3);
    assert_eq!(other.stats().acked, 3);
    assert_eq!(bus.pending(), 0);
}

/// The per-subscription counters add up after mixed outcomes on one subscription: an ack,
/// an error on every attempt, a panic then success, a rejection, an `Outcome::retry()` then
/// success, and a payload that does not decode.
#[tokio::test(flavor = "current_thread")]
async fn subscription_counters_add_up_after_mixed_outcomes() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let sub = bus
        .on("mixed", |p: Ping, ctx| async move {
            match (p.n, ctx.attempt()) {
                (0, _) => Ok(Outcome::Ack),
                (1, _) => Err("always".to_owned()),
                (2, 1) => panic!("once"),
                (3, _) => Ok(Outcome::reject("no")),
                (4, 1) => Ok(Outcome::retry()),
                _ => Ok(Outcome::Ack),
            }
        })
        .retry_delay(Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    for n in 0..5 {
        bus.publish(Ping { n }).await.unwrap();
    }
    bus.publish_envelope(Envelope::new(Topic::new("test.ping").unwrap(), "not json"))
        .await
        .unwrap();
    bus.run_until_idle().await;
    let s = sub.stats();
    // attempts: 0 -> 1, 1 -> 3, 2 -> 2, 3 -> 1, 4 -> 2
    assert_eq!(s.acked, 3, "{s:?}");
    assert_eq!(s.failed, 4, "{s:?}");
    assert_eq!(s.panicked, 1, "{s:?}");
    assert_eq!(s.retried, 4, "{s:?}");
    assert_eq!(s.rejected, 1, "{s:?}");
    assert_eq!(s.decode_failed, 1, "{s:?}");
    assert_eq!(s.dead_lettered, 3, "{s:?}");
    // 9 handler attempts plus the undecodable message (a typed call that fails to decode)
    assert_eq!(s.delivered, 10, "{s:?}");
    let mut reasons: Vec<_> = bus
        .dead_letters()
        .unwrap()
        .list()
        .into_iter()
        .map(|l| (format!("{:?}", l.reason), l.attempts))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("DecodeFailed".to_owned(), 1),
            ("HandlerFailed".to_owned(), 3),
            ("Rejected".to_owned(), 1)
        ],
        "{reasons:?}"
    );
    assert_eq!(bus.pending(), 0);
}

/// Wildcard edge cases through the bus: overlapping subscriptions each receive a message
/// once; a pattern that matches a topic in several ways (`#.#`, `a.#.#.b`, `#.b.#`) delivers
/// once; `#` alone matches a one-segment topic; `a.b.#` matches `a.b`; `a.*` does not match
/// `a`; empty segments and `#` inside a segment are refused at subscribe.
#[tokio::test(flavor = "current_thread")]
async fn overlapping_and_ambiguous_wildcards_deliver_once_per_subscription() {
    let bus = Bus::new();
    let counts: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let patterns = [
        "#", "#.#", "a.#", "a.*", "*.b", "#.b", "a.b", "a.#.#.b", "#.b.#", "a.b.#", "*.*", "*",
        "a.*.#",
    ];
    let mut subs = Vec::new();
    for p in patterns {
        let c = counts.clone();
        let name = p.to_owned();
        subs.push(
            bus.subscribe(
                &format!("sub {p}"),
                p,
                handler_fn(move |env: Envelope| {
                    let (c, name) = (c.clone(), name.clone());
                    async move {
                        c.lock()
                            .unwrap()
                            .entry(name)
                            .or_default()
                            .push(env.topic.to_string());
                        Ok::<_, BoxErr>(Outcome::Ack)
                    }
                }),
            )
            .start()
            .await
            .unwrap(),
        );
    }
    for t in ["a.b", "a", "x.a.b", "a.x.y.b"] {
        bus.publish_envelope(Envelope::new(Topic::new(t).unwrap(), "{}"))
            .await
            .unwrap();
    }
    bus.run_until_idle().await;
    let counts = counts.lock().unwrap().clone();
    let got = |p: &str| {
        let mut v = counts.get(p).cloned().unwrap_or_default();
        v.sort();
        v
    };
    for p in patterns {
        let expected: Vec<String> = ["a", "a.b", "a.x.y.b", "x.a.b"]
            .into_iter()
            .filter(|t| {
                switchyard::Pattern::new(p)
                    .unwrap()
                    .matches(&Topic::new(t).unwrap())
            })
            .map(str::to_owned)
            .collect();
        assert_eq!(got(p), expected, "pattern {p}");
    }
    assert_eq!(got("#"), ["a", "a.b", "a.x.y.b", "x.a.b"]);
    assert_eq!(got("#.#"), ["a", "a.b", "a.x.y.b", "x.a.b"]);
    assert_eq!(got("a.#.#.b"), ["a.b", "a.x.y.b"]);
    assert_eq!(got("#.b.#"), ["a.b", "a.x.y.b", "x.a.b"]);
    assert_eq!(got("a.b.#"), ["a.b"]);
    assert_eq!(got("a.*"), ["a.b"]);
    assert_eq!(got("*"), ["a"]);
    assert_eq!(got("a.*.#"), ["a.b", "a.x.y.b"]);
    for bad in ["", "a..b", ".a", "a.", "a.#b", "a.b*", " a"] {
        let r = bus
            .subscribe(
                "bad",
                bad,
                handler_fn(|_env: Envelope| async move { Ok::<_, BoxErr>(Outcome::Ack) }),
            )
            .start()
            .await;
        assert!(
            matches!(r, Err(SubscribeError::InvalidPattern(_))),
            "pattern {bad:?} should be refused, got {:?}",
            r.map(|s| s.name().to_owned())
        );
    }
}

/// A publisher waiting for room in a full `Block` queue whose subscription is dropped
/// meanwhile (docs/bus.md: the dropped subscription's queue is still drained): the
/// publisher does not hang until its block timeout, the accepted messages are handled once,
/// nothing stays pending.
#[tokio::test(flavor = "current_thread")]
async fn a_publisher_blocked_on_a_subscription_that_is_dropped_does_not_hang() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut started) = mpsc::unbounded_channel();
    let g = gate.clone();
    let sub = bus
        .on("slow", move |p: Ping, _| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send(p.n);
                pass(&g).await
            }
        })
        .queue_capacity(1)
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(60),
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 0 }).await.unwrap();
    assert_eq!(started.recv().await, Some(0));
    bus.publish(Ping { n: 1 }).await.unwrap();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish(Ping { n: 2 }).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    drop(sub);
    gate.add_permits(100);
    let got = tokio::time::timeout(Duration::from_secs(120), publisher)
        .await
        .expect("the blocked publisher hangs")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), bus.run_until_idle())
        .await
        .expect("run_until_idle returns");
    let mut handled = vec![0];
    while let Ok(n) = started.try_recv() {
        handled.push(n);
    }
    // publish.rs: a subscription unsubscribed while the publish waits "no longer wants
    // messages": the publish is `Ok` and message 2 may reach no one (observed), or it got
    // room before the drop and is handled. Either way nothing hangs, nothing is pending,
    // and nothing accepted is lost.
    assert!(matches!(got, Ok(())), "{got:?}");
    assert!(handled == [0, 1] || handled == [0, 1, 2], "{handled:?}");
    assert!(bus.dead_letters().unwrap().is_empty());
    assert_eq!(bus.pending(), 0);
}
