//! The consumer worker: pulls one JetStream consumer's messages into a subscription's channel,
//! and the ack handle each delivery carries back to JetStream.

use async_nats::jetstream::consumer;

use super::*;

/// Pulls one consumer's messages into a subscription's channel.
///
/// Owns: a core subscription on its own inbox, the one pull request it has open at a time,
/// and a sender into the subscription. Stops when the transport closes (shutdown signal) or
/// the subscription is dropped (channel closed); then it hands back everything its open pull
/// request brings (see [`ConsumerWorker::hand_back`]). Re-creates the consumer when the
/// server lost it: checked each time the streams were made again after a reconnect, and when
/// a pull request went unanswered past its expiry (see [`ConsumerWorker::recreate`] for where
/// an ephemeral consumer resumes).
pub(super) struct ConsumerWorker {
    pub(super) inner: Arc<Inner>,
    pub(super) stream: String,
    pub(super) name: String,
    pub(super) durable: bool,
    pub(super) config: pull::Config,
    pub(super) pattern: Pattern,
    pub(super) tx: mpsc::Sender<Delivery>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// The last stream sequence this consumer has read (or, before any, the stream's last
    /// sequence when the consumer was made).
    pub(super) last_sequence: u64,
    /// When (server time) the consumer was made: a stream made after it is not the one it
    /// read (the server lost that one).
    pub(super) since: SystemTime,
    /// Subject prefix of this worker's inbox: pull request `n` replies to `<inbox>.<n>`.
    pub(super) inbox: String,
    pub(super) requests: u64,
    /// Bytes to strip from each subject to get its topic: 0 for a subscription; for durable
    /// commands the length of `<durable_command_prefix>.`, and each envelope also gets its
    /// deadline and reply inbox (see [`ConsumerWorker::command_fields`]).
    pub(super) strip: usize,
}

/// What a consumer worker reads and where it hands it.
pub(super) struct WorkerSpec {
    pub(super) stream: String,
    pub(super) name: String,
    pub(super) durable: bool,
    pub(super) config: pull::Config,
    pub(super) pattern: Pattern,
    pub(super) tx: mpsc::Sender<Delivery>,
    /// See [`ConsumerWorker::strip`].
    pub(super) strip: usize,
}

/// The pull request a worker has open: JetStream sends up to `remaining` more messages to
/// `reply` and ends it (a 408 status) at its expiry at the latest.
struct Pull {
    reply: Subject,
    remaining: usize,
    /// When the server has certainly ended it: expiry plus [`PULL_GRACE`], counted from
    /// when it was sent (or from the last reconnect, which may have sent it late).
    ends_by: Instant,
    /// Connections made when `ends_by` was set.
    connects: u64,
}

/// How long past a pull request's expiry it still counts as open (server and client clocks,
/// a slow server); after that it is taken as lost and a new one is sent.
const PULL_GRACE: Duration = Duration::from_secs(2);

/// What a message on the inbox is.
enum Inbound {
    /// A stored message.
    Message,
    /// The open pull request ended (expired, or its batch is complete).
    Ended,
    /// The server refused or cut short the open request (a 400 or 409 status, such as
    /// "Exceeded MaxWaiting"): retrying at once would only be refused again.
    Refused,
    /// The consumer is gone (deleted, or no responders for the request).
    ConsumerGone,
    /// A heartbeat, or a status for a request that already ended.
    Ignore,
}

/// What to do with one stored message.
// Returned once per message and matched at once: boxing the envelope would cost an
// allocation per message to save a move.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    /// Already settled here: dead-lettered, or skipped without metadata.
    Done,
    /// Not for this subscription (a widened consumer reads more than the pattern).
    Foreign(Acker),
    /// To hand out.
    Deliver(Envelope, Acker, Option<Subject>),
}

/// Topic given to the dead letter of a message whose subject is not a valid topic; the
/// subject itself is in the [`RAW_SUBJECT_HEADER`] header and in the error text.
pub const INVALID_SUBJECT_TOPIC: &str = "switchyard.nats.invalid-subject";
/// Header holding the raw subject of a message dead-lettered because its subject is not a
/// valid topic.
pub const RAW_SUBJECT_HEADER: &str = "nats-subject";

