//! [`BoxHandler`]: a type-erased handler that keeps the box its calls' futures run in.
//!
//! `tower::util::BoxCloneService` boxes every call's future: a `malloc`, a `free` and a
//! dynamic `drop` per message. A `BoxHandler` holds the concrete service and, beside it, the
//! box its last call's future ran in: the workers' call ([`Callee::call_in`]) fills that box
//! in place (`Pin::set`), a poll is one dynamic call, and the box is handed back once the
//! call ended ([`Callee::recycle`]), emptied there, ready for the next call. As a
//! `tower::Service` (for layers and any other caller) it boxes its futures as before.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use switchyard_core::{BoxError, DeliveryInfo, Envelope, Outcome};
use tower::Service;

use crate::state::BusInner;

/// A handler as the bus calls it: `tower::Service` with an error of [`BoxError`], plus
/// [`recycle`](Callee::recycle), which hands a finished call's future back, so that a handler
/// can reuse what it was made of (a [`BoxHandler`] or the resilience stack its box).
pub(crate) trait Callee<R> {
    /// What a successful call gives.
    type Response;
    /// What a failed call gives (the bus's handlers all give a [`BoxError`]).
    type Error;
    /// The future of one call.
    type Future: Future<Output = Result<Self::Response, Self::Error>> + Unpin;

    /// As `tower::Service::poll_ready`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;

    /// As `tower::Service::call`, once `poll_ready` said ready.
    fn call_in(&mut self, request: R) -> Self::Future;

    /// Takes back the future of a call that ended.
    #[inline]
    fn recycle(&mut self, ended: Self::Future) {
        drop(ended);
    }
}

/// A type-erased handler, as the bus stores it: cloned once per worker.
///
/// Made by [`handler_fn`](crate::handler_fn), [`boxed`](crate::boxed) or
/// [`BoxHandler::new`] from any `tower::Service<Envelope, Response = Outcome, Error =
/// BoxError>` that is `Clone + Send`. It is itself such a service, so layers wrap it and
/// anything else may call it (its `call` boxes the future). The bus's workers call it
/// without a heap allocation per message: each clone keeps the box its last call's future
/// ran in and refills it in place.
pub struct BoxHandler {
    held: Box<dyn Erased>,
    /// The box of this handler's last call that ended, emptied; `None` before the first call,
    /// after a call dropped unfinished, and in a fresh clone.
    kept: Option<Pin<Box<dyn Slot>>>,
    /// The service has a queued call ([`BoxHandler::queued`]): known here, so a handler
    /// without one is called with its copy made inline, as before there were queued calls.
    queued: bool,
}

impl BoxHandler {
    /// Erases `service`'s type. A `BoxHandler` given here comes back as a clone of itself, not
    /// wrapped once more (which would box each of its calls through its
    /// `tower::Service::call`).
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        if let Some(handler) = (&service as &dyn Any).downcast_ref::<Self>() {
            return handler.clone();
        }
        Self {
            held: Box::new(Held {
                svc: service,
                queued: None,
            }),
            kept: None,
            queued: false,
        }
    }

    /// Erases `service`'s type, as [`new`](Self::new), with `queued`: how the service is
    /// called with the queued envelope and an attempt's delivery bookkeeping instead of a
    /// stamped copy of it ([`call_queued`](Self::call_queued); a typed handler's, which
    /// needs no copy). Its future is of the same type as `service`'s calls', so both kinds
    /// of call run in the one box.
    pub(crate) fn queued<S>(service: S, queued: QueuedFn<S>) -> Self
    where
        S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        Self {
            held: Box::new(Held {
                svc: service,
                queued: Some(queued),
            }),
            kept: None,
            queued: true,
        }
    }

    /// Whether the service has a queued call (see [`queued`](Self::queued)).
    #[inline(always)]
    pub(crate) fn has_queued(&self) -> bool {
        self.queued
    }

    /// A worker's call at the queued `env` for an attempt stamped `delivery`, in the kept
    /// box: the service's own queued call if it has one (see [`queued`](Self::queued)),
    /// else a call with `env`'s copy stamped with `delivery` (as
    /// [`Envelope::copy_with_delivery`] makes it). `bus` is the bus the caller holds (the
    /// handler's context gets a reference of it).
    #[inline(always)]
    pub(crate) fn call_queued(
        &mut self,
        env: &Arc<Envelope>,
        delivery: DeliveryInfo,
        bus: &Arc<BusInner>,
    ) -> HeldCall {
        HeldCall(
            self.held
                .call_held_queued(env, delivery, bus, self.kept.take()),
        )
    }
}

/// How a service is called with the queued envelope, an attempt's delivery bookkeeping and
/// the bus its caller holds (see [`BoxHandler::queued`]).
pub(crate) type QueuedFn<S> =
    fn(&mut S, &Arc<Envelope>, DeliveryInfo, &Arc<BusInner>) -> <S as Service<Envelope>>::Future;

