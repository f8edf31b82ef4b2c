//! Metrics through the `metrics` crate's facade, a Prometheus exporter helper and a small
//! JSON snapshot.
//!
//! [`MetricsLayer`] records, per topic and handler label:
//! - counters `switchyard_delivered_total` (every call), `switchyard_acked_total` (`Ack` and
//!   `Reply`), `switchyard_retried_total` (retries: see below), `switchyard_rejected_total`
//!   (`Reject`), `switchyard_failed_total` (errors), `switchyard_handed_back_total` (a
//!   [`HandBack`](switchyard_core::HandBack) in the error's chain: "not mine, give it back to
//!   the transport", neither a success nor a failure, so not in `failed`);
//! - histograms `switchyard_handler_duration_seconds` (call time) and
//!   `switchyard_end_to_end_latency_seconds` (from `envelope.timestamp` to the end of the call);
//! - gauge `switchyard_in_flight`.
//!
//! Placed outside the retry layer it sees one call per delivery (the final outcome); the retry
//! layer counts each of its re-attempts in `switchyard_retried_total` under the same labels
//! (the fused [`ResilienceLayer`](crate::resilience::ResilienceLayer) under the metrics
//! layer's own, its registry included), so that counter holds the retries of a handler
//! whoever makes them: the layer's re-attempts, and the calls that ended `Retry` (which only
//! a metrics layer with no retry inside it sees; the bus retries those). The same counts
//! are kept in a [`MetricsRegistry`] that renders a [`MetricsSnapshot`] (JSON) without any
//! recorder installed.
//!
//! Bus-level figures (published, dead-lettered, dropped, queue depth, DLQ size, sessions) use
//! the functions in [`record`] so every crate uses the same names ([`names`]).
//!
//! ```
//! use switchyard_core::{BoxError, Envelope, Outcome, Topic};
//! use switchyard_middleware::metrics::MetricsLayer;
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let layer = MetricsLayer::new("mailer");
//! let registry = layer.registry();
//! let svc = layer.layer(tower::service_fn(|_e: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) }));
//! svc.oneshot(Envelope::new(Topic::new("users.created")?, "{}")).await?;
//! let snap = registry.snapshot();
//! assert_eq!(snap.handlers[0].acked, 1);
//! println!("{}", snap.to_json());
//! # Ok(()) }
//! ```

mod error;
mod layer;
mod prometheus;
pub mod record;
mod registry;
mod service;

pub use error::MetricsInstallError;
pub use layer::{MetricsLayer, TopicLabel};
pub use prometheus::{PrometheusMetrics, build_prometheus, install_prometheus};
pub use registry::{DurationStats, HandlerStats, MetricsRegistry, MetricsSnapshot};
pub use service::Metrics;
pub(crate) use service::{Measured, Shared as MetricsShared, TopicCache, TopicHandles};

