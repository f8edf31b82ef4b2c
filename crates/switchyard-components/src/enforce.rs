//! Runtime enforcement: every component publishes through a [`ComponentBus`] that stamps its
//! name as the source and checks each publish against the topology before the bus sees it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use smol_str::SmolStr;
use switchyard::{Bus, Envelope, Message, PublishError, Topic};

use crate::role::{Rule, check_edge, check_message, check_phase};
use crate::topology::{ComponentSpec, ObservedEdge, Topology, Violation};

/// What happens to a publish that breaks a layer rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    /// Refuse it with `PublishError::LayerViolation` (counted and logged). The default.
    #[default]
    Strict,
    /// Let it through, but count it and log a warning. For migrating an existing system.
    Warn,
}

/// Counters of the enforcer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnforcementStats {
    /// Publishes checked.
    pub checked: u64,
    /// Publishes that broke a rule (refused or, in warn mode, let through).
    pub violations: u64,
    /// Publishes refused (strict mode).
    pub refused: u64,
    /// Violations per rule id.
    pub by_rule: BTreeMap<String, u64>,
}

const RECENT: usize = 256;
const CACHE: usize = 4096;

/// Checks publishes against a topology and records what was observed.
pub struct Enforcer {
    topology: Arc<Topology>,
    mode: EnforcementMode,
    checked: AtomicU64,
    violations: AtomicU64,
    refused: AtomicU64,
    by_rule: Mutex<BTreeMap<String, u64>>,
    recent: Mutex<VecDeque<Violation>>,
    observed: Mutex<BTreeMap<(SmolStr, SmolStr, SmolStr), u64>>,
    /// (source, topic) → receiving component names and the first violation, if any.
    cache: Mutex<HashMap<(SmolStr, Topic), Arc<Routing>>>,
}

struct Routing {
    receivers: Vec<SmolStr>,
    violation: Option<Violation>,
}

impl fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enforcer")
            .field("mode", &self.mode)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Enforcer {
    /// An enforcer for `topology`.
    pub fn new(topology: Arc<Topology>, mode: EnforcementMode) -> Self {
        Self {
            topology,
            mode,
            checked: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            by_rule: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(VecDeque::new()),
            observed: Mutex::new(BTreeMap::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The mode.
    pub fn mode(&self) -> EnforcementMode {
        self.mode
    }

    /// The topology checked against.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Counters so far.
    pub fn stats(&self) -> EnforcementStats {
        EnforcementStats {
            checked: self.checked.load(Ordering::Relaxed),
            violations: self.violations.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            by_rule: self.by_rule.lock().clone(),
        }
    }

    /// The most recent violations (at most 256), oldest first.
    pub fn recent_violations(&self) -> Vec<Violation> {
        self.recent.lock().iter().cloned().collect()
    }

    /// Edges seen at runtime with message counts, sorted.
    pub fn observed(&self) -> Vec<ObservedEdge> {
        self.observed
            .lock()
            .iter()
            .map(|((from, to, topic), count)| ObservedEdge {
                from: from.clone(),
                to: to.clone(),
                topic: topic.clone(),
                count: *count,
            })
            .collect()
    }

    fn routing(&self, source: &ComponentSpec, topic: &Topic) -> Arc<Routing> {
        let key = (source.endpoint.name.clone(), topic.clone());
        if let Some(r) = self.cache.lock().get(&key) {
            return r.clone();
        }
        let receiving: Vec<&ComponentSpec> = self
            .topology
            .components()
            .iter()
            .filter(|c| c.receives(topic))
            .collect();
        let receivers = receiving.iter().map(|c| c.endpoint.name.clone()).collect();
        let refused = |c: &ComponentSpec, rule| Violation {
            from: source.endpoint.clone(),
            to: Some(c.endpoint.clone()),
            topic: SmolStr::new(topic.as_str()),
            rule,
        };
        // The first rule broken, in this order: the roles of an edge, the declaration, the
        // phase of the topic.
        let mut violation = receiving.iter().find_map(|c| {
            check_edge(&source.endpoint, &c.endpoint)
                .err()
                .map(|rule| refused(c, rule))
        });
        if violation.is_none() && !source.declares_publish(topic) {
            violation = Some(Violation {
                from: source.endpoint.clone(),
                to: None,
                topic: SmolStr::new(topic.as_str()),
                rule: Rule::UndeclaredPublish,
            });
        }
        if violation.is_none() {
            violation = receiving.iter().find_map(|c| {
                check_phase(&source.endpoint, &c.endpoint, topic.as_str())
                    .err()
                    .map(|rule| refused(c, rule))
            });
        }
        let routing = Arc::new(Routing {
            receivers,
            violation,
        });
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE {
            cache.clear();
        }
        cache.insert(key, routing.clone());
        routing
    }

    /// Checks one publish by `source`. In strict mode a violation is returned as
    /// `PublishError::LayerViolation`; in warn mode it is only counted and logged.
    /// An envelope with a `target` is checked against that component only.
    pub fn check(&self, source: &ComponentSpec, env: &Envelope) -> Result<(), PublishError> {
        self.checked.fetch_add(1, Ordering::Relaxed);
        let routing = self.routing(source, &env.topic);
        let mut violation = routing.violation.clone();
        if let Some(target) = env.target()
            && let Some(t) = self.topology.component(target)
            && let Err(rule) = check_message(&source.endpoint, &t.endpoint, env.topic.as_str())
        {
            violation = Some(Violation {
                from: source.endpoint.clone(),
                to: Some(t.endpoint.clone()),
                topic: SmolStr::new(env.topic.as_str()),
                rule,
            });
        }
        let Some(v) = violation else {
            return Ok(());
        };
        self.violations.fetch_add(1, Ordering::Relaxed);
        *self
            .by_rule
            .lock()
            .entry(v.rule.id().to_owned())
            .or_default() += 1;
        {
            let mut recent = self.recent.lock();
            if recent.len() >= RECENT {
                recent.pop_front();
            }
            recent.push_back(v.clone());
        }
        match self.mode {
            EnforcementMode::Strict => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(violation = %v, message_id = %env.id,
                    correlation_id = %env.correlation_id, "layer violation refused");
                Err(PublishError::LayerViolation(Box::new(
                    v.to_layer_violation(),
                )))
            }
            EnforcementMode::Warn => {
                tracing::warn!(violation = %v, message_id = %env.id,
                    correlation_id = %env.correlation_id, "layer violation (warn mode: delivered)");
                Ok(())
            }
        }
    }

    /// Records that `source` published on `topic` (after the bus accepted it).
    fn observe(&self, source: &ComponentSpec, topic: &Topic) {
        let routing = self.routing(source, topic);
        let mut observed = self.observed.lock();
        for to in &routing.receivers {
            if *to == source.endpoint.name {
                continue;
            }
            *observed
                .entry((
                    source.endpoint.name.clone(),
                    to.clone(),
                    SmolStr::new(topic.as_str()),
                ))
                .or_default() += 1;
        }
    }
}

/// The bus as one component sees it: every publish is stamped with the component's name as
/// `source` and checked against the topology first. Cheap to clone.
#[derive(Clone)]
pub struct ComponentBus {
    bus: Bus,
    spec: Arc<ComponentSpec>,
    enforcer: Arc<Enforcer>,
}

impl fmt::Debug for ComponentBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentBus")
            .field("component", &self.spec.endpoint)
            .finish()
    }
}

