use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use switchyard_core::{Envelope, MessageId};

use crate::rng;

/// The W3C trace context header name.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor trace state header name (carried along untouched).
pub const TRACESTATE: &str = "tracestate";

/// A 16-byte trace id, shared by every span of one trace.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes` into `out` (which must be twice as long).
fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let out = &mut buf[..bytes.len() * 2];
    encode_hex(bytes, out);
    f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

impl TraceId {
    /// A random, non-zero trace id.
    pub fn random() -> Self {
        loop {
            let a = rng::thread_u64().to_be_bytes();
            let b = rng::thread_u64().to_be_bytes();
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&a);
            id[8..].copy_from_slice(&b);
            if id != [0; 16] {
                return Self(id);
            }
        }
    }
}

impl SpanId {
    /// A random, non-zero span id.
    #[inline]
    pub fn random() -> Self {
        loop {
            let id = rng::thread_u64().to_be_bytes();
            if id != [0; 8] {
                return Self(id);
            }
        }
    }
}

/// A `traceparent` value that does not follow the W3C format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {input:?}: {reason}")]
pub struct TraceparentError {
    /// The refused value.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// One position in a trace: trace id, the id of the current span and the trace flags.
///
/// Parses and prints the W3C `traceparent` form
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: TraceId,
    span_id: SpanId,
    flags: u8,
}

thread_local! {
    /// The context of the delivery being polled on this thread. Set only for the duration of
    /// a poll (like a tokio task-local, but a plain `Cell`: it is read and written on every
    /// delivery, and a task-local's `RefCell` swap cost more than the rest of the trace work).
    static CURRENT: Cell<Slot> = const { Cell::new(Slot::EMPTY) };
}

/// A context as the thread-local holds it: whole aligned words, so setting and restoring it
/// are a few plain stores and loads (an `Option<TraceContext>` is 26 bytes at odd offsets,
/// which stalled store forwarding on every delivery).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Slot {
    trace_id: u128,
    span_id: u64,
    /// `0x100 | flags` when set, 0 when empty.
    flags: u64,
}

impl Slot {
    const EMPTY: Self = Self {
        trace_id: 0,
        span_id: 0,
        flags: 0,
    };

    fn of(ctx: TraceContext) -> Self {
        Self {
            trace_id: u128::from_ne_bytes(ctx.trace_id.0),
            span_id: u64::from_ne_bytes(ctx.span_id.0),
            flags: 0x100 | u64::from(ctx.flags),
        }
    }

    fn get(self) -> Option<TraceContext> {
        (self.flags & 0x100 != 0).then(|| TraceContext {
            trace_id: TraceId(self.trace_id.to_ne_bytes()),
            span_id: SpanId(self.span_id.to_ne_bytes()),
            flags: (self.flags & 0xff) as u8,
        })
    }
}

/// Puts the previous context back when a scope ends, also when it unwinds.
pub(crate) struct Restore(Slot);

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        let previous = self.0;
        let _ = CURRENT.try_with(|c| c.set(previous));
    }
}

pin_project_lite::pin_project! {
    /// A future polled with a [`TraceContext`] as the current one ([`TraceContext::scope`]).
    pub struct Scoped<F> {
        #[pin]
        inner: F,
        ctx: TraceContext,
    }
}

impl<F: std::future::Future> std::future::Future for Scoped<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let inner = this.inner;
        this.ctx.sync_scope(|| inner.poll(cx))
    }
}

impl TraceContext {
    /// Flag bit: the caller recorded (sampled) this trace.
    pub const SAMPLED: u8 = 0x01;

    /// A context from its parts. Zero ids are invalid in W3C trace context; use
    /// [`TraceContext::new_root`] for fresh ones.
    pub fn from_parts(trace_id: TraceId, span_id: SpanId, flags: u8) -> Self {
        Self {
            trace_id,
            span_id,
            flags,
        }
    }

