//! Commands and requests: one handler, one result back to the sender, on every bus.
//!
//! Where the factory reaches other processes ([`BusFactory::second_bus`]: NATS, a connection of
//! its own per bus), the handlers run on the factory's bus and the sender is the second bus,
//! which has no handler of its own, so every command crosses the transport; elsewhere (in process, memory, the log) both are one bus and
//! the tests hold the in-process path. Tests that only mean something across processes (two
//! handler buses sharing a topic, the deadline reaching the remote side) skip loudly there.
//!
//! Topics are under the test's namespace, so tests sharing one broker never serve each
//! other's commands.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::{Bus, BusBuilder, Envelope, Outcome, handler_fn};
use switchyard_core::{BoxError, CommandResult, SendError};

use super::{BusFactory, OpenedBus, TestResult, bus_on, lock, shut};
use crate::suite::WAIT;
use crate::{Failure, RecordingDeadLetters, Setup, Verdict};

macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Failure::Check(format!($($arg)+)));
        }
    };
}

/// How fast "at once" is: `NoHandler` without any handler, or after the handler bus shut down.
const FAST: Duration = Duration::from_secs(2);

/// The deadline of requests whose handler never answers.
const SHORT_DEADLINE: Duration = Duration::from_millis(200);

/// The handler side and the sending side of a test.
struct Sides {
    /// Where the handlers are registered: the factory's bus.
    handler: Bus,
    /// Where commands are sent from: the second bus when there is one, else `handler`.
    sender: Bus,
    /// True when `handler` and `sender` are two buses on two connections.
    remote: bool,
}

fn reason_one_process<F: BusFactory>(h: &F) -> String {
    format!(
        "one process only: the {} bus has no second connection to another process \
         (commands stay in the process that sends them)",
        h.name()
    )
}

/// A bus from an opened one, its dead letters recorded.
fn build(
    opened: OpenedBus,
    configure: impl FnOnce(BusBuilder) -> BusBuilder,
) -> Result<Bus, Failure> {
    let letters = Arc::new(RecordingDeadLetters::default());
    configure(opened.builder.dead_letters(letters))
        .build()
        .map_err(|e| Failure::Harness(e.into()))
}

/// The second bus of `setup`, configured; `None` when the factory has none.
async fn second<F: BusFactory>(
    h: &F,
    setup: &Setup,
    configure: impl FnOnce(BusBuilder) -> BusBuilder,
) -> Result<Option<(Bus, OpenedBusExtras)>, Failure> {
    let Some(opening) = h.second_bus(setup) else {
        return Ok(None);
    };
    let mut opened = opening.await.map_err(Failure::Harness)?;
    let extras = OpenedBusExtras {
        serve_commands: opened.serve_commands.take(),
    };
    Ok(Some((build(opened, configure)?, extras)))
}

/// What the suite keeps of a second bus's [`OpenedBus`] besides the bus.
struct OpenedBusExtras {
    serve_commands: Option<super::ServeCommands>,
}

/// The handler bus (configured with `configure`) and the sender.
async fn sides<F: BusFactory>(
    h: &F,
    setup: &Setup,
    configure: impl FnOnce(BusBuilder) -> BusBuilder,
) -> Result<Sides, Failure> {
    match second(h, setup, |b| b).await? {
        Some((sender, _)) => {
            // The sender is the second connection, the handler bus the factory's own one
            // (configured as the test asks): no handler is local to the sender.
            let (handler, _letters) = bus_on(h, setup, configure).await?;
            Ok(Sides {
                handler,
                sender,
                remote: true,
            })
        }
        None => {
            let (bus, _letters) = bus_on(h, setup, configure).await?;
            Ok(Sides {
                handler: bus.clone(),
                sender: bus,
                remote: false,
            })
        }
    }
}

fn number(env: &Envelope) -> Option<u64> {
    std::str::from_utf8(&env.payload).ok()?.parse().ok()
}

fn reply_number(r: &CommandResult) -> Option<u64> {
    number(r.reply.as_ref()?)
}

/// A handler that doubles the number in the payload, telling `seen` each number it handled.
fn doubler(seen: Arc<Mutex<Vec<u64>>>) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let seen = seen.clone();
        async move {
            let n = number(&env).ok_or("payload is not a number")?;
            lock(&seen).push(n);
            Ok::<_, BoxError>(Outcome::reply(env.reply((n * 2).to_string())))
        }
    })
}

/// A handler that tells `entered` it started, then waits for a signal nobody sends.
fn stuck(entered: tokio::sync::mpsc::UnboundedSender<u64>) -> switchyard::BoxHandler {
    let never = Arc::new(tokio::sync::Notify::new());
    handler_fn(move |env: Envelope| {
        let (entered, never) = (entered.clone(), never.clone());
        async move {
            let _ = entered.send(number(&env).unwrap_or(0));
            never.notified().await;
            Ok::<_, BoxError>(Outcome::Ack)
        }
    })
}

