//! The error handler on its own: retry with backoff on the virtual clock, give up to the DLQ.

use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{Bus, Jitter, Message, MessageId};
use switchyard_components::builtin::{ErrorHandler, RetryExhausted, RetryPolicy, RetryRequest};
use switchyard_components::{Assembly, ComponentBuilder, ErrorReport, RequestId, Role};
use tokio::time::Instant;

use crate::WAIT;

fn report(correlation_id: MessageId, propagated: bool) -> ErrorReport {
    ErrorReport {
        request_id: RequestId::new(),
        correlation_id,
        component: "x-processor".into(),
        role: Role::Processor,
        domain: "x".into(),
        action: "load".into(),
        error_type: "Flaky".into(),
        message: "try again".into(),
        propagated,
        retryable: true,
        bus_retries: false,
        handler_failure: false,
        at_ms: 0,
        failed_request: None,
    }
}

#[test]
fn backoff_delays() {
    let p = RetryPolicy::attempts(5)
        .initial_delay(Duration::from_secs(1))
        .multiplier(2)
        .max_delay(Duration::from_secs(3))
        .jitter(Jitter::None);
    // After 1, 2, 3, 4 failed attempts.
    let d: Vec<Duration> = (1..=4).map(|failed| p.delay_for(failed)).collect();
    assert_eq!(d, [1, 2, 3, 3].map(Duration::from_secs));
    let at_once = RetryPolicy::attempts(3).initial_delay(Duration::ZERO);
    assert_eq!(at_once.delay_for(1), Duration::ZERO);
    let huge = RetryPolicy::default()
        .initial_delay(Duration::MAX)
        .max_delay(Duration::MAX)
        .jitter(Jitter::None);
    assert!(
        huge.delay_for(40) > Duration::from_secs(1),
        "no panic, a long delay"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_with_backoff_then_gives_up_to_the_dlq() {
    let bus = Bus::new();
    let handler = ErrorHandler::new(
        RetryPolicy::attempts(3)
            .initial_delay(Duration::from_secs(1))
            .multiplier(2)
            .max_delay(Duration::from_secs(30))
            .jitter(Jitter::None),
    );
    let retries = Recorder::start(&bus, "x.retry.request").await.unwrap();
    let exhausted = Recorder::start(&bus, "x.retry.exhausted").await.unwrap();
    let _running = Assembly::new(&bus)
        .component(handler.component())
        // The manager that would act on retries (the error handler may only reach managers).
        .component(
            ComponentBuilder::new("x-manager", Role::Manager, "x")
                .on_envelope("x.retry.request", |_, _| async {
                    Ok::<_, std::convert::Infallible>(())
                })
                .on_envelope("x.retry.exhausted", |_, _| async {
                    Ok::<_, std::convert::Infallible>(())
                }),
        )
        .start()
        .await
        .unwrap();
    let flow = MessageId::new();

    // First failure: retry after 1 s.
    let t0 = Instant::now();
    bus.publish_to("x.error", report(flow.clone(), false))
        .await
        .unwrap();
    let got = retries.wait_for(1, WAIT).await.unwrap();
    assert!(Instant::now() - t0 >= Duration::from_secs(1));
    let req = RetryRequest::from_envelope(&got[0]).unwrap();
    assert_eq!(
        (req.attempt, req.max_attempts, req.correlation_id),
        (2, 3, flow.clone())
    );
    assert_eq!(got[0].source(), Some(ErrorHandler::NAME));

    // A propagated failure is only recorded.
    bus.publish_to("x.error", report(flow.clone(), true))
        .await
        .unwrap();
    bus.run_until_idle().await;
    assert_eq!(handler.attempts(flow.clone(), "x"), 1);

    // Second failure: retry after 2 s.
    let t1 = Instant::now();
    bus.publish_to("x.error", report(flow.clone(), false))
        .await
        .unwrap();
    let got = retries.wait_for(2, WAIT).await.unwrap();
    assert!(Instant::now() - t1 >= Duration::from_secs(2));
    assert_eq!(RetryRequest::from_envelope(&got[1]).unwrap().attempt, 3);

    // Third failure: gives up, dead-letters with the correlation id, tells the manager.
    bus.publish_to("x.error", report(flow.clone(), false))
        .await
        .unwrap();
    let got = exhausted.wait_for(1, WAIT).await.unwrap();
    let ex = RetryExhausted::from_envelope(&got[0]).unwrap();
    assert_eq!((ex.attempts, ex.correlation_id), (3, flow.clone()));
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].envelope.correlation_id, flow);
    assert!(letters[0].error.contains(&flow.to_string()));
    let stats = handler.stats();
    assert_eq!(
        (stats.errors, stats.propagated, stats.retries, stats.gave_up),
        (4, 1, 2, 1)
    );
    assert_eq!(handler.history().len(), 4);
    // Further failures of a flow given up are only recorded.
    bus.publish_to("x.error", report(flow, false))
        .await
        .unwrap();
    bus.run_until_idle().await;
    assert_eq!(handler.stats().gave_up, 1);
    assert_eq!(retries.envelopes().len(), 2);
}

