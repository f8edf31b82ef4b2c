//! Review rev9: durability of the embedded log through its public surface (docs/log.md):
//! kill -9 of a consuming child mid-message, the lock against a second process, torn and
//! corrupt segments, the `Always` / `Never` / `Interval` sync promises (`stats().syncs`),
//! committed offsets across restarts, compaction against groups that have not read, late
//! subscribers, records larger than a segment, many topics, odd names, and dead letters.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::{
    DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, Publisher, Subscriber,
    TransportErrorKind,
};
use switchyard_log::{
    CorruptionKind, Durability, LogConfig, LogTransport, OpenError, Retention, StartPosition,
    StreamSpec,
};

use crate::common::*;

const CHILD_ENV: &str = "SWITCHYARD_LOG_REV9_CHILD";
const MODE_ENV: &str = "SWITCHYARD_LOG_REV9_MODE";

fn segments(dir: &Path, stream: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("streams").join(stream))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn small(dir: &Path) -> LogConfig {
    LogConfig::new(dir)
        .with_segment_bytes(4096)
        .with_retention(Retention::unlimited())
}

/// Child side of the process tests. Mode `hold`: open the log, print READY, wait to be
/// killed. Mode `consume`: consume group `g`, ack the first two deliveries, print
/// `HOLDING <payload>` for the third and wait (unsettled) to be killed.
#[test]
fn rev9_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = match LogTransport::open(
            LogConfig::new(&dir).with_commit_interval(Duration::from_millis(1)),
        ) {
            Ok(l) => l,
            Err(e) => {
                println!("OPEN-ERROR {e}");
                std::process::exit(3);
            }
        };
        if mode == "hold" {
            println!("READY");
            std::io::stdout().flush().unwrap();
            std::future::pending::<()>().await;
        }
        let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
        for i in 0.. {
            let d = next(&mut sub).await;
            if i < 2 {
                println!("ACKED {}", payload(&d));
                d.ack().await.unwrap();
                // Let the commit round write the offset, observed through the inspect API.
                log.flush().await.unwrap();
            } else {
                println!("HOLDING {}", payload(&d));
                std::io::stdout().flush().unwrap();
                std::future::pending::<()>().await;
            }
        }
    });
}

struct Child {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Child {
    fn spawn(dir: &Path, mode: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "review_rev9::rev9_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir)
            .env(MODE_ENV, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines up to and including the first that starts with `prefix`.
    fn until(&self, prefix: &str) -> Vec<String> {
        let mut v = Vec::new();
        loop {
            let l = self
                .lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("child never printed {prefix}; got {v:?}"));
            // libtest prints "test <name> ... " in front of the child's first line.
            let l = match l.find(prefix).or_else(|| l.find("ACKED ")) {
                Some(i) => l[i..].to_owned(),
                None => l,
            };
            assert!(!l.contains("OPEN-ERROR"), "{l}");
            let done = l.starts_with(prefix);
            v.push(l);
            if done {
                return v;
            }
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// docs/log.md, Layout: `LOCK` is "one opener at a time". A second process is refused with
/// `Locked` while the first lives, and may open once the first was killed with SIGKILL.
#[tokio::test]
async fn a_second_process_is_refused_while_the_first_holds_the_log_and_may_open_after_its_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(&log, vec![env("r9.a", "before")]).await;
        close(&log).await;
    }
    let child = Child::spawn(dir.path(), "hold");
    child.until("READY");
    match LogTransport::open(config(dir.path())) {
        Err(OpenError::Locked { path }) => assert!(path.ends_with("LOCK")),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("opened a log another process holds"),
    }
    child.kill9();
    let log = open(dir.path());
    let recs = log.read_range("default", 0, 10).unwrap();
    assert_eq!(
        recs.len(),
        1,
        "the refused opener must not have changed anything"
    );
    close(&log).await;
}

/// A second open in the same process is refused too (the error says "or another open
/// handle"), and after `close` the directory can be opened again.
#[tokio::test]
async fn a_second_open_in_one_process_is_locked_and_close_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert!(matches!(
        LogTransport::open(config(dir.path())),
        Err(OpenError::Locked { .. })
    ));
    close(&log).await;
    let again = LogTransport::open(config(dir.path())).expect("close releases the lock");
    close(&again).await;
}

/// A group member in another process is killed with SIGKILL while it holds a message
/// unsettled: after reopening, the group gets that message again (nothing lost), with every
/// later message, in per-key order; the two messages acked before the kill (and flushed) are
/// not delivered again.
#[tokio::test]
async fn a_member_killed_mid_message_gets_it_redelivered_in_key_order_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        let envs: Vec<Envelope> = (0..8)
            .map(|i| keyed("r9.k", &format!("k{}", i % 2), &format!("m{i}")))
            .collect();
        publish_all(&log, envs).await;
        close(&log).await;
    }
    let child = Child::spawn(dir.path(), "consume");
    let lines = child.until("HOLDING ");
    let acked: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACKED ").map(str::to_owned))
        .collect();
    let held = lines
        .last()
        .unwrap()
        .strip_prefix("HOLDING ")
        .unwrap()
        .to_owned();
    assert_eq!(acked, ["m0", "m1"]);
    assert_eq!(held, "m2");
    child.kill9();

    let log = LogTransport::open(config(dir.path()).with_commit_interval(Duration::from_millis(1)))
        .unwrap();
    assert_eq!(log.committed_offset("default", "g"), Some(2));
    let mut sub = log.subscribe(&pattern("r9.#"), Some("g")).await.unwrap();
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 2..8 {
        let d = next(&mut sub).await;
        let key = d.envelope.header("ordering-key").unwrap().to_owned();
        got.entry(key).or_default().push(payload(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(got["k0"], ["m2", "m4", "m6"]);
    assert_eq!(got["k1"], ["m3", "m5", "m7"]);
    assert!(try_next(&mut sub).is_none());
    close(&log).await;
}

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

/// Committed offsets across restarts: acked 0..3 of 6 then closed; the group resumes at 3,
/// an out-of-order ack (4 acked while 3 unsettled) keeps the committed offset at 3 and 4 is
/// delivered again (docs: "a message acked while an older one is still unsettled ... is
/// delivered again after a restart").
#[tokio::test]
async fn committed_offsets_survive_restarts_and_an_ack_above_a_hole_is_redelivered() {
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
        for _ in 0..3 {
            let d = next(&mut sub).await;
            v.push(payload(&d));
            d.ack().await.unwrap();
        }
        v
    };
    assert_eq!(got, ["3", "4", "5"]);
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
/// stop the other groups of the stream from committing: after a restart, group `a` resumes
/// past what it acked.
#[tokio::test]
#[ignore = "defect: a group name > 65535 bytes makes every OFFSETS write fail, so no group of the stream commits"]
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
            // Refusing the name up front is fine too.
            Err(_) => {}
            Ok(mut l) => next(&mut l).await.ack().await.unwrap(),
        }
        let _ = log.close(std::time::Instant::now() + WAIT).await;
    }
    let log = open(dir.path());
    assert_eq!(
        log.committed_offset("default", "a"),
        Some(3),
        "group a lost its committed offset"
    );
    close(&log).await;
}

/// Compaction (`delete_consumed`) removes a segment only once every durable group is past
/// it: a group that subscribed but has read nothing, or one known only from a previous run,
/// must still get every record.
#[tokio::test]
#[ignore = "defect: delete_consumed removes segments a subscribed durable group that has acked nothing has not read"]
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
