//! ZeroMQ ingestion and output (feature `zmq`), on the pure-Rust `zeromq` crate.
//!
//! - [`ZmqSource`]: a PULL or SUB socket, bound or connected, whose messages are decoded into typed
//!   values and fed to a pipeline. A message that cannot be decoded goes to the dead-letter sink
//!   with its raw bytes (reason `DecodeFailed`) and is counted as `rejected`.
//! - [`ZmqPubSink`]: a stage that publishes its inputs on a PUB socket.
//!
//! Framing: the payload is the last frame of a ZeroMQ message. When a message has more than one
//! frame (the usual `[topic, payload]` of PUB/SUB), the first frame is kept in the envelope's
//! `zmq.topic` header.
//!
//! Size limit: [`ZmqSourceBuilder::max_message_bytes`] (on a PULL source over TCP 1 GiB unless
//! set: [`DEFAULT_TCP_PULL_LIMIT`]). On a PULL source over TCP, an oversize
//! message is discarded as it arrives (never held whole) and dead-lettered by reference: its
//! first 256 bytes as payload and headers `zmq.size`, `zmq.limit` and `zmq.peer`, reason
//! `Rejected`. A SUB source checks the limit after receiving (the `zeromq` crate reads frames
//! whole), so it bounds what goes on, not the memory a huge frame takes meanwhile.
//!
//! Use PUSH/PULL when every message must arrive: PUB/SUB drops messages for subscribers that are not
//! connected yet ("slow joiners") and when a subscriber falls behind, by ZeroMQ's design.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_core::{DeadLetter, DeadLetterReason, Envelope, Topic};
use zeromq::{Socket, SocketRecv, SocketSend, ZmqError, ZmqMessage};

use crate::error::{SocketError, SourceError, StageError, StageErrorKind};
use crate::runner::{Feed, Source, StopSignal};
use crate::stage::Stage;
use crate::zmtp::{HEAD_BYTES, LimitedPull, Received};

/// Topic given to envelopes built from ZeroMQ messages unless [`ZmqSourceBuilder::topic`] says
/// otherwise.
pub const DEFAULT_INGRESS_TOPIC: &str = "zmq.ingress";

/// Header holding the first frame of a multi-frame message.
pub const TOPIC_HEADER: &str = "zmq.topic";

/// Header of an oversize message's dead letter: its size in bytes.
pub const SIZE_HEADER: &str = "zmq.size";
/// The size limit of a PULL source over TCP without [`ZmqSourceBuilder::max_message_bytes`]:
/// 1 GiB (a larger message is dead-lettered by reference, never held).
pub const DEFAULT_TCP_PULL_LIMIT: usize = 1 << 30;

/// Header of an oversize message's dead letter: the limit it broke.
pub const LIMIT_HEADER: &str = "zmq.limit";
/// Header of an oversize message's dead letter: the peer that sent it.
pub const PEER_HEADER: &str = "zmq.peer";

/// Which receiving socket a [`ZmqSource`] opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZmqSocketKind {
    /// A PULL socket: every message sent by PUSH peers arrives (load-balanced among PULL peers).
    Pull,
    /// A SUB socket subscribed to these prefixes (an empty prefix receives everything).
    Sub {
        /// Subscription prefixes.
        prefixes: Vec<String>,
    },
}

type Decoder<T> = Arc<dyn Fn(&Bytes) -> Result<T, StageError> + Send + Sync>;

/// Configures a [`ZmqSource`]; finish with [`bind`](Self::bind) or [`connect`](Self::connect).
pub struct ZmqSourceBuilder<T> {
    kind: ZmqSocketKind,
    name: String,
    topic: Option<Topic>,
    decoder: Decoder<T>,
    max_message_bytes: Option<usize>,
}

impl<T> std::fmt::Debug for ZmqSourceBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqSourceBuilder")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

enum RecvSocket {
    Pull(zeromq::PullSocket),
    Sub(zeromq::SubSocket),
    /// PULL with a size limit (see the `zmtp` module).
    Limited(LimitedPull),
}

