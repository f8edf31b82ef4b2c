//! Typed messages stay typed in process (issue 18): a typed publish hands every typed handler
//! of its type a clone of the published value instead of decoding the payload, on every
//! attempt; the payload is always there, unchanged, for every other reader.
//!
//! The message types here count their decodes (one counter per type, `Counted<K>`, so tests
//! running in parallel do not share one) or cannot be decoded at all (`Opaque`), so each test
//! fails where a handler decoded what it should have been handed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{Bus, Command, DeadLetterReason, Envelope, Kind, Message, Outcome, Topic};
use tokio::sync::mpsc;

use crate::{WAIT, received};

/// How many times a `Counted<K>` was decoded from bytes, per `K`.
static DECODES: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

fn decodes<const K: usize>() -> usize {
    DECODES[K].load(Ordering::SeqCst)
}

/// An event whose decodes are counted. `log` is what handlers change in their copy.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct Counted<const K: usize> {
    n: u64,
    log: Vec<String>,
}

impl<const K: usize> Counted<K> {
    fn new(n: u64) -> Self {
        Self { n, log: vec![] }
    }
}

impl<'de, const K: usize> Deserialize<'de> for Counted<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            n: u64,
            log: Vec<String>,
        }
        DECODES[K].fetch_add(1, Ordering::SeqCst);
        Raw::deserialize(d).map(|r| Counted { n: r.n, log: r.log })
    }
}

impl<const K: usize> Message for Counted<K> {
    const TOPIC: &'static str = "local.counted";
}

