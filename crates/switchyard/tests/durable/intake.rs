//! The intake check (`BusBuilder::intake_check`): what arrives over the transport from a
//! publisher that is not this bus is checked before it is queued; a rejected message is
//! dead-lettered with the check's text, never handled, and its delivery settled once.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::channel::mpsc as fmpsc;
use switchyard::{
    AckHandle, BoxFuture, Bus, Capabilities, CloseError, DeadLetterReason, Delivery,
    DeliveryStream, Envelope, IntakeVerdict, Pattern, PublishError, Publisher, SubscribeError,
    Subscriber, Topic, TransportError,
};
use tokio::sync::mpsc;

use crate::{Job, WAIT, n_of};

/// How a delivery was settled: (message id, "ack" | "nack" | "term").
type Settlement = (String, &'static str);

/// A wire between publishers and one subscriber that records every settlement.
#[derive(Clone)]
struct Wire {
    subscriber: Arc<Mutex<Option<fmpsc::UnboundedSender<Delivery>>>>,
    settled: mpsc::UnboundedSender<Settlement>,
}

struct Recorded {
    id: String,
    settled: mpsc::UnboundedSender<Settlement>,
}

impl Recorded {
    fn record(self, how: &'static str) -> BoxFuture<'static, Result<(), TransportError>> {
        let _ = self.settled.send((self.id, how));
        Box::pin(async { Ok(()) })
    }
}

impl AckHandle for Recorded {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.record("ack")
    }
    fn nack(
        self: Box<Self>,
        _: Option<std::time::Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.record("nack")
    }
    fn term(self: Box<Self>, _: String) -> BoxFuture<'static, Result<(), TransportError>> {
        self.record("term")
    }
}

impl Publisher for Wire {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<(), PublishError> {
        let tx = self.subscriber.lock().unwrap().clone();
        for mut env in batch {
            env.delivery.attempt = 1;
            let handle = Recorded {
                id: env.id.to_string(),
                settled: self.settled.clone(),
            };
            if let Some(tx) = &tx {
                tx.unbounded_send(Delivery::new(env, Box::new(handle)))
                    .unwrap();
            }
        }
        Ok(())
    }
    async fn close(&self, _: Instant) -> Result<(), CloseError> {
        Ok(())
    }
}

