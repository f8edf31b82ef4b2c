//! The outbound side of one connection: a bounded buffer with the slow-client policy, and
//! the writer task that drains it into the socket.
//!
//! Two queues, each holding at most `ws.outbound_buffer` frames:
//! - **answers** to the client's own ops (`published`, `subscribed`, `reply`, `error`...):
//!   never dropped; a producer waits for room, so a client that does not read its answers
//!   stops being read (TCP backpressure) instead of growing the buffer;
//! - **deliveries** (`message`, `command`): when full, the slow-client policy applies:
//!   `drop_oldest` evicts the oldest delivery (counted, reported to the client with
//!   `{"op":"dropped","count":n}`, and a manual-ack delivery or a command that is evicted is
//!   handed back to its waiter so it is redelivered or failed, never lost silently);
//!   `disconnect` closes the connection with code 1008.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use futures::stream::SplitSink;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::SlowClientPolicy;
use crate::metrics::GatewayMetrics;

/// Close code of a slow client under the `disconnect` policy (policy violation).
pub(crate) const CLOSE_POLICY: u16 = 1008;
/// Close code when the node shuts down (going away).
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code of a frame over `ws.max_frame_bytes` (message too big).
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
/// Close code of a normal end.
pub(crate) const CLOSE_NORMAL: u16 = 1000;

/// How long the writer tries to get the close frame out before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Frames written per flush at most.
const BATCH: usize = 128;

/// What waits for a delivery that is still in the buffer: told when it is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    /// A manual-ack delivery (its number).
    Delivery(u64),
    /// A remote handler call (its number).
    Call(u64),
}

struct Queued {
    text: Utf8Bytes,
    token: Option<Token>,
}

#[derive(Default)]
struct State {
    answers: VecDeque<Utf8Bytes>,
    deliveries: VecDeque<Queued>,
    /// Deliveries dropped and not yet reported to the client.
    unreported_drops: u64,
    /// Largest delivery queue length seen.
    high_water: usize,
    /// Subscriptions made but not yet answered: while any is, deliveries wait (queued in
    /// order) so that no `message` of a subscription goes out before its `subscribed`.
    unannounced: usize,
    /// No more frames are taken; the close frame to send, if any.
    closed: bool,
    close: Option<(u16, String)>,
    /// A last text frame to send before the close frame (the reason, as an error op).
    last: Option<Utf8Bytes>,
}

/// The connection is closed (or closing): nothing more is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// One connection's outbound buffer. Shared by everything that writes to the client.
pub(crate) struct Outbound {
    state: Mutex<State>,
    wake_writer: Notify,
    room: Notify,
    capacity: usize,
    policy: SlowClientPolicy,
    metrics: Arc<GatewayMetrics>,
    /// Cancelled when the connection ends, whoever ends it.
    closing: CancellationToken,
}

impl Outbound {
    pub(crate) fn new(
        capacity: usize,
        policy: SlowClientPolicy,
        metrics: Arc<GatewayMetrics>,
        closing: CancellationToken,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake_writer: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            policy,
            metrics,
            closing,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an answer, waiting while the answer queue is full.
    pub(crate) async fn answer(&self, text: Utf8Bytes) -> Result<(), Closed> {
        let mut text = match self.try_answer(text)? {
            None => return Ok(()),
            Some(text) => text,
        };
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            text = match self.try_answer(text)? {
                None => return Ok(()),
                Some(text) => text,
            };
            tokio::select! {
                _ = room => {}
                _ = self.closing.cancelled() => return Err(Closed),
            }
        }
    }

    /// Holds deliveries back (answers still go out) until [`announced`](Self::announced):
    /// called before a subscription is made, whose answer must precede its messages.
    pub(crate) fn announcing(&self) {
        self.lock().unannounced += 1;
    }

    /// The answer of a subscription [`announcing`](Self::announcing) held for is queued
    /// (or could not be): deliveries go out again once no other one is pending.
    pub(crate) fn announced(&self) {
        let mut st = self.lock();
        st.unannounced = st.unannounced.saturating_sub(1);
        drop(st);
        self.wake_writer.notify_one();
    }

    /// Queues an answer if there is room; gives it back otherwise.
    fn try_answer(&self, text: Utf8Bytes) -> Result<Option<Utf8Bytes>, Closed> {
        let mut st = self.lock();
        if st.closed {
            return Err(Closed);
        }
        if st.answers.len() >= self.capacity {
            return Ok(Some(text));
        }
        st.answers.push_back(text);
        drop(st);
        self.wake_writer.notify_one();
        Ok(None)
    }

