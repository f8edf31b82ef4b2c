//! A handler's [`HandBack`] ("not mine, give it back to the transport") is neither a failure
//! nor a success of the handler: a circuit breaker does not count it (alone or in the fused
//! resilience stack), and retry does not make another attempt in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::FutureExt;
use switchyard_core::{BoxError, Envelope, HandBack, Outcome};
use switchyard_middleware::breaker::{BreakerConfig, BreakerLayer, BreakerState, FailureThreshold};
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use switchyard_middleware::retry::{Classifier, RetryLayer, RetryPolicy};
use tower::{Layer, Service, ServiceExt};

use crate::common::env;

/// Hands every message back; counts the calls.
fn handing_back(
    calls: Arc<AtomicU32>,
) -> impl Service<
    Envelope,
    Response = Outcome,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Outcome, BoxError>> + Send,
> + Clone
+ Send {
    tower::service_fn(move |_e: Envelope| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { Err::<Outcome, BoxError>(Box::new(HandBack::new("nobody here"))) }
    })
}

/// A user's error that wraps a hand-back (the bus finds it anywhere in the chain).
#[derive(Debug, thiserror::Error)]
#[error("routing")]
struct Routing(#[source] HandBack);

fn has_hand_back(e: &BoxError) -> bool {
    let mut link: Option<&(dyn std::error::Error + 'static)> = Some(&**e);
    while let Some(l) = link {
        if l.is::<HandBack>() {
            return true;
        }
        link = l.source();
    }
    false
}

#[tokio::test(start_paused = true)]
async fn a_breaker_does_not_count_hand_backs() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = BreakerLayer::new("h", BreakerConfig::default().failures(3));
    let handle = layer.handle();
    let mut svc = layer.layer(handing_back(calls.clone()));
    for _ in 0..10 {
        let result = svc.ready().await.unwrap().call(env("a.b")).await;
        assert!(has_hand_back(&result.unwrap_err()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert_eq!(handle.state(), BreakerState::Closed);
    let snap = handle.snapshot();
    assert_eq!(
        (snap.failures, snap.calls),
        (0, 0),
        "neither a failure nor a call"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ratio_breaker_is_not_diluted_or_tripped_by_hand_backs_nor_a_wrapped_one() {
    let failing = Arc::new(AtomicU32::new(0));
    let layer = BreakerLayer::new(
        "h",
        BreakerConfig::default().threshold(FailureThreshold::Ratio {
            ratio: 0.5,
            min_calls: 4,
        }),
    );
    let handle = layer.handle();
    let f = failing.clone();
    let mut svc = layer.layer(tower::service_fn(move |e: Envelope| {
        let f = f.clone();
        async move {
            match e.topic.as_str() {
                "back" => Err::<Outcome, BoxError>(Box::new(Routing(HandBack::new("not here")))),
                _ => {
                    f.fetch_add(1, Ordering::SeqCst);
                    Err("down".into())
                }
            }
        }
    }));
    for _ in 0..20 {
        let _ = svc.ready().await.unwrap().call(env("back")).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "20 hand-backs are no failures"
    );
    assert_eq!(handle.snapshot().calls, 0, "nor calls");
    for _ in 0..4 {
        let _ = svc.ready().await.unwrap().call(env("fail")).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Open,
        "4 of 4 counted calls failed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hand_back_as_the_half_open_trial_neither_closes_nor_reopens_and_frees_the_slot() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = BreakerLayer::new(
        "h",
        BreakerConfig::default().cool_down(Duration::from_secs(10)),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(handing_back(calls.clone()));
    handle.trip();
    tokio::time::advance(Duration::from_secs(11)).await;
    let result = svc.ready().await.unwrap().call(env("a.b")).await;
    assert!(has_hand_back(&result.unwrap_err()));
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    // The trial slot is free again: the next call is admitted at once.
    assert!(
        svc.ready().now_or_never().is_some(),
        "trial slot given back"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_makes_no_attempt_in_place_after_a_hand_back_even_with_a_retry_all_rule() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let inner = tower::service_fn(move |_e: Envelope| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Err::<Outcome, BoxError>(Box::new(Routing(HandBack::new("not here")))) }
    });
    let policy = RetryPolicy::attempts(5).classifier(
        Classifier::default()
            .rule(|_| Some(true))
            .unknown_retryable(true),
    );
    let mut svc = RetryLayer::new(policy).layer(inner);
    let result = svc.ready().await.unwrap().call(env("a.b")).await;
    assert!(has_hand_back(&result.unwrap_err()), "the bus still sees it");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried in place");
}

#[tokio::test(start_paused = true)]
async fn the_fused_resilience_stack_neither_retries_nor_counts_hand_backs() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = ResilienceLayer::new("h", ResilienceConfig::default());
    let breaker = layer.breaker();
    let mut svc = layer.layer(handing_back(calls.clone()));
    for n in 1..=10 {
        let result = svc.ready().await.unwrap().call(env("a.b")).await;
        assert!(has_hand_back(&result.unwrap_err()));
        assert_eq!(calls.load(Ordering::SeqCst), n, "one call per message");
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(breaker.snapshot().failures, 0);
}
