//! The registry of message types: topic → type, kind, version, schema, producers, consumers.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard::Bus;
use switchyard_core::{Pattern, Topic, TopicError};

use crate::contract::Contract;

/// One registered message type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageType {
    /// Type name, as carried in the envelope's `type_name`.
    pub name: String,
    /// Topic it is published on.
    pub topic: String,
    /// `event`, `command`, `request` or `reply`.
    pub kind: String,
    /// Schema version, as carried in the envelope's `type_version`.
    pub version: u32,
    /// MIME type of the payload.
    pub content_type: String,
    /// JSON Schema of the payload.
    pub schema: Value,
    /// Components (or subscriptions) that publish it.
    pub producers: BTreeSet<String>,
    /// Components (or subscriptions) that receive it.
    pub consumers: BTreeSet<String>,
}

/// A registry entry could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A topic or pattern is not valid.
    #[error("invalid topic or pattern `{input}`: {source}")]
    Topic {
        /// What was given.
        input: String,
        /// Why it is invalid.
        #[source]
        source: TopicError,
    },
    /// No type of that name is registered.
    #[error("no message type `{0}` is registered")]
    Unknown(String),
    /// A type of the same name is already registered on another topic. The name is what
    /// envelopes carry (`type_name`) and what the validator, the upcasters and
    /// [`produces`](Registry::produces) / [`consumes`](Registry::consumes) key by, so two
    /// types cannot share it; give one another name (`Message::type_name`).
    #[error(
        "message type `{name}` on topic `{topic}` is refused: a type of that name is already registered on topic `{registered_topic}` (type names must be unique; rename one with `Message::type_name`)"
    )]
    NameTaken {
        /// The name both types have.
        name: String,
        /// The topic of the type refused.
        topic: String,
        /// The topic of the type already registered.
        registered_topic: String,
    },
}

/// A bus-wide registry of message types, keyed by type name.
///
/// Fill it with [`register`](Self::register) for every [`Contract`], then say who produces and
/// consumes what: [`produces`](Self::produces) / [`consumes`](Self::consumes) by hand,
/// [`declare_component`](Self::declare_component) from a component's declared patterns (e.g. a
/// `switchyard-components` `ComponentSpec`'s `subscribes` / `publishes`), and
/// [`observe_bus`](Self::observe_bus) from the live subscriptions of a bus.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    types: BTreeMap<String, MessageType>,
}

fn topic(s: &str) -> Result<Topic, RegistryError> {
    Topic::new(s).map_err(|source| RegistryError::Topic {
        input: s.to_owned(),
        source,
    })
}

fn pattern(s: &str) -> Result<Pattern, RegistryError> {
    Pattern::new(s).map_err(|source| RegistryError::Topic {
        input: s.to_owned(),
        source,
    })
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `T` (replacing an earlier entry of the same name on the same topic, e.g. a
    /// newer version, keeping its producers and consumers). A type of the same name on
    /// another topic is refused ([`RegistryError::NameTaken`]): before, it silently replaced
    /// the first (whose topic vanished from the AsyncAPI document and whose producers moved).
    pub fn register<T: Contract>(&mut self) -> Result<&mut Self, RegistryError> {
        self.insert(MessageType {
            name: T::contract_name().to_owned(),
            topic: T::TOPIC.to_owned(),
            kind: T::KIND.as_str().to_owned(),
            version: T::VERSION,
            content_type: T::CONTENT_TYPE.to_owned(),
            schema: T::schema(),
            producers: BTreeSet::new(),
            consumers: BTreeSet::new(),
        })
    }

    /// Registers a type described by hand (e.g. one only other languages publish), as
    /// [`register`](Self::register) does: a type of the same name on another topic is refused
    /// ([`RegistryError::NameTaken`]) and the registry is left as it was.
    pub fn insert(&mut self, mut ty: MessageType) -> Result<&mut Self, RegistryError> {
        topic(&ty.topic)?;
        if let Some(old) = self.types.get(&ty.name)
            && old.topic != ty.topic
        {
            return Err(RegistryError::NameTaken {
                name: ty.name,
                topic: ty.topic,
                registered_topic: old.topic.clone(),
            });
        }
        if let Some(old) = self.types.remove(&ty.name) {
            ty.producers.extend(old.producers);
            ty.consumers.extend(old.consumers);
        }
        self.types.insert(ty.name.clone(), ty);
        Ok(self)
    }

    fn entry(&mut self, name: &str) -> Result<&mut MessageType, RegistryError> {
        self.types
            .get_mut(name)
            .ok_or_else(|| RegistryError::Unknown(name.to_owned()))
    }

    /// Records `component` as a producer of `T` (which must be registered).
    pub fn produces<T: Contract>(&mut self, component: &str) -> Result<&mut Self, RegistryError> {
        self.entry(T::contract_name())?
            .producers
            .insert(component.to_owned());
        Ok(self)
    }

    /// Records `component` as a consumer of `T` (which must be registered).
    pub fn consumes<T: Contract>(&mut self, component: &str) -> Result<&mut Self, RegistryError> {
        self.entry(T::contract_name())?
            .consumers
            .insert(component.to_owned());
        Ok(self)
    }

    /// Records a component's declarations: it consumes every registered type whose topic one
    /// of `subscribes` matches, and produces every one whose topic one of `publishes` matches.
    pub fn declare_component<S: AsRef<str>, P: AsRef<str>>(
        &mut self,
        component: &str,
        subscribes: impl IntoIterator<Item = S>,
        publishes: impl IntoIterator<Item = P>,
    ) -> Result<&mut Self, RegistryError> {
        let subs = subscribes
            .into_iter()
            .map(|p| pattern(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let pubs = publishes
            .into_iter()
            .map(|p| pattern(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        for ty in self.types.values_mut() {
            let t = topic(&ty.topic)?;
            if subs.iter().any(|p| p.matches(&t)) {
                ty.consumers.insert(component.to_owned());
            }
            if pubs.iter().any(|p| p.matches(&t)) {
                ty.producers.insert(component.to_owned());
            }
        }
        Ok(self)
    }

    /// Records every live subscription and command handler of `bus` as a consumer of the
    /// registered types its pattern matches (under the subscription's name).
    pub fn observe_bus(&mut self, bus: &Bus) -> Result<&mut Self, RegistryError> {
        for sub in bus.registry() {
            self.declare_component(
                &sub.name,
                [sub.pattern.as_str()],
                std::iter::empty::<&str>(),
            )?;
        }
        Ok(self)
    }

    /// One type by name.
    pub fn get(&self, name: &str) -> Option<&MessageType> {
        self.types.get(name)
    }

    /// Every registered type, by name.
    pub fn types(&self) -> impl Iterator<Item = &MessageType> {
        self.types.values()
    }

    /// The types published on `topic`.
    pub fn for_topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a MessageType> + 'a {
        self.types.values().filter(move |t| t.topic == topic)
    }

    /// Number of registered types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}
