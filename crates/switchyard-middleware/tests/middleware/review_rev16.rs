//! Review rev16: the resilience promises of docs/middleware.md measured on the virtual clock:
//! exact backoff delays and their bounds, which errors are retried, per-attempt timeouts
//! under retry, the breaker holding a retry, rate-limit spacing, dedup expiry, panic payloads,
//! and the dead-letter queue's replay-twice and bounded behaviour.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::{
    BoxError, CodecDirection, CodecError, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope,
    Outcome, PublishError,
};
use switchyard_middleware::breaker::{BreakerConfig, BreakerLayer, BreakerOpenError, BreakerState};
use switchyard_middleware::catch_panic::{CatchPanicLayer, PanicError};
use switchyard_middleware::dlq::{
    DeadLetterFilter, DeadLetterQueue, InMemoryDeadLetters, ReplayError, Replayer,
};
use switchyard_middleware::limit::RateLimitLayer;
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use switchyard_middleware::retry::{
    Classifier, Jitter, Permanent, RetryError, RetryErrorKind, RetryLayer, RetryPolicy, Transient,
};
use switchyard_middleware::timeout::{TimeoutError, TimeoutLayer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::common::env;

type Calls = Arc<Mutex<Vec<(u32, Instant)>>>;

/// What the scripted handler does on one call.
#[derive(Clone, Copy)]
enum Step {
    Ack,
    Fail,
    Transient,
    Permanent,
    Decode,
    RetryAfter(Duration),
    Hang,
    Panic,
}

/// A handler that records (attempt, virtual time) of each call and acts by call index
/// (`Ack` past the end of the script).
fn scripted(
    script: Vec<Step>,
) -> (
    impl Service<
        Envelope,
        Response = Outcome,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<Outcome, BoxError>> + Send,
    > + Clone
    + Send
    + 'static,
    Calls,
) {
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
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
            match script.get(n).copied().unwrap_or(Step::Ack) {
                Step::Ack => Ok(Outcome::Ack),
                Step::Fail => Err(BoxError::from("down")),
                Step::Transient => Err(Transient::boxed("flaky")),
                Step::Permanent => Err(Permanent::new("constraint").into()),
                Step::Decode => Err(BoxError::from(CodecError {
                    direction: CodecDirection::Decode,
                    type_name: "Order",
                    source: "expected value at line 1".into(),
                })),
                Step::RetryAfter(d) => Ok(Outcome::Retry { after: Some(d) }),
                Step::Hang => std::future::pending().await,
                Step::Panic => panic!("boom"),
            }
        }
    });
    (svc, calls)
}

fn gaps(calls: &Calls) -> Vec<Duration> {
    let calls = calls.lock().unwrap();
    calls.windows(2).map(|w| w[1].1 - w[0].1).collect()
}

