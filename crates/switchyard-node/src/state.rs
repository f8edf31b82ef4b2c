//! The state every gateway handler (HTTP and WebSocket) shares.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use switchyard::Bus;
use switchyard::Envelope;
use switchyard_components::{Enforcer, Topology};
use switchyard_middleware::dlq::DeadLetterQueue;
use switchyard_middleware::metrics::MetricsRegistry;
use tokio_util::sync::CancellationToken;

use crate::auth::{Action, Auth, Principal};
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
    /// Held for the whole of a `POST /v1/dlq/replay`: replays on this node run one after
    /// the other, so two requests naming the same entries do not both re-publish them (the
    /// second finds them gone).
    pub(crate) replaying: Arc<tokio::sync::Mutex<()>>,
    /// Recent envelopes for `/v1/trace` (none when `retention.trace_messages = 0`).
    pub(crate) trace: Option<Arc<crate::trace::TraceBuffer>>,
    /// The component topology, when the application registered one.
    pub(crate) topology: Arc<RwLock<Option<Topology>>>,
    /// Layer rules on gateway traffic: set with the topology (see [`AppState::check_layers`]).
    pub(crate) layers: Arc<RwLock<Option<Arc<Enforcer>>>>,
    /// The message contracts `/v1/asyncapi.json` exports (`Node::set_contracts`).
    pub(crate) contracts: Arc<RwLock<switchyard_contracts::Registry>>,
    /// Schema validation of gateway traffic (`Node::set_validation`; see
    /// [`AppState::check_contract`]).
    pub(crate) validator: Arc<RwLock<Option<Arc<switchyard_contracts::Validator>>>>,
    /// Per-principal publish rate, when configured.
    pub(crate) rate: Option<Arc<PublishRate>>,
    /// Transport connectivity and breaker states for `/ready`.
    pub(crate) health: Arc<Health>,
    /// When the node started.
    pub(crate) started: Instant,
    /// Cancelled when the node begins shutting down (WebSocket connections close on it).
    pub(crate) shutdown: CancellationToken,
    /// Cancelled once the bus has shut down: HTTP sends and requests still waiting for a
    /// reply then answer `503 shutting_down`.
    pub(crate) bus_stopped: CancellationToken,
    /// WebSocket connections and consumer groups.
    pub(crate) ws: Arc<crate::ws::Hub>,
    /// The stats history, the live event stream and the observed publishes.
    pub(crate) live: Arc<crate::live::Live>,
    /// The application's health checker (`Node::set_health_checker`), for `/v1/health`.
    pub(crate) checker: Arc<RwLock<Option<switchyard_components::builtin::HealthChecker>>>,
    /// The address the gateway is bound to, once `Node::serve` has its listener (with
    /// `listen = "127.0.0.1:0"` the port the system chose).
    pub(crate) bound: Arc<OnceLock<SocketAddr>>,
}

impl AppState {
    /// Where the gateway listens: the bound address once serving, else the configured one.
    pub(crate) fn listen_addr(&self) -> SocketAddr {
        self.bound.get().copied().unwrap_or(self.config.listen)
    }

    /// Checks a message coming in through the gateway against the registered schema of its
    /// topic. `enforce`: an invalid message is dead-lettered (reason `rejected`, the error
    /// naming every path and reason) and the client gets 422 `invalid_message` with the same
    /// text; it is never delivered. `warn`: logged, counted, delivered.
    pub(crate) fn check_contract(&self, env: &Envelope) -> Result<(), ApiError> {
        let Some(validator) = self
            .validator
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let verdict = validator.check_summary(env);
        let Some(text) = verdict.describe() else {
            return Ok(());
        };
        let topic = env.topic.as_str();
        if verdict.deliver() {
            self.metrics.record(|| {
                ::metrics::counter!("switchyard_gateway_invalid_total", "mode" => "warn")
                    .increment(1);
            });
            tracing::warn!(topic, id = %env.id, "delivered although {text}");
            return Ok(());
        }
        // Through the node's own recorder (no global one is installed), as every gateway series.
        self.metrics.record(|| {
            ::metrics::counter!("switchyard_gateway_invalid_total", "mode" => "enforce")
                .increment(1);
        });
        self.bus.dead_letter(switchyard_core::DeadLetter::new(
            env.clone(),
            switchyard_core::DeadLetterReason::Rejected,
            format!("gateway: {text}"),
        ));
        Err(ApiError::new(
            crate::error::ErrorKind::InvalidMessage,
            format!("message {} on {topic} was dead-lettered, {text}", env.id),
        ))
    }

    /// Refuses (429) a message over the principal's rate: every message a principal puts on
    /// the bus takes a token (HTTP and WebSocket publishes, each message of a batch, sends
    /// and requests), from one bucket per principal.
    pub(crate) fn check_publish_rate(&self, principal: &Principal) -> Result<(), ApiError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        if rate.limiter.check_key(&principal.name().to_owned()).is_ok() {
            return Ok(());
        }
        self.metrics.rate_limited(principal.name());
        tracing::warn!(principal = principal.name(), "message rate exceeded");
        Err(ApiError::new(
            ErrorKind::RateLimited,
            format!(
                "message rate of principal {:?} exceeded: limits.publish_rate allows {}/s (burst {}) \
                 for publishes, sends and requests together",
                principal.name(),
                rate.config.per_second,
                rate.config.burst.unwrap_or(rate.config.per_second)
            ),
        ))
    }
}

impl AppState {
    /// Checks a message coming in through the gateway against the declared topology's layer
    /// rules, as the components crate checks a component's own publishes. The publishing
    /// component is the message's `source` (`x-source`), or the principal's name when it
    /// names a declared component and no source is given. A principal that is itself a
    /// declared component may publish only as that component. A source that names no declared
    /// component is not a component: nothing to check (its grants still apply). A refusal is
    /// a 403 `forbidden`, counted as a denial and in the gateway's enforcement counters.
    pub(crate) fn check_layers(
        &self,
        principal: &Principal,
        action: Action,
        env: &mut Envelope,
    ) -> Result<(), ApiError> {
        let Some(enforcer) = self
            .layers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let topology = enforcer.topology();
        let as_component = topology.component(principal.name()).is_some();
        let name = match env.source() {
            Some(s) if as_component && s != principal.name() => {
                return Err(self
                    .auth
                    .deny(
                        principal,
                        action,
                        format!(
                            "principal {:?} is the component {:?} and may not publish as {s:?}",
                            principal.name(),
                            principal.name()
                        ),
                    )
                    .into());
            }
            Some(s) => s.to_owned(),
            None if as_component => {
                env.set_source(Some(principal.name().into()));
                principal.name().to_owned()
            }
            None => return Ok(()),
        };
        let Some(spec) = topology.component(&name) else {
            return Ok(());
        };
        match enforcer.check(spec, env) {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .auth
                .deny(principal, action, format!("layer rule: {e}"))
                .into()),
        }
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
