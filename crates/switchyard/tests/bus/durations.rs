//! Durations too long to add to "now" (a binding's "forever", e.g. Python's `sys.maxsize`
//! seconds) wait "forever" instead of panicking (review rev7: `PanicException` from the
//! Python package for each of these).

use std::sync::Arc;
use std::time::Duration;

use switchyard::{Bus, Overflow};
use tokio::sync::{Semaphore, mpsc};

use crate::{Ping, WAIT};

/// A publish into a full `Block` queue whose timeout is `Duration::MAX` waits for room.
#[tokio::test(flavor = "current_thread")]
async fn a_block_timeout_of_duration_max_waits_for_room() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut got) = mpsc::unbounded_channel();
    let g = gate.clone();
    let _sub = bus
        .on("slow", move |p: Ping, _| {
            let (g, tx) = (g.clone(), tx.clone());
            async move {
                let _ = g.acquire().await.map(|p| p.forget());
                let _ = tx.send(p.n);
                Ok::<_, std::io::Error>(())
            }
        })
        .queue_capacity(1)
        .overflow(Overflow::Block {
            timeout: Duration::MAX,
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 0 }).await.unwrap(); // in the handler
    bus.publish(Ping { n: 1 }).await.unwrap(); // fills the queue
    let b = bus.clone();
    let blocked = tokio::spawn(async move { b.publish(Ping { n: 2 }).await });
    tokio::task::yield_now().await;
    assert!(
        !blocked.is_finished(),
        "the third publish must wait for room"
    );
    gate.add_permits(3);
    tokio::time::timeout(WAIT, blocked)
        .await
        .expect("the blocked publish got room")
        .expect("the publishing task did not panic")
        .expect("published");
    for n in 0..3 {
        assert_eq!(
            tokio::time::timeout(WAIT, got.recv()).await.unwrap(),
            Some(n)
        );
    }
}

/// A batch subscription whose `max_wait` is `Duration::MAX` hands over full batches.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_max_wait_of_duration_max_hands_over_full_batches() {
    let bus = Bus::new();
    let (tx, mut got) = mpsc::unbounded_channel();
    let _sub = bus
        .on_batch("pairs", move |batch: Vec<Ping>, _| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(batch.iter().map(|p| p.n).collect::<Vec<_>>());
                Ok::<_, std::io::Error>(())
            }
        })
        .batch(2, Duration::MAX)
        .start()
        .await
        .unwrap();
    for n in 0..4 {
        bus.publish(Ping { n }).await.unwrap();
    }
    assert_eq!(
        tokio::time::timeout(WAIT, got.recv()).await.unwrap(),
        Some(vec![0, 1])
    );
    assert_eq!(
        tokio::time::timeout(WAIT, got.recv()).await.unwrap(),
        Some(vec![2, 3])
    );
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
}

/// `publish_after(Duration::MAX, ..)` schedules the message (it is never due) instead of
/// panicking; the bus stays usable.
#[tokio::test(flavor = "current_thread")]
async fn a_publish_after_duration_max_is_scheduled() {
    let bus = Bus::new();
    let (_sub, mut got) = collecting(&bus, "later").await;
    bus.publish_after(Duration::MAX, Ping { n: 1 })
        .await
        .unwrap();
    bus.publish(Ping { n: 2 }).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, got.recv()).await.unwrap(),
        Some(2)
    );
}

/// `shutdown(Duration::MAX)` drains and reports instead of panicking after intake stopped.
#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_deadline_of_duration_max_drains_and_reports() {
    let bus = Bus::new();
    let (_sub, mut got) = collecting(&bus, "drained").await;
    for n in 0..3 {
        bus.publish(Ping { n }).await.unwrap();
    }
    let report = tokio::time::timeout(WAIT, bus.shutdown(Duration::MAX))
        .await
        .expect("the shutdown returned")
        .expect("a report");
    assert_eq!(report.drained, 3, "{report:?}");
    assert!(report.left.is_empty(), "{report:?}");
    for n in 0..3 {
        assert_eq!(got.recv().await, Some(n));
    }
}

/// A subscription named `name` reporting each `Ping` it handles on the returned channel.
async fn collecting(
    bus: &Bus,
    name: &str,
) -> (switchyard::Subscription, mpsc::UnboundedReceiver<u64>) {
    let (tx, got) = mpsc::unbounded_channel();
    let sub = bus
        .on(name, move |p: Ping, _| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(p.n);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    (sub, got)
}
