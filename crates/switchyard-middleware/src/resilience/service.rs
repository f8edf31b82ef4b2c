//! The default stack fused into one service and one future.
//!
//! Stacked as separate tower services, the layers cost about 6,000 instructions per message on
//! the happy path: every layer moved the ~200-byte envelope and result, boxed its future, read
//! the clock and took its own reference counts. [`Resilient`] does the same work in one
//! future: it reads the time-stamp counter twice per message (start and end; the wall clock
//! comes from an anchor) and the tokio clock once (the timeout's base, so every deadline is on
//! the tokio clock and a paused clock stays exact), arms the timeout only when the handler
//! yields, counts a closed breaker's successes without a lock, and allocates nothing unless
//! an attempt fails (or a tracing subscriber wants the delivery span, or dedup is on: those
//! are boxed, so the future the caller moves into place on every call stays small; a span
//! no subscriber wants is dropped at the call instead of being entered at every poll).
//! Under the bus it leaves the delivered envelope where the bus keeps it
//! ([`switchyard_core::delivered`]) and takes a copy from there only when a retry happens: the
//! bus's own stack is built [`called_as_delivered`](super::ResilienceLayer::called_as_delivered),
//! and its calls are polled in the bus's delivered scope (debug builds check that the envelope
//! is the delivered one). Called outside the bus, it takes the shared pointer to the
//! delivered envelope when there is one and it is the message it was called with, and keeps
//! a copy of its own otherwise, when the policy allows retries. Attempts after the first run
//! in a boxed `async` block built from the same pieces as the separate layers
//! (`judge`, `back_off`, `Gate`, `Timeout`, `CatchPanic`), so the two paths cannot drift
//! apart.
//!
//! `Resilient` is generic, so its `call` and `poll` are compiled in the crate that names the
//! handler type (the bus); without LTO, a non-generic function of this crate is inlined there
//! only when marked `#[inline]`. The small functions the happy path calls once per message
//! (metrics, breaker, trace, `judge`) are marked for that reason: each was an out-of-line
//! call with its own prologue, about 210 instructions per message together.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use quanta::Clock;
use smol_str::SmolStr;
use switchyard_core::{BoxError, DeliveryInfo, Envelope, Outcome};
use tokio::time::{Sleep, sleep_until};
use tower::Service;
use tracing::Span;

use super::layer::{Limited, Recycle};
use crate::breaker::{Admitted, BreakerOpenError, BreakerShared, Gate};
use crate::catch_panic::PanicError;
use crate::clock::nanos;
use crate::dedup::{DedupClaim, DedupKey, KeyFn, Store, TryClaim, claim, handled, try_claim};
use crate::metrics::{Measured, MetricsShared, TopicCache, TopicHandles};
use crate::retry::{RetryPolicy, Verdict, judge};
use crate::timeout::TimeoutError;
use crate::trace::{TraceContext, delivery_span, end_span};

mod first;
mod rest;

pub use first::FirstPoll;
use rest::attempts;

/// The envelope as delivered, kept for attempts after the first.
enum Kept {
    /// A copy of its own: the call was made outside the bus, or with an envelope the bus did
    /// not deliver as it is (a layer outside this one changed it).
    Copy(Box<Envelope>),
    /// The bus's shared envelope, and the delivery bookkeeping of this call's first attempt
    /// (the shared one is as queued, before the bus and this stack stamped it).
    Shared(Arc<Envelope>, DeliveryInfo),
    /// The bus's shared envelope, left where it is: a stack
    /// [`called_as_delivered`](super::ResilienceLayer::called_as_delivered) is polled in the
    /// bus's delivered scope, so a retry takes the envelope from there
    /// ([`switchyard_core::delivered::with`]) and a call that never fails touches neither it
    /// nor its reference count. `at` (the shared envelope's address) and `timestamp` tell
    /// that it is still the same one; `delivery` is the first attempt's bookkeeping.
    InScope {
        at: usize,
        timestamp: SystemTime,
        delivery: DeliveryInfo,
    },
}

