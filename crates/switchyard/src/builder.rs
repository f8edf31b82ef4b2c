//! [`BusBuilder`]: every setting of a bus, resolved together in `build`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use switchyard_core::{
    Backoff, DeadLetterSink, Envelope, InMemoryDeadLetters, PublishError, Publisher, RetryPolicy,
    Subscriber,
};

use crate::bus::Bus;
use crate::handler::BoxHandler;
use crate::intake::{Codecs, IntakeCheck, IntakeVerdict, TransportCodec};
use crate::queue::Overflow;
use crate::router::{DEFAULT_CACHE_CAPACITY, Router};
use crate::state::{BusInner, PublishHook, RUNNING, ResilienceWrap, TargetWrap, WrapTarget};
use crate::transport_link::ErasedTransport;

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
    /// Set by [`backoff`](Self::backoff) or [`retry_delay`](Self::retry_delay); `None`: the
    /// default (a fixed 100 ms, or the retry policy's backoff under resilience).
    backoff: Option<Backoff>,
    max_hold: Duration,
    cache_capacity: usize,
    max_message_bytes: usize,
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    lifecycle_events: bool,
    transport: Option<Arc<dyn ErasedTransport>>,
    hooks: Vec<PublishHook>,
    intake: Option<IntakeCheck>,
    codecs: Codecs,
    wrap: Option<TargetWrap>,
    upcast: Option<Arc<dyn crate::upcast::Upcast>>,
    data_dir: Option<std::path::PathBuf>,
    /// Set by `with_resilience` (feature `middleware`): resolved in `build`.
    pub(crate) resilience: Option<ResilienceResolver>,
    /// Set by `on_resilience_stack` (feature `middleware`): told of every stack built.
    #[cfg(feature = "middleware")]
    pub(crate) stack_hook: Option<crate::resilience::StackHook>,
}

/// The default of [`BusBuilder::max_message_bytes`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The default of [`BusBuilder::max_attempts`] without resilience.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The default of [`BusBuilder::retry_delay`] without resilience.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Resolves the resilience settings at build: what they amount to, given the builder's
/// ([`ResolveArgs`]). Made by `with_resilience` and `with_resilience_for`.
pub(crate) type ResilienceResolver =
    Arc<dyn Fn(ResolveArgs<'_>) -> Result<ResolvedResilience, BuildError> + Send + Sync>;

/// What the resilience settings are resolved with at build (read only by the resolvers of
/// feature `middleware`).
#[cfg_attr(not(feature = "middleware"), allow(dead_code))]
pub(crate) struct ResolveArgs<'a> {
    /// The bus's data directory.
    pub(crate) data_dir: Option<&'a std::path::Path>,
    /// Whether no dead-letter sink was given.
    pub(crate) no_sink_given: bool,
    /// The slot the bus will be in (for the breaker events).
    pub(crate) slot: Arc<std::sync::OnceLock<Weak<BusInner>>>,
    /// Told of every stack built (`on_resilience_stack`).
    #[cfg(feature = "middleware")]
    pub(crate) stack_hook: Option<crate::resilience::StackHook>,
}

