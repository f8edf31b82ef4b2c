//! The envelope: one message with everything the bus needs to route, trace and retry it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

pub use crate::id::{MessageId, MessageIdError};

use crate::local::Local;
use crate::topic::Topic;

mod rare;
mod wire;

use rare::RareSlot;

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

    /// Whether this kind goes to exactly one handler that answers it (`Command`, `Request`):
    /// sent with `send`/`request`, never published.
    ///
    /// ```
    /// use switchyard_core::Kind;
    /// assert!(Kind::Request.is_command());
    /// assert!(!Kind::Event.is_command());
    /// ```
    #[inline(always)]
    pub const fn is_command(self) -> bool {
        matches!(self, Self::Command | Self::Request)
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
    pub const fn new() -> Self {
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
        let map = Arc::make_mut(self.0.as_mut()?);
        let removed = map.remove(name);
        if map.is_empty() {
            // Back to no map, so that the emptied headers equal fresh ones.
            self.0 = None;
        }
        removed
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
    /// When the message was first handed to a handler ([`clock::now`](crate::clock::now):
    /// the system clock, read through the time-stamp counter).
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
    /// `None` without one, on the system's monotonic clock. A handler should prefer
    /// `switchyard::Ctx::remaining`, which reads tokio's clock as the bus does when it sets
    /// the deadline, so it follows a paused (virtual) clock in tests.
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
/// The fields every message uses are public; the rarely set ones (causation id, source,
/// target, free headers, a content type other than JSON) live behind one optional box, read
/// and written through methods ([`source`](Self::source), [`set_source`](Self::set_source),
/// [`headers_mut`](Self::headers_mut), ...), so a message that sets none of them carries one
/// null pointer for all of them. The serialized form is flat and the same either way: `id`,
/// `topic`, `kind`, `correlation_id`, `causation_id`, `source`, `target`, `priority`,
/// `timestamp`, `headers`, `content_type`, `type_name`, `type_version`, `payload`, `delivery`.
///
/// ```
/// use switchyard_core::{Envelope, Kind, Topic};
/// let env = Envelope::new(Topic::new("users.created")?, "{\"id\":7}")
///     .with_header("tenant", "acme")
///     .with_source("user-service");
/// assert_eq!(env.kind, Kind::Event);
/// assert_eq!(env.correlation_id, env.id); // a new message starts its own correlation
/// assert_eq!(env.header("tenant"), Some("acme"));
/// assert_eq!(env.source(), Some("user-service"));
/// # Ok::<(), switchyard_core::TopicError>(())
/// ```
#[derive(Clone)]
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
    /// Urgency among waiting messages.
    pub priority: Priority,
    /// When it was created: [`clock::now`](crate::clock::now), the system clock read through
    /// the time-stamp counter (at most about 1.5 µs behind `SystemTime::now()`, not ahead of it
    /// unless the counter's calibrated rate is off by more than 1/1024; a step of the system
    /// clock shows up within a millisecond). The same read gives the id's time part.
    pub timestamp: SystemTime,
    /// Rust or schema type name of the payload, for schema evolution. Inline rather than
    /// with the rare fields: every typed message carries one.
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
    pub local: Local,
    /// The rare fields; empty while all of them have their defaults.
    rare: RareSlot,
    /// The payload is still to be made from the value in `local`
    /// ([`set_unencoded`](Self::set_unencoded)); cleared once this copy made it. (In the
    /// padding after `kind`, `priority` and `type_version`: it costs no byte.)
    unencoded: bool,
}

/// The fields few messages set, boxed together behind [`Envelope::rare`].
#[derive(Clone, Default, PartialEq, Eq, Debug)]
struct Rare {
    causation_id: Option<MessageId>,
    source: Option<SmolStr>,
    target: Option<SmolStr>,
    headers: Headers,
    /// `None` for [`JSON`], so the common content type costs nothing.
    content_type: Option<SmolStr>,
}

/// What an envelope without rare fields reads.
static NO_RARE: Rare = Rare {
    causation_id: None,
    source: None,
    target: None,
    headers: Headers::new(),
    content_type: None,
};

// The per-message price of an envelope (ARCHITECTURE.md, "Memory per queued message"):
// fail the build rather than grow it unnoticed.
const _: () = assert!(std::mem::size_of::<Envelope>() <= 200);

impl Envelope {
    /// This envelope, moved out field by field; what is left in its place is a *vacant*
    /// envelope, which owns nothing (no field points to the heap: inline topic and ids, no
    /// payload, value or rare fields), so that it can be written over without its drop glue
    /// (the kept reply box, [`Outcome::unbox`](crate::Outcome::unbox)). Only the fields
    /// that own something are replaced, rather than the whole envelope copied out and a
    /// whole vacant one copied in.
    #[inline]
    pub(crate) fn take_out(&mut self) -> Self {
        Self {
            id: std::mem::replace(&mut self.id, MessageId::VACANT),
            topic: std::mem::replace(&mut self.topic, Topic::VACANT),
            kind: std::mem::replace(&mut self.kind, Kind::Event),
            correlation_id: std::mem::replace(&mut self.correlation_id, MessageId::VACANT),
            priority: self.priority,
            timestamp: self.timestamp,
            type_name: self.type_name.take(),
            type_version: self.type_version,
            payload: std::mem::take(&mut self.payload),
            delivery: self.delivery,
            local: std::mem::replace(&mut self.local, Local::EMPTY),
            rare: std::mem::replace(&mut self.rare, RareSlot::EMPTY),
            unencoded: std::mem::take(&mut self.unencoded),
        }
    }

    /// A new event on `topic` carrying `payload`, with a fresh id that is also its correlation id.
    pub fn new(topic: Topic, payload: impl Into<Bytes>) -> Self {
        // One clock read for both the id's time part and the timestamp.
        let now = crate::clock::now();
        let id = MessageId::made_at(now);
        Self {
            id: id.clone(),
            topic,
            kind: Kind::Event,
            correlation_id: id,
            priority: Priority::NORMAL,
            timestamp: now,
            type_name: None,
            type_version: 1,
            payload: payload.into(),
            delivery: DeliveryInfo::default(),
            local: Local::default(),
            rare: RareSlot::default(),
            unencoded: false,
        }
    }

    /// A copy of this envelope with `delivery` as its delivery bookkeeping: what a bus hands
    /// its handler for one attempt. The same as `clone()` followed by setting
    /// [`delivery`](Self::delivery), made in place in the caller (always inlined: the
    /// derived `clone`, called out of line, builds the copy in a temporary and copies it
    /// out).
    #[inline(always)]
    pub fn copy_with_delivery(&self, delivery: DeliveryInfo) -> Envelope {
        Envelope {
            id: self.id.clone(),
            topic: self.topic.clone(),
            kind: self.kind,
            correlation_id: self.correlation_id.clone(),
            priority: self.priority,
            timestamp: self.timestamp,
            type_name: self.type_name.clone(),
            type_version: self.type_version,
            payload: self.payload.clone(),
            delivery,
            local: self.local.clone(),
            rare: self.rare.clone(),
            unencoded: self.unencoded,
        }
    }

    /// Carries `value` instead of its encoding: the payload is emptied and made from the value
    /// only when something needs the bytes ([`encode_payload`](Self::encode_payload), which
    /// dead letters, serialization and the bus call), once for every copy of the envelope;
    /// typed handlers of `M` take the value (see [`Local`]). The bus does this for a
    /// typed publish or send that only typed handlers of its type read.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use switchyard_core::{Message, Topic};
    /// #[derive(Clone, Serialize, Deserialize)]
    /// struct Tick { n: u32 }
    /// impl Message for Tick { const TOPIC: &'static str = "ticks"; }
    ///
    /// let mut env = switchyard_core::message::blank_envelope::<Tick>()?;
    /// env.set_unencoded(Tick { n: 7 });
    /// assert!(env.payload.is_empty() && env.needs_encoding());
    /// let mut copy = env.clone();
    /// copy.encode_payload()?;
    /// assert_eq!(&copy.payload[..], br#"{"n":7}"#);
    /// assert_eq!(copy.local.take::<Tick>(&copy.payload).map(|t| t.n), Some(7));
    /// // This copy has its bytes: emptied on purpose, it stays empty.
    /// copy.payload = Default::default();
    /// assert!(!copy.needs_encoding());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_unencoded<M: crate::Message>(&mut self, value: M) {
        self.payload = Bytes::new();
        self.local = Local::unencoded(value);
        self.unencoded = true;
    }

    /// Whether this copy's payload is still to be made from the value carried
    /// [unencoded](Self::set_unencoded) (its payload is then empty): what
    /// [`encode_payload`](Self::encode_payload) would fill. The bus makes such envelopes only
    /// for typed handlers of the value's type, and fills them where they leave that path
    /// (dead letters, serialization, [`Ctx::envelope`](https://docs.rs/switchyard), an
    /// envelope passed on to a publish or send). Such a copy compares unequal to an encoded
    /// one (`==` and [`same_message`](Self::same_message) compare payloads).
    #[inline]
    pub fn needs_encoding(&self) -> bool {
        self.unencoded && self.payload.is_empty()
    }

    /// Fills the payload from the value carried [unencoded](Self::set_unencoded), if this copy
    /// still needs it ([`needs_encoding`](Self::needs_encoding)); does nothing otherwise. The
    /// value is encoded once for every copy of the envelope (copies asking at the same moment
    /// may each run the encoder; the first result is kept for all), and typed handlers still
    /// take it after this. On an encoding error the payload stays empty (and this copy still
    /// needs encoding).
    pub fn encode_payload(&mut self) -> Result<(), crate::CodecError> {
        if self.needs_encoding() {
            // No value (a hook let go of it): nothing to make bytes from.
            if let Some(encoded) = self.local.encoded() {
                self.payload = encoded?;
            }
            self.unencoded = false;
        }
        Ok(())
    }

    fn rare(&self) -> &Rare {
        self.rare.get().unwrap_or(&NO_RARE)
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_fill()
    }

    /// Id of the message whose handler published this one (set automatically by the bus).
    pub fn causation_id(&self) -> Option<&MessageId> {
        self.rare().causation_id.as_ref()
    }

    /// Sets (or clears) the causation id.
    pub fn set_causation_id(&mut self, id: Option<MessageId>) {
        if id.is_some() || self.rare.is_some() {
            self.rare_mut().causation_id = id;
        }
    }

    /// Name of the component that published it.
    pub fn source(&self) -> Option<&str> {
        self.rare().source.as_deref()
    }

    /// Sets (or clears) the source component.
    pub fn set_source(&mut self, source: Option<SmolStr>) {
        if source.is_some() || self.rare.is_some() {
            self.rare_mut().source = source;
        }
    }

    /// Name of the component it is addressed to, if any.
    pub fn target(&self) -> Option<&str> {
        self.rare().target.as_deref()
    }

    /// Sets (or clears) the target component.
    pub fn set_target(&mut self, target: Option<SmolStr>) {
        if target.is_some() || self.rare.is_some() {
            self.rare_mut().target = target;
        }
    }

    /// String headers; unknown ones are kept.
    pub fn headers(&self) -> &Headers {
        &self.rare().headers
    }

    /// The headers, to change them.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.rare_mut().headers
    }

    /// Replaces all headers.
    pub fn set_headers(&mut self, headers: Headers) {
        if !headers.is_empty() || self.rare.is_some() {
            self.rare_mut().headers = headers;
        }
    }

    /// MIME type of the payload (`application/json` by default).
    pub fn content_type(&self) -> &str {
        self.rare().content_type.as_deref().unwrap_or(JSON)
    }

    /// Sets the MIME type of the payload.
    pub fn set_content_type(&mut self, content_type: impl Into<SmolStr>) {
        let content_type = content_type.into();
        if content_type != JSON {
            self.rare_mut().content_type = Some(content_type);
        } else if let Some(rare) = self.rare.get_mut() {
            rare.content_type = None;
        }
    }

    /// Sets the kind.
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets one header.
    pub fn with_header(mut self, name: impl Into<SmolStr>, value: impl Into<SmolStr>) -> Self {
        self.headers_mut().insert(name, value);
        self
    }

    /// Sets the source component.
    pub fn with_source(mut self, source: impl Into<SmolStr>) -> Self {
        self.set_source(Some(source.into()));
        self
    }

    /// Sets the target component.
    pub fn with_target(mut self, target: impl Into<SmolStr>) -> Self {
        self.set_target(Some(target.into()));
        self
    }

    /// Sets the MIME type of the payload.
    pub fn with_content_type(mut self, content_type: impl Into<SmolStr>) -> Self {
        self.set_content_type(content_type);
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
        self.set_causation_id(Some(parent.id.clone()));
        self.correlation_id = parent.correlation_id.clone();
        self
    }

    /// The value of one header.
    #[inline]
    pub fn header(&self, name: &str) -> Option<&str> {
        // Most messages have no rare fields, so no headers: answered where it is asked (the
        // resilience stack asks every message for its `traceparent`), without a call.
        match self.rare.get() {
            None => None,
            Some(rare) => rare.headers.get(name),
        }
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
            source: self.rare().source.clone(),
        }
    }
}