impl Kept {
    /// Keeps `env`: the bus's envelope when it is this message with this content, else a copy.
    /// With `as_delivered` ([`ResilienceLayer::called_as_delivered`](super::ResilienceLayer::called_as_delivered))
    /// the caller vouches that it is, and release builds skip the comparison.
    #[inline(always)]
    fn of(env: &Envelope, as_delivered: bool) -> Self {
        if as_delivered {
            let at = switchyard_core::delivered::with(|d| {
                debug_assert!(
                    d.same_message(env),
                    "a stack declared called_as_delivered got an envelope the bus did not deliver as it is"
                );
                Arc::as_ptr(d).addr()
            });
            return match at {
                Some(at) => Self::InScope {
                    at,
                    timestamp: env.timestamp,
                    delivery: env.delivery,
                },
                None => Self::Copy(Box::new(env.clone())),
            };
        }
        switchyard_core::delivered::with(|d| d.same_message(env).then(|| Arc::clone(d)))
            .flatten()
            .map_or_else(
                || Self::Copy(Box::new(env.clone())),
                |shared| Self::Shared(shared, env.delivery),
            )
    }

    /// The envelope as the first attempt got it; `None` when it was left in the delivered
    /// scope and the call is no longer polled in that scope (the bus never does that).
    fn into_envelope(self) -> Option<Envelope> {
        let stamped = |shared: &Envelope, delivery| {
            let mut env = Envelope::clone(shared);
            env.delivery = delivery;
            env
        };
        match self {
            Self::Copy(env) => Some(*env),
            Self::Shared(shared, delivery) => Some(stamped(&shared, delivery)),
            Self::InScope {
                at,
                timestamp,
                delivery,
            } => switchyard_core::delivered::with(|d| {
                (Arc::as_ptr(d).addr() == at && d.timestamp == timestamp)
                    .then(|| stamped(d, delivery))
            })
            .flatten(),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

/// What every clone of one handler's [`Resilient`] service shares.
pub(crate) struct Core<S> {
    pub(crate) handler: SmolStr,
    pub(crate) metrics: Arc<MetricsShared>,
    pub(crate) breaker: Arc<BreakerShared>,
    pub(crate) policy: RetryPolicy,
    pub(crate) timeout: Duration,
    /// The time-stamp counter, read raw (`Clock::raw`) at the start and end of a call and
    /// scaled only for the differences: the global `quanta::Instant::now` also checks a
    /// thread-local override and a once-cell and scales every reading.
    pub(crate) clock: Clock,
    pub(crate) dedup: Option<(KeyFn, Arc<Store>)>,
    /// A copy of the inner service as built, cloned for attempts after the first (the call's
    /// own service went into the first attempt).
    pub(crate) proto: Mutex<S>,
    /// The bus calls this stack with the envelope it delivered, as it is
    /// ([`ResilienceLayer::called_as_delivered`](super::ResilienceLayer::called_as_delivered)).
    pub(crate) called_as_delivered: bool,
    /// Told of every re-attempt ([`ResilienceConfig::on_retry`](super::ResilienceConfig::on_retry)).
    pub(crate) on_retry: Option<super::OnRetry>,
    /// Reads a message's timestamp as Unix nanoseconds (end-to-end latency).
    pub(crate) unix: crate::clock::UnixNanos,
}

impl<S: Clone> Core<S> {
    fn fresh(&self) -> S {
        self.proto.lock().clone()
    }
}

/// Wall-clock time derived from the time-stamp counter (`quanta`), so a call reads a clock
/// twice (start and end, about 9 ns each against 22 ns for `clock_gettime`) instead of three
/// times, and does its time arithmetic on integers. Re-anchored once a second, so a step of
/// the system clock shows within a second.
///
/// Handler durations and end-to-end latencies are therefore real time, also under tokio's
/// paused clock; deadlines (the timeout, backoff, the breaker's cool-down) stay on the tokio
/// clock.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    /// A raw reading of [`Core::clock`].
    at: u64,
    /// Nanoseconds since the Unix epoch at `at`.
    unix: u64,
}

impl WallClock {
    const REANCHOR: u64 = 1_000_000_000;

    fn new(clock: &Clock) -> Self {
        Self {
            at: clock.raw(),
            unix: unix_nanos(SystemTime::now()),
        }
    }

    /// Nanoseconds from the anchor to the raw reading `t` (0 when `t` is not later).
    #[inline]
    fn offset(&self, clock: &Clock, t: u64) -> u64 {
        clock.delta_as_nanos(self.at, t)
    }

    /// The offset of the raw reading `now`, re-anchoring first when the anchor is more than a
    /// second old.
    #[inline]
    fn offset_fresh(&mut self, clock: &Clock, now: u64) -> u64 {
        let offset = self.offset(clock, now);
        if offset <= Self::REANCHOR {
            return offset;
        }
        *self = Self {
            at: now,
            unix: unix_nanos(SystemTime::now()),
        };
        0
    }

    /// The wall-clock time `offset` nanoseconds after the anchor.
    fn wall(&self, offset: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.unix.saturating_add(offset))
    }
}

#[inline]
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, nanos)
}

