//! Review rev1 (issue 18, the hot paths of the last stops), by attack: the attacks that found
//! no defect (they pass), kept for the coverage they add; the defects it found are tested in
//! `carried_values.rs` and `inline_shutdown.rs`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, DeadLetterReason, Message, Outcome, Overflow, SendError, Shared};
use tokio::sync::{Semaphore, mpsc};

use crate::{Double, Ping, WAIT, received, until};

/// A command handled inline whose future panics after a first `Pending` (the panic is in the
/// run's box, not in the first poll on the sender's stack): the panic is isolated, the sender
/// gets `Failed` with the panic, the slot is given back and a second command runs.
#[tokio::test(flavor = "current_thread")]
async fn an_inline_handler_panicking_after_it_waited_fails_the_send_and_frees_its_slot() {
    let bus = Bus::new();
    let h = bus
        .handle(|c: Double, _| async move {
            tokio::task::yield_now().await;
            assert!(c.n != 0, "late boom");
            Ok::<_, std::io::Error>(c.n * 2)
        })
        .max_attempts(1)
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let sender = tokio::spawn(async move {
        let failed = b.send(Double { n: 0 }).await;
        let fine = b.send(Double { n: 4 }).await;
        (failed, fine)
    });
    let (failed, fine) = tokio::time::timeout(WAIT, sender)
        .await
        .unwrap()
        .expect("the sender's task survives");
    match failed {
        Err(SendError::Failed { error, attempts }) => {
            assert!(error.contains("late boom"), "{error}");
            assert_eq!(attempts, 1);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(fine.unwrap(), 8);
    let stats = h.stats();
    assert_eq!(
        (stats.panicked, stats.dead_lettered, stats.acked),
        (1, 1, 1)
    );
    assert_eq!(
        bus.dead_letters().unwrap().list()[0].reason,
        DeadLetterReason::Panicked
    );
    assert_eq!((h.info().in_flight, bus.pending()), (0, 0));
}

/// A send polled once and dropped at each point it can wait (the handler waiting at a gate,
/// then in its retry backoff): the command is still handled to its end, counted once, and
/// the worker slot is given back (a later send runs).
#[tokio::test(flavor = "current_thread")]
async fn an_inline_send_dropped_in_its_retry_backoff_still_finishes() {
    let bus = Bus::builder()
        .max_attempts(2)
        .backoff(switchyard::Backoff::fixed(Duration::from_millis(5)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let h = bus
        .handle(move |cmd: Double, ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if cmd.n == 1 && ctx.attempt() == 1 {
                    return Err("first fails".to_owned());
                }
                Ok(cmd.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    // Polled once: the first attempt fails on the spot, the run waits in its backoff.
    {
        let send = bus.send(Double { n: 1 });
        tokio::pin!(send);
        assert!(futures_util::poll!(send.as_mut()).is_pending());
    }
    assert_eq!(
        bus.pending(),
        1,
        "still accepted after its sender went away"
    );
    until("the retry ran", || calls.load(Ordering::SeqCst) == 2).await;
    bus.run_until_idle().await;
    let stats = h.stats();
    assert_eq!((stats.acked, stats.retried, stats.dead_lettered), (1, 1, 0));
    assert_eq!(
        tokio::time::timeout(WAIT, bus.send(Double { n: 3 }))
            .await
            .unwrap()
            .unwrap(),
        6
    );
    assert_eq!((h.info().in_flight, bus.pending()), (0, 0));
}

/// A handler future whose `Drop` sends another command (polled once, as a `Drop` can): the
/// nested send runs inline while the first command's run is being torn down; both commands
/// are answered with their own outputs and nothing is left pending.
#[tokio::test(flavor = "current_thread")]
async fn a_send_from_the_drop_of_a_handlers_future_is_handled() {
    use futures_util::FutureExt;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Side {
        n: u64,
    }
    impl Message for Side {
        const TOPIC: &'static str = "rev1.side";
        const KIND: switchyard::Kind = switchyard::Kind::Command;
    }
    impl switchyard::Command for Side {
        type Output = u64;
    }

    struct SendsOnDrop(Bus, Arc<Mutex<Vec<Option<u64>>>>);
    impl Drop for SendsOnDrop {
        fn drop(&mut self) {
            let out = self
                .0
                .send(Side { n: 7 })
                .now_or_never()
                .map(|r| r.unwrap_or(u64::MAX));
            self.1.lock().unwrap().push(out);
        }
    }

    let bus = Bus::new();
    let _side = bus
        .handle(|s: Side, _| async move { Ok::<_, std::io::Error>(s.n + 1000) })
        .start()
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
    let (b, s) = (bus.clone(), seen.clone());
    let _h = bus
        .handle(move |c: Double, _| {
            let guard = SendsOnDrop(b.clone(), s.clone());
            async move {
                let _guard = guard;
                if c.n == 2 {
                    tokio::task::yield_now().await;
                }
                Ok::<_, std::io::Error>(c.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Double { n: 1 }).await.unwrap(), 2);
    assert_eq!(bus.send(Double { n: 2 }).await.unwrap(), 4);
    assert_eq!(*seen.lock().unwrap(), vec![Some(1007), Some(1007)]);
    bus.run_until_idle().await;
    assert_eq!(bus.pending(), 0);
}

/// DropOldest with lanes and priorities: the evicted message is the oldest waiting one
/// whatever its lane or priority; per-key order holds for what is left; every message is
/// either handled or dead-lettered (none lost, none twice).
#[tokio::test(flavor = "current_thread")]
async fn drop_oldest_with_lanes_and_priorities_evicts_the_oldest_and_keeps_key_order() {
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Keyed {
        n: u64,
        key: String,
    }
    impl Message for Keyed {
        const TOPIC: &'static str = "rev1.keyed";
    }
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut started) = mpsc::unbounded_channel();
    let g = gate.clone();
    let sub = bus
        .on("lanes", move |k: Keyed, _| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send((k.key.clone(), k.n));
                g.acquire()
                    .await
                    .map(|p| p.forget())
                    .map_err(|e| e.to_string())
            }
        })
        .ordering_header("key")
        .queue_capacity(3)
        .overflow(Overflow::DropOldest)
        .workers(2)
        .start()
        .await
        .unwrap();
    let publish = |n: u64, key: &str, prio: switchyard::Priority| {
        let env = Keyed { n, key: key.into() }
            .to_envelope()
            .unwrap()
            .with_header("key", key)
            .with_priority(prio);
        let bus = bus.clone();
        async move { bus.publish_envelope(env).await.unwrap() }
    };
    use switchyard::Priority;
    let (high, low, normal) = (Priority::HIGH, Priority::LOW, Priority::NORMAL);
    // Both workers busy, with a1 and b1.
    publish(1, "a", normal).await;
    publish(2, "b", normal).await;
    let mut first = received(&mut started, 2).await;
    first.sort();
    assert_eq!(first, [("a".into(), 1), ("b".into(), 2)]);
    // Waiting: a3 (low), b4 (high), c5 (normal); then a6 evicts a3, c7 evicts b4.
    publish(3, "a", low).await;
    publish(4, "b", high).await;
    publish(5, "c", normal).await;
    publish(6, "a", high).await;
    publish(7, "c", low).await;
    assert_eq!(sub.stats().dropped, 2);
    let mut dropped: Vec<String> = bus
        .dead_letters()
        .unwrap()
        .list()
        .into_iter()
        .map(|l| {
            assert_eq!(l.reason, DeadLetterReason::Dropped);
            String::from_utf8(l.envelope.payload.to_vec()).unwrap()
        })
        .collect();
    dropped.sort();
    assert_eq!(
        dropped,
        [r#"{"n":3,"key":"a"}"#, r#"{"n":4,"key":"b"}"#],
        "the two oldest waiting were evicted"
    );
    gate.add_permits(100);
    let rest = received(&mut started, 3).await;
    bus.run_until_idle().await;
    let handled: HashSet<u64> = first.iter().chain(&rest).map(|(_, n)| *n).collect();
    assert_eq!(handled, HashSet::from([1, 2, 5, 6, 7]));
    let c: Vec<u64> = rest
        .iter()
        .filter(|(k, _)| k == "c")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(c, [5, 7], "key c in publish order");
    assert_eq!(bus.pending(), 0);
}

/// `Shared<M>` with retries under a queue: each attempt is counted once (`ctx.attempt()`
/// 1, 2, 3), `ctx.envelope()` shows that attempt's number and the first delivery time of
/// the first attempt, unchanged on the later ones, and the dead letter says 3 attempts.
#[tokio::test(flavor = "current_thread")]
async fn shared_handler_retries_keep_first_delivered_at_and_count_attempts() {
    let bus = Bus::builder()
        .max_attempts(3)
        .backoff(switchyard::Backoff::fixed(Duration::from_millis(1)))
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("retried", move |p: Shared<Ping>, ctx| {
            let tx = tx.clone();
            async move {
                let env = ctx.envelope();
                let _ = tx.send((
                    p.n,
                    ctx.attempt(),
                    env.delivery.attempt,
                    env.delivery.first_delivered_at,
                    env.timestamp,
                ));
                Err::<(), _>("always fails".to_owned())
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 9 }).await.unwrap();
    let got = received(&mut rx, 3).await;
    bus.run_until_idle().await;
    let first_at = got[0].3.expect("first_delivered_at set");
    for (i, (n, attempt, env_attempt, at, _)) in got.iter().enumerate() {
        let want = u32::try_from(i + 1).unwrap();
        assert_eq!((*n, *attempt, *env_attempt), (9, want, want));
        assert_eq!(
            *at,
            Some(first_at),
            "attempt {want} keeps the first delivery time"
        );
    }
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].first_attempt_at, Some(first_at));
}

/// docs/bus.md "Message times": first delivery is stamped after the message was made; with a
/// publisher and workers on different threads the two come from different threads' anchors,
/// so they are compared with the few microseconds' tolerance the docs ask for. Also a reply
/// is not stamped before its command. (Coverage: passes with a 5 µs tolerance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_delivery_is_not_stamped_before_the_message_across_threads() {
    const N: u64 = 20_000;
    const TOLERANCE: Duration = Duration::from_micros(5);
    let bus = Bus::new();
    let worst = Arc::new(Mutex::new((Duration::ZERO, 0u64)));
    let w = worst.clone();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let _sub = bus
        .on("times", move |_p: Ping, ctx| {
            let env = ctx.envelope();
            let first = env
                .delivery
                .first_delivered_at
                .unwrap_or(SystemTime::UNIX_EPOCH);
            if let Err(e) = first.duration_since(env.timestamp) {
                let mut worst = w.lock().unwrap();
                worst.0 = worst.0.max(e.duration());
                worst.1 += 1;
            }
            d.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>(()) }
        })
        .workers(2)
        .start()
        .await
        .unwrap();
    let mut publishers = Vec::new();
    for p in 0..2 {
        let bus = bus.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..N / 2 {
                bus.publish(Ping { n: p * N + n }).await.unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    until("all handled", || done.load(Ordering::SeqCst) == N as usize).await;
    let (worst, count) = *worst.lock().unwrap();
    eprintln!("first delivery before the message: {count} of {N}, by at most {worst:?}");
    assert!(
        worst <= TOLERANCE,
        "a first delivery stamped {worst:?} before its message ({count} times)"
    );
}

/// Ids made on many threads at once are unique, and each thread's are strictly increasing
/// (the per-thread run of `id.rs`, across the clock's re-anchoring every millisecond).
#[test]
fn ids_are_unique_across_threads_and_increase_per_thread() {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let ids: Vec<switchyard::MessageId> =
                    (0..200_000).map(|_| switchyard::MessageId::new()).collect();
                for pair in ids.windows(2) {
                    assert!(pair[0] < pair[1], "{:?} then {:?}", pair[0], pair[1]);
                }
                ids
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for id in t.join().unwrap() {
            assert!(all.insert(id), "an id repeated across threads");
        }
    }
}

/// Shutdown's deadline with inline runs in every state a run can wait in: one whose sender
/// stopped waiting (its run goes on in a task of its own) and one waiting in its retry
/// backoff. docs/bus.md "Shutdown": what is left is dead-lettered with reason `Shutdown` and
/// named in `report.left`; a sender still waiting gets `NotProcessed`.
#[tokio::test(flavor = "current_thread")]
async fn inline_runs_left_at_the_shutdown_deadline_are_named_and_dead_lettered() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::builder()
        .max_attempts(5)
        .backoff(switchyard::Backoff::fixed(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let _h = bus
        .handle(move |c: Double, ctx| {
            let tx = entered_tx.clone();
            async move {
                let _ = tx.send((c.n, ctx.attempt()));
                if c.n == 1 {
                    // Waits for good.
                    std::future::pending::<()>().await;
                }
                // n = 2: fails, then waits an hour in the backoff.
                Err::<u64, _>("fails".to_owned())
            }
        })
        .workers(2)
        .start()
        .await
        .unwrap();
    // n = 1: its sender stops waiting after the first poll.
    {
        let send = bus.send(Double { n: 1 });
        tokio::pin!(send);
        assert!(futures_util::poll!(send.as_mut()).is_pending());
    }
    let b = bus.clone();
    let waiting = tokio::spawn(async move { b.send(Double { n: 2 }).await });
    let mut got = received(&mut entered, 2).await;
    got.sort_unstable();
    assert_eq!(got, [(1, 1), (2, 1)]);
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    assert_eq!(report.drained, 0, "{report:?}");
    assert_eq!(report.left.len(), 2, "both runs named: {report:?}");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown && report.left.contains(&l.envelope.id))
    );
    assert!(matches!(
        waiting.await.unwrap(),
        Err(SendError::NotProcessed(_))
    ));
    assert_eq!(bus.pending(), 0);
}

/// docs/bus.md "Message times" on one thread (publisher, handler and sender share it): the
/// first delivery is not before the message was made, nor a reply before its command, nor
/// a retry's first delivery time changed; strictly, as one thread's readings only grow.
#[tokio::test(flavor = "current_thread")]
async fn on_one_thread_deliveries_and_replies_are_not_stamped_before_their_message() {
    let bus = Bus::new();
    let _h = bus
        .handle_envelope(
            "replier",
            Double::TOPIC,
            switchyard::handler_fn(|env: switchyard::Envelope| async move {
                let at = env.delivery.first_delivered_at;
                assert!(
                    at.is_some_and(|at| at >= env.timestamp),
                    "delivered before made"
                );
                let reply = switchyard::Envelope::new(
                    switchyard::Topic::new("rev1.reply").unwrap(),
                    &b"1"[..],
                );
                Ok::<_, std::io::Error>(Outcome::reply(reply))
            }),
        )
        .start()
        .await
        .unwrap();
    for n in 0..20_000u64 {
        let env = Double { n }.to_envelope().unwrap();
        let made = env.timestamp;
        let result = bus.send_envelope(env).await.unwrap();
        let reply = result.reply.expect("a reply");
        assert!(
            reply.timestamp >= made,
            "reply {:?} before its command {made:?}",
            reply.timestamp
        );
    }
}

/// A typed command evicted from a full queue by `DropOldest` (it travelled unencoded to its
/// typed handler): its sender hears `NotProcessed` at once, and the dead letter holds its
/// bytes (a dead letter always does).
#[tokio::test(flavor = "current_thread")]
async fn a_typed_command_evicted_by_drop_oldest_answers_its_sender_and_keeps_its_bytes() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut entered) = mpsc::unbounded_channel();
    let g = gate.clone();
    let _h = bus
        .handle(move |c: Double, _| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send(c.n);
                g.acquire().await.map_err(|e| e.to_string())?.forget();
                Ok::<_, String>(c.n * 2)
            }
        })
        .queue_capacity(1)
        .overflow(Overflow::DropOldest)
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let first = tokio::spawn(async move { b.send(Double { n: 1 }).await });
    assert_eq!(received(&mut entered, 1).await, [1]);
    let b = bus.clone();
    let evicted = tokio::spawn(async move { b.send(Double { n: 2 }).await });
    until("n = 2 is queued", || {
        bus.registry()
            .iter()
            .any(|s| s.name == "math.double" && s.depth == 1)
    })
    .await;
    let b = bus.clone();
    let third = tokio::spawn(async move { b.send(Double { n: 3 }).await });
    let evicted = tokio::time::timeout(WAIT, evicted).await.unwrap().unwrap();
    assert!(
        matches!(evicted, Err(SendError::NotProcessed(_))),
        "{evicted:?}"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Dropped);
    assert_eq!(&letters[0].envelope.payload[..], br#"{"n":2}"#);
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(third.await.unwrap().unwrap(), 6);
    bus.run_until_idle().await;
    assert_eq!(bus.pending(), 0);
}

