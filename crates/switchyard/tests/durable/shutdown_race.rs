//! Transport deliveries racing the shutdown: accepted means handled or named by the report.
//!
//! The shutdown waits for the deliveries its transport still owes (counted at publish time)
//! before it stops reading. A publish that passed the running check before the shutdown began,
//! but counted its delivery only after the shutdown had looked (and found none owed), used to
//! be accepted (`Ok`) and then lost: its delivery came back after the pumps stopped, and the
//! report did not name it. The conformance suite's racing-publishers test hit it about once in
//! a hundred runs under load (`faulty::memory::dropped`); this test holds the publisher in that
//! window with a publish hook, so it fails every time without the fix.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use futures::channel::mpsc as fmpsc;
use switchyard::{
    AckHandle, BoxFuture, Bus, Capabilities, CloseError, Delivery, DeliveryStream, Envelope,
    Outcome, Pattern, PublishError, Publisher, SubscribeError, Subscriber, Topic, TransportError,
    handler_fn,
};
use tokio::sync::Notify;

use crate::WAIT;

/// A transport that keeps nothing (a delivery whose reader is gone is lost, as in memory),
/// says when its reader is dropped (the bus's pump stopped), and closes only when let.
#[derive(Clone, Default)]
struct Gate {
    reader: Arc<Mutex<Option<fmpsc::UnboundedSender<Delivery>>>>,
    reader_gone: Arc<AtomicBool>,
    /// Deliveries the reader has handed to the bus.
    yielded: Arc<AtomicUsize>,
    published: Arc<Mutex<Vec<String>>>,
    may_close: Arc<Notify>,
}

struct Acked;

impl AckHandle for Acked {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }
    fn nack(
        self: Box<Self>,
        _: Option<std::time::Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }
    fn term(self: Box<Self>, _: String) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async { Ok(()) })
    }
}

impl Publisher for Gate {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<(), PublishError> {
        let reader = self.reader.lock().unwrap().clone();
        for mut env in batch {
            self.published.lock().unwrap().push(env.id.to_string());
            env.delivery.attempt = 1;
            if let Some(tx) = &reader {
                // A reader that is gone loses it: this transport keeps nothing.
                let _ = tx.unbounded_send(Delivery::new(env, Box::new(Acked)));
            }
        }
        Ok(())
    }
    async fn close(&self, _: Instant) -> Result<(), CloseError> {
        self.may_close.notified().await;
        Ok(())
    }
}

/// The reader's stream, counting the deliveries it yields and flagging its drop (also the
/// hand-fed transport's of `removed_queue.rs`).
pub(crate) struct Reader {
    pub(crate) rx: fmpsc::UnboundedReceiver<Delivery>,
    pub(crate) gone: Arc<AtomicBool>,
    pub(crate) yielded: Arc<AtomicUsize>,
}

impl Stream for Reader {
    type Item = Delivery;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Delivery>> {
        let next = std::pin::Pin::new(&mut self.rx).poll_next(cx);
        if let Poll::Ready(Some(_)) = &next {
            self.yielded.fetch_add(1, Ordering::SeqCst);
        }
        next
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::SeqCst);
    }
}

