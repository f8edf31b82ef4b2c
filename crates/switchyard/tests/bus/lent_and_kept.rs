//! Review rev2 (stop 33): attacks on the hot-path changes of issue 18 (the lent envelope of a
//! single-message worker, `SendEnvelope`, the kept `Local` block, shutdown with inline runs).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Envelope, Kind, Message, Outcome, Topic, handler_fn};

use crate::{Double, Ping, WAIT, until};

fn n_of(env: &Envelope) -> u64 {
    serde_json::from_slice::<Ping>(&env.payload).unwrap().n
}

/// docs/bus.md "Shutdown": a shutdown racing workers that hold lent envelopes (some stuck,
/// some done, lanes held) names every message it did not handle exactly once, dead-letters
/// each once, and leaves nothing pending; what was handled is not named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_racing_lent_envelopes_names_each_message_once() {
    const N: u64 = 300;
    let bus = Bus::new();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let entered = Arc::new(AtomicUsize::new(0));
    let (h, e) = (handled.clone(), entered.clone());
    let _sub = bus
        .on("racing", move |p: Ping, _| {
            let (h, e) = (h.clone(), e.clone());
            async move {
                e.fetch_add(1, Ordering::SeqCst);
                if p.n % 37 == 5 {
                    std::future::pending::<()>().await;
                }
                if p.n.is_multiple_of(3) {
                    tokio::task::yield_now().await;
                }
                h.lock().unwrap().push(p.n);
                Ok::<_, std::io::Error>(())
            }
        })
        .workers(4)
        .queue_capacity(1024)
        .ordering_key(|env| Some((n_of(env) % 7).to_string().into()))
        .start()
        .await
        .unwrap();
    for n in 0..N {
        bus.publish(Ping { n }).await.unwrap();
    }
    until("some were handled", || entered.load(Ordering::SeqCst) > 10).await;
    let report = bus.shutdown(Duration::from_millis(50)).await.unwrap();
    let letters = bus.dead_letters().unwrap().list();
    let left: BTreeSet<_> = report.left.iter().cloned().collect();
    assert_eq!(
        left.len(),
        report.left.len(),
        "a message named twice: {report:?}"
    );
    assert_eq!(letters.len(), report.left.len(), "dead letters vs report");
    let lettered: Vec<u64> = letters.iter().map(|l| n_of(&l.envelope)).collect();
    let lettered_set: BTreeSet<u64> = lettered.iter().copied().collect();
    assert_eq!(
        lettered_set.len(),
        lettered.len(),
        "dead-lettered twice: {lettered:?}"
    );
    let handled = handled.lock().unwrap().clone();
    let handled_set: BTreeSet<u64> = handled.iter().copied().collect();
    assert_eq!(handled_set.len(), handled.len());
    assert!(
        handled_set.is_disjoint(&lettered_set),
        "handled and dead-lettered"
    );
    let all: BTreeSet<u64> = handled_set.union(&lettered_set).copied().collect();
    assert_eq!(
        all,
        (0..N).collect(),
        "lost: every message is handled or named"
    );
    for l in &letters {
        assert!(left.contains(&l.envelope.id));
    }
    assert_eq!(bus.pending(), 0);
}

