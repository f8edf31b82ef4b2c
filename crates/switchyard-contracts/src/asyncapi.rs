//! The registry as an AsyncAPI 3.0 document: one channel per message topic, the message
//! types with their schemas under `components`, and a `send` / `receive` operation per
//! producer / consumer.

use std::collections::{HashMap, HashSet};

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

/// The keys handed out in one map of the document (channels, messages, operations or
/// schemas). Each distinct thing gets one key and no two share one: a name is reduced to
/// [`key`]'s characters, so two names (`orders/eu` and `orders_eu`, or a component
/// `billing svc` beside `billing_svc`) can reduce to the same text, and without this the
/// second would silently replace the first. A later one gets `_2`, `_3`, ... appended.
#[derive(Default)]
struct Keys {
    /// What each thing got, by what identifies it.
    given: HashMap<String, String>,
    taken: HashSet<String>,
}

impl Keys {
    /// The key of the thing identified by `id`, `base` (already reduced by [`key`]) or
    /// `base` with the first free suffix.
    fn of(&mut self, id: &str, base: String) -> String {
        if let Some(k) = self.given.get(id) {
            return k.clone();
        }
        let mut k = base.clone();
        let mut n = 2;
        while self.taken.contains(&k) {
            k = format!("{base}_{n}");
            n += 1;
        }
        self.taken.insert(k.clone());
        self.given.insert(id.to_owned(), k.clone());
        k
    }
}

/// Moves `$defs` / `definitions` of a message schema into `components.schemas` and points
/// the `$ref`s there (AsyncAPI resolves references against the whole document). Two message
/// types often share a definition (the same `Address`): it is kept once. Two different
/// definitions of one name (each type's own `Address`) each get a key of their own, and each
/// message's references point at its own.
fn hoist(schema: &Value, schemas: &mut Map<String, Value>, keys: &mut Keys) -> Value {
    let mut schema = schema.clone();
    let Value::Object(m) = &mut schema else {
        return schema;
    };
    m.remove("$schema");
    let mut defs = Vec::new();
    for section in ["$defs", "definitions"] {
        if let Some(Value::Object(d)) = m.remove(section) {
            defs.extend(d);
        }
    }
    // A definition is identified by its name and text as the type declared it, with those
    // of every definition it refers to (directly or not): two `Address`es of the same text
    // whose `Country`s differ are two definitions.
    let texts: HashMap<&str, &Value> = defs.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let renamed: HashMap<String, String> = defs
        .iter()
        .map(|(name, _)| {
            let id = reachable(name, &texts)
                .into_iter()
                .map(|n| format!("{n}\0{}\0", texts[n]))
                .collect::<String>();
            (name.clone(), keys.of(&id, key(name)))
        })
        .collect();
    for (name, mut s) in defs {
        rewrite_refs(&mut s, &renamed);
        if let Some(k) = renamed.get(&name) {
            schemas.entry(k.clone()).or_insert(s);
        }
    }
    rewrite_refs(&mut schema, &renamed);
    schema
}

/// `name` and the names of the definitions in `texts` it refers to, directly or through
/// others: `name` first, the rest sorted.
fn reachable<'a>(name: &'a str, texts: &HashMap<&'a str, &'a Value>) -> Vec<&'a str> {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![name];
    while let Some(n) = todo.pop() {
        let Some((&n, def)) = texts.get_key_value(n) else {
            continue;
        };
        if n != name && !seen.insert(n) {
            continue;
        }
        local_refs(def, &mut |r| {
            if r != name && !seen.contains(r) {
                todo.push(r);
            }
        });
    }
    std::iter::once(name).chain(seen).collect()
}

/// Calls `found` with the name of every local `$ref` (`#/$defs/<name>`,
/// `#/definitions/<name>`) in `v`.
fn local_refs<'v>(v: &'v Value, found: &mut impl FnMut(&'v str)) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref")
                && let Some(name) = r
                    .strip_prefix("#/$defs/")
                    .or_else(|| r.strip_prefix("#/definitions/"))
            {
                found(name);
            }
            m.values().for_each(|v| local_refs(v, found));
        }
        Value::Array(a) => a.iter().for_each(|v| local_refs(v, found)),
        _ => {}
    }
}

/// Points local `$ref`s (`#/$defs/<name>`, `#/definitions/<name>`) at the keys the
/// definitions got under `components.schemas`.
fn rewrite_refs(v: &mut Value, renamed: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                for prefix in ["#/$defs/", "#/definitions/"] {
                    if let Some(name) = r.strip_prefix(prefix) {
                        let k = renamed.get(name).cloned().unwrap_or_else(|| key(name));
                        *r = format!("#/components/schemas/{k}");
                        break;
                    }
                }
            }
            m.values_mut().for_each(|v| rewrite_refs(v, renamed));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rewrite_refs(v, renamed)),
        _ => {}
    }
}

fn message(ty: &MessageType, schemas: &mut Map<String, Value>, keys: &mut Keys) -> Value {
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
        "payload": hoist(&ty.schema, schemas, keys),
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
    // Keys per map of the document, so no two topics, types, operations or definitions
    // share one (see `Keys`).
    let mut chan_keys = Keys::default();
    let mut msg_keys = Keys::default();
    let mut op_keys = Keys::default();
    let mut schema_keys = Keys::default();
    for ty in registry.types() {
        let msg_key = msg_keys.of(&ty.name, key(&ty.name));
        let chan_key = chan_keys.of(&ty.topic, key(&ty.topic));
        messages.insert(msg_key.clone(), message(ty, &mut schemas, &mut schema_keys));
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
                let op_key = op_keys.of(
                    &format!("{component}\0{action}\0{}", ty.name),
                    format!("{}.{action}.{msg_key}", key(component)),
                );
                operations.insert(
                    op_key,
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
