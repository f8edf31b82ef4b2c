//! Review rev30: when the disk fails, through the log's public API in process. Process-wide
//! limits (`ulimit -f`) are exercised on `switchyard serve` children in
//! `crates/switchyard-cli/tests/review_rev30.rs`; here the failures are made with paths the
//! log needs taken by directories, which bites as root too (CI runs as root, where
//! `chmod` does not): a segment roll that cannot create its file, an `OFFSETS` write that
//! cannot create its temporary file, a data dir that is a file, a segment that is a directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_core::{Publisher, Subscriber, TransportErrorKind};
use switchyard_log::{LogConfig, LogTransport, OpenError};

use crate::common::*;

fn stream_dir(dir: &Path) -> PathBuf {
    dir.join("streams/default")
}

/// Payloads of `n` records as stored, in offset order.
fn stored(log: &LogTransport) -> Vec<String> {
    log.read_range("default", 0, 100_000)
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.envelope.payload.to_vec()).unwrap())
        .collect()
}

/// docs/log.md "Layout on disk" (a new segment once the current one reaches
/// `segment_bytes`) and "Durability" (`Always`: `publish` resolves after the `fdatasync` of
/// its batch; a process crash loses nothing): a roll whose new segment cannot be created
/// fails its publish with a typed transport error, at once, not a hang or a panic; every
/// publish that resolved `Ok` before it is read back after a reopen, in order, and the log
/// opens once the obstacle is gone.
#[tokio::test]
async fn a_roll_that_cannot_create_its_segment_fails_the_publish_and_keeps_every_ack() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || LogConfig::new(dir.path()).with_segment_bytes(4096);
    let log = LogTransport::open(cfg()).unwrap();
    // Every base offset a roll could take is a directory: the roll's `create` fails.
    for base in 1..200u64 {
        fs::create_dir_all(stream_dir(dir.path()).join(format!("{base:020}.log"))).unwrap();
    }
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..200 {
        let p = format!("r-{i:03}-{}", "x".repeat(300));
        let r = tokio::time::timeout(WAIT, log.publish(vec![env("a.b", &p)]))
            .await
            .expect("a publish on a failing disk must resolve, not hang");
        match r {
            Ok(_) => acked.push(p),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a 4 KiB segment must roll within 200 records of 300 bytes");
    let text = failure.to_string();
    assert!(!acked.is_empty(), "the first segment took records");
    match &failure {
        switchyard_core::PublishError::Transport(t) => {
            assert_eq!(t.kind, TransportErrorKind::Io, "{failure:?}")
        }
        other => panic!("expected a transport i/o error, got {other:?}"),
    }
    assert!(
        text.contains("default"),
        "the error names the stream: {text}"
    );
    // A second publish is answered too (the writer did not die silently or spin).
    let again = tokio::time::timeout(WAIT, log.publish(vec![env("a.b", "again")]))
        .await
        .expect("the next publish resolves as well");
    assert!(again.is_err(), "the roll is still blocked: {again:?}");
    // What was acknowledged is readable now and after a reopen.
    assert_eq!(stored(&log)[..acked.len()], acked[..]);
    let _ = log
        .close(std::time::Instant::now() + Duration::from_secs(5))
        .await;
    drop(log);
    for base in 1..200u64 {
        fs::remove_dir(stream_dir(dir.path()).join(format!("{base:020}.log"))).unwrap();
    }
    let log = LogTransport::open(cfg()).unwrap();
    let after = stored(&log);
    assert_eq!(after[..acked.len()], acked[..], "acknowledged records lost");
    assert!(
        after.len() <= acked.len() + 1,
        "only the failed publishes' records may be extra: {} stored, {} acked",
        after.len(),
        acked.len()
    );
    // The reopened log rolls and takes writes again.
    for i in 0..30 {
        log.publish(vec![env("a.b", &format!("post-{i}-{}", "y".repeat(300)))])
            .await
            .unwrap();
    }
    close(&log).await;
}

/// docs/log.md "Consumer groups": the committed offset is written every `commit_interval`
/// and on close; after a crash a group resumes at or before it (at-least-once). Acks made
/// while `OFFSETS` cannot be written are not counted as committed: after a reopen the group
/// gets those messages again.
#[tokio::test]
async fn acks_whose_offsets_cannot_be_written_are_delivered_again_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || LogConfig::new(dir.path()).with_commit_interval(Duration::from_millis(10));
    let log = LogTransport::open(cfg()).unwrap();
    let mut sub = log.subscribe(&pattern("a.#"), Some("g")).await.unwrap();
    // `groups/OFFSETS.tmp` (the atomic replace's temporary file) is a directory.
    let blocker = stream_dir(dir.path()).join("groups/OFFSETS.tmp");
    fs::create_dir_all(&blocker).unwrap();
    for i in 0..3 {
        publish_all(&log, vec![env("a.b", &format!("m{i}"))]).await;
    }
    for _ in 0..3 {
        let d = next(&mut sub).await;
        d.ack().await.unwrap();
    }
    // Several commit rounds pass; none can write the file.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_ne!(
        log.committed_offset("default", "g"),
        Some(3),
        "an offset that could not be written is reported as committed"
    );
    drop(sub);
    let _ = log
        .close(std::time::Instant::now() + Duration::from_secs(5))
        .await;
    drop(log);
    fs::remove_dir(&blocker).unwrap();

    let log = LogTransport::open(cfg()).unwrap();
    let mut sub = log.subscribe(&pattern("a.#"), Some("g")).await.unwrap();
    let mut seen = Vec::new();
    let mut held = Vec::new(); // a dropped delivery would be handed out again at once
    for _ in 0..3 {
        let d = next(&mut sub).await;
        seen.push(payload(&d));
        held.push(d);
    }
    assert_eq!(
        seen,
        ["m0", "m1", "m2"],
        "acks never written must come back"
    );
    drop(sub);
    close(&log).await;
}

