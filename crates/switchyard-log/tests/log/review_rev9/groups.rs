//! Review rev9, consumer groups: offsets across restarts, redelivery, per-key order,
//! compaction and retention against unread groups, dead letters, damaged offsets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::{
    DeadLetter, DeadLetterReason, DeadLetterSink, Publisher, Subscriber, TransportErrorKind,
};
use switchyard_log::{LogTransport, Retention, StartPosition};

use super::*;
use crate::common::*;

/// Two members of one group; one takes a message and "crashes" (its subscription is dropped
/// with the delivery unsettled). The other member gets it at once, and the key's later
/// message is not handed out before it (per-key order within the group).
#[tokio::test]
async fn a_member_dropped_mid_message_hands_it_to_the_other_member_before_the_keys_next() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut a = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    let mut b = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    publish_all(
        &log,
        vec![keyed("r9.x", "k", "first"), keyed("r9.x", "k", "second")],
    )
    .await;
    let d = next(&mut a).await;
    assert_eq!(payload(&d), "first");
    // The key is busy: neither member may get "second" now.
    assert!(try_next(&mut b).is_none());
    assert!(try_next(&mut a).is_none());
    drop(d);
    drop(a);
    let d = next(&mut b).await;
    assert_eq!(payload(&d), "first");
    assert_eq!(d.envelope.delivery.attempt, 2);
    d.ack().await.unwrap();
    let d = next(&mut b).await;
    assert_eq!(payload(&d), "second");
    d.ack().await.unwrap();
    close(&log).await;
}

/// Committed offsets across restarts: acked 0..3 of 6 then closed; the group resumes at 3,
/// an out-of-order ack (4 acked while 3 unsettled) keeps the committed offset at 3, and 4 is
/// stored as settled above it, so it is not delivered again (review "logacks"; this test
/// asserted the redelivery before).
#[tokio::test]
async fn committed_offsets_survive_restarts_and_an_ack_above_a_hole_is_not_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, (0..6).map(|i| env("r9.o", &format!("{i}"))).collect()).await;
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    for _ in 0..3 {
        next(&mut sub).await.ack().await.unwrap();
    }
    let three = next(&mut sub).await;
    let four = next(&mut sub).await;
    assert_eq!(payload(&four), "4");
    four.ack().await.unwrap();
    close(&log).await;
    drop(three);
    drop(sub);
    drop(log);

    let log = open(dir.path());
    assert_eq!(log.committed_offset("default", "g"), Some(3));
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    let got: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let d = next(&mut sub).await;
            v.push(payload(&d));
            d.ack().await.unwrap();
        }
        assert!(try_next(&mut sub).is_none());
        v
    };
    // 4 was acked above the hole: kept with the committed offset, not delivered again
    // (review "logacks"; before, it came back after every restart).
    assert_eq!(got, ["3", "5"]);
    close(&log).await;
    let log = open(dir.path());
    assert_eq!(log.committed_offset("default", "g"), Some(6));
    close(&log).await;
}

/// A subscriber added after publishes: a new durable group and an ungrouped subscription
/// start at the oldest retained record by default (`StartPosition::Earliest`); with
/// `StartPosition::Latest` only records published after subscribing arrive.
#[tokio::test]
async fn a_late_subscriber_reads_from_the_oldest_record_or_only_new_ones_with_latest() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, vec![env("r9.l", "old")]).await;
    let mut g = log.subscribe(&pattern("r9.#"), Some("late")).await.unwrap();
    let mut e = log.subscribe(&pattern("r9.#"), None).await.unwrap();
    assert_eq!(payload(&next(&mut g).await), "old");
    assert_eq!(payload(&next(&mut e).await), "old");
    close(&log).await;
    drop((g, e, log));

    let log = LogTransport::open(config(dir.path()).with_start(StartPosition::Latest)).unwrap();
    let mut g = log
        .subscribe(&pattern("r9.#"), Some("newer"))
        .await
        .unwrap();
    assert!(
        try_next(&mut g).is_none(),
        "Latest handed out an old record"
    );
    publish_all(&log, vec![env("r9.l", "new")]).await;
    assert_eq!(payload(&next(&mut g).await), "new");
    close(&log).await;
}

