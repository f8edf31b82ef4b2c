//! The bus on the transport: the same [`switchyard::Bus`] with `.transport(t)` must behave the
//! same on every transport, so its promises that depend on transport semantics (how a
//! delivery is numbered, what closing twice does) are held here, transport by transport.
//!
//! Like [`crate::suite`], every function opens its own bus with a fresh [`Setup`] and waits
//! only on events bounded by [`WAIT`]. The functions take a [`BusFactory`]: [`OnTransport`]
//! builds the bus on a harness's transport, [`InProcess`] builds `Bus::new()`'s own in-process
//! bus, so one list of semantics holds for both ([`bus_suite_tests!`](crate::bus_suite_tests)).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::{Bus, BusBuilder, DeadLetterReason, Envelope, Outcome, handler_fn};
use switchyard_core::{BoxError, PublishError, SendError};

use crate::suite::WAIT;
use crate::{Failure, RecordingDeadLetters, Setup, Verdict};

macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Failure::Check(format!($($arg)+)));
        }
    };
}

type TestResult = Result<Verdict, Failure>;

mod commands;
mod factory;
mod lifecycle;
pub use commands::{
    bus_command_failures_come_back_typed, bus_command_reaches_its_handler_and_returns_its_result,
    bus_command_without_handler_fails_fast, bus_handler_shut_down_never_hangs_the_sender,
    bus_request_deadline_reaches_the_remote_side, bus_request_past_its_deadline_times_out,
    bus_two_handler_buses_share_each_command_once,
};
pub use factory::{
    BusFactory, BusGuarantees, CloseTransport, Declared, InProcess, OnTransport, OpenedBus,
    ServeCommands,
};
pub use lifecycle::{
    bus_ack_after_transport_close_is_settled, bus_dropped_group_member_hands_its_messages_on,
    bus_nacked_at_shutdown_come_back, bus_shutdown_racing_publishers_loses_nothing,
    bus_shutdown_report_accounts_for_every_pending_message,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh bus of `f`, its dead letters going to the returned sink (not the transport's own,
/// so letters the bus makes are told apart from max-deliver ones).
async fn bus_on<F: BusFactory>(
    f: &F,
    setup: &Setup,
    configure: impl FnOnce(BusBuilder) -> BusBuilder,
) -> Result<(Bus, Arc<RecordingDeadLetters>), Failure> {
    let (bus, letters, _close) = bus_and_closer(f, setup, configure).await?;
    Ok((bus, letters))
}

/// [`bus_on`], with the closer of the transport under the bus (if any).
async fn bus_and_closer<F: BusFactory>(
    f: &F,
    setup: &Setup,
    configure: impl FnOnce(BusBuilder) -> BusBuilder,
) -> Result<(Bus, Arc<RecordingDeadLetters>, Option<CloseTransport>), Failure> {
    let opened = f.open(setup).await.map_err(Failure::Harness)?;
    let letters = Arc::new(RecordingDeadLetters::default());
    let bus = configure(opened.builder.dead_letters(letters.clone()))
        .build()
        .map_err(|e| Failure::Harness(e.into()))?;
    Ok((bus, letters, opened.close_transport))
}

/// The ack wait of tests whose handlers are stuck on purpose: long, so the transport does not
/// hand their messages out again while the test runs.
const STUCK_ACK_WAIT: Duration = Duration::from_secs(120);

/// `Some(reason)` when the bus does not hold exactly the deliveries published (the transport
/// loses or copies some): tests that compare what the bus holds with what was sent skip.
fn inexact_deliveries<F: BusFactory>(h: &F) -> Option<String> {
    let g = h.guarantees();
    (!g.no_duplicates || !g.exact_attempts).then(|| {
        "the transport loses or copies deliveries: what the bus holds at shutdown is not what \
         was published"
            .to_owned()
    })
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
pub async fn bus_attempts_count_from_one<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if !h.guarantees().exact_attempts {
        return Ok(Verdict::Skipped(
            "the transport loses deliveries, which count as attempts".into(),
        ));
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
pub async fn bus_message_failing_twice_is_delivered<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if !h.guarantees().exact_attempts {
        return Ok(Verdict::Skipped(
            "the transport loses deliveries, which count as attempts".into(),
        ));
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
pub async fn bus_shutdown_twice_returns_the_first_report<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if !h.guarantees().no_duplicates {
        return Ok(Verdict::Skipped(
            "the transport duplicates deliveries; this test counts handler calls".into(),
        ));
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

fn payload_of(env: &Envelope) -> String {
    String::from_utf8_lossy(&env.payload).into_owned()
}

/// Four publishers publish 100 messages each at the same time: every message is handled.
pub async fn bus_concurrent_publishers_lose_nothing<F: BusFactory>(h: &F) -> TestResult {
    concurrent_publishers(h, false).await
}

/// Four publishers publish 100 messages each at the same time: every message is handled
/// exactly once.
pub async fn bus_concurrent_publishers_duplicate_nothing<F: BusFactory>(h: &F) -> TestResult {
    if !h.guarantees().no_duplicates {
        return Ok(Verdict::Skipped(
            "the transport duplicates deliveries (at least once only)".into(),
        ));
    }
    concurrent_publishers(h, true).await
}

async fn concurrent_publishers<F: BusFactory>(h: &F, exactly_once: bool) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    const PUBLISHERS: usize = 4;
    const EACH: usize = 100;
    let setup = Setup::new();
    let (bus, letters) = bus_on(h, &setup, |b| b).await?;
    let counts = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let handled = Arc::new(tokio::sync::Notify::new());
    let (c, n) = (counts.clone(), handled.clone());
    let handler = handler_fn(move |env: Envelope| {
        *lock(&c).entry(payload_of(&env)).or_default() += 1;
        n.notify_waiters();
        async { Ok::<_, BoxError>(Outcome::Ack) }
    });
    let _sub = bus
        .subscribe("worker", setup.all()?.as_str(), handler)
        .workers(4)
        .start()
        .await?;
    let topic = setup.topic("bus.many")?;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let (bus, topic) = (bus.clone(), topic.clone());
        tasks.spawn(async move {
            for n in 0..EACH {
                bus.publish_envelope(Envelope::new(topic.clone(), format!("{p}-{n}")))
                    .await?;
            }
            Ok::<_, PublishError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Failure::Task(e.to_string()))??;
    }
    let want: BTreeSet<String> = (0..PUBLISHERS)
        .flat_map(|p| (0..EACH).map(move |n| format!("{p}-{n}")))
        .collect();
    // A delivery the transport lost never reached the bus, so the bus can be idle while the
    // transport still owes it: wait for the handler to have seen every message (or WAIT).
    let all_seen = async {
        loop {
            let notified = handled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&counts).len() >= want.len() {
                return;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(WAIT, all_seen).await;
    idle(&bus, "every published message to be handled").await?;
    let counts = lock(&counts).clone();
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    let lost: Vec<&String> = want.difference(&got).take(5).collect();
    check!(
        lost.is_empty(),
        "{} lost, e.g. {lost:?}",
        want.len() - got.len()
    );
    if exactly_once {
        let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
        check!(twice.is_empty(), "handled more than once: {twice:?}");
    }
    check!(
        letters.list().is_empty(),
        "dead letters: {:?}",
        letters.list()
    );
    shut(&bus).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// With four workers and `ordering_header("key")`, the messages of one key are handled in
/// the order they were published, whatever the other keys do.
pub async fn bus_keeps_order_per_key<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if !h.guarantees().ordered {
        return Ok(Verdict::Skipped(
            "the transport hands lost deliveries out again later, out of order".into(),
        ));
    }
    const KEYS: usize = 3;
    const EACH: usize = 40;
    let setup = Setup::new();
    let (bus, _letters) = bus_on(h, &setup, |b| b).await?;
    let seen = Arc::new(Mutex::new(BTreeMap::<String, Vec<usize>>::new()));
    let s = seen.clone();
    let handler = handler_fn(move |env: Envelope| {
        let key = env.header("key").unwrap_or("none").to_owned();
        let n = payload_of(&env).parse().unwrap_or(usize::MAX);
        let s = s.clone();
        async move {
            // Yield so that messages of other keys get a chance to overtake.
            tokio::task::yield_now().await;
            lock(&s).entry(key).or_default().push(n);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    });
    let _sub = bus
        .subscribe("worker", setup.all()?.as_str(), handler)
        .workers(4)
        .ordering_header("key")
        .start()
        .await?;
    let topic = setup.topic("bus.keyed")?;
    for n in 0..EACH {
        for k in 0..KEYS {
            let env =
                Envelope::new(topic.clone(), n.to_string()).with_header("key", format!("k{k}"));
            bus.publish_envelope(env).await?;
        }
    }
    idle(&bus, "every keyed message to be handled").await?;
    let seen = lock(&seen).clone();
    check!(seen.len() == KEYS, "keys seen: {:?}", seen.keys());
    for (key, order) in &seen {
        check!(
            *order == (0..EACH).collect::<Vec<_>>(),
            "key {key} handled in the order {order:?}"
        );
    }
    shut(&bus).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A handler that asks for a retry (`Outcome::retry()`) gets the message again, as attempt 2,
/// and nothing is dead-lettered.
pub async fn bus_retry_outcome_redelivers<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if !h.guarantees().exact_attempts {
        return Ok(Verdict::Skipped(
            "the transport loses deliveries, which count as attempts".into(),
        ));
    }
    let setup = Setup::new();
    let (bus, letters) = bus_on(h, &setup, |b| {
        b.max_attempts(3).retry_delay(Duration::from_millis(1))
    })
    .await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = handler_fn(move |env: Envelope| {
        let first = {
            let mut seen = lock(&s);
            seen.push(env.delivery.attempt);
            seen.len() == 1
        };
        async move {
            Ok::<_, BoxError>(if first {
                Outcome::retry()
            } else {
                Outcome::Ack
            })
        }
    });
    let _sub = bus
        .subscribe("worker", setup.all()?.as_str(), handler)
        .start()
        .await?;
    bus.publish_envelope(Envelope::new(setup.topic("bus.again")?, "x"))
        .await?;
    idle(&bus, "the retried message to be handled").await?;
    let seen = lock(&seen).clone();
    check!(seen == [1, 2], "attempts seen {seen:?}, expected [1, 2]");
    check!(
        letters.list().is_empty(),
        "dead letters: {:?}",
        letters.list()
    );
    shut(&bus).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Once the bus is shut down, publishing and sending are refused with `ShuttingDown`.
pub async fn bus_refuses_work_after_shutdown<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let (bus, _letters) = bus_on(h, &setup, |b| b).await?;
    shut(&bus).await?;
    let published = bus
        .publish_envelope(Envelope::new(setup.topic("bus.late")?, "x"))
        .await;
    check!(
        matches!(published, Err(PublishError::ShuttingDown)),
        "publish after shutdown: {published:?}"
    );
    let sent = bus
        .send_envelope(Envelope::new(setup.topic("bus.late.cmd")?, "x"))
        .await;
    check!(
        matches!(sent, Err(SendError::ShuttingDown)),
        "send after shutdown: {:?}",
        sent.map(|_| ())
    );
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Three messages stuck in their handlers when the shutdown deadline passes are exactly the
/// ones the report names (as left, dead-lettered with reason `Shutdown`, or as nacked back
/// to the transport).
pub async fn bus_shutdown_report_names_what_was_in_flight<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if let Some(reason) = inexact_deliveries(h) {
        return Ok(Verdict::Skipped(reason));
    }
    // No redelivery of the stuck messages while the test runs.
    let setup = Setup::new().with_ack_wait(STUCK_ACK_WAIT);
    let (bus, letters) = bus_on(h, &setup, |b| b).await?;
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let handler = handler_fn(move |env: Envelope| {
        let _ = entered_tx.send(env.id);
        async { std::future::pending::<Result<Outcome, BoxError>>().await }
    });
    let _sub = bus
        .subscribe("stuck", setup.all()?.as_str(), handler)
        .workers(3)
        .start()
        .await?;
    let topic = setup.topic("bus.stuck")?;
    let mut sent = BTreeSet::new();
    for n in 0..3 {
        let env = Envelope::new(topic.clone(), n.to_string());
        sent.insert(env.id.clone());
        bus.publish_envelope(env).await?;
    }
    let mut in_flight = BTreeSet::new();
    while in_flight.len() < 3 {
        match tokio::time::timeout(WAIT, entered.recv()).await {
            Ok(Some(id)) => {
                in_flight.insert(id);
            }
            _ => {
                return Err(Failure::Timeout {
                    what: "three handlers to start".into(),
                    after: WAIT,
                });
            }
        }
    }
    check!(in_flight == sent, "in flight {in_flight:?}, sent {sent:?}");
    let report = bus.shutdown(Duration::from_millis(200)).await?;
    let named: BTreeSet<_> = report.left.iter().chain(&report.nacked).cloned().collect();
    check!(
        named == in_flight,
        "the report names {named:?}, in flight were {in_flight:?}"
    );
    let shutdown_letters: BTreeSet<_> = letters
        .list()
        .iter()
        .filter(|l| l.reason == DeadLetterReason::Shutdown)
        .map(|l| l.envelope.id.clone())
        .collect();
    let left: BTreeSet<_> = report.left.iter().cloned().collect();
    check!(
        shutdown_letters == left,
        "dead-lettered for shutdown {shutdown_letters:?}, left {left:?}"
    );
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A command nobody handles fails at once with `NoHandler`; a request whose handler does not
/// answer in time fails with `Timeout`.
pub async fn bus_requests_fail_without_handler_and_on_timeout<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let (bus, _letters) = bus_on(h, &setup, |b| b).await?;
    let none = tokio::time::timeout(
        WAIT,
        bus.send_envelope(Envelope::new(setup.topic("bus.nobody")?, "x")),
    )
    .await
    .map_err(|_| Failure::Timeout {
        what: "a send without handler to fail".into(),
        after: WAIT,
    })?;
    check!(
        matches!(none, Err(SendError::NoHandler { .. })),
        "send without handler: {:?}",
        none.map(|_| ())
    );
    let slow = setup.topic("bus.slow")?;
    let handler = handler_fn(|_env: Envelope| async {
        std::future::pending::<Result<Outcome, BoxError>>().await
    });
    let _h = bus
        .handle_envelope("slow", slow.as_str(), handler)
        .start()
        .await?;
    let deadline = Duration::from_millis(100);
    let late = bus
        .request_envelope(Envelope::new(slow, "x"), deadline)
        .await;
    check!(
        matches!(late, Err(SendError::Timeout { .. })),
        "request past its deadline: {:?}",
        late.map(|_| ())
    );
    bus.shutdown(Duration::from_millis(100)).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Two subscriptions of one name share its messages: each of 60 messages is handled once, by
/// one of them, and the bus then goes idle (it expects one delivery per message for the group,
/// not one per member). A third subscription of that name on another pattern is refused while the
/// group has members (a group reads one pattern).
pub async fn bus_consumer_group_shares_and_keeps_one_pattern<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let g = h.guarantees();
    if !g.consumer_groups {
        return Ok(Verdict::Skipped(
            "subscriptions of one name do not form a consumer group on this bus".into(),
        ));
    }
    if !g.no_duplicates {
        return Ok(Verdict::Skipped(
            "the transport duplicates deliveries; this test counts handler calls".into(),
        ));
    }
    const COUNT: usize = 60;
    let setup = Setup::new();
    let (bus, _letters) = bus_on(h, &setup, |b| b).await?;
    let seen = Arc::new(Mutex::new(BTreeMap::<String, Vec<usize>>::new()));
    let handled = Arc::new(tokio::sync::Notify::new());
    let member = |which: usize| {
        let (seen, handled) = (seen.clone(), handled.clone());
        handler_fn(move |env: Envelope| {
            lock(&seen).entry(payload_of(&env)).or_default().push(which);
            handled.notify_waiters();
            async { Ok::<_, BoxError>(Outcome::Ack) }
        })
    };
    let pattern = setup.pattern("group.#")?;
    let _a = bus
        .subscribe("group", pattern.as_str(), member(0))
        .start()
        .await?;
    let _b = bus
        .subscribe("group", pattern.as_str(), member(1))
        .start()
        .await?;
    let other = bus
        .subscribe("group", setup.pattern("elsewhere.#")?.as_str(), member(2))
        .start()
        .await;
    check!(
        matches!(other, Err(switchyard::SubscribeError::InvalidConfig(_))),
        "a second pattern for the group was accepted: {:?}",
        other.map(|_| ())
    );
    let topic = setup.topic("group.work")?;
    for n in 0..COUNT {
        bus.publish_envelope(Envelope::new(topic.clone(), n.to_string()))
            .await?;
    }
    let all_seen = async {
        loop {
            let notified = handled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&seen).len() >= COUNT {
                return;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(WAIT, all_seen).await;
    // One delivery per message for the group, not one per member: the bus is owed COUNT
    // deliveries, and goes idle once they are settled.
    idle(&bus, "the group's messages to be settled").await?;
    let seen = lock(&seen).clone();
    check!(seen.len() == COUNT, "{} of {COUNT} handled", seen.len());
    let twice: Vec<_> = seen.iter().filter(|(_, by)| by.len() > 1).collect();
    check!(
        twice.is_empty(),
        "handled by more than one member: {twice:?}"
    );
    shut(&bus).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}
