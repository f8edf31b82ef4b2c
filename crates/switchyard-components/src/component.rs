//! The `Component` trait, a builder for components made of closures, the handler context, and
//! the `Assembly` that validates a set of components and registers their handlers on the bus.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use smol_str::SmolStr;
use switchyard::{
    BoxError, BoxHandler, Bus, Ctx, Envelope, IntoOutcome, Message, Outcome, PublishError,
    SubscribeError, Subscription, SubscriptionBuilder,
};

use crate::context::{ContextConfig, ContextTable};
pub use crate::declaration::DeclarationError;
use crate::declaration::{check_domain, parse_all};
use crate::enforce::{ComponentBus, EnforcementMode, EnforcementStats, Enforcer};
use crate::role::Role;
use crate::topology::{ComponentSpec, ObservedEdge, Topology, TopologyError};

mod ctx;
pub use ctx::ComponentCtx;

/// A part of the system that talks only through the bus.
///
/// It declares its name, role, domain, the patterns it subscribes to and the topics it
/// publishes, and registers one handler per subscription in [`register`](Self::register).
/// Most components are made with [`ComponentBuilder`], which implements this trait.
pub trait Component: Send + 'static {
    /// Unique name (`analytics-manager`).
    fn name(&self) -> &str;
    /// Role in the layered model.
    fn role(&self) -> Role;
    /// Domain (`analytics`).
    fn domain(&self) -> &str;
    /// Patterns it subscribes to (each needs a handler in `register`).
    fn subscribes(&self) -> Vec<String>;
    /// Topics or topic patterns it publishes. Status, error, heartbeat and result topics of its
    /// own domain are added implicitly.
    fn publishes(&self) -> Vec<String>;
    /// Registers the handlers.
    fn register(self: Box<Self>, handlers: &mut Handlers);
}

/// Makes one subscription: (bus, the component's bus, the context table, the attempts the
/// bus makes of each message).
type MakeSub = Box<dyn FnOnce(&Bus, ComponentBus, ContextTable, u32) -> SubscriptionBuilder + Send>;

/// Applies a component's layers to one of its subscriptions.
type ApplyLayer = Arc<dyn Fn(SubscriptionBuilder) -> SubscriptionBuilder + Send + Sync>;

struct Registration {
    pattern: String,
    make: MakeSub,
}

