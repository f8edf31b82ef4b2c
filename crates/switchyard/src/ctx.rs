//! What a handler gets besides its message ([`Ctx`]), and the typed handlers that decode a
//! message and hand it over with one.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::{Either, ready};

use smol_str::SmolStr;
use switchyard_core::{
    BoxError, Command, DeadLetter, DeadLetterReason, DeliveryInfo, Envelope, Message, MessageArg,
    MessageId, Outcome, ReplyAddress, SendError,
};
use tower::util::BoxCloneService;
use tower::{Service, service_fn};

use crate::bus::Bus;
use crate::handler::{BoxBatchHandler, BoxHandler, IntoOutcome};
use crate::state::BusInner;

/// What a handler gets besides its message: the envelope, and a bus handle whose publishes are
/// recorded as caused by the message being handled.
#[derive(Clone)]
pub struct Ctx {
    bus: Bus,
    envelope: Handled,
    /// The envelope with its payload encoded, made at the first [`envelope`](Self::envelope)
    /// call for a message the bus carried unencoded ([`Envelope::needs_encoding`]); or, for
    /// a context over the queued envelope, the attempt's copy of it, made at that call.
    encoded: OnceLock<Box<Envelope>>,
}

/// The message a [`Ctx`] is about.
#[derive(Clone)]
enum Handled {
    /// The handler's own copy of the envelope, stamped with the attempt's bookkeeping.
    Own(Envelope),
    /// The envelope as it is queued, shared, with the attempt's bookkeeping beside it: a
    /// typed handler nothing wraps (see `BoxHandler::queued`). Its copy is made only when
    /// asked for ([`Ctx::envelope`]).
    Queued {
        env: Arc<Envelope>,
        delivery: DeliveryInfo,
        /// What the handler's copy would have done to its `local` as the handler took its
        /// value from there (`Local::take`): done to the copy when one is made, so it is the
        /// copy a handler given one got. `None` when the value was decoded.
        let_go: Option<fn(&mut Envelope)>,
    },
}

impl Handled {
    /// The envelope (as queued, for [`Queued`](Self::Queued): its fields but
    /// [`delivery`](Envelope::delivery) are the attempt's copy's).
    #[inline(always)]
    fn base(&self) -> &Envelope {
        match self {
            Self::Own(env) => env,
            Self::Queued { env, .. } => env,
        }
    }

    /// The attempt's delivery bookkeeping.
    #[inline(always)]
    fn delivery(&self) -> &DeliveryInfo {
        match self {
            Self::Own(env) => &env.delivery,
            Self::Queued { delivery, .. } => delivery,
        }
    }

    /// The attempt's copy of a queued envelope, as the handler would have had it.
    fn stamped(
        env: &Envelope,
        delivery: DeliveryInfo,
        let_go: Option<fn(&mut Envelope)>,
    ) -> Envelope {
        let mut copy = env.copy_with_delivery(delivery);
        if let Some(let_go) = let_go {
            let_go(&mut copy);
        }
        copy
    }
}

impl Ctx {
    pub(crate) fn new(bus: Bus, envelope: Envelope) -> Self {
        Self {
            bus,
            envelope: Handled::Own(envelope),
            encoded: OnceLock::new(),
        }
    }

    /// A context over the queued `env`, for an attempt stamped `delivery`; `let_go` as
    /// [`Handled::Queued`] has it.
    pub(crate) fn queued(
        bus: Bus,
        env: Arc<Envelope>,
        delivery: DeliveryInfo,
        let_go: Option<fn(&mut Envelope)>,
    ) -> Self {
        Self {
            bus,
            envelope: Handled::Queued {
                env,
                delivery,
                let_go,
            },
            encoded: OnceLock::new(),
        }
    }

    /// The envelope being handled, with its payload: a typed message the bus carried
    /// unencoded (every subscription it reached was a typed handler of its type, see
    /// [`Bus::publish`]) is encoded at the first call, once for all its handlers. Should
    /// that encoding fail, the payload is empty and the error is logged (`warn`).
    pub fn envelope(&self) -> &Envelope {
        match &self.envelope {
            Handled::Own(env) if !env.needs_encoding() => env,
            Handled::Own(env) => self
                .encoded
                .get_or_init(|| Box::new(with_payload(env.clone()))),
            Handled::Queued {
                env,
                delivery,
                let_go,
            } => self
                .encoded
                .get_or_init(|| Box::new(with_payload(Handled::stamped(env, *delivery, *let_go)))),
        }
    }