/// A send waiting for room in a full `Block` queue, dropped: it was never accepted, so it
/// is not handled, not counted pending, and the handler's slot and queue stay consistent.
#[tokio::test(flavor = "current_thread")]
async fn a_send_dropped_while_waiting_for_room_is_not_handled_nor_left_pending() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut entered) = mpsc::unbounded_channel();
    let g = gate.clone();
    let h = bus
        .handle(move |c: Double, _| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send(c.n);
                g.acquire().await.map_err(|e| e.to_string())?.forget();
                Ok::<_, String>(c.n * 2)
            }
        })
        .queue_capacity(1)
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let first = tokio::spawn(async move { b.send(Double { n: 1 }).await });
    assert_eq!(received(&mut entered, 1).await, [1]);
    let b = bus.clone();
    let second = tokio::spawn(async move { b.send(Double { n: 2 }).await });
    until("n = 2 is queued", || bus.pending() == 2).await;
    {
        let send = bus.send(Double { n: 3 });
        tokio::pin!(send);
        assert!(futures_util::poll!(send.as_mut()).is_pending());
    }
    assert_eq!(bus.pending(), 2, "the dropped send was never accepted");
    gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(second.await.unwrap().unwrap(), 4);
    bus.run_until_idle().await;
    assert_eq!(received(&mut entered, 1).await, [2]);
    assert!(entered.try_recv().is_err(), "n = 3 was not handled");
    assert_eq!((h.stats().acked, bus.pending()), (2, 0));
    assert_eq!(bus.send(Double { n: 4 }).await.unwrap(), 8);
}