/// Panics in a handler with a lent envelope: each attempt sees the same message (id and
/// payload), a message whose attempts all panic is dead-lettered once with its bytes, and
/// the others are handled; more than `YIELD_EVERY` messages so the worker's yields and its
/// complete-and-pop path both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handlers_with_lent_envelopes_see_their_message_on_each_attempt() {
    const N: u64 = 400;
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _sub = bus
        .on("panics", move |p: Ping, ctx| {
            let s = s.clone();
            let id = ctx.envelope().id.clone();
            let payload_n = n_of(ctx.envelope());
            let attempt = ctx.attempt();
            async move {
                s.lock().unwrap().push((p.n, payload_n, id, attempt));
                if p.n.is_multiple_of(10) || (p.n % 10 == 1 && attempt < 3) {
                    panic!("handler panics on {} attempt {attempt}", p.n);
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .workers(2)
        .queue_capacity(1024)
        .max_attempts(3)
        .retry_delay(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    for n in 0..N {
        bus.publish(Ping { n }).await.unwrap();
    }
    until("all attempts made", || {
        seen.lock().unwrap().len() as u64 == N + 2 * (N / 10) + 2 * (N / 10)
    })
    .await;
    bus.run_until_idle().await;
    let seen = seen.lock().unwrap().clone();
    let mut ids = std::collections::BTreeMap::new();
    for (n, payload_n, id, attempt) in &seen {
        assert_eq!(n, payload_n, "the envelope of {n} attempt {attempt}");
        let first = ids.entry(*n).or_insert_with(|| id.clone());
        assert_eq!(first, id, "{n}: another id on attempt {attempt}");
    }
    let letters = bus.dead_letters().unwrap().list();
    let mut lettered: Vec<u64> = letters.iter().map(|l| n_of(&l.envelope)).collect();
    lettered.sort_unstable();
    assert_eq!(lettered, (0..N).filter(|n| n % 10 == 0).collect::<Vec<_>>());
    assert_eq!(bus.pending(), 0);
    bus.shutdown(WAIT).await.unwrap();
}

/// `send_envelope`'s written-out future: polled once each (ready when answered at once),
/// dropped when it yields (every `YIELD_EVERY`th inline run) or waits, polled again after
/// it finished. Nothing is left pending, every command ran exactly once, and a finished
/// future polled again does not panic or answer twice.
#[tokio::test(flavor = "current_thread")]
async fn send_envelope_dropped_at_each_state_leaves_nothing_pending() {
    let bus = Bus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let _h = bus
        .handle_envelope(
            "echo",
            "rev2.echo",
            handler_fn(move |env: Envelope| {
                c.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, std::io::Error>(Outcome::reply(env.reply(env.payload.clone()))) }
            }),
        )
        .start()
        .await
        .unwrap();
    let topic = Topic::new("rev2.echo").unwrap();
    let mut dropped_pending = 0;
    let mut answered = 0;
    for i in 0..1000u64 {
        let fut = bus.send_envelope(Envelope::new(topic.clone(), i.to_string()));
        tokio::pin!(fut);
        match futures_util::poll!(fut.as_mut()) {
            std::task::Poll::Ready(r) => {
                let r = r.unwrap();
                assert_eq!(&r.reply.unwrap().payload[..], i.to_string().as_bytes());
                answered += 1;
                // Polled after it finished: it stays pending (never a second answer).
                assert!(futures_util::poll!(fut.as_mut()).is_pending());
            }
            std::task::Poll::Pending => dropped_pending += 1,
        }
    }
    assert!(dropped_pending > 0, "no send yielded in 1000");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1000,
        "each ran once (answered {answered})"
    );
    bus.run_until_idle().await;
    assert_eq!(bus.pending(), 0);
    assert!(bus.dead_letters().unwrap().is_empty());
    bus.shutdown(WAIT).await.unwrap();
}

/// A command of a type with no drop glue (its value's block may be kept per thread).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Triple {
    /// The input.
    pub n: u64,
}
impl Message for Triple {
    const TOPIC: &'static str = "rev2.triple";
    const KIND: Kind = Kind::Command;
}
impl Command for Triple {
    type Output = u64;
}

/// An event of a type with no drop glue, other than `Ping`'s layout (a kept block of one
/// type must not be taken for the other).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// First.
    pub a: u32,
    /// Second.
    pub b: u8,
}
impl Message for Pair {
    const TOPIC: &'static str = "rev2.pair";
}

