//! Shortcut 5: commands run on their sender's task (`inline.rs`). ARCHITECTURE.md,
//! Decisions, "A command to a free handler runs on its sender's task": "(1) a sender that
//! stops waiting (a request's deadline, a dropped future) does not cancel the command: the
//! queue path promises that an accepted command is handled, so the run [...] goes on in a
//! spawned task and its answer is discarded; (2) shutdown waits for runs until its deadline,
//! then stops them at their next poll as it aborts workers: reported in `left`,
//! dead-lettered with `Shutdown`, the sender gets `NotProcessed`"; "The slot counts against
//! `workers(n)`"; "nothing waits in its queue (so nothing is overtaken)".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{Bus, DeadLetterReason, Envelope, Kind, Message, Outcome, SendError, Topic};
use tokio::sync::Semaphore;

use crate::until;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hold {
    n: u64,
}
impl Message for Hold {
    const TOPIC: &'static str = "rev40.hold";
    const KIND: Kind = Kind::Command;
}
impl switchyard::Command for Hold {
    type Output = u64;
}

/// What the `Hold` handler saw: started, finished, the most running at once, the order.
#[derive(Default)]
struct Probe {
    started: AtomicUsize,
    done: AtomicUsize,
    running: AtomicUsize,
    most: AtomicUsize,
    order: Mutex<Vec<u64>>,
}

/// A `Hold` handler that waits for a permit of `gate` before answering `n * 10`.
async fn holder(
    bus: &Bus,
    workers: usize,
    gate: Arc<Semaphore>,
    probe: Arc<Probe>,
) -> switchyard::Subscription {
    bus.handle(move |hold: Hold, _ctx: switchyard::Ctx| {
        let gate = Arc::clone(&gate);
        let probe = Arc::clone(&probe);
        async move {
            probe.order.lock().unwrap().push(hold.n);
            let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
            probe.most.fetch_max(now, Ordering::SeqCst);
            probe.started.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            probe.running.fetch_sub(1, Ordering::SeqCst);
            probe.done.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(hold.n * 10)
        }
    })
    .workers(workers)
    .start()
    .await
    .unwrap()
}

/// A request whose deadline passes while its command runs on the sender's task gets
/// `Timeout`; the command still runs to its end, once, and nothing stays pending.
#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_still_has_its_inline_command_handled_once() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe::default());
    let _sub = holder(&bus, 1, Arc::clone(&gate), Arc::clone(&probe)).await;
    let err = bus
        .request(Hold { n: 1 }, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Timeout { .. }), "{err:?}");
    assert_eq!(probe.started.load(Ordering::SeqCst), 1);
    gate.add_permits(1);
    until("the timed-out command finished", || {
        probe.done.load(Ordering::SeqCst) == 1
    })
    .await;
    bus.run_until_idle().await;
    assert_eq!(bus.pending(), 0);
    assert_eq!(probe.started.load(Ordering::SeqCst), 1, "handled once");
    assert!(bus.dead_letters().unwrap().is_empty());
    // The slot is free again: the next request runs and is answered.
    gate.add_permits(1);
    assert_eq!(
        bus.request(Hold { n: 2 }, Duration::from_secs(5))
            .await
            .unwrap(),
        20
    );
}

/// A sender's future dropped in the middle of its inline run: the command is still handled,
/// once, and the handler's slot is given back.
#[tokio::test]
async fn a_dropped_send_still_has_its_inline_command_handled_once() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe::default());
    let _sub = holder(&bus, 1, Arc::clone(&gate), Arc::clone(&probe)).await;
    {
        let mut send = Box::pin(bus.send(Hold { n: 7 }));
        assert!(futures::poll!(send.as_mut()).is_pending());
        assert_eq!(
            probe.started.load(Ordering::SeqCst),
            1,
            "it runs inline, on this task"
        );
    }
    gate.add_permits(1);
    until("the abandoned command finished", || {
        probe.done.load(Ordering::SeqCst) == 1
    })
    .await;
    bus.run_until_idle().await;
    assert_eq!(bus.pending(), 0);
    gate.add_permits(1);
    assert_eq!(bus.send(Hold { n: 8 }).await.unwrap(), 80);
    assert_eq!(*probe.order.lock().unwrap(), vec![7, 8]);
}

/// `workers(2)`: at most two commands run at once, inline runs included, and every sender
/// gets its own command's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_runs_count_against_the_workers_limit_and_answer_their_own_sender() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe::default());
    let _sub = holder(&bus, 2, Arc::clone(&gate), Arc::clone(&probe)).await;
    let sends: Vec<_> = (0..8u64)
        .map(|n| {
            let bus = bus.clone();
            tokio::spawn(async move { (n, bus.send(Hold { n }).await) })
        })
        .collect();
    until("two commands run", || {
        probe.started.load(Ordering::SeqCst) == 2
    })
    .await;
    until("the rest are queued", || bus.pending() == 8).await;
    assert_eq!(probe.started.load(Ordering::SeqCst), 2, "no third one runs");
    gate.add_permits(8);
    for send in sends {
        let (n, answer) = send.await.unwrap();
        assert_eq!(answer.unwrap(), n * 10, "command {n} got its own answer");
    }
    assert_eq!(
        probe.most.load(Ordering::SeqCst),
        2,
        "never more than two at once"
    );
    assert_eq!(probe.done.load(Ordering::SeqCst), 8);
}