/// Inline runs and workers racing on two threads, with lanes: never more than `workers`
/// calls at once, never two calls of one key at once, and every command answered with its
/// own output. Some calls wait (so some commands queue and workers take them while inline
/// runs finish), some answer at once (inline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_runs_and_workers_racing_keep_the_worker_limit_and_the_lanes() {
    const WORKERS: usize = 2;
    const SENDERS: u64 = 6;
    const EACH: u64 = 400;
    const KEYS: usize = 3;
    let bus = Bus::new();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let per_key: Arc<[AtomicUsize; KEYS]> = Arc::new(std::array::from_fn(|_| AtomicUsize::new(0)));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (r, m, k, o) = (
        running.clone(),
        most.clone(),
        per_key.clone(),
        overlaps.clone(),
    );
    let _h = bus
        .handle(move |c: Double, ctx| {
            let (r, m, k, o) = (r.clone(), m.clone(), k.clone(), o.clone());
            let key: usize = ctx.header("key").unwrap().parse().unwrap();
            async move {
                m.fetch_max(r.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                if k[key].fetch_add(1, Ordering::SeqCst) != 0 {
                    o.fetch_add(1, Ordering::SeqCst);
                }
                if c.n.is_multiple_of(3) {
                    tokio::task::yield_now().await;
                }
                k[key].fetch_sub(1, Ordering::SeqCst);
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>(c.n * 2)
            }
        })
        .workers(WORKERS)
        .ordering_header("key")
        .queue_capacity(1024)
        .start()
        .await
        .unwrap();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let b = bus.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let n = s * EACH + i;
                    let env = Double { n }
                        .to_envelope()
                        .unwrap()
                        .with_header("key", (n as usize % KEYS).to_string());
                    let out = b.send_envelope(env).await.unwrap();
                    let reply = out.reply.expect("a reply");
                    assert_eq!(&reply.payload[..], (n * 2).to_string().as_bytes());
                }
            })
        })
        .collect();
    for s in senders {
        tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .unwrap()
            .unwrap();
    }
    bus.run_until_idle().await;
    assert!(
        most.load(Ordering::SeqCst) <= WORKERS,
        "{} at once",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two calls of one key at once"
    );
    assert_eq!(bus.pending(), 0);
}