/// Metric names used across switchyard.
pub mod names {
    /// Counter: messages accepted by publish (labels: topic).
    pub const PUBLISHED: &str = "switchyard_published_total";
    /// Counter: handler calls (labels: topic, handler).
    pub const DELIVERED: &str = "switchyard_delivered_total";
    /// Counter: calls that ended `Ack` or `Reply` (labels: topic, handler).
    pub const ACKED: &str = "switchyard_acked_total";
    /// Counter: retries (labels: topic, handler): re-attempts made by the retry layer, and
    /// calls that ended `Retry`.
    pub const RETRIED: &str = "switchyard_retried_total";
    /// No longer recorded: the retry layer's re-attempts are counted in [`RETRIED`], one
    /// name for the retries of a handler.
    #[deprecated(note = "re-attempts are counted in `RETRIED` (switchyard_retried_total)")]
    pub const RETRIES: &str = "switchyard_retry_attempts_total";
    /// Counter: calls that ended `Reject` (labels: topic, handler).
    pub const REJECTED: &str = "switchyard_rejected_total";
    /// Counter: calls that ended in an error, a hand-back excepted (labels: topic, handler).
    pub const FAILED: &str = "switchyard_failed_total";
    /// Counter: calls that handed their message back to the transport (a `HandBack` in the
    /// error's chain; labels: topic, handler): not failures.
    pub const HANDED_BACK: &str = "switchyard_handed_back_total";
    /// Counter: messages put in the dead-letter queue (labels: topic, handler, reason).
    pub const DEAD_LETTERED: &str = "switchyard_dead_lettered_total";
    /// Counter: messages dropped by a full queue (labels: subscription).
    pub const DROPPED: &str = "switchyard_dropped_total";
    /// Counter: duplicates acked by the dedup layer (labels: handler).
    pub const DUPLICATES: &str = "switchyard_dedup_duplicates_total";
    /// Histogram: handler call time in seconds (labels: topic, handler).
    pub const HANDLER_DURATION: &str = "switchyard_handler_duration_seconds";
    /// Histogram: time from `envelope.timestamp` to the end of the call, in seconds.
    pub const END_TO_END_LATENCY: &str = "switchyard_end_to_end_latency_seconds";
    /// Gauge: messages waiting in a subscription queue (labels: subscription).
    pub const QUEUE_DEPTH: &str = "switchyard_queue_depth";
    /// Gauge: handler calls running now (labels: handler).
    pub const IN_FLIGHT: &str = "switchyard_in_flight";
    /// Gauge: breaker state, 0 closed, 1 open, 2 half-open (labels: handler).
    pub const BREAKER_STATE: &str = "switchyard_breaker_state";
    /// Counter: times a breaker opened (labels: handler).
    pub const BREAKER_OPENED: &str = "switchyard_breaker_opened_total";
    /// Gauge: entries in the dead-letter queue.
    pub const DLQ_SIZE: &str = "switchyard_dlq_size";
    /// Counter: dead letters evicted from a full queue.
    pub const DLQ_EVICTED: &str = "switchyard_dlq_evicted_total";
    /// Gauge: active sessions.
    pub const ACTIVE_SESSIONS: &str = "switchyard_active_sessions";
}

/// Registers units and descriptions of every switchyard metric with the installed recorder.
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::PUBLISHED,
        Unit::Count,
        "Messages accepted by publish"
    );
    describe_counter!(names::DELIVERED, Unit::Count, "Handler calls");
    describe_counter!(names::ACKED, Unit::Count, "Calls that ended Ack or Reply");
    describe_counter!(
        names::RETRIED,
        Unit::Count,
        "Retries: re-attempts and calls that ended Retry"
    );
    describe_counter!(names::REJECTED, Unit::Count, "Calls that ended Reject");
    describe_counter!(
        names::FAILED,
        Unit::Count,
        "Calls that ended in an error, a hand-back excepted"
    );
    describe_counter!(
        names::HANDED_BACK,
        Unit::Count,
        "Calls that handed their message back to the transport (not failures)"
    );
    describe_counter!(names::DEAD_LETTERED, Unit::Count, "Messages dead-lettered");
    describe_counter!(
        names::DROPPED,
        Unit::Count,
        "Messages dropped by full queues"
    );
    describe_counter!(names::DUPLICATES, Unit::Count, "Duplicates acked by dedup");
    describe_histogram!(names::HANDLER_DURATION, Unit::Seconds, "Handler call time");
    describe_histogram!(
        names::END_TO_END_LATENCY,
        Unit::Seconds,
        "Publish to handled"
    );
    describe_gauge!(
        names::QUEUE_DEPTH,
        Unit::Count,
        "Messages waiting per subscription"
    );
    describe_gauge!(names::IN_FLIGHT, Unit::Count, "Handler calls running");
    describe_gauge!(
        names::BREAKER_STATE,
        "Breaker state: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(names::BREAKER_OPENED, Unit::Count, "Times a breaker opened");
    describe_gauge!(
        names::DLQ_SIZE,
        Unit::Count,
        "Entries in the dead-letter queue"
    );
    describe_counter!(names::DLQ_EVICTED, Unit::Count, "Dead letters evicted");
    describe_gauge!(names::ACTIVE_SESSIONS, Unit::Count, "Active sessions");
}
