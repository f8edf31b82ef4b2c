//! Request contexts: the state machine, the events transitions publish, the timeout.

use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{Bus, Message};
use switchyard_components::{
    Assembly, Completion, ComponentBuilder, ComponentBus, ContextConfig, ErrorReport, RequestState,
    Role, Running, StatusUpdate, TransitionError,
};

use crate::{Note, WAIT};

#[test]
fn state_machine_table() {
    use RequestState::*;
    let all = [Pending, Running, Completed, Failed, Cancelled];
    let legal = [
        (Pending, Running),
        (Pending, Failed),
        (Pending, Cancelled),
        (Running, Completed),
        (Running, Failed),
        (Running, Cancelled),
    ];
    for from in all {
        for to in all {
            assert_eq!(
                from.can_become(to),
                legal.contains(&(from, to)),
                "{from} → {to}"
            );
        }
    }
    assert!(
        [Completed, Failed, Cancelled]
            .iter()
            .all(|s| s.is_terminal())
    );
    assert!(!Pending.is_terminal() && !Running.is_terminal());
}

async fn one_component(bus: &Bus, config: ContextConfig) -> (Running, ComponentBus) {
    let running = Assembly::new(bus)
        .contexts(config)
        .component(ComponentBuilder::new("shop-manager", Role::Manager, "shop"))
        .start()
        .await
        .unwrap();
    let cbus = running.component_bus("shop-manager").unwrap();
    (running, cbus)
}

#[tokio::test]
async fn legal_transitions_publish_status_updates_and_a_completion() {
    let bus = Bus::new();
    let status = Recorder::start(&bus, "shop.status.update").await.unwrap();
    let done = Recorder::start(&bus, "shop.order.complete").await.unwrap();
    let (running, cbus) = one_component(&bus, ContextConfig::default()).await;
    let parent = Note { n: 1 }.to_envelope().unwrap();
    let ctx = running
        .contexts()
        .begin(&cbus, "order", Some(&parent))
        .await
        .unwrap();
    assert_eq!(ctx.state(), Some(RequestState::Pending));
    ctx.set_metadata("customer", "ada").unwrap();
    ctx.record("items", 3.0).unwrap();
    ctx.start().await.unwrap();
    assert_eq!(ctx.state(), Some(RequestState::Running));
    let snap = ctx.snapshot().unwrap();
    assert_eq!(snap.correlation_id, parent.correlation_id);
    assert_eq!(snap.metadata["customer"], "ada");
    assert!(snap.updated_at >= snap.created_at);
    ctx.complete(&serde_json::json!({"total": 42}))
        .await
        .unwrap();
    assert!(running.contexts().is_empty(), "removed on completion");

    let updates = status.wait_for(3, WAIT).await.unwrap();
    let seq: Vec<(Option<RequestState>, RequestState)> = updates
        .iter()
        .map(|e| {
            let u = StatusUpdate::from_envelope(e).unwrap();
            assert_eq!(u.request_id, ctx.id());
            assert_eq!(e.correlation_id, parent.correlation_id);
            assert_eq!(e.causation_id(), Some(&parent.id));
            assert_eq!(e.source(), Some("shop-manager"));
            (u.from, u.to)
        })
        .collect();
    assert_eq!(
        seq,
        vec![
            (None, RequestState::Pending),
            (Some(RequestState::Pending), RequestState::Running),
            (Some(RequestState::Running), RequestState::Completed),
        ]
    );
    let got = done.wait_for(1, WAIT).await.unwrap();
    let c = Completion::<serde_json::Value>::from_envelope(&got[0]).unwrap();
    assert!(c.is_ok());
    assert_eq!(c.result.unwrap()["total"], 42);
    assert_eq!(c.metadata["customer"], "ada");
    assert_eq!(running.contexts().stats().completed, 1);
}

