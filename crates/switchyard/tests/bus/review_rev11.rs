//! Review rev11: the users' bus (the llmgine message bus they started from, the broker
//! refactoring guide) built with the public API: commands with exactly one handler, events to
//! many, handlers registered and removed at run time, sessions, correlation ids followed
//! through events, commands and requests with deadlines, retries, dead letters and a replay;
//! and one scenario run on the in-memory bus and on the embedded log with the same outcomes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{
    Bus, Command, DeadLetter, DeadLetterSink, Kind, Message, MessageId, SendError, SubscribeError,
};
use tokio::sync::mpsc;

use crate::WAIT;

mod sessions;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    id: u64,
}
impl Message for OrderPlaced {
    const TOPIC: &'static str = "shop.order.placed";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderShipped {
    id: u64,
}
impl Message for OrderShipped {
    const TOPIC: &'static str = "shop.order.shipped";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quote {
    sku: String,
}
impl Message for Quote {
    const TOPIC: &'static str = "pricing.quote";
    const KIND: Kind = Kind::Command;
}
impl Command for Quote {
    type Output = u32;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reserve {
    id: u64,
}
impl Message for Reserve {
    const TOPIC: &'static str = "stock.reserve";
    const KIND: Kind = Kind::Command;
}
impl Command for Reserve {
    type Output = bool;
}

/// A dead-letter sink that tells the test about each letter.
#[derive(Clone)]
struct Letters(mpsc::UnboundedSender<DeadLetter>);
impl DeadLetterSink for Letters {
    fn put(&self, letter: DeadLetter) {
        let _ = self.0.send(letter);
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("closed")
}

/// A command has exactly one handler: a second registration is refused with a typed error
/// naming the first; dropping the handler at run time leaves the command with none
/// (`NoHandler`), and a new handler can then take over.
#[tokio::test]
async fn a_command_has_one_handler_which_can_be_replaced_at_run_time() {
    let bus = Bus::new();
    let first = bus
        .handle(|q: Quote, _| async move { Ok::<_, std::io::Error>(q.sku.len() as u32) })
        .start()
        .await
        .unwrap();
    let err = bus
        .handle(|_: Quote, _| async move { Ok::<_, std::io::Error>(0) })
        .start()
        .await
        .unwrap_err();
    match &err {
        SubscribeError::DuplicateHandler { topic, .. } => {
            assert_eq!(topic.as_str(), "pricing.quote")
        }
        other => panic!("expected DuplicateHandler, got {other:?}"),
    }
    assert_eq!(bus.send(Quote { sku: "abc".into() }).await.unwrap(), 3);

    drop(first);
    bus.run_until_idle().await;
    let err = bus.send(Quote { sku: "abc".into() }).await.unwrap_err();
    assert!(matches!(err, SendError::NoHandler { .. }), "{err:?}");

    let _second = bus
        .handle(|_: Quote, _| async move { Ok::<_, std::io::Error>(99) })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Quote { sku: "abc".into() }).await.unwrap(), 99);
}

/// Events go to every subscriber; one that fails does not stop the others, is retried up to
/// `max_attempts` and dead-lettered with the attempts; a subscriber removed at run time gets
/// nothing more while the others go on.
#[tokio::test]
async fn event_handlers_are_independent_and_can_leave_at_run_time() {
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .max_attempts(2)
        .retry_delay(Duration::from_millis(1))
        .dead_letters(Letters(ltx))
        .build()
        .unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let mut subs = Vec::new();
    for name in ["audit", "billing", "search"] {
        let tx = tx.clone();
        subs.push(
            bus.on(name, move |o: OrderPlaced, _| {
                let tx = tx.clone();
                async move {
                    if name == "billing" {
                        return Err(std::io::Error::other("card declined"));
                    }
                    tx.send((name, o.id)).unwrap();
                    Ok(())
                }
            })
            .start()
            .await
            .unwrap(),
        );
    }
    bus.publish(OrderPlaced { id: 1 }).await.unwrap();
    let mut got = vec![recv(&mut seen).await, recv(&mut seen).await];
    got.sort();
    assert_eq!(got, [("audit", 1), ("search", 1)]);
    let letter = recv(&mut letters).await;
    assert_eq!(letter.handler.as_deref(), Some("billing"));
    assert_eq!(letter.attempts, 2);
    assert!(letter.error.contains("card declined"), "{}", letter.error);

    // `search` leaves; `audit` still gets the next order, `search` does not.
    let search = subs.pop().unwrap();
    drop(search);
    bus.publish(OrderPlaced { id: 2 }).await.unwrap();
    assert_eq!(recv(&mut seen).await, ("audit", 2));
    let _ = recv(&mut letters).await;
    bus.run_until_idle().await;
    assert!(seen.try_recv().is_err(), "a removed subscriber was called");
}