/// Group names are stored inside `OFFSETS`, never as file names: a group named like a path
/// works and keeps its offset across a restart, and nothing is created outside the stream.
#[tokio::test]
async fn a_group_named_like_a_path_keeps_its_offset_and_creates_no_file() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    let group = "../../../evil/g";
    {
        let log = open(&dir);
        publish_all(&log, vec![env("r9.g", "0"), env("r9.g", "1")]).await;
        let mut sub = log.subscribe(&pattern("r9.#"), Some(group)).await.unwrap();
        next(&mut sub).await.ack().await.unwrap();
        close(&log).await;
    }
    assert!(!base.path().join("evil").exists());
    let log = open(&dir);
    assert_eq!(log.committed_offset("default", group), Some(1));
    close(&log).await;
}

/// One group with a name over 65 535 bytes (the `OFFSETS` format's u16 length) must not
/// stop the other groups of the stream from committing: the name is refused at subscribe
/// with `InvalidConfig` naming the limit, and after a restart group `a` resumes past what it
/// acked. (Before the fix the subscribe succeeded and every `OFFSETS` write of the stream
/// failed: `committed_offset("default", "a")` was `None`.)
#[tokio::test]
async fn one_oversized_group_name_does_not_lose_the_other_groups_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(&log, (0..3).map(|i| env("r9.n", &format!("{i}"))).collect()).await;
        let mut a = log.subscribe(&pattern("r9.#"), Some("a")).await.unwrap();
        for _ in 0..3 {
            next(&mut a).await.ack().await.unwrap();
        }
        let long = "g".repeat(70_000);
        match log.subscribe(&pattern("r9.#"), Some(&long)).await {
            Err(switchyard_core::SubscribeError::InvalidConfig(m)) => {
                assert!(m.contains("group name") && m.contains("65535"), "{m}")
            }
            Err(e) => panic!("unexpected error {e:?}"),
            Ok(_) => panic!("a group name of 70000 bytes was accepted"),
        }
        // The limit itself is accepted, and stored.
        let longest = "h".repeat(65_535);
        let mut l = log
            .subscribe(&pattern("r9.#"), Some(&longest))
            .await
            .unwrap();
        next(&mut l).await.ack().await.unwrap();
        let _ = log.close(std::time::Instant::now() + WAIT).await;
    }
    let log = open(dir.path());
    assert_eq!(
        log.committed_offset("default", "a"),
        Some(3),
        "group a lost its committed offset"
    );
    assert_eq!(
        log.committed_offset("default", &"h".repeat(65_535)),
        Some(1)
    );
    close(&log).await;
}

/// Compaction (`delete_consumed`) removes a segment only once every durable group is past
/// it: a group that subscribed but has read nothing, or one known only from a previous run,
/// must still get every record. (Before the fix a group entered the minimum only with its
/// first ack: compaction removed 76 records `slow` had never read.)
#[tokio::test]
async fn compaction_keeps_segments_a_subscribed_but_unread_group_has_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        small(dir.path()).with_retention(Retention {
            max_bytes: None,
            max_age: None,
            delete_consumed: true,
        })
    };
    let log = LogTransport::open(cfg()).unwrap();
    let mut slow = log.subscribe(&pattern("r9.#"), Some("slow")).await.unwrap();
    let mut fast = log.subscribe(&pattern("r9.#"), Some("fast")).await.unwrap();
    let n = 80;
    for i in 0..n {
        publish_all(
            &log,
            vec![env("r9.r", &format!("{i:03}-{}", "y".repeat(100)))],
        )
        .await;
    }
    for _ in 0..n {
        next(&mut fast).await.ack().await.unwrap();
    }
    log.enforce_retention().await.unwrap();
    let first = log.streams()[0].first_offset;
    assert_eq!(first, 0, "compaction removed records group slow never read");
    let d = next(&mut slow).await;
    assert!(payload(&d).starts_with("000-"), "{}", payload(&d));
    drop((d, slow, fast));
    close(&log).await;
}

