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
        at_ms: 0,
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
