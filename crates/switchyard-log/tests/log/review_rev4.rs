//! Review rev4: the rewritten encoder and framing (hand-spelled ULIDs, the length's CRC kept
//! between records) read back byte-identical: alternating lengths in one batch, foreign
//! (non-ULID) ids, causation ids, headers, strings past 31 / 255 / 65535 bytes, across a
//! reopen with a lower and then a higher `max_record_bytes`; a pre-1970 timestamp refuses
//! its batch whole and leaves nothing behind.

use std::time::{Duration, UNIX_EPOCH};

use switchyard_core::{Envelope, MessageId, Publisher};
use switchyard_log::LogTransport;

use crate::common::*;

fn fields(e: &Envelope) -> String {
    format!(
        "{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        e.id,
        e.topic,
        e.kind,
        e.correlation_id,
        e.priority,
        e.timestamp,
        e.type_name,
        e.type_version,
        e.payload,
        e.causation_id(),
        e.source(),
        e.target(),
        e.headers(),
        e.content_type(),
    )
}

fn odd_envelopes() -> Vec<Envelope> {
    let mut out = Vec::new();
    let long_topic = format!("a.{}", "t".repeat(253));
    for (i, n) in [0usize, 31, 32, 255, 256, 65_535, 65_536, 70_000, 1, 300]
        .into_iter()
        .enumerate()
    {
        let s = "s".repeat(n);
        let t = if i % 2 == 0 { "a.b" } else { &long_topic };
        let mut e = Envelope::new(topic(t), vec![i as u8; n]);
        if i % 3 == 0 {
            let foreign: MessageId = format!("order-{i}-{}", "x".repeat(n.min(240)))
                .parse()
                .unwrap();
            e.id = foreign;
            // A lower-case ULID is not canonical: it stays a foreign id, spelled as given.
            e = e.with_correlation_id("01arz3ndektsv4rrffq69g5fav".parse().unwrap());
        }
        if i % 2 == 1 {
            let cause = if i == 1 {
                "7ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse().unwrap()
            } else {
                MessageId::new()
            };
            e.set_causation_id(Some(cause));
            e = e
                .with_header("k", s.clone())
                .with_header(format!("h{}", "n".repeat(n.min(1000))), "v")
                .with_source(s.clone())
                .with_target("t")
                .with_content_type("application/x-msgpack");
        }
        e.type_name = (n > 0).then(|| s.as_str().into());
        e.type_version = u32::MAX - i as u32;
        e.timestamp = UNIX_EPOCH + Duration::new(i as u64 * 0x1_0001 * 1000, (i as u32) * 99_999);
        out.push(e);
    }
    out
}

#[tokio::test]
async fn odd_envelopes_of_alternating_lengths_read_back_identical_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let sent = odd_envelopes();
    let log = open(dir.path());
    log.publish(sent.clone()).await.unwrap();
    // The same records again, one by one, then as one batch in reverse (other seeds).
    for e in &sent {
        log.publish(vec![e.clone()]).await.unwrap();
    }
    let mut rev = sent.clone();
    rev.reverse();
    log.publish(rev.clone()).await.unwrap();
    close(&log).await;
    let mut want: Vec<String> = sent.iter().map(fields).collect();
    want.extend(sent.iter().map(fields));
    want.extend(rev.iter().map(fields));

    for max in [4096u32, 64 << 20] {
        let mut cfg = config(dir.path());
        cfg.max_record_bytes = max;
        let log = LogTransport::open(cfg).unwrap();
        let got: Vec<String> = log
            .read_range("default", 0, 1000)
            .unwrap()
            .iter()
            .map(|r| fields(&r.envelope))
            .collect();
        close(&log).await;
        assert_eq!(got.len(), want.len(), "max_record_bytes {max}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "record {i} differs at max_record_bytes {max}");
        }
    }
}

#[tokio::test]
async fn a_timestamp_before_1970_refuses_its_batch_whole_and_the_next_batch_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut old = env("a.b", "old");
    old.timestamp = UNIX_EPOCH - Duration::from_millis(1500);
    let first = env("a.b", "first");
    assert!(log.publish(vec![first, old]).await.is_err());
    let next = env("a.b", "next");
    log.publish(vec![next.clone()]).await.unwrap();
    let got = log.read_range("default", 0, 10).unwrap();
    assert_eq!(got.len(), 1, "nothing of the refused batch was written");
    assert_eq!(fields(&got[0].envelope), fields(&next));
    close(&log).await;
    let log = open(dir.path());
    assert_eq!(log.read_range("default", 0, 10).unwrap().len(), 1);
    close(&log).await;
}
