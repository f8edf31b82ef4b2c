//! Topics (where a message is published) and patterns (what a subscription listens to).
//!
//! A topic is a dot-separated list of non-empty segments: `analytics.feature.request`.
//! A pattern is a topic whose segments may also be `*` (exactly one segment) or `#`
//! (zero or more segments), with AMQP semantics: `analytics.#` matches `analytics`,
//! `analytics.feature` and `analytics.feature.request`.

use std::fmt;
use std::str::{FromStr, Split};

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicErrorKind {
    /// The string is empty.
    Empty,
    /// Two dots in a row, or a leading or trailing dot.
    EmptySegment,
    /// A space, tab, newline or other whitespace character.
    Whitespace,
    /// `*` or `#` in a topic that is published to (only patterns may hold wildcards).
    WildcardInTopic,
    /// A wildcard mixed with other characters in one segment (`ab*`, `#x`).
    PartialWildcard,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    TooLong,
}

impl TopicErrorKind {
    /// A short human-readable reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "topic is empty",
            Self::EmptySegment => "topic has an empty segment (leading, trailing or double dot)",
            Self::Whitespace => "topic contains whitespace",
            Self::WildcardInTopic => {
                "wildcards `*` and `#` are only allowed in subscription patterns"
            }
            Self::PartialWildcard => "a wildcard must be a whole segment (`a.*.c`, not `a.b*.c`)",
            Self::TooLong => "topic is longer than 255 bytes",
        }
    }
}

/// A topic or pattern string that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic {input:?}: {}", kind.reason())]
pub struct TopicError {
    /// The string that was refused (cut to 300 bytes).
    pub input: String,
    /// Why it was refused.
    pub kind: TopicErrorKind,
}

impl TopicError {
    fn new(input: &str, kind: TopicErrorKind) -> Self {
        let mut end = input.len().min(300);
        while !input.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            input: input[..end].to_owned(),
            kind,
        }
    }
}

/// [`validate_segments`] in one pass over the bytes, falling back to it at the first
/// non-ASCII byte: the general path (a `str` split and a `char` scan per segment) cost about
/// 500 instructions per message. Gives the same verdicts (test
/// `the_ascii_validator_agrees_with_the_general_one`).
fn validate(s: &str, allow_wildcards: bool) -> Result<(), TopicError> {
    match ascii_verdict(s, allow_wildcards) {
        Verdict::Valid => Ok(()),
        Verdict::Invalid(kind) => Err(TopicError::new(s, kind)),
        Verdict::NotAscii => validate_segments(s, allow_wildcards),
    }
}

/// What [`validate`] says of a string, found without allocating (a `const fn`, so a
/// message type's static topic is judged once, at compile time: [`static_topic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A valid topic (or pattern).
    Valid,
    /// Refused, for this reason.
    Invalid(TopicErrorKind),
    /// Has a non-ASCII byte: [`validate_segments`] judges it.
    NotAscii,
}

/// [`validate`]'s rules over the bytes of an ASCII string, in one pass.
pub(crate) const fn ascii_verdict(s: &str, allow_wildcards: bool) -> Verdict {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Verdict::Invalid(TopicErrorKind::Empty);
    }
    if bytes.len() > MAX_TOPIC_LEN {
        return Verdict::Invalid(TopicErrorKind::TooLong);
    }
    let (mut len, mut space, mut wild) = (0usize, false, false);
    let mut i = 0;
    // One step past the end: a `.` that closes the last segment.
    while i <= bytes.len() {
        let b = if i == bytes.len() { b'.' } else { bytes[i] };
        i += 1;
        match b {
            b'.' => {
                if len == 0 {
                    return Verdict::Invalid(TopicErrorKind::EmptySegment);
                } else if space {
                    return Verdict::Invalid(TopicErrorKind::Whitespace);
                } else if wild && !allow_wildcards {
                    return Verdict::Invalid(TopicErrorKind::WildcardInTopic);
                } else if wild && len != 1 {
                    return Verdict::Invalid(TopicErrorKind::PartialWildcard);
                }
                (len, space, wild) = (0, false, false);
                continue;
            }
            // The ASCII characters `char::is_whitespace` accepts (with vertical tab, which
            // `u8::is_ascii_whitespace` leaves out).
            b' ' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r' => space = true,
            b'*' | b'#' => wild = true,
            0x80.. => return Verdict::NotAscii,
            _ => {}
        }
        len += 1;
    }
    Verdict::Valid
}

