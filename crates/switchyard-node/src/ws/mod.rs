//! `GET /v1/ws`: the WebSocket gateway. The protocol (JSON text frames) is in
//! docs/gateway.md ("WebSocket"); in short:
//!
//! - `subscribe` / `unsubscribe`: a pattern, ephemeral (this connection's own subscription,
//!   no consumer group on the transport) or as a member of a named group (several
//!   connections, here or on other nodes of the same transport, share its messages), with
//!   `ack: "auto"` (settled once queued for the client) or `"manual"` (`ack` / `nack`, a
//!   `nack` with `hand_back: true` being the bus's hand-back, not an attempt); the
//!   `subscribed` answer names the bus subscription;
//! - `publish` and `publish_batch`;
//! - `handle` / `unhandle`: this connection executes a command topic (`command` frames,
//!   answered with `result`), alone or as a member of a handler group (see [`handlers`]);
//!   its disconnect fails the commands it holds at once, or hands them to the group's next
//!   member;
//! - `send` / `request`: a command or request with its `reply`.
//!
//! Each connection has a reader (this task), a writer task draining a bounded outbound
//! buffer (see [`outbound`]), and its registrations on the bus. When the connection ends,
//! every manual delivery it holds is handed back (to another group member at once, or
//! dead-lettered when none is left), and its subscriptions and handlers are dropped. A
//! connection opened with a JWT ends so at the JWT's `exp` plus the leeway (an
//! `unauthenticated` error op, then close 1008).

mod conn;
mod frames;
mod handlers;
mod outbound;
mod slots;
mod targets;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use switchyard::{Envelope, Kind, Pattern, Topic};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::conn::{CallResult, Conn, Settle};
use self::frames::{
    ClientFrame, Op, PublishFields, answer, error_frame, error_frame_with, required,
};
use self::handlers::{HandleSpec, HandlerRecord};
use self::outbound::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, Closed, LastSeen, Outbound,
    run_writer,
};
use self::slots::Slot;
pub use self::targets::Hub;
use self::targets::{DEFAULT_IN_FLIGHT, MAX_IN_FLIGHT, SubRecord, SubscribeSpec};
use crate::auth::{Action, Principal};
use crate::error::{ApiError, ErrorKind};
use crate::http::Authed;
use crate::state::AppState;
use crate::wire::{self, PublishMeta};

/// Subscriptions one connection may hold at once.
const MAX_SUBSCRIPTIONS: usize = 256;
/// Command topics one connection may handle at once.
const MAX_HANDLERS: usize = 256;
/// `send`/`request` ops of one connection waiting for their reply at once; past it the
/// connection is not read until one finishes.
const MAX_PENDING_CALLS: usize = 256;
/// Commands a remote handler gets at once by default (`concurrency`).
const DEFAULT_CONCURRENCY: usize = 16;
/// Most commands a remote handler may get at once.
const MAX_CONCURRENCY: usize = 1024;

/// Names of the bus subscriptions WebSocket clients make start with this
/// (`ws:<principal>:<connection>:<subscription id>` for their own, see
/// [`targets::own_name`], `ws:group:<principal>:<group>` for groups, see
/// [`targets::group_bus_name`]); remote handlers are
/// `ws-handler:...` ([`HANDLER_PREFIX`]).
pub(crate) const SUBSCRIPTION_PREFIX: &str = "ws:";

/// Names of the bus handlers WebSocket clients register
/// (`ws-handler:<principal>:<connection>:<handler id>` alone, see [`handlers::own_name`],
/// `ws-handler:group:<principal>:<group>` for groups, see [`handlers::group_bus_name`]).
pub(crate) const HANDLER_PREFIX: &str = "ws-handler:";

/// True for a bus registration a WebSocket client made: a subscription or a remote handler.
pub(crate) fn is_ws_registration(name: &str) -> bool {
    name.starts_with(SUBSCRIPTION_PREFIX) || name.starts_with(HANDLER_PREFIX)
}

