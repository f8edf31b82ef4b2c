//! A subscription removed (its handle dropped) while its pump holds a transport delivery the
//! closed queue can no longer take: that delivery was never handled, so it goes back to the
//! transport as a hand-back (not a failed delivery, `AckHandle::hand_back`), and when it comes
//! back to a subscription of the same name in this process its attempt number does not count
//! that delivery.
//!
//! Before the fix the pump dropped the delivery unsettled: the embedded log counted it towards
//! `max_deliver` and numbered the next delivery one higher, so a handler that rejects a
//! message was dead-lettered "after 2 attempt(s)" having run once (the model test
//! `review_rev28::on_log` met it under load when a group's only member left and another joined).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::channel::mpsc as fmpsc;
use switchyard::{
    AckHandle, BoxError, BoxFuture, Bus, Capabilities, CloseError, Delivery, DeliveryStream,
    Envelope, Outcome, Pattern, PublishError, Publisher, SubscribeError, Subscriber, Topic,
    TransportError, handler_fn,
};
use tokio::sync::Notify;

use crate::WAIT;
use crate::shutdown_race::Reader;

/// How each delivery was settled, by payload: `ack`, `nack`, `hand_back`, `term`, or
/// `dropped` (the handle dropped unsettled).
type Settles = Arc<Mutex<Vec<(String, &'static str)>>>;

/// A transport the test feeds by hand; it records how each delivery is settled and how many
/// deliveries its reader has handed to the bus.
#[derive(Clone, Default)]
struct Feed {
    reader: Arc<Mutex<Option<fmpsc::UnboundedSender<Delivery>>>>,
    yielded: Arc<AtomicUsize>,
    settles: Settles,
    sent: Arc<Mutex<std::collections::HashMap<String, Envelope>>>,
}

impl Feed {
    /// Hands the bus a delivery of `payload` numbered `attempt` by the transport.
    fn deliver(&self, payload: &str, attempt: u32) {
        // the same message (id) each time the same payload is delivered
        let mut env = self
            .sent
            .lock()
            .unwrap()
            .entry(payload.to_owned())
            .or_insert_with(|| {
                Envelope::new(
                    Topic::new("jobs.removed").unwrap(),
                    payload.as_bytes().to_vec(),
                )
            })
            .clone();
        env.delivery.attempt = attempt;
        let handle = Settle {
            payload: payload.to_owned(),
            settles: self.settles.clone(),
            settled: false,
        };
        let reader = self.reader.lock().unwrap().clone().expect("a reader");
        reader
            .unbounded_send(Delivery::new(env, Box::new(handle)))
            .unwrap();
    }

    fn settled(&self, payload: &str) -> Vec<&'static str> {
        let s = self.settles.lock().unwrap();
        s.iter()
            .filter(|(p, _)| p == payload)
            .map(|(_, h)| *h)
            .collect()
    }
}

struct Settle {
    payload: String,
    settles: Settles,
    settled: bool,
}

impl Settle {
    fn record(mut self, how: &'static str) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        self.settles
            .lock()
            .unwrap()
            .push((self.payload.clone(), how));
        Box::pin(async { Ok(()) })
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if !self.settled {
            self.settles
                .lock()
                .unwrap()
                .push((self.payload.clone(), "dropped"));
        }
    }
}

impl AckHandle for Settle {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        Settle::record(*self, "ack")
    }
    fn nack(
        self: Box<Self>,
        _: Option<std::time::Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Settle::record(*self, "nack")
    }
    fn hand_back(
        self: Box<Self>,
        _: Option<std::time::Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Settle::record(*self, "hand_back")
    }
    fn term(self: Box<Self>, _: String) -> BoxFuture<'static, Result<(), TransportError>> {
        Settle::record(*self, "term")
    }
}

impl Publisher for Feed {
    async fn publish(&self, _: Vec<Envelope>) -> Result<(), PublishError> {
        Ok(())
    }
    async fn close(&self, _: Instant) -> Result<(), CloseError> {
        Ok(())
    }
}

impl Subscriber for Feed {
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
            gone: Arc::default(),
            yielded: self.yielded.clone(),
        }))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

/// Polls `done` until it holds, at most [`WAIT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_a_removed_subscription_never_queued_is_handed_back_and_no_attempt() {
    let feed = Feed::default();
    let bus = Bus::builder().transport(feed.clone()).build().unwrap();
    let calls: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handler = {
        let (calls, entered, release) = (calls.clone(), entered.clone(), release.clone());
        handler_fn(move |env: Envelope| {
            let (calls, entered, release) = (calls.clone(), entered.clone(), release.clone());
            async move {
                let payload = String::from_utf8_lossy(&env.payload).into_owned();
                calls
                    .lock()
                    .unwrap()
                    .push((payload.clone(), env.delivery.attempt));
                if payload == "one" {
                    entered.notify_one();
                    release.notified().await;
                }
                Ok::<_, BoxError>(Outcome::Ack)
            }
        })
    };
    let sub = bus
        .subscribe("worker", "jobs.#", handler.clone())
        .workers(1)
        .queue_capacity(1)
        .start()
        .await
        .unwrap();
    // "one" in the handler, "two" in the queue (full), "three" held by the pump
    feed.deliver("one", 1);
    tokio::time::timeout(WAIT, entered.notified())
        .await
        .unwrap();
    feed.deliver("two", 1);
    wait_until("two is queued", || sub.info().depth == 1).await;
    feed.deliver("three", 1);
    wait_until("the pump took three", || {
        feed.yielded.load(Ordering::SeqCst) == 3
    })
    .await;
    drop(sub);
    wait_until("three is settled", || !feed.settled("three").is_empty()).await;
    release.notify_one();
    wait_until("two is settled", || !feed.settled("two").is_empty()).await;
    assert_eq!(
        feed.settled("three"),
        ["hand_back"],
        "the delivery the closed queue refused, never handled: {:?}",
        feed.settles.lock().unwrap()
    );
    assert_eq!(feed.settled("one"), ["ack"]);
    assert_eq!(feed.settled("two"), ["ack"], "the queue is drained");

    // The transport delivers it again, numbered 2, to a subscription of the same name.
    let again = bus
        .subscribe("worker", "jobs.#", handler)
        .start()
        .await
        .unwrap();
    feed.deliver("three", 2);
    wait_until("three is handled again", || {
        feed.settled("three").len() == 2
    })
    .await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            ("one".to_owned(), 1),
            ("two".to_owned(), 1),
            ("three".to_owned(), 1)
        ],
        "three's first call is attempt 1"
    );
    assert_eq!(again.stats().retried, 0, "a hand-back is not a retry");
    drop(again);
    bus.shutdown(WAIT).await.unwrap();
}