/// A dead-letter sink that keeps what it gets.
#[derive(Clone, Default)]
struct Kept(std::sync::Arc<std::sync::Mutex<Vec<switchyard::DeadLetter>>>);

impl switchyard::DeadLetterSink for Kept {
    fn put(&self, letter: switchyard::DeadLetter) {
        self.0.lock().unwrap().push(letter);
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_into_the_sink_the_bus_was_built_with() {
    // A node builds its bus with its own dead-letter queue: the error handler's letters must
    // land there, not in the bus's unused in-memory store.
    let kept = Kept::default();
    let bus = Bus::builder().dead_letters(kept.clone()).build().unwrap();
    let handler = ErrorHandler::new(RetryPolicy::attempts(1));
    let exhausted = Recorder::start(&bus, "x.retry.exhausted").await.unwrap();
    let _running = Assembly::new(&bus)
        .component(handler.component())
        .component(
            ComponentBuilder::new("x-manager", Role::Manager, "x")
                .on_envelope("x.retry.exhausted", |_, _| async {
                    Ok::<_, std::convert::Infallible>(())
                }),
        )
        .start()
        .await
        .unwrap();
    let flow = MessageId::new();
    bus.publish_to("x.error", report(flow.clone(), false))
        .await
        .unwrap();
    exhausted.wait_for(1, WAIT).await.unwrap();
    let letters = kept.0.lock().unwrap().clone();
    assert_eq!(letters.len(), 1, "the configured sink got the letter");
    assert_eq!(letters[0].envelope.correlation_id, flow);
    assert_eq!(letters[0].handler.as_deref(), Some(ErrorHandler::NAME));
    assert!(
        bus.dead_letters().is_none(),
        "a bus with its own sink keeps no in-memory store"
    );
}

/// What the processor of the replay tests handles.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Load {
    batch: u32,
}

impl Message for Load {
    const TOPIC: &'static str = "x.load.execute";
}

/// An assembly of the error handler (one attempt), a manager for its retry topics and
/// `x-processor` on `x.load.execute`, which fails the first delivery of every message id
/// (an upstream outage) and completes when the same id comes again, unless `always_fail`.
async fn replayable(bus: &Bus, always_fail: bool) -> (switchyard_components::Running, Recorder) {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let done = Recorder::start(bus, "x.load.processed").await.unwrap();
    let running = Assembly::new(bus)
        .component(ErrorHandler::new(RetryPolicy::attempts(1)).component())
        .component(
            ComponentBuilder::new("x-manager", Role::Manager, "x")
                .on_envelope("x.retry.request", |_, _| async {
                    Ok::<_, std::convert::Infallible>(())
                })
                .on_envelope("x.retry.exhausted", |_, _| async {
                    Ok::<_, std::convert::Infallible>(())
                }),
        )
        .component(
            ComponentBuilder::new("x-processor", Role::Processor, "x").on::<Load, _, _, _, _>(
                Load::TOPIC,
                move |load, cx| {
                    let seen = seen.clone();
                    async move {
                        let again = !seen.lock().unwrap().insert(cx.envelope().id.clone());
                        let ctx = cx.begin("load").await?;
                        ctx.start().await?;
                        if again && !always_fail {
                            ctx.complete(&load.batch).await?;
                        } else {
                            ctx.fail("UpstreamUnavailable", "the upstream store is down", true)
                                .await?;
                        }
                        Ok::<_, switchyard::BoxError>(())
                    }
                },
            ),
        )
        .start()
        .await
        .unwrap();
    (running, done)
}

#[tokio::test(start_paused = true)]
async fn giving_up_dead_letters_the_failed_request_whose_replay_reruns_the_step() {
    let kept = Kept::default();
    let bus = Bus::builder().dead_letters(kept.clone()).build().unwrap();
    let (_running, done) = replayable(&bus, false).await;
    let sent = Load { batch: 7 }.to_envelope().unwrap();
    bus.publish_envelope(sent.clone()).await.unwrap();
    bus.run_until_idle().await;

    let letters = kept.0.lock().unwrap().clone();
    assert_eq!(letters.len(), 1, "given up after one attempt");
    let letter = &letters[0];
    // The dead letter is the message the processor failed on, not the error report.
    assert_eq!(letter.envelope.id, sent.id);
    assert_eq!(letter.envelope.topic.as_str(), "x.load.execute");
    assert_eq!(letter.envelope.correlation_id, sent.correlation_id);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&letter.envelope.payload).unwrap(),
        serde_json::json!({"batch": 7})
    );
    assert_eq!(
        letter.handler.as_deref(),
        Some("x-processor:x.load.execute"),
        "the subscription that failed"
    );
    assert!(
        letter.error.contains("UpstreamUnavailable"),
        "{}",
        letter.error
    );
    assert_eq!(letter.attempts, 1);
    assert!(letter.error.contains(&sent.correlation_id.to_string()));
    assert!(done.envelopes().iter().all(|e| {
        serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()["status"] != "completed"
    }));

    // Replaying it (as the node's replay does: same envelope, same id) re-runs the step.
    bus.publish_envelope(letter.envelope.clone()).await.unwrap();
    bus.run_until_idle().await;
    let completed = done
        .envelopes()
        .iter()
        .filter(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()["status"]
                == "completed"
        })
        .count();
    assert_eq!(completed, 1, "the replayed step completed");
    assert_eq!(kept.0.lock().unwrap().len(), 1, "not dead-lettered again");
}

