//! Review rev9, storage: torn and corrupt segments, sync promises, large records, many
//! topics, names that are not file names.

use std::io::Write;
use std::time::Duration;

use switchyard_core::{Envelope, Publisher, Subscriber};
use switchyard_log::{CorruptionKind, Durability, LogConfig, LogTransport, OpenError, StreamSpec};

use super::*;
use crate::common::*;

/// docs/log.md, Durability: under `Always` `publish` resolves after the `fdatasync` of its
/// batch, so each sequential publish costs (at least) one sync; under `Never` nothing is
/// synced until `flush`; under `Interval(1 h)` a publish does not wait for a sync.
#[tokio::test]
async fn always_syncs_before_each_sequential_publish_resolves_and_never_waits_for_flush() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    for i in 0..5 {
        let before = log.stats().syncs;
        publish_all(&log, vec![env("r9.s", &format!("{i}"))]).await;
        assert!(
            log.stats().syncs > before,
            "publish {i} resolved without a sync"
        );
    }
    close(&log).await;

    for d in [
        Durability::Never,
        Durability::Interval(Duration::from_secs(3600)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = LogTransport::open(LogConfig::new(dir.path()).with_durability(d)).unwrap();
        let syncs0 = log.stats().syncs;
        for i in 0..5 {
            publish_all(&log, vec![env("r9.s", &format!("{i}"))]).await;
        }
        assert_eq!(log.stats().syncs, syncs0, "{d:?} synced on publish");
        // Consumers only see records once durable "under the mode": visible without a sync.
        let mut sub = log.subscribe(&pattern("r9.#"), None).await.unwrap();
        assert_eq!(payload(&next(&mut sub).await), "0");
        log.flush().await.unwrap();
        assert!(log.stats().syncs > syncs0, "{d:?}: flush did not sync");
        close(&log).await;
    }
}

/// A torn tail (half a record, then garbage) on the newest segment is truncated on open;
/// every earlier record is there, the next publish gets the next offset and survives a
/// further reopen.
#[tokio::test]
async fn a_torn_tail_is_truncated_and_the_log_keeps_appending_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(&log, (0..5).map(|i| env("r9.t", &format!("{i}"))).collect()).await;
        close(&log).await;
    }
    let seg = segments(dir.path(), "default").pop().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    // A header promising 300 bytes, then only 20 of them.
    f.write_all(&300u32.to_le_bytes()).unwrap();
    f.write_all(&[0xAB; 24]).unwrap();
    drop(f);
    let log = open(dir.path());
    let recs = log.read_range("default", 0, 100).unwrap();
    assert_eq!(recs.len(), 5);
    publish_all(&log, vec![env("r9.t", "after")]).await;
    close(&log).await;
    drop(log);
    let log = open(dir.path());
    let recs = log.read_range("default", 0, 100).unwrap();
    assert_eq!(recs.len(), 6);
    assert_eq!(recs[5].offset, 5);
    assert_eq!(&recs[5].envelope.payload[..], b"after");
    close(&log).await;
}

/// A flipped byte in a record of an older (closed) segment is `OpenError::Corrupt` naming
/// that segment, never a silent skip; the same flip in the newest segment with good records
/// after it is also refused (`Recovery::Strict`).
#[tokio::test]
async fn damage_in_an_older_segment_or_before_good_records_is_a_typed_corruption_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogTransport::open(small(dir.path())).unwrap();
        for i in 0..60 {
            publish_all(
                &log,
                vec![env("r9.c", &format!("payload-{i:04}-{}", "x".repeat(100)))],
            )
            .await;
        }
        close(&log).await;
    }
    let segs = segments(dir.path(), "default");
    assert!(segs.len() >= 3, "{segs:?}");
    // Corrupt the payload of the second record of the middle segment.
    let mid = &segs[1];
    let mut bytes = std::fs::read(mid).unwrap();
    let first_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let pos = 8 + 16 + first_len + 16 + 5;
    bytes[pos] ^= 0xFF;
    std::fs::write(mid, &bytes).unwrap();
    match LogTransport::open(small(dir.path())) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!(&c.path, mid);
            assert_eq!(c.kind, CorruptionKind::BadChecksum);
            assert_eq!(c.position, (8 + 16 + first_len) as u64);
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a log with a corrupt middle segment"),
    }
    bytes[pos] ^= 0xFF;
    std::fs::write(mid, &bytes).unwrap();

    // The newest segment: damage in its first record, good records after it.
    let newest = segs.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    assert!(
        bytes.len() > 8 + 16 + 130,
        "newest segment holds one record only"
    );
    bytes[8 + 16 + 3] ^= 0xFF;
    std::fs::write(newest, &bytes).unwrap();
    match LogTransport::open(small(dir.path())) {
        Err(OpenError::Corrupt(c)) => assert_eq!(&c.path, newest),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(l) => panic!(
            "opened; newest segment silently truncated to {:?}",
            l.streams()
        ),
    }
}

