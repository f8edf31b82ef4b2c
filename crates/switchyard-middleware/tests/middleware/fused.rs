//! `ResilienceLayer` runs the stack as one fused service. These tests hold it to the same
//! behaviour as the separate layers stacked in the documented order: the same scripted
//! handler, run message by message on the virtual clock, must see the same attempts at the
//! same instants and end with the same results, counts and breaker history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::{BoxError, Envelope, Outcome, Permanent, Topic};
use switchyard_middleware::breaker::{BreakerConfig, BreakerHandle, BreakerLayer};
use switchyard_middleware::catch_panic::CatchPanicLayer;
use switchyard_middleware::dedup::{DedupConfig, DedupLayer};
use switchyard_middleware::metrics::{MetricsLayer, MetricsRegistry};
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use switchyard_middleware::retry::{RetryError, RetryLayer, RetryPolicy};
use switchyard_middleware::timeout::TimeoutLayer;
use switchyard_middleware::trace::{TraceContext, TraceLayer};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

type Handler = BoxCloneService<Envelope, Outcome, BoxError>;

/// What attempt `attempt` of message `msg` does, decided by a hash of both and the seed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Ack,
    AckAfter(Duration),
    Transient,
    Permanent,
    Panic,
    TooSlow,
    AskRetry,
    Reject,
}

fn act(seed: u64, msg: u64, attempt: u32) -> Act {
    let mut z = seed ^ msg.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(attempt) << 48;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    match (z ^ (z >> 31)) % 100 {
        0..=44 => Act::Ack,
        45..=52 => Act::AckAfter(Duration::from_millis(1500)),
        53..=72 => Act::Transient,
        73..=77 => Act::Permanent,
        78..=82 => Act::Panic,
        83..=87 => Act::TooSlow,
        88..=94 => Act::AskRetry,
        _ => Act::Reject,
    }
}

/// One attempt as the handler saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    msg: u64,
    attempt: u32,
    at: Duration,
    in_trace: bool,
}

fn scripted(seed: u64, log: Arc<Mutex<Vec<Seen>>>, origin: Instant) -> Handler {
    BoxCloneService::new(tower::service_fn(move |env: Envelope| {
        let log = log.clone();
        async move {
            let msg: u64 = std::str::from_utf8(&env.payload).unwrap().parse().unwrap();
            let attempt = env.delivery.attempt;
            log.lock().unwrap().push(Seen {
                msg,
                attempt,
                at: origin.elapsed(),
                in_trace: TraceContext::current().is_some(),
            });
            match act(seed, msg, attempt) {
                Act::Ack => Ok(Outcome::Ack),
                Act::AckAfter(d) => {
                    tokio::time::sleep(d).await;
                    Ok(Outcome::Ack)
                }
                Act::Transient => Err::<Outcome, BoxError>("connection reset".into()),
                Act::Permanent => Err(Permanent::new("constraint violated").into()),
                Act::Panic => panic!("handler bug on {msg}"),
                Act::TooSlow => {
                    tokio::time::sleep(Duration::from_secs(45)).await;
                    Ok(Outcome::Ack)
                }
                Act::AskRetry => Ok(Outcome::Retry {
                    after: Some(Duration::from_secs(2)),
                }),
                Act::Reject => Ok(Outcome::reject("bad input")),
            }
        }
    }))
}

