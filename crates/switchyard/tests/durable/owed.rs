//! Deliveries owed to a subscription that is gone: the shutdown must not wait for them.
//!
//! The bus counts, per publish through its transport, the deliveries it expects back for its
//! own subscriptions, and the shutdown waits for them (a transport that keeps nothing would
//! lose them otherwise). A subscription dropped while deliveries counted for it were still on
//! their way used to leave them owed for good: its pump stopped reading, so they never
//! arrived, and `shutdown` waited until its deadline (and `run_until_idle` for ever), as
//! `switchyard serve --demo` did on Ctrl-C (11 s).

use std::sync::Arc;
use std::time::Duration;

use switchyard::Bus;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::{Job, bus_on_log};

/// Far below the shutdown deadline given: returning within it means nothing was waited for.
const QUICK: Duration = Duration::from_secs(5);

async fn drop_a_subscription_with_deliveries_on_their_way(bus: &Bus, ephemeral: bool) {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let (handled_tx, mut handled) = mpsc::unbounded_channel();
    let builder = bus
        .on("slow", {
            let (started, release) = (started.clone(), release.clone());
            move |job: Job, _| {
                let (started, release, tx) = (started.clone(), release.clone(), handled_tx.clone());
                async move {
                    started.notify_one();
                    // Held until let go, then every one goes through.
                    drop(release.acquire().await.map_err(|e| e.to_string())?);
                    tx.send(job.n).map_err(|e| e.to_string())
                }
            }
        })
        .queue_capacity(1);
    let builder = if ephemeral {
        builder.ephemeral()
    } else {
        builder
    };
    let sub = builder.start().await.unwrap();
    // One in the handler, one queued, one held by the pump waiting for room: the rest cannot
    // arrive while the handler is held.
    for n in 0..6 {
        bus.publish(Job { n }).await.unwrap();
    }
    tokio::time::timeout(QUICK, started.notified())
        .await
        .expect("the handler starts");
    // Gone while the last deliveries counted for it have not arrived (and never will here).
    drop(sub);
    release.add_permits(Semaphore::MAX_PERMITS / 2);
    tokio::time::timeout(QUICK, handled.recv())
        .await
        .expect("the running handler finishes")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_owed_to_a_dropped_subscription_do_not_hold_the_shutdown() {
    for ephemeral in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let bus = bus_on_log(dir.path());
        drop_a_subscription_with_deliveries_on_their_way(&bus, ephemeral).await;
        tokio::time::timeout(QUICK, bus.run_until_idle())
            .await
            .unwrap_or_else(|_| {
                panic!("run_until_idle waits for deliveries owed to a dropped subscription (ephemeral: {ephemeral})")
            });
        let report = tokio::time::timeout(QUICK, bus.shutdown(Duration::from_secs(30)))
            .await
            .unwrap_or_else(|_| {
                panic!("the shutdown waits until its deadline for deliveries owed to a dropped subscription (ephemeral: {ephemeral})")
            })
            .unwrap();
        assert!(report.left.is_empty(), "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_owed_to_a_group_still_held_by_another_member_are_waited_for() {
    // Two members of one group: one dropped, the other still reads, so what is owed to the
    // group arrives and is handled before the shutdown returns.
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_on_log(dir.path());
    let (tx, mut got) = mpsc::unbounded_channel();
    let _kept = bus
        .on("slow", move |job: Job, _| {
            let tx = tx.clone();
            async move { tx.send(job.n).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    let dropped = bus
        .on("slow", |_: Job, _| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap();
    drop(dropped);
    for n in 0..20 {
        bus.publish(Job { n }).await.unwrap();
    }
    let report = tokio::time::timeout(QUICK, bus.shutdown(Duration::from_secs(30)))
        .await
        .expect("the shutdown returns once the group's deliveries arrived")
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(n) = got.try_recv() {
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>(), "{report:?}");
}
