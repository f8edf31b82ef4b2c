//! Command failures as the sender sees them, and `publish_batch` stopping at its first error.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{Command, Kind, Message, Permanent, PublishError, SendError};

use super::{Rig, WAIT, transports};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    reject: bool,
}
impl Message for Charge {
    const TOPIC: &'static str = "rev26.charge";
    const KIND: Kind = Kind::Command;
}
impl Command for Charge {
    type Output = ();
}

/// docs/bus.md "Commands and requests" and "Failures": a handler error after the last
/// attempt reaches the sender as `Failed { error, attempts }` (the bus's `max_attempts`), a
/// `Permanent` error after one attempt; the texts read the same on every transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_reports_the_same_to_its_sender_on_every_transport() {
    for on in transports() {
        let rig = Rig::with(on, |b| {
            b.max_attempts(2).retry_delay(Duration::from_millis(10))
        })
        .await;
        let _h = rig
            .bus
            .handle(|c: Charge, _| async move {
                if c.reject {
                    Err(switchyard::BoxError::from(Permanent::new("card blocked")))
                } else {
                    Err(switchyard::BoxError::from("gateway down"))
                }
            })
            .start()
            .await
            .unwrap();
        match rig.bus.send(Charge { reject: false }).await {
            Err(SendError::Failed { error, attempts }) => {
                assert_eq!(attempts, 2, "{on:?}");
                assert!(error.contains("gateway down"), "{on:?}: {error}");
            }
            other => panic!("{on:?}: {other:?}"),
        }
        let rejected = rig
            .bus
            .request(Charge { reject: true }, Duration::from_secs(2))
            .await;
        match rejected {
            Err(SendError::Failed { error, attempts }) => {
                assert_eq!(attempts, 1, "{on:?}: a permanent error is not retried");
                assert!(error.contains("card blocked"), "{on:?}: {error}");
            }
            other => panic!("{on:?}: {other:?}"),
        }
        let letters = rig.letters.next(on, 2).await;
        let mut attempts: Vec<u32> = letters.iter().map(|l| l.attempts).collect();
        attempts.sort_unstable();
        assert_eq!(attempts, vec![1, 2], "{on:?}: dead letters' attempts");
        rig.end().await;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    text: String,
}
impl Message for Row {
    const TOPIC: &'static str = "rev26.rows";
}

/// docs/features.md "Publish and wait": `publish_batch` publishes in order and stops at the
/// first error, saying how many went out; nothing after the failing message is published.
/// (A raw subscriber is on the topic so every transport encodes, and measures, the messages.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_stops_at_its_first_error_on_every_transport() {
    for on in transports() {
        let rig = Rig::with_subjects(on, &[Row::TOPIC], |b| b.max_message_bytes(600)).await;
        let rec = Recorder::start(&rig.bus, Row::TOPIC).await.unwrap();
        let rows = ["a".to_string(), "x".repeat(2_000), "c".to_string()]
            .into_iter()
            .map(|text| Row { text });
        let err = rig.bus.publish_batch(rows).await.unwrap_err();
        assert_eq!(err.published, 1, "{on:?}: {err:?}");
        assert!(
            matches!(err.error, PublishError::TooLarge(_)),
            "{on:?}: {err:?}"
        );
        rig.bus
            .publish(Row {
                text: "marker".into(),
            })
            .await
            .unwrap();
        let got = rec.wait_for(2, WAIT).await.unwrap();
        let texts: Vec<String> = got
            .iter()
            .map(|e| serde_json::from_slice::<Row>(&e.payload).unwrap().text)
            .collect();
        assert_eq!(texts, vec!["a", "marker"], "{on:?}");
        rig.end().await;
    }
}
