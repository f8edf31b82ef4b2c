use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{Bus, SendError, SubscribeError};

use crate::Double;

#[tokio::test]
async fn command_returns_the_handlers_result() {
    let bus = Bus::new();
    let _h = bus
        .handle(|cmd: Double, _ctx| async move { Ok::<_, std::io::Error>(cmd.n * 2) })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Double { n: 21 }).await.unwrap(), 42);
}

#[tokio::test]
async fn command_with_no_handler_fails_at_once() {
    let bus = Bus::new();
    let err = tokio::time::timeout(Duration::from_secs(1), bus.send(Double { n: 1 }))
        .await
        .expect("NoHandler must be immediate, not a hang");
    match err {
        Err(SendError::NoHandler { topic }) => assert_eq!(topic.as_str(), "math.double"),
        other => panic!("expected NoHandler, got {other:?}"),
    }
}

#[tokio::test]
async fn second_handler_for_a_command_is_an_error() {
    let bus = Bus::new();
    let first = bus
        .handle(|c: Double, _| async move { Ok::<_, std::io::Error>(c.n) })
        .start()
        .await
        .unwrap();
    let second = bus
        .handle(|c: Double, _| async move { Ok::<_, std::io::Error>(c.n + 1) })
        .start()
        .await;
    match second {
        Err(SubscribeError::DuplicateHandler { topic, existing }) => {
            assert_eq!(topic.as_str(), "math.double");
            assert_eq!(existing, "math.double");
        }
        other => panic!("expected DuplicateHandler, got {other:?}"),
    }
    // the first one still answers; after dropping it the topic is free again
    assert_eq!(bus.send(Double { n: 1 }).await.unwrap(), 1);
    drop(first);
    assert!(matches!(
        bus.send(Double { n: 1 }).await,
        Err(SendError::NoHandler { .. })
    ));
    let _again = bus
        .handle(|c: Double, _| async move { Ok::<_, std::io::Error>(c.n + 1) })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Double { n: 1 }).await.unwrap(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn request_deadline_is_a_timeout_under_the_virtual_clock() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let _h = bus
        .handle(|c: Double, _| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::io::Error>(c.n)
        })
        .start()
        .await
        .unwrap();
    let start = clock.now();
    match bus
        .request(Double { n: 1 }, Duration::from_millis(200))
        .await
    {
        Err(SendError::Timeout { deadline }) => assert_eq!(deadline, Duration::from_millis(200)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    let waited = clock.now() - start;
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(1),
        "waited {waited:?}"
    );
}

#[tokio::test]
async fn request_within_deadline_gets_the_reply() {
    let bus = Bus::new();
    let _h = bus
        .handle(|c: Double, _| async move { Ok::<_, std::io::Error>(c.n * 2) })
        .start()
        .await
        .unwrap();
    assert_eq!(
        bus.request(Double { n: 4 }, Duration::from_secs(5))
            .await
            .unwrap(),
        8
    );
}