/// The breaker of a WebSocket registration: it never opens. A subscription's "failures" are
/// the client's nacks, deliveries dropped from a slow client's buffer and acks that did not
/// come in time; a remote handler's are its `ok: false` answers, disconnects and commands
/// dropped from its buffer. Each is redelivered or retried and, past the retry policy,
/// dead-lettered or answered with a typed error. Counting them would hold the next delivery
/// or command silently for the cool-down, for every member of a group because one client
/// fails (ARCHITECTURE.md, Decisions).
pub(crate) fn registration_breaker() -> switchyard_middleware::breaker::BreakerConfig {
    switchyard_middleware::breaker::BreakerConfig::default().failure_predicate(|_| false)
}

/// Upgrades an authenticated client to the WebSocket protocol.
pub(crate) async fn ws_handler(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("/v1/ws takes a WebSocket upgrade: {}", e.body_text()),
        )
    })?;
    let slot = Slot::take(&state.ws, &state.config.ws, principal.name())?;
    let max_frame = state.config.ws.max_frame_bytes;
    Ok(ws
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            run(state, principal, socket).await;
        }))
}

async fn run(state: AppState, principal: Principal, socket: WebSocket) {
    let config = &state.config.ws;
    let id = state.ws.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let closing = CancellationToken::new();
    let out = Arc::new(Outbound::new(
        config.outbound_buffer,
        config.slow_client,
        state.metrics.clone(),
        closing.clone(),
    ));
    let (sink, mut stream) = socket.split();
    let last_seen = Arc::new(LastSeen::new());
    let ping =
        (config.ping_interval_ms > 0).then(|| Duration::from_millis(config.ping_interval_ms));
    let writer = tokio::spawn(run_writer(out.clone(), sink, ping, last_seen.clone()));
    state.metrics.ws_connection(true);
    tracing::debug!(
        conn = id,
        principal = principal.name(),
        "WebSocket connected"
    );
    let conn = Arc::new(Conn::new(id, principal, out.clone(), closing.clone()));
    let mut session = Session {
        state: state.clone(),
        conn,
        subs: HashMap::new(),
        handlers: HashMap::new(),
        next_sid: 0,
        next_hid: 0,
        calls: JoinSet::new(),
        call_permits: Arc::new(Semaphore::new(MAX_PENDING_CALLS)),
        announcing: false,
    };
    // Made once: a fresh `cancelled()` per frame would register a waiter per frame.
    let closed = closing.cancelled();
    let node_stopping = state.shutdown.cancelled();
    let expired = session.conn.principal.credential_expiry();
    tokio::pin!(closed, node_stopping, expired);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut closed => break,
            _ = &mut node_stopping => {
                out.close(CLOSE_GOING_AWAY, "node shutting down");
                break;
            }
            () = &mut expired => {
                let e = session.conn.principal.expired_error();
                tracing::info!(conn = id, principal = session.conn.principal.name(), "WebSocket closed: its JWT expired");
                out.close_with(CLOSE_POLICY, "token expired", Some(error_frame(None, &e)));
                break;
            }
            next = stream.next() => next,
        };
        last_seen.touch();
        let handled = match next {
            None => break,
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("Space limit exceeded") || text.contains("too long") {
                    out.close(
                        CLOSE_TOO_BIG,
                        format!(
                            "frame larger than ws.max_frame_bytes = {} bytes",
                            config.max_frame_bytes
                        ),
                    );
                }
                tracing::debug!(conn = id, error = %text, "WebSocket read failed");
                break;
            }
            Some(Ok(Message::Text(text))) => session.on_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                let e = ApiError::new(
                    ErrorKind::BadRequest,
                    "binary frames are not part of the protocol: send JSON text frames",
                );
                session.send(error_frame(None, &e)).await
            }
            Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
        };
        if handled.is_err() {
            break;
        }
        while session.calls.try_join_next().is_some() {}
    }
    out.close(CLOSE_NORMAL, "");
    session.end().await;
    let _ = writer.await;
    state.metrics.ws_connection(false);
    tracing::debug!(conn = id, "WebSocket disconnected");
}

