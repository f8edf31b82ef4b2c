use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::{
    BoxError, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, MessageId, Outcome,
};
use switchyard_middleware::breaker::{BreakerConfig, BreakerLayer, FailureThreshold};
use switchyard_middleware::catch_panic::CatchPanicLayer;
use switchyard_middleware::dedup::{DedupConfig, DedupLayer};
use switchyard_middleware::dlq::{DeadLetterFilter, DeadLetterQueue, InMemoryDeadLetters};
use switchyard_middleware::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use switchyard_middleware::metrics::MetricsLayer;
use switchyard_middleware::retry::{Permanent, RetryLayer, RetryPolicy};
use switchyard_middleware::timeout::TimeoutLayer;
use switchyard_middleware::trace::TraceLayer;
use tower::{Service, ServiceBuilder};

use crate::common::{assert_handler, drive, envs, queue_of};

/// Records every put so a test can prove nothing was dead-lettered twice.
#[derive(Default)]
struct CountingSink {
    inner: InMemoryDeadLetters,
    puts: Mutex<Vec<MessageId>>,
}

impl DeadLetterSink for CountingSink {
    fn put(&self, letter: DeadLetter) {
        self.puts.lock().unwrap().push(letter.envelope.id.clone());
        self.inner.put(letter);
    }
}

fn roll(id: MessageId, attempt: u32, salt: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (id.as_u128(), attempt, salt).hash(&mut h);
    h.finish() % 100
}

#[test]
fn the_documented_full_stack_is_a_valid_handler() {
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new("h"))
        .layer(MetricsLayer::new("h"))
        .layer(DedupLayer::new(DedupConfig::default()))
        .layer(RetryLayer::new(RetryPolicy::default()))
        .layer(BreakerLayer::new("h", BreakerConfig::default()))
        .layer(RateLimitLayer::new(100, Duration::from_secs(1)))
        .layer(ConcurrencyLimitLayer::new(8))
        .layer(TimeoutLayer::default())
        .layer(CatchPanicLayer::new())
        .service_fn(|_e: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) });
    assert_handler(&svc);
}

/// 10 000 messages through trace + metrics + retry + breaker + timeout + panic capture, with
/// random transient failures, slow calls that time out, panics and permanent errors: every
/// message ends acked or dead-lettered, none missing, none acked twice, none dead-lettered
/// twice, and the metrics agree.
#[tokio::test(start_paused = true)]
async fn ten_thousand_messages_with_random_failures_all_accounted_for() {
    const N: usize = 10_000;
    // The injected panics are expected: keep them out of the test output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info
            .payload_as_str()
            .is_some_and(|m| m.starts_with("handler bug"))
        {
            default_hook(info);
        }
    }));
    let successes: Arc<Mutex<HashMap<MessageId, u32>>> = Arc::default();
    let s = successes.clone();
    let handler = tower::service_fn(move |e: Envelope| {
        let s = s.clone();
        async move {
            let r = roll(e.id.clone(), e.delivery.attempt, 1);
            match r {
                0..=1 => Err::<Outcome, BoxError>(Permanent::new("bad message").into()),
                2 => panic!("handler bug on {}", e.id),
                3..=5 => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(Outcome::Ack)
                }
                6..=25 => Err("transient".into()),
                26..=30 => Ok(Outcome::retry()),
                _ => {
                    *s.lock().unwrap().entry(e.id).or_default() += 1;
                    Ok(Outcome::Ack)
                }
            }
        }
    });
    let metrics = MetricsLayer::new("h");
    let registry = metrics.registry();
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new("h"))
        .layer(metrics)
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(200))
                .seed(99),
        ))
        .layer(BreakerLayer::new(
            "h",
            BreakerConfig::default()
                .threshold(FailureThreshold::Ratio {
                    ratio: 0.6,
                    min_calls: 50,
                })
                .cool_down(Duration::from_secs(1)),
        ))
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(CatchPanicLayer::new())
        .service(handler);
    let msgs = envs("load.test", N);
    let all: HashSet<MessageId> = msgs.iter().map(|e| e.id.clone()).collect();
    let sink = Arc::new(CountingSink::default());

    let settled = drive(
        svc,
        queue_of(msgs),
        16,
        sink.clone() as Arc<dyn DeadLetterSink>,
    )
    .await;

    let acked = settled.acked();
    let acked_set: HashSet<_> = acked.iter().cloned().collect();
    assert_eq!(acked.len(), acked_set.len(), "a message was acked twice");
    let puts = sink.puts.lock().unwrap().clone();
    let dead: HashSet<_> = puts.iter().cloned().collect();
    assert_eq!(puts.len(), dead.len(), "a message was dead-lettered twice");
    assert!(acked_set.is_disjoint(&dead));
    let union: HashSet<_> = acked_set.union(&dead).cloned().collect();
    assert_eq!(union, all, "every message acked or dead-lettered");
    assert_eq!(sink.inner.len(), dead.len());
    // Plausible split for ~30 % failures per attempt with 3 attempts.
    assert!(acked.len() > N * 8 / 10, "acked {}", acked.len());
    assert!(!dead.is_empty());
    // Acked messages ran their successful branch exactly once; slow (timed-out) acks never land.
    let successes = successes.lock().unwrap();
    assert!(successes.values().all(|&n| n == 1));
    // Panics show up as panics in the DLQ, permanent errors after one attempt.
    let panicked = sink
        .inner
        .select(&DeadLetterFilter::new().reason(DeadLetterReason::Panicked));
    assert!(!panicked.is_empty());
    assert!(panicked.iter().all(|l| l.error.contains("handler bug")));
    let permanent = sink
        .inner
        .select(&DeadLetterFilter::new().error_contains("permanent failure"));
    assert!(!permanent.is_empty());
    // Metrics sit outside retry: one delivery per message, final outcomes only.
    let row = registry.snapshot().get("load.test", "h").cloned().unwrap();
    assert_eq!(row.delivered, N as u64);
    assert_eq!(row.acked, acked.len() as u64);
    assert_eq!(row.failed, dead.len() as u64);
    assert_eq!(row.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn permanent_error_goes_straight_to_the_dlq() {
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default().max_attempts(5)))
        .layer(TimeoutLayer::default())
        .service_fn(move |_e: Envelope| {
            *c.lock().unwrap() += 1;
            async { Err::<Outcome, BoxError>(Permanent::new("unknown customer").into()) }
        });
    let dlq = Arc::new(InMemoryDeadLetters::new(10));
    let msgs = envs("a.b", 1);
    let id = msgs[0].id.clone();
    let settled = drive(
        svc,
        queue_of(msgs),
        1,
        dlq.clone() as Arc<dyn DeadLetterSink>,
    )
    .await;
    assert!(settled.acked().is_empty());
    assert_eq!(*calls.lock().unwrap(), 1);
    let letter = dlq.get(&id).unwrap();
    assert_eq!(letter.reason, DeadLetterReason::HandlerFailed);
    assert!(
        letter.error.contains("unknown customer"),
        "{}",
        letter.error
    );
}

