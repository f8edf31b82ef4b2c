//! The bus hands each event to its transport through `Publisher::publish_one`: a transport
//! that overrides it gets single envelopes there (the log, without a batch `Vec`), one that
//! only implements `publish` gets them through `publish` (the default), and the testkit's
//! `FaultyTransport` passes `publish_one` through to what it wraps while still injecting its
//! faults on the deliveries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::channel::mpsc as fmpsc;
use switchyard::testkit::{Faults, FaultyTransport};
use switchyard::{
    AckHandle, BoxFuture, Bus, Capabilities, CloseError, Delivery, DeliveryStream, Envelope,
    Pattern, PublishError, Publisher, SubscribeError, Subscriber, TransportError,
    TransportErrorKind,
};
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::mpsc;

use crate::{Job, WAIT};

/// Counts which of its two publish methods was called; delivers what it is given to its one
/// subscriber. With `refuse_batches`, its `publish` refuses everything (the behaviour a
/// wrapper adds in `publish`), and `override_one` says whether it has a `publish_one` of its
/// own.
#[derive(Clone, Default)]
struct Counting {
    batches: Arc<AtomicUsize>,
    ones: Arc<AtomicUsize>,
    override_one: bool,
    refuse_batches: bool,
    subscriber: Arc<Mutex<Option<fmpsc::UnboundedSender<Delivery>>>>,
}

struct NoAck;

impl AckHandle for NoAck {
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

impl Counting {
    fn deliver(&self, mut env: Envelope) {
        env.delivery.attempt = 1;
        if let Some(tx) = self.subscriber.lock().unwrap().as_ref() {
            let _ = tx.unbounded_send(Delivery::new(env, Box::new(NoAck)));
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.batches.load(Ordering::SeqCst),
            self.ones.load(Ordering::SeqCst),
        )
    }
}

impl Publisher for Counting {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<(), PublishError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        if self.refuse_batches {
            return Err(
                TransportError::new(TransportErrorKind::Rejected, "refused by publish").into(),
            );
        }
        for env in batch {
            self.deliver(env);
        }
        Ok(())
    }

    async fn publish_one(&self, envelope: Envelope) -> Result<(), PublishError> {
        if !self.override_one {
            // What the trait's default does (a transport without its own `publish_one`).
            return self.publish(vec![envelope]).await;
        }
        self.ones.fetch_add(1, Ordering::SeqCst);
        self.deliver(envelope);
        Ok(())
    }

    async fn close(&self, _: Instant) -> Result<(), CloseError> {
        Ok(())
    }
}

