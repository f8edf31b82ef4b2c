//! Python code for the registered message types: one `@dataclass` per message (with `TOPIC`,
//! `VERSION` and `KIND` class constants the `switchyard` Python package reads), nested objects
//! as dataclasses, unit enums as `str` enums, data enums as `Union`s of their variants,
//! `Optional` fields defaulting to `None`, lists, maps and tuples. What `switchyard schema
//! export --lang python` writes, so a Python component imports the message types instead of
//! copying the structs by hand.
//!
//! The source is the AsyncAPI document ([`crate::asyncapi::export`]), where every nested type
//! is hoisted under `components.schemas`: [`from_registry`] exports the registry first,
//! [`from_asyncapi`] takes a document (a node's `/v1/asyncapi.json`, a committed file). The
//! output is deterministic: messages and types in name order, required fields in declaration
//! order, then optional ones by name (dataclass fields with defaults must come last).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use switchyard_contracts::{python, Contract, JsonSchema, Registry};
//! use switchyard_core::Message;
//!
//! #[derive(Clone, Serialize, Deserialize, JsonSchema)]
//! struct UserCreated { id: u64, email: Option<String> }
//! impl Message for UserCreated { const TOPIC: &'static str = "users.created"; const VERSION: u32 = 2; }
//! impl Contract for UserCreated {}
//!
//! let mut reg = Registry::new();
//! reg.register::<UserCreated>()?;
//! let py = python::from_registry(&reg)?;
//! assert!(py.contains("class UserCreated:"));
//! assert!(py.contains(r#"TOPIC: ClassVar[str] = "users.created""#));
//! assert!(py.contains("VERSION: ClassVar[int] = 2"));
//! assert!(py.contains("    id: int\n"));
//! assert!(py.contains("    email: Optional[str] = None\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::asyncapi;
use crate::registry::Registry;

/// Python code could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodegenError {
    /// The input is not an AsyncAPI document of message types.
    #[error("not an AsyncAPI document with components.messages: {0}")]
    NotAsyncApi(String),
    /// A JSON property cannot be a dataclass field: the `switchyard` codec names fields as
    /// the JSON keys, so a key that is not a Python identifier (or is a keyword) would be lost.
    #[error(
        "`{owner}`: property `{property}` is not a usable Python field name (not an identifier, a keyword, or one of TOPIC / VERSION / KIND)"
    )]
    FieldName {
        /// The type that has the property.
        owner: String,
        /// The property.
        property: String,
    },
    /// A `$ref` points nowhere in the document.
    #[error("unresolvable reference `{0}`")]
    Ref(String),
    /// A message is on no channel, so its topic is unknown.
    #[error("message `{0}` is on no channel (its topic is unknown)")]
    NoTopic(String),
}

/// The Python module for every type in `registry` (through its AsyncAPI export).
pub fn from_registry(registry: &Registry) -> Result<String, CodegenError> {
    from_asyncapi(&asyncapi::export(registry, &asyncapi::Info::default()))
}