/// A durable group is recorded (in `OFFSETS`) at its start position from the moment it is
/// created, not from its first ack: a group created under `StartPosition::Latest` that acked
/// nothing, after a restart, still gets what was published while it was away.
#[tokio::test]
async fn a_group_that_never_acked_resumes_at_its_start_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path()).with_start(StartPosition::Latest);
    {
        let log = LogTransport::open(cfg()).unwrap();
        publish_all(&log, vec![env("r9.s", "before")]).await;
        let _g = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
        close(&log).await;
    }
    let log = LogTransport::open(cfg()).unwrap();
    assert_eq!(log.committed_offset("default", "g"), Some(1));
    publish_all(&log, vec![env("r9.s", "while away")]).await;
    let mut g = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    assert_eq!(payload(&next(&mut g).await), "while away");
    close(&log).await;
}

/// Compaction against a group known only from a previous run (in `OFFSETS`, not
/// subscribed in this run): its unread records stay.
#[tokio::test]
async fn compaction_keeps_segments_a_group_from_a_previous_run_has_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        small(dir.path()).with_retention(Retention {
            max_bytes: None,
            max_age: None,
            delete_consumed: true,
        })
    };
    {
        let log = LogTransport::open(cfg()).unwrap();
        publish_all(&log, vec![env("r9.r", "first")]).await;
        let mut slow = log.subscribe(&pattern("r9.#"), Some("slow")).await.unwrap();
        next(&mut slow).await.ack().await.unwrap();
        close(&log).await;
    }
    let log = LogTransport::open(cfg()).unwrap();
    assert_eq!(log.committed_offset("default", "slow"), Some(1));
    let mut fast = log.subscribe(&pattern("r9.#"), Some("fast")).await.unwrap();
    for i in 0..80 {
        publish_all(
            &log,
            vec![env("r9.r", &format!("{i:03}-{}", "y".repeat(100)))],
        )
        .await;
    }
    for _ in 0..81 {
        next(&mut fast).await.ack().await.unwrap();
    }
    log.enforce_retention().await.unwrap();
    assert!(
        log.streams()[0].first_offset <= 1,
        "compaction removed records of a group known from a previous run: first offset {}",
        log.streams()[0].first_offset
    );
    close(&log).await;
}

/// Size retention removes records a group had not read: the group then skips to the oldest
/// retained record (documented, with a warning) rather than failing or hanging.
#[tokio::test]
async fn size_retention_past_an_unread_group_skips_it_to_the_oldest_retained_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(small(dir.path()).with_retention(Retention {
        max_bytes: Some(4096),
        max_age: None,
        delete_consumed: false,
    }))
    .unwrap();
    let mut g = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    for i in 0..80 {
        publish_all(
            &log,
            vec![env("r9.z", &format!("{i:03}-{}", "z".repeat(100)))],
        )
        .await;
    }
    // The group has taken nothing yet, so nothing of it is read ahead in memory.
    log.enforce_retention().await.unwrap();
    let first = log.streams()[0].first_offset;
    assert!(first > 0, "nothing removed");
    let mut got = Vec::new();
    loop {
        let d = next(&mut g).await;
        let n: u64 = payload(&d)[..3].parse().unwrap();
        got.push(n);
        d.ack().await.unwrap();
        if n == 79 {
            break;
        }
    }
    assert_eq!(got, (first..80).collect::<Vec<_>>());
    close(&log).await;
}

#[derive(Default)]
struct Sink(Mutex<Vec<DeadLetter>>);
impl DeadLetterSink for Sink {
    fn put(&self, letter: DeadLetter) {
        self.0.lock().unwrap().push(letter);
    }
}

