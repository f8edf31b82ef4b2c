//! Review rev40: issue 18's fast paths of the in-memory bus, attacked from the outside.
//! Each shortcut (envelope block reuse, the rare-fields box, typed values carried unencoded,
//! the thread's routing cache, commands run on their sender's task, the worker's first-poll
//! path and prefetch) is a place where a message could come out wrong, lost, or carrying
//! another message's fields: these tests publish many shapes through them and compare every
//! envelope a handler, a caller or the dead-letter store sees with what was sent.

mod exits;
mod inline;
mod kept;
mod passed_on;
mod replies;
mod retries;
mod reuse;
mod routing;
mod stops;
mod typed_outputs;
mod unencoded;
mod worker;

use serde::{Deserialize, Serialize};
use switchyard::{Envelope, Kind, Message};

/// Every field of an envelope a user can read, as plain values (`local` excepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub id: String,
    pub topic: String,
    pub kind: Kind,
    pub correlation: String,
    pub causation: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub priority: u8,
    pub type_name: Option<String>,
    pub type_version: u32,
    pub payload: Vec<u8>,
    pub deadline: bool,
}

/// The user-visible fields of `env`.
pub fn shape(env: &Envelope) -> Shape {
    Shape {
        id: env.id.to_string(),
        topic: env.topic.to_string(),
        kind: env.kind,
        correlation: env.correlation_id.to_string(),
        causation: env.causation_id().map(ToString::to_string),
        source: env.source().map(str::to_owned),
        target: env.target().map(str::to_owned),
        content_type: env.content_type().to_owned(),
        headers: env
            .headers()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        priority: env.priority.0,
        type_name: env.type_name.as_deref().map(str::to_owned),
        type_version: env.type_version,
        payload: env.payload.to_vec(),
        deadline: env.delivery.deadline.is_some(),
    }
}

/// A typed event with a string, so that a value taken from another message shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tok {
    pub n: u64,
    pub text: String,
}
impl Message for Tok {
    const TOPIC: &'static str = "rev40.tok";
}

impl Tok {
    pub fn new(n: u64) -> Self {
        Self {
            n,
            text: format!("tok {n}"),
        }
    }
}

/// A typed command echoing its input with a tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Echo {
    pub n: u64,
    pub text: String,
}
impl Message for Echo {
    const TOPIC: &'static str = "rev40.echo";
    const KIND: Kind = Kind::Command;
}
impl switchyard::Command for Echo {
    type Output = String;
}
