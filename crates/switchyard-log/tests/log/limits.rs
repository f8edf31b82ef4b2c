//! The log's size limit: a record over `max_record_bytes` is refused with a typed error naming
//! both sizes, before it is encoded, and nothing of the batch is written.

use switchyard_core::{Envelope, PublishError, Publisher, Subscriber};
use switchyard_log::LogTransport;

use crate::common::*;

#[tokio::test]
async fn a_record_over_max_record_bytes_is_too_large_and_the_batch_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_record_bytes = 4096;
    let log = LogTransport::open(cfg).unwrap();
    assert_eq!(
        Publisher::max_message_bytes(&log),
        Some((4096, "the log's max_record_bytes"))
    );
    let small = env("files.a", "ok");
    let payload_too_big = Envelope::new(topic("files.b"), vec![1u8; 5000]);
    match log.publish(vec![small.clone(), payload_too_big]).await {
        Err(PublishError::TooLarge(e)) => {
            assert_eq!((e.size, e.limit), (5000, 4096));
            assert!(e.to_string().contains("max_record_bytes"), "{e}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A payload under the limit whose headers push the encoded record over it.
    let headers_too_big =
        Envelope::new(topic("files.c"), vec![1u8; 4000]).with_header("note", "x".repeat(500));
    match log.publish(vec![headers_too_big]).await {
        Err(PublishError::TooLarge(e)) => {
            assert!(e.size > 4096 && e.limit == 4096, "{e}");
        }
        other => panic!("expected TooLarge for the encoded record, got {other:?}"),
    }
    // Nothing of the refused batches was written: the first message readable is the next one.
    log.publish(vec![env("files.d", "after")]).await.unwrap();
    let mut sub = log.subscribe(&pattern("files.*"), Some("g")).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(payload(&d), "after");
    d.ack().await.unwrap();
    assert!(try_next(&mut sub).is_none());
    close(&log).await;
}
