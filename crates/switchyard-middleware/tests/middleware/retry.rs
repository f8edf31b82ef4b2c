use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::{BoxError, Envelope, Outcome};
use switchyard_middleware::catch_panic::CatchPanicLayer;
use switchyard_middleware::retry::{
    Classifier, Jitter, Permanent, RetryError, RetryErrorKind, RetryLayer, RetryPolicy,
    RetryRequested, Retryable,
};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::common::env;

type Calls = Arc<Mutex<Vec<(u32, Instant)>>>;

/// A handler that records (attempt, virtual time) and answers from a script by call index.
fn scripted(
    script: Vec<Result<Outcome, &'static str>>,
) -> (
    impl tower::Service<
        Envelope,
        Response = Outcome,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<Outcome, BoxError>> + Send,
    > + Clone
    + Send,
    Calls,
) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let script = Arc::new(script);
    let svc = tower::service_fn(move |env: Envelope| {
        let calls = c.clone();
        let script = script.clone();
        async move {
            let n = {
                let mut calls = calls.lock().unwrap();
                calls.push((env.delivery.attempt, Instant::now()));
                calls.len() - 1
            };
            match script.get(n).cloned().unwrap_or(Ok(Outcome::Ack)) {
                Ok(o) => Ok(o),
                Err(e) => Err(BoxError::from(e)),
            }
        }
    });
    (svc, calls)
}

fn gaps(calls: &[(u32, Instant)]) -> Vec<Duration> {
    calls.windows(2).map(|w| w[1].1 - w[0].1).collect()
}

#[tokio::test(start_paused = true)]
async fn flaky_handler_succeeds_on_attempt_three_and_sees_attempts() {
    let (h, calls) = scripted(vec![Err("down"), Err("down"), Ok(Outcome::Ack)]);
    let svc = RetryLayer::new(RetryPolicy::default().seed(1)).layer(h);
    assert_eq!(svc.oneshot(env("a.b")).await.unwrap(), Outcome::Ack);
    let attempts: Vec<u32> = calls.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn attempts_continue_from_the_bus_attempt() {
    let (h, calls) = scripted(vec![Err("x"), Ok(Outcome::Ack)]);
    let svc = RetryLayer::new(RetryPolicy::default()).layer(h);
    let mut e = env("a.b");
    e.delivery.attempt = 4;
    svc.oneshot(e).await.unwrap();
    let attempts: Vec<u32> = calls.lock().unwrap().iter().map(|c| c.0).collect();
    assert_eq!(attempts, vec![4, 5]);
}

#[tokio::test(start_paused = true)]
async fn exponential_delays_without_jitter_follow_the_policy() {
    let (h, calls) = scripted(vec![Err("x"); 5]);
    let policy = RetryPolicy::default()
        .max_attempts(5)
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(300))
        .jitter(Jitter::None);
    let err = RetryLayer::new(policy)
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap_err();
    assert!(err.is::<Permanent>(), "final: the bus must not retry again");
    let err = RetryError::find(&*err).unwrap();
    assert_eq!(err.kind(), RetryErrorKind::Exhausted);
    assert!(matches!(err, RetryError::Exhausted { attempts: 5, .. }));
    assert_eq!(err.attempts(), 5);
    let ms = |n| Duration::from_millis(n);
    assert_eq!(
        gaps(&calls.lock().unwrap()),
        vec![ms(100), ms(200), ms(300), ms(300)]
    );
}

#[tokio::test(start_paused = true)]
async fn full_jitter_delays_stay_under_the_cap_and_are_reproducible() {
    async fn run(seed: u64) -> Vec<Duration> {
        let (h, calls) = scripted(vec![Err("x"); 6]);
        let policy = RetryPolicy::default()
            .max_attempts(6)
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .seed(seed);
        let _ = RetryLayer::new(policy).layer(h).oneshot(env("a.b")).await;
        gaps(&calls.lock().unwrap())
    }
    let caps = [100u64, 200, 400, 800, 1000];
    let a = run(7).await;
    assert_eq!(a.len(), 5);
    for (d, cap) in a.iter().zip(caps) {
        // The timer wheel rounds deadlines up to the next millisecond.
        assert!(
            *d <= Duration::from_millis(cap + 1),
            "{d:?} above cap {cap} ms"
        );
    }
    assert_eq!(a, run(7).await, "same seed, same delays");
    assert_ne!(a, run(8).await, "different seed, different delays");
    // Across many seeds the delays spread over the range instead of sitting at the cap.
    let mut firsts = Vec::new();
    for seed in 0..40 {
        firsts.push(run(seed).await[0]);
    }
    assert!(firsts.iter().any(|d| *d < Duration::from_millis(40)));
    assert!(firsts.iter().any(|d| *d > Duration::from_millis(60)));
}

#[tokio::test(start_paused = true)]
async fn retry_after_from_the_handler_is_honoured_and_exhaustion_is_typed() {
    let (h, calls) = scripted(vec![
        Ok(Outcome::Retry {
            after: Some(Duration::from_secs(3)),
        }),
        Ok(Outcome::Retry {
            after: Some(Duration::from_secs(3)),
        }),
        Ok(Outcome::Retry { after: None }),
    ]);
    let err = RetryLayer::new(RetryPolicy::default())
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap_err();
    assert_eq!(
        gaps(&calls.lock().unwrap()),
        vec![Duration::from_secs(3); 2]
    );
    let err = RetryError::find(&*err).unwrap();
    assert!(err.last_error().downcast_ref::<RetryRequested>().is_some());
}