/// The service [`ResilienceLayer`](super::ResilienceLayer) wraps a handler in: trace,
/// metrics, dedup, retry, breaker, timeout and panic capture in one, in the documented order
/// (rate and concurrency limits, when configured, are in `S`).
pub struct Resilient<S> {
    inner: S,
    core: Arc<Core<S>>,
    gate: Gate,
    topics: TopicCache,
    wall: WallClock,
}

impl<S: Clone> Resilient<Limited<S>> {
    /// Gives back what [`poll_ready`](Service::poll_ready) reserved and no call used: a
    /// half-open breaker's trial slot and a concurrency permit. For a caller that saw the
    /// stack ready and then found nothing to call it with, and will wait (a bus worker going
    /// idle): otherwise the slot or permit stays with the idle caller, and another caller's
    /// retry (which needs it) waits until the idle one is given work.
    pub fn release_readiness(&mut self) {
        self.gate.release_trial();
        self.inner.release_readiness();
    }
}

impl<S> Resilient<S> {
    pub(crate) fn new(inner: S, core: Arc<Core<S>>) -> Self {
        let gate = Gate::new(core.breaker.clone());
        let wall = WallClock::new(&core.clock);
        Self {
            inner,
            core,
            gate,
            topics: TopicCache::default(),
            wall,
        }
    }
}

impl<S: Clone> Clone for Resilient<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: self.core.clone(),
            gate: self.gate.clone(),
            topics: self.topics.clone(),
            wall: self.wall,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Resilient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("handler", &self.core.handler)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Envelope> for Resilient<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = ResilientFuture<S::Future, S>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        std::task::ready!(self.gate.poll_admit(cx));
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        self.make(env, false)
    }
}

