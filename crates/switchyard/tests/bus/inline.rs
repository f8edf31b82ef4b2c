//! Commands run on their sender's task when the handler has a free worker and nothing is
//! queued ahead (issue 18, `inline.rs`): the worker limit, order, panic isolation, shutdown,
//! a dropped sender future and deadlines behave as on the queue path.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{Bus, DeadLetterReason, SendError};
use tokio::sync::{Semaphore, mpsc};

use crate::{Double, ReadyGate, WAIT, until};

/// The task a handler call ran on, as the handler saw it.
type Tasks = Arc<Mutex<Vec<Option<tokio::task::Id>>>>;

/// Messages waiting in the queue of the handler named `name`.
fn depth(bus: &Bus, name: &str) -> usize {
    bus.registry()
        .into_iter()
        .find(|s| s.name == name)
        .map_or(0, |s| s.depth)
}

#[tokio::test(flavor = "current_thread")]
async fn a_free_handler_runs_the_command_on_the_senders_task() {
    let bus = Bus::new();
    let tasks: Tasks = Arc::default();
    let seen = tasks.clone();
    let h = bus
        .handle(move |c: Double, _| {
            seen.lock().unwrap().push(tokio::task::try_id());
            async move { Ok::<_, std::io::Error>(c.n * 2) }
        })
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let sender = tokio::spawn(async move {
        let out = b.send(Double { n: 21 }).await;
        (tokio::task::id(), out)
    });
    let (sender_task, out) = sender.await.unwrap();
    assert_eq!(out.unwrap(), 42);
    assert_eq!(*tasks.lock().unwrap(), vec![Some(sender_task)]);
    assert_eq!(
        (h.stats().acked, h.info().in_flight, bus.pending()),
        (1, 0, 0)
    );
}

