//! Envelope fields as NATS headers; the payload is the message body.
//!
//! | header | field |
//! | --- | --- |
//! | `Nats-Msg-Id` | `id` (also JetStream's dedup key); for a replayed dead letter `<id>.replay-<n>` |
//! | `Sy-Id` | `id`, only when `Nats-Msg-Id` is not the id (a replay) |
//! | `Sy-Kind` | `kind` (`command`, `request`, `reply`; omitted for `event`) |
//! | `Sy-Correlation-Id`, `Sy-Causation-Id` | ids |
//! | `Sy-Source`, `Sy-Target` | component names |
//! | `Sy-Priority` | `priority` (0–255) |
//! | `Sy-Timestamp` | `timestamp`, nanoseconds since the Unix epoch |
//! | `Sy-Content-Type`, `Sy-Type-Name`, `Sy-Type-Version` | payload description |
//! | `<name>` | each user header that NATS carries as it is (`traceparent`, `tracestate`, `X-Correlation-Id`, …) |
//! | `H-<name>` | each other user header, percent-encoded |
//!
//! Ids are opaque strings: a foreign `Nats-Msg-Id`, `Sy-Correlation-Id` or `Sy-Causation-Id`
//! (a UUID, `corr-42`) is kept byte for byte and sent on unchanged. Only a value that is not
//! a valid id (empty, over 256 bytes, or with bytes outside visible ASCII) is not used: the
//! message then gets a fresh id, its own id as correlation, no causation.
//!
//! A user header whose name is an HTTP token outside the reserved prefixes (`Sy-`, `Nats-`,
//! `H-`) and whose value is printable ASCII travels under its own name;
//! any other is sent as `H-<name>` with names and values percent-encoded where NATS would
//! refuse or alter them (control characters, spaces, non-ASCII, `%`, and `:` in names).
//! On receipt every header outside the reserved prefixes is kept as it came, so headers
//! from any NATS client reach the envelope and are forwarded on republish. A header sent
//! more than once (`X-Tag: a`, `X-Tag: b`) keeps every value, joined with `", "` in the
//! order they came (`X-Tag: a, b`), as HTTP combines repeated fields: an envelope holds one
//! value per header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use bytes::Bytes;
use smol_str::SmolStr;
use switchyard_core::dead_letter::REPLAY_COUNT;
use switchyard_core::{DeliveryInfo, Envelope, JSON, Kind, MessageId, Priority, Topic};

/// `Nats-Msg-Id` as a name to match ([`NATS_MESSAGE_ID`] is the header name to send).
const MSG_ID: &str = "Nats-Msg-Id";
/// The id, when `Nats-Msg-Id` carries another dedup key (a replay).
const ID: &str = "Sy-Id";
const KIND: &str = "Sy-Kind";
const CORRELATION: &str = "Sy-Correlation-Id";
const CAUSATION: &str = "Sy-Causation-Id";
const SOURCE: &str = "Sy-Source";
const TARGET: &str = "Sy-Target";
const PRIORITY: &str = "Sy-Priority";
const TIMESTAMP: &str = "Sy-Timestamp";
const CONTENT_TYPE: &str = "Sy-Content-Type";
const TYPE_NAME: &str = "Sy-Type-Name";
const TYPE_VERSION: &str = "Sy-Type-Version";
const USER_PREFIX: &str = "H-";