impl<S> Resilient<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// A call whose future holds no reference to what the service's clones share: it is
    /// polled with [`poll_lent`](Self::poll_lent), by whoever holds this service, and handed
    /// back with [`recycle`](Self::recycle) (or given a reference of its own with
    /// [`own`](Self::own) before it is polled on its own or dropped). Saves the reference
    /// count's two locked operations per call; the bus calls its stack so.
    #[inline]
    pub fn call_lent(&mut self, env: Envelope) -> ResilientFuture<S::Future, S> {
        self.make(env, true)
    }

    /// Polls a call made by [`call_lent`](Self::call_lent) (or [`call`](Service::call)) with
    /// this service's shared state.
    #[inline]
    pub fn poll_lent(
        &self,
        fut: Pin<&mut ResilientFuture<S::Future, S>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Outcome, BoxError>> {
        fut.poll_with(cx, Some(&self.core))
    }

    /// Gives a call made by [`call_lent`](Self::call_lent) a reference of its own to the
    /// service's shared state, so that it can be polled and dropped on its own.
    pub fn own(&self, fut: Pin<&mut ResilientFuture<S::Future, S>>) {
        let core = fut.project().core;
        if core.is_none() {
            *core = Some(self.core.clone());
        }
    }

    #[inline(always)]
    fn make(&mut self, mut env: Envelope, lent: bool) -> ResilientFuture<S::Future, S> {
        // Trace: the handler's position in the message's trace. The envelope keeps the
        // traceparent it was published with; the handler's own context is
        // `TraceContext::current()`, which `propagate` and `ensure_traceparent` use.
        let incoming = TraceContext::from_envelope(&env);
        let ctx = incoming.map_or_else(|| TraceContext::root_for(&env), |c| c.child());
        let span = delivery_span(
            &env,
            env.delivery.attempt,
            &self.core.handler,
            ctx,
            incoming,
        );
        let measured = self.topics.begin(&self.core.metrics, &env);
        let start = self.core.clock.raw();
        // The timeout's deadline counts from here on the tokio clock, like every deadline of
        // the stack: subtracting `start`'s real elapsed time from a tokio instant mixed the two
        // clocks, so under a paused clock a timeout fired early by however long the machine
        // took between the call and the handler's first yield.
        let timeout_base = tokio::time::Instant::now();
        let start_offset = self.wall.offset_fresh(&self.core.clock, start);
        let base = env.delivery.attempt.max(1);
        if env.delivery.first_delivered_at.is_none() {
            env.delivery.first_delivered_at = Some(self.wall.wall(start_offset));
        }
        env.delivery.attempt = base;
        let admitted = self.gate.take();
        let core = &*self.core;
        let mut kept = None;
        // Dedup: a key seen before is acked here; one being handled by another call waits on
        // the general path; a new one is claimed and handled below.
        let mut claimed = None;
        let dedup = core.dedup.as_ref().and_then(|(key_fn, store)| {
            // A key function may read the payload: for a typed message the bus carried
            // unencoded it sees a copy with its bytes (an encoding error leaves them empty);
            // the handler still gets the message as delivered.
            let key = if env.needs_encoding() {
                let mut encoded = env.clone();
                let _ = encoded.encode_payload();
                key_fn(&encoded)
            } else {
                key_fn(&env)
            };
            Some((key?, store))
        });
        let dedup = match dedup {
            None => None,
            Some((key, store)) => match try_claim(store, &key, &env, &core.handler) {
                TryClaim::Claimed(claim) => {
                    claimed = Some(Box::new(claim));
                    None
                }
                TryClaim::Duplicate => Some(None),
                TryClaim::Busy => Some(Some((key, store.clone()))),
            },
        };
        let phase = match (admitted, dedup) {
            // A duplicate: acked without calling the handler (nor counting for the breaker).
            (_, Some(None)) => Phase::Judge {
                result: Some(Ok(Outcome::Ack)),
                admitted: None,
                call: None,
            },
            (admitted, Some(Some((key, store)))) => {
                let retries = measured.handles(&core.metrics);
                self.deduplicated(admitted, env, key, store, retries)
            }
            (Err(refused), _) => {
                kept = Some(Kept::Copy(Box::new(env)));
                Phase::Judge {
                    result: Some(Err(refused.into())),
                    admitted: None,
                    call: None,
                }
            }
            (Ok(admitted), _) => {
                // The envelope for later attempts, only when there can be any.
                kept = (core.policy.get_max_attempts() > 1)
                    .then(|| Kept::of(&env, core.called_as_delivered));
                let inner = &mut self.inner;
                let called = {
                    let _current = ctx.enter();
                    let _entered = span.enter();
                    std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(env)))
                };
                match called {
                    Ok(call) => Phase::First {
                        call,
                        timer: None,
                        admitted: Some(admitted),
                    },
                    Err(payload) => Phase::Judge {
                        result: Some(Err(PanicError::from_payload(payload).into())),
                        admitted: Some(admitted),
                        call: None,
                    },
                }
            }
        };
        // A span no subscriber wants is not kept: the future stays smaller (it is moved into
        // place on every call) and its polls skip entering it.
        let span = (!span.is_disabled()).then(|| Box::new(span));
        ResilientFuture {
            phase,
            core: (!lent).then(|| self.core.clone()),
            kept,
            claimed,
            base,
            ctx,
            span,
            measured: Some(measured),
            timeout_base,
            start,
            start_unix: self.wall.unix.saturating_add(start_offset),
        }
    }
}

