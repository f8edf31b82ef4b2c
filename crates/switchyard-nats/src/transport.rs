//! [`NatsTransport`]: the handle users and the bus hold; implements the core transport traits
//! over JetStream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{Publish, PublishErrorKind};
use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, Subject};
use futures::{Stream, StreamExt};
use switchyard_core::{
    AckHandle, BoxFuture, Capabilities, CloseError, DeadLetter, DeadLetterReason, DeadLetterRoute,
    Delivery, Envelope, InMemoryDeadLetters, MessageId, Pattern, PublishError, Publisher,
    SubscribeError, Subscriber, Topic, TransportError, TransportErrorKind,
};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::codec;
use crate::config::{NatsConfig, Storage};
use crate::error::ConnectError;
use crate::subject::{overlap, pattern_subjects, sanitize_name, subject_subset, topic_subject};

mod admin;
mod dead_letters;
mod durable;
mod max_payload;
mod retention;
mod streams;
mod subscribe;
mod worker;
use max_payload::MAX_PAYLOAD;
pub(crate) use max_payload::MaxPayload;
use streams::Streams;
use subscribe::GroupUse;
pub use subscribe::NatsSubscription;
pub(crate) use subscribe::consumer_config;
pub(crate) use worker::WorkerGuard;
use worker::{ConsumerWorker, WorkerSpec};
pub use worker::{INVALID_SUBJECT_TOPIC, RAW_SUBJECT_HEADER};

/// A switchyard transport over NATS JetStream.
///
/// Cheap to clone: clones share one connection. See the crate docs for the mapping.
#[derive(Clone)]
pub struct NatsTransport {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("url", &self.inner.config.url)
            .field("health", &self.health())
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) config: NatsConfig,
    pub(crate) client: Client,
    /// The server's `max_payload`, read again on every reconnect.
    pub(crate) max_payload: Arc<MaxPayload>,
    /// Whether the configured streams exist on the server: made again after a reconnect.
    streams: Arc<Streams>,
    js: jetstream::Context,
    pub(crate) closed: AtomicBool,
    pub(crate) shutdown: watch::Sender<bool>,
    counters: Arc<Counters>,
    publishing: AtomicUsize,
    publish_done: Notify,
    /// Consumer workers still running (pulling, or handing back at the end).
    workers: AtomicUsize,
    workers_done: Notify,
    /// Reply subjects of unsettled deliveries, for [`NatsTransport::in_progress`].
    unsettled: Mutex<HashMap<MessageId, Vec<Subject>>>,
    /// Topics already routed to a stream (index into `config.streams`), bounded.
    routes: Mutex<HashMap<Topic, Option<usize>>>,
    /// Groups with live members on this transport, by consumer name: one group reads one
    /// pattern (a durable consumer has one filter, and a second pattern would replace it).
    groups: Mutex<HashMap<String, GroupUse>>,
    next_id: AtomicU64,
    /// Where dead letters go: the configured sink, or the transport's own store (never
    /// dropped).
    dead_letters: DeadLetterRoute,
}

/// Most topics remembered by the route cache before it starts over.
const ROUTE_CACHE: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked while holding it; the map stays valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
struct Counters {
    connects: AtomicU64,
    disconnects: AtomicU64,
    slow_consumers: AtomicU64,
    publish_retries: AtomicU64,
    publish_failures: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Counters {
    fn on_event(&self, event: Event) {
        match event {
            Event::Connected => {
                self.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!("NATS connection (re)established");
            }
            Event::Disconnected => {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("NATS connection lost; reconnecting, publishes are buffered");
            }
            Event::SlowConsumer(_) => {
                self.slow_consumers.fetch_add(1, Ordering::Relaxed);
            }
            other => tracing::debug!(event = %other, "NATS client event"),
        }
    }
}

/// State of the connection as the transport sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connected to a server.
    Connected,
    /// Connection lost; the client is reconnecting and buffers up to
    /// [`NatsConfig::reconnect_buffer`] commands meanwhile.
    Reconnecting,
    /// [`close`](Publisher::close) was called.
    Closed,
}