fn count(calls: &Calls) -> usize {
    calls.lock().unwrap().len()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn exact(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(attempts)
        .initial_delay(ms(100))
        .max_delay(Duration::from_secs(10))
        .jitter(Jitter::None)
}

// ---------------------------------------------------------------- retry

/// "`Outcome::Retry { after: Some(d) }` waits `d` (capped at `max_delay`)".
#[tokio::test(start_paused = true)]
async fn retry_after_longer_than_max_delay_is_capped_at_max_delay() {
    let (h, calls) = scripted(vec![Step::RetryAfter(Duration::from_secs(60)); 2]);
    let policy = exact(3).max_delay(Duration::from_secs(2));
    let out = RetryLayer::new(policy)
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap();
    assert_eq!(out, Outcome::Ack);
    assert_eq!(gaps(&calls), vec![Duration::from_secs(2); 2]);
}

/// Equal jitter: "its upper half": every delay lies in `[cap/2, cap]` of the doubling cap.
#[tokio::test(start_paused = true)]
async fn equal_jitter_delays_lie_in_the_upper_half_of_each_cap() {
    let mut distinct = std::collections::HashSet::new();
    for seed in 0..20 {
        let (h, calls) = scripted(vec![Step::Fail; 4]);
        let policy = RetryPolicy::default()
            .max_attempts(5)
            .initial_delay(ms(100))
            .max_delay(ms(1000))
            .jitter(Jitter::Equal)
            .seed(seed);
        RetryLayer::new(policy)
            .layer(h)
            .oneshot(env("a.b"))
            .await
            .unwrap();
        let g = gaps(&calls);
        assert_eq!(g.len(), 4);
        for (d, cap) in g.iter().zip([100u64, 200, 400, 800]) {
            // tokio rounds a sleep up to the next millisecond.
            assert!(
                *d >= ms(cap / 2) && *d <= ms(cap + 1),
                "seed {seed}: delay {d:?} outside [{}, {cap}] ms",
                cap / 2
            );
        }
        distinct.insert(g[3]);
    }
    assert!(distinct.len() > 1, "jitter must vary with the seed");
}

/// `Transient::boxed(e)` "always is [retried] (while attempts remain)", even when the
/// classifier says unknown errors are not; a plain error under that classifier is final at
/// attempt 1.
#[tokio::test(start_paused = true)]
async fn transient_is_retried_even_when_unknown_errors_are_not() {
    let strict = || exact(3).classifier(Classifier::default().unknown_retryable(false));
    let (h, calls) = scripted(vec![Step::Transient, Step::Transient]);
    let out = RetryLayer::new(strict())
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap();
    assert_eq!(out, Outcome::Ack);
    assert_eq!(count(&calls), 3);

    let (h, calls) = scripted(vec![Step::Fail]);
    let err = RetryLayer::new(strict())
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap_err();
    assert_eq!(count(&calls), 1);
    assert!(err.is::<Permanent>());
    let err = RetryError::find(&*err).unwrap();
    assert_eq!(err.kind(), RetryErrorKind::Permanent);
    assert_eq!(err.attempts(), 1);
}

/// A decoding `CodecError` "is never retried", even with `unknown_retryable(true)` and
/// `Transient`-friendly settings; `Permanent` likewise; both come back as final errors.
#[tokio::test(start_paused = true)]
async fn decode_errors_and_permanent_are_final_at_the_first_attempt() {
    for step in [Step::Decode, Step::Permanent] {
        let (h, calls) = scripted(vec![step; 5]);
        let policy = exact(5).classifier(Classifier::default().unknown_retryable(true));
        let err = RetryLayer::new(policy)
            .layer(h)
            .oneshot(env("a.b"))
            .await
            .unwrap_err();
        assert_eq!(count(&calls), 1, "{err}");
        assert!(err.is::<Permanent>(), "{err}");
        let re = RetryError::find(&*err).unwrap();
        assert_eq!(re.kind(), RetryErrorKind::Permanent);
    }
}

/// `max_attempts(1)`: one call, no wait, the failure is `Exhausted { attempts: 1 }`.
#[tokio::test(start_paused = true)]
async fn one_attempt_means_one_call_and_no_wait() {
    let (h, calls) = scripted(vec![Step::Fail]);
    let t0 = Instant::now();
    let err = RetryLayer::new(exact(1))
        .layer(h)
        .oneshot(env("a.b"))
        .await
        .unwrap_err();
    assert_eq!(count(&calls), 1);
    assert_eq!(Instant::now() - t0, Duration::ZERO);
    assert!(matches!(
        RetryError::find(&*err).unwrap(),
        RetryError::Exhausted { attempts: 1, .. }
    ));
}

// ---------------------------------------------------------------- timeout under retry

/// The fused stack's timeout is per attempt: a hanging handler is cut at exactly 5 s each
/// time, the attempts are 5 s + backoff apart, and the last error is a `TimeoutError`.
#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_under_retry_has_exact_instants() {
    let (h, calls) = scripted(vec![Step::Hang; 3]);
    let layer = ResilienceLayer::new(
        "h",
        ResilienceConfig::default()
            .retry(exact(3))
            .timeout(Duration::from_secs(5)),
    );
    let t0 = Instant::now();
    let err = layer.layer(h).oneshot(env("a.b")).await.unwrap_err();
    assert_eq!(Instant::now() - t0, ms(15_300), "3 × 5 s + 100 ms + 200 ms");
    assert_eq!(gaps(&calls), vec![ms(5_100), ms(5_200)]);
    let re = RetryError::find(&*err).unwrap();
    assert_eq!(re.kind(), RetryErrorKind::Exhausted);
    assert_eq!(re.attempts(), 3);
    assert!(
        re.last_error().downcast_ref::<TimeoutError>().is_some(),
        "{:?}",
        re.last_error()
    );
}

