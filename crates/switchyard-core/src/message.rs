//! Typed messages on top of the envelope.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use smol_str::SmolStr;

use crate::envelope::{Envelope, JSON, Kind};
use crate::error::{CodecDirection, CodecError};
use crate::topic::{Topic, TopicError};

/// A struct that travels on the bus. Implement it (three lines) and publish the struct itself.
///
/// The codec is JSON unless `encode` / `decode` / `CONTENT_TYPE` are overridden.
///
/// A message is `Clone`: inside the process that published it, a typed handler gets a clone
/// of the published value instead of decoding the payload (each subscriber of a fan-out and
/// each retry its own copy, so a handler that changes its copy changes nothing another one
/// sees; see [`Local`](crate::Local)), the way `tokio::sync::broadcast` requires `T: Clone`.
/// A clone costs a fraction of a JSON decode: a typed publish of a 64-byte message to 8
/// subscribers went from 32,024 to 22,131 instructions (the guard `w2_fanout8_typed`).
/// A handler that only reads the message can take it as [`Shared<Self>`](crate::Shared)
/// instead: the published value itself, no clone per subscriber or retry.
///
/// In process a typed handler gets the value as the publisher made it, not as a decode of
/// the payload would remake it: for the usual derived types the two are equal, but what the
/// encoding drops or changes (a `#[serde(skip)]` field, a custom `Deserialize` or
/// [`Message::decode`] that validates or normalises, a non-finite float, which JSON writes as
/// `null`) arrives unchanged in process and differently from a transport. A type whose
/// handlers rely on its decode should not carry such fields.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard_core::Message;
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct UserCreated { id: u64 }
/// impl Message for UserCreated { const TOPIC: &'static str = "users.created"; }
///
/// let env = UserCreated { id: 7 }.to_envelope()?;
/// assert_eq!(env.topic.as_str(), "users.created");
/// assert_eq!(UserCreated::from_envelope(&env)?.id, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a message the bus can carry: it does not implement `Message`",
    label = "not a `Message`",
    note = "derive `Clone`, `Serialize` and `Deserialize` for `{Self}` and give it a topic: `impl Message for {Self} {{ const TOPIC: &'static str = \"domain.event\"; }}`",
    note = "a handler's first argument is the decoded message; for raw envelopes use `Bus::subscribe` with `handler_fn`"
)]
pub trait Message: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Topic the message is published on.
    const TOPIC: &'static str;
    /// Schema version, carried in the envelope for schema evolution.
    const VERSION: u32 = 1;
    /// MIME type of the encoding.
    const CONTENT_TYPE: &'static str = JSON;
    /// Envelope kind used when this type is published.
    const KIND: Kind = Kind::Event;

    /// Short type name carried in the envelope (the last path segment of the Rust type).
    fn type_name() -> &'static str {
        let full = std::any::type_name::<Self>();
        // After the last `::` (a byte scan: `rsplit("::")` builds a substring searcher, about
        // 330 instructions on every typed publish). `:` appears in type names only as `::`.
        match full.bytes().rposition(|b| b == b':') {
            Some(i) => &full[i + 1..],
            None => full,
        }
    }

    /// Encodes the message (JSON by default).
    fn encode(&self) -> Result<Bytes, CodecError> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| CodecError {
                direction: CodecDirection::Encode,
                type_name: std::any::type_name::<Self>(),
                source: Box::new(e),
            })
    }

    /// Decodes the message (JSON by default).
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError {
            direction: CodecDirection::Decode,
            type_name: std::any::type_name::<Self>(),
            source: Box::new(e),
        })
    }

    /// The topic as a validated [`Topic`]. [`Self::TOPIC`] is judged once, when the type is
    /// compiled, not on every call (an invalid one gives its `TopicError` on every call).
    fn topic() -> Result<Topic, TopicError> {
        crate::topic::static_topic::<Self>()
    }

    /// Encodes into a fresh envelope on [`Self::TOPIC`], with type name, version and content type set.
    fn to_envelope(&self) -> Result<Envelope, crate::PublishError> {
        let topic = Self::topic()?;
        Ok(typed_fields::<Self>(Envelope::new(topic, self.encode()?)))
    }

    /// Decodes the payload of an envelope.
    fn from_envelope(env: &Envelope) -> Result<Self, CodecError> {
        Self::decode(&env.payload)
    }
}

