//! Review rev46: the WebSocket gateway driven the way a TypeScript or Go client would drive
//! it, raw JSON text frames over a socket (docs/gateway.md "WebSocket `/v1/ws`"): manual acks
//! and `max_in_flight`, nacks, acks of unknown or settled deliveries, a group member that
//! leaves mid-stream, remote handlers answering out of order or leaving with commands in
//! hand, ids reused across calls in flight, duplicate JSON keys, pings, and per-key order.

mod acks;
mod calls;

use serde_json::Value;
use switchyard::{Envelope, Topic};

use crate::support::TestNode;

/// A JSON event `{"n": n}` on `topic`.
pub fn event(topic: &str, n: u64) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), format!("{{\"n\":{n}}}"))
}

/// `GET /v1/dlq` (auth off: anyone may read it).
pub async fn dlq(node: &TestNode) -> Value {
    reqwest::get(node.http("/v1/dlq"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