/// The reader's side of one connection: what it registered, and the ops.
struct Session {
    state: AppState,
    conn: Arc<Conn>,
    subs: HashMap<Arc<str>, SubRecord>,
    handlers: HashMap<String, HandlerRecord>,
    next_sid: u64,
    /// The last handler id given (`h1`, `h2`...): names the connection's own handlers.
    next_hid: u64,
    calls: JoinSet<()>,
    call_permits: Arc<Semaphore>,
    /// A `subscribe` or `handle` holds deliveries back until its answer is queued (see
    /// `Outbound::announcing`).
    announcing: bool,
}

/// What an op answers: a frame, or nothing (`ack`, `nack`, `result`, and `send`/`request`
/// whose reply comes later).
type OpResult = Result<Option<Utf8Bytes>, ApiError>;

impl Session {
    async fn send(&self, text: Utf8Bytes) -> Result<(), Closed> {
        self.conn.out.answer(text).await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Closed> {
        let (mut frame, op) = match ClientFrame::parse(text) {
            Ok(parsed) => parsed,
            Err((id, e)) => return self.send(error_frame(id.as_deref(), &e)).await,
        };
        let id = frame.id;
        let result = match op {
            Op::Publish => self.publish(id, frame.take_message()).await,
            Op::PublishBatch => self.publish_batch(id, &mut frame).await,
            Op::Subscribe => self.subscribe(id, &frame).await,
            Op::Unsubscribe => self.unsubscribe(id, &frame).await,
            Op::Ack | Op::Nack => self.settle(op, &frame),
            Op::Handle => self.handle(id, &frame).await,
            Op::Unhandle => self.unhandle(id, &frame).await,
            Op::Result => self.result(&mut frame),
            Op::Send | Op::Request => self.call(op, id, &mut frame).await,
        };
        let sent = match result {
            Ok(Some(text)) => self.send(text).await,
            Ok(None) => Ok(()),
            Err(e) => self.send(error_frame(id, &e)).await,
        };
        // The answer (or error) of a subscribe is queued, or the connection is ending.
        if std::mem::take(&mut self.announcing) {
            self.conn.out.announced();
        }
        sent
    }

    async fn publish(&self, id: Option<&RawValue>, fields: PublishFields<'_>) -> OpResult {
        let state = &self.state;
        let env = envelope(
            state,
            &self.conn.principal,
            "publish",
            Kind::Event,
            Action::Publish,
            fields,
        )?;
        state.check_publish_rate(&self.conn.principal)?;
        let published = Published {
            message_id: env.id.to_string(),
            correlation_id: env.correlation_id.to_string(),
        };
        if let Err(e) = state.bus.publish_envelope(env).await {
            // The id, so a retry (the message may still be stored) can be deduplicated.
            let mut extra = serde_json::Map::new();
            extra.insert("message_id".into(), published.message_id.into());
            return Ok(Some(error_frame_with(id, &ApiError::from(e), extra)));
        }
        state.metrics.published_one();
        Ok(Some(answer("published", id, published)))
    }

    /// Validates every message first (none is published when one is invalid), then
    /// publishes in order; the first refusal stops it and says how many went out.
    async fn publish_batch(&self, id: Option<&RawValue>, frame: &mut ClientFrame<'_>) -> OpResult {
        let state = &self.state;
        let principal = &self.conn.principal;
        let items = required(frame.messages.take(), "publish_batch", "messages")?;
        if items.is_empty() {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "publish_batch needs at least one message",
            ));
        }
        let mut envs = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let env = envelope(
                state,
                principal,
                "publish_batch",
                Kind::Event,
                Action::Publish,
                item,
            )
            .map_err(|e| ApiError::new(e.kind, format!("messages[{i}]: {}", e.message)))?;
            envs.push(env);
        }
        let mut ids = Vec::with_capacity(envs.len());
        for env in envs {
            let message_id = env.id.to_string();
            let sent = match state.check_publish_rate(principal) {
                Ok(()) => state
                    .bus
                    .publish_envelope(env)
                    .await
                    .map_err(ApiError::from),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                let mut extra = serde_json::Map::new();
                extra.insert("published".into(), ids.len().into());
                extra.insert("message_ids".into(), ids.into());
                return Ok(Some(error_frame_with(id, &e, extra)));
            }
            state.metrics.published_one();
            ids.push(message_id);
        }
        #[derive(Serialize)]
        struct Batch {
            count: usize,
            message_ids: Vec<String>,
        }
        Ok(Some(answer(
            "published_batch",
            id,
            Batch {
                count: ids.len(),
                message_ids: ids,
            },
        )))
    }

    async fn subscribe(&mut self, id: Option<&RawValue>, frame: &ClientFrame<'_>) -> OpResult {
        let pattern = required(frame.pattern.as_deref(), "subscribe", "pattern")?;
        Pattern::new(pattern).map_err(|e| ApiError::topic(&e))?;
        self.state
            .auth
            .authorize(&self.conn.principal, Action::Subscribe, pattern)?;
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("a connection holds at most {MAX_SUBSCRIPTIONS} subscriptions"),
            ));
        }
        let max_in_flight = frame.max_in_flight.unwrap_or(DEFAULT_IN_FLIGHT);
        if max_in_flight == 0 || max_in_flight > MAX_IN_FLIGHT {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("max_in_flight = {max_in_flight}: allowed 1 to {MAX_IN_FLIGHT}"),
            ));
        }
        self.next_sid += 1;
        let sid: Arc<str> = format!("s{}", self.next_sid).into();
        let spec = SubscribeSpec {
            sid: sid.clone(),
            pattern,
            group: frame.group.as_deref(),
            mode: frame.ack.unwrap_or_default(),
            max_in_flight,
        };
        // The subscription may deliver at once (a group's backlog): its messages wait in the
        // outbound buffer until `on_text` has queued this op's answer, so the client learns
        // the id first.
        self.conn.out.announcing();
        self.announcing = true;
        let record = self
            .state
            .ws
            .subscribe(&self.state, &self.conn, spec)
            .await?;
        let name = record.bus_name();
        self.subs.insert(sid.clone(), record);
        #[derive(Serialize)]
        struct Subscribed<'a> {
            subscription: &'a str,
            /// The bus name (`/v1/stats`, `/metrics`).
            name: &'a str,
        }
        Ok(Some(answer(
            "subscribed",
            id,
            Subscribed {
                subscription: &sid,
                name: &name,
            },
        )))
    }

    async fn unsubscribe(&mut self, id: Option<&RawValue>, frame: &ClientFrame<'_>) -> OpResult {
        let sid = required(frame.subscription.as_deref(), "unsubscribe", "subscription")?;
        let Some((sid, record)) = self.subs.remove_entry(sid) else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no subscription {sid:?} on this connection"),
            ));
        };
        self.state
            .ws
            .unsubscribe(&self.state, self.conn.id, &sid, record)
            .await;
        #[derive(Serialize)]
        struct Unsubscribed<'a> {
            subscription: &'a str,
        }
        Ok(Some(answer(
            "unsubscribed",
            id,
            Unsubscribed { subscription: &sid },
        )))
    }

    fn settle(&self, op: Op, frame: &ClientFrame<'_>) -> OpResult {
        let name = if op == Op::Ack { "ack" } else { "nack" };
        let delivery = required(frame.delivery.as_deref(), name, "delivery")?;
        let delay = frame.delay_ms.map(Duration::from_millis);
        let error = frame.error.as_deref().map(str::to_owned);
        let settle = match op {
            Op::Ack => Settle::Ack,
            _ if frame.hand_back == Some(true) && frame.reject == Some(true) => {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    "nack: `hand_back` and `reject` exclude each other (hand back: deliver it again; reject: dead-letter it now)",
                ));
            }
            _ if frame.hand_back == Some(true) => Settle::HandBack(delay, error),
            _ if frame.reject == Some(true) => Settle::Reject(error),
            _ => Settle::Nack(delay, error),
        };
        let known = delivery
            .parse::<u64>()
            .is_ok_and(|d| self.conn.settle(d, settle));
        if known {
            Ok(None)
        } else {
            Err(ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "delivery {delivery:?} is not waiting for an ack (auto-ack subscription, already settled, or redelivered after the ack deadline)"
                ),
            ))
        }
    }

    async fn handle(&mut self, id: Option<&RawValue>, frame: &ClientFrame<'_>) -> OpResult {
        let topic = required(frame.topic.as_deref(), "handle", "topic")?;
        let topic = Topic::new(topic).map_err(|e| ApiError::topic(&e))?;
        self.state
            .auth
            .authorize(&self.conn.principal, Action::Send, topic.as_str())?;
        if self.handlers.contains_key(topic.as_str()) {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("this connection already handles {topic}"),
            ));
        }
        if self.handlers.len() >= MAX_HANDLERS {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("a connection handles at most {MAX_HANDLERS} command topics"),
            ));
        }
        if let Some(concurrency) = frame.concurrency
            && (concurrency == 0 || concurrency > MAX_CONCURRENCY)
        {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("concurrency = {concurrency}: allowed 1 to {MAX_CONCURRENCY}"),
            ));
        }
        self.next_hid += 1;
        let hid = format!("h{}", self.next_hid);
        let spec = HandleSpec {
            topic: topic.as_str(),
            hid: &hid,
            group: frame.group.as_deref(),
            concurrency: frame.concurrency,
            default_concurrency: DEFAULT_CONCURRENCY,
        };
        // A sender may be waiting already: its command waits in the outbound buffer until
        // `on_text` has queued this op's answer (as for `subscribe`).
        self.conn.out.announcing();
        self.announcing = true;
        let registration = self.state.ws.handle(&self.state, &self.conn, spec).await?;
        let text = answer(
            "handling",
            id,
            Handling {
                topic: topic.as_str(),
                name: registration.bus_name(),
            },
        );
        self.handlers.insert(topic.to_string(), registration);
        Ok(Some(text))
    }

    async fn unhandle(&mut self, id: Option<&RawValue>, frame: &ClientFrame<'_>) -> OpResult {
        let topic = required(frame.topic.as_deref(), "unhandle", "topic")?;
        let Some(record) = self.handlers.remove(topic) else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("this connection does not handle {topic:?}"),
            ));
        };
        self.state
            .ws
            .unhandle(&self.state, self.conn.id, topic, record)
            .await;
        #[derive(Serialize)]
        struct Unhandled<'a> {
            topic: &'a str,
        }
        Ok(Some(answer("unhandled", id, Unhandled { topic })))
    }

    fn result(&self, frame: &mut ClientFrame<'_>) -> OpResult {
        let call = required(frame.call.take(), "result", "call")?;
        let ok = required(frame.ok, "result", "ok")?;
        let result = if ok {
            if frame.error.is_some()
                || frame.reject.is_some()
                || frame.hand_back.is_some()
                || frame.delay_ms.is_some()
            {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    "a result with ok: true takes a payload, not error, reject or hand_back",
                ));
            }
            let (payload, content_type) = payload(
                &self.state,
                frame.payload.take(),
                frame.payload_base64.take(),
                frame.content_type.take(),
            )?;
            CallResult::Ok {
                payload,
                content_type,
            }
        } else {
            if frame.payload.is_some() || frame.payload_base64.is_some() {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    "a result with ok: false takes error (and reject), not a payload",
                ));
            }
            let reject = frame.reject.unwrap_or(false);
            let hand_back = frame.hand_back.unwrap_or(false);
            if reject && hand_back {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    "a result takes reject or hand_back, not both",
                ));
            }
            if frame.delay_ms.is_some() && !hand_back {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    "delay_ms goes with hand_back: true",
                ));
            }
            let error = frame.error.take().map(std::borrow::Cow::into_owned);
            if hand_back {
                CallResult::HandedBack {
                    error: error.unwrap_or_else(|| "handed back by the remote handler".to_owned()),
                    delay: frame.delay_ms.map(Duration::from_millis),
                }
            } else {
                CallResult::Failed {
                    error: error.unwrap_or_else(|| "remote handler failed".to_owned()),
                    reject,
                }
            }
        };
        let known = call
            .parse::<u64>()
            .is_ok_and(|k| self.conn.answer_call(k, result));
        if known {
            Ok(None)
        } else {
            Err(ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "call {call:?} is not waiting for a result (already answered, timed out, or unknown)"
                ),
            ))
        }
    }

    /// `send` / `request`: validated here, then run in a task so the connection keeps
    /// being read; the `reply` (or error) comes when the handler answers.
    async fn call(
        &mut self,
        op: Op,
        id: Option<&RawValue>,
        frame: &mut ClientFrame<'_>,
    ) -> OpResult {
        let limits = &self.state.config.limits;
        let (name, kind, default_ms) = match op {
            Op::Send => ("send", Kind::Command, limits.send_timeout_ms),
            _ => ("request", Kind::Request, limits.default_request_timeout_ms),
        };
        let ms = frame.timeout_ms.unwrap_or(default_ms);
        if ms == 0 || ms > limits.max_request_timeout_ms.max(default_ms) {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!(
                    "timeout_ms = {ms}: allowed 1 to limits.max_request_timeout_ms = {}",
                    limits.max_request_timeout_ms
                ),
            ));
        }
        let fields = frame.take_message();
        let env = envelope(
            &self.state,
            &self.conn.principal,
            name,
            kind,
            Action::Send,
            fields,
        )?;
        // A command is a message put on the bus like a publish: it takes from the same bucket.
        self.state.check_publish_rate(&self.conn.principal)?;
        let Ok(permit) = self.call_permits.clone().acquire_owned().await else {
            return Err(ApiError::new(ErrorKind::Internal, "call limiter closed"));
        };
        let id: Option<Box<RawValue>> = id.map(ToOwned::to_owned);
        let bus = self.state.bus.clone();
        let conn = self.conn.clone();
        let deadline = Duration::from_millis(ms);
        self.calls.spawn(async move {
            let _permit = permit;
            let text = match run_call(&bus, env, deadline).await {
                Ok(reply) => answer("reply", id.as_deref(), reply),
                Err(e) => error_frame(id.as_deref(), &e),
            };
            let _ = conn.out.answer(text).await;
        });
        Ok(None)
    }

    /// Ends the session: every subscription and handler goes (manual deliveries still
    /// unacked were already handed back when the connection closed).
    async fn end(&mut self) {
        for (sid, record) in self.subs.drain() {
            self.state
                .ws
                .unsubscribe(&self.state, self.conn.id, &sid, record)
                .await;
        }
        for (topic, record) in self.handlers.drain() {
            self.state
                .ws
                .unhandle(&self.state, self.conn.id, &topic, record)
                .await;
        }
        self.calls.abort_all();
    }
}