/// One correlation id from an event, through a command sent by its handler, an event that
/// command's handler publishes and a request with a deadline made from that event's handler;
/// each message caused by the one that led to it.
#[tokio::test]
async fn one_correlation_id_through_events_commands_and_requests() {
    let bus = Bus::new();
    let rec = Recorder::start(&bus, "#").await.unwrap();
    let (tx, mut done) = mpsc::unbounded_channel();
    let _placed = bus
        .on("fulfil", |o: OrderPlaced, ctx| async move {
            let ok = ctx.send(Reserve { id: o.id }).await?;
            assert!(ok);
            Ok::<_, SendError>(())
        })
        .start()
        .await
        .unwrap();
    let _reserve = bus
        .handle(|r: Reserve, ctx| async move {
            ctx.publish(OrderShipped { id: r.id }).await?;
            Ok::<_, switchyard::PublishError>(true)
        })
        .start()
        .await
        .unwrap();
    let _quote = bus
        .handle(|q: Quote, ctx| async move {
            assert!(ctx.deadline().is_some(), "a request shows its deadline");
            Ok::<_, std::io::Error>(q.sku.len() as u32)
        })
        .start()
        .await
        .unwrap();
    let _shipped = bus
        .on("notify", move |s: OrderShipped, ctx| {
            let tx = tx.clone();
            async move {
                // Through the bus handle, not ctx: the flow is inherited all the same.
                let price = ctx
                    .bus()
                    .request(Quote { sku: "ab".into() }, Duration::from_secs(5))
                    .await?;
                tx.send((s.id, price, ctx.correlation_id().clone()))
                    .unwrap();
                Ok::<_, SendError>(())
            }
        })
        .start()
        .await
        .unwrap();
    let flow: MessageId = "order-7-from-the-frontend".parse().unwrap();
    let env = switchyard::Envelope::new(
        switchyard::Topic::new("shop.order.placed").unwrap(),
        serde_json::to_vec(&OrderPlaced { id: 7 }).unwrap(),
    )
    .with_correlation_id(flow.clone());
    bus.publish_envelope(env).await.unwrap();
    let (id, price, corr) = recv(&mut done).await;
    assert_eq!((id, price), (7, 2));
    assert_eq!(corr, flow);
    bus.run_until_idle().await;
    let all = rec.envelopes();
    let by_topic = |t: &str| {
        all.iter()
            .find(|e| e.topic.as_str() == t)
            .unwrap_or_else(|| panic!("{t} not seen in {all:?}"))
            .clone()
    };
    let placed = by_topic("shop.order.placed");
    let shipped = by_topic("shop.order.shipped");
    for e in &all {
        if !e.topic.as_str().starts_with("switchyard.") {
            assert_eq!(e.correlation_id, flow, "{} lost the flow", e.topic);
        }
    }
    // Commands handled in process may not be recorded by a `#` subscription (they are not
    // events); the shipped event must still name the flow and a cause.
    assert!(shipped.causation_id().is_some());
    assert_ne!(shipped.causation_id(), Some(&placed.id), "{shipped:?}");
}

/// A request whose handler is stuck times out at its deadline (virtual clock) with a typed
/// error naming the deadline; the handler saw the deadline and how much was left.
#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_times_out_and_the_handler_saw_it() {
    let bus = Bus::new();
    let (tx, mut remaining) = mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let _h = bus
        .handle(move |_: Quote, ctx| {
            let (tx, g) = (tx.clone(), g.clone());
            async move {
                tx.send(ctx.remaining()).unwrap();
                g.notified().await;
                Ok::<_, std::io::Error>(1)
            }
        })
        .start()
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let err = bus
        .request(Quote { sku: "x".into() }, Duration::from_millis(250))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::Timeout { deadline } if deadline == Duration::from_millis(250)),
        "{err:?}"
    );
    assert_eq!(t0.elapsed(), Duration::from_millis(250));
    let left = recv(&mut remaining)
        .await
        .expect("a request has a deadline");
    assert!(left <= Duration::from_millis(250) && left > Duration::ZERO);
    gate.notify_waiters();
    bus.run_until_idle().await;
}