/// A send that had to succeed.
fn answered<T>(what: &str, r: Result<T, SendError>) -> Result<T, Failure> {
    r.map_err(|e| Failure::Check(format!("{what} failed: {e:?}")))
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(WAIT, f)
        .await
        .map_err(|_| Failure::Timeout {
            what: what.to_owned(),
            after: WAIT,
        })
}

/// A command sent reaches its one handler (on the other bus where there is one) and returns
/// its result: `send` and `request` both get the handler's reply, named by the handler, after
/// one attempt, and the handler ran exactly once per command.
pub async fn bus_command_reaches_its_handler_and_returns_its_result<F: BusFactory>(
    h: &F,
) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let s = sides(h, &setup, |b| b).await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let topic = setup.topic("cmd.double")?;
    let _sub = s
        .handler
        .handle_envelope("doubler", topic.as_str(), doubler(seen.clone()))
        .start()
        .await?;
    let sent = answered(
        "send",
        bounded(
            "a command's result",
            s.sender.send_envelope(Envelope::new(topic.clone(), "21")),
        )
        .await?,
    )?;
    check!(
        reply_number(&sent) == Some(42),
        "send got {:?}",
        sent.reply.map(|r| r.payload)
    );
    check!(
        sent.handler == "doubler" && sent.attempts == 1,
        "send answered by {:?} after {} attempt(s)",
        sent.handler,
        sent.attempts
    );
    let asked = answered(
        "request",
        bounded(
            "a request's result",
            s.sender
                .request_envelope(Envelope::new(topic.clone(), "5"), WAIT),
        )
        .await?,
    )?;
    check!(
        reply_number(&asked) == Some(10),
        "request got {:?}",
        asked.reply.map(|r| r.payload)
    );
    let seen = lock(&seen).clone();
    check!(
        seen == [21, 5],
        "the handler saw {seen:?}, expected [21, 5]"
    );
    finish(h, &setup, s).await
}

async fn finish<F: BusFactory>(h: &F, setup: &Setup, s: Sides) -> TestResult {
    if s.remote {
        shut(&s.sender).await?;
    }
    shut(&s.handler).await?;
    h.cleanup(setup).await;
    Ok(Verdict::Passed)
}

/// A handler's failure comes back typed: a handler failing on every attempt gives the sender
/// `Failed` with its error and the handler bus's attempts (2); a handler rejecting gives
/// `Rejected` with its reason, after one call.
pub async fn bus_command_failures_come_back_typed<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let s = sides(h, &setup, |b| {
        b.max_attempts(2).retry_delay(Duration::from_millis(1))
    })
    .await?;
    let calls = Arc::new(Mutex::new((0u32, 0u32)));
    let c = calls.clone();
    let failing = handler_fn(move |env: Envelope| {
        lock(&c).0 += 1;
        let n = number(&env);
        async move { Err::<Outcome, BoxError>(format!("cannot double {n:?}").into()) }
    });
    let c = calls.clone();
    let rejecting = handler_fn(move |_env: Envelope| {
        lock(&c).1 += 1;
        async { Ok::<_, BoxError>(Outcome::reject("odd numbers only")) }
    });
    let fails = setup.topic("cmd.fails")?;
    let rejects = setup.topic("cmd.rejects")?;
    let _f = s
        .handler
        .handle_envelope("failing", fails.as_str(), failing)
        .start()
        .await?;
    let _r = s
        .handler
        .handle_envelope("rejecting", rejects.as_str(), rejecting)
        .start()
        .await?;
    let failed = bounded(
        "a failing command's answer",
        s.sender.send_envelope(Envelope::new(fails, "3")),
    )
    .await?;
    match &failed {
        Err(SendError::Failed { error, attempts }) => {
            check!(
                error.contains("cannot double Some(3)"),
                "Failed carries {error:?}"
            );
            check!(
                *attempts == 2,
                "Failed after {attempts} attempts, expected 2"
            );
        }
        other => check!(false, "a failing handler answered {other:?}"),
    }
    let rejected = bounded(
        "a rejected request's answer",
        s.sender.request_envelope(Envelope::new(rejects, "4"), WAIT),
    )
    .await?;
    check!(
        matches!(&rejected, Err(SendError::Rejected { reason }) if reason.contains("odd numbers only")),
        "a rejecting handler answered {rejected:?}"
    );
    let calls = *lock(&calls);
    check!(
        calls == (2, 1),
        "handler calls (failing, rejecting) {calls:?}, expected (2, 1)"
    );
    finish(h, &setup, s).await
}