impl Envelope {
    /// Whether `other` is the same message with the same content: equal in every field but
    /// the delivery bookkeeping (and `local`, which is never compared). A payload sharing
    /// `other`'s buffer is equal without reading it.
    #[inline]
    pub fn same_message(&self, other: &Self) -> bool {
        self.id == other.id
            && self.topic == other.topic
            && self.kind == other.kind
            && self.correlation_id == other.correlation_id
            && self.priority == other.priority
            && self.timestamp == other.timestamp
            && self.type_name == other.type_name
            && self.type_version == other.type_version
            && ((self.payload.as_ptr() == other.payload.as_ptr()
                && self.payload.len() == other.payload.len())
                || self.payload == other.payload)
            // Two envelopes without rare fields both read the one static default.
            && (std::ptr::eq(self.rare(), other.rare()) || self.rare() == other.rare())
    }
}

impl PartialEq for Envelope {
    /// Field by field, `local` excepted; rare fields at their defaults equal absent ones.
    fn eq(&self, other: &Self) -> bool {
        self.same_message(other) && self.delivery == other.delivery
    }
}

impl Eq for Envelope {}

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
    #[inline]
    pub fn reply(self, payload: impl Into<Bytes>) -> Envelope {
        self.reply_with(payload.into())
    }

    /// [`reply`](Self::reply), not generic: compiled once, here, rather than into every
    /// caller's crate (where its size would move the inlining of unrelated paths).
    #[inline(never)]
    fn reply_with(self, payload: Bytes) -> Envelope {
        // Built with its fields (not through `Envelope::new` and the by-value `caused_by`,
        // which move the whole envelope again): handlers build one of these per command. The
        // rare box for the causation id and target is usually the one the thread's last
        // reply let go of.
        let now = crate::clock::now();
        Envelope {
            id: MessageId::made_at(now),
            topic: self.topic,
            kind: Kind::Reply,
            correlation_id: self.correlation_id,
            priority: Priority::NORMAL,
            timestamp: now,
            type_name: None,
            type_version: 1,
            payload,
            delivery: DeliveryInfo::default(),
            local: Local::default(),
            rare: RareSlot::caused(self.id, self.source),
            unencoded: false,
        }
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("kind", &self.kind)
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id())
            .field("source", &self.source())
            .field("target", &self.target())
            .field("priority", &self.priority)
            .field("headers", self.headers())
            .field("type_name", &self.type_name)
            .field("payload_len", &self.payload.len())
            .field("unencoded", &self.needs_encoding())
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
        cmd.set_source(Some("frontend".into()));
        let address = cmd.reply_address();
        let handed_on = cmd.clone(); // the message can go its way; the address stays
        let got = address.reply(b"42".to_vec());
        assert_eq!(got.kind, Kind::Reply);
        assert_eq!(got.topic, handed_on.topic);
        assert_eq!(got.causation_id(), Some(&handed_on.id));
        assert_eq!(got.correlation_id, handed_on.correlation_id);
        assert_eq!(got.target(), Some("frontend"));
        assert_eq!(got.source(), None);
        assert_eq!(&got.payload[..], b"42");
        assert_ne!(got.id, handed_on.id, "the reply has an id of its own");
        assert_eq!(handed_on.reply("42").causation_id(), got.causation_id());
    }

    #[test]
    fn headers_copy_on_write() {
        let a = Envelope::new(Topic::new("a.b").unwrap(), "x").with_header("k", "1");
        let mut b = a.clone();
        b.headers_mut().insert("k", "2");
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
