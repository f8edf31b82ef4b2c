//! How one handler call ended ([`Attempt`]), how [`SubShared::process`] left a message
//! ([`Handled`]), and the error-chain helpers that classify and describe a failure.
//!
//! [`SubShared::process`]: crate::state::SubShared

use std::time::Duration;

use switchyard_core::{CodecDirection, CodecError, DeadLetterReason, Envelope, Permanent};

use crate::pending::Settled;

/// How [`SubShared::process`](crate::state::SubShared) left a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handled {
    /// Acked or replied.
    Done,
    /// Dead-lettered (rejected, undecodable, failed for good or out of attempts).
    DeadLettered,
    /// A transport's delivery its handler handed back ([`HandBack`]): to be nacked (after
    /// the delay asked for, in milliseconds).
    HandedBack {
        after_ms: Option<u32>,
        /// Attempts made at it before the hand-back.
        made: u32,
    },
}

impl Handled {
    /// How its pending guard is settled.
    pub(crate) fn settled(self) -> Settled {
        match self {
            Handled::Done => Settled::Acked,
            Handled::DeadLettered => Settled::DeadLettered,
            Handled::HandedBack { .. } => Settled::Nacked,
        }
    }
}

/// How one handler call ended. Moved once per attempt, so kept small: a reply stays in the
/// box the handler's [`Outcome::Reply`] put it in.
pub(crate) enum Attempt {
    /// Acked, or replied (a typed output for a typed sender comes beside it: see
    /// [`SubShared::attempt_typed`]).
    Done(Option<Box<Envelope>>),
    /// Refused for good.
    Rejected(String),
    /// The payload did not decode (not retried).
    Undecodable { text: String, display: String },
    /// The handler asked for the message to go back to its transport ([`HandBack`]): the
    /// error's text, and the delay asked for.
    HandedBack(String, Option<Duration>),
    /// Error, panic or retry request: try again or dead-letter.
    Failed {
        reason: DeadLetterReason,
        error: String,
        delay: Option<Duration>,
        /// No further attempts (the handler returned [`Permanent`]).
        permanent: bool,
        /// The number of the last attempt made: this call's, or the last one a retry layer
        /// inside the handler made.
        last_attempt: u32,
    },
}

/// The number of the last attempt a retry layer inside the handler made, when the error
/// comes from one (`switchyard_middleware::retry::RetryError`); else `attempt`, this call's.
#[cfg(feature = "middleware")]
pub(crate) fn attempts_inside(e: &(dyn std::error::Error + 'static), attempt: u32) -> u32 {
    switchyard_middleware::retry::RetryError::find(e)
        .map_or(attempt, |r| r.last_attempt(attempt).max(attempt))
}

/// Without the `middleware` feature no retry layer is known: this call's number.
#[cfg(not(feature = "middleware"))]
pub(crate) fn attempts_inside(_e: &(dyn std::error::Error + 'static), attempt: u32) -> u32 {
    attempt
}

/// The attempts a command took when it ended at `attempt` of the bus's: more when a layer
/// inside the handler (the resilience stack's retry) made attempts of its own and noted
/// them ([`switchyard_core::delivered::note_attempts`]), taken from this thread right after
/// the call ended.
#[inline(always)]
pub(crate) fn attempts_taken(id: &switchyard_core::MessageId, attempt: u32) -> u32 {
    switchyard_core::delivered::take_noted_attempts(id).map_or(attempt, |n| n.max(attempt))
}

/// Whether a handler's panic, captured by a middleware inside it (the resilience stack's
/// `CatchPanic`), is in `e`'s chain: the bus files it as a panic, as one it caught itself.
/// The middleware's own rule for that (`dlq::failure_reason`, which its dead-letter layer
/// uses) decides.
#[cfg(feature = "middleware")]
pub(crate) fn panicked_inside(e: &(dyn std::error::Error + 'static)) -> bool {
    switchyard_middleware::dlq::failure_reason(e) == DeadLetterReason::Panicked
}

/// Without the `middleware` feature no panic-capturing layer is known.
#[cfg(not(feature = "middleware"))]
pub(crate) fn panicked_inside(_e: &(dyn std::error::Error + 'static)) -> bool {
    false
}

/// The payload decoding error in `e`'s chain, if any: a typed handler's decode failure, also
/// when a middleware (a retry layer's `Permanent(RetryError(..))`) wrapped it.
pub(crate) fn decode_failure<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CodecError> {
    links(e)
        .filter_map(|l| l.downcast_ref::<CodecError>())
        .find(|c| c.direction == CodecDirection::Decode)
}

/// `e` and its sources, outermost first.
pub(crate) fn links<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |l| l.source())
}

/// The error and its sources, joined with `: `; a source whose text the link before already
/// ends with is not repeated. A [`Permanent`] marker next to a link that
/// already says "permanent failure" (a retry layer's final error) is left out: the chain of
/// a permanent error that went through a retry layer says it once (review rev25).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let texts: Vec<(bool, String)> = links(e)
        .map(|l| (l.is::<Permanent>(), l.to_string()))
        .collect();
    let says_permanent = |i: usize| {
        texts
            .get(i)
            .is_some_and(|(marker, t)| !marker && t.starts_with(PERMANENT_TEXT))
    };
    let mut text = String::new();
    for (i, (marker, t)) in texts.iter().enumerate() {
        if *marker && ((i > 0 && says_permanent(i - 1)) || says_permanent(i + 1)) {
            continue;
        }
        // A link whose text the one before already ends with (its `Display` embeds its
        // source, as `CodecError`'s and most `thiserror` messages do) adds nothing: the
        // chain says it once (review rev29: "upcasting … failed: X: upcasting … failed: X: X").
        if !text.is_empty() && text.ends_with(t.as_str()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(t);
    }
    text
}

/// What a [`Permanent`] marker says.
const PERMANENT_TEXT: &str = "permanent failure";

#[cfg(test)]
mod chain_tests {
    use super::*;
    use switchyard_core::BoxError;

    #[derive(Debug, thiserror::Error)]
    #[error("permanent failure on attempt 1")]
    struct GaveUp(#[source] BoxError);

    #[test]
    fn a_permanent_error_through_a_retry_layer_says_permanent_once() {
        let inner: BoxError = Box::new(Permanent::new("group failed"));
        let e = Permanent::new(GaveUp(inner));
        assert_eq!(
            error_chain(&e),
            "permanent failure on attempt 1: group failed"
        );
        let plain = Permanent::new("invalid order");
        assert_eq!(error_chain(&plain), "permanent failure: invalid order");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("upcasting `Total` from version 1 failed: {0}")]
    struct Step(#[source] BoxError);

    #[derive(Debug, thiserror::Error)]
    #[error("no upcaster")]
    struct Bare(#[source] BoxError);

    /// Links whose `Display` embeds their source (review rev29) are said once; links that do
    /// not are all said.
    #[test]
    fn a_source_the_link_before_already_says_is_not_repeated() {
        let codec = switchyard_core::CodecError {
            direction: switchyard_core::CodecDirection::Decode,
            type_name: "Total",
            source: Box::new(Step("`total` is not a number".into())),
        };
        assert_eq!(
            error_chain(&codec),
            "cannot decode Total: upcasting `Total` from version 1 failed: `total` is not a number"
        );
        assert_eq!(
            error_chain(&Bare("missing step".into())),
            "no upcaster: missing step"
        );
    }
}
