//! Flows through the bus: correlation and causation, message times, failures and dead
//! letters, filters, commands and requests with deadlines, delayed delivery, backpressure.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{Command, Ctx, DeadLetterReason, Kind, Message, Outcome, Overflow, SendError};
use tokio::sync::{Semaphore, mpsc};

use super::{Job, On, Rig, WAIT, n_of, transports};

async fn recv<T>(on: On, rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{on:?}: nothing within {WAIT:?}"))
        .unwrap()
}

/// Waits (up to `WAIT`) until `cond` holds, checking every 10 ms.
async fn eventually(on: On, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < end,
            "{on:?}: {what} not true within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// docs/bus.md "Correlation and causation": a message published while a handler runs,
/// through the bus handle, records the handled message as its causation and inherits its
/// correlation id; a correlation id given from outside is kept exactly as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_keeps_its_correlation_and_causation_on_every_transport() {
    for on in transports() {
        let rig = Rig::new(on).await;
        let next = rig.topic("second");
        let _first = rig
            .bus
            .on("first", move |job: Job, ctx: Ctx| {
                let next = next.clone();
                async move { ctx.bus().publish_to(&next, Job { n: job.n + 1 }).await }
            })
            .pattern(&rig.topic("first"))
            .start()
            .await
            .unwrap();
        let rec = Recorder::start(&rig.bus, &rig.topic("second"))
            .await
            .unwrap();
        let mut env = rig.job("first", 1);
        env.correlation_id = "corr-42".parse().unwrap();
        let id = env.id.clone();
        rig.bus.publish_envelope(env).await.unwrap();
        let got = rec.wait_for(1, WAIT).await.unwrap();
        assert_eq!(got[0].causation_id(), Some(&id), "{on:?}: causation");
        assert_eq!(
            got[0].correlation_id.to_string(),
            "corr-42",
            "{on:?}: correlation"
        );
        assert_eq!(n_of(&got[0]), 2, "{on:?}");
        rig.end().await;
    }
}

/// docs/bus.md "Message times" and "Failures": the envelope a handler gets has the id and
/// `timestamp` it was published with, `first_delivered_at` no earlier than that timestamp
/// and no later than the call, and `attempt` 1 on the first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_times_and_first_attempt_are_the_same_on_every_transport() {
    for on in transports() {
        let rig = Rig::new(on).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _sub = rig
            .bus
            .on("times", move |_: Job, ctx: Ctx| {
                let tx = tx.clone();
                async move {
                    let env = ctx.envelope();
                    let seen = (
                        env.id.clone(),
                        env.timestamp,
                        env.delivery.first_delivered_at,
                        ctx.attempt(),
                        SystemTime::now(),
                    );
                    tx.send(seen).map_err(|e| e.to_string())
                }
            })
            .pattern(&rig.topic("t"))
            .start()
            .await
            .unwrap();
        let env = rig.job("t", 1);
        let (id, stamp) = (env.id.clone(), env.timestamp);
        rig.bus.publish_envelope(env).await.unwrap();
        let (got_id, got_stamp, first, attempt, called) = recv(on, &mut rx).await;
        assert_eq!(got_id, id, "{on:?}: id");
        assert_eq!(got_stamp, stamp, "{on:?}: timestamp as published");
        let first = first.unwrap_or_else(|| panic!("{on:?}: no first_delivered_at"));
        let tolerance = Duration::from_micros(20);
        assert!(
            first + tolerance >= stamp,
            "{on:?}: first delivery before the message was made"
        );
        assert!(
            first <= called + tolerance,
            "{on:?}: first delivery after the call"
        );
        assert_eq!(attempt, 1, "{on:?}: first call is attempt 1");
        rig.end().await;
    }
}

