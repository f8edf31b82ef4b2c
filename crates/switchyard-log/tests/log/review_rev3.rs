//! Review rev3: the log surviving a reopen with another configuration. docs/log.md
//! "Recovery": only a torn write at the tail of the newest segment is truncated; "damage
//! anywhere else ... is `OpenError::Corrupt` ... nothing is skipped silently"; under
//! `Always` a record acknowledged is there after reopening.

use switchyard_core::{Envelope, Publisher};
use switchyard_log::LogTransport;

use crate::common::*;

/// Records written under the default `max_record_bytes` (8 MiB), the last one 5000 bytes;
/// the log is reopened with `max_record_bytes = 4096`. The 5000-byte record was acknowledged
/// under `Always` and is intact: it must still be there (or the open must fail with a typed
/// error); the recovery takes it for a torn tail ("bad length") and truncates it, with only
/// a warning.
#[tokio::test]
async fn a_smaller_max_record_bytes_on_reopen_does_not_truncate_acknowledged_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.publish(vec![env("a.b", "small")]).await.unwrap();
    log.publish(vec![Envelope::new(topic("a.b"), vec![7u8; 5000])])
        .await
        .unwrap();
    close(&log).await;

    let mut cfg = config(dir.path());
    cfg.max_record_bytes = 4096;
    match LogTransport::open(cfg) {
        Ok(log) => {
            let n = log.read_range("default", 0, 100).unwrap().len();
            close(&log).await;
            assert_eq!(n, 2, "both acknowledged records are still in the log");
        }
        Err(e) => {
            // A typed refusal is acceptable; the data must still be there afterwards.
            let msg = e.to_string();
            assert!(msg.contains("max_record_bytes"), "a clear error: {msg}");
        }
    }
    let log = open(dir.path());
    let n = log.read_range("default", 0, 100).unwrap().len();
    close(&log).await;
    assert_eq!(
        n, 2,
        "the 5000-byte record survives the reopen with a smaller limit"
    );
}

/// The same with the large record in the middle: the open fails, and the error must not
/// claim the (intact) segment is corrupt without naming the limit that refused it.
#[tokio::test]
async fn a_smaller_max_record_bytes_with_a_large_record_in_the_middle_names_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.publish(vec![Envelope::new(topic("a.b"), vec![7u8; 5000])])
        .await
        .unwrap();
    log.publish(vec![env("a.b", "small")]).await.unwrap();
    close(&log).await;

    let mut cfg = config(dir.path());
    cfg.max_record_bytes = 4096;
    match LogTransport::open(cfg) {
        Ok(log) => {
            let n = log.read_range("default", 0, 100).unwrap().len();
            close(&log).await;
            assert_eq!(n, 2);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("max_record_bytes"), "names the limit: {msg}");
        }
    }
    let log = open(dir.path());
    assert_eq!(log.read_range("default", 0, 100).unwrap().len(), 2);
    close(&log).await;
}