/// A `tower` boxed service as a handler (boxed once more: its calls' futures are still
/// boxed by it).
impl From<tower::util::BoxCloneService<Envelope, Outcome, BoxError>> for BoxHandler {
    fn from(service: tower::util::BoxCloneService<Envelope, Outcome, BoxError>) -> Self {
        Self::new(service)
    }
}

impl Clone for BoxHandler {
    /// A clone of the service; it makes a box of its own at its first call.
    fn clone(&self) -> Self {
        Self {
            held: self.held.clone_box(),
            kept: None,
            queued: self.queued,
        }
    }
}

impl fmt::Debug for BoxHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxHandler")
            .field("kept", &self.kept.is_some())
            .finish_non_exhaustive()
    }
}

impl Service<Envelope> for BoxHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Outcome, BoxError>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.held.poll_ready(cx)
    }

    /// Calls the service, its future in a box of its own (as `BoxCloneService` does).
    #[inline]
    fn call(&mut self, env: Envelope) -> Self::Future {
        self.held.call_boxed(env)
    }
}

/// The future of a [`BoxHandler`] call made by a worker: the call running in the handler's
/// kept box. Dropped unfinished, it drops the call with the box, as a boxed future would be.
pub(crate) struct HeldCall(Pin<Box<dyn Slot>>);

impl Future for HeldCall {
    type Output = Result<Outcome, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0.as_mut().poll_call(cx)
    }
}

impl Callee<Envelope> for BoxHandler {
    type Response = Outcome;
    type Error = BoxError;
    type Future = HeldCall;

    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.held.poll_ready(cx)
    }

    #[inline(always)]
    fn call_in(&mut self, env: Envelope) -> HeldCall {
        HeldCall(self.held.call_held(env, self.kept.take()))
    }

    /// Empties the call's box (its future is dropped here, where the worker catches a panic
    /// of its `Drop`) and keeps it for the next call. Also after a poll that panicked.
    #[inline(always)]
    fn recycle(&mut self, ended: HeldCall) {
        let mut slot = ended.0;
        if slot.as_mut().clear() {
            self.kept = Some(slot);
        }
    }
}

/// A box a call's future runs in: a [`CallOf`] of the concrete service, empty while
/// no call runs in it.
trait Slot: Send {
    /// Polls the call; an empty slot answers an error.
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Outcome, BoxError>>;

    /// Calls `held` (the [`Held`] service whose calls' futures this slot holds) with `env`,
    /// its future written into the slot (dropping what the slot held); `env` back, untouched,
    /// if `held` is another service. For a future larger than an envelope: the envelope is
    /// moved into this call, the future is not moved out of another place.
    #[allow(clippy::result_large_err)] // the envelope goes back by value, to be called with
    fn refill(self: Pin<&mut Self>, held: &mut dyn Any, env: Envelope) -> Result<(), Envelope>;

    /// Calls `held`'s queued call (see [`BoxHandler::queued`]) with `env` and `delivery`, its
    /// future written into the slot; false (nothing called) if `held` is another service or
    /// has no queued call.
    fn refill_queued(
        self: Pin<&mut Self>,
        held: &mut dyn Any,
        env: &Arc<Envelope>,
        delivery: DeliveryInfo,
        bus: &Arc<BusInner>,
    ) -> bool;

    /// Moves the future in `fresh` (an `Option` of this slot's future type, not yet polled)
    /// into the slot, dropping what the slot held; leaves `fresh` as it is if it is of
    /// another type. For a future no larger than an envelope.
    fn refill_made(self: Pin<&mut Self>, fresh: &mut dyn Any);

    /// Drops the future in the slot, if any, and says whether a handler keeps this box for
    /// its next call (a future of at most [`KEPT_UP_TO`] bytes): one dynamic call per ended
    /// call for both.
    fn clear(self: Pin<&mut Self>) -> bool;
}

pin_project_lite::pin_project! {
    /// The box of a call of `S`: its future while the call runs, `None` between calls.
    struct CallOf<S>
    where
        S: Service<Envelope>,
    {
        #[pin]
        call: Option<S::Future>,
    }
}