/// Sends started in order while the handler (`workers(1)`) is busy with an inline run are
/// handled in that order: a later send never overtakes a queued one by running inline.
#[tokio::test]
async fn sends_are_handled_in_order_when_the_first_runs_inline_and_the_rest_queue() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe::default());
    let _sub = holder(&bus, 1, Arc::clone(&gate), Arc::clone(&probe)).await;
    let first = (0..10u64).map(|n| bus.send(Hold { n }));
    let all = futures::future::join_all(first);
    tokio::pin!(all);
    assert!(futures::poll!(all.as_mut()).is_pending());
    // Release one at a time, sending one more each time: the new ones go behind the queue.
    let mut late = Vec::new();
    for n in 10..15u64 {
        gate.add_permits(1);
        let bus2 = bus.clone();
        late.push(tokio::spawn(async move { bus2.send(Hold { n }).await }));
        tokio::task::yield_now().await;
    }
    gate.add_permits(100);
    let answers = all.await;
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), n as u64 * 10);
    }
    for (i, l) in late.into_iter().enumerate() {
        assert_eq!(l.await.unwrap().unwrap(), (10 + i as u64) * 10);
    }
    let order = probe.order.lock().unwrap().clone();
    assert_eq!(
        &order[..10],
        &(0..10).collect::<Vec<_>>()[..],
        "the first ten in send order"
    );
    assert_eq!(order.len(), 15);
}

/// A panicking handler run inline: the sender gets `Failed` with every attempt counted, the
/// command is dead-lettered `Panicked` as sent, and the next send on the thread is answered
/// with its own reply (nothing of the failed run is left in the thread's kept boxes).
#[tokio::test]
async fn a_panicking_inline_run_fails_its_send_and_leaves_nothing_to_the_next() {
    let bus = Bus::new();
    let _sub = bus
        .handle_envelope(
            "rev40-panicky",
            "rev40.panicky",
            switchyard::handler_fn(|env: Envelope| async move {
                if env.header("panic").is_some() {
                    panic!("asked to panic");
                }
                let reply = env.reply([b"ok ".as_slice(), &env.payload].concat());
                Ok::<_, std::io::Error>(Outcome::reply(reply))
            }),
        )
        .max_attempts(2)
        .retry_delay(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let mut panicked = Vec::new();
    for i in 0..30u32 {
        let mut cmd = Envelope::new(
            Topic::new("rev40.panicky").unwrap(),
            i.to_string().into_bytes(),
        )
        .with_kind(Kind::Command);
        if i % 3 == 0 {
            cmd = cmd.with_header("panic", "yes").with_source(format!("s{i}"));
            panicked.push((cmd.id.clone(), cmd.payload.clone()));
            let err = bus.send_envelope(cmd).await.unwrap_err();
            assert!(
                matches!(err, SendError::Failed { attempts: 2, .. }),
                "{err:?}"
            );
        } else {
            let id = cmd.id.clone();
            let result = bus.send_envelope(cmd).await.unwrap();
            let reply = result.reply.unwrap();
            assert_eq!(&reply.payload[..], format!("ok {i}").as_bytes());
            assert_eq!(reply.causation_id(), Some(&id));
            assert_eq!(
                reply.target(),
                None,
                "the panicked command's source is not this reply's target"
            );
            assert!(reply.headers().is_empty());
            assert_eq!(result.attempts, 1);
        }
    }
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), panicked.len());
    for (id, payload) in panicked {
        let letter = letters.iter().find(|l| l.envelope.id == id).unwrap();
        assert_eq!(letter.reason, DeadLetterReason::Panicked);
        assert_eq!(letter.envelope.payload, payload);
        assert_eq!(letter.attempts, 2);
    }
}

/// Shutdown while a command runs on its sender's task and never ends: at the deadline the
/// run is stopped, its command named in the report's `left` and dead-lettered `Shutdown`,
/// and the sender gets `NotProcessed`.
#[tokio::test]
async fn shutdown_during_an_inline_run_reports_it_and_answers_not_processed() {
    let bus = Bus::new();
    let started = Arc::new(AtomicUsize::new(0));
    let started2 = Arc::clone(&started);
    let _sub = bus
        .handle_envelope(
            "rev40-stuck",
            "rev40.stuck",
            switchyard::handler_fn(move |_env: Envelope| {
                let started = Arc::clone(&started2);
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let cmd = Envelope::new(Topic::new("rev40.stuck").unwrap(), "stuck").with_kind(Kind::Command);
    let id = cmd.id.clone();
    let bus2 = bus.clone();
    let sender = tokio::spawn(async move { bus2.send_envelope(cmd).await });
    until("the command runs", || started.load(Ordering::SeqCst) == 1).await;
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    assert!(report.left.contains(&id), "{report:?}");
    let answer = tokio::time::timeout(crate::WAIT, sender)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(answer, Err(SendError::NotProcessed(_))),
        "{answer:?}"
    );
    let letters = bus.dead_letters().unwrap().list();
    let letter = letters
        .iter()
        .find(|l| l.envelope.id == id)
        .expect("dead-lettered");
    assert_eq!(letter.reason, DeadLetterReason::Shutdown);
}

/// `Bus::request`'s rustdoc: "a handler run on the sender's task that answers without ever
/// waiting (synchronous work, however long) answers before the deadline is looked at, so its
/// answer is returned". The work here outlasts the deadline on the real clock (it is the
/// handler's work, not a wait of the test's); the answer is the handler's own.
#[tokio::test]
async fn a_request_answered_without_waiting_returns_its_answer_past_the_deadline() {
    let bus = Bus::new();
    let _sub = bus
        .handle(|hold: Hold, _ctx: switchyard::Ctx| async move {
            std::thread::sleep(Duration::from_millis(20));
            Ok::<_, std::io::Error>(hold.n + 1)
        })
        .start()
        .await
        .unwrap();
    for n in 0..3 {
        let answer = bus.request(Hold { n }, Duration::from_millis(1)).await;
        assert_eq!(answer.unwrap(), n + 1);
    }
}
