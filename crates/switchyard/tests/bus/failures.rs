use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard::{Bus, DeadLetterReason, Envelope, Message, Outcome, Topic};

use crate::{Ping, ReadyGate};

#[tokio::test]
async fn panicking_handler_does_not_kill_its_worker() {
    let bus = Bus::builder()
        .max_attempts(2)
        .retry_delay(Duration::ZERO)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let sub = bus
        .on("fragile", move |p: Ping, ctx| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if p.n == 13 {
                    panic!("unlucky number, attempt {}", ctx.attempt());
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 13 }).await.unwrap();
    bus.publish(Ping { n: 14 }).await.unwrap();
    bus.run_until_idle().await;
    let stats = sub.stats();
    assert_eq!(stats.panicked, 2, "both attempts of 13 panicked");
    assert_eq!(
        stats.acked, 1,
        "the next message was handled by the same worker"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Panicked);
    assert_eq!(letters[0].attempts, 2);
    assert!(
        letters[0].error.contains("unlucky number, attempt 2"),
        "{}",
        letters[0].error
    );
    assert_eq!(letters[0].handler.as_deref(), Some("fragile"));
}

#[tokio::test]
async fn undecodable_payload_goes_to_dead_letters_with_raw_bytes() {
    let bus = Bus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let sub = bus
        .on("typed", move |_p: Ping, _| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    let raw: &[u8] = &[0xff, b'{', b'n', 0x00];
    let env = Envelope::new(Topic::new(Ping::TOPIC).unwrap(), raw.to_vec());
    let id = env.id.clone();
    bus.publish_envelope(env).await.unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "handler only saw the valid message"
    );
    let letter = bus.dead_letters().unwrap().get(&id).expect("dead-lettered");
    assert_eq!(letter.reason, DeadLetterReason::DecodeFailed);
    assert_eq!(&letter.envelope.payload[..], raw, "raw bytes kept");
    assert!(letter.error.contains("decode"), "{}", letter.error);
    assert_eq!(letter.attempts, 1, "decode failures are not retried");
    assert_eq!(sub.stats().decode_failed, 1);
}

#[tokio::test]
async fn errors_are_retried_then_dead_lettered_with_the_attempt_visible() {
    let bus = Bus::builder()
        .max_attempts(3)
        .retry_delay(Duration::ZERO)
        .build()
        .unwrap();
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = attempts.clone();
    let sub = bus
        .on("flaky", move |_p: Ping, ctx| {
            let a = a.clone();
            async move {
                a.lock().unwrap().push(ctx.attempt());
                Err::<(), _>(std::io::Error::other("backend down"))
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    let s = sub.stats();
    assert_eq!((s.failed, s.retried, s.dead_lettered), (3, 2, 1));
    let letter = &bus.dead_letters().unwrap().list()[0];
    assert_eq!(letter.reason, DeadLetterReason::HandlerFailed);
    assert!(letter.error.contains("backend down"));
}

#[tokio::test]
async fn handler_retry_outcome_then_success() {
    let bus = Bus::builder().retry_delay(Duration::ZERO).build().unwrap();
    let sub = bus
        .on("eventually", move |_p: Ping, ctx| async move {
            Ok::<_, std::io::Error>(if ctx.attempt() < 2 {
                Outcome::retry()
            } else {
                Outcome::Ack
            })
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    bus.run_until_idle().await;
    let s = sub.stats();
    assert_eq!(
        (s.delivered, s.retried, s.acked, s.dead_lettered),
        (2, 1, 1, 0)
    );
}

#[tokio::test]
async fn reject_goes_straight_to_dead_letters() {
    let bus = Bus::new();
    let sub = bus
        .on("picky", |_p: Ping, _| async move {
            Ok::<_, std::io::Error>(Outcome::reject("not my type"))
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(sub.stats().rejected, 1);
    let letter = &bus.dead_letters().unwrap().list()[0];
    assert_eq!(
        (letter.reason, letter.error.as_str(), letter.attempts),
        (DeadLetterReason::Rejected, "not my type", 1)
    );
}

#[tokio::test]
async fn permanent_errors_skip_the_remaining_attempts() {
    let bus = Bus::builder()
        .max_attempts(5)
        .retry_delay(Duration::ZERO)
        .build()
        .unwrap();
    let sub = bus
        .on("strict", |_p: Ping, _| async move {
            Err::<(), _>(switchyard::Permanent::new("invalid order"))
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(
        sub.stats().delivered,
        1,
        "no retries for a permanent failure"
    );
    let letter = &bus.dead_letters().unwrap().list()[0];
    assert_eq!(
        (letter.attempts, letter.error.as_str()),
        (1, "permanent failure: invalid order")
    );
}

#[tokio::test]
async fn a_handler_that_is_not_ready_leaves_messages_queued() {
    let bus = Bus::new();
    let gate = SharedGate::default();
    let sub = bus
        .subscribe("gated", "test.#", switchyard::boxed(gate.clone()))
        .workers(2)
        .start()
        .await
        .unwrap();
    for n in 0..3 {
        bus.publish(Ping { n }).await.unwrap();
    }
    tokio::task::yield_now().await;
    let info = sub.info();
    assert_eq!(
        (info.depth, info.in_flight),
        (3, 0),
        "no worker takes a message while the handler is not ready"
    );
    gate.set(true);
    bus.run_until_idle().await;
    assert_eq!(gate.handled.load(Ordering::SeqCst), 3);
}

/// A handler that is not ready until opened ([`ReadyGate`]), shared by every worker's clone;
/// counts what it handled.
#[derive(Clone, Default)]
struct SharedGate {
    gate: ReadyGate,
    handled: Arc<AtomicU32>,
}

impl SharedGate {
    fn set(&self, open: bool) {
        self.gate.set(open);
    }
}

impl tower::Service<switchyard::Envelope> for SharedGate {
    type Response = Outcome;
    type Error = switchyard::BoxError;
    type Future = std::future::Ready<Result<Outcome, switchyard::BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.gate.poll(cx)
    }

    fn call(&mut self, _env: switchyard::Envelope) -> Self::Future {
        self.handled.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Outcome::Ack))
    }
}

/// Workers that were idle (waiting for messages) when the handler stopped being ready, as
/// when a breaker opens, must not take messages either: they stay queued.
#[tokio::test(flavor = "current_thread")]
async fn idle_workers_do_not_take_messages_once_the_handler_is_not_ready() {
    let bus = Bus::new();
    let gate = SharedGate::default();
    gate.set(true);
    let sub = bus
        .subscribe("gated", "test.#", switchyard::boxed(gate.clone()))
        .workers(3)
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 0 }).await.unwrap();
    tokio::time::timeout(crate::WAIT, bus.run_until_idle())
        .await
        .unwrap();
    // Every worker has seen the handler ready and waits for a message.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.set(false);
    for n in 1..4 {
        bus.publish(Ping { n }).await.unwrap();
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
        let info = sub.info();
        assert_eq!(
            (info.depth, info.in_flight),
            (3, 0),
            "no worker takes a message while the handler is not ready"
        );
    }
    gate.set(true);
    tokio::time::timeout(crate::WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert_eq!(gate.handled.load(Ordering::SeqCst), 4);
}
