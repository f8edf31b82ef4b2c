//! Messages settled above a group's committed offset (acked while an older message of the
//! group was still unsettled: held, delayed, or behind a busy key the look-ahead passed) are
//! not delivered again after a restart; only what was unsettled comes back.

use std::path::Path;
use std::time::Duration;

use switchyard_core::Subscriber;
use switchyard_log::{LogConfig, LogSubscription, LogTransport};

use crate::common::*;

/// Everything the subscription can hand out now, acked, as payloads in delivery order.
async fn drain(sub: &mut LogSubscription) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(d) = try_next(sub) {
        got.push(payload(&d));
        d.ack().await.unwrap();
    }
    got
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Review "logacks": a message put back with a long delay (what the bus does with a message
/// published with `publish_after` until it is due) holds the committed offset; every message
/// of the group acked since came back after each restart.
#[tokio::test]
async fn messages_acked_behind_a_delayed_one_are_not_redelivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        let mut all = vec![env("a.b", "delayed")];
        all.extend(names("m", 0..5).iter().map(|p| env("a.b", p)));
        publish_all(&log, all).await;
        let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
        let d = next(&mut sub).await;
        assert_eq!(payload(&d), "delayed");
        d.nack(Some(Duration::from_secs(3600))).await.unwrap();
        assert_eq!(drain(&mut sub).await, names("m", 0..5));
        close(&log).await;
    }
    // Twice: the settled messages stay settled across a restart that reads nothing.
    for _ in 0..2 {
        let log = open(dir.path());
        assert_eq!(log.committed_offset("default", "g"), Some(0));
        close(&log).await;
    }
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    // The delay lived in memory: the log hands the message out again at once (the bus
    // holds it until its `deliver-at`, see switchyard's durable tests).
    let d = next(&mut sub).await;
    assert_eq!(payload(&d), "delayed");
    assert_eq!(d.envelope.delivery.attempt, 1);
    d.ack().await.unwrap();
    assert_eq!(drain(&mut sub).await, Vec::<String>::new());
    close(&log).await;
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.committed_offset("default", "g"), Some(6));
    close(&log).await;
}

/// A delivery held (not settled) at `close`: only it comes back, not the ones acked after it.
#[tokio::test]
async fn only_the_held_message_comes_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(
            &log,
            names("m", 0..8).iter().map(|p| env("a.b", p)).collect(),
        )
        .await;
        let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
        let acked = next(&mut sub).await;
        assert_eq!(payload(&acked), "m0");
        acked.ack().await.unwrap();
        let held = next(&mut sub).await;
        assert_eq!(payload(&held), "m1");
        assert_eq!(drain(&mut sub).await, names("m", 2..8));
        close(&log).await;
        drop(held);
    }
    // The group reads, takes the held message again and holds it over one more restart.
    {
        let log = open(dir.path());
        let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
        let again = next(&mut sub).await;
        assert_eq!(payload(&again), "m1");
        assert!(
            try_next(&mut sub).is_none(),
            "m2..m7 were acked before the restart"
        );
        close(&log).await;
        drop(again);
    }
    let log = open(dir.path());
    // New records after the settled ones are delivered as usual.
    publish_all(&log, vec![env("a.b", "new")]).await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    assert_eq!(
        drain(&mut sub).await,
        vec!["m1".to_owned(), "new".to_owned()]
    );
    close(&log).await;
}

/// Messages of other keys the look-ahead took past a busy key's backlog and that were acked
/// are not delivered again after a restart; the busy key's backlog is, in order.
#[tokio::test]
async fn messages_acked_ahead_of_a_busy_key_are_not_redelivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = |dir: &Path| LogConfig::new(dir).with_max_ack_pending(4);
    {
        let log = LogTransport::open(config(dir.path())).unwrap();
        let mut all: Vec<_> = (0..6)
            .map(|i| keyed("a.b", "a", &format!("a{i}")))
            .collect();
        all.extend(["b", "c", "d"].map(|k| keyed("a.b", k, &format!("{k}0"))));
        publish_all(&log, all).await;
        let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
        let held = next(&mut sub).await;
        assert_eq!(payload(&held), "a0");
        // a1..a3 wait behind a0; the look-ahead hands out the other keys.
        assert_eq!(drain(&mut sub).await, vec!["b0", "c0", "d0"]);
        close(&log).await;
        drop(held);
    }
    let log = LogTransport::open(config(dir.path())).unwrap();
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    assert_eq!(drain(&mut sub).await, names("a", 0..6));
    close(&log).await;
}

