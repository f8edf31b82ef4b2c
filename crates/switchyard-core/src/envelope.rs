//! The envelope: one message with everything the bus needs to route, trace and retry it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use ulid::Ulid;

pub use crate::id::{MessageId, MessageIdError};

use crate::local::Local;
use crate::topic::Topic;

/// What kind of message an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A fact: delivered to every matching subscription (0..n).
    #[default]
    Event,
    /// An intention: delivered to exactly one handler, which returns a result.
    Command,
    /// A command with a deadline and a typed reply.
    Request,
    /// The reply to a command or request.
    Reply,
}

impl Kind {
    /// Lower-case name (`event`, `command`, `request`, `reply`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Command => "command",
            Self::Request => "request",
            Self::Reply => "reply",
        }
    }
}

/// Urgency of a message: higher values are handled first among waiting messages of one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Priority(pub u8);

impl Priority {
    /// Background work.
    pub const LOW: Priority = Priority(64);
    /// The default.
    pub const NORMAL: Priority = Priority(128);
    /// Jumps ahead of normal messages that are still waiting.
    pub const HIGH: Priority = Priority(192);
}

impl Default for Priority {
    fn default() -> Self {
        Self::NORMAL
    }
}

/// String headers. Unknown headers are kept as they are. Cheap to clone: the map is shared
/// and copied only when one clone is changed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Option<Arc<BTreeMap<SmolStr, SmolStr>>>);

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The length is known: say so, so length-prefixed formats (postcard, bincode) work.
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<SmolStr, SmolStr>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self(None)
    }

    /// The value of one header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.as_ref()?.get(name).map(SmolStr::as_str)
    }

    /// Sets one header, replacing any earlier value.
    pub fn insert(&mut self, name: impl Into<SmolStr>, value: impl Into<SmolStr>) {
        Arc::make_mut(self.0.get_or_insert_with(Default::default))
            .insert(name.into(), value.into());
    }

    /// Removes one header and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<SmolStr> {
        Arc::make_mut(self.0.as_mut()?).remove(name)
    }

    /// All headers in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<SmolStr>, V: Into<SmolStr>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let map: BTreeMap<SmolStr, SmolStr> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        if map.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::new(map)))
        }
    }
}

/// Delivery bookkeeping: which attempt this is, when the first one happened, and by when
/// the sender wants the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// 1 on the first delivery, 2 on the first retry, and so on. 0 before any delivery.
    pub attempt: u32,
    /// When the message was first handed to a handler.
    pub first_delivered_at: Option<SystemTime>,
    /// The sender's deadline, for a request (`bus.request`, or a command sent with a
    /// deadline from another process: what was left of it when it arrived). `None` for
    /// events and for commands sent without one. Past it the sender has stopped waiting;
    /// a handler may check it to skip or cut short work nobody waits for. An instant of
    /// this process's clock, so it is not serialized (a transport carries what is left of
    /// it instead, e.g. NATS's `Sy-Deadline-Ms`).
    #[serde(skip)]
    pub deadline: Option<Instant>,
}

impl DeliveryInfo {
    /// What is left of [`deadline`](Self::deadline) now (zero once it has passed), or
    /// `None` without one.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Content type used by the default JSON codec.
pub const JSON: &str = "application/json";

/// One message on the bus: routing data, tracing ids, headers and an opaque payload.
///
/// Cloning is cheap: strings are inline or shared, the payload is [`Bytes`].
///
/// ```
/// use switchyard_core::{Envelope, Kind, Topic};
/// let env = Envelope::new(Topic::new("users.created")?, "{\"id\":7}")
///     .with_header("tenant", "acme")
///     .with_source("user-service");
/// assert_eq!(env.kind, Kind::Event);
/// assert_eq!(env.correlation_id, env.id); // a new message starts its own correlation
/// assert_eq!(env.header("tenant"), Some("acme"));
/// # Ok::<(), switchyard_core::TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id of this message.
    pub id: MessageId,
    /// Where it is published.
    pub topic: Topic,
    /// Event, command, request or reply.
    pub kind: Kind,
    /// Id shared by every message of one end-to-end flow. A new message starts its own
    /// (equal to `id`); a message published while handling another inherits that one's.
    pub correlation_id: MessageId,
    /// Id of the message whose handler published this one (set automatically by the bus).
    pub causation_id: Option<MessageId>,
    /// Name of the component that published it.
    pub source: Option<SmolStr>,
    /// Name of the component it is addressed to, if any.
    pub target: Option<SmolStr>,
    /// Urgency among waiting messages.
    pub priority: Priority,
    /// When it was created.
    pub timestamp: SystemTime,
    /// String headers; unknown ones are kept.
    pub headers: Headers,
    /// MIME type of the payload (`application/json` by default).
    pub content_type: SmolStr,
    /// Rust or schema type name of the payload, for schema evolution.
    pub type_name: Option<SmolStr>,
    /// Schema version of the payload type.
    pub type_version: u32,
    /// The encoded message.
    pub payload: Bytes,
    /// Attempt number and first delivery time.
    pub delivery: DeliveryInfo,
    /// The typed value `payload` was encoded from, while the message stays in the process
    /// that published it (see [`Local`]): typed handlers take it instead of decoding. Never
    /// serialized or compared.
    #[serde(skip)]
    pub local: Local,
}

