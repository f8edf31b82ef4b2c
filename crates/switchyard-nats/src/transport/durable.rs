//! Durable commands: commands of the topics in [`NatsConfig::durable_commands`] go through a
//! JetStream work-queue stream instead of a core NATS request, so they survive the handler
//! processes being down.
//!
//! - **Sending**: the command is published (with its id as `Nats-Msg-Id`, resent with the
//!   same id when the acknowledgement is lost) to `<durable_command_prefix>.<topic>` with the
//!   headers of a core command (with a deadline: `Sy-Deadline-Ms` and `Sy-Deadline-At`) plus
//!   `Sy-Reply-To`, an inbox the sender listens on. The
//!   sender then waits for the result on that inbox until its deadline (or
//!   `command_timeout`): `SendError::Timeout` past it, never `NoHandler`.
//! - **Handling**: every process with a handler for the topic reads the stream through one
//!   durable pull consumer named after the topic, so each command goes to one of them. The
//!   delivery is kept in progress (`+WPI`) while the bus handles it, then settled by the
//!   result: acknowledged once handled (`ok`), terminated when the bus has settled it for
//!   good (the handler failed on every attempt or rejected it, it did not decode: the bus
//!   dead-lettered it), and handed back for redelivery when this process cannot handle it
//!   (stopping, queue full). Only a settled-for-good result is answered on `Sy-Reply-To`;
//!   a handed-back command is answered by whichever process handles it later.
//! - **Size**: the command is measured (payload and headers, with `Sy-Reply-To`) against
//!   the server's `max_payload` before it is stored: over it, `SendError::TooLarge` at once.
//!   A result over it is acknowledged as handled and answered `failed`, naming its size.
//! - A handler process that dies mid-command never settles it: the server redelivers it
//!   after `ack_wait`. The delivery after `max_deliver` goes to the dead-letter sink.

use switchyard_core::{
    CommandResponder, CommandResult, IncomingCommand, IncomingCommands, SendError,
};

use super::*;
use crate::command::{
    DEADLINE, REPLY_TO, decode_result, insert_deadline_at, publish_result, result_message,
};

impl NatsTransport {
    /// Whether commands of `topic` are durable here.
    pub(crate) fn is_durable(&self, topic: &Topic) -> bool {
        let patterns = &self.inner.config.durable_commands;
        !patterns.is_empty() && patterns.iter().any(|p| p.matches(topic))
    }

    fn durable_subject(&self, topic: &Topic) -> Result<String, TransportError> {
        let s = topic_subject(topic)
            .map_err(|reason| TransportError::new(TransportErrorKind::Rejected, reason))?;
        Ok(format!("{}.{s}", self.inner.config.durable_command_prefix))
    }

