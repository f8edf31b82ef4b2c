//! The registry as an AsyncAPI 3.0 document: one channel per message topic, the message
//! types with their schemas under `components`, and a `send` / `receive` operation per
//! producer / consumer.

use serde_json::{Map, Value, json};

use crate::registry::{MessageType, Registry};

/// Document-level settings for [`export`].
#[derive(Debug, Clone)]
pub struct Info {
    /// `info.title`.
    pub title: String,
    /// `info.version` (of the application, not of AsyncAPI).
    pub version: String,
    /// The server messages go through, as (host, protocol), e.g. `("localhost:8080", "ws")`
    /// for a node or `("localhost:4222", "nats")`; `None` leaves `servers` out.
    pub server: Option<(String, String)>,
}

impl Default for Info {
    fn default() -> Self {
        Self {
            title: "switchyard".to_owned(),
            version: "0.1.0".to_owned(),
            server: None,
        }
    }
}

/// A key usable in a `$ref` JSON pointer and as a component key: `[A-Za-z0-9_.-]` only.
fn key(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Moves `$defs` / `definitions` of a message schema into `components.schemas` and points
/// the `$ref`s there (AsyncAPI resolves references against the whole document).
fn hoist(schema: &Value, schemas: &mut Map<String, Value>) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(m) = &mut schema {
        m.remove("$schema");
        for defs in ["$defs", "definitions"] {
            if let Some(Value::Object(d)) = m.remove(defs) {
                for (name, mut s) in d {
                    rewrite_refs(&mut s);
                    schemas.entry(key(&name)).or_insert(s);
                }
            }
        }
    }
    rewrite_refs(&mut schema);
    schema
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                for prefix in ["#/$defs/", "#/definitions/"] {
                    if let Some(name) = r.strip_prefix(prefix) {
                        *r = format!("#/components/schemas/{}", key(name));
                        break;
                    }
                }
            }
            m.values_mut().for_each(rewrite_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

fn message(ty: &MessageType, schemas: &mut Map<String, Value>) -> Value {
    json!({
        "name": ty.name,
        "title": ty.name,
        "summary": format!("{} {} (version {}) on `{}`", ty.kind, ty.name, ty.version, ty.topic),
        "contentType": ty.content_type,
        "headers": {
            "type": "object",
            "properties": {
                "type_name": {"type": "string", "const": ty.name},
                "type_version": {"type": "integer", "const": ty.version},
            }
        },
        "payload": hoist(&ty.schema, schemas),
        "x-switchyard-kind": ty.kind,
        "x-switchyard-version": ty.version,
    })
}

/// Exports `registry` as an AsyncAPI 3.0.0 document.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard_contracts::{asyncapi, Contract, JsonSchema, Registry};
/// use switchyard_core::Message;
///
/// #[derive(Clone, Serialize, Deserialize, JsonSchema)]
/// struct UserCreated { id: u64 }
/// impl Message for UserCreated { const TOPIC: &'static str = "users.created"; }
/// impl Contract for UserCreated {}
///
/// let mut reg = Registry::new();
/// reg.register::<UserCreated>()?.produces::<UserCreated>("accounts")?;
/// let doc = asyncapi::export(&reg, &asyncapi::Info::default());
/// assert_eq!(doc["asyncapi"], "3.0.0");
/// assert_eq!(doc["channels"]["users.created"]["address"], "users.created");
/// assert_eq!(doc["operations"]["accounts.send.UserCreated"]["action"], "send");
/// # Ok::<(), switchyard_contracts::RegistryError>(())
/// ```
pub fn export(registry: &Registry, info: &Info) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for ty in registry.types() {
        let msg_key = key(&ty.name);
        let chan_key = key(&ty.topic);
        messages.insert(msg_key.clone(), message(ty, &mut schemas));
        let chan = channels
            .entry(chan_key.clone())
            .or_insert_with(|| json!({"address": ty.topic, "messages": {}}));
        if let Some(Value::Object(m)) = chan.get_mut("messages") {
            m.insert(
                msg_key.clone(),
                json!({"$ref": format!("#/components/messages/{msg_key}")}),
            );
        }
        for (action, who) in [("send", &ty.producers), ("receive", &ty.consumers)] {
            for component in who {
                operations.insert(
                    format!("{}.{action}.{msg_key}", key(component)),
                    json!({
                        "action": action,
                        "channel": {"$ref": format!("#/channels/{chan_key}")},
                        "messages": [{"$ref": format!("#/channels/{chan_key}/messages/{msg_key}")}],
                        "summary": format!("{component} {action}s {}", ty.name),
                    }),
                );
            }
        }
    }
    let mut doc = json!({
        "asyncapi": "3.0.0",
        "info": {"title": info.title, "version": info.version},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    });
    if let (Some((host, protocol)), Value::Object(m)) = (&info.server, &mut doc) {
        m.insert(
            "servers".to_owned(),
            json!({"switchyard": {"host": host, "protocol": protocol}}),
        );
    }
    doc
}