/// `retry_timeouts(false)`: a timed-out attempt is final.
#[tokio::test(start_paused = true)]
async fn timeouts_not_retried_when_the_classifier_says_so() {
    let (h, calls) = scripted(vec![Step::Hang; 3]);
    let layer = ResilienceLayer::new(
        "h",
        ResilienceConfig::default()
            .retry(exact(3).classifier(Classifier::default().retry_timeouts(false)))
            .timeout(Duration::from_secs(5)),
    );
    let t0 = Instant::now();
    let err = layer.layer(h).oneshot(env("a.b")).await.unwrap_err();
    assert_eq!(Instant::now() - t0, Duration::from_secs(5));
    assert_eq!(count(&calls), 1);
    assert_eq!(
        RetryError::find(&*err).unwrap().kind(),
        RetryErrorKind::Permanent
    );
}

/// "The inner future is dropped at that moment, so a late result is never seen."
#[tokio::test(start_paused = true)]
async fn the_timeout_drops_the_inner_future_at_the_deadline() {
    struct Flag(Arc<AtomicUsize>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let svc =
        TimeoutLayer::new(Duration::from_secs(2)).layer(tower::service_fn(move |_e: Envelope| {
            let flag = Flag(d.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                drop(flag);
                Ok::<_, BoxError>(Outcome::Ack)
            }
        }));
    let t0 = Instant::now();
    let err = svc.oneshot(env("a.b")).await.unwrap_err();
    assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    let te = err.downcast_ref::<TimeoutError>().expect("a TimeoutError");
    assert_eq!(te.timeout, Duration::from_secs(2));
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped at the deadline");
}

// ---------------------------------------------------------------- breaker and retry

/// "Retry outside the breaker: each attempt waits for readiness again, so an open breaker
/// holds the retry instead of burning its attempts." Two failures open the breaker
/// (cool-down 10 s); the third attempt waits for the half-open trial and succeeds: three
/// calls in all, the third at exactly open + 10 s.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_holds_the_retry_until_the_cool_down_ends() {
    let (h, calls) = scripted(vec![Step::Fail, Step::Fail]);
    let layer = ResilienceLayer::new(
        "h",
        ResilienceConfig::default().retry(exact(5)).breaker(
            BreakerConfig::default()
                .failures(2)
                .cool_down(Duration::from_secs(10)),
        ),
    );
    let breaker = layer.breaker();
    let out = layer.layer(h).oneshot(env("a.b")).await.unwrap();
    assert_eq!(out, Outcome::Ack);
    assert_eq!(count(&calls), 3, "no attempt burnt on the open breaker");
    assert_eq!(gaps(&calls), vec![ms(100), ms(10_000)]);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

/// The same with the separate documented layers (retry outside breaker).
#[tokio::test(start_paused = true)]
async fn separate_layers_an_open_breaker_holds_the_retry() {
    let (h, calls) = scripted(vec![Step::Fail, Step::Fail]);
    let breaker = BreakerLayer::new(
        "h",
        BreakerConfig::default()
            .failures(2)
            .cool_down(Duration::from_secs(10)),
    );
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact(5)))
        .layer(breaker)
        .layer(CatchPanicLayer::new())
        .service(h);
    let out = svc.oneshot(env("a.b")).await.unwrap();
    assert_eq!(out, Outcome::Ack);
    assert_eq!(gaps(&calls), vec![ms(100), ms(10_000)]);
    assert_eq!(handle.state(), BreakerState::Closed);
}