/// docs/bus.md "Message times": a reading "trails `SystemTime::now()` by at most about
/// 1.5 µs and is not ahead of it", and one thread's readings only grow. Checked on four
/// threads at once (so threads move between cores), each bracketing every reading between
/// two system clock reads, with a 5 µs tolerance either side.
#[test]
fn clock_readings_stay_within_microseconds_of_the_system_clock_and_grow_per_thread() {
    const TOLERANCE: Duration = Duration::from_micros(5);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let (mut behind, mut ahead, mut back) = (Duration::ZERO, Duration::ZERO, 0u32);
                let mut last = SystemTime::UNIX_EPOCH;
                for i in 0..300_000u32 {
                    if i % 50_000 == 0 {
                        // Let the anchor age past its span, and the thread move.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    let before = SystemTime::now();
                    let t = switchyard::clock::now();
                    let after = SystemTime::now();
                    if let Ok(d) = before.duration_since(t) {
                        behind = behind.max(d);
                    }
                    if let Ok(d) = t.duration_since(after) {
                        ahead = ahead.max(d);
                    }
                    back += u32::from(t < last);
                    last = t;
                }
                (behind, ahead, back)
            })
        })
        .collect();
    for t in threads {
        let (behind, ahead, back) = t.join().unwrap();
        eprintln!("behind by at most {behind:?}, ahead by at most {ahead:?}, {back} steps back");
        assert!(
            behind <= TOLERANCE,
            "a reading trailed the system clock by {behind:?}"
        );
        assert!(
            ahead <= TOLERANCE,
            "a reading was ahead of the system clock by {ahead:?}"
        );
        assert_eq!(back, 0, "a thread's readings went back");
    }
}

