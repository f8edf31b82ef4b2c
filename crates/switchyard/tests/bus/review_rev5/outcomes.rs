//! Counters after mixed outcomes, undecodable commands, wildcards, breaker and dedup on the bus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{
    Bus, DeadLetterReason, Envelope, Outcome, Overflow, SendError, SubscribeError, Topic,
    handler_fn,
};
use tokio::sync::{Semaphore, mpsc};

use super::{BoxErr, pass};
use crate::{Double, Ping, WAIT};

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

/// A typed command whose payload does not decode (sent as an envelope): the sender is told
/// at once (not left waiting), the dead letter keeps the raw bytes with reason
/// `DecodeFailed`, and the handler is not called.
#[tokio::test(flavor = "current_thread")]
async fn an_undecodable_command_answers_its_sender_and_dead_letters_the_raw_bytes() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let h = bus
        .handle(move |d: Double, _| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(d.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let env = Envelope::new(Topic::new("math.double").unwrap(), "{\"n\":\"two\"}")
        .with_kind(switchyard::Kind::Command);
    let id = env.id.clone();
    let got = tokio::time::timeout(WAIT, bus.send_envelope(env))
        .await
        .expect("the sender of an undecodable command is answered");
    assert!(
        matches!(&got, Err(SendError::NotProcessed(e)) if e.contains("cannot decode")),
        "{got:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, DeadLetterReason::DecodeFailed);
    assert_eq!(letters[0].envelope.id, id);
    assert_eq!(&letters[0].envelope.payload[..], b"{\"n\":\"two\"}");
    assert_eq!(h.stats().decode_failed, 1);
    assert_eq!(bus.pending(), 0);
    assert_eq!(bus.send(Double { n: 4 }).await.unwrap(), 8);
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

/// A circuit breaker (one trial call) on a bus subscription with four workers: once open it
/// leaves messages queued (no handler call, no dead letter); after the cool-down exactly one
/// worker gets the trial call while the other three wait (docs/middleware.md "Half-open: up
/// to `trial_calls` callers get readiness"); the trial's success closes it and every queued
/// message is handled once.
#[tokio::test(flavor = "current_thread")]
async fn a_half_open_breaker_admits_one_trial_among_four_workers() {
    use switchyard::middleware::breaker::{BreakerConfig, BreakerLayer, BreakerState};
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut calls) = mpsc::unbounded_channel();
    let breaker = BreakerLayer::new(
        "flaky",
        BreakerConfig::default()
            .failures(2)
            .cool_down(Duration::from_secs(10))
            .trial_calls(1),
    );
    let state = breaker.handle();
    let (h, r, m, g) = (healthy.clone(), running.clone(), most.clone(), gate.clone());
    let sub = bus
        .subscribe(
            "flaky",
            "test.ping",
            handler_fn(move |env: Envelope| {
                let (h, r, m, g, tx) = (h.clone(), r.clone(), m.clone(), g.clone(), tx.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let _ = tx.send(env.id.clone());
                    let ok = h.load(Ordering::SeqCst);
                    if ok {
                        pass(&g).await?;
                    }
                    r.fetch_sub(1, Ordering::SeqCst);
                    if ok {
                        Ok(Outcome::Ack)
                    } else {
                        Err::<_, BoxErr>("dependency down".into())
                    }
                }
            }),
        )
        .layer(breaker)
        .workers(4)
        .max_attempts(1)
        .start()
        .await
        .unwrap();
    for n in 0..2 {
        bus.publish(Ping { n }).await.unwrap();
    }
    crate::received(&mut calls, 2).await;
    crate::until("the breaker opens", || state.state() == BreakerState::Open).await;
    tokio::task::yield_now().await;
    for n in 2..8 {
        bus.publish(Ping { n }).await.unwrap();
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(calls.try_recv().is_err(), "no call while open");
    assert_eq!(
        bus.dead_letters().unwrap().len(),
        2,
        "only the two failures"
    );
    healthy.store(true, Ordering::SeqCst);
    most.store(0, Ordering::SeqCst);
    // the cool-down passes (virtual time): one trial call, held at the gate
    tokio::time::sleep(Duration::from_secs(11)).await;
    crate::received(&mut calls, 1).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(state.state(), BreakerState::HalfOpen);
    assert_eq!(most.load(Ordering::SeqCst), 1, "one trial call at a time");
    assert!(calls.try_recv().is_err(), "the other workers wait");
    gate.add_permits(100);
    bus.run_until_idle().await;
    assert_eq!(state.state(), BreakerState::Closed);
    let s = sub.stats();
    assert_eq!((s.acked, s.failed, s.dead_lettered), (6, 2, 2), "{s:?}");
    assert_eq!(bus.dead_letters().unwrap().len(), 2);
    assert_eq!(bus.pending(), 0);
}

/// Dedup on a bus subscription with two workers, a copy of a message published while the
/// first copy runs and fails (the bus retries outside the layer): whichever copy succeeds
/// first marks the key, so the handler succeeds exactly once for the id and the other copy
/// is acked without a second success (docs/middleware.md "Deduplication"). After the TTL
/// (virtual time) a third copy is handled again.
#[tokio::test(flavor = "current_thread")]
async fn dedup_on_the_bus_with_retries_handles_a_message_once_then_again_after_the_ttl() {
    use switchyard::middleware::dedup::{DedupConfig, DedupLayer};
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let successes = Arc::new(AtomicU32::new(0));
    let attempts = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut started) = mpsc::unbounded_channel();
    let (s, a, g) = (successes.clone(), attempts.clone(), gate.clone());
    let dedup = DedupLayer::new(DedupConfig::default().ttl(Duration::from_secs(60)));
    let seen = dedup.handle();
    let sub = bus
        .subscribe(
            "once",
            "test.ping",
            handler_fn(move |env: Envelope| {
                let (s, a, g, tx) = (s.clone(), a.clone(), g.clone(), tx.clone());
                async move {
                    let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = tx.send(env.delivery.attempt);
                    pass(&g).await?;
                    if n == 1 {
                        return Err::<Outcome, BoxErr>("the first call fails".into());
                    }
                    s.fetch_add(1, Ordering::SeqCst);
                    Ok(Outcome::Ack)
                }
            }),
        )
        .layer(dedup)
        .workers(2)
        .retry_delay(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let env = Envelope::new(Topic::new("test.ping").unwrap(), "{\"n\":1}");
    bus.publish_envelope(env.clone()).await.unwrap();
    assert_eq!(started.recv().await, Some(1));
    bus.publish_envelope(env.clone()).await.unwrap(); // its copy waits for the first
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(100);
    bus.run_until_idle().await;
    assert_eq!(
        successes.load(Ordering::SeqCst),
        1,
        "handled once for its id"
    );
    assert!(bus.dead_letters().unwrap().is_empty());
    assert_eq!(sub.stats().acked, 2, "both copies settled as acked");
    assert!(seen.duplicates() >= 1);
    tokio::time::sleep(Duration::from_secs(61)).await;
    bus.publish_envelope(env).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(
        successes.load(Ordering::SeqCst),
        2,
        "handled again after the TTL"
    );
    assert_eq!(bus.pending(), 0);
}

/// The registry's live figures settle back to zero after commands handled inline and
/// queued, with panics, errors, rejections, replies and a `DropOldest` eviction: `depth` and
/// `in_flight` are 0, `pending` is 0, and the counters count each command once
/// (`acked` + dead-lettered = commands sent; `delivered` = attempts made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_figures_settle_after_inline_and_queued_commands_with_mixed_outcomes() {
    let bus = Bus::builder()
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let h = bus
        .handle(move |d: Double, ctx| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                if d.n.is_multiple_of(7) {
                    tokio::task::yield_now().await;
                }
                match (d.n % 5, ctx.attempt()) {
                    (1, 1) => panic!("panics once"),
                    (2, _) => Err("always fails".to_owned()),
                    _ => Ok(d.n * 2),
                }
            }
        })
        .workers(3)
        .queue_capacity(4)
        .overflow(Overflow::DropOldest)
        .start()
        .await
        .unwrap();
    let sends: Vec<_> = (0..60u64)
        .map(|n| {
            let bus = bus.clone();
            tokio::spawn(async move { (n, bus.send(Double { n }).await) })
        })
        .collect();
    let (mut ok, mut failed, mut dropped) = (0u64, 0u64, 0u64);
    for s in sends {
        let (n, got) = tokio::time::timeout(WAIT, s).await.unwrap().unwrap();
        match got {
            Ok(v) => {
                assert_eq!(v, n * 2);
                ok += 1;
            }
            Err(SendError::Failed { attempts, .. }) => {
                assert_eq!((n % 5, attempts), (2, 3));
                failed += 1;
            }
            Err(SendError::NotProcessed(_)) => dropped += 1,
            Err(e) => panic!("{n}: {e:?}"),
        }
    }
    bus.run_until_idle().await;
    let info = h.info();
    assert_eq!((info.depth, info.in_flight), (0, 0), "{info:?}");
    assert_eq!(bus.pending(), 0);
    let s = info.stats;
    assert_eq!(s.acked, ok, "{s:?}");
    assert_eq!(s.dropped, dropped, "{s:?}");
    assert_eq!(s.dead_lettered, failed + dropped, "{s:?}");
    assert_eq!(
        s.delivered,
        u64::from(attempts.load(Ordering::SeqCst)),
        "{s:?}"
    );
    assert_eq!(ok + failed + dropped, 60);
    let snapshot = bus.metrics_snapshot();
    assert_eq!(snapshot.pending, 0);
    assert_eq!(snapshot.dead_letters, Some((failed + dropped) as usize));
}