impl<S> Resilient<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// A call whose dedup key another call is handling takes the general path: it waits for
    /// that call to end, then is a duplicate or claims the key.
    fn deduplicated(
        &mut self,
        admitted: Result<Admitted, BreakerOpenError>,
        env: Envelope,
        key: DedupKey,
        store: Arc<Store>,
        retries: Option<Arc<TopicHandles>>,
    ) -> Phase<S::Future> {
        let core = self.core.clone();
        let service = std::mem::replace(&mut self.inner, core.fresh());
        let fut = async move {
            let handler = core.handler.clone();
            let Some(claimed) = claim(store, key, &env, &handler).await else {
                return Ok(Outcome::Ack);
            };
            let gate = Gate::new(core.breaker.clone());
            let base = env.delivery.attempt;
            let result = attempts(
                core,
                service,
                gate,
                Some(admitted),
                env,
                base,
                0,
                None,
                retries,
            )
            .await;
            claimed.finish(handled(&result));
            result
        };
        Phase::Rest { fut: Box::pin(fut) }
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<F> {
        // The first attempt, on the service the caller polled ready.
        First {
            #[pin]
            call: F,
            timer: Option<Pin<Box<Sleep>>>,
            admitted: Option<Admitted>,
        },
        // A first attempt that ended before it could be polled (refused by the breaker, or a
        // panic in `call`), or whose first poll `Resilient::start_lent` made: `call` is then
        // that attempt's call when it ended on its own, kept as `First` keeps it.
        Judge {
            result: Option<Result<Outcome, BoxError>>,
            admitted: Option<Admitted>,
            call: Option<F>,
        },
        // Attempts after the first, or a deduplicated call.
        Rest { fut: BoxFuture },
        Done,
    }
}

pin_project! {
    /// The future of [`Resilient`]: the first attempt is polled in place; when it fails and
    /// the policy allows more, the rest run in a boxed future.
    pub struct ResilientFuture<F, S> {
        #[pin]
        phase: Phase<F>,
        // What the service's clones share; `None` when lent (`Resilient::call_lent`): the
        // future is then polled with the service's.
        core: Option<Arc<Core<S>>>,
        // The envelope as delivered, for attempts after the first; `None` when the policy
        // allows one attempt only.
        kept: Option<Kept>,
        // The dedup key this call holds in flight, settled with the final result (forgotten
        // if the call is dropped first). Boxed: dedup is off by default, and the future is
        // moved into its place on every call (a smaller one is copied in fewer instructions).
        claimed: Option<Box<DedupClaim>>,
        base: u32,
        ctx: TraceContext,
        // The delivery span, when a subscriber wants it.
        span: Option<Box<Span>>,
        measured: Option<Measured>,
        // The start on the tokio clock, which the timeout's deadline counts from.
        timeout_base: tokio::time::Instant,
        // The start: a raw time-stamp counter reading, and the same instant in nanoseconds
        // since the Unix epoch (from the service's wall-clock anchor).
        start: u64,
        start_unix: u64,
    }

    impl<F, S> PinnedDrop for ResilientFuture<F, S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped before it ended: out of the in-flight figures.
            // (A lent call is taken out by `Resilient::recycle`.)
            if let Some(core) = this.core.as_ref()
                && let Some(measured) = this.measured.take()
            {
                measured.abandon(&core.metrics);
            }
        }
    }
}

const POLLED_AFTER_END: &str = "resilient future polled after completion";
const LENT_POLLED_ALONE: &str =
    "a resilient call made by call_lent was polled without its service (see Resilient::own)";

impl<F, S> Future for ResilientFuture<F, S>
where
    F: Future<Output = Result<Outcome, BoxError>>,
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Output = Result<Outcome, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_with(cx, None)
    }
}