impl RecvSocket {
    async fn recv(&mut self, limit: Option<usize>) -> Result<Received, ZmqError> {
        let message = match self {
            Self::Pull(s) => s.recv().await?,
            Self::Sub(s) => s.recv().await?,
            Self::Limited(s) => return s.recv().await.ok_or(ZmqError::NoMessage),
        };
        let frames = message.into_vec();
        let size: usize = frames.iter().map(Bytes::len).sum();
        match limit {
            Some(limit) if size > limit => {
                let mut head = Vec::with_capacity(HEAD_BYTES);
                for f in &frames {
                    let room = HEAD_BYTES - head.len();
                    head.extend_from_slice(&f[..f.len().min(room)]);
                }
                Ok(Received::Oversize {
                    size: size as u64,
                    head: head.into(),
                    peer: String::new(),
                })
            }
            _ => Ok(Received::Message(frames)),
        }
    }

    async fn close(self) {
        let errors = match self {
            Self::Pull(s) => s.close().await,
            Self::Sub(s) => s.close().await,
            Self::Limited(s) => {
                s.close();
                Vec::new()
            }
        };
        for e in errors {
            tracing::debug!(error = %e, "closing ZeroMQ socket");
        }
    }
}

/// A ZeroMQ PULL or SUB socket feeding a pipeline with decoded `T`s.
///
/// ```no_run
/// use switchyard_pipeline::zmq::ZmqSource;
/// # async fn f() -> Result<(), switchyard_pipeline::SocketError> {
/// #[derive(serde::Deserialize)]
/// struct Reading { id: u64 }
/// let source = ZmqSource::pull().decode_json::<Reading>().bind("tcp://127.0.0.1:5555").await?;
/// println!("listening on {}", source.endpoint());
/// # Ok(()) }
/// ```
pub struct ZmqSource<T> {
    socket: RecvSocket,
    endpoint: String,
    name: String,
    topic: Topic,
    decoder: Decoder<T>,
    limit: Option<usize>,
}

impl<T> std::fmt::Debug for ZmqSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqSource")
            .field("endpoint", &self.endpoint)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ZmqSource<Bytes> {
    /// A PULL source yielding raw payloads (decode later, or call a `decode_*` method).
    pub fn pull() -> ZmqSourceBuilder<Bytes> {
        ZmqSourceBuilder::new(ZmqSocketKind::Pull)
    }

    /// A SUB source subscribed to `prefixes`, yielding raw payloads.
    pub fn sub<P: Into<String>>(prefixes: impl IntoIterator<Item = P>) -> ZmqSourceBuilder<Bytes> {
        ZmqSourceBuilder::new(ZmqSocketKind::Sub {
            prefixes: prefixes.into_iter().map(Into::into).collect(),
        })
    }
}

impl<T> ZmqSource<T> {
    /// The endpoint actually bound or connected (with the port resolved when binding port 0).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl ZmqSourceBuilder<Bytes> {
    /// A builder for a source of `kind` yielding raw payloads. Name `zmq-source`, topic
    /// [`DEFAULT_INGRESS_TOPIC`].
    pub fn new(kind: ZmqSocketKind) -> Self {
        Self {
            kind,
            name: "zmq-source".to_owned(),
            topic: None,
            decoder: Arc::new(|b: &Bytes| Ok(b.clone())),
            max_message_bytes: None,
        }
    }
}

