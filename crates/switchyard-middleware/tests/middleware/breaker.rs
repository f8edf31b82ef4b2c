use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use switchyard_core::{BoxError, DeadLetterSink, Envelope, Outcome};
use switchyard_middleware::breaker::{
    BreakerConfig, BreakerEvent, BreakerLayer, BreakerOpenError, BreakerState, FailureThreshold,
};
use switchyard_middleware::dlq::{DeadLetterQueue, InMemoryDeadLetters};
use switchyard_middleware::retry::{RetryLayer, RetryPolicy};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::common::{drive, env, envs, queue_of, wait_for};

/// A handler that fails while `healthy` is false.
fn switchable(
    healthy: Arc<AtomicBool>,
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
        let ok = healthy.load(Ordering::SeqCst);
        async move {
            if ok {
                Ok(Outcome::Ack)
            } else {
                Err::<Outcome, BoxError>("dependency down".into())
            }
        }
    })
}

fn recording_config() -> (BreakerConfig, Arc<Mutex<Vec<BreakerEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let config = BreakerConfig::default()
        .failures(3)
        .window(Duration::from_secs(60))
        .cool_down(Duration::from_secs(10))
        .on_transition(move |ev| e.lock().unwrap().push(ev.clone()));
    (config, events)
}

fn transitions(events: &Mutex<Vec<BreakerEvent>>) -> Vec<(BreakerState, BreakerState)> {
    events
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.from, e.to))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn opens_pauses_readiness_half_opens_and_closes() {
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let (config, events) = recording_config();
    let layer = BreakerLayer::new("billing", config);
    let handle = layer.handle();
    let mut svc = layer.layer(switchable(healthy.clone(), calls.clone()));

    for _ in 0..2 {
        assert!(svc.ready().await.unwrap().call(env("a.b")).await.is_err());
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    assert!(svc.ready().await.unwrap().call(env("a.b")).await.is_err());
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.snapshot().times_opened, 1);

    // Open: readiness stays pending until the cool-down ends.
    assert!(svc.ready().now_or_never().is_none());
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(svc.ready().now_or_never().is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let start = tokio::time::Instant::now();
    healthy.store(true, Ordering::SeqCst);
    svc.ready().await.unwrap();
    assert!(start.elapsed() <= Duration::from_secs(1) + Duration::from_millis(1));
    assert_eq!(handle.state(), BreakerState::HalfOpen);

    // A second clone cannot take the single trial slot.
    let mut other = svc.clone();
    assert!(other.ready().now_or_never().is_none());

    assert_eq!(svc.call(env("a.b")).await.unwrap(), Outcome::Ack);
    assert_eq!(handle.state(), BreakerState::Closed);
    assert!(
        other.ready().now_or_never().is_some(),
        "closed breaker is ready again"
    );

    assert_eq!(
        transitions(&events),
        vec![
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Closed),
        ]
    );
    let evs = events.lock().unwrap();
    assert_eq!(evs[0].topic(), "switchyard.breaker.opened");
    assert_eq!(evs[0].failures, 3);
    assert_eq!(evs[0].handler, "billing");
    assert_eq!(evs[2].topic(), "switchyard.breaker.closed");
}

