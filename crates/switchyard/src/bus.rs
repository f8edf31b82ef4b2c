//! The bus: the handle users hold, the builder, publish/send/request and shutdown.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use smol_str::SmolStr;
use switchyard_core::{
    BoxError, Capabilities, CloseError, Command, DeadLetter, DeadLetterReason, DeadLetterSink,
    Envelope, InMemoryDeadLetters, Kind, Message, MessageId, Pattern, PublishError, Publisher,
    SendError, SubscribeError, Subscriber, Topic, TransportError, TransportErrorKind,
};
use tokio::sync::oneshot;

use crate::command::CommandResult;
use crate::handler::{self, BoxHandler, Ctx, IntoOutcome};
use crate::lifecycle::{CommandFinished, CommandStarted};
use crate::pending::{Accepted, Pending, Settled};
use crate::queue::Overflow;
use crate::router::{DEFAULT_CACHE_CAPACITY, Router};
use crate::session::{SESSION_HEADER, Session};
use crate::subscription::{
    EnqueueError, Enqueued, Handler, SubShared, Subscription, SubscriptionBuilder,
    SubscriptionConfig, SubscriptionInfo, SubscriptionKind,
};
use crate::transport_link::ErasedTransport;

/// Header carrying the wall-clock time (milliseconds since the Unix epoch) before which a
/// message delayed through a transport must not be handled.
pub const DELIVER_AT_HEADER: &str = "deliver-at";