impl<F, S> ResilientFuture<F, S>
where
    F: Future<Output = Result<Outcome, BoxError>>,
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// Polls the call with its own reference to the shared state, or `lent` (the service's)
    /// when it has none.
    fn poll_with(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        lent: Option<&Arc<Core<S>>>,
    ) -> Poll<Result<Outcome, BoxError>> {
        let mut this = self.project();
        let Some(shared) = this.core.as_ref().or(lent) else {
            return Poll::Ready(Err(LENT_POLLED_ALONE.into()));
        };
        let _entered = this.span.as_deref().map(Span::enter);
        // The handler runs with its trace position as the current context.
        let _current = this.ctx.enter();
        let core = &**shared;
        let (result, end) = loop {
            // `keep`: the first attempt's call ended on its own; it stays in the phase until
            // the future is dropped or recycled ([`Resilient::recycle`]).
            let (result, admitted, keep) = match this.phase.as_mut().project() {
                // The call ended (its admission was settled) and was kept.
                PhaseProj::First { admitted: None, .. } => {
                    return Poll::Ready(Err(POLLED_AFTER_END.into()));
                }
                PhaseProj::First {
                    call,
                    timer,
                    admitted,
                } => {
                    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| call.poll(cx)));
                    let (result, keep) = match polled {
                        Ok(Poll::Ready(result)) => {
                            if timer.is_some() {
                                *timer = None;
                            }
                            (result, true)
                        }
                        Err(payload) => (Err(PanicError::from_payload(payload).into()), false),
                        Ok(Poll::Pending) => {
                            // Armed only once the handler yields: most calls end on their first
                            // poll and never touch the timer wheel. The limit counts from the
                            // start of the call.
                            let base = *this.timeout_base;
                            let timer = timer.get_or_insert_with(|| {
                                Box::pin(sleep_until(crate::clock::deadline(base, core.timeout)))
                            });
                            if timer.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            let timed_out = TimeoutError {
                                timeout: core.timeout,
                            };
                            (Err(timed_out.into()), false)
                        }
                    };
                    (result, admitted.take(), keep)
                }
                // The call ended (its admission was settled) and was kept.
                PhaseProj::Judge {
                    result: None,
                    call: Some(_),
                    ..
                } => {
                    return Poll::Ready(Err(POLLED_AFTER_END.into()));
                }
                PhaseProj::Judge {
                    result,
                    admitted,
                    call,
                } => (
                    result
                        .take()
                        .unwrap_or_else(|| Err(POLLED_AFTER_END.into())),
                    admitted.take(),
                    call.is_some(),
                ),
                PhaseProj::Rest { fut } => {
                    // A later attempt's handler future is dropped inside: its `Drop` is
                    // application code, and a panic out of it ends the call as a panic.
                    let polled =
                        std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)));
                    let result = match polled {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(result)) => result,
                        Err(payload) => Err(PanicError::from_payload(payload).into()),
                    };
                    end_phase(this.phase.as_mut());
                    break (result, core.clock.raw());
                }
                PhaseProj::Done => return Poll::Ready(Err(POLLED_AFTER_END.into())),
            };
            // The first attempt ended. Setting the phase drops its call, and with it the late
            // result of a call that timed out; a call that ended on its own is kept for
            // `Resilient::recycle` (a retry's phase drops it).
            if !keep {
                end_phase(this.phase.as_mut());
            }
            let end = core.clock.raw();
            if let Some(admitted) = admitted {
                admitted.settle_raw(&core.breaker, &result, &core.clock, end);
            }
            let verdict = match result {
                // Every outcome but `Retry` is final whatever the policy (`judge` says so too,
                // after moving it through its verdict).
                Ok(outcome) if !matches!(outcome, Outcome::Retry { .. }) => {
                    Verdict::Done(Ok(outcome))
                }
                result => judge(&core.policy, result, *this.base, 1),
            };
            let result = match verdict {
                Verdict::Done(result) => result,
                Verdict::Again { hint, failure } => {
                    match this.kept.take().and_then(Kept::into_envelope) {
                        Some(env) => {
                            let retries = this
                                .measured
                                .as_ref()
                                .and_then(|m| m.handles(&core.metrics));
                            let core = Arc::clone(shared);
                            let service = core.fresh();
                            let gate = Gate::new(core.breaker.clone());
                            // The first attempt's call, kept when it ended on its own.
                            end_phase(this.phase.as_mut());
                            let rest = attempts(
                                core,
                                service,
                                gate,
                                None,
                                env,
                                *this.base,
                                1,
                                Some((hint, failure)),
                                retries,
                            );
                            this.phase.set(Phase::Rest {
                                fut: Box::pin(rest),
                            });
                            // Poll the rest now: it registers its backoff timer.
                            continue;
                        }
                        // `judge` allows another attempt only when the policy has more than one, and
                        // then the envelope was kept; without it the failure is final. (Left in the
                        // delivered scope, it is gone only when the call is polled outside that
                        // scope, which the bus, the one caller vouching for it, never does.)
                        None => {
                            debug_assert!(
                                core.policy.get_max_attempts() <= 1,
                                "a call of a stack declared called_as_delivered was polled outside its delivered scope"
                            );
                            Err(failure)
                        }
                    }
                }
            };
            break (result, end);
        };
        if let Some(claimed) = this.claimed.take() {
            (*claimed).finish(handled(&result));
        }
        finish(
            core,
            this.measured.take(),
            this.span.as_deref(),
            *this.start,
            *this.start_unix,
            end,
            &result,
        );
        Poll::Ready(result)
    }
}

