//! Review "logacks": on the log, a message published with `publish_after` stays unsettled
//! until it is due, so its group's committed offset stays below it; every message of the
//! group acked since came back after each restart. The log now keeps the settled offsets
//! above the committed one: after a restart only the delayed message comes, at its time.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::{Job, WAIT, bus_on_log};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_acked_while_a_delayed_one_waits_are_not_handled_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_secs(2);
    let published = SystemTime::now();
    {
        let bus = bus_on_log(dir.path());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _worker = bus
            .on("worker", move |job: Job, _| {
                let tx = tx.clone();
                async move { tx.send(job.n).map_err(|e| e.to_string()) }
            })
            .start()
            .await
            .unwrap();
        bus.publish_after(delay, Job { n: 42 }).await.unwrap();
        for n in 0..5 {
            bus.publish(Job { n }).await.unwrap();
        }
        for want in 0..5 {
            assert_eq!(
                tokio::time::timeout(WAIT, rx.recv()).await.unwrap(),
                Some(want)
            );
        }
        bus.run_until_idle().await;
        bus.shutdown(WAIT).await.unwrap();
        assert!(
            SystemTime::now().duration_since(published).unwrap() < delay,
            "the first run outlived the delay; the test proves nothing"
        );
    }
    let bus = bus_on_log(dir.path());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _worker = bus
        .on("worker", move |job: Job, _| {
            let tx = tx.clone();
            async move {
                tx.send((job.n, SystemTime::now()))
                    .map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    let (n, handled_at) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 42, "0..5 were acked before the restart");
    let waited = handled_at.duration_since(published).unwrap();
    assert!(
        waited >= delay,
        "handled after {waited:?}, before it was due"
    );
    bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "nothing else is handled");
    bus.shutdown(WAIT).await.unwrap();
}
