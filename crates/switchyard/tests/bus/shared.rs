//! Typed handlers that take the message shared (issue 18, fan-out): `bus.on(name, |t:
//! Shared<M>, ctx|)` gets the value the publish made, the same allocation for every
//! subscriber and every attempt, with no clone of it; a message without a value from this
//! process is decoded once per delivery, and one that does not decode is dead-lettered with
//! its raw bytes, as for a handler taking `M`.
//!
//! `Cloned<K>` counts its clones and its decodes (one counter per `K`, so tests running in
//! parallel do not share one).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use switchyard::{Bus, DeadLetterReason, Envelope, Message, Outcome, Shared, Topic};
use tokio::sync::mpsc;

use crate::{WAIT, received};

static CLONES: [AtomicUsize; 7] = [const { AtomicUsize::new(0) }; 7];
static DECODES: [AtomicUsize; 7] = [const { AtomicUsize::new(0) }; 7];

fn clones<const K: usize>() -> usize {
    CLONES[K].load(Ordering::SeqCst)
}

fn decodes<const K: usize>() -> usize {
    DECODES[K].load(Ordering::SeqCst)
}

/// An event with an allocation of its own, whose clones and decodes are counted.
#[derive(Debug, Serialize, PartialEq)]
struct Cloned<const K: usize> {
    n: u64,
    body: String,
}

impl<const K: usize> Cloned<K> {
    fn new(n: u64) -> Self {
        Self {
            n,
            body: format!("body {n}"),
        }
    }
}

impl<const K: usize> Clone for Cloned<K> {
    fn clone(&self) -> Self {
        CLONES[K].fetch_add(1, Ordering::SeqCst);
        Self {
            n: self.n,
            body: self.body.clone(),
        }
    }
}

impl<'de, const K: usize> Deserialize<'de> for Cloned<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            n: u64,
            body: String,
        }
        DECODES[K].fetch_add(1, Ordering::SeqCst);
        Raw::deserialize(d).map(|r| Self {
            n: r.n,
            body: r.body,
        })
    }
}

impl<const K: usize> Message for Cloned<K> {
    const TOPIC: &'static str = "shared.cloned";
}

