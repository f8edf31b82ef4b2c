//! # switchyard-middleware
//!
//! `tower` layers that make switchyard handlers resilient and observable. A handler is a
//! `tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static`
//! with a `Send` future; every layer here takes such a service and gives one back, so they
//! stack in any order and work for events, commands and requests alike.
//!
//! | module | layer | what it does |
//! | --- | --- | --- |
//! | [`trace`] | [`TraceLayer`](trace::TraceLayer) | a span per delivery; W3C `traceparent` continued or started, passed to the handler |
//! | [`metrics`] | [`MetricsLayer`](metrics::MetricsLayer) | counters, histograms, in-flight gauge; Prometheus text; JSON snapshot |
//! | [`dedup`] | [`DedupLayer`](dedup::DedupLayer) | duplicates (by id or key) acked without calling the handler |
//! | [`retry`] | [`RetryLayer`](retry::RetryLayer) | exponential backoff, full jitter, error classification |
//! | [`breaker`] | [`BreakerLayer`](breaker::BreakerLayer) | closed / open / half-open; open = `poll_ready` pending |
//! | [`limit`] | [`RateLimitLayer`](limit::RateLimitLayer), [`ConcurrencyLimitLayer`](limit::ConcurrencyLimitLayer) | backpressure through `poll_ready` |
//! | [`timeout`] | [`TimeoutLayer`](timeout::TimeoutLayer) | per-attempt time limit, late results discarded |
//! | [`catch_panic`] | [`CatchPanicLayer`](catch_panic::CatchPanicLayer) | a panic becomes a [`PanicError`](catch_panic::PanicError) |
//! | [`dlq`] | — | the [`DeadLetterQueue`](dlq::DeadLetterQueue) trait, in-memory and file-backed queues, replay |
//! | [`resilience`] | [`ResilienceLayer`](resilience::ResilienceLayer) | all of the above in the order below, with defaults, fused into one service |
//!
//! ## The order, and why
//!
//! ```
//! use std::time::Duration;
//! use switchyard_core::{BoxError, Envelope, Outcome};
//! use switchyard_middleware::{
//!     breaker::{BreakerConfig, BreakerLayer},
//!     catch_panic::CatchPanicLayer,
//!     dedup::{DedupConfig, DedupLayer},
//!     limit::{ConcurrencyLimitLayer, RateLimitLayer},
//!     metrics::MetricsLayer,
//!     retry::{RetryLayer, RetryPolicy},
//!     timeout::TimeoutLayer,
//!     trace::TraceLayer,
//! };
//! use tower::ServiceBuilder;
//!
//! let breaker = BreakerLayer::new("welcome-mail", BreakerConfig::default());
//! let breaker_state = breaker.handle(); // watch it, trip it, reset it
//! let handler = ServiceBuilder::new()
//!     .layer(TraceLayer::new("welcome-mail"))          // 1. one span per delivery, around everything
//!     .layer(MetricsLayer::new("welcome-mail"))        // 2. one count per delivery, final outcome
//!     .layer(DedupLayer::new(DedupConfig::default()))  // 3. duplicates stop here, before any work
//!     .layer(RetryLayer::new(RetryPolicy::default()))  // 4. retries everything below
//!     .layer(breaker)                                  // 5. sees every attempt; open pauses retries and intake
//!     .layer(RateLimitLayer::new(50, Duration::from_secs(1))) // 6. each attempt takes a token
//!     .layer(ConcurrencyLimitLayer::new(8))            // 7. a permit per attempt, free during backoff
//!     .layer(TimeoutLayer::new(Duration::from_secs(30))) // 8. per attempt
//!     .layer(CatchPanicLayer::new())                   // 9. innermost: panics become errors for all above
//!     .service_fn(|_env: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) });
//! # let _ = (handler, breaker_state);
//! ```
//!
//! 1. **Trace** outermost, so the span covers the dedup decision, every retry and the backoff
//!    waits, and the handler sees the delivery's `traceparent`.
//! 2. **Metrics** outside retry count one delivery per message with its *final* outcome and
//!    the full time including retries; the retry layer counts its own re-attempts as
//!    retries under the same labels (`switchyard_retried_total`).
//! 3. **Dedup** outside retry: a duplicate costs nothing, and a key is marked seen only after
//!    the retried whole succeeded.
//! 4. **Retry** outside the breaker and the limits, so each attempt waits for readiness again:
//!    an open breaker holds the retry (and, through `poll_ready`, the subscription's intake)
//!    instead of burning the remaining attempts.
//! 5. **Breaker** inside retry, so it counts attempts, not messages: it opens as soon as the
//!    dependency fails repeatedly.
//! 6. / 7. **Limits** inside the breaker and retry: they bound calls actually made; a message
//!    waiting for its backoff holds no permit.
//! 8. **Timeout** per attempt, so a hung attempt fails and can be retried.
//! 9. **Panic capture** innermost, so a panic is an ordinary error to the timeout, the breaker,
//!    the retry classifier (not retried by default) and the bus (dead-lettered as `Panicked`,
//!    see [`dlq::failure_reason`]).
//!
//! ## What the bus has to do
//!
//! - Poll readiness (`ServiceExt::ready`) before taking the next message off a subscription
//!   queue: the breaker and the limits express backpressure that way.
//! - Set `envelope.delivery.attempt` (1-based) and `first_delivered_at` before calling; the
//!   retry layer continues counting from there on the clones it passes down.
//! - Treat `switchyard_core::Permanent` as final (the bus does): the retry layer wraps its
//!   [`RetryError`](retry::RetryError) in it when it gives up, so the message is dead-lettered
//!   at once (reason from [`dlq::failure_reason`], text from [`dlq::error_chain`], the number
//!   of the last attempt from [`RetryError::find`](retry::RetryError::find) and
//!   [`RetryError::last_attempt`](retry::RetryError::last_attempt)) instead of being retried
//!   again.
//! - Turn [`BreakerEvent`](breaker::BreakerEvent)s from the observer
//!   ([`BreakerConfig::on_transition`](breaker::BreakerConfig::on_transition)) into
//!   `switchyard.breaker.*` events ([`BreakerEvent::topic`](breaker::BreakerEvent::topic)).
//! - Implement [`Republish`](dlq::Republish) (a closure works) so a
//!   [`Replayer`](dlq::Replayer) can put dead letters back on the bus.
//! - Call [`metrics::install_prometheus`] once at start-up to serve `/metrics`, and use
//!   [`metrics::record`] for bus-level figures.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod catch_panic;
mod clock;
pub mod dedup;
pub mod dlq;
pub mod limit;
pub mod metrics;
pub mod resilience;
pub mod retry;
mod rng;
pub mod timeout;
pub mod trace;