fn summary(result: &Result<Outcome, BoxError>) -> String {
    match result {
        Ok(o) => format!("{o:?}"),
        Err(e) => match RetryError::find(&**e) {
            Some(r) => format!("{:?} after {}: {}", r.kind(), r.attempts(), r.last_error()),
            None => format!("error: {e}"),
        },
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy::default().seed(42)
}

fn breaker_config() -> BreakerConfig {
    BreakerConfig::default()
        .failures(4)
        .cool_down(Duration::from_secs(20))
}

struct Run {
    seen: Vec<Seen>,
    results: Vec<String>,
    counts: Vec<(u64, u64, u64, u64, u64, u64)>,
    times_opened: u64,
    /// Re-attempts the retry made (attempts after a call's first).
    reattempts: u64,
}

/// Sends each message once, or twice (the same envelope again) when `twice`.
async fn drive(
    mut svc: Handler,
    log: Arc<Mutex<Vec<Seen>>>,
    registry: MetricsRegistry,
    breaker: BreakerHandle,
    messages: u64,
    twice: bool,
    reattempts: Arc<AtomicU64>,
) -> Run {
    let mut results = Vec::new();
    for msg in 0..messages {
        let env = Envelope::new(Topic::new("orders.placed").unwrap(), msg.to_string());
        for _ in 0..if twice { 2 } else { 1 } {
            let ready = svc.ready().await.unwrap();
            results.push(summary(&ready.call(env.clone()).await));
        }
    }
    let snapshot = registry.snapshot();
    Run {
        seen: std::mem::take(&mut *log.lock().unwrap()),
        results,
        counts: snapshot
            .handlers
            .iter()
            .map(|h| {
                (
                    h.delivered,
                    h.acked,
                    h.retried,
                    h.rejected,
                    h.failed,
                    h.in_flight,
                )
            })
            .collect(),
        times_opened: breaker.snapshot().times_opened,
        reattempts: reattempts.load(Ordering::SeqCst),
    }
}

async fn fused(seed: u64, messages: u64, dedup: bool) -> Run {
    let log = Arc::new(Mutex::new(Vec::new()));
    let registry = MetricsRegistry::new();
    let reattempts = Arc::new(AtomicU64::new(0));
    let r = reattempts.clone();
    let mut config = ResilienceConfig::default()
        .retry(policy())
        .breaker(breaker_config())
        .registry(registry.clone())
        .on_retry(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
    if dedup {
        config = config.dedup(DedupConfig::default());
    }
    let layer = ResilienceLayer::new("scripted", config);
    let breaker = layer.breaker();
    let origin = Instant::now();
    let svc = Handler::new(tower::Layer::layer(
        &layer,
        scripted(seed, log.clone(), origin),
    ));
    drive(svc, log, registry, breaker, messages, dedup, reattempts).await
}

async fn layered(seed: u64, messages: u64, dedup: bool) -> Run {
    let log = Arc::new(Mutex::new(Vec::new()));
    let registry = MetricsRegistry::new();
    let breaker = BreakerLayer::new("scripted", breaker_config());
    let handle = breaker.handle();
    let origin = Instant::now();
    let reattempts = Arc::new(AtomicU64::new(0));
    let r = reattempts.clone();
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new("scripted"))
        .layer(MetricsLayer::new("scripted").with_registry(registry.clone()))
        .option_layer(dedup.then(|| DedupLayer::new(DedupConfig::default())))
        .layer(RetryLayer::new(policy()).handler("scripted"))
        // Every attempt the retry makes passes here: the later ones are re-attempts.
        .map_request(move |env: Envelope| {
            if env.delivery.attempt > 1 {
                r.fetch_add(1, Ordering::SeqCst);
            }
            env
        })
        .layer(breaker)
        .layer(TimeoutLayer::default())
        .layer(CatchPanicLayer::new())
        .service(scripted(seed, log.clone(), origin));
    drive(
        Handler::new(svc),
        log,
        registry,
        handle,
        messages,
        dedup,
        reattempts,
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn the_fused_stack_behaves_like_the_separate_layers() {
    for (seed, dedup) in [(1u64, false), (2, false), (3, false), (4, true), (5, true)] {
        let a = fused(seed, 150, dedup).await;
        let b = layered(seed, 150, dedup).await;
        assert!(a.seen.len() > 150, "retries happened: {}", a.seen.len());
        assert!(
            a.seen.iter().all(|s| s.in_trace),
            "every attempt ran in a trace"
        );
        assert!(
            a.times_opened > 0,
            "the script trips the breaker (seed {seed})"
        );
        assert_eq!(a.seen, b.seen, "attempts and their instants (seed {seed})");
        assert_eq!(a.results, b.results, "results (seed {seed})");
        assert!(a.reattempts > 0, "the script makes the retry try again");
        assert_eq!(
            a.reattempts, b.reattempts,
            "on_retry is told of every re-attempt (seed {seed})"
        );
        // The separate retry layer counts its re-attempts through the `metrics` facade only
        // (its registry is the metrics layer's, which sees calls); the fused stack counts them
        // as retries in its registry too.
        let with_retries: Vec<_> = b
            .counts
            .iter()
            .map(|&(d, a, r, j, f, i)| (d, a, r + b.reattempts, j, f, i))
            .collect();
        assert_eq!(b.counts.len(), 1, "one row: {:?}", b.counts);
        assert_eq!(a.counts, with_retries, "metrics (seed {seed})");
        assert_eq!(
            a.times_opened, b.times_opened,
            "breaker openings (seed {seed})"
        );
        if dedup {
            // Sent twice, handled once: the second copy of an acked message is a duplicate.
            let deduplicated = (0..150usize)
                .filter(|&m| {
                    a.results[2 * m] == "Ack"
                        && a.results[2 * m + 1] == "Ack"
                        && a.seen.iter().filter(|s| s.msg == m as u64).count() == 1
                })
                .count();
            assert!(
                deduplicated > 30,
                "duplicates acked without a call: {deduplicated}"
            );
        }
        for kind in ["Exhausted", "Permanent", "Ack", "Reject"] {
            assert!(
                a.results.iter().any(|r| r.starts_with(kind)),
                "seed {seed} exercises {kind}"
            );
        }
    }
}

/// How long, on the tokio clock, the fused stack with a 5 s timeout takes to time out a
/// handler that first works `busy` of real time without yielding, then yields and sleeps.
async fn time_to_timeout(busy: Duration) -> Duration {
    time_to_time_out(Duration::from_secs(5), busy, Duration::ZERO).await
}

/// [`time_to_timeout`] with a `timeout` of choice, and the clock advanced by `advance_first`
/// before the handler's first yield (see [`slow_stack`]).
async fn time_to_time_out(timeout: Duration, busy: Duration, advance_first: Duration) -> Duration {
    let svc = slow_stack(timeout, busy, advance_first);
    let start = Instant::now();
    let err = svc
        .oneshot(Envelope::new(Topic::new("a.b").unwrap(), "x"))
        .await
        .unwrap_err();
    assert_timed_out(&err);
    start.elapsed()
}

/// The fused stack (one attempt, `timeout`) around a handler that first works `busy` of real
/// time without yielding (real time passes, virtual time not), or moves the virtual clock by
/// `advance_first` before its first yield, then sleeps a minute.
fn slow_stack(
    timeout: Duration,
    busy: Duration,
    advance_first: Duration,
) -> impl Service<Envelope, Response = Outcome, Error = BoxError, Future: Send> {
    let layer = ResilienceLayer::new(
        "slow",
        ResilienceConfig::default()
            .retry(RetryPolicy::default().max_attempts(1))
            .timeout(timeout),
    );
    tower::Layer::layer(
        &layer,
        tower::service_fn(move |_env: Envelope| async move {
            let started = std::time::Instant::now();
            while started.elapsed() < busy {
                std::hint::spin_loop();
            }
            if advance_first.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::advance(advance_first).await;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>(Outcome::Ack)
        }),
    )
}

/// `err` is the stack's timeout.
fn assert_timed_out(err: &BoxError) {
    assert!(
        format!("{:?}", RetryError::find(&**err)).contains("Timeout"),
        "{err:?}"
    );
}

/// A handler that yields is timed out at the configured limit from the start of the call
/// (the timer is armed only then: most calls end on their first poll and never arm one).
#[tokio::test(start_paused = true)]
async fn the_lazily_armed_timeout_counts_from_the_start_of_the_call() {
    assert_eq!(
        time_to_timeout(Duration::ZERO).await,
        Duration::from_secs(5)
    );
}

/// The timeout counts on the tokio clock only. A handler that works 3 ms of real time before
/// it yields is still timed out exactly at the limit under the paused clock (before: the
/// deadline was the tokio clock minus the real time spent, so it fired at 4.997 s, and the
/// fused stack's attempts drifted by a millisecond from the separate layers' whenever the
/// machine was slow: `the_fused_stack_behaves_like_the_separate_layers` failed under load).
#[tokio::test(start_paused = true)]
async fn the_timeout_counts_on_the_tokio_clock_only() {
    assert_eq!(
        time_to_timeout(Duration::from_millis(3)).await,
        Duration::from_secs(5)
    );
}

/// On a running clock too, the limit counts from the start of the call, not from the
/// handler's first yield (when the stack first reads the tokio clock): a handler that works
/// 400 ms of real time before it yields, under a 200 ms timeout, is timed out as soon as it
/// yields, not 200 ms later.
#[tokio::test]
async fn on_a_running_clock_the_timeout_counts_from_the_start_of_the_call() {
    let took = time_to_time_out(
        Duration::from_millis(200),
        Duration::from_millis(400),
        Duration::ZERO,
    )
    .await;
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        took < Duration::from_millis(550),
        "timed out {took:?} after the call started: counted from the first yield"
    );
}

/// the call is made at t=0, its future first polled at t=3 s (paused clock):
/// a 5 s timeout must fire at t=5 s (counted from the call), as on a running clock.
#[tokio::test(start_paused = true)]
async fn paused_timeout_counts_from_the_call_not_the_first_poll() {
    let mut svc = slow_stack(Duration::from_secs(5), Duration::ZERO, Duration::ZERO);
    let start = Instant::now();
    let fut = svc
        .ready()
        .await
        .unwrap()
        .call(Envelope::new(Topic::new("a.b").unwrap(), "x"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = fut.await.unwrap_err();
    assert_timed_out(&err);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

/// a handler that moves the virtual clock 6 s before its first yield is past its
/// 5 s limit when it yields: timed out then (t=6 s), not at t=11 s.
#[tokio::test(start_paused = true)]
async fn paused_timeout_when_the_handler_advances_the_clock_before_yielding() {
    let took = time_to_time_out(
        Duration::from_secs(5),
        Duration::ZERO,
        Duration::from_secs(6),
    )
    .await;
    assert_eq!(took, Duration::from_secs(6));
}
