//! The bus on the transport: the same [`switchyard::Bus`] with `.transport(t)` must behave the
//! same on every transport, so its promises that depend on transport semantics (how a
//! delivery is numbered, what closing twice does) are held here, transport by transport.
//!
//! Like [`crate::suite`], every function opens its own transport with a fresh [`Setup`] and
//! waits only on events bounded by [`WAIT`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::{Bus, BusBuilder, DeadLetterReason, Envelope, Outcome, handler_fn};
use switchyard_core::BoxError;

use crate::suite::WAIT;
use crate::{Failure, Harness, RecordingDeadLetters, Setup, Verdict};

macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Failure::Check(format!($($arg)+)));
        }
    };
}

type TestResult = Result<Verdict, Failure>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bus on a fresh transport of `h`, its dead letters going to the returned sink (not the
/// transport's own, so letters the bus makes are told apart from max-deliver ones).
async fn bus_on<H: Harness>(
    h: &H,
    setup: &Setup,
    configure: impl FnOnce(BusBuilder) -> BusBuilder,
) -> Result<(Bus, Arc<RecordingDeadLetters>), Failure> {
    let transport = h.open(setup).await.map_err(Failure::Harness)?;
    let letters = Arc::new(RecordingDeadLetters::default());
    let builder = Bus::builder()
        .transport(transport)
        .dead_letters(letters.clone());
    let bus = configure(builder)
        .build()
        .map_err(|e| Failure::Harness(e.into()))?;
    Ok((bus, letters))
}

async fn idle(bus: &Bus, what: &str) -> Result<(), Failure> {
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .map_err(|_| Failure::Timeout {
            what: what.to_owned(),
            after: WAIT,
        })
}

async fn shut(bus: &Bus) -> Result<switchyard::ShutdownReport, Failure> {
    Ok(bus.shutdown(WAIT).await?)
}

/// A bus with `max_attempts(3)` calls an always-failing handler exactly three times, seeing
/// attempts 1, 2 and 3, then dead-letters the message saying 3 attempts: the transport's
/// delivery number and the bus's retries in place make one count, not one each.
pub async fn bus_attempts_count_from_one<H: Harness>(h: &H) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let (bus, letters) = bus_on(h, &setup, |b| {
        b.max_attempts(3).retry_delay(Duration::from_millis(1))
    })
    .await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = handler_fn(move |env: Envelope| {
        lock(&s).push(env.delivery.attempt);
        async { Err::<Outcome, BoxError>("always fails".into()) }
    });
    let _sub = bus
        .subscribe("worker", setup.all()?.as_str(), handler)
        .start()
        .await?;
    let sent = Envelope::new(setup.topic("bus.fails")?, "x");
    bus.publish_envelope(sent.clone()).await?;
    check!(
        letters.wait_for(1, WAIT).await,
        "no dead letter within {WAIT:?}; attempts seen {:?}",
        lock(&seen)
    );
    idle(&bus, "the dead-lettered message to settle").await?;
    let seen = lock(&seen).clone();
    check!(
        seen == [1, 2, 3],
        "max_attempts(3) saw attempts {seen:?}, expected [1, 2, 3]"
    );
    let list = letters.list();
    check!(list.len() == 1, "{} dead letters", list.len());
    let l = &list[0];
    check!(l.envelope.id == sent.id, "dead letter for another message");
    check!(
        l.reason == DeadLetterReason::HandlerFailed,
        "reason {:?}",
        l.reason
    );
    check!(l.attempts == 3, "dead letter says {} attempts", l.attempts);
    shut(&bus).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Out of 100 messages, one fails on its first two calls: under `max_attempts(3)` it is
/// handled on its third attempt, the others on their first, and nothing is dead-lettered.
pub async fn bus_message_failing_twice_is_delivered<H: Harness>(h: &H) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let (bus, letters) = bus_on(h, &setup, |b| {
        b.max_attempts(3).retry_delay(Duration::from_millis(1))
    })
    .await?;
    const FLAKY: usize = 42;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let failures_left = Arc::new(Mutex::new(2u32));
    let hd = handled.clone();
    let handler = handler_fn(move |env: Envelope| {
        let n: usize = std::str::from_utf8(&env.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        // Counted here, not from the attempt number under test.
        let fail = n == FLAKY && {
            let mut left = lock(&failures_left);
            let fail = *left > 0;
            *left = left.saturating_sub(1);
            fail
        };
        if !fail {
            lock(&hd).push((n, env.delivery.attempt));
        }
        async move {
            if fail {
                Err::<Outcome, BoxError>("transient failure".into())
            } else {
                Ok(Outcome::Ack)
            }
        }
    });
    let _sub = bus
        .subscribe("worker", setup.all()?.as_str(), handler)
        .start()
        .await?;
    let topic = setup.topic("bus.work")?;
    for n in 0..100 {
        bus.publish_envelope(Envelope::new(topic.clone(), n.to_string()))
            .await?;
    }
    idle(&bus, "100 messages to be handled").await?;
    let list = letters.list();
    check!(
        list.is_empty(),
        "{} dead-lettered, first: {:?}",
        list.len(),
        list.first().map(|l| (&l.error, l.attempts))
    );
    let mut handled = lock(&handled).clone();
    handled.sort_unstable();
    handled.dedup_by_key(|(n, _)| *n);
    check!(handled.len() == 100, "{} of 100 handled", handled.len());
    for (n, attempt) in handled {
        let want = if n == FLAKY { 3 } else { 1 };
        check!(
            attempt == want,
            "message {n} handled on attempt {attempt}, expected {want}"
        );
    }
    shut(&bus).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Shutting the bus down twice, at once and after, succeeds every time with the first
/// call's report (the transport is closed once).
pub async fn bus_shutdown_twice_returns_the_first_report<H: Harness>(h: &H) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let (bus, _letters) = bus_on(h, &setup, |b| b).await?;
    let handled = Arc::new(Mutex::new(0usize));
    let hd = handled.clone();
    let handler = handler_fn(move |_env: Envelope| {
        *lock(&hd) += 1;
        async { Ok::<_, BoxError>(Outcome::Ack) }
    });
    let _sub = bus
        .subscribe("worker", setup.all()?.as_str(), handler)
        .start()
        .await?;
    let topic = setup.topic("bus.close")?;
    for n in 0..5 {
        bus.publish_envelope(Envelope::new(topic.clone(), n.to_string()))
            .await?;
    }
    idle(&bus, "5 messages to be handled").await?;
    check!(*lock(&handled) == 5, "{} of 5 handled", lock(&handled));
    let (first, second) = tokio::join!(bus.shutdown(WAIT), bus.shutdown(WAIT));
    let first = first?;
    let second = second?;
    check!(
        first == second,
        "concurrent shutdowns disagree: {first:?} vs {second:?}"
    );
    let third = shut(&bus).await?;
    check!(
        third == first,
        "a later shutdown reports {third:?}, the first {first:?}"
    );
    check!(
        first.left.is_empty() && first.nacked.is_empty(),
        "nothing was left: {first:?}"
    );
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}