    /// The envelope being handled, with its payload (as [`envelope`](Self::envelope) gives
    /// it), taken out of the context: no further copy is made.
    pub fn into_envelope(self) -> Envelope {
        match self.encoded.into_inner() {
            Some(encoded) => *encoded,
            None => match self.envelope {
                Handled::Own(env) => with_payload(env),
                Handled::Queued {
                    env,
                    delivery,
                    let_go,
                } => with_payload(Handled::stamped(&env, delivery, let_go)),
            },
        }
    }

    /// One header of the message being handled.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.envelope.base().header(name)
    }

    /// The correlation id of the flow this message belongs to.
    pub fn correlation_id(&self) -> &MessageId {
        &self.envelope.base().correlation_id
    }

    /// Delivery attempt, 1-based.
    pub fn attempt(&self) -> u32 {
        self.envelope.delivery().attempt
    }

    /// The sender's deadline for the command being handled: set for `bus.request` (in this
    /// process, or from another one over a transport that carries commands, where it is
    /// what was left of the sender's deadline when the command arrived). `None` for events
    /// and for commands sent without a deadline. Past it the sender has its
    /// `SendError::Timeout` and the result is discarded, so a handler may skip or cut short
    /// the work.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.envelope.delivery().deadline
    }

    /// What is left of [`deadline`](Self::deadline) now: zero once it has passed, `None`
    /// without a deadline. Read on tokio's clock, as the deadline was set: under a paused
    /// clock (`testkit::VirtualClock`) it follows virtual time.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        let now = crate::deadline::now_std();
        self.envelope
            .delivery()
            .deadline
            .map(|d| d.saturating_duration_since(now))
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Publishes `msg` as a consequence of the message being handled (causation and correlation
    /// set, and its session: the `session-id` header, when it has one), also from tasks the
    /// handler spawned.
    pub async fn publish<M: Message>(&self, msg: M) -> Result<(), switchyard_core::PublishError> {
        let env = consequence(
            switchyard_core::message::blank_envelope::<M>()?,
            self.envelope.base(),
        );
        self.bus
            .publish_local(env, crate::publish::Typed(msg))
            .await
    }

    /// Sends a command as a consequence of the message being handled (as
    /// [`publish`](Self::publish): in its flow and its session, so a session's own command
    /// handler takes it when it has one).
    pub async fn send<C: Command>(&self, cmd: C) -> Result<C::Output, SendError> {
        let mut env = consequence(
            switchyard_core::message::blank_envelope::<C>()?,
            self.envelope.base(),
        );
        env.set_unencoded(cmd);
        self.bus
            .send_typed::<C>(crate::queue::spare::shared(env), None)
            .await
    }
}

/// `blank` as a consequence of `parent` (see `publish::follow_parent`): the publish then
/// takes the causation as set and inherits nothing more.
#[inline]
fn consequence(mut blank: Envelope, parent: &Envelope) -> Envelope {
    crate::publish::follow_parent(&mut blank, parent);
    blank
}

/// `env` with its payload made, if it was carried unencoded. It encoded when published
/// elsewhere; should it not here, the handler sees the empty payload, and the reason is
/// logged.
fn with_payload(mut env: Envelope) -> Envelope {
    if let Err(e) = env.encode_payload() {
        tracing::warn!(message_id = %env.id, error = %e, "could not encode the message for its handler's context");
    }
    env
}

fn upgrade(bus: &Weak<BusInner>) -> Result<Bus, BoxError> {
    Bus::from_weak(bus).ok_or_else(|| BoxError::from("bus was dropped"))
}

/// What a typed handler's call needs before it calls the user's closure: the message decoded
/// (or taken: see `upcast::decode`) and the bus its `Ctx` holds.
#[inline]
fn decode_for_call<T: MessageArg>(
    bus: &Weak<BusInner>,
    env: &mut Envelope,
) -> Result<(T, Bus), BoxError> {
    let msg = crate::upcast::decode::<T>(bus, env)?;
    Ok((msg, upgrade(bus)?))
}