pub(crate) fn escape(s: &str, name: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = (0x21..=0x7e).contains(&b) && b != b'%' && !(name && b == b':');
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

pub(crate) fn unescape(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = if bytes[i] == b'%' && i + 2 < bytes.len() {
            hex(bytes[i + 1]).zip(hex(bytes[i + 2]))
        } else {
            None
        };
        if let Some((hi, lo)) = decoded {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The headers carrying `env`'s fields.
pub(crate) fn encode_headers(env: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    // A replayed dead letter keeps its id, which JetStream saw when it was first published:
    // within the duplicate window the replay would be dropped as a repeat of it (and the
    // dead letter, replayed "successfully", removed). Its dedup key adds the replay count, so
    // a replay is stored once (its own resends are still dropped) and the id travels in
    // `Sy-Id`.
    let id = env.id.to_string();
    match replay_count(env) {
        Some(n) => {
            h.insert(NATS_MESSAGE_ID, format!("{id}.replay-{n}").as_str());
            h.insert(ID, id.as_str());
        }
        None => h.insert(NATS_MESSAGE_ID, id.as_str()),
    }
    if env.kind != Kind::Event {
        h.insert(KIND, env.kind.as_str());
    }
    if env.correlation_id != env.id {
        h.insert(CORRELATION, env.correlation_id.to_string().as_str());
    }
    if let Some(c) = env.causation_id() {
        h.insert(CAUSATION, c.to_string().as_str());
    }
    if let Some(s) = env.source() {
        h.insert(SOURCE, escape(s, false).as_str());
    }
    if let Some(t) = env.target() {
        h.insert(TARGET, escape(t, false).as_str());
    }
    if env.priority != Priority::NORMAL {
        h.insert(PRIORITY, env.priority.0.to_string().as_str());
    }
    let ts = match env.timestamp.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().to_string(),
        Err(e) => format!("-{}", e.duration().as_nanos()),
    };
    h.insert(TIMESTAMP, ts.as_str());
    if env.content_type() != JSON {
        h.insert(CONTENT_TYPE, escape(env.content_type(), false).as_str());
    }
    if let Some(t) = &env.type_name {
        h.insert(TYPE_NAME, escape(t, false).as_str());
    }
    if env.type_version != 1 {
        h.insert(TYPE_VERSION, env.type_version.to_string().as_str());
    }
    for (k, v) in env.headers().iter() {
        if plain_header(k, v) {
            h.insert(k, v);
        } else {
            let name = format!("{USER_PREFIX}{}", escape(k, true));
            h.insert(name.as_str(), escape(v, false).as_str());
        }
    }
    h
}

/// The size of the header block NATS sends for `h` (`HPUB`'s header length): `NATS/1.0\r\n`,
/// each `name: value\r\n`, then `\r\n`; zero for no headers (sent as a plain `PUB`). The
/// server counts it with the payload against its `max_payload`.
pub(crate) fn header_bytes(h: &HeaderMap) -> usize {
    if h.is_empty() {
        return 0;
    }
    let fields: usize = h
        .iter()
        .map(|(k, vs)| {
            let name = AsRef::<[u8]>::as_ref(k).len();
            vs.iter()
                .map(|v| name + 2 + v.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + "\r\n".len()
}

/// A header NATS carries as it is and no other client mistakes for one of its own: an HTTP
/// token name outside the reserved prefixes (`Sy-`, `Nats-`, `H-`) with a printable ASCII
/// value (no surrounding spaces). Such headers travel under their own name (`traceparent`,
/// `X-Correlation-Id`); the others under `H-` with percent-encoding.
fn plain_header(name: &str, value: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(token)
        && !reserved(name)
        && !value.is_empty()
        && value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
}

/// Names switchyard or NATS own.
fn reserved(name: &str) -> bool {
    let starts = |p: &str| {
        name.len() >= p.len() && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    starts("sy-") || starts("nats-") || starts(USER_PREFIX)
}

fn parse_id(s: Option<&str>) -> Option<MessageId> {
    s.and_then(|s| s.parse().ok())
}

fn parse_time(s: &str) -> Option<SystemTime> {
    match s.strip_prefix('-') {
        Some(neg) => {
            let n: u128 = neg.parse().ok()?;
            UNIX_EPOCH.checked_sub(nanos(n))
        }
        None => {
            let n: u128 = s.parse().ok()?;
            UNIX_EPOCH.checked_add(nanos(n))
        }
    }
}

fn nanos(n: u128) -> Duration {
    let secs = (n / 1_000_000_000) as u64;
    let sub = (n % 1_000_000_000) as u32;
    Duration::new(secs, sub)
}

fn kind(s: &str) -> Kind {
    match s {
        "command" => Kind::Command,
        "request" => Kind::Request,
        "reply" => Kind::Reply,
        _ => Kind::Event,
    }
}

/// The replay count of a replayed dead letter ([`REPLAY_COUNT`], a number), if it is one.
fn replay_count(env: &Envelope) -> Option<u32> {
    env.header(REPLAY_COUNT).and_then(|n| n.parse().ok())
}

/// The values of a header sent more than once (NATS headers, like HTTP fields, may repeat),
/// as one: joined with `", "` in the order they came, as HTTP combines repeated fields
/// (RFC 9110 section 5.3). `X-Tag: a` and `X-Tag: b` become `X-Tag: a, b`. One value is
/// kept as it is.
fn joined(values: &[async_nats::HeaderValue], read: impl Fn(&str) -> String) -> String {
    match values {
        [one] => read(one.as_str()),
        many => many
            .iter()
            .map(|v| read(v.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Rebuilds an envelope. Messages from publishers that are not switchyard get defaults: a
/// fresh id (when they have no valid `Nats-Msg-Id`), kind event, the current time.
pub(crate) fn decode(topic: Topic, headers: Option<&HeaderMap>, payload: Bytes) -> Envelope {
    let mut env = Envelope::new(topic, payload);
    let Some(h) = headers else {
        return env;
    };
    // One pass over the headers (a lookup by name builds the name and hashes it, per field).
    let mut id = None;
    let mut own_id = None;
    let mut correlation = None;
    let mut causation = None;
    let mut user = Vec::new();
    for (k, vs) in h.iter() {
        let (Ok(name), Some(v)) = (std::str::from_utf8(AsRef::<[u8]>::as_ref(k)), vs.first())
        else {
            continue;
        };
        let v = v.as_str();
        match name {
            MSG_ID => id = parse_id(Some(v)),
            ID => own_id = parse_id(Some(v)),
            KIND => env.kind = kind(v),
            CORRELATION => correlation = parse_id(Some(v)),
            CAUSATION => causation = parse_id(Some(v)),
            SOURCE => env.set_source(Some(SmolStr::new(unescape(v)))),
            TARGET => env.set_target(Some(SmolStr::new(unescape(v)))),
            PRIORITY => {
                if let Ok(p) = v.parse() {
                    env.priority = Priority(p);
                }
            }
            TIMESTAMP => {
                if let Some(t) = parse_time(v) {
                    env.timestamp = t;
                }
            }
            CONTENT_TYPE => env.set_content_type(SmolStr::new(unescape(v))),
            TYPE_NAME => env.type_name = Some(SmolStr::new(unescape(v))),
            TYPE_VERSION => {
                if let Ok(t) = v.parse() {
                    env.type_version = t;
                }
            }
            // A user header sent more than once keeps every value, joined ([`joined`]).
            _ => match name.strip_prefix(USER_PREFIX) {
                Some(escaped) => user.push((unescape(escaped), joined(vs, unescape))),
                // A foreign header (`traceparent`, `X-Correlation-Id`): kept as it came.
                None if !reserved(name) => user.push((name.to_owned(), joined(vs, str::to_owned))),
                None => {}
            },
        }
    }
    // A replay's `Nats-Msg-Id` is its dedup key; `Sy-Id` is then its id.
    if let Some(id) = own_id.or(id) {
        env.id = id.clone();
        env.correlation_id = id;
    }
    if let Some(c) = correlation {
        env.correlation_id = c;
    }
    env.set_causation_id(causation);
    if !user.is_empty() {
        env.set_headers(user.into_iter().collect());
    }
    env.delivery = DeliveryInfo::default();
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_name_matched_is_the_one_sent() {
        let mut h = HeaderMap::new();
        h.insert(NATS_MESSAGE_ID, "x");
        let names: Vec<Vec<u8>> = h
            .iter()
            .map(|(k, _)| AsRef::<[u8]>::as_ref(k).to_vec())
            .collect();
        assert_eq!(names, vec![MSG_ID.as_bytes().to_vec()]);
    }

    #[test]
    fn header_bytes_is_the_header_block_sent() {
        assert_eq!(
            header_bytes(&HeaderMap::new()),
            0,
            "no headers: a plain PUB"
        );
        let mut h = HeaderMap::new();
        h.insert(NATS_MESSAGE_ID, "x");
        h.insert("A", "bc");
        h.append("A", "d");
        // The block async-nats writes (its `HPUB` header length), in any field order.
        let block = "NATS/1.0\r\nNats-Msg-Id: x\r\nA: bc\r\nA: d\r\n\r\n";
        assert_eq!(header_bytes(&h), block.len());
    }

    #[test]
    fn escape_roundtrip() {
        for s in ["plain", "a b", "grüße: a\r\nb %41 ", "%", "x%2"] {
            assert_eq!(unescape(&escape(s, true)), s);
            assert_eq!(unescape(&escape(s, false)), s);
        }
    }

    #[test]
    fn envelope_roundtrip() {
        let parent = Envelope::new(Topic::new("a.p").unwrap(), "p");
        let mut env = Envelope::new(Topic::new("a.b").unwrap(), "body")
            .caused_by(&parent)
            .with_header("x-y", "v w")
            .with_source("s")
            .with_target("t")
            .with_priority(Priority::LOW)
            .with_kind(Kind::Reply);
        env.type_name = Some("T".into());
        env.type_version = 9;
        env.set_content_type("text/plain");
        let h = encode_headers(&env);
        let back = decode(env.topic.clone(), Some(&h), env.payload.clone());
        assert_eq!(back, env);
    }

    #[test]
    fn a_repeated_user_header_keeps_every_value_joined_in_order() {
        let mut h = HeaderMap::new();
        h.append("X-Tag", "b");
        h.append("X-Tag", "a");
        h.append("X-Tag", "c, d");
        h.append("H-x%20y", "1%25");
        h.append("H-x%20y", "2");
        h.insert("X-One", "only");
        h.append("Sy-Priority", "7");
        h.append("Sy-Priority", "9");
        let env = decode(Topic::new("a.b").unwrap(), Some(&h), Bytes::new());
        assert_eq!(env.header("X-Tag"), Some("b, a, c, d"));
        assert_eq!(env.header("x y"), Some("1%, 2"));
        assert_eq!(env.header("X-One"), Some("only"));
        assert_eq!(
            env.priority,
            Priority(7),
            "an envelope field takes the first"
        );
    }

    #[test]
    fn foreign_ids_roundtrip_and_invalid_ones_are_not_used() {
        let topic = Topic::new("a.b").unwrap();
        let mut h = HeaderMap::new();
        h.insert(NATS_MESSAGE_ID, "550e8400-e29b-41d4-a716-446655440000");
        h.insert(CAUSATION, "cause-7");
        let env = decode(topic.clone(), Some(&h), Bytes::new());
        assert_eq!(env.id.to_string(), "550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(
            env.correlation_id, env.id,
            "no correlation header: its own id"
        );
        assert_eq!(env.causation_id().unwrap().to_string(), "cause-7");
        let again = encode_headers(&env);
        assert_eq!(decode(topic.clone(), Some(&again), Bytes::new()), env);

        let mut h = HeaderMap::new();
        h.insert(NATS_MESSAGE_ID, "x".repeat(MessageId::MAX_LEN + 1).as_str());
        h.insert(CORRELATION, "corr-42");
        let env = decode(topic, Some(&h), Bytes::new());
        assert!(env.id.is_ulid(), "an over-long id is replaced");
        assert_eq!(env.correlation_id.to_string(), "corr-42");
    }
}