/// An inline command on a bus that publishes lifecycle events (its whole handling goes to
/// the run, `inline.rs` `first_attempt`): a typed sender gets its output after a first
/// attempt that waits and fails and a second that waits and answers; the events say
/// started, then finished ok after 2 attempts.
#[tokio::test(flavor = "current_thread")]
async fn an_inline_typed_command_with_lifecycle_events_and_a_retry_answers_its_output() {
    let bus = Bus::builder()
        .lifecycle_events(true)
        .max_attempts(3)
        .backoff(switchyard::Backoff::fixed(Duration::from_millis(1)))
        .build()
        .unwrap();
    let rec = switchyard::testkit::Recorder::start(&bus, "switchyard.command.#")
        .await
        .unwrap();
    let h = bus
        .handle(|c: Double, ctx| async move {
            tokio::task::yield_now().await;
            if ctx.attempt() == 1 {
                return Err("first fails".to_owned());
            }
            Ok(c.n * 2)
        })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Double { n: 21 }).await.unwrap(), 42);
    let got = rec.wait_for(2, WAIT).await.unwrap();
    assert_eq!(got[0].topic.as_str(), "switchyard.command.started");
    assert_eq!(got[1].topic.as_str(), "switchyard.command.finished");
    let finished: switchyard::lifecycle::CommandFinished =
        serde_json::from_slice(&got[1].payload).unwrap();
    assert!(finished.ok);
    assert_eq!(finished.attempts, 2);
    bus.run_until_idle().await;
    let stats = h.stats();
    assert_eq!((stats.acked, stats.retried), (1, 1));
    assert_eq!((h.info().in_flight, bus.pending()), (0, 0));
}