impl<S> Slot for CallOf<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    fn poll_call(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Outcome, BoxError>> {
        match self.project().call.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => Poll::Ready(Err("handler call polled after it ended".into())),
        }
    }

    #[inline]
    fn refill(mut self: Pin<&mut Self>, held: &mut dyn Any, env: Envelope) -> Result<(), Envelope> {
        let Some(held) = held.downcast_mut::<Held<S>>() else {
            return Err(env);
        };
        // Written into the box from the call (the future is not moved out of another
        // `Option` first: a handler's future holding its envelope is ~450 bytes).
        self.set(CallOf {
            call: Some(held.svc.call(env)),
        });
        Ok(())
    }

    #[inline]
    fn refill_queued(
        mut self: Pin<&mut Self>,
        held: &mut dyn Any,
        env: &Arc<Envelope>,
        delivery: DeliveryInfo,
        bus: &Arc<BusInner>,
    ) -> bool {
        let Some(held) = held.downcast_mut::<Held<S>>() else {
            return false;
        };
        let Some(queued) = held.queued else {
            return false;
        };
        self.set(CallOf {
            call: Some(queued(&mut held.svc, env, delivery, bus)),
        });
        true
    }

    #[inline]
    fn refill_made(mut self: Pin<&mut Self>, fresh: &mut dyn Any) {
        if let Some(fresh) = fresh.downcast_mut::<Option<S::Future>>() {
            self.set(CallOf { call: fresh.take() });
        }
    }

    #[inline]
    fn clear(mut self: Pin<&mut Self>) -> bool {
        self.set(CallOf { call: None });
        size_of::<Self>() <= KEPT_UP_TO
    }
}

/// The service a [`BoxHandler`] holds, type-erased.
trait Erased: Send {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>;

    /// Calls the service, its future in `kept` if that box fits it, else in a new box.
    fn call_held(&mut self, env: Envelope, kept: Option<Pin<Box<dyn Slot>>>) -> Pin<Box<dyn Slot>>;

    /// Calls the service at the queued `env` for an attempt stamped `delivery` (see
    /// [`BoxHandler::call_queued`]), its future in `kept` if that box fits it, else in a new
    /// box.
    fn call_held_queued(
        &mut self,
        env: &Arc<Envelope>,
        delivery: DeliveryInfo,
        bus: &Arc<BusInner>,
        kept: Option<Pin<Box<dyn Slot>>>,
    ) -> Pin<Box<dyn Slot>>;

    /// Calls the service, its future boxed on its own.
    fn call_boxed(&mut self, env: Envelope) -> BoxFuture<'static, Result<Outcome, BoxError>>;

    fn clone_box(&self) -> Box<dyn Erased>;
}

/// The largest call future (as [`CallOf`], in bytes) whose box a handler keeps between
/// calls. Every handler clone (one per worker, and the inline runs' pool) keeps its box for
/// the life of the subscription; a handler whose futures are large (a database client's are
/// often tens of kilobytes) would hold that much per clone for good, and for such a future
/// the `malloc`/`free` saved is small beside the work it does. A larger one gets a box of its
/// own per call, as before, and [`recycle`](Callee::recycle) frees it.
const KEPT_UP_TO: usize = 4096;

/// The concrete service behind a [`BoxHandler`], and its queued call if it has one.
struct Held<S: Service<Envelope>> {
    svc: S,
    queued: Option<QueuedFn<S>>,
}

impl<S> Erased for Held<S>
where
    S: Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.svc.poll_ready(cx)
    }

    fn call_held(&mut self, env: Envelope, kept: Option<Pin<Box<dyn Slot>>>) -> Pin<Box<dyn Slot>> {
        // A future larger than `KEPT_UP_TO` gets a box of its own, freed at `recycle` (its box
        // is not kept, so `kept` is `None` then).
        if size_of::<CallOf<S>>() <= size_of::<Envelope>() {
            // A small future: made here and moved into the box (moving the envelope into the
            // box's call instead would cost as much).
            let mut fresh = Some(self.svc.call(env));
            if let Some(mut slot) = kept {
                slot.as_mut().refill_made(&mut fresh);
                if fresh.is_none() {
                    return slot;
                }
            }
            return Box::pin(CallOf::<S> { call: fresh });
        }
        let env = match kept {
            Some(mut slot) => match slot.as_mut().refill(self, env) {
                Ok(()) => return slot,
                Err(env) => env,
            },
            None => env,
        };
        Box::pin(CallOf::<S> {
            call: Some(self.svc.call(env)),
        })
    }

    fn call_held_queued(
        &mut self,
        env: &Arc<Envelope>,
        delivery: DeliveryInfo,
        bus: &Arc<BusInner>,
        kept: Option<Pin<Box<dyn Slot>>>,
    ) -> Pin<Box<dyn Slot>> {
        let Some(queued) = self.queued else {
            return self.call_held(env.copy_with_delivery(delivery), kept);
        };
        // The request is small: the future is written into the kept box from the call,
        // whatever its size.
        if let Some(mut slot) = kept
            && slot.as_mut().refill_queued(self, env, delivery, bus)
        {
            return slot;
        }
        Box::pin(CallOf::<S> {
            call: Some(queued(&mut self.svc, env, delivery, bus)),
        })
    }

    fn call_boxed(&mut self, env: Envelope) -> BoxFuture<'static, Result<Outcome, BoxError>> {
        Box::pin(self.svc.call(env))
    }

    fn clone_box(&self) -> Box<dyn Erased> {
        Box::new(Held {
            svc: self.svc.clone(),
            queued: self.queued,
        })
    }
}
