//! The JSON frames of the WebSocket protocol: what a client sends ([`ClientFrame`], parsed
//! without building a JSON tree: a payload stays the raw text the client wrote) and what the
//! server answers.

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{ApiError, ErrorKind};

/// Every field any client op may carry. Which ones an op takes is checked by
/// [`ClientFrame::check_fields`], so a field that belongs to another op is refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientFrame<'a> {
    #[serde(borrow)]
    pub(crate) op: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) pattern: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) group: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) ack: Option<AckMode>,
    #[serde(default)]
    pub(crate) max_in_flight: Option<usize>,
    #[serde(borrow, default)]
    pub(crate) subscription: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) delivery: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) delay_ms: Option<u64>,
    #[serde(borrow, default)]
    pub(crate) call: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) ok: Option<bool>,
    #[serde(borrow, default)]
    pub(crate) error: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) reject: Option<bool>,
    #[serde(default)]
    pub(crate) hand_back: Option<bool>,
    #[serde(default)]
    pub(crate) concurrency: Option<usize>,
    #[serde(default)]
    pub(crate) timeout_ms: Option<u64>,
    #[serde(borrow, default)]
    pub(crate) messages: Option<Vec<PublishFields<'a>>>,
    // The fields of one message (publish, send, request; result takes the payload ones).
    #[serde(borrow, default)]
    pub(crate) topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) payload_base64: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) content_type: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) headers: Option<BTreeMap<String, String>>,
    #[serde(borrow, default)]
    pub(crate) correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) causation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) message_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) priority: Option<u8>,
    #[serde(borrow, default)]
    pub(crate) source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) type_name: Option<Cow<'a, str>>,
    /// Checked as written (a JSON number that is a `u32`), so a bad value is refused with
    /// a message naming the field.
    #[serde(borrow, default)]
    pub(crate) type_version: Option<&'a RawValue>,
}

/// One message to publish, send or request: the fields of a `publish` op, and one item of
/// a `publish_batch`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishFields<'a> {
    #[serde(borrow, default)]
    pub(crate) topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) payload_base64: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) content_type: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) headers: Option<BTreeMap<String, String>>,
    #[serde(borrow, default)]
    pub(crate) correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) causation_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) message_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) priority: Option<u8>,
    #[serde(borrow, default)]
    pub(crate) source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) type_name: Option<Cow<'a, str>>,
    /// Checked as written (a JSON number that is a `u32`), so a bad value is refused with
    /// a message naming the field.
    #[serde(borrow, default)]
    pub(crate) type_version: Option<&'a RawValue>,
}

/// How a subscription's deliveries are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AckMode {
    /// Settled once queued for the client (at most once).
    #[default]
    Auto,
    /// Settled by the client's `ack` / `nack` (at least once).
    Manual,
}

impl AckMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Manual => "manual",
        }
    }
}

/// The client ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Subscribe,
    Unsubscribe,
    Publish,
    PublishBatch,
    Ack,
    Nack,
    Handle,
    Unhandle,
    Result,
    Send,
    Request,
}

const MESSAGE_FIELDS: &[&str] = &[
    "topic",
    "payload",
    "payload_base64",
    "content_type",
    "headers",
    "correlation_id",
    "causation_id",
    "message_id",
    "priority",
    "source",
    "traceparent",
    "type_name",
    "type_version",
];

impl Op {
    fn parse(op: &str) -> Option<Self> {
        Some(match op {
            "subscribe" => Self::Subscribe,
            "unsubscribe" => Self::Unsubscribe,
            "publish" => Self::Publish,
            "publish_batch" => Self::PublishBatch,
            "ack" => Self::Ack,
            "nack" => Self::Nack,
            "handle" => Self::Handle,
            "unhandle" => Self::Unhandle,
            "result" => Self::Result,
            "send" => Self::Send,
            "request" => Self::Request,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::PublishBatch => "publish_batch",
            Self::Ack => "ack",
            Self::Nack => "nack",
            Self::Handle => "handle",
            Self::Unhandle => "unhandle",
            Self::Result => "result",
            Self::Send => "send",
            Self::Request => "request",
        }
    }

    /// Fields besides `op` and `id` this op takes.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Subscribe => &["pattern", "group", "ack", "max_in_flight"],
            Self::Unsubscribe => &["subscription"],
            Self::Publish => MESSAGE_FIELDS,
            Self::PublishBatch => &["messages"],
            Self::Ack => &["delivery"],
            Self::Nack => &["delivery", "delay_ms", "hand_back", "reject", "error"],
            Self::Handle => &["topic", "group", "concurrency"],
            Self::Unhandle => &["topic"],
            Self::Result => &[
                "call",
                "ok",
                "payload",
                "payload_base64",
                "content_type",
                "error",
                "reject",
                "hand_back",
                "delay_ms",
            ],
            Self::Send | Self::Request => &[
                "topic",
                "payload",
                "payload_base64",
                "content_type",
                "headers",
                "correlation_id",
                "causation_id",
                "message_id",
                "priority",
                "source",
                "traceparent",
                "type_name",
                "type_version",
                "timeout_ms",
            ],
        }
    }
}

