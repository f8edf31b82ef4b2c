//! The serialized form of an [`Envelope`]: every field in one flat struct, as it was before
//! the rare fields moved behind a box, so logs, transports and JSON stay byte-compatible.

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;

use super::{DeliveryInfo, Envelope, Headers, Kind, MessageId, Priority, Rare};
use crate::local::Local;
use crate::topic::Topic;

/// What is written: borrowed, so serializing copies nothing.
#[derive(Serialize)]
#[serde(rename = "Envelope")]
struct Out<'a> {
    id: &'a MessageId,
    topic: &'a Topic,
    kind: Kind,
    correlation_id: &'a MessageId,
    causation_id: Option<&'a MessageId>,
    source: Option<&'a str>,
    target: Option<&'a str>,
    priority: Priority,
    timestamp: SystemTime,
    headers: &'a Headers,
    content_type: &'a str,
    type_name: Option<&'a str>,
    type_version: u32,
    payload: &'a Bytes,
    delivery: &'a DeliveryInfo,
}

/// What is read: the same fields, in the same order, owned.
#[derive(Deserialize)]
#[serde(rename = "Envelope")]
struct In {
    id: MessageId,
    topic: Topic,
    kind: Kind,
    correlation_id: MessageId,
    causation_id: Option<MessageId>,
    source: Option<SmolStr>,
    target: Option<SmolStr>,
    priority: Priority,
    timestamp: SystemTime,
    headers: Headers,
    content_type: SmolStr,
    type_name: Option<SmolStr>,
    type_version: u32,
    payload: Bytes,
    delivery: DeliveryInfo,
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A typed value carried unencoded is written as its encoding: the bytes the payload
        // would hold, never an empty payload in its place.
        let encoded;
        let payload = if self.needs_encoding() {
            encoded = self
                .local
                .encoded()
                .transpose()
                .map_err(serde::ser::Error::custom)?;
            encoded.as_ref().unwrap_or(&self.payload)
        } else {
            &self.payload
        };
        let rare = self.rare();
        Out {
            id: &self.id,
            topic: &self.topic,
            kind: self.kind,
            correlation_id: &self.correlation_id,
            causation_id: rare.causation_id.as_ref(),
            source: rare.source.as_deref(),
            target: rare.target.as_deref(),
            priority: self.priority,
            timestamp: self.timestamp,
            headers: &rare.headers,
            content_type: self.content_type(),
            type_name: self.type_name.as_deref(),
            type_version: self.type_version,
            payload,
            delivery: &self.delivery,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let In {
            id,
            topic,
            kind,
            correlation_id,
            causation_id,
            source,
            target,
            priority,
            timestamp,
            headers,
            content_type,
            type_name,
            type_version,
            payload,
            delivery,
        } = In::deserialize(d)?;
        let rare = Rare {
            causation_id,
            source,
            target,
            headers,
            content_type: (content_type != super::JSON).then_some(content_type),
        };
        Ok(Envelope {
            id,
            topic,
            kind,
            correlation_id,
            priority,
            timestamp,
            type_name,
            type_version,
            payload,
            delivery,
            local: Local::default(),
            rare: if rare == super::NO_RARE {
                super::RareSlot::default()
            } else {
                super::RareSlot::filled(rare)
            },
            unencoded: false,
        })
    }
}
