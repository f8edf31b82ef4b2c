//! The bus's size limit (`BusBuilder::max_message_bytes`): every way in refuses a larger
//! message at once with a typed error naming both sizes, and delivers nothing.

use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{Bus, DEFAULT_MAX_MESSAGE_BYTES, Envelope, Kind, PublishError, SendError, Topic};

fn big(topic: &str, n: usize) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), vec![7u8; n])
}

#[tokio::test]
async fn a_publish_over_the_limit_is_refused_and_nothing_is_delivered() {
    let bus = Bus::builder().max_message_bytes(1000).build().unwrap();
    let rec = Recorder::start(&bus, "files.*").await.unwrap();
    match bus.publish_envelope(big("files.uploaded", 1001)).await {
        Err(PublishError::TooLarge(e)) => {
            assert_eq!((e.size, e.limit), (1001, 1000));
            assert_eq!(
                e.to_string(),
                "message of 1001 bytes is larger than the bus's max_message_bytes (1000 bytes)"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // exactly at the limit goes through
    bus.publish_envelope(big("files.uploaded", 1000))
        .await
        .unwrap();
    bus.run_until_idle().await;
    let got = rec.envelopes();
    assert_eq!(got.len(), 1, "only the message within the limit arrives");
    assert_eq!(got[0].payload.len(), 1000);
    assert_eq!(bus.pending(), 0, "the refused message is not left pending");
}

#[tokio::test]
async fn send_request_and_schedule_over_the_limit_are_refused() {
    let bus = Bus::builder().max_message_bytes(10).build().unwrap();
    let mut cmd = big("files.store", 11);
    cmd.kind = Kind::Command;
    match bus.send_envelope(cmd.clone()).await {
        Err(SendError::TooLarge(e)) => assert_eq!((e.size, e.limit), (11, 10)),
        other => panic!("expected TooLarge from send, got {other:?}"),
    }
    match bus.request_envelope(cmd, Duration::from_secs(1)).await {
        Err(SendError::TooLarge(e)) => assert_eq!(e.size, 11),
        other => panic!("expected TooLarge from request, got {other:?}"),
    }
    let at = tokio::time::Instant::now() + Duration::from_secs(60);
    match bus.schedule(at, big("files.later", 11)) {
        Err(PublishError::TooLarge(e)) => assert_eq!(e.limit, 10),
        other => panic!("expected TooLarge from schedule, got {other:?}"),
    }
    assert_eq!(bus.pending(), 0);
}

#[tokio::test]
async fn a_hook_output_is_what_is_measured() {
    // A hook that shrinks the payload (as compression would) lets a big message through.
    let bus = Bus::builder()
        .max_message_bytes(100)
        .publish_hook(|env: &mut Envelope| {
            env.payload = env.payload.slice(..10);
            Ok(())
        })
        .build()
        .unwrap();
    bus.publish_envelope(big("files.uploaded", 5000))
        .await
        .unwrap();
}

#[test]
fn the_default_limit_is_sixteen_mib_and_zero_is_invalid() {
    assert_eq!(DEFAULT_MAX_MESSAGE_BYTES, 16 * 1024 * 1024);
    assert!(Bus::builder().max_message_bytes(0).build().is_err());
}