#[tokio::test(start_paused = true)]
async fn a_replayed_request_that_fails_again_is_dead_lettered_again() {
    let kept = Kept::default();
    let bus = Bus::builder().dead_letters(kept.clone()).build().unwrap();
    let (_running, _done) = replayable(&bus, true).await;
    let sent = Load { batch: 8 }.to_envelope().unwrap();
    bus.publish_envelope(sent.clone()).await.unwrap();
    bus.run_until_idle().await;
    let first = kept.0.lock().unwrap()[0].clone();

    bus.publish_envelope(first.envelope.clone()).await.unwrap();
    bus.run_until_idle().await;
    let letters = kept.0.lock().unwrap().clone();
    assert_eq!(
        letters.len(),
        2,
        "the flow was given up on, the replay failed again"
    );
    assert_eq!(letters[1].envelope.id, sent.id);
    assert_eq!(letters[1].attempts, 2);
    assert!(letters[1].error.contains("UpstreamUnavailable"));
}

#[tokio::test(start_paused = true)]
async fn a_report_without_the_request_dead_letters_the_report_as_before() {
    let kept = Kept::default();
    let bus = Bus::builder().dead_letters(kept.clone()).build().unwrap();
    let (_running, _done) = replayable(&bus, true).await;
    let flow = MessageId::new();
    bus.publish_to("x.error", report(flow.clone(), false))
        .await
        .unwrap();
    bus.run_until_idle().await;
    let letters = kept.0.lock().unwrap().clone();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].envelope.topic.as_str(), "x.error");
    assert_eq!(letters[0].handler.as_deref(), Some(ErrorHandler::NAME));
}
