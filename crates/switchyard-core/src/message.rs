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
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard_core::Message;
///
/// #[derive(Serialize, Deserialize)]
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
    note = "derive `Serialize` and `Deserialize` for `{Self}` and give it a topic: `impl Message for {Self} {{ const TOPIC: &'static str = \"domain.event\"; }}`",
    note = "a handler's first argument is the decoded message; for raw envelopes use `Bus::subscribe` with `handler_fn`"
)]
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
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
        short_type_name(std::any::type_name::<Self>())
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

    /// The topic as a validated [`Topic`].
    fn topic() -> Result<Topic, TopicError> {
        Topic::from_static(Self::TOPIC)
    }

    /// Encodes into a fresh envelope on [`Self::TOPIC`], with type name, version and content type set.
    fn to_envelope(&self) -> Result<Envelope, crate::PublishError> {
        let mut env = Envelope::new(Self::topic()?, self.encode()?);
        env.kind = Self::KIND;
        env.type_name = Some(SmolStr::new_static(Self::type_name()));
        env.type_version = Self::VERSION;
        if Self::CONTENT_TYPE != JSON {
            env.content_type = SmolStr::new_static(Self::CONTENT_TYPE);
        }
        Ok(env)
    }

    /// Decodes the payload of an envelope.
    fn from_envelope(env: &Envelope) -> Result<Self, CodecError> {
        Self::decode(&env.payload)
    }
}

/// A message with exactly one handler that returns an `Output`.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard_core::{Command, Kind, Message};
///
/// #[derive(Serialize, Deserialize)]
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

/// What follows the last `::` of a type path (all of it when there is none): the
/// `rsplit("::").next()` of it, without building a substring searcher on every message.
fn short_type_name(full: &'static str) -> &'static str {
    let bytes = full.as_bytes();
    let mut end = bytes.len();
    while end >= 2 {
        if bytes[end - 1] == b':' && bytes[end - 2] == b':' {
            // After an ASCII `:`, so on a character boundary.
            return &full[end..];
        }
        end -= 1;
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_type_name_is_what_follows_the_last_path_separator() {
        for full in [
            "app::orders::CreateOrder",
            "CreateOrder",
            "a:::b",
            "::x",
            "x::",
            "app::Wrapper<other::Inner>",
            "app::Ünïcode",
            ":",
            "",
        ] {
            assert_eq!(
                short_type_name(full),
                full.rsplit("::").next().unwrap_or(full),
                "{full:?}"
            );
        }
    }
}