/// Half-open with two trial calls: a third caller gets no readiness until both trials
/// succeeded and closed the breaker; a call without readiness while open fails fast with a
/// `BreakerOpenError` that the default classifier retries.
#[tokio::test(start_paused = true)]
async fn half_open_admits_only_the_trial_calls() {
    let (h, calls) = scripted(vec![Step::Fail]);
    let layer = BreakerLayer::new(
        "h",
        BreakerConfig::default()
            .failures(1)
            .cool_down(Duration::from_secs(1))
            .trial_calls(2),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(h);
    let _ = svc.ready().await.unwrap().call(env("a.b")).await;
    assert_eq!(handle.state(), BreakerState::Open);
    // Fail fast without readiness.
    let err = svc.call(env("a.b")).await.unwrap_err();
    assert!(err.downcast_ref::<BreakerOpenError>().is_some(), "{err}");
    assert!(Classifier::default().is_retryable(&*err));
    assert_eq!(count(&calls), 1);

    tokio::time::advance(Duration::from_secs(1)).await;
    let mut a = svc.clone();
    let mut b = svc.clone();
    let mut c = svc.clone();
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    let third = tokio::time::timeout(ms(50), c.ready()).await;
    assert!(
        third.is_err(),
        "a third caller is not ready while half-open"
    );
    a.call(env("a.b")).await.unwrap();
    b.call(env("a.b")).await.unwrap();
    assert_eq!(handle.state(), BreakerState::Closed);
    tokio::time::timeout(ms(1), c.ready())
        .await
        .expect("ready once closed")
        .unwrap();
}

// ---------------------------------------------------------------- limits

/// The rate limit of the fused stack spaces calls by the rate after the burst: rate 2/s,
/// burst 2 → five calls at 0, 0, 500, 1000, 1500 ms.
#[tokio::test(start_paused = true)]
async fn stack_rate_limit_spaces_calls_exactly_after_the_burst() {
    let (h, calls) = scripted(vec![]);
    let layer = ResilienceLayer::new(
        "h",
        ResilienceConfig::default().rate(2, Duration::from_secs(1), 2),
    );
    let mut svc = layer.layer(h);
    let t0 = Instant::now();
    for _ in 0..5 {
        svc.ready().await.unwrap().call(env("a.b")).await.unwrap();
    }
    let at: Vec<Duration> = calls.lock().unwrap().iter().map(|c| c.1 - t0).collect();
    assert_eq!(at, vec![ms(0), ms(0), ms(500), ms(1000), ms(1500)]);
}

/// "A message in backoff holds no token": with rate 1/s and burst 1, a failing message's
/// retry after 2 s of backoff finds a token; another caller used one meanwhile.
#[tokio::test(start_paused = true)]
async fn a_message_in_backoff_holds_no_rate_token() {
    let (h, calls) = scripted(vec![Step::Fail]);
    let policy = exact(2).initial_delay(Duration::from_secs(2));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(RateLimitLayer::new(1, Duration::from_secs(1)).burst(1))
        .service(h);
    let t0 = Instant::now();
    let first = tokio::spawn(svc.clone().oneshot(env("a.b")));
    tokio::time::sleep(ms(1000)).await;
    // One second later the bucket has a token again: the other caller gets it at once.
    svc.clone().oneshot(env("a.c")).await.unwrap();
    first.await.unwrap().unwrap();
    let at: Vec<Duration> = calls.lock().unwrap().iter().map(|c| c.1 - t0).collect();
    assert_eq!(at, vec![ms(0), ms(1000), ms(2000)]);
}

// ---------------------------------------------------------------- panics

/// A panic whose payload is not a string (`panic_any(42)`) is still a `PanicError` and the
/// service stays usable; through the retry layer with default classifier it is not retried
/// and the final error keeps the `PanicError` for the DLQ's reason.
#[tokio::test(start_paused = true)]
async fn non_string_panic_payloads_are_caught_and_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact(3)))
        .layer(CatchPanicLayer::new())
        .service(tower::service_fn(move |e: Envelope| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 || &e.payload[..] == b"boom" {
                    std::panic::panic_any(42_u32);
                }
                Ok::<_, BoxError>(Outcome::Ack)
            }
        }));
    let err = svc.clone().oneshot(env("a.b")).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "panics are not retried");
    let re = RetryError::find(&*err).unwrap();
    assert!(re.last_error().downcast_ref::<PanicError>().is_some());
    assert_eq!(
        switchyard_middleware::dlq::failure_reason(&*err),
        DeadLetterReason::Panicked
    );
    assert_eq!(svc.oneshot(env("a.b")).await.unwrap(), Outcome::Ack);
}