/// A typed event handler: decodes `T` (a message, or a [`Shared`](switchyard_core::Shared)
/// one; decode failures go to the dead-letter queue) and calls `f`.
///
/// The message is decoded (or taken: see `upcast::decode`) and handed to `f` in `call` itself,
/// which the bus runs inside the delivered scope and the panic capture as it does the polls:
/// the future is then `f`'s own, mapped, with no clone of `f` (whose captures are often
/// reference counts every subscription shares, written from every worker's thread) or of the
/// bus's `Weak` per call, and no async block moving it. `f`'s synchronous part therefore runs
/// when the handler is called, not when its future is first polled.
///
/// The workers call it at the queued envelope itself ([`TypedEvent::call_queued`]): the value
/// is cloned (or shared) from there and the [`Ctx`] holds the queued envelope with the
/// attempt's bookkeeping, with no copy of the envelope unless the handler asks for one. Under
/// a layer, `wrap_handlers` or the resilience stack it is called with a copy, as a
/// `tower::Service`.
pub(crate) fn typed_event<T, F, Fut, O, E>(bus: Weak<BusInner>, f: F) -> BoxHandler
where
    T: MessageArg,
    F: Fn(T, Ctx) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    O: IntoOutcome,
    E: Into<BoxError>,
{
    BoxHandler::queued(
        TypedEvent {
            bus,
            f,
            arg: PhantomData,
        },
        TypedEvent::call_queued,
    )
}

/// The service of [`typed_event`].
struct TypedEvent<T, F> {
    bus: Weak<BusInner>,
    f: F,
    arg: PhantomData<fn() -> T>,
}

impl<T, F: Clone> Clone for TypedEvent<T, F> {
    fn clone(&self) -> Self {
        Self {
            bus: self.bus.clone(),
            f: self.f.clone(),
            arg: PhantomData,
        }
    }
}

/// The future of a typed handler's call: the decode's error, or `f`'s future with its
/// output made an [`Outcome`].
type TypedFuture<Fut> = Either<futures_util::future::Ready<Result<Outcome, BoxError>>, Finish<Fut>>;

impl<T, F, Fut, O, E> Service<Envelope> for TypedEvent<T, F>
where
    T: MessageArg,
    F: Fn(T, Ctx) -> Fut,
    Fut: Future<Output = Result<O, E>>,
    O: IntoOutcome,
    E: Into<BoxError>,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = TypedFuture<Fut>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, mut env: Envelope) -> Self::Future {
        let (msg, bus) = match decode_for_call::<T>(&self.bus, &mut env) {
            Ok(decoded) => decoded,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        Either::Right(Finish {
            fut: (self.f)(msg, Ctx::new(bus, env)),
        })
    }
}

impl<T, F, Fut, O, E> TypedEvent<T, F>
where
    T: MessageArg,
    F: Fn(T, Ctx) -> Fut,
    Fut: Future<Output = Result<O, E>>,
    O: IntoOutcome,
    E: Into<BoxError>,
{
    /// A call at the queued `env` for an attempt stamped `delivery`: the value taken as from
    /// a copy of `env` (`upcast::decode_queued`), the [`Ctx`] over `env` itself, holding
    /// `bus`, the bus the worker holds (a reference more, where upgrading this handler's
    /// weak handle would check that the bus is still there, which the worker knows).
    #[inline]
    fn call_queued(
        &mut self,
        env: &Arc<Envelope>,
        delivery: DeliveryInfo,
        bus: &Arc<BusInner>,
    ) -> TypedFuture<Fut> {
        let (msg, taken) = match crate::upcast::decode_queued::<T>(&self.bus, env) {
            Ok(decoded) => decoded,
            Err(e) => return Either::Left(ready(Err(e.into()))),
        };
        let bus = Bus {
            inner: Arc::clone(bus),
        };
        let let_go = taken.then_some(let_go::<T> as fn(&mut Envelope));
        Either::Right(Finish {
            fut: (self.f)(msg, Ctx::queued(bus, Arc::clone(env), delivery, let_go)),
        })
    }
}

/// What taking a `T` from an envelope's copy did to the copy's `local` (see `Local::take`).
fn let_go<T: MessageArg>(env: &mut Envelope) {
    drop(T::take(&mut env.local, &env.payload));
}