/// The envelope reply of a typed handler is the same whether the command ran inline (the
/// handler free) or queued (the handler busy): same payload, handler name and attempts, a
/// reply that records the command as its cause and keeps its correlation id.
#[tokio::test(flavor = "current_thread")]
async fn an_envelope_reply_is_the_same_inline_and_queued() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut started) = mpsc::unbounded_channel();
    let g = gate.clone();
    let h = bus
        .handle(move |d: Double, ctx| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send(d.n);
                if d.n == 0 {
                    pass(&g).await?;
                }
                if ctx.attempt() == 1 && d.n == 3 {
                    return Err("once".to_owned());
                }
                Ok(d.n * 2)
            }
        })
        .retry_delay(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    let command = |n: u64| {
        Envelope::new(Topic::new("math.double").unwrap(), format!("{{\"n\":{n}}}"))
            .with_kind(switchyard::Kind::Command)
    };
    let inline = command(3);
    let inline_id = inline.id.clone();
    let inline_result = bus.send_envelope(inline).await.unwrap();
    // now make it busy so the next one queues
    let busy = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send(Double { n: 0 }).await })
    };
    crate::received(&mut started, 3).await; // 3 (twice), then 0
    let queued = command(3);
    let queued_id = queued.id.clone();
    let queued_send = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send_envelope(queued).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!queued_send.is_finished(), "it waits in the queue");
    gate.add_permits(1);
    busy.await.unwrap().unwrap();
    let queued_result = queued_send.await.unwrap().unwrap();
    for (result, id) in [(&inline_result, &inline_id), (&queued_result, &queued_id)] {
        assert_eq!(result.handler, h.name());
        assert_eq!(result.attempts, 2, "{result:?}");
        let reply = result.reply.as_ref().expect("a typed handler replies");
        assert_eq!(&reply.payload[..], b"6");
        assert_eq!(reply.causation_id(), Some(id), "{reply:?}");
        assert_eq!(&reply.correlation_id, id, "{reply:?}");
    }
    assert_eq!(
        inline_result.reply.as_ref().unwrap().content_type(),
        queued_result.reply.as_ref().unwrap().content_type()
    );
}