impl ComponentBus {
    /// A publisher handle for `spec`.
    pub fn new(bus: Bus, spec: Arc<ComponentSpec>, enforcer: Arc<Enforcer>) -> Self {
        Self {
            bus,
            spec,
            enforcer,
        }
    }

    /// The component's declarations.
    pub fn spec(&self) -> &ComponentSpec {
        &self.spec
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        self.spec.name()
    }

    /// The underlying bus. Publishing on it directly bypasses the layer checks.
    pub fn raw_bus(&self) -> &Bus {
        &self.bus
    }

    /// The enforcer (counters, observed edges).
    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    /// Publishes a typed message on its own topic.
    pub async fn publish<M: Message>(&self, msg: M) -> Result<(), PublishError> {
        self.publish_envelope(msg.to_envelope()?).await
    }

    /// Publishes a typed message on another topic.
    pub async fn publish_to<M: Message>(&self, topic: &str, msg: M) -> Result<(), PublishError> {
        let mut env = msg.to_envelope()?;
        env.topic = Topic::new(topic)?;
        self.publish_envelope(env).await
    }

    /// Stamps `source`, checks the edge(s) against the topology, then schedules the envelope
    /// for `at` on the bus (delayed delivery). Returns the scheduled message's id.
    pub fn schedule(
        &self,
        at: tokio::time::Instant,
        mut env: Envelope,
    ) -> Result<switchyard::MessageId, PublishError> {
        env.set_source(Some(self.spec.endpoint.name.clone()));
        self.enforcer.check(&self.spec, &env)?;
        let topic = env.topic.clone();
        let id = self.bus.schedule(at, env)?;
        self.enforcer.observe(&self.spec, &topic);
        Ok(id)
    }

    /// Stamps `source`, checks the edge(s) against the topology, then publishes.
    pub async fn publish_envelope(&self, mut env: Envelope) -> Result<(), PublishError> {
        env.set_source(Some(self.spec.endpoint.name.clone()));
        self.enforcer.check(&self.spec, &env)?;
        let topic = env.topic.clone();
        let result = self.bus.publish_envelope(env).await;
        if result.is_ok() {
            self.enforcer.observe(&self.spec, &topic);
        }
        result
    }
}
