use std::sync::Arc;
use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{Bus, DeadLetterReason, Overflow, PublishError, Subscription};
use tokio::sync::{Semaphore, mpsc};

use crate::{Ping, WAIT};

/// A subscription whose handler reports each start and then waits for a permit per message.
pub(crate) async fn gated(
    bus: &Bus,
    capacity: usize,
    overflow: Overflow,
) -> (Subscription, Arc<Semaphore>, mpsc::UnboundedReceiver<u64>) {
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, started) = mpsc::unbounded_channel();
    let g = gate.clone();
    let sub = bus
        .on("slow", move |p: Ping, _| {
            let (g, tx) = (g.clone(), started_tx.clone());
            async move {
                let _ = tx.send(p.n);
                g.acquire()
                    .await
                    .map(|permit| permit.forget())
                    .map_err(|e| e.to_string())
            }
        })
        .queue_capacity(capacity)
        .overflow(overflow)
        .start()
        .await
        .unwrap();
    (sub, gate, started)
}

/// Publishes message 0 and waits until the handler holds it, so the queue itself is empty.
async fn occupy_worker(bus: &Bus, started: &mut mpsc::UnboundedReceiver<u64>) {
    bus.publish(Ping { n: 0 }).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, started.recv()).await.unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn reject_new_tells_the_publisher_at_once() {
    let bus = Bus::new();
    let (sub, gate, mut started) = gated(&bus, 2, Overflow::RejectNew).await;
    occupy_worker(&bus, &mut started).await;
    bus.publish(Ping { n: 1 }).await.unwrap();
    bus.publish(Ping { n: 2 }).await.unwrap();
    match bus.publish(Ping { n: 3 }).await {
        Err(PublishError::Full {
            subscriptions,
            delivered,
        }) => {
            assert_eq!(subscriptions, ["slow"]);
            assert_eq!(delivered, 0);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(sub.stats().refused_full, 1);
    gate.add_permits(10);
    bus.run_until_idle().await;
    assert_eq!(
        sub.stats().acked,
        3,
        "the three accepted messages are handled"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn block_waits_for_room_then_times_out() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let (sub, gate, mut started) = gated(
        &bus,
        1,
        Overflow::Block {
            timeout: Duration::from_millis(100),
        },
    )
    .await;
    occupy_worker(&bus, &mut started).await;
    bus.publish(Ping { n: 1 }).await.unwrap();
    let t0 = clock.now();
    assert!(matches!(
        bus.publish(Ping { n: 2 }).await,
        Err(PublishError::Full { .. })
    ));
    let waited = clock.now() - t0;
    // tokio timers have 1 ms resolution and round up
    assert!(
        (100..=101).contains(&waited.as_millis()),
        "waited the block timeout, not {waited:?}"
    );
    // room appears while the publisher waits: it succeeds
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish(Ping { n: 3 }).await })
    };
    tokio::task::yield_now().await;
    gate.add_permits(1); // message 0 finishes, message 1 moves to the worker, room for 3
    publisher.await.unwrap().unwrap();
    gate.add_permits(10);
    bus.run_until_idle().await;
    assert_eq!(sub.stats().acked, 3);
    assert_eq!(sub.stats().refused_full, 1);
}

#[tokio::test]
async fn drop_oldest_evicts_counts_and_dead_letters() {
    let bus = Bus::new();
    let (sub, gate, mut started) = gated(&bus, 2, Overflow::DropOldest).await;
    occupy_worker(&bus, &mut started).await;
    for n in 1..=3 {
        bus.publish(Ping { n })
            .await
            .expect("drop-oldest never refuses the publisher");
    }
    assert_eq!(sub.stats().dropped, 1);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Dropped);
    assert_eq!(
        letters[0].envelope.payload, "{\"n\":1}",
        "the oldest waiting message was evicted"
    );
    gate.add_permits(10);
    bus.run_until_idle().await;
    let mut handled = vec![];
    while let Ok(n) = started.try_recv() {
        handled.push(n);
    }
    assert_eq!(handled, [2, 3]);
}

#[tokio::test(flavor = "current_thread")]
async fn adaptive_slows_publishers_as_the_queue_fills() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let max_delay = Duration::from_millis(10);
    let overflow = Overflow::Adaptive {
        max_delay,
        timeout: Duration::from_millis(50),
    };
    let (sub, gate, mut started) = gated(&bus, 4, overflow).await;
    occupy_worker(&bus, &mut started).await;
    let mut delays = vec![];
    for n in 1..=4 {
        let t0 = clock.now();
        bus.publish(Ping { n }).await.unwrap();
        delays.push(clock.now() - t0);
    }
    // depth before each publish: 0, 1, 2, 3 of capacity 4 -> no delay until above half
    assert_eq!(delays[0], Duration::ZERO);
    assert_eq!(delays[1], Duration::ZERO);
    assert_eq!(delays[2], Duration::ZERO);
    assert!(
        delays[3] > Duration::ZERO && delays[3] <= max_delay,
        "{delays:?}"
    );
    let t0 = clock.now();
    assert!(matches!(
        bus.publish(Ping { n: 5 }).await,
        Err(PublishError::Full { .. })
    ));
    let waited = clock.now() - t0;
    assert!(
        (50..=51).contains(&waited.as_millis()),
        "waited the timeout, not {waited:?}"
    );
    gate.add_permits(10);
    bus.run_until_idle().await;
    assert_eq!(sub.stats().acked, 5);
}