#[derive(Debug, thiserror::Error)]
#[error("db: {0}")]
struct DbError(&'static str);
impl Retryable for DbError {
    fn is_retryable(&self) -> bool {
        self.0 == "connection reset"
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let h = tower::service_fn(move |_e: Envelope| {
        *c.lock().unwrap() += 1;
        async { Err::<Outcome, BoxError>(Box::new(DbError("constraint violated"))) }
    });
    let policy = RetryPolicy::default().classifier(Classifier::default().retryable::<DbError>());
    let err = RetryLayer::new(policy)
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 1);
    assert!(err.is::<Permanent>());
    let err = RetryError::find(&*err).unwrap();
    assert_eq!(err.kind(), RetryErrorKind::Permanent);
    assert!(err.last_error().downcast_ref::<DbError>().is_some());

    // The Permanent marker works without registering anything.
    let h = tower::service_fn(|_e: Envelope| async {
        Err::<Outcome, BoxError>(Permanent::new("bad input").into())
    });
    let err = RetryLayer::new(RetryPolicy::default())
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap_err();
    assert_eq!(
        RetryError::find(&*err).unwrap().kind(),
        RetryErrorKind::Permanent
    );
}

#[tokio::test(start_paused = true)]
async fn typed_retryable_errors_are_retried() {
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let h = tower::service_fn(move |_e: Envelope| {
        let n = {
            let mut n = c.lock().unwrap();
            *n += 1;
            *n
        };
        async move {
            if n < 3 {
                Err::<Outcome, BoxError>(Box::new(DbError("connection reset")))
            } else {
                Ok(Outcome::Ack)
            }
        }
    });
    let policy = RetryPolicy::default().classifier(
        Classifier::default()
            .unknown_retryable(false)
            .retryable::<DbError>(),
    );
    assert_eq!(
        RetryLayer::new(policy)
            .layer(h)
            .oneshot(env("a.b"))
            .await
            .unwrap(),
        Outcome::Ack
    );
    assert_eq!(*calls.lock().unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn panics_are_retried_only_when_configured() {
    async fn count(policy: RetryPolicy) -> u32 {
        let calls = Arc::new(Mutex::new(0u32));
        let c = calls.clone();
        let h = tower::service_fn(move |_e: Envelope| {
            let c = c.clone();
            async move {
                *c.lock().unwrap() += 1;
                if true {
                    panic!("handler bug");
                }
                Ok::<Outcome, BoxError>(Outcome::Ack)
            }
        });
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .layer(CatchPanicLayer::new())
            .service(h);
        assert!(svc.oneshot(env("a.b")).await.is_err());
        *calls.lock().unwrap()
    }
    assert_eq!(count(RetryPolicy::default()).await, 1);
    assert_eq!(
        count(RetryPolicy::default().classifier(Classifier::default().retry_panics(true))).await,
        3
    );
}

#[tokio::test(start_paused = true)]
async fn reject_and_reply_are_not_retried() {
    let (h, calls) = scripted(vec![Ok(Outcome::reject("invalid"))]);
    let out = RetryLayer::new(RetryPolicy::default())
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap();
    assert_eq!(out, Outcome::reject("invalid"));
    assert_eq!(calls.lock().unwrap().len(), 1);
}

/// The layer starts no attempt and waits no backoff past the message's deadline
/// (`delivery.deadline`, a request's): with 100 then 200 ms backoffs and a 250 ms deadline,
/// attempts at 0 and 100 ms; the next would start at 300, so it gives up at 100 with
/// `RetryError::Deadline` (2 attempts, the last error kept as its source). Without a deadline
/// the same policy makes all 5.
#[tokio::test(start_paused = true)]
async fn no_attempt_nor_backoff_past_the_deadline() {
    let policy = RetryPolicy::default()
        .max_attempts(5)
        .initial_delay(Duration::from_millis(100))
        .jitter(Jitter::None);
    let (h, calls) = scripted(vec![Err("down"); 5]);
    let mut e = env("a.b");
    let t0 = Instant::now();
    e.delivery.deadline = Some((t0 + Duration::from_millis(250)).into_std());
    let err = RetryLayer::new(policy.clone())
        .layer(h)
        .oneshot(e)
        .await
        .unwrap_err();
    assert!(err.is::<Permanent>(), "final: the bus must not retry again");
    let re = RetryError::find(&*err).unwrap();
    assert_eq!(re.kind(), RetryErrorKind::Deadline);
    assert_eq!(re.attempts(), 2);
    assert_eq!(re.last_attempt(1), 2);
    assert_eq!(re.last_error().to_string(), "down");
    assert!(re.to_string().contains("deadline"), "{re}");
    assert_eq!(Instant::now() - t0, Duration::from_millis(100));
    assert_eq!(calls.lock().unwrap().len(), 2);
    let (h, calls) = scripted(vec![Err("down"); 5]);
    let err = RetryLayer::new(policy)
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap_err();
    assert_eq!(
        RetryError::find(&*err).unwrap().kind(),
        RetryErrorKind::Exhausted
    );
    assert_eq!(calls.lock().unwrap().len(), 5);
}