/// A crash after a commit round: what was settled before that write does not come back,
/// what was unsettled does; what was acked after it may come back (at-least-once).
#[tokio::test]
async fn after_a_crash_settles_written_stay_settled_and_nothing_unsettled_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = dir.path().join("streams/default/groups/OFFSETS");
    {
        let log = open(dir.path());
        publish_all(
            &log,
            names("m", 0..10).iter().map(|p| env("a.b", p)).collect(),
        )
        .await;
        let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
        let held = next(&mut sub).await;
        assert_eq!(payload(&held), "m0");
        for want in names("m", 1..5) {
            let d = next(&mut sub).await;
            assert_eq!(payload(&d), want);
            d.ack().await.unwrap();
        }
        log.flush().await.unwrap();
        // The offsets file as a crash right now would leave it.
        let at_crash = std::fs::read(&offsets).unwrap();
        for want in names("m", 5..8) {
            let d = next(&mut sub).await;
            assert_eq!(payload(&d), want);
            d.ack().await.unwrap();
        }
        // m8 delivered, unsettled; m9 never delivered.
        let m8 = next(&mut sub).await;
        assert_eq!(payload(&m8), "m8");
        // Every handle gone, so the log has stopped writing before the file goes back.
        drop((held, m8, sub, log));
        std::fs::write(&offsets, at_crash).unwrap();
    }
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let got = drain(&mut sub).await;
    let mut want = vec!["m0".to_owned()];
    want.extend(names("m", 5..10));
    assert_eq!(
        got, want,
        "m1..m4 were settled before the last write of the offsets; m5..m7 after it"
    );
    close(&log).await;
}

/// An `OFFSETS` written before settled offsets were kept (version 1: offsets only) still
/// opens: the group resumes at its offset. Fixed bytes: group "g" at offset 5.
#[tokio::test]
async fn an_offsets_file_of_the_older_format_still_opens() {
    const OLD_FORMAT: &[u8] = &[
        b'S', b'W', b'Y', b'O', b'F', b'S', b'0', b'1', // magic
        1, 0, 0, 0, // one entry
        1, 0, b'g', // name
        5, 0, 0, 0, 0, 0, 0, 0, // offset
        0xfa, 0x02, 0xaf, 0x53, // crc32c
    ];
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(
        &log,
        names("m", 0..8).iter().map(|p| env("a.b", p)).collect(),
    )
    .await;
    close(&log).await;
    drop(log);
    std::fs::write(
        dir.path().join("streams/default/groups/OFFSETS"),
        OLD_FORMAT,
    )
    .unwrap();
    let log = open(dir.path());
    assert_eq!(log.committed_offset("default", "g"), Some(5));
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    assert_eq!(drain(&mut sub).await, names("m", 5..8));
    close(&log).await;
}

/// Records settled above the offset that were lost with the tail (a power loss under
/// `Interval`/`Never`, which write offsets more often than they sync data) are forgotten
/// at open: new records take those offsets again and none of them is skipped.
#[tokio::test]
async fn settled_records_lost_with_the_tail_do_not_hide_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("streams/default/00000000000000000000.log");
    let log = open(dir.path());
    publish_all(
        &log,
        names("old-", 0..50).iter().map(|p| env("a.b", p)).collect(),
    )
    .await;
    close(&log).await;
    drop(log);
    let before_loss = std::fs::read(&seg).unwrap();
    {
        let log = open(dir.path());
        publish_all(
            &log,
            names("old-", 50..100)
                .iter()
                .map(|p| env("a.b", p))
                .collect(),
        )
        .await;
        let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
        let held = next(&mut sub).await;
        assert_eq!(payload(&held), "old-0");
        assert_eq!(drain(&mut sub).await, names("old-", 1..100));
        close(&log).await;
        drop((held, sub, log));
    }
    std::fs::write(&seg, &before_loss).unwrap();
    let log = open(dir.path());
    assert_eq!(log.streams()[0].next_offset, 50);
    publish_all(
        &log,
        names("new-", 0..50).iter().map(|p| env("a.b", p)).collect(),
    )
    .await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let mut want = vec!["old-0".to_owned()];
    want.extend(names("new-", 0..50));
    assert_eq!(drain(&mut sub).await, want);
    close(&log).await;
}

/// A group whose last member left and that is joined again with another pattern restarts
/// reading at its first unsettled record, as a restart does: what it settled above that is
/// not handed out again.
#[tokio::test]
async fn a_pattern_change_keeps_what_was_settled_above_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(
        &log,
        names("m", 0..5).iter().map(|p| env("a.b", p)).collect(),
    )
    .await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let held = next(&mut sub).await;
    assert_eq!(payload(&held), "m0");
    assert_eq!(drain(&mut sub).await, names("m", 1..5));
    drop((held, sub));
    publish_all(&log, vec![env("a.c", "other")]).await;
    let mut sub = log.subscribe(&pattern("a.*"), Some("g")).await.unwrap();
    assert_eq!(
        drain(&mut sub).await,
        vec!["m0".to_owned(), "other".to_owned()]
    );
    close(&log).await;
}
