//! Handlers: `tower::Service<Envelope, Response = Outcome>`, and the conversions that turn plain
//! async closures into them. (Typed handlers, which decode and get a [`Ctx`](crate::Ctx), are
//! in `ctx`.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use switchyard_core::{BoxError, Envelope, Outcome};
use tower::util::BoxCloneService;
use tower::{Service, service_fn};

pub use crate::held::BoxHandler;
pub(crate) use crate::held::Callee;
use crate::held::HeldCall;

/// A one-message handler as the workers (and inline command runs) hold and call it: a
/// [`BoxHandler`] (which keeps the box its calls' futures run in), or the resilience stack
/// around one, held as it is with the box its calls' futures run in ([`Callee`]).
pub(crate) enum SingleHandler {
    /// Any handler, boxed (with the layers and `wrap_handlers` already applied).
    Boxed(BoxHandler),
    /// The resilience stack (`BusBuilder::with_resilience`) around a boxed handler. Boxed
    /// itself, so the handler stays no bigger than a [`BoxHandler`] (inline
    /// command runs move it in and out of their pool).
    #[cfg(feature = "middleware")]
    Resilient(Box<Stacked>),
}

/// The resilience stack and the box its last call's future ran in, kept for the next call
/// (`None` until the first call, and after a call that was dropped unfinished).
#[cfg(feature = "middleware")]
pub(crate) struct Stacked {
    stack: ResilientHandler,
    kept: Option<StackBox>,
}

#[cfg(feature = "middleware")]
impl Stacked {
    /// Gives back what the stack's readiness reserved (a half-open trial, a concurrency
    /// permit) for a worker that found no message and waits: see
    /// [`SingleHandler::release_readiness`].
    #[cold]
    #[inline(never)]
    fn release_readiness(&mut self) {
        self.stack.release_readiness();
    }

    /// The stack's readiness; out of line, like [`call`](Self::call).
    #[inline(never)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.stack.poll_ready(cx)
    }

    /// Calls the stack, its future in the kept box. Out of line: the workers' code for a
    /// plain handler stays as small as it was.
    #[inline(never)]
    fn call(&mut self, env: Envelope) -> InBox {
        let fut = self.stack.call(env);
        InBox(match self.kept.take() {
            Some(mut slot) => {
                slot.set(Some(fut));
                slot
            }
            None => Box::pin(Some(fut)),
        })
    }

    /// A first attempt's call and first poll ([`start_call`](crate::dispatch::start_call)'s
    /// for the stack), the stack's future polled where it is made: a call that ends at its
    /// first poll (most do) is handed back to the stack and dropped here, without going
    /// through the kept box (no move into it, no poll through it, no emptying it); a call
    /// still pending is moved into the kept box (the future is `Unpin`) and polled there
    /// from then on. Panics as `start_call` captures them: in the call or the poll, as the
    /// call's result; in the drop of the ended call, logged (the result stands).
    #[inline(never)]
    pub(crate) fn start(
        &mut self,
        env: &std::sync::Arc<Envelope>,
        delivery: switchyard_core::DeliveryInfo,
        cx: &mut Context<'_>,
    ) -> crate::dispatch::Started {
        use std::panic::{AssertUnwindSafe, catch_unwind};

        use switchyard_middleware::resilience::FirstPoll;

        use crate::dispatch::Started;
        let stack = &mut self.stack;
        // One capture around the call, its first poll and the hand-back, the latter with its
        // own: a call that ends at its first poll with a final outcome is never made into a
        // future (`start_lent`); one made into a future stays where it was made (a move is a
        // 240-byte copy), and a pending one is moved out through `pending`, a result through
        // `ended`. Panics of the handler's call and poll are the stack's to capture (its
        // result); one out of the stack itself is the call's result here. The stack gets the
        // delivered envelope and makes the handler's copy itself, inside its capture.
        let mut ended = None;
        let mut pending = None;
        let made = catch_unwind(AssertUnwindSafe(|| {
            let first = stack.start_lent(env, delivery, cx);
            // The ended call goes back to the stack and is dropped, a panic in a `Drop` of
            // it caught here (the result stands), not while a panic unwinds.
            let dropped = match first {
                FirstPoll::Ended(result, call) => {
                    ended = Some(result);
                    catch_unwind(AssertUnwindSafe(|| stack.recycle_first(call)))
                }
                FirstPoll::Polled(fut, Poll::Pending) => {
                    pending = Some(fut);
                    return;
                }
                FirstPoll::Polled(mut fut, Poll::Ready(result)) => {
                    ended = Some(result);
                    catch_unwind(AssertUnwindSafe(|| {
                        stack.recycle(Pin::new(&mut fut));
                        drop(fut);
                    }))
                }
            };
            if dropped.is_err() {
                tracing::error!(
                    "a handler's future panicked while it was dropped; the message keeps the outcome its call gave"
                );
            }
        }));
        if let Err(panic) = made {
            return Started::Ended(Err(panic));
        }
        if let Some(result) = ended {
            return Started::Ended(Ok(result));
        }
        self.keep(&mut pending)
    }

    /// A pending call moved into the kept box (a new one if none is kept). Out of line and
    /// cold: most calls end at their first poll.
    #[cold]
    #[inline(never)]
    fn keep(&mut self, pending: &mut Option<StackFuture>) -> crate::dispatch::Started {
        // Polled on its own from now on: with a reference of its own to the stack's state.
        if let Some(fut) = pending.as_mut() {
            self.stack.own(Pin::new(fut));
        }
        let slot = match self.kept.take() {
            Some(mut slot) => {
                slot.set(pending.take());
                slot
            }
            None => Box::pin(pending.take()),
        };
        crate::dispatch::Started::Pending(SingleFuture::Stacked(InBox(slot)))
    }

    /// Takes back an ended call's box: the handler's future goes back to the handler inside
    /// the stack (into the box that handler keeps), the rest of the call is dropped, and the
    /// emptied box is kept for the next call. Out of line, like [`call`](Self::call).
    #[inline(never)]
    fn recycle(&mut self, mut slot: StackBox) {
        if let Some(ended) = slot.as_mut().as_pin_mut() {
            self.stack.recycle(ended);
        }
        slot.set(None);
        self.kept = Some(slot);
    }
}

