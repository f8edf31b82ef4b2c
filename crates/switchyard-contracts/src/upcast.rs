//! [`Upcasters`]: per-type chains of `vN → vN+1` functions on JSON values.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use switchyard_core::{BoxError, Message};

type Step = Arc<dyn Fn(Value) -> Result<Value, BoxError> + Send + Sync>;

/// An upcast could not be made; the bus dead-letters the message as undecodable with this
/// text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The chain has a gap: no step from this version.
    #[error("no upcaster for `{type_name}` from version {from} (needed to reach version {to})")]
    Missing {
        /// Type name.
        type_name: String,
        /// The version with no step.
        from: u32,
        /// The version the handler decodes.
        to: u32,
    },
    /// A step failed.
    #[error("upcasting `{type_name}` from version {from} failed: {source}")]
    Step {
        /// Type name.
        type_name: String,
        /// The step's input version.
        from: u32,
        /// What the step returned.
        #[source]
        source: BoxError,
    },
    /// The payload is not JSON.
    #[error("the payload of `{type_name}` is not JSON: {source}")]
    Json {
        /// Type name.
        type_name: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Upcasters registered per message type: each is a function from version `n` to `n + 1` of
/// the payload as a [`serde_json::Value`]; a message at version 1 reaching a handler of
/// version 3 goes through the `1 → 2` and `2 → 3` steps, then is decoded.
///
/// Give it to the bus with [`BusBuilder::upcaster`](switchyard::BusBuilder::upcaster): typed
/// handlers then consult it for messages whose envelope `type_version` is older than the
/// type they decode (and only for those). Types with no upcaster are decoded as they are.
///
/// ```
/// use serde_json::json;
/// use switchyard_contracts::Upcasters;
///
/// let ups = Upcasters::new()
///     .step("OrderPlaced", 1, |mut v| { v["currency"] = json!("EUR"); Ok::<_, String>(v) })
///     .step("OrderPlaced", 2, |mut v| {
///         let cents = v["amount"].as_f64().unwrap_or(0.0) * 100.0;
///         v["amount_cents"] = json!(cents as u64);
///         Ok::<_, String>(v)
///     });
/// let v3 = ups.upcast_value("OrderPlaced", 1, 3, json!({"amount": 2.5}))?;
/// assert_eq!(v3, json!({"amount": 2.5, "currency": "EUR", "amount_cents": 250}));
/// # Ok::<(), switchyard_contracts::UpcastError>(())
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<String, BTreeMap<u32, Step>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (name, steps) in &self.steps {
            m.entry(name, &steps.keys().collect::<Vec<_>>());
        }
        m.finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the step from version `from` to `from + 1` of the type named `type_name`
    /// (replacing an earlier one).
    pub fn step<F, E>(mut self, type_name: &str, from: u32, f: F) -> Self
    where
        F: Fn(Value) -> Result<Value, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let step: Step = Arc::new(move |v| f(v).map_err(Into::into));
        self.steps
            .entry(type_name.to_owned())
            .or_default()
            .insert(from, step);
        self
    }

    /// [`step`](Self::step) for the message type `T` (by its [`Message::type_name`]).
    pub fn step_for<T: Message, F, E>(self, from: u32, f: F) -> Self
    where
        F: Fn(Value) -> Result<Value, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        self.step(T::type_name(), from, f)
    }

    /// True when the type has at least one step.
    pub fn has(&self, type_name: &str) -> bool {
        self.steps.contains_key(type_name)
    }

    /// Runs the chain `from → to` on a value.
    pub fn upcast_value(
        &self,
        type_name: &str,
        from: u32,
        to: u32,
        mut value: Value,
    ) -> Result<Value, UpcastError> {
        let Some(steps) = self.steps.get(type_name) else {
            return if from >= to {
                Ok(value)
            } else {
                Err(UpcastError::Missing {
                    type_name: type_name.to_owned(),
                    from,
                    to,
                })
            };
        };
        for v in from..to {
            let step = steps.get(&v).ok_or_else(|| UpcastError::Missing {
                type_name: type_name.to_owned(),
                from: v,
                to,
            })?;
            value = step(value).map_err(|source| UpcastError::Step {
                type_name: type_name.to_owned(),
                from: v,
                source,
            })?;
        }
        Ok(value)
    }
}

impl switchyard::Upcast for Upcasters {
    fn upcast(
        &self,
        type_name: &str,
        from: u32,
        to: u32,
        payload: &[u8],
    ) -> Result<Option<Bytes>, BoxError> {
        if !self.has(type_name) {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(payload).map_err(|source| UpcastError::Json {
            type_name: type_name.to_owned(),
            source,
        })?;
        let value = self.upcast_value(type_name, from, to, value)?;
        Ok(Some(Bytes::from(serde_json::to_vec(&value)?)))
    }
}
