//! Review rev11: the users' layered system (broker refactoring guide, e2e data pipeline plan)
//! built with the public API only: a CPM and one domain's manager → service → handler →
//! processor, requests down and feedback up, the error handler's retries, its dead letter and
//! a replay; the layering enforced; trace and topology views of a real flow; and the same
//! scenario on the in-memory bus and on the embedded log (`switchyard-log`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Envelope, Jitter, MessageId, PublishError, Topic};
use switchyard_components::builtin::{
    ErrorHandler, RetryExhausted, RetryPolicy, RetryRequest, StateTracker,
};
use switchyard_components::trace::TraceRecorder;
use switchyard_components::{
    Assembly, Completion, ComponentBuilder, EnforcementMode, Role, Running, StartError,
};

use crate::{Note, WAIT};

/// The layered analytics domain of the guide, plus a CPM and the built-in error handler and
/// state tracker. `fail` is how many more times the processor fails (retryable).
struct App {
    running: Running,
    errors: ErrorHandler,
    tracker: StateTracker,
}

async fn start_app(bus: &Bus, fail: Arc<AtomicU32>, attempts: u32) -> App {
    start_app_with(bus, fail, attempts, false).await
}

/// `original_give_up`: the manager fails its context as an original (not propagated) failure
/// when the error handler gives up, instead of passing the failure on.
async fn start_app_with(
    bus: &Bus,
    fail: Arc<AtomicU32>,
    attempts: u32,
    original_give_up: bool,
) -> App {
    let errors = ErrorHandler::new(
        RetryPolicy::attempts(attempts)
            .initial_delay(Duration::ZERO)
            .jitter(Jitter::None),
    );
    let tracker = StateTracker::new(1000);
    let cpm = ComponentBuilder::new("cpm", Role::Cpm, "cpm")
        .publishes("analytics.features.request")
        .on::<Completion<serde_json::Value>, _, _, _, _>(
            "analytics.features.complete",
            |_, _| async { Ok::<_, BoxError>(()) },
        );
    let manager = ComponentBuilder::new("analytics-manager", Role::Manager, "analytics")
        .publishes("analytics.features.submit")
        .on("analytics.features.request", |n: Note, cx| async move {
            let ctx = cx.begin("features").await?;
            ctx.set_metadata("n", n.n.to_string())?;
            ctx.start().await?;
            ctx.publish_to("analytics.features.submit", n).await?;
            Ok::<_, BoxError>(())
        })
        .on::<Completion<serde_json::Value>, _, _, _, _>(
            "analytics.features.served",
            |done, cx| async move {
                if let Some(ctx) = cx.context_for(&done) {
                    match done.error {
                        None => ctx.complete(&done.result).await?,
                        // A retryable failure waits for the error handler's retry request.
                        Some(e) if e.retryable => {}
                        Some(e) => ctx.fail_propagated(&e).await?,
                    }
                }
                Ok::<_, BoxError>(())
            },
        )
        .on(
            "analytics.retry.request",
            |r: RetryRequest, cx| async move {
                if let Some(ctx) = cx.context() {
                    let n: u64 = ctx
                        .snapshot()
                        .and_then(|c| c.metadata.get("n").and_then(|v| v.parse().ok()))
                        .unwrap_or_default();
                    assert!(r.attempt >= 2);
                    ctx.publish_to("analytics.features.submit", Note { n })
                        .await?;
                }
                Ok::<_, BoxError>(())
            },
        )
        .on(
            "analytics.retry.exhausted",
            move |ex: RetryExhausted, cx| async move {
                if let Some(ctx) = cx.context() {
                    if original_give_up {
                        ctx.fail("RetryExhausted", format!("{} attempts", ex.attempts), false)
                            .await?;
                        return Ok::<_, BoxError>(());
                    }
                    let info = switchyard_components::ErrorInfo {
                        error_type: "RetryExhausted".into(),
                        message: format!("{} attempts", ex.attempts),
                        retryable: false,
                    };
                    ctx.fail_propagated(&info).await?;
                }
                Ok::<_, BoxError>(())
            },
        );
    let service = ComponentBuilder::new("analytics-service", Role::Service, "analytics")
        .publishes("analytics.features.dispatch")
        .on("analytics.features.submit", |n: Note, cx| async move {
            let ctx = cx.begin("features").await?;
            ctx.start().await?;
            ctx.publish_to("analytics.features.dispatch", n).await?;
            Ok::<_, BoxError>(())
        })
        .on::<Completion<serde_json::Value>, _, _, _, _>(
            "analytics.features.handled",
            |done, cx| async move {
                if let Some(ctx) = cx.context_for(&done) {
                    match done.error {
                        None => ctx.complete(&done.result).await?,
                        Some(e) => ctx.fail_propagated(&e).await?,
                    }
                }
                Ok::<_, BoxError>(())
            },
        );
    let handler = ComponentBuilder::new("analytics-handler", Role::Handler, "analytics")
        .publishes("analytics.features.execute")
        .on("analytics.features.dispatch", |n: Note, cx| async move {
            let ctx = cx.begin("features").await?;
            ctx.start().await?;
            ctx.publish_to("analytics.features.execute", n).await?;
            Ok::<_, BoxError>(())
        })
        .on::<Completion<serde_json::Value>, _, _, _, _>(
            "analytics.features.processed",
            |done, cx| async move {
                if let Some(ctx) = cx.context_for(&done) {
                    match done.error {
                        None => ctx.complete(&done.result).await?,
                        Some(e) => ctx.fail_propagated(&e).await?,
                    }
                }
                Ok::<_, BoxError>(())
            },
        );
    let processor = ComponentBuilder::new("analytics-processor", Role::Processor, "analytics").on(
        "analytics.features.execute",
        move |n: Note, cx| {
            let fail = fail.clone();
            async move {
                let ctx = cx.begin("features").await?;
                ctx.start().await?;
                let failing = fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                    .is_ok();
                if failing {
                    ctx.fail("UpstreamUnavailable", "feature store down", true)
                        .await?;
                } else {
                    ctx.complete(&(n.n * 2)).await?;
                }
                Ok::<_, BoxError>(())
            }
        },
    );
    let running = Assembly::new(bus)
        .mode(EnforcementMode::Strict)
        .component(cpm)
        .component(manager)
        .component(service)
        .component(handler)
        .component(processor)
        .component(errors.component())
        .component(tracker.component())
        .start()
        .await
        .unwrap();
    App {
        running,
        errors,
        tracker,
    }
}

