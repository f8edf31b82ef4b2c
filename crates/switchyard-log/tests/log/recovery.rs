//! Recovery: torn tails are truncated, damage elsewhere is a typed error.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use switchyard_core::Subscriber;
use switchyard_log::{CorruptionKind, LogTransport, OpenError};

use crate::common::*;

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("streams/default"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

async fn fill(dir: &Path, n: usize, segment_bytes: u64) {
    let log = LogTransport::open(config(dir).with_segment_bytes(segment_bytes)).unwrap();
    for i in 0..n {
        publish_all(
            &log,
            vec![env("a.b", &format!("record-{i:04}-{}", "p".repeat(200)))],
        )
        .await;
    }
    close(&log).await;
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0xA5;
    fs::write(path, bytes).unwrap();
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

async fn count(dir: &Path) -> Result<usize, OpenError> {
    let log = LogTransport::open(config(dir))?;
    let n = log.read_range("default", 0, 100_000).unwrap().len();
    // The log still takes writes after recovery, and they are readable after a reopen.
    publish_all(&log, vec![env("a.b", "after")]).await;
    close(&log).await;
    let log = LogTransport::open(config(dir))?;
    let m = log.read_range("default", 0, 100_000).unwrap().len();
    assert_eq!(m, n + 1);
    close(&log).await;
    Ok(n)
}

#[tokio::test]
async fn flipped_byte_in_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10, 1 << 20).await;
    let seg = &segments(dir.path())[0];
    flip(seg, len(seg) - 3);
    assert_eq!(count(dir.path()).await.unwrap(), 9);
}

#[tokio::test]
async fn truncated_mid_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10, 1 << 20).await;
    let seg = &segments(dir.path())[0];
    let f = OpenOptions::new().write(true).open(seg).unwrap();
    f.set_len(len(seg) - 50).unwrap();
    drop(f);
    assert_eq!(count(dir.path()).await.unwrap(), 9);
    // Now 10 records; cutting 200 bytes drops the small last one and part of the one
    // before it.
    let f = OpenOptions::new().write(true).open(seg).unwrap();
    f.set_len(len(seg) - 200).unwrap();
    drop(f);
    assert_eq!(count(dir.path()).await.unwrap(), 8);
}

#[tokio::test]
async fn garbage_after_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5, 1 << 20).await;
    let seg = &segments(dir.path())[0];
    let before = len(seg);
    let mut bytes = fs::read(seg).unwrap();
    bytes.extend_from_slice(&[0xAB; 37]);
    fs::write(seg, bytes).unwrap();
    let log = LogTransport::open(config(dir.path())).unwrap();
    assert_eq!(len(seg), before, "the garbage is cut at open");
    close(&log).await;
    assert_eq!(count(dir.path()).await.unwrap(), 5);
}

#[tokio::test]
async fn zero_tail_is_the_clean_end_and_close_trims_it() {
    // What a crash leaves: the writer writes zeros ahead of the data so that a sync does
    // not have to write the file's size; after `kill -9` they are still there.
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5, 1 << 20).await;
    let seg = &segments(dir.path())[0];
    let closed_len = len(seg);
    let mut bytes = fs::read(seg).unwrap();
    bytes.extend_from_slice(&[0u8; 10_000]);
    fs::write(seg, bytes).unwrap();
    let log = LogTransport::open(config(dir.path())).unwrap();
    assert_eq!(log.read_range("default", 0, 100).unwrap().len(), 5);
    assert_eq!(log.streams()[0].bytes, closed_len);
    publish_all(&log, vec![env("a.b", "after")]).await;
    assert_eq!(log.read_range("default", 0, 100).unwrap().len(), 6);
    assert_eq!(
        len(seg),
        closed_len + 10_000,
        "the zeros are written over, not appended to"
    );
    close(&log).await;
    let after = len(seg);
    assert!(
        after > closed_len && after < closed_len + 1000,
        "trimmed at close: {after}"
    );
    assert_eq!(count(dir.path()).await.unwrap(), 6);
}

#[tokio::test]
async fn a_segment_is_trimmed_at_a_roll() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60, 4096).await;
    let segs = segments(dir.path());
    assert!(segs.len() > 2);
    for s in &segs[..segs.len() - 1] {
        let bytes = fs::read(s).unwrap();
        assert_ne!(bytes.last(), Some(&0), "{} ends with zeros", s.display());
        assert!(
            bytes.len() < 4096 + 1000,
            "{} is {} bytes",
            s.display(),
            bytes.len()
        );
    }
}

