//! Running the bus on a transport (the embedded log, NATS) instead of purely in memory.
//!
//! With a transport, `publish` hands events to the transport and returns once it accepted
//! them (for the log under `Durability::Always`: once they are on disk). Each event
//! subscription opens a transport subscription whose consumer group is the subscription's
//! name (or, for an ephemeral subscription, no group), and a *pump* task feeds what arrives into the subscription's local queue, which then
//! acts as a bounded prefetch window. After handling, the delivery is acked (handled) or
//! terminated (dead-lettered); a message not handled (shutdown deadline, crash) is never
//! settled, so the transport redelivers it.
//!
//! Commands and requests go to a handler in this process when the bus has one; otherwise,
//! when the transport can carry commands across processes (its
//! [`remote_commands`](Subscriber::remote_commands), e.g. NATS), to one of the processes
//! serving the topic, and each command handler registered here also serves the topic for
//! the other processes. On a transport without that capability they stay in process.

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use switchyard_core::{
    BoxFuture, Capabilities, CloseError, Delivery, Envelope, Pattern, PublishError, Publisher,
    RemoteCommands, SubscribeError, Subscriber,
};

/// The object-safe face of a transport, so the bus can hold one chosen at run time.
pub(crate) trait ErasedTransport: Send + Sync + 'static {
    fn publish(&self, env: Envelope) -> BoxFuture<'_, Result<(), PublishError>>;
    fn subscribe<'a>(
        &'a self,
        pattern: &'a Pattern,
        group: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Delivery>, SubscribeError>>;
    fn close(&self, deadline: std::time::Instant) -> BoxFuture<'_, Result<(), CloseError>>;
    fn capabilities(&self) -> Capabilities;
    fn max_message_bytes(&self) -> Option<(usize, &'static str)>;
    fn remote_commands(&self) -> Option<&dyn RemoteCommands>;
}

impl<T: Publisher + Subscriber> ErasedTransport for T {
    fn publish(&self, env: Envelope) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(Publisher::publish_one(self, env))
    }

    fn subscribe<'a>(
        &'a self,
        pattern: &'a Pattern,
        group: Option<&'a str>,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Delivery>, SubscribeError>> {
        Box::pin(async move { Ok(Subscriber::subscribe(self, pattern, group).await?.boxed()) })
    }

    fn close(&self, deadline: std::time::Instant) -> BoxFuture<'_, Result<(), CloseError>> {
        Box::pin(Publisher::close(self, deadline))
    }

    fn capabilities(&self) -> Capabilities {
        Subscriber::capabilities(self)
    }

    fn max_message_bytes(&self) -> Option<(usize, &'static str)> {
        Publisher::max_message_bytes(self)
    }

    fn remote_commands(&self) -> Option<&dyn RemoteCommands> {
        Subscriber::remote_commands(self)
    }
}