/// The kept `Local` block: typed commands nested in a typed handler, values of two types
/// alternating, values published on one thread and cleared on others, and raw readers of
/// both topics (whose bytes must be those of their own message, never an earlier value's
/// encoding left in a reused block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_blocks_never_mix_values_or_encodings() {
    let bus = Bus::new();
    let b = bus.clone();
    let _double = bus
        .handle(move |c: Double, _| {
            let b = b.clone();
            async move {
                // Nested typed command, run inline on this handler's task.
                let t = b.send(Triple { n: c.n }).await.unwrap();
                Ok::<_, std::io::Error>(t / 3 * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let _triple = bus
        .handle(|c: Triple, _| async move { Ok::<_, std::io::Error>(c.n * 3) })
        .start()
        .await
        .unwrap();
    let typed_pairs = Arc::new(Mutex::new(Vec::new()));
    let raw = Arc::new(Mutex::new(Vec::new()));
    let (tp, r1, r2) = (typed_pairs.clone(), raw.clone(), raw.clone());
    let _pairs = bus
        .on("pairs", move |p: Pair, _| {
            tp.lock().unwrap().push(p);
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    let _raw_pairs = bus
        .on("raw pairs", move |_: Pair, ctx| {
            let p: Pair = serde_json::from_slice(&ctx.envelope().payload).unwrap();
            r1.lock().unwrap().push((u64::from(p.a), u64::from(p.b)));
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    let _raw_pings = bus
        .on("raw pings", move |p: Ping, ctx| {
            let bytes_n = n_of(ctx.envelope());
            r2.lock().unwrap().push((p.n, bytes_n));
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    const N: u32 = 300;
    for i in 0..N {
        assert_eq!(
            bus.send(Double { n: u64::from(i) }).await.unwrap(),
            u64::from(i) * 2
        );
        assert_eq!(
            bus.send(Triple { n: u64::from(i) }).await.unwrap(),
            u64::from(i) * 3
        );
        bus.publish(Pair {
            a: i,
            b: (i % 250) as u8,
        })
        .await
        .unwrap();
        bus.publish(Ping {
            n: u64::from(i) + 10_000,
        })
        .await
        .unwrap();
    }
    bus.run_until_idle().await;
    let typed_pairs = typed_pairs.lock().unwrap().clone();
    let mut want: Vec<Pair> = (0..N)
        .map(|i| Pair {
            a: i,
            b: (i % 250) as u8,
        })
        .collect();
    let mut got = typed_pairs.clone();
    got.sort_by_key(|p| p.a);
    want.sort_by_key(|p| p.a);
    assert_eq!(got, want);
    let raw = raw.lock().unwrap().clone();
    assert_eq!(raw.len(), 2 * N as usize);
    for (x, y) in &raw {
        if *x >= 10_000 {
            assert_eq!(x, y, "a ping's bytes are another value's");
        } else {
            assert_eq!(*y, x % 250, "a pair's bytes are another value's");
        }
    }
    bus.shutdown(WAIT).await.unwrap();
}

/// docs/bus.md "Commands and requests": a sender that stops waiting (its `send_envelope`
/// future dropped while the handler, run on its task, waits) does not cancel the command: it
/// is handled to the end in a task of its own.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_waiting_send_envelope_is_handled_to_the_end() {
    let bus = Bus::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let finished = Arc::new(AtomicUsize::new(0));
    let (g, f) = (gate.clone(), finished.clone());
    let _h = bus
        .handle_envelope(
            "gated",
            "rev2.gated",
            handler_fn(move |env: Envelope| {
                let (g, f, tx) = (g.clone(), f.clone(), entered_tx.clone());
                async move {
                    let _ = tx.send(());
                    let _permit = g.acquire().await.unwrap();
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Outcome::reply(env.reply(env.payload.clone())))
                }
            }),
        )
        .workers(3)
        .start()
        .await
        .unwrap();
    let topic = Topic::new("rev2.gated").unwrap();
    for i in 0..3u64 {
        let fut = bus.send_envelope(Envelope::new(topic.clone(), i.to_string()));
        tokio::pin!(fut);
        assert!(futures_util::poll!(fut.as_mut()).is_pending());
        crate::received(&mut entered, 1).await;
        // Dropped while its handler, run on this task, waits.
    }
    // A fourth finds the three slots held: queued, and dropped while waiting there.
    {
        let fut = bus.send_envelope(Envelope::new(topic.clone(), "queued"));
        tokio::pin!(fut);
        assert!(futures_util::poll!(fut.as_mut()).is_pending());
    }
    gate.add_permits(10);
    until("all four handled to the end", || {
        finished.load(Ordering::SeqCst) == 4
    })
    .await;
    bus.run_until_idle().await;
    assert_eq!(bus.pending(), 0);
    assert!(bus.dead_letters().unwrap().is_empty());
    let report = bus.shutdown(WAIT).await.unwrap();
    assert!(report.left.is_empty(), "{report:?}");
}

/// `DropOldest` beside a worker holding a lent envelope: the evicted messages are
/// dead-lettered (reason `Dropped`), the lent one is never evicted, and a shutdown names the
/// lent one and the queued ones exactly once each, leaving nothing pending.
#[tokio::test(flavor = "current_thread")]
async fn drop_oldest_and_shutdown_beside_a_lent_envelope() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let _sub = bus
        .on("stuck", move |p: Ping, _| {
            let tx = entered_tx.clone();
            async move {
                let _ = tx.send(p.n);
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(())
            }
        })
        .queue_capacity(2)
        .overflow(switchyard::Overflow::DropOldest)
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 0 }).await.unwrap();
    assert_eq!(crate::received(&mut entered, 1).await, [0]);
    for n in 1..=5 {
        bus.publish(Ping { n }).await.unwrap();
    }
    let dropped: Vec<u64> = bus
        .dead_letters()
        .unwrap()
        .list()
        .iter()
        .map(|l| n_of(&l.envelope))
        .collect();
    assert_eq!(
        dropped,
        [1, 2, 3],
        "the oldest waiting ones, never the lent one"
    );
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    let letters = bus.dead_letters().unwrap().list();
    let mut shut: Vec<u64> = letters
        .iter()
        .filter(|l| l.reason == switchyard::DeadLetterReason::Shutdown)
        .map(|l| n_of(&l.envelope))
        .collect();
    shut.sort_unstable();
    assert_eq!(shut, [0, 4, 5], "{report:?}");
    assert_eq!(report.left.len(), 3, "{report:?}");
    assert_eq!(bus.pending(), 0);
}

/// Shutdown with inline runs, a queued command and the handle dropped: two commands run on
/// their senders' tasks (the handler's two slots), a third waits in the queue, the handle
/// is dropped, then the shutdown's deadline passes. Each is named once, dead-lettered once,
/// every sender gets `NotProcessed`, nothing is pending.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_with_inline_runs_a_queued_command_and_the_handle_dropped() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let h = bus
        .handle(move |c: Double, _| {
            let tx = entered_tx.clone();
            async move {
                let _ = tx.send(c.n);
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(c.n)
            }
        })
        .workers(2)
        .start()
        .await
        .unwrap();
    let mut senders = Vec::new();
    for n in 1..=3u64 {
        let b = bus.clone();
        senders.push(tokio::spawn(async move { b.send(Double { n }).await }));
    }
    let mut got = crate::received(&mut entered, 2).await;
    got.sort_unstable();
    assert_eq!(got.len(), 2);
    drop(h);
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    let ids: BTreeSet<_> = report.left.iter().cloned().collect();
    assert_eq!((ids.len(), report.left.len()), (3, 3), "{report:?}");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 3);
    for s in senders {
        let r = tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(r, Err(switchyard::SendError::NotProcessed(_))),
            "{r:?}"
        );
    }
    assert_eq!(bus.pending(), 0);
}

/// Commands queued to workers that hold them lent (the `process` path: a sender waits),
/// some stuck, raced by a shutdown from another task: every sender gets its answer or
/// `NotProcessed`, exactly the unanswered ones are named and dead-lettered once, nothing is
/// pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_racing_queued_commands_answers_every_sender_once() {
    const N: u64 = 60;
    let bus = Bus::new();
    let entered = Arc::new(AtomicUsize::new(0));
    let e = entered.clone();
    let _h = bus
        .handle(move |c: Double, _| {
            let e = e.clone();
            async move {
                if c.n % 9 == 4 {
                    e.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                tokio::task::yield_now().await;
                Ok::<_, std::io::Error>(c.n * 2)
            }
        })
        .workers(3)
        .queue_capacity(256)
        .start()
        .await
        .unwrap();
    let mut senders = Vec::new();
    for n in 0..N {
        let b = bus.clone();
        senders.push((n, tokio::spawn(async move { b.send(Double { n }).await })));
    }
    until("two stuck commands held by workers", || {
        entered.load(Ordering::SeqCst) >= 2
    })
    .await;
    let report = bus.shutdown(Duration::from_millis(50)).await.unwrap();
    let mut not_processed = 0;
    for (n, s) in senders {
        match tokio::time::timeout(WAIT, s).await.unwrap().unwrap() {
            Ok(out) => assert_eq!(out, n * 2),
            Err(switchyard::SendError::NotProcessed(_)) => not_processed += 1,
            // Not sent before the shutdown's call (documented: never accepted).
            Err(switchyard::SendError::ShuttingDown) => {}
            Err(e) => panic!("{n}: {e:?}"),
        }
    }
    let ids: BTreeSet<_> = report.left.iter().cloned().collect();
    assert_eq!(ids.len(), report.left.len(), "named twice: {report:?}");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), report.left.len());
    assert_eq!(not_processed, report.left.len(), "{report:?}");
    assert_eq!(bus.pending(), 0);
}

