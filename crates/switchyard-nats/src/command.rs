//! Commands and requests across processes ([`RemoteCommands`]) over core NATS
//! request/reply.
//!
//! A command on topic `t` is a core NATS request to `<command_prefix>.t`; every bus with a
//! handler for `t` subscribes to that subject in the queue group `command_group`, so the
//! server hands each command to exactly one of them, and answers "no responders" at once when
//! there is none (the sender gets `SendError::NoHandler` without waiting). The request
//! carries the envelope as usual (see the crate's header table) plus `Sy-Deadline-Ms`, what
//! is left of the sender's deadline, and `Sy-Deadline-At`, that deadline in Unix
//! milliseconds; the handler side stops waiting for its handler at the earlier of the two,
//! and answers `timeout` without running a command that arrives after `Sy-Deadline-At` (one
//! held in a client's reconnect buffer). A command whose `Sy-Deadline-Ms` or
//! `Sy-Deadline-At` is not a whole number of milliseconds (`soon`, `-5`, `1.5`) is answered
//! `rejected`, naming the header and the value, and not run. A command is not written while
//! the client is disconnected (it would sit in that buffer): `Unavailable` at once.
//!
//! The reply's `Sy-Status` is `ok` or the failure's kind (`no-handler`, `rejected`,
//! `failed`, `full`, `timeout`, `not-processed`, `shutting-down`, `codec`, `transport`), with
//! `Sy-Error` (the message, as plain text on one line), `Sy-Attempts` and `Sy-Handler`. A successful reply that carries
//! the handler's reply envelope says `Sy-Reply: 1` and carries it as any message (headers
//! and body). A reply without `Sy-Status` (from a responder that is not switchyard) is taken
//! as the reply envelope.
//!
//! An answer over the server's `max_payload` (headers and payload) is not sent as it is
//! (the server would drop the handler process's connection): a reply becomes a `failed`
//! answer naming its size, a failure's message is cut short ([`result_message`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Subject};
use futures::StreamExt;
use switchyard_core::{
    BoxFuture, CodecDirection, CodecError, CommandResponder, CommandResult, Envelope,
    IncomingCommand, IncomingCommands, RemoteCommands, SendError, SubscribeError, Topic,
    TransportError, TransportErrorKind,
};

use crate::codec;
use crate::subject::topic_subject;
use crate::transport::{MaxPayload, NatsTransport, WorkerGuard};

/// Header with the milliseconds left of the sender's deadline.
pub(crate) const DEADLINE: &str = "Sy-Deadline-Ms";
/// Header with the sender's deadline as an absolute time (Unix milliseconds): a command
/// that arrives after it (held in a reconnect buffer) is not run.
pub(crate) const DEADLINE_AT: &str = "Sy-Deadline-At";
const STATUS: &str = "Sy-Status";
const ERROR: &str = "Sy-Error";
const ATTEMPTS: &str = "Sy-Attempts";
const HANDLER: &str = "Sy-Handler";
const HAS_REPLY: &str = "Sy-Reply";
/// Header of a durable command naming the inbox its sender waits on for the result.
pub(crate) const REPLY_TO: &str = "Sy-Reply-To";
/// Header carrying a reply's topic (a reply travels on an inbox subject).
pub(crate) const REPLY_TOPIC: &str = "Sy-Topic";

impl NatsTransport {
    fn command_subject(&self, topic: &Topic) -> Result<String, TransportError> {
        let s = topic_subject(topic)
            .map_err(|reason| TransportError::new(TransportErrorKind::Rejected, reason))?;
        Ok(format!("{}.{s}", self.inner.config.command_prefix))
    }

