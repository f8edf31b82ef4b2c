//! Review rev34: the bus's default resilience stack (`with_default_resilience` /
//! `with_resilience`) through the bus's public API: retries (count, numbering, backoff on the
//! virtual clock, `Retry { after }`, permanent errors, the dead letter after the last try),
//! timeouts, the breaker (opening, what publishers and senders see, half-open trials, success
//! counts), dedup, panic isolation and the per-outcome metrics. The stack's first attempt runs
//! on a fast path (`Resilient::start_lent`) that hands over to the general future when the
//! first poll is pending, fails, asks for a retry, panics, is refused or is a duplicate; the
//! handlers here end their first attempt each of those ways.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchyard::{
    BoxError, Bus, Command, DeadLetter, DeadLetterReason, Envelope, Jitter, Kind, Message, Outcome,
    Permanent, SendError, Topic, boxed,
};
use switchyard_middleware::breaker::BreakerConfig;
use switchyard_middleware::resilience::ResilienceConfig;
use switchyard_middleware::retry::RetryPolicy;
use tokio::time::Instant;

mod breaker;
mod dedup;
mod lifecycle;
mod limits;
mod metrics;
mod panics;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    n: u64,
}
impl Message for Row {
    const TOPIC: &'static str = "rows.added";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    cents: u64,
}
impl Message for Charge {
    const TOPIC: &'static str = "billing.charge";
    const KIND: Kind = Kind::Command;
}
impl Command for Charge {
    type Output = u64;
}

/// An event on `topic` whose payload is `body`.
fn ev(topic: &str, body: &str) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), body.to_owned())
}

/// A retry policy without jitter: waits `initial`, `2 * initial`, ... between attempts.
fn exact(attempts: u32, initial: Duration) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(attempts)
        .initial_delay(initial)
        .multiplier(2)
        .jitter(Jitter::None)
}

/// Makes a bus builder.
type MakeBus = fn() -> switchyard::BusBuilder;

/// What one call of a handler saw: its attempt number and the virtual time it started.
type Calls = Arc<Mutex<Vec<(u32, Instant)>>>;

/// Milliseconds from the first call to each call.
fn offsets_ms(calls: &Calls) -> Vec<u128> {
    let calls = calls.lock();
    let Some(&(_, t0)) = calls.first() else {
        return Vec::new();
    };
    calls.iter().map(|(_, t)| (*t - t0).as_millis()).collect()
}

/// Each offset within 1 ms of the wanted one (tokio rounds a deadline up to the next ms).
fn near(got: &[u128], want: &[u128]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.abs_diff(*w) <= 1)
}

/// The bus's dead letters (the default in-memory store).
fn letters(bus: &Bus) -> Vec<DeadLetter> {
    bus.dead_letters().expect("the default store").list()
}

/// A handler whose every call is recorded in `calls` and answered by `answer` (given the
/// attempt number), after waiting `work` of virtual time when it is not zero (so the first
/// poll is pending).
fn scripted<F>(calls: Calls, work: Duration, answer: F) -> switchyard::BoxHandler
where
    F: Fn(u32) -> Result<Outcome, BoxError> + Clone + Send + Sync + 'static,
{
    boxed(tower::service_fn(move |e: Envelope| {
        let attempt = e.delivery.attempt;
        calls.lock().push((attempt, Instant::now()));
        let answer = answer.clone();
        async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            answer(attempt)
        }
    }))
}

/// The default stack (3 attempts, full jitter) on a handler failing on its first poll every
/// time: 3 calls numbered 1, 2, 3; the dead letter says 3 attempts and carries the last
/// attempt's error under the stack's give-up; the subscription counts 2 retries, 1 dead letter
/// and no ack.
#[tokio::test(start_paused = true)]
async fn a_failing_handler_gets_three_numbered_attempts_and_the_letter_names_the_last_error() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let calls = Calls::default();
    let sub = bus
        .subscribe(
            "rows",
            "rows.#",
            scripted(calls.clone(), Duration::ZERO, |attempt| {
                Err(format!("backend down on attempt {attempt}").into())
            }),
        )
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
    bus.run_until_idle().await;
    let attempts: Vec<u32> = calls.lock().iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "three attempts, numbered");
    let letters = letters(&bus);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.reason, DeadLetterReason::HandlerFailed);
    assert_eq!(letter.handler.as_deref(), Some("rows"));
    assert!(
        letter.error.contains("gave up after 3 attempt(s)")
            && letter.error.contains("backend down on attempt 3"),
        "the give-up and the last error: {}",
        letter.error
    );
    // The full-jitter waits (at most 100 ms, then 200 ms) were waited on the virtual clock.
    let waited = offsets_ms(&calls);
    assert!(
        waited[2] <= 300 + 2,
        "jittered backoff within its caps: {waited:?}"
    );
    let s = sub.stats();
    assert_eq!(
        (s.acked, s.retried, s.dead_lettered),
        (0, 2, 1),
        "subscription counts: {s:?}"
    );
}