/// A billing handler whose bank is down `down` more calls.
async fn flaky_billing(
    bus: &Bus,
    down: Arc<AtomicU32>,
) -> mpsc::UnboundedReceiver<(u64, MessageId, u32)> {
    let (tx, ok) = mpsc::unbounded_channel();
    bus.on("billing", move |o: OrderPlaced, ctx| {
        let (d, tx) = (down.clone(), tx.clone());
        async move {
            if d.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(std::io::Error::other("bank unavailable"));
            }
            tx.send((o.id, ctx.correlation_id().clone(), ctx.attempt()))
                .unwrap();
            Ok(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    ok
}

/// Publishes order 42 in flow `corr-42` and waits until it is dead-lettered (3 attempts).
async fn dead_lettered_order(bus: &Bus, down: &AtomicU32) -> DeadLetter {
    let flow: MessageId = "corr-42".parse().unwrap();
    let env = switchyard::Envelope::new(
        switchyard::Topic::new("shop.order.placed").unwrap(),
        serde_json::to_vec(&OrderPlaced { id: 42 }).unwrap(),
    )
    .with_correlation_id(flow.clone());
    let id = env.id.clone();
    bus.publish_envelope(env).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(down.load(Ordering::SeqCst), 0, "three attempts made");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    let letter = letters[0].clone();
    assert_eq!(letter.envelope.id, id);
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.envelope.correlation_id, flow);
    letter
}

/// A failing event is dead-lettered with its correlation id after its attempts; once the
/// dependency is back (but still fails once), the documented replay (`Replayer`) delivers it
/// again with the same id and correlation, a fresh attempt count and retries, and it succeeds.
#[tokio::test]
async fn a_dead_letter_replay_keeps_the_flow_and_gets_fresh_attempts() {
    use switchyard_middleware::dlq::Replayer;
    let bus = Bus::builder()
        .max_attempts(3)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let down = Arc::new(AtomicU32::new(3));
    let mut ok = flaky_billing(&bus, down.clone()).await;
    let letter = dead_lettered_order(&bus, &down).await;

    down.store(1, Ordering::SeqCst); // back, but one more failure
    let b = bus.clone();
    let republish = move |env: switchyard::Envelope| {
        let b = b.clone();
        async move { b.publish_envelope(env).await }
    };
    let dlq = bus.dead_letters().unwrap();
    let report = Replayer::new(dlq, &republish).all().await;
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    let (got, corr, attempt) = recv(&mut ok).await;
    assert_eq!(
        (got, corr, attempt),
        (42, letter.envelope.correlation_id, 2)
    );
    bus.run_until_idle().await;
    assert!(dlq.list().is_empty(), "{:?}", dlq.list());
}

/// Replaying a dead letter by hand, the way the components guide and the seeds do it (publish
/// the dead letter's envelope again with `publish_envelope`): a publish is a new delivery, so
/// the replay gets fresh attempts (`max_attempts` 3: one failure, then success on attempt 2).
///
/// Fixed defect (review rev11): `publish_envelope` kept the dead letter's delivery count, the
/// handler saw `ctx.attempt() == 4` and the replay was dead-lettered again after its first
/// failure (`dead-lettered again: [(4, "bank unavailable")]`).
#[tokio::test]
async fn a_republished_dead_letter_gets_fresh_attempts() {
    let bus = Bus::builder()
        .max_attempts(3)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let down = Arc::new(AtomicU32::new(3));
    let mut ok = flaky_billing(&bus, down.clone()).await;
    let letter = dead_lettered_order(&bus, &down).await;
    let dlq = bus.dead_letters().unwrap();
    assert_eq!(dlq.take(&letter.envelope.id).len(), 1);

    down.store(1, Ordering::SeqCst);
    bus.publish_envelope(letter.envelope.clone()).await.unwrap();
    bus.run_until_idle().await;
    let again: Vec<_> = dlq
        .list()
        .into_iter()
        .map(|l| (l.attempts, l.error))
        .collect();
    assert!(again.is_empty(), "dead-lettered again: {again:?}");
    let (got, _, attempt) = recv(&mut ok).await;
    assert_eq!((got, attempt), (42, 2));
}

/// The same to a transport: an envelope that was delivered before (a dead letter's, four
/// attempts) is stored by the log as a new message (attempt 0, never delivered, id and
/// correlation kept), and its handler's first call is attempt 1.
#[tokio::test]
async fn a_republished_envelope_is_stored_as_a_new_delivery_on_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let bus = Bus::builder().transport(log.clone()).build().unwrap();
    let (tx, mut attempts) = mpsc::unbounded_channel();
    bus.on("billing", move |_: OrderPlaced, ctx| {
        let tx = tx.clone();
        async move {
            tx.send(ctx.attempt()).unwrap();
            Ok::<_, std::io::Error>(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    let mut env = switchyard::Envelope::new(
        switchyard::Topic::new("shop.order.placed").unwrap(),
        serde_json::to_vec(&OrderPlaced { id: 7 }).unwrap(),
    )
    .with_correlation_id("corr-7".parse().unwrap());
    env.delivery.attempt = 4;
    env.delivery.first_delivered_at = Some(std::time::SystemTime::now());
    let id = env.id.clone();
    bus.publish_envelope(env).await.unwrap();
    assert_eq!(recv(&mut attempts).await, 1);
    let stream = log.streams()[0].name.clone();
    let stored = log.read_range(&stream, 0, 10).unwrap();
    assert_eq!(stored.len(), 1);
    let stored = &stored[0].envelope;
    let flow: MessageId = "corr-7".parse().unwrap();
    assert_eq!((&stored.id, &stored.correlation_id), (&id, &flow));
    assert_eq!(
        (stored.delivery.attempt, stored.delivery.first_delivered_at),
        (0, None)
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    percent: u8,
}
impl Message for Progress {
    const TOPIC: &'static str = "job.progress";
}

/// llmgine sessions: a session's command handler wins inside the session, the global one
/// outside; session event handlers see only their session; a message published while
/// handling a session's message stays in the session; ending the session removes its
/// handlers (the global handler takes its commands again).
#[tokio::test]
async fn sessions_scope_handlers_and_clean_up() {
    let bus = Bus::new();
    let (tx, mut seen) = mpsc::unbounded_channel::<(&'static str, u8, Option<String>)>();
    let _global = bus
        .handle(|_: Quote, _| async move { Ok::<_, std::io::Error>(1) })
        .start()
        .await
        .unwrap();
    let g = tx.clone();
    let _all = bus
        .on("global-progress", move |p: Progress, ctx| {
            let g = g.clone();
            async move {
                g.send((
                    "global",
                    p.percent,
                    ctx.header("session-id").map(str::to_owned),
                ))
                .unwrap();
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    let job = bus.session("job-1").await.unwrap();
    let s = tx.clone();
    job.on("job-progress", move |p: Progress, ctx| {
        let s = s.clone();
        async move {
            s.send((
                "session",
                p.percent,
                ctx.header("session-id").map(str::to_owned),
            ))
            .unwrap();
            if p.percent == 50 {
                // Through the bus handle: the session is inherited from the task.
                ctx.bus().publish(Progress { percent: 51 }).await?;
            }
            Ok::<_, switchyard::PublishError>(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    job.handle(|_: Quote, _| async move { Ok::<_, std::io::Error>(2) })
        .start()
        .await
        .unwrap()
        .detach();

    assert_eq!(job.send(Quote { sku: "a".into() }).await.unwrap(), 2);
    assert_eq!(bus.send(Quote { sku: "a".into() }).await.unwrap(), 1);

    bus.publish(Progress { percent: 10 }).await.unwrap(); // outside the session
    job.publish(Progress { percent: 50 }).await.unwrap(); // inside: and its follow-up 51
    bus.run_until_idle().await;
    let mut got = Vec::new();
    while let Ok(x) = seen.try_recv() {
        got.push(x);
    }
    got.sort();
    let sess = Some("job-1".to_string());
    assert_eq!(
        got,
        [
            ("global", 10, None),
            ("global", 50, sess.clone()),
            ("global", 51, sess.clone()),
            ("session", 50, sess.clone()),
            ("session", 51, sess.clone()),
        ]
    );

    let ended = Recorder::start(&bus, "switchyard.session.ended")
        .await
        .unwrap();
    job.end().await.unwrap();
    ended.wait_for(1, WAIT).await.unwrap();
    bus.run_until_idle().await;
    assert!(
        bus.registry()
            .iter()
            .all(|s| !s.name.contains("job-progress")),
        "session handler left registered"
    );
    // A new session with the same id gets the global handler: nothing of the old one left.
    let again = bus.session("job-1").await.unwrap();
    assert_eq!(again.send(Quote { sku: "a".into() }).await.unwrap(), 1);
    again.end().await.unwrap();
}

/// What a user checks after the scenario: who handled what, what was dead-lettered (handler,
/// attempts, topic), the command and request results, and whether one flow kept its id.
#[derive(Debug, PartialEq)]
struct Outcome {
    handled: Vec<(String, u64)>,
    letters: Vec<(String, u32, String)>,
    command: bool,
    request: u32,
    one_flow: bool,
}

async fn scenario(bus: &Bus) -> Outcome {
    let (tx, mut seen) = mpsc::unbounded_channel::<(String, u64, MessageId)>();
    let mut keep = Vec::new();
    for name in ["audit", "billing"] {
        let tx = tx.clone();
        keep.push(
            bus.on(name, move |o: OrderPlaced, ctx| {
                let tx = tx.clone();
                async move {
                    if name == "billing" && o.id == 2 {
                        return Err(switchyard::BoxError::from("declined"));
                    }
                    if name == "audit" && o.id == 1 {
                        ctx.publish(OrderShipped { id: 1 }).await?;
                    }
                    tx.send((name.to_string(), o.id, ctx.correlation_id().clone()))
                        .unwrap();
                    Ok(())
                }
            })
            .max_attempts(2)
            .retry_delay(Duration::from_millis(1))
            .start()
            .await
            .unwrap(),
        );
    }
    let t = tx.clone();
    keep.push(
        bus.on("shipping", move |s: OrderShipped, ctx| {
            let t = t.clone();
            async move {
                t.send(("shipping".into(), s.id, ctx.correlation_id().clone()))
                    .unwrap();
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap(),
    );
    keep.push(
        bus.handle(|r: Reserve, _| async move { Ok::<_, std::io::Error>(r.id % 2 == 1) })
            .start()
            .await
            .unwrap(),
    );
    keep.push(
        bus.handle(|q: Quote, _| async move { Ok::<_, std::io::Error>(q.sku.len() as u32) })
            .start()
            .await
            .unwrap(),
    );
    let flow: MessageId = "flow-1".parse().unwrap();
    let env = switchyard::Envelope::new(
        switchyard::Topic::new("shop.order.placed").unwrap(),
        serde_json::to_vec(&OrderPlaced { id: 1 }).unwrap(),
    )
    .with_correlation_id(flow.clone());
    bus.publish_envelope(env).await.unwrap();
    bus.publish(OrderPlaced { id: 2 }).await.unwrap();
    let command = bus.send(Reserve { id: 1 }).await.unwrap();
    let request = bus
        .request(Quote { sku: "abcd".into() }, Duration::from_secs(5))
        .await
        .unwrap();
    // audit 1, billing 1, shipping 1, audit 2 (billing 2 fails).
    let mut handled = Vec::new();
    let mut one_flow = true;
    for _ in 0..4 {
        let (name, id, corr) = recv(&mut seen).await;
        if id == 1 {
            one_flow &= corr == flow;
        }
        handled.push((name, id));
    }
    handled.sort();
    for sub in keep {
        sub.detach();
    }
    Outcome {
        handled,
        letters: Vec::new(),
        command,
        request,
        one_flow,
    }
}

async fn run_on(bus: Bus, mut letters: mpsc::UnboundedReceiver<DeadLetter>) -> Outcome {
    let mut out = tokio::time::timeout(Duration::from_secs(15), scenario(&bus))
        .await
        .expect("the scenario hangs");
    let l = recv(&mut letters).await;
    out.letters.push((
        l.handler.as_deref().unwrap_or("").to_string(),
        l.attempts,
        l.envelope.topic.to_string(),
    ));
    let report = bus.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(report.left.is_empty(), "{report:?}");
    assert!(letters.try_recv().is_err(), "a second dead letter");
    out
}

/// The "same API" promise: the same scenario (fan-out, a failing subscriber dead-lettered, an
/// event caused by a handler, a command and a request) gives the same outcomes on the
/// embedded log as in memory.
#[tokio::test]
async fn the_same_scenario_gives_the_same_outcomes_in_memory_and_on_the_log() {
    let (ltx, lrx) = mpsc::unbounded_channel();
    let memory = Bus::builder().dead_letters(Letters(ltx)).build().unwrap();
    let in_memory = run_on(memory, lrx).await;

    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let (ltx, lrx) = mpsc::unbounded_channel();
    let durable = Bus::builder()
        .transport(log)
        .dead_letters(Letters(ltx))
        .build()
        .unwrap();
    let on_log = run_on(durable, lrx).await;

    assert_eq!(
        in_memory,
        Outcome {
            handled: vec![
                ("audit".into(), 1),
                ("audit".into(), 2),
                ("billing".into(), 1),
                ("shipping".into(), 1)
            ],
            letters: vec![("billing".into(), 2, "shop.order.placed".into())],
            command: true,
            request: 4,
            one_flow: true,
        }
    );
    assert_eq!(in_memory, on_log);
}

type Calls = Arc<std::sync::Mutex<Vec<&'static str>>>;

/// A handler wrapped so that each call records `name` before the inner handler runs.
fn recording(
    name: &'static str,
    calls: Calls,
    inner: switchyard::BoxHandler,
) -> switchyard::BoxHandler {
    use tower::ServiceExt;
    switchyard::boxed(tower::service_fn(move |env: switchyard::Envelope| {
        calls.lock().unwrap().push(name);
        inner.clone().oneshot(env)
    }))
}

fn record_layer(
    name: &'static str,
    calls: Calls,
) -> impl tower::Layer<switchyard::BoxHandler, Service = switchyard::BoxHandler> + Clone {
    tower::layer::layer_fn(move |inner| recording(name, calls.clone(), inner))
}

/// The middleware order a user reads in the docs: `wrap_handlers` outside every subscription's
/// own layers, and of those the last `.layer` outermost; the same for an event and a command,
/// in memory and on the log.
async fn middleware_order(
    transport: Option<switchyard_log::LogTransport>,
) -> Vec<Vec<&'static str>> {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let mut b = Bus::builder().wrap_handlers(move |_name, h| recording("bus", c.clone(), h));
    if let Some(t) = transport {
        b = b.transport(t);
    }
    let bus = b.build().unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let c = calls.clone();
    bus.on("audit", move |o: OrderPlaced, _| {
        let (tx, c) = (tx.clone(), c.clone());
        async move {
            c.lock().unwrap().push("handler");
            tx.send(o.id).unwrap();
            Ok::<_, std::io::Error>(())
        }
    })
    .layer(record_layer("first", calls.clone()))
    .layer(record_layer("second", calls.clone()))
    .start()
    .await
    .unwrap()
    .detach();
    let c = calls.clone();
    bus.handle(move |q: Quote, _| {
        let c = c.clone();
        async move {
            c.lock().unwrap().push("handler");
            Ok::<_, std::io::Error>(q.sku.len() as u32)
        }
    })
    .layer(record_layer("first", calls.clone()))
    .layer(record_layer("second", calls.clone()))
    .start()
    .await
    .unwrap()
    .detach();
    bus.publish(OrderPlaced { id: 1 }).await.unwrap();
    assert_eq!(recv(&mut seen).await, 1);
    let event = std::mem::take(&mut *calls.lock().unwrap());
    assert_eq!(bus.send(Quote { sku: "ab".into() }).await.unwrap(), 2);
    let command = std::mem::take(&mut *calls.lock().unwrap());
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    vec![event, command]
}

#[tokio::test]
async fn middleware_order_is_the_documented_one_in_memory_and_on_the_log() {
    let in_memory = middleware_order(None).await;
    let order = vec!["bus", "second", "first", "handler"];
    assert_eq!(in_memory, vec![order.clone(), order]);
    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    assert_eq!(middleware_order(Some(log)).await, in_memory);
}