    async fn send_command(
        &self,
        command: Envelope,
        deadline: Option<Duration>,
    ) -> Result<CommandResult, SendError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SendError::ShuttingDown);
        }
        // Refused at once while disconnected: the client would buffer the request and send
        // it after the reconnect, when its sender may long have been answered `timeout`.
        self.ensure_connected()?;
        if self.is_durable(&command.topic) {
            return self.send_durable(command, deadline).await;
        }
        let subject = self.command_subject(&command.topic)?;
        let wait = deadline.unwrap_or(self.inner.config.command_timeout);
        let mut headers = codec::encode_headers(&command);
        if let Some(d) = deadline {
            headers.insert(DEADLINE, d.as_millis().to_string().as_str());
        }
        // The core request ends at `wait` whether or not a deadline was given.
        insert_deadline_at(&mut headers, wait);
        // Refused at once rather than by the server, which drops the connection.
        self.inner
            .max_payload
            .check(command.payload.len(), &headers)?;
        let topic = command.topic;
        let req = async_nats::Request::new()
            .headers(headers)
            .payload(command.payload)
            .timeout(Some(wait));
        let msg = match self.inner.client.send_request(subject, req).await {
            Ok(msg) => msg,
            Err(e) => {
                return Err(match e.kind() {
                    async_nats::client::RequestErrorKind::NoResponders => {
                        SendError::NoHandler { topic }
                    }
                    async_nats::client::RequestErrorKind::TimedOut => {
                        SendError::Timeout { deadline: wait }
                    }
                    _ => SendError::Transport(TransportError::with_source(
                        TransportErrorKind::Unavailable,
                        "command request failed",
                        e,
                    )),
                });
            }
        };
        decode_result(topic, msg.headers.as_ref(), msg.payload)
    }

    async fn serve_commands(&self, topic: &Topic) -> Result<IncomingCommands, SubscribeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::ShuttingDown);
        }
        let subject = self.command_subject(topic)?;
        let sub = self
            .inner
            .client
            .queue_subscribe(subject, self.inner.config.command_group.clone())
            .await
            .map_err(|e| {
                TransportError::with_source(TransportErrorKind::Unavailable, "cannot subscribe", e)
            })?;
        // The server has the interest before the handler counts as registered (a flush only
        // writes the socket: a request from another connection could be routed before the
        // server read the subscription, and get no responders).
        self.server_round_trip().await?;
        let mut closed = self.inner.shutdown.subscribe();
        let serving = Serving {
            inner: self.inner.clone(),
            sub: Some(sub),
            closed: Box::pin(async move {
                let _ = closed.wait_for(|c| *c).await;
            }),
            client: self.inner.client.clone(),
            topic: topic.clone(),
            done: false,
        };
        if self.is_durable(topic) {
            // Durable commands from the stream, and core requests from senders that do not
            // take the topic as durable.
            let durable = self.serve_durable(topic).await?;
            return Ok(Box::pin(futures::stream::select(serving, durable)));
        }
        Ok(Box::pin(serving))
    }
}

/// The commands of one queue subscription, until the transport closes. Dropped (the handler
/// was unregistered, the bus stopped taking commands), it drains the subscription (the
/// server stops sending, what it had sent arrives) and answers every command left with
/// `no-handler`, so no sender waits for a handler that is gone.
struct Serving {
    inner: std::sync::Arc<crate::transport::Inner>,
    sub: Option<async_nats::Subscriber>,
    closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    client: Client,
    topic: Topic,
    done: bool,
}

/// Milliseconds since the Unix epoch now (0 for a clock before it).
fn unix_ms_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A header's value read as milliseconds ([`DEADLINE`], [`DEADLINE_AT`]); `None` when it is
/// missing or not a number.
fn header_ms(headers: Option<&HeaderMap>, name: &str) -> Option<u128> {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse::<u128>().ok())
}

/// Milliseconds as a `Duration` (saturating at `u64::MAX` ms).
fn millis(ms: u128) -> Duration {
    Duration::from_millis(ms.min(u64::MAX as u128) as u64)
}