/// docs/log.md "Consumer groups" (offsets written on close) and the writer's retry: once
/// `OFFSETS` can be written again, the offsets acked meanwhile reach the disk (by the next
/// commit round or at close), so after a reopen the group does not get them again.
#[tokio::test]
async fn acks_made_while_offsets_were_blocked_are_written_once_the_disk_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || LogConfig::new(dir.path()).with_commit_interval(Duration::from_millis(10));
    let log = LogTransport::open(cfg()).unwrap();
    let mut sub = log.subscribe(&pattern("a.#"), Some("g")).await.unwrap();
    let blocker = stream_dir(dir.path()).join("groups/OFFSETS.tmp");
    fs::create_dir_all(&blocker).unwrap();
    for i in 0..3 {
        publish_all(&log, vec![env("a.b", &format!("m{i}"))]).await;
    }
    for _ in 0..3 {
        next(&mut sub).await.ack().await.unwrap();
    }
    fs::remove_dir(&blocker).unwrap();
    // Bounded wait for the retry to land.
    let deadline = std::time::Instant::now() + WAIT;
    while log.committed_offset("default", "g") != Some(3) {
        assert!(
            std::time::Instant::now() < deadline,
            "offsets never written after the disk recovered: {:?}",
            log.committed_offset("default", "g")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(sub);
    close(&log).await;
    let log = LogTransport::open(cfg()).unwrap();
    assert_eq!(log.committed_offset("default", "g"), Some(3));
    let mut sub = log.subscribe(&pattern("a.#"), Some("g")).await.unwrap();
    publish_all(&log, vec![env("a.b", "m3")]).await;
    assert_eq!(
        payload(&next(&mut sub).await),
        "m3",
        "an acked message came back"
    );
    drop(sub);
    close(&log).await;
}

/// docs/log.md (`OpenError::Io`: "a file could not be read or written", with its path): a
/// data dir that is a regular file is a typed error naming the path, not a panic.
#[test]
fn a_data_dir_that_is_a_file_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bus");
    fs::write(&file, b"not a directory").unwrap();
    match LogTransport::open(LogConfig::new(&file)) {
        Err(OpenError::Io { path, .. }) => {
            assert!(path.starts_with(&file), "{path:?} is not under {file:?}")
        }
        Err(e) => panic!("expected OpenError::Io naming {file:?}, got {e:?}"),
        Ok(_) => panic!("a log opened on a regular file"),
    }
    assert_eq!(
        fs::read(&file).unwrap(),
        b"not a directory",
        "the file was changed"
    );
}

/// docs/log.md "Recovery" (damage is a typed `OpenError`, nothing skipped silently): a
/// segment that is a directory is an error naming it, and the records of the other segments
/// are untouched (the log opens again once it is put back).
#[tokio::test]
async fn a_segment_replaced_by_a_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path()).with_segment_bytes(4096)).unwrap();
    for i in 0..40 {
        publish_all(&log, vec![env("a.b", &format!("r{i}-{}", "z".repeat(200)))]).await;
    }
    close(&log).await;
    drop(log);
    let mut segs: Vec<_> = fs::read_dir(stream_dir(dir.path()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    let victim = segs[1].clone();
    let saved = fs::read(&victim).unwrap();
    fs::remove_file(&victim).unwrap();
    fs::create_dir(&victim).unwrap();
    match LogTransport::open(LogConfig::new(dir.path()).with_segment_bytes(4096)) {
        Err(e) => {
            let text = format!("{e}");
            assert!(
                text.contains(victim.file_name().unwrap().to_str().unwrap()),
                "the error does not name {victim:?}: {text}"
            );
        }
        Ok(_) => panic!("a log opened with a segment that is a directory"),
    }
    fs::remove_dir(&victim).unwrap();
    fs::write(&victim, saved).unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path()).with_segment_bytes(4096)).unwrap();
    assert_eq!(stored(&log).len(), 40);
    close(&log).await;
}
