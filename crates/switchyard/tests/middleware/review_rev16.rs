//! Review rev16 at the bus: a request's deadline against the stack's retries, panicking user
//! closures around a subscription (filter, ordering key) next to healthy subscriptions, and
//! dead-letter replay to a topic nobody subscribes to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{
    Backoff, BoxError, Bus, Command, Envelope, Kind, Message, Outcome, SendError, Topic, boxed,
};
use switchyard_middleware::dlq::Replayer;
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    cents: u64,
}
impl Message for Charge {
    const TOPIC: &'static str = "billing.charge";
    const KIND: Kind = Kind::Command;
}
impl Command for Charge {
    type Output = u64;
}

fn ev(topic: &str, payload: &str) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), payload.to_string())
}

fn counting(calls: Arc<AtomicU32>) -> switchyard::BoxHandler {
    boxed(tower::service_fn(move |_e: Envelope| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<Outcome, BoxError>(Outcome::Ack) }
    }))
}

/// A request's deadline does not wait for the stack's retries: the sender gets
/// `SendError::Timeout` at exactly its deadline, while (as documented: "handled to the end
/// in a task of its own") the handler's remaining attempts still run and the message is
/// dead-lettered with all of them. The handler sees the deadline (`delivery.deadline`).
#[tokio::test(start_paused = true)]
async fn a_requests_deadline_does_not_wait_for_the_retries() {
    let bus = Bus::builder()
        .with_default_resilience()
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_secs(5)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let deadlines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, d) = (calls.clone(), deadlines.clone());
    let _h = bus
        .handle(move |_q: Charge, ctx| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                d.lock().unwrap().push(ctx.deadline());
                Err::<u64, std::io::Error>(std::io::Error::other("backend down"))
            }
        })
        .start()
        .await
        .unwrap();
    let t0 = Instant::now();
    let got = bus
        .request(Charge { cents: 5 }, Duration::from_millis(200))
        .await;
    assert!(matches!(got, Err(SendError::Timeout { .. })), "{got:?}");
    assert_eq!(Instant::now() - t0, Duration::from_millis(200));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one attempt before the deadline"
    );
    bus.run_until_idle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the other attempts still ran"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    let seen = deadlines.lock().unwrap();
    assert!(seen.iter().all(|d| d.is_some()), "{seen:?}");
}

/// A panic in one subscription's filter must not keep the message from the other
/// subscriptions of the topic, nor take down the publisher.
///
/// Failed before the fix (3 runs of 3): `publish: Err(JoinError::Panic(Id(3), "filter
/// panics", ...)); the healthy subscription handled 1 of 2`. The filter ran on the publisher's task
/// (`SubShared::accepts`, crates/switchyard/src/state.rs:457, from `admit` in publish.rs)
/// without `catch_unwind`: the panic unwound out of `publish_envelope`, and the subscriptions
/// after the panicking one never got the message. Now captured (`SubShared::admission`).
#[tokio::test(start_paused = true)]
async fn a_panicking_filter_does_not_take_down_other_subscriptions() {
    let bus = Bus::new();
    let good = Arc::new(AtomicU32::new(0));
    let _bad = bus
        .subscribe("bad", "orders.#", counting(Arc::default()))
        .filter(|e| {
            if &e.payload[..] == b"boom" {
                panic!("filter panics");
            }
            true
        })
        .start()
        .await
        .unwrap();
    let _good = bus
        .subscribe("good", "orders.#", counting(good.clone()))
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let published =
        tokio::spawn(async move { b.publish_envelope(ev("orders.placed", "boom")).await });
    let outcome = published.await;
    bus.publish_envelope(ev("orders.placed", "fine"))
        .await
        .unwrap();
    bus.run_until_idle().await;
    let got = good.load(Ordering::SeqCst);
    assert!(
        outcome.is_ok() && got == 2,
        "publish: {outcome:?}; the healthy subscription handled {got} of 2"
    );
}

