//! Compatibility between two versions of a JSON Schema, in the sense schema registries use:
//!
//! - **backward**: a consumer on the NEW schema reads data written with the OLD one;
//! - **forward**: a consumer on the OLD schema reads data written with the NEW one;
//! - **full**: both.
//!
//! Both come down to one question, "can a reader of schema R read what a writer of schema W
//! writes?", answered structurally: every field R requires must always be written by W (a
//! field with a default, or an `Option`, is not required); every type W may write must be one
//! R accepts (`integer` widens to `number`); every enum value or variant W may write must be
//! one R knows; a closed object in R (`additionalProperties: false`) must not receive fields it
//! does not list, and a map's values (an `additionalProperties` schema) must be read by R's
//! value schema; list items are read by R's item schema, tuple elements position by position,
//! and W's lists and tuples must have a length R accepts (`minItems` / `maxItems`); R's
//! numeric range (`minimum` / `maximum`) and string length (`minLength` / `maxLength`) must
//! contain W's. Unknown extra fields are otherwise ignored, as serde does.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

/// Which direction(s) to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// New readers read old data.
    Backward,
    /// Old readers read new data.
    Forward,
    /// Both.
    Full,
}

/// The text is not `backward`, `forward` or `full`.
#[derive(Debug, thiserror::Error)]
#[error("unknown compatibility mode `{0}` (expected backward, forward or full)")]
pub struct ParseModeError(pub String);

impl FromStr for Mode {
    type Err = ParseModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "backward" => Ok(Self::Backward),
            "forward" => Ok(Self::Forward),
            "full" => Ok(Self::Full),
            _ => Err(ParseModeError(s.to_owned())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Backward => "backward",
            Self::Forward => "forward",
            Self::Full => "full",
        })
    }
}

/// What breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// The reader requires a field the writer does not always write (a new field with no
    /// default, read backward; a required field removed, read forward).
    MissingRequiredField,
    /// The writer may write a type the reader does not accept.
    TypeChanged,
    /// The writer may write an enum value or variant the reader does not know (a variant
    /// removed, read backward; a variant added, read forward).
    UnknownEnumValue,
    /// The writer writes a field the reader's closed object forbids.
    ForbiddenField,
}

/// One incompatibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// The direction that breaks: `backward` (new reads old) or `forward` (old reads new).
    pub direction: Mode,
    /// Where, as a JSON-pointer-like path into the payload (`/customer/address/zip`; `*`
    /// for array items and map values, the index for tuple elements).
    pub path: String,
    /// What kind of break.
    pub kind: IssueKind,
    /// A sentence for humans.
    pub detail: String,
}

/// The verdict of [`check_compatibility`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compatibility {
    /// The mode checked.
    pub mode: Mode,
    /// Every break found; empty when compatible.
    pub issues: Vec<Issue>,
}

impl Compatibility {
    /// True when nothing breaks.
    pub fn is_compatible(&self) -> bool {
        self.issues.is_empty()
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_compatible() {
            return writeln!(f, "compatible ({})", self.mode);
        }
        let n = self.issues.len();
        writeln!(
            f,
            "INCOMPATIBLE ({}): {n} problem{}",
            self.mode,
            if n == 1 { "" } else { "s" }
        )?;
        for i in &self.issues {
            let path = if i.path.is_empty() { "/" } else { &i.path };
            writeln!(f, "  [{}] {path}: {}", i.direction, i.detail)?;
        }
        Ok(())
    }
}

/// Checks whether `new` is compatible with `old` under `mode`.
///
/// ```
/// use serde_json::json;
/// use switchyard_contracts::{check_compatibility, IssueKind, Mode};
///
/// let old = json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]});
/// let new = json!({"type": "object",
///     "properties": {"id": {"type": "integer"}, "email": {"type": "string"}},
///     "required": ["id", "email"]});
/// let verdict = check_compatibility(&old, &new, Mode::Backward);
/// assert!(!verdict.is_compatible());
/// assert_eq!(verdict.issues[0].kind, IssueKind::MissingRequiredField);
/// assert!(check_compatibility(&old, &new, Mode::Forward).is_compatible());
/// ```
pub fn check_compatibility(old: &Value, new: &Value, mode: Mode) -> Compatibility {
    let mut issues = Vec::new();
    if matches!(mode, Mode::Backward | Mode::Full) {
        let mut c = Checker {
            reader_root: new,
            writer_root: old,
            reader: "new",
            writer: "old",
            direction: Mode::Backward,
            out: &mut issues,
            active: Vec::new(),
        };
        c.reads(new, old, "", 0);
    }
    if matches!(mode, Mode::Forward | Mode::Full) {
        let mut c = Checker {
            reader_root: old,
            writer_root: new,
            reader: "old",
            writer: "new",
            direction: Mode::Forward,
            out: &mut issues,
            active: Vec::new(),
        };
        c.reads(old, new, "", 0);
    }
    Compatibility { mode, issues }
}