impl<T: Send + 'static> ZmqSourceBuilder<T> {
    /// Names the source in the monitor (`<name>`/`recv`, `<name>`/`decode`) and in dead letters.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Topic of the envelopes built from received messages (what dead letters show).
    pub fn topic(mut self, topic: Topic) -> Self {
        self.topic = Some(topic);
        self
    }

    /// The largest message (all its frames), in bytes, taken into the pipeline; a larger one
    /// is dead-lettered by reference (its first 256 bytes, its size, the limit and its peer),
    /// reason `Rejected`. On a PULL source over TCP it is never held whole: its frames are
    /// discarded as they arrive, so three 256 MiB messages cost no more memory than the limit.
    /// Default: [`DEFAULT_TCP_PULL_LIMIT`] (1 GiB) on a PULL source over TCP, no limit
    /// otherwise.
    ///
    /// ```no_run
    /// use switchyard_pipeline::zmq::ZmqSource;
    /// # async fn f() -> Result<(), switchyard_pipeline::SocketError> {
    /// let source = ZmqSource::pull().max_message_bytes(1 << 20).bind("tcp://127.0.0.1:5555").await?;
    /// # let _ = source; Ok(()) }
    /// ```
    pub fn max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = Some(limit);
        self
    }

    /// Decodes payloads as JSON into `U`.
    pub fn decode_json<U: DeserializeOwned + Send + 'static>(self) -> ZmqSourceBuilder<U> {
        self.decode_with(|b: &Bytes| serde_json::from_slice(b).map_err(StageError::decode))
    }

    /// Decodes payloads with `decoder`; an error dead-letters the message.
    pub fn decode_with<U: Send + 'static>(
        self,
        decoder: impl Fn(&Bytes) -> Result<U, StageError> + Send + Sync + 'static,
    ) -> ZmqSourceBuilder<U> {
        ZmqSourceBuilder {
            kind: self.kind,
            name: self.name,
            topic: self.topic,
            decoder: Arc::new(decoder),
            max_message_bytes: self.max_message_bytes,
        }
    }

    async fn open(&self) -> Result<RecvSocket, SocketError> {
        Ok(match &self.kind {
            ZmqSocketKind::Pull => RecvSocket::Pull(zeromq::PullSocket::new()),
            ZmqSocketKind::Sub { prefixes } => {
                let mut s = zeromq::SubSocket::new();
                for prefix in prefixes {
                    s.subscribe(prefix)
                        .await
                        .map_err(|e| SocketError::Subscribe {
                            prefix: prefix.clone(),
                            source: Box::new(e),
                        })?;
                }
                RecvSocket::Sub(s)
            }
        })
    }

    fn finish(self, socket: RecvSocket, endpoint: String) -> Result<ZmqSource<T>, SocketError> {
        let topic = match self.topic {
            Some(t) => t,
            None => Topic::from_static(DEFAULT_INGRESS_TOPIC).map_err(|e| SocketError::Bind {
                endpoint: endpoint.clone(),
                source: Box::new(e),
            })?,
        };
        Ok(ZmqSource {
            socket,
            endpoint,
            name: self.name,
            topic,
            decoder: self.decoder,
            limit: self.max_message_bytes,
        })
    }

    /// The size limit of a PULL source read by switchyard's own ZMTP reader: the configured
    /// one, or [`DEFAULT_TCP_PULL_LIMIT`] over TCP. (The `zeromq` crate's reader panics in its
    /// own task on a frame header announcing more than it can reserve, e.g. `u64::MAX`, and
    /// reserves a frame's whole announced size up front; review rev6.)
    fn limited(&self, endpoint: &str) -> Option<usize> {
        match self.kind {
            ZmqSocketKind::Pull if endpoint.starts_with("tcp://") => {
                Some(self.max_message_bytes.unwrap_or(DEFAULT_TCP_PULL_LIMIT))
            }
            ZmqSocketKind::Pull => self.max_message_bytes,
            ZmqSocketKind::Sub { .. } => None,
        }
    }

    /// Binds `endpoint` (e.g. `tcp://127.0.0.1:5555`, or port 0 for any free port).
    pub async fn bind(self, endpoint: &str) -> Result<ZmqSource<T>, SocketError> {
        if let Some(limit) = self.limited(endpoint) {
            let (pull, bound) =
                LimitedPull::bind(endpoint, limit)
                    .await
                    .map_err(|e| SocketError::Bind {
                        endpoint: endpoint.to_owned(),
                        source: Box::new(e),
                    })?;
            return self.finish(RecvSocket::Limited(pull), bound);
        }
        let mut socket = self.open().await?;
        let bound = match &mut socket {
            RecvSocket::Pull(s) => s.bind(endpoint).await,
            RecvSocket::Sub(s) => s.bind(endpoint).await,
            RecvSocket::Limited(_) => Err(ZmqError::Other(
                "a size-limited socket is opened by LimitedPull",
            )),
        }
        .map_err(|e| SocketError::Bind {
            endpoint: endpoint.to_owned(),
            source: Box::new(e),
        })?;
        self.finish(socket, bound.to_string())
    }

    /// Connects to `endpoint`; resolves once connected.
    pub async fn connect(self, endpoint: &str) -> Result<ZmqSource<T>, SocketError> {
        if let Some(limit) = self.limited(endpoint) {
            let pull =
                LimitedPull::connect(endpoint, limit)
                    .await
                    .map_err(|e| SocketError::Connect {
                        endpoint: endpoint.to_owned(),
                        source: Box::new(e),
                    })?;
            return self.finish(RecvSocket::Limited(pull), endpoint.to_owned());
        }
        let mut socket = self.open().await?;
        match &mut socket {
            RecvSocket::Pull(s) => s.connect(endpoint).await,
            RecvSocket::Sub(s) => s.connect(endpoint).await,
            RecvSocket::Limited(_) => Err(ZmqError::Other(
                "a size-limited socket is opened by LimitedPull",
            )),
        }
        .map_err(|e| SocketError::Connect {
            endpoint: endpoint.to_owned(),
            source: Box::new(e),
        })?;
        self.finish(socket, endpoint.to_owned())
    }
}

