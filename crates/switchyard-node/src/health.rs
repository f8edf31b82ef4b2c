//! Readiness: is the transport connected (for the log: are its writes working), is a
//! critical breaker open.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use switchyard_middleware::breaker::{BreakerHandle, BreakerState};

/// The transport the bus runs on, kept for health and stats.
#[derive(Clone)]
pub(crate) enum TransportHandle {
    /// In memory.
    Memory,
    /// The embedded log.
    Log(switchyard_log::LogTransport),
    /// NATS JetStream.
    Nats(switchyard_nats::NatsTransport),
}

impl TransportHandle {
    /// `memory`, `log` or `nats`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Log(_) => "log",
            Self::Nats(_) => "nats",
        }
    }

    /// `None` when connected (or nothing to connect), otherwise why not.
    pub(crate) fn problem(&self) -> Option<String> {
        match self {
            Self::Memory => None,
            Self::Log(l) => l
                .write_failure()
                .map(|f| format!("the log cannot store publishes: {}", f.error)),
            Self::Nats(n) => {
                let h = n.health();
                match h.state {
                    switchyard_nats::ConnectionState::Connected if !h.streams_ready => Some(
                        "NATS streams are being made again after a reconnect (publishes \
                         fail meanwhile)"
                            .into(),
                    ),
                    switchyard_nats::ConnectionState::Connected => None,
                    other => Some(format!("NATS connection is {other:?}")),
                }
            }
        }
    }
}

/// Breakers by handler and the transport handle.
pub(crate) struct Health {
    pub(crate) transport: TransportHandle,
    critical: HashSet<String>,
    breakers: Mutex<BTreeMap<String, BreakerHandle>>,
}

impl Health {
    pub(crate) fn new(transport: TransportHandle, critical: &[String]) -> Self {
        Self {
            transport,
            critical: critical.iter().cloned().collect(),
            breakers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records the breaker of a handler (called when the handler is registered).
    pub(crate) fn add_breaker(&self, handler: &str, handle: BreakerHandle) {
        self.breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(handler.to_owned(), handle);
    }

    /// The state of the breaker of every handler `bus` has now, by handler name. A handler
    /// that went away (a WebSocket client's remote handler or handler group whose
    /// connection closed, a dropped `Subscription`) is not listed: its breaker would never
    /// move again, and an open one would keep a critical handler's node unready for good.
    /// Its entry is kept (by name), for a handler registered again under that name.
    pub(crate) fn breakers(&self, bus: &switchyard::Bus) -> Vec<(String, BreakerState)> {
        let live: HashSet<String> = bus.registry().into_iter().map(|s| s.name).collect();
        self.breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, _)| live.contains(k.as_str()))
            .map(|(k, h)| (k.clone(), h.state()))
            .collect()
    }

    /// Reasons the node is not ready (empty: ready).
    pub(crate) fn problems(&self, bus: &switchyard::Bus) -> Vec<String> {
        let mut out = Vec::new();
        if bus.is_shutting_down() {
            out.push("node is shutting down".to_owned());
        }
        if let Some(p) = self.transport.problem() {
            out.push(p);
        }
        for (handler, state) in self.breakers(bus) {
            if state == BreakerState::Open && self.critical.contains(&handler) {
                out.push(format!(
                    "circuit breaker of critical handler {handler:?} is open"
                ));
            }
        }
        out
    }
}