/// Collects a component's handlers during [`Component::register`].
#[must_use]
pub struct Handlers {
    regs: Vec<Registration>,
    workers: Option<usize>,
    max_attempts: Option<u32>,
    layers: Vec<ApplyLayer>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handlers")
            .field(
                "patterns",
                &self
                    .regs
                    .iter()
                    .map(|r| r.pattern.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Handlers {
    fn new() -> Self {
        Self {
            regs: Vec::new(),
            workers: None,
            max_attempts: None,
            layers: Vec::new(),
        }
    }

    /// Handles typed messages `M` published on `pattern`.
    pub fn on<M, F, Fut, O, E>(&mut self, pattern: &str, f: F) -> &mut Self
    where
        M: Message,
        F: Fn(M, ComponentCtx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: IntoOutcome + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let p = pattern.to_owned();
        let make: MakeSub = Box::new(move |bus: &Bus, cbus, table, max_attempts| {
            let name = format!("{}:{}", cbus.name(), p);
            bus.on::<M, _, _, O, BoxError>(&name, move |msg: M, ctx: Ctx| {
                let cx = ComponentCtx::new(cbus.clone(), table.clone(), ctx, max_attempts);
                cx.clone().guard(f(msg, cx))
            })
            .pattern(&p)
        });
        self.regs.push(Registration {
            pattern: pattern.to_owned(),
            make,
        });
        self
    }

    /// Handles raw envelopes published on `pattern`.
    pub fn on_envelope<F, Fut, O, E>(&mut self, pattern: &str, f: F) -> &mut Self
    where
        F: Fn(Envelope, ComponentCtx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: IntoOutcome + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let p = pattern.to_owned();
        let make: MakeSub = Box::new(move |bus: &Bus, cbus, table, max_attempts| {
            let name = format!("{}:{}", cbus.name(), p);
            let bus2 = bus.clone();
            let handler = switchyard::handler_fn(move |env: Envelope| {
                let ctx = ComponentCtx::from_parts(
                    cbus.clone(),
                    table.clone(),
                    bus2.clone(),
                    env.clone(),
                    max_attempts,
                );
                ctx.clone().guard(f(env, ctx))
            });
            bus.subscribe(&name, &p, handler)
        });
        self.regs.push(Registration {
            pattern: pattern.to_owned(),
            make,
        });
        self
    }

    /// Worker tasks per subscription of this component (default: the bus default).
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = Some(n);
        self
    }

    /// Attempts the bus makes of a message whose handler fails, per subscription of this
    /// component (default: [`Bus::max_attempts`]; at least 1, 0 counts as 1). A handler's
    /// failure on an attempt before the last does not fail the flow (see
    /// [`ComponentCtx::will_be_retried`]). A component with a retry layer of its own
    /// ([`layer`](Self::layer)) should set this to that layer's attempts, so the attempts
    /// the layer makes are counted against the right limit.
    pub fn max_attempts(&mut self, n: u32) -> &mut Self {
        self.max_attempts = Some(n.max(1));
        self
    }

    /// Wraps every handler of this component in a `tower::Layer` (retry, timeout, circuit
    /// breaker... from `switchyard-middleware`, or your own). Layers added later wrap the
    /// earlier ones.
    pub fn layer<L>(&mut self, layer: L) -> &mut Self
    where
        L: tower::Layer<BoxHandler> + Clone + Send + Sync + 'static,
        L::Service:
            tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
        <L::Service as tower::Service<Envelope>>::Future: Send + 'static,
    {
        self.layers.push(Arc::new(move |b: SubscriptionBuilder| {
            b.layer(layer.clone())
        }));
        self
    }
}

/// A component made of closures.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard::Message;
/// use switchyard_components::{ComponentBuilder, Role};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Job { id: u32 }
/// impl Message for Job { const TOPIC: &'static str = "analytics.feature.submit"; }
///
/// let service = ComponentBuilder::new("analytics-service", Role::Service, "analytics")
///     .publishes("analytics.feature.dispatch")
///     .on::<Job, _, _, _, _>("analytics.feature.submit", |job, cx| async move {
///         cx.publish_to("analytics.feature.dispatch", job).await
///     });
/// # let _ = service;
/// ```
#[must_use]
pub struct ComponentBuilder {
    name: SmolStr,
    role: Role,
    domain: SmolStr,
    publishes: Vec<String>,
    handlers: Handlers,
}

impl fmt::Debug for ComponentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentBuilder")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("domain", &self.domain)
            .field("publishes", &self.publishes)
            .field("handlers", &self.handlers)
            .finish()
    }
}

impl ComponentBuilder {
    /// A component with no handlers and no publications yet.
    pub fn new(name: impl Into<SmolStr>, role: Role, domain: impl Into<SmolStr>) -> Self {
        Self {
            name: name.into(),
            role,
            domain: domain.into(),
            publishes: Vec::new(),
            handlers: Handlers::new(),
        }
    }

    /// Declares a topic (or pattern) it publishes.
    pub fn publishes(mut self, topic: &str) -> Self {
        self.publishes.push(topic.to_owned());
        self
    }

    /// Subscribes a typed handler to `pattern` (declaring the subscription).
    ///
    /// The message type can be given with a turbofish (`on::<Job, _, _, _, _>`) or by
    /// annotating the closure's argument:
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use switchyard::{BoxError, Message};
    /// # use switchyard_components::{ComponentBuilder, Role};
    /// # #[derive(Clone, Serialize, Deserialize)] struct Job { id: u32 }
    /// # impl Message for Job { const TOPIC: &'static str = "shop.order.submit"; }
    /// let service = ComponentBuilder::new("shop-service", Role::Service, "shop")
    ///     .publishes("shop.order.dispatch")
    ///     .on("shop.order.submit", |job: Job, cx| async move {
    ///         let ctx = cx.begin("order").await?;
    ///         ctx.start().await?;
    ///         ctx.publish_to("shop.order.dispatch", job).await?;
    ///         Ok::<_, BoxError>(())
    ///     });
    /// # let _ = service;
    /// ```
    pub fn on<M, F, Fut, O, E>(mut self, pattern: &str, f: F) -> Self
    where
        M: Message,
        F: Fn(M, ComponentCtx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: IntoOutcome + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.handlers.on::<M, F, Fut, O, E>(pattern, f);
        self
    }

