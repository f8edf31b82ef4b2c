//! The shared state everything else works on: the bus's ([`BusInner`]) and each
//! subscription's ([`SubShared`]), with the few operations every layer needs (routing
//! bookkeeping, giving a message up to the dead-letter sink). Behaviour lives in the modules
//! above: `publish`, `command`, `dispatch`, `pump`, `shutdown`.

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};
use smol_str::SmolStr;
use switchyard_core::{
    Backoff, DeadLetter, DeadLetterReason, DeadLetterSink, Delivery, Envelope, InMemoryDeadLetters,
    MessageId, PublishError, SendError, Topic,
};
use tokio::task::JoinHandle;

use crate::config::{SubscriptionConfig, SubscriptionKind};
use crate::handler::{BoxHandler, SingleHandler};
use crate::pending::{Accepted, Pending, Settled};
use crate::queue::{Entry, Overflow, Queue};
use crate::reply::{TypedValue, WantedType};
use crate::router::Router;
use crate::stats::{Counters, SubscriptionInfo, SubscriptionStats, inc};
use crate::transport_link::ErasedTransport;

/// Header carrying the wall-clock time (milliseconds since the Unix epoch, as decimal
/// digits) before which a message delayed through a transport must not be handled.
///
/// [`Bus::publish_after`](crate::Bus::publish_after) and
/// [`schedule_envelope`](crate::Bus::schedule_envelope) set it on a bus with a transport; a
/// subscription that receives the message early hands it back to its transport until it is
/// due. An event published with it set (by this bus, or by another client of the transport)
/// is delayed the same way; the in-memory bus does not read it (it holds delayed messages
/// itself). Only events are delayed: a command or request envelope carrying it is refused
/// with [`PublishError::DelayedCommand`](crate::PublishError::DelayedCommand).
///
/// ```
/// let mut env = switchyard::Envelope::new(switchyard::Topic::new("jobs.run").unwrap(), "x");
/// env.headers_mut().insert(switchyard::DELIVER_AT_HEADER, "1767225600000".to_string());
/// assert_eq!(env.header("deliver-at"), Some("1767225600000"));
/// ```
pub const DELIVER_AT_HEADER: &str = "deliver-at";

/// When a delayed message is due, if it carries [`DELIVER_AT_HEADER`].
pub(crate) fn deliver_at(env: &Envelope) -> Option<std::time::SystemTime> {
    let millis: u64 = env.header(DELIVER_AT_HEADER)?.parse().ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

/// The message being handled on the current task, so publishes from a handler are recorded
/// as its consequences (and stay in its session), and middleware can keep it without a copy.
/// A pointer to the shared envelope, set as `switchyard_core::delivered` around every call
/// and poll of a handler; its id, correlation id and session are only read when the handler
/// publishes.
#[derive(Debug, Clone)]
pub(crate) struct Parent(pub(crate) Arc<Envelope>);

impl Parent {
    pub(crate) fn of(env: &Arc<Envelope>) -> Self {
        Self(Arc::clone(env))
    }
}

/// For an attempt at a command whose sender in this process waits for a typed result: where
/// the typed handler leaves its output instead of encoding a reply. Swapped in around the
/// calls and polls of such attempts ([`within`](Self::within)); a handler call nested in one
/// (a command sent from the handler and run inline, on the same thread) sees the slot too, so
/// the slot also says whose it is: only the handler of the message it was made for fills it
/// ([`offer_typed`] compares the delivered message's id with `owner`: the id, not the shared
/// envelope's address, since a layer may run its inner handler in a delivered scope of its own
/// copy, review rev3).
#[derive(Default)]
pub(crate) struct TypedSlot {
    /// The type the sender takes; `None` outside such an attempt.
    wanted: Option<WantedType>,
    /// The id of the message the attempt handles.
    owner: Option<MessageId>,
    value: Option<TypedValue>,
}

thread_local! {
    /// The slot of the attempt being called or polled on this thread: a thread-local swapped
    /// in and out around each call and poll (as `switchyard_core::delivered`), rather than a
    /// tokio task-local, whose scope costs several times more per command.
    /// A `RefCell` (borrowed only inside this module, never across a call out of it): the
    /// slot is swapped and filled in place, not moved out of a `Cell` and back.
    static TYPED: RefCell<TypedSlot> = const {
        RefCell::new(TypedSlot {
            wanted: None,
            owner: None,
            value: None,
        })
    };
}

impl TypedSlot {
    /// A slot for an attempt whose sender takes a `wanted`, holding the output `value` a call
    /// left already, if any (an inline run's first call, waiting, goes on in the run:
    /// `inline.rs`).
    pub(crate) fn new(
        wanted: WantedType,
        owner: &Arc<Envelope>,
        value: Option<TypedValue>,
    ) -> Self {
        Self {
            wanted: Some(wanted),
            owner: Some(owner.id.clone()),
            value,
        }
    }

    /// The output a handler left, if any.
    pub(crate) fn into_value(self) -> Option<TypedValue> {
        self.value
    }

    /// Awaits `call` with this slot swapped in around each of its polls: its output and the
    /// typed output a handler left.
    #[inline]
    pub(crate) async fn around<F: std::future::Future>(
        mut self,
        call: F,
    ) -> (F::Output, Option<TypedValue>) {
        let mut call = std::pin::pin!(call);
        let result = std::future::poll_fn(|cx| self.within(|| call.as_mut().poll(cx))).await;
        (result, self.value)
    }

    /// Calls `f` with this slot as the one a handler's [`offer_typed`] fills (the outer one,
    /// if any, is back after it, also when `f` panics).
    #[inline]
    pub(crate) fn within<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let _entered = TypedEntered::new(self);
        f()
    }
}