    /// Puts `command` in the work-queue stream and waits for its result on an inbox of its
    /// own, at most `deadline` (or `command_timeout`).
    pub(crate) async fn send_durable(
        &self,
        command: Envelope,
        deadline: Option<Duration>,
    ) -> Result<CommandResult, SendError> {
        let subject = Subject::from(self.durable_subject(&command.topic)?);
        let wait = deadline.unwrap_or(self.inner.config.command_timeout);
        let until = Instant::now() + wait;
        let inbox = self.inner.client.new_inbox();
        let mut headers = codec::encode_headers(&command);
        if let Some(d) = deadline {
            headers.insert(DEADLINE, d.as_millis().to_string().as_str());
            // The sender's deadline as an absolute time too: a command stored late (a
            // stalled server, a resend after a lost acknowledgement) or redelivered later
            // is not run once its sender has given up. Without a deadline there is none: the
            // command waits in the stream for a handler however long.
            insert_deadline_at(&mut headers, d);
        }
        headers.insert(REPLY_TO, inbox.as_str());
        // Refused at once rather than by the server, which drops the connection (on every
        // resend, until the deadline), or refuses a header block over JetStream's limit
        // after it was sent.
        self.inner
            .max_payload
            .check_stored(command.payload.len(), &headers)?;
        // Subscribed before the publish on the same connection: the server has the
        // interest before any handler can answer.
        let mut replies = self
            .inner
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| {
                TransportError::with_source(
                    TransportErrorKind::Unavailable,
                    "cannot subscribe to the reply inbox",
                    e,
                )
            })?;
        let topic = command.topic;
        let mut backoff = Duration::from_millis(20);
        loop {
            let publish = Publish::build()
                .headers(headers.clone())
                .payload(command.payload.clone());
            let stored = async {
                self.inner
                    .js
                    .send_publish(subject.clone(), publish)
                    .await?
                    .await
            };
            match tokio::time::timeout_at(until, stored).await {
                Err(_) => return Err(SendError::Timeout { deadline: wait }),
                Ok(Ok(_)) => break,
                // Lost on the way (or its acknowledgement was): sent again with the same
                // `Nats-Msg-Id`, so the stream keeps one copy.
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                    ) =>
                {
                    self.inner
                        .counters
                        .publish_retries
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(
                        backoff.min(until.saturating_duration_since(Instant::now())),
                    )
                    .await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Ok(Err(e)) => {
                    let stream = &self.inner.config.durable_command_stream;
                    let message = if matches!(e.kind(), PublishErrorKind::StreamNotFound) {
                        format!(
                            "no stream stores durable command subject {subject} (is stream \
                             {stream} there, with the topic among durable_commands?)"
                        )
                    } else {
                        format!("cannot store durable command in stream {stream}: {e}")
                    };
                    return Err(
                        TransportError::new(TransportErrorKind::Unavailable, message).into(),
                    );
                }
            }
        }
        match tokio::time::timeout_at(until, replies.next()).await {
            Ok(Some(msg)) => decode_result(topic, msg.headers.as_ref(), msg.payload),
            Ok(None) => Err(TransportError::new(
                TransportErrorKind::Closed,
                "the connection closed while waiting for a durable command's result",
            )
            .into()),
            Err(_) => Err(SendError::Timeout { deadline: wait }),
        }
    }

    /// Serves the durable commands of `topic`: the shared durable consumer of the topic on
    /// the work-queue stream, read by a consumer worker.
    pub(crate) async fn serve_durable(
        &self,
        topic: &Topic,
    ) -> Result<IncomingCommands, SubscribeError> {
        let prefix = &self.inner.config.durable_command_prefix;
        let subject = self.durable_subject(topic)?;
        let stream = sanitize_name(&self.inner.config.durable_command_stream);
        let name = consumer_name(topic);
        let c = &self.inner.config;
        let consumer_config = consumer_config(c, &name, subject, true);
        let made = self
            .inner
            .js
            .create_consumer_on_stream(consumer_config.clone(), &stream)
            .await
            .map_err(|e| {
                TransportError::with_source(
                    super::admin::consumer_error_kind(&e),
                    format!("cannot create durable command consumer {name} on stream {stream}"),
                    e,
                )
            })?;
        let (tx, rx) = mpsc::channel(c.pull_batch.max(1));
        let spec = WorkerSpec {
            stream,
            name,
            durable: true,
            config: consumer_config,
            pattern: Pattern::new(topic.as_str())?,
            tx,
            strip: prefix.len() + 1,
        };
        let worker = ConsumerWorker::new(&self.inner, spec, made.cached_info());
        let alive = WorkerGuard::new(&self.inner);
        tokio::spawn(worker.run(alive));
        let transport = self.clone();
        let deliveries = channel_stream(rx);
        Ok(Box::pin(
            deliveries.map(move |d| durable_incoming(&transport, d)),
        ))
    }
}

/// The deliveries of a channel, as a stream (ends when the worker stops).
fn channel_stream(mut rx: mpsc::Receiver<Delivery>) -> impl Stream<Item = Delivery> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Name of the durable consumer of one command topic, the same in every process: the topic
/// with other characters than letters, digits, `-` and `_` replaced, and a hash of the
/// topic so that topics differing only in those characters get different consumers.
fn consumer_name(topic: &Topic) -> String {
    // FNV-1a, 64 bits: stable across processes and builds (the std hasher is not promised
    // to be).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_str().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut readable = sanitize_name(topic.as_str());
    readable.truncate(200);
    format!("sy_cmd_{readable}_{hash:016x}")
}

/// One durable command for the bus: the handler sees its deadline (set by the worker from
/// `Sy-Deadline-Ms` less the time it waited in the stream, capped by `Sy-Deadline-At`; the
/// bus dead-letters it `Expired` when that has passed) and no `Sy-Reply-To`; the bus
/// waits for the result however long it takes (no deadline on the incoming command), since
/// the delivery is settled only once handled.
fn durable_incoming(transport: &NatsTransport, delivery: Delivery) -> IncomingCommand {
    let mut envelope = delivery.envelope.clone();
    let reply_to = envelope
        .headers_mut()
        .remove(REPLY_TO)
        .map(|s| Subject::from(s.as_str()));
    // The bus counts its attempt on top of the ones before (redeliveries).
    envelope.delivery.attempt = envelope.delivery.attempt.saturating_sub(1);
    let progress = keep_in_progress(transport, envelope.id.clone());
    let responder = DurableResponder {
        delivery: Some(delivery),
        inner: transport.inner.clone(),
        reply_to,
        progress,
    };
    IncomingCommand::new(envelope, None, Box::new(responder))
}

/// Tells the server every half ack wait that the delivery of `id` is still being handled,
/// so a command waiting in the handler's queue or handled for long is not redelivered to
/// another process meanwhile. Ends when aborted (the command settled).
fn keep_in_progress(transport: &NatsTransport, id: MessageId) -> tokio::task::AbortHandle {
    let transport = transport.clone();
    let every = (transport.inner.config.ack_wait / 2).max(Duration::from_millis(10));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = transport.in_progress(&id).await {
                tracing::debug!(%id, error = %e, "cannot extend a durable command's ack wait");
            }
        }
    })
    .abort_handle()
}

/// Settles one durable command by its result, and answers the sender when settled for
/// good. Dropped unanswered (the bus stopped serving), the delivery is handed back.
struct DurableResponder {
    delivery: Option<Delivery>,
    inner: Arc<Inner>,
    reply_to: Option<Subject>,
    progress: tokio::task::AbortHandle,
}

