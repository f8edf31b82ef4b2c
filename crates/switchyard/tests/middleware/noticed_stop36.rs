//! Defects noticed at stop 36: under `with_default_resilience`, a value that does not encode
//! (a typed command's reply, a typed publish inside a handler) is not retried: the same value
//! encodes the same way each time. One attempt, dead-lettered with the encode error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, DeadLetterReason, Kind, Message, SendError};

/// A value with no JSON form: serializing it fails, every time.
#[derive(Debug, Clone, PartialEq)]
struct Opaque(u64);

impl Serialize for Opaque {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Opaque has no JSON form"))
    }
}

impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("Opaque has no JSON form"))
    }
}

impl Message for Opaque {
    const TOPIC: &'static str = "opaque.made";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MakeOpaque {
    n: u64,
}
impl Message for MakeOpaque {
    const TOPIC: &'static str = "opaque.make";
    const KIND: Kind = Kind::Command;
}
impl Command for MakeOpaque {
    type Output = Opaque;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick {
    n: u64,
}
impl Message for Tick {
    const TOPIC: &'static str = "clock.tick";
}

/// A raw envelope sender gets a reply envelope, so the typed output is encoded: it fails,
/// and the handler is called once, not once per retry.
#[tokio::test(start_paused = true)]
async fn a_reply_that_does_not_encode_is_not_retried() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _h = bus
        .handle(move |m: MakeOpaque, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::io::Error>(Opaque(m.n)) }
        })
        .start()
        .await
        .unwrap();
    let cmd = MakeOpaque { n: 9 }.to_envelope().unwrap();
    let id = cmd.id.clone();
    let err = bus.send_envelope(cmd).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt: {err:?}");
    match &err {
        SendError::Failed { error, attempts } => {
            assert_eq!(*attempts, 1, "{error}");
            assert!(error.contains("cannot encode"), "{error}");
            assert!(error.contains("no JSON form"), "{error}");
        }
        other => panic!("expected the encoding failure, got {other:?}"),
    }
    let letter = bus.dead_letters().unwrap().get(&id).expect("dead-lettered");
    assert_eq!(
        (letter.reason, letter.attempts),
        (DeadLetterReason::HandlerFailed, 1)
    );
    assert!(letter.error.contains("cannot encode"), "{}", letter.error);
}

/// A handler whose typed publish does not encode (a publish hook reads the bytes, so they
/// are made) fails once and is dead-lettered with the encode error.
#[tokio::test(start_paused = true)]
async fn a_publish_that_does_not_encode_is_not_retried() {
    let bus = Bus::builder()
        .with_default_resilience()
        .publish_hook(|_| Ok(()))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _sub = bus
        .on("ticker", move |t: Tick, ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { ctx.publish(Opaque(t.n)).await }
        })
        .start()
        .await
        .unwrap();
    let tick = Tick { n: 1 }.to_envelope().unwrap();
    let id = tick.id.clone();
    bus.publish_envelope(tick).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt");
    let letter = bus.dead_letters().unwrap().get(&id).expect("dead-lettered");
    assert_eq!(
        (letter.reason, letter.attempts),
        (DeadLetterReason::HandlerFailed, 1),
        "{}",
        letter.error
    );
    assert!(letter.error.contains("cannot encode"), "{}", letter.error);
}

/// Without the resilience stack, the worker classifies the same way: a typed reply that does
/// not encode is permanent, one attempt of `max_attempts(3)`.
#[tokio::test(start_paused = true)]
async fn on_a_plain_bus_a_reply_that_does_not_encode_is_not_retried() {
    let bus = Bus::builder().max_attempts(3).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _h = bus
        .handle(move |m: MakeOpaque, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::io::Error>(Opaque(m.n)) }
        })
        .start()
        .await
        .unwrap();
    let cmd = MakeOpaque { n: 9 }.to_envelope().unwrap();
    let id = cmd.id.clone();
    let err = bus.send_envelope(cmd).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt: {err:?}");
    match &err {
        SendError::Failed { error, attempts } => {
            assert_eq!(*attempts, 1, "{error}");
            assert!(error.contains("no JSON form"), "{error}");
        }
        other => panic!("expected the encoding failure, got {other:?}"),
    }
    let letter = bus.dead_letters().unwrap().get(&id).expect("dead-lettered");
    assert_eq!(
        (letter.reason, letter.attempts),
        (DeadLetterReason::HandlerFailed, 1)
    );
}

/// Without the resilience stack: a handler's typed publish that does not encode (a publish
/// hook makes the bytes be made) is permanent, one attempt of `max_attempts(3)`.
#[tokio::test(start_paused = true)]
async fn on_a_plain_bus_a_publish_that_does_not_encode_is_not_retried() {
    let bus = Bus::builder()
        .max_attempts(3)
        .publish_hook(|_| Ok(()))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _sub = bus
        .on("ticker", move |t: Tick, ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { ctx.publish(Opaque(t.n)).await }
        })
        .start()
        .await
        .unwrap();
    let tick = Tick { n: 1 }.to_envelope().unwrap();
    let id = tick.id.clone();
    bus.publish_envelope(tick).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt");
    let letter = bus.dead_letters().unwrap().get(&id).expect("dead-lettered");
    assert_eq!(
        (letter.reason, letter.attempts),
        (DeadLetterReason::HandlerFailed, 1),
        "{}",
        letter.error
    );
    assert!(letter.error.contains("no JSON form"), "{}", letter.error);
}

/// An application error wrapping `Permanent` (a handler adding context to a permanent
/// failure) is permanent on a plain bus too, as the resilience stack's classifier has it
/// (which looks down the whole chain): one attempt of `max_attempts(3)`.
#[tokio::test(start_paused = true)]
async fn on_a_plain_bus_a_permanent_failure_inside_a_chain_is_not_retried() {
    #[derive(Debug, thiserror::Error)]
    #[error("charging the card")]
    struct Charging(#[source] switchyard::Permanent);

    let bus = Bus::builder().max_attempts(3).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _sub = bus
        .on("charger", move |_t: Tick, _ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<(), _>(Charging(switchyard::Permanent::new(std::io::Error::other(
                    "card declined",
                ))))
            }
        })
        .start()
        .await
        .unwrap();
    let tick = Tick { n: 1 }.to_envelope().unwrap();
    let id = tick.id.clone();
    bus.publish_envelope(tick).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt");
    let letter = bus.dead_letters().unwrap().get(&id).expect("dead-lettered");
    assert_eq!(letter.attempts, 1, "{}", letter.error);
}