/// Publishes one request from the CPM under a new correlation id and waits for the domain's
/// completion of that flow (`done` records every completion since the scenario began: on the
/// log a new subscription starts at the beginning, so completions are matched by flow).
async fn one_run(app: &App, done: &Recorder, n: u64) -> (Completion<serde_json::Value>, Envelope) {
    let flow = MessageId::new();
    let env = Envelope::new(
        Topic::new("analytics.features.request").unwrap(),
        serde_json::to_vec(&Note { n }).unwrap(),
    )
    .with_correlation_id(flow.clone());
    app.running
        .component_bus("cpm")
        .unwrap()
        .publish_envelope(env)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    for k in 1.. {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let seen = done.wait_for(k, left).await.unwrap();
        if let Some(env) = seen.into_iter().find(|e| e.correlation_id == flow) {
            let c: Completion<serde_json::Value> = serde_json::from_slice(&env.payload).unwrap();
            return (c, env);
        }
    }
    unreachable!()
}

async fn completions(bus: &Bus) -> Recorder {
    Recorder::start(bus, "analytics.features.complete")
        .await
        .unwrap()
}

const DOWN_AND_UP: [&str; 8] = [
    "analytics.features.request",
    "analytics.features.submit",
    "analytics.features.dispatch",
    "analytics.features.execute",
    "analytics.features.processed",
    "analytics.features.handled",
    "analytics.features.served",
    "analytics.features.complete",
];

/// The flow's non-status topics in causal order (a chain: each caused by the one before).
fn chain(trace: &switchyard_components::trace::Trace) -> Vec<String> {
    let t = trace.pruned(|n| !n.topic.ends_with(".status.update"));
    assert_eq!(t.roots.len(), 1, "{}", t.render());
    t.roots[0]
        .walk()
        .iter()
        .map(|n| n.topic.to_string())
        .collect()
}

