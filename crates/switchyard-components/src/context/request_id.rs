//! [`RequestId`]: the id of one request context.

use std::fmt;

use serde::{Deserialize, Serialize};
use switchyard::MessageId;

/// Identifies one request context: a ULID that switchyard makes (so, unlike message ids,
/// always a ULID, kept as its 128 bits and `Copy`). It travels as its text, like a
/// [`MessageId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u128);

impl RequestId {
    /// A fresh id.
    pub fn new() -> Self {
        Self::from_message_id(&MessageId::new()).unwrap_or(Self(0))
    }

    /// The request id a ULID message id spells; `None` for any other id.
    pub fn from_message_id(id: &MessageId) -> Option<Self> {
        id.as_u128().map(Self)
    }

    /// The id as a message id (to correlate the messages of a context begun without a parent).
    pub fn to_message_id(self) -> MessageId {
        MessageId::from_u128(self.0)
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_message_id(), f)
    }
}

/// A string that is not a request id (a ULID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request id {input:?}: expected a 26-character ULID")]
pub struct RequestIdError {
    /// The refused string.
    pub input: String,
}

impl std::str::FromStr for RequestId {
    type Err = RequestIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<MessageId>()
            .ok()
            .and_then(|id| Self::from_message_id(&id))
            .ok_or_else(|| RequestIdError {
                input: s.to_owned(),
            })
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_message_id().serialize(s)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = MessageId::deserialize(d)?;
        Self::from_message_id(&id)
            .ok_or_else(|| serde::de::Error::custom(format!("request id {id} is not a ULID")))
    }
}
