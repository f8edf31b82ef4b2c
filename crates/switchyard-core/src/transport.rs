//! The transport contract: one publisher/subscriber trait pair that memory, the embedded log and
//! NATS JetStream implement, so the bus API stays the same whichever carries the messages.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_core::Stream;

use crate::envelope::Envelope;
use crate::error::{CloseError, PublishError, SubscribeError, TransportError};
use crate::remote::RemoteCommands;
use crate::topic::Pattern;

/// A boxed, sendable future (what object-safe transport handles return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a transport can promise. The conformance suite skips what a transport lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Messages survive a process restart.
    pub durable: bool,
    /// Messages of one topic (or ordering key) arrive in publish order.
    pub ordered: bool,
    /// Several subscribers may share one group; each message goes to one member.
    pub consumer_groups: bool,
    /// Subscriptions may use `*` and `#`.
    pub wildcards: bool,
    /// Messages may be scheduled for later delivery.
    pub delayed_delivery: bool,
    /// The transport drops duplicate message ids within a window.
    pub dedup: bool,
}

/// Publishes batches of envelopes. `publish` resolves once the transport has accepted the batch
/// (for durable transports: persisted under its durability mode).
pub trait Publisher: Send + Sync + 'static {
    /// Publishes a batch; either all are accepted or an error says none were.
    fn publish(
        &self,
        batch: Vec<Envelope>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// Flushes pending publishes and closes, waiting at most until `deadline`.
    fn close(&self, deadline: Instant) -> impl Future<Output = Result<(), CloseError>> + Send;
    /// The largest payload, in bytes, this transport accepts, and whose limit that is (for
    /// the error message), or `None` when it sets none. The bus refuses a larger message
    /// with [`PublishError::TooLarge`](crate::PublishError::TooLarge) before handing it
    /// over, so a publish fails at once instead of at the broker.
    fn max_message_bytes(&self) -> Option<(usize, &'static str)> {
        None
    }
}

/// Opens subscriptions that yield [`Delivery`]s.
pub trait Subscriber: Send + Sync + 'static {
    /// The stream of deliveries of one subscription.
    type Stream: Stream<Item = Delivery> + Send + Unpin + 'static;
    /// Subscribes to `pattern`, optionally as a member of consumer `group`.
    fn subscribe(
        &self,
        pattern: &Pattern,
        group: Option<&str>,
    ) -> impl Future<Output = Result<Self::Stream, SubscribeError>> + Send;
    /// What this transport can promise.
    fn capabilities(&self) -> Capabilities;
    /// Commands and requests across processes, when this transport can carry them (see
    /// [`RemoteCommands`]). Default: `None`, so commands stay in the sender's process.
    fn remote_commands(&self) -> Option<&dyn RemoteCommands> {
        None
    }
}

/// The transport side of settling one delivery. Implemented by each transport.
pub trait AckHandle: Send + 'static {
    /// The message is done.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>>;
    /// The message failed; redeliver it (after `delay`, if given).
    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
    /// The message must never be redelivered.
    fn term(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>>;
}

/// A boxed stream of deliveries: a subscription type transports can share instead of each
/// wrapping its own stream.
pub struct DeliveryStream {
    inner: Pin<Box<dyn Stream<Item = Delivery> + Send>>,
}

impl DeliveryStream {
    /// Boxes `stream`.
    pub fn new(stream: impl Stream<Item = Delivery> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for DeliveryStream {
    type Item = Delivery;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Delivery>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for DeliveryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryStream").finish_non_exhaustive()
    }
}

/// One message handed out by a transport. Settle it with [`ack`](Self::ack),
/// [`nack`](Self::nack) or [`term`](Self::term); dropping it unsettled means redelivery on
/// durable transports.
pub struct Delivery {
    /// The message.
    pub envelope: Envelope,
    handle: Option<Box<dyn AckHandle>>,
}

impl Delivery {
    /// A delivery settled through `handle`.
    pub fn new(envelope: Envelope, handle: Box<dyn AckHandle>) -> Self {
        Self {
            envelope,
            handle: Some(handle),
        }
    }

    /// A delivery that needs no settling (fire-and-forget transports).
    pub fn unacked(envelope: Envelope) -> Self {
        Self {
            envelope,
            handle: None,
        }
    }

    /// Marks the message done.
    pub async fn ack(mut self) -> Result<(), TransportError> {
        match self.handle.take() {
            Some(h) => h.ack().await,
            None => Ok(()),
        }
    }

    /// Asks for redelivery, after `delay` if given.
    pub async fn nack(mut self, delay: Option<Duration>) -> Result<(), TransportError> {
        match self.handle.take() {
            Some(h) => h.nack(delay).await,
            None => Ok(()),
        }
    }

    /// Settles the message for good without handling it.
    pub async fn term(mut self, reason: &str) -> Result<(), TransportError> {
        match self.handle.take() {
            Some(h) => h.term(reason.to_owned()).await,
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .field("settleable", &self.handle.is_some())
            .finish()
    }
}