/// A reply to a `send`/`request`.
#[derive(Serialize)]
struct ReplyFrame {
    message_id: String,
    correlation_id: String,
    attempts: u32,
    content_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

async fn run_call(
    bus: &switchyard::Bus,
    env: Envelope,
    deadline: Duration,
) -> Result<ReplyFrame, ApiError> {
    let (id, correlation) = (env.id.clone(), env.correlation_id.clone());
    let kind = env.kind;
    let result = if kind == Kind::Request {
        bus.request_envelope(env, deadline).await?
    } else {
        match tokio::time::timeout(deadline, bus.send_envelope(env)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ApiError::new(
                    ErrorKind::Timeout,
                    format!("no reply within {} ms", deadline.as_millis()),
                ));
            }
        }
    };
    let r = crate::http::command::reply_json(id, correlation, result);
    Ok(ReplyFrame {
        message_id: r.id,
        correlation_id: r.correlation_id,
        attempts: r.attempts,
        content_type: r.content_type,
        payload: r.payload,
        payload_base64: r.payload_base64,
    })
}

/// The answer to a `handle`.
#[derive(Serialize)]
struct Handling<'a> {
    topic: &'a str,
    /// The bus name (`/v1/stats`, `/metrics`).
    name: &'a str,
}

/// The answer to a `publish`.
#[derive(Serialize)]
struct Published {
    message_id: String,
    correlation_id: String,
}

