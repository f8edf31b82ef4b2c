//! Failures in the middle of the chain as the top and the built-in system components see
//! them (a processor that panics, rejects, errors once), and an assembly stopped mid-flight.

use std::sync::Arc;
use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{Bus, DeadLetterReason, Jitter, Message, MessageId};
use switchyard_components::builtin::{
    ErrorHandler, HealthChecker, HealthStatus, RetryExhausted, RetryPolicy, StateTracker,
};
use switchyard_components::{ContextConfig, ErrorReport, RequestState, StatusUpdate};

use super::{Opts, Outcome, chain, results_of, send, wait_top};
use crate::WAIT;

fn errors() -> ErrorHandler {
    ErrorHandler::new(
        RetryPolicy::attempts(3)
            .initial_delay(Duration::ZERO)
            .jitter(Jitter::None),
    )
}

/// §7: "A handler that panics ... has its open contexts failed the same way from a task, as
/// `HandlerAborted`"; §6: the error handler "retries original failures only (`propagated:
/// false`)". A processor that panics on every delivery (the bus delivers it 3 times by
/// default): the top sees exactly one failed result naming `HandlerAborted`, the bus
/// dead-letters the processor's message once (reason `Panicked`), the error handler retries
/// nothing, the state tracker sees no state outside the machine, and no context is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_processor_fails_the_flow_once_at_the_top() {
    let bus = Bus::new();
    let (eh, tracker) = (errors(), StateTracker::new(1000));
    let reports = Recorder::start(&bus, "shop.error").await.unwrap();
    let opts = Opts {
        extra: vec![eh.component(), tracker.component()],
        ..Opts::default()
    };
    let c = chain(&bus, Arc::new(|_, _| Outcome::Panic), opts).await;
    let flow = MessageId::new();
    send(&c, &flow, 1).await;
    wait_top(&c, 1).await;
    // 3 processor reports (one per delivery) + handler, service, manager passing it on.
    reports.wait_for(6, WAIT).await.unwrap();
    bus.run_until_idle().await;
    let got = results_of(&c, &flow);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].error.as_ref().map(|e| e.error_type.as_str()),
        Some("HandlerAborted")
    );
    let by: Vec<(String, bool)> = reports
        .envelopes()
        .iter()
        .map(|e| ErrorReport::from_envelope(e).unwrap())
        .map(|r| (r.component.to_string(), r.propagated))
        .collect();
    assert_eq!(by.len(), 6, "{by:?}");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].envelope.topic.as_str(), "shop.order.execute");
    assert_eq!(letters[0].reason, DeadLetterReason::Panicked);
    let s = eh.stats();
    assert_eq!((s.retries, s.gave_up), (0, 0), "{s:?}");
    assert!(tracker.anomalies().is_empty(), "{:?}", tracker.anomalies());
    assert!(c.running.contexts().is_empty());
    assert_eq!(c.running.contexts().stats().timed_out, 0);
}

/// §6 ErrorHandler: a failure that is not retryable is given up at once: "the request the
/// failing component was handling goes to the dead-letter sink ... filed under the
/// component's subscription (`<component>:<pattern>`), with the attempts made and the
/// correlation id, domain, component and error in the error text; and
/// `<domain>.retry.exhausted` is published". The processor rejects the order: the top sees
/// the rejection (`Invalid`) once; the dead letter is the processor's `execute` message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_order_is_dead_lettered_once_and_reported_to_the_top() {
    let bus = Bus::new();
    let eh = errors();
    let exhausted = Recorder::start(&bus, "shop.retry.exhausted").await.unwrap();
    let execute = Recorder::start(&bus, "shop.order.execute").await.unwrap();
    let opts = Opts {
        extra: vec![eh.component()],
        ..Opts::default()
    };
    let c = chain(&bus, Arc::new(|_, _| Outcome::Reject), opts).await;
    let flow = MessageId::new();
    send(&c, &flow, 9).await;
    wait_top(&c, 1).await;
    let ex = exhausted.wait_for(1, WAIT).await.unwrap();
    bus.run_until_idle().await;
    let got = results_of(&c, &flow);
    assert_eq!(got.len(), 1);
    let e = got[0].error.as_ref().unwrap();
    assert_eq!((e.error_type.as_str(), e.retryable), ("Invalid", false));
    let ex: RetryExhausted = serde_json::from_slice(&ex[0].payload).unwrap();
    assert_eq!(
        (ex.correlation_id.clone(), ex.failed_component.as_str()),
        (flow.clone(), "shop-processor")
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!(
        l.envelope.id,
        execute.envelopes()[0].id,
        "not the processor's request"
    );
    assert_eq!(
        l.handler.as_deref(),
        Some("shop-processor:shop.order.execute")
    );
    for part in [
        flow.to_string(),
        "shop".into(),
        "shop-processor".into(),
        "Invalid".into(),
    ] {
        assert!(l.error.contains(&part), "{part} not in {}", l.error);
    }
    assert_eq!(eh.stats().retries, 0);
    assert!(c.running.contexts().is_empty());
}

/// §3/§7: the bus retries a message whose handler returned an error ("because the bus
/// retries the message itself"). A processor whose module call fails once and succeeds on
/// the bus's second delivery did the work: the flow must complete at the top with its result,
/// as any bus user expects of a retried-then-successful consumer (MassTransit, Watermill), not
/// report a failure of a step that succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_bus_retries_successfully_completes_the_flow() {
    let bus = Bus::new();
    let behaviour = Arc::new(|_, delivery| {
        if delivery == 1 {
            Outcome::HandlerErr
        } else {
            Outcome::Double
        }
    });
    let c = chain(&bus, behaviour, Opts::default()).await;
    let processed = Recorder::start(&bus, "shop.order.processed").await.unwrap();
    let flow = MessageId::new();
    send(&c, &flow, 6).await;
    // The failed first delivery publishes no result (the bus delivers the message again);
    // the second delivery's result is the only one.
    processed.wait_for(1, WAIT).await.unwrap();
    bus.run_until_idle().await;
    wait_top(&c, 1).await;
    assert_eq!(
        processed.envelopes().len(),
        1,
        "a failed attempt's result went up"
    );
    assert_eq!(c.executed.load(std::sync::atomic::Ordering::SeqCst), 2);
    let got = results_of(&c, &flow);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].is_ok() && got[0].result == Some(serde_json::json!(12)),
        "the top saw {:?} though the processor's retry produced 12",
        got[0].error
    );
}