/// The guide's flow: a request walks down four layers and its result walks back up, every
/// message with the one correlation id, each caused by the one before, the observed edges are
/// exactly the declared one-layer edges, and no context or violation is left behind.
#[tokio::test]
async fn a_layered_request_walks_down_and_its_result_walks_back_up() {
    let bus = Bus::new();
    let traces = TraceRecorder::start(&bus, 1000).await.unwrap();
    let app = start_app(&bus, Arc::new(AtomicU32::new(0)), 3).await;
    let done_rec = completions(&bus).await;
    let (done, env) = one_run(&app, &done_rec, 21).await;
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(done.result, Some(serde_json::json!(42)));
    assert_eq!(env.source(), Some("analytics-manager"));

    let trace = traces.trace(env.correlation_id.clone());
    assert_eq!(chain(&trace), DOWN_AND_UP, "{}", trace.render());
    bus.run_until_idle().await;
    for e in traces.envelopes() {
        if e.topic.as_str().starts_with("analytics.") {
            assert_eq!(e.correlation_id, env.correlation_id, "{}", e.topic);
        }
    }
    let edges: Vec<(String, String)> = app
        .running
        .observed()
        .into_iter()
        .filter(|e| {
            !e.topic.ends_with(".status.update")
                && e.to.as_str() != ErrorHandler::NAME
                && e.to.as_str() != "state-tracker"
        })
        .map(|e| (e.from.to_string(), e.to.to_string()))
        .collect();
    for (a, b) in [
        ("cpm", "analytics-manager"),
        ("analytics-manager", "analytics-service"),
        ("analytics-service", "analytics-handler"),
        ("analytics-handler", "analytics-processor"),
        ("analytics-processor", "analytics-handler"),
        ("analytics-handler", "analytics-service"),
        ("analytics-service", "analytics-manager"),
        ("analytics-manager", "cpm"),
    ] {
        assert!(
            edges.contains(&(a.to_string(), b.to_string())),
            "{a} -> {b} not observed in {edges:?}"
        );
    }
    let stats = app.running.enforcement();
    assert_eq!((stats.violations, stats.refused), (0, 0), "{stats:?}");
    assert!(stats.checked >= 8, "{stats:?}");
    assert!(app.running.contexts().is_empty(), "contexts left behind");
    assert!(
        app.tracker.anomalies().is_empty(),
        "{:?}",
        app.tracker.anomalies()
    );
    assert!(app.tracker.active().is_empty());
    let mermaid = app.running.topology().to_mermaid();
    assert!(mermaid.contains("analytics-service"), "{mermaid}");
}

/// Feedback may only go up one layer and requests only down: a processor publishing a
/// request to the manager, a result straight to the manager (`target`), and a handler
/// publishing a processor's result are refused with `LayerViolation`, reach nobody, and are
/// counted per rule.
#[tokio::test]
async fn wrong_direction_publishes_are_refused_with_typed_errors() {
    let bus = Bus::new();
    let app = start_app(&bus, Arc::new(AtomicU32::new(0)), 3).await;
    let rec = Recorder::start(&bus, "analytics.features.*").await.unwrap();
    let processor = app.running.component_bus("analytics-processor").unwrap();

    let err = processor
        .publish_to("analytics.features.request", Note { n: 1 })
        .await
        .unwrap_err();
    match &err {
        PublishError::LayerViolation(v) => {
            assert_eq!(v.from, "analytics-processor");
            // The manager subscribes to it: the edge itself is forbidden.
            assert_eq!(v.to.as_deref(), Some("analytics-manager"), "{v:?}");
            assert_eq!(v.rule, "one-layer-at-a-time", "{v:?}");
            assert!(!v.detail.is_empty());
        }
        other => panic!("expected a layer violation, got {other:?}"),
    }

    // Its own result phase, but aimed at the manager: skips two layers.
    let mut env = Envelope::new(Topic::new("analytics.features.processed").unwrap(), "{}");
    env.set_target(Some("analytics-manager".into()));
    let err = processor.publish_envelope(env).await.unwrap_err();
    match &err {
        PublishError::LayerViolation(v) => {
            assert_eq!(v.to.as_deref(), Some("analytics-manager"), "{v:?}");
            assert_eq!(v.rule, "one-layer-at-a-time", "{v:?}");
        }
        other => panic!("expected a layer violation, got {other:?}"),
    }

    // A handler posing a processor's result to itself's service is not its topic.
    let handler = app.running.component_bus("analytics-handler").unwrap();
    let err = handler
        .publish_to("analytics.features.processed", Note { n: 3 })
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::LayerViolation(_)), "{err:?}");

    // Nothing of the three was delivered; an allowed publish still is.
    handler
        .publish_to("analytics.features.execute", Note { n: 4 })
        .await
        .unwrap();
    let seen = rec.wait_for(1, WAIT).await.unwrap();
    assert_eq!(seen[0].topic.as_str(), "analytics.features.execute");
    bus.run_until_idle().await;
    assert!(
        rec.envelopes()
            .iter()
            .all(|e| e.topic.as_str() != "analytics.features.request"),
        "a refused request was delivered"
    );
    let stats = app.running.enforcement();
    assert_eq!(stats.refused, 3, "{stats:?}");
    assert_eq!(stats.by_rule.values().sum::<u64>(), 3, "{stats:?}");
    assert!(
        stats.by_rule.get("one-layer-at-a-time").copied() >= Some(2),
        "{stats:?}"
    );
    assert_eq!(app.running.enforcer().recent_violations().len(), 3);
}