/// A record far larger than `segment_bytes` is stored whole (in a segment of its own) and
/// reads back identical after a reopen; the next record follows it.
#[tokio::test]
async fn a_record_larger_than_a_segment_survives_a_reopen_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let big: String = (0..3_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    {
        let log = LogTransport::open(small(dir.path())).unwrap();
        publish_all(&log, vec![env("r9.b", "small"), env("r9.b", &big)]).await;
        publish_all(&log, vec![env("r9.b", "after")]).await;
        close(&log).await;
    }
    let log = LogTransport::open(small(dir.path())).unwrap();
    let recs = log.read_range("default", 0, 10).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[1].envelope.payload.len(), big.len());
    assert!(recs[1].envelope.payload[..] == *big.as_bytes());
    assert_eq!(&recs[2].envelope.payload[..], b"after");
    close(&log).await;
}

/// A publish over `max_record_bytes` is refused whole with `TooLarge` (and nothing of its
/// batch is stored).
#[tokio::test]
async fn a_batch_with_one_record_over_the_limit_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_record_bytes = 1024;
    let log = LogTransport::open(cfg).unwrap();
    let err = log
        .publish(vec![env("r9.m", "ok"), env("r9.m", &"x".repeat(4096))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, switchyard_core::PublishError::TooLarge(_)),
        "{err:?}"
    );
    assert!(log.read_range("default", 0, 10).unwrap().is_empty());
    close(&log).await;
}

/// Many topics (300, spread over two streams) all survive a reopen, each in its stream, and
/// a wildcard group sees every one exactly once.
#[tokio::test]
async fn many_topics_over_two_streams_all_reach_a_wildcard_group_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || LogConfig::new(dir.path()).with_stream("even", [pattern("ev.#")]);
    {
        let log = LogTransport::open(cfg()).unwrap();
        let envs: Vec<Envelope> = (0..300)
            .map(|i| {
                let t = if i % 2 == 0 {
                    format!("ev.t{i}.x")
                } else {
                    format!("od.t{i}")
                };
                env(&t, &format!("{i}"))
            })
            .collect();
        publish_all(&log, envs).await;
        close(&log).await;
    }
    let log = LogTransport::open(cfg()).unwrap();
    let infos = log.streams();
    let n = |s: &str| infos.iter().find(|i| i.name == s).unwrap().next_offset;
    assert_eq!((n("even"), n("default")), (150, 150));
    let mut sub = log.subscribe(&pattern("#"), Some("all")).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..300 {
        let d = next(&mut sub).await;
        assert!(seen.insert(payload(&d)), "duplicate {}", payload(&d));
        d.ack().await.unwrap();
    }
    assert!(try_next(&mut sub).is_none());
    close(&log).await;
}

