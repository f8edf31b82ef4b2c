//! Task fixws: what a circuit breaker and the metrics layer make of a hand-back and of a
//! payload that does not decode.
//!
//! - A decode failure (a typed handler's payload does not decode: dead-lettered) is the
//!   sender's fault, not the handler's: the breaker leaves it out altogether, as it does a
//!   hand-back (neither a call nor a failure). Before, it counted as a successful call and
//!   diluted a ratio threshold.
//! - A [`HandBack`] is not a failure of the handler: the metrics layer counts it apart
//!   (`handed_back`), not in `failed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use switchyard_core::{BoxError, CodecDirection, CodecError, Envelope, HandBack, Outcome};
use switchyard_middleware::breaker::{BreakerConfig, BreakerLayer, BreakerState, FailureThreshold};
use switchyard_middleware::metrics::MetricsLayer;
use tower::{Layer, Service, ServiceExt};

use crate::common::env;

fn undecodable() -> BoxError {
    CodecError {
        direction: CodecDirection::Decode,
        type_name: "Order",
        source: "expected value at line 1 column 1".into(),
    }
    .into()
}

/// A user's error that wraps a hand-back (found anywhere in the chain).
#[derive(Debug, thiserror::Error)]
#[error("routing")]
struct Routing(#[source] HandBack);

/// 20 undecodable payloads, then 4 real failures, on a breaker opening at half of at least
/// 4 calls failing: the decode failures are no calls, so the 4 failures are 4 of 4 and it
/// opens. Before, they were 20 successful calls and the breaker stayed closed (4 of 24).
#[tokio::test(start_paused = true)]
async fn decode_failures_do_not_dilute_a_ratio_breaker() {
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    let layer = BreakerLayer::new(
        "decoder",
        BreakerConfig::default().threshold(FailureThreshold::Ratio {
            ratio: 0.5,
            min_calls: 4,
        }),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(move |_e: Envelope| {
        let broken = flag.load(Ordering::SeqCst);
        async move {
            if broken {
                Err::<Outcome, BoxError>("dependency down".into())
            } else {
                Err(undecodable())
            }
        }
    }));
    for _ in 0..20 {
        let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    }
    let snap = handle.snapshot();
    assert_eq!(
        (snap.calls, snap.failures),
        (0, 0),
        "20 decode failures are neither calls nor failures"
    );
    broken.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    }
    assert_eq!(
        handle.state(),
        BreakerState::Open,
        "4 of 4 counted calls failed"
    );
}

/// A half-open breaker whose trial call meets an undecodable payload learns nothing about
/// the handler: it stays half-open (before, the "successful" trial closed it) and the trial
/// slot is free for the next call.
#[tokio::test(start_paused = true)]
async fn a_decode_failure_as_the_half_open_trial_neither_closes_nor_reopens() {
    let layer = BreakerLayer::new(
        "decoder",
        BreakerConfig::default().cool_down(Duration::from_secs(10)),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|_e: Envelope| async {
        Err::<Outcome, BoxError>(undecodable())
    }));
    handle.trip();
    tokio::time::advance(Duration::from_secs(11)).await;
    let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    assert!(
        svc.ready().now_or_never().is_some(),
        "trial slot given back"
    );
}

/// A hand-back (bare or wrapped) is not a failure in the metrics layer's figures.
#[tokio::test]
async fn the_metrics_layer_does_not_count_a_hand_back_as_a_failure() {
    let layer = MetricsLayer::new("router");
    let registry = layer.registry();
    let svc = layer.layer(tower::service_fn(|e: Envelope| async move {
        match e.topic.as_str() {
            "bare.x" => Err::<Outcome, BoxError>(Box::new(HandBack::new("not here"))),
            "wrapped.x" => Err::<Outcome, BoxError>(Box::new(Routing(
                HandBack::new("not here").after(Duration::from_millis(5)),
            ))),
            _ => Err("boom".into()),
        }
    }));
    for topic in ["bare.x", "wrapped.x", "fail.x"] {
        let _ = svc.clone().oneshot(env(topic)).await;
    }
    let snap = registry.snapshot();
    let row = |t: &str| {
        snap.get(t, "router")
            .unwrap_or_else(|| panic!("{t}: {snap:?}"))
    };
    assert_eq!((row("fail.x").failed, row("fail.x").handed_back), (1, 0));
    for t in ["bare.x", "wrapped.x"] {
        let r = row(t);
        assert_eq!(
            (
                r.delivered,
                r.failed,
                r.handed_back,
                r.in_flight,
                r.duration.count
            ),
            (1, 0, 1, 0, 1),
            "{t}: {r:?}"
        );
    }
}
