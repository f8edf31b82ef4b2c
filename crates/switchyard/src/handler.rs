//! Handlers: `tower::Service<Envelope, Response = Outcome>`, and the conversions that turn plain
//! async closures into them.

use std::future::Future;
use std::sync::Weak;

use smol_str::SmolStr;
use switchyard_core::{
    BoxError, Command, DeadLetter, DeadLetterReason, Envelope, Message, MessageId, Outcome,
    SendError,
};
use tower::service_fn;
use tower::util::BoxCloneService;

use crate::bus::{Bus, BusInner};

/// A type-erased handler, as the bus stores it: cloned once per worker.
pub type BoxHandler = BoxCloneService<Envelope, Outcome, BoxError>;

/// A type-erased batch handler: gets several envelopes at once.
pub type BoxBatchHandler = BoxCloneService<Vec<Envelope>, Outcome, BoxError>;

/// What a handler's `Ok` value means to the bus.
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
    BoxCloneService::new(service_fn(move |env: Envelope| {
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
    BoxCloneService::new(service)
}

/// What a handler gets besides its message: the envelope, and a bus handle whose publishes are
/// recorded as caused by the message being handled.
#[derive(Clone)]
pub struct Ctx {
    bus: Bus,
    envelope: Envelope,
}

impl Ctx {
    pub(crate) fn new(bus: Bus, envelope: Envelope) -> Self {
        Self { bus, envelope }
    }

    /// The envelope being handled.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// One header of the message being handled.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.envelope.header(name)
    }

    /// The correlation id of the flow this message belongs to.
    pub fn correlation_id(&self) -> MessageId {
        self.envelope.correlation_id
    }

    /// Delivery attempt, 1-based.
    pub fn attempt(&self) -> u32 {
        self.envelope.delivery.attempt
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Publishes `msg` as a consequence of the message being handled (causation and correlation
    /// set), also from tasks the handler spawned.
    pub async fn publish<M: Message>(&self, msg: M) -> Result<(), switchyard_core::PublishError> {
        let env = msg.to_envelope()?.caused_by(&self.envelope);
        self.bus.publish_envelope(env).await
    }

    /// Sends a command as a consequence of the message being handled.
    pub async fn send<C: Command>(&self, cmd: C) -> Result<C::Output, SendError> {
        let env = cmd.to_envelope()?.caused_by(&self.envelope);
        self.bus.send_typed::<C>(env, None).await
    }
}

fn upgrade(bus: &Weak<BusInner>) -> Result<Bus, BoxError> {
    Bus::from_weak(bus).ok_or_else(|| BoxError::from("bus was dropped"))
}

/// A typed event handler: decodes `T` (decode failures go to the dead-letter queue) and calls `f`.
pub(crate) fn typed_event<T, F, Fut, O, E>(bus: Weak<BusInner>, f: F) -> BoxHandler
where
    T: Message,
    F: Fn(T, Ctx) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    O: IntoOutcome,
    E: Into<BoxError>,
{
    BoxCloneService::new(service_fn(move |env: Envelope| {
        let f = f.clone();
        let bus = bus.clone();
        async move {
            let msg = T::from_envelope(&env)?;
            let ctx = Ctx::new(upgrade(&bus)?, env);
            f(msg, ctx)
                .await
                .map(IntoOutcome::into_outcome)
                .map_err(Into::into)
        }
    }))
}

/// A typed command handler: decodes `C`, calls `f`, encodes its output as the reply.
pub(crate) fn typed_command<C, F, Fut, E>(bus: Weak<BusInner>, f: F) -> BoxHandler
where
    C: Command,
    F: Fn(C, Ctx) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<C::Output, E>> + Send + 'static,
    E: Into<BoxError>,
{
    BoxCloneService::new(service_fn(move |env: Envelope| {
        let f = f.clone();
        let bus = bus.clone();
        async move {
            let cmd = C::from_envelope(&env)?;
            let ctx = Ctx::new(upgrade(&bus)?, env.clone());
            let output = f(cmd, ctx).await.map_err(Into::into)?;
            let payload = serde_json::to_vec(&output)?;
            Ok(Outcome::reply(env.reply(payload)))
        }
    }))
}

/// Applies a `tower::Layer` to a boxed handler and boxes the result again.
pub(crate) fn layered<L>(handler: BoxHandler, layer: L) -> BoxHandler
where
    L: tower::Layer<BoxHandler>,
    L::Service:
        tower::Service<Envelope, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    <L::Service as tower::Service<Envelope>>::Future: Send + 'static,
{
    BoxCloneService::new(layer.layer(handler))
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
        let (f, bus, name) = (f.clone(), bus.clone(), name.clone());
        async move {
            let bus = upgrade(&bus)?;
            let Some(first) = envs.first().cloned() else {
                return Ok(Outcome::Ack);
            };
            let mut msgs = Vec::with_capacity(envs.len());
            for env in envs {
                match T::from_envelope(&env) {
                    Ok(m) => msgs.push(m),
                    Err(e) => bus.inner().dead_letter(
                        DeadLetter::new(env, DeadLetterReason::DecodeFailed, e.to_string())
                            .with_handler(name.clone()),
                    ),
                }
            }
            if msgs.is_empty() {
                return Ok(Outcome::Ack);
            }
            f(msgs, Ctx::new(bus, first))
                .await
                .map(IntoOutcome::into_outcome)
                .map_err(Into::into)
        }
    }))
}