/// The topic of a message type, `T::TOPIC`: judged once per type at compile time
/// ([`ascii_verdict`] in a constant), so a typed publish does not validate it again. An
/// invalid topic gives the same error as [`Topic::from_static`] (built then, on the error
/// path); a non-ASCII one is validated on each call.
pub(crate) fn static_topic<T: crate::Message>() -> Result<Topic, TopicError> {
    struct Judged<T>(std::marker::PhantomData<T>);
    impl<T: crate::Message> Judged<T> {
        const VERDICT: Verdict = ascii_verdict(T::TOPIC, false);
    }
    match Judged::<T>::VERDICT {
        Verdict::Valid => Ok(Topic(SmolStr::new_static(T::TOPIC))),
        Verdict::Invalid(_) | Verdict::NotAscii => Topic::from_static(T::TOPIC),
    }
}

/// The per-segment rules, for any topic (the path of topics with non-ASCII characters).
fn validate_segments(s: &str, allow_wildcards: bool) -> Result<(), TopicError> {
    for segment in s.split('.') {
        if segment.is_empty() {
            return Err(TopicError::new(s, TopicErrorKind::EmptySegment));
        }
        if segment.chars().any(char::is_whitespace) {
            return Err(TopicError::new(s, TopicErrorKind::Whitespace));
        }
        let has_wildcard = segment.contains(['*', '#']);
        if has_wildcard {
            if !allow_wildcards {
                return Err(TopicError::new(s, TopicErrorKind::WildcardInTopic));
            }
            if segment != "*" && segment != "#" {
                return Err(TopicError::new(s, TopicErrorKind::PartialWildcard));
            }
        }
    }
    Ok(())
}

/// A validated topic that messages are published to: `analytics.feature.request`.
///
/// Cheap to clone (short topics are stored inline, longer ones are reference counted).
///
/// ```
/// use switchyard_core::Topic;
/// let t = Topic::new("analytics.feature.request")?;
/// assert_eq!(t.segments().count(), 3);
/// assert!(Topic::new("analytics..request").is_err());
/// assert!(Topic::new("analytics.*").is_err());
/// # Ok::<(), switchyard_core::TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Topic(SmolStr);

impl Topic {
    /// A topic that owns nothing (its text inline), left in a vacant envelope
    /// (`Envelope::take_out`).
    pub(crate) const VACANT: Self = Self(SmolStr::new_inline("vacant"));

    /// Validates `s` as a publishable topic.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        validate(s, false)?;
        Ok(Self(SmolStr::new(s)))
    }

    /// Builds a topic from a `'static` string without allocating. Validates it.
    pub fn from_static(s: &'static str) -> Result<Self, TopicError> {
        validate(s, false)?;
        Ok(Self(SmolStr::new_static(s)))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated segments.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// The first segment (the domain, by the `<domain>.<action>.<phase>` convention).
    pub fn domain(&self) -> &str {
        self.0.split('.').next().unwrap_or_default()
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = SmolStr::deserialize(d)?;
        validate(&s, false).map_err(serde::de::Error::custom)?;
        Ok(Self(s))
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = TopicError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", self.0.as_str())
    }
}