/// Why a frame could not be parsed: the frame's `id` when it could be read, and the error
/// to answer with.
pub(crate) type FrameError = (Option<Box<RawValue>>, ApiError);

/// The ops a client may send, for error messages.
const OPS: &str = "subscribe, unsubscribe, publish, publish_batch, ack, nack, handle, unhandle, result, send, request";

impl<'a> ClientFrame<'a> {
    /// Parses a text frame. On failure, the error answer carries the frame's `id` when it
    /// can be read.
    pub(crate) fn parse(text: &'a str) -> Result<(Self, Op), FrameError> {
        let frame: ClientFrame<'a> = serde_json::from_str(text).map_err(|e| {
            use serde_json::error::Category;
            let error = match e.classify() {
                Category::Data => {
                    ApiError::new(ErrorKind::BadRequest, format!("invalid frame: {e}"))
                }
                _ => ApiError::new(ErrorKind::MalformedJson, format!("malformed JSON: {e}")),
            };
            (id_of(text), error)
        })?;
        let Some(op) = Op::parse(&frame.op) else {
            let error = ApiError::new(
                ErrorKind::BadRequest,
                format!("unknown op {:?}: expected one of {OPS}", frame.op),
            );
            return Err((frame.id.map(ToOwned::to_owned), error));
        };
        if let Err(e) = frame.check_fields(op) {
            return Err((frame.id.map(ToOwned::to_owned), e));
        }
        Ok((frame, op))
    }

    fn present(&self) -> [(&'static str, bool); 28] {
        [
            ("pattern", self.pattern.is_some()),
            ("group", self.group.is_some()),
            ("ack", self.ack.is_some()),
            ("max_in_flight", self.max_in_flight.is_some()),
            ("subscription", self.subscription.is_some()),
            ("delivery", self.delivery.is_some()),
            ("delay_ms", self.delay_ms.is_some()),
            ("call", self.call.is_some()),
            ("ok", self.ok.is_some()),
            ("error", self.error.is_some()),
            ("reject", self.reject.is_some()),
            ("hand_back", self.hand_back.is_some()),
            ("concurrency", self.concurrency.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("messages", self.messages.is_some()),
            ("topic", self.topic.is_some()),
            ("payload", self.payload.is_some()),
            ("payload_base64", self.payload_base64.is_some()),
            ("content_type", self.content_type.is_some()),
            ("headers", self.headers.is_some()),
            ("correlation_id", self.correlation_id.is_some()),
            ("causation_id", self.causation_id.is_some()),
            ("message_id", self.message_id.is_some()),
            ("priority", self.priority.is_some()),
            ("source", self.source.is_some()),
            ("traceparent", self.traceparent.is_some()),
            ("type_name", self.type_name.is_some()),
            ("type_version", self.type_version.is_some()),
        ]
    }

    /// Refuses fields that belong to other ops.
    fn check_fields(&self, op: Op) -> Result<(), ApiError> {
        let allowed = op.fields();
        for (name, present) in self.present() {
            if present && !allowed.contains(&name) {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "field `{name}` is not part of op {}: it takes {}",
                        op.as_str(),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The message fields, moved out.
    pub(crate) fn take_message(&mut self) -> PublishFields<'a> {
        PublishFields {
            topic: self.topic.take(),
            payload: self.payload.take(),
            payload_base64: self.payload_base64.take(),
            content_type: self.content_type.take(),
            headers: self.headers.take(),
            correlation_id: self.correlation_id.take(),
            causation_id: self.causation_id.take(),
            message_id: self.message_id.take(),
            priority: self.priority.take(),
            source: self.source.take(),
            traceparent: self.traceparent.take(),
            type_name: self.type_name.take(),
            type_version: self.type_version.take(),
        }
    }
}

/// The `id` of a frame that did not parse as a client op, when it is valid JSON with one.
fn id_of(text: &str) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
    }
    serde_json::from_str::<IdOnly<'_>>(text)
        .ok()
        .and_then(|f| f.id.map(ToOwned::to_owned))
}

/// Takes a required field or says which op needs it.
pub(crate) fn required<T>(value: Option<T>, op: &str, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("op {op} needs the field `{field}`"),
        )
    })
}