impl Envelope {
    /// A new event on `topic` carrying `payload`, with a fresh id that is also its correlation id.
    pub fn new(topic: Topic, payload: impl Into<Bytes>) -> Self {
        // One clock read for both the id's time part and the timestamp.
        let now = SystemTime::now();
        let id = MessageId::from_ulid(Ulid::from_datetime(now));
        Self {
            id: id.clone(),
            topic,
            kind: Kind::Event,
            correlation_id: id,
            causation_id: None,
            source: None,
            target: None,
            priority: Priority::NORMAL,
            timestamp: now,
            headers: Headers::new(),
            content_type: SmolStr::new_static(JSON),
            type_name: None,
            type_version: 1,
            payload: payload.into(),
            delivery: DeliveryInfo::default(),
            local: Local::default(),
        }
    }

    /// Sets the kind.
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets one header.
    pub fn with_header(mut self, name: impl Into<SmolStr>, value: impl Into<SmolStr>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the source component.
    pub fn with_source(mut self, source: impl Into<SmolStr>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the target component.
    pub fn with_target(mut self, target: impl Into<SmolStr>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: MessageId) -> Self {
        self.correlation_id = id;
        self
    }

    /// Makes this message a consequence of `parent`: causation is the parent's id and the
    /// correlation id is inherited from the parent.
    pub fn caused_by(mut self, parent: &Envelope) -> Self {
        self.causation_id = Some(parent.id.clone());
        self.correlation_id = parent.correlation_id.clone();
        self
    }

    /// The value of one header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// A reply to this message: kind `Reply`, same topic, caused by and correlated with it.
    pub fn reply(&self, payload: impl Into<Bytes>) -> Envelope {
        self.reply_address().reply(payload)
    }

    /// What a reply to this message takes from it, kept apart so that the message itself can
    /// be handed on (to a handler) and the reply made afterwards.
    pub fn reply_address(&self) -> ReplyAddress {
        ReplyAddress {
            topic: self.topic.clone(),
            id: self.id.clone(),
            correlation_id: self.correlation_id.clone(),
            source: self.source.clone(),
        }
    }
}

/// Where a reply to a message goes ([`Envelope::reply_address`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAddress {
    topic: Topic,
    id: MessageId,
    correlation_id: MessageId,
    source: Option<SmolStr>,
}

impl ReplyAddress {
    /// The reply: kind `Reply`, the message's topic, caused by and correlated with it,
    /// addressed to its source.
    pub fn reply(self, payload: impl Into<Bytes>) -> Envelope {
        // Filled in place (not through the by-value `caused_by`, which moves the whole
        // envelope once more): handlers build one of these per command.
        let mut reply = Envelope::new(self.topic, payload);
        reply.kind = Kind::Reply;
        reply.causation_id = Some(self.id);
        reply.correlation_id = self.correlation_id;
        reply.target = self.source;
        reply
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("kind", &self.kind)
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("source", &self.source)
            .field("target", &self.target)
            .field("priority", &self.priority)
            .field("headers", &self.headers)
            .field("type_name", &self.type_name)
            .field("payload_len", &self.payload.len())
            .field("attempt", &self.delivery.attempt)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_made_from_the_address_is_addressed_to_the_message() {
        let mut cmd = Envelope::new(Topic::new("users.create").unwrap(), "{}")
            .with_kind(Kind::Command)
            .caused_by(&Envelope::new(Topic::new("flow.start").unwrap(), "{}"));
        cmd.source = Some("frontend".into());
        let address = cmd.reply_address();
        let handed_on = cmd.clone(); // the message can go its way; the address stays
        let got = address.reply(b"42".to_vec());
        assert_eq!(got.kind, Kind::Reply);
        assert_eq!(got.topic, handed_on.topic);
        assert_eq!(got.causation_id, Some(handed_on.id.clone()));
        assert_eq!(got.correlation_id, handed_on.correlation_id);
        assert_eq!(got.target.as_deref(), Some("frontend"));
        assert_eq!(got.source, None);
        assert_eq!(&got.payload[..], b"42");
        assert_ne!(got.id, handed_on.id, "the reply has an id of its own");
        assert_eq!(handed_on.reply("42").causation_id, got.causation_id);
    }

    #[test]
    fn headers_copy_on_write() {
        let a = Envelope::new(Topic::new("a.b").unwrap(), "x").with_header("k", "1");
        let mut b = a.clone();
        b.headers.insert("k", "2");
        assert_eq!(a.header("k"), Some("1"));
        assert_eq!(b.header("k"), Some("2"));
    }

    #[test]
    fn json_roundtrip_keeps_every_field() {
        let parent = Envelope::new(Topic::new("a.b").unwrap(), "p");
        let env = Envelope::new(Topic::new("a.c").unwrap(), vec![0u8, 159, 255])
            .caused_by(&parent)
            .with_header("x-unknown", "kept")
            .with_source("s")
            .with_target("t")
            .with_priority(Priority::HIGH)
            .with_kind(Kind::Command);
        let json = serde_json::to_string(&env).unwrap();
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn message_id_parses_its_display() {
        let id = MessageId::new();
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        assert!("no pe".parse::<MessageId>().is_err());
    }
}