/// A handler pending on its first poll (50 ms of work) and then failing: the backoff counts
/// from the failure, not from the start of the attempt: attempts at 0, 50 + 100 and
/// 200 + 200 ms; then the letter, attempts 3.
#[tokio::test(start_paused = true)]
async fn the_backoff_of_a_handler_pending_on_its_first_poll_counts_from_its_failure() {
    let bus = Bus::builder()
        .with_resilience(|| ResilienceConfig::default().retry(exact(3, Duration::from_millis(100))))
        .build()
        .unwrap();
    let calls = Calls::default();
    let _sub = bus
        .subscribe(
            "rows",
            "rows.#",
            scripted(calls.clone(), Duration::from_millis(50), |_| {
                Err("backend down".into())
            }),
        )
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
    bus.run_until_idle().await;
    let got = offsets_ms(&calls);
    assert!(near(&got, &[0, 150, 400]), "attempt starts {got:?}");
    let letters = letters(&bus);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0].error.contains("backend down"),
        "{}",
        letters[0].error
    );
}

/// A typed handler that fails on its first poll and succeeds on the retry: handled once,
/// acked, one retry counted, nothing dead-lettered; on both runtimes. (The breaker is set
/// out of reach: with the default 5 failures the fifth message's retry would wait out the
/// 30 s cool-down, see `breaker::a_retry_waits_for_the_breaker_its_failure_opened`.)
async fn fails_once_then_succeeds() {
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_millis(5)))
                .breaker(BreakerConfig::default().failures(1_000))
        })
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (c, h) = (calls.clone(), handled.clone());
    let sub = bus
        .on("rows", move |row: Row, ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            let h = h.clone();
            async move {
                if ctx.attempt() == 1 {
                    return Err("briefly unavailable");
                }
                h.lock().push((row.n, ctx.attempt()));
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    for n in 0..5 {
        bus.publish(Row { n }).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), bus.run_until_idle())
        .await
        .expect("settled");
    let mut got = handled.lock().clone();
    got.sort_unstable();
    assert_eq!(got, (0..5).map(|n| (n, 2)).collect::<Vec<_>>());
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    let s = sub.stats();
    assert_eq!((s.acked, s.retried, s.dead_lettered), (5, 5, 0), "{s:?}");
    assert!(letters(&bus).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_typed_handler_failing_its_first_poll_then_succeeding_is_acked_once() {
    fails_once_then_succeeds().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_handler_failing_its_first_poll_then_succeeding_is_acked_once_multi_thread() {
    fails_once_then_succeeds().await;
}

/// `Outcome::Retry { after }` is waited as asked, capped at the policy's `max_delay`: a
/// handler asking on its first poll for 2 s and then for 60 s (cap 5 s) is called at 0,
/// 2 000 and 7 000 ms, and its ack settles the message.
#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_as_asked_and_capped_at_the_max_delay() {
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_millis(100)).max_delay(Duration::from_secs(5)))
        })
        .build()
        .unwrap();
    let calls = Calls::default();
    let sub = bus
        .subscribe(
            "rows",
            "rows.#",
            scripted(calls.clone(), Duration::ZERO, |attempt| {
                Ok(match attempt {
                    1 => Outcome::Retry {
                        after: Some(Duration::from_secs(2)),
                    },
                    2 => Outcome::Retry {
                        after: Some(Duration::from_secs(60)),
                    },
                    _ => Outcome::Ack,
                })
            }),
        )
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
    bus.run_until_idle().await;
    let got = offsets_ms(&calls);
    assert!(near(&got, &[0, 2_000, 7_000]), "attempt starts {got:?}");
    let s = sub.stats();
    assert_eq!((s.acked, s.retried, s.dead_lettered), (1, 2, 0), "{s:?}");
}