/// A validated subscription pattern: a topic whose segments may be `*` (one segment)
/// or `#` (zero or more segments).
///
/// ```
/// use switchyard_core::{Pattern, Topic};
/// let p = Pattern::new("analytics.#")?;
/// assert!(p.matches(&Topic::new("analytics")?));
/// assert!(p.matches(&Topic::new("analytics.feature.request")?));
/// assert!(!Pattern::new("analytics.*")?.matches(&Topic::new("analytics")?));
/// # Ok::<(), switchyard_core::TopicError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Pattern(SmolStr);

impl Pattern {
    /// Validates `s` as a pattern.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        validate(s, true)?;
        Ok(Self(SmolStr::new(s)))
    }

    /// `#`: the pattern that matches every topic.
    pub fn all() -> Self {
        Self(SmolStr::new_static("#"))
    }

    /// The pattern as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated segments.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// True when the pattern has no wildcard, so it matches exactly one topic.
    pub fn is_exact(&self) -> bool {
        !self.0.contains(['*', '#'])
    }

    /// Matches one topic against this pattern.
    ///
    /// Takes at most (topic segments + 1) × (pattern segments) steps whatever the number of
    /// `#` (a pattern like `#.#.#.#.z` must not make one publish slow), and allocates
    /// nothing. The bus's router uses a trie and is checked against it; it is checked
    /// against the plain recursive definition in the tests.
    pub fn matches(&self, topic: &Topic) -> bool {
        matches_segments(self.segments(), topic.segments())
    }

    /// True when some topic matches both patterns (the question a router, a stream or a
    /// topology asks when it compares two subscriptions).
    ///
    /// A table over (suffix of `self`, suffix of `other`), filled from the ends: at most
    /// (segments of `self` + 1) × (segments of `other` + 1) steps, however many `#` either
    /// holds (trying every way the `#`s of both could absorb each other's segments takes
    /// exponential time).
    ///
    /// ```
    /// use switchyard_core::Pattern;
    /// let p = |s| Pattern::new(s).unwrap();
    /// assert!(p("staging.*.processed").overlaps(&p("staging.load.processed")));
    /// assert!(p("a.#").overlaps(&p("#.z")));
    /// assert!(!p("a.*").overlaps(&p("a.b.c")));
    /// ```
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let a: Vec<&str> = self.segments().collect();
        let b: Vec<&str> = other.segments().collect();
        let (la, lb) = (a.len(), b.len());
        let width = lb + 1;
        // rest[i * width + j]: whether some topic matches both a[i..] and b[j..].
        let mut rest = vec![false; (la + 1) * width];
        for i in (0..=la).rev() {
            for j in (0..=lb).rev() {
                let at = |i: usize, j: usize| rest[i * width + j];
                let value = match (a.get(i), b.get(j)) {
                    (None, None) => true,
                    // `#` matches nothing more, or takes one more segment of the other side.
                    (Some(&"#"), _) => at(i + 1, j) || (j < lb && at(i, j + 1)),
                    (_, Some(&"#")) => at(i, j + 1) || (i < la && at(i + 1, j)),
                    (None, _) | (_, None) => false,
                    (Some(x), Some(y)) => (*x == "*" || *y == "*" || x == y) && at(i + 1, j + 1),
                };
                rest[i * width + j] = value;
            }
        }
        rest[0]
    }
}

/// Glob matching on segments, where `#` is the "any sequence" wildcard and `*` the "any one"
/// wildcard: the greedy algorithm with backtracking to the most recent `#` only. Going back
/// further is never needed: whatever an earlier `#` could absorb, the later one can too, so
/// each topic position is retried at most once per pattern position.
fn matches_segments<'a>(mut p: Split<'a, char>, mut t: Split<'a, char>) -> bool {
    // After the most recent `#`: the pattern after it, and the topic where it stopped
    // absorbing segments.
    let mut resume: Option<(Split<'a, char>, Split<'a, char>)> = None;
    loop {
        let t_here = t.clone();
        let Some(tseg) = t.next() else {
            break;
        };
        match p.next() {
            Some("#") => {
                // Absorb nothing for now; absorb more on a later mismatch.
                resume = Some((p.clone(), t_here.clone()));
                t = t_here;
                continue;
            }
            Some(seg) if seg == "*" || seg == tseg => continue,
            _ => {}
        }
        match &mut resume {
            Some((after_hash, absorbed_to)) => {
                // The `#` absorbs one more segment; the rest of the pattern starts after it.
                absorbed_to.next();
                p = after_hash.clone();
                t = absorbed_to.clone();
            }
            None => return false,
        }
    }
    // The topic is used up: what is left of the pattern must match nothing.
    p.all(|seg| seg == "#")
}