#[tokio::test(start_paused = true)]
async fn resilience_layer_wires_the_default_stack_and_its_handles() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use switchyard_middleware::breaker::BreakerState;
    use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
    use tower::{Layer, ServiceExt};

    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let config = ResilienceConfig::default()
        .dedup(DedupConfig::default())
        .concurrency(2)
        .rate(100, Duration::from_secs(1), 10)
        .on_breaker_transition(move |e| ev.lock().unwrap().push(e.topic()));
    let layer = ResilienceLayer::new("flaky", config);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = layer.layer(tower::service_fn(move |e: Envelope| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if e.delivery.attempt < 3 {
                Err::<Outcome, BoxError>("not yet".into())
            } else {
                Ok(Outcome::Ack)
            }
        }
    }));
    assert_handler(&svc);
    let e = envs("a.b", 1).remove(0);
    assert_eq!(svc.clone().oneshot(e.clone()).await.unwrap(), Outcome::Ack);
    assert_eq!(svc.clone().oneshot(e).await.unwrap(), Outcome::Ack);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "three attempts, then a duplicate"
    );
    assert_eq!(layer.dedup().unwrap().duplicates(), 1);
    let row = layer
        .metrics()
        .snapshot()
        .get("a.b", "flaky")
        .cloned()
        .unwrap();
    assert_eq!((row.delivered, row.acked), (2, 2));
    // Two failed attempts are below the default threshold of five.
    assert_eq!(layer.breaker().state(), BreakerState::Closed);
    layer.breaker().trip();
    layer.breaker().reset();
    assert_eq!(
        *events.lock().unwrap(),
        vec!["switchyard.breaker.opened", "switchyard.breaker.closed"]
    );
}

/// A layer over the bus's handlers sees a boxed `tower::Service<Envelope, Response = Outcome,
/// Error = BoxError>` and its result is boxed again (`switchyard::BoxHandler`, which boxes
/// its calls for such callers as `BoxCloneService` does): the stack must accept and produce
/// a boxed service, here tower's own.
#[tokio::test(start_paused = true)]
async fn layers_compose_over_the_bus_boxed_handler() {
    use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
    use tower::util::BoxCloneService;
    use tower::{Layer, ServiceExt};

    type BoxHandler = BoxCloneService<Envelope, Outcome, BoxError>;
    let inner: BoxHandler = BoxCloneService::new(tower::service_fn(|e: Envelope| async move {
        Ok::<_, BoxError>(if e.delivery.attempt >= 2 {
            Outcome::Ack
        } else {
            Outcome::retry()
        })
    }));
    let layered: BoxHandler = BoxCloneService::new(
        ResilienceLayer::new("boxed", ResilienceConfig::default()).layer(inner),
    );
    let again: BoxHandler = BoxCloneService::new(CatchPanicLayer::new().layer(layered));
    assert_eq!(
        again.oneshot(envs("a.b", 1).remove(0)).await.unwrap(),
        Outcome::Ack
    );
}

/// "Never" settings (Duration::MAX, u32::MAX) must not panic anywhere in the stack.
#[tokio::test(start_paused = true)]
async fn extreme_settings_do_not_panic() {
    use futures::FutureExt;
    use switchyard_middleware::breaker::BreakerState;
    use tower::{Layer, ServiceExt};

    let breaker = BreakerLayer::new("h", BreakerConfig::default().cool_down(Duration::MAX));
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .layer(DedupLayer::new(DedupConfig::default().ttl(Duration::MAX)))
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .max_delay(Duration::MAX)
                .initial_delay(Duration::MAX)
                .max_attempts(1),
        ))
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::MAX))
        .service_fn(|_e: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) });
    assert_eq!(
        svc.clone().oneshot(envs("a.b", 1).remove(0)).await.unwrap(),
        Outcome::Ack
    );
    handle.trip();
    assert_eq!(handle.state(), BreakerState::Open);
    let mut paused = svc.clone();
    assert!(paused.ready().now_or_never().is_none());

    let slow =
        RateLimitLayer::new(1, Duration::MAX).layer(tower::service_fn(|_e: Envelope| async {
            Ok::<_, BoxError>(Outcome::Ack)
        }));
    let mut a = slow.clone();
    a.ready().await.unwrap();
    a.call(envs("a.b", 1).remove(0)).await.unwrap();
    assert!(
        a.ready().now_or_never().is_none(),
        "next token is practically never"
    );
}