/// Stream names that are not safe file names (path separators, `..`, `.`, empty, NUL) are
/// refused with `InvalidConfig` before anything is created outside the log directory.
#[tokio::test]
async fn stream_names_that_are_not_file_names_are_refused() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    for name in ["../escape", "a/b", "..", ".", "", "a\0b", "a b", "é"] {
        let cfg = LogConfig::new(&dir).with_stream(name, [pattern("x.#")]);
        match LogTransport::open(cfg) {
            Err(OpenError::InvalidConfig(m)) => assert!(m.contains("stream name"), "{m}"),
            Err(e) => panic!("{name:?}: expected InvalidConfig, got {e}"),
            Ok(_) => panic!("{name:?}: accepted"),
        }
    }
    assert!(!base.path().join("escape").exists());
    let cfg = LogConfig::new(&dir).with_default_stream(Some("../up"));
    assert!(matches!(
        LogTransport::open(cfg),
        Err(OpenError::InvalidConfig(_))
    ));
}

/// Publishing after `close` is refused (typed), not lost silently or hung.
#[tokio::test]
async fn a_publish_after_close_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    close(&log).await;
    let r = tokio::time::timeout(WAIT, log.publish(vec![env("r9.x", "late")]))
        .await
        .expect("publish after close hung");
    assert!(r.is_err(), "publish after close returned Ok");
    drop(log);
    let log = open(dir.path());
    assert!(log.read_range("default", 0, 10).unwrap().is_empty());
    close(&log).await;
}

/// A missing newest segment (deleted by an operator) is refused with `MissingSegment`, so
/// its offsets are never given out again.
#[tokio::test]
async fn a_deleted_newest_segment_is_refused_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogTransport::open(small(dir.path())).unwrap();
        for i in 0..60 {
            publish_all(
                &log,
                vec![env("r9.q", &format!("{i:03}-{}", "q".repeat(100)))],
            )
            .await;
        }
        close(&log).await;
    }
    let newest = segments(dir.path(), "default").pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    match LogTransport::open(small(dir.path())) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!(c.kind, CorruptionKind::MissingSegment);
            assert_eq!(c.path, newest);
        }
        Err(e) => panic!("expected MissingSegment, got {e}"),
        Ok(_) => panic!("opened with the newest segment gone"),
    }
}

/// `StreamSpec` routing survives a reopen with the same config; a reopen that maps a topic
/// to another stream keeps the old records where they were (readable) and the group that
/// subscribes with the stream's pattern still gets them.
#[tokio::test]
async fn records_stay_in_their_stream_after_a_reopen_with_new_routing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogTransport::open(
            LogConfig::new(dir.path()).with_stream("orders", [pattern("orders.#")]),
        )
        .unwrap();
        publish_all(&log, vec![env("orders.placed", "o1")]).await;
        close(&log).await;
    }
    let mut cfg = LogConfig::new(dir.path());
    cfg.streams = vec![
        StreamSpec::new("orders2", [pattern("orders.#")]),
        StreamSpec::new("orders", [pattern("legacy.#")]),
    ];
    let log = LogTransport::open(cfg).unwrap();
    assert_eq!(log.read_range("orders", 0, 10).unwrap().len(), 1);
    assert_eq!(log.stream_for(&topic("orders.placed")), Some("orders2"));
    close(&log).await;
}

/// `Interval(d)`: the log syncs at most `d` after a write, without a flush.
#[tokio::test]
async fn interval_durability_syncs_on_its_own_after_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(
        config(dir.path()).with_durability(Durability::Interval(Duration::from_millis(50))),
    )
    .unwrap();
    let before = log.stats().syncs;
    publish_all(&log, vec![env("r9.i", "x")]).await;
    let deadline = std::time::Instant::now() + WAIT;
    while log.stats().syncs == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no sync within {WAIT:?} under Interval(50 ms)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    close(&log).await;
}