/// A `publish_and_wait` and a queued `send` whose futures are dropped after their message was
/// accepted: both messages are still handled once, nothing stays pending, and the handler's
/// slot is free for the next send.
#[tokio::test(flavor = "current_thread")]
async fn dropped_waiters_do_not_cancel_accepted_messages() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicU32::new(0));
    let (g, h) = (gate.clone(), handled.clone());
    let (g2, h2) = (gate.clone(), handled.clone());
    let _sub = bus
        .on("ev", move |_: Ping, _| {
            let (g, h) = (g.clone(), h.clone());
            async move {
                pass(&g).await?;
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            }
        })
        .start()
        .await
        .unwrap();
    let _cmd = bus
        .handle(move |d: Double, _| {
            let (g, h) = (g2.clone(), h2.clone());
            async move {
                pass(&g).await?;
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(d.n)
            }
        })
        .start()
        .await
        .unwrap();
    let waiter = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish_and_wait(Ping { n: 1 }).await })
    };
    let sender = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send(Double { n: 1 }).await })
    };
    let second = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.send(Double { n: 2 }).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(bus.pending(), 3);
    waiter.abort();
    second.abort(); // the queued one
    let _ = waiter.await;
    let _ = second.await;
    gate.add_permits(10);
    assert_eq!(sender.await.unwrap().unwrap(), 1);
    bus.run_until_idle().await;
    assert_eq!(handled.load(Ordering::SeqCst), 3);
    assert_eq!(bus.pending(), 0);
    assert_eq!(bus.send(Double { n: 7 }).await.unwrap(), 7);
}

