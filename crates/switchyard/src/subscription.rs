//! Subscribing: the builders ([`Bus::on`], [`Bus::subscribe`], [`Bus::handle`],
//! [`Bus::on_batch`]), registration (routing, the transport subscription, the workers) and the
//! [`Subscription`] handle whose `Drop` unsubscribes.

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use smol_str::SmolStr;
use switchyard_core::{
    Backoff, BoxError, Command, Envelope, Message, MessageArg, Outcome, Pattern, SubscribeError,
    Topic,
};

use crate::bus::Bus;
use crate::config::{BatchConfig, Handler, SubscriptionConfig, SubscriptionKind};
use crate::ctx::{self, Ctx};
use crate::handler::{self, BoxHandler, IntoOutcome};
use crate::pending::Reader;
use crate::queue::Overflow;
use crate::state::{BusInner, RUNNING, SessionSubs, SubShared};
use crate::stats::{SubscriptionInfo, SubscriptionStats};

impl Bus {
    pub(crate) fn config(&self, name: &str, pattern: Pattern) -> SubscriptionConfig {
        let i = &self.inner;
        SubscriptionConfig {
            name: SmolStr::new(name),
            pattern,
            workers: i.workers,
            capacity: i.capacity,
            overflow: i.overflow,
            max_attempts: i.max_attempts,
            backoff: i.backoff.clone(),
            max_hold: i.max_hold,
            ordering_key: None,
            filters: Vec::new(),
            session: None,
            handler_priority: 0,
            batch: None,
            ephemeral: false,
            takes_value: None,
        }
    }

    fn typed_pattern<M: Message>() -> (Pattern, Option<SubscribeError>) {
        parse_pattern(M::TOPIC, false)
    }