/// A panic in one subscription's ordering key function: the other subscription still gets
/// the message, the publisher does not panic, and the subscription goes on with the next.
///
/// Failed before the fix (3 runs of 3): `publish: Err(JoinError::Panic(Id(6), "key fn
/// panics", ...)); the healthy subscription handled 1 of 2, the keyed one 1`. The key
/// function ran on the publisher's task without `catch_unwind`; now captured.
#[tokio::test(start_paused = true)]
async fn a_panicking_ordering_key_does_not_take_down_other_subscriptions() {
    let bus = Bus::new();
    let good = Arc::new(AtomicU32::new(0));
    let keyed = Arc::new(AtomicU32::new(0));
    let _bad = bus
        .subscribe("keyed", "orders.#", counting(keyed.clone()))
        .ordering_key(|e| {
            if &e.payload[..] == b"boom" {
                panic!("key fn panics");
            }
            Some("k".into())
        })
        .start()
        .await
        .unwrap();
    let _good = bus
        .subscribe("good", "orders.#", counting(good.clone()))
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let outcome =
        tokio::spawn(async move { b.publish_envelope(ev("orders.placed", "boom")).await }).await;
    bus.publish_envelope(ev("orders.placed", "fine"))
        .await
        .unwrap();
    bus.run_until_idle().await;
    let (got, k) = (good.load(Ordering::SeqCst), keyed.load(Ordering::SeqCst));
    assert!(
        outcome.is_ok() && got == 2 && k >= 1,
        "publish: {outcome:?}; the healthy subscription handled {got} of 2, the keyed one {k}"
    );
}

/// Replay to a topic nobody subscribes to any more: the publish is accepted, so the entry
/// is removed and the message is gone (documented: "removes the entries it replayed" once
/// the publish is accepted). This pins that behaviour: nothing is kept.
#[tokio::test(start_paused = true)]
async fn replay_to_a_topic_with_no_subscription_empties_the_entry() {
    let bus = Bus::builder().max_attempts(1).build().unwrap();
    let sub = bus
        .subscribe(
            "h",
            "orders.#",
            boxed(tower::service_fn(|_e: Envelope| async {
                Err::<Outcome, BoxError>("down".into())
            })),
        )
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ev("orders.placed", "x"))
        .await
        .unwrap();
    bus.run_until_idle().await;
    drop(sub);
    bus.run_until_idle().await;
    let dlq = bus.dead_letters().unwrap();
    assert_eq!(dlq.len(), 1);
    let b = bus.clone();
    let republish = move |env: Envelope| {
        let b = b.clone();
        async move { b.publish_envelope(env).await }
    };
    let report = Replayer::new(dlq, &republish).all().await;
    bus.run_until_idle().await;
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(dlq.len(), 0, "the entry is removed: the message is gone");
}

/// A typed message whose `Deserialize` panics on one payload: "a panic never kills the
/// worker"; the message is dead-lettered with its bytes and the next one is handled.
#[derive(Debug, Clone, Serialize)]
struct Touchy(String);
impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "boom" {
            panic!("decoder panics");
        }
        Ok(Touchy(s))
    }
}
impl Message for Touchy {
    const TOPIC: &'static str = "touchy.ev";
}

#[tokio::test(start_paused = true)]
async fn a_panicking_decoder_dead_letters_the_message_and_the_worker_goes_on() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = handled.clone();
    let _s = bus
        .on("touchy", move |t: Touchy, _ctx| {
            let h = h.clone();
            async move {
                h.lock().unwrap().push(t.0);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ev("touchy.ev", "\"boom\""))
        .await
        .unwrap();
    bus.publish_envelope(ev("touchy.ev", "\"fine\""))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(600), bus.run_until_idle())
        .await
        .expect("the bus settles both");
    assert_eq!(*handled.lock().unwrap(), vec!["fine".to_string()]);
    let letters: Vec<_> = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(&letters[0].envelope.payload[..], b"\"boom\"");
}
