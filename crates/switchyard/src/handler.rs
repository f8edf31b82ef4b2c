//! Handlers: `tower::Service<Envelope, Response = Outcome>`, and the conversions that turn plain
//! async closures into them. (Typed handlers, which decode and get a [`Ctx`](crate::Ctx), are
//! in `ctx`.)

use std::future::Future;

use switchyard_core::{BoxError, Envelope, Outcome};
use tower::service_fn;
use tower::util::BoxCloneService;

/// A type-erased handler, as the bus stores it: cloned once per worker.
pub type BoxHandler = BoxCloneService<Envelope, Outcome, BoxError>;

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
    BoxCloneService::new(handler.map_request(|env: Envelope| vec![env]).map_result(
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
