//! The hand-over of publishes to the writer: a publish future dropped after its first poll,
//! and `publish_one` from one task with many in flight.

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

/// `publish_one` keeps `publish`'s promises for a batch of one, also from one task keeping
/// many in flight (a `FuturesUnordered` window, as an async-publish client does): each record
/// stored once, a future dropped after its first poll still written, the limit and a closed
/// log refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_one_from_one_task_with_many_in_flight() {
    use futures::StreamExt;
    use futures::stream::FuturesUnordered;
    use switchyard_core::{Envelope, PublishError};

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_record_bytes = 4096;
    let log = switchyard_log::LogTransport::open(cfg.clone()).unwrap();
    let mut inflight = FuturesUnordered::new();
    let mut next = 0;
    while next < 64 {
        inflight.push(log.publish_one(env("h.x", &format!("one-{next}"))));
        next += 1;
    }
    let mut done = 0;
    while let Some(r) = tokio::time::timeout(WAIT, inflight.next())
        .await
        .expect("a publish hung")
    {
        r.unwrap();
        done += 1;
        if next < 1000 {
            inflight.push(log.publish_one(env("h.x", &format!("one-{next}"))));
            next += 1;
        }
    }
    assert_eq!(done, 1000);
    drop(inflight);
    // Polled once, then dropped.
    {
        let dropped = log.publish_one(env("h.x", "dropped"));
        let mut dropped = std::pin::pin!(dropped);
        let _ = futures::poll!(dropped.as_mut());
    }
    match log
        .publish_one(Envelope::new(topic("h.x"), vec![1u8; 5000]))
        .await
    {
        Err(PublishError::TooLarge(e)) => assert_eq!((e.size, e.limit), (5000, 4096)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    close(&log).await;
    assert!(matches!(
        log.publish_one(env("h.x", "late")).await,
        Err(PublishError::ShuttingDown)
    ));
    drop(log);
    let log = switchyard_log::LogTransport::open(cfg).unwrap();
    let stored: Vec<String> = log
        .read_range("default", 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.envelope.payload.to_vec()).unwrap())
        .collect();
    let set: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(stored.len(), 1001, "each record stored once");
    assert_eq!(set.len(), 1001);
    assert!(
        set.contains(&"dropped".to_owned()),
        "a dropped publish is still written"
    );
    close(&log).await;
}
