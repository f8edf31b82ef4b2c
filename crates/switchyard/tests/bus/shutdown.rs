use std::sync::Arc;
use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{Bus, DeadLetterReason, PublishError, SendError};
use tokio::sync::{Semaphore, mpsc};

use crate::{Double, Ping, WAIT};

#[tokio::test]
async fn shutdown_drains_queued_work_and_refuses_new_publishes() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("worker", move |p: Ping, _| {
            let tx = tx.clone();
            async move {
                tokio::task::yield_now().await;
                tx.send(p.n).map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    for n in 0..100 {
        bus.publish(Ping { n }).await.unwrap();
    }
    let report = bus.shutdown(WAIT).await.unwrap();
    assert!(report.left.is_empty());
    let mut handled = 0;
    while rx.try_recv().is_ok() {
        handled += 1;
    }
    assert_eq!(
        handled, 100,
        "every queued message was handled before shutdown returned"
    );
    assert!(report.drained <= 100);
    assert!(matches!(
        bus.publish(Ping { n: 1 }).await,
        Err(PublishError::ShuttingDown)
    ));
    assert!(matches!(
        bus.send(Double { n: 1 }).await,
        Err(SendError::ShuttingDown)
    ));
    assert_eq!(
        bus.shutdown(WAIT).await.unwrap(),
        report,
        "a second shutdown returns the first report"
    );
    assert!(bus.dead_letters().unwrap().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_deadline_reports_and_dead_letters_leftovers() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let g = gate.clone();
    let _sub = bus
        .on("stuck", move |p: Ping, _| {
            let (g, tx) = (g.clone(), started_tx.clone());
            async move {
                let _ = tx.send(p.n);
                g.acquire()
                    .await
                    .map(|p| p.forget())
                    .map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let _cmd = bus
        .handle(move |_c: Double, _| {
            let g = gate.clone();
            async move { g.acquire().await.map(|_| 0u64).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    for n in 0..6 {
        bus.publish(Ping { n }).await.unwrap();
    }
    assert_eq!(started.recv().await, Some(0));
    // a command waiting for its (stuck) handler gets an answer, not a hang
    let pending_send = tokio::spawn(async move { b.send(Double { n: 1 }).await });
    tokio::task::yield_now().await;
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    assert_eq!(report.drained, 0);
    assert_eq!(
        report.left.len(),
        7,
        "1 in flight + 5 waiting events + 1 command: {:?}",
        report.left
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 7);
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown)
    );
    let mut left = report.left.clone();
    let mut lettered: Vec<_> = letters.iter().map(|l| l.envelope.id.clone()).collect();
    left.sort();
    lettered.sort();
    assert_eq!(
        left, lettered,
        "the report and the dead letters name the same messages"
    );
    assert!(matches!(
        pending_send.await.unwrap(),
        Err(SendError::NotProcessed(_))
    ));
    assert_eq!(bus.pending(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn deadline_with_some_workers_done_and_some_stuck() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    // registered first, so its (idle) worker is awaited to completion before the stuck one
    let _idle = bus
        .on(
            "idle",
            |_: Double, _| async move { Ok::<_, std::io::Error>(()) },
        )
        .pattern("idle.#")
        .start()
        .await
        .unwrap();
    let _stuck = bus
        .on("stuck", |_: Ping, _| async move {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    tokio::task::yield_now().await;
    let report = bus.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(report.left.len(), 1);
}

#[tokio::test]
async fn deadline_reports_what_each_of_several_workers_holds_and_what_waits() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    // Three workers, each stuck on its message after one quick ack, so in-flight slots are
    // filled, emptied and filled again before the deadline.
    let sub = bus
        .on("stuck", move |p: Ping, _| {
            let tx = started_tx.clone();
            async move {
                let _ = tx.send(p.n);
                if p.n > 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .workers(3)
        .start()
        .await
        .unwrap();
    for n in 0..7 {
        bus.publish(Ping { n }).await.unwrap();
    }
    for _ in 0..4 {
        assert!(started.recv().await.is_some());
    }
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    // Message 0 was acked (and settled) before the shutdown began.
    assert_eq!(report.drained, 0);
    assert_eq!(
        report.left.len(),
        6,
        "3 in flight + 3 waiting: {:?}",
        report.left
    );
    let letters = bus.dead_letters().unwrap().list();
    let mut left = report.left.clone();
    let mut lettered: Vec<_> = letters.iter().map(|l| l.envelope.id.clone()).collect();
    left.sort();
    lettered.sort();
    assert_eq!(left, lettered);
    assert_eq!(bus.pending(), 0);
    assert_eq!(sub.stats().acked, 1);
}

/// Publishers waiting for room when shutdown begins are refused (`ShuttingDown`): their
/// messages were never accepted, so they are neither drained nor left.
#[tokio::test(flavor = "current_thread")]
async fn publishers_refused_by_shutdown_are_not_counted_as_drained() {
    let bus = Bus::new();
    let (sub, gate, mut started) = crate::backpressure::gated(
        &bus,
        1,
        switchyard::Overflow::Block {
            timeout: Duration::from_secs(3600),
        },
    )
    .await;
    bus.publish(Ping { n: 0 }).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, started.recv()).await.unwrap(),
        Some(0)
    );
    bus.publish(Ping { n: 1 }).await.unwrap();
    let blocked: Vec<_> = (2..5)
        .map(|n| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish(Ping { n }).await })
        })
        .collect();
    // Each waiting publish counts as pending: 2 accepted + 3 waiting for room.
    tokio::time::timeout(WAIT, async {
        while bus.pending() != 5 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("three publishers wait for room");
    // Shutdown closes the queue before it first waits; only then may the handler finish.
    let (report, ()) = tokio::join!(bus.shutdown(WAIT), async {
        gate.add_permits(10);
    });
    let report = report.unwrap();
    for b in blocked {
        assert!(matches!(b.await.unwrap(), Err(PublishError::ShuttingDown)));
    }
    assert_eq!(sub.stats().acked, 2);
    assert!(report.left.is_empty());
    assert_eq!(
        report.drained, 2,
        "drained counts the two handled messages, not the refused publishes"
    );
    assert_eq!(bus.pending(), 0);
}

/// Dropped on the bus's own drop (it lives in a publish hook).
struct DropFlag(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A worker keeps the bus between messages while they flow; it must not keep it alive once
/// the application has dropped every handle, even if messages keep coming (here a detached
/// subscription of two workers that publishes its next messages itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_does_not_keep_a_dropped_bus_alive() {
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    let flag = DropFlag(Some(dropped_tx));
    let bus = Bus::builder()
        .publish_hook(move |_| {
            let _ = &flag;
            Ok(())
        })
        .build()
        .unwrap();
    let progress = Arc::new(tokio::sync::Notify::new());
    let p = progress.clone();
    bus.on("echo", move |ping: Ping, ctx| {
        let p = p.clone();
        async move {
            if ping.n == 100 {
                p.notify_one();
            }
            // Let other tasks run (and the test runtime shut down if this test fails).
            tokio::task::yield_now().await;
            // The next one; fails quietly once the bus is gone.
            let _ = ctx.publish(Ping { n: ping.n + 1 }).await;
            Ok::<_, std::io::Error>(())
        }
    })
    .workers(2)
    .start()
    .await
    .unwrap()
    .detach();
    // Two chains, so both workers are busy.
    bus.publish(Ping { n: 0 }).await.unwrap();
    bus.publish(Ping { n: 1_000_000 }).await.unwrap();
    tokio::time::timeout(WAIT, progress.notified())
        .await
        .expect("the echo loop runs");
    drop(bus);
    tokio::time::timeout(WAIT, dropped)
        .await
        .expect("the bus is freed once its last handle is dropped")
        .unwrap();
}

/// A shutdown call dropped midway (a `timeout` around it) does not stop the shutdown: the
/// drain goes on in its own task, so with no other call the stuck message is aborted at the
/// first call's deadline, both messages are dead-lettered with `Shutdown`, and the bus
/// becomes idle (`run_until_idle` returns). Before the drain had its own task, the dropped
/// call detached the workers and nothing was ever settled.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_shutdown_call_does_not_stop_the_shutdown() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (tx, mut started) = mpsc::unbounded_channel();
    let _sub = bus
        .on("stuck", move |p: Ping, _| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(p.n);
                std::future::pending::<()>().await;
                Ok::<_, String>(())
            }
        })
        .start()
        .await
        .unwrap();
    for n in 0..2 {
        bus.publish(Ping { n }).await.unwrap();
    }
    assert_eq!(started.recv().await, Some(0));
    let first = tokio::time::timeout(
        Duration::from_secs(1),
        bus.shutdown(Duration::from_secs(10)),
    )
    .await;
    assert!(first.is_err(), "the call is dropped while it drains");
    assert!(matches!(
        bus.publish(Ping { n: 2 }).await,
        Err(PublishError::ShuttingDown)
    ));
    tokio::time::timeout(Duration::from_secs(60), bus.run_until_idle())
        .await
        .expect("the shutdown goes on without a caller and settles every message");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown),
        "{letters:?}"
    );
    assert!(started.try_recv().is_err(), "the second message never ran");
}