/// A request whose handler does not answer fails with `Timeout` naming its deadline, at the
/// deadline (not before, and well before the suite's bound); the handler was called once.
pub async fn bus_request_past_its_deadline_times_out<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let s = sides(h, &setup, |b| b).await?;
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let topic = setup.topic("cmd.slow")?;
    let _sub = s
        .handler
        .handle_envelope("slow", topic.as_str(), stuck(entered_tx))
        .start()
        .await?;
    let start = Instant::now();
    let late = bounded(
        "a request past its deadline to fail",
        s.sender
            .request_envelope(Envelope::new(topic, "1"), SHORT_DEADLINE),
    )
    .await?;
    let took = start.elapsed();
    check!(
        matches!(late, Err(SendError::Timeout { deadline }) if deadline == SHORT_DEADLINE),
        "a request past its {SHORT_DEADLINE:?} deadline: {late:?}"
    );
    check!(
        took >= SHORT_DEADLINE && took < FAST,
        "timed out after {took:?} for a {SHORT_DEADLINE:?} deadline"
    );
    check!(
        bounded("the handler to be called", entered.recv()).await? == Some(1),
        "the handler was not called with the request"
    );
    stop_stuck(h, &setup, s).await
}

/// Shuts down buses whose handlers are stuck (a short deadline aborts them).
async fn stop_stuck<F: BusFactory>(h: &F, setup: &Setup, s: Sides) -> TestResult {
    let quick = Duration::from_millis(100);
    if s.remote {
        s.sender.shutdown(quick).await?;
    }
    s.handler.shutdown(quick).await?;
    h.cleanup(setup).await;
    Ok(Verdict::Passed)
}

/// With no handler for the topic anywhere, `send` and a request with a long deadline both fail
/// with `NoHandler` at once (the transport's "nobody serves this" where it has one).
pub async fn bus_command_without_handler_fails_fast<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let s = sides(h, &setup, |b| b).await?;
    let topic = setup.topic("cmd.nobody")?;
    let start = Instant::now();
    let sent = bounded(
        "a send without handler to fail",
        s.sender.send_envelope(Envelope::new(topic.clone(), "1")),
    )
    .await?;
    check!(
        matches!(&sent, Err(SendError::NoHandler { topic: t }) if *t == topic),
        "send without handler: {sent:?}"
    );
    let asked = bounded(
        "a request without handler to fail",
        s.sender
            .request_envelope(Envelope::new(topic.clone(), "1"), WAIT),
    )
    .await?;
    check!(
        matches!(&asked, Err(SendError::NoHandler { .. })),
        "request without handler: {asked:?}"
    );
    let took = start.elapsed();
    check!(took < FAST, "NoHandler took {took:?}");
    finish(h, &setup, s).await
}