    /// Queues a delivery under the slow-client policy. `Ok` holds the token of a delivery
    /// evicted to make room (its waiter must be told); `Err` means the connection is closed,
    /// or was just closed by the `disconnect` policy.
    pub(crate) fn deliver(
        &self,
        text: Utf8Bytes,
        token: Option<Token>,
    ) -> Result<Option<Token>, Closed> {
        let mut st = self.lock();
        if st.closed {
            return Err(Closed);
        }
        let mut evicted = None;
        if st.deliveries.len() >= self.capacity {
            match self.policy {
                SlowClientPolicy::DropOldest => {
                    if let Some(victim) = st.deliveries.pop_front() {
                        evicted = victim.token;
                    }
                    st.unreported_drops += 1;
                    self.metrics.ws_dropped(1);
                }
                SlowClientPolicy::Disconnect => {
                    st.closed = true;
                    st.close = Some((
                        CLOSE_POLICY,
                        format!(
                            "client too slow: {} outbound messages buffered (ws.outbound_buffer), slow_client = disconnect",
                            self.capacity
                        ),
                    ));
                    st.answers.clear();
                    st.deliveries.clear();
                    drop(st);
                    self.metrics.ws_slow_disconnect();
                    tracing::warn!(
                        capacity = self.capacity,
                        "WebSocket client too slow: disconnecting"
                    );
                    self.closing.cancel();
                    self.wake_writer.notify_one();
                    return Err(Closed);
                }
            }
        }
        st.deliveries.push_back(Queued { text, token });
        let len = st.deliveries.len();
        if len > st.high_water {
            st.high_water = len;
            self.metrics.ws_buffered(len);
        }
        drop(st);
        self.wake_writer.notify_one();
        Ok(evicted)
    }

    /// Closes with `code` and `reason` (unless already closing with another reason) and
    /// stops taking frames.
    pub(crate) fn close(&self, code: u16, reason: impl Into<String>) {
        self.close_with(code, reason, None);
    }

    /// Closes as [`close`](Self::close) does, sending `last` (an error op saying why) just
    /// before the close frame; what was still queued is not sent.
    pub(crate) fn close_with(&self, code: u16, reason: impl Into<String>, last: Option<Utf8Bytes>) {
        {
            let mut st = self.lock();
            if !st.closed {
                st.closed = true;
                st.close = Some((code, reason.into()));
                st.last = last;
            }
        }
        self.closing.cancel();
        self.wake_writer.notify_one();
    }

    /// Takes what the writer should send next: the drop notice first, then answers, then
    /// deliveries. `None` when closed.
    fn take(&self, out: &mut Vec<Utf8Bytes>) -> Option<()> {
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        if st.unreported_drops > 0 {
            let n = std::mem::take(&mut st.unreported_drops);
            out.push(Utf8Bytes::from(format!(
                r#"{{"op":"dropped","count":{n}}}"#
            )));
        }
        let took_answers = !st.answers.is_empty();
        while out.len() < BATCH {
            match st.answers.pop_front() {
                Some(t) => out.push(t),
                None => break,
            }
        }
        while out.len() < BATCH && st.unannounced == 0 {
            match st.deliveries.pop_front() {
                Some(q) => out.push(q.text),
                None => break,
            }
        }
        drop(st);
        if took_answers {
            self.room.notify_waiters();
        }
        Some(())
    }

    fn close_frame(&self) -> (Option<Utf8Bytes>, u16, String) {
        let mut st = self.lock();
        let (code, reason) = st.close.clone().unwrap_or((CLOSE_NORMAL, String::new()));
        (st.last.take(), code, reason)
    }
}

/// When the client was last heard from (any frame, pongs included), for the ping check.
pub(crate) struct LastSeen {
    start: Instant,
    millis: AtomicU64,
}

impl LastSeen {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.millis.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.millis.load(Ordering::Relaxed)))
    }
}

/// Drains `out` into the socket until the connection closes, sending pings every `ping`
/// (and closing a client silent for two intervals); then sends the close frame.
pub(crate) async fn run_writer(
    out: Arc<Outbound>,
    mut sink: SplitSink<WebSocket, Message>,
    ping: Option<Duration>,
    last_seen: Arc<LastSeen>,
) {
    let closing = out.closing.clone();
    let mut ticker = ping.map(|p| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut frames = Vec::with_capacity(BATCH + 1);
    'run: loop {
        frames.clear();
        if out.take(&mut frames).is_none() {
            break;
        }
        if !frames.is_empty() {
            for text in frames.drain(..) {
                tokio::select! {
                    r = sink.feed(Message::Text(text)) => if r.is_err() { break 'run },
                    _ = closing.cancelled() => break 'run,
                }
            }
            tokio::select! {
                r = sink.flush() => if r.is_err() { break 'run },
                _ = closing.cancelled() => break 'run,
            }
            continue;
        }
        let tick = async {
            match ticker.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = out.wake_writer.notified() => {}
            _ = closing.cancelled() => break,
            _ = tick => {
                if let Some(p) = ping
                    && last_seen.silent_for() > p * 2
                {
                    out.close(
                        CLOSE_POLICY,
                        format!("no frame from the client for {} ms (pings unanswered)", (p * 2).as_millis()),
                    );
                    break;
                }
                if sink.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
    let (last, code, reason) = out.close_frame();
    if let Some(text) = last {
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Text(text))).await;
    }
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
}