/// A server frame: `op`, the client's `id` when it gave one, and the fields of `body`.
#[derive(Serialize)]
struct Answer<'a, T> {
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RawValue>,
    #[serde(flatten)]
    body: T,
}

/// Renders a server frame.
pub(crate) fn answer<T: Serialize>(op: &str, id: Option<&RawValue>, body: T) -> Utf8Bytes {
    match serde_json::to_string(&Answer { op, id, body }) {
        Ok(s) => Utf8Bytes::from(s),
        Err(e) => error_frame(
            id,
            &ApiError::new(ErrorKind::Internal, format!("cannot render answer: {e}")),
        ),
    }
}

/// Renders `{"op":"error","id":..,"error":{"kind","message"}}`.
pub(crate) fn error_frame(id: Option<&RawValue>, error: &ApiError) -> Utf8Bytes {
    error_frame_with(id, error, serde_json::Map::new())
}

/// An error frame with extra fields (e.g. `published` for a partly published batch).
pub(crate) fn error_frame_with(
    id: Option<&RawValue>,
    error: &ApiError,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Body {
        error: crate::error::ErrorDetail,
        #[serde(flatten)]
        extra: serde_json::Map<String, serde_json::Value>,
    }
    let body = Body {
        error: error.body().error,
        extra,
    };
    let text = serde_json::to_string(&Answer {
        op: "error",
        id,
        body,
    })
    // Rendering a map of strings and values cannot fail; keep a valid frame regardless.
    .unwrap_or_else(|_| {
        r#"{"op":"error","error":{"kind":"internal","message":"cannot render error"}}"#.to_owned()
    });
    Utf8Bytes::from(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_a_publish_keeping_the_payload_text() {
        let text = r#"{"op":"publish","id":"c2","topic":"a.b","payload":{"x": [1, 2]},"headers":{"k":"v"}}"#;
        let (mut f, op) = ClientFrame::parse(text).unwrap();
        assert_eq!(op, Op::Publish);
        assert_eq!(f.id.unwrap().get(), r#""c2""#);
        let m = f.take_message();
        assert_eq!(m.topic.as_deref(), Some("a.b"));
        assert_eq!(m.payload.unwrap().get(), r#"{"x": [1, 2]}"#);
        assert_eq!(m.headers.unwrap().get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn a_field_of_another_op_is_refused_by_name() {
        let (id, e) = ClientFrame::parse(r#"{"op":"publish","id":7,"topic":"a","pattern":"a.#"}"#)
            .unwrap_err();
        assert_eq!(id.unwrap().get(), "7");
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("`pattern`"), "{}", e.message);
    }

    #[test]
    fn unknown_fields_ops_and_bad_json_are_told_apart() {
        let (id, e) = ClientFrame::parse(r#"{"op":"publish","id":"x","topik":"a"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("topik"), "{}", e.message);
        assert_eq!(id.unwrap().get(), r#""x""#);
        let (_, e) = ClientFrame::parse(r#"{"op":"dance"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("dance"));
        let (id, e) = ClientFrame::parse(r#"{"op":"publish","#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::MalformedJson);
        assert!(id.is_none());
        let (_, e) = ClientFrame::parse(r#"{"op":"subscribe","pattern":"a","ack":"sometimes"}"#)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn answers_echo_the_id_verbatim() {
        let id = RawValue::from_string("{\"n\":1}".to_owned()).unwrap();
        let text = answer(
            "subscribed",
            Some(&id),
            serde_json::json!({"subscription": "s1"}),
        );
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "subscribed", "id": {"n": 1}, "subscription": "s1"})
        );
        let e = error_frame(None, &ApiError::new(ErrorKind::NotFound, "nope"));
        let v: serde_json::Value = serde_json::from_str(e.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "error", "error": {"kind": "not_found", "message": "nope"}})
        );
    }
}
