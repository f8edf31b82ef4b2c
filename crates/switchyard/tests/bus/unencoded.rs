//! Typed messages are not serialized in process (issue 18): a typed publish that reaches only
//! typed handlers of its type (nothing else reads the bytes) is never encoded; the bytes are
//! made once, only where they are needed (a raw subscriber, a layer or filter, a dead letter,
//! `Ctx::envelope`).
//!
//! `Enc<K>` counts its encodes per `K` (tests run in parallel) and cannot be decoded, so a
//! handler that decoded instead of taking the value fails the test by dead-lettering.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{Bus, DeadLetterReason, Message, Outcome, PublishError};
use tokio::sync::{mpsc, oneshot};

use crate::{WAIT, received};

static ENCODES: [AtomicUsize; 11] = [const { AtomicUsize::new(0) }; 11];

fn encodes<const K: usize>() -> usize {
    ENCODES[K].load(Ordering::SeqCst)
}

/// An event whose encodes are counted and which no handler can decode.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct Enc<const K: usize> {
    n: u64,
    text: String,
}

impl<const K: usize> Enc<K> {
    fn new(n: u64) -> Self {
        Self {
            n,
            text: format!("value {n}"),
        }
    }
}

impl<'de, const K: usize> Deserialize<'de> for Enc<K> {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "Enc is never decoded in these tests",
        ))
    }
}

impl<const K: usize> Message for Enc<K> {
    const TOPIC: &'static str = "unencoded.enc";

    fn encode(&self) -> Result<switchyard::Bytes, switchyard::CodecError> {
        ENCODES[K].fetch_add(1, Ordering::SeqCst);
        serde_json::to_vec(self)
            .map(switchyard::Bytes::from)
            .map_err(|e| switchyard::CodecError {
                direction: switchyard::CodecDirection::Encode,
                type_name: "Enc",
                source: Box::new(e),
            })
    }
}