/// docs/bus.md "Failures and dead letters": an error is retried up to `max_attempts`
/// (attempts 1, 2, 3), then dead-lettered with the count, the handler's name, the error and
/// the message's bytes; a rejection is dead-lettered at once (attempt 1). Same on every
/// transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_alike_on_every_transport() {
    for on in transports() {
        let rig = Rig::with(on, |b| {
            b.max_attempts(3).retry_delay(Duration::from_millis(20))
        })
        .await;
        let (tx, mut attempts) = mpsc::unbounded_channel();
        let _flaky = rig
            .bus
            .on("flaky", move |job: Job, ctx: Ctx| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(ctx.attempt());
                    Err::<(), _>(format!("boom {}", job.n))
                }
            })
            .pattern(&rig.topic("fail"))
            .start()
            .await
            .unwrap();
        let _picky = rig
            .bus
            .on("picky", |_: Job, _| async {
                Ok::<_, String>(Outcome::reject("not mine"))
            })
            .pattern(&rig.topic("reject"))
            .start()
            .await
            .unwrap();
        let failing = rig.job("fail", 7);
        let (fail_id, fail_bytes) = (failing.id.clone(), failing.payload.clone());
        let rejected = rig.job("reject", 8);
        let reject_id = rejected.id.clone();
        rig.bus.publish_envelope(failing).await.unwrap();
        rig.bus.publish_envelope(rejected).await.unwrap();
        let letters = rig.letters.next(on, 2).await;
        let fail = letters.iter().find(|l| l.envelope.id == fail_id).unwrap();
        assert_eq!(fail.reason, DeadLetterReason::HandlerFailed, "{on:?}");
        assert_eq!(fail.attempts, 3, "{on:?}: attempts of the failed one");
        assert_eq!(fail.handler.as_deref(), Some("flaky"), "{on:?}");
        assert!(fail.error.contains("boom 7"), "{on:?}: {}", fail.error);
        assert_eq!(
            fail.envelope.payload, fail_bytes,
            "{on:?}: the message's bytes"
        );
        let rej = letters.iter().find(|l| l.envelope.id == reject_id).unwrap();
        assert_eq!(rej.reason, DeadLetterReason::Rejected, "{on:?}");
        assert_eq!(rej.attempts, 1, "{on:?}: a rejection is not retried");
        assert_eq!(rej.handler.as_deref(), Some("picky"), "{on:?}");
        let mut seen = Vec::new();
        while let Ok(a) = attempts.try_recv() {
            seen.push(a);
        }
        assert_eq!(seen, vec![1, 2, 3], "{on:?}: ctx.attempt() per call");
        rig.end().await;
    }
}

/// docs/features.md "Filters": all filters must pass; filtered messages are counted in
/// `stats().filtered`, never silently lost, and never reach the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_skip_and_count_alike_on_every_transport() {
    for on in transports() {
        let rig = Rig::new(on).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sub = rig
            .bus
            .on("acme", move |job: Job, _| {
                let tx = tx.clone();
                async move { tx.send(job.n).map_err(|e| e.to_string()) }
            })
            .pattern(&rig.topic("orders"))
            .filter_header("tenant", "acme")
            .filter(|env| env.priority.0 >= 100)
            .start()
            .await
            .unwrap();
        for (n, tenant) in [
            (1, "acme"),
            (2, "globex"),
            (3, "acme"),
            (4, "initech"),
            (5, "acme"),
        ] {
            let mut env = rig.job("orders", n);
            env.headers_mut().insert("tenant", tenant);
            if n == 5 {
                env.priority = switchyard::Priority::LOW; // fails the second filter
            }
            rig.bus.publish_envelope(env).await.unwrap();
        }
        let mut got = vec![recv(on, &mut rx).await, recv(on, &mut rx).await];
        got.sort_unstable();
        assert_eq!(got, vec![1, 3], "{on:?}");
        eventually(on, "filtered == 3", || sub.stats().filtered == 3).await;
        assert!(
            rx.try_recv().is_err(),
            "{on:?}: a filtered message reached the handler"
        );
        eventually(on, "acked == 2", || sub.stats().acked == 2).await;
        rig.end().await;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe {
    sleep_ms: u64,
}
impl Message for Probe {
    const TOPIC: &'static str = "rev26.probe";
    const KIND: Kind = Kind::Command;
}
impl Command for Probe {
    /// What was left of the deadline when the handler started, in ms.
    type Output = Option<u64>;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Unserved;
impl Message for Unserved {
    const TOPIC: &'static str = "rev26.unserved";
    const KIND: Kind = Kind::Command;
}
impl Command for Unserved {
    type Output = ();
}

/// docs/bus.md "Commands and requests": `ctx.deadline()` is `None` for a `send` and what is
/// left of a request's deadline; past it the sender gets `Timeout` (not before); a command
/// nobody handles fails at once with `NoHandler`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_and_enforce_their_deadline_on_every_transport() {
    for on in transports() {
        let rig = Rig::new(on).await;
        let _h = rig
            .bus
            .handle(|p: Probe, ctx: Ctx| async move {
                let left = ctx.remaining().map(|d| d.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(p.sleep_ms)).await;
                Ok::<_, String>(left)
            })
            .start()
            .await
            .unwrap();
        assert_eq!(
            rig.bus.send(Probe { sleep_ms: 0 }).await.unwrap(),
            None,
            "{on:?}"
        );
        let left = rig
            .bus
            .request(Probe { sleep_ms: 0 }, Duration::from_secs(2))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{on:?}: a request's handler saw no deadline"));
        assert!(left > 0 && left <= 2000, "{on:?}: {left} ms left");
        let t0 = Instant::now();
        let late = rig
            .bus
            .request(Probe { sleep_ms: 2_000 }, Duration::from_millis(150))
            .await;
        let took = t0.elapsed();
        assert!(
            matches!(late, Err(SendError::Timeout { .. })),
            "{on:?}: {late:?}"
        );
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_secs(1),
            "{on:?}: {took:?}"
        );
        let t0 = Instant::now();
        let none = rig.bus.request(Unserved, Duration::from_secs(10)).await;
        assert!(
            matches!(none, Err(SendError::NoHandler { .. })),
            "{on:?}: {none:?}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{on:?}: NoHandler took {:?}",
            t0.elapsed()
        );
        rig.end().await;
    }
}

