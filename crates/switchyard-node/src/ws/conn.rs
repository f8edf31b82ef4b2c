//! One connection's shared state: its outbound buffer, and the deliveries and remote calls
//! waiting for the client's answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;
use switchyard::Envelope;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::frames::AckMode;
use super::outbound::{Outbound, Token};
use crate::auth::Principal;
use crate::wire::MessageJson;

/// How the client settled a manual-ack delivery.
#[derive(Debug)]
pub(crate) enum Settle {
    /// `ack`.
    Ack,
    /// `nack`, with the delay the client asked for and its `error` (why the attempt failed).
    Nack(Option<Duration>, Option<String>),
    /// `nack` with `reject: true`: refused for good (dead-lettered at once), with its `error`.
    Reject(Option<String>),
    /// `nack` with `hand_back: true` ("not mine, not now"), with the delay the client asked
    /// for and its `error` (why): the bus's [`HandBack`](switchyard::HandBack), not an attempt.
    HandBack(Option<Duration>, Option<String>),
    /// Evicted from the outbound buffer before the client saw it (`drop_oldest`).
    Dropped,
}

/// What a remote handler answered.
#[derive(Debug)]
pub(crate) enum CallResult {
    /// `ok: true`: the reply payload and its content type.
    Ok {
        payload: Bytes,
        content_type: String,
    },
    /// `ok: false`: the error text, and whether the command is refused for good (`reject`).
    Failed { error: String, reject: bool },
    /// `ok: false, hand_back: true`: "not mine (not now)", the bus's
    /// [`HandBack`](switchyard::HandBack), to be delivered again after `delay` when the
    /// command came from a transport delivery; otherwise it fails for good at once.
    HandedBack {
        error: String,
        delay: Option<std::time::Duration>,
    },
    /// The command frame was evicted from the outbound buffer (`drop_oldest`).
    Dropped,
}

/// How handing one message to this connection ended.
#[derive(Debug)]
pub(crate) enum Handed {
    /// Acked (auto: queued for the client; manual: the client's `ack`).
    Acked,
    /// The client's `nack`, with its delay and error text.
    Nacked(Option<Duration>, Option<String>),
    /// The client's `nack` with `reject: true`, with its error text.
    Rejected(Option<String>),
    /// The client's `nack` with `hand_back: true`, with its delay and error text.
    GaveBack(Option<Duration>, Option<String>),
    /// Evicted from the buffer before the client saw it (manual only).
    Dropped,
    /// The connection closed before it was settled.
    Gone,
}

/// The part of a connection that subscriptions, remote handlers and the reader share.
pub(crate) struct Conn {
    /// Connection number (for logs and names).
    pub(crate) id: u64,
    /// Who is connected.
    pub(crate) principal: Principal,
    /// The outbound buffer.
    pub(crate) out: Arc<Outbound>,
    /// Cancelled when the connection ends.
    pub(crate) closing: CancellationToken,
    next: AtomicU64,
    deliveries: Mutex<HashMap<u64, oneshot::Sender<Settle>>>,
    calls: Mutex<HashMap<u64, oneshot::Sender<CallResult>>>,
}

#[derive(Serialize)]
struct MessageFrame<'a> {
    op: &'static str,
    subscription: &'a str,
    delivery: String,
    message: MessageJson,
}

#[derive(Serialize)]
struct CommandFrame {
    op: &'static str,
    call: String,
    message: MessageJson,
}