impl<F: Unpin, S> ResilientFuture<F, S> {
    /// The first attempt's future, when the call ended with it (see [`Resilient::recycle`]);
    /// the phase is left done.
    #[inline(always)]
    fn take_first(self: Pin<&mut Self>) -> Option<F> {
        let phase = self.project().phase.get_mut();
        match phase {
            Phase::First { admitted: None, .. } => {}
            // Kept by a call `Resilient::start_lent` made (the rest of the phase holds nothing).
            Phase::Judge {
                call,
                admitted: None,
                ..
            } => return call.take(),
            _ => return None,
        }
        match std::mem::replace(phase, Phase::Done) {
            Phase::First { call, .. } => Some(call),
            _ => None,
        }
    }
}

impl<S: Recycle> Resilient<S>
where
    S::Future: Unpin,
{
    /// Takes back the future of a call of this service that ended (`ended`, still in its
    /// place): the handler's future of its first attempt, when that attempt ended the call,
    /// goes back to the inner service ([`Recycle`]), so that the handler can reuse what it
    /// was made of (the bus's handlers keep the box their futures run in). Whatever else
    /// `ended` holds stays there, dropped with it.
    #[inline]
    pub fn recycle(&mut self, mut ended: Pin<&mut ResilientFuture<S::Future, S>>) {
        // A lent call that did not end leaves the in-flight figures here (its drop cannot).
        let this = ended.as_mut().project();
        if this.core.is_none()
            && let Some(measured) = this.measured.take()
        {
            measured.abandon(&self.core.metrics);
        }
        if let Some(call) = ended.take_first() {
            self.inner.recycle(call);
        }
    }
}

/// Sets the phase done, dropping what it held (a handler's future, whose `Drop` is
/// application code) under a panic capture: a panic out of that drop is logged, and the
/// call's result stands (the phase is done either way: an assignment whose drop panics
/// still writes the new value).
#[cold]
fn end_phase<F>(mut phase: Pin<&mut Phase<F>>) {
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| phase.set(Phase::Done))) {
        let panic = PanicError::from_payload(payload);
        tracing::warn!(error = %panic, "a handler's future panicked while it was dropped");
    }
}

/// Ends the span and the measurement of a call that ended at `end` (a raw clock reading)
/// with `result`.
fn finish<S>(
    core: &Core<S>,
    measured: Option<Measured>,
    span: Option<&Span>,
    start: u64,
    start_unix: u64,
    end: u64,
    result: &Result<Outcome, BoxError>,
) {
    end_span(span, result);
    if let Some(measured) = measured {
        // In nanoseconds throughout: the registry keeps nanoseconds, and a `Duration` made
        // here would be turned back into them (a 128-bit conversion each).
        let elapsed = core.clock.delta_as_nanos(start, end);
        let end_unix = start_unix.saturating_add(elapsed);
        let end_to_end = end_unix.saturating_sub(core.unix.of(measured.timestamp()));
        measured.finish(&core.metrics, result, elapsed, end_to_end);
    }
}