/// What is left until [`DEADLINE_AT`] (zero once it passed); `None` without it.
fn left_until_deadline_at(headers: Option<&HeaderMap>) -> Option<Duration> {
    header_ms(headers, DEADLINE_AT).map(|at| millis(at.saturating_sub(unix_ms_now())))
}

/// Adds [`DEADLINE_AT`]: now plus `wait`, in Unix milliseconds.
pub(crate) fn insert_deadline_at(headers: &mut HeaderMap, wait: Duration) {
    let at = unix_ms_now().saturating_add(wait.as_millis());
    headers.insert(DEADLINE_AT, at.to_string().as_str());
}

/// What is left of a command's deadline: `Sy-Deadline-Ms` (counted from now), capped by
/// what remains until `Sy-Deadline-At`. `None` without `Sy-Deadline-Ms`: a command sent
/// without a deadline has none for its handler (its `Sy-Deadline-At`, the sender's
/// `command_timeout`, only keeps a late arrival from running).
pub(crate) fn remaining_deadline(headers: Option<&HeaderMap>) -> Option<Duration> {
    let relative = header_ms(headers, DEADLINE).map(millis);
    match (relative, left_until_deadline_at(headers)) {
        (Some(r), Some(a)) => Some(r.min(a)),
        (r, _) => r,
    }
}

/// Why a command's deadline headers cannot be read, if they cannot: [`DEADLINE`] or
/// [`DEADLINE_AT`] present but not a whole number of milliseconds (ASCII digits only: not
/// `soon`, `-5`, `1.5`, `300ms`). Such a command is not run without the deadline its sender
/// meant to set: it is answered `rejected` with this text.
fn malformed_deadline(headers: Option<&HeaderMap>) -> Option<String> {
    let headers = headers?;
    let whole = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let bad = |name: &str| headers.get(name).map(|v| v.as_str()).filter(|v| !whole(v));
    if let Some(v) = bad(DEADLINE) {
        return Some(format!(
            "{DEADLINE} must be a whole number of milliseconds, got \"{v}\""
        ));
    }
    bad(DEADLINE_AT).map(|v| {
        format!(
            "{DEADLINE_AT} must be a whole number of milliseconds since the Unix epoch, \
             got \"{v}\""
        )
    })
}

/// A command with a deadline header that is not a number ([`malformed_deadline`]): answered
/// `rejected` without being handed to the handler (a warning is logged; one sent without a
/// reply subject is only logged).
fn malformed(client: &Client, topic: &Topic, msg: &async_nats::Message) -> bool {
    let Some(reason) = malformed_deadline(msg.headers.as_ref()) else {
        return false;
    };
    tracing::warn!(topic = %topic, %reason, "a command with a malformed deadline: not run");
    answer_unrun(client, msg, SendError::Rejected { reason });
    true
}

/// Answers a command refused before it reached the handler with `error`, when it has a
/// reply subject (on a task of its own: the serving stream does not wait for the write).
fn answer_unrun(client: &Client, msg: &async_nats::Message, error: SendError) {
    let Some(to) = msg.reply.clone() else { return };
    let (headers, payload) = encode_result(Err(error));
    let client = client.clone();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = client.publish_with_headers(to, headers, payload).await;
        });
    }
}

/// What is left of a durable command's deadline: `Sy-Deadline-Ms` counted from `stored` (the
/// server's storage time, so the time it waited in the stream counts), capped by what
/// remains until `Sy-Deadline-At` (the sender's deadline, which a command stored late, after
/// an outage during which its sender gave up, has already passed). Either header alone is
/// the deadline; `None` without both (a durable `send` without a deadline has none: the
/// command waits in the stream for a handler however long).
pub(crate) fn durable_deadline(
    headers: Option<&HeaderMap>,
    stored: std::time::SystemTime,
) -> Option<Duration> {
    let relative = header_ms(headers, DEADLINE).map(|ms| {
        let waited = std::time::SystemTime::now()
            .duration_since(stored)
            .unwrap_or_default();
        millis(ms).saturating_sub(waited)
    });
    match (relative, left_until_deadline_at(headers)) {
        (Some(r), Some(a)) => Some(r.min(a)),
        (r, a) => r.or(a),
    }
}