/// A typed subscription that changes its copy of every message (appends its name to `log`)
/// and sends what it got before changing it; with `fail_first`, the first attempt of each
/// message changes its copy and asks for a retry.
async fn typed<const K: usize>(
    bus: &Bus,
    name: &'static str,
    fail_first: bool,
) -> (
    mpsc::UnboundedReceiver<Counted<K>>,
    switchyard::Subscription,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on(name, move |mut m: Counted<K>, ctx| {
            let tx = tx.clone();
            async move {
                let got = m.clone();
                m.log.push(name.to_owned());
                if fail_first && ctx.envelope().delivery.attempt == 1 {
                    return Ok::<_, String>(Outcome::retry());
                }
                tx.send(got).map_err(|e| e.to_string())?;
                // Changed after sending too, in case another handler still shares it.
                m.log.push(format!("{name} again"));
                drop(m);
                Ok(Outcome::Ack)
            }
        })
        .retry_delay(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    (rx, sub)
}

fn sorted<const K: usize>(mut got: Vec<Counted<K>>) -> Vec<Counted<K>> {
    got.sort_unstable_by_key(|m| m.n);
    got
}

const N: u64 = 20;

fn originals<const K: usize>() -> Vec<Counted<K>> {
    (0..N).map(Counted::new).collect()
}

#[tokio::test]
async fn a_fan_out_gives_every_typed_subscriber_its_own_copy_without_decoding() {
    let bus = Bus::new();
    let raw = Recorder::start(&bus, Counted::<0>::TOPIC).await.unwrap();
    let (mut a, _sa) = typed::<0>(&bus, "a", false).await;
    let (mut b, _sb) = typed::<0>(&bus, "b", false).await;
    let (mut c, _sc) = typed::<0>(&bus, "c", false).await;
    let before = decodes::<0>();
    for n in 0..N {
        bus.publish(Counted::<0>::new(n)).await.unwrap();
    }
    for rx in [&mut a, &mut b, &mut c] {
        // Each one saw the value as published, whatever the others did to theirs.
        assert_eq!(sorted(received(rx, N as usize).await), originals::<0>());
    }
    assert_eq!(decodes::<0>() - before, 0, "decoded in process");
    // The raw subscriber beside them gets the JSON bytes as encoded.
    let envs = raw.wait_for(N as usize, WAIT).await.unwrap();
    let env = envs.iter().find(|e| e.payload.starts_with(br#"{"n":3,"#));
    assert_eq!(&env.unwrap().payload[..], br#"{"n":3,"log":[]}"#);
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn a_retry_gets_a_fresh_copy_of_the_original_without_decoding() {
    let bus = Bus::new();
    let (mut rx, _s) = typed::<1>(&bus, "retried", true).await;
    let (mut other, _o) = typed::<1>(&bus, "other", false).await;
    let before = decodes::<1>();
    for n in 0..N {
        bus.publish(Counted::<1>::new(n)).await.unwrap();
    }
    // The first attempt appended to its copy before failing; the retry does not see it.
    assert_eq!(
        sorted(received(&mut rx, N as usize).await),
        originals::<1>()
    );
    assert_eq!(
        sorted(received(&mut other, N as usize).await),
        originals::<1>()
    );
    assert_eq!(decodes::<1>() - before, 0, "decoded in process");
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn another_type_on_the_same_topic_decodes_the_payload() {
    let bus = Bus::new();
    let (mut same, _s) = typed::<2>(&bus, "same", false).await;
    let (mut other, _o) = typed::<3>(&bus, "other", false).await;
    let (before_same, before_other) = (decodes::<2>(), decodes::<3>());
    for n in 0..N {
        bus.publish(Counted::<2>::new(n)).await.unwrap();
    }
    assert_eq!(
        sorted(received(&mut same, N as usize).await),
        originals::<2>()
    );
    assert_eq!(
        sorted(received(&mut other, N as usize).await),
        originals::<3>()
    );
    assert_eq!(decodes::<2>() - before_same, 0);
    assert_eq!(
        decodes::<3>() - before_other,
        N as usize,
        "a `Counted<3>` decodes"
    );
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn with_a_publish_hook_handlers_decode_what_it_left() {
    // A hook that rewrites the payload: every handler gets what it wrote.
    let bus = Bus::builder()
        .publish_hook(|env| {
            env.payload = br#"{"n":99,"log":["hook"]}"#.as_slice().into();
            Ok(())
        })
        .build()
        .unwrap();
    let (mut a, _a) = typed::<4>(&bus, "a", false).await;
    let (mut b, _b) = typed::<4>(&bus, "b", false).await;
    let before = decodes::<4>();
    for n in 0..N {
        bus.publish(Counted::<4>::new(n)).await.unwrap();
    }
    let rewritten = Counted::<4> {
        n: 99,
        log: vec!["hook".into()],
    };
    for rx in [&mut a, &mut b] {
        assert_eq!(
            received(rx, N as usize).await,
            vec![rewritten.clone(); N as usize]
        );
    }
    assert_eq!(decodes::<4>() - before, 2 * N as usize);
    bus.shutdown(WAIT).await.unwrap();

    // A hook that changes the payload to one of the same length: decoded all the same (the
    // value is attached only when no hook ran).
    let bus = Bus::builder()
        .publish_hook(|env| {
            env.payload = env.payload.to_ascii_uppercase().to_ascii_lowercase().into();
            Ok(())
        })
        .build()
        .unwrap();
    let (mut rx, _s) = typed::<5>(&bus, "kept", false).await;
    let before = decodes::<5>();
    for n in 0..N {
        bus.publish(Counted::<5>::new(n)).await.unwrap();
    }
    assert_eq!(
        sorted(received(&mut rx, N as usize).await),
        originals::<5>()
    );
    assert_eq!(decodes::<5>() - before, N as usize);
    bus.shutdown(WAIT).await.unwrap();
}

/// An event that encodes but never decodes: a handler can only have it handed over.
#[derive(Debug, Clone, Serialize, PartialEq)]
struct Opaque(u64);

impl<'de> Deserialize<'de> for Opaque {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("opaque: never decoded"))
    }
}

impl Message for Opaque {
    const TOPIC: &'static str = "local.opaque";
}

#[tokio::test]
async fn undecodable_values_reach_every_subscriber_and_only_payloads_are_dead_lettered() {
    let bus = Bus::new();
    let mut rxs = Vec::new();
    let mut subs = Vec::new();
    for name in ["one", "two", "three"] {
        let (tx, rx) = mpsc::unbounded_channel();
        let sub = bus
            .on(name, move |m: Opaque, _| {
                let tx = tx.clone();
                async move { tx.send(m.0).map_err(|e| e.to_string()) }
            })
            .start()
            .await
            .unwrap();
        rxs.push(rx);
        subs.push(sub);
    }
    bus.publish(Opaque(7)).await.unwrap();
    for rx in &mut rxs {
        assert_eq!(received(rx, 1).await, vec![7]);
    }
    // The same bytes published as an envelope carry no value: each handler decodes, fails,
    // and dead-letters the raw bytes as before.
    let env = Envelope::new(Topic::new(Opaque::TOPIC).unwrap(), b"7".to_vec());
    let id = env.id.clone();
    bus.publish_envelope(env).await.unwrap();
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().take(&id);
    assert_eq!(letters.len(), 3);
    for letter in letters {
        assert_eq!(letter.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(&letter.envelope.payload[..], b"7");
    }
    assert!(bus.dead_letters().unwrap().is_empty());
    for rx in &mut rxs {
        assert!(rx.try_recv().is_err(), "no value for the envelope");
    }
    bus.shutdown(WAIT).await.unwrap();
}

/// A command that encodes but never decodes.
#[derive(Debug, Clone, Serialize)]
struct OpaqueDouble(u64);

impl<'de> Deserialize<'de> for OpaqueDouble {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("opaque: never decoded"))
    }
}

impl Message for OpaqueDouble {
    const TOPIC: &'static str = "local.opaque.double";
    const KIND: Kind = Kind::Command;
}

impl Command for OpaqueDouble {
    type Output = u64;
}

#[tokio::test]
async fn a_typed_send_hands_the_command_over_without_decoding() {
    let bus = Bus::new();
    let _h = bus
        .handle(|c: OpaqueDouble, _| async move { Ok::<_, String>(c.0 * 2) })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(OpaqueDouble(21)).await.unwrap(), 42);
    assert_eq!(
        bus.request(OpaqueDouble(4), WAIT).await.unwrap(),
        8,
        "a request too"
    );
    bus.shutdown(WAIT).await.unwrap();

    // With a publish hook, the handler decodes what the hook left: here it cannot.
    let bus = Bus::builder().publish_hook(|_env| Ok(())).build().unwrap();
    let _h = bus
        .handle(|c: OpaqueDouble, _| async move { Ok::<_, String>(c.0 * 2) })
        .start()
        .await
        .unwrap();
    assert!(bus.send(OpaqueDouble(21)).await.is_err());
    bus.shutdown(WAIT).await.unwrap();
}

/// A card number: the review's case of a handler that masks a payload and passes it on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Card {
    number: String,
}

impl Message for Card {
    const TOPIC: &'static str = "local.cards.raw";
}

/// A raw handler masks the digits of the payload (same length) and publishes the changed copy
/// of its envelope on another topic: the typed handler there gets what that payload says,
/// not the value the first publish carried beside the original payload. Failed before the
/// value was tied to the payload's buffer (the guard compared lengths only, and the copy kept
/// the value): the audit handler got the unmasked number.
#[tokio::test]
async fn a_passed_on_envelope_with_a_rewritten_payload_is_decoded_not_handed_the_old_value() {
    let bus = Bus::new();
    let republisher = bus.clone();
    let _redactor = bus
        .subscribe(
            "redactor",
            Card::TOPIC,
            switchyard::handler_fn(move |env: Envelope| {
                let bus = republisher.clone();
                async move {
                    let mut out = env.clone();
                    out.topic = Topic::new("local.cards.redacted").unwrap();
                    let masked: Vec<u8> = env
                        .payload
                        .iter()
                        .map(|b| if b.is_ascii_digit() { b'*' } else { *b })
                        .collect();
                    out.payload = masked.into();
                    bus.publish_envelope(out).await?;
                    Ok::<_, switchyard::BoxError>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _audit = bus
        .on("audit", move |c: Card, _ctx| {
            let tx = tx.clone();
            async move { tx.send(c).map_err(|e| e.to_string()) }
        })
        .pattern("local.cards.redacted")
        .start()
        .await
        .unwrap();

    bus.publish(Card {
        number: "4111111111111111".into(),
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.number, "****************");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Counts its clones: captured by a handler closure, it tells how often the bus cloned the
/// closure.
struct CloneCounter(std::sync::Arc<AtomicUsize>);

impl Clone for CloneCounter {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, Ordering::SeqCst);
        Self(std::sync::Arc::clone(&self.0))
    }
}

/// A typed handler's closure (event, command, batch) is cloned when its workers start, not
/// once per message: its captures are often reference counts that every subscription shares
/// (a counter, a pool, a channel), which a per-message clone and drop writes from every
/// worker's thread. Failed before the typed wrappers called the handler in `call`: they
/// cloned the closure into the future of every call (N more clones for N messages, per
/// handler).
#[tokio::test]
async fn typed_handlers_are_not_cloned_per_message() {
    let bus = Bus::new();
    let clones = std::sync::Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let captured = CloneCounter(std::sync::Arc::clone(&clones));
    let _event = bus
        .on("counted", move |m: Counted<6>, _ctx| {
            let _keep = &captured;
            let tx = tx.clone();
            async move { tx.send(m.n).map_err(|e| e.to_string()) }
        })
        .workers(2)
        .start()
        .await
        .unwrap();
    let (batch_tx, mut batches) = mpsc::unbounded_channel();
    let batched = CloneCounter(std::sync::Arc::clone(&clones));
    let _batch = bus
        .on_batch("batched", move |ms: Vec<Counted<6>>, _ctx| {
            let _keep = &batched;
            let tx = batch_tx.clone();
            async move {
                for m in ms {
                    tx.send(m.n).map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            }
        })
        .batch(1, Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    let doubled = CloneCounter(std::sync::Arc::clone(&clones));
    let _command = bus
        .handle(move |c: OpaqueDouble, _ctx| {
            let _keep = &doubled;
            async move { Ok::<_, String>(c.0 * 2) }
        })
        .start()
        .await
        .unwrap();
    // A first message each, so anything made lazily for a handler exists before counting.
    bus.publish(Counted::<6>::new(0)).await.unwrap();
    assert_eq!(received(&mut rx, 1).await, vec![0]);
    assert_eq!(received(&mut batches, 1).await, vec![0]);
    assert_eq!(bus.send(OpaqueDouble(1)).await.unwrap(), 2);
    let before = clones.load(Ordering::SeqCst);
    for n in 1..=N {
        bus.publish(Counted::<6>::new(n)).await.unwrap();
        assert_eq!(bus.send(OpaqueDouble(n)).await.unwrap(), 2 * n);
    }
    assert_eq!(
        sorted_n(received(&mut rx, N as usize).await),
        (1..=N).collect::<Vec<_>>()
    );
    assert_eq!(
        sorted_n(received(&mut batches, N as usize).await),
        (1..=N).collect::<Vec<_>>()
    );
    assert_eq!(
        clones.load(Ordering::SeqCst) - before,
        0,
        "a handler closure cloned per message"
    );
    bus.shutdown(WAIT).await.unwrap();
}

fn sorted_n(mut got: Vec<u64>) -> Vec<u64> {
    got.sort_unstable();
    got
}