/// A slot swapped into the thread-local, swapped back out on drop.
struct TypedEntered<'a> {
    slot: &'a mut TypedSlot,
    swapped: bool,
}

impl<'a> TypedEntered<'a> {
    #[inline]
    fn new(slot: &'a mut TypedSlot) -> Self {
        let swapped = swap_typed(slot);
        Self { slot, swapped }
    }
}

impl Drop for TypedEntered<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.swapped {
            swap_typed(self.slot);
        }
    }
}

/// Swaps `slot` with the thread-local; `false` when the thread is ending.
#[inline]
fn swap_typed(slot: &mut TypedSlot) -> bool {
    TYPED
        .try_with(|t| match t.try_borrow_mut() {
            Ok(mut t) => {
                std::mem::swap(&mut *t, slot);
                true
            }
            // Never: nothing holds the borrow across a call out of this module.
            Err(_) => false,
        })
        .unwrap_or(false)
}

/// In a handler: hands `output` to the sender waiting for it typed (replacing an output a
/// previous call of the same attempt left), or gives it back when no sender takes an `O`, or
/// the slot is another message's (this handler runs nested in that one's attempt).
pub(crate) fn offer_typed<O: Send + 'static>(output: O) -> Result<(), O> {
    let mut output = Some(output);
    // A replaced output is dropped after the borrow ends: its `Drop` is the application's
    // code, which may send a typed command handled on this thread (and offer its output).
    let _replaced = TYPED.try_with(|t| {
        let Ok(mut slot) = t.try_borrow_mut() else {
            return None;
        };
        if slot
            .wanted
            .is_some_and(|wanted| wanted() == TypeId::of::<O>())
            && switchyard_core::delivered::with(|env| slot.owner.as_ref() == Some(&env.id))
                == Some(true)
            && let Some(output) = output.take()
        {
            return slot.value.replace(crate::reply::box_output(output));
        }
        None
    });
    match output {
        None => Ok(()),
        Some(output) => Err(output),
    }
}

pub(crate) const RUNNING: u8 = 0;

pub(crate) const SHUTTING_DOWN: u8 = 1;

pub(crate) const STOPPED: u8 = 2;