/// What `build` resolved from the resilience settings.
pub(crate) struct ResolvedResilience {
    /// Attempts when neither the bus nor the subscription says (the retry policy's).
    pub(crate) default_attempts: u32,
    /// Backoff when neither the bus nor the subscription says (the retry policy's).
    pub(crate) default_backoff: Backoff,
    /// The file dead-letter queue under the data directory, if one is due.
    pub(crate) dead_letters: Option<Arc<dyn DeadLetterSink>>,
    pub(crate) wrap: ResilienceWrap,
}

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
            backoff: None,
            max_hold: crate::config::DEFAULT_MAX_HOLD,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            dead_letters: None,
            lifecycle_events: false,
            transport: None,
            hooks: Vec::new(),
            intake: None,
            codecs: Vec::new(),
            wrap: None,
            upcast: None,
            data_dir: None,
            resilience: None,
            #[cfg(feature = "middleware")]
            stack_hook: None,
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

    /// The same default delay before every retry when the handler does not say: shorthand for
    /// [`backoff`](Self::backoff)`(Backoff::fixed(d))`. Default 100 ms.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.backoff = Some(Backoff::fixed(d));
        self
    }

    /// Default [`max_hold`](crate::SubscriptionBuilder::max_hold) of each subscription: how
    /// long a transport delivery a worker holds (handler running, in-place retries waiting)
    /// is kept alive past the transport's ack wait (the log resets the delivery's deadline,
    /// NATS gets "in progress"), counted from when the transport handed it out. Past it the
    /// transport hands the delivery out again one ack wait later, even to another member of
    /// the group, while a hung handler may still hold it. Default
    /// [`DEFAULT_MAX_HOLD`](crate::DEFAULT_MAX_HOLD), 5 minutes; `Duration::ZERO` turns
    /// keep-alive off.
    pub fn max_hold(mut self, d: Duration) -> Self {
        self.max_hold = d;
        self
    }

    /// The largest payload, in bytes, the bus accepts on any publish, send, request or
    /// schedule: a larger one fails at once with [`PublishError::TooLarge`] (or
    /// `SendError::TooLarge`), naming both sizes, and nothing is delivered. Checked after the
    /// publish hooks (so a compressing hook counts its output). On a transport with a limit
    /// of its own (the log's `max_record_bytes`, the NATS server's `max_payload`) the
    /// smaller one applies. Default [`DEFAULT_MAX_MESSAGE_BYTES`] (16 MiB); `usize::MAX`
    /// turns the bus's own limit off. It measures encoded messages: a typed message that
    /// only typed handlers of its type read is not encoded in process (see
    /// [`Bus::publish`](crate::Bus::publish)), so it is not measured; it is measured where it
    /// gets encoded on its way (for a raw handler, a filter, a layer, a hook or a transport).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use switchyard::{Bus, Envelope, PublishError, Topic};
    /// let bus = Bus::builder().max_message_bytes(1024).build().unwrap();
    /// let env = Envelope::new(Topic::new("files.uploaded").unwrap(), vec![0u8; 4096]);
    /// match bus.publish_envelope(env).await {
    ///     Err(PublishError::TooLarge(e)) => assert_eq!((e.size, e.limit), (4096, 1024)),
    ///     other => panic!("expected TooLarge, got {other:?}"),
    /// }
    /// # }
    /// ```
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// Default delays between attempts when the handler does not say (`Retry { after }`
    /// wins): e.g. exponential with jitter, `Backoff::exponential(Duration::from_millis(50))`.
    /// Default a fixed 100 ms, or, under [`with_resilience`](Self::with_resilience), the retry
    /// policy's backoff. It applies to every retry of a message, whoever makes it: the
    /// worker's, a batch's, or the resilience stack's (whose policy it then overrides).
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchyard::{Backoff, Bus, Jitter};
    /// let bus = Bus::builder()
    ///     .max_attempts(5)
    ///     .backoff(Backoff::exponential(Duration::from_millis(50)).max_delay(Duration::from_secs(2)).jitter(Jitter::Equal))
    ///     .build()?;
    /// # let _ = bus;
    /// # Ok::<(), switchyard::BuildError>(())
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// [`max_attempts`](Self::max_attempts) and [`backoff`](Self::backoff) from one
    /// [`RetryPolicy`] (its classifier and `honor_retry_after` are the middleware's business:
    /// the bus retries every error not marked `Permanent` and always honours
    /// `Retry { after }`).
    pub fn retry_policy(self, policy: &RetryPolicy) -> Self {
        self.max_attempts(policy.get_max_attempts())
            .backoff(policy.backoff().clone())
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
    ///         env.headers_mut().insert("origin", "billing");
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

    /// Checks every envelope the bus takes in from its [transport](Self::transport) before
    /// it is queued for a handler: the boundary where messages from other processes (and
    /// from publishers that are not switchyard, e.g. a plain NATS client) come in. A later
    /// call replaces an earlier one. Default: none (nothing is checked, and the intake costs
    /// one `Option` test).
    ///
    /// [`IntakeVerdict::Accept`] delivers; [`IntakeVerdict::Warn`] logs the text
    /// (`tracing::warn!`) and delivers; [`IntakeVerdict::Reject`] never delivers: the envelope
    /// goes to the dead-letter sink with reason `Rejected` and the text as its error, and the
    /// transport delivery is terminated so it is not redelivered (a command served to
    /// another process is answered with `SendError::Rejected`). The check runs once per
    /// subscription that receives the message (each consumer group has its own delivery),
    /// after the subscription's filters (a filtered message is not for it and is acked
    /// unchecked); messages published in process do not pass it (use a
    /// [`publish_hook`](Self::publish_hook) there). `switchyard-contracts`'
    /// `Validator::intake_check` validates against the registered JSON Schemas.
    ///
    /// ```
    /// use switchyard::{Bus, IntakeVerdict};
    /// let bus = Bus::builder()
    ///     .intake_check(|env| match env.payload.first() {
    ///         Some(b'{') => IntakeVerdict::Accept,
    ///         _ => IntakeVerdict::Reject("payload is not a JSON object".into()),
    ///     })
    ///     .build()?;
    /// # let _ = bus;
    /// # Ok::<(), switchyard::BuildError>(())
    /// ```
    pub fn intake_check<F>(mut self, check: F) -> Self
    where
        F: Fn(&Envelope) -> IntakeVerdict + Send + Sync + 'static,
    {
        self.intake = Some(Arc::new(check));
        self
    }

    /// Adds a [`TransportCodec`]: events are encoded just before the bus hands them to its
    /// [transport](Self::transport) and decoded as they arrive from it, before filters, the
    /// [intake check](Self::intake_check) and handlers see them; what the transport stores is
    /// the encoded form. Codecs encode in the order added and decode in the reverse order
    /// (add a compressing codec before an encrypting one). A message that does not decode
    /// is dead-lettered as it arrived (reason `DecodeFailed`), never delivered. Without a
    /// transport the codecs never run. `switchyard-contracts`' `Encryption` is one.
    ///
    /// The size limit ([`max_message_bytes`](Self::max_message_bytes)) is checked again on
    /// the encoded payload.
    pub fn transport_codec(mut self, codec: impl TransportCodec) -> Self {
        self.codecs.push(Arc::new(codec));
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
        self.wrap = Some(Arc::new(move |target: &WrapTarget<'_>, handler| {
            wrap(target.name, handler)
        }));
        self
    }

    /// As [`wrap_handlers`](Self::wrap_handlers), told more about each handler: its name,
    /// the pattern (or command topic) it was registered for and its kind ([`WrapTarget`]).
    /// The pattern is a bounded label for per-handler metrics, where the topics of the
    /// messages are whatever publishers choose. A later call replaces an earlier one (of
    /// either method).
    pub fn wrap_handlers_with<F>(mut self, wrap: F) -> Self
    where
        F: Fn(&WrapTarget<'_>, BoxHandler) -> BoxHandler + Send + Sync + 'static,
    {
        self.wrap = Some(Arc::new(wrap));
        self
    }

    /// Upcasts messages written at an older [`Message::VERSION`](switchyard_core::Message::VERSION)
    /// before typed handlers decode them (see `switchyard-contracts`' `Upcasters`). A later
    /// call replaces an earlier one. Without one, older messages are decoded as they are.
    pub fn upcaster(mut self, upcast: impl crate::upcast::Upcast) -> Self {
        self.upcast = Some(Arc::new(upcast));
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
        // The message clock's one-off calibration (quanta's loop, once per process) here
        // rather than in the first publish.
        std::hint::black_box(switchyard_core::clock::now());
        if self.capacity == 0 {
            return Err(BuildError::Invalid("queue_capacity must be at least 1"));
        }
        if self.workers == 0 {
            return Err(BuildError::Invalid("workers must be at least 1"));
        }
        if self.max_attempts == Some(0) {
            return Err(BuildError::Invalid("max_attempts must be at least 1"));
        }
        if self.max_message_bytes == 0 {
            return Err(BuildError::Invalid("max_message_bytes must be at least 1"));
        }
        let own_limit = (self.max_message_bytes, "the bus's max_message_bytes");
        let size_limit = match self.transport.as_ref().and_then(|t| t.max_message_bytes()) {
            Some(theirs) if theirs.0 < own_limit.0 => theirs,
            _ => own_limit,
        };
        // Filled once the bus exists, for the resilience stack's breaker events.
        let slot: Arc<std::sync::OnceLock<Weak<BusInner>>> = Arc::default();
        let resilience = match &self.resilience {
            Some(resolve) => Some(resolve(ResolveArgs {
                data_dir: self.data_dir.as_deref(),
                no_sink_given: self.dead_letters.is_none(),
                slot: slot.clone(),
                #[cfg(feature = "middleware")]
                stack_hook: self.stack_hook.clone(),
            })?),
            None => None,
        };
        let max_attempts = self.max_attempts.unwrap_or_else(|| {
            resilience
                .as_ref()
                .map_or(DEFAULT_MAX_ATTEMPTS, |r| r.default_attempts)
        });
        let backoff = self.backoff.unwrap_or_else(|| {
            resilience.as_ref().map_or_else(
                || Backoff::fixed(DEFAULT_RETRY_DELAY),
                |r| r.default_backoff.clone(),
            )
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
                commands: RwLock::new(Default::default()),
                subs: Mutex::new(BTreeMap::new()),
                dead_letters: sink,
                memory_dead_letters: memory,
                capacity: self.capacity,
                overflow: self.overflow,
                workers: self.workers,
                max_attempts,
                backoff,
                max_hold: self.max_hold,
                size_limit,
                state: AtomicU8::new(RUNNING),
                next_id: AtomicU64::new(1),
                pending: Arc::default(),
                worker_holds: AtomicUsize::new(0),
                lifecycle_events: self.lifecycle_events,
                transport: self.transport,
                hooks: self.hooks,
                intake: self.intake,
                codecs: self.codecs,
                wrap: self.wrap,
                upcast: self.upcast,
                resilience: resilience_wrap,
                dispatchers: Mutex::new(Vec::new()),
                scheduled: Mutex::new(HashMap::new()),
                shutdown: tokio::sync::watch::Sender::new(Default::default()),
                handed_back: Mutex::new(Vec::new()),
                deferred: Default::default(),
            }),
        };
        let _ = slot.set(Arc::downgrade(&bus.inner));
        Ok(bus)
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
}