/// Counts a running worker for [`Publisher::close`], which waits for every worker to have
/// handed back what it pulled.
pub(crate) struct WorkerGuard(Arc<Inner>);

impl WorkerGuard {
    pub(crate) fn new(inner: &Arc<Inner>) -> Self {
        inner.workers.fetch_add(1, Ordering::AcqRel);
        Self(inner.clone())
    }
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, Ordering::AcqRel);
        self.0.workers_done.notify_waiters();
    }
}

impl ConsumerWorker {
    /// A worker for `spec`, whose consumer the server has just made (`made`: its answer).
    pub(super) fn new(inner: &Arc<Inner>, spec: WorkerSpec, made: &consumer::Info) -> Self {
        Self {
            inner: inner.clone(),
            stream: spec.stream,
            name: spec.name,
            durable: spec.durable,
            config: spec.config,
            pattern: spec.pattern,
            tx: spec.tx,
            shutdown: inner.shutdown.subscribe(),
            last_sequence: made.delivered.stream_sequence,
            since: SystemTime::from(made.created),
            inbox: inner.client.new_inbox(),
            requests: 0,
            strip: spec.strip,
        }
    }

    pub(super) async fn run(mut self, _alive: WorkerGuard) {
        let mut backoff = Duration::from_millis(100);
        let mut sub = loop {
            match self
                .inner
                .client
                .subscribe(format!("{}.*", self.inbox))
                .await
            {
                Ok(sub) => break sub,
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = %e, "cannot subscribe to the pull inbox; retrying");
                    if self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        let mut pull: Option<Pull> = None;
        let mut recreate = false;
        // Whether to ask the server for the consumer before the next pull.
        let mut check = false;
        let mut remade = self.inner.streams.remade();
        loop {
            // A dropped subscription never re-creates its consumer (it may be gone because
            // the group was deleted for good).
            if *self.shutdown.borrow() || self.tx.is_closed() {
                break;
            }
            if check {
                check = false;
                match self.lost().await {
                    Ok(true) => {
                        // The open request went with it: the server answers it no more.
                        tracing::warn!(consumer = %self.name, stream = %self.stream, "the server lost the consumer; re-creating");
                        pull = None;
                        recreate = true;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(consumer = %self.name, error = %e, "cannot ask for the consumer; pulling on")
                    }
                }
            }
            if recreate {
                if let Err(e) = self.recreate().await {
                    tracing::warn!(consumer = %self.name, stream = %self.stream, error = %e, "cannot re-create consumer; retrying");
                    if self.pause(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                recreate = false;
            }
            let Some(open) = &mut pull else {
                match self.request().await {
                    Ok(p) => pull = Some(p),
                    Err(e) => {
                        tracing::warn!(consumer = %self.name, error = %e, "cannot pull; retrying");
                        if self.pause(backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
                continue;
            };
            let ends_by = open.ends_by;
            let event = tokio::select! {
                _ = self.shutdown.wait_for(|closed| *closed) => None,
                _ = self.tx.closed() => None,
                Ok(()) = remade.changed() => {
                    // The streams were made again after a reconnect: the server may be a
                    // new one (a restart with memory storage) that lost the consumer too.
                    check = true;
                    continue;
                }
                _ = tokio::time::sleep_until(ends_by) => Some(None),
                msg = sub.next() => Some(Some(msg)),
            };
            let msg = match event {
                None => break,
                Some(None) => {
                    if !self.extend(open) {
                        // The server ends a request at its expiry, unless it no longer has
                        // the consumer.
                        tracing::debug!(consumer = %self.name, "pull request unanswered past its expiry; checking the consumer, sending another");
                        pull = None;
                        check = true;
                    }
                    continue;
                }
                Some(Some(msg)) => msg,
            };
            let Some(msg) = msg else {
                // The client is gone: nothing more can arrive.
                return;
            };
            match self.inbound(&msg, open) {
                Inbound::Ignore => {}
                Inbound::Ended => {
                    pull = None;
                    backoff = Duration::from_millis(100);
                }
                Inbound::Refused => {
                    pull = None;
                    if self.pause(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Inbound::ConsumerGone => {
                    tracing::warn!(consumer = %self.name, "consumer gone; re-creating");
                    pull = None;
                    recreate = true;
                }
                Inbound::Message => {
                    backoff = Duration::from_millis(100);
                    open.remaining = open.remaining.saturating_sub(1);
                    if open.remaining == 0 {
                        pull = None;
                    }
                    match self.prepare(msg).await {
                        Prepared::Done => {}
                        Prepared::Foreign(acker) => {
                            // Read only because the consumer filter had to be wider than the
                            // pattern: moves this consumer on, nothing else.
                            let _ = acker.ack().await;
                        }
                        Prepared::Deliver(envelope, acker, reply) => {
                            if !self.deliver(envelope, acker, reply).await {
                                break;
                            }
                        }
                    }
                }
            }
        }
        self.hand_back(sub, pull).await;
        if !self.durable {
            // Best effort: the server also removes it after its inactive threshold.
            let _ = self
                .inner
                .js
                .delete_consumer_from_stream(&self.name, &self.stream)
                .await;
        }
    }

    /// Stops pulling and hands back what this worker still has coming. JetStream (2.9) has
    /// no way to cancel a pull request, and unsubscribing its inbox would lose the messages
    /// already on their way (the client drops what arrives after the unsubscribe, and the
    /// server keeps them pending until the ack wait). So no new request is sent, the open
    /// one is read until it ends (its batch is complete, or it expires after at most
    /// [`NatsConfig::pull_expires`]), and everything it brought is nacked once it has ended
    /// (not before: a nacked message could otherwise come straight back to it).
    async fn hand_back(&mut self, mut sub: async_nats::Subscriber, mut pull: Option<Pull>) {
        let mut held: Vec<Acker> = Vec::new();
        while let Some(open) = &mut pull {
            let msg = tokio::select! {
                _ = tokio::time::sleep_until(open.ends_by) => {
                    if !self.extend(open) {
                        pull = None;
                    }
                    continue;
                }
                msg = sub.next() => msg,
            };
            let Some(msg) = msg else { break };
            match self.inbound(&msg, open) {
                Inbound::Ignore => {}
                Inbound::Ended | Inbound::Refused | Inbound::ConsumerGone => pull = None,
                Inbound::Message => {
                    open.remaining = open.remaining.saturating_sub(1);
                    if open.remaining == 0 {
                        pull = None;
                    }
                    match self.prepare(msg).await {
                        Prepared::Done => {}
                        // Not acked even when it does not match: once this member left, the
                        // group may read another pattern.
                        Prepared::Foreign(acker) | Prepared::Deliver(_, acker, _) => {
                            held.push(acker);
                        }
                    }
                }
            }
        }
        drop(sub);
        if !held.is_empty() {
            tracing::debug!(consumer = %self.name, count = held.len(), "handing back pulled messages");
        }
        for acker in held {
            let _ = acker.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// Sends one pull request for `pull_batch` messages.
    async fn request(&mut self) -> Result<Pull, TransportError> {
        self.requests += 1;
        let reply = Subject::from(format!("{}.{}", self.inbox, self.requests));
        let expires = self.inner.config.pull_expires;
        let body = format!(
            "{{\"batch\":{},\"expires\":{}}}",
            self.inner.config.pull_batch,
            expires.as_nanos()
        );
        self.inner
            .client
            .publish_with_reply(
                format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", self.stream, self.name),
                reply.clone(),
                body.into(),
            )
            .await
            .map_err(|e| {
                TransportError::with_source(
                    TransportErrorKind::Unavailable,
                    "cannot send pull request",
                    e,
                )
            })?;
        Ok(Pull {
            reply,
            remaining: self.inner.config.pull_batch,
            ends_by: Instant::now() + expires + PULL_GRACE,
            connects: self.inner.counters.connects.load(Ordering::Relaxed),
        })
    }

    /// At `open.ends_by`: `true` (and a later `ends_by`) when the connection was down or
    /// came back since it was set, so the request may have reached the server late.
    fn extend(&self, open: &mut Pull) -> bool {
        let connects = self.inner.counters.connects.load(Ordering::Relaxed);
        let connected = matches!(
            self.inner.client.connection_state(),
            async_nats::connection::State::Connected
        );
        if connected && connects == open.connects {
            return false;
        }
        open.connects = connects;
        open.ends_by = Instant::now() + self.inner.config.pull_expires + PULL_GRACE;
        true
    }

    /// Classifies one message of the inbox against the open request.
    fn inbound(&self, msg: &async_nats::Message, open: &Pull) -> Inbound {
        use async_nats::StatusCode;
        let Some(status) = msg.status else {
            return Inbound::Message;
        };
        if status == StatusCode::OK {
            return Inbound::Message;
        }
        if status == StatusCode::IDLE_HEARTBEAT || msg.subject != open.reply {
            return Inbound::Ignore;
        }
        if status == StatusCode::NO_RESPONDERS {
            return Inbound::ConsumerGone;
        }
        if msg.description.as_deref() == Some("Consumer Deleted") {
            return Inbound::ConsumerGone;
        }
        if status == StatusCode::TIMEOUT || status == StatusCode::NOT_FOUND {
            return Inbound::Ended;
        }
        tracing::warn!(consumer = %self.name, %status, description = ?msg.description, "pull request refused; retrying after a pause");
        Inbound::Refused
    }

    /// Waits `d` (backoff before retrying); `true` when shutdown came first.
    async fn pause(&mut self, d: Duration) -> bool {
        let stop = tokio::select! {
            _ = self.shutdown.wait_for(|closed| *closed) => true,
            _ = self.tx.closed() => true,
            _ = tokio::time::sleep(d) => false,
        };
        stop || *self.shutdown.borrow()
    }

    /// Whether the server has lost this consumer (or its stream): `Err` when it cannot tell
    /// (no answer).
    async fn lost(&self) -> Result<bool, TransportError> {
        use async_nats::jetstream::ErrorCode;
        use async_nats::jetstream::stream::ConsumerErrorKind;
        let asked = self
            .inner
            .js
            .get_consumer_from_stream::<pull::Config, _, _>(&self.name, &self.stream)
            .await;
        match asked {
            Ok(_) => Ok(false),
            Err(e) => match e.kind() {
                ConsumerErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND
                        || j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(true)
                }
                _ => Err(TransportError::with_source(
                    super::admin::consumer_error_kind(&e),
                    "cannot ask for the consumer",
                    e,
                )),
            },
        }
    }

    /// Makes the consumer again. A durable one (a group) reads the stream from its start, as
    /// when first made. An ephemeral one resumes after the last sequence it read, unless the
    /// stream was made after the consumer: then the server lost the stream it read (a restart
    /// with memory storage) and the new stream's sequences start again at 1, so it reads the
    /// new stream from its start (resuming after the old last sequence would skip the new
    /// stream's first messages).
    async fn recreate(&mut self) -> Result<(), TransportError> {
        let mut config = self.config.clone();
        let mut fresh = false;
        if !self.durable {
            let stream = self.inner.js.get_stream(&self.stream).await.map_err(|e| {
                TransportError::new(
                    TransportErrorKind::Unavailable,
                    format!("cannot read stream {}: {e}", self.stream),
                )
            })?;
            fresh = SystemTime::from(stream.cached_info().created) > self.since;
            config.deliver_policy = if fresh {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: self.last_sequence + 1,
                }
            };
        }
        let made = self
            .inner
            .js
            .create_consumer_on_stream(config, &self.stream)
            .await
            .map_err(|e| {
                TransportError::with_source(
                    super::admin::consumer_error_kind(&e),
                    "cannot create consumer",
                    e,
                )
            })?;
        if fresh {
            self.last_sequence = 0;
        }
        self.since = SystemTime::from(made.cached_info().created);
        Ok(())
    }

    /// Decodes one stored message, or settles it here: dead-lettered after max deliveries or
    /// when its subject is not a valid topic (both terminated), skipped without metadata.
    async fn prepare(&mut self, message: async_nats::Message) -> Prepared {
        let msg = jetstream::Message {
            message,
            context: self.inner.js.clone(),
        };
        let (delivered, sequence, published) = match msg.info() {
            Ok(info) => (
                info.delivered,
                info.stream_sequence,
                SystemTime::from(info.published),
            ),
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "message without JetStream metadata; skipped");
                return Prepared::Done;
            }
        };
        self.last_sequence = self.last_sequence.max(sequence);
        let reply = msg.message.reply.clone();
        let (message, acker) = msg.split();
        let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        let topic = match Topic::new(message.subject.get(self.strip..).unwrap_or_default()) {
            Ok(t) => t,
            Err(e) => {
                // Valid for NATS (`x.#`, a 300-byte subject) but not a topic: nobody can
                // handle it. Dead-letter it with its raw bytes rather than drop it.
                let Ok(placeholder) = Topic::from_static(INVALID_SUBJECT_TOPIC) else {
                    // Not reached: the constant is a valid topic (a unit test checks it).
                    let _ = acker.ack_with(AckKind::Term).await;
                    return Prepared::Done;
                };
                let mut envelope =
                    codec::decode(placeholder, message.headers.as_ref(), message.payload);
                envelope = envelope.with_header(RAW_SUBJECT_HEADER, message.subject.as_str());
                envelope.delivery.attempt = attempt;
                let error = format!(
                    "subject {:?} is not a valid topic: {} (stream {}, sequence {sequence})",
                    message.subject.as_str(),
                    e.kind.reason(),
                    self.stream
                );
                self.dead_letter(envelope, DeadLetterReason::DecodeFailed, error);
                let _ = acker.ack_with(AckKind::Term).await;
                return Prepared::Done;
            }
        };
        let mut envelope = codec::decode(topic, message.headers.as_ref(), message.payload);
        if self.strip > 0 {
            command_fields(&mut envelope, message.headers.as_ref(), published);
        }
        if !self.pattern.matches(&envelope.topic) {
            return Prepared::Foreign(acker);
        }
        let max = self.inner.config.max_deliver;
        if max > 0 && attempt > max {
            envelope.delivery.attempt = max;
            let error = format!(
                "not acknowledged after {max} deliveries (stream {}, sequence {sequence})",
                self.stream
            );
            self.dead_letter(envelope, DeadLetterReason::MaxDeliveries, error);
            let _ = acker.ack_with(AckKind::Term).await;
            return Prepared::Done;
        }
        envelope.delivery.attempt = attempt;
        envelope.delivery.first_delivered_at = (attempt == 1).then(switchyard_core::clock::now);
        Prepared::Deliver(envelope, acker, reply)
    }

    /// Puts a dead letter into the configured sink, or into the transport's own store when
    /// there is none ([`NatsTransport::dead_letters`]).
    fn dead_letter(&self, envelope: Envelope, reason: DeadLetterReason, error: String) {
        let letter = DeadLetter::new(envelope, reason, error).with_handler(self.name.as_str());
        self.inner.dead_letter(letter);
    }

    /// Hands one delivery to the subscription. `false` when the subscription is gone (the
    /// delivery, dropped unsettled, is then nacked).
    async fn deliver(&mut self, envelope: Envelope, acker: Acker, reply: Option<Subject>) -> bool {
        let id = envelope.id.clone();
        if let Some(r) = &reply {
            lock(&self.inner.unsettled)
                .entry(id.clone())
                .or_default()
                .push(r.clone());
        }
        let handle = NatsAck {
            acker: Some(acker),
            inner: self.inner.clone(),
            id,
            reply,
        };
        // On close, a delivery still waiting for room is dropped, i.e. nacked.
        tokio::select! {
            sent = self.tx.send(Delivery::new(envelope, Box::new(handle))) => sent.is_ok(),
            _ = self.shutdown.wait_for(|closed| *closed) => false,
        }
    }
}

/// The fields a durable command carries besides the envelope: its deadline (see
/// [`durable_deadline`](crate::command::durable_deadline): `Sy-Deadline-Ms` less the time it
/// waited in the stream, measured from the server's storage time, capped by the sender's
/// absolute `Sy-Deadline-At`) and the sender's reply inbox, kept as the `Sy-Reply-To` header
/// (no header of that name reaches an envelope otherwise: `Sy-` is reserved) for the
/// responder to take out.
fn command_fields(
    envelope: &mut Envelope,
    headers: Option<&async_nats::HeaderMap>,
    stored: SystemTime,
) {
    let Some(h) = headers else { return };
    if let Some(left) = crate::command::durable_deadline(Some(h), stored) {
        envelope.delivery.deadline = std::time::Instant::now().checked_add(left);
    }
    if let Some(to) = h.get(crate::command::REPLY_TO) {
        envelope
            .headers_mut()
            .insert(crate::command::REPLY_TO, to.as_str());
    }
}

/// Settles one JetStream delivery.
struct NatsAck {
    acker: Option<Acker>,
    inner: Arc<Inner>,
    id: MessageId,
    reply: Option<Subject>,
}

impl NatsAck {
    fn forget(&self) {
        let Some(reply) = &self.reply else { return };
        let mut map = lock(&self.inner.unsettled);
        if let Some(list) = map.get_mut(&self.id) {
            list.retain(|s| s != reply);
            if list.is_empty() {
                map.remove(&self.id);
            }
        }
    }

    fn settle(
        mut self: Box<Self>,
        kind: AckKind,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        if self.inner.closed.load(Ordering::Acquire) {
            // After close nothing promises the ack reaches the server (the caller may drop
            // the transport next): refuse it. Dropping `self` hands the delivery back (a nack
            // at once), so it is redelivered without waiting for the ack wait.
            let id = self.id.clone();
            return Box::pin(async move {
                Err(TransportError::new(
                    TransportErrorKind::Closed,
                    format!(
                        "transport closed: delivery of {id} not settled; it will be redelivered"
                    ),
                ))
            });
        }
        self.forget();
        let acker = self.acker.take();
        Box::pin(async move {
            match acker {
                Some(a) => a.ack_with(kind).await.map_err(|e| {
                    TransportError::new(
                        TransportErrorKind::Unavailable,
                        format!("cannot settle delivery: {e}"),
                    )
                }),
                None => Ok(()),
            }
        })
    }
}

impl Drop for NatsAck {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            self.forget();
            // Dropped unsettled: ask for redelivery now rather than after the ack wait.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = acker.ack_with(AckKind::Nak(None)).await;
                });
            }
        }
    }
}

impl AckHandle for NatsAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle(AckKind::Ack)
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settle(AckKind::Nak(delay))
    }

    fn term(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>> {
        tracing::debug!(id = %self.id, reason = %reason, "message terminated");
        self.settle(AckKind::Term)
    }

    /// Half the consumer's ack wait, so a keep-alive that comes a little late still lands in
    /// time.
    fn keep_alive_every(&self) -> Option<Duration> {
        self.reply.as_ref()?;
        Some((self.inner.config.ack_wait / 2).max(Duration::from_millis(10)))
    }

    /// Sends "in progress" (`+WPI`) to the delivery's reply subject: JetStream starts its ack
    /// wait again. Nothing after close (the delivery is handed back then anyway).
    fn keep_alive(&self) -> Option<BoxFuture<'static, Result<(), TransportError>>> {
        let reply = self.reply.clone()?;
        if self.acker.is_none() || self.inner.closed.load(Ordering::Acquire) {
            return None;
        }
        let client = self.inner.client.clone();
        Some(Box::pin(async move {
            client
                .publish(reply, AckKind::Progress.into())
                .await
                .map_err(|e| {
                    TransportError::with_source(
                        TransportErrorKind::Unavailable,
                        "cannot send in-progress",
                        e,
                    )
                })
        }))
    }
}