/// A topology whose declarations skip a layer (a processor declaring the manager's request
/// topic, so the manager would receive from it) does not start, names the rule, and leaves
/// nothing registered on the bus.
#[tokio::test]
async fn a_topology_with_an_upward_request_does_not_start_and_leaves_nothing() {
    let bus = Bus::new();
    let noop = |_: Envelope, _| async { Ok::<_, std::convert::Infallible>(()) };
    let before = bus.registry().len();
    let err = Assembly::new(&bus)
        .component(
            ComponentBuilder::new("analytics-manager", Role::Manager, "analytics")
                .on_envelope("analytics.features.request", noop),
        )
        .component(
            ComponentBuilder::new("analytics-processor", Role::Processor, "analytics")
                .publishes("analytics.features.request"),
        )
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StartError::Topology(_)), "{err:?}");
    assert!(
        text.contains("analytics-processor") && text.contains("analytics-manager"),
        "{text}"
    );
    assert!(text.contains("one-layer-at-a-time"), "{text}");
    assert_eq!(bus.registry().len(), before, "left registered");
}

/// The processor fails twice (retryable): the error handler asks the manager to retry, the
/// third attempt succeeds and the CPM gets one successful completion for the flow; every
/// retry carries the flow's correlation id and nothing is dead-lettered.
#[tokio::test]
async fn retryable_processor_failures_are_retried_and_the_flow_completes_once() {
    let bus = Bus::new();
    let traces = TraceRecorder::start(&bus, 2000).await.unwrap();
    let app = start_app(&bus, Arc::new(AtomicU32::new(2)), 3).await;
    let done_rec = completions(&bus).await;
    let (done, env) = one_run(&app, &done_rec, 5).await;
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(done.result, Some(serde_json::json!(10)));
    bus.run_until_idle().await;
    let stats = app.errors.stats();
    assert_eq!((stats.retries, stats.gave_up), (2, 0), "{stats:?}");
    assert!(bus.dead_letters().unwrap().list().is_empty());
    let all = traces.envelopes();
    let retries: Vec<_> = all
        .iter()
        .filter(|e| e.topic.as_str() == "analytics.retry.request")
        .collect();
    assert_eq!(retries.len(), 2);
    assert!(
        retries
            .iter()
            .all(|e| e.correlation_id == env.correlation_id)
    );
    let completes = all
        .iter()
        .filter(|e| e.topic.as_str() == "analytics.features.complete")
        .count();
    assert_eq!(completes, 1, "the CPM must hear once");
    assert!(app.running.contexts().is_empty(), "contexts left behind");
    assert!(app.tracker.anomalies().is_empty());
}