    /// Starts a new trace: random trace and span ids, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            flags: Self::SAMPLED,
        }
    }

    /// The root of the trace of a message that arrived without a `traceparent`: the trace id
    /// is the message's correlation id (so a whole flow is one trace, and its traces and
    /// correlation ids line up), the span id is random, sampled.
    ///
    /// A ULID correlation id gives its 128 bits, a UUID (32 hex digits, hyphens ignored)
    /// its 128 bits, and any other foreign id a stable 128-bit hash of its text (FNV-1a),
    /// so every process derives the same trace id for one flow.
    #[inline(always)]
    pub fn root_for(env: &Envelope) -> Self {
        let id = trace_bits(&env.correlation_id);
        if id == 0 {
            return Self::new_root();
        }
        Self {
            trace_id: TraceId(id.to_be_bytes()),
            span_id: SpanId::random(),
            flags: Self::SAMPLED,
        }
    }

    /// A child position in the same trace: same trace id and flags, a new span id.
    #[inline]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            flags: self.flags,
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The span id (the parent-id field when sent).
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// True when the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The context in the envelope's `traceparent` header, if present and valid.
    #[inline]
    pub fn from_envelope(env: &Envelope) -> Option<Self> {
        env.header(TRACEPARENT)?.parse().ok()
    }

    /// Writes this context into the envelope's `traceparent` header.
    pub fn inject(&self, env: &mut Envelope) {
        let buf = self.encode();
        if let Ok(value) = std::str::from_utf8(&buf) {
            env.headers_mut().insert(TRACEPARENT, value);
        }
    }

    /// The context of the delivery being handled by the current task, inside a
    /// [`TraceLayer`](super::TraceLayer).
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|c| c.get().get()).ok().flatten()
    }

    /// Runs `f` with `self` as the [`current`](TraceContext::current) context.
    #[inline(always)]
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        let _restore = self.enter();
        f()
    }

    /// Makes `self` the current context until the guard is dropped.
    #[inline(always)]
    pub(crate) fn enter(self) -> Restore {
        let previous = CURRENT
            .try_with(|c| c.replace(Slot::of(self)))
            .unwrap_or(Slot::EMPTY);
        Restore(previous)
    }

    /// Runs `fut` with `self` as the [`current`](TraceContext::current) context.
    pub fn scope<F: std::future::Future>(self, fut: F) -> Scoped<F> {
        Scoped {
            inner: fut,
            ctx: self,
        }
    }
}

impl TraceContext {
    /// The `traceparent` header value as bytes: `00-<trace>-<span>-<flags>` (55 ASCII bytes).
    fn encode(&self) -> [u8; 55] {
        let mut buf = [b'-'; 55];
        buf[0] = b'0';
        buf[1] = b'0';
        encode_hex(&self.trace_id.0, &mut buf[3..35]);
        encode_hex(&self.span_id.0, &mut buf[36..52]);
        encode_hex(&[self.flags], &mut buf[53..55]);
        buf
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.encode();
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

fn hex_lower<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(bytes[2 * i])? << 4 | digit(bytes[2 * i + 1])?;
    }
    Some(out)
}

impl FromStr for TraceContext {
    type Err = TraceparentError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| TraceparentError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        let mut parts = s.split('-');
        let version = parts.next().ok_or_else(|| err("empty"))?;
        let version = hex_lower::<1>(version).ok_or_else(|| err("bad version"))?[0];
        if version == 0xff {
            return Err(err("version ff is invalid"));
        }
        let trace = parts.next().ok_or_else(|| err("missing trace id"))?;
        let span = parts.next().ok_or_else(|| err("missing parent id"))?;
        let flags = parts.next().ok_or_else(|| err("missing flags"))?;
        // Version 00 has exactly four fields; later versions may append more.
        if version == 0 && parts.next().is_some() {
            return Err(err("extra fields for version 00"));
        }
        let trace_id = hex_lower::<16>(trace)
            .ok_or_else(|| err("trace id is not 32 lower-case hex digits"))?;
        let span_id =
            hex_lower::<8>(span).ok_or_else(|| err("parent id is not 16 lower-case hex digits"))?;
        let flags = hex_lower::<1>(flags).ok_or_else(|| err("flags are not 2 hex digits"))?[0];
        if trace_id == [0; 16] {
            return Err(err("trace id is all zeros"));
        }
        if span_id == [0; 8] {
            return Err(err("parent id is all zeros"));
        }
        Ok(Self {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            flags,
        })
    }
}