/// The envelope [`Message::to_envelope`] fills, with an empty payload: a new id, `M`'s topic,
/// kind, type name, version and content type. What the bus starts from for a typed message
/// it carries [unencoded](Envelope::set_unencoded) (its `publish`, `send` and `request` make
/// the same envelope in place, with [`Envelope::new`] on [`Message::topic`] and
/// [`set_typed_fields`]; `Ctx` and `Session` call this).
///
/// A free function, not a `Message` method, so that no type can change what it makes: every
/// way of publishing a message gives it the same envelope. (A trait method with a default
/// body could be overridden, and the bus's in-place paths would not see the override.)
///
/// ```compile_fail
/// use bytes::Bytes;
/// use serde::{Deserialize, Serialize};
/// use switchyard_core::{Envelope, Message, TopicError};
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Tagged;
/// impl Message for Tagged {
///     const TOPIC: &'static str = "tagged";
///     // Not a method of `Message`: nothing to override.
///     fn blank_envelope() -> Result<Envelope, TopicError> {
///         Ok(Envelope::new(Self::topic()?, Bytes::new()))
///     }
/// }
/// ```
pub fn blank_envelope<M: Message>() -> Result<Envelope, TopicError> {
    let mut env = Envelope::new(M::topic()?, Bytes::new());
    set_typed_fields::<M>(&mut env);
    Ok(env)
}

/// `env` with `M`'s kind, type name, version and content type.
#[inline(always)]
fn typed_fields<M: Message>(mut env: Envelope) -> Envelope {
    set_typed_fields::<M>(&mut env);
    env
}

/// Gives `env` `M`'s kind, type name, version and content type: with a new envelope on
/// [`M::topic`](Message::topic), what [`blank_envelope`] makes. In
/// place, for a caller that builds the envelope where it keeps it (the bus's typed send: a
/// 200-byte envelope returned through layers is copied at each one the compiler does not
/// see through).
#[inline]
pub fn set_typed_fields<M: Message>(env: &mut Envelope) {
    env.kind = M::KIND;
    env.type_name = Some(SmolStr::new_static(M::type_name()));
    env.type_version = M::VERSION;
    if M::CONTENT_TYPE != JSON {
        env.set_content_type(SmolStr::new_static(M::CONTENT_TYPE));
    }
}

/// A message with exactly one handler that returns an `Output`.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard_core::{Command, Kind, Message};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct CreateUser { name: String }
/// impl Message for CreateUser {
///     const TOPIC: &'static str = "users.create";
///     const KIND: Kind = Kind::Command;
/// }
/// impl Command for CreateUser { type Output = u64; }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command: it does not implement `Command`",
    label = "not a `Command`",
    note = "`Bus::handle`, `send` and `request` take commands: `impl Command for {Self} {{ type Output = ...; }}` (with `const KIND: Kind = Kind::Command` in its `Message` impl)",
    note = "for events (any number of subscribers) use `Bus::on` instead"
)]
pub trait Command: Message {
    /// What the handler returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

#[cfg(test)]
mod tests {
    use super::*;

    mod inner {
        #[derive(Clone, serde::Serialize, serde::Deserialize)]
        pub struct Placed {
            pub n: u32,
        }
        impl crate::Message for Placed {
            const TOPIC: &'static str = "orders.placed";
        }

        #[derive(Clone, serde::Serialize, serde::Deserialize)]
        pub struct Wrapped<T>(pub T);
        impl<T: crate::Message> crate::Message for Wrapped<T> {
            const TOPIC: &'static str = "orders.wrapped";
        }

        #[derive(Clone, serde::Serialize, serde::Deserialize)]
        pub struct Bad;
        impl crate::Message for Bad {
            const TOPIC: &'static str = "orders..bad";
        }

        #[derive(Clone, serde::Serialize, serde::Deserialize)]
        pub struct Accented;
        impl crate::Message for Accented {
            const TOPIC: &'static str = "commandes.passée";
        }
    }

    #[test]
    fn the_type_name_is_the_last_path_segment() {
        assert_eq!(inner::Placed::type_name(), "Placed");
        let env = inner::Placed { n: 1 }.to_envelope().unwrap();
        assert_eq!(env.type_name.as_deref(), Some("Placed"));
        // A generic type: what follows the last `::` (its last argument's name), as before.
        assert_eq!(inner::Wrapped::<inner::Placed>::type_name(), "Placed>");
    }

    #[test]
    fn the_static_topic_gives_what_validating_it_gives() {
        use crate::TopicErrorKind;
        assert_eq!(inner::Placed::topic().unwrap().as_str(), "orders.placed");
        assert_eq!(
            inner::Bad::topic(),
            Topic::from_static("orders..bad"),
            "the same typed error as validating at run time"
        );
        assert_eq!(
            inner::Bad::topic().unwrap_err().kind,
            TopicErrorKind::EmptySegment
        );
        assert!(matches!(
            inner::Bad.to_envelope(),
            Err(crate::PublishError::InvalidTopic(e)) if e.kind == TopicErrorKind::EmptySegment
        ));
        assert_eq!(
            inner::Accented::topic().unwrap().as_str(),
            "commandes.passée"
        );
    }
}