fn render<T: Serialize>(frame: &T) -> Option<Utf8Bytes> {
    match serde_json::to_string(frame) {
        Ok(s) => Some(Utf8Bytes::from(s)),
        Err(e) => {
            // Message JSON is strings, numbers and JSON values: this does not happen.
            tracing::error!(error = %e, "cannot render a WebSocket frame");
            None
        }
    }
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        principal: Principal,
        out: Arc<Outbound>,
        closing: CancellationToken,
    ) -> Self {
        Self {
            id,
            principal,
            out,
            closing,
            next: AtomicU64::new(1),
            deliveries: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
        }
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// True once the connection is closing.
    pub(crate) fn is_closed(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Tells the waiter of an evicted delivery or command.
    fn evicted(&self, token: Option<Token>) {
        match token {
            None => {}
            Some(Token::Delivery(d)) => {
                if let Some(tx) = lock(&self.deliveries).remove(&d) {
                    let _ = tx.send(Settle::Dropped);
                }
            }
            Some(Token::Call(k)) => {
                if let Some(tx) = lock(&self.calls).remove(&k) {
                    let _ = tx.send(CallResult::Dropped);
                }
            }
        }
    }

    /// Hands `env` to the client as a delivery of subscription `sid`, and waits for its
    /// settlement when `mode` is manual.
    pub(crate) async fn deliver(&self, sid: &str, mode: AckMode, env: &Envelope) -> Handed {
        let did = self.next_id();
        let Some(text) = render(&MessageFrame {
            op: "message",
            subscription: sid,
            delivery: did.to_string(),
            message: MessageJson::from_envelope(env),
        }) else {
            return Handed::Gone;
        };
        match mode {
            AckMode::Auto => match self.out.deliver(text, None) {
                Ok(evicted) => {
                    self.evicted(evicted);
                    Handed::Acked
                }
                Err(_) => Handed::Gone,
            },
            AckMode::Manual => {
                let (tx, rx) = oneshot::channel();
                lock(&self.deliveries).insert(did, tx);
                let _pending = Pending {
                    map: &self.deliveries,
                    key: did,
                };
                match self.out.deliver(text, Some(Token::Delivery(did))) {
                    Ok(evicted) => self.evicted(evicted),
                    Err(_) => return Handed::Gone,
                }
                tokio::select! {
                    settled = rx => match settled {
                        Ok(Settle::Ack) => Handed::Acked,
                        Ok(Settle::Nack(delay, error)) => Handed::Nacked(delay, error),
                        Ok(Settle::Reject(error)) => Handed::Rejected(error),
                        Ok(Settle::HandBack(delay, error)) => Handed::GaveBack(delay, error),
                        Ok(Settle::Dropped) => Handed::Dropped,
                        Err(_) => Handed::Gone,
                    },
                    _ = self.closing.cancelled() => Handed::Gone,
                }
            }
        }
    }

    /// Settles a manual delivery from the client's `ack`/`nack`; false when no delivery of
    /// that number is waiting.
    pub(crate) fn settle(&self, delivery: u64, settle: Settle) -> bool {
        match lock(&self.deliveries).remove(&delivery) {
            Some(tx) => tx.send(settle).is_ok(),
            None => false,
        }
    }

    /// Sends `env` to the client as a command for its remote handler and waits for the
    /// result. `None`: the connection closed first.
    pub(crate) async fn call(&self, env: &Envelope) -> Option<CallResult> {
        let k = self.next_id();
        let text = render(&CommandFrame {
            op: "command",
            call: k.to_string(),
            message: MessageJson::from_envelope(env),
        })?;
        let (tx, rx) = oneshot::channel();
        lock(&self.calls).insert(k, tx);
        let _pending = Pending {
            map: &self.calls,
            key: k,
        };
        match self.out.deliver(text, Some(Token::Call(k))) {
            Ok(evicted) => self.evicted(evicted),
            Err(_) => return None,
        }
        tokio::select! {
            r = rx => r.ok(),
            _ = self.closing.cancelled() => None,
        }
    }

    /// Hands the client's `result` to the waiting call; false when none waits.
    pub(crate) fn answer_call(&self, call: u64, result: CallResult) -> bool {
        match lock(&self.calls).remove(&call) {
            Some(tx) => tx.send(result).is_ok(),
            None => false,
        }
    }
}

/// Removes a waiter from its map when the wait ends, however it ends (settled, connection
/// closed, or the handler's timeout dropping the future).
struct Pending<'a, T> {
    map: &'a Mutex<HashMap<u64, oneshot::Sender<T>>>,
    key: u64,
}

impl<T> Drop for Pending<'_, T> {
    fn drop(&mut self) {
        lock(self.map).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