#[tokio::test(start_paused = true)]
async fn failed_trial_reopens_for_another_cool_down() {
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let (config, events) = recording_config();
    let layer = BreakerLayer::new("h", config);
    let handle = layer.handle();
    let mut svc = layer.layer(switchable(healthy, calls));
    for _ in 0..3 {
        let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(handle.snapshot().times_opened, 2);
    assert!(svc.ready().now_or_never().is_none());
    assert_eq!(
        transitions(&events),
        vec![
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Open),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failures_outside_the_window_do_not_count() {
    let calls = Arc::new(AtomicU32::new(0));
    let (config, _events) = recording_config();
    let layer = BreakerLayer::new("h", config);
    let handle = layer.handle();
    let mut svc = layer.layer(switchable(Arc::new(AtomicBool::new(false)), calls));
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_eq!(handle.snapshot().failures, 1);
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    }
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn ratio_threshold_needs_min_calls() {
    let n = Arc::new(AtomicU32::new(0));
    let c = n.clone();
    // Every other call fails.
    let h = tower::service_fn(move |_e: Envelope| {
        let i = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if i.is_multiple_of(2) {
                Err::<Outcome, BoxError>("x".into())
            } else {
                Ok(Outcome::Ack)
            }
        }
    });
    let layer = BreakerLayer::new(
        "h",
        BreakerConfig::default().threshold(FailureThreshold::Ratio {
            ratio: 0.5,
            min_calls: 10,
        }),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(h);
    for i in 0..10 {
        assert_eq!(
            handle.state(),
            BreakerState::Closed,
            "opened early at call {i}"
        );
        let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    }
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn rejections_do_not_count_but_retry_outcomes_do() {
    let layer = BreakerLayer::new("h", BreakerConfig::default().failures(2));
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|e: Envelope| async move {
        Ok::<_, BoxError>(if e.payload.as_ref() == b"reject" {
            Outcome::reject("no")
        } else {
            Outcome::retry()
        })
    }));
    for _ in 0..5 {
        let mut e = env("a.b");
        e.payload = "reject".into();
        svc.ready().await.unwrap().call(e).await.unwrap();
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    for _ in 0..2 {
        svc.ready().await.unwrap().call(env("a.b")).await.unwrap();
    }
    assert_eq!(handle.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn call_without_readiness_fails_fast_while_open() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = BreakerLayer::new("h", BreakerConfig::default());
    let handle = layer.handle();
    let mut svc = layer.layer(switchable(Arc::new(AtomicBool::new(true)), calls.clone()));
    handle.trip();
    let err = svc.call(env("a.b")).await.unwrap_err();
    let err = err.downcast::<BreakerOpenError>().unwrap();
    assert_eq!(err.state, BreakerState::Open);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    handle.reset();
    assert_eq!(svc.call(env("a.b")).await.unwrap(), Outcome::Ack);
}

#[tokio::test(start_paused = true)]
async fn dropped_trial_reservation_is_given_back() {
    let layer = BreakerLayer::new(
        "h",
        BreakerConfig::default().cool_down(Duration::from_secs(1)),
    );
    let handle = layer.handle();
    let svc = layer.layer(switchable(
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicU32::new(0)),
    ));
    handle.trip();
    tokio::time::advance(Duration::from_secs(2)).await;
    let mut a = svc.clone();
    a.ready().await.unwrap();
    let mut b = svc.clone();
    assert!(b.ready().now_or_never().is_none(), "trial slot is taken");
    drop(a);
    assert!(
        b.ready().now_or_never().is_some(),
        "slot given back on drop"
    );
    b.call(env("a.b")).await.unwrap();
    assert_eq!(handle.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn observer_may_read_and_steer_the_breaker() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let slot: Arc<Mutex<Option<switchyard_middleware::breaker::BreakerHandle>>> = Arc::default();
    let slot2 = slot.clone();
    let layer = BreakerLayer::new(
        "h",
        BreakerConfig::default().on_transition(move |ev| {
            let h = slot2.lock().unwrap().clone();
            if let Some(h) = h {
                s.lock().unwrap().push((ev.to, h.state()));
                if ev.to == BreakerState::Open {
                    h.reset(); // re-entrant change: delivered after this one, in order
                }
            }
        }),
    );
    *slot.lock().unwrap() = Some(layer.handle());
    layer.handle().trip();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (BreakerState::Open, BreakerState::Open),
            (BreakerState::Closed, BreakerState::Closed)
        ]
    );
}

/// Retry outside the breaker, a dependency down for a while, 30 messages: intake pauses
/// while the breaker is open, and every message is handled once the dependency is back, none
/// dead-lettered or lost.
#[tokio::test(start_paused = true)]
async fn open_breaker_pauses_intake_and_loses_nothing() {
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let (config, events) = recording_config();
    let breaker = BreakerLayer::new("h", config);
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default()
                .max_attempts(4)
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_secs(1)),
        ))
        .layer(breaker)
        .service(switchable(healthy.clone(), calls.clone()));
    crate::common::assert_handler(&svc);
    let msgs = envs("orders.placed", 30);
    let ids: Vec<_> = msgs.iter().map(|e| e.id.clone()).collect();
    let queue = queue_of(msgs);
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let driver = tokio::spawn(drive(
        svc,
        queue.clone(),
        2,
        dlq.clone() as Arc<dyn DeadLetterSink>,
    ));

    wait_for("breaker to open", || handle.state() == BreakerState::Open).await;
    let queued = queue.lock().unwrap().len();
    let calls_when_open = calls.load(Ordering::SeqCst);
    // Well inside the 10 s cool-down: nothing is taken off the queue, the handler is not called.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(queue.lock().unwrap().len(), queued);
    assert!(
        queued >= 27,
        "intake should have paused early, {queued} left"
    );
    assert_eq!(calls.load(Ordering::SeqCst), calls_when_open);

    healthy.store(true, Ordering::SeqCst);
    let settled = driver.await.unwrap();
    let mut acked = settled.acked();
    acked.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(acked, want, "every message acked exactly once");
    assert!(dlq.is_empty());
    assert_eq!(handle.state(), BreakerState::Closed);
    assert!(transitions(&events).contains(&(BreakerState::HalfOpen, BreakerState::Closed)));
}

/// Undecodable messages are bad input, not an unhealthy handler: a run of them does not open
/// the breaker (before, each counted as a failure, and the demo's one undecodable request in
/// ten opened the reference app's CPM breaker). Real errors still open it.
#[tokio::test]
async fn undecodable_messages_do_not_open_the_breaker() {
    use switchyard_core::{CodecDirection, CodecError};
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    let layer = BreakerLayer::new("decoder", BreakerConfig::default().failures(3));
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(move |_e: Envelope| {
        let broken = flag.load(Ordering::SeqCst);
        async move {
            if broken {
                return Err::<Outcome, BoxError>("dependency down".into());
            }
            Err(CodecError {
                direction: CodecDirection::Decode,
                type_name: "Order",
                source: "expected value at line 1 column 1".into(),
            }
            .into())
        }
    }));
    for _ in 0..10 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(env("a.b"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Order"), "{err}");
    }
    assert_eq!(handle.state(), BreakerState::Closed, "10 decode failures");
    broken.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    }
    assert_eq!(handle.state(), BreakerState::Open, "3 real failures");
}
