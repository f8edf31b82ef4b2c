//! The JSON shapes of the wire contract shared by HTTP and WebSocket (docs/gateway.md).

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard::{Envelope, Kind, MessageId, Priority, Topic};

use crate::error::{ApiError, ErrorKind};

/// The JSON content type.
pub const JSON: &str = "application/json";

/// How a message is shown everywhere (WebSocket deliveries, DLQ entries, traces).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageJson {
    /// Message id: a ULID when switchyard made it, else the client's id as it was given.
    pub id: String,
    /// Topic.
    pub topic: String,
    /// `event`, `command`, `request` or `reply`.
    pub kind: String,
    /// Correlation id.
    pub correlation_id: String,
    /// Causation id.
    pub causation_id: Option<String>,
    /// Publishing component.
    pub source: Option<String>,
    /// Addressed component.
    pub target: Option<String>,
    /// 0-255.
    pub priority: u8,
    /// RFC 3339 creation time.
    pub timestamp: String,
    /// String headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// MIME type of the payload.
    pub content_type: String,
    /// Payload type name.
    pub type_name: Option<String>,
    /// Payload schema version.
    pub type_version: u32,
    /// Delivery attempt (0 before any).
    pub attempt: u32,
    /// The payload, when it is JSON and parses.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// The payload in base64, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl MessageJson {
    /// The JSON view of an envelope.
    pub fn from_envelope(env: &Envelope) -> Self {
        let (payload, payload_base64) = payload_json(env.content_type(), &env.payload);
        Self {
            id: env.id.to_string(),
            topic: env.topic.to_string(),
            kind: env.kind.as_str().to_owned(),
            correlation_id: env.correlation_id.to_string(),
            causation_id: env.causation_id().map(ToString::to_string),
            source: env.source().map(ToString::to_string),
            target: env.target().map(ToString::to_string),
            priority: env.priority.0,
            timestamp: rfc3339(env.timestamp),
            headers: env
                .headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            content_type: env.content_type().to_string(),
            type_name: env.type_name.as_ref().map(ToString::to_string),
            type_version: env.type_version,
            attempt: env.delivery.attempt,
            payload,
            payload_base64,
        }
    }
}

/// `payload` when the content type is JSON and the bytes parse, otherwise `payload_base64`.
pub fn payload_json(content_type: &str, payload: &Bytes) -> (Option<Value>, Option<String>) {
    if is_json(content_type)
        && let Ok(v) = serde_json::from_slice::<Value>(payload)
    {
        return (Some(v), None);
    }
    (None, Some(BASE64.encode(payload)))
}