/// Two handler buses on one command topic share the work: of 40 commands sent at once from a
/// third bus, each is handled exactly once, each bus handles some, and every sender gets its
/// own result. Only across processes (two connections); one process has one handler per topic.
pub async fn bus_two_handler_buses_share_each_command_once<F: BusFactory>(h: &F) -> TestResult {
    const COUNT: u64 = 40;
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let Some((one, _)) = second(h, &setup, |b| b).await? else {
        return Ok(Verdict::Skipped(reason_one_process(h)));
    };
    let Some((two, _)) = second(h, &setup, |b| b).await? else {
        return Ok(Verdict::Skipped(reason_one_process(h)));
    };
    let (sender, _letters) = bus_on(h, &setup, |b| b).await?;
    let topic = setup.topic("cmd.shared")?;
    let seen = [
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    ];
    let _a = one
        .handle_envelope("doubler", topic.as_str(), doubler(seen[0].clone()))
        .start()
        .await?;
    let _b = two
        .handle_envelope("doubler", topic.as_str(), doubler(seen[1].clone()))
        .start()
        .await?;
    let sends = (0..COUNT).map(|n| {
        let (sender, topic) = (sender.clone(), topic.clone());
        async move {
            let r = sender
                .send_envelope(Envelope::new(topic, n.to_string()))
                .await;
            (n, r)
        }
    });
    let results = bounded(
        "every shared command's result",
        futures::future::join_all(sends),
    )
    .await?;
    for (n, r) in results {
        match r {
            Ok(r) => check!(
                reply_number(&r) == Some(n * 2),
                "command {n} got {:?}",
                r.reply.map(|e| e.payload)
            ),
            Err(e) => check!(false, "command {n} failed: {e:?}"),
        }
    }
    let by: Vec<Vec<u64>> = seen.iter().map(|s| lock(s).clone()).collect();
    let all: Vec<u64> = by.iter().flatten().copied().collect();
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    check!(
        all.len() as u64 == COUNT && distinct.len() as u64 == COUNT,
        "{} handler calls for {COUNT} commands ({} distinct)",
        all.len(),
        distinct.len()
    );
    check!(
        by.iter().all(|b| !b.is_empty()),
        "one bus did all the work: {} and {}",
        by[0].len(),
        by[1].len()
    );
    shut(&sender).await?;
    shut(&one).await?;
    shut(&two).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// The bus holding a command's handler shuts down while the handler is stuck on it: the
/// sender (a `send` with no deadline) gets an answer promptly (not processed, no handler,
/// shutting down or a timeout), never a hang. Across processes, a command sent after that
/// gets `NoHandler` at once.
pub async fn bus_handler_shut_down_never_hangs_the_sender<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let s = sides(h, &setup, |b| b).await?;
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let topic = setup.topic("cmd.stuck")?;
    let _sub = s
        .handler
        .handle_envelope("stuck", topic.as_str(), stuck(entered_tx))
        .start()
        .await?;
    let sender = s.sender.clone();
    let t = topic.clone();
    let sent = tokio::spawn(async move {
        let start = Instant::now();
        let r = sender.send_envelope(Envelope::new(t, "9")).await;
        (r, start.elapsed())
    });
    check!(
        bounded("the handler to start", entered.recv()).await? == Some(9),
        "the handler did not get the command"
    );
    let shutdown_at = Instant::now();
    s.handler.shutdown(Duration::from_millis(200)).await?;
    let (result, _) = bounded("the sender's answer after the handler bus shut down", sent)
        .await?
        .map_err(|e| Failure::Task(e.to_string()))?;
    let after = shutdown_at.elapsed();
    check!(
        matches!(
            result,
            Err(SendError::NotProcessed(_)
                | SendError::NoHandler { .. }
                | SendError::ShuttingDown
                | SendError::Timeout { .. })
        ),
        "the sender got {result:?}"
    );
    check!(
        after < FAST,
        "the sender's answer came {after:?} after the shutdown began"
    );
    if s.remote {
        let start = Instant::now();
        let again = bounded(
            "a send after the handler bus shut down",
            s.sender.send_envelope(Envelope::new(topic, "10")),
        )
        .await?;
        let took = start.elapsed();
        check!(
            matches!(again, Err(SendError::NoHandler { .. })),
            "a send after the handler bus shut down: {again:?}"
        );
        check!(took < FAST, "NoHandler took {took:?}");
        s.sender.shutdown(Duration::from_millis(100)).await?;
    }
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A request's deadline reaches the remote side: served straight from the second connection's
/// transport, the command arrives with what is left of the sender's deadline (positive, not
/// more than it), a `send` arrives with none, and the answer given there is what the sender
/// gets. Only where commands cross processes.
pub async fn bus_request_deadline_reaches_the_remote_side<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let Some((other, extras)) = second(h, &setup, |b| b).await? else {
        return Ok(Verdict::Skipped(reason_one_process(h)));
    };
    let Some(serve) = extras.serve_commands else {
        return Ok(Verdict::Skipped(format!(
            "the {} transport's second connection does not serve commands",
            h.name()
        )));
    };
    let (sender, _letters) = bus_on(h, &setup, |b| b).await?;
    let topic = setup.topic("cmd.deadline")?;
    let mut incoming = serve(topic.clone()).await?;
    let deadline = Duration::from_secs(10);
    for with_deadline in [true, false] {
        let sent = Envelope::new(topic.clone(), "7");
        let id = sent.id.clone();
        let s = sender.clone();
        let answer = tokio::spawn(async move {
            if with_deadline {
                s.request_envelope(sent, deadline).await
            } else {
                s.send_envelope(sent).await
            }
        });
        let command = bounded("the command on the remote side", incoming.next())
            .await?
            .ok_or_else(|| Failure::Check("the served commands ended".into()))?;
        check!(
            command.envelope.id == id && number(&command.envelope) == Some(7),
            "the remote side got {:?}",
            command.envelope
        );
        if with_deadline {
            check!(
                matches!(command.deadline, Some(d) if d > Duration::ZERO && d <= deadline),
                "the remote side saw deadline {:?} for a {deadline:?} request",
                command.deadline
            );
        } else {
            check!(
                command.deadline.is_none(),
                "a send without deadline arrived with {:?}",
                command.deadline
            );
        }
        let reply = command.envelope.reply("14");
        command
            .respond(Ok(CommandResult {
                reply: Some(reply),
                handler: "remote".into(),
                attempts: 1,
            }))
            .await?;
        let got = answered(
            "the remotely answered command",
            bounded("the remote answer", answer)
                .await?
                .map_err(|e| Failure::Task(e.to_string()))?,
        )?;
        check!(
            reply_number(&got) == Some(14) && got.handler == "remote",
            "the sender got {:?} from {:?}",
            got.reply.map(|r| r.payload),
            got.handler
        );
    }
    drop(incoming);
    shut(&sender).await?;
    shut(&other).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}
