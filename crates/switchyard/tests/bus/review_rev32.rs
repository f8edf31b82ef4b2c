//! Review rev32, outside in: one request followed end to end in process (docs/bus.md
//! "Correlation and causation", docs/middleware.md trace propagation). Every message of a flow
//! carries the flow's correlation id, and each derived message names the message it was made
//! while handling as its cause.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::middleware::dlq::replay_envelope;
use switchyard::middleware::trace::{TraceContext, TraceLayer, ensure_traceparent};
use switchyard::testkit::Recorder;
use switchyard::{Bus, Command, Envelope, HandBack, Kind, Message, MessageId, Permanent};

use crate::{WAIT, until};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    n: u64,
}
impl Message for Order {
    const TOPIC: &'static str = "r32.order";
    const KIND: Kind = Kind::Command;
}
impl Command for Order {
    type Output = u64;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    n: u64,
}
impl Message for Charge {
    const TOPIC: &'static str = "r32.charge";
    const KIND: Kind = Kind::Command;
}
impl Command for Charge {
    type Output = u64;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placed {
    n: u64,
}
impl Message for Placed {
    const TOPIC: &'static str = "r32.ev.placed";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charged {
    attempt: u32,
}
impl Message for Charged {
    const TOPIC: &'static str = "r32.ev.charged";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Later {
    n: u64,
}
impl Message for Later {
    const TOPIC: &'static str = "r32.ev.later";
}

type Seen = Arc<Mutex<Vec<Envelope>>>;

fn corr(s: &str) -> MessageId {
    s.parse().expect("a valid id")
}

fn by_topic(all: &[Envelope], topic: &str) -> Vec<Envelope> {
    all.iter()
        .filter(|e| e.topic.as_str() == topic)
        .cloned()
        .collect()
}

/// Promise (bus.md "Correlation and causation", "Commands and requests"): a request whose
/// handler publishes an event, publishes a delayed event, and sends a command whose handler
/// fails once and publishes on each attempt: every message of the flow (request, events,
/// command on both attempts, delayed event, reply) carries the flow's correlation id; each
/// derived message's causation is the message being handled when it was made; the reply is
/// caused by the request.
#[tokio::test]
async fn one_request_flow_carries_one_correlation_and_each_step_names_its_cause()
-> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new();
    let events = Recorder::start(&bus, "r32.ev.#").await?;
    let handled: Seen = Arc::default();

    let seen = handled.clone();
    let b = bus.clone();
    let _order = bus
        .handle(move |o: Order, ctx| {
            let seen = seen.clone();
            let b = b.clone();
            async move {
                seen.lock().unwrap().push(ctx.envelope().clone());
                ctx.publish(Placed { n: o.n }).await?;
                b.publish_after(Duration::from_millis(5), Later { n: o.n })
                    .await?;
                let charged = ctx.send(Charge { n: o.n }).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(charged + 1)
            }
        })
        .start()
        .await?;

    let seen = handled.clone();
    let _charge = bus
        .handle(move |c: Charge, ctx| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(ctx.envelope().clone());
                ctx.publish(Charged {
                    attempt: ctx.attempt(),
                })
                .await?;
                if ctx.attempt() == 1 {
                    return Err::<u64, Box<dyn std::error::Error + Send + Sync>>(
                        "card reader hiccup".into(),
                    );
                }
                Ok(c.n * 10)
            }
        })
        .retry_delay(Duration::from_millis(1))
        .start()
        .await?;

    let request = Order { n: 4 }
        .to_envelope()?
        .with_correlation_id(corr("corr-r32-flow"));
    let request_id = request.id.clone();
    let result = bus.request_envelope(request, WAIT).await?;
    let got = events.wait_for(4, WAIT).await?;

    let handled = handled.lock().unwrap().clone();
    let orders = by_topic(&handled, "r32.order");
    let charges = by_topic(&handled, "r32.charge");
    assert_eq!(orders.len(), 1, "the order handled once");
    assert_eq!(charges.len(), 2, "the charge handled twice (one retry)");
    let order = &orders[0];
    assert_eq!(order.id, request_id);
    assert_eq!(order.correlation_id, corr("corr-r32-flow"));
    assert_eq!(order.causation_id(), None, "the request starts the flow");

    for c in &charges {
        assert_eq!(c.correlation_id, corr("corr-r32-flow"), "command: {c:?}");
        assert_eq!(
            c.causation_id(),
            Some(&request_id),
            "command caused by the order"
        );
    }
    assert_eq!(charges[0].id, charges[1].id, "a retry is the same message");
    let charge_id = charges[0].id.clone();

    for e in &got {
        assert_eq!(
            e.correlation_id,
            corr("corr-r32-flow"),
            "event {} keeps the flow's correlation",
            e.topic
        );
    }
    let placed = by_topic(&got, "r32.ev.placed");
    let later = by_topic(&got, "r32.ev.later");
    let charged = by_topic(&got, "r32.ev.charged");
    assert_eq!((placed.len(), later.len(), charged.len()), (1, 1, 2));
    assert_eq!(placed[0].causation_id(), Some(&request_id));
    assert_eq!(
        later[0].causation_id(),
        Some(&request_id),
        "a delayed publish from a handler is caused by the handled message"
    );
    for c in &charged {
        assert_eq!(c.causation_id(), Some(&charge_id), "each attempt's event");
    }

    let reply = result.reply.ok_or("the request got a reply envelope")?;
    assert_eq!(reply.kind, Kind::Reply);
    assert_eq!(
        reply.correlation_id,
        corr("corr-r32-flow"),
        "reply correlation"
    );
    assert_eq!(
        reply.causation_id(),
        Some(&request_id),
        "reply caused by the request"
    );
    assert_eq!(result.attempts, 1);
    Ok(())
}