/// docs/features.md "Delayed delivery": a delayed message is not handled before it is due,
/// is handled once due, and its first call is attempt 1 (docs/transports.md). In memory it
/// counts as pending until due; on a transport only while it is being delivered (stated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_publish_is_handled_when_due_on_every_transport() {
    for on in transports() {
        let rig = Rig::new(on).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _sub = rig
            .bus
            .on("later", move |job: Job, ctx: Ctx| {
                let tx = tx.clone();
                async move {
                    tx.send((job.n, ctx.attempt(), Instant::now()))
                        .map_err(|e| e.to_string())
                }
            })
            .pattern(&rig.topic("later"))
            .start()
            .await
            .unwrap();
        let delay = Duration::from_millis(400);
        let t0 = Instant::now();
        rig.bus
            .schedule_envelope(tokio::time::Instant::now() + delay, rig.job("later", 9))
            .await
            .unwrap();
        if on == On::Memory {
            assert!(
                rig.bus.pending() >= 1,
                "memory: a delayed message counts as pending"
            );
        }
        let (n, attempt, at) = recv(on, &mut rx).await;
        assert_eq!(n, 9);
        // deliver-at has millisecond resolution: allow 2 ms early.
        assert!(
            at.duration_since(t0) + Duration::from_millis(2) >= delay,
            "{on:?}: handled after {:?}",
            at.duration_since(t0)
        );
        assert_eq!(attempt, 1, "{on:?}: the first call of a delayed message");
        assert!(rx.try_recv().is_err(), "{on:?}: handled twice");
        rig.end().await;
    }
}

/// docs/bus.md "Backpressure" and "On a transport": `DropOldest` evicts into the dead-letter
/// queue in memory; on a transport the local queue is a prefetch window, so the policy
/// drops nothing and every message is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_drops_in_memory_and_nothing_on_a_transport() {
    for on in transports() {
        let rig = Rig::new(on).await;
        let gate = Arc::new(Semaphore::new(0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let g = gate.clone();
        let sub = rig
            .bus
            .on("slow", move |job: Job, _| {
                let (tx, g) = (tx.clone(), g.clone());
                async move {
                    g.acquire().await.map_err(|e| e.to_string())?.forget();
                    tx.send(job.n).map_err(|e| e.to_string())
                }
            })
            .pattern(&rig.topic("slow"))
            .queue_capacity(2)
            .overflow(Overflow::DropOldest)
            .start()
            .await
            .unwrap();
        for n in 0..8 {
            rig.bus.publish_envelope(rig.job("slow", n)).await.unwrap();
        }
        gate.add_permits(100);
        if on == On::Memory {
            // at most 1 in flight + 2 queued survive
            let dropped = rig.letters.next(on, 5).await;
            assert!(
                dropped
                    .iter()
                    .all(|l| l.reason == DeadLetterReason::Dropped)
            );
            eventually(on, "handled + dropped == 8", || {
                sub.stats().acked + sub.stats().dropped == 8
            })
            .await;
            assert!(sub.stats().dropped >= 5, "memory: {:?}", sub.stats());
        } else {
            let mut got = Vec::new();
            for _ in 0..8 {
                got.push(recv(on, &mut rx).await);
            }
            got.sort_unstable();
            assert_eq!(got, (0..8).collect::<Vec<_>>(), "{on:?}");
            assert_eq!(sub.stats().dropped, 0, "{on:?}");
            assert!(
                rig.letters.all().is_empty(),
                "{on:?}: {:?}",
                rig.letters.all()
            );
        }
        rig.end().await;
    }
}