/// When a delayed message is due, if it carries [`DELIVER_AT_HEADER`].
pub(crate) fn deliver_at(env: &Envelope) -> Option<std::time::SystemTime> {
    let millis: u64 = env.header(DELIVER_AT_HEADER)?.parse().ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

/// The message being handled on the current task, so publishes from a handler are recorded
/// as its consequences (and stay in its session). A pointer to the shared envelope: the
/// task-local is swapped in and out around every poll of a handler, and its id, correlation
/// id and session are only read when the handler publishes.
#[derive(Debug, Clone)]
pub(crate) struct Parent(Arc<Envelope>);

impl Parent {
    pub(crate) fn of(env: &Arc<Envelope>) -> Self {
        Self(Arc::clone(env))
    }
}

/// The handlers of one command topic: one global, and one per session at most.
#[derive(Default)]
struct CommandSlot {
    global: Option<Arc<SubShared>>,
    sessions: HashMap<SmolStr, Arc<SubShared>>,
}

impl CommandSlot {
    fn is_empty(&self) -> bool {
        self.global.is_none() && self.sessions.is_empty()
    }
}

/// What [`Bus::publish_and_wait`] learned from every matching handler.
#[derive(Debug, Default)]
pub struct WaitReport {
    /// Subscriptions that handled the message successfully.
    pub handled: usize,
    /// Subscriptions a filter kept the message from.
    pub filtered: usize,
    /// Subscriptions whose handler failed, rejected it, or could not decode it.
    pub failures: Vec<HandlerFailure>,
}

impl WaitReport {
    /// `Ok` when no handler failed, else the first failure.
    pub fn into_result(self) -> Result<usize, HandlerFailure> {
        match self.failures.into_iter().next() {
            None => Ok(self.handled),
            Some(f) => Err(f),
        }
    }
}

/// One handler's failure, as reported by [`Bus::publish_and_wait`].
#[derive(Debug, thiserror::Error)]
#[error("subscription {subscription} failed: {error}")]
pub struct HandlerFailure {
    /// The subscription's name.
    pub subscription: String,
    /// What went wrong.
    #[source]
    pub error: SendError,
}

tokio::task_local! {
    pub(crate) static CURRENT: Parent;
}

const RUNNING: u8 = 0;
const SHUTTING_DOWN: u8 = 1;
const STOPPED: u8 = 2;

/// Configures a [`Bus`]. Every setting has a default, listed on its method. Settings are
/// resolved in [`build`](Self::build), so the order of the calls does not matter (a later call
/// of the same method replaces an earlier one).
///
/// ```
/// use std::time::Duration;
/// use switchyard::{Bus, Overflow};
/// let bus = Bus::builder()
///     .queue_capacity(1024)
///     .overflow(Overflow::Block { timeout: Duration::from_secs(1) })
///     .workers(4)
///     .build()?;
/// # let _ = bus;
/// # Ok::<(), switchyard::BuildError>(())
/// ```
#[must_use]
pub struct BusBuilder {
    capacity: usize,
    overflow: Overflow,
    workers: usize,
    /// Set by [`max_attempts`](Self::max_attempts); `None`: the default (3, or the retry
    /// policy's attempts under resilience).
    max_attempts: Option<u32>,
    retry_delay: Duration,
    cache_capacity: usize,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    lifecycle_events: bool,
    transport: Option<Arc<dyn ErasedTransport>>,
    hooks: Vec<PublishHook>,
    wrap: Option<HandlerWrap>,
    data_dir: Option<std::path::PathBuf>,
    #[cfg(feature = "middleware")]
    pub(crate) resilience: Option<crate::resilience::ResilienceFactory>,
}

/// The default of [`BusBuilder::max_attempts`] without resilience.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Wraps a single-message handler in the resilience stack at registration: (name, handler,
/// attempts the stack makes) → handler. Made in `build` from `with_resilience`.
pub(crate) type ResilienceWrap = Arc<dyn Fn(&str, BoxHandler, u32) -> BoxHandler + Send + Sync>;

/// What `build` resolved from the resilience settings.
pub(crate) struct ResolvedResilience {
    /// Attempts when neither the bus nor the subscription says (the retry policy's).
    pub(crate) default_attempts: u32,
    /// The file dead-letter queue under the data directory, if one is due.
    pub(crate) dead_letters: Option<Arc<dyn DeadLetterSink>>,
    pub(crate) wrap: ResilienceWrap,
}

/// Wraps every handler at registration (name, handler) → handler; see
/// [`BusBuilder::wrap_handlers`].
pub type HandlerWrap = Arc<dyn Fn(&str, BoxHandler) -> BoxHandler + Send + Sync>;

/// Runs on every envelope before it is published, sent or scheduled; see
/// [`BusBuilder::publish_hook`].
pub type PublishHook = Arc<dyn Fn(&mut Envelope) -> Result<(), PublishError> + Send + Sync>;

/// The bus configuration is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of range.
    #[error("invalid bus setting: {0}")]
    Invalid(&'static str),
    /// The dead-letter queue could not be opened.
    #[error("cannot open the dead-letter queue: {0}")]
    DeadLetters(String),
}

impl Default for BusBuilder {
    fn default() -> Self {
        Self {
            capacity: 1024,
            overflow: Overflow::default(),
            workers: 1,
            max_attempts: None,
            retry_delay: Duration::from_millis(100),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            dead_letters: None,
            lifecycle_events: false,
            transport: None,
            hooks: Vec::new(),
            wrap: None,
            data_dir: None,
            #[cfg(feature = "middleware")]
            resilience: None,
        }
    }
}

impl BusBuilder {
    /// Default queue capacity of each subscription. Default 1024.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Default overflow policy. Default `Block` for at most 1 s.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Default workers per subscription. Default 1 (strict order).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Default attempts before a failing message is dead-lettered: every call of the handler
    /// counts, whoever makes it (the bus's worker, or the retry of
    /// [`with_default_resilience`](Self::with_default_resilience), whose policy it then
    /// overrides). Default 3, or the retry policy's attempts under resilience.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Default delay between attempts when the handler does not say. Default 100 ms.
    /// (Exponential backoff with jitter is the retry layer of `switchyard-middleware`.)
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }

    /// Topics kept in the router's match cache. Default 4096.
    pub fn match_cache_capacity(mut self, n: usize) -> Self {
        self.cache_capacity = n;
        self
    }

    /// Where undeliverable messages go. Default: a bounded in-memory store of 10,000 entries,
    /// reachable through [`Bus::dead_letters`] (which is `None` once a sink is given here), or
    /// under resilience with a [`data_dir`](Self::data_dir), a file queue there. A sink given
    /// here wins over that file queue.
    pub fn dead_letters(mut self, sink: impl DeadLetterSink) -> Self {
        self.dead_letters = Some(Arc::new(sink));
        self
    }

    /// Publishes `switchyard.command.started` and `switchyard.command.finished` around every
    /// command and request a handler runs, for observers (dashboards, audits). Default off.
    pub fn lifecycle_events(mut self, on: bool) -> Self {
        self.lifecycle_events = on;
        self
    }

    /// Carries events on a transport instead of in memory: the embedded log
    /// (`switchyard_log::LogTransport`, durable) or NATS JetStream. Default: none (in memory).
    ///
    /// Each event subscription then consumes through the transport with its name as the
    /// consumer group: two processes with a subscription of the same name share its messages,
    /// different names each get every message. Messages are acked after handling, terminated
    /// when dead-lettered, and redelivered by the transport when a crash or a shutdown
    /// deadline leaves them unhandled. Commands and requests stay in process. Handler
    /// priority groups and `publish_and_wait` need the in-memory path and are refused on a
    /// transport.
    pub fn transport<T: Publisher + Subscriber>(mut self, transport: T) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Adds a hook that sees every envelope before it is published, sent or scheduled (after
    /// causation and correlation are set) and may change it or refuse it with an error the
    /// publisher gets. Hooks run in the order added. Uses: trace propagation
    /// (`switchyard_middleware::trace::ensure_traceparent`), layer enforcement for components,
    /// stamping a source or tenant header.
    ///
    /// ```
    /// use switchyard::{Bus, PublishError};
    /// let bus = Bus::builder()
    ///     .publish_hook(|env| {
    ///         if env.payload.len() > 1 << 20 {
    ///             return Err(PublishError::Refused("payload over 1 MiB".into()));
    ///         }
    ///         env.headers.insert("origin", "billing");
    ///         Ok(())
    ///     })
    ///     .build()?;
    /// # let _ = bus;
    /// # Ok::<(), switchyard::BuildError>(())
    /// ```
    pub fn publish_hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&mut Envelope) -> Result<(), PublishError> + Send + Sync + 'static,
    {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Wraps every single-message handler (subscriptions and command handlers) when it is
    /// registered, outside the subscription's own `.layer`s: a place for middleware every
    /// handler should have. A later call replaces an earlier one. Under
    /// [`with_default_resilience`](Self::with_default_resilience) the resilience stack wraps
    /// the result, whatever the order of the calls.
    pub fn wrap_handlers<F>(mut self, wrap: F) -> Self
    where
        F: Fn(&str, BoxHandler) -> BoxHandler + Send + Sync + 'static,
    {
        self.wrap = Some(Arc::new(wrap));
        self
    }

    /// A directory for the bus's own files (the file dead-letter queue of
    /// `with_default_resilience`, unless [`dead_letters`](Self::dead_letters) names a sink).
    /// Default: none.
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Builds the bus. Must be called inside a tokio runtime before handlers are started.
    pub fn build(self) -> Result<Bus, BuildError> {
        if self.capacity == 0 {
            return Err(BuildError::Invalid("queue_capacity must be at least 1"));
        }
        if self.workers == 0 {
            return Err(BuildError::Invalid("workers must be at least 1"));
        }
        if self.max_attempts == Some(0) {
            return Err(BuildError::Invalid("max_attempts must be at least 1"));
        }
        // Filled once the bus exists, for the resilience stack's breaker events.
        let slot: Arc<std::sync::OnceLock<Weak<BusInner>>> = Arc::default();
        #[cfg(feature = "middleware")]
        let resilience = match &self.resilience {
            Some(factory) => Some(crate::resilience::resolve(
                factory,
                self.data_dir.as_deref(),
                self.dead_letters.is_none(),
                slot.clone(),
            )?),
            None => None,
        };
        #[cfg(not(feature = "middleware"))]
        let resilience: Option<ResolvedResilience> = None;
        let max_attempts = self.max_attempts.unwrap_or_else(|| {
            resilience
                .as_ref()
                .map_or(DEFAULT_MAX_ATTEMPTS, |r| r.default_attempts)
        });
        let (resilience_wrap, file_dead_letters) = match resilience {
            Some(r) => (Some(r.wrap), r.dead_letters),
            None => (None, None),
        };
        let (sink, memory): (Arc<dyn DeadLetterSink>, _) =
            match self.dead_letters.or(file_dead_letters) {
                Some(s) => (s, None),
                None => {
                    let memory = Arc::new(InMemoryDeadLetters::default());
                    (memory.clone(), Some(memory))
                }
            };
        let bus = Bus {
            inner: Arc::new(BusInner {
                router: Router::new(self.cache_capacity),
                commands: RwLock::new(HashMap::new()),
                subs: Mutex::new(BTreeMap::new()),
                dead_letters: sink,
                memory_dead_letters: memory,
                capacity: self.capacity,
                overflow: self.overflow,
                workers: self.workers,
                max_attempts,
                retry_delay: self.retry_delay,
                state: AtomicU8::new(RUNNING),
                next_id: AtomicU64::new(1),
                pending: Arc::default(),
                worker_holds: AtomicUsize::new(0),
                lifecycle_events: self.lifecycle_events,
                transport: self.transport,
                hooks: self.hooks,
                wrap: self.wrap,
                resilience: resilience_wrap,
                dispatchers: Mutex::new(Vec::new()),
                scheduled: Mutex::new(HashMap::new()),
                shutdown_report: tokio::sync::OnceCell::new(),
            }),
        };
        let _ = slot.set(Arc::downgrade(&bus.inner));
        Ok(bus)
    }
}

/// Shared state behind every [`Bus`] clone.
pub(crate) struct BusInner {
    router: Router<Arc<SubShared>>,
    commands: RwLock<HashMap<Topic, CommandSlot>>,
    /// Every subscription whose workers still run (active or draining).
    subs: Mutex<BTreeMap<u64, Arc<SubShared>>>,
    dead_letters: Arc<dyn DeadLetterSink>,
    /// The default store, when no other sink was configured.
    memory_dead_letters: Option<Arc<InMemoryDeadLetters>>,
    capacity: usize,
    overflow: Overflow,
    workers: usize,
    /// Attempts per message, whoever makes them (see `register`).
    max_attempts: u32,
    retry_delay: Duration,
    state: AtomicU8,
    next_id: AtomicU64,
    /// Accepted messages not yet settled (handled, dead-lettered or reported); each one
    /// carries its guard (`pending::Accepted`).
    pub(crate) pending: Arc<Pending>,
    /// Strong references that workers keep between messages (`subscription::HeldBus`).
    /// When the strong count is no higher, the application has dropped every handle and the
    /// workers let go, so the bus is freed even while messages keep flowing.
    pub(crate) worker_holds: AtomicUsize,
    lifecycle_events: bool,
    transport: Option<Arc<dyn ErasedTransport>>,
    hooks: Vec<PublishHook>,
    wrap: Option<HandlerWrap>,
    /// The resilience stack, around `wrap`'s result on every single-message handler.
    resilience: Option<ResilienceWrap>,
    /// Tasks feeding lower handler-priority groups; shutdown waits for them.
    dispatchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Delayed publishes waiting for their time, so shutdown can report them.
    scheduled: Mutex<HashMap<MessageId, Scheduled>>,
    /// The report of the shutdown, once one finished: later calls return it.
    shutdown_report: tokio::sync::OnceCell<ShutdownReport>,
}

impl BusInner {
    pub(crate) fn dead_letter(&self, letter: DeadLetter) {
        self.dead_letters.put(letter);
    }

    pub(crate) fn lifecycle_events(&self) -> bool {
        self.lifecycle_events
    }

    /// Publishes a lifecycle event; failures are logged, never surfaced to the handler.
    async fn lifecycle<M: Message>(self: &Arc<Self>, cause: &Envelope, event: M) {
        let bus = Bus {
            inner: self.clone(),
        };
        let result = match event.to_envelope() {
            Ok(env) => bus.publish_envelope(env.caused_by(cause)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, topic = M::TOPIC, "lifecycle event not published");
        }
    }

    pub(crate) async fn command_started(self: &Arc<Self>, env: &Envelope, handler: &str) {
        let event = CommandStarted {
            command_id: env.id.to_string(),
            topic: env.topic.to_string(),
            handler: handler.to_owned(),
        };
        self.lifecycle(env, event).await;
    }

    pub(crate) async fn command_finished(
        self: &Arc<Self>,
        env: &Envelope,
        handler: &str,
        ok: bool,
        error: Option<String>,
        took: Duration,
    ) {
        let event = CommandFinished {
            command_id: env.id.to_string(),
            topic: env.topic.to_string(),
            handler: handler.to_owned(),
            ok,
            error,
            attempts: env.delivery.attempt,
            duration_us: took.as_micros() as u64,
        };
        self.lifecycle(env, event).await;
    }

    pub(crate) fn forget_subscription(&self, id: u64) {
        self.subs.lock().remove(&id);
    }

    /// Stops routing new messages to `sub`.
    pub(crate) fn unroute(&self, sub: &SubShared) {
        match sub.kind {
            SubscriptionKind::Event => self.router.remove(&sub.config.pattern, sub.id),
            SubscriptionKind::Command => {
                let mut commands = self.commands.write();
                let Ok(topic) = Topic::new(sub.config.pattern.as_str()) else {
                    return;
                };
                let Some(slot) = commands.get_mut(&topic) else {
                    return;
                };
                match &sub.config.session {
                    None if slot.global.as_ref().is_some_and(|s| s.id == sub.id) => {
                        slot.global = None
                    }
                    Some(session) if slot.sessions.get(session).is_some_and(|s| s.id == sub.id) => {
                        slot.sessions.remove(session);
                    }
                    _ => {}
                }
                if slot.is_empty() {
                    commands.remove(&topic);
                }
            }
        }
    }

    fn subs(&self) -> Vec<Arc<SubShared>> {
        self.subs.lock().values().cloned().collect()
    }
}

/// What [`Bus::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Messages settled (handled or dead-lettered by their handler) while draining.
    pub drained: u64,
    /// In-memory messages not handled before the deadline (or delayed ones not yet due);
    /// each was sent to the dead-letter sink with reason `Shutdown`, and command senders got
    /// `SendError::NotProcessed`.
    pub left: Vec<MessageId>,
    /// Messages from a transport not handled before the deadline: never acked, so the
    /// transport delivers them again (after a restart, on a durable transport).
    pub nacked: Vec<MessageId>,
}

