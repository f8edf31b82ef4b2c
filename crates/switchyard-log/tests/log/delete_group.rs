//! Task fixdlq: `LogTransport::delete_group`. Groups were never forgotten, and since a
//! durable group is recorded from the moment it exists, an abandoned group held back
//! `delete_consumed` compaction forever.

use std::path::Path;

use switchyard_core::{Subscriber, TransportErrorKind};
use switchyard_log::{LogConfig, LogTransport, Retention};

use crate::common::*;

/// Small segments and compaction of consumed segments only.
fn compacting(dir: &Path) -> LogConfig {
    LogConfig::new(dir)
        .with_segment_bytes(4096)
        .with_retention(Retention {
            max_bytes: None,
            max_age: None,
            delete_consumed: true,
        })
}

fn has_group(log: &LogTransport, group: &str) -> bool {
    log.group_lags().iter().any(|l| l.group == group)
}

/// Refused (`Rejected`) while a member lives and for an empty name; once the member is
/// gone it removes the group (1 stream) and then finds nothing (0).
#[tokio::test]
async fn delete_group_is_refused_while_a_member_lives() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, vec![env("dg.a", "1")]).await;
    let mut g = log.subscribe(&pattern("dg.#"), Some("g")).await.unwrap();
    next(&mut g).await.ack().await.unwrap();
    let live = log.delete_group("g").await;
    assert!(
        matches!(&live, Err(e) if e.kind == TransportErrorKind::Rejected),
        "{live:?}"
    );
    let empty = log.delete_group("").await;
    assert!(
        matches!(&empty, Err(e) if e.kind == TransportErrorKind::Rejected),
        "{empty:?}"
    );
    // Still there, still usable.
    publish_all(&log, vec![env("dg.a", "2")]).await;
    assert_eq!(payload(&next(&mut g).await), "2");
    drop(g);
    assert!(has_group(&log, "g"));
    assert_eq!(log.delete_group("g").await.unwrap(), 1);
    assert!(!has_group(&log, "g"));
    assert_eq!(log.committed_offset("default", "g"), None);
    assert_eq!(log.delete_group("g").await.unwrap(), 0);
    close(&log).await;
}

/// An abandoned group that read only the first record holds every segment back; once it
/// is deleted, compaction removes what only it held. (Before: no way to forget it.)
#[tokio::test]
async fn after_delete_group_compaction_removes_what_only_that_group_held() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(compacting(dir.path())).unwrap();
    publish_all(&log, vec![env("dg.r", "first")]).await;
    let mut slow = log.subscribe(&pattern("dg.#"), Some("slow")).await.unwrap();
    next(&mut slow).await.ack().await.unwrap();
    drop(slow);
    let mut fast = log.subscribe(&pattern("dg.#"), Some("fast")).await.unwrap();
    let n = 80;
    for i in 0..n {
        publish_all(
            &log,
            vec![env("dg.r", &format!("{i:03}-{}", "y".repeat(100)))],
        )
        .await;
    }
    for _ in 0..=n {
        next(&mut fast).await.ack().await.unwrap();
    }
    log.enforce_retention().await.unwrap();
    assert!(
        log.streams()[0].first_offset <= 1,
        "slow, not deleted yet, did not hold compaction back"
    );
    let segments_before = log.streams()[0].segments;
    assert!(segments_before > 2, "{segments_before} segments");
    assert_eq!(log.delete_group("slow").await.unwrap(), 1);
    log.enforce_retention().await.unwrap();
    let after = &log.streams()[0];
    assert!(
        after.first_offset > 1 && after.segments < segments_before,
        "compaction still held back after deleting the group: first offset {}, {} segments",
        after.first_offset,
        after.segments
    );
    drop(fast);
    close(&log).await;
}

/// A later subscription under a deleted group's name starts over (from the oldest record,
/// the default start), and a late ack of a delivery the deleted group had handed out does
/// not bring the group back.
#[tokio::test]
async fn a_new_member_of_a_deleted_group_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, vec![env("dg.n", "one"), env("dg.n", "two")]).await;
    let mut g = log.subscribe(&pattern("dg.#"), Some("g")).await.unwrap();
    next(&mut g).await.ack().await.unwrap();
    let held = next(&mut g).await;
    assert_eq!(payload(&held), "two");
    drop(g);
    assert_eq!(log.delete_group("g").await.unwrap(), 1);
    held.ack().await.unwrap();
    log.flush().await.unwrap();
    assert!(!has_group(&log, "g"), "a late ack brought the group back");
    assert_eq!(log.committed_offset("default", "g"), None);
    let mut again = log.subscribe(&pattern("dg.#"), Some("g")).await.unwrap();
    let d = next(&mut again).await;
    assert_eq!(payload(&d), "one", "the group did not start over");
    assert_eq!(d.envelope.delivery.attempt, 1);
    d.ack().await.unwrap();
    drop(again);
    close(&log).await;
}

/// The deletion is on disk: after a restart the group is still gone (no offset, not
/// listed) and a member starts over; a group known only from a previous run can be deleted
/// too.
#[tokio::test]
async fn a_deleted_group_stays_deleted_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(&log, vec![env("dg.s", "one"), env("dg.s", "two")]).await;
        for group in ["now", "later", "kept"] {
            let mut g = log.subscribe(&pattern("dg.#"), Some(group)).await.unwrap();
            next(&mut g).await.ack().await.unwrap();
        }
        log.flush().await.unwrap();
        assert_eq!(log.delete_group("now").await.unwrap(), 1);
        close(&log).await;
    }
    {
        let log = open(dir.path());
        assert_eq!(log.committed_offset("default", "now"), None);
        assert!(!has_group(&log, "now"));
        // Known only from the previous run.
        assert_eq!(log.committed_offset("default", "later"), Some(1));
        assert_eq!(log.delete_group("later").await.unwrap(), 1);
        close(&log).await;
    }
    let log = open(dir.path());
    for group in ["now", "later"] {
        assert_eq!(log.committed_offset("default", group), None, "{group}");
        let mut g = log.subscribe(&pattern("dg.#"), Some(group)).await.unwrap();
        assert_eq!(
            payload(&next(&mut g).await),
            "one",
            "{group} did not start over"
        );
    }
    assert_eq!(log.committed_offset("default", "kept"), Some(1));
    let mut kept = log.subscribe(&pattern("dg.#"), Some("kept")).await.unwrap();
    assert_eq!(payload(&next(&mut kept).await), "two");
    close(&log).await;
}