/// The processor keeps failing: after the policy's attempts the request it was handling is
/// dead-lettered once (same correlation id, filed under the processor), the manager fails the
/// flow and the CPM hears a failed completion. With the dependency back, replaying the dead
/// letter re-runs the processor step under the same correlation id and it succeeds.
#[tokio::test]
async fn an_exhausted_flow_is_dead_lettered_once_and_its_replay_succeeds() {
    let bus = Bus::new();
    let fail = Arc::new(AtomicU32::new(u32::MAX));
    let app = start_app(&bus, fail.clone(), 3).await;
    let done_rec = completions(&bus).await;
    let (done, env) = one_run(&app, &done_rec, 8).await;
    assert!(!done.is_ok(), "{done:?}");
    assert_eq!(
        done.error.as_ref().map(|e| e.error_type.as_str()),
        Some("RetryExhausted")
    );
    bus.run_until_idle().await;
    let dlq = bus.dead_letters().unwrap();
    let letters = dlq.list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.envelope.correlation_id, env.correlation_id);
    assert_eq!(letter.envelope.topic.as_str(), "analytics.features.execute");
    assert_eq!(letter.attempts, 3);
    assert!(
        letter
            .handler
            .as_deref()
            .is_some_and(|h| h.starts_with("analytics-processor")),
        "{:?}",
        letter.handler
    );
    assert!(letter.error.contains("UpstreamUnavailable") || letter.error.contains("down"));

    fail.store(0, Ordering::SeqCst);
    let processed = Recorder::start(&bus, "analytics.features.processed")
        .await
        .unwrap();
    let taken = dlq.take(&letter.envelope.id);
    assert_eq!(taken.len(), 1);
    bus.publish_envelope(taken[0].envelope.clone())
        .await
        .unwrap();
    let got = processed.wait_for(1, WAIT).await.unwrap();
    let c: Completion<serde_json::Value> = serde_json::from_slice(&got[0].payload).unwrap();
    assert!(c.is_ok(), "{c:?}");
    assert_eq!(c.result, Some(serde_json::json!(16)));
    assert_eq!(got[0].correlation_id, env.correlation_id);
    bus.run_until_idle().await;
    assert!(dlq.list().is_empty(), "{:?}", dlq.list());
}

/// Runs the scenario (one clean run, one run retried twice) and returns what a user checks:
/// results, the clean run's causal chain, the retry count, dead letters and violations.
async fn scenario(bus: &Bus) -> (Vec<serde_json::Value>, Vec<String>, u64, usize, u64) {
    let traces = TraceRecorder::start(bus, 4000).await.unwrap();
    let fail = Arc::new(AtomicU32::new(0));
    let app = start_app(bus, fail.clone(), 3).await;
    let done_rec = completions(bus).await;
    let (a, env_a) = one_run(&app, &done_rec, 1).await;
    fail.store(2, Ordering::SeqCst);
    let (b, _) = one_run(&app, &done_rec, 2).await;
    let results = vec![a.result.unwrap_or_default(), b.result.unwrap_or_default()];
    let chain_a = chain(&traces.trace(env_a.correlation_id.clone()));
    let letters = bus.dead_letters().map(|d| d.list().len()).unwrap_or(0);
    (
        results,
        chain_a,
        app.errors.stats().retries,
        letters,
        app.running.enforcement().violations,
    )
}

/// The "same API" promise: the layered scenario gives the same outcomes on the embedded log as
/// in memory.
#[tokio::test]
async fn the_layered_scenario_gives_the_same_outcomes_on_the_log() {
    let memory = Bus::new();
    let in_memory = scenario(&memory).await;
    memory.shutdown(Duration::from_secs(5)).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let durable = Bus::builder().transport(log).build().unwrap();
    let on_log = tokio::time::timeout(Duration::from_secs(20), scenario(&durable))
        .await
        .expect("the scenario hangs on the log");
    durable.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        in_memory.0,
        vec![serde_json::json!(2), serde_json::json!(4)]
    );
    assert_eq!(in_memory, on_log);
}

/// After the error handler gave up on a flow and dead-lettered the failing request, the
/// manager fails its own context with an original, non-retryable error (the natural
/// `ctx.fail(..)` on `retry.exhausted`). components.md §7: "dead-letters a flow once (and
/// again each time a replayed step of it fails)": nothing was replayed, so one dead letter.
///
/// Fixed defect (review rev11): a second dead letter appeared, for the manager's
/// `analytics.retry.exhausted` message, "failed after 4 attempt(s): RetryExhausted: 3
/// attempts" (2 dead letters): any original failure carrying a request in a given-up flow was
/// taken for a replayed step. Now only a failure of the dead-lettered request (same id) is.
#[tokio::test]
async fn a_given_up_flow_is_dead_lettered_once_even_if_its_manager_fails_it() {
    let bus = Bus::new();
    let app = start_app_with(&bus, Arc::new(AtomicU32::new(u32::MAX)), 3, true).await;
    let done_rec = completions(&bus).await;
    let (done, _) = one_run(&app, &done_rec, 8).await;
    assert!(!done.is_ok(), "{done:?}");
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(
        letters.len(),
        1,
        "{:?}",
        letters
            .iter()
            .map(|l| (l.handler.clone(), l.error.clone()))
            .collect::<Vec<_>>()
    );
}