/// The Python module for every message of an AsyncAPI document as [`asyncapi::export`] writes
/// it (payload schemas with `$ref`s into `components.schemas`; kind and version from the
/// `x-switchyard-kind` / `x-switchyard-version` extensions, defaults `event` and 1; the topic
/// from the channel that lists the message).
pub fn from_asyncapi(doc: &Value) -> Result<String, CodegenError> {
    let messages = doc
        .pointer("/components/messages")
        .and_then(Value::as_object)
        .ok_or_else(|| CodegenError::NotAsyncApi("no components.messages object".to_owned()))?;
    let mut topics: BTreeMap<String, String> = BTreeMap::new();
    if let Some(channels) = doc.get("channels").and_then(Value::as_object) {
        for (_, chan) in sorted(channels) {
            let Some(address) = chan.get("address").and_then(Value::as_str) else {
                continue;
            };
            for (_, m) in chan
                .get("messages")
                .and_then(Value::as_object)
                .map(sorted)
                .unwrap_or_default()
            {
                if let Some(key) = m
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("#/components/messages/"))
                {
                    topics
                        .entry(key.to_owned())
                        .or_insert_with(|| address.to_owned());
                }
            }
        }
    }
    let mut g = Gen {
        doc,
        out: String::new(),
        names: BTreeMap::new(),
        done: BTreeSet::new(),
        exported: Vec::new(),
        messages: BTreeMap::new(),
        by_name: BTreeMap::new(),
    };
    // Message class names first, so a nested type named like a message is the message class.
    for (key, msg) in sorted(messages) {
        let name = msg.get("name").and_then(Value::as_str).unwrap_or(key);
        let id = format!("#/components/messages/{key}");
        let class = g.claim(&id, name);
        let topic = topics
            .get(key)
            .cloned()
            .ok_or_else(|| CodegenError::NoTopic(name.to_owned()))?;
        let mut payload = msg.get("payload").cloned().unwrap_or(Value::Bool(true));
        // A payload that is only a reference: the message class is the referenced type.
        if let Some(r) = payload
            .get("$ref")
            .and_then(Value::as_str)
            .map(str::to_owned)
        {
            payload = r
                .strip_prefix('#')
                .and_then(|p| doc.pointer(p))
                .cloned()
                .ok_or(CodegenError::Ref(r))?;
        }
        let info = MessageInfo {
            topic,
            version: msg
                .get("x-switchyard-version")
                .and_then(Value::as_u64)
                .unwrap_or(1),
            kind: match msg.get("x-switchyard-kind").and_then(Value::as_str) {
                Some("command" | "request") => "command",
                _ => "event",
            },
        };
        g.by_name.insert(class.clone(), id.clone());
        g.messages.insert(id, (payload, info));
    }
    let ids: Vec<String> = g.messages.keys().cloned().collect();
    for id in ids {
        g.message(&id)?;
    }
    Ok(g.finish(doc))
}

/// What a message class carries besides its fields.
struct MessageInfo {
    topic: String,
    version: u64,
    kind: &'static str,
}

struct Gen<'a> {
    doc: &'a Value,
    /// The classes and aliases, in definition order (dependencies first).
    out: String,
    /// Python name per definition id (`$ref` or inline path).
    names: BTreeMap<String, String>,
    /// Definition ids already written (or being written: a cycle).
    done: BTreeSet<String>,
    exported: Vec<String>,
    /// Message definitions by id: payload schema and class constants.
    messages: BTreeMap<String, (Value, MessageInfo)>,
    /// Message definition id by class name.
    by_name: BTreeMap<String, String>,
}

fn sorted(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

const KEYWORDS: [&str; 38] = [
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield", "match", "case", "type",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        // `match`, `case` and `type` are soft keywords: fine as field names.
        && !KEYWORDS[..35].contains(&s)
}

/// `"in_progress"` / `"in-progress"` / `"inProgress"` → `InProgress`.
fn camel(s: &str) -> String {
    let mut out = String::new();
    let mut up = true;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            if up {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            up = false;
        } else {
            up = true;
        }
    }
    out
}

/// A class name from a type name (`Completion<Value>` → `Completion_Value_`).
fn class_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.is_empty()
        || out.starts_with(|c: char| c.is_ascii_digit())
        || KEYWORDS.contains(&out.as_str())
    {
        out.insert(0, '_');
    }
    out
}

/// `"InProgress"` / `"in-progress"` → `IN_PROGRESS` (an enum member name).
fn member_name(s: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower {
                out.push('_');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_uppercase());
        } else {
            if !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'V');
        out.insert(1, '_');
    }
    out
}

/// A Python string literal.
fn py_str(s: &str) -> String {
    // JSON string escapes are valid Python string escapes.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// A Python literal for a JSON scalar, or `None` for anything else.
fn py_literal(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("None".to_owned()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(py_str(s)),
        _ => None,
    }
}

fn description(schema: &Value) -> Option<&str> {
    schema
        .get("description")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|d| !d.is_empty())
}