/// The fused stack with `retry_panics` on the classifier: a panic is retried with the
/// documented backoff and the next attempt succeeds.
#[tokio::test(start_paused = true)]
async fn panics_retried_by_the_fused_stack_when_asked() {
    let (h, calls) = scripted(vec![Step::Panic]);
    let layer = ResilienceLayer::new(
        "h",
        ResilienceConfig::default()
            .retry(exact(3).classifier(Classifier::default().retry_panics(true))),
    );
    assert_eq!(
        layer.layer(h).oneshot(env("a.b")).await.unwrap(),
        Outcome::Ack
    );
    assert_eq!(gaps(&calls), vec![ms(100)]);
}

// ---------------------------------------------------------------- dead-letter queue

fn letter(e: &Envelope) -> DeadLetter {
    DeadLetter::new(e.clone(), DeadLetterReason::HandlerFailed, "down").with_handler("h")
}

/// Replaying one message twice: the first publishes and removes it; the second is a typed
/// `NotFound` and publishes nothing.
#[tokio::test]
async fn replaying_one_message_twice_publishes_it_once() {
    let q = InMemoryDeadLetters::new(10);
    let x = env("billing.x");
    q.put(letter(&x));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let target = move |e: Envelope| {
        s.lock().unwrap().push(e);
        futures::future::ready(Ok::<(), PublishError>(()))
    };
    Replayer::new(&q, &target).one(x.id.clone()).await.unwrap();
    let again = Replayer::new(&q, &target).one(x.id.clone()).await;
    assert!(matches!(again, Err(ReplayError::NotFound(ref id)) if *id == x.id));
    assert_eq!(seen.lock().unwrap().len(), 1);
    let report = Replayer::new(&q, &target).all().await;
    assert!(report.replayed.is_empty() && report.failed.is_empty());
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A replay whose publish fails leaves the entry in place and reports it, typed.
#[tokio::test]
async fn a_failed_replay_publish_keeps_the_entry() {
    let q = InMemoryDeadLetters::new(10);
    let x = env("billing.x");
    q.put(letter(&x));
    let target =
        |_e: Envelope| futures::future::ready(Err::<(), PublishError>(PublishError::ShuttingDown));
    let err = Replayer::new(&q, &target)
        .one(x.id.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplayError::Publish { ref id, .. } if *id == x.id),
        "{err}"
    );
    let report = Replayer::new(&q, &target).all().await;
    assert_eq!(report.failed.len(), 1);
    assert_eq!(q.len(), 1);
    assert_eq!(q.get(&x.id).unwrap().error, "down");
}

/// A bounded queue: "evicts the oldest entry when full and counts it"; the filter still
/// browses what is left, by reason and text.
#[test]
fn a_full_memory_queue_evicts_the_oldest_and_counts_it() {
    let q = InMemoryDeadLetters::new(3);
    let es: Vec<Envelope> = (0..5).map(|i| env(&format!("billing.m{i}"))).collect();
    for e in &es {
        q.put(letter(e));
    }
    assert_eq!(q.len(), 3);
    assert_eq!(DeadLetterQueue::evicted(&q), 2);
    assert!(q.get(&es[0].id).is_none() && q.get(&es[1].id).is_none());
    let left = DeadLetterQueue::list(
        &q,
        &DeadLetterFilter::new()
            .reason(DeadLetterReason::HandlerFailed)
            .error_contains("down"),
    );
    let ids: Vec<_> = left.iter().map(|l| l.envelope.id.clone()).collect();
    assert_eq!(
        ids,
        vec![es[2].id.clone(), es[3].id.clone(), es[4].id.clone()]
    );
}

// ---------------------------------------------------------------- the fused stack's clocks

