//! Review rev1 (issue 18, the hot paths of the last stops), by attack: each test asserts what
//! docs/bus.md promises of a hot path the last stops rewrote. The tests here failed when they
//! were written (defects, left for a fix; each says so), beside the worker counterparts of
//! two of them, which pass. The attacks that found nothing add coverage in `rev1_coverage.rs`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Message, Outcome, SendError, Shared};
use tokio::sync::mpsc;

use crate::{Double, Ping, WAIT, received};

/// An event whose value counts how many of it are alive (a field the encoding skips), so a
/// test sees when the bus lets go of the value it carried beside the payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tracked {
    pub n: u64,
    pub tenant: String,
    /// Holds a count for as long as the value lives.
    #[serde(skip)]
    #[allow(dead_code)]
    pub alive: Option<Arc<()>>,
}
impl Message for Tracked {
    const TOPIC: &'static str = "rev1.tracked";
}

/// Waits (yielding, at most [`WAIT`]) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// docs/bus.md, `Shared<T>`: "The last holder can take the value out". A handler that keeps
/// the `Shared` it was given (here: sends it out) is its last holder once the publish has
/// settled everywhere. With an ordering key the publish is encoded and the value travels
/// beside the bytes; the queue then keeps the settled envelope for reuse (`queue.rs`
/// `State::complete`, `spent`) with its value inside, so the value stays held by the idle
/// queue. FAILED when written (defect).
#[tokio::test(flavor = "current_thread")]
async fn a_kept_shared_value_is_its_last_holder_once_the_publish_settled() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("keeper", move |t: Shared<Tracked>, _ctx| {
            let tx = tx.clone();
            async move {
                tx.send(t).map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
        })
        .ordering_header("tenant")
        .start()
        .await
        .unwrap();
    let alive = Arc::new(());
    bus.publish(Tracked {
        n: 1,
        tenant: "acme".into(),
        alive: Some(Arc::clone(&alive)),
    })
    .await
    .unwrap();
    let got = received(&mut rx, 1).await.pop().unwrap();
    bus.run_until_idle().await;
    // The worker completes the message in its queue as it goes back to wait for work.
    until("the worker waits again", || {
        bus.registry()
            .into_iter()
            .find(|s| s.name == "keeper")
            .is_some_and(|s| s.in_flight == 0)
    })
    .await;
    tokio::task::yield_now().await;
    assert_eq!(got.n, 1);
    match Shared::try_unwrap(got) {
        Ok(value) => assert_eq!(value.n, 1),
        Err(_) => panic!(
            "Shared::try_unwrap failed: the handler's Shared is not the last holder after \
             the publish settled"
        ),
    }
}

/// The same retention seen without `Shared`: a typed event carried beside its bytes (here,
/// next to a raw subscriber, which makes the publish encode) is not let go of once every
/// subscription handled it; up to 16 per idle queue (256 while busy) stay alive in the
/// queues' `spent` envelopes until later publishes push them out. FAILED when written.
#[tokio::test(flavor = "current_thread")]
async fn a_carried_value_is_dropped_once_every_subscription_handled_it() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _typed = bus
        .on("typed", move |t: Tracked, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(t.n);
                Ok::<_, String>(())
            }
        })
        .start()
        .await
        .unwrap();
    let _raw = bus
        .subscribe(
            "raw",
            "rev1.tracked",
            switchyard::handler_fn(|_env: switchyard::Envelope| async {
                Ok::<_, std::io::Error>(Outcome::Ack)
            }),
        )
        .start()
        .await
        .unwrap();
    let alive = Arc::new(());
    for n in 0..4 {
        bus.publish(Tracked {
            n,
            tenant: "acme".into(),
            alive: Some(Arc::clone(&alive)),
        })
        .await
        .unwrap();
    }
    assert_eq!(received(&mut rx, 4).await.len(), 4);
    bus.run_until_idle().await;
    until("the workers wait again", || {
        bus.registry().into_iter().all(|s| s.in_flight == 0)
    })
    .await;
    tokio::task::yield_now().await;
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "values of handled messages are still alive in the bus"
    );
}

