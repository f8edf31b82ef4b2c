//! Boundaries: dropped subscriptions with queued work, extreme durations, zero timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{Backoff, Bus, DeadLetterReason, Outcome, Overflow, PublishError, SendError};
use tokio::sync::{Semaphore, mpsc};

use super::{letters_with, pass, stuck};
use crate::{Double, Ping, WAIT};

/// docs/bus.md: "Dropping `sub` unsubscribes (its queue is still drained)". A subscription
/// dropped with a message in hand and five waiting: all six are handled, `run_until_idle`
/// waits for them, and nothing stays pending; a later publish reaches no one.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_subscription_drains_its_queue_and_run_until_idle_waits_for_it() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut started) = mpsc::unbounded_channel();
    let g = gate.clone();
    let sub = bus
        .on("leaving", move |p: Ping, _| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = tx.send(p.n);
                pass(&g).await
            }
        })
        .start()
        .await
        .unwrap();
    for n in 0..6 {
        bus.publish(Ping { n }).await.unwrap();
    }
    assert_eq!(started.recv().await, Some(0));
    drop(sub);
    bus.publish(Ping { n: 99 }).await.unwrap(); // no subscriber any more
    assert!(bus.pending() >= 6, "{}", bus.pending());
    gate.add_permits(100);
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    let mut handled = vec![0];
    while let Ok(n) = started.try_recv() {
        handled.push(n);
    }
    assert_eq!(handled, [0, 1, 2, 3, 4, 5]);
    assert_eq!(bus.pending(), 0);
    assert!(bus.dead_letters().unwrap().is_empty());
}

/// A subscription dropped while its handler is stuck with three more waiting, then a
/// shutdown with a deadline: the dropped subscription's four messages are each named once
/// in `left` and dead-lettered with reason `Shutdown` (ARCHITECTURE.md: "A subscription
/// stays known to the shutdown while a worker ... still holds one of its messages").
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_subscriptions_leftovers_are_reported_at_the_shutdown_deadline() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (sub, mut started) = stuck(&bus, "leaving").await;
    for n in 0..4 {
        bus.publish(Ping { n }).await.unwrap();
    }
    assert_eq!(started.recv().await, Some(0));
    drop(sub);
    let report = bus.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.left.len(), 4, "{report:?}");
    let mut letters = letters_with(&bus, DeadLetterReason::Shutdown);
    let mut left = report.left.clone();
    letters.sort();
    left.sort();
    assert_eq!(letters, left);
    assert_eq!(report.drained, 0);
    assert_eq!(bus.pending(), 0);
}

/// Extreme durations do not panic across the API: a request with `Duration::MAX` as its
/// deadline is answered, `retry_delay(Duration::MAX)` and `Outcome::Retry { after: MAX }`
/// leave the message waiting (reported and dead-lettered by a shutdown), and a backoff
/// whose exponential growth overflows is capped.
#[tokio::test(flavor = "current_thread")]
async fn extreme_durations_do_not_panic() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let _h = bus
        .handle(|d: Double, ctx| async move {
            assert_eq!(ctx.remaining().is_some(), ctx.deadline().is_some());
            Ok::<_, String>(d.n * 2)
        })
        .start()
        .await
        .unwrap();
    assert_eq!(
        bus.request(Double { n: 2 }, Duration::MAX).await.unwrap(),
        4,
        "a request with no practical deadline is answered"
    );
    let calls = Arc::new(AtomicU32::new(0));
    let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
    let _forever = bus
        .on("forever", move |_: Ping, _| {
            c1.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("down") }
        })
        .retry_delay(Duration::MAX)
        .start()
        .await
        .unwrap();
    let _later = bus
        .on("later", move |_: Ping, ctx| {
            c2.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, String>(if ctx.attempt() == 1 {
                    Outcome::Retry {
                        after: Some(Duration::MAX),
                    }
                } else {
                    Outcome::Ack
                })
            }
        })
        .start()
        .await
        .unwrap();
    let _growing = bus
        .on("growing", move |_: Ping, _| {
            c3.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("down") }
        })
        .max_attempts(40)
        .backoff(
            Backoff::exponential(Duration::from_secs(1 << 40))
                .multiplier(1000)
                .max_delay(Duration::MAX),
        )
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "one attempt each, then waiting"
    );
    let report = bus.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.left.len(), 3, "{report:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// `Block { timeout: 0 }` refuses a full queue at once (like `RejectNew`, give or take a
/// timer tick), for a publish
/// and for a send, and `Adaptive` with a zero delay and timeout does too; what was
/// accepted is handled.
#[tokio::test(flavor = "current_thread")]
async fn zero_timeouts_refuse_a_full_queue_at_once() {
    let clock = VirtualClock::pause();
    for overflow in [
        Overflow::Block {
            timeout: Duration::ZERO,
        },
        Overflow::Adaptive {
            max_delay: Duration::ZERO,
            timeout: Duration::ZERO,
        },
    ] {
        let bus = Bus::new();
        let gate = Arc::new(Semaphore::new(0));
        let (tx, mut started) = mpsc::unbounded_channel();
        let (g, g2) = (gate.clone(), gate.clone());
        let tx2 = tx.clone();
        let sub = bus
            .on("full", move |p: Ping, _| {
                let (g, tx) = (g.clone(), tx.clone());
                async move {
                    let _ = tx.send(p.n);
                    pass(&g).await
                }
            })
            .queue_capacity(1)
            .overflow(overflow)
            .start()
            .await
            .unwrap();
        let _h = bus
            .handle(move |d: Double, _| {
                let (g, tx) = (g2.clone(), tx2.clone());
                async move {
                    let _ = tx.send(100 + d.n);
                    pass(&g).await?;
                    Ok::<_, String>(d.n)
                }
            })
            .queue_capacity(1)
            .overflow(overflow)
            .start()
            .await
            .unwrap();
        bus.publish(Ping { n: 0 }).await.unwrap();
        let sends: Vec<_> = (0..2)
            .map(|n| {
                let bus = bus.clone();
                tokio::spawn(async move { bus.send(Double { n }).await })
            })
            .collect();
        crate::received(&mut started, 2).await;
        bus.publish(Ping { n: 1 }).await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let t0 = clock.now();
        assert!(
            matches!(
                bus.publish(Ping { n: 2 }).await,
                Err(PublishError::Full { .. })
            ),
            "{overflow:?}"
        );
        let sent = bus.send(Double { n: 2 }).await;
        assert!(
            matches!(sent, Err(SendError::Full { .. })),
            "{overflow:?}: {sent:?} at {:?}",
            clock.now() - t0
        );
        // a zero timeout may still take one timer tick (tokio rounds up to 1 ms) each
        assert!(
            clock.now() - t0 <= Duration::from_millis(2),
            "{overflow:?}: {:?}",
            clock.now() - t0
        );
        gate.add_permits(100);
        for s in sends {
            s.await.unwrap().unwrap();
        }
        bus.run_until_idle().await;
        assert_eq!(sub.stats().acked, 2, "{overflow:?}");
        assert_eq!(sub.stats().refused_full, 1, "{overflow:?}");
    }
}