/// A typed handler taking the queued envelope, run inline with retries: `ctx.envelope()`
/// (a copy made for the attempt) shows each attempt's number (1, 2, 3, as `ctx.attempt()`)
/// and the first attempt's delivery time on every attempt, not before the message was
/// made; the first attempt fails at once, the second after waiting, the third answers.
#[tokio::test(flavor = "current_thread")]
async fn inline_retries_show_each_attempts_bookkeeping_in_ctx_envelope() {
    let bus = Bus::builder()
        .max_attempts(3)
        .backoff(switchyard::Backoff::fixed(Duration::from_millis(1)))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _h = bus
        .handle(move |c: Double, ctx| {
            let env = ctx.envelope();
            s.lock().unwrap().push((
                ctx.attempt(),
                env.delivery.attempt,
                env.delivery.first_delivered_at,
                env.timestamp,
                env.id.clone(),
            ));
            async move {
                match ctx.attempt() {
                    1 => Err("fails at once".to_owned()),
                    2 => {
                        tokio::task::yield_now().await;
                        Err("fails after waiting".to_owned())
                    }
                    _ => Ok(c.n * 2),
                }
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Double { n: 5 }).await.unwrap(), 10);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let first_at = seen[0].2.expect("first_delivered_at");
    assert!(
        first_at >= seen[0].3,
        "first delivery before the message was made"
    );
    for (i, (attempt, env_attempt, at, _, id)) in seen.iter().enumerate() {
        let want = u32::try_from(i + 1).unwrap();
        assert_eq!((*attempt, *env_attempt), (want, want));
        assert_eq!(*at, Some(first_at));
        assert_eq!(*id, seen[0].4, "one message");
    }
}
