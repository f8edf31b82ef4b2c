//! Message ids: opaque strings, a ULID when switchyard makes one.
//!
//! An id that switchyard creates is a [ULID](https://github.com/ulid/spec) (26 characters,
//! sorts by creation time). An id that arrives from elsewhere (a UUID `Nats-Msg-Id`, a
//! client's `corr-42`) is kept exactly as it is: `id.to_string()` gives back the very string
//! it was parsed from, so correlation survives the language boundary.
//!
//! A valid id is 1 to [`MessageId::MAX_LEN`] bytes of visible ASCII (`!` to `~`: no spaces,
//! no control characters, no non-ASCII), so it is a valid header value on every transport
//! (NATS, HTTP) and in a log line without escaping.

use std::cmp::Ordering;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// Length of a ULID in its canonical text form.
const ULID_LEN: usize = 26;

/// A message id: an opaque string, stored as the 128 bits of a ULID when it is one.
///
/// Ids that switchyard makes ([`MessageId::new`]) are ULIDs, so they sort by creation time.
/// Any other id (a UUID, `corr-42`) is kept as it came. Cloning is cheap (a copy of 16 bytes
/// or an `Arc` increment), and the type is 16 bytes.
///
/// Equality, hashing and ordering agree with the string form: two ids are equal exactly
/// when their strings are, and they order as their strings do (for ULIDs, that is creation
/// order).
///
/// ```
/// use switchyard_core::MessageId;
/// let made = MessageId::new();
/// assert!(made.is_ulid());
/// let foreign: MessageId = "6f1c2a9e-4b7d-4c3e-9a51-0d2e8f7b3c14".parse()?;
/// assert_eq!(foreign.to_string(), "6f1c2a9e-4b7d-4c3e-9a51-0d2e8f7b3c14");
/// assert!("has space".parse::<MessageId>().is_err());
/// # Ok::<(), switchyard_core::MessageIdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageId(Repr);

/// A canonical ULID string is stored as its bits; any other string as text. Every accepted
/// string has exactly one representation, so the derived `Eq`/`Hash` match string equality.
///
/// 16 bytes: the text is behind a thin pointer (`Arc<String>`: foreign ids pay a second
/// allocation), so it fits beside the bits' niche (see [`Bits`]) and no tag word is needed.
/// Every envelope holds two ids inline; at 24 bytes each, an envelope took 216 bytes and
/// its `Arc` a 240-byte heap block, now 200 and 224 (ARCHITECTURE.md, "Memory per queued
/// message").
#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// The ULID's 128 bits.
    Ulid(Bits),
    /// Anything else, exactly as it came (and the one ULID [`Bits`] cannot hold).
    Text(Arc<String>),
}

/// A ULID's 128 bits as two words (not `u128`, to keep the alignment at 8), the low one
/// stored XOR [`RESERVED_LOW`] in a `NonZeroU64`: that zero is the niche that tells text
/// from bits. A ULID whose low word is `RESERVED_LOW` (one in 2^64) is kept as its text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Bits {
    high: u64,
    low: NonZeroU64,
}

/// The low word no [`Bits`] can hold (arbitrary, so that round test values are not it).
const RESERVED_LOW: u64 = 0xA5C3_96E1_7B2D_4F08;

impl Bits {
    /// The bits of `v`, unless its low word is the reserved one.
    #[inline]
    fn new(v: u128) -> Option<Self> {
        #[allow(clippy::cast_possible_truncation)] // the two halves, on purpose
        let (high, low) = ((v >> 64) as u64, v as u64);
        NonZeroU64::new(low ^ RESERVED_LOW).map(|low| Self { high, low })
    }

    #[inline]
    fn get(self) -> u128 {
        (u128::from(self.high) << 64) | u128::from(self.low.get() ^ RESERVED_LOW)
    }
}

// Small enough to stay cheap in every envelope (two ids inline per envelope).
const _: () = assert!(std::mem::size_of::<MessageId>() == 16);

impl MessageId {
    /// The longest id accepted, in bytes.
    pub const MAX_LEN: usize = 256;

    /// A fixed id that owns nothing, left in a vacant envelope (`Envelope::take_out`).
    pub(crate) const VACANT: Self = Self(Repr::Ulid(Bits {
        high: 0,
        low: NonZeroU64::MIN,
    }));

    /// A fresh ULID (its time part from [`clock::now`](crate::clock::now)).
    pub fn new() -> Self {
        Self::made_at(crate::clock::now())
    }