/// A handler that asks for a retry every time is dead-lettered after the policy's attempts,
/// like one that fails.
#[tokio::test(start_paused = true)]
async fn a_handler_asking_for_retries_forever_is_dead_lettered_after_the_last_attempt() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let calls = Calls::default();
    let _sub = bus
        .subscribe(
            "rows",
            "rows.#",
            scripted(calls.clone(), Duration::ZERO, |_| {
                Ok(Outcome::Retry { after: None })
            }),
        )
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(calls.lock().len(), 3);
    let letters = letters(&bus);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].attempts, 3);
}

/// A permanent error and a reject end the message at its first attempt, whether the handler
/// answers on its first poll or after waiting: no retry, the letter says attempt 1.
#[tokio::test(start_paused = true)]
async fn permanent_errors_and_rejects_are_not_retried() {
    for work in [Duration::ZERO, Duration::from_millis(20)] {
        let bus = Bus::builder().with_default_resilience().build().unwrap();
        let calls = Calls::default();
        let sub = bus
            .subscribe(
                "rows",
                "rows.#",
                scripted(calls.clone(), work, |_| {
                    Err(Permanent::new("bad data").into())
                }),
            )
            .start()
            .await
            .unwrap();
        let rejected = Calls::default();
        let rsub = bus
            .subscribe(
                "rejecting",
                "rows.#",
                scripted(rejected.clone(), work, |_| {
                    Ok(Outcome::Reject {
                        reason: "not for us".into(),
                    })
                }),
            )
            .start()
            .await
            .unwrap();
        bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
        bus.run_until_idle().await;
        assert_eq!(calls.lock().len(), 1, "work {work:?}: one call");
        assert_eq!(rejected.lock().len(), 1, "work {work:?}: one call");
        let mut letters = letters(&bus);
        letters.sort_by_key(|l| l.handler.clone());
        assert_eq!(letters.len(), 2, "work {work:?}: {letters:?}");
        assert_eq!(letters[0].handler.as_deref(), Some("rejecting"));
        assert_eq!(letters[0].reason, DeadLetterReason::Rejected);
        assert_eq!(letters[0].attempts, 1);
        assert_eq!(letters[1].handler.as_deref(), Some("rows"));
        assert_eq!(letters[1].reason, DeadLetterReason::HandlerFailed);
        assert_eq!(letters[1].attempts, 1, "work {work:?}");
        assert!(
            letters[1].error.contains("bad data"),
            "{}",
            letters[1].error
        );
        let (s, r) = (sub.stats(), rsub.stats());
        assert_eq!((s.retried, s.dead_lettered), (0, 1), "work {work:?}: {s:?}");
        assert_eq!((r.retried, r.rejected), (0, 1), "work {work:?}: {r:?}");
    }
}

/// Counts the live futures of a handler: held by a call until it is dropped.
struct Live(Arc<Mutex<Vec<Instant>>>);
impl Drop for Live {
    fn drop(&mut self) {
        self.0.lock().push(Instant::now());
    }
}

/// A first attempt pending past the stack's timeout (1 s) is dropped at the timeout and
/// retried after the backoff (100 ms); the retry's ack settles the message.
#[tokio::test(start_paused = true)]
async fn a_first_attempt_pending_past_the_timeout_is_dropped_and_retried() {
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_millis(100)))
                .timeout(Duration::from_secs(1))
        })
        .build()
        .unwrap();
    let calls = Calls::default();
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let (c, d) = (calls.clone(), dropped.clone());
    let sub = bus
        .subscribe(
            "rows",
            "rows.#",
            boxed(tower::service_fn(move |e: Envelope| {
                let attempt = e.delivery.attempt;
                c.lock().push((attempt, Instant::now()));
                let live = Live(d.clone());
                async move {
                    let _live = live;
                    if attempt == 1 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            })),
        )
        .start()
        .await
        .unwrap();
    let t0 = Instant::now();
    bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
    bus.run_until_idle().await;
    let got = offsets_ms(&calls);
    assert!(near(&got, &[0, 1_100]), "attempt starts {got:?}");
    let dropped: Vec<u128> = dropped
        .lock()
        .iter()
        .map(|t| (*t - t0).as_millis())
        .collect();
    assert_eq!(
        dropped.len(),
        2,
        "both attempts' futures dropped: {dropped:?}"
    );
    assert!(
        dropped[0].abs_diff(1_000) <= 1,
        "the hung attempt dropped at its timeout: {dropped:?}"
    );
    let s = sub.stats();
    assert_eq!((s.acked, s.retried, s.dead_lettered), (1, 1, 0), "{s:?}");
}

