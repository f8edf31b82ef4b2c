//! [`Node`]: the bus on its configured transport, the gateway router, and serving with a
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use switchyard::{BoxHandler, Bus, WrapTarget};
use switchyard_components::Topology;
use switchyard_middleware::dlq::{
    DeadLetterQueue, FileDeadLetterQueue, FileDlqOptions, InMemoryDeadLetters,
};
use switchyard_middleware::metrics::MetricsRegistry;
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::{NodeConfig, TransportConfig};
use crate::error::NodeError;
use crate::health::{Health, TransportHandle};
use crate::metrics::GatewayMetrics;
use crate::state::{AppState, PublishRate};

/// Name of the dead-letter file under the log transport's data directory.
pub const DEAD_LETTER_FILE: &str = "dead-letters.jsonl";

/// A running node: a [`Bus`] on the configured transport and the gateway in front of it.
///
/// ```no_run
/// # async fn run() -> Result<(), switchyard_node::NodeError> {
/// use switchyard_node::{Node, NodeConfig};
/// let config = NodeConfig::load(None)?;            // defaults + SWITCHYARD_* env
/// let node = Node::start(config).await?;
/// let listener = node.bind().await?;               // the configured listen address
/// node.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
///
/// To embed the gateway in another axum application, mount [`Node::router`] (for example
/// with `Router::nest("/bus", node.router())`) and call [`Node::shutdown`] when done.
pub struct Node {
    state: AppState,
    background: Vec<tokio::task::JoinHandle<()>>,
    #[cfg(feature = "zmq")]
    ingest: Vec<crate::ingest::Ingest>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("listen", &self.state.config.listen)
            .field("transport", &self.state.config.transport.kind())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Validates `config`, opens the transport, builds the bus (with the bus's default
    /// resilience stack on every handler, one config per handler through
    /// `BusBuilder::with_resilience_for`), starts the trace recorder and the ingest sources.
    /// Nothing is left running when it fails.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        config.validate()?;
        let auth = Auth::from_config(&config.auth).map_err(|e| NodeError::Auth(e.to_string()))?;
        let dlq = open_dead_letters(&config)?;
        let live = Arc::new(crate::live::Live::default());
        let transport = open_transport(&config, &dlq, &live).await?;
        let health = Arc::new(Health::new(
            transport.clone(),
            &config.readiness.critical_handlers,
        ));
        let handlers = MetricsRegistry::new();
        let latency = crate::latency::Latencies::default();
        let wrap_latency = latency.clone();
        let (breaker_tx, breaker_rx) = tokio::sync::mpsc::unbounded_channel();
        let trace = (config.retention.trace_messages > 0).then(|| {
            Arc::new(crate::trace::TraceBuffer::new(
                config.retention.trace_messages,
            ))
        });
        let hook_trace = trace.clone();
        let hook_live = live.clone();
        let alerts = Arc::new(crate::alerts::AlertLog::with_live(live.clone()));
        let hook_alerts = alerts.clone();

        // Schema validation (`Node::set_validation`): the gateway checks what clients send, and
        // the bus's transport intake checks what arrives over the log or NATS (foreign
        // publishers, other nodes). One slot, read at each check.
        let validator: Arc<RwLock<Option<Arc<switchyard_contracts::Validator>>>> = Arc::default();
        let intake_validator = validator.clone();
        let mut builder = Bus::builder()
            .intake_check(move |env| {
                match intake_validator
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    Some(v) => v.intake_verdict(env),
                    None => switchyard::IntakeVerdict::Accept,
                }
            })
            .queue_capacity(config.bus.queue_capacity)
            .workers(config.bus.workers)
            .max_hold(Duration::from_millis(config.bus.max_hold_ms))
            .dead_letters(dlq_sink(&dlq, &live))
            .publish_hook(move |env| {
                switchyard_middleware::trace::ensure_traceparent(env);
                hook_alerts.published(env);
                hook_live.publishes.record(env);
                if let Some(t) = &hook_trace {
                    t.record(env);
                }
                Ok(())
            });
        // Payload encryption: ciphertext on the transport, plaintext in the process (the
        // memory transport stores nothing, so it encrypts nothing).
        if let Some(enc) = &config.encryption {
            if matches!(transport, TransportHandle::Memory) {
                tracing::info!(
                    "encryption: the memory transport stores nothing, so nothing is encrypted"
                );
            } else {
                builder = builder.transport_codec(enc.build()?);
            }
        }
        builder = match &transport {
            TransportHandle::Memory => builder,
            TransportHandle::Log(t) => builder.transport(t.clone()),
            TransportHandle::Nats(t) => builder.transport(t.clone()),
        };
        let wrap_health = health.clone();
        let wrap_registry = handlers.clone();
        let wrap_live = live.clone();
        let wrap_trace = trace.clone();
        let bus = builder
            // The node's latency and trace records of every call, inside the stack.
            .wrap_handlers_with(move |target: &WrapTarget<'_>, handler: BoxHandler| {
                wrap_latency.wrap(target.name, handler, wrap_live.clone(), wrap_trace.clone())
            })
            // The bus's own stack (held by the workers as it is, so an idle worker gives back
            // what its readiness reserved), with a config per handler: the node's registry,
            // its breaker observer (alerts, then `switchyard.breaker.*` events), and a breaker
            // that never opens for a WebSocket registration. Attempts and backoff are the
            // default retry policy's (3, full jitter from 100 ms to 10 s).
            .with_resilience_for(move |target: &WrapTarget<'_>| {
                let tx = breaker_tx.clone();
                let mut config = ResilienceConfig::default();
                if crate::ws::is_ws_registration(target.name) {
                    config = config.breaker(crate::ws::registration_breaker());
                }
                config
                    .registry(wrap_registry.clone())
                    .on_breaker_transition(move |event| {
                        let _ = tx.send(event.clone());
                    })
            })
            // A WebSocket subscription or remote handler has no circuit breaker to speak of
            // (its stack's never counts a failure, so never opens): not listed with the
            // breakers (`/metrics`, `/v1/stats`, readiness, the dashboard).
            .on_resilience_stack(move |target: &WrapTarget<'_>, stack: &ResilienceLayer| {
                if !crate::ws::is_ws_registration(target.name) {
                    wrap_health.add_breaker(target.name, stack.breaker());
                }
            })
            .build()?;

        let mut background = vec![
            tokio::spawn(publish_breaker_events(
                bus.clone(),
                breaker_rx,
                alerts.clone(),
            )),
            tokio::spawn(watch_transport(health.clone(), alerts.clone())),
        ];
        let metrics = Arc::new(GatewayMetrics::new());
        let config = Arc::new(config);
        let state = AppState {
            bus: bus.clone(),
            rate: config
                .limits
                .publish_rate
                .and_then(PublishRate::new)
                .map(Arc::new),
            config: config.clone(),
            auth: Arc::new(auth),
            metrics,
            handlers,
            latency,
            alerts,
            dlq,
            replaying: Arc::default(),
            trace,
            topology: Arc::new(RwLock::new(None)),
            layers: Arc::new(RwLock::new(None)),
            contracts: Arc::default(),
            validator,
            health,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            bus_stopped: CancellationToken::new(),
            ws: Arc::new(crate::ws::Hub::default()),
            live,
            checker: Arc::default(),
            bound: Arc::default(),
        };
        background.push(tokio::spawn(crate::live::run_sampler(state.clone())));
        #[cfg(feature = "zmq")]
        let ingest = match crate::ingest::start_all(&state).await {
            Ok(i) => i,
            Err(e) => {
                abort_all(&mut background);
                let _ = bus.shutdown(Duration::from_secs(1)).await;
                return Err(e);
            }
        };
        tracing::info!(
            transport = config.transport.kind(),
            listen = %config.listen,
            auth = config.auth.enabled,
            "node started"
        );
        Ok(Node {
            state,
            background,
            #[cfg(feature = "zmq")]
            ingest,
        })
    }

    /// The bus: register handlers and subscriptions on it as in any application.
    pub fn bus(&self) -> &Bus {
        &self.state.bus
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.state.config
    }

    /// Declares the component topology as [`set_topology`](Self::set_topology) does, and
    /// enforces its layer rules on gateway traffic: every message published, sent or
    /// requested through the gateway (HTTP or WebSocket) whose source (`x-source`, or the
    /// principal's name when it names a declared component) is a declared component is
    /// checked as the components crate checks a component's own publishes. A principal named
    /// after a component may publish only as that component. A frontend message addressed
    /// past the CPM is refused with 403 `forbidden`, counted as a denial and in
    /// [`Node::gateway_enforcement`]. Other sources are not components: their grants apply.
    pub fn set_topology_enforced(&self, topology: Topology) {
        *self.state.layers.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(switchyard_components::Enforcer::new(
                Arc::new(topology.clone()),
                switchyard_components::EnforcementMode::Strict,
            )));
        self.set_topology(topology);
    }

    /// Declares the component topology `GET /v1/topology` exports (otherwise it exports the
    /// subscriptions the bus knows). Its layer rules are not enforced on gateway traffic
    /// (only observed: `declared: false` edges); see
    /// [`set_topology_enforced`](Self::set_topology_enforced).
    pub fn set_topology(&self, topology: Topology) {
        *self
            .state
            .topology
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(topology);
    }

    /// The gateway's layer-rule counters (checked, violations, refused, per rule) since
    /// the topology was declared; `None` without one.
    pub fn gateway_enforcement(&self) -> Option<switchyard_components::EnforcementStats> {
        self.state
            .layers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|e| e.stats())
    }

    /// Validates messages coming in through the gateway (HTTP and WebSocket publishes, commands
    /// and requests), over the transport (the bus's intake: on the log or NATS, what other
    /// processes and foreign publishers put there) and through the ZeroMQ ingest, against the
    /// registered schemas of their topics, per topic `off`, `warn` or `enforce` (see
    /// docs/contracts.md, "Validation at the boundary"). An enforced invalid message is
    /// dead-lettered with its validation errors, never delivered; through the gateway it is
    /// refused with 422 `invalid_message`. A `warn` one is logged, counted
    /// (`switchyard_gateway_invalid_total{mode="warn"}`, the subscriptions' `intake_warned`)
    /// and delivered.
    pub fn set_validation(&self, validator: switchyard_contracts::Validator) {
        *self
            .state
            .validator
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(validator));
    }

    /// Declares the message contracts `GET /v1/asyncapi.json` exports (see docs/contracts.md).
    pub fn set_contracts(&self, registry: switchyard_contracts::Registry) {
        *self
            .state
            .contracts
            .write()
            .unwrap_or_else(|p| p.into_inner()) = registry;
    }

    /// Attaches the application's health checker (a `switchyard_components` assembly's
    /// [`HealthChecker`](switchyard_components::builtin::HealthChecker), fed by its
    /// components' heartbeats, status updates and errors): `GET /v1/health` then shows its
    /// view of each declared component it has seen (`heartbeat`), and calls a component it
    /// finds unresponsive failing and one it finds degraded degraded. Keep the components'
    /// heartbeats going (`Running::start_heartbeats`), or idle ones turn unresponsive.
    pub fn set_health_checker(&self, checker: switchyard_components::builtin::HealthChecker) {
        *self
            .state
            .checker
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(checker);
    }

    /// Reports a pipeline monitor in `/metrics` and `/v1/stats` under `name`.
    pub fn add_monitor(&self, name: impl Into<String>, monitor: switchyard_pipeline::Monitor) {
        self.state.metrics.add_monitor(name, monitor);
    }

    /// The gateway: `/v1/...`, `/metrics`, `/health`, `/ready`, JSON 404 for anything else.
    pub fn router(&self) -> axum::Router {
        crate::http::router(self.state.clone())
    }

    /// Binds the configured listen address.
    pub async fn bind(&self) -> Result<TcpListener, NodeError> {
        let addr = self.state.config.listen;
        TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Bind { addr, source })
    }

    /// Serves the gateway on `listener` (HTTPS when `tls` is configured) until `shutdown`
    /// resolves, then stops in this order (plain HTTP and TLS alike; `grace` is
    /// `bus.shutdown_timeout_ms`):
    ///
    /// 1. stops accepting connections and closes WebSocket connections;
    /// 2. lets running requests finish, for at most `grace`;
    /// 3. stops the ingest sources and shuts the bus down (drain for at most `grace`);
    /// 4. answers the sends and requests still waiting for a reply `503 shutting_down`, and
    ///    gives those answers at most 500 ms to be written;
    /// 5. closes every connection left (a client that sent half a request, a stuck call).
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), NodeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let router = self.router();
        let addr = listener.local_addr().ok();
        if let Some(addr) = addr {
            // `/v1/status` and the AsyncAPI document name the bound address; set before the
            // server accepts its first connection.
            let _ = self.state.bound.set(addr);
        }
        let std_listener = listener.into_std().map_err(NodeError::Serve)?;
        let handle = axum_server::Handle::new();
        let server = match &self.state.config.tls {
            None => {
                if let Some(addr) = addr {
                    tracing::info!(url = %format!("http://{addr}"), "gateway listening");
                }
                let server = axum_server::from_tcp(std_listener)
                    .handle(handle.clone())
                    .serve(router.into_make_service());
                tokio::spawn(server)
            }
            Some(tls) => {
                let config = crate::tls::rustls_config(tls).await?;
                if let Some(addr) = addr {
                    tracing::info!(url = %format!("https://{addr}"), "gateway listening");
                }
                let server = axum_server::from_tcp_rustls(std_listener, config)
                    .handle(handle.clone())
                    .serve(router.into_make_service());
                tokio::spawn(server)
            }
        };
        let mut server = std::pin::pin!(server);
        let early = tokio::select! {
            ended = &mut server => Some(ended),
            () = shutdown => None,
        };
        let grace = Duration::from_millis(self.state.config.bus.shutdown_timeout_ms);
        // 1. No new connections; WebSocket connections close on the token.
        self.state.shutdown.cancel();
        handle.graceful_shutdown(None);
        // 2. Running requests finish, within the grace.
        connections_closed(&handle, grace).await;
        // 3 and 4. The bus drains; calls still waiting are then answered.
        let stopped = self.shutdown().await;
        connections_closed(&handle, ANSWER_GRACE).await;
        // 5. Whatever is left is closed.
        handle.shutdown();
        let served = match early {
            Some(ended) => ended,
            None => server.await,
        };
        let served = match served {
            Ok(r) => r.map_err(NodeError::Serve),
            Err(e) => Err(NodeError::Serve(std::io::Error::other(e))),
        };
        served.and(stopped)
    }

    /// Stops the node without serving: cancels WebSocket connections, stops the ingest
    /// sources, shuts the bus down (draining until `bus.shutdown_timeout_ms`), then answers
    /// the HTTP sends and requests still waiting for a reply `503 shutting_down`.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        self.state.shutdown.cancel();
        #[cfg(feature = "zmq")]
        for ingest in self.ingest.drain(..) {
            ingest.stop().await;
        }
        let deadline = Duration::from_millis(self.state.config.bus.shutdown_timeout_ms);
        let result = self.state.bus.shutdown(deadline).await;
        self.state.bus_stopped.cancel();
        abort_all(&mut self.background);
        match result {
            Ok(report) => {
                tracing::info!(
                    drained = report.drained,
                    left = report.left.len(),
                    nacked = report.nacked.len(),
                    "node stopped"
                );
                Ok(())
            }
            Err(e) => Err(NodeError::Shutdown(e.to_string())),
        }
    }

    /// The address a listener from [`bind`](Self::bind) would use (the configured `listen`;
    /// once [`serve`](Self::serve) has its listener, `/v1/status` names the bound one).
    pub fn listen_addr(&self) -> SocketAddr {
        self.state.config.listen
    }
}

