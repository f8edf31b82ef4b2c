//! `switchyard-middleware`'s resilience stack as an enrich stage whose dependency is down: the
//! breaker opens, and every input still ends once, in the dead letters with its raw bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_core::{BoxError, DeadLetterReason, Envelope, InMemoryDeadLetters, Outcome, Topic};
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use switchyard_pipeline::{Pipeline, RetryPolicy, Runner, service_stage};
use tower::Layer;

use crate::collector;

/// docs/pipelines.md, "Resilience wrappers": the `ResilienceLayer` (retry, breaker, ...) wraps a
/// stage whose input is an `Envelope`; "Running": every acknowledged message ends completed or
/// failed, "dead-lettered with its origin and the failing stage's name". With the dependency
/// down the breaker opens after 5 failures (its default) and admits one trial per 30 s cool-down
/// (paused clock): no input is lost or counted twice, and none completes.
#[tokio::test(start_paused = true)]
async fn a_breaker_opening_inside_an_enrich_stage_dead_letters_each_input_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut config = ResilienceConfig::default();
    config.retry = RetryPolicy::attempts(1);
    let handler = ResilienceLayer::new("enrich", config).layer(tower::service_fn(move |_env: Envelope| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Err::<Outcome, BoxError>(std::io::Error::other("price service down").into()) }
    }));
    let (out, sink) = collector::<Outcome>();
    let pipeline = Pipeline::new(service_stage("enrich", handler)).then(sink);
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(pipeline)
        .dead_letters(dlq.clone())
        .drain_timeout(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let feed = running.feed();
    let topic = Topic::new("sku.lookup").unwrap();
    let t0 = tokio::time::Instant::now();
    for i in 0..8 {
        let env = Envelope::new(topic.clone(), format!("sku-{i}"));
        feed.send_with_origin(env.clone(), env).await.unwrap();
    }
    let monitor = running.monitor().clone();
    assert!(
        monitor
            .wait_until(Duration::from_secs(600), |m| m.settled() == 8)
            .await
    );
    let report = running.shutdown().await;
    let m = &report.monitor;
    assert!(report.drained);
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.in_flight()),
        (8, 0, 8, 0),
        "{m}"
    );
    assert_eq!(m.op("enrich", "run").unwrap().errors, 8);
    assert!(out.lock().unwrap().is_empty());
    // Five calls open the breaker; each later input waits a cool-down for its trial call.
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    assert!(
        t0.elapsed() >= Duration::from_secs(3 * 30),
        "{:?}",
        t0.elapsed()
    );
    let letters = dlq.list();
    assert_eq!(letters.len(), 8);
    let mut payloads: Vec<String> = letters
        .iter()
        .map(|l| String::from_utf8(l.envelope.payload.to_vec()).unwrap())
        .collect();
    payloads.sort();
    assert_eq!(
        payloads,
        (0..8).map(|i| format!("sku-{i}")).collect::<Vec<_>>()
    );
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::HandlerFailed
                && l.handler.as_deref() == Some("enrich"))
    );
}