/// Health and counters of a [`NatsTransport`], for `/health` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Connection state now.
    pub state: ConnectionState,
    /// Times the connection was lost.
    pub disconnects: u64,
    /// Times it was re-established after a loss.
    pub reconnects: u64,
    /// Publishes waiting for their JetStream acknowledgement now.
    pub publishes_in_flight: usize,
    /// Messages resent because their acknowledgement did not come in time.
    pub publish_retries: u64,
    /// Publishes that failed for good (the caller got an error).
    pub publish_failures: u64,
    /// Publishes the server recognised as duplicates (same `Nats-Msg-Id` in the window).
    pub duplicates: u64,
    /// Messages sent to the dead-letter sink after max deliveries.
    pub dead_lettered: u64,
    /// Slow-consumer events reported by the client.
    pub slow_consumers: u64,
    /// Commands the client buffers while disconnected.
    pub reconnect_buffer: usize,
    /// `false` from a reconnect until the configured streams have been created or updated
    /// again on the server (one restarted with memory storage has lost them): publishes
    /// fail "no stream found" meanwhile, so the transport is not ready.
    pub streams_ready: bool,
}

/// Decrements the in-flight publish count when a publish ends (however it ends).
struct PublishGuard<'a>(&'a Inner);

impl Drop for PublishGuard<'_> {
    fn drop(&mut self) {
        self.0.publishing.fetch_sub(1, Ordering::AcqRel);
        self.0.publish_done.notify_waiters();
    }
}

/// Waits until `count` is zero; `done` is notified whenever it goes down.
async fn until_zero(count: &AtomicUsize, done: &Notify) {
    loop {
        let notified = done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if count.load(Ordering::Acquire) == 0 {
            return;
        }
        notified.await;
    }
}

/// Whether JetStream refused a publish for good: it answered with an error of a 4xx status
/// (headers over 64 KiB, 10097; a message over the stream's `max_msg_size`; ...), which a
/// resend of the same message gets again. Not a lost or late acknowledgement, no stream
/// (503 no responders, after a restart that lost it), nor a 503 error (JetStream
/// temporarily unavailable, a full stream): those are resent until `publish_timeout`.
fn refused_for_good(e: &async_nats::jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|server| server.code() < 500)
}

fn map_publish_error(e: &async_nats::jetstream::context::PublishError) -> TransportError {
    let kind = match e.kind() {
        PublishErrorKind::TimedOut => TransportErrorKind::Timeout,
        PublishErrorKind::StreamNotFound | PublishErrorKind::BrokenPipe => {
            TransportErrorKind::Unavailable
        }
        _ => TransportErrorKind::Rejected,
    };
    TransportError::new(kind, format!("JetStream publish failed: {e}"))
}

