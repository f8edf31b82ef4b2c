//! What a component's handler gets besides its message ([`ComponentCtx`]), and the guard that
//! fails the contexts a failing handler left open.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use switchyard::{BoxError, Bus, Ctx, Envelope, Message, MessageId, PublishError, Topic};

use crate::context::{ContextTable, RequestContext, RequestId, TransitionError};
use crate::enforce::ComponentBus;

#[cfg(doc)]
use super::Handlers;

/// What a component's handler gets besides its message.
#[derive(Clone)]
pub struct ComponentCtx {
    bus: ComponentBus,
    table: ContextTable,
    raw: Bus,
    envelope: Envelope,
    /// Attempts the bus makes of the message (its subscription's limit).
    max_attempts: u32,
    /// Contexts begun while handling this message (failed if the handler returns an error).
    begun: Arc<parking_lot::Mutex<Vec<RequestId>>>,
}

impl fmt::Debug for ComponentCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentCtx")
            .field("component", &self.bus.name())
            .field("envelope", &self.envelope)
            .finish()
    }
}

impl ComponentCtx {
    pub(super) fn new(bus: ComponentBus, table: ContextTable, ctx: Ctx, max_attempts: u32) -> Self {
        let raw = ctx.bus().clone();
        Self::from_parts(bus, table, raw, ctx.into_envelope(), max_attempts)
    }

    pub(super) fn from_parts(
        bus: ComponentBus,
        table: ContextTable,
        raw: Bus,
        envelope: Envelope,
        max_attempts: u32,
    ) -> Self {
        Self {
            bus,
            table,
            raw,
            envelope,
            max_attempts,
            begun: Arc::default(),
        }
    }

    /// Runs a handler's future; when it fails, every context it began and left open is failed
    /// (as `HandlerError`, marked propagated: the bus retries the message itself, so the error
    /// handler must not retry the flow as well), so no context waits for its timeout. When the
    /// bus will deliver the message again ([`will_be_retried`](Self::will_be_retried)) the
    /// failure does not fail the flow: the contexts publish their status and error report but
    /// no failed completion, and the next delivery's contexts report the outcome. When the
    /// future never finishes (the handler panicked, or shutdown aborted it), the same happens
    /// from a spawned task, as `HandlerAborted` (a panic is retried as an error is; an abort
    /// at shutdown is not).
    pub(super) async fn guard<O, E: Into<BoxError>>(
        self,
        fut: impl Future<Output = Result<O, E>>,
    ) -> Result<O, BoxError> {
        let mut open = OpenContexts(Some(self.clone()));
        let result = fut.await;
        open.0 = None;
        match result {
            Ok(o) => Ok(o),
            Err(e) => {
                let e: BoxError = e.into();
                let permanent = is_permanent(&*e);
                let retried = !permanent && self.will_be_retried();
                self.fail_begun("HandlerError", e.to_string(), retried, !permanent)
                    .await;
                Err(e)
            }
        }
    }

    /// Fails every context begun while handling this message that is still open.
    /// `bus_retries`: the bus delivers the message again (the flow goes on).
    async fn fail_begun(
        &self,
        error_type: &str,
        message: String,
        bus_retries: bool,
        retryable: bool,
    ) {
        let ids: Vec<RequestId> = std::mem::take(&mut *self.begun.lock());
        for id in ids {
            if let Some(ctx) = self.context_by_id(id) {
                let info = crate::context::ErrorInfo {
                    error_type: error_type.to_owned(),
                    message: message.clone(),
                    retryable,
                };
                // Best effort: the context may have ended meanwhile.
                let _ = ctx.fail_handler(info, bus_retries).await;
            }
        }
    }

    /// The delivery attempt of the message being handled, 1-based.
    pub fn attempt(&self) -> u32 {
        self.envelope.delivery.attempt.max(1)
    }

    /// The attempts the bus makes of this message when its handler fails (the
    /// subscription's limit: [`Handlers::max_attempts`], else [`Bus::max_attempts`]).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True when a failure of this handler (an error that is not `Permanent`, or a panic)
    /// makes the bus deliver the message again: this is not the last attempt. Such a failure
    /// does not fail the flow; the last attempt's does.
    pub fn will_be_retried(&self) -> bool {
        self.attempt() < self.max_attempts
    }

