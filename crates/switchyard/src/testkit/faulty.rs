//! A fault-injecting transport: wraps any transport and, on its way to the subscriber, drops,
//! delays and duplicates deliveries and makes acks fail, so a bus's (or an application's)
//! promises can be checked on a transport that misbehaves the way real ones do (a lost
//! delivery comes back after the ack wait, a redelivered message arrives twice, an ack is lost
//! on the wire).
//!
//! Faults are counted per [`FaultCounter`] (by default one per transport, all its
//! subscriptions together), 1-based: with `drop_every: Some(5)` the 5th, 10th, ... deliveries
//! are dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use switchyard_core::{
    AckHandle, BoxFuture, Capabilities, CloseError, Delivery, DeliveryStream, Envelope, Pattern,
    PublishError, Publisher, SubscribeError, Subscriber, TransportError, TransportErrorKind,
};

/// Which faults to inject. The default injects none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every n-th delivery is dropped unsettled before the subscriber sees it: the wrapped
    /// transport hands it out again after its ack wait.
    pub drop_every: Option<u64>,
    /// Every delivery is held this long before it is handed on.
    pub delay: Option<Duration>,
    /// Every n-th delivery is handed on twice (the copy settles nothing).
    pub duplicate_every: Option<u64>,
    /// Every n-th ack fails with an `Unavailable` error and is not passed on, so the wrapped
    /// transport hands the message out again after its ack wait.
    pub fail_ack_every: Option<u64>,
}

impl Faults {
    /// True when deliveries may reach the subscriber more than once (duplicates, failed acks).
    pub fn may_duplicate(&self) -> bool {
        self.duplicate_every.is_some() || self.fail_ack_every.is_some()
    }

    /// True when deliveries may reach the subscriber out of publish order (drops and failed
    /// acks bring a message back later, after others).
    pub fn may_reorder(&self) -> bool {
        self.drop_every.is_some() || self.fail_ack_every.is_some()
    }
}

/// How many faults were injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Deliveries dropped.
    pub dropped: u64,
    /// Deliveries handed on twice.
    pub duplicated: u64,
    /// Acks made to fail.
    pub failed_acks: u64,
}

#[derive(Debug, Default)]
struct State {
    deliveries: AtomicU64,
    acks: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    failed_acks: AtomicU64,
}

impl State {
    fn counts(&self) -> FaultCounts {
        FaultCounts {
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            failed_acks: self.failed_acks.load(Ordering::Relaxed),
        }
    }
}

fn hits(every: Option<u64>, n: u64) -> bool {
    matches!(every, Some(k) if k > 0 && n.is_multiple_of(k))
}

/// Counts (and numbers) the faults of every [`FaultyTransport`] it is given to: cheap to
/// clone, every clone is the same counter.
#[derive(Debug, Clone, Default)]
pub struct FaultCounter(Arc<State>);

impl FaultCounter {
    /// A fresh counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many faults were injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.0.counts()
    }
}

/// `T` with [`Faults`] injected between it and its subscribers. Publishing is passed through.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use switchyard::testkit::{FaultyTransport, Faults};
/// use switchyard_log::{LogConfig, LogTransport};
///
/// let dir = tempfile::tempdir()?;
/// let log = LogTransport::open(LogConfig::new(dir.path()).with_ack_wait(Duration::from_millis(200)))?;
/// // Every 3rd delivery is handed to the handler twice: it must be idempotent.
/// let faulty = FaultyTransport::new(log, Faults { duplicate_every: Some(3), ..Faults::default() });
/// let bus = switchyard::Bus::builder().transport(faulty.clone()).build()?;
/// # bus.shutdown(Duration::from_secs(1)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FaultyTransport<T> {
    inner: T,
    faults: Faults,
    state: Arc<State>,
}

impl<T> FaultyTransport<T> {
    /// Wraps `inner`, with a counter of its own.
    pub fn new(inner: T, faults: Faults) -> Self {
        Self::with_counter(inner, faults, FaultCounter::new())
    }