/// A lent envelope whose worker waits out a retry's backoff when the shutdown deadline
/// passes (its first attempt panicked): the message is named and dead-lettered once, with its
/// bytes; nothing is pending.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_during_a_retry_backoff_of_a_lent_envelope() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let _sub = bus
        .on("backoff", move |p: Ping, _| {
            a.fetch_add(1, Ordering::SeqCst);
            async move {
                if p.n == 7 {
                    panic!("first attempts panic");
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .max_attempts(5)
        .retry_delay(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 7 }).await.unwrap();
    bus.publish(Ping { n: 8 }).await.unwrap();
    until("the first attempt", || attempts.load(Ordering::SeqCst) >= 1).await;
    let report = bus.shutdown(Duration::from_secs(1)).await.unwrap();
    let letters = bus.dead_letters().unwrap().list();
    let mut lettered: Vec<u64> = letters.iter().map(|l| n_of(&l.envelope)).collect();
    lettered.sort_unstable();
    assert_eq!(lettered, [7, 8], "{report:?}");
    assert_eq!(report.left.len(), 2, "{report:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(bus.pending(), 0);
}

/// An event whose value holds a reference the test counts (not sent over the wire).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Counted {
    /// A number.
    pub n: u64,
    /// Only its reference count is read (the test's `Arc`).
    #[serde(skip)]
    #[allow(dead_code)]
    guard: Option<Arc<()>>,
}
impl Message for Counted {
    const TOPIC: &'static str = "rev2.counted";
}

/// docs/bus.md: a settled message's typed value is let go of. Through lent envelopes, a
/// typed handler taking `Shared<M>` that holds each value a little past its message, a raw
/// reader (encoding each) and a typed command run inline: once all is idle, no value is left
/// alive anywhere in the bus (spent envelopes, kept blocks, worker slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_settled_value_stays_alive_in_the_bus() {
    let guard = Arc::new(());
    let bus = Bus::new();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    let _shared = bus
        .on("shared", move |m: switchyard::Shared<Counted>, _| {
            let h = h.clone();
            async move {
                let mut held = h.lock().unwrap();
                held.push(m);
                // Holds the last few values past their messages.
                if held.len() > 4 {
                    held.remove(0);
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .workers(2)
        .start()
        .await
        .unwrap();
    let _raw = bus
        .on("raw", |_: Counted, ctx| {
            assert!(!ctx.envelope().payload.is_empty());
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    for n in 0..500 {
        bus.publish(Counted {
            n,
            guard: Some(guard.clone()),
        })
        .await
        .unwrap();
    }
    bus.run_until_idle().await;
    held.lock().unwrap().clear();
    until("every value let go of", || Arc::strong_count(&guard) == 1).await;
    bus.shutdown(WAIT).await.unwrap();
}