impl Drop for DurableResponder {
    fn drop(&mut self) {
        self.progress.abort();
    }
}

/// What to do with a durable command's delivery once the bus has a result.
enum Settle {
    /// Handled: acknowledged, and the result sent.
    Ack,
    /// Settled for good by the bus (dead-lettered there): terminated, and the result sent.
    Term(String),
    /// Not handled here: handed back for another process (or a later start), unanswered.
    HandBack(Option<Duration>),
}

fn settle_for(result: &Result<CommandResult, SendError>) -> Settle {
    match result {
        Ok(_) => Settle::Ack,
        Err(
            e @ (SendError::Failed { .. }
            | SendError::Rejected { .. }
            | SendError::NotProcessed(_)
            | SendError::Codec(_)
            | SendError::InvalidTopic(_)
            | SendError::TooLarge(_)),
        ) => Settle::Term(e.to_string()),
        // The queue is full: another process, or this one a little later.
        Err(SendError::Full { .. }) => Settle::HandBack(Some(Duration::from_millis(100))),
        // Stopping (`NoHandler` from a bus that stops), or no answer in time.
        Err(_) => Settle::HandBack(None),
    }
}

impl CommandResponder for DurableResponder {
    fn respond(
        mut self: Box<Self>,
        result: Result<CommandResult, SendError>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.progress.abort();
        let delivery = self.delivery.take();
        let reply_to = self.reply_to.take();
        let client = self.inner.client.clone();
        let max_payload = self.inner.max_payload.clone();
        // The bus may finish this on a task of its own once the handler's worker moved on:
        // counted, so closing the transport waits for the command to be settled.
        let alive = WorkerGuard::new(&self.inner);
        Box::pin(async move {
            let _alive = alive;
            let Some(delivery) = delivery else {
                return Ok(());
            };
            // `None`: acknowledged; `Some(why)`: terminated.
            let term = match settle_for(&result) {
                Settle::HandBack(delay) => return delivery.nack(delay).await,
                Settle::Ack => None,
                Settle::Term(why) => Some(why),
            };
            // The answer is made (and, over max_payload, replaced by a small failure)
            // before the delivery is settled: nothing about its size can lose it after.
            let answer = result_message(&max_payload, result);
            // Settled before answering: an answered command is never handled again. A
            // handled command whose reply is over max_payload is still acknowledged (its
            // effects are done; running it again would repeat them): the sender is answered
            // `failed` naming the reply's size, and the reply is not kept.
            match term {
                None => delivery.ack().await?,
                Some(why) => delivery.term(&why).await?,
            }
            let Some(to) = reply_to else {
                return Ok(());
            };
            // Nobody listens any more when the sender gave up: the server drops it.
            publish_result(&client, to, answer).await
        })
    }
}

/// Creates (or updates) the work-queue stream of durable commands when the configuration
/// has durable command topics.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<(), ConnectError> {
    if config.durable_commands.is_empty() {
        return Ok(());
    }
    let stream_config = stream::Config {
        retention: stream::RetentionPolicy::WorkQueue,
        ..retention::stream_config(
            config,
            &config.durable_command_stream,
            &config.durable_commands,
            Some(&config.durable_command_prefix),
        )
    };
    retention::ensure_stream(js, &config.durable_command_stream, stream_config).await
}

/// Checks the durable command settings: a plain prefix that overlaps neither the command
/// nor the request prefix (a stream capturing those subjects would answer core requests).
pub(super) fn validate(config: &NatsConfig) -> Result<(), ConnectError> {
    let p = &config.durable_command_prefix;
    if p.is_empty() || p.contains(['*', '>', ' ']) {
        return Err(ConnectError::InvalidConfig(
            "durable_command_prefix must be a plain subject".into(),
        ));
    }
    let overlaps =
        |q: &str| p == q || p.starts_with(&format!("{q}.")) || q.starts_with(&format!("{p}."));
    if overlaps(&config.command_prefix) || overlaps(&config.request_prefix) {
        return Err(ConnectError::InvalidConfig(
            "durable_command_prefix must not overlap command_prefix or request_prefix".into(),
        ));
    }
    if !config.durable_commands.is_empty()
        && sanitize_name(&config.durable_command_stream).is_empty()
    {
        return Err(ConnectError::InvalidConfig(
            "durable_command_stream must be a stream name".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_differ_for_topics_that_sanitize_alike() {
        let a = consumer_name(&Topic::new("a.b").unwrap());
        let b = consumer_name(&Topic::new("a_b").unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("sy_cmd_a_b_"), "{a}");
        assert_eq!(a, consumer_name(&Topic::new("a.b").unwrap()));
    }

    #[test]
    fn overlapping_prefixes_are_refused() {
        let mut c = NatsConfig {
            durable_command_prefix: "_sy.cmd.durable".into(),
            ..NatsConfig::default()
        };
        assert!(validate(&c).is_err());
        c.durable_command_prefix = "_sy.dcmd".into();
        assert!(validate(&c).is_ok());
    }
}