/// `Running::stop`: "Unsubscribes every handler (queued messages are still handled by their
/// workers)"; §7: "A context leaves the table exactly once: at its terminal transition, at its
/// timeout". 20 flows in flight (the processor holding one, 19 queued behind it) when the
/// assembly stops: the queued ones are still handled, every one of the 80 contexts ends
/// exactly once (one terminal status update each), and every flow's manager context reports
/// an outcome on the bus: nothing is silently lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_mid_flight_ends_every_context_exactly_once() {
    const FLOWS: usize = 20;
    let bus = Bus::new();
    let status = Recorder::start(&bus, "shop.status.update").await.unwrap();
    let contexts = ContextConfig {
        timeout: Duration::from_millis(500),
        sweep_interval: Duration::from_millis(20),
    };
    let c = chain(
        &bus,
        Arc::new(|_, _| Outcome::Hold),
        Opts {
            contexts,
            ..Opts::default()
        },
    )
    .await;
    let flows: Vec<MessageId> = (0..FLOWS).map(|_| MessageId::new()).collect();
    for (i, f) in flows.iter().enumerate() {
        send(&c, f, i as u64).await;
    }
    // Manager, service, handler: pending + running for every flow; the processor: one.
    status.wait_for(FLOWS * 3 * 2 + 2, WAIT).await.unwrap();
    let table = c.running.contexts().clone();
    let (gate, top, executed) = (c.gate.clone(), c.top, c.executed);
    c.running.stop();
    gate.add_permits(FLOWS);
    let all = status.wait_for(FLOWS * 4 * 3, WAIT).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(
        executed.load(std::sync::atomic::Ordering::SeqCst) as usize,
        FLOWS,
        "queued requests were dropped at stop"
    );
    let updates: Vec<StatusUpdate> = all
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .collect();
    let mut terminal = std::collections::HashMap::new();
    for u in &updates {
        if u.to.is_terminal() {
            *terminal.entry(u.request_id).or_insert(0) += 1;
        }
    }
    assert_eq!(terminal.len(), FLOWS * 4, "contexts without an end");
    assert!(terminal.values().all(|&n| n == 1), "a context ended twice");
    assert!(table.is_empty());
    let s = table.stats();
    assert_eq!(
        (s.created, s.completed + s.failed + s.cancelled),
        (80, 80),
        "{s:?}"
    );
    for f in &flows {
        let ends: Vec<_> = updates
            .iter()
            .filter(|u| {
                &u.correlation_id == f && u.component == "shop-manager" && u.to.is_terminal()
            })
            .collect();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].to, RequestState::Failed);
    }
    assert_eq!(
        top.envelopes().len(),
        FLOWS,
        "every flow reports one outcome at the top"
    );
}

/// Runs four flows through a processor behaving as `outcome` with a health checker (stale
/// after a minute, degraded above 50 % failed requests) and returns it.
async fn health_after(outcome: Outcome) -> HealthChecker {
    let bus = Bus::new();
    let health = HealthChecker::new(Duration::from_secs(60), 0.5);
    let reports = Recorder::start(&bus, "shop.error").await.unwrap();
    let opts = Opts {
        extra: vec![health.component()],
        ..Opts::default()
    };
    let c = chain(&bus, Arc::new(move |_, _| outcome), opts).await;
    for n in 0..4 {
        send(&c, &MessageId::new(), n).await;
    }
    wait_top(&c, 4).await;
    // Every processor failure and the three layers passing each on.
    let per_flow = if outcome == Outcome::Panic { 6 } else { 4 };
    reports.wait_for(4 * per_flow, WAIT).await.unwrap();
    bus.run_until_idle().await;
    health
}

/// §6 HealthChecker: "status updates and original errors per component: `Healthy`,
/// `Degraded` (share of failed requests above a threshold)". A processor that rejects every
/// order is degraded; the layers above, which only pass its failure on, stay healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_failing_every_request_is_degraded_and_the_layers_above_are_not() {
    let health = health_after(Outcome::Reject).await;
    assert_eq!(
        health.status("shop-processor"),
        Some(HealthStatus::Degraded),
        "{:?}",
        health.report()
    );
    for c in ["shop-handler", "shop-service", "shop-manager"] {
        assert_eq!(
            health.status(c),
            Some(HealthStatus::Healthy),
            "{c}: {:?}",
            health.report()
        );
    }
}

/// The same promise for a processor that panics on every request (§7: its contexts are
/// failed "as `HandlerAborted`"): it fails 100 % of its requests, so it is degraded too; a
/// component that crashes on every message must not look healthy on the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_panicking_on_every_request_is_degraded() {
    let health = health_after(Outcome::Panic).await;
    assert_eq!(
        health.status("shop-processor"),
        Some(HealthStatus::Degraded),
        "{:?}",
        health.report()
    );
    // The layers above only pass its failure on.
    for c in ["shop-handler", "shop-service", "shop-manager"] {
        assert_eq!(
            health.status(c),
            Some(HealthStatus::Healthy),
            "{c}: {:?}",
            health.report()
        );
    }
}