/// A command whose every attempt times out: its sender gets `Failed` with the attempts made
/// and the timeout in the error, once the last attempt timed out; the letter agrees.
#[tokio::test(start_paused = true)]
async fn a_command_timing_out_on_every_attempt_fails_its_sender_with_the_timeout() {
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default()
                .retry(exact(2, Duration::from_millis(100)))
                .timeout(Duration::from_secs(1))
        })
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _h = bus
        .handle(move |_: Charge, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<u64, BoxError>(1)
            }
        })
        .start()
        .await
        .unwrap();
    let t0 = Instant::now();
    let err = bus.send(Charge { cents: 5 }).await.unwrap_err();
    let took = t0.elapsed().as_millis();
    assert!(
        took.abs_diff(2_100) <= 2,
        "answered after two timeouts and a backoff: {took} ms"
    );
    match &err {
        SendError::Failed { error, attempts } => {
            assert_eq!(*attempts, 2, "{err}");
            assert!(error.contains("did not finish within 1s"), "{error}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let letters = letters(&bus);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
}

/// On a multi-thread runtime (real time): a first attempt hanging past a 100 ms timeout is
/// retried and the message acked; the sender of a command whose first attempt hangs gets the
/// retry's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_first_attempt_is_retried_on_a_multi_thread_runtime() {
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_millis(5)))
                .timeout(Duration::from_millis(100))
        })
        .build()
        .unwrap();
    let calls = Calls::default();
    let sub = bus
        .subscribe(
            "rows",
            "rows.#",
            scripted(calls.clone(), Duration::ZERO, |_| Ok(Outcome::Ack)),
        )
        .start()
        .await
        .unwrap();
    let _h = bus
        .handle(|c: Charge, ctx| async move {
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<u64, BoxError>(c.cents * 2)
        })
        .start()
        .await
        .unwrap();
    let hanging = boxed(tower::service_fn(move |e: Envelope| async move {
        if e.delivery.attempt == 1 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok::<_, BoxError>(Outcome::Ack)
    }));
    let hsub = bus
        .subscribe("hanging", "rows.#", hanging)
        .start()
        .await
        .unwrap();
    bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), bus.send(Charge { cents: 21 }))
        .await
        .expect("answered");
    assert_eq!(answer.unwrap(), 42);
    tokio::time::timeout(Duration::from_secs(10), bus.run_until_idle())
        .await
        .expect("settled");
    assert_eq!(calls.lock().len(), 1);
    assert_eq!(sub.stats().acked, 1);
    let h = hsub.stats();
    assert_eq!((h.acked, h.retried, h.dead_lettered), (1, 1, 0), "{h:?}");
    assert!(letters(&bus).is_empty());
}

/// A command whose first attempt fails (on its first poll, or after waiting) and whose retry
/// replies: the sender gets the reply, and the result (`CommandResult::attempts`, "attempts
/// it took") says 2, as it does when the bus makes the retries itself; nothing is
/// dead-lettered.
///
/// Fails (3 runs of 3): `assertion `left == right` failed: default stack, cents 2:
/// CommandResult { .., attempts: 1 } left: 1 right: 2`; the no-stack case passes. The dead
/// letter and `SendError::Failed` read the stack's count from its `RetryError`; a success
/// carries none, so the result reports the worker's single call.
#[tokio::test(start_paused = true)]
#[ignore = "defect: under the resilience stack CommandResult::attempts of a command that succeeded on a retry is 1"]
async fn a_command_retried_by_the_stack_answers_with_the_attempts_it_took() {
    let builders: [(&str, MakeBus); 2] = [
        ("no stack", || {
            Bus::builder()
                .max_attempts(3)
                .retry_delay(Duration::from_millis(10))
        }),
        ("default stack", || {
            Bus::builder().with_resilience(|| {
                ResilienceConfig::default().retry(exact(3, Duration::from_millis(10)))
            })
        }),
    ];
    for (name, builder) in builders {
        let bus = builder().build().unwrap();
        let _charges = bus
            .handle(|c: Charge, ctx| async move {
                if ctx.attempt() == 1 {
                    if c.cents % 2 == 1 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    return Err::<u64, BoxError>("card processor busy".into());
                }
                Ok(c.cents * 2)
            })
            .start()
            .await
            .unwrap();
        for cents in [2, 3] {
            let result = bus
                .send_envelope(Charge { cents }.to_envelope().unwrap())
                .await
                .unwrap();
            let reply = result.reply.as_ref().expect("a reply");
            assert_eq!(
                serde_json::from_slice::<u64>(&reply.payload).unwrap(),
                cents * 2
            );
            assert_eq!(result.attempts, 2, "{name}, cents {cents}: {result:?}");
            assert_eq!(bus.send(Charge { cents }).await.unwrap(), cents * 2);
        }
        assert!(letters(&bus).is_empty(), "{name}");
    }
}

