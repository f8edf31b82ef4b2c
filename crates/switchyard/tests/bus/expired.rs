//! A message whose sender's deadline (`delivery.deadline`) passes while it waits in a queue
//! is not handed to the handler: nobody can receive the result (the sender already has
//! `Timeout`). It is dead-lettered `Expired` (browsable and replayable), and it does not
//! hold a queue slot a fresh message needs (h-fixexpired).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{
    Bus, DeadLetter, DeadLetterFilter, DeadLetterReason, Overflow, SendError, Subscription,
};
use tokio::sync::Semaphore;

use crate::{Double, until};

/// A `Double` handler with one worker that counts its calls and waits for a permit per
/// message, on a queue of `capacity` with `overflow`.
async fn slow_double(
    bus: &Bus,
    capacity: usize,
    overflow: Overflow,
) -> (Subscription, Arc<AtomicUsize>, Arc<Semaphore>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (calls.clone(), gate.clone());
    let sub = bus
        .handle(move |d: Double, _| {
            let (c, g) = (c.clone(), g.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                g.acquire()
                    .await
                    .map(|p| p.forget())
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok::<_, std::io::Error>(d.n * 2)
            }
        })
        .queue_capacity(capacity)
        .overflow(overflow)
        .start()
        .await
        .unwrap();
    (sub, calls, gate)
}

/// Sends `Double { n }` (no deadline) on a task of its own and waits until the handler
/// holds it: the worker is busy, what comes next waits in the queue.
async fn occupy(
    bus: &Bus,
    calls: &Arc<AtomicUsize>,
    n: u64,
) -> tokio::task::JoinHandle<Result<u64, SendError>> {
    let before = calls.load(Ordering::SeqCst);
    let b = bus.clone();
    let first = tokio::spawn(async move { b.send(Double { n }).await });
    until("the handler holds the first command", || {
        calls.load(Ordering::SeqCst) > before
    })
    .await;
    first
}

fn expired_letters(bus: &Bus) -> Vec<DeadLetter> {
    bus.dead_letters()
        .unwrap()
        .select(&DeadLetterFilter::new().reason(DeadLetterReason::Expired))
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_expired_in_the_queue_is_dead_lettered_not_handled() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (sub, calls, gate) = slow_double(&bus, 16, Overflow::default()).await;
    let first = occupy(&bus, &calls, 1).await;

    // Queued behind the slow first command; its deadline passes while it waits. The caller
    // hears its own deadline (docs/bus.md, "Expired messages").
    match bus
        .request(Double { n: 2 }, Duration::from_millis(100))
        .await
    {
        Err(SendError::Timeout { deadline }) => {
            assert_eq!(deadline, Duration::from_millis(100));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap(), 2);
    bus.run_until_idle().await;

    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler was called for a request whose deadline passed while it was queued"
    );
    let letters = expired_letters(&bus);
    assert_eq!(
        letters.len(),
        1,
        "not dead-lettered Expired: {:?}",
        bus.dead_letters().unwrap().list()
    );
    let letter = &letters[0];
    assert!(
        letter.error.starts_with("deadline passed while queued (")
            && letter.error.ends_with(" ms late)"),
        "{}",
        letter.error
    );
    assert_eq!(letter.handler.as_deref(), Some("math.double"));
    assert_eq!(letter.attempts, 0, "the handler never ran");
    // Counted in `expired`, and still in `dead_lettered` (h-fixexpire).
    let stats = sub.stats();
    assert_eq!((stats.expired, stats.dead_lettered), (1, 1), "{stats:?}");
    assert_eq!(
        letter.envelope.delivery.deadline, None,
        "a dead letter keeps no deadline of the sender that gave up"
    );

    // Replayable as any dead letter: sent again, it is handled.
    let replayed = bus.send_envelope(letter.envelope.clone()).await.unwrap();
    assert_eq!(replayed.reply.unwrap().payload, "4");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A queue full of expired requests takes a fresh command at once (`RejectNew` refused it):
/// the expired ones are dead-lettered `Expired` to make room.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_of_expired_requests_takes_a_fresh_command() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (sub, calls, gate) = slow_double(&bus, 2, Overflow::RejectNew).await;
    let first = occupy(&bus, &calls, 1).await;
    for n in [2, 3] {
        assert!(matches!(
            bus.request(Double { n }, Duration::from_millis(50)).await,
            Err(SendError::Timeout { .. })
        ));
    }
    let depth = bus.registry().into_iter().find(|i| i.name == "math.double");
    assert_eq!(
        depth.map(|i| i.depth),
        Some(2),
        "both expired requests wait in the queue"
    );

    let b = bus.clone();
    let fresh = tokio::spawn(async move { b.send(Double { n: 4 }).await });
    until("the expired requests are dead-lettered", || {
        expired_letters(&bus).len() == 2 || fresh.is_finished()
    })
    .await;
    assert_eq!(sub.stats().refused_full, 0, "the fresh command was refused");
    gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(fresh.await.unwrap().unwrap(), 8);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "only the live commands ran"
    );
    assert_eq!(expired_letters(&bus).len(), 2);
    // Evicted to make room: counted in `expired` and `dead_lettered`, not `dropped`.
    let stats = sub.stats();
    assert_eq!(
        (stats.expired, stats.dead_lettered, stats.dropped),
        (2, 2, 0),
        "{stats:?}"
    );
}

/// With `Block`, a fresh command does not wait out the block timeout behind expired
/// requests: it is queued at once.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_of_expired_requests_does_not_block_a_fresh_command() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let (_h, calls, gate) = slow_double(
        &bus,
        1,
        Overflow::Block {
            timeout: Duration::from_secs(10),
        },
    )
    .await;
    let first = occupy(&bus, &calls, 1).await;
    assert!(matches!(
        bus.request(Double { n: 2 }, Duration::from_millis(50))
            .await,
        Err(SendError::Timeout { .. })
    ));
    let start = clock.now();
    let b = bus.clone();
    let fresh = tokio::spawn(async move { b.send(Double { n: 4 }).await });
    // On the virtual clock: the block timeout (10 s) would pass in no time at all.
    let evicted = tokio::time::timeout(Duration::from_secs(1), async {
        while expired_letters(&bus).is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        evicted.is_ok(),
        "the fresh command waits for room behind an expired request"
    );
    assert!(
        clock.now() - start < Duration::from_millis(10),
        "the fresh command waited for room"
    );
    gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(fresh.await.unwrap().unwrap(), 8);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A command without a deadline is handled however long it waited.
#[tokio::test(flavor = "current_thread")]
async fn a_command_without_a_deadline_is_handled_however_long_it_waited() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (_h, calls, gate) = slow_double(&bus, 4, Overflow::default()).await;
    let first = occupy(&bus, &calls, 1).await;
    let b = bus.clone();
    let second = tokio::spawn(async move { b.send(Double { n: 2 }).await });
    tokio::time::sleep(Duration::from_secs(3600)).await;
    gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(second.await.unwrap().unwrap(), 4);
    assert!(expired_letters(&bus).is_empty());
}