fn docstring(out: &mut String, indent: &str, text: &str) {
    let text = text.replace('\\', "\\\\").replace("\"\"\"", "\\\"\\\"\\\"");
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let rest: Vec<&str> = lines.collect();
    if rest.is_empty() {
        let _ = writeln!(out, "{indent}\"\"\"{first}\"\"\"");
    } else {
        let _ = writeln!(out, "{indent}\"\"\"{first}");
        for l in rest {
            if l.trim().is_empty() {
                out.push('\n');
            } else {
                let _ = writeln!(out, "{indent}{l}");
            }
        }
        let _ = writeln!(out, "{indent}\"\"\"");
    }
}

fn comment(out: &mut String, indent: &str, text: &str) {
    for l in text.lines() {
        let l = l.trim_end();
        if l.is_empty() {
            let _ = writeln!(out, "{indent}#:");
        } else {
            let _ = writeln!(out, "{indent}#: {l}");
        }
    }
}

fn is_null(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
        || schema.get("const").is_some_and(Value::is_null)
}

/// Whether a schema allows `null` at its top level.
fn nullable(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) if t == "null" => return true,
        Some(Value::Array(ts)) if ts.iter().any(|t| t == "null") => return true,
        _ => {}
    }
    ["anyOf", "oneOf"].iter().any(|k| {
        schema
            .get(*k)
            .and_then(Value::as_array)
            .is_some_and(|vs| vs.iter().any(is_null))
    })
}