/// After `max_deliver` deliveries a message goes to the dead-letter sink with
/// `MaxDeliveries` and is settled: after a restart the group does not get it again and its
/// committed offset is past it; the record itself stays in the log (browsable by offset).
#[tokio::test]
async fn a_dead_lettered_message_is_settled_across_a_restart_and_still_browsable() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Sink::default());
    let cfg = |s: Arc<Sink>| config(dir.path()).with_max_deliver(2).with_dead_letters(s);
    let log = LogTransport::open(cfg(sink.clone())).unwrap();
    publish_all(&log, vec![env("r9.d", "poison"), env("r9.d", "fine")]).await;
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    let mut fine = 0;
    while sink.0.lock().unwrap().is_empty() || fine == 0 {
        let d = next(&mut sub).await;
        if payload(&d) == "poison" {
            d.nack(None).await.unwrap();
        } else {
            fine += 1;
            d.ack().await.unwrap();
        }
    }
    {
        let dead = sink.0.lock().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, DeadLetterReason::MaxDeliveries);
        assert_eq!(&dead[0].envelope.payload[..], b"poison");
        assert_eq!(dead[0].attempts, 2);
    }
    close(&log).await;
    drop((sub, log));
    let sink2 = Arc::new(Sink::default());
    let log = LogTransport::open(cfg(sink2.clone())).unwrap();
    assert_eq!(log.committed_offset("default", "g"), Some(2));
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    assert!(
        try_next(&mut sub).is_none(),
        "dead-lettered message came back"
    );
    let recs = log.read_range("default", 0, 1).unwrap();
    assert_eq!(&recs[0].envelope.payload[..], b"poison");
    assert!(sink2.0.lock().unwrap().is_empty());
    close(&log).await;
}

/// After `close`, settling fails with `Closed`, and the delivery comes back after reopen.
#[tokio::test]
async fn a_term_after_close_is_refused_and_the_message_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, vec![env("r9.x", "m")]).await;
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    let d = next(&mut sub).await;
    close(&log).await;
    let e = d.term("late").await.unwrap_err();
    assert_eq!(e.kind, TransportErrorKind::Closed);
    drop((sub, log));
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    assert_eq!(payload(&next(&mut sub).await), "m");
    close(&log).await;
}

/// A nacked message with a delay keeps its key busy: the key's next message is not handed
/// out before the nacked one comes back (per-key order within a group).
#[tokio::test]
async fn a_nack_with_delay_holds_the_keys_next_message_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    publish_all(
        &log,
        vec![
            keyed("r9.n", "k", "1"),
            keyed("r9.n", "k", "2"),
            keyed("r9.n", "other", "x"),
        ],
    )
    .await;
    let d = next(&mut sub).await;
    assert_eq!(payload(&d), "1");
    d.nack(Some(Duration::from_millis(300))).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(payload(&d), "x", "another key goes on meanwhile");
    d.ack().await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(
        payload(&d),
        "1",
        "the key's next message overtook the nacked one"
    );
    assert_eq!(d.envelope.delivery.attempt, 2);
    d.ack().await.unwrap();
    assert_eq!(payload(&next(&mut sub).await), "2");
    close(&log).await;
}

/// A delivery not settled within `ack_wait` is redelivered (attempt 2), to the same member
/// when it is the only one.
#[tokio::test]
async fn an_unsettled_delivery_comes_back_after_ack_wait() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        LogTransport::open(config(dir.path()).with_ack_wait(Duration::from_millis(200))).unwrap();
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    publish_all(&log, vec![env("r9.w", "slow")]).await;
    let first = next(&mut sub).await;
    let again = next(&mut sub).await;
    assert_eq!(payload(&again), "slow");
    assert_eq!(again.envelope.delivery.attempt, 2);
    again.ack().await.unwrap();
    // The stale first delivery's settle changes nothing (no panic, no double count).
    let _ = first.ack().await;
    close(&log).await;
    drop((sub, log));
    let log = open(dir.path());
    assert_eq!(log.committed_offset("default", "g"), Some(1));
    close(&log).await;
}

/// A damaged `OFFSETS` file is not an error: every group restarts from the oldest record,
/// even when the configured start is `Latest` (nothing skipped).
#[tokio::test]
async fn a_damaged_offsets_file_restarts_groups_from_the_oldest_record_even_under_latest() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(&log, (0..3).map(|i| env("r9.f", &format!("{i}"))).collect()).await;
        let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
        for _ in 0..3 {
            next(&mut sub).await.ack().await.unwrap();
        }
        close(&log).await;
    }
    let path = dir.path().join("streams/default/groups/OFFSETS");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let log = LogTransport::open(config(dir.path()).with_start(StartPosition::Latest)).unwrap();
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    assert_eq!(payload(&next(&mut sub).await), "0");
    close(&log).await;
}