/// Builds the envelope for one received message: payload = last frame, first frame of a
/// multi-frame message in the `zmq.topic` header.
fn envelope_of(topic: &Topic, frames: Vec<Bytes>) -> Envelope {
    let payload = frames.last().cloned().unwrap_or_default();
    let mut env = Envelope::new(topic.clone(), payload);
    if let [first, _, ..] = frames.as_slice() {
        env.headers_mut()
            .insert(TOPIC_HEADER, String::from_utf8_lossy(first).as_ref());
    }
    env
}

impl<T: Send + 'static> Source<T> for ZmqSource<T> {
    fn name(&self) -> Cow<'static, str> {
        Cow::Owned(self.name.clone())
    }

    async fn run(mut self, feed: Feed<T>, mut stop: StopSignal) -> Result<(), SourceError> {
        let recv_op = feed.monitor().op(&self.name, "recv");
        let decode_op = feed.monitor().op(&self.name, "decode");
        let result = loop {
            let received = tokio::select! {
                biased;
                () = stop.stopped() => break Ok(()),
                received = self.socket.recv(self.limit) => received,
            };
            let frames = match received {
                Ok(Received::Message(frames)) => frames,
                Ok(Received::Oversize { size, head, peer }) => {
                    let limit = self.limit.unwrap_or(0);
                    recv_op.error("too_large");
                    tracing::warn!(endpoint = %self.endpoint, %peer, size, limit, "ZeroMQ message over max_message_bytes dead-lettered by reference");
                    let mut env = Envelope::new(self.topic.clone(), head)
                        .with_header(SIZE_HEADER, size.to_string())
                        .with_header(LIMIT_HEADER, limit.to_string());
                    if !peer.is_empty() {
                        env = env.with_header(PEER_HEADER, peer);
                    }
                    feed.dead_letter(
                        DeadLetter::new(
                            env,
                            DeadLetterReason::Rejected,
                            format!(
                                "message of {size} bytes is over max_message_bytes ({limit} bytes); \
                                 discarded on arrival, its first {HEAD_BYTES} bytes kept"
                            ),
                        )
                        .with_handler(self.name.clone()),
                    );
                    continue;
                }
                Err(ZmqError::NoMessage) => {
                    break Err(SourceError::Receive {
                        endpoint: self.endpoint.clone(),
                        source: Box::new(ZmqError::NoMessage),
                    });
                }
                Err(e) => {
                    // A peer that misbehaves or disconnects abruptly; the others keep going.
                    recv_op.error("peer");
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "ZeroMQ receive error");
                    continue;
                }
            };
            let started = Instant::now();
            let env = envelope_of(&self.topic, frames);
            match (self.decoder)(&env.payload) {
                Ok(value) => {
                    decode_op.success(started.elapsed());
                    match feed.send_with_origin(value, env).await {
                        Ok(()) => recv_op.success(started.elapsed()),
                        Err(refused) => {
                            // Received but not accepted: shutdown closed intake first.
                            if let Some(origin) = refused.origin {
                                feed.dead_letter(
                                    DeadLetter::new(
                                        origin,
                                        DeadLetterReason::Shutdown,
                                        "pipeline shut down before accepting the message",
                                    )
                                    .with_handler(self.name.clone()),
                                );
                            }
                            break Ok(());
                        }
                    }
                }
                Err(e) => {
                    decode_op.error(e.error_type());
                    feed.dead_letter(
                        DeadLetter::new(env, DeadLetterReason::DecodeFailed, e.chain())
                            .with_handler(self.name.clone()),
                    );
                }
            }
        };
        self.socket.close().await;
        result
    }
}

type Encoder<T> = Arc<dyn Fn(&T) -> Result<Bytes, StageError> + Send + Sync>;