    /// A fresh ULID whose time part is `now`'s millisecond (see [`ulid_at`]).
    pub(crate) fn made_at(now: SystemTime) -> Self {
        Self::from_ulid(ulid_at(now))
    }

    /// The id of a ULID.
    #[inline]
    pub(crate) fn from_ulid(ulid: Ulid) -> Self {
        match Bits::new(ulid.0) {
            Some(bits) => Self(Repr::Ulid(bits)),
            None => Self::reserved(ulid),
        }
    }

    /// The one ULID in 2^64 that [`Bits`] cannot hold, as its text (out of line).
    #[cold]
    #[inline(never)]
    fn reserved(ulid: Ulid) -> Self {
        Self(Repr::Text(Arc::new(ulid.to_string())))
    }

    /// Rebuilds a ULID id from its 128-bit number.
    pub fn from_u128(v: u128) -> Self {
        Self::from_ulid(Ulid(v))
    }

    /// The 128-bit number of a ULID id; `None` for a foreign id that is not a ULID.
    #[inline]
    pub fn as_u128(&self) -> Option<u128> {
        match &self.0 {
            Repr::Ulid(b) => Some(b.get()),
            // A canonical ULID kept as text is the reserved one.
            Repr::Text(t) => canonical_ulid(t).map(|u| u.0),
        }
    }

    /// True when the id is a ULID (every id switchyard makes, and foreign ids that happen to
    /// be canonical ULIDs).
    pub fn is_ulid(&self) -> bool {
        self.as_u128().is_some()
    }

    /// Parses any valid id, keeping it exactly as it is (the same as [`str::parse`]).
    ///
    /// A canonical ULID (26 characters of upper-case Crockford base32) is stored as its
    /// bits; any other valid string as text. Either way `to_string()` returns `s`.
    pub fn parse_opaque(s: &str) -> Result<Self, MessageIdError> {
        validate(s)?;
        if let Some(ulid) = canonical_ulid(s) {
            return Ok(Self::from_ulid(ulid));
        }
        Ok(Self(Repr::Text(Arc::new(s.to_owned()))))
    }

    /// Calls `f` with the id's string form, without allocating for a ULID.
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match &self.0 {
            Repr::Ulid(b) => {
                let mut buf = [0u8; ULID_LEN];
                f(Ulid(b.get()).array_to_str(&mut buf))
            }
            Repr::Text(t) => f(t),
        }
    }
}

/// The random part of a ULID (its low 80 bits).
const ULID_RANDOM: u128 = (1 << 80) - 1;

thread_local! {
    /// The millisecond of the last ULID this thread made, as the instants it starts and
    /// ends at, and that ULID's bits (an empty millisecond and 0 before any).
    static LAST_ULID: std::cell::Cell<(SystemTime, SystemTime, u128)> =
        const { std::cell::Cell::new((UNIX_EPOCH, UNIX_EPOCH, 0)) };
}

/// A fresh ULID for `now`, monotonic per thread as the ULID spec allows: within one
/// millisecond a thread's next ULID is its last one plus one (unique, and sorting in creation
/// order), and only the first of each millisecond draws 80 fresh random bits and works out
/// the millisecond ([`fresh_ulid`], out of line so that the usual case saves no registers
/// for it). A message id is made for every message (and every reply), often thousands per
/// millisecond; a draw from the thread's random generator for each cost more than the rest
/// of the id. Two threads start each millisecond from independent random points, so their
/// runs of ids do not meet (a run of n ids overlaps another's with a chance of about
/// n^2 / 2^80). The window is kept as two instants rather than a millisecond number:
/// comparing instants is cheaper than converting `now` (`duration_since` is ~55
/// instructions).
#[inline]
fn ulid_at(now: SystemTime) -> Ulid {
    LAST_ULID.with(|last| {
        let (start, end, bits) = last.get();
        if start <= now && now < end && bits & ULID_RANDOM != ULID_RANDOM {
            last.set((start, end, bits + 1));
            return Ulid(bits + 1);
        }
        fresh_ulid(now, last)
    })
}

/// Forgets this thread's run of ids: its next id is a fresh draw, even within the
/// millisecond of the last one.
///
/// Call it in a child process right after `fork`, before it makes an id. The child starts with
/// a copy of its parent's thread state, so within the millisecond of the fork its ids would
/// otherwise continue the parent's run, the very ids the parent makes next (and so would a
/// second child's), which dedup and the NATS duplicate window then drop as repeats. A fresh
/// draw is told apart from the parent's by the process id folded into it. The Python package
/// registers it with `os.register_at_fork(after_in_child=..)`; Rust code that forks and keeps
/// running (rather than `exec`-ing) calls it itself.
///
/// ```
/// use switchyard_core::{id::forget_run, MessageId};
/// let a = MessageId::new();
/// forget_run(); // as a forked child would, first thing
/// let b = MessageId::new();
/// assert_ne!(a, b);
/// ```
pub fn forget_run() {
    LAST_ULID.with(|last| last.set((UNIX_EPOCH, UNIX_EPOCH, 0)));
}