    /// Subscribes a raw envelope handler to `pattern` (declaring the subscription).
    pub fn on_envelope<F, Fut, O, E>(mut self, pattern: &str, f: F) -> Self
    where
        F: Fn(Envelope, ComponentCtx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: IntoOutcome + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.handlers.on_envelope(pattern, f);
        self
    }

    /// Worker tasks per subscription.
    pub fn workers(mut self, n: usize) -> Self {
        self.handlers.workers(n);
        self
    }

    /// Attempts the bus makes of a message whose handler fails (see
    /// [`Handlers::max_attempts`]).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.handlers.max_attempts(n);
        self
    }

    /// Wraps every handler of this component in a `tower::Layer` (see [`Handlers::layer`]).
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<BoxHandler> + Clone + Send + Sync + 'static,
        L::Service:
            tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
        <L::Service as tower::Service<Envelope>>::Future: Send + 'static,
    {
        self.handlers.layer(layer);
        self
    }
}

impl Component for ComponentBuilder {
    fn name(&self) -> &str {
        &self.name
    }
    fn role(&self) -> Role {
        self.role
    }
    fn domain(&self) -> &str {
        &self.domain
    }
    fn subscribes(&self) -> Vec<String> {
        self.handlers
            .regs
            .iter()
            .map(|r| r.pattern.clone())
            .collect()
    }
    fn publishes(&self) -> Vec<String> {
        self.publishes.clone()
    }
    fn register(self: Box<Self>, handlers: &mut Handlers) {
        let me = *self;
        handlers.regs.extend(me.handlers.regs);
        handlers.layers.extend(me.handlers.layers);
        if me.handlers.workers.is_some() {
            handlers.workers = me.handlers.workers;
        }
        if me.handlers.max_attempts.is_some() {
            handlers.max_attempts = me.handlers.max_attempts;
        }
    }
}

/// Starting an assembly failed; nothing was left registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A declaration is invalid.
    #[error(transparent)]
    Declaration(#[from] DeclarationError),
    /// The topology breaks the layer rules (strict mode) or has duplicate names.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The bus refused a subscription.
    #[error("component `{component}`: cannot subscribe to {pattern:?}: {source}")]
    Subscribe {
        /// The component.
        component: String,
        /// The pattern.
        pattern: String,
        /// The bus's error.
        #[source]
        source: SubscribeError,
    },
}

/// A set of components to validate and start on one bus.
///
/// The assembly checks edges among its own components only: a second assembly on the same
/// bus is not known to it, so messages between the two are neither validated at start nor
/// checked at run time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use switchyard::{Bus, Envelope};
/// use switchyard_components::{Assembly, ComponentBuilder, EnforcementMode, Role};
/// let bus = Bus::new();
/// let running = Assembly::new(&bus)
///     .mode(EnforcementMode::Strict)
///     .component(ComponentBuilder::new("shop-manager", Role::Manager, "shop")
///         .publishes("shop.order.submit")
///         .on_envelope("shop.order.request", |env: Envelope, cx| async move {
///             cx.bus().publish_envelope(Envelope::new("shop.order.submit".parse()?, env.payload.clone())).await?;
///             Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
///         }))
///     .start()
///     .await?;
/// assert_eq!(running.topology().components().len(), 1);
/// # Ok(()) }
/// ```
#[must_use]
pub struct Assembly {
    bus: Bus,
    mode: EnforcementMode,
    contexts: ContextConfig,
    components: Vec<Box<dyn Component>>,
}