/// A stage that publishes each input on a ZeroMQ PUB socket (optionally as `[topic, payload]`).
///
/// PUB never blocks and never fails for want of subscribers: with none, messages are discarded, as
/// ZeroMQ defines.
pub struct ZmqPubSink<T> {
    socket: zeromq::PubSocket,
    endpoint: String,
    name: String,
    topic_frame: Option<Bytes>,
    encoder: Encoder<T>,
    _t: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for ZmqPubSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqPubSink")
            .field("endpoint", &self.endpoint)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ZmqPubSink<Bytes> {
    /// A PUB socket bound to `endpoint`, publishing raw payloads.
    pub async fn bind(endpoint: &str) -> Result<Self, SocketError> {
        let mut socket = zeromq::PubSocket::new();
        let bound = socket.bind(endpoint).await.map_err(|e| SocketError::Bind {
            endpoint: endpoint.to_owned(),
            source: Box::new(e),
        })?;
        Ok(Self::raw(socket, bound.to_string()))
    }

    /// A PUB socket connected to `endpoint`, publishing raw payloads.
    pub async fn connect(endpoint: &str) -> Result<Self, SocketError> {
        let mut socket = zeromq::PubSocket::new();
        socket
            .connect(endpoint)
            .await
            .map_err(|e| SocketError::Connect {
                endpoint: endpoint.to_owned(),
                source: Box::new(e),
            })?;
        Ok(Self::raw(socket, endpoint.to_owned()))
    }

    fn raw(socket: zeromq::PubSocket, endpoint: String) -> Self {
        Self {
            socket,
            endpoint,
            name: "zmq-pub".to_owned(),
            topic_frame: None,
            encoder: Arc::new(|b: &Bytes| Ok(b.clone())),
            _t: PhantomData,
        }
    }
}

impl<T> ZmqPubSink<T> {
    /// The endpoint bound or connected.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends every message as `[topic, payload]` so SUB sockets can filter on `topic`.
    pub fn topic_frame(mut self, topic: impl Into<Bytes>) -> Self {
        self.topic_frame = Some(topic.into());
        self
    }

    /// Names the sink in the monitor.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Publishes inputs of type `U` encoded as JSON.
    pub fn encode_json<U: Serialize>(self) -> ZmqPubSink<U> {
        self.encode_with(|v: &U| {
            serde_json::to_vec(v)
                .map(Bytes::from)
                .map_err(StageError::other)
        })
    }

    /// Publishes inputs of type `U` encoded by `encoder`.
    pub fn encode_with<U>(
        self,
        encoder: impl Fn(&U) -> Result<Bytes, StageError> + Send + Sync + 'static,
    ) -> ZmqPubSink<U> {
        ZmqPubSink {
            socket: self.socket,
            endpoint: self.endpoint,
            name: self.name,
            topic_frame: self.topic_frame,
            encoder: Arc::new(encoder),
            _t: PhantomData,
        }
    }
}

impl<T: Send + Sync + 'static> Stage<T, ()> for ZmqPubSink<T> {
    fn name(&self) -> Cow<'static, str> {
        Cow::Owned(self.name.clone())
    }

    async fn run(&mut self, input: T) -> Result<(), StageError> {
        let payload = (self.encoder)(&input)?;
        let message = match &self.topic_frame {
            None => ZmqMessage::from(payload),
            Some(topic) => {
                let mut m = ZmqMessage::from(topic.clone());
                m.push_back(payload);
                m
            }
        };
        self.socket
            .send(message)
            .await
            .map_err(|e| StageError::with_source(StageErrorKind::Io, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_frame_is_the_payload() {
        let topic = Topic::new("zmq.ingress").unwrap();
        let env = envelope_of(&topic, vec![Bytes::from_static(b"{}")]);
        assert_eq!(env.payload.as_ref(), b"{}");
        assert_eq!(env.header(TOPIC_HEADER), None);
        assert_eq!(env.topic, topic);
    }

    #[test]
    fn multi_frame_keeps_the_first_frame_as_topic_header() {
        let topic = Topic::new("zmq.ingress").unwrap();
        let m = vec![
            Bytes::from_static(b"readings"),
            Bytes::from_static(b"payload"),
        ];
        let env = envelope_of(&topic, m);
        assert_eq!(env.payload.as_ref(), b"payload");
        assert_eq!(env.header(TOPIC_HEADER), Some("readings"));
    }

    #[tokio::test]
    async fn bind_reports_the_resolved_port_and_refuses_bad_endpoints() {
        let s = ZmqSource::pull().bind("tcp://127.0.0.1:0").await.unwrap();
        assert!(s.endpoint().starts_with("tcp://127.0.0.1:"));
        assert!(!s.endpoint().ends_with(":0"));
        let e = ZmqSource::pull().bind("nonsense").await.unwrap_err();
        assert!(matches!(e, SocketError::Bind { .. }), "{e}");
    }
}