impl NatsTransport {
    /// Connects to `config.url` and creates or updates every configured stream. An existing
    /// stream gets the configured age and size limits (a change is logged as a warning; a
    /// tighter limit removes older messages at once).
    pub async fn connect(config: NatsConfig) -> Result<Self, ConnectError> {
        if config.max_age == Some(Duration::ZERO) || config.max_bytes == Some(0) {
            return Err(ConnectError::InvalidConfig(
                "max_age and max_bytes must be above zero (None: unlimited)".into(),
            ));
        }
        if config.ephemeral_inactive_threshold < Duration::from_secs(1)
            || config.durable_inactive_threshold == Some(Duration::ZERO)
        {
            return Err(ConnectError::InvalidConfig(
                "consumer inactive thresholds must be at least 1 s (durable: None for never)"
                    .into(),
            ));
        }
        if config.pull_batch == 0 || config.max_ack_pending == 0 {
            return Err(ConnectError::InvalidConfig(
                "pull_batch and max_ack_pending must be at least 1".into(),
            ));
        }
        if config.pull_expires < Duration::from_millis(10) {
            return Err(ConnectError::InvalidConfig(
                "pull_expires must be at least 10 ms".into(),
            ));
        }
        if config.request_prefix.is_empty() || config.request_prefix.contains(['*', '>', ' ']) {
            return Err(ConnectError::InvalidConfig(
                "request_prefix must be a plain subject".into(),
            ));
        }
        if config.command_prefix.is_empty() || config.command_prefix.contains(['*', '>', ' ']) {
            return Err(ConnectError::InvalidConfig(
                "command_prefix must be a plain subject".into(),
            ));
        }
        if config.command_group.is_empty() || config.command_group.contains([' ', '.']) {
            return Err(ConnectError::InvalidConfig(
                "command_group must be a plain name".into(),
            ));
        }
        durable::validate(&config)?;
        let counters = Arc::new(Counters::default());
        let events = counters.clone();
        let max_payload = Arc::new(MaxPayload::default());
        let limit = max_payload.clone();
        let streams = Arc::new(Streams::default());
        let restream = streams.clone();
        let client = ConnectOptions::new()
            .name(&config.name)
            .client_capacity(config.reconnect_buffer)
            .event_callback(move |event| {
                let counters = events.clone();
                let limit = limit.clone();
                let restream = restream.clone();
                async move {
                    let connected = event == Event::Connected;
                    counters.on_event(event);
                    if connected {
                        // Another server may have another limit.
                        limit.refresh();
                        // A reconnect: the server may have lost the streams (memory
                        // storage, another server).
                        if counters.connects.load(Ordering::Relaxed) > 1 {
                            restream.reconnected();
                        }
                    }
                }
            })
            .connect(
                config
                    .url
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .collect::<Vec<&str>>(),
            )
            .await
            .map_err(|source| ConnectError::Connect {
                url: config.url.clone(),
                source,
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.ack_timeout);
        streams::ensure_all(&js, &config).await?;
        let (shutdown, _) = watch::channel(false);
        let dead_letters = DeadLetterRoute::new(config.dead_letters.clone());
        let inner = Arc::new(Inner {
            config,
            client,
            max_payload,
            streams,
            js,
            closed: AtomicBool::new(false),
            shutdown,
            counters,
            publishing: AtomicUsize::new(0),
            publish_done: Notify::new(),
            workers: AtomicUsize::new(0),
            workers_done: Notify::new(),
            unsettled: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            dead_letters,
        });
        inner.max_payload.attach(&inner);
        inner.streams.attach(&inner);
        Ok(Self { inner })
    }

    /// `Ok` while the client is connected to a server; otherwise `Unavailable` at once.
    ///
    /// Checked before anything is sent: while disconnected, async-nats keeps what is
    /// written in its reconnect buffer and sends it after the reconnect, long after the
    /// caller was told it failed (a publish stored after a 503, a command run after its
    /// sender's deadline).
    pub(crate) fn ensure_connected(&self) -> Result<(), TransportError> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(TransportError::new(
                TransportErrorKind::Unavailable,
                "not connected to the NATS server (reconnecting)",
            )),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The underlying client (for what switchyard does not wrap).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Connection state and counters.
    pub fn health(&self) -> Health {
        let c = &self.inner.counters;
        let state = if self.inner.closed.load(Ordering::Acquire) {
            ConnectionState::Closed
        } else {
            match self.inner.client.connection_state() {
                async_nats::connection::State::Connected => ConnectionState::Connected,
                _ => ConnectionState::Reconnecting,
            }
        };
        Health {
            state,
            disconnects: c.disconnects.load(Ordering::Relaxed),
            reconnects: c.connects.load(Ordering::Relaxed).saturating_sub(1),
            publishes_in_flight: self.inner.publishing.load(Ordering::Relaxed),
            publish_retries: c.publish_retries.load(Ordering::Relaxed),
            publish_failures: c.publish_failures.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            slow_consumers: c.slow_consumers.load(Ordering::Relaxed),
            reconnect_buffer: self.inner.config.reconnect_buffer,
            streams_ready: self.inner.streams.ready(),
        }
    }

    /// The configured stream a topic is stored in (the first whose patterns match it).
    pub fn stream_for(&self, topic: &Topic) -> Option<String> {
        self.route(topic)
            .and_then(|i| self.inner.config.streams.get(i))
            .map(|s| sanitize_name(&s.name))
    }

    /// Index of the stream a topic goes to, cached.
    fn route(&self, topic: &Topic) -> Option<usize> {
        if let Some(r) = lock(&self.inner.routes).get(topic) {
            return *r;
        }
        let r = self
            .inner
            .config
            .streams
            .iter()
            .position(|s| s.patterns.iter().any(|p| p.matches(topic)));
        let mut cache = lock(&self.inner.routes);
        if cache.len() >= ROUTE_CACHE {
            cache.clear();
        }
        cache.insert(topic.clone(), r);
        r
    }

    /// Tells JetStream that every unsettled delivery of message `id` is still being worked
    /// on (`+WPI`): its ack wait starts again. For handlers that run longer than the ack
    /// wait. Returns how many deliveries were extended.
    pub async fn in_progress(&self, id: &MessageId) -> Result<usize, TransportError> {
        let subjects = lock(&self.inner.unsettled)
            .get(id)
            .cloned()
            .unwrap_or_default();
        for s in &subjects {
            self.inner
                .client
                .publish(s.clone(), AckKind::Progress.into())
                .await
                .map_err(|e| {
                    TransportError::with_source(
                        TransportErrorKind::Unavailable,
                        "cannot send in-progress",
                        e,
                    )
                })?;
        }
        Ok(subjects.len())
    }

    /// A round trip through the server on this connection: once it returns, the server has
    /// processed everything this connection sent before it (subscriptions,
    /// unsubscriptions). `Client::flush` only writes the socket. A request to a fresh inbox
    /// subject, which nobody serves: the server answers "no responders" at once.
    pub(crate) async fn server_round_trip(&self) -> Result<(), TransportError> {
        let request = async_nats::Request::new().timeout(Some(self.inner.config.ack_timeout));
        match self
            .inner
            .client
            .send_request(self.inner.client.new_inbox(), request)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(TransportError::with_source(
                TransportErrorKind::Unavailable,
                "no round trip through the server",
                e,
            )),
        }
    }