/// A crash while a roll created the next segment (only part of its header written, and the
/// manifest not yet updated): the log opens, keeps every record, and appends after them with
/// the right offsets, also across a further reopen.
#[tokio::test]
async fn a_segment_torn_while_being_created_is_repaired_and_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    let n;
    {
        let log = LogTransport::open(small(dir.path())).unwrap();
        for i in 0..40 {
            publish_all(
                &log,
                vec![env("r9.h", &format!("{i:03}-{}", "h".repeat(100)))],
            )
            .await;
        }
        n = log.streams()[0].next_offset;
        close(&log).await;
    }
    for torn in [&b"SWY"[..], &b""[..]] {
        let next_base = {
            let log = LogTransport::open(small(dir.path())).unwrap();
            let b = log.streams()[0].next_offset;
            close(&log).await;
            b
        };
        let stray = dir
            .path()
            .join("streams/default")
            .join(format!("{next_base:020}.log"));
        std::fs::write(&stray, torn).unwrap();
        let log =
            LogTransport::open(small(dir.path())).unwrap_or_else(|e| panic!("torn {torn:?}: {e}"));
        assert_eq!(log.streams()[0].next_offset, next_base);
        publish_all(&log, vec![env("r9.h", "after")]).await;
        close(&log).await;
    }
    let log = LogTransport::open(small(dir.path())).unwrap();
    let recs = log.read_range("default", 0, 1000).unwrap();
    assert_eq!(recs.len() as u64, n + 2);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
    }
    close(&log).await;
}

/// With no catch-all stream, a topic no stream takes is refused with a typed error, and
/// nothing of its batch is stored.
#[tokio::test]
async fn an_unmapped_topic_is_refused_whole_without_a_default_stream() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(
        LogConfig::new(dir.path())
            .with_stream("orders", [pattern("orders.#")])
            .with_default_stream(None),
    )
    .unwrap();
    let err = log
        .publish(vec![env("orders.a", "ok"), env("other.b", "no")])
        .await
        .unwrap_err();
    match err {
        switchyard_core::PublishError::Transport(t) => {
            assert_eq!(t.kind, switchyard_core::TransportErrorKind::Rejected);
            assert!(t.to_string().contains("other.b"), "{t}");
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(log.read_range("orders", 0, 10).unwrap().is_empty());
    close(&log).await;
}

/// Topics are stored inside records, never as file names: topics that would be odd or unsafe
/// file names (when the topic grammar accepts them) round-trip and create no files.
#[tokio::test]
async fn topics_that_are_not_file_names_round_trip_and_create_no_files() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("log");
    let candidates = [
        "a/b",
        "..",
        "x../..",
        "con.nul",
        "é.ü",
        "a b",
        "a\\b",
        "t.\u{1F600}",
        "%2e%2e",
    ];
    let accepted: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|t| switchyard_core::Topic::new(t).is_ok())
        .collect();
    assert!(!accepted.is_empty());
    {
        let log = open(&dir);
        let envs: Vec<Envelope> = accepted.iter().map(|t| env(t, t)).collect();
        publish_all(&log, envs).await;
        close(&log).await;
    }
    let log = open(&dir);
    let recs = log.read_range("default", 0, 100).unwrap();
    let topics: Vec<&str> = recs.iter().map(|r| r.envelope.topic.as_str()).collect();
    assert_eq!(topics, accepted);
    close(&log).await;
    let mut entries: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["LOCK", "streams"]);
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 1);
}

/// `max_age` uses the segment files' modification time, so segments written long ago are
/// removed after a restart too (the newest, being written, stays).
#[tokio::test]
async fn max_age_removes_old_closed_segments_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogTransport::open(small(dir.path())).unwrap();
        for i in 0..60 {
            publish_all(
                &log,
                vec![env("r9.age", &format!("{i:03}-{}", "a".repeat(100)))],
            )
            .await;
        }
        close(&log).await;
    }
    let segs = segments(dir.path(), "default");
    assert!(segs.len() >= 3);
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
    for s in &segs[..segs.len() - 1] {
        std::fs::File::options()
            .write(true)
            .open(s)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let log = LogTransport::open(small(dir.path()).with_retention(switchyard_log::Retention {
        max_bytes: None,
        max_age: Some(Duration::from_secs(24 * 3600)),
        delete_consumed: false,
    }))
    .unwrap();
    log.enforce_retention().await.unwrap();
    let info = &log.streams()[0];
    assert_eq!(info.segments, 1, "{info:?}");
    assert_eq!(info.next_offset, 60);
    let recs = log.read_range("default", 0, 100).unwrap();
    assert_eq!(recs.first().map(|r| r.offset), Some(info.first_offset));
    assert_eq!(recs.last().map(|r| r.offset), Some(59));
    close(&log).await;
}