/// Deeper than this, schemas are assumed compatible (a backstop: recursive `$ref`s are cut
/// where they loop, see `Checker::active`).
const MAX_DEPTH: usize = 64;

struct Checker<'a> {
    reader_root: &'a Value,
    writer_root: &'a Value,
    reader: &'static str,
    writer: &'static str,
    direction: Mode,
    out: &'a mut Vec<Issue>,
    /// The (reader, writer) schema pairs being compared on the current path, by address: a
    /// pair met again inside itself is a recursive type looping (`Node { children: Vec<Node> }`)
    /// and adds nothing new, so it is not followed again.
    active: Vec<(usize, usize)>,
}

fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
    for _ in 0..32 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with('#') => match root.pointer(&r[1..]) {
                Some(t) => s = t,
                None => return s,
            },
            _ => return s,
        }
    }
    s
}

fn accepts_anything(s: &Value) -> bool {
    match s {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| {
            matches!(
                k.as_str(),
                "$schema"
                    | "title"
                    | "description"
                    | "default"
                    | "examples"
                    | "$defs"
                    | "definitions"
                    | "$id"
                    | "$comment"
            )
        }),
        _ => false,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The values a schema restricts itself to (`enum` or `const`).
fn values(s: &Value) -> Option<Vec<&Value>> {
    if let Some(c) = s.get("const") {
        return Some(vec![c]);
    }
    s.get("enum")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
}

fn types(s: &Value) -> Option<BTreeSet<String>> {
    match s.get("type") {
        Some(Value::String(t)) => Some([t.clone()].into()),
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => values(s).map(|vs| vs.into_iter().map(|v| json_type(v).to_owned()).collect()),
    }
}

fn variants(s: &Value) -> Option<&Vec<Value>> {
    s.get("oneOf")
        .or_else(|| s.get("anyOf"))
        .and_then(Value::as_array)
}

/// The schema of the entries a map writes under keys it does not list (`additionalProperties`
/// given as a schema, or `true`: any value). `None` when the schema lists its fields only:
/// absent `additionalProperties` is serde's open struct, which writes no other keys.
fn map_values(s: &Value) -> Option<&Value> {
    s.get("additionalProperties")
        .filter(|a| **a != Value::Bool(false))
}

/// The number of positional elements of a tuple schema (`prefixItems`, or draft-07 `items`
/// as an array); 0 for a list or a non-array.
fn tuple_len(s: &Value) -> usize {
    s.get("prefixItems")
        .or_else(|| s.get("items").filter(|i| i.is_array()))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// The schema of element `i` of an array: its positional schema, else the schema of the
/// elements after the positional ones (`items` in 2020-12, `additionalItems` in draft-07).
/// `None` when any value is accepted there (nothing to compare).
fn element(s: &Value, i: usize) -> Option<&Value> {
    if let Some(p) = s.get("prefixItems").and_then(Value::as_array) {
        return p.get(i).or_else(|| s.get("items"));
    }
    if let Some(p) = s.get("items").and_then(Value::as_array) {
        return p.get(i).or_else(|| s.get("additionalItems"));
    }
    s.get("items")
}

fn min_items(s: &Value) -> u64 {
    s.get("minItems").and_then(Value::as_u64).unwrap_or(0)
}

/// The most elements a tuple of `n` positional elements holds: `maxItems`, or `n` when no
/// element may follow them (`items: false` / `additionalItems: false`); `None` if unbounded.
fn max_items(s: &Value, n: usize) -> Option<u64> {
    let closed = element(s, n) == Some(&Value::Bool(false));
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    match (s.get("maxItems").and_then(Value::as_u64), closed) {
        (Some(m), true) => Some(m.min(n)),
        (Some(m), false) => Some(m),
        (None, true) => Some(n),
        (None, false) => None,
    }
}

fn props(s: &Value) -> Option<&serde_json::Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

fn required(s: &Value) -> BTreeSet<&str> {
    s.get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What identifies a variant of a oneOf/anyOf: its constant values, the single required
/// property of an externally tagged variant (a closed object of one field), or the constant
/// of an internally tagged one.
fn variant_keys(root: &Value, v: &Value) -> Vec<String> {
    // A newtype variant of an internally tagged enum is `{"$ref": <the inner type>,
    // "properties": {"type": {"const": "tip"}}}`: the tag sits beside the `$ref`, which
    // resolving drops, so it is looked for first.
    if v.get("$ref").is_some()
        && let Some(p) = props(v)
    {
        for (_, ps) in p {
            if let Some(c) = resolve(root, ps).get("const") {
                return vec![show(c)];
            }
        }
    }
    let v = resolve(root, v);
    if let Some(vs) = values(v) {
        return vs.into_iter().map(show).collect();
    }
    if let Some(p) = props(v) {
        for (_, ps) in p {
            if let Some(c) = resolve(root, ps).get("const") {
                return vec![show(c)];
            }
        }
        // An externally tagged variant is schemars' `{"properties": {"Card": ..},
        // "required": ["Card"], "additionalProperties": false}`; a one-field struct (an
        // `Option<Price { cents }>`'s alternative) is not closed, and is no variant.
        let req = required(v);
        let closed = v.get("additionalProperties") == Some(&Value::Bool(false));
        if closed && p.len() == 1 && req.len() == 1 {
            return req.into_iter().map(str::to_owned).collect();
        }
    }
    Vec::new()
}

impl Checker<'_> {
    fn issue(&mut self, path: &str, kind: IssueKind, detail: String) {
        self.out.push(Issue {
            direction: self.direction,
            path: path.to_owned(),
            kind,
            detail,
        });
    }

    /// Can a reader of `r` read what a writer of `w` writes?
    fn reads(&mut self, r: &Value, w: &Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let r = resolve(self.reader_root, r);
        let w = resolve(self.writer_root, w);
        if accepts_anything(r) || w == &Value::Bool(false) {
            return;
        }
        let pair = (
            std::ptr::from_ref(r) as usize,
            std::ptr::from_ref(w) as usize,
        );
        if self.active.contains(&pair) {
            return;
        }
        self.active.push(pair);
        self.reads_resolved(r, w, path, depth);
        self.active.pop();
    }

    /// [`Self::reads`] once `$ref`s are resolved and the pair is not a loop.
    fn reads_resolved(&mut self, r: &Value, w: &Value, path: &str, depth: usize) {
        if variants(r).is_some() || variants(w).is_some() {
            // A struct with a `#[serde(flatten)]` enum: its own fields sit beside the
            // `oneOf` of the variants, and are compared as any struct's.
            if props(r).is_some() || props(w).is_some() {
                self.reads_object(r, w, path, depth);
            }
            return self.reads_variants(r, w, path, depth);
        }
        if let Some(rv) = values(r) {
            match values(w) {
                Some(wv) => {
                    for v in wv {
                        if !rv.contains(&v) {
                            let (reader, writer) = (self.reader, self.writer);
                            self.issue(
                                path,
                                IssueKind::UnknownEnumValue,
                                format!("the {writer} schema may write `{}`, which the {reader} schema does not accept", show(v)),
                            );
                        }
                    }
                }
                None => {
                    let (reader, writer) = (self.reader, self.writer);
                    self.issue(
                        path,
                        IssueKind::UnknownEnumValue,
                        format!("the {reader} schema accepts only fixed values, the {writer} schema writes any"),
                    );
                }
            }
            return;
        }
        if let Some(rt) = types(r) {
            let wt = types(w);
            let bad: Vec<String> = match &wt {
                None => vec!["anything".to_owned()],
                Some(wt) => wt
                    .iter()
                    .filter(|t| {
                        !(rt.contains(*t) || (t.as_str() == "integer" && rt.contains("number")))
                    })
                    .cloned()
                    .collect(),
            };
            if !bad.is_empty() {
                let (reader, writer) = (self.reader, self.writer);
                let rt: Vec<_> = rt.into_iter().collect();
                self.issue(
                    path,
                    IssueKind::TypeChanged,
                    format!(
                        "type changed: the {writer} schema may write {}, the {reader} schema accepts {}",
                        bad.join(" or "),
                        rt.join(" or ")
                    ),
                );
                return;
            }
        }
        self.reads_limits(r, w, path);
        self.reads_object(r, w, path, depth);
        self.reads_array(r, w, path, depth);
    }

    /// Width limits: the reader's range must contain the writer's. A number's `minimum` /
    /// `maximum` (`u8` is `0..=255`, an unsigned integer has `minimum: 0`) and a string's
    /// `minLength` / `maxLength` (`char` is one character); a limit the reader has and the
    /// writer does not (or a looser one) means the writer may write what the reader refuses.
    fn reads_limits(&mut self, r: &Value, w: &Value, path: &str) {
        let wt = types(w);
        let writes = |t: &str| wt.as_ref().is_none_or(|wt| wt.contains(t));
        if writes("integer") || writes("number") {
            self.reads_bounds(r, w, path, "range", ["minimum", "maximum"]);
        }
        if writes("string") {
            self.reads_bounds(r, w, path, "length", ["minLength", "maxLength"]);
        }
    }

    /// One pair of bounds (lower, upper) of [`reads_limits`](Self::reads_limits): each bound
    /// the reader has must hold for everything the writer may write.
    fn reads_bounds(&mut self, r: &Value, w: &Value, path: &str, what: &str, keys: [&str; 2]) {
        let (reader, writer) = (self.reader, self.writer);
        for (key, low) in [(keys[0], true), (keys[1], false)] {
            let Some(rl) = r.get(key).and_then(Value::as_f64) else {
                continue;
            };
            let wl = w.get(key).and_then(Value::as_f64);
            let inside = wl.is_some_and(|wl| if low { wl >= rl } else { wl <= rl });
            if !inside {
                let wl = w.get(key).map_or_else(|| "no".to_owned(), show);
                self.issue(
                    path,
                    IssueKind::TypeChanged,
                    format!(
                        "{what} narrowed: the {reader} schema has {key} {}, the {writer} schema {wl} {key}",
                        show(&r[key])
                    ),
                );
            }
        }
    }

    /// Arrays: lists (`items`) item by item, tuples (`prefixItems`, or draft-07 `items` as an
    /// array) element by element, each position read with the schema the reader has for it.
    fn reads_array(&mut self, r: &Value, w: &Value, path: &str, depth: usize) {
        let (rn, wn) = (tuple_len(r), tuple_len(w));
        let (reader, writer) = (self.reader, self.writer);
        if rn == 0 && wn == 0 {
            // A list (a `Vec`, or a fixed-size `[T; N]` with `minItems` = `maxItems` = N):
            // items read item by item, then the counts compared below.
            if let (Some(ri), Some(wi)) = (r.get("items"), w.get("items")) {
                self.reads(ri, wi, &format!("{path}/*"), depth + 1);
            }
        }
        for i in 0..rn.max(wn) {
            let (Some(re), Some(we)) = (element(r, i), element(w, i)) else {
                continue;
            };
            // `false`: no element there; lengths are compared below.
            if *re != Value::Bool(false) && *we != Value::Bool(false) {
                self.reads(re, we, &format!("{path}/{i}"), depth + 1);
            }
        }
        let (rmin, wmin) = (min_items(r), min_items(w));
        if wmin < rmin {
            self.issue(
                path,
                IssueKind::MissingRequiredField,
                format!("the {reader} schema requires at least {rmin} elements, the {writer} schema may write {wmin}"),
            );
        }
        if let Some(rmax) = max_items(r, rn) {
            let too_long = match max_items(w, wn) {
                Some(wmax) => (wmax > rmax).then(|| wmax.to_string()),
                None => Some("any number of".to_owned()),
            };
            if let Some(wmax) = too_long {
                self.issue(
                    path,
                    IssueKind::ForbiddenField,
                    format!("the {reader} schema accepts at most {rmax} elements, the {writer} schema may write {wmax}"),
                );
            }
        }
    }

    fn reads_object(&mut self, r: &Value, w: &Value, path: &str, depth: usize) {
        let (reader, writer) = (self.reader, self.writer);
        let empty = serde_json::Map::new();
        let rp = props(r).unwrap_or(&empty);
        let wp = props(w).unwrap_or(&empty);
        let wreq = required(w);
        for f in required(r) {
            if wreq.contains(f) {
                continue;
            }
            let detail = if wp.contains_key(f) {
                format!(
                    "field `{f}` is optional in the {writer} schema but required (no default) in the {reader} schema"
                )
            } else {
                format!(
                    "field `{f}` is required (no default) in the {reader} schema and absent from the {writer} schema"
                )
            };
            self.issue(
                &format!("{path}/{f}"),
                IssueKind::MissingRequiredField,
                detail,
            );
        }
        for (f, rs) in rp {
            if let Some(ws) = wp.get(f) {
                self.reads(rs, ws, &format!("{path}/{f}"), depth + 1);
            }
        }
        // A map (or a struct with a schema for its extra fields): what the writer writes
        // under keys the reader does not list is read with the reader's
        // `additionalProperties` schema; `false` (a closed object) forbids such keys.
        let w_extra = map_values(w);
        match r.get("additionalProperties") {
            Some(Value::Bool(false)) => {
                for f in wp.keys().filter(|f| !rp.contains_key(*f)) {
                    self.issue(
                        &format!("{path}/{f}"),
                        IssueKind::ForbiddenField,
                        format!("the {writer} schema writes field `{f}`, which the {reader} schema's closed object does not allow"),
                    );
                }
                if w_extra.is_some() {
                    self.issue(
                        &format!("{path}/*"),
                        IssueKind::ForbiddenField,
                        format!("the {writer} schema writes entries under any key, which the {reader} schema's closed object does not allow"),
                    );
                }
            }
            Some(ra) => {
                for (f, ws) in wp.iter().filter(|(f, _)| !rp.contains_key(*f)) {
                    self.reads(ra, ws, &format!("{path}/{f}"), depth + 1);
                }
                if let Some(wa) = w_extra {
                    self.reads(ra, wa, &format!("{path}/*"), depth + 1);
                }
            }
            None => {}
        }
        // A map writer may write any key, including the ones the reader lists as fields.
        if let Some(wa) = w_extra {
            for (f, rs) in rp.iter().filter(|(f, _)| !wp.contains_key(*f)) {
                self.reads(rs, wa, &format!("{path}/{f}"), depth + 1);
            }
        }
    }

    fn reads_variants(&mut self, r: &Value, w: &Value, path: &str, depth: usize) {
        let rvs: Vec<&Value> = match variants(r) {
            Some(v) => v.iter().collect(),
            None => vec![r],
        };
        let wvs: Vec<&Value> = match variants(w) {
            Some(v) => v.iter().collect(),
            None => vec![w],
        };
        let (reader, writer) = (self.reader, self.writer);
        for wv in wvs {
            let keys = variant_keys(self.writer_root, wv);
            if keys.is_empty() {
                // Unlabelled (e.g. `null` or a struct in an Option): some reader variant must
                // read it cleanly.
                if !rvs.iter().any(|rv| self.clean(rv, wv, path, depth)) {
                    let mut trial = Vec::new();
                    if let Some(rv) = rvs.first() {
                        self.collect(rv, wv, path, depth, &mut trial);
                    }
                    if trial.is_empty() {
                        self.issue(path, IssueKind::TypeChanged, format!("no variant of the {reader} schema accepts what the {writer} schema writes"));
                    } else {
                        self.out.extend(trial);
                    }
                }
                continue;
            }
            for k in keys {
                let matching = rvs
                    .iter()
                    .find(|rv| variant_keys(self.reader_root, rv).contains(&k));
                match matching {
                    Some(rv) => {
                        let wr = resolve(self.writer_root, wv);
                        if values(wr).is_none() {
                            self.reads(rv, wv, &format!("{path}/{k}"), depth + 1);
                        }
                    }
                    None => self.issue(
                        path,
                        IssueKind::UnknownEnumValue,
                        format!("the {writer} schema may write variant `{k}`, which the {reader} schema does not know"),
                    ),
                }
            }
        }
    }

    fn collect(&mut self, r: &Value, w: &Value, path: &str, depth: usize, into: &mut Vec<Issue>) {
        let mut sub = Checker {
            reader_root: self.reader_root,
            writer_root: self.writer_root,
            reader: self.reader,
            writer: self.writer,
            direction: self.direction,
            out: into,
            active: self.active.clone(),
        };
        sub.reads(r, w, path, depth + 1);
    }

    fn clean(&mut self, r: &Value, w: &Value, path: &str, depth: usize) -> bool {
        let mut trial = Vec::new();
        self.collect(r, w, path, depth, &mut trial);
        trial.is_empty()
    }
}