/// The handler as the resilience stack calls it: in the box the handler keeps (a worker's
/// call, [`Callee::call_in`]), its future handed back by the stack once a call ended with it
/// ([`Recycle`](switchyard_middleware::resilience::Recycle)). One type around every handler
/// type: the stack is compiled once.
#[cfg(feature = "middleware")]
#[derive(Clone)]
pub(crate) struct InKept(pub(crate) BoxHandler);

#[cfg(feature = "middleware")]
impl Service<Envelope> for InKept {
    type Response = Outcome;
    type Error = BoxError;
    type Future = HeldCall;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Callee::<Envelope>::poll_ready(&mut self.0, cx)
    }

    #[inline]
    fn call(&mut self, env: Envelope) -> HeldCall {
        self.0.call_in(env)
    }
}

#[cfg(feature = "middleware")]
impl switchyard_middleware::resilience::Recycle for InKept {
    // Always: left to the compiler it stayed out of line under the stack's first attempt.
    #[inline(always)]
    fn recycle(&mut self, ended: HeldCall) {
        Callee::<Envelope>::recycle(&mut self.0, ended);
    }
}

/// The resilience stack around a boxed handler, as the bus builds it.
#[cfg(feature = "middleware")]
pub(crate) type ResilientHandler = switchyard_middleware::resilience::ResilientService<InKept>;

/// The future of one call of the stack.
#[cfg(feature = "middleware")]
type StackFuture = <ResilientHandler as Service<Envelope>>::Future;

/// The box a stack's call runs in: filled in place by a call (`Pin::set`), handed back to
/// the handler once the call ended ([`Callee::recycle`]) and emptied there. So a
/// call neither allocates nor frees, its future is polled without a dynamic call, and
/// nothing of a finished call (its span, say) outlives it.
#[cfg(feature = "middleware")]
pub(crate) type StackBox = Pin<Box<Option<StackFuture>>>;

#[cfg(feature = "middleware")]
impl SingleHandler {
    /// The resilience stack, held as it is.
    pub(crate) fn resilient(stack: ResilientHandler) -> Self {
        Self::Resilient(Box::new(Stacked { stack, kept: None }))
    }
}

impl SingleHandler {
    /// Waits until the handler is ready, as `tower::ServiceExt::ready` (which this shadows
    /// for the workers) but giving nothing back: a poll small enough to inline into the
    /// worker's loop.
    #[inline(always)]
    pub(crate) fn ready(&mut self) -> Ready<'_> {
        Ready(self)
    }

    /// For a worker that saw the handler ready, found no message and is about to wait:
    /// gives back what the readiness reserved and no call used, so that another worker's
    /// retry inside the resilience stack can take it (a half-open breaker's one trial, a
    /// `concurrency(n)` permit); the worker checks readiness again before it takes a
    /// message. A boxed handler keeps its readiness (its layers are the user's).
    #[inline(always)]
    pub(crate) fn release_readiness(&mut self) {
        match self {
            Self::Boxed(_) => {}
            #[cfg(feature = "middleware")]
            Self::Resilient(s) => s.release_readiness(),
        }
    }
}

/// The future of [`SingleHandler::ready`].
pub(crate) struct Ready<'a>(&'a mut SingleHandler);

