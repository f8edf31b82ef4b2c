//! `POST /v1/publish/{topic}`: an event from an HTTP body.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use switchyard::{Envelope, Kind, Topic};

use super::{Authed, NoQuery, PathParam, Q, RawBody, json};
use crate::auth::{Action, Principal};
use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;
use crate::wire::{self, PublishMeta, Published};

/// Publishes the body as an event on `topic`; `202` once the bus accepted it (on the log or
/// NATS transport: once it is stored).
/// The headers a publish, send or request takes, for the OpenAPI document (the handlers read
/// them from the `HeaderMap`, in `envelope`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct MessageHeaders {
    /// Message id (and dedup key), kept as given: any 1-256 visible ASCII characters; another
    /// value is kept in the `message-id` header.
    #[param(rename = "x-message-id")]
    message_id: Option<String>,
    /// Correlation id.
    #[param(rename = "x-correlation-id")]
    correlation_id: Option<String>,
    /// Causation id (a message id).
    #[param(rename = "x-causation-id")]
    causation_id: Option<String>,
    /// W3C trace context.
    #[param(rename = "traceparent")]
    traceparent: Option<String>,
    /// 0-255, default 128.
    #[param(rename = "x-priority")]
    priority: Option<u8>,
    /// Publishing component.
    #[param(rename = "x-source")]
    source: Option<String>,
    /// Payload type name (the registered type the validator checks it against; UTF-8).
    #[param(rename = "x-type-name")]
    type_name: Option<String>,
    /// Payload schema version, default 1 (needs x-type-name; an older version than the
    /// registered one is checked as upcast).
    #[param(rename = "x-type-version")]
    type_version: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/v1/publish/{topic}",
    params(
        ("topic" = String, Path, description = "Topic, e.g. `orders.placed`"),
        MessageHeaders,
    ),
    request_body(content = Object, description = "The payload: JSON with `application/json`, raw bytes with any other content type"),
    responses(
        (status = 202, description = "Accepted", body = Published),
        (status = 400, description = "invalid_topic, malformed_json or bad_header", body = crate::error::ErrorBody),
        (status = 401, description = "unauthenticated", body = crate::error::ErrorBody),
        (status = 403, description = "forbidden", body = crate::error::ErrorBody),
        (status = 413, description = "too_large", body = crate::error::ErrorBody),
        (status = 422, description = "invalid_message: the payload does not match the registered schema of the topic (dead-lettered)", body = crate::error::ErrorBody),
        (status = 429, description = "rate_limited", body = crate::error::ErrorBody),
        (status = 503, description = "queue_full, shutting_down or not_ready", body = crate::error::ErrorBody),
    ),
    tag = "messages"
)]
pub(crate) async fn publish(
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
        Action::Publish,
        &topic,
        Kind::Event,
        &headers,
        body,
    )?;
    state.check_publish_rate(&principal)?;
    let reply = Published {
        id: env.id.to_string(),
        correlation_id: env.correlation_id.to_string(),
    };
    if let Err(e) = state.bus.publish_envelope(env).await {
        return Ok(ApiError::from(e).response_with_id(&reply.id));
    }
    state.metrics.published_one();
    Ok(json(StatusCode::ACCEPTED, &reply))
}

/// Validates topic, grant, size, content type and headers, and builds the envelope.
pub(crate) fn envelope(
    state: &AppState,
    principal: &Principal,
    action: Action,
    topic: &str,
    kind: Kind,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Result<Envelope, ApiError> {
    let topic = Topic::new(topic).map_err(|e| ApiError::topic(&e))?;
    state.auth.authorize(principal, action, topic.as_str())?;
    let limit = state.config.limits.max_message_bytes;
    if body.len() > limit {
        return Err(ApiError::new(
            ErrorKind::TooLarge,
            format!(
                "message payload of {} bytes is larger than limits.max_message_bytes = {limit} bytes",
                body.len()
            ),
        ));
    }
    let content_type = match headers.get(CONTENT_TYPE) {
        None => "application/octet-stream".to_owned(),
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::new(ErrorKind::BadHeader, "Content-Type is not ASCII"))?
            .trim()
            .to_owned(),
    };
    if wire::is_json(&content_type)
        && let Err(e) = wire::check_json(&body)
    {
        return Err(ApiError::new(
            ErrorKind::MalformedJson,
            format!("body is not valid JSON (Content-Type: {content_type}): {e}"),
        ));
    }
    let meta = publish_meta(headers)?;
    let mut env = wire::build_envelope(topic, kind, &content_type, body, meta, principal.name())?;
    state.check_layers(principal, action, &mut env)?;
    state.check_contract(&env)?;
    Ok(env)
}

/// Reads the optional `x-*` and `traceparent` headers.
pub(crate) fn publish_meta(headers: &HeaderMap) -> Result<PublishMeta, ApiError> {
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(|s| Some(s.trim().to_owned())).map_err(|_| {
                ApiError::new(ErrorKind::BadHeader, format!("header {name} is not ASCII"))
            }),
        }
    };
    let priority = match text("x-priority")? {
        None => None,
        Some(p) => Some(p.parse::<u8>().map_err(|_| {
            ApiError::new(
                ErrorKind::BadHeader,
                format!("x-priority {p:?} is not an integer from 0 to 255"),
            )
        })?),
    };
    let mut meta = PublishMeta {
        message_id: text("x-message-id")?,
        correlation_id: text("x-correlation-id")?,
        causation_id: text("x-causation-id")?,
        traceparent: text("traceparent")?,
        priority,
        source: text("x-source")?,
        headers: Vec::new(),
        type_name: match headers.get("x-type-name") {
            // A type name may be any text (`Bestellung名前`): UTF-8 bytes are taken.
            Some(v) => Some(
                std::str::from_utf8(v.as_bytes())
                    .map_err(|_| {
                        ApiError::new(ErrorKind::BadHeader, "header x-type-name is not UTF-8")
                    })?
                    .to_owned(),
            ),
            None => None,
        },
        type_version: text("x-type-version")?,
    };
    for (name, value) in headers {
        if let Some(short) = name.as_str().strip_prefix("x-meta-") {
            if short.is_empty() {
                return Err(ApiError::new(
                    ErrorKind::BadHeader,
                    "x-meta- header without a name",
                ));
            }
            let v = value.to_str().map_err(|_| {
                ApiError::new(ErrorKind::BadHeader, format!("header {name} is not ASCII"))
            })?;
            meta.headers.push((short.to_owned(), v.to_owned()));
        }
    }
    if let Some(tp) = &meta.traceparent
        && tp
            .parse::<switchyard_middleware::trace::TraceContext>()
            .is_err()
    {
        return Err(ApiError::new(
            ErrorKind::BadHeader,
            format!("traceparent {tp:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"),
        ));
    }
    Ok(meta)
}
