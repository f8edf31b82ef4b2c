//! The hand-over of publishes to the writer: a publish future dropped after its first poll.

use std::collections::BTreeSet;

use switchyard_core::Publisher;

use crate::common::*;

/// A publish hands its records to the writer on its first poll. Dropping the future after
/// that (a caller's timeout, a cancelled task) neither holds up nor fails the publishes
/// around it, and its records are still stored, as they were when each publish had its own
/// reply channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_publish_futures_do_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut tasks = Vec::new();
    for p in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                log.publish(vec![env("h.x", &format!("kept-{p}-{i}"))])
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    // Polled once, then dropped while its batch is being written.
                    let dropped = log.publish(vec![env("h.x", &format!("dropped-{p}-{i}"))]);
                    let mut dropped = std::pin::pin!(dropped);
                    let _ = futures::poll!(dropped.as_mut());
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t)
            .await
            .expect("a publisher hung")
            .unwrap();
    }
    close(&log).await;
    drop(log);
    let log = open(dir.path());
    let stored: BTreeSet<String> = log
        .read_range("default", 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.envelope.payload.to_vec()).unwrap())
        .collect();
    let kept = stored.iter().filter(|p| p.starts_with("kept-")).count();
    let dropped = stored.iter().filter(|p| p.starts_with("dropped-")).count();
    assert_eq!(kept, 640);
    assert_eq!(
        dropped,
        64 * 4,
        "a dropped publish's records are still written"
    );
    close(&log).await;
}
