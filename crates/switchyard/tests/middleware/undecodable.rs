//! Review rev12, items 1 and 2: under `with_default_resilience`, a typed handler's payload that
//! does not decode is dead-lettered at once as `DecodeFailed` with its raw bytes (docs/bus.md
//! "Failures and dead letters"), not retried by the retry layer and reported as
//! `HandlerFailed` after 3 attempts.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use switchyard::{
    Bus, CodecError, Command, DeadLetterReason, Envelope, Kind, Message, SendError, Topic,
};

/// Decode attempts of [`Reading`] (its own static: only the event test decodes it).
static READING_DECODES: AtomicU32 = AtomicU32::new(0);
/// Decode attempts of [`Lookup`] (only the command test decodes it).
static LOOKUP_DECODES: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reading {
    celsius: i32,
}
impl Message for Reading {
    const TOPIC: &'static str = "sensors.reading";
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        READING_DECODES.fetch_add(1, Ordering::SeqCst);
        serde_json::from_slice(bytes).map_err(|e| CodecError {
            direction: switchyard::CodecDirection::Decode,
            type_name: std::any::type_name::<Self>(),
            source: Box::new(e),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lookup {
    key: String,
}
impl Message for Lookup {
    const TOPIC: &'static str = "kv.lookup";
    const KIND: Kind = Kind::Command;
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        LOOKUP_DECODES.fetch_add(1, Ordering::SeqCst);
        serde_json::from_slice(bytes).map_err(|e| CodecError {
            direction: switchyard::CodecDirection::Decode,
            type_name: std::any::type_name::<Self>(),
            source: Box::new(e),
        })
    }
}
impl Command for Lookup {
    type Output = String;
}

const RAW: &[u8] = br#"{"not":"a reading"}"#;

#[tokio::test(start_paused = true)]
async fn an_undecodable_event_is_dead_lettered_at_once_as_decode_failed() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let called = std::sync::Arc::new(AtomicU32::new(0));
    let c = called.clone();
    let sub = bus
        .on("thermostat", move |_r: Reading, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    let env = Envelope::new(Topic::new(Reading::TOPIC).unwrap(), RAW.to_vec());
    let id = env.id.clone();
    bus.publish_envelope(env).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(called.load(Ordering::SeqCst), 0, "the handler never ran");
    assert_eq!(
        READING_DECODES.load(Ordering::SeqCst),
        1,
        "one decode attempt"
    );
    let letter = bus.dead_letters().unwrap().get(&id).expect("dead-lettered");
    assert_eq!(
        (letter.reason, letter.attempts),
        (DeadLetterReason::DecodeFailed, 1),
        "{}",
        letter.error
    );
    assert_eq!(&letter.envelope.payload[..], RAW, "raw bytes kept");
    assert!(
        letter.error.starts_with("cannot decode"),
        "the codec error, not the retry layer's: {}",
        letter.error
    );
    let s = sub.stats();
    assert_eq!((s.decode_failed, s.failed, s.retried), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_command_fails_once_as_not_processed() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let _h = bus
        .handle(|l: Lookup, _| async move { Ok::<_, std::io::Error>(l.key) })
        .start()
        .await
        .unwrap();
    let env = Envelope::new(Topic::new(Lookup::TOPIC).unwrap(), b"null".to_vec());
    let err = bus.send_envelope(env).await.unwrap_err();
    assert!(
        matches!(&err, SendError::NotProcessed(text) if text.starts_with("cannot decode")),
        "{err:?}"
    );
    assert_eq!(
        LOOKUP_DECODES.load(Ordering::SeqCst),
        1,
        "one decode attempt"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].reason, letters[0].attempts),
        (DeadLetterReason::DecodeFailed, 1)
    );
}