impl From<Topic> for Pattern {
    fn from(t: Topic) -> Self {
        Self(t.0)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = SmolStr::deserialize(d)?;
        validate(&s, true).map_err(serde::de::Error::custom)?;
        Ok(Self(s))
    }
}

impl FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Pattern {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::Just;

    #[test]
    fn validation_kinds() {
        let kind = |s: &str| Topic::new(s).err().map(|e| e.kind);
        assert_eq!(kind(""), Some(TopicErrorKind::Empty));
        assert_eq!(kind("a..b"), Some(TopicErrorKind::EmptySegment));
        assert_eq!(kind(".a"), Some(TopicErrorKind::EmptySegment));
        assert_eq!(kind("a."), Some(TopicErrorKind::EmptySegment));
        assert_eq!(kind("a b"), Some(TopicErrorKind::Whitespace));
        assert_eq!(kind("a.*"), Some(TopicErrorKind::WildcardInTopic));
        assert_eq!(kind("a.#"), Some(TopicErrorKind::WildcardInTopic));
        assert_eq!(kind(&"a".repeat(256)), Some(TopicErrorKind::TooLong));
        assert_eq!(kind(&"a".repeat(255)), None);
        assert_eq!(
            Pattern::new("a.b*").err().map(|e| e.kind),
            Some(TopicErrorKind::PartialWildcard)
        );
        assert!(Pattern::new("#.a.*.#").is_ok());
    }

    /// The obviously right matcher (exponential with many `#`): what `Pattern::matches`
    /// must agree with.
    fn reference(p: &[&str], t: &[&str]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((&"#", rest)) => (0..=t.len()).any(|skip| reference(rest, &t[skip..])),
            Some((&seg, rest)) => match t.split_first() {
                Some((&tseg, trest)) => (seg == "*" || seg == tseg) && reference(rest, trest),
                None => false,
            },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn matches_agrees_with_reference(
            p in proptest::collection::vec(
                proptest::prop_oneof![Just("a"), Just("b"), Just("*"), Just("#")], 1..9),
            t in proptest::collection::vec(proptest::prop_oneof![Just("a"), Just("b")], 1..12),
        ) {
            let pattern = Pattern::new(&p.join(".")).unwrap();
            let topic = Topic::new(&t.join(".")).unwrap();
            proptest::prop_assert_eq!(pattern.matches(&topic), reference(&p, &t), "{} vs {}", pattern, topic);
        }
    }