/// After an operator removes a lost segment and the `MANIFEST` (the documented way out), the
/// log opens with the segments as found, and a group whose offset is past the new end is
/// brought back to it so it receives the records that reuse those offsets.
#[tokio::test]
async fn removing_the_manifest_accepts_a_lost_newest_segment_and_clamps_group_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogTransport::open(small(dir.path())).unwrap();
        let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
        for i in 0..60 {
            publish_all(
                &log,
                vec![env("r9.y", &format!("{i:03}-{}", "y".repeat(100)))],
            )
            .await;
            next(&mut sub).await.ack().await.unwrap();
        }
        close(&log).await;
    }
    let newest = segments(dir.path(), "default").pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    std::fs::remove_file(dir.path().join("streams/default/MANIFEST")).unwrap();
    let log = LogTransport::open(small(dir.path())).unwrap();
    let end = log.streams()[0].next_offset;
    assert!(end < 60);
    assert_eq!(log.committed_offset("default", "g"), Some(end));
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    publish_all(&log, vec![env("r9.y", "reused")]).await;
    assert_eq!(payload(&next(&mut sub).await), "reused");
    close(&log).await;
}

/// Per-key order holds one key's messages back while one is in flight; other keys must go
/// on. With the default `max_ack_pending` (1024) and a backlog of 1100 messages on one key,
/// a message of another key published after them is still handed out while the first
/// message of the busy key is being handled (only 1 message is unsettled in flight).
/// (Before the fix the hot key's backlog filled the read-ahead window and `c0` never came:
/// "the cold key's message never came while h0 was in flight: Elapsed".)
#[tokio::test]
async fn a_busy_key_with_a_long_backlog_does_not_stall_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut batch: Vec<_> = (0..1100)
        .map(|i| keyed("r9.hol", "hot", &format!("h{i}")))
        .collect();
    batch.push(keyed("r9.hol", "cold", "c0"));
    publish_all(&log, batch).await;
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    let held = next(&mut sub).await;
    assert_eq!(payload(&held), "h0");
    let other = tokio::time::timeout(Duration::from_secs(2), next(&mut sub)).await;
    let other = other.expect("the cold key's message never came while h0 was in flight");
    assert_eq!(payload(&other), "c0");
    other.ack().await.unwrap();
    held.ack().await.unwrap();
    close(&log).await;
}

/// `group_lags()` after a restart lists a group known only from disk (not subscribed in
/// this run) with its committed offset and lag.
#[tokio::test]
async fn group_lags_after_a_restart_show_groups_known_only_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(
            &log,
            (0..4).map(|i| env("r9.lag", &format!("{i}"))).collect(),
        )
        .await;
        let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
        next(&mut sub).await.ack().await.unwrap();
        close(&log).await;
    }
    let log = open(dir.path());
    let lags = log.group_lags();
    let g = lags
        .iter()
        .find(|l| l.group == "g")
        .unwrap_or_else(|| panic!("group g missing from {lags:?}"));
    assert_eq!((g.committed, g.lag, g.pending), (1, 3, 0));
    close(&log).await;
}

/// One group, two members with different patterns: refused with a typed error while the
/// first member is subscribed (the group's messages would otherwise split unpredictably).
#[tokio::test]
async fn a_second_member_with_another_pattern_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let _a = log.subscribe(&pattern("r9.a.#"), Some("g")).await.unwrap();
    match log.subscribe(&pattern("r9.b.#"), Some("g")).await {
        Err(switchyard_core::SubscribeError::InvalidConfig(m)) => {
            assert!(m.contains("pattern"), "{m}")
        }
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("a second pattern joined the group"),
    }
    close(&log).await;
}