/// Data pipeline plan, "success criterion 1": everything goes through the broker except
/// frontend → CPM and CPM → processor. The CPM's shortcut to a processor is allowed (and its
/// result comes back to the CPM); the CPM reaching a service, and a service reaching another
/// domain's handler, are refused at runtime; managers of two domains coordinate freely.
#[tokio::test]
async fn the_plans_allowed_shortcuts_and_cross_domain_rules() {
    let bus = Bus::new();
    let noop = |_: Envelope, _| async { Ok::<_, std::convert::Infallible>(()) };
    let running = Assembly::new(&bus)
        .component(
            ComponentBuilder::new("cpm", Role::Cpm, "cpm")
                .publishes("staging.preview.execute")
                .on_envelope("staging.preview.processed", noop),
        )
        .component(
            ComponentBuilder::new("staging-processor", Role::Processor, "staging").on(
                "staging.preview.execute",
                |n: Note, cx| async move {
                    let ctx = cx.begin("preview").await?;
                    ctx.start().await?;
                    ctx.complete(&n.n).await?;
                    Ok::<_, BoxError>(())
                },
            ),
        )
        .component(
            ComponentBuilder::new("staging-manager", Role::Manager, "staging")
                .publishes("quality.validate.request"),
        )
        .component(
            ComponentBuilder::new("quality-manager", Role::Manager, "quality")
                .on_envelope("quality.validate.request", noop),
        )
        .component(ComponentBuilder::new(
            "staging-service",
            Role::Service,
            "staging",
        ))
        .component(
            ComponentBuilder::new("quality-handler", Role::Handler, "quality")
                .on_envelope("quality.validate.dispatch", noop)
                .on_envelope("quality.check.dispatch", noop),
        )
        .start()
        .await
        .unwrap();
    let processed = Recorder::start(&bus, "staging.preview.processed")
        .await
        .unwrap();
    let requests = Recorder::start(&bus, "quality.validate.request")
        .await
        .unwrap();
    let cpm = running.component_bus("cpm").unwrap();
    cpm.publish_to("staging.preview.execute", Note { n: 5 })
        .await
        .unwrap();
    let got = processed.wait_for(1, WAIT).await.unwrap();
    let c: Completion<u64> = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(c.result, Some(5));

    // Managers coordinate across domains.
    running
        .component_bus("staging-manager")
        .unwrap()
        .publish_to("quality.validate.request", Note { n: 1 })
        .await
        .unwrap();
    requests.wait_for(1, WAIT).await.unwrap();

    // The CPM never talks to services or handlers (undeclared, and the edge is forbidden).
    let mut env = Envelope::new(Topic::new("quality.validate.dispatch").unwrap(), "{}");
    env.set_target(Some("quality-handler".into()));
    let err = cpm.publish_envelope(env).await.unwrap_err();
    assert!(matches!(err, PublishError::LayerViolation(_)), "{err:?}");
    // A service does not reach into another domain.
    let err = running
        .component_bus("staging-service")
        .unwrap()
        .publish_to("quality.check.dispatch", Note { n: 2 })
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::LayerViolation(_)), "{err:?}");
    let stats = running.enforcement();
    assert_eq!(stats.refused, 2, "{stats:?}");
}

/// Warn mode (the plan's migration phase, components moved one at a time): a forbidden edge
/// starts, its publish is delivered, counted and kept as a recent violation, and the topology
/// views mark it as forbidden.
#[tokio::test]
async fn warn_mode_delivers_counts_and_marks_forbidden_edges() {
    let bus = Bus::new();
    let noop = |_: Envelope, _| async { Ok::<_, std::convert::Infallible>(()) };
    let running = Assembly::new(&bus)
        .mode(EnforcementMode::Warn)
        .component(
            ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                .publishes("shop.order.execute"),
        )
        .component(
            ComponentBuilder::new("shop-processor", Role::Processor, "shop")
                .on_envelope("shop.order.execute", noop),
        )
        .start()
        .await
        .unwrap();
    let rec = Recorder::start(&bus, "shop.order.execute").await.unwrap();
    running
        .component_bus("shop-manager")
        .unwrap()
        .publish_to("shop.order.execute", Note { n: 1 })
        .await
        .unwrap();
    rec.wait_for(1, WAIT).await.unwrap();
    let stats = running.enforcement();
    assert_eq!((stats.violations, stats.refused), (1, 0), "{stats:?}");
    let recent = running.enforcer().recent_violations();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].rule.id(), "one-layer-at-a-time");
    let declared = running.topology().to_mermaid();
    assert!(declared.contains('✗'), "{declared}");
    let observed = running.observed_mermaid();
    assert!(
        observed.contains("shop-manager") && observed.contains('✗'),
        "{observed}"
    );
    let dot = running.topology().to_dot();
    assert!(dot.contains("dashed"), "{dot}");
}