impl Subscriber for Wire {
    type Stream = DeliveryStream;
    async fn subscribe(
        &self,
        _: &Pattern,
        _: Option<&str>,
    ) -> Result<DeliveryStream, SubscribeError> {
        let (tx, rx) = fmpsc::unbounded();
        *self.subscriber.lock().unwrap() = Some(tx);
        Ok(DeliveryStream::new(rx))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

fn wire() -> (Wire, mpsc::UnboundedReceiver<Settlement>) {
    let (settled, rx) = mpsc::unbounded_channel();
    let wire = Wire {
        subscriber: Arc::default(),
        settled,
    };
    (wire, rx)
}

/// Odd `n` rejected, `n == 2` warned about, the rest accepted.
fn check(env: &Envelope) -> IntakeVerdict {
    match n_of(env) {
        n if n % 2 == 1 => IntakeVerdict::Reject(format!("/n: {n} is odd")),
        2 => IntakeVerdict::Warn("/n: 2 is suspicious".into()),
        _ => IntakeVerdict::Accept,
    }
}

/// Publishes jobs 0..5 straight onto the wire, as a foreign publisher would (no type name),
/// and returns their ids in order.
async fn publish_foreign(wire: &Wire) -> Vec<String> {
    let batch: Vec<Envelope> = (0..5u64)
        .map(|n| {
            Envelope::new(
                Topic::new("jobs.created").unwrap(),
                format!(r#"{{"n": {n}}}"#),
            )
        })
        .collect();
    let ids = batch.iter().map(|e| e.id.to_string()).collect();
    wire.publish(batch).await.unwrap();
    ids
}

async fn start(bus: &Bus) -> (switchyard::Subscription, mpsc::UnboundedReceiver<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on("worker", move |job: Job, _| {
            let tx = tx.clone();
            async move { tx.send(job.n).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    (sub, rx)
}

async fn settlements(rx: &mut mpsc::UnboundedReceiver<Settlement>, n: usize) -> Vec<Settlement> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_message_is_dead_lettered_with_the_reason_never_handled_and_settled_once() {
    let (wire, mut settled) = wire();
    let bus = Bus::builder()
        .transport(wire.clone())
        .intake_check(check)
        .build()
        .unwrap();
    let (sub, mut handled) = start(&bus).await;
    let ids = publish_foreign(&wire).await;

    let mut got = settlements(&mut settled, 5).await;
    bus.run_until_idle().await;
    let mut seen = Vec::new();
    while let Ok(n) = handled.try_recv() {
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        [0, 2, 4],
        "rejected ones are never handled; warned ones are"
    );

    got.sort();
    let mut want: Vec<Settlement> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), if n % 2 == 1 { "term" } else { "ack" }))
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "each delivery settled exactly once, rejected ones terminated"
    );
    assert!(settled.try_recv().is_err(), "no second settlement");

    let mut letters = bus.dead_letters().unwrap().list();
    letters.sort_by_key(|l| n_of(&l.envelope));
    assert_eq!(letters.len(), 2, "{letters:?}");
    for (letter, n) in letters.iter().zip([1u64, 3]) {
        assert_eq!(n_of(&letter.envelope), n);
        assert_eq!(letter.reason, DeadLetterReason::Rejected);
        assert_eq!(letter.error, format!("/n: {n} is odd"));
        assert_eq!(letter.handler.as_deref(), Some("worker"));
    }
    let stats = sub.stats();
    assert_eq!(
        (
            stats.intake_rejected,
            stats.intake_warned,
            stats.dead_lettered
        ),
        (2, 1, 2)
    );
    assert_eq!(bus.pending(), 0);
    bus.shutdown(WAIT).await.unwrap();
}

/// An intake check that panics (on odd `n`) gives that message up as a panicking filter
/// does: dead-lettered `Panicked` with the panic's text, its delivery terminated once,
/// counted; the pump goes on and every other message is handled (review rev39).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_intake_check_dead_letters_that_message_and_the_subscription_goes_on() {
    let (wire, mut settled) = wire();
    let bus = Bus::builder()
        .transport(wire.clone())
        .intake_check(|env: &Envelope| {
            let n = n_of(env);
            assert!(n.is_multiple_of(2), "check: {n} is odd");
            IntakeVerdict::Accept
        })
        .build()
        .unwrap();
    let (sub, mut handled) = start(&bus).await;
    let ids = publish_foreign(&wire).await;

    let mut got = settlements(&mut settled, 5).await;
    bus.run_until_idle().await;
    let mut seen = Vec::new();
    while let Ok(n) = handled.try_recv() {
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 2, 4], "the messages after a panic are handled");
    got.sort();
    let mut want: Vec<Settlement> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.clone(), if n % 2 == 1 { "term" } else { "ack" }))
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "each delivery settled once, the panicked ones terminated"
    );
    let mut letters = bus.dead_letters().unwrap().list();
    letters.sort_by_key(|l| n_of(&l.envelope));
    assert_eq!(letters.len(), 2, "{letters:?}");
    for (letter, n) in letters.iter().zip([1u64, 3]) {
        assert_eq!(n_of(&letter.envelope), n);
        assert_eq!(letter.reason, DeadLetterReason::Panicked);
        assert_eq!(
            letter.error,
            format!("intake check panicked: check: {n} is odd")
        );
        assert_eq!(letter.handler.as_deref(), Some("worker"));
    }
    let stats = sub.stats();
    assert_eq!((stats.panicked, stats.dead_lettered), (2, 2));
    assert_eq!(bus.pending(), 0);
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_intake_check_every_message_is_delivered_as_before() {
    let (wire, mut settled) = wire();
    let bus = Bus::builder().transport(wire.clone()).build().unwrap();
    let (sub, mut handled) = start(&bus).await;
    publish_foreign(&wire).await;

    let got = settlements(&mut settled, 5).await;
    bus.run_until_idle().await;
    let mut seen = Vec::new();
    while let Ok(n) = handled.try_recv() {
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4]);
    assert!(got.iter().all(|(_, how)| *how == "ack"), "{got:?}");
    assert!(bus.dead_letters().unwrap().is_empty());
    let stats = sub.stats();
    assert_eq!((stats.intake_rejected, stats.intake_warned), (0, 0));
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_this_bus_publishes_are_checked_when_they_come_back_over_the_transport() {
    // The bus publishes onto the wire too; what comes back is checked like anything else
    // that arrives over the transport (the check cannot tell who published it).
    let (wire, mut settled) = wire();
    let bus = Bus::builder()
        .transport(wire.clone())
        .intake_check(check)
        .build()
        .unwrap();
    let (_sub, mut handled) = start(&bus).await;
    bus.publish(Job { n: 3 }).await.unwrap();
    bus.publish(Job { n: 4 }).await.unwrap();
    let got = settlements(&mut settled, 2).await;
    assert_eq!(
        got.iter().map(|(_, how)| *how).collect::<Vec<_>>(),
        ["term", "ack"]
    );
    bus.run_until_idle().await;
    assert_eq!(handled.try_recv().unwrap(), 4);
    assert!(handled.try_recv().is_err());
    bus.shutdown(WAIT).await.unwrap();
}

