//! Request/reply over core NATS (not JetStream): a request on topic `t` is sent to
//! `<request_prefix>.t` with a fresh inbox; the server answers "no responders" at once when
//! nobody subscribes, so that case fails fast instead of waiting for the deadline.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, Subject};
use futures::{Stream, StreamExt};
use switchyard_core::{
    Envelope, Pattern, SubscribeError, Topic, TransportError, TransportErrorKind,
};

use crate::codec;
use crate::error::RequestError;
use crate::subject::{pattern_subjects, topic_subject};
use crate::transport::{MaxPayload, NatsTransport};

/// Header carrying a reply's topic (a reply travels on an inbox subject).
const REPLY_TOPIC: &str = "Sy-Topic";

impl NatsTransport {
    fn request_subject(&self, topic: &Topic) -> Result<String, TransportError> {
        let s = topic_subject(topic)
            .map_err(|reason| TransportError::new(TransportErrorKind::Rejected, reason))?;
        Ok(format!("{}.{s}", self.inner.config.request_prefix))
    }

    /// Sends `request` and waits at most `deadline` for one reply. Fails at once with
    /// [`RequestError::NoResponders`] when nobody serves the topic, and with
    /// [`RequestError::TooLarge`] when its payload and encoded headers together exceed the
    /// server's `max_payload`. While the client is not connected (the server down, a
    /// reconnect under way) it fails at once with [`RequestError::Transport`] (`Unavailable`)
    /// and nothing is written: the client would keep the request in its reconnect buffer and
    /// send it after the reconnect, when this call had long returned `Timeout`.
    pub async fn request(
        &self,
        request: Envelope,
        deadline: Duration,
    ) -> Result<Envelope, RequestError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(RequestError::Closed);
        }
        // Refused at once while disconnected, as a command is (`send_command`).
        self.ensure_connected()?;
        let subject = self.request_subject(&request.topic)?;
        let headers = codec::encode_headers(&request);
        // Refused at once rather than by the server, which drops the connection.
        self.inner
            .max_payload
            .check(request.payload.len(), &headers)?;
        let req = async_nats::Request::new()
            .headers(headers)
            .payload(request.payload.clone())
            .timeout(Some(deadline));
        let sent = tokio::time::timeout(
            deadline,
            self.inner.client.send_request(subject.clone(), req),
        )
        .await;
        let msg = match sent {
            Err(_) => return Err(RequestError::Timeout { deadline }),
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    async_nats::client::RequestErrorKind::NoResponders => {
                        RequestError::NoResponders { subject }
                    }
                    async_nats::client::RequestErrorKind::TimedOut => {
                        RequestError::Timeout { deadline }
                    }
                    _ => RequestError::Transport(TransportError::with_source(
                        TransportErrorKind::Unavailable,
                        "request failed",
                        e,
                    )),
                });
            }
            Ok(Ok(msg)) => msg,
        };
        let topic = match msg
            .headers
            .as_ref()
            .and_then(|h| h.get(REPLY_TOPIC))
            .map(|v| Topic::new(v.as_str()))
        {
            Some(Ok(t)) => t,
            Some(Err(e)) => return Err(RequestError::InvalidReply(e.to_string())),
            None => request.topic.clone(),
        };
        Ok(codec::decode(topic, msg.headers.as_ref(), msg.payload))
    }

    /// Serves requests whose topic matches `pattern`. With `queue_group`, the requests are
    /// shared among every responder of that group (each request to one); without, every
    /// responder gets each request (and the first reply wins). Dropping the stream
    /// unsubscribes.
    ///
    /// A pattern with `#` in the middle is served through a wider subscription and filtered
    /// here; a request that matches the subscription but not the pattern gets no reply (its
    /// requester times out instead of failing fast).
    pub async fn respond(
        &self,
        pattern: &Pattern,
        queue_group: Option<&str>,
    ) -> Result<RequestStream, SubscribeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::ShuttingDown);
        }
        let prefix = &self.inner.config.request_prefix;
        let subjects = pattern_subjects(pattern);
        let mut subs = Vec::new();
        for s in &subjects.list {
            let subject = format!("{prefix}.{s}");
            let sub = match queue_group {
                Some(g) => {
                    self.inner
                        .client
                        .queue_subscribe(subject, g.to_owned())
                        .await
                }
                None => self.inner.client.subscribe(subject).await,
            }
            .map_err(|e| {
                TransportError::with_source(TransportErrorKind::Unavailable, "cannot subscribe", e)
            })?;
            subs.push(sub);
        }
        // The server has the interest before the caller sends requests: a flush only writes
        // the socket, so a request from another connection could still get no responders.
        self.server_round_trip().await?;
        let client = self.inner.client.clone();
        let max_payload = self.inner.max_payload.clone();
        let pattern = pattern.clone();
        let strip = format!("{prefix}.");
        let merged = futures::stream::select_all(subs).filter_map(move |msg| {
            let client = client.clone();
            let max_payload = max_payload.clone();
            let topic = msg
                .subject
                .as_str()
                .strip_prefix(strip.as_str())
                .and_then(|t| Topic::new(t).ok());
            let pattern_ok = topic.as_ref().is_some_and(|t| pattern.matches(t));
            async move {
                let topic = topic.filter(|_| pattern_ok)?;
                let envelope = codec::decode(topic, msg.headers.as_ref(), msg.payload);
                Some(IncomingRequest {
                    envelope,
                    reply_to: msg.reply,
                    client,
                    max_payload,
                })
            }
        });
        Ok(RequestStream {
            inner: Box::pin(merged),
        })
    }
}

/// The requests one [`NatsTransport::respond`] call serves.
pub struct RequestStream {
    inner: Pin<Box<dyn Stream<Item = IncomingRequest> + Send>>,
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream").finish_non_exhaustive()
    }
}

impl Stream for RequestStream {
    type Item = IncomingRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<IncomingRequest>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// One request waiting for its reply.
pub struct IncomingRequest {
    /// The request.
    pub envelope: Envelope,
    reply_to: Option<Subject>,
    client: Client,
    /// The transport's `max_payload`, for the reply.
    max_payload: std::sync::Arc<MaxPayload>,
}

impl std::fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("envelope", &self.envelope)
            .field("reply_to", &self.reply_to)
            .finish()
    }
}

impl IncomingRequest {
    /// Sends `reply` to the requester (a no-op when the request asked for none).
    ///
    /// A reply whose payload and encoded headers together exceed the server's `max_payload`
    /// is not sent (the server would drop this connection): it fails at once with a
    /// `Rejected` [`TransportError`] whose source is the [`switchyard_core::TooLarge`], and
    /// the requester, who gets nothing, waits for its deadline.
    pub async fn reply(self, reply: Envelope) -> Result<(), TransportError> {
        let Some(to) = self.reply_to else {
            return Ok(());
        };
        let mut headers = codec::encode_headers(&reply);
        headers.insert(REPLY_TOPIC, reply.topic.as_str());
        self.max_payload
            .check(reply.payload.len(), &headers)
            .map_err(|e| {
                TransportError::with_source(TransportErrorKind::Rejected, "reply not sent", e)
            })?;
        self.client
            .publish_with_headers(to, headers, reply.payload)
            .await
            .map_err(|e| {
                TransportError::with_source(TransportErrorKind::Unavailable, "cannot reply", e)
            })
    }
}