impl fmt::Debug for Assembly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assembly")
            .field("mode", &self.mode)
            .field(
                "components",
                &self
                    .components
                    .iter()
                    .map(|c| c.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The declarations of one component as a validated spec (implicit publishes added).
pub fn spec_of(c: &dyn Component) -> Result<ComponentSpec, DeclarationError> {
    check_domain(c.name(), c.domain())?;
    let mut spec = ComponentSpec::new(c.name(), c.role(), c.domain());
    spec.subscribes = parse_all(c.name(), &c.subscribes())?;
    spec.publishes = parse_all(c.name(), &c.publishes())?;
    spec.add_implicit_publishes();
    Ok(spec)
}

impl Assembly {
    /// An empty assembly on `bus`: strict mode, default context settings.
    pub fn new(bus: &Bus) -> Self {
        Self {
            bus: bus.clone(),
            mode: EnforcementMode::Strict,
            contexts: ContextConfig::default(),
            components: Vec::new(),
        }
    }

    /// Strict (default: forbidden edges refuse to start and refused publishes) or warn (logged
    /// and counted only).
    pub fn mode(mut self, mode: EnforcementMode) -> Self {
        self.mode = mode;
        self
    }

    /// Request context settings (timeout 30 s and sweep every 100 ms by default).
    pub fn contexts(mut self, config: ContextConfig) -> Self {
        self.contexts = config;
        self
    }

    /// Adds a component.
    pub fn component(mut self, component: impl Component) -> Self {
        self.components.push(Box::new(component));
        self
    }

    /// Adds a boxed component.
    pub fn component_boxed(mut self, component: Box<dyn Component>) -> Self {
        self.components.push(component);
        self
    }

    /// The declared topology (not validated).
    pub fn topology(&self) -> Result<Topology, DeclarationError> {
        let specs = self
            .components
            .iter()
            .map(|c| spec_of(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Topology::new(specs))
    }

    /// Validates the topology (strict mode: forbidden edges refuse to start; warn mode: they
    /// are logged), then registers every handler with a checked publisher per component.
    pub async fn start(self) -> Result<Running, StartError> {
        let topology = self.topology()?;
        match (topology.validate(), self.mode) {
            (Ok(()), _) => {}
            (Err(e @ TopologyError::DuplicateName(_)), _) => return Err(e.into()),
            (Err(e), EnforcementMode::Strict) => return Err(e.into()),
            (Err(e), EnforcementMode::Warn) => {
                tracing::warn!(error = %e, "topology breaks layer rules (warn mode: starting anyway)");
            }
        }
        let topology = Arc::new(topology);
        let enforcer = Arc::new(Enforcer::new(topology.clone(), self.mode));
        let table = ContextTable::new(self.contexts);
        let mut subscriptions = Vec::new();
        let mut buses = Vec::new();
        for (component, spec) in self.components.into_iter().zip(topology.components()) {
            let declared = spec.subscribes.clone();
            let mut handlers = Handlers::new();
            component.register(&mut handlers);
            for p in &declared {
                if !handlers.regs.iter().any(|r| r.pattern == p.as_str()) {
                    return Err(DeclarationError::MissingHandler {
                        component: spec.name().to_owned(),
                        pattern: p.to_string(),
                    }
                    .into());
                }
            }
            let cbus =
                ComponentBus::new(self.bus.clone(), Arc::new(spec.clone()), enforcer.clone());
            for reg in handlers.regs {
                if !declared.iter().any(|p| p.as_str() == reg.pattern) {
                    return Err(DeclarationError::UndeclaredSubscription {
                        component: spec.name().to_owned(),
                        pattern: reg.pattern,
                    }
                    .into());
                }
                let max_attempts = handlers
                    .max_attempts
                    .unwrap_or_else(|| self.bus.max_attempts());
                let mut builder = (reg.make)(&self.bus, cbus.clone(), table.clone(), max_attempts);
                if let Some(n) = handlers.workers {
                    builder = builder.workers(n);
                }
                if let Some(n) = handlers.max_attempts {
                    builder = builder.max_attempts(n);
                }
                for apply in &handlers.layers {
                    builder = apply(builder);
                }
                let sub = builder
                    .start()
                    .await
                    .map_err(|source| StartError::Subscribe {
                        component: spec.name().to_owned(),
                        pattern: reg.pattern.clone(),
                        source,
                    })?;
                subscriptions.push(sub);
            }
            buses.push(cbus);
        }
        Ok(Running {
            bus: self.bus,
            topology,
            enforcer,
            table,
            buses,
            subscriptions,
        })
    }
}

async fn heartbeat_all(buses: &[ComponentBus]) -> Result<usize, PublishError> {
    let at_ms = crate::context::unix_ms(std::time::SystemTime::now());
    for b in buses {
        let spec = b.spec();
        let hb = crate::builtin::Heartbeat {
            component: spec.endpoint.name.clone(),
            role: spec.role(),
            domain: spec.endpoint.domain.clone(),
            at_ms,
        };
        b.publish_to(&crate::role::heartbeat_topic(spec.domain()), hb)
            .await?;
    }
    Ok(buses.len())
}

/// Periodic heartbeats of every component; dropping it stops them.
#[derive(Debug)]
pub struct HeartbeatTask {
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A serializable snapshot of a running assembly (see [`Running::status`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AssemblyStatus {
    /// Strict or warn.
    pub mode: EnforcementMode,
    /// Components in the assembly.
    pub components: usize,
    /// Checks, violations, refusals, per rule.
    pub enforcement: EnforcementStats,
    /// The last violations (at most 256).
    pub recent_violations: Vec<crate::topology::Violation>,
    /// Context counters (active, created, completed, failed, cancelled, timed out).
    pub contexts: crate::context::ContextStats,
    /// Edges seen at runtime with message counts.
    pub observed: Vec<ObservedEdge>,
}

/// A started assembly. Dropping it unsubscribes every handler.
pub struct Running {
    bus: Bus,
    topology: Arc<Topology>,
    enforcer: Arc<Enforcer>,
    table: ContextTable,
    buses: Vec<ComponentBus>,
    subscriptions: Vec<Subscription>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("components", &self.buses.len())
            .field("subscriptions", &self.subscriptions.len())
            .finish()
    }
}

impl Running {
    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The declared topology (implicit publishes included).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The checked publisher of one component, e.g. to inject a request as the frontend.
    pub fn component_bus(&self, name: &str) -> Option<ComponentBus> {
        self.buses.iter().find(|b| b.name() == name).cloned()
    }

    /// The context table.
    pub fn contexts(&self) -> &ContextTable {
        &self.table
    }

    /// Enforcement counters.
    pub fn enforcement(&self) -> EnforcementStats {
        self.enforcer.stats()
    }

    /// The enforcer (recent violations, observed edges).
    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    /// Everything a dashboard shows about the assembly, serializable: mode, enforcement
    /// counters and recent violations, context counters and observed edges.
    pub fn status(&self) -> AssemblyStatus {
        AssemblyStatus {
            mode: self.enforcer.mode(),
            components: self.buses.len(),
            enforcement: self.enforcer.stats(),
            recent_violations: self.enforcer.recent_violations(),
            contexts: self.table.stats(),
            observed: self.enforcer.observed(),
        }
    }

    /// Edges seen at runtime with message counts.
    pub fn observed(&self) -> Vec<ObservedEdge> {
        self.enforcer.observed()
    }

    /// The runtime graph as Mermaid.
    pub fn observed_mermaid(&self) -> String {
        self.topology.observed_mermaid(&self.enforcer.observed())
    }

    /// The runtime graph as DOT.
    pub fn observed_dot(&self) -> String {
        self.topology.observed_dot(&self.enforcer.observed())
    }

    /// Publishes one heartbeat per component on `<domain>.health.heartbeat` (for the
    /// [`HealthChecker`](crate::builtin::HealthChecker)). Returns how many were published.
    pub async fn heartbeat(&self) -> Result<usize, PublishError> {
        heartbeat_all(&self.buses).await
    }

    /// Sends [`heartbeat`](Self::heartbeat)s every `every` until the returned guard is dropped.
    pub fn start_heartbeats(&self, every: Duration) -> HeartbeatTask {
        let buses = self.buses.clone();
        // The task owns clones of the component buses; it stops when the guard is dropped
        // (abort), and keeps going when one heartbeat is refused (logged).
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            loop {
                tick.tick().await;
                if let Err(e) = heartbeat_all(&buses).await {
                    tracing::debug!(error = %e, "heartbeat not published");
                }
            }
        });
        HeartbeatTask { handle }
    }

    /// Unsubscribes every handler (queued messages are still handled by their workers).
    pub fn stop(self) {
        drop(self);
    }
}
