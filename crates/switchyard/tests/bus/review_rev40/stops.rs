//! Shortcuts 5 and 6 where a call stops: a command run on its sender's task stopped by a
//! shutdown and woken afterwards, and panics at each point of the worker's first-poll path.
//! ARCHITECTURE.md, Invariants, "Shutdown is an explicit signal": "a stopped run checks the
//! stop before it polls its handler again, and drops the handler's future under a panic
//! capture, so a message is never both handled and reported"; step 4: "the call and its
//! first poll, each under its own `catch_unwind`"; "A handler cannot kill its worker."

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use switchyard::{BoxError, Bus, DeadLetterReason, Envelope, Kind, Outcome, SendError, Topic};
use tokio::sync::Semaphore;

use crate::until;

/// A command run inline, stopped at the shutdown's deadline while it waits, then woken: its
/// handler does not go on (the message is reported, not handled), the sender gets
/// `NotProcessed`, and the report and the dead letter name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_run_stopped_by_shutdown_does_not_go_on_when_woken_later() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (g, s, f) = (
        Arc::clone(&gate),
        Arc::clone(&started),
        Arc::clone(&finished),
    );
    let _sub = bus
        .handle_envelope(
            "rev40-stop",
            "rev40.stop",
            switchyard::handler_fn(move |_env: Envelope| {
                let (g, s, f) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&f));
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    g.acquire().await.unwrap().forget();
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let cmd = Envelope::new(Topic::new("rev40.stop").unwrap(), "stop me").with_kind(Kind::Command);
    let id = cmd.id.clone();
    let bus2 = bus.clone();
    let sender = tokio::spawn(async move { bus2.send_envelope(cmd).await });
    until("the command runs", || started.load(Ordering::SeqCst) == 1).await;
    let report = bus.shutdown(Duration::from_millis(50)).await.unwrap();
    assert!(report.left.contains(&id), "{report:?}");
    gate.add_permits(10); // wakes the stopped run
    let answer = tokio::time::timeout(crate::WAIT, sender)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(answer, Err(SendError::NotProcessed(_))),
        "{answer:?}"
    );
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "reported as left, so not handled"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].envelope.id, id);
    assert_eq!(letters[0].reason, DeadLetterReason::Shutdown);
}

/// A raw service that panics in `call` itself (before any future exists) for messages with
/// a `call` header, in its future's first poll for `first`, and after a yield for `later`.
#[derive(Clone)]
struct Panicky(Arc<AtomicUsize>);

impl tower::Service<Envelope> for Panicky {
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        if env.header("call").is_some() {
            panic!("panic in call");
        }
        Box::pin(async move {
            if env.header("first").is_some() {
                panic!("panic in the first poll");
            }
            if env.header("later").is_some() {
                tokio::task::yield_now().await;
                panic!("panic in a later poll");
            }
            Ok(Outcome::Ack)
        })
    }
}

/// Panics at each point of a call, for events (worker's `start_call`) and commands (the
/// inline run's `start_command`): each is caught, counted as an attempt, retried up to
/// `max_attempts` and dead-lettered `Panicked`; the messages after them are handled.
#[tokio::test]
async fn panics_in_call_first_poll_and_later_polls_are_attempts_and_dead_letter() {
    let bus = Bus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let _events = bus
        .subscribe(
            "rev40-panicky-events",
            "rev40.panic.event",
            switchyard::boxed(Panicky(Arc::clone(&calls))),
        )
        .max_attempts(2)
        .retry_delay(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let _commands = bus
        .handle_envelope(
            "rev40-panicky-commands",
            "rev40.panic.command",
            switchyard::boxed(Panicky(Arc::clone(&calls))),
        )
        .max_attempts(2)
        .retry_delay(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let mut doomed = Vec::new();
    for round in 0..3 {
        for header in ["call", "first", "later", "none"] {
            let event = Envelope::new(Topic::new("rev40.panic.event").unwrap(), format!("{round}"))
                .with_header(header, "1");
            if header != "none" {
                doomed.push(event.id.clone());
            }
            bus.publish_envelope(event).await.unwrap();
            let cmd = Envelope::new(
                Topic::new("rev40.panic.command").unwrap(),
                format!("{round}"),
            )
            .with_kind(Kind::Command)
            .with_header(header, "1");
            let id = cmd.id.clone();
            let answer = bus.send_envelope(cmd).await;
            if header == "none" {
                assert_eq!(answer.unwrap().attempts, 1);
            } else {
                assert!(
                    matches!(answer, Err(SendError::Failed { attempts: 2, .. })),
                    "{header}: {answer:?}"
                );
                doomed.push(id);
            }
        }
    }
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), doomed.len());
    for letter in &letters {
        assert!(doomed.contains(&letter.envelope.id));
        assert_eq!(letter.reason, DeadLetterReason::Panicked, "{letter:?}");
        assert_eq!(letter.attempts, 2);
    }
    // 3 rounds x (3 panicking x 2 attempts + 1) x (event + command)
    assert_eq!(calls.load(Ordering::SeqCst), 3 * 7 * 2);
    assert_eq!(bus.pending(), 0);
}

/// Invariants, "One lane, one worker", and Decisions (inline commands): the sender runs the
/// command itself only when "no worker holds the command's lane". A keyed command handler
/// with two workers: while a command of key `a` runs inline on one task, a second `a` sent
/// from another task waits (it is not run beside it), a `b` runs at once in the free slot,
/// and `a`'s commands are handled in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_command_does_not_run_inline_beside_one_of_its_key() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (g, l) = (Arc::clone(&gate), Arc::clone(&log));
    let _sub = bus
        .handle_envelope(
            "rev40-keyed-commands",
            "rev40.keyed.command",
            switchyard::handler_fn(move |env: Envelope| {
                let (g, l) = (Arc::clone(&g), Arc::clone(&l));
                async move {
                    let name = String::from_utf8(env.payload.to_vec()).unwrap();
                    l.lock().unwrap().push(format!("start {name}"));
                    g.acquire().await.unwrap().forget();
                    l.lock().unwrap().push(format!("end {name}"));
                    Ok::<_, std::io::Error>(Outcome::Ack)
                }
            }),
        )
        .ordering_header("key")
        .workers(2)
        .start()
        .await
        .unwrap();
    let send = |key: &'static str, name: &'static str| {
        let bus = bus.clone();
        tokio::spawn(async move {
            let cmd = Envelope::new(Topic::new("rev40.keyed.command").unwrap(), name)
                .with_kind(Kind::Command)
                .with_header("key", key);
            bus.send_envelope(cmd).await.map(|r| r.attempts)
        })
    };
    let started = |log: &std::sync::Mutex<Vec<String>>, name: &str| {
        log.lock()
            .unwrap()
            .iter()
            .any(|e| e == &format!("start {name}"))
    };
    let a1 = send("a", "a1");
    until("a1 runs", || started(&log, "a1")).await;
    let a2 = send("a", "a2");
    until("a2 is accepted", || bus.pending() == 2).await;
    let b1 = send("b", "b1");
    until("b1 runs in the free slot", || started(&log, "b1")).await;
    assert!(
        !started(&log, "a2"),
        "a2 must wait for a1: {:?}",
        log.lock().unwrap()
    );
    gate.add_permits(10);
    for task in [a1, a2, b1] {
        assert_eq!(task.await.unwrap().unwrap(), 1);
    }
    let log = log.lock().unwrap().clone();
    let at = |e: &str| log.iter().position(|x| x == e).unwrap();
    assert!(at("end a1") < at("start a2"), "{log:?}");
}