/// A payload from `payload` (JSON, kept as written) or `payload_base64` (any bytes), with
/// its content type; checked against `limits.max_message_bytes`.
fn payload(
    state: &AppState,
    json: Option<&RawValue>,
    base64: Option<std::borrow::Cow<'_, str>>,
    content_type: Option<std::borrow::Cow<'_, str>>,
) -> Result<(Bytes, String), ApiError> {
    let (bytes, content_type) = match (json, base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "give payload (JSON) or payload_base64 (bytes), not both",
            ));
        }
        (json, None) => {
            let content_type =
                content_type.map_or_else(|| wire::JSON.to_owned(), |c| c.into_owned());
            if !wire::is_json(&content_type) {
                return Err(ApiError::new(
                    ErrorKind::UnsupportedContentType,
                    format!(
                        "payload is JSON, so content_type must be JSON (got {content_type:?}); send other bytes as payload_base64"
                    ),
                ));
            }
            let bytes = match json {
                Some(raw) => Bytes::copy_from_slice(raw.get().as_bytes()),
                None => Bytes::from_static(b"null"),
            };
            (bytes, content_type)
        }
        (None, Some(b64)) => {
            let bytes = BASE64.decode(b64.as_bytes()).map_err(|e| {
                ApiError::new(
                    ErrorKind::BadRequest,
                    format!("payload_base64 is not base64: {e}"),
                )
            })?;
            let content_type = content_type
                .map_or_else(|| "application/octet-stream".to_owned(), |c| c.into_owned());
            if wire::is_json(&content_type)
                && let Err(e) = wire::check_json(&bytes)
            {
                return Err(ApiError::new(
                    ErrorKind::MalformedJson,
                    format!("payload_base64 is not valid JSON (content_type {content_type}): {e}"),
                ));
            }
            (Bytes::from(bytes), content_type)
        }
    };
    let limit = state.config.limits.max_message_bytes;
    if bytes.len() > limit {
        return Err(ApiError::new(
            ErrorKind::TooLarge,
            format!(
                "message payload of {} bytes is larger than limits.max_message_bytes = {limit} bytes",
                bytes.len()
            ),
        ));
    }
    Ok((bytes, content_type))
}