/// A handler future whose `Drop` panics, stopped at the shutdown deadline while it runs on
/// its sender's task: the panic must stay in the bus (panic isolation, as for a worker,
/// `polls.rs`), the sender gets `NotProcessed`, not a panic of its own task.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_drop_of_an_inline_run_stopped_at_shutdown_does_not_reach_the_sender() {
    struct DropPanics;
    impl Drop for DropPanics {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("drop panics");
            }
        }
    }
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let _h = bus
        .handle(move |c: Double, _| {
            let tx = entered_tx.clone();
            async move {
                let _guard = DropPanics;
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
    struct DropPanics;
    impl Drop for DropPanics {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("drop panics");
            }
        }
    }
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let _sub = bus
        .on("dropper", move |p: Ping, _| {
            let tx = entered_tx.clone();
            async move {
                let _guard = DropPanics;
                let _ = tx.send(p.n);
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
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
    struct DropPanics;
    impl Drop for DropPanics {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("drop panics");
            }
        }
    }
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let _h = bus
        .handle(move |c: Double, _| {
            let tx = entered_tx.clone();
            async move {
                let _guard = DropPanics;
                let _ = tx.send(c.n);
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(c.n)
            }
        })
        .start()
        .await
        .unwrap();
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

/// A dead letter holds the message's bytes (docs/bus.md); the typed value the bus carried
/// beside them is of no use to it, and a dead-letter store bounded by bytes
/// (`DEFAULT_DEAD_LETTER_BYTES`) does not weigh it. Found kept: the letter's envelope still
/// holds the value (`DeadLetter::new` encodes the payload but leaves `local`).
#[tokio::test(flavor = "current_thread")]
async fn a_dead_letter_does_not_keep_the_typed_value_alive() {
    let bus = Bus::new();
    let _sub = bus
        .on("fails", |_t: Tracked, _ctx| async move {
            Ok::<_, String>(Outcome::reject("no"))
        })
        .start()
        .await
        .unwrap();
    let alive = Arc::new(());
    bus.publish(Tracked {
        n: 1,
        tenant: "acme".into(),
        alive: Some(Arc::clone(&alive)),
    })
    .await
    .unwrap();
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        &letters[0].envelope.payload[..],
        br#"{"n":1,"tenant":"acme"}"#
    );
    drop(letters);
    until("the worker waits again", || {
        bus.registry().into_iter().all(|s| s.in_flight == 0)
    })
    .await;
    tokio::task::yield_now().await;
    let held = Arc::strong_count(&alive);
    drop(bus.dead_letters().unwrap().drain());
    let after_drain = Arc::strong_count(&alive);
    assert_eq!(
        (held, after_drain),
        (1, 1),
        "holders of the value with the letter in the store, and once it was drained from it"
    );
}

/// docs/bus.md "Shutdown": queued and in-flight work drains *until the deadline*; what is
/// left is dead-lettered and named. An inline run is polled only by its sender's task, so a
/// sender that holds its `send` future without polling it for a while (here: it awaits the
/// shutdown itself; in an application, a `select!` loop busy in another branch) leaves the
/// run unpolled: at the deadline `abort_inline` wakes it, but nothing polls it, and
/// shutdown then waits for `inline_finished` with no deadline. A worker's message would be
/// aborted with its task. FAILED when written: the shutdown does not return.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_keeps_its_deadline_when_an_inline_runs_sender_does_not_poll_it() {
    let _clock = switchyard::testkit::VirtualClock::pause();
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
    assert!(matches!(send.await, Err(SendError::NotProcessed(_))));
}

/// A command handler whose handle is dropped while a command runs inline: its queue closes
/// and its idle workers exit, which forgets the subscription, though the inline run goes
/// on. docs/bus.md: dropping the handle unsubscribes and its queue is still drained; a later
/// shutdown drains in-flight work until its deadline, then dead-letters and names what is
/// left, and the sender gets `NotProcessed`. A worker holding the message would keep the
/// subscription known to the shutdown. FAILED when written: the shutdown neither waits for
/// nor names the run, and the sender is never answered.
#[tokio::test(flavor = "current_thread")]
async fn an_inline_run_of_a_dropped_handler_is_still_seen_by_shutdown() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let h = bus
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
    assert_eq!(received(&mut entered, 1).await, [4]);
    drop(h);
    // The idle worker sees its queue closed and exits: the bus forgets the subscription.
    until("the subscription is forgotten", || {
        bus.registry().iter().all(|s| s.name != "math.double")
    })
    .await;
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
}

/// The worker counterpart of the test above (coverage: passes): a message held by a worker
/// when its handle is dropped keeps the subscription known, and the shutdown names and
/// dead-letters it at its deadline.
#[tokio::test(flavor = "current_thread")]
async fn a_worker_message_of_a_dropped_handler_is_seen_by_shutdown() {
    let _clock = switchyard::testkit::VirtualClock::pause();
    let bus = Bus::new();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let sub = bus
        .on("dropped", move |p: Ping, _| {
            let tx = entered_tx.clone();
            async move {
                let _ = tx.send(p.n);
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
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