/// The bus's own retries and a breaker layer: the first attempt fails and opens the breaker
/// (one failure); the retry, due long before the cool-down ends, must wait for readiness
/// (tower's contract: `call` only after `poll_ready`; docs/bus.md "A worker takes a message
/// only right after its handler reported ready") rather than burn its attempts on
/// `BreakerOpenError`. Once the cool-down ends the trial call succeeds: acked after 2
/// attempts, no dead letter.
#[tokio::test(flavor = "current_thread")]
async fn a_bus_retry_waits_for_an_open_breaker_instead_of_burning_attempts() {
    use switchyard::middleware::breaker::{BreakerConfig, BreakerLayer, BreakerState};
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let breaker = BreakerLayer::new(
        "fragile",
        BreakerConfig::default()
            .failures(1)
            .cool_down(Duration::from_secs(10))
            .trial_calls(1),
    );
    let state = breaker.handle();
    let sub = bus
        .subscribe(
            "fragile",
            "test.ping",
            handler_fn(move |_env: Envelope| {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err::<Outcome, BoxErr>("down once".into());
                    }
                    Ok(Outcome::Ack)
                }
            }),
        )
        .layer(breaker)
        .max_attempts(3)
        .retry_delay(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert!(
        letters.is_empty(),
        "burnt on the open breaker: {:?}",
        letters
            .iter()
            .map(|l| (&l.error, l.attempts))
            .collect::<Vec<_>>()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(sub.stats().acked, 1);
    assert_eq!(state.state(), BreakerState::Closed);
}

/// A command sent while its handler's breaker is open is not run inline (which would call
/// without readiness and fail fast): docs/bus.md "When the handler ... is not ready (an
/// open breaker ...), the command is queued". It waits for the cool-down and is answered.
#[tokio::test(flavor = "current_thread")]
async fn a_send_to_a_handler_behind_an_open_breaker_waits_for_the_cool_down() {
    use switchyard::middleware::breaker::{BreakerConfig, BreakerLayer, BreakerState};
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let breaker = BreakerLayer::new(
        "fragile",
        BreakerConfig::default()
            .failures(1)
            .cool_down(Duration::from_secs(10))
            .trial_calls(1),
    );
    let state = breaker.handle();
    let _h = bus
        .handle(|d: Double, _| async move {
            if d.n == 0 {
                return Err("down".to_owned());
            }
            Ok(d.n * 2)
        })
        .layer(breaker)
        .max_attempts(1)
        .start()
        .await
        .unwrap();
    let first = bus.send(Double { n: 0 }).await;
    assert!(matches!(first, Err(SendError::Failed { .. })), "{first:?}");
    assert_eq!(state.state(), BreakerState::Open);
    let t0 = clock.now();
    assert_eq!(bus.send(Double { n: 4 }).await.unwrap(), 8);
    assert!(
        clock.now() - t0 >= Duration::from_secs(9),
        "{:?}",
        clock.now() - t0
    );
    assert_eq!(state.state(), BreakerState::Closed);
}
