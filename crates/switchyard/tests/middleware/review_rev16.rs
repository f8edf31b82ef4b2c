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

/// A bus whose stack fails `Charge` on every call, counting the calls and recording the
/// deadline each saw; each call takes `work` (virtual time) before it fails.
async fn failing_charges(
    backoff: Duration,
    work: Duration,
) -> (
    Bus,
    switchyard::Subscription,
    Arc<AtomicU32>,
    Arc<std::sync::Mutex<Vec<Option<std::time::Instant>>>>,
) {
    let bus = Bus::builder()
        .with_default_resilience()
        .max_attempts(5)
        .backoff(Backoff::fixed(backoff))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let deadlines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, d) = (calls.clone(), deadlines.clone());
    let h = bus
        .handle(move |_q: Charge, ctx| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                d.lock().unwrap().push(ctx.deadline());
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                Err::<u64, std::io::Error>(std::io::Error::other("backend down"))
            }
        })
        .start()
        .await
        .unwrap();
    (bus, h, calls, deadlines)
}

/// The retries stop at a request's deadline (docs/middleware.md, "Retry"): after the caller
/// timed out, the stack's retry does not make the remaining attempts nor wait their backoff;
/// the message is dead-lettered at once, its one attempt counted, the error naming the
/// deadline. The handler sees the deadline (`ctx.deadline()`).
///
/// Before (review rev16, the test documented it): `the other attempts still ran` (5 calls,
/// the backoffs waited after the sender had gone), dead-lettered with 5 attempts.
/// Failed before the fix: `assertion `left == right` failed: no attempt after the deadline
/// left: 5 right: 1`.
#[tokio::test(start_paused = true)]
async fn a_requests_deadline_ends_the_retries() {
    let (bus, _h, calls, deadlines) =
        failing_charges(Duration::from_millis(10), Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let got = bus
        .request(Charge { cents: 5 }, Duration::from_millis(200))
        .await;
    assert!(matches!(got, Err(SendError::Timeout { .. })), "{got:?}");
    assert_eq!(Instant::now() - t0, Duration::from_millis(200));
    bus.run_until_idle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no attempt after the deadline"
    );
    assert_eq!(
        Instant::now() - t0,
        Duration::from_millis(300),
        "ended when its one attempt did, no backoff waited"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(
        letters[0].reason,
        switchyard::DeadLetterReason::HandlerFailed
    );
    assert!(
        letters[0].error.contains("deadline") && letters[0].error.contains("backend down"),
        "{}",
        letters[0].error
    );
    let seen = deadlines.lock().unwrap();
    assert!(seen.iter().all(|d| d.is_some()), "{seen:?}");
}

/// A backoff that would end past the deadline is not waited: the sender gets the failure
/// (`Failed`, with the attempts made) as soon as the retries cannot finish in time, instead
/// of `Timeout` at the deadline while they go on. Backoffs that end before it are waited.
///
/// Failed before the fix: `Err(Timeout { deadline: 200ms })` (the first case's sender).
#[tokio::test(start_paused = true)]
async fn a_backoff_past_the_deadline_is_not_waited() {
    // Attempt 1 at 0; its 5 s backoff ends past the 200 ms deadline: given up at 0.
    let (bus, _h, calls, _) = failing_charges(Duration::from_secs(5), Duration::ZERO).await;
    let t0 = Instant::now();
    let got = bus
        .request(Charge { cents: 5 }, Duration::from_millis(200))
        .await;
    assert!(
        matches!(&got, Err(SendError::Failed { attempts: 1, error }) if error.contains("deadline")),
        "{got:?}"
    );
    assert_eq!(Instant::now(), t0, "answered at once, not at the deadline");
    bus.run_until_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(bus.dead_letters().unwrap().list()[0].attempts, 1);
    // Attempts at 0, 80 and 160 ms; the next would start at 240, past 200: given up at 160.
    let (bus, _h, calls, _) = failing_charges(Duration::from_millis(80), Duration::ZERO).await;
    let t0 = Instant::now();
    let got = bus
        .request(Charge { cents: 5 }, Duration::from_millis(200))
        .await;
    assert!(
        matches!(&got, Err(SendError::Failed { attempts: 3, .. })),
        "{got:?}"
    );
    assert_eq!(Instant::now() - t0, Duration::from_millis(160));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Without a deadline (`send`), every attempt is made, as before.
    let (bus, _h, calls, _) = failing_charges(Duration::from_secs(5), Duration::ZERO).await;
    let got = bus.send(Charge { cents: 5 }).await;
    assert!(
        matches!(&got, Err(SendError::Failed { attempts: 5, error }) if !error.contains("deadline")),
        "{got:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

/// The bus's own in-place retries (no resilience stack) stop at the deadline the same way:
/// attempts at 0, 80 and 160 ms; the next would start at 240, past the 200 ms deadline, so
/// the message is dead-lettered at 160 with its 3 attempts and the sender told so.
///
/// Failed before the fix: `Err(Timeout { deadline: 200ms })` (and 5 calls in the end).
#[tokio::test(start_paused = true)]
async fn the_buss_own_retries_stop_at_the_deadline_too() {
    let bus = Bus::builder()
        .max_attempts(5)
        .retry_delay(Duration::from_millis(80))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _h = bus
        .handle(move |_q: Charge, _ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<u64, std::io::Error>(std::io::Error::other("backend down")) }
        })
        .start()
        .await
        .unwrap();
    let t0 = Instant::now();
    let got = bus
        .request(Charge { cents: 5 }, Duration::from_millis(200))
        .await;
    assert!(
        matches!(&got, Err(SendError::Failed { attempts: 3, error }) if error.contains("deadline")),
        "{got:?}"
    );
    assert_eq!(Instant::now() - t0, Duration::from_millis(160));
    bus.run_until_idle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0].error.contains("backend down"),
        "{}",
        letters[0].error
    );
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