/// The first ULID of a millisecond on this thread: a fresh draw, told apart from a forked
/// parent's (see [`salted`]); one system call per millisecond and thread.
#[cold]
#[inline(never)]
fn fresh_ulid(now: SystemTime, last: &std::cell::Cell<(SystemTime, SystemTime, u128)>) -> Ulid {
    let ulid = Ulid(salted(Ulid::from_datetime(now).0, std::process::id()));
    // The millisecond the ULID's time part names (before the epoch: the epoch's, which
    // `from_datetime` uses too; then the window is empty and every id draws afresh).
    let ms = UNIX_EPOCH.checked_add(Duration::from_millis(ulid.timestamp_ms()));
    let (start, end) = ms
        .and_then(|start| Some((start, start.checked_add(Duration::from_millis(1))?)))
        .unwrap_or((UNIX_EPOCH, UNIX_EPOCH));
    last.set((start, end, ulid.0));
    ulid
}

/// `bits` (a freshly drawn ULID) with `pid` folded into its random part. A process forked
/// from another starts with a copy of its parent's random generator (rand's thread generator
/// does not reseed after `fork`, e.g. Python's `multiprocessing`), so parent and child would
/// otherwise draw the same random parts and, in the same millisecond, the same ids, which
/// dedup and the NATS duplicate window would then drop as repeats. The mix is a bijection of
/// the 32-bit process id into the low 64 bits, so two processes never fold in the same salt;
/// the time part is untouched. (A child's ids in the very millisecond of the fork would
/// continue its parent's run: [`forget_run`] after the fork starts the child's own.)
fn salted(bits: u128, pid: u32) -> u128 {
    // splitmix64's finalizer: a bijection on u64 that spreads every input bit.
    let mut z = u64::from(pid).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    bits ^ u128::from(z)
}

/// The ULID `s` spells, if `s` is the canonical spelling of one. `Ulid::from_string` also
/// accepts lower case and a first character above `7` (dropping bits), which would not
/// print back the same; such strings stay text.
fn canonical_ulid(s: &str) -> Option<Ulid> {
    if s.len() != ULID_LEN {
        return None;
    }
    let ulid = Ulid::from_string(s).ok()?;
    let mut buf = [0u8; ULID_LEN];
    (ulid.array_to_str(&mut buf) == s).then_some(ulid)
}

fn validate(s: &str) -> Result<(), MessageIdError> {
    if s.is_empty() {
        return Err(MessageIdError::Empty);
    }
    if s.len() > MessageId::MAX_LEN {
        return Err(MessageIdError::TooLong {
            len: s.len(),
            max: MessageId::MAX_LEN,
        });
    }
    if let Some(at) = s.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(MessageIdError::InvalidByte {
            input: s.to_owned(),
            at,
        });
    }
    Ok(())
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl Ord for MessageId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            // Canonical ULIDs are fixed-length strings over an alphabet in ASCII order, so
            // their bits order as their strings do.
            (Repr::Ulid(a), Repr::Ulid(b)) => a.get().cmp(&b.get()),
            (Repr::Text(a), Repr::Text(b)) => a.cmp(b),
            _ => self.with_str(|a| other.with_str(|b| a.cmp(b))),
        }
    }
}

impl PartialOrd for MessageId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.pad(s))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| write!(f, "MessageId({s})"))
    }
}

impl FromStr for MessageId {
    type Err = MessageIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_opaque(s)
    }
}

impl TryFrom<&str> for MessageId {
    type Error = MessageIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse_opaque(s)
    }
}

impl TryFrom<String> for MessageId {
    type Error = MessageIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(&s)?;
        if let Some(ulid) = canonical_ulid(&s) {
            return Ok(Self::from_ulid(ulid));
        }
        Ok(Self(Repr::Text(Arc::new(s))))
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_str(|id| s.serialize_str(id))
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MessageId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message id string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MessageId, E> {
                MessageId::parse_opaque(v).map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<MessageId, E> {
                let s = std::str::from_utf8(v)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(v), &self))?;
                self.visit_str(s)
            }
        }
        d.deserialize_str(V)
    }
}