/// A subscription taking `Cloned<K>` shared that sends on what it got (the `Shared` itself,
/// so the test can compare allocations) and the attempt it got it at; with `fail_first`, the
/// first attempt of each message asks for a retry.
async fn shared<const K: usize>(
    bus: &Bus,
    name: &'static str,
    fail_first: bool,
) -> (
    mpsc::UnboundedReceiver<(Shared<Cloned<K>>, u32)>,
    switchyard::Subscription,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on(name, move |m: Shared<Cloned<K>>, ctx| {
            let tx = tx.clone();
            async move {
                let attempt = ctx.attempt();
                tx.send((m, attempt)).map_err(|e| e.to_string())?;
                if fail_first && attempt == 1 {
                    return Ok::<_, String>(Outcome::retry());
                }
                Ok(Outcome::Ack)
            }
        })
        .retry_delay(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    (rx, sub)
}

#[tokio::test]
async fn every_subscriber_of_a_publish_holds_the_one_value_and_nothing_is_cloned() {
    let bus = Bus::new();
    let mut rxs = Vec::new();
    let mut subs = Vec::new();
    for name in ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"] {
        let (rx, sub) = shared::<0>(&bus, name, false).await;
        rxs.push(rx);
        subs.push(sub);
    }
    let (clones_before, decodes_before) = (clones::<0>(), decodes::<0>());
    bus.publish(Cloned::<0>::new(1)).await.unwrap();
    let mut got = Vec::new();
    for rx in &mut rxs {
        got.extend(received(rx, 1).await);
    }
    let first = &got[0].0;
    assert_eq!(**first, Cloned::new(1));
    for (value, attempt) in &got {
        assert!(Shared::ptr_eq(value, first), "one allocation for all eight");
        assert_eq!(*attempt, 1);
    }
    assert_eq!(clones::<0>() - clones_before, 0, "no clone of the value");
    assert_eq!(decodes::<0>() - decodes_before, 0, "no decode in process");
    // The handlers and the envelopes let go of it: the test's copies are the only holders.
    bus.run_until_idle().await;
    drop(got.split_off(1));
    let (last, _) = got.pop().unwrap();
    assert_eq!(Shared::into_inner(last), Some(Cloned::new(1)));
    assert_eq!(clones::<0>() - clones_before, 0);
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn beside_a_raw_subscriber_the_encoded_publish_is_shared_too() {
    // A raw subscriber reads the payload: the publish is encoded, its value rides beside it.
    let bus = Bus::new();
    let raw = switchyard::testkit::Recorder::start(&bus, Cloned::<5>::TOPIC)
        .await
        .unwrap();
    let (mut a, _a) = shared::<5>(&bus, "a", false).await;
    let (mut b, _b) = shared::<5>(&bus, "b", false).await;
    let (clones_before, decodes_before) = (clones::<5>(), decodes::<5>());
    bus.publish(Cloned::<5>::new(6)).await.unwrap();
    let (x, _) = received(&mut a, 1).await.pop().unwrap();
    let (y, _) = received(&mut b, 1).await.pop().unwrap();
    assert!(Shared::ptr_eq(&x, &y));
    assert_eq!(*x, Cloned::new(6));
    assert_eq!(clones::<5>() - clones_before, 0, "no clone of the value");
    assert_eq!(decodes::<5>() - decodes_before, 0, "no decode in process");
    let envs = raw.wait_for(1, WAIT).await.unwrap();
    assert_eq!(&envs[0].payload[..], br#"{"n":6,"body":"body 6"}"#);
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn retries_see_the_same_value_as_the_first_attempt() {
    let bus = Bus::new();
    let (mut retried, _r) = shared::<1>(&bus, "retried", true).await;
    let (mut other, _o) = shared::<1>(&bus, "other", false).await;
    let clones_before = clones::<1>();
    bus.publish(Cloned::<1>::new(2)).await.unwrap();
    let attempts = received(&mut retried, 2).await;
    let (beside, _) = received(&mut other, 1).await.pop().unwrap();
    assert_eq!(attempts[0].1, 1);
    assert_eq!(attempts[1].1, 2);
    assert!(
        Shared::ptr_eq(&attempts[0].0, &attempts[1].0),
        "the retry holds the same value"
    );
    assert!(Shared::ptr_eq(&attempts[0].0, &beside));
    assert_eq!(*attempts[1].0, Cloned::new(2));
    assert_eq!(clones::<1>() - clones_before, 0, "no clone for the retry");
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn beside_a_handler_taking_its_own_copy_only_that_one_clones() {
    let bus = Bus::new();
    let (mut a, _a) = shared::<2>(&bus, "shared-a", false).await;
    let (mut b, _b) = shared::<2>(&bus, "shared-b", false).await;
    let (tx, mut own) = mpsc::unbounded_channel();
    let _own = bus
        .on("own", move |mut m: Cloned<2>, _ctx| {
            let tx = tx.clone();
            async move {
                m.body.push_str(" changed");
                tx.send(m).map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    let clones_before = clones::<2>();
    bus.publish(Cloned::<2>::new(3)).await.unwrap();
    let (x, _) = received(&mut a, 1).await.pop().unwrap();
    let (y, _) = received(&mut b, 1).await.pop().unwrap();
    let changed = received(&mut own, 1).await.pop().unwrap();
    assert!(Shared::ptr_eq(&x, &y));
    assert_eq!(*x, Cloned::new(3), "the own copy's change is not seen");
    assert_eq!(changed.body, "body 3 changed");
    assert_eq!(
        clones::<2>() - clones_before,
        1,
        "one clone: the own copy's"
    );
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn an_envelope_of_the_encoded_bytes_is_decoded_once_per_delivery() {
    let bus = Bus::new();
    let (mut a, _a) = shared::<3>(&bus, "a", false).await;
    let (mut b, _b) = shared::<3>(&bus, "b", false).await;
    // What a transport delivers: the bytes, no value.
    let env = Cloned::<3>::new(4).to_envelope().unwrap();
    assert!(env.local.is_empty());
    let decodes_before = decodes::<3>();
    bus.publish_envelope(env).await.unwrap();
    let (x, _) = received(&mut a, 1).await.pop().unwrap();
    let (y, _) = received(&mut b, 1).await.pop().unwrap();
    assert_eq!(*x, Cloned::new(4));
    assert_eq!(*y, Cloned::new(4));
    assert_eq!(
        decodes::<3>() - decodes_before,
        2,
        "one decode per delivery"
    );
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn an_undecodable_payload_is_dead_lettered_with_its_raw_bytes() {
    let bus = Bus::new();
    let (mut rx, _s) = shared::<4>(&bus, "strict", false).await;
    let env = Envelope::new(
        Topic::new(Cloned::<4>::TOPIC).unwrap(),
        b"not json".to_vec(),
    );
    let id = env.id.clone();
    bus.publish_envelope(env).await.unwrap();
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().take(&id);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::DecodeFailed);
    assert_eq!(&letters[0].envelope.payload[..], b"not json");
    assert_eq!(letters[0].handler.as_deref(), Some("strict"));
    assert!(rx.try_recv().is_err(), "the handler was not called");
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn a_session_handler_takes_shared_the_value_it_decodes() {
    let bus = Bus::new();
    let session = bus.session("job-9").await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _s = session
        .on("in-session", move |m: Shared<Cloned<6>>, _ctx| {
            let tx = tx.clone();
            async move { tx.send(m).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    let mut env = Cloned::<6>::new(5).to_envelope().unwrap();
    env.headers_mut()
        .insert(switchyard::session::SESSION_HEADER, "job-9");
    bus.publish_envelope(env).await.unwrap();
    assert_eq!(*received(&mut rx, 1).await[0], Cloned::new(5));
    drop(session);
    bus.shutdown(WAIT).await.unwrap();
}