/// The dead letter's `first_attempt_at` is the first attempt's time, the one every attempt
/// saw as `delivery.first_delivered_at`, whether the first attempt failed on its first poll
/// or after waiting.
#[tokio::test(start_paused = true)]
async fn the_letters_first_attempt_time_is_the_first_attempts() {
    for work in [Duration::ZERO, Duration::from_millis(20)] {
        let bus = Bus::builder().with_default_resilience().build().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let handler = boxed(tower::service_fn(move |e: Envelope| {
            s.lock().push(e.delivery.first_delivered_at);
            async move {
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                Err::<Outcome, BoxError>("backend down".into())
            }
        }));
        let _sub = bus
            .subscribe("rows", "rows.#", handler)
            .start()
            .await
            .unwrap();
        bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
        bus.run_until_idle().await;
        let seen = seen.lock().clone();
        assert_eq!(seen.len(), 3, "work {work:?}");
        assert!(
            seen[0].is_some() && seen.iter().all(|t| *t == seen[0]),
            "work {work:?}: one first delivery time: {seen:?}"
        );
        let letters = letters(&bus);
        assert_eq!(
            letters[0].first_attempt_at, seen[0],
            "work {work:?}: {letters:?}"
        );
    }
}

/// One delivery is one span (docs/middleware.md, "The order": trace outermost, one span per
/// delivery covering every attempt): the handler's `TraceContext::current()` is the same on
/// every attempt, before and after its first poll, on the stack's fast path and on a retry,
/// and its trace is the message's (`root_for`, by correlation id); another delivery gets a
/// span of its own.
#[tokio::test(start_paused = true)]
async fn every_attempt_of_a_delivery_runs_in_one_trace_context() {
    use switchyard_middleware::trace::TraceContext;
    let bus = Bus::builder()
        .with_resilience(|| ResilienceConfig::default().retry(exact(3, Duration::from_millis(10))))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = boxed(tower::service_fn(move |e: Envelope| {
        let s = s.clone();
        let at_call = TraceContext::current();
        async move {
            let first_poll = TraceContext::current();
            tokio::task::yield_now().await;
            let later_poll = TraceContext::current();
            s.lock()
                .push((e.id.clone(), [at_call, first_poll, later_poll]));
            if e.delivery.attempt < 3 {
                return Err::<Outcome, BoxError>("backend down".into());
            }
            Ok(Outcome::Ack)
        }
    }));
    let _sub = bus
        .subscribe("rows", "rows.#", handler)
        .start()
        .await
        .unwrap();
    let (one, two) = (ev("rows.added", "1"), ev("rows.added", "2"));
    let want_trace = TraceContext::root_for(&one).trace_id();
    bus.publish_envelope(one.clone()).await.unwrap();
    bus.publish_envelope(two.clone()).await.unwrap();
    bus.run_until_idle().await;
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 6);
    let contexts = |id: &switchyard::MessageId| -> Vec<TraceContext> {
        seen.iter()
            .filter(|(i, _)| i == id)
            .flat_map(|(_, c)| c.iter().map(|c| c.expect("a current context")))
            .collect()
    };
    let (of_one, of_two) = (contexts(&one.id), contexts(&two.id));
    assert_eq!(of_one.len(), 9);
    assert!(
        of_one.iter().all(|c| c.span_id() == of_one[0].span_id()),
        "one span for every attempt of the delivery"
    );
    assert_eq!(of_one[0].trace_id(), want_trace, "the message's trace");
    assert!(of_two.iter().all(|c| c.span_id() == of_two[0].span_id()));
    assert_ne!(
        of_one[0].span_id(),
        of_two[0].span_id(),
        "a span per delivery"
    );
}