/// A string that is not a valid message id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageIdError {
    /// The string is empty.
    #[error("invalid message id: empty")]
    Empty,
    /// The string is longer than [`MessageId::MAX_LEN`].
    #[error("invalid message id: {len} bytes, the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The string has a byte outside visible ASCII (a space, a control character, non-ASCII).
    #[error(
        "invalid message id {input:?}: byte {at} is not visible ASCII \
         (ids are 1 to 256 characters from '!' to '~', no spaces)"
    )]
    InvalidByte {
        /// The refused string.
        input: String,
        /// Index of the first refused byte.
        at: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_draw_in_two_processes_gives_two_ids() {
        // A forked child draws what its parent draws; the process id tells them apart, and
        // leaves the time part as it was.
        let drawn = Ulid::from_datetime(std::time::SystemTime::now()).0;
        let parent = salted(drawn, 4242);
        let child = salted(drawn, 4243);
        assert_ne!(parent, child);
        assert_eq!(parent >> 80, drawn >> 80);
        assert_eq!(child >> 80, drawn >> 80);
        // Every process id folds in its own salt.
        let salts: std::collections::HashSet<u128> =
            (1..=100_000u32).map(|pid| salted(0, pid)).collect();
        assert_eq!(salts.len(), 100_000);
    }

    #[test]
    fn ids_of_one_millisecond_are_distinct_increasing_ulids_of_that_millisecond() {
        let now = std::time::SystemTime::now();
        let ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::made_at(now)).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        for id in &ids {
            let bits = id.as_u128().unwrap();
            assert_eq!(bits >> 80, ms, "time part of {id}");
            assert_eq!(id.to_string().parse::<MessageId>().unwrap(), *id);
        }
        // Another thread starts from a random point of its own: no id in common.
        let other: Vec<MessageId> =
            std::thread::spawn(move || (0..1000).map(|_| MessageId::made_at(now)).collect())
                .join()
                .unwrap();
        assert!(other.iter().all(|id| !ids.contains(id)));
        // A later millisecond draws afresh: its ids sort after.
        let later = MessageId::made_at(now + std::time::Duration::from_millis(1));
        assert!(later > ids[999]);
    }
    /// After `forget_run` (a forked child's first step), the next id of the same millisecond is
    /// a fresh draw, not the last id plus one (which a forked parent makes next too).
    #[test]
    fn after_forget_run_the_next_id_does_not_continue_the_run() {
        let now = std::time::SystemTime::now();
        let last = MessageId::made_at(now).as_u128().unwrap();
        assert_eq!(MessageId::made_at(now).as_u128(), Some(last + 1), "a run");
        forget_run();
        let fresh = MessageId::made_at(now).as_u128().unwrap();
        assert_eq!(fresh >> 80, last >> 80, "the same millisecond");
        assert_ne!(fresh, last + 2, "continued the run after forget_run");
    }
    use proptest::prelude::*;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    fn hash(id: &MessageId) -> u64 {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    }

    #[test]
    fn made_ids_are_ulids_that_parse_back() {
        let id = MessageId::new();
        assert!(id.is_ulid());
        let s = id.to_string();
        assert_eq!(s.len(), 26);
        let back: MessageId = s.parse().unwrap();
        assert_eq!(back, id);
        assert_eq!(back.as_u128(), id.as_u128());
    }

    /// The one low word the 16-byte form cannot hold as bits: such a ULID is kept as its
    /// text and still behaves as the ULID it is, whichever way it was made.
    #[test]
    fn the_ulid_with_the_reserved_low_word_is_still_a_ulid() {
        let v = (0x0190_0000_0000_0001_u128 << 64) | u128::from(RESERVED_LOW);
        let made = MessageId::from_u128(v);
        let parsed: MessageId = Ulid(v).to_string().parse().unwrap();
        let from_string = MessageId::try_from(Ulid(v).to_string()).unwrap();
        for id in [&made, &parsed, &from_string] {
            assert!(id.is_ulid());
            assert_eq!(id.as_u128(), Some(v));
            assert_eq!(id.to_string(), Ulid(v).to_string());
            assert_eq!(*id, made);
            assert_eq!(hash(id), hash(&made));
        }
        // It orders among ULID ids by its number, as their strings do.
        let below = MessageId::from_u128(v - 1);
        let above = MessageId::from_u128(v + 1);
        assert!(below < made && made < above);
        assert!(above > made && made > below);
        assert_eq!(below.as_u128(), Some(v - 1));
        assert_eq!(above.as_u128(), Some(v + 1));
    }

    #[test]
    fn foreign_ids_are_kept_as_they_are() {
        for s in [
            "6f1c2a9e-4b7d-4c3e-9a51-0d2e8f7b3c14",
            "corr-42",
            "x",
            "01arz3ndektsv4rrffq69g5fav", // a ULID in lower case: kept lower case
            "81ARZ3NDEKTSV4RRFFQ69G5FAV", // overflows 128 bits: not a ULID
            "01ARZ3NDEKTSV4RRFFQ69G5FAVX",
        ] {
            let id: MessageId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            assert!(!id.is_ulid(), "{s}");
            assert_eq!(id.as_u128(), None);
        }
        let ulid: MessageId = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
        assert!(ulid.is_ulid());
        assert_eq!(ulid.to_string(), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    }

    #[test]
    fn invalid_ids_are_refused_with_the_reason() {
        assert_eq!("".parse::<MessageId>(), Err(MessageIdError::Empty));
        let long = "a".repeat(MessageId::MAX_LEN + 1);
        assert_eq!(
            long.parse::<MessageId>(),
            Err(MessageIdError::TooLong { len: 257, max: 256 })
        );
        assert!("a".repeat(MessageId::MAX_LEN).parse::<MessageId>().is_ok());
        for (s, at) in [
            ("has space", 3),
            ("tab\t", 3),
            ("new\nline", 3),
            ("grüße", 2),
        ] {
            match s.parse::<MessageId>() {
                Err(MessageIdError::InvalidByte { input, at: got }) => {
                    assert_eq!((input.as_str(), got), (s, at));
                }
                other => panic!("{s:?}: {other:?}"),
            }
        }
        let msg = "a b".parse::<MessageId>().unwrap_err().to_string();
        assert!(
            msg.contains("\"a b\"") && msg.contains("visible ASCII"),
            "{msg}"
        );
    }

    #[test]
    fn serde_is_a_plain_string_and_reads_ids_written_before() {
        // The JSON an id had when MessageId was a bare ULID.
        let old = "\"01ARZ3NDEKTSV4RRFFQ69G5FAV\"";
        let id: MessageId = serde_json::from_str(old).unwrap();
        assert!(id.is_ulid());
        assert_eq!(serde_json::to_string(&id).unwrap(), old);
        let text: MessageId = serde_json::from_str("\"corr-42\"").unwrap();
        assert_eq!(serde_json::to_string(&text).unwrap(), "\"corr-42\"");
        let err = serde_json::from_str::<MessageId>("\"a b\"").unwrap_err();
        assert!(err.to_string().contains("visible ASCII"), "{err}");
        assert!(serde_json::from_str::<MessageId>("7").is_err());
    }

    #[test]
    fn display_honours_padding() {
        let id: MessageId = "ab".parse().unwrap();
        assert_eq!(format!("{id:>4}|{id:<4}|"), "  ab|ab  |");
        assert_eq!(format!("{id:?}"), "MessageId(ab)");
    }

    #[test]
    fn made_ids_sort_by_creation() {
        let a = MessageId::from_u128(1 << 90);
        let b = MessageId::from_u128((1 << 90) + 1);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    fn id_string() -> impl Strategy<Value = String> {
        prop_oneof![
            // Arbitrary visible ASCII, 1..=256 bytes.
            "[!-~]{1,256}",
            // Things that look like ULIDs (canonical or not).
            "[0-9A-Za-z]{26}",
            "[0-7][0-9A-HJKMNP-TV-Z]{25}",
            any::<u128>().prop_map(|v| Ulid(v).to_string()),
        ]
    }

    proptest! {
        #[test]
        fn every_accepted_id_prints_back_byte_identically(s in id_string()) {
            let id: MessageId = s.parse().unwrap();
            prop_assert_eq!(id.to_string(), s.clone());
            let owned = MessageId::try_from(s.clone()).unwrap();
            prop_assert_eq!(&owned, &id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        }

        #[test]
        fn eq_hash_and_order_follow_the_string(a in id_string(), b in id_string()) {
            let (x, y): (MessageId, MessageId) = (a.parse().unwrap(), b.parse().unwrap());
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            if x == y {
                prop_assert_eq!(hash(&x), hash(&y));
            }
        }

        #[test]
        fn ulid_and_text_ids_order_as_strings(v in any::<u128>(), t in "[!-~]{1,40}") {
            let u = MessageId::from_u128(v);
            let x: MessageId = t.parse().unwrap();
            prop_assert_eq!(u.cmp(&x), u.to_string().cmp(&t));
        }
    }
}