/// How long, after the bus stopped, the answers to the calls it left waiting get to be
/// written before their connections are closed.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// Waits until the server has no connection left, or `limit` passed.
async fn connections_closed(handle: &axum_server::Handle, limit: Duration) {
    let until = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while handle.connection_count() > 0 && tokio::time::Instant::now() < until {
        tick.tick().await;
    }
}

fn abort_all(tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks.drain(..) {
        t.abort();
    }
}

fn open_dead_letters(config: &NodeConfig) -> Result<Arc<dyn DeadLetterQueue>, NodeError> {
    let capacity = config.retention.dead_letters;
    Ok(match &config.transport {
        TransportConfig::Log(log) => {
            std::fs::create_dir_all(&log.data_dir)
                .map_err(|e| NodeError::DeadLetters(format!("{}: {e}", log.data_dir.display())))?;
            let options = FileDlqOptions {
                capacity: Some(capacity),
                ..FileDlqOptions::default()
            };
            let dlq = FileDeadLetterQueue::open(log.data_dir.join(DEAD_LETTER_FILE), options)
                .map_err(|e| NodeError::DeadLetters(e.to_string()))?;
            Arc::new(dlq)
        }
        _ => Arc::new(InMemoryDeadLetters::new(capacity)),
    })
}

async fn open_transport(
    config: &NodeConfig,
    dlq: &Arc<dyn DeadLetterQueue>,
    live: &Arc<crate::live::Live>,
) -> Result<TransportHandle, NodeError> {
    let sink: Arc<dyn switchyard::DeadLetterSink> = Arc::new(dlq_sink(dlq, live));
    match &config.transport {
        TransportConfig::Memory => Ok(TransportHandle::Memory),
        TransportConfig::Log(c) => {
            let durability = match c.durability {
                crate::config::Durability::Always => switchyard_log::Durability::Always,
                crate::config::Durability::Interval => {
                    switchyard_log::Durability::Interval(Duration::from_millis(c.sync_interval_ms))
                }
                crate::config::Durability::Never => switchyard_log::Durability::Never,
            };
            let log_config = switchyard_log::LogConfig::new(c.data_dir.join("log"))
                .with_durability(durability)
                .with_segment_bytes(c.segment_bytes)
                .with_ack_wait(Duration::from_millis(c.ack_wait_ms))
                .with_max_deliver(c.max_deliver)
                .with_retention(config.retention.log_retention())
                .with_dead_letters(sink);
            switchyard_log::LogTransport::open(log_config)
                .map(TransportHandle::Log)
                .map_err(|e| NodeError::Transport {
                    transport: "log",
                    message: e.to_string(),
                })
        }
        TransportConfig::Nats(c) => {
            let nc = c.nats_config().with_dead_letters(sink);
            switchyard_nats::NatsTransport::connect(nc)
                .await
                .map(TransportHandle::Nats)
                .map_err(|e| NodeError::Transport {
                    transport: "nats",
                    message: e.to_string(),
                })
        }
    }
}