/// A command whose sender's absolute deadline passed before it arrived (it waited in a
/// client's reconnect buffer): answered `timeout` without being handed to the handler.
fn expired(client: &Client, topic: &Topic, msg: &async_nats::Message) -> bool {
    let late = header_ms(msg.headers.as_ref(), DEADLINE_AT).is_some_and(|at| at <= unix_ms_now());
    if !late {
        return false;
    }
    tracing::warn!(
        topic = %topic,
        "a command arrived after its sender's deadline (Sy-Deadline-At): not run"
    );
    answer_unrun(
        client,
        msg,
        SendError::Timeout {
            deadline: Duration::ZERO,
        },
    );
    true
}

fn incoming(
    client: &Client,
    max_payload: &Arc<MaxPayload>,
    topic: &Topic,
    msg: async_nats::Message,
) -> IncomingCommand {
    let deadline = remaining_deadline(msg.headers.as_ref());
    let envelope = codec::decode(topic.clone(), msg.headers.as_ref(), msg.payload);
    let responder = NatsResponder {
        client: client.clone(),
        max_payload: max_payload.clone(),
        reply_to: msg.reply,
        topic: topic.clone(),
    };
    IncomingCommand::new(envelope, deadline, Box::new(responder))
}

impl futures::Stream for Serving {
    type Item = IncomingCommand;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<IncomingCommand>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done || this.closed.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        let Some(sub) = this.sub.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            return match sub.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => {
                    if malformed(&this.client, &this.topic, &msg)
                        || expired(&this.client, &this.topic, &msg)
                    {
                        continue;
                    }
                    Poll::Ready(Some(incoming(
                        &this.client,
                        &this.inner.max_payload,
                        &this.topic,
                        msg,
                    )))
                }
                Poll::Ready(None) => {
                    this.done = true;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let Some(mut sub) = self.sub.take() else {
            return;
        };
        let (client, topic) = (self.client.clone(), self.topic.clone());
        let max_payload = self.inner.max_payload.clone();
        // Counted until drained, so closing the transport waits for it: no command is
        // routed to this process once close has returned.
        let guard = WorkerGuard::new(&self.inner);
        let transport = NatsTransport {
            inner: self.inner.clone(),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _guard = guard;
                if sub.drain().await.is_ok() {
                    // The server has processed the unsubscription once this returns, and the
                    // client, woken by the answer, ends the drained subscription (otherwise
                    // it only does at its next wake-up, seconds later when idle).
                    let _ = transport.server_round_trip().await;
                    let rest = async {
                        while let Some(msg) = sub.next().await {
                            drop(incoming(&client, &max_payload, &topic, msg));
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), rest).await;
                }
            });
        }
    }
}

impl RemoteCommands for NatsTransport {
    fn send(
        &self,
        command: Envelope,
        deadline: Option<Duration>,
    ) -> BoxFuture<'_, Result<CommandResult, SendError>> {
        Box::pin(self.send_command(command, deadline))
    }

    fn serve<'a>(
        &'a self,
        topic: &'a Topic,
    ) -> BoxFuture<'a, Result<IncomingCommands, SubscribeError>> {
        Box::pin(self.serve_commands(topic))
    }
}

/// Answers one command on its reply subject; dropped unanswered (the handler is gone), it
/// answers `no-handler`.
struct NatsResponder {
    client: Client,
    max_payload: Arc<MaxPayload>,
    reply_to: Option<Subject>,
    topic: Topic,
}

impl Drop for NatsResponder {
    fn drop(&mut self) {
        let Some(to) = self.reply_to.take() else {
            return;
        };
        let (headers, payload) = encode_result(Err(SendError::NoHandler {
            topic: self.topic.clone(),
        }));
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.publish_with_headers(to, headers, payload).await;
            });
        }
    }
}

