//! What `/v1/trace/{correlation_id}` shows: the last envelopes published or sent through the
//! node's bus and the last handler calls (deliveries) with their outcomes, both kept in
//! bounded buffers of `retention.trace_messages` entries each. A trace is this node's: with
//! nodes scaled out, a message published through one node and handled on another shows as a
//! message on the first and as a delivery (with its topic) on the second.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use switchyard::{BoxError, Envelope, MessageId, Outcome, Topic};

/// The last envelopes published or sent through this node's bus and the last deliveries to
/// its handlers. Envelopes are fed by a publish hook rather than a `#` subscription
/// (`switchyard_components`' `TraceRecorder`): it sees commands and requests too, costs no
/// second read of the transport, and works on NATS where a `#` subscription needs a stream
/// holding every topic. Deliveries are fed by the wrapper every handler of the node's bus
/// has (`latency::Timed`), one entry per call of the handler (each retry is a call).
pub(crate) struct TraceBuffer {
    capacity: usize,
    seen: Mutex<VecDeque<Envelope>>,
    deliveries: Mutex<VecDeque<Delivery>>,
}

/// One call of a handler with a message, as kept (formatted only when asked for).
struct Delivery {
    id: MessageId,
    correlation: MessageId,
    topic: Topic,
    handler: Arc<str>,
    attempt: u32,
    outcome: &'static str,
    error: Option<String>,
    at: SystemTime,
    took: Duration,
}

/// One call of a handler with a message, as `/v1/trace` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeliveryJson {
    /// The message's id.
    pub(crate) message_id: String,
    /// The message's topic (the message itself may have been published through another
    /// node, and then is not among this node's `messages`).
    pub(crate) topic: String,
    /// The handler (subscription or command handler) that was called.
    pub(crate) handler: String,
    /// The message's delivery attempt when the handler was called (1 for the first).
    pub(crate) attempt: u32,
    /// `handled`, `retry`, `rejected` or `failed`.
    pub(crate) outcome: &'static str,
    /// Why, for anything but `handled`.
    pub(crate) error: Option<String>,
    /// When the call started, RFC 3339.
    pub(crate) at: String,
    /// How long the call took, milliseconds.
    pub(crate) duration_ms: f64,
}

/// A handler's result as a word and, unless it handled the message, why.
pub(crate) fn outcome_of(result: &Result<Outcome, BoxError>) -> (&'static str, Option<String>) {
    match result {
        Ok(Outcome::Ack | Outcome::Reply(_)) => ("handled", None),
        Ok(Outcome::Reject { reason }) => ("rejected", Some(reason.clone())),
        Ok(Outcome::Retry { .. }) => ("retry", Some("the handler asked for a retry".into())),
        Err(e) => (
            "failed",
            Some(switchyard_middleware::dlq::error_chain(&**e)),
        ),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn push_bounded<T>(q: &mut VecDeque<T>, capacity: usize, item: T) {
    if q.len() >= capacity {
        q.pop_front();
    }
    q.push_back(item);
}

impl TraceBuffer {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            seen: Mutex::new(VecDeque::new()),
            deliveries: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps a published or sent envelope.
    pub(crate) fn record(&self, env: &Envelope) {
        push_bounded(&mut lock(&self.seen), self.capacity, env.clone());
    }

    /// Keeps one call of `handler` with the message `id` of `correlation` on `topic`: started
    /// at `at`, took `took`, ended with `result`.
    pub(crate) fn delivered(
        &self,
        (id, correlation, attempt, topic): (MessageId, MessageId, u32, Topic),
        handler: &Arc<str>,
        at: SystemTime,
        took: Duration,
        result: &Result<Outcome, BoxError>,
    ) {
        let (outcome, error) = outcome_of(result);
        let delivery = Delivery {
            id,
            correlation,
            topic,
            handler: handler.clone(),
            attempt,
            outcome,
            error,
            at,
            took,
        };
        push_bounded(&mut lock(&self.deliveries), self.capacity, delivery);
    }

    /// The recorded envelopes of one correlation id, oldest first.
    pub(crate) fn of(&self, correlation: &MessageId) -> Vec<Envelope> {
        lock(&self.seen)
            .iter()
            .filter(|e| e.correlation_id == *correlation)
            .cloned()
            .collect()
    }

    /// The recorded deliveries of one correlation id, oldest first.
    pub(crate) fn deliveries_of(&self, correlation: &MessageId) -> Vec<DeliveryJson> {
        lock(&self.deliveries)
            .iter()
            .filter(|d| d.correlation == *correlation)
            .map(|d| DeliveryJson {
                message_id: d.id.to_string(),
                topic: d.topic.to_string(),
                handler: d.handler.to_string(),
                attempt: d.attempt,
                outcome: d.outcome,
                error: d.error.clone(),
                at: crate::wire::rfc3339(d.at),
                duration_ms: d.took.as_secs_f64() * 1e3,
            })
            .collect()
    }
}
