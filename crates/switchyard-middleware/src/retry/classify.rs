use std::error::Error;
use std::fmt;
use std::sync::Arc;

use switchyard_core::error::is_codec_failure;
use switchyard_core::{BoxError, Permanent};

use crate::breaker::BreakerOpenError;
use crate::catch_panic::PanicError;
use crate::timeout::TimeoutError;

/// A typed error that knows whether trying again may help.
///
/// Register the type with [`Classifier::retryable`] (and the classifier with
/// `RetryPolicy::classifier`) so the retry layer can find it in a boxed error chain.
///
/// ```
/// use switchyard_middleware::retry::{Classifier, Retryable};
/// #[derive(Debug, thiserror::Error)]
/// enum DbError { #[error("connection lost")] Connection, #[error("constraint violated")] Constraint }
/// impl Retryable for DbError {
///     fn is_retryable(&self) -> bool { matches!(self, DbError::Connection) }
/// }
/// let c = Classifier::default().retryable::<DbError>();
/// assert!(c.is_retryable(&DbError::Connection));
/// assert!(!c.is_retryable(&DbError::Constraint));
/// ```
pub trait Retryable: Error + Send + Sync + 'static {
    /// True when the same message may succeed on another attempt.
    fn is_retryable(&self) -> bool;
}

/// Marks an error as transient: the retry layer retries it while attempts remain.
#[derive(Debug)]
pub struct Transient(pub BoxError);

impl Transient {
    /// Wraps any error as a transient one, boxed, ready to return from a handler.
    pub fn boxed(err: impl Into<BoxError>) -> BoxError {
        Box::new(Self(err.into()))
    }
}

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("transient failure")
    }
}