#[tokio::test]
async fn flipped_byte_in_the_middle_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10, 1 << 20).await;
    let seg = &segments(dir.path())[0];
    flip(seg, len(seg) / 2);
    match LogTransport::open(config(dir.path())) {
        Err(OpenError::Corrupt(c)) => {
            assert!(matches!(
                c.kind,
                CorruptionKind::BadChecksum | CorruptionKind::BadLength | CorruptionKind::BadOffset
            ));
            assert_eq!(&c.path, seg);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Nothing was truncated.
    assert_eq!(fs::read(seg).unwrap().len() as u64, len(seg));
    // An operator may choose to drop everything from the damage on.
    let log = LogTransport::open(
        config(dir.path()).with_recovery(switchyard_log::Recovery::TruncateNewestSegment),
    )
    .unwrap();
    let n = log.read_range("default", 0, 100).unwrap().len();
    assert!((3..=5).contains(&n), "{n}");
    close(&log).await;
}

#[tokio::test]
async fn damage_in_an_older_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60, 4096).await;
    let segs = segments(dir.path());
    assert!(segs.len() > 2);
    // Even the very last byte of a closed segment.
    flip(&segs[0], len(&segs[0]) - 1);
    assert!(matches!(
        LogTransport::open(config(dir.path())),
        Err(OpenError::Corrupt(_))
    ));
}

#[tokio::test]
async fn missing_middle_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60, 4096).await;
    let segs = segments(dir.path());
    fs::remove_file(&segs[1]).unwrap();
    match LogTransport::open(config(dir.path())) {
        Err(OpenError::Corrupt(c)) => assert_eq!(c.kind, CorruptionKind::Gap),
        other => panic!("expected a gap, got {other:?}"),
    }
}

#[tokio::test]
async fn torn_segment_header_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3, 1 << 20).await;
    // A crash right after creating the next segment file.
    let next = dir.path().join("streams/default/00000000000000000003.log");
    fs::write(&next, b"SWY").unwrap();
    assert_eq!(count(dir.path()).await.unwrap(), 3);
}

#[tokio::test]
async fn groups_resume_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(&log, (0..6).map(|i| env("a.b", &i.to_string())).collect()).await;
        let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
        for _ in 0..3 {
            next(&mut sub).await.ack().await.unwrap();
        }
        drop(sub);
        close(&log).await;
    }
    let seg = &segments(dir.path())[0];
    flip(seg, len(seg) - 1);
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for i in 3..5 {
        let d = next(&mut sub).await;
        assert_eq!(payload(&d), i.to_string());
        d.ack().await.unwrap();
    }
    assert!(try_next(&mut sub).is_none());
    close(&log).await;
}

#[tokio::test]
async fn the_writer_writes_ahead_and_close_trims() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(config(dir.path())).unwrap();
    publish_all(&log, vec![env("a.b", "one")]).await;
    let seg = &segments(dir.path())[0];
    let visible = log.streams()[0].bytes;
    assert!(
        len(seg) >= visible + (1 << 20),
        "{} bytes on disk",
        len(seg)
    );
    close(&log).await;
    assert_eq!(len(seg), visible);
}

#[tokio::test]
async fn zeros_are_not_written_past_the_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(config(dir.path()).with_segment_bytes(8192)).unwrap();
    publish_all(&log, vec![env("a.b", "one")]).await;
    let seg = &segments(dir.path())[0];
    assert_eq!(len(seg), 8192);
    close(&log).await;
    assert_eq!(len(seg), log.streams()[0].bytes);
}