#[tokio::test]
async fn illegal_transitions_are_rejected_with_a_typed_error() {
    let bus = Bus::new();
    let (running, cbus) = one_component(&bus, ContextConfig::default()).await;
    let ctx = running
        .contexts()
        .begin(&cbus, "order", None)
        .await
        .unwrap();
    let err = ctx.complete(&()).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransitionError::Illegal {
                from: RequestState::Pending,
                to: RequestState::Completed,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(ctx.state(), Some(RequestState::Pending), "unchanged");
    ctx.start().await.unwrap();
    let err = ctx.start().await.unwrap_err();
    assert!(matches!(
        err,
        TransitionError::Illegal {
            from: RequestState::Running,
            to: RequestState::Running,
            ..
        }
    ));
    ctx.cancel("user asked").await.unwrap();
    let err = ctx.start().await.unwrap_err();
    assert!(matches!(err, TransitionError::Gone { .. }), "{err}");
    assert!(err.to_string().contains(&ctx.id().to_string()));
    assert!(running.contexts().is_empty());
}

#[tokio::test]
async fn failure_publishes_error_with_type_message_and_correlation() {
    let bus = Bus::new();
    let errors = Recorder::start(&bus, "shop.error").await.unwrap();
    let results = Recorder::start(&bus, "shop.order.complete").await.unwrap();
    let (running, cbus) = one_component(&bus, ContextConfig::default()).await;
    let parent = Note { n: 1 }.to_envelope().unwrap();
    let ctx = running
        .contexts()
        .begin(&cbus, "order", Some(&parent))
        .await
        .unwrap();
    ctx.start().await.unwrap();
    ctx.fail("PaymentDeclined", "card expired", false)
        .await
        .unwrap();
    let got = errors.wait_for(1, WAIT).await.unwrap();
    let report = ErrorReport::from_envelope(&got[0]).unwrap();
    assert_eq!(report.error_type, "PaymentDeclined");
    assert_eq!(report.message, "card expired");
    assert_eq!(report.correlation_id, parent.correlation_id);
    assert_eq!(report.component, "shop-manager");
    assert!(!report.propagated && !report.retryable);
    let done = results.wait_for(1, WAIT).await.unwrap();
    let c = Completion::<serde_json::Value>::from_envelope(&done[0]).unwrap();
    assert!(!c.is_ok());
    assert_eq!(c.error.unwrap().error_type, "PaymentDeclined");
    assert!(running.contexts().is_empty());
    assert_eq!(running.contexts().stats().failed, 1);
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_fails_contexts_past_their_timeout() {
    let bus = Bus::new();
    let errors = Recorder::start(&bus, "shop.error").await.unwrap();
    let config = ContextConfig {
        timeout: Duration::from_secs(2),
        sweep_interval: Duration::from_millis(100),
    };
    let (running, cbus) = one_component(&bus, config).await;
    let ctx = running
        .contexts()
        .begin(&cbus, "order", None)
        .await
        .unwrap();
    ctx.start().await.unwrap();
    // The paused clock moves on by itself once every task waits: the sweeper's tick fires.
    let got = errors.wait_for(1, WAIT).await.unwrap();
    let report = ErrorReport::from_envelope(&got[0]).unwrap();
    assert_eq!(report.error_type, "Timeout");
    assert!(report.retryable);
    assert!(running.contexts().is_empty());
    assert_eq!(running.contexts().stats().timed_out, 1);
    assert!(matches!(
        ctx.complete(&()).await,
        Err(TransitionError::Gone { .. })
    ));
}

#[tokio::test]
async fn results_find_the_exact_context_through_the_request_header() {
    // A service begins two contexts in one flow (as after a retry); the handler's result for
    // the first one names the first one, not the newer one.
    let bus = Bus::new();
    let handled = Recorder::start(&bus, "shop.order.handled").await.unwrap();
    let running =
        Assembly::new(&bus)
            .component(
                ComponentBuilder::new("shop-service", Role::Service, "shop")
                    .publishes("shop.order.dispatch"),
            )
            .component(
                ComponentBuilder::new("shop-handler", Role::Handler, "shop")
                    .on::<Note, _, _, _, _>("shop.order.dispatch", |_note, cx| async move {
                        let ctx = cx.begin("order").await?;
                        ctx.start().await?;
                        ctx.complete(&"done").await?;
                        Ok::<_, switchyard::BoxError>(())
                    }),
            )
            .start()
            .await
            .unwrap();
    let cbus = running.component_bus("shop-service").unwrap();
    let parent = Note { n: 1 }.to_envelope().unwrap();
    let table = running.contexts();
    let first = table.begin(&cbus, "order", Some(&parent)).await.unwrap();
    let second = table.begin(&cbus, "order", Some(&parent)).await.unwrap();
    assert_eq!(
        table.find("shop-service", parent.correlation_id.clone()),
        Some(second.id())
    );
    first
        .publish_to("shop.order.dispatch", Note { n: 2 })
        .await
        .unwrap();
    let got = handled.wait_for(1, WAIT).await.unwrap();
    let c = Completion::<String>::from_envelope(&got[0]).unwrap();
    assert_eq!(c.parent_request, Some(first.id()));
    assert_eq!(c.correlation_id, parent.correlation_id);
    assert_eq!(got[0].source(), Some("shop-handler"));
}

#[tokio::test]
async fn a_context_whose_creation_cannot_be_published_is_not_kept() {
    let bus = Bus::new();
    let (running, cbus) = one_component(&bus, ContextConfig::default()).await;
    bus.shutdown(Duration::from_secs(1)).await.unwrap();
    let err = running
        .contexts()
        .begin(&cbus, "order", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransitionError::Publish {
                state: RequestState::Cancelled,
                source: switchyard::PublishError::ShuttingDown,
                ..
            }
        ),
        "{err}"
    );
    assert!(running.contexts().is_empty());
    assert_eq!(running.contexts().stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_handler_fails_the_contexts_it_began() {
    let bus = Bus::new(); // 3 attempts per message by default
    let errors = Recorder::start(&bus, "shop.error").await.unwrap();
    let running =
        Assembly::new(&bus)
            .component(
                ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                    .on::<Note, _, _, _, _>("shop.order.request", |_note, cx| async move {
                        let ctx = cx.begin("order").await?;
                        ctx.start().await?;
                        Err::<(), _>(switchyard::BoxError::from("database unreachable"))
                    }),
            )
            .start()
            .await
            .unwrap();
    bus.publish_to("shop.order.request", Note { n: 1 })
        .await
        .unwrap();
    let got = errors.wait_for(3, WAIT).await.unwrap();
    bus.run_until_idle().await;
    for (i, e) in got.iter().enumerate() {
        let r = ErrorReport::from_envelope(e).unwrap();
        assert_eq!(r.error_type, "HandlerError");
        assert_eq!(r.message, "database unreachable");
        assert!(r.propagated, "the bus retries; the error handler must not");
        // Attempts 1 and 2 are delivered again; the third is the last.
        assert_eq!(r.bus_retries, i < 2, "report {i}");
    }
    assert!(running.contexts().is_empty());
    let stats = running.contexts().stats();
    assert_eq!((stats.created, stats.failed, stats.timed_out), (3, 3, 0));
    assert_eq!(
        bus.dead_letters().unwrap().len(),
        1,
        "the message itself is dead-lettered by the bus"
    );
}

/// A handler error the bus will not retry (`Permanent`) fails the flow on the first attempt,
/// and a component's own `max_attempts` is the limit its handlers count against: with 2
/// attempts, the first failure is delivered again and the second fails the flow once.
#[tokio::test(start_paused = true)]
async fn the_last_attempt_or_a_permanent_error_fails_the_flow_once() {
    for (permanent, attempts, reports) in [(true, 1, 1), (false, 2, 2)] {
        let bus = Bus::new(); // 3 attempts per message by default
        let errors = Recorder::start(&bus, "shop.error").await.unwrap();
        let done = Recorder::start(&bus, "shop.order.complete").await.unwrap();
        let running = Assembly::new(&bus)
            .component(
                ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                    .max_attempts(2)
                    .on::<Note, _, _, _, _>("shop.order.request", move |_note, cx| async move {
                        assert_eq!(cx.max_attempts(), 2);
                        let ctx = cx.begin("order").await?;
                        ctx.start().await?;
                        let e = switchyard::BoxError::from("database unreachable");
                        if permanent {
                            return Err(switchyard::Permanent::new(e).into());
                        }
                        Err::<(), switchyard::BoxError>(e)
                    }),
            )
            .start()
            .await
            .unwrap();
        bus.publish_to("shop.order.request", Note { n: 1 })
            .await
            .unwrap();
        done.wait_for(1, WAIT).await.unwrap();
        bus.run_until_idle().await;
        let got: Vec<ErrorReport> = errors
            .envelopes()
            .iter()
            .map(|e| ErrorReport::from_envelope(e).unwrap())
            .collect();
        assert_eq!(got.len(), reports, "permanent {permanent}: {got:?}");
        let retried: Vec<bool> = got.iter().map(|r| r.bus_retries).collect();
        let mut want = vec![true; reports - 1];
        want.push(false);
        assert_eq!(retried, want, "permanent {permanent}");
        assert_eq!(got[reports - 1].retryable, !permanent);
        let ends = done.envelopes();
        assert_eq!(ends.len(), 1, "the flow failed more than once");
        let end: Completion<serde_json::Value> = serde_json::from_slice(&ends[0].payload).unwrap();
        assert_eq!(end.error.map(|e| e.error_type), Some("HandlerError".into()));
        let letters = bus.dead_letters().unwrap().list();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].attempts, attempts, "permanent {permanent}");
        assert!(running.contexts().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_does_not_leave_its_contexts_behind() {
    let bus = Bus::builder().max_attempts(1).build().unwrap();
    let errors = Recorder::start(&bus, "shop.error").await.unwrap();
    let running =
        Assembly::new(&bus)
            .component(
                ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                    .on::<Note, _, _, _, _>("shop.order.request", |note, cx| async move {
                        let ctx = cx.begin("order").await?;
                        ctx.start().await?;
                        if note.n == 1 {
                            panic!("bug in the handler");
                        }
                        Ok::<_, switchyard::BoxError>(())
                    }),
            )
            .start()
            .await
            .unwrap();
    bus.publish_to("shop.order.request", Note { n: 1 })
        .await
        .unwrap();
    let got = errors.wait_for(1, WAIT).await.unwrap();
    let r = ErrorReport::from_envelope(&got[0]).unwrap();
    assert_eq!(r.error_type, "HandlerAborted");
    assert!(running.contexts().is_empty());
    assert_eq!(running.contexts().stats().timed_out, 0);
}

#[tokio::test]
async fn a_huge_timeout_does_not_panic() {
    let bus = Bus::new();
    let config = ContextConfig {
        timeout: Duration::MAX,
        sweep_interval: Duration::ZERO,
    };
    let (running, cbus) = one_component(&bus, config).await;
    let ctx = running
        .contexts()
        .begin(&cbus, "order", None)
        .await
        .unwrap();
    ctx.start().await.unwrap();
    ctx.complete(&()).await.unwrap();
    assert!(running.contexts().is_empty());
}