/// The handlers of one command topic: one global, and one per session at most.
#[derive(Default)]
pub(crate) struct CommandSlot {
    pub(crate) global: Option<Arc<SubShared>>,
    pub(crate) sessions: HashMap<SmolStr, Arc<SubShared>>,
}

impl CommandSlot {
    pub(crate) fn is_empty(&self) -> bool {
        self.global.is_none() && self.sessions.is_empty()
    }
}

/// Wraps a single-message handler in the resilience stack at registration: (the handler's
/// name, pattern and kind, handler, attempts the stack makes, the backoff between them) → the
/// stack, held as it is (not boxed again: the workers await its future in place). Made in
/// `build` from `with_resilience`.
pub(crate) type ResilienceWrap =
    Arc<dyn Fn(&WrapTarget<'_>, BoxHandler, u32, &Backoff) -> SingleHandler + Send + Sync>;

/// Wraps every handler at registration (name, handler) → handler; see
/// [`BusBuilder::wrap_handlers`].
pub type HandlerWrap = Arc<dyn Fn(&str, BoxHandler) -> BoxHandler + Send + Sync>;

/// What a bus-wide handler wrap is told about the handler it wraps; see
/// [`BusBuilder::wrap_handlers_with`](crate::BusBuilder::wrap_handlers_with).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct WrapTarget<'a> {
    /// The subscription's (or command handler's) name.
    pub name: &'a str,
    /// The pattern it subscribes to; for a command handler, its topic. Unlike the topics of
    /// the messages it receives, these are as many as the registrations.
    pub pattern: &'a str,
    /// Event subscription or command handler.
    pub kind: crate::SubscriptionKind,
    /// Counts re-attempts in the subscription's `retried`; see [`WrapTarget::retries`].
    pub(crate) retries: &'a crate::stats::RetryCounter,
}

impl WrapTarget<'_> {
    /// Counts re-attempts in this subscription's (or command handler's) `retried`: give it to
    /// a retry the wrap adds (`ResilienceConfig::on_retry(move |_| retries.count())`), which
    /// the bus does not see, so that its figures show the retries.
    pub fn retries(&self) -> crate::stats::RetryCounter {
        self.retries.clone()
    }
}