impl Subscriber for Gate {
    type Stream = DeliveryStream;
    async fn subscribe(
        &self,
        _: &Pattern,
        _: Option<&str>,
    ) -> Result<DeliveryStream, SubscribeError> {
        let (tx, rx) = fmpsc::unbounded();
        *self.reader.lock().unwrap() = Some(tx);
        Ok(DeliveryStream::new(Reader {
            rx,
            gone: self.reader_gone.clone(),
            yielded: self.yielded.clone(),
        }))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_counts_its_delivery_after_the_shutdown_looked_is_refused_not_lost() {
    let gate = Gate::default();
    let in_hook = Arc::new(Notify::new());
    let (hook_entered, reader_gone) = (in_hook.clone(), gate.reader_gone.clone());
    let bus = Bus::builder()
        .transport(gate.clone())
        // Holds the publish of "late" after its running check, until the shutdown has
        // stopped reading from the transport (so it looked for owed deliveries before).
        .publish_hook(move |env| {
            if env.payload.as_ref() == b"late" {
                hook_entered.notify_one();
                let until = Instant::now() + WAIT;
                tokio::task::block_in_place(|| {
                    while !reader_gone.load(Ordering::SeqCst) {
                        assert!(Instant::now() < until, "the shutdown never stopped reading");
                        std::thread::yield_now();
                    }
                });
            }
            Ok(())
        })
        .build()
        .unwrap();
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = handled.clone();
    let _sub = bus
        .subscribe(
            "worker",
            "race.#",
            handler_fn(move |env: Envelope| {
                seen.lock().unwrap().push(env.id.to_string());
                std::future::ready(Ok::<_, std::convert::Infallible>(Outcome::Ack))
            }),
        )
        .start()
        .await
        .unwrap();
    let late = Envelope::new(Topic::new("race.one").unwrap(), "late");
    let late_id = late.id.to_string();
    let publisher = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish_envelope(late).await }
    });
    tokio::time::timeout(WAIT, in_hook.notified())
        .await
        .expect("the publish reaches its hook");
    let shutdown = tokio::spawn({
        let bus = bus.clone();
        async move { bus.shutdown(WAIT).await }
    });
    let published = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publish returns while the shutdown is under way")
        .unwrap();
    gate.may_close.notify_one();
    let report = tokio::time::timeout(WAIT * 2, shutdown)
        .await
        .expect("the shutdown returns")
        .unwrap()
        .unwrap();
    let handled = handled.lock().unwrap().clone();
    match published {
        Ok(()) => assert!(
            handled.contains(&late_id)
                || report
                    .left
                    .iter()
                    .chain(&report.nacked)
                    .any(|id| id.to_string() == late_id),
            "the publish was accepted, but its message was neither handled nor named by the \
             shutdown report: lost ({report:?}, handled {handled:?})"
        ),
        Err(e) => {
            assert!(
                matches!(e, PublishError::ShuttingDown),
                "refused with {e:?}"
            );
            assert!(
                !gate.published.lock().unwrap().contains(&late_id),
                "a refused publish reached the transport"
            );
        }
    }
}

/// A delivery the bus's pump has taken from the transport but not queued yet (the queue is
/// full) when the shutdown closes the queue: the shutdown waited for it to arrive, not to be
/// queued, so it is dropped unsettled, given back to a transport that may keep nothing. The
/// report names it as handed back, as it names the queued and in-flight ones. (Without that
/// the conformance suite's racing-publishers test lost one in about 400 runs under load.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_pump_holds_when_the_queue_closes_is_named_as_handed_back() {
    let gate = Gate::default();
    gate.may_close.notify_one();
    let bus = Bus::builder().transport(gate.clone()).build().unwrap();
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let _sub = bus
        .subscribe(
            "worker",
            "race.#",
            handler_fn(move |_env: Envelope| {
                let s = s.clone();
                async move {
                    s.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<_, std::convert::Infallible>(Outcome::Ack)
                }
            }),
        )
        .queue_capacity(1)
        .start()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (i, text) in ["in flight", "queued", "held by the pump"]
        .into_iter()
        .enumerate()
    {
        let env = Envelope::new(Topic::new("race.one").unwrap(), text);
        ids.push(env.id.clone());
        bus.publish_envelope(env).await.unwrap();
        if i == 0 {
            tokio::time::timeout(WAIT, started.notified())
                .await
                .expect("the handler takes the first message");
        }
    }
    // The third is in the pump's hands once the reader gave it out (the pump takes the next
    // only after it queued this one, and the queue is full).
    tokio::time::timeout(WAIT, async {
        while gate.yielded.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the reader gives out all three");
    let report = bus
        .shutdown(std::time::Duration::from_millis(200))
        .await
        .unwrap();
    for (id, what) in ids.iter().zip(["in flight", "queued", "held by the pump"]) {
        assert!(
            report.nacked.contains(id) || report.left.contains(id),
            "the message {what} was not named by the shutdown report: {report:?}"
        );
    }
}