impl Future for Ready<'_> {
    type Output = Result<(), BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Callee::<Envelope>::poll_ready(&mut *self.get_mut().0, cx)
    }
}

impl Clone for SingleHandler {
    fn clone(&self) -> Self {
        match self {
            Self::Boxed(s) => Self::Boxed(s.clone()),
            // A clone makes a box of its own at its first call.
            #[cfg(feature = "middleware")]
            Self::Resilient(s) => Self::resilient(s.stack.clone()),
        }
    }
}

impl From<BoxHandler> for SingleHandler {
    fn from(handler: BoxHandler) -> Self {
        Self::Boxed(handler)
    }
}

impl<R, T, E> Callee<R> for BoxCloneService<R, T, E> {
    type Response = T;
    type Error = E;
    type Future = <Self as Service<R>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        Service::poll_ready(self, cx)
    }

    #[inline]
    fn call_in(&mut self, request: R) -> Self::Future {
        Service::call(self, request)
    }
}

/// The future of a [`SingleHandler`] call: the boxed handler's, or the stack's in its box.
#[cfg(feature = "middleware")]
pub(crate) enum SingleFuture {
    /// A boxed handler's, in the box the handler keeps.
    Boxed(HeldCall),
    /// The stack's.
    Stacked(InBox),
}

#[cfg(feature = "middleware")]
impl Future for SingleFuture {
    type Output = Result<Outcome, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both are `Unpin` (a box, and a box).
        match self.get_mut() {
            Self::Boxed(fut) => Pin::new(fut).poll(cx),
            Self::Stacked(fut) => fut.poll_stack(cx),
        }
    }
}

/// The future of a [`SingleHandler`] call: the boxed handler's, in the box it keeps.
#[cfg(not(feature = "middleware"))]
pub(crate) type SingleFuture = HeldCall;

/// A stack's call running in its box, emptied when it is handed back to the handler
/// ([`Callee::recycle`]). Dropped unfinished, it drops the call with the box, as a boxed
/// future would be.
#[cfg(feature = "middleware")]
pub(crate) struct InBox(StackBox);

#[cfg(feature = "middleware")]
impl InBox {
    /// Polls the call; out of line, so a plain handler's poll stays small.
    #[inline(never)]
    fn poll_stack(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outcome, BoxError>> {
        let Some(fut) = self.0.as_mut().as_pin_mut() else {
            return Poll::Ready(Err("handler call polled after it ended".into()));
        };
        fut.poll(cx)
    }
}

impl SingleHandler {
    /// A worker's call at the queued `env` for an attempt stamped `delivery`: a typed
    /// handler nothing wraps takes it as it is (see [`BoxHandler::call_queued`]); any other
    /// handler (wrapped by a layer, `wrap_handlers` or the resilience stack, or not typed) is
    /// called with its own copy of `env` stamped with `delivery`.
    #[inline(always)]
    pub(crate) fn call_queued(
        &mut self,
        env: &std::sync::Arc<Envelope>,
        delivery: switchyard_core::DeliveryInfo,
        bus: &std::sync::Arc<crate::state::BusInner>,
    ) -> SingleFuture {
        match self {
            #[cfg(feature = "middleware")]
            Self::Boxed(s) if s.has_queued() => {
                SingleFuture::Boxed(s.call_queued(env, delivery, bus))
            }
            #[cfg(not(feature = "middleware"))]
            Self::Boxed(s) if s.has_queued() => s.call_queued(env, delivery, bus),
            // One place the copy is made, for every other handler.
            _ => Callee::<Envelope>::call_in(self, env.copy_with_delivery(delivery)),
        }
    }
}

/// A request for [`SingleHandler`]: the queued envelope, an attempt's delivery bookkeeping
/// and the bus the caller holds, called as [`SingleHandler::call_queued`].
pub(crate) struct Queued<'a>(
    pub(crate) &'a std::sync::Arc<Envelope>,
    pub(crate) switchyard_core::DeliveryInfo,
    pub(crate) &'a std::sync::Arc<crate::state::BusInner>,
);

impl Callee<Queued<'_>> for SingleHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = SingleFuture;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Callee::<Envelope>::poll_ready(self, cx)
    }

    #[inline(always)]
    fn call_in(&mut self, request: Queued<'_>) -> SingleFuture {
        self.call_queued(request.0, request.1, request.2)
    }

    #[inline(always)]
    fn recycle(&mut self, ended: SingleFuture) {
        Callee::<Envelope>::recycle(self, ended);
    }
}

