//! `GET /v1/ws`: the WebSocket gateway (protocol in docs/gateway.md).
//!
//! Skeleton: the handler authenticates (header or `?token=`) and upgrades; the protocol
//! (subscribe, publish, ack/nack, remote handlers, slow-client policy) is filled in here by
//! the WebSocket module. What it can use from the rest of the crate:
//! - `state.auth.authorize(&principal, Action::{Publish, Subscribe, Send}, topic_or_pattern)`
//! - `state.check_publish_rate(&principal)`
//! - `crate::wire::{MessageJson, PublishMeta, build_envelope}` for message JSON and envelopes
//! - `crate::error::ApiError::body()` for `{"op":"error","error":{...}}`
//! - `state.metrics.ws_connection(open)`, `ws_dropped(n)`, `ws_slow_disconnect()`,
//!   `published_one()`
//! - `state.config.ws` (outbound buffer, slow-client policy, frame limit, ping interval)
//! - `state.shutdown` (a `CancellationToken` cancelled when the node stops)

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;

use crate::http::Authed;
use crate::state::AppState;

/// Upgrades an authenticated client to the WebSocket protocol.
pub(crate) async fn ws_handler(
    State(state): State<AppState>,
    Authed(principal): Authed,
    ws: WebSocketUpgrade,
) -> Response {
    let max_frame = state.config.ws.max_frame_bytes;
    ws.max_message_size(max_frame)
        .on_upgrade(move |socket| async move {
            state.metrics.ws_connection(true);
            tracing::debug!(
                principal = principal.name(),
                "WebSocket connected (protocol not implemented yet)"
            );
            drop(socket);
            state.metrics.ws_connection(false);
        })
}