    /// Subscribes a typed handler to `M`'s topic (or a pattern set with `.pattern`).
    /// A payload that does not decode as `M` goes to the dead-letter sink with its raw bytes.
    ///
    /// The handler takes the message itself (`|t: Tick, ctx|`: its own copy, a clone of the
    /// value published in this process, or the payload decoded) or shared
    /// (`|t: Shared<Tick>, ctx|`, see [`Shared`](switchyard_core::Shared)): the value
    /// published in this process, the same allocation for every subscriber and every retry,
    /// with no copy made (a message from elsewhere is decoded once into a new `Shared`).
    /// Everything else is the same for both: topic, filters, retries, dead letters.
    /// Sharing pays in fan-outs of messages that own allocations (strings, vectors): the
    /// guard `w2_fanout8_shared` (eight subscribers of a 64-byte message with a `String`) costs
    /// fewer instructions per publish than `w2_fanout8_typed` (docs/benchmarks.md).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use serde::{Deserialize, Serialize};
    /// use switchyard::{Bus, Message, Shared};
    ///
    /// #[derive(Clone, Serialize, Deserialize)]
    /// struct Tick { seq: u64, body: String }
    /// impl Message for Tick { const TOPIC: &'static str = "ticks"; }
    ///
    /// let bus = Bus::new();
    /// // Its own copy: it may change it.
    /// let _own = bus.on("own", |mut t: Tick, _ctx| async move {
    ///     t.body.push('!');
    ///     Ok::<_, std::io::Error>(())
    /// }).start().await?;
    /// // Shared: the published value itself, read-only, one reference count per delivery.
    /// let _shared = bus.on("shared", |t: Shared<Tick>, _ctx| async move {
    ///     assert_eq!(t.body, "x");
    ///     Ok::<_, std::io::Error>(())
    /// }).start().await?;
    /// bus.publish(Tick { seq: 1, body: "x".into() }).await?;
    /// # Ok(()) }
    /// ```
    pub fn on<M, F, Fut, O, E>(&self, name: &str, f: F) -> SubscriptionBuilder
    where
        M: MessageArg,
        F: Fn(M, Ctx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: IntoOutcome,
        E: Into<BoxError>,
    {
        let (pattern, error) = Self::typed_pattern::<M::Message>();
        let handler = ctx::typed_event::<M, F, Fut, O, E>(self.weak(), f);
        let mut config = self.config(name, pattern);
        config.takes_value = Some(std::any::TypeId::of::<M::Message>());
        SubscriptionBuilder::with_error(
            self.clone(),
            SubscriptionKind::Event,
            config,
            Handler::Single(handler),
            error,
        )
    }

    /// Subscribes a raw handler (any `tower::Service<Envelope>` boxed with
    /// [`handler_fn`](crate::handler_fn) or [`boxed`](crate::boxed)) to a pattern.
    pub fn subscribe(&self, name: &str, pattern: &str, handler: BoxHandler) -> SubscriptionBuilder {
        let (p, error) = parse_pattern(pattern, true);
        SubscriptionBuilder::with_error(
            self.clone(),
            SubscriptionKind::Event,
            self.config(name, p),
            Handler::Single(handler),
            error,
        )
    }

    /// Registers the one handler of command `C`. Registering a second one for the same topic
    /// fails with `SubscribeError::DuplicateHandler`.
    pub fn handle<C, F, Fut, E>(&self, f: F) -> SubscriptionBuilder
    where
        C: Command,
        F: Fn(C, Ctx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Output, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let (pattern, error) = Self::typed_pattern::<C>();
        let handler = ctx::typed_command::<C, F, Fut, E>(self.weak(), f);
        let mut config = self.config(C::TOPIC, pattern);
        config.takes_value = Some(std::any::TypeId::of::<C>());
        SubscriptionBuilder::with_error(
            self.clone(),
            SubscriptionKind::Command,
            config,
            Handler::Single(handler),
            error,
        )
    }

    /// Registers a raw command handler for `topic`.
    pub fn handle_envelope(
        &self,
        name: &str,
        topic: &str,
        handler: BoxHandler,
    ) -> SubscriptionBuilder {
        let (p, error) = parse_pattern(topic, false);
        SubscriptionBuilder::with_error(
            self.clone(),
            SubscriptionKind::Command,
            self.config(name, p),
            Handler::Single(handler),
            error,
        )
    }

    /// Subscribes a prefetch handler ([`BoxPrefetchHandler`](crate::BoxPrefetchHandler)) to a
    /// pattern: each worker hands it up to `max` queued messages at once (those already
    /// queued when it takes the first; it does not wait for more; with several workers, at
    /// most its share of them, the waiting count divided by the workers and rounded up, so
    /// that a backlog spreads over the workers), and settles each message
    /// by its own answer, as a [`subscribe`](Self::subscribe) handler's would be: a failed
    /// message is retried in place (one message per call) before the worker hands over the
    /// ones after it, so with one worker the order holds. For handlers across a costly
    /// hand-over (another thread, another language runtime): one hand-over per `max`
    /// messages instead of one per message.
    ///
    /// Messages handed over and not answered yet count as in flight (a shutdown at its
    /// deadline reports them as left or nacked, like any in-flight message). With bus-wide
    /// middleware or a [`layer`](SubscriptionBuilder::layer), or with lifecycle events,
    /// the handler gets one message per call (layers wrap one message).
    pub fn subscribe_prefetch(
        &self,
        name: &str,
        pattern: &str,
        handler: crate::BoxPrefetchHandler,
        max: usize,
    ) -> SubscriptionBuilder {
        let (p, mut error) = parse_pattern(pattern, true);
        if max == 0 {
            error.get_or_insert(SubscribeError::InvalidConfig("prefetch must be at least 1"));
        }
        SubscriptionBuilder::with_error(
            self.clone(),
            SubscriptionKind::Event,
            self.config(name, p),
            Handler::Prefetch { handler, max },
            error,
        )
    }

    /// Subscribes a typed batch handler: it gets up to `max_size` messages at once (set with
    /// `.batch(max_size, max_wait)`; default 100 messages or 50 ms). The batch succeeds or
    /// fails as a whole; undecodable messages are dead-lettered and left out of it.
    pub fn on_batch<M, F, Fut, O, E>(&self, name: &str, f: F) -> SubscriptionBuilder
    where
        M: Message,
        F: Fn(Vec<M>, Ctx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: IntoOutcome,
        E: Into<BoxError>,
    {
        let (pattern, error) = Self::typed_pattern::<M>();
        let handler = ctx::typed_batch::<M, F, Fut, O, E>(self.weak(), SmolStr::new(name), f);
        let mut config = self.config(name, pattern);
        config.batch = Some(BatchConfig {
            max_size: 100,
            max_wait: Duration::from_millis(50),
        });
        SubscriptionBuilder::with_error(
            self.clone(),
            SubscriptionKind::Event,
            config,
            Handler::Batch(handler),
            error,
        )
    }

    pub(crate) async fn register(
        &self,
        kind: SubscriptionKind,
        mut config: SubscriptionConfig,
        handler: Handler,
    ) -> Result<Subscription, SubscribeError> {
        let inner = &self.inner;
        if inner.state.load(Ordering::Acquire) != RUNNING {
            return Err(SubscribeError::ShuttingDown);
        }
        if config.session.is_some() {
            // A session's subscription consumes on its own, without a consumer group (as
            // `.ephemeral()`): it must see every message of its session, whatever else has
            // its name (another session's, or a global one, would otherwise share one group
            // and take its share of them, to drop it as not theirs); and the transport keeps
            // nothing for it once the session ends (a durable group per session would stay
            // behind: committed offsets kept for good, and on the log held in memory and
            // holding `delete_consumed` back).
            config.ephemeral = true;
        }
        let fed = match (&inner.transport, kind) {
            (Some(transport), SubscriptionKind::Event) => {
                if config.handler_priority != 0 {
                    return Err(SubscribeError::InvalidConfig(
                        "handler priority groups need the in-memory bus: on a transport each subscription \
                         consumes on its own; use message priority or separate topics instead",
                    ));
                }
                let group = (!config.ephemeral).then_some(config.name.as_str());
                Some(transport.subscribe(&config.pattern, group).await?)
            }
            _ => None,
        };
        // A command handler on a transport that carries commands across processes also
        // serves its topic to the other processes (not a session's: sessions are local).
        let remote_commands = match (&inner.transport, kind) {
            (Some(transport), SubscriptionKind::Command) if config.session.is_none() => {
                match transport.remote_commands() {
                    Some(remote) => {
                        let topic = Topic::new(config.pattern.as_str())?;
                        Some(remote.serve(&topic).await?)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let handler = match handler {
            // Layers take one envelope: with bus-wide ones the handler gets one at a time.
            Handler::Prefetch { handler: h, .. }
                if inner.wrap.is_some() || inner.resilience.is_some() =>
            {
                Handler::Single(handler::prefetch_one(h))
            }
            other => other,
        };
        if inner.wrap.is_some() || !matches!(handler, Handler::Single(_)) {
            // Bus-wide layers may read the payload; batch handlers are not typed `on` ones.
            config.takes_value = None;
        }
        // Bound to the subscription once it exists: a retry inside the handler counts there.
        let retries = crate::stats::RetryCounter::default();
        let handler = match handler {
            Handler::Single(mut h) => {
                let target = crate::state::WrapTarget {
                    name: &config.name,
                    pattern: config.pattern.as_str(),
                    kind,
                    retries: &retries,
                };
                if let Some(wrap) = &inner.wrap {
                    h = wrap(&target, h);
                }
                match &inner.resilience {
                    Some(resilience) => {
                        // The stack's retry makes the attempts (with the backoff and the
                        // breaker); its final answer is `Permanent`, so the worker calls it
                        // once. It stays the outermost wrap: it is built `called_as_delivered`
                        // (it keeps the delivered envelope for retries without comparing it
                        // with its request), and the workers hold it as it is.
                        let stack = resilience(&target, h, config.max_attempts, &config.backoff);
                        config.max_attempts = 1;
                        Handler::Stacked(stack)
                    }
                    None => Handler::Single(h),
                }
            }
            stacked @ Handler::Stacked(_) => stacked,
            // The stack takes one envelope, so batch handlers keep the worker's own retries,
            // for the same number of attempts with the same backoff.
            batch @ Handler::Batch(_) => batch,
            prefetch @ Handler::Prefetch { .. } => prefetch,
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(SubShared::new(id, kind, config, self.weak()));
        retries.bind(&shared);
        match kind {
            SubscriptionKind::Event => {
                // Counted before it is routed to, so a publish that sees it counts what it
                // owes it.
                let owed = fed.is_some().then(|| {
                    let reader = if shared.config.ephemeral {
                        Reader::Own(id)
                    } else {
                        Reader::Group(shared.config.name.clone())
                    };
                    let owed = inner.pending.reader(reader);
                    let _ = shared.owed.set(Arc::downgrade(&owed));
                    owed
                });
                inner
                    .router
                    .insert(&shared.config.pattern, id, shared.clone());
                if let (Some(stream), Some(owed)) = (fed, owed) {
                    shared.spawn_pump(stream, owed);
                }
            }
            SubscriptionKind::Command => {
                let topic = Topic::new(shared.config.pattern.as_str())?;
                let mut commands = inner.commands.write();
                let slot = commands.entry(topic.clone()).or_default();
                let existing = match &shared.config.session {
                    None => slot.global.as_ref(),
                    Some(session) => slot.sessions.get(session),
                };
                if let Some(existing) = existing {
                    return Err(SubscribeError::DuplicateHandler {
                        topic,
                        existing: existing.name().to_owned(),
                    });
                }
                match &shared.config.session {
                    None => slot.global = Some(shared.clone()),
                    Some(session) => {
                        slot.sessions.insert(session.clone(), shared.clone());
                    }
                }
            }
        }
        {
            let mut subs = inner.subs.lock();
            // Checked again under the lock shutdown snapshots: either shutdown sees this
            // subscription, or this sees the shutdown.
            if inner.state.load(Ordering::SeqCst) != RUNNING {
                drop(subs);
                inner.unroute(&shared);
                return Err(SubscribeError::ShuttingDown);
            }
            subs.insert(id, shared.clone());
        }
        shared.spawn_workers(handler);
        if let Some(commands) = remote_commands {
            shared.spawn_command_pump(commands);
        }
        Ok(Subscription::new(shared, self.weak()))
    }
}

/// A live subscription or command handler. Dropping it unsubscribes: no new messages are
/// routed to it, and its workers finish what is already queued.
#[must_use = "dropping a Subscription unsubscribes at once; keep it, or call .detach()"]
pub struct Subscription {
    shared: Arc<SubShared>,
    bus: Weak<BusInner>,
    detached: bool,
}

impl Subscription {
    pub(crate) fn new(shared: Arc<SubShared>, bus: Weak<BusInner>) -> Self {
        Self {
            shared,
            bus,
            detached: false,
        }
    }

    /// The name given at registration.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The pattern (or command topic).
    pub fn pattern(&self) -> &Pattern {
        &self.shared.config.pattern
    }

    /// Counters so far.
    pub fn stats(&self) -> SubscriptionStats {
        self.shared.stats()
    }

    /// Registry view: queue depth, in-flight, policy and counters.
    pub fn info(&self) -> SubscriptionInfo {
        self.shared.info()
    }

    /// Keeps the subscription registered until the bus shuts down, without holding the handle.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(bus) = self.bus.upgrade() {
            bus.unroute(&self.shared);
        }
        self.shared.deactivate();
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.shared.config.name)
            .field("pattern", &self.shared.config.pattern)
            .field("kind", &self.shared.kind)
            .finish()
    }
}

/// Configures a subscription or command handler before it starts. Made by [`Bus::on`],
/// [`Bus::subscribe`], [`Bus::handle`] and [`Bus::handle_envelope`].
#[must_use = "a subscription does nothing until .start().await"]
pub struct SubscriptionBuilder {
    bus: Bus,
    kind: SubscriptionKind,
    config: SubscriptionConfig,
    handler: Handler,
    error: Option<SubscribeError>,
    session: Option<Arc<SessionSubs>>,
}

impl SubscriptionBuilder {
    pub(crate) fn with_error(
        bus: Bus,
        kind: SubscriptionKind,
        config: SubscriptionConfig,
        handler: Handler,
        error: Option<SubscribeError>,
    ) -> Self {
        Self {
            bus,
            kind,
            config,
            handler,
            error,
            session: None,
        }
    }

    /// Scopes the subscription to a session: it sees only that session's messages and is
    /// removed when the session ends.
    pub(crate) fn in_session(mut self, id: SmolStr, subs: Arc<SessionSubs>) -> Self {
        self.config.session = Some(id);
        self.session = Some(subs);
        self
    }

    /// Queues only messages for which `predicate` is true; the others are counted in
    /// `stats().filtered`. Several filters must all pass.
    pub fn filter<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&Envelope) -> bool + Send + Sync + 'static,
    {
        self.config.filters.push(Arc::new(predicate));
        self
    }

    /// Queues only messages whose header `name` equals `value`.
    pub fn filter_header(self, name: &'static str, value: impl Into<SmolStr>) -> Self {
        let value = value.into();
        self.filter(move |env| env.header(name) == Some(value.as_str()))
    }

    /// Handler priority group. When one event matches subscriptions of different groups, the
    /// higher groups' handlers finish (ack, dead-letter or give up) before lower groups get
    /// the event; subscriptions of one group run concurrently. Default 0.
    pub fn handler_priority(mut self, priority: i32) -> Self {
        self.config.handler_priority = priority;
        self
    }

    /// For batch subscriptions ([`Bus::on_batch`]): hand over at most `max_size` messages,
    /// waiting at most `max_wait` after the first for the batch to fill.
    pub fn batch(mut self, max_size: usize, max_wait: Duration) -> Self {
        match (&self.handler, max_size) {
            (Handler::Single(_) | Handler::Stacked(_) | Handler::Prefetch { .. }, _) => {
                self.error.get_or_insert(SubscribeError::InvalidConfig(
                    "batch() needs a batch handler (Bus::on_batch)",
                ));
            }
            (_, 0) => {
                self.error.get_or_insert(SubscribeError::InvalidConfig(
                    "batch size must be at least 1",
                ));
            }
            _ => self.config.batch = Some(BatchConfig { max_size, max_wait }),
        }
        self
    }

    /// Listens on a pattern (`*` one segment, `#` zero or more) instead of the message type's topic.
    /// Not allowed for command handlers (a command has exactly one topic).
    pub fn pattern(mut self, pattern: &str) -> Self {
        if self.kind == SubscriptionKind::Command
            && !pattern.is_empty()
            && pattern.contains(['*', '#'])
        {
            self.error.get_or_insert(SubscribeError::InvalidConfig(
                "command handlers take an exact topic",
            ));
        }
        match Pattern::new(pattern) {
            Ok(p) => self.config.pattern = p,
            Err(e) => {
                self.error.get_or_insert(SubscribeError::InvalidPattern(e));
            }
        }
        self
    }

    /// On a transport, subscribes without a consumer group: the subscription shares its
    /// messages with no one (two of the same name each get every message) and the transport
    /// keeps nothing for it once it ends. It starts where the transport starts ungrouped
    /// subscriptions (NATS: new messages only; the log: its configured start position).
    /// By default a subscription on a transport is a durable consumer group named after it,
    /// which resumes where it left off. Without a transport every subscription is ephemeral
    /// anyway. A session's event subscription is always ephemeral. Not for command handlers
    /// (they never subscribe to the transport).
    pub fn ephemeral(mut self) -> Self {
        if self.kind == SubscriptionKind::Command {
            self.error.get_or_insert(SubscribeError::InvalidConfig(
                "command handlers do not subscribe to the transport",
            ));
        }
        self.config.ephemeral = true;
        self
    }

    /// Number of worker tasks (default from the bus builder, 1 unless changed).
    pub fn workers(mut self, n: usize) -> Self {
        if n == 0 {
            self.error
                .get_or_insert(SubscribeError::InvalidConfig("workers must be at least 1"));
        }
        self.config.workers = n;
        self
    }

    /// Queue capacity (messages waiting, not counting in-flight).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        if n == 0 {
            self.error.get_or_insert(SubscribeError::InvalidConfig(
                "queue capacity must be at least 1",
            ));
        }
        self.config.capacity = n;
        self
    }

    /// What happens when the queue is full.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.config.overflow = overflow;
        self
    }