/// True for `application/json` and `application/<x>+json`, with or without parameters.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == JSON || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Checks that `bytes` are one JSON value as RFC 8259 defines it: UTF-8 text first (the
/// parser alone does not look inside strings it skips), then the syntax. The error says what
/// is wrong, for a `malformed_json` answer.
pub(crate) fn check_json(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8: invalid byte sequence at byte {}",
            e.valid_up_to()
        )
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A time as RFC 3339 UTC with milliseconds, e.g. `2025-01-02T03:04:05.678Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// What a publish (HTTP headers, or WebSocket op fields) may set on the envelope besides
/// topic and payload.
#[derive(Debug, Clone, Default)]
pub struct PublishMeta {
    /// `x-message-id`: the message id (and the transport's dedup key), kept as given; a value
    /// that is not a valid id (empty, over 256 bytes, not visible ASCII) goes to the
    /// `message-id` header instead.
    pub message_id: Option<String>,
    /// `x-correlation-id`.
    pub correlation_id: Option<String>,
    /// `x-causation-id`.
    pub causation_id: Option<String>,
    /// `traceparent`.
    pub traceparent: Option<String>,
    /// `x-priority`.
    pub priority: Option<u8>,
    /// `x-source`.
    pub source: Option<String>,
    /// `x-meta-<name>` headers, and WebSocket `headers`.
    pub headers: Vec<(String, String)>,
    /// `x-type-name`: the payload's type name (`Envelope::type_name`), as a Rust publisher's
    /// `Message` sets it; the validator checks the message against that type.
    pub type_name: Option<String>,
    /// `x-type-version`: the payload's schema version (`Envelope::type_version`), as written
    /// (an integer from 0 to 4294967295; needs `type_name`). Default 1.
    pub type_version: Option<String>,
}

/// The longest `x-type-name`, in bytes.
pub const MAX_TYPE_NAME_BYTES: usize = 256;

/// The type name and version a publish claims, checked: a name of 1 to
/// [`MAX_TYPE_NAME_BYTES`] bytes without control characters, a version that is a `u32`, and
/// no version without a name. Errors name the HTTP headers (`bad_header`).
fn type_claim(
    name: Option<String>,
    version: Option<String>,
) -> Result<Option<(String, u32)>, ApiError> {
    let bad = |m: String| ApiError::new(ErrorKind::BadHeader, m);
    let name = match (name, &version) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(bad(
                "x-type-version needs x-type-name: a version is the version of a type".into(),
            ));
        }
        (Some(n), _) => n.trim().to_owned(),
    };
    if name.is_empty() || name.len() > MAX_TYPE_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(bad(format!(
            "x-type-name {name:?} is not a type name: 1 to {MAX_TYPE_NAME_BYTES} bytes without control characters"
        )));
    }
    let version = match version {
        None => 1,
        Some(v) => v.trim().parse::<u32>().map_err(|_| {
            bad(format!(
                "x-type-version {v:?} is not a version: an integer from 0 to {}",
                u32::MAX
            ))
        })?,
    };
    Ok(Some((name, version)))
}

/// Header where an `x-message-id` that is not a valid message id is kept.
pub const MESSAGE_ID_HEADER: &str = "message-id";

/// Header where an `x-correlation-id` that is not a valid message id is kept.
pub const CORRELATION_HEADER: &str = "correlation-id";

/// Header where the gateway stamps the publishing principal's name; a client's header of
/// that name, in any case, is dropped.
pub const PRINCIPAL_HEADER: &str = "principal";

/// Headers the node or the bus writes and a client may not: [`PRINCIPAL_HEADER`] (who
/// published) and the DLQ replay provenance
/// ([`REPLAYED_FROM`](switchyard_core::dead_letter::REPLAYED_FROM),
/// [`REPLAY_COUNT`](switchyard_core::dead_letter::REPLAY_COUNT), which only a replay
/// writes). A client's header named like one of them, in any case, is dropped.
pub const NODE_OWNED_HEADERS: [&str; 3] = [
    PRINCIPAL_HEADER,
    switchyard_core::dead_letter::REPLAYED_FROM,
    switchyard_core::dead_letter::REPLAY_COUNT,
];

/// True when a client header named `name` is one the node owns ([`NODE_OWNED_HEADERS`], any
/// case).
fn node_owned(name: &str) -> bool {
    NODE_OWNED_HEADERS
        .iter()
        .any(|owned| name.eq_ignore_ascii_case(owned))
}

/// Builds the envelope of a gateway publish, send or request. `principal` is stamped in the
/// [`PRINCIPAL_HEADER`] so handlers and audits know who published; a client header named
/// like one of [`NODE_OWNED_HEADERS`] in any case is dropped.
pub fn build_envelope(
    topic: Topic,
    kind: Kind,
    content_type: &str,
    payload: Bytes,
    meta: PublishMeta,
    principal: &str,
) -> Result<Envelope, ApiError> {
    let claim = type_claim(meta.type_name, meta.type_version)?;
    let mut env = Envelope::new(topic, payload).with_kind(kind);
    env.set_content_type(content_type);
    if let Some((name, version)) = claim {
        env.type_name = Some(name.into());
        env.type_version = version;
    }
    if let Some(id) = meta.message_id {
        match id.parse::<MessageId>() {
            Ok(id) => {
                env.id = id.clone();
                env.correlation_id = id;
            }
            Err(_) => env.headers_mut().insert(MESSAGE_ID_HEADER, id.as_str()),
        }
    }
    if let Some(c) = meta.correlation_id {
        match c.parse::<MessageId>() {
            Ok(id) => env.correlation_id = id,
            Err(_) => env.headers_mut().insert(CORRELATION_HEADER, c.as_str()),
        }
    }
    if let Some(c) = meta.causation_id {
        let id = c
            .parse::<MessageId>()
            .map_err(|e| ApiError::new(ErrorKind::BadHeader, format!("x-causation-id: {e}")))?;
        env.set_causation_id(Some(id));
    }
    if let Some(tp) = meta.traceparent {
        env.headers_mut().insert("traceparent", tp.as_str());
    }
    if let Some(p) = meta.priority {
        env.priority = Priority(p);
    }
    if let Some(s) = meta.source {
        env.set_source(Some(s.into()));
    }
    // The `principal` header and the replay provenance are the node's: a client's, in any
    // case (a WebSocket `headers` name keeps its case, an HTTP one arrives lowercased), is
    // dropped, so no forged `Principal` or `Replayed-From` rides along with it.
    for (k, v) in meta.headers {
        if !node_owned(&k) {
            env.headers_mut().insert(k.as_str(), v.as_str());
        }
    }
    env.headers_mut().insert(PRINCIPAL_HEADER, principal);
    Ok(env)
}

/// The answer to a publish: `202 {"id", "correlation_id"}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Published {
    /// Message id.
    pub id: String,
    /// Correlation id.
    pub correlation_id: String,
}

/// The answer to a send or request: the reply.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplyJson {
    /// Id of the command message.
    pub id: String,
    /// Its correlation id.
    pub correlation_id: String,
    /// Handler attempts it took.
    pub attempts: u32,
    /// Content type of the reply payload.
    pub content_type: String,
    /// The reply payload, when JSON (`null` when the handler answered nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// The reply payload in base64, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn payload_is_json_or_base64() {
        let (j, b) = payload_json("application/json", &Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(j, Some(serde_json::json!({"a": 1})));
        assert!(b.is_none());
        let (j, b) = payload_json("text/plain", &Bytes::from_static(b"hi"));
        assert!(j.is_none());
        assert_eq!(b.as_deref(), Some("aGk="));
        assert!(is_json("application/cloudevents+json; charset=utf-8"));
        assert!(!is_json("text/json-ish"));
    }
}