/// `workers` handler calls at most run at once, however many senders try: the others wait
/// in the queue and are handled by the workers once a slot is free.
async fn worker_limit_holds(workers: usize) {
    const SENDERS: u64 = 12;
    let bus = Bus::new();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (r, m, g) = (running.clone(), most.clone(), gate.clone());
    let h = bus
        .handle(move |c: Double, _| {
            let (r, m, g, tx) = (r.clone(), m.clone(), g.clone(), entered_tx.clone());
            async move {
                m.fetch_max(r.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let _ = tx.send(c.n);
                g.acquire().await.map_err(|e| e.to_string())?.forget();
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>(c.n * 2)
            }
        })
        .workers(workers)
        .queue_capacity(64)
        .start()
        .await
        .unwrap();
    let senders: Vec<_> = (0..SENDERS)
        .map(|n| {
            let b = bus.clone();
            tokio::spawn(async move { b.send(Double { n }).await })
        })
        .collect();
    for _ in 0..workers {
        tokio::time::timeout(WAIT, entered.recv()).await.unwrap();
    }
    until("the other senders queued their commands", || {
        depth(&bus, "math.double") == SENDERS as usize - workers
    })
    .await;
    assert!(entered.try_recv().is_err(), "no call beyond the limit");
    assert_eq!(running.load(Ordering::SeqCst), workers);
    gate.add_permits(SENDERS as usize);
    for (n, sender) in senders.into_iter().enumerate() {
        assert_eq!(sender.await.unwrap().unwrap(), n as u64 * 2);
    }
    bus.run_until_idle().await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        workers,
        "never more than {workers} at once"
    );
    assert_eq!((h.stats().acked, h.info().in_flight), (SENDERS, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_never_handles_two_commands_at_once() {
    worker_limit_holds(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_limit_holds_under_concurrent_inline_sends() {
    worker_limit_holds(3).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_queued_command_is_not_overtaken_by_a_later_inline_one() {
    let bus = Bus::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (o, g) = (order.clone(), gate.clone());
    let _h = bus
        .handle(move |c: Double, _| {
            o.lock().unwrap().push(c.n);
            let (g, tx) = (g.clone(), entered_tx.clone());
            async move {
                let _ = tx.send(c.n);
                if c.n == 1 {
                    g.acquire().await.map_err(|e| e.to_string())?.forget();
                }
                Ok::<_, String>(c.n)
            }
        })
        .workers(1)
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    // 1 runs here, inline; 2 is queued behind it; 1 finishes and, before the worker had a
    // chance to take 2, 3 is sent from this task: the free slot must not let it pass 2.
    let (first, queued) = tokio::join!(bus.send(Double { n: 1 }), async {
        assert_eq!(entered.recv().await, Some(1));
        let queued = tokio::spawn(async move { b.send(Double { n: 2 }).await });
        until("2 is queued", || depth(&bus, "math.double") == 1).await;
        gate.add_permits(1);
        // Handed out as it is, awaited below once 3 was sent.
        Some(queued)
    });
    assert_eq!(first.unwrap(), 1);
    assert_eq!(bus.send(Double { n: 3 }).await.unwrap(), 3);
    assert_eq!(queued.unwrap().await.unwrap().unwrap(), 2);
    assert_eq!(*order.lock().unwrap(), vec![1, 2, 3]);
}

/// A command whose ordering lane is held is queued, even with a worker free, whether an
/// inline run holds the lane (2 behind 1) or a worker does (3 behind 2); each runs once the
/// one before it in the lane ends, in order, one at a time.
#[tokio::test(flavor = "current_thread")]
async fn a_command_whose_lane_is_held_is_queued_even_with_a_worker_free() {
    let bus = Bus::new();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let gates = Arc::new([Semaphore::new(0), Semaphore::new(0)]);
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (r, m, o, g) = (running.clone(), most.clone(), order.clone(), gates.clone());
    let _h = bus
        .handle(move |c: Double, _| {
            let (r, m, o, g, tx) = (
                r.clone(),
                m.clone(),
                o.clone(),
                g.clone(),
                entered_tx.clone(),
            );
            async move {
                m.fetch_max(r.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                o.lock().unwrap().push(c.n);
                let _ = tx.send(c.n);
                if let Some(gate) = usize::try_from(c.n).ok().and_then(|n| g.get(n - 1)) {
                    gate.acquire().await.map_err(|e| e.to_string())?.forget();
                }
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>(c.n)
            }
        })
        .workers(2)
        .ordering_key(|_| Some("one lane".into()))
        .start()
        .await
        .unwrap();
    let (b2, b3) = (bus.clone(), bus.clone());
    let (first, (second, third)) = tokio::join!(bus.send(Double { n: 1 }), async {
        // 1 runs inline on this task and holds the lane: 2 is queued behind it.
        assert_eq!(entered.recv().await, Some(1));
        let second = tokio::spawn(async move { b2.send(Double { n: 2 }).await });
        until("2 is queued", || depth(&bus, "math.double") == 1).await;
        gates[0].add_permits(1);
        // A worker takes 2 once 1 ended and holds the lane: 3 is queued behind it.
        assert_eq!(entered.recv().await, Some(2));
        let third = tokio::spawn(async move { b3.send(Double { n: 3 }).await });
        until("3 is queued", || depth(&bus, "math.double") == 1).await;
        gates[1].add_permits(1);
        (second.await.unwrap(), third.await.unwrap())
    });
    assert_eq!((first.unwrap(), second.unwrap(), third.unwrap()), (1, 2, 3));
    assert_eq!(*order.lock().unwrap(), vec![1, 2, 3]);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two commands of one lane ran at once"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_in_an_inline_handler_is_isolated_and_reported() {
    let bus = Bus::new();
    let tasks: Tasks = Arc::default();
    let seen = tasks.clone();
    let h = bus
        .handle(move |c: Double, _| {
            seen.lock().unwrap().push(tokio::task::try_id());
            async move {
                assert!(c.n != 0, "boom");
                Ok::<_, std::io::Error>(c.n)
            }
        })
        .max_attempts(1)
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let sender = tokio::spawn(async move {
        let failed = b.send(Double { n: 0 }).await;
        let fine = b.send(Double { n: 5 }).await;
        (tokio::task::id(), failed, fine)
    });
    let (sender_task, failed, fine) = sender.await.expect("the sender's task survives");
    match failed {
        Err(SendError::Failed { error, attempts }) => {
            assert!(error.contains("boom"), "{error}");
            assert_eq!(attempts, 1);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(fine.unwrap(), 5);
    assert_eq!(
        *tasks.lock().unwrap(),
        vec![Some(sender_task); 2],
        "both ran inline"
    );
    let stats = h.stats();
    assert_eq!(
        (stats.panicked, stats.dead_lettered, stats.acked),
        (1, 1, 1)
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Panicked);
    assert_eq!((h.info().in_flight, bus.pending()), (0, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_waits_for_an_inline_command() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let g = gate.clone();
    let _h = bus
        .handle(move |c: Double, _| {
            let (g, tx) = (g.clone(), entered_tx.clone());
            async move {
                let _ = tx.send(c.n);
                g.acquire().await.map_err(|e| e.to_string())?.forget();
                Ok::<_, String>(c.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let sender = tokio::spawn(async move { b.send(Double { n: 4 }).await });
    assert_eq!(entered.recv().await, Some(4));
    let b = bus.clone();
    let shutdown = tokio::spawn(async move { b.shutdown(WAIT).await });
    until("shutdown began", || bus.is_shutting_down()).await;
    assert!(matches!(
        bus.send(Double { n: 1 }).await,
        Err(SendError::ShuttingDown)
    ));
    // The queue is closed and the worker gone: only the inline run is left to drain.
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished(), "shutdown waits for the inline run");
    gate.add_permits(1);
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!(report.drained, 1);
    assert!(report.left.is_empty());
    assert_eq!(sender.await.unwrap().unwrap(), 8);
    assert_eq!(bus.pending(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn an_inline_command_past_the_shutdown_deadline_is_left_and_dead_lettered() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let _h = bus
        .handle(move |c: Double, _| {
            let tx = entered_tx.clone();
            async move {
                let _ = tx.send(c.n);
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(c.n)
            }
        })
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let sender = tokio::spawn(async move { b.send(Double { n: 4 }).await });
    assert_eq!(entered.recv().await, Some(4));
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    assert_eq!(report.drained, 0);
    assert_eq!(report.left.len(), 1, "{report:?}");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Shutdown);
    assert_eq!(letters[0].envelope.id, report.left[0]);
    assert_eq!(letters[0].handler.as_deref(), Some("math.double"));
    assert!(matches!(
        sender.await.unwrap(),
        Err(SendError::NotProcessed(_))
    ));
    assert_eq!(bus.pending(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_sender_future_leaves_the_command_to_finish() {
    let bus = Bus::new();
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let g = gate.clone();
    let h = bus
        .handle(move |c: Double, _| {
            let (g, tx, done) = (g.clone(), entered_tx.clone(), done_tx.clone());
            async move {
                let _ = tx.send(c.n);
                g.acquire().await.map_err(|e| e.to_string())?.forget();
                let _ = done.send(c.n);
                Ok::<_, String>(c.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    // The send starts the run in its first poll; the sender then stops waiting.
    tokio::select! {
        biased;
        out = bus.send(Double { n: 7 }) => panic!("the handler waits at the gate: {out:?}"),
        n = entered.recv() => assert_eq!(n, Some(7)),
    }
    assert_eq!(bus.pending(), 1, "still accepted");
    gate.add_permits(1);
    assert_eq!(
        tokio::time::timeout(WAIT, done.recv()).await.unwrap(),
        Some(7),
        "the command is handled after its sender went away"
    );
    bus.run_until_idle().await;
    assert_eq!((h.stats().acked, h.info().in_flight), (1, 0));
    gate.add_permits(1);
    assert_eq!(
        tokio::time::timeout(WAIT, bus.send(Double { n: 1 }))
            .await
            .unwrap()
            .unwrap(),
        2,
        "the slot was given back"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_deadline_applies_to_an_inline_command_which_still_finishes() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let saw_deadline = Arc::new(AtomicBool::new(false));
    let saw = saw_deadline.clone();
    let h = bus
        .handle(move |c: Double, ctx| {
            saw.store(ctx.deadline().is_some(), Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, std::io::Error>(c.n)
            }
        })
        .start()
        .await
        .unwrap();
    match bus
        .request(Double { n: 1 }, Duration::from_millis(200))
        .await
    {
        Err(SendError::Timeout { deadline }) => assert_eq!(deadline, Duration::from_millis(200)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(saw_deadline.load(Ordering::SeqCst), "Ctx::deadline is set");
    bus.run_until_idle().await;
    assert_eq!(
        (h.stats().acked, bus.pending()),
        (1, 0),
        "handled; the late reply discarded"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_handler_clones_for_inline_runs_go_at_shutdown() {
    let bus = Bus::new();
    // What a handler captures (a clone of the bus, say) must not outlive the shutdown.
    let token = Arc::new(());
    let held = token.clone();
    let h = bus
        .handle(move |c: Double, _| {
            let _held = &held;
            async move { Ok::<_, std::io::Error>(c.n) }
        })
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    tokio::spawn(async move { b.send(Double { n: 1 }).await })
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::strong_count(&token) > 1);
    bus.shutdown(WAIT).await.unwrap();
    // The handle (like the bus's command table) still holds the subscription's state.
    assert_eq!(
        Arc::strong_count(&token),
        1,
        "every handler clone was dropped"
    );
    drop(h);
}

#[tokio::test(flavor = "current_thread")]
async fn a_sender_of_inline_commands_lets_other_tasks_run() {
    let bus = Bus::new();
    let _h = bus
        .handle(|c: Double, _| async move { Ok::<_, std::io::Error>(c.n) })
        .start()
        .await
        .unwrap();
    let other_ran = Arc::new(AtomicBool::new(false));
    let flag = other_ran.clone();
    let b = bus.clone();
    // The sender starts first; the other task only runs when the sender yields.
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        while !flag.load(Ordering::SeqCst) && sent < 100_000 {
            b.send(Double { n: sent }).await.unwrap();
            sent += 1;
        }
        sent
    });
    let ran = other_ran.clone();
    tokio::spawn(async move { ran.store(true, Ordering::SeqCst) });
    let sent = sender.await.unwrap();
    assert!(other_ran.load(Ordering::SeqCst));
    assert!(sent < 100_000, "the sender never yielded ({sent} sends)");
}

/// `send_envelope`'s future (written out, not an `async` block) yields as typed `send` does,
/// and a command answered across its yield still gets its own reply.
#[tokio::test(flavor = "current_thread")]
async fn an_envelope_sender_of_inline_commands_lets_other_tasks_run() {
    use switchyard::{Envelope, Outcome, Topic, handler_fn};
    let bus = Bus::new();
    let _h = bus
        .handle_envelope(
            "echo",
            "inline.echo",
            handler_fn(|env: Envelope| async move {
                Ok::<_, std::io::Error>(Outcome::reply(env.reply(env.payload.clone())))
            }),
        )
        .start()
        .await
        .unwrap();
    let other_ran = Arc::new(AtomicBool::new(false));
    let flag = other_ran.clone();
    let b = bus.clone();
    // The sender starts first; the other task only runs when the sender yields.
    let sender = tokio::spawn(async move {
        let topic = Topic::new("inline.echo").unwrap();
        let mut sent = 0u64;
        while !flag.load(Ordering::SeqCst) && sent < 100_000 {
            let env = Envelope::new(topic.clone(), sent.to_string());
            let result = b.send_envelope(env).await.unwrap();
            let reply = result.reply.expect("a reply");
            assert_eq!(reply.payload, sent.to_string().as_bytes(), "send {sent}");
            assert_eq!(result.handler, "echo");
            sent += 1;
        }
        sent
    });
    let ran = other_ran.clone();
    tokio::spawn(async move { ran.store(true, Ordering::SeqCst) });
    let sent = sender.await.unwrap();
    assert!(other_ran.load(Ordering::SeqCst));
    assert!(sent < 100_000, "the sender never yielded ({sent} sends)");
}

/// A handler that is not ready until its gate opens (a breaker, a rate limit): `poll_ready`
/// is `Pending` while closed, with the waker kept to wake once it opens. Records the tasks
/// its calls ran on and whether any came while it was closed.
#[derive(Clone)]
struct Gated {
    gate: ReadyGate,
    calls_while_closed: Arc<AtomicUsize>,
    tasks: Tasks,
}

impl tower::Service<switchyard::Envelope> for Gated {
    type Response = switchyard::Outcome;
    type Error = switchyard::BoxError;
    type Future = std::future::Ready<Result<switchyard::Outcome, switchyard::BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), switchyard::BoxError>> {
        self.gate.poll(cx)
    }

    fn call(&mut self, env: switchyard::Envelope) -> Self::Future {
        if !self.gate.is_open() {
            self.calls_while_closed.fetch_add(1, Ordering::SeqCst);
        }
        self.tasks.lock().unwrap().push(tokio::task::try_id());
        let reply = env.reply(env.payload.clone());
        std::future::ready(Ok(switchyard::Outcome::reply(reply)))
    }
}

/// A command whose handler is not ready is not run inline (the sender polls readiness once)
/// but queued, and a worker runs it once the handler is ready: never while it is not.
#[tokio::test(flavor = "current_thread")]
async fn a_command_to_a_handler_not_ready_is_queued_and_runs_once_ready() {
    let bus = Bus::new();
    let gated = Gated {
        gate: ReadyGate::default(),
        calls_while_closed: Arc::default(),
        tasks: Arc::default(),
    };
    let h = bus
        .handle_envelope("gated", "gated.echo", switchyard::boxed(gated.clone()))
        .start()
        .await
        .unwrap();
    let b = bus.clone();
    let sender = tokio::spawn(async move {
        let env = switchyard::Envelope::new(switchyard::Topic::new("gated.echo").unwrap(), "hi");
        let out = b.send_envelope(env).await;
        (tokio::task::id(), out)
    });
    until("the command is queued", || depth(&bus, "gated") == 1).await;
    // Give the sender and the worker every chance to run it while the handler is not ready.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !sender.is_finished(),
        "answered while the handler was not ready"
    );
    assert!(
        gated.tasks.lock().unwrap().is_empty(),
        "handled while not ready"
    );
    gated.gate.set(true);
    let (sender_task, out) = tokio::time::timeout(WAIT, sender)
        .await
        .expect("the queued command did not run once the handler was ready")
        .unwrap();
    assert_eq!(&out.unwrap().reply.unwrap().payload[..], b"hi");
    let tasks = gated.tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), 1, "handled {} times", tasks.len());
    assert_ne!(tasks[0], Some(sender_task), "ran on the sender's task");
    assert_eq!(gated.calls_while_closed.load(Ordering::SeqCst), 0);
    assert_eq!(
        (h.stats().acked, bus.pending(), depth(&bus, "gated")),
        (1, 0, 0)
    );
}

/// The first attempt of an inline command is made at the send's first poll, outside the
/// run's future; what does not end there goes on in the run. Every way on: an attempt that
/// fails at once, one that waits and then fails, one that waits and then answers; each
/// retried in place, on the sender's task, with the typed output handed over at the end and
/// the attempts counted once each.
#[tokio::test(flavor = "current_thread")]
async fn an_inline_command_whose_first_attempts_fail_or_wait_is_retried_on_the_senders_task() {
    let bus = Bus::builder()
        .max_attempts(3)
        .backoff(switchyard::Backoff::fixed(Duration::from_millis(1)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Tasks = Arc::default();
    let (c, seen) = (calls.clone(), tasks.clone());
    let h = bus
        .handle(move |cmd: Double, ctx| {
            let call = c.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(tokio::task::try_id());
            async move {
                // n = 0: fails at once, then answers at once; n = 1: waits and fails, then
                // waits and answers.
                if cmd.n % 2 == 1 {
                    tokio::task::yield_now().await;
                }
                if ctx.attempt() == 1 {
                    return Err(format!("call {call} fails"));
                }
                Ok(cmd.n * 2 + 100)
            }
        })
        .start()
        .await
        .unwrap();
    for n in [0, 1] {
        let b = bus.clone();
        let sender = tokio::spawn(async move {
            let out = b.send(Double { n }).await;
            (tokio::task::id(), out)
        });
        let (sender_task, out) = sender.await.unwrap();
        assert_eq!(out.unwrap(), n * 2 + 100);
        let seen = std::mem::take(&mut *tasks.lock().unwrap());
        assert_eq!(
            seen,
            vec![Some(sender_task); 2],
            "both attempts inline (n = {n})"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let stats = h.stats();
    assert_eq!((stats.acked, stats.failed, stats.retried), (2, 2, 2));
    assert_eq!((h.info().in_flight, bus.pending()), (0, 0));
    assert!(bus.dead_letters().unwrap().list().is_empty());
}