impl Subscriber for Counting {
    type Stream = DeliveryStream;
    async fn subscribe(
        &self,
        _: &Pattern,
        _: Option<&str>,
    ) -> Result<DeliveryStream, SubscribeError> {
        let (tx, rx) = fmpsc::unbounded();
        *self.subscriber.lock().unwrap() = Some(tx);
        Ok(DeliveryStream::new(rx))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

/// Only implements `publish` (no `publish_one` of its own): the trait's default is used.
#[derive(Clone)]
struct PublishOnly(Counting);

impl Publisher for PublishOnly {
    fn publish(
        &self,
        batch: Vec<Envelope>,
    ) -> impl std::future::Future<Output = Result<(), PublishError>> + Send {
        self.0.publish(batch)
    }
    fn close(
        &self,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<(), CloseError>> + Send {
        self.0.close(deadline)
    }
}

impl Subscriber for PublishOnly {
    type Stream = DeliveryStream;
    fn subscribe(
        &self,
        pattern: &Pattern,
        group: Option<&str>,
    ) -> impl std::future::Future<Output = Result<DeliveryStream, SubscribeError>> + Send {
        self.0.subscribe(pattern, group)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

async fn handled_by_worker(bus: &Bus) -> (switchyard::Subscription, mpsc::UnboundedReceiver<u64>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on("worker", move |job: Job, _| {
            let tx = tx.clone();
            async move { tx.send(job.n).map_err(|e| e.to_string()) }
        })
        .start()
        .await
        .unwrap();
    (sub, rx)
}

async fn received(rx: &mut mpsc::UnboundedReceiver<u64>, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(v)) => got.push(v),
            other => panic!("only {got:?} of {n} handled: {other:?}"),
        }
    }
    got.sort_unstable();
    got
}

/// The bus publishes each event through the transport's `publish_one` (its single-envelope
/// path), not through `publish` of a batch of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_publishes_through_publish_one() {
    let transport = Counting {
        override_one: true,
        ..Counting::default()
    };
    let bus = Bus::builder().transport(transport.clone()).build().unwrap();
    let (_sub, mut rx) = handled_by_worker(&bus).await;
    for n in 0..3 {
        bus.publish(Job { n }).await.unwrap();
    }
    assert_eq!(received(&mut rx, 3).await, vec![0, 1, 2]);
    assert_eq!(
        transport.counts(),
        (0, 3),
        "(publish calls, publish_one calls)"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// A transport (or wrapper) that only implements `publish` keeps its behaviour under the bus:
/// the default `publish_one` goes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_with_only_publish_gets_the_bus_publishes_there() {
    let inner = Counting {
        refuse_batches: true,
        ..Counting::default()
    };
    let bus = Bus::builder()
        .transport(PublishOnly(inner.clone()))
        .build()
        .unwrap();
    let err = bus.publish(Job { n: 1 }).await.unwrap_err();
    assert!(
        err.to_string().contains("refused by publish"),
        "the transport's publish refused it: {err}"
    );
    assert_eq!(inner.counts(), (1, 0));
    bus.shutdown(WAIT).await.unwrap();
}

/// `FaultyTransport` passes `publish_one` through to the wrapped transport's own (so the log
/// keeps its single-envelope path under a faulty test bus), like `publish`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faulty_transport_passes_publish_one_through() {
    let inner = Counting {
        override_one: true,
        ..Counting::default()
    };
    let faulty = FaultyTransport::new(inner.clone(), Faults::default());
    let bus = Bus::builder().transport(faulty).build().unwrap();
    let (_sub, mut rx) = handled_by_worker(&bus).await;
    bus.publish(Job { n: 7 }).await.unwrap();
    assert_eq!(received(&mut rx, 1).await, vec![7]);
    assert_eq!(inner.counts(), (0, 1), "(publish calls, publish_one calls)");
    bus.shutdown(WAIT).await.unwrap();
}

/// On the log, with publishes going through its `publish_one`, the faulty transport still
/// injects its faults on the deliveries: every delivery handed on twice here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_injected_on_a_log_published_to_through_publish_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
    let faulty = FaultyTransport::new(
        log.clone(),
        Faults {
            duplicate_every: Some(1),
            ..Faults::default()
        },
    );
    let bus = Bus::builder().transport(faulty.clone()).build().unwrap();
    let (_sub, mut rx) = handled_by_worker(&bus).await;
    for n in 0..3 {
        bus.publish(Job { n }).await.unwrap();
    }
    // Each job reaches the handler from its delivery and again from its duplicate.
    assert_eq!(received(&mut rx, 6).await, vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(faulty.counts().duplicated, 3);
    assert_eq!(
        log.stats().records,
        3,
        "each job written once, through publish_one"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// The faulty transport wraps the log's limits too: the bus reads the wrapped transport's
/// `max_message_bytes` and refuses a larger message up front, naming the log's limit, and
/// nothing is written (log18's noticed list: `FaultyTransport` did not pass it on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faulty_transport_passes_the_wrapped_transports_size_limit_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LogConfig::new(dir.path());
    config.max_record_bytes = 1024;
    let log = LogTransport::open(config).unwrap();
    let faulty = FaultyTransport::new(log.clone(), Faults::default());
    assert_eq!(
        Publisher::max_message_bytes(&faulty),
        Publisher::max_message_bytes(&log),
        "the wrapper's limit is the wrapped transport's"
    );
    let bus = Bus::builder().transport(faulty).build().unwrap();
    let (_sub, _rx) = handled_by_worker(&bus).await;
    let big = Envelope::new(
        switchyard::Topic::new("jobs.big").unwrap(),
        vec![b'x'; 4096],
    );
    match bus.publish_envelope(big).await {
        Err(PublishError::TooLarge(e)) => {
            assert_eq!(e.limit, 1024, "{e}");
            assert_eq!(
                Some(e.limit_of),
                Publisher::max_message_bytes(&log).map(|(_, of)| of),
                "{e}"
            );
        }
        other => panic!("not TooLarge: {other:?}"),
    }
    assert_eq!(log.stats().records, 0, "nothing written");
    bus.shutdown(WAIT).await.unwrap();
}