#[tokio::test]
async fn handler_error_reaches_the_sender_after_attempts() {
    let bus = Bus::builder()
        .max_attempts(2)
        .retry_delay(Duration::ZERO)
        .build()
        .unwrap();
    let _h = bus
        .handle(|_c: Double, _| async move { Err::<u64, _>(std::io::Error::other("disk on fire")) })
        .start()
        .await
        .unwrap();
    match bus.send(Double { n: 1 }).await {
        Err(SendError::Failed { error, attempts }) => {
            assert_eq!(attempts, 2);
            assert!(error.contains("disk on fire"), "{error}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(bus.dead_letters().unwrap().len(), 1);
}

/// An output that has no JSON form: encoding it fails, decoding it fails.
#[derive(Debug, PartialEq)]
struct Opaque(u64);

impl serde::Serialize for Opaque {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Opaque has no JSON form"))
    }
}

impl<'de> serde::Deserialize<'de> for Opaque {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("Opaque has no JSON form"))
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct MakeOpaque {
    n: u64,
}

impl switchyard::Message for MakeOpaque {
    const TOPIC: &'static str = "opaque.make";
    const KIND: switchyard::Kind = switchyard::Kind::Command;
}

impl switchyard::Command for MakeOpaque {
    type Output = Opaque;
}

#[tokio::test]
async fn a_typed_send_in_process_takes_the_output_as_it_is() {
    let bus = Bus::builder()
        .max_attempts(1)
        .retry_delay(Duration::ZERO)
        .build()
        .unwrap();
    let _h = bus
        .handle(|c: MakeOpaque, _| async move { Ok::<_, std::io::Error>(Opaque(c.n)) })
        .start()
        .await
        .unwrap();
    // Typed sender and typed handler in one process: the output is never encoded.
    assert_eq!(bus.send(MakeOpaque { n: 7 }).await.unwrap(), Opaque(7));
    assert_eq!(
        bus.request(MakeOpaque { n: 8 }, Duration::from_secs(5))
            .await
            .unwrap(),
        Opaque(8)
    );
    // A raw envelope sender gets a reply envelope, so the output has to be encoded: here
    // that fails, and the failure is the handler's.
    let cmd = switchyard::Message::to_envelope(&MakeOpaque { n: 9 }).unwrap();
    match bus.send_envelope(cmd).await {
        Err(SendError::Failed { error, .. }) => {
            assert!(error.contains("no JSON form"), "{error}")
        }
        other => panic!("expected the encoding failure, got {other:?}"),
    }
}

/// A sender that expects the doubled number as an `i64`, on `Double`'s topic.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct DoubleSigned {
    n: u64,
}

impl switchyard::Message for DoubleSigned {
    const TOPIC: &'static str = "math.double";
    const KIND: switchyard::Kind = switchyard::Kind::Command;
}

impl switchyard::Command for DoubleSigned {
    type Output = i64;
}

#[tokio::test]
async fn a_typed_sender_of_another_output_type_gets_the_encoded_reply() {
    let bus = Bus::new();
    let _h = bus
        .handle(|cmd: Double, _ctx| async move { Ok::<_, std::io::Error>(cmd.n * 2) })
        .start()
        .await
        .unwrap();
    // The handler's output is a u64, the sender's an i64: it travels as JSON and decodes.
    assert_eq!(bus.send(DoubleSigned { n: 21 }).await.unwrap(), 42_i64);
    // And a raw sender gets the JSON reply as before.
    let cmd = switchyard::Message::to_envelope(&Double { n: 5 }).unwrap();
    let result = bus.send_envelope(cmd).await.unwrap();
    assert_eq!(result.reply.unwrap().payload.as_ref(), b"10");
    assert_eq!(result.attempts, 1);
}

/// Issue 17: the handler sees the sender's deadline (`Ctx::deadline`): a request's, within
/// its bound, and none for a command sent without one.
#[tokio::test]
async fn the_handler_sees_the_requests_deadline() {
    let bus = Bus::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _h = bus
        .handle(move |c: Double, ctx: switchyard::Ctx| {
            let tx = tx.clone();
            async move {
                tx.send((ctx.deadline(), ctx.remaining()))
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok::<_, std::io::Error>(c.n)
            }
        })
        .start()
        .await
        .unwrap();
    let before = std::time::Instant::now();
    bus.request(Double { n: 1 }, Duration::from_secs(30))
        .await
        .unwrap();
    let after = std::time::Instant::now();
    let (deadline, remaining) = rx.recv().await.unwrap();
    let deadline = deadline.expect("a request's handler sees its deadline");
    assert!(
        deadline >= before + Duration::from_secs(30) && deadline <= after + Duration::from_secs(30),
        "deadline not 30 s after the request"
    );
    let remaining = remaining.unwrap();
    assert!(
        remaining <= Duration::from_secs(30) && remaining > Duration::from_secs(25),
        "{remaining:?}"
    );

    bus.send(Double { n: 2 }).await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        (None, None),
        "a command sent without a deadline has none"
    );
}

/// `send_envelope` and `request_envelope` put the envelope in its shared allocation when
/// called, but send nothing until polled: a future dropped unpolled reaches no handler, and a
/// request's deadline starts at its first poll, not at the call.
#[tokio::test(flavor = "current_thread")]
async fn an_envelope_command_goes_nowhere_until_its_future_is_polled() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use switchyard::{Envelope, Outcome, Topic, handler_fn};

    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let _h = bus
        .handle_envelope(
            "echo",
            "env.echo",
            handler_fn(move |env: Envelope| {
                seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    // Not done on the first poll: a deadline that had run out before it
                    // would be seen (a timeout polls its future before its timer).
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok::<_, std::convert::Infallible>(Outcome::reply(
                        env.reply(env.payload.clone()),
                    ))
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let topic = Topic::new("env.echo").unwrap();

    drop(bus.send_envelope(Envelope::new(topic.clone(), "dropped")));
    drop(bus.request_envelope(
        Envelope::new(topic.clone(), "dropped too"),
        Duration::from_secs(1),
    ));
    bus.run_until_idle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "an unpolled send reached the handler"
    );

    // Made now, polled after more than its deadline: the deadline counts from the poll.
    let request =
        bus.request_envelope(Envelope::new(topic.clone(), "late"), Duration::from_secs(1));
    clock.advance(Duration::from_secs(5)).await;
    let result = request
        .await
        .expect("the deadline started before the first poll");
    assert_eq!(&result.reply.unwrap().payload[..], b"late");
    let result = bus
        .send_envelope(Envelope::new(topic, "sent"))
        .await
        .unwrap();
    assert_eq!(&result.reply.unwrap().payload[..], b"sent");
    assert_eq!(result.handler, "echo");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// through the bus, on the virtual clock: a handler that moves the clock 6 s before
/// its first yield is past its 5 s limit when it yields, so the send fails at t = 6 s.
#[tokio::test(start_paused = true)]
async fn virtual_clock_timeout_counts_from_the_start_of_the_call() {
    use switchyard::middleware::resilience::ResilienceConfig;
    use switchyard::middleware::retry::RetryPolicy;
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default()
                .retry(RetryPolicy::default().max_attempts(1))
                .timeout(Duration::from_secs(5))
        })
        .build()
        .unwrap();
    let _h = bus
        .handle(|c: Double, _| async move {
            tokio::time::advance(Duration::from_secs(6)).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>(c.n)
        })
        .start()
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let err = bus.send(Double { n: 1 }).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(6), "{err:?}");
}