impl CommandResponder for NatsResponder {
    fn respond(
        self: Box<Self>,
        result: Result<CommandResult, SendError>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let mut this = self;
        let to = this.reply_to.take();
        let client = this.client.clone();
        let max_payload = this.max_payload.clone();
        Box::pin(async move {
            let Some(to) = to else {
                return Ok(());
            };
            let answer = result_message(&max_payload, result);
            publish_result(&client, to, answer).await
        })
    }
}

/// Longest error message (in characters) a failure keeps when its answer would otherwise
/// be over the server's `max_payload`.
const SHORT_ERROR: usize = 256;

/// A command's result as the message answering it (headers and payload).
///
/// An answer the server would not take (headers and payload over its `max_payload`: it would
/// drop this process's whole connection, and the sender would wait for its deadline) is
/// replaced by a small one: a successful result by a `failed` answer naming the reply's size
/// and the limit (the reply itself is not sent; a warning is logged), a failure by the same
/// status with its message cut to [`SHORT_ERROR`] characters. `Err` when even that is over
/// the limit (a server with a tiny `max_payload`): nothing can be sent.
pub(crate) fn result_message(
    max_payload: &MaxPayload,
    result: Result<CommandResult, SendError>,
) -> Result<(HeaderMap, bytes::Bytes), switchyard_core::TooLarge> {
    let attempts = match &result {
        Ok(done) => Some(done.attempts),
        Err(_) => None,
    };
    let (mut headers, payload) = encode_result(result);
    let Err(too_large) = max_payload.check(payload.len(), &headers) else {
        return Ok((headers, payload));
    };
    let (headers, payload) = match attempts {
        Some(attempts) => {
            tracing::warn!(
                size = too_large.size,
                limit = too_large.limit,
                "a command's result is over the server's max_payload: the sender is answered \
                 failed instead"
            );
            encode_result(Err(SendError::Failed {
                error: format!("the handler's reply was not sent: {too_large}"),
                attempts,
            }))
        }
        None => {
            if let Some(message) = headers.get(ERROR) {
                let mut short: String = message.as_str().chars().take(SHORT_ERROR).collect();
                short.push_str(" (cut short: over max_payload)");
                headers.insert(ERROR, short.as_str());
            }
            (headers, payload)
        }
    };
    max_payload
        .check(payload.len(), &headers)
        .map(|()| (headers, payload))
}

/// Publishes a command's answer ([`result_message`], measured there) to the sender's reply
/// subject. An answer still over the server's `max_payload` is not sent (the server would
/// drop the connection): `Rejected`, and the sender waits for its deadline.
pub(crate) async fn publish_result(
    client: &async_nats::Client,
    to: Subject,
    answer: Result<(HeaderMap, bytes::Bytes), switchyard_core::TooLarge>,
) -> Result<(), TransportError> {
    let (headers, payload) = answer.map_err(|e| {
        TransportError::with_source(
            TransportErrorKind::Rejected,
            "cannot reply: even the short answer is over max_payload",
            e,
        )
    })?;
    client
        .publish_with_headers(to, headers, payload)
        .await
        .map_err(|e| {
            TransportError::with_source(TransportErrorKind::Unavailable, "cannot reply", e)
        })
}