    /// Issue 13 item 6: eight `#` against the topic with the most segments (128 one-byte
    /// segments make 255 bytes) used to take C(n+k, k) steps, practically forever.
    #[test]
    fn many_hashes_against_the_longest_topic_finish() {
        let pattern = Pattern::new("#.#.#.#.#.#.#.#.z").unwrap();
        let miss = Topic::new(&["a"; 128].join(".")).unwrap();
        let mut segs = vec!["a"; 127];
        segs.push("z");
        let hit = Topic::new(&segs.join(".")).unwrap();
        assert_eq!(miss.as_str().len(), MAX_TOPIC_LEN);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send((pattern.matches(&miss), pattern.matches(&hit)));
        });
        // A guard, not a timing claim: the linear matcher takes microseconds.
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("matching did not finish within 5 s");
        assert_eq!(got, (false, true));
    }

    /// The obviously right overlap test (exponential with many `#`): what
    /// `Pattern::overlaps` must agree with.
    fn reference_overlap(p: &[&str], q: &[&str]) -> bool {
        match (p.split_first(), q.split_first()) {
            (None, None) => true,
            (Some((&"#", pr)), _) => {
                reference_overlap(pr, q) || (!q.is_empty() && reference_overlap(p, &q[1..]))
            }
            (_, Some((&"#", qr))) => {
                reference_overlap(p, qr) || (!p.is_empty() && reference_overlap(&p[1..], q))
            }
            (Some((&x, pr)), Some((&y, qr))) => {
                (x == "*" || y == "*" || x == y) && reference_overlap(pr, qr)
            }
            _ => false,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn overlaps_agrees_with_reference_and_is_symmetric(
            p in proptest::collection::vec(
                proptest::prop_oneof![Just("a"), Just("b"), Just("*"), Just("#")], 1..8),
            q in proptest::collection::vec(
                proptest::prop_oneof![Just("a"), Just("b"), Just("*"), Just("#")], 1..8),
        ) {
            let (pp, qq) = (Pattern::new(&p.join(".")).unwrap(), Pattern::new(&q.join(".")).unwrap());
            proptest::prop_assert_eq!(pp.overlaps(&qq), reference_overlap(&p, &q), "{} vs {}", pp, qq);
            proptest::prop_assert_eq!(pp.overlaps(&qq), qq.overlaps(&pp));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// The byte validator gives the general path's verdict, error kind included, on
        /// strings made of the characters that matter (separators, wildcards, every ASCII
        /// whitespace, letters, non-ASCII letters and whitespace).
        #[test]
        fn the_ascii_validator_agrees_with_the_general_one(
            chars in proptest::collection::vec(proptest::prop_oneof![
                Just('a'), Just('b'), Just('.'), Just('*'), Just('#'), Just(' '), Just('\t'),
                Just('\n'), Just('\x0B'), Just('\x0C'), Just('\r'), Just('-'), Just('_'),
                Just('é'), Just('\u{a0}'), Just('\u{85}'),
            ], 1..12),
            wildcards in proptest::bool::ANY,
        ) {
            let s: String = chars.into_iter().collect();
            let kind = |r: Result<(), TopicError>| r.err().map(|e| e.kind);
            proptest::prop_assert_eq!(
                kind(validate(&s, wildcards)),
                kind(validate_segments(&s, wildcards)),
                "{:?}", s
            );
        }
    }

    #[test]
    fn non_ascii_topics_keep_the_general_rules() {
        assert!(Topic::new("café.menu").is_ok());
        // U+00A0 (no-break space) is whitespace to `char::is_whitespace`.
        assert_eq!(
            Topic::new("a\u{a0}b").err().map(|e| e.kind),
            Some(TopicErrorKind::Whitespace)
        );
    }

    /// The recursive overlap test the NATS transport and the components' topology used took
    /// exponential time on patterns full of `#` (found with the matcher's issue 13 item 6).
    #[test]
    fn overlap_of_patterns_full_of_hashes_finishes() {
        let many = Pattern::new(&["#"; 60].join(".")).unwrap();
        let other = Pattern::new(&[vec!["a"; 60], vec!["z"]].concat().join(".")).unwrap();
        let never = Pattern::new(&[vec!["#"; 60], vec!["y", "a"]].concat().join(".")).unwrap();
        let b = Pattern::new(&[vec!["a"; 60], vec!["b"]].concat().join(".")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send((many.overlaps(&other), never.overlaps(&b)));
        });
        // A guard, not a timing claim: the table takes microseconds.
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("overlap did not finish within 5 s");
        assert_eq!(got, (true, false));
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<Topic>("\"a..b\"").is_err());
        let t: Topic = serde_json::from_str("\"a.b\"").unwrap();
        assert_eq!(t.as_str(), "a.b");
    }
}