    /// Wraps `inner`, counting (and numbering) its faults on `counter`, which other faulty
    /// transports may share (e.g. the transports one test opens in turn).
    pub fn with_counter(inner: T, faults: Faults, counter: FaultCounter) -> Self {
        Self {
            inner,
            faults,
            state: counter.0,
        }
    }

    /// The counter this transport's faults are counted on.
    pub fn counter(&self) -> FaultCounter {
        FaultCounter(self.state.clone())
    }

    /// The faults this transport injects.
    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// How many faults were injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.state.counts()
    }
}

impl<T: Publisher> Publisher for FaultyTransport<T> {
    fn publish(
        &self,
        batch: Vec<Envelope>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        self.inner.publish(batch)
    }

    /// Passed through to the wrapped transport's own `publish_one`, as `publish` is (the
    /// faults are on deliveries and acks, not on publishing), so the wrapped transport
    /// keeps its single-envelope path under the bus.
    fn publish_one(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        self.inner.publish_one(envelope)
    }

    fn close(&self, deadline: Instant) -> impl Future<Output = Result<(), CloseError>> + Send {
        self.inner.close(deadline)
    }

    /// The wrapped transport's limit, so the bus refuses a larger message up front as it
    /// would without the wrapper.
    fn max_message_bytes(&self) -> Option<(usize, &'static str)> {
        self.inner.max_message_bytes()
    }
}

impl<T: Subscriber> Subscriber for FaultyTransport<T> {
    type Stream = DeliveryStream;

    fn subscribe(
        &self,
        pattern: &Pattern,
        group: Option<&str>,
    ) -> impl Future<Output = Result<DeliveryStream, SubscribeError>> + Send {
        let inner = self.inner.subscribe(pattern, group);
        let (faults, state) = (self.faults, self.state.clone());
        async move {
            let stream = inner.await?;
            let faulty = stream
                .then(move |d| pass(faults, state.clone(), d))
                .flat_map(futures_util::stream::iter);
            Ok(DeliveryStream::new(faulty))
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = self.inner.capabilities();
        if self.faults.may_reorder() {
            c.ordered = false;
        }
        c
    }

    /// The wrapped transport's: the faults are on deliveries and acks, and commands across
    /// processes are neither, so they pass through untouched (hiding the capability would
    /// keep a faulty NATS bus's commands in process).
    fn remote_commands(&self) -> Option<&dyn switchyard_core::RemoteCommands> {
        self.inner.remote_commands()
    }
}

async fn pass(faults: Faults, state: Arc<State>, d: Delivery) -> Vec<Delivery> {
    let n = state.deliveries.fetch_add(1, Ordering::Relaxed) + 1;
    if hits(faults.drop_every, n) {
        state.dropped.fetch_add(1, Ordering::Relaxed);
        drop(d);
        return Vec::new();
    }
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    let envelope = d.envelope.clone();
    let wrapped = Delivery::new(
        envelope.clone(),
        Box::new(FaultyAck {
            inner: d,
            faults,
            state: state.clone(),
        }),
    );
    if hits(faults.duplicate_every, n) {
        state.duplicated.fetch_add(1, Ordering::Relaxed);
        vec![wrapped, Delivery::unacked(envelope)]
    } else {
        vec![wrapped]
    }
}

struct FaultyAck {
    inner: Delivery,
    faults: Faults,
    state: Arc<State>,
}

impl AckHandle for FaultyAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let n = self.state.acks.fetch_add(1, Ordering::Relaxed) + 1;
        if hits(self.faults.fail_ack_every, n) {
            self.state.failed_acks.fetch_add(1, Ordering::Relaxed);
            // The inner delivery is dropped unsettled: the wrapped transport redelivers it.
            return Box::pin(async {
                Err(TransportError::new(
                    TransportErrorKind::Unavailable,
                    "injected fault: the ack was lost",
                ))
            });
        }
        Box::pin(self.inner.ack())
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(self.inner.nack(delay))
    }

    fn hand_back(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(self.inner.hand_back(delay))
    }

    fn term(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move { self.inner.term(&reason).await })
    }
}