/// Issue 13 item 7: a power loss under `Never`/`Interval` (or a truncating recovery) can
/// leave a group's committed offset past the end of the recovered data. Here the stream ends
/// at 50 after the loss while the group's offset file says 100. New records then take the
/// offsets 50.. again; none of them may be skipped, even when they are published in one
/// session and consumed in a later one.
#[tokio::test]
async fn group_offset_past_a_lost_tail_is_clamped_when_the_stream_opens() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("streams/default/00000000000000000000.log");
    let log = open(dir.path());
    publish_all(
        &log,
        (0..50).map(|i| env("a.b", &format!("old-{i}"))).collect(),
    )
    .await;
    close(&log).await;
    drop(log);
    // The data as the disk will have it after the loss.
    let before_loss = fs::read(&seg).unwrap();
    let log = open(dir.path());
    publish_all(
        &log,
        (50..100).map(|i| env("a.b", &format!("old-{i}"))).collect(),
    )
    .await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for _ in 0..100 {
        next(&mut sub).await.ack().await.unwrap();
    }
    drop(sub);
    close(&log).await;
    drop(log);
    fs::write(&seg, &before_loss).unwrap();

    // The stream recovers to 50 and the group's offset is brought back to it at once.
    let log = open(dir.path());
    assert_eq!(log.streams()[0].next_offset, 50);
    assert_eq!(log.committed_offset("default", "g"), Some(50));
    // 40 acknowledged publishes with the group away, then a restart, then 40 more.
    publish_all(
        &log,
        (0..40).map(|i| env("a.b", &format!("new-{i}"))).collect(),
    )
    .await;
    close(&log).await;
    drop(log);
    let log = open(dir.path());
    publish_all(
        &log,
        (40..80).map(|i| env("a.b", &format!("new-{i}"))).collect(),
    )
    .await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for i in 0..80 {
        let d = next(&mut sub).await;
        assert_eq!(payload(&d), format!("new-{i}"));
        d.ack().await.unwrap();
    }
    assert!(try_next(&mut sub).is_none());
    close(&log).await;
}

fn manifest(dir: &Path) -> PathBuf {
    dir.join("streams/default/MANIFEST")
}

/// Issue 13 item 9: the newest segment file deleted while the log was closed used to be
/// accepted, and its offsets handed to new records.
#[tokio::test]
async fn missing_newest_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60, 4096).await;
    let segs = segments(dir.path());
    assert!(segs.len() > 2);
    let newest = segs.last().unwrap();
    fs::remove_file(newest).unwrap();
    match LogTransport::open(config(dir.path())) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!(c.kind, CorruptionKind::MissingSegment);
            assert_eq!(&c.path, newest);
        }
        other => panic!("expected a missing segment, got {other:?}"),
    }
    // Nothing was changed by the refusal: the remaining segments are as they were.
    assert_eq!(segments(dir.path()), segs[..segs.len() - 1]);
    // The documented way to accept the loss: remove the manifest. The log then takes the
    // segments as they are, and the offsets of the lost records are given out again.
    fs::remove_file(manifest(dir.path())).unwrap();
    let log = LogTransport::open(config(dir.path())).unwrap();
    let end = log.streams()[0].next_offset;
    assert!(end < 60 && end > 0, "{end}");
    close(&log).await;
    assert!(manifest(dir.path()).exists());
}

/// Issue 13 item 9: the same for the oldest segment (retention removes oldest segments too,
/// but it records that in the manifest first).
#[tokio::test]
async fn missing_oldest_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60, 4096).await;
    let segs = segments(dir.path());
    fs::remove_file(&segs[0]).unwrap();
    match LogTransport::open(config(dir.path())) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!(c.kind, CorruptionKind::MissingSegment);
            assert_eq!(c.path, segs[0]);
            assert_eq!(c.offset, 0);
        }
        other => panic!("expected a missing segment, got {other:?}"),
    }
}

/// Every segment of a stream deleted: refused too, rather than starting again at offset 0.
#[tokio::test]
async fn all_segments_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5, 1 << 20).await;
    for seg in segments(dir.path()) {
        fs::remove_file(seg).unwrap();
    }
    match LogTransport::open(config(dir.path())) {
        Err(OpenError::Corrupt(c)) => assert_eq!(c.kind, CorruptionKind::MissingSegment),
        other => panic!("expected a missing segment, got {other:?}"),
    }
}

/// A log written before manifests existed (or whose manifest was removed on purpose) opens
/// as found and gets a manifest, which then guards it.
#[tokio::test]
async fn a_log_without_a_manifest_opens_and_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60, 4096).await;
    fs::remove_file(manifest(dir.path())).unwrap();
    assert_eq!(count(dir.path()).await.unwrap(), 60);
    assert!(manifest(dir.path()).exists());
    let segs = segments(dir.path());
    fs::remove_file(segs.last().unwrap()).unwrap();
    assert!(matches!(
        LogTransport::open(config(dir.path())),
        Err(OpenError::Corrupt(c)) if c.kind == CorruptionKind::MissingSegment
    ));
}