/// The look-ahead past a busy key (fix of the test above), with `max_ack_pending` 2: other
/// keys are taken from past the full window, but never more than 2 messages are handed out
/// and unsettled at once, a key passed over keeps its order (`b2` not before `b1`, and
/// nothing of `a` before `a1` is settled), a message taken ahead is redelivered like any
/// other, every message comes exactly once, memory stays bounded (at most twice
/// `max_ack_pending` held), and the committed offset ends past everything.
#[tokio::test]
async fn the_look_ahead_past_a_busy_key_keeps_per_key_order_and_the_ack_pending_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path()).with_max_ack_pending(2);
    let log = LogTransport::open(cfg()).unwrap();
    let msgs = [
        ("a", "a1"),
        ("a", "a2"),
        ("a", "a3"),
        ("b", "b1"),
        ("a", "a4"),
        ("b", "b2"),
        ("c", "c1"),
    ];
    publish_all(
        &log,
        msgs.iter().map(|(k, p)| keyed("r9.la", k, p)).collect(),
    )
    .await;
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    let a1 = next(&mut sub).await;
    assert_eq!(payload(&a1), "a1");
    // The window (a1, a2) is full and waits on key a: b1 comes from past it.
    let b1 = next(&mut sub).await;
    assert_eq!(payload(&b1), "b1");
    // Two handed out and unsettled: the limit, although c1 is free.
    assert!(
        try_next(&mut sub).is_none(),
        "more than max_ack_pending out"
    );
    let held = log.group_lags()[0].pending;
    assert!(held <= 4, "{held} messages held with max_ack_pending 2");
    b1.ack().await.unwrap();
    // c1, taken ahead; dropped unsettled, it comes back.
    let c1 = next(&mut sub).await;
    assert_eq!(payload(&c1), "c1");
    drop(c1);
    let c1 = next(&mut sub).await;
    assert_eq!(
        (payload(&c1).as_str(), c1.envelope.delivery.attempt),
        ("c1", 2)
    );
    c1.ack().await.unwrap();
    // b2 was passed over behind b1 and a's backlog: it waits for the in-order read, which
    // waits on a1.
    assert!(try_next(&mut sub).is_none(), "b2 or a2 overtook a1");
    a1.ack().await.unwrap();
    let mut got = vec!["a1".to_owned(), "b1".to_owned(), "c1".to_owned()];
    while got.len() < msgs.len() {
        let d = next(&mut sub).await;
        got.push(payload(&d));
        d.ack().await.unwrap();
    }
    assert!(try_next(&mut sub).is_none(), "a message came twice");
    for key in ["a", "b", "c"] {
        let want: Vec<&str> = msgs
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, p)| *p)
            .collect();
        let seen: Vec<&str> = got
            .iter()
            .map(String::as_str)
            .filter(|p| p.starts_with(key))
            .collect();
        assert_eq!(seen, want, "order of key {key}");
    }
    close(&log).await;
    drop((sub, log));
    let log = LogTransport::open(cfg()).unwrap();
    assert_eq!(log.committed_offset("default", "g"), Some(7));
    close(&log).await;
}

/// With no dead-letter sink configured, a message that reached `max_deliver` is not
/// dropped: it goes to the log's own dead-letter store (`LogTransport::dead_letters`), with
/// `MaxDeliveries`, its attempts and the stream and offset of its record in the error text,
/// where it can be browsed and taken; the record itself stays readable by offset. (Before
/// the fix it was settled with only a warning: the committed offset moved past it and it
/// was nowhere to be found.) With a sink configured the log keeps no store of its own.
#[tokio::test]
async fn without_a_sink_a_dead_lettered_message_is_kept_in_the_logs_own_store() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(config(dir.path()).with_max_deliver(2)).unwrap();
    publish_all(&log, vec![env("r9.d", "poison"), env("r9.d", "fine")]).await;
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        assert_eq!(payload(&d), "poison");
        d.nack(None).await.unwrap();
    }
    let d = next(&mut sub).await;
    assert_eq!(payload(&d), "fine");
    d.ack().await.unwrap();
    let store = log.dead_letters().expect("the log's own dead-letter store");
    let letters = store.list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(&letter.envelope.payload[..], b"poison");
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.handler.as_deref(), Some("g"));
    assert!(
        letter.error.contains("stream default") && letter.error.contains("offset 0"),
        "{}",
        letter.error
    );
    let recs = log.read_range("default", 0, 1).unwrap();
    assert_eq!(&recs[0].envelope.payload[..], b"poison");
    close(&log).await;
    drop((sub, log));

    let sink = Arc::new(Sink::default());
    let log = LogTransport::open(config(dir.path()).with_dead_letters(sink)).unwrap();
    assert!(log.dead_letters().is_none());
    close(&log).await;
}
