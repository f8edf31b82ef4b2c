//! The writer's rounds written in parts: what is visible and settled when.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::task::{Context, Poll};

use super::*;
use crate::config::Recovery;
use crate::intake::Unsettled;
use crate::record::{self, HEADER};
use crate::stream::StreamShared;

/// A writer on one stream of a log in `dir`, driven by hand (no thread).
fn writer(dir: &Path, config: LogConfig) -> Writer {
    let stream = StreamShared::open(
        "default".to_owned(),
        dir.join("streams").join("default"),
        Vec::new(),
        config.max_record_bytes,
        Recovery::Strict,
    )
    .unwrap();
    Writer::new(
        Arc::new(Intake::new()),
        vec![Arc::new(stream)],
        config,
        PendingCommits::default(),
        Arc::new(Notify::new()),
        Arc::new(WriterStats::default()),
    )
}

fn submit(w: &Writer, payload: &[u8]) -> u64 {
    w.intake
        .submit(payload, &[(0, payload.len())], Waker::noop().clone())
        .unwrap()
}

fn outcome(w: &Writer, ticket: u64) -> Poll<Result<(), Unsettled>> {
    w.intake
        .poll_ticket(ticket, &mut Context::from_waker(Waker::noop()))
}

/// (records visible, visible length) of the stream's last segment, and its file's size.
fn visible(w: &Writer) -> (usize, u64, u64) {
    let idx = lock(&w.streams[0].index);
    let seg = idx.segments.last().unwrap();
    (
        seg.positions.len(),
        seg.len,
        seg.file.metadata().unwrap().len(),
    )
}

/// (offset, payload) of every visible record of the stream, oldest first.
fn records(w: &Writer) -> Vec<(u64, Vec<u8>)> {
    let idx = lock(&w.streams[0].index);
    let mut out = Vec::new();
    for seg in &idx.segments {
        for (i, &pos) in seg.positions.iter().enumerate() {
            let end = seg.positions.get(i + 1).map_or(seg.len, |&p| u64::from(p));
            let mut rec = vec![0u8; (end - u64::from(pos)) as usize];
            fsio::read_exact_at(&seg.file, &mut rec, u64::from(pos)).unwrap();
            out.push((
                record::offset_of(&rec).unwrap(),
                record::payload(&rec).to_vec(),
            ));
        }
    }
    out
}

#[test]
fn records_written_early_in_a_round_whose_sync_fails_are_not_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), LogConfig::new(dir.path()));
    let (_, start_len, _) = visible(&w);
    let t0 = submit(&w, b"first");
    let t1 = submit(&w, b"second");
    assert_eq!(w.write_early(), 2);
    // On the file, but neither visible nor settled.
    let mut header = [0u8; HEADER];
    fsio::read_exact_at(
        &w.streams[0].index.lock().unwrap().segments[0].file,
        &mut header,
        start_len,
    )
    .unwrap();
    assert_ne!(header, [0u8; HEADER], "the early part was written");
    assert_eq!(visible(&w).0, 0);
    assert!(outcome(&w, t0).is_pending());
    let t2 = submit(&w, b"third");
    w.fail_syncs = true;
    w.end_round();
    for t in [t0, t1, t2] {
        assert!(
            matches!(outcome(&w, t), Poll::Ready(Err(Unsettled::Failed(_)))),
            "ticket {t} must fail with its round"
        );
    }
    assert_eq!(
        visible(&w),
        (0, start_len, start_len),
        "the round's bytes are cut from the file"
    );
    // The next round, also written in two parts, takes the same offsets and succeeds.
    w.fail_syncs = false;
    let t3 = submit(&w, b"fourth");
    assert_eq!(w.write_early(), 1);
    let t4 = submit(&w, b"fifth");
    w.end_round();
    assert!(matches!(outcome(&w, t3), Poll::Ready(Ok(()))));
    assert!(matches!(outcome(&w, t4), Poll::Ready(Ok(()))));
    assert_eq!(
        records(&w),
        vec![(0, b"fourth".to_vec()), (1, b"fifth".to_vec())]
    );
}

#[test]
fn a_round_written_in_parts_keeps_its_order_across_a_segment_roll() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(
        dir.path(),
        LogConfig::new(dir.path()).with_segment_bytes(4096),
    );
    let payload = |i: usize| format!("{i:04}").repeat(100).into_bytes();
    let mut tickets = Vec::new();
    let mut next = 0;
    // 4 parts of 5 records of ~420 bytes: the 4 KiB segment rolls inside the second part.
    for _ in 0..4 {
        for _ in 0..5 {
            tickets.push(submit(&w, &payload(next)));
            next += 1;
        }
        assert_eq!(w.write_early(), 5);
    }
    let last = submit(&w, &payload(next));
    w.end_round();
    for t in tickets.into_iter().chain([last]) {
        assert!(matches!(outcome(&w, t), Poll::Ready(Ok(()))));
    }
    let expected: Vec<(u64, Vec<u8>)> = (0..=next).map(|i| (i as u64, payload(i))).collect();
    assert_eq!(records(&w), expected);
    assert!(lock(&w.streams[0].index).segments.len() >= 3, "it rolled");
}