fn encode_result(result: Result<CommandResult, SendError>) -> (HeaderMap, bytes::Bytes) {
    match result {
        Ok(done) => {
            let (mut h, payload) = match done.reply {
                Some(reply) => {
                    let mut h = codec::encode_headers(&reply);
                    h.insert(REPLY_TOPIC, reply.topic.as_str());
                    h.insert(HAS_REPLY, "1");
                    (h, reply.payload)
                }
                None => (HeaderMap::new(), bytes::Bytes::new()),
            };
            h.insert(STATUS, "ok");
            h.insert(HANDLER, codec::escape(&done.handler, false).as_str());
            h.insert(ATTEMPTS, done.attempts.to_string().as_str());
            (h, payload)
        }
        Err(e) => {
            let mut h = HeaderMap::new();
            let status = match &e {
                SendError::NoHandler { .. } => "no-handler",
                SendError::Rejected { .. } => "rejected",
                SendError::Failed { attempts, .. } => {
                    h.insert(ATTEMPTS, attempts.to_string().as_str());
                    "failed"
                }
                SendError::Full { handler } => {
                    h.insert(HANDLER, codec::escape(handler, false).as_str());
                    "full"
                }
                SendError::Timeout { deadline } => {
                    h.insert(DEADLINE, deadline.as_millis().to_string().as_str());
                    "timeout"
                }
                SendError::NotProcessed(_) => "not-processed",
                SendError::ShuttingDown => "shutting-down",
                SendError::Codec(_) => "codec",
                _ => "transport",
            };
            h.insert(STATUS, status);
            let message = match &e {
                SendError::Rejected { reason } => reason.clone(),
                SendError::Failed { error, .. } => error.clone(),
                SendError::NotProcessed(m) => m.clone(),
                other => other.to_string(),
            };
            h.insert(ERROR, readable(&message).as_str());
            (h, bytes::Bytes::new())
        }
    }
}