/// A damaged manifest is refused (it can no longer vouch for the segments), with the same
/// way out: remove it.
#[tokio::test]
async fn a_damaged_manifest_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10, 1 << 20).await;
    flip(&manifest(dir.path()), 9);
    match LogTransport::open(config(dir.path())) {
        Err(OpenError::Corrupt(c)) => {
            assert_eq!(c.kind, CorruptionKind::BadManifest);
            assert_eq!(c.path, manifest(dir.path()));
        }
        other => panic!("expected a damaged manifest, got {other:?}"),
    }
    fs::remove_file(manifest(dir.path())).unwrap();
    assert_eq!(count(dir.path()).await.unwrap(), 10);
}

/// A damaged committed-offsets file is not an error: the groups start again from the oldest
/// record (at-least-once: nothing skipped, some records again), with a warning.
#[tokio::test]
async fn a_damaged_offsets_file_restarts_the_groups_from_the_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, (0..5).map(|i| env("a.b", &i.to_string())).collect()).await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for _ in 0..3 {
        next(&mut sub).await.ack().await.unwrap();
    }
    drop(sub);
    close(&log).await;
    drop(log);
    let offsets = dir.path().join("streams/default/groups/OFFSETS");
    flip(&offsets, 14);
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for i in 0..5 {
        let d = next(&mut sub).await;
        assert_eq!(payload(&d), i.to_string());
        d.ack().await.unwrap();
    }
    close(&log).await;
}

/// The committed offsets of every group of a stream are one file, written with one sync per
/// commit round however many groups moved (one file per group cost a sync each, on the
/// writer thread, in front of the next appends). Reopened, every group resumes where it was.
#[tokio::test]
async fn the_offsets_of_many_groups_are_one_file_and_survive_a_reopen() {
    const GROUPS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, (0..3).map(|i| env("a.b", &i.to_string())).collect()).await;
    for g in 0..GROUPS {
        let mut sub = log
            .subscribe(&pattern("a.b"), Some(&format!("group-{g}")))
            .await
            .unwrap();
        // Group g settles (g % 3) records.
        for _ in 0..g % 3 {
            next(&mut sub).await.ack().await.unwrap();
        }
    }
    log.flush().await.unwrap();
    let groups_dir = dir.path().join("streams/default/groups");
    let files: Vec<String> = fs::read_dir(&groups_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files,
        vec!["OFFSETS".to_owned()],
        "one file for every group"
    );
    close(&log).await;
    drop(log);
    let log = open(dir.path());
    for g in 0..GROUPS {
        assert_eq!(
            log.committed_offset("default", &format!("group-{g}")),
            Some((g % 3) as u64),
            "group-{g} (a group that settled nothing is recorded at its start, 0)"
        );
    }
    close(&log).await;
}

/// Per-group offset files of the older layout are read at open, folded into the offsets
/// file and removed.
#[tokio::test]
async fn per_group_offset_files_of_the_older_layout_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, (0..5).map(|i| env("a.b", &i.to_string())).collect()).await;
    close(&log).await;
    drop(log);
    // `[offset u64 LE][crc32c of those 8 bytes u32 LE]`, as older versions wrote it.
    let groups_dir = dir.path().join("streams/default/groups");
    let mut old = 3u64.to_le_bytes().to_vec();
    old.extend_from_slice(&crc32c::crc32c(&3u64.to_le_bytes()).to_le_bytes());
    fs::write(groups_dir.join("old%2Dstyle.offset"), &old).unwrap();
    let log = open(dir.path());
    assert_eq!(log.committed_offset("default", "old-style"), Some(3));
    assert!(!groups_dir.join("old%2Dstyle.offset").exists());
    assert!(groups_dir.join("OFFSETS").exists());
    let mut sub = log
        .subscribe(&pattern("a.b"), Some("old-style"))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(payload(&d), "3", "resumes at the migrated offset");
    d.ack().await.unwrap();
    drop(sub);
    close(&log).await;
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.committed_offset("default", "old-style"), Some(4));
    close(&log).await;
}