#[tokio::test]
async fn full_subscription_does_not_stop_delivery_to_others() {
    let bus = Bus::new();
    let (_slow, gate, mut started) = gated(&bus, 1, Overflow::RejectNew).await;
    let fast = switchyard::testkit::Recorder::start(&bus, "test.ping")
        .await
        .unwrap();
    occupy_worker(&bus, &mut started).await;
    bus.publish(Ping { n: 1 }).await.unwrap();
    match bus.publish(Ping { n: 2 }).await {
        Err(PublishError::Full {
            subscriptions,
            delivered,
        }) => {
            assert_eq!(subscriptions, ["slow"]);
            assert_eq!(delivered, 1);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(fast.wait_for(3, WAIT).await.unwrap().len(), 3);
    gate.add_permits(10);
}

/// A publish whose future is dropped while it waits for room (a caller's timeout, a
/// `select!` that took another branch) was never accepted: it must not stay counted as
/// pending, or `run_until_idle` would wait for a message nobody will ever handle.
#[tokio::test]
async fn a_publish_dropped_while_waiting_for_room_is_not_left_pending() {
    let bus = Bus::new();
    let (sub, gate, mut started) = gated(
        &bus,
        1,
        Overflow::Block {
            timeout: Duration::from_secs(3600),
        },
    )
    .await;
    occupy_worker(&bus, &mut started).await;
    bus.publish(Ping { n: 1 }).await.unwrap(); // fills the queue
    let blocked = bus.publish(Ping { n: 2 });
    assert!(
        tokio::time::timeout(Duration::from_millis(20), blocked)
            .await
            .is_err(),
        "the third publish waits for room, and is dropped while it does"
    );
    assert_eq!(
        bus.pending(),
        2,
        "only the two accepted messages are pending"
    );
    gate.add_permits(10);
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .expect("run_until_idle returns once the two accepted messages are handled");
    assert_eq!(sub.stats().acked, 2);
}

/// A publisher that has to wait for room in one subscription queues the message in the
/// subscriptions after it once the wait is over, whether the wait ends in room or in a
/// time-out (then the error counts them as delivered).
#[tokio::test(flavor = "current_thread")]
async fn a_publisher_waiting_in_one_subscription_still_delivers_to_the_next() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (slow, gate, mut started) = gated(
        &bus,
        1,
        Overflow::Block {
            timeout: Duration::from_millis(100),
        },
    )
    .await;
    let fast = switchyard::testkit::Recorder::start(&bus, "test.ping")
        .await
        .unwrap();
    occupy_worker(&bus, &mut started).await;
    bus.publish(Ping { n: 1 }).await.unwrap(); // fills slow's queue
    match bus.publish(Ping { n: 2 }).await {
        Err(PublishError::Full {
            subscriptions,
            delivered,
        }) => {
            assert_eq!(subscriptions, ["slow"]);
            assert_eq!(delivered, 1, "the subscription after the full one got it");
        }
        other => panic!("expected Full, got {other:?}"),
    }
    // Room appears while the publisher waits: both get the message.
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.publish(Ping { n: 3 }).await })
    };
    tokio::task::yield_now().await;
    gate.add_permits(1);
    publisher.await.unwrap().unwrap();
    let seen = fast.wait_for(4, WAIT).await.unwrap();
    assert_eq!(seen.len(), 4);
    gate.add_permits(10);
    bus.run_until_idle().await;
    assert_eq!(slow.stats().acked, 3, "0, 1 and 3: 2 was refused");
    assert_eq!(slow.stats().refused_full, 1);
}

/// A publisher slowed down by `Adaptive` (queue above half full) is told `ShuttingDown` when
/// the bus shuts down, at once, not after the rest of its slow-down (which can be as long as
/// `max_delay`): shutdown stops intake, and a publisher that cannot be accepted any more has
/// nothing to wait for.
#[tokio::test(flavor = "current_thread")]
async fn a_publisher_slowed_by_adaptive_is_told_of_a_shutdown_at_once() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let overflow = Overflow::Adaptive {
        max_delay: Duration::from_secs(30),
        timeout: Duration::from_secs(60),
    };
    let (sub, gate, mut started) = gated(&bus, 4, overflow).await;
    occupy_worker(&bus, &mut started).await;
    for n in 1..=3 {
        bus.publish(Ping { n }).await.unwrap();
    }
    // Depth 3 of 4: the next publisher sleeps 15 s (half of `max_delay`) before pushing.
    let slowed = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            let told = bus.publish(Ping { n: 4 }).await;
            (told, t0.elapsed())
        })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let shutdown = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.shutdown(Duration::from_secs(600)).await })
    };
    let (told, waited) = tokio::time::timeout(Duration::from_secs(300), slowed)
        .await
        .expect("the slowed publisher is answered")
        .unwrap();
    assert!(
        matches!(told, Err(PublishError::ShuttingDown)),
        "{told:?} after {waited:?}"
    );
    assert_eq!(waited, Duration::ZERO, "answered after its slow-down");
    gate.add_permits(10);
    let report = shutdown.await.unwrap().unwrap();
    // 0 (in the handler at the call) and 1-3 (queued) are handled during the drain.
    assert_eq!(report.drained, 4, "{report:?}");
    assert_eq!(sub.stats().acked, 4);
}