/// Lets the bus, a transport (max deliveries) and the ingest pipelines put their dead
/// letters into the node's queue, announcing each on the live stream.
pub(crate) struct DlqSink(Arc<dyn DeadLetterQueue>, Arc<crate::live::Live>);

/// A sink writing into the node's dead-letter queue.
pub(crate) fn dlq_sink(dlq: &Arc<dyn DeadLetterQueue>, live: &Arc<crate::live::Live>) -> DlqSink {
    DlqSink(dlq.clone(), live.clone())
}

/// The `dead_letter` event of `/v1/stream`: what was dead-lettered, without the payload.
#[derive(serde::Serialize)]
struct DeadLetterEvent<'a> {
    /// The dead letter's id in `/v1/dlq` (the message's id).
    id: String,
    correlation_id: String,
    topic: &'a str,
    handler: Option<&'a str>,
    reason: serde_json::Value,
    error: &'a str,
    attempts: u32,
    dead_letters: usize,
}

impl switchyard::DeadLetterSink for DlqSink {
    fn put(&self, letter: switchyard::DeadLetter) {
        let event = serde_json::to_value(DeadLetterEvent {
            id: letter.envelope.id.to_string(),
            correlation_id: letter.envelope.correlation_id.to_string(),
            topic: letter.envelope.topic.as_str(),
            handler: letter.handler.as_deref(),
            reason: serde_json::to_value(letter.reason).unwrap_or_default(),
            error: &letter.error,
            attempts: letter.attempts,
            dead_letters: 0,
        });
        // A replayed message dead-lettered again: recorded once it is in the queue.
        let replayed = self.1.replays.active().then(|| {
            (
                letter.envelope.id.clone(),
                letter.handler.clone(),
                letter.error.clone(),
            )
        });
        self.0.put(letter);
        if let Some((id, handler, error)) = replayed {
            self.1.replay_dead_lettered(&id, handler.as_deref(), &error);
        }
        if let Ok(mut event) = event {
            event["dead_letters"] = self.0.len().into();
            self.1.emit("dead_letter", &event);
        }
    }
}

/// Publishes breaker changes as `switchyard.breaker.*` events (as `with_default_resilience`
/// does), outside the breaker's lock.
async fn publish_breaker_events(
    bus: Bus,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<switchyard_middleware::breaker::BreakerEvent>,
    alerts: Arc<crate::alerts::AlertLog>,
) {
    while let Some(event) = rx.recv().await {
        alerts.breaker(&event);
        let (Ok(topic), Ok(payload)) = (
            switchyard::Topic::new(event.topic()),
            serde_json::to_vec(&event),
        ) else {
            continue;
        };
        tracing::warn!(handler = %event.handler, to = ?event.to, "circuit breaker changed");
        let env = switchyard::Envelope::new(topic, payload).with_source(event.handler.clone());
        if let Err(e) = bus.publish_envelope(env).await {
            tracing::debug!(error = %e, "breaker event not published");
        }
    }
}

/// Raises and resolves the `transport_down` alert as the transport's connectivity changes
/// (checked every second).
async fn watch_transport(health: Arc<Health>, alerts: Arc<crate::alerts::AlertLog>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        alerts.transport(
            health.transport.kind(),
            health.transport.problem().as_deref(),
        );
    }
}
