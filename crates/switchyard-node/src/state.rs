//! The state every gateway handler (HTTP and WebSocket) shares.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use switchyard::Bus;
use switchyard_components::Topology;
use switchyard_middleware::dlq::DeadLetterQueue;
use switchyard_middleware::metrics::MetricsRegistry;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Principal};
use crate::config::{NodeConfig, RateConfig};
use crate::error::{ApiError, ErrorKind};
use crate::health::Health;
use crate::metrics::GatewayMetrics;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The bus.
    pub(crate) bus: Bus,
    /// The validated configuration.
    pub(crate) config: Arc<NodeConfig>,
    /// Authentication and authorization (`auth.authorize(&principal, Action, topic)`).
    pub(crate) auth: Arc<Auth>,
    /// Gateway counters and the Prometheus recorder.
    pub(crate) metrics: Arc<GatewayMetrics>,
    /// Per-handler counts and durations of the resilience stack.
    pub(crate) handlers: MetricsRegistry,
    /// Handler call-time histograms (p50/p95/p99 in `/v1/stats`).
    pub(crate) latency: crate::latency::Latencies,
    /// Firing and resolved alerts for `/v1/alerts`.
    pub(crate) alerts: Arc<crate::alerts::AlertLog>,
    /// The dead-letter queue the bus writes to.
    pub(crate) dlq: Arc<dyn DeadLetterQueue>,
    /// Recent envelopes for `/v1/trace` (none when `retention.trace_messages = 0`).
    pub(crate) trace: Option<Arc<crate::node::TraceBuffer>>,
    /// The component topology, when the application registered one.
    pub(crate) topology: Arc<RwLock<Option<Topology>>>,
    /// The message contracts `/v1/asyncapi.json` exports (`Node::set_contracts`).
    pub(crate) contracts: Arc<RwLock<switchyard_contracts::Registry>>,
    /// Per-principal publish rate, when configured.
    pub(crate) rate: Option<Arc<PublishRate>>,
    /// Transport connectivity and breaker states for `/ready`.
    pub(crate) health: Arc<Health>,
    /// When the node started.
    pub(crate) started: Instant,
    /// Cancelled when the node begins shutting down (WebSocket connections close on it).
    pub(crate) shutdown: CancellationToken,
    /// WebSocket connections and consumer groups.
    pub(crate) ws: Arc<crate::ws::Hub>,
    /// The stats history, the live event stream and the observed publishes.
    pub(crate) live: Arc<crate::live::Live>,
}

impl AppState {
    /// Refuses (429) a publish over the principal's rate.
    pub(crate) fn check_publish_rate(&self, principal: &Principal) -> Result<(), ApiError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        if rate.limiter.check_key(&principal.name().to_owned()).is_ok() {
            return Ok(());
        }
        self.metrics.rate_limited(principal.name());
        tracing::warn!(principal = principal.name(), "publish rate exceeded");
        Err(ApiError::new(
            ErrorKind::RateLimited,
            format!(
                "publish rate of principal {:?} exceeded: limits.publish_rate allows {}/s (burst {})",
                principal.name(),
                rate.config.per_second,
                rate.config.burst.unwrap_or(rate.config.per_second)
            ),
        ))
    }
}

/// A keyed token bucket: one bucket per principal.
pub(crate) struct PublishRate {
    limiter: DefaultKeyedRateLimiter<String>,
    config: RateConfig,
}

impl PublishRate {
    /// A limiter for `config` (validated: per_second and burst at least 1).
    pub(crate) fn new(config: RateConfig) -> Option<Self> {
        let per_second = NonZeroU32::new(config.per_second)?;
        let burst = NonZeroU32::new(config.burst.unwrap_or(config.per_second))?;
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            config,
        })
    }
}