/// The wrap the bus keeps: [`HandlerWrap`]s are adapted to it.
pub(crate) type TargetWrap = Arc<dyn Fn(&WrapTarget<'_>, BoxHandler) -> BoxHandler + Send + Sync>;

/// Runs on every envelope before it is published, sent or scheduled; see
/// [`BusBuilder::publish_hook`].
pub type PublishHook = Arc<dyn Fn(&mut Envelope) -> Result<(), PublishError> + Send + Sync>;

/// Shared state behind every [`Bus`] clone.
pub(crate) struct BusInner {
    pub(crate) router: Router<Arc<SubShared>>,
    /// Looked up on every send: a cheap hash (topics are not attacker-chosen keys here any
    /// more than the router's are).
    pub(crate) commands: RwLock<rustc_hash::FxHashMap<Topic, CommandSlot>>,
    /// Every subscription whose workers still run (active or draining).
    pub(crate) subs: Mutex<BTreeMap<u64, Arc<SubShared>>>,
    pub(crate) dead_letters: Arc<dyn DeadLetterSink>,
    /// The default store, when no other sink was configured.
    pub(crate) memory_dead_letters: Option<Arc<InMemoryDeadLetters>>,
    pub(crate) capacity: usize,
    pub(crate) overflow: Overflow,
    pub(crate) workers: usize,
    /// Attempts per message, whoever makes them (see `register`).
    pub(crate) max_attempts: u32,
    /// The delays between attempts, whoever makes them (see `register`).
    pub(crate) backoff: Backoff,
    /// The subscriptions' default [`max_hold`](crate::BusBuilder::max_hold).
    pub(crate) max_hold: Duration,
    /// The largest payload accepted, and whose limit it is (`BusBuilder::max_message_bytes`
    /// or the transport's, whichever is smaller).
    pub(crate) size_limit: (usize, &'static str),
    pub(crate) state: AtomicU8,
    pub(crate) next_id: AtomicU64,
    /// Accepted messages not yet settled (handled, dead-lettered or reported); each one
    /// carries its guard (`pending::Accepted`).
    pub(crate) pending: Arc<Pending>,
    /// Strong references that workers keep between messages (`subscription::HeldBus`).
    /// When the strong count is no higher, the application has dropped every handle and the
    /// workers let go, so the bus is freed even while messages keep flowing.
    pub(crate) worker_holds: AtomicUsize,
    pub(crate) lifecycle_events: bool,
    pub(crate) transport: Option<Arc<dyn ErasedTransport>>,
    pub(crate) hooks: Vec<PublishHook>,
    /// Checks what arrives from the transport before it is queued (`pump`).
    pub(crate) intake: Option<crate::intake::IntakeCheck>,
    /// Encode events for the transport and decode what arrives (`publish_via`, `pump`).
    pub(crate) codecs: crate::intake::Codecs,
    pub(crate) wrap: Option<TargetWrap>,
    /// Upcasts older message versions before typed handlers decode them (`upcast`).
    pub(crate) upcast: Option<std::sync::Arc<dyn crate::upcast::Upcast>>,
    /// The resilience stack, around `wrap`'s result on every single-message handler.
    pub(crate) resilience: Option<ResilienceWrap>,
    /// Tasks feeding lower handler-priority groups; shutdown waits for them.
    pub(crate) dispatchers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Delayed publishes waiting for their time, so shutdown can report them.
    pub(crate) scheduled: Mutex<HashMap<MessageId, Scheduled>>,
    /// Where the shutdown stands (its report once it finished): shared by every call, so a
    /// call cancelled midway loses nothing (`shutdown.rs`).
    pub(crate) shutdown: tokio::sync::watch::Sender<crate::shutdown::ShutdownPhase>,
    /// Deliveries a pump had taken from the transport when the shutdown closed its queue:
    /// dropped unsettled (so given back to the transport), named by the shutdown report with
    /// the other messages handed back (`ShutdownReport::nacked`).
    pub(crate) handed_back: Mutex<Vec<MessageId>>,
    /// Hand-backs that are not attempts (a delayed message handed back early, a handler's
    /// `HandBack`), per subscription and message (`deferred.rs`).
    pub(crate) deferred: crate::deferred::Deferred,
}

impl BusInner {
    /// The subscriptions whose pattern matches `topic` ([`Router::route`]). Not generic, so
    /// it is compiled once, here, rather than into every crate that instantiates a generic
    /// publish (where its code would shift the inlining of unrelated paths).
    #[inline(never)]
    pub(crate) fn route(&self, topic: &Topic) -> Arc<[Arc<SubShared>]> {
        self.router.route(topic)
    }

    /// Stores a dead letter, encoded first by the codecs that keep dead letters encoded
    /// ([`TransportCodec::encodes_dead_letters`](crate::TransportCodec::encodes_dead_letters))
    /// when it is an event on a bus with a transport (without one, codecs never run).
    pub(crate) fn dead_letter(&self, mut letter: DeadLetter) {
        // Only events: they are what codecs encode on the way out (a command or request never
        // passes through one, so a replayed command must not come back encoded).
        if self.transport.is_some() && letter.envelope.kind == switchyard_core::Kind::Event {
            for codec in self.codecs.iter().filter(|c| c.encodes_dead_letters()) {
                let mut encoded = letter.envelope.clone();
                match codec.encode(&mut encoded) {
                    Ok(()) => letter.envelope = encoded,
                    // Kept as it is: a dead letter is never lost.
                    Err(e) => tracing::error!(
                        message_id = %letter.envelope.id,
                        topic = %letter.envelope.topic,
                        error = %e,
                        "could not encode a dead letter: it is stored decoded"
                    ),
                }
            }
        }
        self.dead_letters.put(letter);
    }

    /// Stores a dead letter whose envelope is as it arrived from the transport (still
    /// encoded), without encoding it again.
    pub(crate) fn dead_letter_as_arrived(&self, letter: DeadLetter) {
        self.dead_letters.put(letter);
    }

    pub(crate) fn lifecycle_events(&self) -> bool {
        self.lifecycle_events
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

    pub(crate) fn subs(&self) -> Vec<Arc<SubShared>> {
        self.subs.lock().values().cloned().collect()
    }
}

/// What a subscription's session scope, filters and ordering key say of a message
/// ([`SubShared::admission`]).
pub(crate) enum Admission {
    /// Kept out by the session scope or a filter.
    Filtered,
    /// Taken, in this ordering lane (`None`: no key).
    Lane(Option<SmolStr>),
    /// A filter or the ordering key panicked; the text says which and the panic's message.
    Panicked(String),
}

/// The text of a panic's payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    switchyard_core::error::panic_text(panic)
        .unwrap_or("non-string panic payload")
        .to_owned()
}

/// State shared by a subscription's handle, its workers and the router.
pub(crate) struct SubShared {
    pub(crate) id: u64,
    pub(crate) kind: SubscriptionKind,
    pub(crate) config: SubscriptionConfig,
    pub(crate) queue: Queue,
    /// Written by the workers on every message: kept off the cache lines publishers read
    /// (`CachePadded` pads to 128 bytes where adjacent-line prefetch pairs lines).
    pub(crate) counters: CachePadded<Counters>,
    pub(crate) workers: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) pump: Mutex<Option<JoinHandle<()>>>,
    /// What the transport owes this subscription's reader, set before it is routed to (on a
    /// transport only); alive while a pump reads for it (`pending::OwedTo`).
    pub(crate) owed: std::sync::OnceLock<Weak<crate::pending::OwedTo>>,
    pub(crate) live_workers: AtomicUsize,
    pub(crate) active: AtomicBool,
    pub(crate) bus: Weak<BusInner>,
}

impl SubShared {
    pub(crate) fn new(
        id: u64,
        kind: SubscriptionKind,
        config: SubscriptionConfig,
        bus: Weak<BusInner>,
    ) -> Self {
        Self {
            id,
            kind,
            queue: Queue::new(config.capacity, config.overflow, config.workers),
            config,
            counters: CachePadded::default(),
            workers: Mutex::new(Vec::new()),
            pump: Mutex::new(None),
            owed: std::sync::OnceLock::new(),
            live_workers: AtomicUsize::new(0),
            active: AtomicBool::new(true),
            bus,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn info(&self) -> SubscriptionInfo {
        SubscriptionInfo {
            name: self.config.name.to_string(),
            pattern: self.config.pattern.to_string(),
            kind: self.kind,
            workers: self.config.workers,
            capacity: self.queue.capacity(),
            overflow: self.queue.overflow().name(),
            depth: self.queue.len(),
            in_flight: self.queue.in_flight(),
            active: self.active.load(Ordering::Relaxed),
            session: self.config.session.as_ref().map(ToString::to_string),
            handler_priority: self.config.handler_priority,
            filters: self.config.filters.len(),
            batch_size: self.config.batch.map(|b| b.max_size),
            stats: self.counters.snapshot(),
        }
    }

    pub(crate) fn stats(&self) -> SubscriptionStats {
        self.counters.snapshot()
    }

    /// Session scope, filters and ordering key, looked at before queueing. The filters and
    /// the ordering key are the application's code, run on the publisher's (or sender's)
    /// task: a panic in one is captured and reported as [`Admission::Panicked`], never
    /// unwound into the publish.
    #[inline]
    pub(crate) fn admission(&self, env: &Envelope) -> Admission {
        if !self.config.in_session_scope(env) {
            return Admission::Filtered;
        }
        if self.config.filters.is_empty() && self.config.ordering_key.is_none() {
            return Admission::Lane(None);
        }
        self.run_admission_fns(env)
    }

    /// [`admission`](Self::admission)'s filters and ordering key (out of line: the common
    /// subscription has neither).
    #[inline(never)]
    fn run_admission_fns(&self, env: &Envelope) -> Admission {
        match self.passes_filters(env) {
            Ok(true) => {}
            Ok(false) => return Admission::Filtered,
            Err(why) => return Admission::Panicked(why),
        }
        match self.lane(env) {
            Ok(lane) => Admission::Lane(lane),
            Err(why) => Admission::Panicked(why),
        }
    }

    /// Whether every filter takes `env` (the session scope is not looked at); `Err` with
    /// the text "filter panicked: <message>" when one panicked.
    #[inline]
    pub(crate) fn passes_filters(&self, env: &Envelope) -> Result<bool, String> {
        if self.config.filters.is_empty() {
            return Ok(true);
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.config.filters.iter().all(|f| f(env))
        }))
        .map_err(|panic| format!("filter panicked: {}", panic_message(&*panic)))
    }

    /// `env`'s ordering key (its lane), if the subscription has a key function; `Err` with
    /// the text "ordering key panicked: <message>" when it panicked.
    #[inline]
    pub(crate) fn lane(&self, env: &Envelope) -> Result<Option<SmolStr>, String> {
        let Some(key) = &self.config.ordering_key else {
            return Ok(None);
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| key(env)))
            .map_err(|panic| format!("ordering key panicked: {}", panic_message(&*panic)))
    }

    /// Counts and logs a filter, intake check or ordering key that panicked on `env` (the message is
    /// then given up for this subscription).
    #[cold]
    pub(crate) fn note_admission_panic(&self, env: &Envelope, why: &str) {
        inc(&self.counters.panicked);
        tracing::error!(subscription = %self.name(), message_id = %env.id,
            topic = %env.topic, error = %why,
            "a filter, intake check or ordering key panicked: the message is dead-lettered for this subscription");
    }

    /// Gives up an in-memory message (or a remote command) whose filter, ordering key or
    /// intake check panicked for this subscription (never accepted, so nothing is settled): counted (`panicked`,
    /// `dead_lettered`), dead-lettered as published (reason `Panicked`, handler this
    /// subscription), and the error its sender gets.
    #[cold]
    #[inline(never)]
    pub(crate) fn give_up_panicked(
        &self,
        bus: &BusInner,
        env: &Envelope,
        why: String,
    ) -> SendError {
        self.note_admission_panic(env, &why);
        inc(&self.counters.dead_lettered);
        bus.dead_letter(
            DeadLetter::new(env.clone(), DeadLetterReason::Panicked, why.clone())
                .with_handler(self.config.name.clone()),
        );
        SendError::Failed {
            error: why,
            attempts: 0,
        }
    }

    /// Dead-letters a message that will not be handled, answers its sender and settles it.
    pub(crate) fn give_up(
        &self,
        bus: &BusInner,
        entry: Entry,
        reason: DeadLetterReason,
        error: String,
    ) {
        inc(&self.counters.dead_lettered);
        if let Some(reply) = entry.reply {
            // A queued command's reply always has a channel: nothing comes back.
            let _ = reply.send(Err(SendError::NotProcessed(error.clone())));
        }
        bus.dead_letter(
            DeadLetter::new(Arc::unwrap_or_clone(entry.env), reason, error)
                .with_handler(self.config.name.clone()),
        );
        entry.accepted.settle(match reason {
            DeadLetterReason::Shutdown => Settled::LeftOver,
            _ => Settled::DeadLettered,
        });
    }

    /// Resolves once the subscription was removed (its handle dropped) while the bus runs;
    /// never during a shutdown, whose deadline settles what is left. See
    /// [`give_up_waiting`](Self::give_up_waiting).
    pub(crate) async fn removed(&self) {
        self.queue.closed().await;
        let running = self
            .bus
            .upgrade()
            .is_some_and(|b| b.state.load(Ordering::Acquire) == RUNNING);
        if !running {
            std::future::pending::<()>().await;
        }
    }

    /// Settles everything waiting in the queue of a [removed](Self::removed) subscription
    /// whose handler cannot take messages now (an open circuit breaker, a rate limit):
    /// nothing is routed to it any more, so waiting for its handler would keep its
    /// commands' senders, and the bus's pending count (which `run_until_idle` and a
    /// shutdown wait for), waiting out the breaker's cool-down. An in-memory message is
    /// dead-lettered (`Unroutable`, its sender answered `NotProcessed`); one from a
    /// transport is handed back (nacked), which delivers it again.
    pub(crate) async fn give_up_waiting(&self) {
        let Some(bus) = self.bus.upgrade() else {
            return;
        };
        for entry in self.queue.drain_waiting() {
            match self.hand_back_unhandled(&bus, entry).await {
                Ok(()) => {}
                Err(entry) => self.give_up(
                    &bus,
                    entry,
                    DeadLetterReason::Unroutable,
                    "its subscription was removed while the handler could not take messages (not ready: e.g. an open circuit breaker)".into(),
                ),
            }
        }
    }

    /// Hands a queued transport delivery that no handler will take here back to the transport
    /// (`AckHandle::hand_back`: not a failed delivery, so the log does not count it towards
    /// `max_deliver`), noted in `deferred` so that when it comes back to this subscription
    /// here its attempt number counts only the attempts made. `Err(entry)` for an entry with
    /// no delivery (an in-memory message), untouched.
    pub(crate) async fn hand_back_unhandled(
        &self,
        bus: &BusInner,
        mut entry: Entry,
    ) -> Result<(), Entry> {
        let Some(delivery) = entry.delivery.take() else {
            return Err(entry);
        };
        // The queued envelope says how many attempts were made.
        self.hand_back_noted(bus, *delivery, entry.env.delivery.attempt, None)
            .await;
        entry.accepted.settle(Settled::LeftOver);
        Ok(())
    }

    /// Hands `delivery` back to its transport after `delay` (`AckHandle::hand_back`: not a
    /// failed delivery, so the log does not count it towards `max_deliver`), and notes in
    /// `deferred` that of the transport's `n` deliveries of it only `made` were attempts, so
    /// that when it comes back to this subscription here its attempt number counts those.
    pub(crate) async fn hand_back_noted(
        &self,
        bus: &BusInner,
        delivery: Delivery,
        made: u32,
        delay: Option<Duration>,
    ) {
        // The transport numbered this delivery `n` (from 1) and numbers the next `n + 1`.
        let not_attempts = delivery.envelope.delivery.attempt.saturating_sub(made);
        let id = &delivery.envelope.id;
        bus.deferred
            .set(&self.config.name, id, not_attempts, SystemTime::now());
        let id = id.clone();
        if let Err(e) = delivery.hand_back(delay).await {
            tracing::warn!(subscription = %self.name(), message_id = %id, error = %e, "could not hand a delivery back; the transport redelivers it after its ack wait");
        }
    }

    /// Marks the subscription inactive and stops intake; workers drain the queue and exit.
    pub(crate) fn deactivate(&self) {
        self.active.store(false, Ordering::Relaxed);
        self.queue.close();
        self.queue.disable_inline();
    }
}

/// The subscriptions a session owns; shared with the builders it hands out.
#[derive(Default)]
pub(crate) struct SessionSubs(Mutex<Vec<Arc<SubShared>>>);

impl SessionSubs {
    pub(crate) fn push(&self, sub: Arc<SubShared>) {
        self.0.lock().push(sub);
    }

    pub(crate) fn take(&self) -> Vec<Arc<SubShared>> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// A delayed publish waiting in memory for its time.
pub(crate) struct Scheduled {
    pub(crate) env: Envelope,
    pub(crate) task: tokio::task::JoinHandle<()>,
    /// Counted as pending from `schedule` until it is published, fails or is reported.
    pub(crate) accepted: Accepted,
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