/// The 128 bits a correlation id contributes as a trace id (see [`TraceContext::root_for`]).
/// Inlined into the stack's call (compiled in the bus's crate): a ULID's bits are a load.
#[inline]
fn trace_bits(id: &MessageId) -> u128 {
    id.as_u128().unwrap_or_else(|| foreign_trace_bits(id))
}

/// [`trace_bits`] of an id that is not a ULID.
#[inline(never)]
fn foreign_trace_bits(id: &MessageId) -> u128 {
    id.with_str(|s| uuid_bits(s).unwrap_or_else(|| fnv1a_128(s.as_bytes())))
}

/// The value of a UUID written as 32 hex digits, with or without hyphens.
fn uuid_bits(s: &str) -> Option<u128> {
    let mut v: u128 = 0;
    let mut digits = 0;
    for c in s.chars() {
        if c == '-' {
            continue;
        }
        v = (v << 4) | u128::from(c.to_digit(16)?);
        digits += 1;
        if digits > 32 {
            return None;
        }
    }
    (digits == 32).then_some(v)
}

/// 128-bit FNV-1a: stable across processes and versions (unlike `std`'s hashers).
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_spec_example() {
        let c: TraceContext = EXAMPLE.parse().unwrap();
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.is_sampled());
        assert_eq!(c.to_string(), EXAMPLE);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceContext>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn later_versions_may_append_fields() {
        let c: TraceContext = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what"
            .parse()
            .unwrap();
        assert!(!c.is_sampled());
    }

    #[test]
    fn child_keeps_trace_changes_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_ne!(TraceContext::new_root().trace_id(), root.trace_id());
        let printed: TraceContext = child.to_string().parse().unwrap();
        assert_eq!(printed, child);
    }

    #[test]
    fn root_for_derives_one_trace_from_any_correlation_id() {
        let env = |c: &str| {
            Envelope::new(switchyard_core::Topic::new("a.b").unwrap(), "")
                .with_correlation_id(c.parse().unwrap())
        };
        let ulid = MessageId::new();
        let root = TraceContext::root_for(&env(&ulid.to_string()));
        assert_eq!(root.trace_id().0, ulid.as_u128().unwrap().to_be_bytes());
        let uuid = TraceContext::root_for(&env("4bf92f35-77b3-4da6-a3ce-929d0e0e4736"));
        assert_eq!(
            uuid.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // A foreign id that is neither: the same trace in every process, for every message.
        let (a, b) = (
            TraceContext::root_for(&env("corr-42")),
            TraceContext::root_for(&env("corr-42")),
        );
        assert_eq!(a.trace_id(), b.trace_id());
        assert_ne!(a.span_id(), b.span_id());
        let other = TraceContext::root_for(&env("corr-43"));
        assert_ne!(a.trace_id(), other.trace_id());
    }

    #[tokio::test]
    async fn current_is_scoped() {
        assert!(TraceContext::current().is_none());
        let root = TraceContext::new_root();
        let seen = root.scope(async { TraceContext::current() }).await;
        assert_eq!(seen, Some(root));
        assert!(TraceContext::current().is_none());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn display_parse_roundtrip(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), flags in any::<u8>()) {
            prop_assume!(trace != [0; 16] && span != [0; 8]);
            let ctx = TraceContext::from_parts(TraceId(trace), SpanId(span), flags);
            let text = ctx.to_string();
            prop_assert_eq!(text.len(), 55);
            prop_assert_eq!(text.parse::<TraceContext>().unwrap(), ctx);
        }

        #[test]
        fn parsing_never_panics(s in ".{0,80}") {
            let _ = s.parse::<TraceContext>();
        }
    }
}