/// Promise (bus.md "Failures and dead letters", gateway.md replay): a command that fails for
/// good is dead-lettered as it was sent (its id, correlation and causation); replayed, it is
/// the same message again (same id, correlation and cause, plus replay headers), and what its
/// handler publishes during the replay is in the original flow, caused by it.
#[tokio::test]
async fn a_dead_lettered_command_replayed_stays_in_its_flow()
-> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new();
    let events = Recorder::start(&bus, "r32.ev.#").await?;
    let healthy = Arc::new(AtomicBool::new(false));
    let handled: Seen = Arc::default();
    let (ok, seen) = (healthy.clone(), handled.clone());
    let _charge = bus
        .handle(move |c: Charge, ctx| {
            let (ok, seen) = (ok.clone(), seen.clone());
            async move {
                seen.lock().unwrap().push(ctx.envelope().clone());
                ctx.publish(Charged {
                    attempt: ctx.attempt(),
                })
                .await?;
                if !ok.load(Ordering::SeqCst) {
                    return Err::<u64, Box<dyn std::error::Error + Send + Sync>>("down".into());
                }
                Ok(c.n)
            }
        })
        .max_attempts(2)
        .retry_delay(Duration::from_millis(1))
        .start()
        .await?;

    let root = Placed { n: 1 }
        .to_envelope()?
        .with_correlation_id(corr("corr-r32-dlq"));
    let cmd = Charge { n: 7 }.to_envelope()?.caused_by(&root);
    let cmd_id = cmd.id.clone();
    let err = bus
        .send_envelope(cmd)
        .await
        .expect_err("fails after 2 attempts");
    assert!(err.to_string().contains("down"), "{err}");

    let dlq = bus.dead_letters().ok_or("the bus keeps dead letters")?;
    until("the command is dead-lettered", || !dlq.list().is_empty()).await;
    let letter = dlq.list().into_iter().next().ok_or("one letter")?;
    assert_eq!(letter.envelope.id, cmd_id);
    assert_eq!(letter.envelope.correlation_id, corr("corr-r32-dlq"));
    assert_eq!(letter.envelope.causation_id(), Some(&root.id));
    assert_eq!(letter.attempts, 2);

    healthy.store(true, Ordering::SeqCst);
    let again = bus.send_envelope(replay_envelope(&letter)).await?;
    assert_eq!(
        again.attempts, 1,
        "a replay gets the handler's full attempts"
    );
    let reply = again.reply.ok_or("reply")?;
    assert_eq!(reply.correlation_id, corr("corr-r32-dlq"), "replay's reply");
    assert_eq!(reply.causation_id(), Some(&cmd_id));

    let replayed = handled.lock().unwrap().last().cloned().ok_or("handled")?;
    assert_eq!(replayed.id, cmd_id, "a replay is the same message");
    assert_eq!(replayed.correlation_id, corr("corr-r32-dlq"));
    assert_eq!(
        replayed.causation_id(),
        Some(&root.id),
        "and keeps its cause"
    );
    assert!(replayed.header("replayed-from").is_some(), "{replayed:?}");

    let got = events.wait_for(3, WAIT).await?;
    for e in &got {
        assert_eq!(e.correlation_id, corr("corr-r32-dlq"), "{e:?}");
        assert_eq!(e.causation_id(), Some(&cmd_id), "{e:?}");
    }
    Ok(())
}