pin_project_lite::pin_project! {
    /// A typed handler's future, its output made an [`Outcome`].
    struct Finish<Fut> {
        #[pin]
        fut: Fut,
    }
}

impl<Fut, O, E> Future for Finish<Fut>
where
    Fut: Future<Output = Result<O, E>>,
    O: IntoOutcome,
    E: Into<BoxError>,
{
    type Output = Result<Outcome, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .fut
            .poll(cx)
            .map(|result| result.map(IntoOutcome::into_outcome).map_err(Into::into))
    }
}

/// A typed command handler: decodes `C`, calls `f`, encodes its output as the reply (or, for
/// a typed sender in this process, hands the output over as it is: see
/// [`offer_typed`](crate::state::offer_typed)). Called in `call`, as in [`typed_event`].
pub(crate) fn typed_command<C, F, Fut, E>(bus: Weak<BusInner>, f: F) -> BoxHandler
where
    C: Command,
    F: Fn(C, Ctx) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Output, E>> + Send + 'static,
    E: Into<BoxError>,
{
    BoxHandler::new(service_fn(move |mut env: Envelope| {
        let (cmd, bus) = match decode_for_call::<C>(&bus, &mut env) {
            Ok(decoded) => decoded,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        // What the reply needs of the command, so the handler gets the envelope itself
        // rather than a copy of it.
        let reply_to = env.reply_address();
        Either::Right(f(cmd, Ctx::new(bus, env)).map(move |output| {
            let output = output.map_err(Into::into)?;
            // A typed sender in this process takes the output as it is: no reply
            // envelope, no encoding and decoding. Any other sender gets the JSON reply.
            match crate::state::offer_typed(output) {
                Ok(()) => Ok(Outcome::Ack),
                Err(output) => encoded_reply(reply_to, &output),
            }
        }))
    }))
}

/// The JSON reply to a sender that does not take a typed command's output as it is. Out of
/// line: kept small, the closure around it stays inlined into its future's poll whatever
/// else the crate holds (issue 18: w4_roundtrip_typed moved +16 with an unrelated change
/// when it was not).
#[cold]
#[inline(never)]
fn encoded_reply<O: serde::Serialize>(
    reply_to: ReplyAddress,
    output: &O,
) -> Result<Outcome, BoxError> {
    // A `CodecError` (not serde's bare error), so a retry layer knows it for what it is: the
    // same output encodes the same way each time.
    let payload = serde_json::to_vec(output).map_err(|e| switchyard_core::CodecError {
        direction: switchyard_core::CodecDirection::Encode,
        type_name: std::any::type_name::<O>(),
        source: Box::new(e),
    })?;
    Ok(Outcome::reply(reply_to.reply(payload)))
}

/// A typed batch handler: decodes every message; undecodable ones are dead-lettered with
/// their raw bytes and the rest are handed over together.
pub(crate) fn typed_batch<T, F, Fut, O, E>(
    bus: Weak<BusInner>,
    name: SmolStr,
    f: F,
) -> BoxBatchHandler
where
    T: Message,
    F: Fn(Vec<T>, Ctx) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    O: IntoOutcome,
    E: Into<BoxError>,
{
    BoxCloneService::new(service_fn(move |envs: Vec<Envelope>| {
        // Decoded and handed to `f` in `call`, as in `typed_event` (the worker calls it
        // inside the panic capture too).
        let bus_handle = match upgrade(&bus) {
            Ok(bus) => bus,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        let Some(first) = envs.first().cloned() else {
            return Either::Left(ready(Ok(Outcome::Ack)));
        };
        let mut msgs = Vec::with_capacity(envs.len());
        for mut env in envs {
            match crate::upcast::decode::<T>(&bus, &mut env) {
                Ok(m) => msgs.push(m),
                Err(e) => bus_handle.inner().dead_letter(
                    DeadLetter::new(env, DeadLetterReason::DecodeFailed, e.to_string())
                        .with_handler(name.clone()),
                ),
            }
        }
        if msgs.is_empty() {
            return Either::Left(ready(Ok(Outcome::Ack)));
        }
        Either::Right(
            f(msgs, Ctx::new(bus_handle, first))
                .map(|result| result.map(IntoOutcome::into_outcome).map_err(Into::into)),
        )
    }))
}