impl Error for Transient {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

type Rule = Arc<dyn Fn(&(dyn Error + 'static)) -> Option<bool> + Send + Sync>;

/// Decides whether an error is worth another attempt.
///
/// The chain of the error (the error, then its `source()`s) is walked from the outside in;
/// the first link that something recognises decides:
/// 1. [`Permanent`] (`switchyard_core::Permanent`) → no, [`Transient`] → yes;
///    a [`CodecError`] (the bus could not decode the payload for a typed handler, or a
///    typed reply or publish could not be encoded: the same bytes never decode, the same
///    value encodes the same way each time) → no, also as the encode error of a
///    [`PublishError`] or a [`SendError`] (`ctx.publish(..)?`, `ctx.send(..)?`);
/// 2. [`PanicError`] → [`Classifier::retry_panics`] (default: no);
/// 3. [`TimeoutError`] → [`Classifier::retry_timeouts`] (default: yes);
/// 4. [`BreakerOpenError`] → yes (the next attempt waits for the breaker);
/// 5. registered [`Retryable`] types and custom rules, in registration order.
///
/// When no link is recognised, [`Classifier::unknown_retryable`] decides (default: yes).
#[derive(Clone)]
pub struct Classifier {
    retry_panics: bool,
    retry_timeouts: bool,
    unknown: bool,
    rules: Vec<Rule>,
}

impl Default for Classifier {
    fn default() -> Self {
        Self {
            retry_panics: false,
            retry_timeouts: true,
            unknown: true,
            rules: Vec::new(),
        }
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("retry_panics", &self.retry_panics)
            .field("retry_timeouts", &self.retry_timeouts)
            .field("unknown", &self.unknown)
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl Classifier {
    /// Whether a handler panic is retried (default: false: a panic usually repeats).
    pub fn retry_panics(mut self, yes: bool) -> Self {
        self.retry_panics = yes;
        self
    }

    /// Whether a timed-out call is retried (default: true).
    pub fn retry_timeouts(mut self, yes: bool) -> Self {
        self.retry_timeouts = yes;
        self
    }

    /// Whether an error nothing recognises is retried (default: true).
    pub fn unknown_retryable(mut self, yes: bool) -> Self {
        self.unknown = yes;
        self
    }

    /// Recognises errors of type `E` anywhere in the chain and asks them.
    pub fn retryable<E: Retryable>(mut self) -> Self {
        self.rules.push(Arc::new(|e: &(dyn Error + 'static)| {
            e.downcast_ref::<E>().map(Retryable::is_retryable)
        }));
        self
    }

    /// Adds a custom rule: `Some(true)` retry, `Some(false)` give up, `None` ask the next rule.
    /// It is called for every link of the chain.
    pub fn rule<F>(mut self, rule: F) -> Self
    where
        F: Fn(&(dyn Error + 'static)) -> Option<bool> + Send + Sync + 'static,
    {
        self.rules.push(Arc::new(rule));
        self
    }

    /// True when `err` is worth another attempt.
    pub fn is_retryable(&self, err: &(dyn Error + 'static)) -> bool {
        let mut link = Some(err);
        while let Some(e) = link {
            if let Some(decision) = self.decide(e) {
                return decision;
            }
            link = e.source();
        }
        self.unknown
    }

    fn decide(&self, e: &(dyn Error + 'static)) -> Option<bool> {
        // A hand-back is for the bus to give to the transport, not for another attempt here.
        if e.is::<Permanent>() || e.is::<switchyard_core::HandBack>() {
            return Some(false);
        }
        if e.is::<Transient>() {
            return Some(true);
        }
        if is_codec_failure(e) {
            return Some(false);
        }
        if e.is::<PanicError>() {
            return Some(self.retry_panics);
        }
        if e.is::<TimeoutError>() {
            return Some(self.retry_timeouts);
        }
        if e.is::<BreakerOpenError>() {
            return Some(true);
        }
        self.rules.iter().find_map(|rule| rule(e))
    }
}

impl switchyard_core::retry::Classify for Classifier {
    fn is_retryable(&self, err: &(dyn Error + 'static)) -> bool {
        Classifier::is_retryable(self, err)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchyard_core::{CodecDirection, CodecError, PublishError, SendError};

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("typed {0}")]
    struct Typed(bool);
    impl Retryable for Typed {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Typed);

    #[test]
    fn defaults() {
        let c = Classifier::default();
        let panic = PanicError {
            message: "x".into(),
        };
        assert!(!c.is_retryable(&panic));
        assert!(c.clone().retry_panics(true).is_retryable(&panic));
        let timeout = TimeoutError {
            timeout: Duration::from_secs(1),
        };
        assert!(c.is_retryable(&timeout));
        assert!(!c.clone().retry_timeouts(false).is_retryable(&timeout));
        let unknown: BoxError = "plain".into();
        assert!(c.is_retryable(&*unknown));
        assert!(!c.clone().unknown_retryable(false).is_retryable(&*unknown));
    }

    #[test]
    fn markers_win() {
        let c = Classifier::default();
        let permanent: BoxError = Permanent::new("x").into();
        assert!(!c.is_retryable(&*permanent));
        let c = c.unknown_retryable(false);
        assert!(c.is_retryable(&*Transient::boxed("x")));
        // A marker around a panic decides before the panic does.
        assert!(c.is_retryable(&*Transient::boxed(PanicError {
            message: "p".into()
        })));
    }

    #[test]
    fn typed_errors_found_in_chain() {
        let c = Classifier::default()
            .unknown_retryable(true)
            .retryable::<Typed>();
        assert!(!c.is_retryable(&Outer(Typed(false))));
        assert!(c.is_retryable(&Outer(Typed(true))));
        let plain = Classifier::default().unknown_retryable(false);
        assert!(!plain.is_retryable(&Outer(Typed(true))));
    }

    #[test]
    fn a_codec_failure_is_permanent_even_inside_a_chain() {
        let codec = |direction| CodecError {
            direction,
            type_name: "T",
            source: "bad bytes".into(),
        };
        let c = Classifier::default();
        assert!(!c.is_retryable(&codec(CodecDirection::Decode)));
        assert!(!c.is_retryable(&Outer2(codec(CodecDirection::Decode))));
        // Nor an encoding one: the same value encodes the same way each time, also as a
        // publish's or a send's error.
        assert!(!c.is_retryable(&codec(CodecDirection::Encode)));
        assert!(!c.is_retryable(&Outer2(codec(CodecDirection::Encode))));
        assert!(!c.is_retryable(&PublishError::Encode(codec(CodecDirection::Encode))));
        assert!(!c.is_retryable(&SendError::Codec(codec(CodecDirection::Encode))));
        // A sender's reply that does not decode is the unknown default's call.
        assert!(c.is_retryable(&SendError::Codec(codec(CodecDirection::Decode))));
        // A marker outside it still wins.
        assert!(c.is_retryable(&*Transient::boxed(codec(CodecDirection::Decode))));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Outer2(#[source] CodecError);

    #[test]
    fn custom_rule() {
        let c = Classifier::default().rule(|e| e.to_string().contains("fatal").then_some(false));
        let fatal: BoxError = "fatal thing".into();
        let other: BoxError = "other".into();
        assert!(!c.is_retryable(&*fatal));
        assert!(c.is_retryable(&*other));
    }
}