/// An error message as a header value any client reads as it is: control characters
/// (line breaks) become spaces, surrounding spaces are trimmed.
fn readable(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The text of a remote failure, as it was sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RemoteError(String);

pub(crate) fn decode_result(
    topic: Topic,
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
) -> Result<CommandResult, SendError> {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let text = |name: &str| get(name).map(codec::unescape).unwrap_or_default();
    let attempts = get(ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(1);
    let reply_topic = || match get(REPLY_TOPIC).map(Topic::new) {
        Some(Ok(t)) => t,
        _ => topic.clone(),
    };
    let status = match get(STATUS) {
        // Not from switchyard: the whole message is the reply.
        None => {
            return Ok(CommandResult {
                reply: Some(codec::decode(reply_topic(), headers, payload)),
                handler: "remote".into(),
                attempts: 1,
            });
        }
        Some(s) => s,
    };
    let error = get(ERROR).unwrap_or_default().to_owned();
    Err(match status {
        "ok" => {
            // switchyard marks a reply with `Sy-Reply: 1` (so an empty reply differs from
            // none); another responder sends `Sy-Status: ok` and its result as the body.
            let has_reply = match get(HAS_REPLY) {
                Some(flag) => flag == "1",
                None => !payload.is_empty(),
            };
            let reply = has_reply.then(|| codec::decode(reply_topic(), headers, payload));
            return Ok(CommandResult {
                reply,
                handler: text(HANDLER).into(),
                attempts,
            });
        }
        "no-handler" => SendError::NoHandler { topic },
        "rejected" => SendError::Rejected { reason: error },
        "failed" => SendError::Failed { error, attempts },
        "full" => SendError::Full {
            handler: text(HANDLER),
        },
        "timeout" => SendError::Timeout {
            deadline: Duration::from_millis(
                get(DEADLINE).and_then(|d| d.parse().ok()).unwrap_or(0),
            ),
        },
        "not-processed" => SendError::NotProcessed(error),
        "shutting-down" => SendError::ShuttingDown,
        "codec" => SendError::Codec(CodecError {
            direction: CodecDirection::Decode,
            type_name: "remote command",
            source: Box::new(RemoteError(error)),
        }),
        _ => SendError::Transport(TransportError::with_source(
            TransportErrorKind::Unavailable,
            "the handler's process failed",
            RemoteError(error),
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_header_that_is_not_a_whole_number_is_malformed() {
        let with = |name: &str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, v);
            malformed_deadline(Some(&h))
        };
        for v in ["soon", "-5", "1.5", "300ms", "+5", " 5", ""] {
            assert_eq!(
                with(DEADLINE, v),
                Some(format!(
                    "Sy-Deadline-Ms must be a whole number of milliseconds, got \"{v}\""
                )),
                "{v:?}"
            );
            let at = with(DEADLINE_AT, v).unwrap_or_default();
            assert!(
                at.starts_with("Sy-Deadline-At must be a whole number"),
                "{at}"
            );
        }
        for v in [
            "0",
            "250",
            "007",
            "99999999999999999999999999999999999999999999",
        ] {
            assert_eq!(with(DEADLINE, v), None, "{v:?}");
            assert_eq!(with(DEADLINE_AT, v), None, "{v:?}");
        }
        assert_eq!(malformed_deadline(None), None);
        assert_eq!(malformed_deadline(Some(&HeaderMap::new())), None);
    }

    #[test]
    fn the_deadline_left_is_the_earlier_of_the_relative_and_the_absolute_one() {
        let mut h = HeaderMap::new();
        h.insert(DEADLINE, "60000");
        insert_deadline_at(&mut h, Duration::from_secs(5));
        let left = remaining_deadline(Some(&h)).unwrap();
        assert!(left <= Duration::from_secs(5), "{left:?}");
        assert!(left > Duration::from_secs(3), "{left:?}");

        let mut late = HeaderMap::new();
        late.insert(DEADLINE, "60000");
        let past = unix_ms_now() - 1_000;
        late.insert(DEADLINE_AT, past.to_string().as_str());
        assert_eq!(remaining_deadline(Some(&late)), Some(Duration::ZERO));

        let mut relative = HeaderMap::new();
        relative.insert(DEADLINE, "250");
        assert_eq!(
            remaining_deadline(Some(&relative)),
            Some(Duration::from_millis(250))
        );
        assert_eq!(remaining_deadline(None), None);

        // A send without a deadline: none for the handler.
        let mut absolute = HeaderMap::new();
        insert_deadline_at(&mut absolute, Duration::from_secs(30));
        assert_eq!(remaining_deadline(Some(&absolute)), None);
    }

    #[test]
    fn a_durable_commands_deadline_is_the_earlier_of_storage_time_plus_ms_and_the_absolute_one() {
        let now = std::time::SystemTime::now();
        // Stored just now with 60 s left, but its sender's deadline passed a second ago
        // (stored late, after an outage): nothing left.
        let mut late = HeaderMap::new();
        late.insert(DEADLINE, "60000");
        late.insert(DEADLINE_AT, (unix_ms_now() - 1_000).to_string().as_str());
        assert_eq!(durable_deadline(Some(&late), now), Some(Duration::ZERO));

        // Stored 2 s ago with 3 s left, the absolute deadline far away: about 1 s left.
        let mut stored = HeaderMap::new();
        stored.insert(DEADLINE, "3000");
        insert_deadline_at(&mut stored, Duration::from_secs(60));
        let left = durable_deadline(Some(&stored), now - Duration::from_secs(2)).unwrap();
        assert!(left <= Duration::from_secs(1), "{left:?}");
        assert!(left > Duration::from_millis(500), "{left:?}");

        // Either alone is the deadline; neither: none.
        let mut absolute = HeaderMap::new();
        insert_deadline_at(&mut absolute, Duration::from_secs(5));
        let left = durable_deadline(Some(&absolute), now).unwrap();
        assert!(
            left <= Duration::from_secs(5) && left > Duration::from_secs(3),
            "{left:?}"
        );
        let mut relative = HeaderMap::new();
        relative.insert(DEADLINE, "250");
        assert!(durable_deadline(Some(&relative), now).unwrap() <= Duration::from_millis(250));
        assert_eq!(durable_deadline(Some(&HeaderMap::new()), now), None);
        assert_eq!(durable_deadline(None, now), None);
    }
}