/// The fused stack's dedup TTL follows the (virtual) clock: a duplicate just inside the TTL
/// is acked without a call, one just past it is handled again.
#[tokio::test(start_paused = true)]
async fn fused_dedup_ttl_follows_the_virtual_clock() {
    use switchyard_middleware::dedup::DedupConfig;
    let (h, calls) = scripted(vec![]);
    let layer = ResilienceLayer::new(
        "h",
        ResilienceConfig::default().dedup(DedupConfig::default().ttl(Duration::from_secs(10))),
    );
    let mut svc = layer.layer(h);
    let e = env("a.b");
    svc.ready().await.unwrap().call(e.clone()).await.unwrap();
    tokio::time::advance(ms(9_990)).await;
    svc.ready().await.unwrap().call(e.clone()).await.unwrap();
    assert_eq!(
        count(&calls),
        1,
        "a duplicate within the TTL is not handled"
    );
    tokio::time::advance(ms(20)).await;
    svc.ready().await.unwrap().call(e.clone()).await.unwrap();
    assert_eq!(count(&calls), 2, "past the TTL the key is forgotten");
}

/// The fused stack's dedup with retry: a message that failed once and then succeeded within
/// the retries marks its key ("only once the retried whole succeeded"); one that exhausted
/// its attempts does not, so its redelivery is handled.
#[tokio::test(start_paused = true)]
async fn fused_dedup_marks_only_a_retried_whole_that_succeeded() {
    use switchyard_middleware::dedup::DedupConfig;
    let (h, calls) = scripted(vec![Step::Fail, Step::Ack, Step::Fail, Step::Fail]);
    let layer = ResilienceLayer::new(
        "h",
        ResilienceConfig::default()
            .retry(exact(2))
            .dedup(DedupConfig::default()),
    );
    let mut svc = layer.layer(h);
    let (ok, bad) = (env("a.ok"), env("a.bad"));
    svc.ready().await.unwrap().call(ok.clone()).await.unwrap();
    assert_eq!(count(&calls), 2);
    svc.ready().await.unwrap().call(ok.clone()).await.unwrap();
    assert_eq!(
        count(&calls),
        2,
        "the duplicate of a retried success is acked"
    );
    svc.ready()
        .await
        .unwrap()
        .call(bad.clone())
        .await
        .unwrap_err();
    assert_eq!(count(&calls), 4);
    svc.ready().await.unwrap().call(bad.clone()).await.unwrap();
    assert_eq!(count(&calls), 5, "an exhausted message is not marked");
}

/// The fused stack's breaker window follows the (virtual) clock: failures further apart
/// than the window never add up to the threshold.
#[tokio::test(start_paused = true)]
async fn fused_breaker_window_follows_the_virtual_clock() {
    let (h, _calls) = scripted(vec![Step::Fail; 3]);
    let layer = ResilienceLayer::new(
        "h",
        ResilienceConfig::default().retry(exact(1)).breaker(
            BreakerConfig::default()
                .failures(2)
                .window(Duration::from_secs(10)),
        ),
    );
    let breaker = layer.breaker();
    let mut svc = layer.layer(h);
    svc.ready()
        .await
        .unwrap()
        .call(env("a.b"))
        .await
        .unwrap_err();
    tokio::time::advance(Duration::from_secs(11)).await;
    svc.ready()
        .await
        .unwrap()
        .call(env("a.b"))
        .await
        .unwrap_err();
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "the first failure left the window"
    );
    svc.ready()
        .await
        .unwrap()
        .call(env("a.b"))
        .await
        .unwrap_err();
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "two within the window open it"
    );
}

/// The fused stack caps a handler's `Retry { after }` at `max_delay` too, and equal jitter
/// there keeps to the upper half of the cap.
#[tokio::test(start_paused = true)]
async fn fused_retry_after_is_capped_and_equal_jitter_bounded() {
    let (h, calls) = scripted(vec![Step::RetryAfter(Duration::from_secs(60)), Step::Fail]);
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .initial_delay(ms(400))
        .max_delay(Duration::from_secs(2))
        .jitter(Jitter::Equal)
        .seed(7);
    let layer = ResilienceLayer::new("h", ResilienceConfig::default().retry(policy));
    assert_eq!(
        layer.layer(h).oneshot(env("a.b")).await.unwrap(),
        Outcome::Ack
    );
    let g = gaps(&calls);
    assert_eq!(
        g[0],
        Duration::from_secs(2),
        "Retry {{ after: 60 s }} capped at 2 s"
    );
    // After the second failure the cap is 400 ms × 2 = 800 ms: equal jitter in [400, 800].
    assert!(g[1] >= ms(400) && g[1] <= ms(801), "{:?}", g[1]);
}