    /// The envelope being handled.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The flow this message belongs to.
    pub fn correlation_id(&self) -> MessageId {
        self.envelope.correlation_id.clone()
    }

    /// The component's checked publisher.
    pub fn bus(&self) -> &ComponentBus {
        &self.bus
    }

    /// The plain bus (publishing on it bypasses the layer checks).
    pub fn raw_bus(&self) -> &Bus {
        &self.raw
    }

    /// The component's name.
    pub fn component(&self) -> &str {
        self.bus.name()
    }

    /// Publishes `msg` on its own topic as a consequence of the message being handled:
    /// caused by it, in its flow and in its session (its `session-id` header), as the bus's
    /// `ctx.publish` does.
    pub async fn publish<M: Message>(&self, msg: M) -> Result<(), PublishError> {
        let env = crate::consequence_of(msg.to_envelope()?, &self.envelope);
        self.bus.publish_envelope(env).await
    }

    /// Publishes `msg` on `topic` as a consequence of the message being handled (as
    /// [`publish`](Self::publish): in its flow and its session).
    pub async fn publish_to<M: Message>(&self, topic: &str, msg: M) -> Result<(), PublishError> {
        let mut env = crate::consequence_of(msg.to_envelope()?, &self.envelope);
        env.topic = Topic::new(topic)?;
        self.bus.publish_envelope(env).await
    }

    /// The context table of the assembly.
    pub fn contexts(&self) -> &ContextTable {
        &self.table
    }

    /// Creates a Pending context for `action` in this flow (publishes a status update).
    pub async fn begin(&self, action: &str) -> Result<RequestContext, TransitionError> {
        let ctx = self
            .table
            .begin(&self.bus, action, Some(&self.envelope))
            .await?;
        self.begun.lock().push(ctx.id());
        Ok(ctx)
    }

    /// This component's newest live context in this flow, its events caused by the message
    /// being handled. When the newest one ends, the one begun before it (if still live) is
    /// the newest again.
    pub fn context(&self) -> Option<RequestContext> {
        let id = self.table.find(self.bus.name(), self.correlation_id())?;
        self.table.handle(id, &self.bus, Some(&self.envelope))
    }

    /// The live context a result belongs to: the one named by its `parent_request` (see
    /// [`REQUEST_HEADER`](crate::REQUEST_HEADER)), or else this component's newest context in
    /// the flow.
    pub fn context_for<T>(&self, done: &crate::context::Completion<T>) -> Option<RequestContext> {
        match done.parent_request {
            Some(id) => self.context_by_id(id),
            None => self.context(),
        }
    }

    /// A live context by id, its events caused by the message being handled.
    pub fn context_by_id(&self, id: RequestId) -> Option<RequestContext> {
        self.table.handle(id, &self.bus, Some(&self.envelope))
    }
}

/// True when the bus will not retry the error: a `Permanent` or a value that does not encode
/// anywhere in its chain (as the bus itself decides).
fn is_permanent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(l) = next {
        if l.is::<switchyard::Permanent>() || switchyard::error::is_codec_failure(l) {
            return true;
        }
        next = l.source();
    }
    false
}

/// Armed while a handler runs: if the handler's future is dropped before it finished (a panic
/// caught by the bus, or an abort at shutdown), the contexts it began are failed from a task.
struct OpenContexts(Option<ComponentCtx>);

impl Drop for OpenContexts {
    fn drop(&mut self) {
        let Some(cx) = self.0.take() else { return };
        let none_open = cx.begun.lock().is_empty();
        if none_open {
            return;
        }
        // The task owns the handler context; it ends after failing (and publishing) the open
        // contexts. Without a runtime (process exit) the timeout sweeper is gone too.
        // A panic (or a layer such as a timeout dropping the handler's future) is a failed
        // attempt the bus retries as it does an error; an abort at shutdown is not retried.
        let retried = !cx.raw.is_shutting_down() && cx.will_be_retried();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                cx.fail_begun(
                    "HandlerAborted",
                    "the handler panicked or was aborted".into(),
                    retried,
                    true,
                )
                .await;
            });
        }
    }
}
