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

/// What a typed handler's context shows on each attempt, read while the handler runs.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    attempt: u32,
    correlation: switchyard::MessageId,
    header: Option<String>,
    env_attempt: u32,
    env_id: switchyard::MessageId,
    env_correlation: switchyard::MessageId,
    first_delivered_at: Option<std::time::SystemTime>,
    payload: Vec<u8>,
}

/// A typed handler's `Ctx` is the attempt's: on a retry it shows that attempt's number (also
/// in `envelope().delivery`), the first delivery time of the first attempt, and the
/// message's correlation id and headers, whether the value came with the message (`publish`)
/// or was decoded (`publish_envelope`).
#[tokio::test]
async fn a_typed_handlers_ctx_sees_each_attempts_delivery_and_the_correlation_id() {
    let bus = Bus::builder()
        .max_attempts(2)
        .retry_delay(Duration::ZERO)
        .build()
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Seen>::new()));
    let s = seen.clone();
    let _sub = bus
        .on("retried", move |p: Ping, ctx| {
            let s = s.clone();
            async move {
                let env = ctx.envelope();
                s.lock().unwrap().push(Seen {
                    attempt: ctx.attempt(),
                    correlation: ctx.correlation_id().clone(),
                    header: ctx.header("tenant").map(str::to_owned),
                    env_attempt: env.delivery.attempt,
                    env_id: env.id.clone(),
                    env_correlation: env.correlation_id.clone(),
                    first_delivered_at: env.delivery.first_delivered_at,
                    payload: env.payload.to_vec(),
                });
                Ok::<_, std::io::Error>(if ctx.attempt() < 2 {
                    Outcome::retry()
                } else {
                    assert_eq!(p.n, 5, "the retry sees the value as published");
                    Outcome::Ack
                })
            }
        })
        .start()
        .await
        .unwrap();

    // Published typed: the value travels with the message.
    bus.publish(Ping { n: 5 }).await.unwrap();
    bus.run_until_idle().await;
    // Published as an envelope with a correlation id and a header: the payload is decoded.
    let flow = Envelope::new(Topic::new("other").unwrap(), "{}");
    let env = Envelope::new(Topic::new(Ping::TOPIC).unwrap(), r#"{"n":5}"#)
        .with_header("tenant", "acme")
        .with_correlation_id(flow.id.clone());
    let id = env.id.clone();
    bus.publish_envelope(env).await.unwrap();
    bus.run_until_idle().await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "two attempts at each message: {seen:?}");
    for pair in seen.chunks(2) {
        let (first, second) = (&pair[0], &pair[1]);
        assert_eq!((first.attempt, second.attempt), (1, 2));
        assert_eq!((first.env_attempt, second.env_attempt), (1, 2));
        assert!(first.first_delivered_at.is_some());
        assert_eq!(second.first_delivered_at, first.first_delivered_at);
        assert_eq!(first.env_id, second.env_id);
        for s in pair {
            assert_eq!(s.correlation, s.env_correlation);
            assert_eq!(s.payload, br#"{"n":5}"#);
        }
    }
    // A new message starts its own flow; the enveloped one is in `flow`'s.
    assert_eq!(seen[0].correlation, seen[0].env_id);
    assert_eq!(seen[1].correlation, seen[0].env_id);
    assert_eq!(
        (seen[0].header.as_deref(), seen[1].header.as_deref()),
        (None, None)
    );
    assert_eq!(seen[2].env_id, id);
    assert_eq!(seen[2].correlation, flow.id);
    assert_eq!(seen[3].correlation, flow.id);
    assert_eq!(seen[2].header.as_deref(), Some("acme"));
    assert_eq!(seen[3].header.as_deref(), Some("acme"));
}