    /// Attempts before a failing message is dead-lettered (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        if n == 0 {
            self.error.get_or_insert(SubscribeError::InvalidConfig(
                "max_attempts must be at least 1",
            ));
        }
        self.config.max_attempts = n;
        self
    }

    /// The same delay before every retry when the handler did not say: shorthand for
    /// [`backoff`](Self::backoff)`(Backoff::fixed(d))`.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.config.backoff = Backoff::fixed(d);
        self
    }

    /// The delays between attempts when the handler did not say (exponential with jitter:
    /// [`Backoff::exponential`]); the bus's [`BusBuilder::backoff`](crate::BusBuilder::backoff)
    /// by default. Under resilience it is the stack's retry backoff too.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// How long a delivery from a transport that redelivers after an ack wait (the log,
    /// NATS) is kept alive while a worker of this subscription holds it (handler running,
    /// in-place retries waiting), counted from when the transport handed it out; the bus's
    /// [`BusBuilder::max_hold`](crate::BusBuilder::max_hold) (5 minutes) by default. Past it
    /// the bus stops telling the transport the delivery is being worked on, so the
    /// transport hands it out again one ack wait later (to this group's other members too)
    /// while the handler may still run: the bound on a handler that hangs. `Duration::ZERO`
    /// turns keep-alive off (the ack wait alone decides). A handler timeout (the resilience
    /// stack's, or a timeout layer) ends each attempt sooner; this is the backstop for a
    /// handler without one.
    pub fn max_hold(mut self, d: Duration) -> Self {
        self.config.max_hold = d;
        self
    }

    /// Per-key ordering: messages with the same key are handled one at a time, in order.
    pub fn ordering_key<F>(mut self, key: F) -> Self
    where
        F: Fn(&Envelope) -> Option<SmolStr> + Send + Sync + 'static,
    {
        self.config.ordering_key = Some(Arc::new(key));
        self
    }

    /// Per-key ordering by the value of one header.
    pub fn ordering_header(self, header: &'static str) -> Self {
        self.ordering_key(move |env| env.header(header).map(SmolStr::new))
    }

    /// Wraps the handler in a `tower::Layer` (retry, timeout, breaker...). Layers added later
    /// wrap the earlier ones: the last `.layer` is the outermost.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<BoxHandler>,
        L::Service:
            tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
        <L::Service as tower::Service<Envelope>>::Future: Send + 'static,
    {
        // A layer may read the payload: publishes reach this handler encoded.
        self.config.takes_value = None;
        match self.handler {
            Handler::Single(h) => self.handler = Handler::Single(handler::layered(h, layer)),
            // Only registration stacks a handler; boxed, it takes layers like any other.
            Handler::Stacked(h) => {
                self.handler = Handler::Single(handler::layered(handler::boxed(h), layer));
            }
            // Layers take one envelope: the handler then gets one message per call.
            Handler::Prefetch { handler: h, .. } => {
                self.handler = Handler::Single(handler::layered(handler::prefetch_one(h), layer));
            }
            Handler::Batch(_) => {
                self.error.get_or_insert(SubscribeError::InvalidConfig(
                    "layers wrap single-message handlers",
                ));
            }
        }
        self
    }

    /// Registers the subscription and starts its workers.
    pub async fn start(self) -> Result<Subscription, SubscribeError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let sub = self
            .bus
            .register(self.kind, self.config, self.handler)
            .await?;
        if let Some(session) = self.session {
            session.push(sub.shared.clone());
        }
        Ok(sub)
    }
}

/// Parses a pattern (or, without wildcards, an exact topic). On error the builder keeps a
/// placeholder and `start` reports the error.
fn parse_pattern(s: &str, wildcards: bool) -> (Pattern, Option<SubscribeError>) {
    let parsed = if wildcards {
        Pattern::new(s)
    } else {
        Topic::new(s).map(Pattern::from)
    };
    match parsed {
        Ok(p) => (p, None),
        Err(e) => (Pattern::all(), Some(e.into())),
    }
}