/// A typed subscription sending what it gets (and, with `envelope`, the payload it sees).
async fn typed<const K: usize>(
    bus: &Bus,
    name: &'static str,
    envelope: bool,
) -> (
    mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    switchyard::Subscription,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on(name, move |m: Enc<K>, ctx| {
            let tx = tx.clone();
            async move {
                assert_eq!(m.text, format!("value {}", m.n));
                let payload = if envelope {
                    ctx.envelope().payload.to_vec()
                } else {
                    Vec::new()
                };
                tx.send((m.n, payload)).map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    (rx, sub)
}

fn json<const K: usize>(n: u64) -> Vec<u8> {
    serde_json::to_vec(&Enc::<K>::new(n)).unwrap()
}

#[tokio::test]
async fn a_publish_reaching_only_typed_handlers_of_its_type_is_never_encoded() {
    let bus = Bus::new();
    let (mut a, _sa) = typed::<0>(&bus, "a", false).await;
    let (mut b, _sb) = typed::<0>(&bus, "b", false).await;
    for n in 0..20 {
        bus.publish(Enc::<0>::new(n)).await.unwrap();
    }
    for rx in [&mut a, &mut b] {
        let got: Vec<u64> = received(rx, 20).await.into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }
    bus.run_until_idle().await;
    assert_eq!(encodes::<0>(), 0, "nothing needed the bytes");
    assert!(bus.dead_letters().unwrap().is_empty());
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn a_raw_subscriber_gets_the_payload_encoded_once_per_publish() {
    let bus = Bus::new();
    let raw = Recorder::start(&bus, Enc::<1>::TOPIC).await.unwrap();
    let (mut a, _sa) = typed::<1>(&bus, "a", false).await;
    let (mut b, _sb) = typed::<1>(&bus, "b", false).await;
    for n in 0..5 {
        bus.publish(Enc::<1>::new(n)).await.unwrap();
    }
    received(&mut a, 5).await;
    received(&mut b, 5).await;
    let envs = raw.wait_for(5, WAIT).await.unwrap();
    let payloads: Vec<Vec<u8>> = envs.iter().map(|e| e.payload.to_vec()).collect();
    assert_eq!(payloads, (0..5).map(json::<1>).collect::<Vec<_>>());
    assert_eq!(encodes::<1>(), 5, "one encoding per publish, shared by all");
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn a_layer_or_a_filter_on_the_way_gets_the_payload() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let seen = tx.clone();
    let _filtered = bus
        .on("filtered", move |m: Enc<2>, _| {
            let tx = tx.clone();
            async move { tx.send(m.n).map_err(|e| e.to_string()) }
        })
        // A filter reads the bytes: it must see them.
        .filter(move |env| {
            let _ = seen.send(1000 + env.payload.len() as u64);
            !env.payload.is_empty()
        })
        .start()
        .await
        .unwrap();
    bus.publish(Enc::<2>::new(3)).await.unwrap();
    let mut got = received(&mut rx, 2).await;
    got.sort_unstable();
    assert_eq!(got, vec![3, 1000 + json::<2>(3).len() as u64]);
    assert_eq!(encodes::<2>(), 1);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let _layered = bus
        .on("layered", move |m: Enc<3>, _| {
            let tx = tx.clone();
            async move { tx.send(m.n).map_err(|e| e.to_string()) }
        })
        .layer(tower::layer::layer_fn(|inner| inner))
        .start()
        .await
        .unwrap();
    bus.publish(Enc::<3>::new(4)).await.unwrap();
    assert_eq!(received(&mut rx, 1).await, vec![4]);
    assert_eq!(encodes::<3>(), 1, "a layer may read the payload: encoded");
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn ctx_envelope_and_dead_letters_get_the_bytes_made_once() {
    let bus = Bus::new();
    let (mut a, _sa) = typed::<4>(&bus, "a", true).await;
    let (mut b, _sb) = typed::<4>(&bus, "b", true).await;
    let _rejects = bus
        .on("rejects", |_: Enc<4>, _| async {
            Ok::<_, String>(Outcome::reject("not today"))
        })
        .start()
        .await
        .unwrap();
    let value = Enc::<4>::new(9);
    bus.publish(value.clone()).await.unwrap();
    for rx in [&mut a, &mut b] {
        assert_eq!(received(rx, 1).await, vec![(9, json::<4>(9))]);
    }
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Rejected);
    assert_eq!(&letters[0].envelope.payload[..], &json::<4>(9)[..]);
    assert_eq!(
        encodes::<4>(),
        1,
        "two handlers asked for the envelope and one message was dead-lettered: one encoding"
    );
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn a_copy_made_before_another_asked_for_the_bytes_still_takes_the_value() {
    let bus = Bus::new();
    // "first" asks for the envelope (encoding the value); "second" waits for that, then asks
    // for a retry: its second attempt's copy was made from the queued, still empty, envelope.
    let (asked_tx, asked_rx) = oneshot::channel::<()>();
    let asked_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(asked_tx)));
    let _first = bus
        .on("first", move |_: Enc<5>, ctx| {
            let payload_len = ctx.envelope().payload.len();
            let tx = asked_tx.lock().unwrap().take();
            async move {
                assert!(payload_len > 0);
                if let Some(tx) = tx {
                    let _ = tx.send(());
                }
                Ok::<_, String>(())
            }
        })
        .start()
        .await
        .unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Some(asked_rx)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _second = bus
        .on("second", move |m: Enc<5>, ctx| {
            let wait = asked.lock().unwrap().take();
            let tx = tx.clone();
            async move {
                if let Some(wait) = wait {
                    tokio::time::timeout(WAIT, wait).await.unwrap().unwrap();
                }
                if ctx.attempt() == 1 {
                    return Ok::<_, String>(Outcome::retry());
                }
                tx.send(m.n).map_err(|e| e.to_string())?;
                Ok(Outcome::Ack)
            }
        })
        .retry_delay(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    bus.publish(Enc::<5>::new(11)).await.unwrap();
    assert_eq!(received(&mut rx, 1).await, vec![11]);
    bus.run_until_idle().await;
    assert!(
        bus.dead_letters().unwrap().is_empty(),
        "nothing was decoded"
    );
    assert_eq!(encodes::<5>(), 1);
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn the_size_limit_measures_encoded_messages_only() {
    let bus = Bus::builder().max_message_bytes(16).build().unwrap();
    let (mut a, _sa) = typed::<6>(&bus, "a", false).await;
    // Only a typed handler of its type: not encoded, so not measured.
    bus.publish(Enc::<6>::new(1)).await.unwrap();
    assert_eq!(received(&mut a, 1).await, vec![(1, vec![])]);
    // With a raw reader it is encoded, and too large.
    let _raw = Recorder::start(&bus, Enc::<6>::TOPIC).await.unwrap();
    let err = bus.publish(Enc::<6>::new(2)).await.unwrap_err();
    assert!(matches!(err, PublishError::TooLarge(_)), "{err:?}");
    assert_eq!(encodes::<6>(), 1);
    bus.shutdown(WAIT).await.unwrap();
}

/// A command whose encodes are counted (in slot `K`) and which cannot be decoded.
#[derive(Debug, Clone, Serialize)]
struct EncCmd<const K: usize>(u64);

impl<'de, const K: usize> Deserialize<'de> for EncCmd<K> {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "EncCmd is never decoded in these tests",
        ))
    }
}

impl<const K: usize> Message for EncCmd<K> {
    const TOPIC: &'static str = "unencoded.cmd";
    const KIND: switchyard::Kind = switchyard::Kind::Command;

    fn encode(&self) -> Result<switchyard::Bytes, switchyard::CodecError> {
        ENCODES[K].fetch_add(1, Ordering::SeqCst);
        Ok(serde_json::to_vec(&self.0).unwrap().into())
    }
}

impl<const K: usize> switchyard::Command for EncCmd<K> {
    type Output = u64;
}

#[tokio::test]
async fn a_typed_command_to_a_typed_handler_is_never_encoded_and_a_raw_one_gets_bytes() {
    let bus = Bus::new();
    let sub = bus
        .handle(|c: EncCmd<7>, ctx| async move {
            // A handler may still publish and send from its context.
            assert_eq!(ctx.attempt(), 1);
            Ok::<_, String>(c.0 + 1)
        })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(EncCmd::<7>(1)).await.unwrap(), 2);
    assert_eq!(bus.request(EncCmd::<7>(2), WAIT).await.unwrap(), 3);
    assert_eq!(
        encodes::<7>(),
        0,
        "a typed handler of its type took the value"
    );
    drop(sub);
    bus.run_until_idle().await;
    // A raw handler reads the bytes: they are made for it.
    let _raw = bus
        .handle_envelope(
            "raw",
            EncCmd::<7>::TOPIC,
            switchyard::handler_fn(|env: switchyard::Envelope| async move {
                let n: u64 = serde_json::from_slice(&env.payload).map_err(|e| e.to_string())?;
                Ok::<_, String>(Outcome::reply(
                    env.reply(serde_json::to_vec(&(n * 10)).unwrap()),
                ))
            }),
        )
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(EncCmd::<7>(4)).await.unwrap(), 40);
    assert_eq!(encodes::<7>(), 1);
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn a_session_hands_typed_messages_over_as_the_bus_does() {
    let bus = Bus::new();
    let session = bus.session("s-1").await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _events = session
        .on("events", move |m: Enc<8>, _| {
            let tx = tx.clone();
            async move { tx.send(m.n).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    let _commands = session
        .handle(|c: EncCmd<9>, _| async move { Ok::<_, String>(c.0 * 3) })
        .start()
        .await
        .unwrap();
    session.publish(Enc::<8>::new(5)).await.unwrap();
    assert_eq!(received(&mut rx, 1).await, vec![5]);
    assert_eq!(session.send(EncCmd::<9>(7)).await.unwrap(), 21);
    bus.run_until_idle().await;
    assert!(
        bus.dead_letters().unwrap().is_empty(),
        "nothing was decoded"
    );
    assert_eq!((encodes::<8>(), encodes::<9>()), (0, 0));
    bus.shutdown(WAIT).await.unwrap();
}

// Found by review (each failed on db32d88).

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BigCmd(String);

impl Message for BigCmd {
    const TOPIC: &'static str = "unencoded.big";
    const KIND: switchyard::Kind = switchyard::Kind::Command;
}

impl switchyard::Command for BigCmd {
    type Output = u64;
}

#[tokio::test]
async fn a_typed_send_encoded_for_a_raw_or_filtered_handler_is_measured() {
    let bus = Bus::builder().max_message_bytes(16).build().unwrap();
    let raw = bus
        .handle_envelope(
            "raw",
            BigCmd::TOPIC,
            switchyard::handler_fn(|env: switchyard::Envelope| async move {
                let n = env.payload.len() as u64;
                Ok::<_, String>(Outcome::reply(env.reply(serde_json::to_vec(&n).unwrap())))
            }),
        )
        .start()
        .await
        .unwrap();
    let got = bus.send(BigCmd("x".repeat(100))).await;
    assert!(
        matches!(got, Err(switchyard::SendError::TooLarge(_))),
        "{got:?}"
    );
    drop(raw);
    bus.run_until_idle().await;
    let _filtered = bus
        .handle(|c: BigCmd, _| async move { Ok::<_, String>(c.0.len() as u64) })
        .filter(|_| true)
        .start()
        .await
        .unwrap();
    let got = bus.send(BigCmd("x".repeat(100))).await;
    assert!(
        matches!(got, Err(switchyard::SendError::TooLarge(_))),
        "{got:?}"
    );
    // Small enough: handled.
    assert_eq!(bus.send(BigCmd("x".repeat(3))).await.unwrap(), 3);
    bus.shutdown(WAIT).await.unwrap();
}

/// A value whose liveness is observable.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Large {
    text: String,
    /// Held only to be counted: its strong count says how many copies are alive.
    #[serde(skip)]
    #[allow(dead_code)]
    alive: std::sync::Arc<()>,
}

impl Message for Large {
    const TOPIC: &'static str = "unencoded.large";
}

#[tokio::test]
async fn settled_unencoded_values_are_not_kept_for_reuse() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _s = bus
        .on("large", move |m: Large, _| {
            let tx = tx.clone();
            async move { tx.send(m.text.len()).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    let alive = std::sync::Arc::new(());
    for _ in 0..8 {
        bus.publish(Large {
            text: "y".repeat(100_000),
            alive: alive.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(received(&mut rx, 8).await, vec![100_000; 8]);
    // Settled means completed in the queue, where the envelope is kept for reuse or let go.
    bus.run_until_idle().await;
    assert_eq!(
        std::sync::Arc::strong_count(&alive),
        1,
        "settled values of 100 kB are still held"
    );
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn an_emptied_payload_of_an_encoded_copy_stays_empty() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _s = bus
        .on("meta", move |_: crate::Ping, ctx| {
            // What the Postgres outbox does: the rest of the envelope without its payload.
            let mut rest = ctx.envelope().clone();
            rest.payload = switchyard::Bytes::new();
            let mut plain = rest.clone();
            plain.local = Default::default();
            let pair = (
                serde_json::to_string(&rest).unwrap(),
                serde_json::to_string(&plain).unwrap(),
            );
            let tx = tx.clone();
            async move { tx.send(pair).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    bus.publish(crate::Ping { n: 424242 }).await.unwrap();
    let (rest, plain) = received(&mut rx, 1).await.remove(0);
    assert_eq!(rest, plain, "the emptied payload was written back");
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn a_passed_on_envelope_reaches_raw_readers_with_its_bytes() {
    let bus = Bus::new();
    let rec = Recorder::start(&bus, "unencoded.forwarded").await.unwrap();
    let b = bus.clone();
    let _s = bus
        .on("forward", move |_: crate::Ping, _| {
            let b = b.clone();
            async move {
                let mut env = (*switchyard::delivered::current().unwrap()).clone();
                env.topic = switchyard::Topic::new("unencoded.forwarded").unwrap();
                let mut again = env.clone();
                again.id = switchyard::MessageId::new();
                b.publish_envelope_and_wait(env)
                    .await
                    .map_err(|e| e.to_string())?;
                b.publish_envelope(again).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(crate::Ping { n: 5 }).await.unwrap();
    let got = rec.wait_for(2, WAIT).await.unwrap();
    for env in got {
        assert_eq!(&env.payload[..], br#"{"n":5}"#);
    }
    bus.shutdown(WAIT).await.unwrap();
}

/// A value JSON cannot encode (a map with non-string keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Unencodable {
    m: std::collections::BTreeMap<(u8, u8), u8>,
}

impl Message for Unencodable {
    const TOPIC: &'static str = "unencoded.unencodable";
}

#[tokio::test]
async fn an_encode_error_shows_where_the_bytes_are_made() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _s = bus
        .on("typed", move |m: Unencodable, _| {
            let tx = tx.clone();
            async move {
                tx.send(m.m.len()).map_err(|e| e.to_string())?;
                Ok::<_, String>(Outcome::reject("no"))
            }
        })
        .start()
        .await
        .unwrap();
    let value = Unencodable {
        m: [((1, 2), 3)].into_iter().collect(),
    };
    // Only a typed handler of its type reads it: not encoded, so no error here ...
    bus.publish(value.clone()).await.unwrap();
    assert_eq!(received(&mut rx, 1).await, vec![1]);
    bus.run_until_idle().await;
    // ... but its dead letter says why it has no bytes.
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].envelope.payload.is_empty());
    assert!(
        letters[0].error.contains("could not be encoded"),
        "{}",
        letters[0].error
    );
    // With a raw reader it is encoded at the publish, which fails as before.
    let _raw = Recorder::start(&bus, Unencodable::TOPIC).await.unwrap();
    let err = bus.publish(value).await.unwrap_err();
    assert!(matches!(err, PublishError::Encode(_)), "{err:?}");
    bus.shutdown(WAIT).await.unwrap();
}

/// a resilience stack's dedup key read from the payload (a content hash, say) sees an
/// empty payload for a typed publish carried unencoded: every message after the first is
/// acked as a duplicate, never handled.
#[tokio::test]
async fn resilience_dedup_keyed_on_the_payload_sees_every_typed_message() {
    use switchyard::middleware::dedup::{DedupConfig, DedupKey};
    use switchyard::middleware::resilience::ResilienceConfig;
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default().dedup(
                DedupConfig::default()
                    .key_fn(|e| Some(DedupKey::from(&*String::from_utf8_lossy(&e.payload)))),
            )
        })
        .build()
        .unwrap();
    let (mut a, _sa) = typed::<10>(&bus, "a", false).await;
    for n in 0..3 {
        bus.publish(Enc::<10>::new(n)).await.unwrap();
    }
    bus.run_until_idle().await;
    let mut got = Vec::new();
    while let Ok((n, _)) = a.try_recv() {
        got.push(n);
    }
    assert_eq!(got, vec![0, 1, 2], "messages acked as duplicates unhandled");
    bus.shutdown(WAIT).await.unwrap();
}