/// Validates topic, grant, payload and metadata of one message and builds its envelope.
fn envelope(
    state: &AppState,
    principal: &Principal,
    op: &str,
    kind: Kind,
    action: Action,
    fields: PublishFields<'_>,
) -> Result<Envelope, ApiError> {
    let topic = required(fields.topic.as_deref(), op, "topic")?;
    let topic = Topic::new(topic).map_err(|e| ApiError::topic(&e))?;
    state.auth.authorize(principal, action, topic.as_str())?;
    let (payload, content_type) = payload(
        state,
        fields.payload,
        fields.payload_base64,
        fields.content_type,
    )?;
    if let Some(tp) = &fields.traceparent
        && tp
            .parse::<switchyard_middleware::trace::TraceContext>()
            .is_err()
    {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("traceparent {tp:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"),
        ));
    }
    let meta = PublishMeta {
        message_id: fields.message_id.map(|c| c.into_owned()),
        correlation_id: fields.correlation_id.map(|c| c.into_owned()),
        causation_id: fields.causation_id.map(|c| c.into_owned()),
        traceparent: fields.traceparent.map(|c| c.into_owned()),
        priority: fields.priority,
        source: fields.source.map(|c| c.into_owned()),
        headers: fields
            .headers
            .map(|h| h.into_iter().collect())
            .unwrap_or_default(),
        type_name: fields.type_name.map(|c| c.into_owned()),
        type_version: fields.type_version.map(|v| v.get().to_owned()),
    };
    let mut env = wire::build_envelope(topic, kind, &content_type, payload, meta, principal.name())
        .map_err(|e| {
            // build_envelope speaks of HTTP headers; here they are fields.
            let message = e
                .message
                .replace("x-causation-id", "causation_id")
                .replace("x-type-name", "type_name")
                .replace("x-type-version", "type_version");
            ApiError::new(e.kind, message)
        })?;
    state.check_layers(principal, action, &mut env)?;
    state.check_contract(&env)?;
    Ok(env)
}