    /// Deletes a stream (tests and tooling).
    pub async fn delete_stream(&self, name: &str) -> Result<(), TransportError> {
        self.inner
            .js
            .delete_stream(sanitize_name(name))
            .await
            .map(|_| ())
            .map_err(|e| {
                TransportError::with_source(
                    admin::delete_stream_error_kind(&e),
                    "cannot delete stream",
                    e,
                )
            })
    }
}

impl Publisher for NatsTransport {
    /// Publishes every envelope with its id as `Nats-Msg-Id`, pipelined: all are sent, then
    /// all acknowledgements awaited. A message whose acknowledgement does not arrive within
    /// `ack_timeout` is sent again (the server drops the copy) until `publish_timeout`.
    /// Nothing is sent while the client is disconnected (it would sit in the client's
    /// reconnect buffer and be sent after the reconnect, whatever this call returned): the
    /// publish waits for the connection, and fails `Unavailable` at `publish_timeout`.
    /// A message the server refuses (a JetStream error of a 4xx status: over the stream's
    /// `max_msg_size`, ...) is not resent: the publish fails at once, `Rejected`, with the
    /// server's reason. A message over `max_payload` (payload and headers) or with a header
    /// block over JetStream's 65535 bytes is refused before anything is sent,
    /// [`PublishError::TooLarge`]. On error, some envelopes of the batch may be stored (a send that went out before the
    /// connection was lost, unacknowledged); publishing the batch again is safe within the
    /// duplicate window.
    async fn publish(&self, batch: Vec<Envelope>) -> Result<(), PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShuttingDown);
        }
        // The server counts the header block with the payload against its `max_payload`
        // and drops the connection over a larger message (every resend again, so the
        // publish would fail only at `publish_timeout`): refused here, at once, as is a
        // header block over JetStream's 64 KiB. The headers made for the check are the ones
        // the first send uses.
        let mut headers = Vec::with_capacity(batch.len());
        for env in &batch {
            let h = codec::encode_headers(env);
            self.inner.max_payload.check_stored(env.payload.len(), &h)?;
            headers.push(Some(h));
        }
        self.inner.publishing.fetch_add(1, Ordering::AcqRel);
        let _guard = PublishGuard(&self.inner);
        let mut items = Vec::with_capacity(batch.len());
        for env in &batch {
            if self.route(&env.topic).is_none() {
                return Err(TransportError::new(
                    TransportErrorKind::Rejected,
                    format!("no configured stream takes topic {}", env.topic),
                )
                .into());
            }
            let subject = topic_subject(&env.topic)
                .map_err(|reason| TransportError::new(TransportErrorKind::Rejected, reason))?;
            items.push(Subject::from(subject));
        }
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let mut todo: Vec<usize> = (0..items.len()).collect();
        let mut backoff = Duration::from_millis(20);
        loop {
            // Nothing is sent while disconnected: async-nats would keep it in its reconnect
            // buffer and send it after the reconnect, even once this publish has failed (the
            // caller, told it failed, publishes again: delivered twice). Sent once connected
            // again, or `Unavailable` at `publish_timeout` with nothing left behind.
            if let Err(error) = self.ensure_connected() {
                if Instant::now() + backoff >= deadline {
                    self.inner
                        .counters
                        .publish_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(error.into());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
            let mut acks = Vec::with_capacity(todo.len());
            let mut failed = Vec::new();
            let mut last_error = None;
            for &i in &todo {
                // Headers are encoded again for a resend rather than kept (and cloned).
                let h = headers
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_else(|| codec::encode_headers(&batch[i]));
                let publish = Publish::build()
                    .headers(h)
                    .payload(batch[i].payload.clone());
                match self.inner.js.send_publish(items[i].clone(), publish).await {
                    Ok(ack) => acks.push((i, ack)),
                    Err(e) => {
                        failed.push(i);
                        last_error = Some(map_publish_error(&e));
                    }
                }
            }
            // A refusal by the server fails the publish once every acknowledgement of this
            // round is in: sent again it is refused again.
            let mut refused = None;
            for (i, ack) in acks {
                match ack.await {
                    Ok(ack) => {
                        if ack.duplicate {
                            self.inner
                                .counters
                                .duplicates
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if refused_for_good(&e) => refused = Some(map_publish_error(&e)),
                    Err(e) => {
                        failed.push(i);
                        last_error = Some(map_publish_error(&e));
                    }
                }
            }
            let for_good = refused.is_some();
            let Some(error) = refused.or(last_error) else {
                return Ok(());
            };
            if for_good || Instant::now() + backoff >= deadline {
                self.inner
                    .counters
                    .publish_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(error.into());
            }
            tracing::debug!(count = failed.len(), %error, "resending unacknowledged publishes");
            self.inner
                .counters
                .publish_retries
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
            // Backoff between rounds of resends while the connection recovers.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
            failed.sort_unstable();
            todo = failed;
        }
    }

    /// The server's `max_payload` (1 MiB unless the server is configured otherwise): the
    /// limit on a message's payload **plus its encoded headers** (the header block NATS
    /// sends: `NATS/1.0\r\n`, each `name: value\r\n`, `\r\n`; the envelope's fields
    /// travel as headers: 88 bytes for an event with no user headers). The bus compares the
    /// payload alone with it, so a larger payload is refused there; a payload that fits
    /// whose headers push the message over is refused by [`publish`](Publisher::publish)
    /// with [`PublishError::TooLarge`] at once (`size` then counts the headers), before
    /// anything is sent. The limit is the one of the server the connection is on: read when
    /// it is made and again after every reconnect.
    fn max_message_bytes(&self) -> Option<(usize, &'static str)> {
        let limit = self.inner.max_payload.limit();
        (limit > 0).then_some((limit, MAX_PAYLOAD))
    }

    /// Refuses new publishes, ends every subscription, waits (until `deadline`) for
    /// publishes in flight to get their acknowledgements, then flushes buffered acks.
    ///
    /// Idempotent: a second call (or a concurrent one) does the same waits and returns `Ok`
    /// once everything the first call waits for is done.
    async fn close(&self, deadline: std::time::Instant) -> Result<(), CloseError> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.send_replace(true);
        let deadline = Instant::from_std(deadline);
        let drained = until_zero(&self.inner.publishing, &self.inner.publish_done);
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
            return Err(CloseError::Transport(TransportError::new(
                TransportErrorKind::Timeout,
                "publishes still in flight at the close deadline",
            )));
        }
        // Every subscription hands back what it pulled (nacks, sent before the flush).
        let stopped = until_zero(&self.inner.workers, &self.inner.workers_done);
        if tokio::time::timeout_at(deadline, stopped).await.is_err() {
            return Err(CloseError::Transport(TransportError::new(
                TransportErrorKind::Timeout,
                "subscriptions still handing back pulled messages at the close deadline",
            )));
        }
        // The server has processed the unsubscriptions of the command handlers (drained
        // above) before close returns: no command is routed to this process afterwards.
        match tokio::time::timeout_at(deadline, self.server_round_trip()).await {
            Ok(Ok(())) => {}
            // Not connected: the server dropped this connection's subscriptions anyway.
            Ok(Err(e)) => tracing::debug!(error = %e, "no round trip at close"),
            Err(_) => {
                return Err(CloseError::Transport(TransportError::new(
                    TransportErrorKind::Timeout,
                    "the server did not confirm the unsubscriptions before the deadline",
                )));
            }
        }
        match tokio::time::timeout_at(deadline, self.inner.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CloseError::Transport(TransportError::with_source(
                TransportErrorKind::Unavailable,
                "flush failed",
                e,
            ))),
            Err(_) => Err(CloseError::Transport(TransportError::new(
                TransportErrorKind::Timeout,
                "flush did not finish before the deadline",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invalid_subject_topic_is_a_topic() {
        assert!(Topic::from_static(INVALID_SUBJECT_TOPIC).is_ok());
    }
}
