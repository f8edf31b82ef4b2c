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
    /// Publishes one envelope, with the same promises as [`publish`](Self::publish) of a
    /// batch of one: resolves once the transport has accepted it (for durable transports:
    /// persisted under its durability mode), and an error says it was not accepted. The bus
    /// publishes through this method.
    ///
    /// The default calls `publish(vec![envelope])`. A transport overrides it where one
    /// envelope is cheaper without the batch's `Vec` (the embedded log). A wrapper that
    /// overrides `publish` to add behaviour must override this too (or leave the default,
    /// which goes through its `publish`), or the behaviour is skipped for single envelopes.
    fn publish_one(
        &self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        self.publish(vec![envelope])
    }
    /// Flushes pending publishes and closes, waiting at most until `deadline`.
    fn close(&self, deadline: Instant) -> impl Future<Output = Result<(), CloseError>> + Send;
    /// The largest payload, in bytes, this transport accepts, and whose limit that is (for
    /// the error message), or `None` when it sets none. The bus refuses a larger message
    /// with [`PublishError::TooLarge`] before handing it
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
    /// The message was not worked on here ([`HandBack`](crate::HandBack), a delayed message
    /// not due yet, one still queued at a stop): redeliver it (after `delay`, if given), and,
    /// where the transport can, do not count this delivery towards its bound on deliveries
    /// (the log's `max_deliver`). Default: [`nack`](Self::nack), which counts it (JetStream
    /// has no uncounted nak).
    fn hand_back(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.nack(delay)
    }
    /// How often whoever holds the delivery unsettled must call
    /// [`keep_alive`](Self::keep_alive) so the transport does not redeliver it meanwhile
    /// (a transport that redelivers after an ack wait). Default: `None`, never needed.
    fn keep_alive_every(&self) -> Option<Duration> {
        None
    }
    /// The delivery is still being worked on: its ack wait starts again (JetStream's
    /// "in progress"). A transport either does it at once and returns `None`, or returns a
    /// future, independent of the handle, that does it (the holder runs it, without waiting
    /// for it). Default: `None`, nothing to do.
    fn keep_alive(&self) -> Option<BoxFuture<'static, Result<(), TransportError>>> {
        None
    }
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
    /// When the transport handed it out (made it): where its ack wait started.
    handed_out: Option<Instant>,
}

impl Delivery {
    /// A delivery settled through `handle`.
    pub fn new(envelope: Envelope, handle: Box<dyn AckHandle>) -> Self {
        Self {
            envelope,
            handle: Some(handle),
            handed_out: Some(Instant::now()),
        }
    }

    /// A delivery that needs no settling (fire-and-forget transports).
    pub fn unacked(envelope: Envelope) -> Self {
        Self {
            envelope,
            handle: None,
            handed_out: None,
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

    /// Gives the message back without having worked on it, after `delay` if given
    /// ([`AckHandle::hand_back`]): redelivered, and not counted as a failed delivery where
    /// the transport can tell (the embedded log); on NATS it is a nak like any other.
    pub async fn hand_back(mut self, delay: Option<Duration>) -> Result<(), TransportError> {
        match self.handle.take() {
            Some(h) => h.hand_back(delay).await,
            None => Ok(()),
        }
    }

    /// How often the holder must call [`keep_alive`](Self::keep_alive) while the delivery
    /// is unsettled, when the transport redelivers after an ack wait
    /// ([`AckHandle::keep_alive_every`]). `None`: never needed.
    pub fn keep_alive_every(&self) -> Option<Duration> {
        self.handle.as_ref().and_then(|h| h.keep_alive_every())
    }

    /// When the transport handed the delivery out (when [`Delivery::new`] made it): about
    /// when its ack wait started. `None` for a delivery that needs no settling.
    pub fn handed_out_at(&self) -> Option<Instant> {
        self.handed_out
    }

    /// Tells the transport the message is still being worked on, so its ack wait starts
    /// again ([`AckHandle::keep_alive`]). `None` when there is nothing to do.
    pub fn keep_alive(&self) -> Option<BoxFuture<'static, Result<(), TransportError>>> {
        self.handle.as_ref().and_then(|h| h.keep_alive())
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