/// The message bus: cheap to clone, every clone is the same bus.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard::{Bus, Message};
///
/// #[derive(Serialize, Deserialize)]
/// struct UserCreated { id: u64 }
/// impl Message for UserCreated { const TOPIC: &'static str = "users.created"; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::new();
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let _sub = bus
///     .on("welcome-mail", move |ev: UserCreated, _ctx| {
///         let tx = tx.clone();
///         async move { tx.send(ev.id).map_err(|e| e.to_string()) }
///     })
///     .start()
///     .await?;
/// bus.publish(UserCreated { id: 7 }).await?;
/// assert_eq!(rx.recv().await, Some(7));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("subscriptions", &self.inner.router.len())
            .field("pending", &self.inner.pending.count())
            .finish()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// A bus with every default (see [`BusBuilder`]).
    pub fn new() -> Self {
        Self::from_parts(BusBuilder::default())
    }

    fn from_parts(b: BusBuilder) -> Self {
        match b.build() {
            Ok(bus) => bus,
            // The default builder is valid by construction (capacity, workers, attempts ≥ 1).
            Err(_) => unreachable!("default bus settings are valid"),
        }
    }

    /// A builder to change the defaults.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    pub(crate) fn from_weak(inner: &Weak<BusInner>) -> Option<Self> {
        inner.upgrade().map(|inner| Self { inner })
    }

    fn weak(&self) -> Weak<BusInner> {
        Arc::downgrade(&self.inner)
    }

    fn config(&self, name: &str, pattern: Pattern) -> SubscriptionConfig {
        let i = &self.inner;
        SubscriptionConfig {
            name: SmolStr::new(name),
            pattern,
            workers: i.workers,
            capacity: i.capacity,
            overflow: i.overflow,
            max_attempts: i.max_attempts,
            retry_delay: i.retry_delay,
            ordering_key: None,
            filters: Vec::new(),
            session: None,
            handler_priority: 0,
            batch: None,
            ephemeral: false,
        }
    }

    fn typed_pattern<M: Message>() -> (Pattern, Option<SubscribeError>) {
        parse_pattern(M::TOPIC, false)
    }

    /// Subscribes a typed handler to `M`'s topic (or a pattern set with `.pattern`).
    /// A payload that does not decode as `M` goes to the dead-letter sink with its raw bytes.
    pub fn on<M, F, Fut, O, E>(&self, name: &str, f: F) -> SubscriptionBuilder
    where
        M: Message,
        F: Fn(M, Ctx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: IntoOutcome,
        E: Into<BoxError>,
    {
        let (pattern, error) = Self::typed_pattern::<M>();
        let handler = handler::typed_event::<M, F, Fut, O, E>(self.weak(), f);
        SubscriptionBuilder::with_error(
            self.clone(),
            SubscriptionKind::Event,
            self.config(name, pattern),
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
        let handler = handler::typed_command::<C, F, Fut, E>(self.weak(), f);
        let config = self.config(C::TOPIC, pattern);
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
        let handler = handler::typed_batch::<M, F, Fut, O, E>(self.weak(), SmolStr::new(name), f);
        let mut config = self.config(name, pattern);
        config.batch = Some(crate::subscription::BatchConfig {
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

    /// Starts a session: publishes `switchyard.session.started` and returns its guard.
    /// See [`Session`].
    pub async fn session(&self, id: impl Into<SmolStr>) -> Result<Session, PublishError> {
        self.check_running()?;
        Session::start(self.clone(), id.into()).await
    }

    pub(crate) fn inner(&self) -> &Arc<BusInner> {
        &self.inner
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
        let fed = match (&inner.transport, kind) {
            (Some(transport), SubscriptionKind::Event) => {
                if config.handler_priority != 0 {
                    return Err(SubscribeError::InvalidConfig(
                        "handler priority groups need the in-memory bus, not a transport",
                    ));
                }
                let group = (!config.ephemeral).then_some(config.name.as_str());
                Some(transport.subscribe(&config.pattern, group).await?)
            }
            _ => None,
        };
        let handler = match handler {
            Handler::Single(mut h) => {
                if let Some(wrap) = &inner.wrap {
                    h = wrap(&config.name, h);
                }
                if let Some(resilience) = &inner.resilience {
                    // The stack's retry makes the attempts (with backoff and the breaker); its
                    // final answer is `Permanent`, so the worker calls it once.
                    h = resilience(&config.name, h, config.max_attempts);
                    config.max_attempts = 1;
                }
                Handler::Single(h)
            }
            // The stack takes one envelope, so batch handlers keep the worker's own retries,
            // for the same number of attempts.
            batch @ Handler::Batch(_) => batch,
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(SubShared::new(id, kind, config, self.weak()));
        match kind {
            SubscriptionKind::Event => {
                inner
                    .router
                    .insert(&shared.config.pattern, id, shared.clone());
                if let Some(stream) = fed {
                    shared.spawn_pump(stream);
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
        Ok(Subscription::new(shared, self.weak()))
    }

    #[inline]
    fn run_hooks(&self, env: &mut Envelope) -> Result<(), PublishError> {
        if self.inner.hooks.is_empty() {
            return Ok(());
        }
        self.inner.hooks.iter().try_for_each(|hook| hook(env))
    }

    #[inline]
    fn check_running(&self) -> Result<(), PublishError> {
        if self.inner.state.load(Ordering::Acquire) == RUNNING {
            Ok(())
        } else {
            Err(PublishError::ShuttingDown)
        }
    }

    /// Publishes a typed event on `M::TOPIC`. Returns once every matching subscription has
    /// accepted it (queued), or says which refused it.
    pub async fn publish<M: Message>(&self, msg: M) -> Result<(), PublishError> {
        self.publish_envelope(msg.to_envelope()?).await
    }

    /// Publishes a typed event on another topic than `M::TOPIC`.
    pub async fn publish_to<M: Message>(&self, topic: &str, msg: M) -> Result<(), PublishError> {
        let mut env = msg.to_envelope()?;
        env.topic = Topic::new(topic)?;
        self.publish_envelope(env).await
    }

    /// Publishes an envelope to every subscription whose pattern matches its topic.
    ///
    /// When called from a handler, the envelope is recorded as caused by the message being
    /// handled and inherits its correlation id (unless one was set).
    pub async fn publish_envelope(&self, mut env: Envelope) -> Result<(), PublishError> {
        self.check_running()?;
        inherit_parent(&mut env);
        self.run_hooks(&mut env)?;
        if let Some(transport) = &self.inner.transport {
            return self.publish_via(transport.as_ref(), env).await;
        }
        let env = Arc::new(env);
        let targets = self.inner.router.route(&env.topic);
        let first = match priority_groups(&targets) {
            None => self.deliver_events(&targets, &env).await,
            Some(mut groups) => {
                let later = groups.split_off(1);
                let mut first = self.deliver_group(&groups[0], &env, true).await;
                if !first.shutting_down {
                    let waiters = std::mem::take(&mut first.waiters);
                    self.dispatch_later_groups(later, env, waiters);
                }
                first
            }
        };
        if first.shutting_down {
            return Err(PublishError::ShuttingDown);
        }
        if first.refused.is_empty() {
            Ok(())
        } else {
            Err(PublishError::Full {
                subscriptions: first.refused,
                delivered: first.delivered,
            })
        }
    }

    /// Hands an event to the transport; the local subscriptions it will come back to are
    /// counted as pending until their deliveries arrive and are settled.
    async fn publish_via(
        &self,
        transport: &dyn ErasedTransport,
        env: Envelope,
    ) -> Result<(), PublishError> {
        let expected = self.inner.router.route(&env.topic).len();
        // Dropped (publish failed or cancelled) unless kept: then no delivery is owed.
        let expectation = self.inner.pending.expect(expected);
        let result = transport.publish(env).await;
        if result.is_ok() {
            expectation.keep();
        }
        result
    }

    /// Queues an event in every subscription of one priority group, without creating a
    /// future per subscription when each accepts (or refuses) at once; from the first one
    /// whose overflow policy makes the publisher wait, as [`deliver_group`] does.
    async fn deliver_events(&self, group: &[Arc<SubShared>], env: &Arc<Envelope>) -> GroupDelivery {
        let mut out = GroupDelivery::default();
        for (i, sub) in group.iter().enumerate() {
            match sub.try_enqueue(&self.inner, env) {
                Ok(result) => out.record(self, sub, result),
                Err(entry) => {
                    let result = sub.finish_enqueue(&self.inner, entry).await;
                    out.record(self, sub, result);
                    for sub in &group[i + 1..] {
                        let result = sub.enqueue(&self.inner, env.clone(), None).await;
                        out.record(self, sub, result);
                    }
                    break;
                }
            }
        }
        out
    }

    /// Queues `env` in every subscription of one priority group. With `wait`, each accepted
    /// message carries a channel on which its handler's result comes back.
    async fn deliver_group(
        &self,
        group: &[Arc<SubShared>],
        env: &Arc<Envelope>,
        wait: bool,
    ) -> GroupDelivery {
        let mut out = GroupDelivery::default();
        for sub in group {
            let (tx, rx) = if wait {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            match sub.enqueue(&self.inner, env.clone(), tx).await {
                Ok(Enqueued::Queued) => {
                    out.delivered += 1;
                    if let Some(rx) = rx {
                        out.waiters.push((sub.name().to_owned(), rx));
                    }
                }
                Ok(Enqueued::Filtered) => out.filtered += 1,
                Err(EnqueueError::Full) => out.refused.push(sub.name().to_owned()),
                // Unsubscribed concurrently: it no longer wants messages. Unless the whole
                // bus is shutting down.
                Err(EnqueueError::Closed) => out.shutting_down |= self.is_shutting_down(),
            }
        }
        out
    }

    /// Hands `env` to lower priority groups, each once the group before it has finished.
    /// Runs in a task: `publish` returns when the first group has accepted the message.
    fn dispatch_later_groups(
        &self,
        groups: Vec<Vec<Arc<SubShared>>>,
        env: Arc<Envelope>,
        mut waiters: Vec<Waiter>,
    ) {
        let bus = self.clone();
        // Counted as pending until the last group has the message (or the task is aborted).
        let hold = bus.inner.pending.accept();
        let task = tokio::spawn(async move {
            let _hold = hold;
            for group in groups {
                for (_, rx) in waiters.drain(..) {
                    let _ = rx.await;
                }
                let delivery = bus.deliver_group(&group, &env, true).await;
                for name in delivery.refused {
                    bus.inner.dead_letter(
                        DeadLetter::new(
                            Envelope::clone(&env),
                            DeadLetterReason::Dropped,
                            "queue full when its priority group's turn came",
                        )
                        .with_handler(name),
                    );
                }
                if delivery.shutting_down {
                    bus.inner.dead_letter(DeadLetter::new(
                        Envelope::clone(&env),
                        DeadLetterReason::Shutdown,
                        "bus shut down before lower priority groups got the message",
                    ));
                    break;
                }
                waiters = delivery.waiters;
            }
        });
        let mut dispatchers = self.inner.dispatchers.lock();
        dispatchers.retain(|t| !t.is_finished());
        dispatchers.push(task);
    }

    /// Publishes and waits until every matching handler has finished with the message (priority
    /// groups in order), reporting each failure. For tests and flows that need the outcome.
    pub async fn publish_and_wait<M: Message>(&self, msg: M) -> Result<WaitReport, PublishError> {
        self.publish_envelope_and_wait(msg.to_envelope()?).await
    }

    /// [`publish_and_wait`](Self::publish_and_wait) for an envelope.
    pub async fn publish_envelope_and_wait(
        &self,
        mut env: Envelope,
    ) -> Result<WaitReport, PublishError> {
        self.check_running()?;
        if self.inner.transport.is_some() {
            return Err(PublishError::Transport(TransportError::new(
                TransportErrorKind::Unsupported,
                "publish_and_wait needs the in-memory bus: a transport delivers asynchronously",
            )));
        }
        inherit_parent(&mut env);
        self.run_hooks(&mut env)?;
        let env = Arc::new(env);
        let targets = self.inner.router.route(&env.topic);
        let mut report = WaitReport::default();
        let groups = priority_groups(&targets).unwrap_or_else(|| vec![targets.to_vec()]);
        for group in &groups {
            let delivery = self.deliver_group(group, &env, true).await;
            if delivery.shutting_down {
                return Err(PublishError::ShuttingDown);
            }
            report.filtered += delivery.filtered;
            for name in delivery.refused {
                let error = SendError::Full {
                    handler: name.clone(),
                };
                report.failures.push(HandlerFailure {
                    subscription: name,
                    error,
                });
            }
            for (name, rx) in delivery.waiters {
                match rx.await {
                    Ok(Ok(_)) => report.handled += 1,
                    Ok(Err(error)) => report.failures.push(HandlerFailure {
                        subscription: name,
                        error,
                    }),
                    Err(_) => report.failures.push(HandlerFailure {
                        subscription: name,
                        error: SendError::NotProcessed(
                            "the subscription stopped before handling it".into(),
                        ),
                    }),
                }
            }
        }
        Ok(report)
    }

    /// Publishes several messages in order; stops at the first error and says how many went out.
    pub async fn publish_batch<M: Message>(
        &self,
        msgs: impl IntoIterator<Item = M>,
    ) -> Result<usize, BatchPublishError> {
        let mut published = 0;
        for msg in msgs {
            let result = match msg.to_envelope() {
                Ok(env) => self.publish_envelope(env).await,
                Err(e) => Err(e),
            };
            result.map_err(|error| BatchPublishError { published, error })?;
            published += 1;
        }
        Ok(published)
    }

    /// Publishes `msg` after `delay`. Returns the message id once the message is accepted.
    ///
    /// In memory, the message waits in the bus: it counts as pending, and a shutdown before it
    /// is due dead-letters and reports it. On a transport it is handed to the transport at
    /// once with a `deliver-at` header (wall-clock milliseconds since the Unix epoch), so a
    /// durable transport keeps it across restarts; a subscription that receives it early
    /// hands it back with a nack delayed until it is due.
    pub async fn publish_after<M: Message>(
        &self,
        delay: Duration,
        msg: M,
    ) -> Result<MessageId, PublishError> {
        self.schedule_envelope(tokio::time::Instant::now() + delay, msg.to_envelope()?)
            .await
    }

    /// Publishes `msg` at `at` (tokio time, so tests can drive it with the virtual clock);
    /// see [`publish_after`](Self::publish_after).
    pub async fn publish_at<M: Message>(
        &self,
        at: tokio::time::Instant,
        msg: M,
    ) -> Result<MessageId, PublishError> {
        self.schedule_envelope(at, msg.to_envelope()?).await
    }

    /// Publishes an envelope at `at`; see [`publish_after`](Self::publish_after).
    pub async fn schedule_envelope(
        &self,
        at: tokio::time::Instant,
        mut env: Envelope,
    ) -> Result<MessageId, PublishError> {
        if self.inner.transport.is_none() {
            return self.schedule(at, env);
        }
        let due = std::time::SystemTime::now()
            + at.saturating_duration_since(tokio::time::Instant::now());
        let millis = due
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        env.headers.insert(DELIVER_AT_HEADER, millis.to_string());
        let id = env.id;
        self.publish_envelope(env).await?;
        Ok(id)
    }

    /// Schedules an envelope for `at`, in memory (the bus holds it until it is due, whether
    /// or not it runs on a transport). [`schedule_envelope`](Self::schedule_envelope) hands
    /// it to a transport instead when there is one.
    pub fn schedule(
        &self,
        at: tokio::time::Instant,
        mut env: Envelope,
    ) -> Result<MessageId, PublishError> {
        self.check_running()?;
        inherit_parent(&mut env);
        self.run_hooks(&mut env)?;
        let id = env.id;
        let accepted = self.inner.pending.accept();
        // Holding the table lock while spawning: the task looks itself up first thing, so it
        // cannot miss its own entry even when `at` is already past.
        let mut scheduled = self.inner.scheduled.lock();
        let bus = self.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let entry = bus.inner.scheduled.lock().remove(&id);
            let Some(Scheduled { env, accepted, .. }) = entry else {
                return;
            };
            match bus.publish_envelope(env.clone()).await {
                // Handed on: its deliveries are pending (and settled) on their own, so this
                // count is released (dropped), not settled.
                Ok(()) => drop(accepted),
                Err(e) => {
                    tracing::warn!(message_id = %id, error = %e, "delayed publish failed; dead-lettered");
                    bus.inner.dead_letter(DeadLetter::new(
                        env,
                        DeadLetterReason::Dropped,
                        format!("delayed publish failed: {e}"),
                    ));
                    accepted.settle(Settled::DeadLettered);
                }
            }
        });
        // Checked under the lock shutdown drains: a message scheduled during shutdown is
        // refused, never left behind unreported.
        if self.inner.state.load(Ordering::SeqCst) != RUNNING {
            task.abort();
            drop(scheduled);
            drop(accepted);
            return Err(PublishError::ShuttingDown);
        }
        scheduled.insert(
            id,
            Scheduled {
                env,
                task,
                accepted,
            },
        );
        Ok(id)
    }

    /// Sends a command to its one handler and waits for the typed result.
    pub async fn send<C: Command>(&self, cmd: C) -> Result<C::Output, SendError> {
        let mut env = cmd.to_envelope()?;
        env.kind = Kind::Command;
        self.send_typed::<C>(env, None).await
    }

    /// Sends a request: a command with a deadline. Past the deadline the caller gets
    /// `SendError::Timeout`; the handler's late reply is discarded.
    pub async fn request<C: Command>(
        &self,
        cmd: C,
        deadline: Duration,
    ) -> Result<C::Output, SendError> {
        let mut env = cmd.to_envelope()?;
        env.kind = Kind::Request;
        self.send_typed::<C>(env, Some(deadline)).await
    }

    pub(crate) async fn send_typed<C: Command>(
        &self,
        env: Envelope,
        deadline: Option<Duration>,
    ) -> Result<C::Output, SendError> {
        let result = match deadline {
            None => self.send_envelope(env).await?,
            Some(d) => self.request_envelope(env, d).await?,
        };
        let payload = result
            .reply
            .map(|r| r.payload)
            .unwrap_or_else(|| "null".into());
        serde_json::from_slice(&payload).map_err(|e| {
            SendError::Codec(switchyard_core::CodecError {
                direction: switchyard_core::CodecDirection::Decode,
                type_name: std::any::type_name::<C::Output>(),
                source: Box::new(e),
            })
        })
    }

    /// Sends a command envelope to the handler of its topic and waits for the result.
    /// With no handler registered this fails at once with `SendError::NoHandler`.
    pub async fn send_envelope(&self, mut env: Envelope) -> Result<CommandResult, SendError> {
        self.check_running()?;
        inherit_parent(&mut env);
        self.run_hooks(&mut env)?;
        if env.kind == Kind::Event {
            env.kind = Kind::Command;
        }
        let handler = {
            let commands = self.inner.commands.read();
            commands.get(&env.topic).and_then(|slot| {
                env.header(SESSION_HEADER)
                    .and_then(|s| slot.sessions.get(s))
                    .or(slot.global.as_ref())
                    .cloned()
            })
        };
        let Some(handler) = handler else {
            return Err(SendError::NoHandler { topic: env.topic });
        };
        let (tx, rx) = oneshot::channel();
        match handler.enqueue(&self.inner, Arc::new(env), Some(tx)).await {
            Ok(Enqueued::Queued) => {}
            Ok(Enqueued::Filtered) => {
                return Err(SendError::Rejected {
                    reason: format!("filtered out by handler {}", handler.name()),
                });
            }
            Err(EnqueueError::Full) => {
                return Err(SendError::Full {
                    handler: handler.name().to_owned(),
                });
            }
            Err(EnqueueError::Closed) => {
                self.check_running()?;
                return Err(SendError::NotProcessed(
                    "command handler was unregistered".into(),
                ));
            }
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(SendError::NotProcessed(
                "the handler stopped before answering".into(),
            )),
        }
    }

    /// [`send_envelope`](Self::send_envelope) with a deadline.
    pub async fn request_envelope(
        &self,
        mut env: Envelope,
        deadline: Duration,
    ) -> Result<CommandResult, SendError> {
        if env.kind == Kind::Event || env.kind == Kind::Command {
            env.kind = Kind::Request;
        }
        match tokio::time::timeout(deadline, self.send_envelope(env)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout { deadline }),
        }
    }

    /// Every live subscription and command handler with pattern, policy, depth and counters.
    pub fn registry(&self) -> Vec<SubscriptionInfo> {
        self.inner.subs().iter().map(|s| s.info()).collect()
    }

    /// The default in-memory dead-letter store, where this bus's dead letters go; `None` when
    /// they go elsewhere: a sink given to [`BusBuilder::dead_letters`], or the file queue of
    /// `with_default_resilience` under a data directory (read those through your handle on
    /// the sink). To add a letter wherever they go, use [`dead_letter`](Self::dead_letter).
    pub fn dead_letters(&self) -> Option<&InMemoryDeadLetters> {
        self.inner.memory_dead_letters.as_deref()
    }

    /// A JSON-serializable snapshot of the bus's own figures: every subscription's counters,
    /// queue depth and in-flight count, the pending total, and the default dead-letter store's
    /// size and evictions (when it is in use). Per-handler latency histograms and Prometheus
    /// output come from `switchyard_middleware::metrics`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = switchyard::Bus::new();
    /// let json = serde_json::to_string(&bus.metrics_snapshot()).unwrap();
    /// assert!(json.contains("\"pending\":0"));
    /// # }
    /// ```
    pub fn metrics_snapshot(&self) -> MetricsSnapshot {
        let dlq = self.dead_letters();
        MetricsSnapshot {
            pending: self.pending(),
            subscriptions: self.registry(),
            dead_letters: dlq.map(InMemoryDeadLetters::len),
            dead_letters_evicted: dlq.map(InMemoryDeadLetters::evicted),
            shutting_down: self.is_shutting_down(),
        }
    }

    /// Sends a dead letter to the configured sink (the default in-memory store, or the one
    /// given to [`BusBuilder::dead_letters`]); for components that give up on a message
    /// themselves, such as a flow-level error handler.
    pub fn dead_letter(&self, letter: DeadLetter) {
        self.inner.dead_letter(letter);
    }

    /// Messages accepted and not yet settled.
    pub fn pending(&self) -> usize {
        self.inner.pending.count()
    }

    /// Waits until every accepted message is settled (handled or dead-lettered), including
    /// retries and messages published by handlers meanwhile. Under a paused tokio clock,
    /// retry delays advance automatically.
    pub async fn run_until_idle(&self) {
        self.inner.pending.idle().await;
    }

    /// Stops intake, drains queued and in-flight work until `deadline`, then reports what is
    /// left: dead-lettered when it lived only in memory, returned to the transport (which
    /// redelivers it) when it came from one. New publishes get `ShuttingDown` from the moment
    /// this is called. Finally closes the transport, flushing pending publishes.
    ///
    /// Idempotent: a second call (from any clone) returns the first call's report, and one
    /// made while the first is still draining waits for it (the first call's `deadline`
    /// applies). A call cancelled midway is completed by the next one. The error is kept for
    /// compatibility; a transport that does not close cleanly is logged, not returned.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, CloseError> {
        let report = self
            .inner
            .shutdown_report
            .get_or_init(|| self.shutdown_once(deadline))
            .await;
        Ok(report.clone())
    }

    /// The work of [`shutdown`](Self::shutdown), run once (again only if a run was cancelled).
    async fn shutdown_once(&self, deadline: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.state.store(SHUTTING_DOWN, Ordering::SeqCst);
        let settled_before = inner.pending.settled();
        let until = tokio::time::Instant::now() + deadline;
        let mut report = ShutdownReport::default();
        // Delayed publishes that are not due yet will not be: report them.
        let scheduled: Vec<_> = inner.scheduled.lock().drain().collect();
        for (
            id,
            Scheduled {
                env,
                task,
                accepted,
            },
        ) in scheduled
        {
            task.abort();
            report.left.push(id);
            inner.dead_letter(DeadLetter::new(
                env,
                DeadLetterReason::Shutdown,
                "delayed publish not due before shutdown",
            ));
            accepted.settle(Settled::LeftOver);
        }
        let subs = inner.subs();
        for sub in &subs {
            sub.deactivate();
        }
        for sub in &subs {
            sub.stop_pump(until).await;
        }
        let mut handles: Vec<_> = subs
            .iter()
            .flat_map(|s| std::mem::take(&mut *s.workers.lock()))
            .collect();
        // A handle is awaited at most once to completion (awaiting it again would panic).
        let mut running = Vec::new();
        for mut h in handles.drain(..) {
            if !running.is_empty() || tokio::time::timeout_at(until, &mut h).await.is_err() {
                running.push(h);
            }
        }
        if !running.is_empty() {
            for h in &running {
                h.abort();
            }
            for h in running {
                // Cancelled or finished: either way the task no longer touches its queue.
                let _ = h.await;
            }
            for sub in &subs {
                self.report_leftovers(sub, &mut report).await;
            }
        }
        // Lower priority groups still being fed find closed queues and dead-letter the rest;
        // wait for that so nothing is still in their hands when shutdown returns.
        let dispatchers: Vec<_> = std::mem::take(&mut *inner.dispatchers.lock());
        // They only need to reach closed queues: a short grace even past the deadline.
        let grace = until.max(tokio::time::Instant::now() + Duration::from_millis(100));
        for mut task in dispatchers {
            if tokio::time::timeout_at(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        // Leftovers are settled as such, so they are not in this count.
        report.drained = inner.pending.settled() - settled_before;
        if let Some(transport) = &inner.transport
            && let Err(e) = transport
                .close(
                    std::time::Instant::now()
                        + until.saturating_duration_since(tokio::time::Instant::now()),
                )
                .await
        {
            tracing::warn!(error = %e, "transport did not close cleanly");
        }
        inner.state.store(STOPPED, Ordering::Release);
        if report.left.is_empty() && report.nacked.is_empty() {
            tracing::info!(drained = report.drained, "bus shut down cleanly");
        } else {
            tracing::warn!(
                left = report.left.len(),
                nacked = report.nacked.len(),
                drained = report.drained,
                "bus shut down with unprocessed messages (dead-lettered or returned to the transport)"
            );
        }
        report
    }

    /// After the drain deadline: settles what one subscription did not handle.
    async fn report_leftovers(&self, sub: &SubShared, report: &mut ShutdownReport) {
        let inner = &self.inner;
        // In-flight messages were cancelled with their worker (their pending count went with
        // it). Those from a transport lost their (unsettled) delivery with it, so the
        // transport redelivers them.
        let fed = inner.transport.is_some() && sub.kind == SubscriptionKind::Event;
        for env in sub.queue.in_flight_envelopes() {
            if fed {
                report.nacked.push(env.id);
            } else {
                report.left.push(env.id);
                inner.dead_letter(
                    DeadLetter::new(
                        Arc::unwrap_or_clone(env),
                        DeadLetterReason::Shutdown,
                        "in flight at the shutdown deadline",
                    )
                    .with_handler(sub.name()),
                );
            }
        }
        for mut entry in sub.queue.drain_waiting() {
            match entry.delivery.take() {
                Some(delivery) => {
                    report.nacked.push(entry.env.id);
                    if let Err(e) = delivery.nack(None).await {
                        tracing::warn!(error = %e, "nack at shutdown failed; the transport redelivers after its ack wait");
                    }
                    entry.accepted.settle(Settled::LeftOver);
                }
                None => {
                    report.left.push(entry.env.id);
                    sub.give_up(
                        inner,
                        entry,
                        DeadLetterReason::Shutdown,
                        "not processed before the shutdown deadline".into(),
                    );
                }
            }
        }
        inner.forget_subscription(sub.id);
    }

    /// What the transport can promise, or `None` when the bus runs in memory.
    pub fn transport_capabilities(&self) -> Option<Capabilities> {
        self.inner.transport.as_ref().map(|t| t.capabilities())
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) != RUNNING
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

/// Sets causation and correlation from the message being handled on this task, if any.
fn inherit_parent(env: &mut Envelope) {
    if env.causation_id.is_some() {
        return;
    }
    let _ = CURRENT.try_with(|Parent(parent)| {
        env.causation_id = Some(parent.id);
        if env.correlation_id == env.id {
            env.correlation_id = parent.correlation_id;
        }
        if let Some(session) = parent.header(SESSION_HEADER)
            && env.header(SESSION_HEADER).is_none()
        {
            env.headers.insert(SESSION_HEADER, session);
        }
    });
}

type Waiter = (String, oneshot::Receiver<Result<CommandResult, SendError>>);

/// A delayed publish waiting in memory for its time.
struct Scheduled {
    env: Envelope,
    task: tokio::task::JoinHandle<()>,
    /// Counted as pending from `schedule` until it is published, fails or is reported.
    accepted: Accepted,
}

/// What delivering to one priority group did.
#[derive(Default)]
struct GroupDelivery {
    delivered: usize,
    filtered: usize,
    refused: Vec<String>,
    waiters: Vec<Waiter>,
    shutting_down: bool,
}

impl GroupDelivery {
    /// Counts one subscription's answer to an event (no reply channel).
    fn record(&mut self, bus: &Bus, sub: &SubShared, result: Result<Enqueued, EnqueueError>) {
        match result {
            Ok(Enqueued::Queued) => self.delivered += 1,
            Ok(Enqueued::Filtered) => self.filtered += 1,
            Err(EnqueueError::Full) => self.refused.push(sub.name().to_owned()),
            // Unsubscribed concurrently: it no longer wants messages. Unless the whole bus
            // is shutting down.
            Err(EnqueueError::Closed) => self.shutting_down |= bus.is_shutting_down(),
        }
    }
}

/// Splits matching subscriptions into handler-priority groups, highest first; `None` when
/// they all share one priority (the common case, which then costs no allocation).
fn priority_groups(targets: &[Arc<SubShared>]) -> Option<Vec<Vec<Arc<SubShared>>>> {
    if targets.len() < 2 {
        return None;
    }
    let uniform = targets
        .windows(2)
        .all(|w| w[0].config.handler_priority == w[1].config.handler_priority);
    if uniform {
        return None;
    }
    let mut sorted: Vec<Arc<SubShared>> = targets.to_vec();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.config.handler_priority));
    Some(
        sorted
            .chunk_by(|a, b| a.config.handler_priority == b.config.handler_priority)
            .map(<[_]>::to_vec)
            .collect(),
    )
}

/// What [`Bus::metrics_snapshot`] returns.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Accepted messages not yet settled.
    pub pending: usize,
    /// Every subscription and command handler, with counters.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// Entries in the default in-memory dead-letter store; `None` when another sink takes
    /// the dead letters (see [`Bus::dead_letters`]).
    pub dead_letters: Option<usize>,
    /// Entries that store evicted because it was full; `None` as for `dead_letters`.
    pub dead_letters_evicted: Option<u64>,
    /// True once shutdown started.
    pub shutting_down: bool,
}

/// [`Bus::publish_batch`] stopped at an error.
#[derive(Debug, thiserror::Error)]
#[error("batch publish stopped after {published} message(s): {error}")]
pub struct BatchPublishError {
    /// Messages published before the error.
    pub published: usize,
    /// The error.
    #[source]
    pub error: PublishError,
}