impl Gen<'_> {
    /// Reserves a Python name for definition `id` (`base`, or `base_2`... when taken).
    fn claim(&mut self, id: &str, base: &str) -> String {
        if let Some(n) = self.names.get(id) {
            return n.clone();
        }
        let base = class_name(base);
        let taken: BTreeSet<&String> = self.names.values().collect();
        let mut name = base.clone();
        let mut i = 2;
        while taken.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(id.to_owned(), name.clone());
        name
    }

    /// The Python type of `schema`; `hint` names an inline object or enum that needs a class;
    /// `eager` when the expression is evaluated at import (an alias), so names not yet defined
    /// must be quoted.
    fn ty(&mut self, schema: &Value, hint: &str, eager: bool) -> Result<String, CodegenError> {
        let obj = match schema {
            Value::Bool(_) => return Ok("Any".to_owned()),
            Value::Object(o) => o,
            _ => return Ok("Any".to_owned()),
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            // Properties beside the `$ref` (an internally tagged newtype variant's tag) are
            // part of what is written: the target's fields and these, as one inline class.
            if obj.contains_key("properties")
                && let Some(merged) = self.merged(r, obj)?
            {
                return self.ty(&merged, hint, eager);
            }
            return self.reference(r, eager);
        }
        if let Some(c) = obj.get("const") {
            return Ok(py_literal(c).map_or_else(|| "Any".to_owned(), |l| format!("Literal[{l}]")));
        }
        if let Some(Value::Array(values)) = obj.get("enum") {
            let strings: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
            if strings.len() == values.len() && strings.len() > 1 {
                let id = format!("inline:{hint}");
                let name = self.claim(&id, hint);
                self.define(&id, &name, schema)?;
                return Ok(self.quoted(&name, &id, eager));
            }
            let lits: Vec<String> = values.iter().filter_map(py_literal).collect();
            return Ok(format!("Literal[{}]", lits.join(", ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(variants)) = obj.get(key) {
                return self.union(variants, hint, eager);
            }
        }
        if let Some(Value::Array(all)) = obj.get("allOf")
            && all.len() == 1
        {
            return self.ty(&all[0], hint, eager);
        }
        match obj.get("type") {
            Some(Value::Array(types)) => {
                let mut parts = Vec::new();
                let mut null = false;
                for t in types {
                    if t == "null" {
                        null = true;
                        continue;
                    }
                    let mut one = obj.clone();
                    one.insert("type".to_owned(), t.clone());
                    parts.push(self.ty(&Value::Object(one), hint, eager)?);
                }
                let inner = match parts.len() {
                    0 => "None".to_owned(),
                    1 => parts.remove(0),
                    _ => format!("Union[{}]", parts.join(", ")),
                };
                Ok(if null && inner != "None" {
                    format!("Optional[{inner}]")
                } else {
                    inner
                })
            }
            Some(Value::String(t)) => self.simple(t, obj, schema, hint, eager),
            _ if obj.contains_key("properties") => self.simple("object", obj, schema, hint, eager),
            _ => Ok("Any".to_owned()),
        }
    }

    fn simple(
        &mut self,
        t: &str,
        obj: &Map<String, Value>,
        schema: &Value,
        hint: &str,
        eager: bool,
    ) -> Result<String, CodegenError> {
        Ok(match t {
            "string" => "str".to_owned(),
            "integer" => "int".to_owned(),
            "number" => "float".to_owned(),
            "boolean" => "bool".to_owned(),
            "null" => "None".to_owned(),
            "array" => {
                if let Some(Value::Array(items)) = obj.get("prefixItems") {
                    let parts = items
                        .iter()
                        .enumerate()
                        .map(|(i, s)| self.ty(s, &format!("{hint}{}", i + 1), eager))
                        .collect::<Result<Vec<_>, _>>()?;
                    format!("tuple[{}]", parts.join(", "))
                } else {
                    match obj.get("items") {
                        Some(items) => {
                            format!("list[{}]", self.ty(items, &format!("{hint}Item"), eager)?)
                        }
                        None => "list[Any]".to_owned(),
                    }
                }
            }
            "object" => {
                let has_props = obj
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|p| !p.is_empty());
                if has_props {
                    let id = format!("inline:{hint}");
                    let name = self.claim(&id, hint);
                    self.define(&id, &name, schema)?;
                    self.quoted(&name, &id, eager)
                } else {
                    match obj.get("additionalProperties") {
                        Some(v @ Value::Object(_)) => {
                            format!("dict[str, {}]", self.ty(v, &format!("{hint}Value"), eager)?)
                        }
                        _ => "dict[str, Any]".to_owned(),
                    }
                }
            }
            _ => "Any".to_owned(),
        })
    }

    fn quoted(&self, name: &str, id: &str, eager: bool) -> String {
        // A definition still being written (a cycle) is not there yet when an alias is built.
        if eager && !self.out_has(id) {
            py_str(name)
        } else {
            name.to_owned()
        }
    }

    fn out_has(&self, id: &str) -> bool {
        self.exported
            .iter()
            .any(|n| self.names.get(id).is_some_and(|m| m == n))
    }

    /// The object `$ref` `r` points at with the `properties` and `required` written beside
    /// the `$ref` in `obj` added (`{"$ref": Money, "properties": {"type": {"const": "fee"}}}`
    /// is Money's fields and the tag); `None` when the target is not an object with fields.
    fn merged(&self, r: &str, obj: &Map<String, Value>) -> Result<Option<Value>, CodegenError> {
        let target = r
            .strip_prefix('#')
            .and_then(|p| self.doc.pointer(p))
            .ok_or_else(|| CodegenError::Ref(r.to_owned()))?;
        let Some(t) = target.as_object() else {
            return Ok(None);
        };
        let (Some(tp), Some(op)) = (
            t.get("properties").and_then(Value::as_object),
            obj.get("properties").and_then(Value::as_object),
        ) else {
            return Ok(None);
        };
        if t.get("type").is_some_and(|ty| ty != "object") {
            return Ok(None);
        }
        let mut merged = t.clone();
        merged.remove("title");
        let mut props = tp.clone();
        props.extend(op.iter().map(|(k, v)| (k.clone(), v.clone())));
        merged.insert("properties".to_owned(), Value::Object(props));
        let mut required: Vec<Value> = Vec::new();
        for side in [t.get("required"), obj.get("required")] {
            for name in side.and_then(Value::as_array).into_iter().flatten() {
                if !required.contains(name) {
                    required.push(name.clone());
                }
            }
        }
        merged.insert("required".to_owned(), Value::Array(required));
        merged.insert("type".to_owned(), Value::from("object"));
        Ok(Some(Value::Object(merged)))
    }

    fn reference(&mut self, r: &str, eager: bool) -> Result<String, CodegenError> {
        let target = r
            .strip_prefix('#')
            .and_then(|p| self.doc.pointer(p))
            .ok_or_else(|| CodegenError::Ref(r.to_owned()))?;
        let base = r.rsplit('/').next().unwrap_or(r);
        // A nested type that is also a registered message: the message class.
        if r.starts_with("#/components/schemas/")
            && let Some(id) = self.by_name.get(&class_name(base)).cloned()
        {
            let name = self.message(&id)?;
            return Ok(self.quoted(&name, &id, eager));
        }
        let name = self.claim(r, base);
        self.define(r, &name, target)?;
        Ok(self.quoted(&name, r, eager))
    }

    /// Writes message `id` (once) and returns its class name.
    fn message(&mut self, id: &str) -> Result<String, CodegenError> {
        let name = self.names.get(id).cloned().unwrap_or_default();
        let payload = self
            .messages
            .get(id)
            .map(|(p, _)| p.clone())
            .unwrap_or(Value::Bool(true));
        self.define(id, &name, &payload)?;
        Ok(name)
    }

    /// `anyOf` / `oneOf`: `Optional[..]` around the non-null variants, a `Union` of several.
    fn union(
        &mut self,
        variants: &[Value],
        hint: &str,
        eager: bool,
    ) -> Result<String, CodegenError> {
        let null = variants.iter().any(is_null);
        let rest: Vec<&Value> = variants.iter().filter(|v| !is_null(v)).collect();
        let mut parts: Vec<String> = Vec::new();
        for (i, v) in rest.iter().enumerate() {
            let name = if rest.len() == 1 {
                hint.to_owned()
            } else {
                format!(
                    "{hint}{}",
                    variant_name(v).unwrap_or_else(|| (i + 1).to_string())
                )
            };
            // A group of unit variants (`{"type": "string", "enum": [..]}`) is a Literal.
            let t = match v.get("enum").and_then(Value::as_array) {
                Some(vals) if vals.iter().all(|x| py_literal(x).is_some()) => format!(
                    "Literal[{}]",
                    vals.iter()
                        .filter_map(py_literal)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => self.ty(v, &name, eager)?,
            };
            if !parts.contains(&t) {
                parts.push(t);
            }
        }
        // Several string constants (unit variants of a data enum) read best as one Literal.
        let (lits, mut others): (Vec<String>, Vec<String>) =
            parts.into_iter().partition(|p| p.starts_with("Literal["));
        if !lits.is_empty() {
            let inner: Vec<&str> = lits
                .iter()
                .map(|l| &l["Literal[".len()..l.len() - 1])
                .collect();
            others.insert(0, format!("Literal[{}]", inner.join(", ")));
        }
        let inner = match others.len() {
            0 => "None".to_owned(),
            1 => others.remove(0),
            _ => format!("Union[{}]", others.join(", ")),
        };
        Ok(if null && inner != "None" {
            format!("Optional[{inner}]")
        } else {
            inner
        })
    }

    /// Writes definition `id` as class or alias `name` (once; dependencies first).
    fn define(&mut self, id: &str, name: &str, schema: &Value) -> Result<(), CodegenError> {
        if !self.done.insert(id.to_owned()) {
            return Ok(());
        }
        let message = self.messages.get(id).map(|(_, m)| MessageInfo {
            topic: m.topic.clone(),
            version: m.version,
            kind: m.kind,
        });
        let message = message.as_ref();
        let obj = schema.as_object();
        let props = obj
            .and_then(|o| o.get("properties"))
            .and_then(Value::as_object);
        let is_object =
            obj.is_some_and(|o| o.get("type").is_none_or(|t| t == "object") && props.is_some());
        let string_enum = obj
            .and_then(|o| o.get("enum"))
            .and_then(Value::as_array)
            .filter(|vs| vs.len() > 1 && vs.iter().all(Value::is_string));
        let mut block = String::new();
        if let Some(values) = string_enum {
            let _ = writeln!(block, "class {name}(str, enum.Enum):");
            if let Some(d) = description(schema) {
                docstring(&mut block, "    ", d);
                block.push('\n');
            }
            let mut used = BTreeSet::new();
            for v in values.iter().filter_map(Value::as_str) {
                let mut m = member_name(v);
                while !used.insert(m.clone()) {
                    m.push('_');
                }
                let _ = writeln!(block, "    {m} = {}", py_str(v));
            }
        } else if is_object {
            let fields = self.fields(name, schema, props)?;
            let _ = writeln!(block, "@dataclass\nclass {name}:");
            let mut body = String::new();
            if let Some(d) = description(schema) {
                docstring(&mut body, "    ", d);
                body.push('\n');
            }
            if let Some(m) = message {
                let _ = writeln!(body, "    TOPIC: ClassVar[str] = {}", py_str(&m.topic));
                let _ = writeln!(body, "    VERSION: ClassVar[int] = {}", m.version);
                let _ = writeln!(body, "    KIND: ClassVar[str] = {}", py_str(m.kind));
                if !fields.is_empty() {
                    body.push('\n');
                }
            }
            body.push_str(&fields);
            if body.is_empty() {
                body.push_str("    pass\n");
            }
            block.push_str(&body);
        } else {
            // Not an object: a type alias (messages too: no class to carry the constants).
            let t = self.ty_of_alias(schema, name)?;
            if let Some(d) = description(schema) {
                comment(&mut block, "", d);
            }
            if let Some(m) = message {
                let _ = writeln!(
                    block,
                    "# Published on {} (version {}, {}); not an object, so no class constants.",
                    py_str(&m.topic),
                    m.version,
                    m.kind
                );
            }
            let _ = writeln!(block, "{name} = {t}");
        }
        if !self.out.is_empty() {
            self.out.push_str("\n\n");
        }
        self.out.push_str(&block);
        self.exported.push(name.to_owned());
        Ok(())
    }

    /// The alias of a non-object definition: its type with the name itself not reused as hint
    /// of a class (that would be the alias).
    fn ty_of_alias(&mut self, schema: &Value, name: &str) -> Result<String, CodegenError> {
        self.ty(schema, name, true)
    }

    /// The field lines of a dataclass: required fields in `required` order, then the others
    /// by name, with their defaults.
    fn fields(
        &mut self,
        owner: &str,
        schema: &Value,
        props: Option<&Map<String, Value>>,
    ) -> Result<String, CodegenError> {
        let Some(props) = props else {
            return Ok(String::new());
        };
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut order: Vec<(&str, &Value, bool)> = Vec::new();
        for r in &required {
            if let Some(p) = props.get(*r)
                && p.get("const").is_none()
            {
                order.push((r, p, true));
            }
        }
        for (k, p) in sorted(props) {
            if !order.iter().any(|(n, _, _)| n == k) {
                order.push((k, p, false));
            }
        }
        let mut out = String::new();
        for (prop, p, required) in order {
            if !is_identifier(prop) || matches!(prop, "TOPIC" | "VERSION" | "KIND") {
                return Err(CodegenError::FieldName {
                    owner: owner.to_owned(),
                    property: prop.to_owned(),
                });
            }
            // An externally tagged variant `{"Card": {..}}` in class `PaymentCard`: the inner
            // object is `PaymentCardData`, not `PaymentCardCard`.
            let suffix = camel(prop);
            let hint = if owner.ends_with(&suffix) {
                format!("{owner}Data")
            } else {
                format!("{owner}{suffix}")
            };
            let t = self.ty(p, &hint, false)?;
            if let Some(d) = description(p) {
                comment(&mut out, "    ", d);
            }
            let default = if required {
                None
            } else if let Some(c) = p.get("const").and_then(py_literal) {
                Some(c)
            } else {
                match p.get("default") {
                    Some(Value::Array(a)) if a.is_empty() => {
                        Some("field(default_factory=list)".to_owned())
                    }
                    Some(Value::Object(o)) if o.is_empty() => {
                        Some("field(default_factory=dict)".to_owned())
                    }
                    Some(v) => py_literal(v),
                    None => None,
                }
            };
            let (t, default) = match default {
                Some(d) => (t, Some(d)),
                None if required => (t, None),
                // Absent from the JSON: None, so the type must admit it.
                None if nullable(p) || t.starts_with("Optional[") || t == "Any" => {
                    (t, Some("None".to_owned()))
                }
                None => (format!("Optional[{t}]"), Some("None".to_owned())),
            };
            match default {
                Some(d) => {
                    let _ = writeln!(out, "    {prop}: {t} = {d}");
                }
                None => {
                    let _ = writeln!(out, "    {prop}: {t}");
                }
            }
        }
        Ok(out)
    }

    fn finish(self, doc: &Value) -> String {
        let title = doc
            .pointer("/info/title")
            .and_then(Value::as_str)
            .unwrap_or("switchyard");
        let mut s = String::new();
        s.push_str(
            "# Generated by switchyard from the message registry (`switchyard schema export --lang python`).\n\
             # Do not edit: regenerate it. Needs Python >= 3.10.\n\
             # flake8: noqa\n",
        );
        docstring(
            &mut s,
            "",
            &format!(
                "Message types of {title}, as dataclasses.\n\n\
                 Each message class has the ``TOPIC``, ``VERSION`` and ``KIND`` constants the\n\
                 ``switchyard`` package reads: ``await bus.publish(Msg(...))`` publishes it on its topic,\n\
                 ``@bus.on(Msg)`` receives it decoded."
            ),
        );
        s.push_str(
            "\nfrom __future__ import annotations\n\n\
             import enum\n\
             from dataclasses import dataclass, field\n\
             from typing import Any, ClassVar, Literal, Optional, Union\n\n",
        );
        let mut all = self.exported.clone();
        all.sort();
        let _ = writeln!(s, "__all__ = [");
        for n in all.iter().chain(std::iter::once(&"MESSAGES".to_owned())) {
            let _ = writeln!(s, "    {},", py_str(n));
        }
        s.push_str("]\n\n\n");
        s.push_str(&self.out);
        s.push_str("\n\n#: Every message class, by type name.\nMESSAGES: dict[str, type] = {\n");
        let mut msgs: Vec<&String> = self.by_name.keys().collect();
        msgs.sort();
        for m in msgs {
            let _ = writeln!(s, "    {}: {m},", py_str(m));
        }
        s.push_str("}\n");
        s
    }
}

/// The name of a data enum's variant: its `title`, the value of its tag property (internally
/// or adjacently tagged), or its one required property (externally tagged).
fn variant_name(v: &Value) -> Option<String> {
    if let Some(t) = v.get("title").and_then(Value::as_str) {
        return Some(camel(t));
    }
    if let Some(c) = v.get("const").and_then(Value::as_str) {
        return Some(camel(c));
    }
    let props = v.get("properties").and_then(Value::as_object)?;
    for (_, p) in sorted(props) {
        if let Some(c) = p.get("const").and_then(Value::as_str) {
            return Some(camel(c));
        }
    }
    let required = v.get("required").and_then(Value::as_array)?;
    if let [only] = required.as_slice()
        && props.len() == 1
    {
        return only.as_str().map(camel);
    }
    None
}