/// Promise (bus.md "Failures and dead letters"): a failure no attempt mends (`Permanent`),
/// and a `HandBack` with no transport to go back to, dead-letter the event at once, keeping
/// the message's correlation and causation, and the events published on the way are in the
/// flow.
#[tokio::test]
async fn permanent_failures_and_hand_backs_dead_letter_the_message_with_its_ids()
-> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new();
    let events = Recorder::start(&bus, "r32.ev.charged").await?;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _sub = bus
        .on("r32-picky", move |p: Placed, ctx| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                ctx.publish(Charged { attempt: 0 }).await?;
                let e: Box<dyn std::error::Error + Send + Sync> = if p.n == 1 {
                    Box::new(Permanent::new("never"))
                } else {
                    Box::new(HandBack::new("not here"))
                };
                Err::<(), _>(e)
            }
        })
        .start()
        .await?;
    let root = Order { n: 0 }
        .to_envelope()?
        .with_correlation_id(corr("corr-r32-perm"));
    let one = Placed { n: 1 }.to_envelope()?.caused_by(&root);
    let two = Placed { n: 2 }.to_envelope()?.caused_by(&root);
    bus.publish_envelope(one.clone()).await?;
    bus.publish_envelope(two.clone()).await?;
    let dlq = bus.dead_letters().ok_or("dead letters")?;
    until("both are dead-lettered", || dlq.list().len() == 2).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "neither retried");
    for letter in dlq.list() {
        assert_eq!(letter.envelope.correlation_id, corr("corr-r32-perm"));
        assert_eq!(letter.envelope.causation_id(), Some(&root.id));
        assert!(
            letter.envelope.id == one.id || letter.envelope.id == two.id,
            "{letter:?}"
        );
    }
    for e in events.wait_for(2, WAIT).await? {
        assert_eq!(e.correlation_id, corr("corr-r32-perm"));
        assert!(
            e.causation_id() == Some(&one.id) || e.causation_id() == Some(&two.id),
            "{e:?}"
        );
    }
    Ok(())
}

/// Promise (middleware.md, "Trace propagation": `publish_hook(ensure_traceparent)` "gives every
/// published message a traceparent, continuing the trace of the handler that published it"):
/// a request arriving with a W3C traceparent, handled by a handler wrapped in `TraceLayer`,
/// publishes an event whose traceparent has the same trace id and a new parent span.
#[tokio::test]
async fn a_traced_handler_continues_the_incoming_trace_on_what_it_publishes()
-> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder()
        .publish_hook(|env| {
            ensure_traceparent(env);
            Ok(())
        })
        .build()?;
    let events = Recorder::start(&bus, "r32.ev.placed").await?;
    let _sub = bus
        .on("r32-traced", |o: Later, ctx| async move {
            ctx.publish(Placed { n: o.n }).await
        })
        .layer(TraceLayer::new("r32-traced"))
        .start()
        .await?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    let mut root = Later { n: 1 }.to_envelope()?;
    root.headers_mut().insert("traceparent", incoming.clone());
    bus.publish_envelope(root.clone()).await?;
    let got = events.wait_for(1, WAIT).await?;
    let tp = got[0]
        .header("traceparent")
        .ok_or("the event has a traceparent")?;
    let ctx = TraceContext::from_envelope(&got[0]).ok_or("a valid traceparent")?;
    assert_eq!(ctx.trace_id().to_string(), trace, "same trace: {tp}");
    assert_ne!(tp, incoming, "a new parent span");
    assert_eq!(got[0].causation_id(), Some(&root.id));
    Ok(())
}

/// Promise (same doc line: the hook alone continues "the trace of the handler that published
/// it"): without a `TraceLayer` on the handler, an event published while handling a message
/// that carries a traceparent is still in that message's trace.
///
/// Failed 3 of 3 before the fix (the event started a trace of its own, whose id was the flow's
/// correlation id):
/// "assertion `left == right` failed: the event of a flow that arrived with a trace is in that
/// trace: Some("00-01a24fe984fa593ef856c2e4386e6cd6-6f0834b65e4c4c92-01")
///   left: "01a24fe984fa593ef856c2e4386e6cd6"  right: "4bf92f3577b34da6a3ce929d0e0e4736""
#[tokio::test]
async fn the_publish_hook_alone_continues_the_handled_messages_trace()
-> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder()
        .publish_hook(|env| {
            ensure_traceparent(env);
            Ok(())
        })
        .build()?;
    let events = Recorder::start(&bus, "r32.ev.placed").await?;
    let _sub = bus
        .on("r32-plain", |o: Later, ctx| async move {
            ctx.publish(Placed { n: o.n }).await
        })
        .start()
        .await?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut root = Later { n: 1 }.to_envelope()?;
    root.headers_mut()
        .insert("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"));
    bus.publish_envelope(root).await?;
    let got = events.wait_for(1, WAIT).await?;
    let ctx = TraceContext::from_envelope(&got[0]).ok_or("a valid traceparent")?;
    assert_eq!(
        ctx.trace_id().to_string(),
        trace,
        "the event of a flow that arrived with a trace is in that trace: {:?}",
        got[0].header("traceparent")
    );
    Ok(())
}