impl Callee<Envelope> for SingleHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = SingleFuture;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Boxed(s) => Callee::poll_ready(s, cx),
            #[cfg(feature = "middleware")]
            Self::Resilient(s) => s.poll_ready(cx),
        }
    }

    #[inline(always)]
    fn call_in(&mut self, env: Envelope) -> SingleFuture {
        match self {
            #[cfg(feature = "middleware")]
            Self::Boxed(s) => SingleFuture::Boxed(s.call_in(env)),
            #[cfg(not(feature = "middleware"))]
            Self::Boxed(s) => s.call_in(env),
            #[cfg(feature = "middleware")]
            Self::Resilient(s) => SingleFuture::Stacked(s.call(env)),
        }
    }

    #[inline(always)]
    fn recycle(&mut self, ended: SingleFuture) {
        #[cfg(feature = "middleware")]
        match (self, ended) {
            (Self::Boxed(s), SingleFuture::Boxed(fut)) => s.recycle(fut),
            (Self::Resilient(s), SingleFuture::Stacked(InBox(slot))) => s.recycle(slot),
            (_, ended) => drop(ended),
        }
        #[cfg(not(feature = "middleware"))]
        {
            let Self::Boxed(s) = self;
            s.recycle(ended);
        }
    }
}

/// As a `tower::Service` (what a `.layer` given after registration would wrap).
impl Service<Envelope> for SingleHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Outcome, BoxError>>;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Callee::<Envelope>::poll_ready(self, cx)
    }

    fn call(&mut self, env: Envelope) -> Self::Future {
        match self {
            Self::Boxed(s) => Service::call(s, env),
            #[cfg(feature = "middleware")]
            Self::Resilient(s) => Box::pin(s.stack.call(env)),
        }
    }
}

/// A type-erased batch handler: gets several envelopes at once.
pub type BoxBatchHandler = BoxCloneService<Vec<Envelope>, Outcome, BoxError>;

/// A type-erased prefetch handler ([`Bus::subscribe_prefetch`](crate::Bus::subscribe_prefetch)):
/// gets several messages of one subscription at once, in queue order, handles them one by
/// one, and answers each: the answer's element `i` is how message `i` ended. It may answer
/// only a prefix (stopping after a message that failed, so that it is retried before the
/// next one is handled): the messages left unanswered were not handled and are handed over
/// again. An `Err` of the call as a whole counts as the first message's failure.
pub type BoxPrefetchHandler =
    BoxCloneService<Vec<Envelope>, Vec<Result<Outcome, BoxError>>, BoxError>;

/// A prefetch handler seen as a one-message handler (a call with one message): what the
/// worker retries a failed message with, and what layers wrap.
pub(crate) fn prefetch_one(handler: BoxPrefetchHandler) -> BoxHandler {
    use tower::ServiceExt;
    BoxHandler::new(handler.map_request(|env: Envelope| vec![env]).map_result(
        |answers: Result<Vec<Result<Outcome, BoxError>>, BoxError>| {
            answers?.into_iter().next().unwrap_or_else(|| {
                Err("the prefetch handler gave no answer for the message".into())
            })
        },
    ))
}

/// What a handler's `Ok` value means to the bus.
#[diagnostic::on_unimplemented(
    message = "a handler's `Ok` value must be `()` or an `Outcome`, not `{Self}`",
    label = "the bus cannot settle a message with a `{Self}`",
    note = "return `Ok(())` to ack, or `Ok(Outcome::reject(..))` / `Ok(Outcome::retry())`; a command handler returns its `Command::Output`"
)]
pub trait IntoOutcome {
    /// Converts into an [`Outcome`].
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Ack
    }
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

/// Turns an async closure over raw envelopes into a handler.
///
/// ```
/// use switchyard::{handler_fn, Envelope, Outcome};
/// let h = handler_fn(|env: Envelope| async move {
///     if env.payload.is_empty() { Ok::<_, std::io::Error>(Outcome::reject("empty")) } else { Ok(Outcome::Ack) }
/// });
/// # let _ = h;
/// ```
pub fn handler_fn<F, Fut, O, E>(f: F) -> BoxHandler
where
    F: Fn(Envelope) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    O: IntoOutcome,
    E: Into<BoxError>,
{
    BoxHandler::new(service_fn(move |env: Envelope| {
        let fut = f(env);
        async move { fut.await.map(IntoOutcome::into_outcome).map_err(Into::into) }
    }))
}

/// Boxes any suitable `tower::Service` as a handler.
pub fn boxed<S>(service: S) -> BoxHandler
where
    S: tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    BoxHandler::new(service)
}

/// Applies a `tower::Layer` to a boxed handler and boxes the result again.
pub(crate) fn layered<L>(handler: BoxHandler, layer: L) -> BoxHandler
where
    L: tower::Layer<BoxHandler>,
    L::Service:
        tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    <L::Service as tower::Service<Envelope>>::Future: Send + 'static,
{
    BoxHandler::new(layer.layer(handler))
}
