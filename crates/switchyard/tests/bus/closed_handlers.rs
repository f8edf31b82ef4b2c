//! Commands in flight to a command handler whose subscription is dropped while senders keep
//! sending and give up after a short while (their `send_envelope` futures dropped mid-send):
//! once everything is quiet, nothing stays pending. Found at the node level at the end of
//! stop 36 (`crates/switchyard-node/tests/ws/answer_first.rs`,
//! `nothing_stays_pending_after_busy_handlers_closed`): a WebSocket handler's connection closes
//! and its subscription is dropped while commands are on the way to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchyard::{BoxError, Bus, Envelope, Outcome, Permanent, Topic, handler_fn};
use tokio::sync::{mpsc, watch};

use crate::until;

#[derive(Debug, thiserror::Error)]
#[error("the handler's connection closed")]
struct Gone;

/// `senders` tasks sending on `busy.job` until `stop`, each waiting at most 5 ms (the timeout
/// drops the send future wherever it is).
fn keep_sending(
    bus: &Bus,
    stop: &Arc<AtomicBool>,
    senders: usize,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..senders)
        .map(|_| {
            let bus = bus.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let topic = Topic::new("busy.job").unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 2_000_000 {
                    let env = Envelope::new(topic.clone(), format!("{n}"));
                    let _ = tokio::time::timeout(Duration::from_millis(5), bus.send_envelope(env))
                        .await;
                    n += 1;
                    tokio::task::yield_now().await;
                }
                n
            })
        })
        .collect()
}

/// A handler that reports each command it gets and answers it only with a failure once its
/// "connection" (`closed`) closes, like the node's remote handler.
fn remote_like(
    got: mpsc::UnboundedSender<()>,
    closed: watch::Receiver<bool>,
) -> switchyard::BoxHandler {
    handler_fn(move |_env: Envelope| {
        let got = got.clone();
        let mut closed = closed.clone();
        async move {
            let _ = got.send(());
            let _ = closed.wait_for(|c| *c).await;
            Err::<Outcome, BoxError>(Box::new(Permanent::new(Gone)))
        }
    })
}

async fn handlers_come_and_go(bus: &Bus, rounds: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let senders = keep_sending(bus, &stop, 4);
    for round in 0..rounds {
        let (got_tx, mut got) = mpsc::unbounded_channel();
        let (close, closed) = watch::channel(false);
        let sub = bus
            .handle_envelope("remote", "busy.job", remote_like(got_tx, closed))
            .workers(1)
            .start()
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), got.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: no command reached the handler"));
        // Commands queue up behind the one the handler holds (more than the breaker's five
        // failures' worth), as they do behind a remote handler that is slow to answer.
        until("commands to queue up", || sub.info().depth >= 8).await;
        let _ = close.send(true);
        drop(sub);
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        assert!(s.await.unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_stays_pending_after_busy_command_handlers_were_dropped() {
    // The node's handlers: the default stack, whose breaker opens after five failures.
    let bus = Bus::builder()
        .with_default_resilience()
        .max_attempts(1)
        .build()
        .unwrap();
    handlers_come_and_go(&bus, 30).await;
    until("nothing is pending", || bus.pending() == 0).await;
    let report = bus.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(
        report.left.is_empty() && report.nacked.is_empty(),
        "{report:?}"
    );
}

/// A publish hook (the node's trace, alerts and live feed are hooks) sees a command sent
/// with `send_envelope` as a command, even when the envelope was made as an event
/// (`Envelope::new`): found by review rev14, whose trace view showed such a command as
/// `kind: "event"` (the kind was set after the hooks ran).
#[tokio::test]
async fn a_publish_hook_sees_a_sent_envelope_as_a_command() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .publish_hook(move |env| {
            let _ = seen_tx.send((env.topic.to_string(), env.kind));
            Ok(())
        })
        .build()
        .unwrap();
    let _h = bus
        .handle_envelope(
            "echo",
            "kind.check",
            handler_fn(|env: Envelope| async move {
                Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply(env.payload.clone())))
            }),
        )
        .start()
        .await
        .unwrap();
    let env = Envelope::new(Topic::new("kind.check").unwrap(), "{}");
    assert_eq!(env.kind, switchyard::Kind::Event);
    bus.send_envelope(env).await.unwrap();
    let (topic, kind) = seen.recv().await.unwrap();
    assert_eq!(
        (topic.as_str(), kind),
        ("kind.check", switchyard::Kind::Command)
    );
}