/// Appends `A` on the way out, strips it on the way in.
struct Suffix;
impl switchyard::TransportCodec for Suffix {
    fn encode(&self, env: &mut Envelope) -> Result<(), PublishError> {
        let mut p = env.payload.to_vec();
        p.push(b'A');
        env.payload = p.into();
        Ok(())
    }
    fn decode(&self, env: &mut Envelope) -> Result<(), String> {
        match env.payload.strip_suffix(b"A") {
            Some(rest) => {
                env.payload = rest.to_vec().into();
                Ok(())
            }
            None => Err("no A suffix".into()),
        }
    }
}

/// Reverses the bytes and prefixes `B:` on the way out, undoes both on the way in (so it
/// does not commute with `Suffix`: decoding in the wrong order fails).
struct Prefix;
impl switchyard::TransportCodec for Prefix {
    fn encode(&self, env: &mut Envelope) -> Result<(), PublishError> {
        let reversed: Vec<u8> = env.payload.iter().rev().copied().collect();
        env.payload = [b"B:", &reversed[..]].concat().into();
        Ok(())
    }
    fn decode(&self, env: &mut Envelope) -> Result<(), String> {
        match env.payload.strip_prefix(b"B:") {
            Some(rest) => {
                env.payload = rest.iter().rev().copied().collect::<Vec<u8>>().into();
                Ok(())
            }
            None => Err("no B: prefix".into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_codecs_encode_in_order_decode_in_reverse_and_an_undecodable_message_is_dead_lettered_raw()
 {
    let (wire, mut settled) = wire();
    // The intake check sees what the codecs decoded: it refuses anything that is not JSON.
    let bus = Bus::builder()
        .transport(wire.clone())
        .transport_codec(Suffix)
        .transport_codec(Prefix)
        .intake_check(|env: &Envelope| match env.payload.first() {
            Some(b'{') => IntakeVerdict::Accept,
            _ => IntakeVerdict::Reject("not decoded".into()),
        })
        .build()
        .unwrap();
    let (sub, mut handled) = start(&bus).await;
    // Through the bus: encoded as B:<reversed json + A>, decoded back (in reverse order)
    // before the check and the handler.
    bus.publish(Job { n: 4 }).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, handled.recv())
            .await
            .unwrap()
            .unwrap(),
        4
    );
    // Straight onto the wire: one without the suffix, one not encoded at all.
    let topic = Topic::new("jobs.created").unwrap();
    let no_suffix = Envelope::new(topic.clone(), r#"B:{"n": 5}"#);
    let plain = Envelope::new(topic, r#"{"n": 6}"#);
    wire.publish(vec![no_suffix.clone(), plain.clone()])
        .await
        .unwrap();
    let mut hows: Vec<&str> = settlements(&mut settled, 3)
        .await
        .into_iter()
        .map(|(_, how)| how)
        .collect();
    hows.sort_unstable();
    assert_eq!(hows, ["ack", "term", "term"]);
    bus.run_until_idle().await;
    assert!(
        handled.try_recv().is_err(),
        "undecodable ones are never handled"
    );
    let mut letters = bus.dead_letters().unwrap().list();
    letters.sort_by_key(|l| l.envelope.payload.clone());
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(
        letters[0].envelope.payload, no_suffix.payload,
        "kept as it arrived"
    );
    assert_eq!(letters[0].error, "no A suffix");
    assert_eq!(letters[1].envelope.payload, plain.payload);
    assert_eq!(letters[1].error, "no B: prefix");
    for l in &letters {
        assert_eq!(l.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(l.handler.as_deref(), Some("worker"));
    }
    let stats = sub.stats();
    assert_eq!(
        (
            stats.decode_failed,
            stats.dead_lettered,
            stats.intake_rejected
        ),
        (2, 2, 0)
    );
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn an_in_memory_bus_never_runs_its_codecs() {
    let bus = Bus::builder().transport_codec(Prefix).build().unwrap();
    let (_sub, mut handled) = start(&bus).await;
    bus.publish(Job { n: 8 }).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, handled.recv())
            .await
            .unwrap()
            .unwrap(),
        8
    );
}
