//! Bus-level metrics with switchyard's names and labels, for the bus and transports.

use super::names;

/// One message accepted by publish on `topic`.
pub fn published(topic: &str) {
    ::metrics::counter!(names::PUBLISHED, "topic" => topic.to_owned()).increment(1);
}

/// One message dead-lettered; `reason` is the snake_case `DeadLetterReason`.
pub fn dead_lettered(topic: &str, handler: &str, reason: &str) {
    ::metrics::counter!(
        names::DEAD_LETTERED,
        "topic" => topic.to_owned(),
        "handler" => handler.to_owned(),
        "reason" => reason.to_owned()
    )
    .increment(1);
}

/// `n` messages dropped by the queue of `subscription`.
pub fn dropped(subscription: &str, n: u64) {
    ::metrics::counter!(names::DROPPED, "subscription" => subscription.to_owned()).increment(n);
}

/// The queue of `subscription` now holds `depth` messages.
pub fn queue_depth(subscription: &str, depth: usize) {
    ::metrics::gauge!(names::QUEUE_DEPTH, "subscription" => subscription.to_owned())
        .set(depth as f64);
}

/// The dead-letter queue now holds `size` entries.
pub fn dlq_size(size: usize) {
    ::metrics::gauge!(names::DLQ_SIZE).set(size as f64);
}

/// `n` more dead letters were evicted from a full queue.
pub fn dlq_evicted(n: u64) {
    ::metrics::counter!(names::DLQ_EVICTED).increment(n);
}

/// `n` sessions are active now.
pub fn active_sessions(n: usize) {
    ::metrics::gauge!(names::ACTIVE_SESSIONS).set(n as f64);
}
