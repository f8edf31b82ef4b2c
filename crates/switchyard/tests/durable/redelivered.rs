//! A delivery the transport hands out again (attempt > 1) counts in its subscription's
//! `retried` (review rev17: a WS group's `retried` stayed 0 when the log redelivered). In one
//! process the bus now keeps held deliveries alive and does not count its own hand-backs, so
//! the redelivery comes from a consumer that went away without settling: here a bus whose
//! runtime is dropped mid-handler (as a crashed process), on the same log and group.

use std::time::Duration;

use switchyard::Bus;
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::mpsc;

use crate::{Job, WAIT};

#[test]
fn a_delivery_the_log_hands_out_again_counts_as_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();

    // The first consumer takes the message and never settles it: its runtime goes away
    // while the handler waits.
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let taken = first.block_on(async {
        let bus = Bus::builder().transport(log.clone()).build().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sub = bus
            .on("g", move |job: Job, ctx: switchyard::Ctx| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((job.n, ctx.attempt()));
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
            .await
            .unwrap();
        bus.publish(Job { n: 7 }).await.unwrap();
        let taken = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        std::mem::forget(sub);
        std::mem::forget(bus);
        taken
    });
    assert_eq!(taken, (7, 1));
    first.shutdown_background();

    // The second consumer of the group gets it again, as attempt 2, and counts a retry.
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let bus = Bus::builder().transport(log.clone()).build().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sub = bus
            .on("g", move |job: Job, ctx: switchyard::Ctx| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((job.n, ctx.attempt()));
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
            .await
            .unwrap();
        let again = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            again,
            (7, 2),
            "the log hands the unsettled message out again"
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        while sub.stats().acked < 1 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", sub.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stats = sub.stats();
        assert_eq!(
            stats.retried, 1,
            "a redelivery counts as a retry: {stats:?}"
        );
        bus.shutdown(WAIT).await.unwrap();
    });
}
