use std::time::SystemTime;

use super::{DeadLetter, DeadLetterReason};
use crate::topic::Pattern;
use smol_str::SmolStr;

/// Which dead letters an operation applies to. Every field left `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetterFilter {
    /// Topic pattern (`billing.#`).
    pub topic: Option<Pattern>,
    /// Broad reason.
    pub reason: Option<DeadLetterReason>,
    /// Text the error chain must contain (e.g. an error type or message).
    pub error_contains: Option<String>,
    /// Handler that gave up.
    pub handler: Option<SmolStr>,
    /// Dead-lettered at or after.
    pub since: Option<SystemTime>,
    /// Dead-lettered before.
    pub until: Option<SystemTime>,
    /// At most this many (listing only).
    pub limit: Option<usize>,
}

impl DeadLetterFilter {
    /// A filter matching everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only topics matching `pattern`.
    pub fn topic(mut self, pattern: Pattern) -> Self {
        self.topic = Some(pattern);
        self
    }

    /// Only this reason.
    pub fn reason(mut self, reason: DeadLetterReason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Only errors containing `text`.
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// Only this handler.
    pub fn handler(mut self, handler: impl Into<SmolStr>) -> Self {
        self.handler = Some(handler.into());
        self
    }

    /// Only entries dead-lettered at or after `t`.
    pub fn since(mut self, t: SystemTime) -> Self {
        self.since = Some(t);
        self
    }

    /// Only entries dead-lettered before `t`.
    pub fn until(mut self, t: SystemTime) -> Self {
        self.until = Some(t);
        self
    }

    /// At most `n` entries.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// True when `letter` passes every condition (the limit aside).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.topic
            .as_ref()
            .is_none_or(|p| p.matches(&letter.envelope.topic))
            && self.reason.is_none_or(|r| r == letter.reason)
            && self
                .error_contains
                .as_ref()
                .is_none_or(|t| letter.error.contains(t.as_str()))
            && self
                .handler
                .as_ref()
                .is_none_or(|h| letter.handler.as_ref() == Some(h))
            && self.since.is_none_or(|t| letter.dead_lettered_at >= t)
            && self.until.is_none_or(|t| letter.dead_lettered_at < t)
    }
}