/// The trace of a flow retried once (the components guide's example): the error branches off
/// the execute, the retry request is caused by the error, the retried walk reaches the CPM's
/// completion, and the trace holds every recorded message of the flow.
#[tokio::test]
async fn the_trace_of_a_retried_flow_branches_at_the_failure() {
    let bus = Bus::new();
    let traces = TraceRecorder::start(&bus, 2000).await.unwrap();
    let app = start_app(&bus, Arc::new(AtomicU32::new(1)), 3).await;
    let done_rec = completions(&bus).await;
    let (done, env) = one_run(&app, &done_rec, 3).await;
    assert!(done.is_ok(), "{done:?}");
    bus.run_until_idle().await;
    let trace = traces.trace(env.correlation_id.clone());
    let recorded = traces
        .envelopes()
        .iter()
        .filter(|e| e.correlation_id == env.correlation_id)
        .count();
    assert_eq!(trace.len(), recorded, "{}", trace.render());
    let pruned = trace.pruned(|n| !n.topic.ends_with(".status.update"));
    let error = pruned.roots[0].find("analytics.error").expect("no error");
    assert_eq!(error.source.as_deref(), Some("analytics-processor"));
    let retry = error
        .children
        .iter()
        .find(|c| c.topic.as_str() == "analytics.retry.request")
        .expect("the retry request is not caused by the error");
    assert!(
        retry
            .walk()
            .iter()
            .any(|n| n.topic.as_str() == "analytics.features.complete"),
        "{}",
        pruned.render()
    );
    let text = pruned.render();
    assert!(text.contains("[analytics-processor]"), "{text}");
}

/// A processor that forgets to finish its context (the seed's hung step): after the context
/// timeout the sweeper fails it with `Timeout`, the failure is reported on the domain's error
/// topic and as a failed result up the chain with the flow's correlation id, and the table
/// and the state tracker are left clean (virtual clock).
#[tokio::test(start_paused = true)]
async fn a_forgotten_context_times_out_and_reports_up_the_chain() {
    let bus = Bus::new();
    let tracker = StateTracker::new(100);
    let running = Assembly::new(&bus)
        .contexts(switchyard_components::ContextConfig {
            timeout: Duration::from_secs(2),
            sweep_interval: Duration::from_millis(100),
        })
        .component(tracker.component())
        .component(
            ComponentBuilder::new("analytics-processor", Role::Processor, "analytics").on(
                "analytics.features.execute",
                |_: Note, cx| async move {
                    let ctx = cx.begin("features").await?;
                    ctx.start().await?;
                    Ok::<_, BoxError>(()) // never completed
                },
            ),
        )
        .start()
        .await
        .unwrap();
    let errors = Recorder::start(&bus, "analytics.error").await.unwrap();
    let results = Recorder::start(&bus, "analytics.features.processed")
        .await
        .unwrap();
    let flow = MessageId::new();
    let env = Envelope::new(
        Topic::new("analytics.features.execute").unwrap(),
        serde_json::to_vec(&Note { n: 1 }).unwrap(),
    )
    .with_correlation_id(flow.clone());
    bus.publish_envelope(env).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let err = errors.wait_for(1, WAIT).await.unwrap().remove(0);
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(err.correlation_id, flow);
    let report: switchyard_components::ErrorReport = serde_json::from_slice(&err.payload).unwrap();
    assert_eq!(report.error_type, "Timeout");
    assert_eq!(report.component, "analytics-processor");
    let done = results.wait_for(1, WAIT).await.unwrap().remove(0);
    assert_eq!(done.correlation_id, flow);
    let c: Completion<serde_json::Value> = serde_json::from_slice(&done.payload).unwrap();
    assert!(!c.is_ok());
    bus.run_until_idle().await;
    assert!(running.contexts().is_empty());
    assert!(tracker.active().is_empty(), "{:?}", tracker.active());
    assert!(tracker.anomalies().is_empty(), "{:?}", tracker.anomalies());
}
