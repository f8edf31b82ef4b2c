//! `POST /v1/send/{topic}` and `POST /v1/request/{topic}`: commands and requests with their
//! reply.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use switchyard::{CommandResult, Kind, SendError};

use super::publish::{MessageHeaders, envelope};
use super::{Authed, NoQuery, PathParam, Q, RawBody, json};
use crate::auth::Action;
use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;
use crate::wire::{ReplyJson, payload_json};

/// Sends the body as a command to the one handler of `topic` and answers its reply.
#[utoipa::path(
    post,
    path = "/v1/send/{topic}",
    params(("topic" = String, Path, description = "Command topic"), MessageHeaders),
    request_body(content = Object, description = "The command payload (same body and headers as publish)"),
    responses(
        (status = 200, description = "The handler's reply", body = ReplyJson),
        (status = 400, description = "invalid_topic, malformed_json, bad_header or bad_query", body = crate::error::ErrorBody),
        (status = 401, description = "unauthenticated", body = crate::error::ErrorBody),
        (status = 403, description = "forbidden", body = crate::error::ErrorBody),
        (status = 404, description = "no_handler", body = crate::error::ErrorBody),
        (status = 413, description = "too_large", body = crate::error::ErrorBody),
        (status = 422, description = "handler_failed, handler_rejected or invalid_message", body = crate::error::ErrorBody),
        (status = 429, description = "rate_limited: over the principal's limits.publish_rate (commands and requests count as publishes do)", body = crate::error::ErrorBody),
        (status = 503, description = "shutting_down or not_ready", body = crate::error::ErrorBody),
        (status = 504, description = "timeout (limits.send_timeout_ms)", body = crate::error::ErrorBody),
    ),
    tag = "messages"
)]
pub(crate) async fn send(
    State(state): State<AppState>,
    Authed(principal): Authed,
    PathParam(topic): PathParam,
    Q(NoQuery {}): Q<NoQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let env = envelope(
        &state,
        &principal,
        Action::Send,
        &topic,
        Kind::Command,
        &headers,
        body,
    )?;
    // A command is a message put on the bus like a publish: it takes from the same bucket.
    state.check_publish_rate(&principal)?;
    let (id, correlation) = (env.id.clone(), env.correlation_id.clone());
    let deadline = Duration::from_millis(state.config.limits.send_timeout_ms);
    let call = until_stopped(&state, state.bus.send_envelope(env));
    let result = match tokio::time::timeout(deadline, call).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ApiError::new(
                ErrorKind::Timeout,
                format!(
                    "no reply within limits.send_timeout_ms = {} ms",
                    deadline.as_millis()
                ),
            ));
        }
    };
    Ok(json(StatusCode::OK, &reply_json(id, correlation, result)))
}

/// Query of `POST /v1/request`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestQuery {
    /// Deadline in milliseconds (default `limits.default_request_timeout_ms`).
    timeout_ms: Option<u64>,
}

/// A command with a deadline: `504 timeout` past it.
#[utoipa::path(
    post,
    path = "/v1/request/{topic}",
    params(("topic" = String, Path, description = "Command topic"), RequestQuery, MessageHeaders),
    request_body(content = Object, description = "The request payload (same body and headers as publish)"),
    responses(
        (status = 200, description = "The handler's reply", body = ReplyJson),
        (status = 400, description = "invalid_topic, malformed_json, bad_header or bad_query", body = crate::error::ErrorBody),
        (status = 401, description = "unauthenticated", body = crate::error::ErrorBody),
        (status = 403, description = "forbidden", body = crate::error::ErrorBody),
        (status = 404, description = "no_handler", body = crate::error::ErrorBody),
        (status = 413, description = "too_large", body = crate::error::ErrorBody),
        (status = 422, description = "handler_failed, handler_rejected or invalid_message", body = crate::error::ErrorBody),
        (status = 429, description = "rate_limited: over the principal's limits.publish_rate (commands and requests count as publishes do)", body = crate::error::ErrorBody),
        (status = 503, description = "shutting_down or not_ready", body = crate::error::ErrorBody),
        (status = 504, description = "timeout", body = crate::error::ErrorBody),
    ),
    tag = "messages"
)]
pub(crate) async fn request(
    State(state): State<AppState>,
    Authed(principal): Authed,
    PathParam(topic): PathParam,
    Q(query): Q<RequestQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let limits = &state.config.limits;
    let ms = query
        .timeout_ms
        .unwrap_or(limits.default_request_timeout_ms);
    if ms == 0 || ms > limits.max_request_timeout_ms {
        return Err(ApiError::new(
            ErrorKind::BadQuery,
            format!(
                "timeout_ms = {ms}: allowed 1 to limits.max_request_timeout_ms = {}",
                limits.max_request_timeout_ms
            ),
        ));
    }
    let env = envelope(
        &state,
        &principal,
        Action::Send,
        &topic,
        Kind::Request,
        &headers,
        body,
    )?;
    state.check_publish_rate(&principal)?;
    let (id, correlation) = (env.id.clone(), env.correlation_id.clone());
    let call = state.bus.request_envelope(env, Duration::from_millis(ms));
    let result = until_stopped(&state, call).await?;
    Ok(json(StatusCode::OK, &reply_json(id, correlation, result)))
}

/// A call's result; `503 shutting_down` when the bus stopped with the call unanswered: the
/// bus shut down with its handler still running (`not processed`, the command is in the
/// dead-letter queue), or the bus has shut down and the call is still waiting (a remote
/// handler that did not answer).
async fn until_stopped(
    state: &AppState,
    call: impl std::future::Future<Output = Result<CommandResult, SendError>>,
) -> Result<CommandResult, ApiError> {
    let stopping = |detail: String| {
        ApiError::new(
            ErrorKind::ShuttingDown,
            format!("the node stopped before the handler answered ({detail})"),
        )
    };
    tokio::select! {
        result = call => match result {
            Err(SendError::NotProcessed(why)) if state.bus.is_shutting_down() => {
                Err(stopping(format!("not processed: {why}")))
            }
            other => other.map_err(ApiError::from),
        },
        () = state.bus_stopped.cancelled() => Err(stopping(
            "no answer by the end of the drain; the command may or may not have been handled"
                .to_owned(),
        )),
    }
}

pub(crate) fn reply_json(
    id: switchyard::MessageId,
    correlation: switchyard::MessageId,
    result: CommandResult,
) -> ReplyJson {
    let (content_type, payload, payload_base64) = match &result.reply {
        Some(r) => {
            let (p, b) = payload_json(r.content_type(), &r.payload);
            (r.content_type().to_string(), p, b)
        }
        None => (
            crate::wire::JSON.to_owned(),
            Some(serde_json::Value::Null),
            None,
        ),
    };
    ReplyJson {
        id: id.to_string(),
        correlation_id: correlation.to_string(),
        attempts: result.attempts,
        content_type,
        payload,
        payload_base64,
    }
}
