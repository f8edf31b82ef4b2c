//! Shutdown and commands run on their sender's task (`inline.rs`): found by review rev1.
//! Each test failed before its fix, except the worker counterparts, which say so.

use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{Bus, SendError, Subscription};
use tokio::sync::mpsc::{self, UnboundedReceiver};

use crate::{Double, Ping, received, until};

/// A handler future's part whose `Drop` panics (unless the thread already unwinds).
struct DropPanics;

impl Drop for DropPanics {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop panics");
        }
    }
}

/// Starts a `Double` handler that reports each command's input on the returned receiver and
/// then never finishes; with `drop_panics`, its future panics when it is dropped.
async fn stuck_doubler(bus: &Bus, drop_panics: bool) -> (Subscription, UnboundedReceiver<u64>) {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let handle = bus
        .handle(move |c: Double, _| {
            let tx = entered_tx.clone();
            async move {
                let _guard = if drop_panics { Some(DropPanics) } else { None };
                let _ = tx.send(c.n);
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(c.n)
            }
        })
        .start()
        .await
        .unwrap();
    (handle, entered)
}

/// The event counterpart of [`stuck_doubler`]: a `Ping` subscription whose handler reports
/// each event and never finishes (its future panicking when dropped, with `drop_panics`).
async fn stuck_pinger(bus: &Bus, drop_panics: bool) -> (Subscription, UnboundedReceiver<u64>) {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let sub = bus
        .on("stuck", move |p: Ping, _| {
            let tx = entered_tx.clone();
            async move {
                let _guard = if drop_panics { Some(DropPanics) } else { None };
                let _ = tx.send(p.n);
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    (sub, entered)
}

/// docs/bus.md "Shutdown": in-flight work drains *until the deadline*; what is left is
/// dead-lettered and named. An inline run is polled only by its sender's task, so a sender
/// that holds its `send` future without polling it (here it awaits the shutdown itself; in an
/// application, a `select!` busy in another branch) left the stopped run unpolled, and the
/// shutdown waited for it with no deadline. Before the fix: the shutdown did not return.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_keeps_its_deadline_when_an_inline_runs_sender_does_not_poll_it() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (_h, mut entered) = stuck_doubler(&bus, false).await;
    let send = bus.send(Double { n: 4 });
    tokio::pin!(send);
    assert!(futures_util::poll!(send.as_mut()).is_pending());
    assert_eq!(received(&mut entered, 1).await, [4]);
    // The sender's task is busy with something else (the shutdown) and holds `send`.
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        bus.shutdown(Duration::from_millis(100)),
    )
    .await
    .expect("shutdown returns within its deadline (100 ms, here given 30 s)")
    .unwrap();
    assert_eq!(report.left.len(), 1, "{report:?}");
    assert_eq!(bus.dead_letters().unwrap().list().len(), 1);
    // Polled at last, the stopped run ends without calling its handler again.
    assert!(matches!(send.await, Err(SendError::NotProcessed(_))));
    assert_eq!(bus.pending(), 0);
}

/// A command handler whose handle is dropped while a command runs inline: its queue closes
/// and its idle worker exits. The last worker used to forget the subscription though the run
/// went on, so a later shutdown neither waited for the run nor named it, and the sender was
/// never answered. Before the fix: report empty, no dead letter, the sender still waiting,
/// pending 1.
#[tokio::test(flavor = "current_thread")]
async fn an_inline_run_of_a_dropped_handler_is_still_seen_by_shutdown() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (h, mut entered) = stuck_doubler(&bus, false).await;
    let b = bus.clone();
    let sender = tokio::spawn(async move { b.send(Double { n: 4 }).await });
    assert_eq!(received(&mut entered, 1).await, [4]);
    let metrics = tokio::runtime::Handle::current().metrics();
    let alive = metrics.num_alive_tasks();
    drop(h);
    // Wait until the idle worker has seen its queue closed and exited (its task is gone).
    until("the worker exited", || metrics.num_alive_tasks() < alive).await;
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), sender).await;
    let letters = bus.dead_letters().unwrap().list().len();
    assert!(
        report.left.len() == 1
            && letters == 1
            && matches!(answered, Ok(Ok(Err(SendError::NotProcessed(_))))),
        "report: {report:?}; dead letters: {letters}; sender: {answered:?}; pending: {}",
        bus.pending()
    );
    assert_eq!(bus.pending(), 0);
}

/// The worker counterpart (passed before the fix too): a message held by a worker when its
/// handle is dropped keeps the subscription known, and the shutdown names and dead-letters it
/// at its deadline.
#[tokio::test(flavor = "current_thread")]
async fn a_worker_message_of_a_dropped_handler_is_seen_by_shutdown() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (sub, mut entered) = stuck_pinger(&bus, false).await;
    bus.publish(Ping { n: 4 }).await.unwrap();
    assert_eq!(received(&mut entered, 1).await, [4]);
    drop(sub);
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    let letters = bus.dead_letters().unwrap().list().len();
    assert!(
        report.left.len() == 1 && letters == 1 && bus.pending() == 0,
        "report: {report:?}; dead letters: {letters}; pending: {}",
        bus.pending()
    );
}

/// A handler future whose `Drop` panics, stopped at the shutdown deadline while it runs on
/// its sender's task: the panic must stay in the bus (panic isolation, as for a worker,
/// `polls.rs`), the sender gets `NotProcessed`, not a panic of its own task.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_drop_of_an_inline_run_stopped_at_shutdown_does_not_reach_the_sender() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (_h, mut entered) = stuck_doubler(&bus, true).await;
    let b = bus.clone();
    let sender = tokio::spawn(async move { b.send(Double { n: 4 }).await });
    assert_eq!(received(&mut entered, 1).await, [4]);
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    let sender = sender.await.map_err(|e| e.to_string());
    let letters = bus.dead_letters().unwrap().list().len();
    assert!(
        matches!(sender, Ok(Err(SendError::NotProcessed(_))))
            && report.left.len() == 1
            && letters == 1,
        "sender: {sender:?}; report: {report:?}; dead letters: {letters}"
    );
}

/// The worker counterpart of the inline test above: a handler future whose `Drop` panics,
/// aborted with its worker at the shutdown deadline; the message is named in the report and
/// dead-lettered, and the sender hears `NotProcessed`. (Coverage: passes, the inline run
/// does not.)
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_drop_of_a_worker_call_stopped_at_shutdown_is_reported() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (_sub, mut entered) = stuck_pinger(&bus, true).await;
    bus.publish(Ping { n: 4 }).await.unwrap();
    assert_eq!(received(&mut entered, 1).await, [4]);
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    let letters = bus.dead_letters().unwrap().list().len();
    assert!(
        report.left.len() == 1 && letters == 1,
        "report: {report:?}; dead letters: {letters}"
    );
}

/// As the inline test above, with the sender gone before the deadline (the run goes on in a
/// task of its own): the command is still named in the report and dead-lettered.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_drop_of_a_detached_inline_run_stopped_at_shutdown_is_reported() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (_h, mut entered) = stuck_doubler(&bus, true).await;
    {
        let send = bus.send(Double { n: 4 });
        tokio::pin!(send);
        assert!(futures_util::poll!(send.as_mut()).is_pending());
    }
    assert_eq!(received(&mut entered, 1).await, [4]);
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    let letters = bus.dead_letters().unwrap().list().len();
    assert!(
        report.left.len() == 1 && letters == 1,
        "report: {report:?}; dead letters: {letters}"
    );
}
