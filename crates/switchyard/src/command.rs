//! Commands and requests: one handler, one result back to the sender.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use switchyard_core::{
    Command, DeadLetter, DeadLetterReason, Envelope, IncomingCommand, IncomingCommands, Kind,
    Outcome, RemoteCommands, SendError, TopicError,
};
use tokio::sync::oneshot;

use crate::bus::Bus;
use crate::config::SESSION_HEADER;
use crate::inline::{Handled, InlineOutput, InlineRun, Refused};
use crate::intake::IntakeVerdict;
use crate::publish::{EnqueueError, Enqueued, inherit_parent, new_delivery};
use crate::queue::Entry;
use crate::queue::spare::shared;
use std::any::TypeId;

use crate::remote_reply::{RemoteReply, RemoteSlot, respond_soon};
use crate::reply::{Answer, AnswerRx, CommandReply, CommandResult, WantedType, take_output};
use crate::state::{RUNNING, SubShared};
use crate::stats::inc;

/// A typed command's envelope in its shared allocation ([`shared`]): `blank_envelope::<C>` of
/// `kind`, carrying `cmd` [unencoded](Envelope::set_unencoded).
///
/// Issue 18: the 200-byte envelope is made in place and moved into its block here, and only
/// the pointer crosses the send's async layers. Made in `send` itself from
/// `blank_envelope::<C>()?` (a `Result` unwrapped, then moved on), whether that was inlined and
/// the envelope copied three more times changed with unrelated code elsewhere in the crate:
/// w4_roundtrip_typed moved by +100. (Inlined: out of line it cost ~25 more per send.)
#[inline]
pub(crate) fn typed_command<C: Command>(cmd: C, kind: Kind) -> Result<Arc<Envelope>, TopicError> {
    let mut env = Envelope::new(C::topic()?, bytes::Bytes::new());
    switchyard_core::message::set_typed_fields::<C>(&mut env);
    env.kind = kind;
    env.set_unencoded(cmd);
    Ok(shared(env))
}

impl Bus {
    /// Sends a command to its one handler and waits for the typed result.
    ///
    /// To a typed [`handle`](crate::Bus::handle) handler of `C` (no layer or filter) the
    /// command is handed over as it is, never encoded (so not measured against the size
    /// limit, and an encoding error shows only where bytes are made, as for
    /// [`publish`](crate::Bus::publish)); to anything else it is encoded first.
    pub async fn send<C: Command>(&self, cmd: C) -> Result<C::Output, SendError> {
        // A typed handler in this process gets the command as it is (see `Local`), unencoded
        // unless something on the way reads the bytes (`start_command`); a publish hook
        // clears it, nothing sends it over a transport.
        let env = typed_command(cmd, Kind::Command)?;
        self.send_typed::<C>(env, None).await
    }

    /// Sends a request: a command with a deadline. Past the deadline the caller gets
    /// `SendError::Timeout`; the handler's late reply is discarded. The deadline bounds the
    /// waiting: a handler run on the sender's task that answers without ever waiting
    /// (synchronous work, however long) answers before the deadline is looked at, so its
    /// answer is returned (as `tokio::time::timeout` returns a future that is ready at its
    /// first poll).
    pub async fn request<C: Command>(
        &self,
        cmd: C,
        deadline: Duration,
    ) -> Result<C::Output, SendError> {
        let env = typed_command(cmd, Kind::Request)?;
        self.send_typed::<C>(env, Some(deadline)).await
    }

    /// `env` already in its `Arc` ([`shared`]): the futures carry a pointer.
    pub(crate) async fn send_typed<C: Command>(
        &self,
        env: Arc<Envelope>,
        deadline: Option<Duration>,
    ) -> Result<C::Output, SendError> {
        // A typed handler in this process hands its output over as it is (when its output
        // type is this one); from anywhere else the reply is decoded.
        let wanted: WantedType = TypeId::of::<C::Output>;
        let finished = match deadline {
            None => match with_context(|cx| self.start_command(env, Some(wanted), cx)).await? {
                // Answered already (`inline.rs`): no wait, no future for it.
                Start::Answered(output) => {
                    if crate::inline::yield_due() {
                        tokio::task::yield_now().await;
                    }
                    inline_finished(output)?
                }
                start => self.finish_command(start, None).await?,
            },
            Some(d) => self.request_within(env, d, Some(wanted)).await?,
        };
        let reply = match finished {
            Finished::Local(answer, _) => {
                if let Some(output) = answer.typed.and_then(take_output::<C::Output>) {
                    return Ok(output);
                }
                answer.reply.map(|r| r.payload)
            }
            Finished::Remote(result) => result.reply.map(|r| r.payload),
        };
        let payload = reply.unwrap_or_else(|| "null".into());
        serde_json::from_slice(&payload).map_err(|e| {
            SendError::Codec(switchyard_core::CodecError {
                direction: switchyard_core::CodecDirection::Decode,
                type_name: std::any::type_name::<C::Output>(),
                source: Box::new(e),
            })
        })
    }

    /// Sends a command envelope to the handler of its topic and waits for the result.
    ///
    /// A handler registered on this bus is used when there is one. Otherwise, on a transport
    /// that carries commands across processes (NATS), the command goes to one of the
    /// processes serving its topic; with none (or no such transport) this fails at once with
    /// `SendError::NoHandler`.
    ///
    /// Nothing is checked or sent before the returned future is first polled.
    ///
    /// A send is a new delivery: the envelope's delivery bookkeeping
    /// ([`delivery.attempt`](switchyard_core::DeliveryInfo::attempt) and
    /// `first_delivered_at`) starts afresh, so a command taken from a dead letter (or one a
    /// handler got) and sent again gets its handler's full attempts.
    #[inline] // the caller builds the future in its own state, not in a temporary it copies
    pub fn send_envelope(
        &self,
        mut env: Envelope,
    ) -> impl Future<Output = Result<CommandResult, SendError>> + '_ {
        new_delivery(&mut env);
        // A command from here on, as `start_command` would make it at the first poll: set now,
        // so that a plain send leaves it nothing to change there. Nothing reads it before.
        if env.kind == Kind::Event {
            env.kind = Kind::Command;
        }
        // The envelope moves once, now, into the shared allocation the handling points to:
        // the future carries a pointer, not the envelope, through every nested state (an
        // `async fn` would copy it into its own state and again into each call). The block
        // is a settled message's when this thread kept one (`queue/spare.rs`).
        SendEnvelope {
            bus: self,
            state: SendState::Start(shared(env)),
        }
    }

    /// Encodes the payload of a typed command carried unencoded ([`Envelope::needs_encoding`])
    /// unless `handler` takes its value as it is, before it reaches anything that reads
    /// bytes, and measures it then against the size limit. `env` is not shared yet (as in
    /// `start_command`).
    #[inline]
    fn encode_unless_taken(
        &self,
        env: &mut Arc<Envelope>,
        handler: Option<&SubShared>,
    ) -> Result<(), SendError> {
        if env.needs_encoding()
            && !handler.is_some_and(|h| env.local.value_type().is_some_and(|ty| h.config.takes(ty)))
        {
            let env = Arc::make_mut(env);
            env.encode_payload()?;
            self.check_size(env)?;
        }
        Ok(())
    }

    /// Checks, hooks, finds the handler and queues the command when its queue takes it
    /// without waiting: all a send does before it waits.
    /// `typed`: the output type the sender takes as it is from a typed handler.
    /// `env` is not shared yet (it was just put in its `Arc`), so it is changed in place.
    /// `cx`: the sending task's, with which a command run on this task makes its first
    /// attempt at once (`inline.rs`).
    fn start_command(
        &self,
        mut env: Arc<Envelope>,
        typed: Option<WantedType>,
        cx: &mut std::task::Context<'_>,
    ) -> Result<Start<'_>, SendError> {
        self.check_running()?;
        // Changed in place only when something changes it: a kind to set, a parent to follow
        // (sent from a handler), hooks. A plain send from outside a handler (its kind set
        // when its future was made) reads it as it is: `make_mut`'s atomics and call
        // (~30 instructions per command) are left out.
        let parent =
            env.causation_id().is_none() && switchyard_core::delivered::with(|_| ()).is_some();
        if env.kind == Kind::Event || parent || !self.inner.hooks.is_empty() {
            // Unshared: `make_mut` hands out the envelope itself, it never copies here.
            let env = Arc::make_mut(&mut env);
            // A command before the hooks see it (a trace records its kind).
            if env.kind == Kind::Event {
                env.kind = Kind::Command;
            }
            inherit_parent(env);
            if !self.inner.hooks.is_empty() {
                // Hooks read (and may rewrite) the bytes.
                env.encode_payload()?;
            }
            self.run_hooks(env)?;
        } else {
            // What `run_hooks` checks without hooks.
            self.check_size(&env)?;
        }
        let handler = {
            let commands = self.inner.commands.read();
            commands.get(&env.topic).and_then(|slot| {
                // The session header is only looked for when a session has a handler here.
                if slot.sessions.is_empty() {
                    return slot.global.clone();
                }
                env.header(SESSION_HEADER)
                    .and_then(|s| slot.sessions.get(s))
                    .or(slot.global.as_ref())
                    .cloned()
            })
        };
        let Some(handler) = handler else {
            if let Some(remote) = self
                .inner
                .transport
                .as_ref()
                .and_then(|t| t.remote_commands())
            {
                self.encode_unless_taken(&mut env, None)?;
                return Ok(Start::Remote(remote, env));
            }
            return Err(SendError::NoHandler {
                topic: env.topic.clone(),
            });
        };
        // A typed command carried unencoded stays so only for a typed handler of its type
        // with nothing on the way that reads the bytes.
        self.encode_unless_taken(&mut env, Some(&handler))?;
        let lane = handler.admit(&self.inner, &env)?;
        // Run on this task when the handler is free (`inline.rs`), else queued.
        let kept = CommandReply::kept(typed);
        let (handler, env) = match handler.try_inline_now(&self.inner, env, lane.as_ref(), kept, cx)
        {
            Ok(Handled::Now(output)) => return Ok(Start::Answered(output)),
            Ok(Handled::Later(run)) => return Ok(Start::Inline(run)),
            Err(Refused { sub, env, .. }) => (sub, env),
        };
        let (tx, rx) = CommandReply::channel(typed);
        match handler.try_push_command(&self.inner, env, tx, lane) {
            Ok(result) => {
                self.command_enqueued(&handler, result)?;
                Ok(Start::Queued(handler, rx))
            }
            // Boxed: the rare wait for room does not make every start larger.
            Err(entry) => Ok(Start::Wait(handler, Box::new(entry), rx)),
        }
    }

    /// Waits for room (when the queue made the sender wait) and then for the answer: the
    /// result, and the typed output if the handler handed one over.
    async fn finish_command(
        &self,
        start: Start<'_>,
        deadline: Option<Duration>,
    ) -> Result<Finished, SendError> {
        let output = match start {
            Start::Answered(output) => output,
            Start::Inline(run) => run.await,
            Start::Queued(handler, rx) => {
                return Ok(Finished::Local(await_answer(rx).await?, handler));
            }
            Start::Wait(handler, entry, rx) => {
                // Boxed: the rare wait for room does not make every send's future larger.
                let result = Box::pin(handler.finish_enqueue(&self.inner, *entry)).await;
                self.command_enqueued(&handler, result)?;
                return Ok(Finished::Local(await_answer(rx).await?, handler));
            }
            Start::Remote(remote, env) => {
                // Not shared with anyone: unwrapped without a copy of its fields.
                let env = Arc::unwrap_or_clone(env);
                return Ok(Finished::Remote(Box::new(
                    remote.send(env, deadline).await?,
                )));
            }
        };
        // Handled on this task (`inline.rs`). A handler that never waits makes a send that
        // never waits: the sender's task yields now and then, as it did waiting on the answer
        // (every `dispatch::YIELD_EVERY` runs on this thread: a counter in a thread-local
        // costs less than asking tokio's budget on every command).
        if crate::inline::yield_due() {
            tokio::task::yield_now().await;
        }
        inline_finished(output)
    }

    /// The sender's view of how queueing a command went.
    fn command_enqueued(
        &self,
        handler: &SubShared,
        result: Result<Enqueued, EnqueueError>,
    ) -> Result<(), SendError> {
        let result = enqueue_result(handler, result);
        if matches!(result, Err(SendError::NotProcessed(_))) {
            self.check_running()?;
        }
        result
    }

    /// [`send_envelope`](Self::send_envelope) with a deadline (which starts when the returned
    /// future is first polled). A new delivery, as a send is.
    pub fn request_envelope(
        &self,
        mut env: Envelope,
        deadline: Duration,
    ) -> impl Future<Output = Result<CommandResult, SendError>> + '_ {
        new_delivery(&mut env);
        // As in `send_envelope`: the future carries a pointer, not the envelope.
        let env = shared(env);
        async move {
            Ok(self
                .request_within(env, deadline, None)
                .await?
                .into_result())
        }
    }

    /// A request: a command with a deadline; `typed` as in `start_command`.
    async fn request_within(
        &self,
        mut env: Arc<Envelope>,
        deadline: Duration,
        typed: Option<WantedType>,
    ) -> Result<Finished, SendError> {
        {
            // Not shared yet: changed in place, never copied.
            let env = Arc::make_mut(&mut env);
            if env.kind == Kind::Event || env.kind == Kind::Command {
                env.kind = Kind::Request;
            }
            // The handler sees it (`Ctx::deadline`); a transport carries what is left of it.
            env.delivery.deadline = crate::deadline::now_std().checked_add(deadline);
        }
        let send = async {
            match with_context(|cx| self.start_command(env, typed, cx)).await? {
                // Answered already (`inline.rs`), as in `send_envelope`.
                Start::Answered(output) => {
                    if crate::inline::yield_due() {
                        tokio::task::yield_now().await;
                    }
                    inline_finished(output)
                }
                start => self.finish_command(start, Some(deadline)).await,
            }
        };
        match tokio::time::timeout(deadline, send).await {
            // Expired by the worker that took it (`expired.rs`, possibly a moment before this
            // timer fires), or answered `timeout` by another process: the deadline the
            // caller hears is its own, not the zero or what was left that they carry.
            Ok(Err(SendError::Timeout { .. })) => Err(SendError::Timeout { deadline }),
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout { deadline }),
        }
    }
}

/// Where a command goes, decided without waiting ([`Bus::start_command`]).
enum Start<'a> {
    /// Queued for a handler on this bus; its answer comes on the receiver.
    Queued(Arc<SubShared>, AnswerRx),
    /// For a handler on this bus whose full queue makes the sender wait for room.
    Wait(Arc<SubShared>, Box<Entry>, AnswerRx),
    /// Handled on the sender's task (`inline.rs`) at once: the answer and the handler.
    Answered(InlineOutput),
    /// Being handled on the sender's task (`inline.rs`), which gives the answer and the
    /// handler back.
    Inline(InlineRun),
    /// No handler here: the transport carries it to another process.
    Remote(&'a dyn RemoteCommands, Arc<Envelope>),
}

/// How a command ended, kept small until the caller takes what it needs of it.
enum Finished {
    /// Answered by a handler on this bus.
    Local(Answer, Arc<SubShared>),
    /// Answered from another process.
    Remote(Box<CommandResult>),
}

impl Finished {
    #[inline(always)] // see `Answer::into_result`
    fn into_result(self) -> CommandResult {
        match self {
            Self::Local(answer, handler) => answer.into_result(handler.config.name.clone()),
            Self::Remote(result) => *result,
        }
    }
}

/// The future of [`Bus::send_envelope`], written out rather than an `async` block: a command
/// answered at its first poll (`inline.rs`) gives its [`CommandResult`] straight out of
/// `poll`, built from the reply's box where the caller takes it (an `async` block moved the
/// ~200-byte reply through its own locals and output three more times). A command that waits
/// (queued, sent to another process, or run on in its box) or a sender due to yield goes on
/// in a boxed future: those paths wait anyway.
struct SendEnvelope<'a> {
    bus: &'a Bus,
    state: SendState<'a>,
}

/// Where a [`SendEnvelope`] is.
enum SendState<'a> {
    /// Not polled yet: nothing checked or sent.
    Start(Arc<Envelope>),
    /// Waiting for room, the answer, or a turn (after yielding).
    Waiting(Pin<Box<dyn Future<Output = Result<Finished, SendError>> + Send + 'a>>),
    /// Finished (polled again after that, it stays pending).
    Done,
}

impl Future for SendEnvelope<'_> {
    type Output = Result<CommandResult, SendError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut waiting = match std::mem::replace(&mut this.state, SendState::Done) {
            SendState::Start(env) => match this.bus.start_command(env, None, cx) {
                Err(e) => return Poll::Ready(Err(e)),
                // Answered already (`inline.rs`): no wait, no future for it.
                Ok(Start::Answered(output)) => {
                    if !crate::inline::yield_due() {
                        return Poll::Ready(inline_result(output));
                    }
                    // Every `YIELD_EVERY`th run on this thread: the sender's task yields, as
                    // `send_typed` does.
                    Box::pin(async move {
                        tokio::task::yield_now().await;
                        inline_finished(output)
                    }) as Pin<Box<dyn Future<Output = _> + Send + '_>>
                }
                Ok(start) => Box::pin(this.bus.finish_command(start, None)),
            },
            SendState::Waiting(waiting) => waiting,
            SendState::Done => return Poll::Pending,
        };
        match waiting.as_mut().poll(cx) {
            Poll::Ready(finished) => Poll::Ready(finished.map(Finished::into_result)),
            Poll::Pending => {
                this.state = SendState::Waiting(waiting);
                Poll::Pending
            }
        }
    }
}

/// A future that calls `f` with the task's context at its first poll, and is ready with
/// what `f` gives (it is never polled again: it stays pending if it is).
fn with_context<F, R>(f: F) -> WithContext<F>
where
    F: FnOnce(&mut std::task::Context<'_>) -> R + Unpin,
{
    WithContext(Some(f))
}

/// The future of [`with_context`].
struct WithContext<F>(Option<F>);

impl<F, R> Future for WithContext<F>
where
    F: FnOnce(&mut std::task::Context<'_>) -> R + Unpin,
{
    type Output = R;

    #[inline(always)]
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<R> {
        match self.get_mut().0.take() {
            Some(f) => std::task::Poll::Ready(f(cx)),
            None => std::task::Poll::Pending,
        }
    }
}

/// How a command run on its sender's task ended, as the sender hears it (`None`s: shutdown
/// stopped it).
#[inline(always)]
fn inline_finished(output: InlineOutput) -> Result<Finished, SendError> {
    let (Some(answer), Some(handler)) = output else {
        return Err(stopped());
    };
    Ok(Finished::Local(answer?, handler))
}

/// [`inline_finished`] as the public result, built in place: the reply is copied once, out
/// of its box.
#[inline(always)]
fn inline_result(output: InlineOutput) -> Result<CommandResult, SendError> {
    let (Some(answer), Some(handler)) = output else {
        return Err(stopped());
    };
    let answer = answer?;
    let mut result = CommandResult {
        reply: None,
        handler: handler.config.name.clone(),
        attempts: answer.attempts,
    };
    if let Some(reply) = answer.reply {
        // Its box is kept for this thread's next reply: an inline command's reply is made
        // on this thread, so the round trip allocates none.
        result.reply = Some(Outcome::unbox(reply));
    }
    Ok(result)
}

/// Waits for the answer to a queued command.
async fn await_answer(rx: AnswerRx) -> Result<Answer, SendError> {
    match rx.await {
        Ok(answer) => answer,
        Err(_) => Err(stopped()),
    }
}

/// What the sender of a command whose handling was stopped (at the shutdown deadline) hears.
fn stopped() -> SendError {
    SendError::NotProcessed("the handler stopped before answering".into())
}

/// How queueing a command in `handler` went, as the sender hears it.
fn enqueue_result(
    handler: &SubShared,
    result: Result<Enqueued, EnqueueError>,
) -> Result<(), SendError> {
    match result {
        Ok(Enqueued::Queued) => Ok(()),
        Ok(Enqueued::Filtered) => Err(filtered(handler)),
        // Never here (a command's filters and key run in `admit`, before it is queued).
        Ok(Enqueued::Panicked) => Err(SendError::NotProcessed(format!(
            "a filter or the ordering key of handler {} panicked",
            handler.name()
        ))),
        Err(EnqueueError::Full) => Err(SendError::Full {
            handler: handler.name().to_owned(),
        }),
        Err(EnqueueError::Closed) => Err(SendError::NotProcessed(
            "command handler was unregistered".into(),
        )),
    }
}

/// What the sender of a command the handler's filters (or session scope) kept out hears.
pub(crate) fn filtered(handler: &SubShared) -> SendError {
    SendError::Rejected {
        reason: format!("filtered out by handler {}", handler.name()),
    }
}

impl SubShared {
    /// Serves this command handler to other processes: the pump takes the commands the
    /// transport receives for the topic and queues each with its responder, which the worker
    /// answers once this handler has handled it (the pump answers the failures to queue it,
    /// and `timeout` when its deadline passes first). It stops, withdrawing the interest,
    /// when the handler is unregistered or the bus shuts down.
    pub(crate) fn spawn_command_pump(self: &Arc<Self>, mut commands: IncomingCommands) {
        let sub = Arc::clone(self);
        let pump = tokio::spawn(async move {
            // The commands being served run here, not in tasks of their own: one hop less.
            let mut serving = FuturesUnordered::new();
            loop {
                tokio::select! {
                    _ = sub.queue.closed() => break,
                    next = commands.next() => match next {
                        Some(command) => serving.push(Arc::clone(&sub).serve_remote(command)),
                        None => break,
                    },
                    Some(()) = serving.next(), if !serving.is_empty() => {}
                }
            }
            // Withdraw the interest first (the transport answers what it still has), then
            // finish queueing (and watching the deadlines of) the commands being served.
            drop(commands);
            while serving.next().await.is_some() {}
        });
        *self.pump.lock() = Some(pump);
    }

    /// Serves one command from another process: run here, in the pump, when the handler has
    /// a free worker slot and nothing queued ahead (`inline.rs`), else queued with its
    /// responder; either way the handling answers it itself (no hand-off back here). This
    /// task answers only what happens before the command is taken, and `timeout` at the
    /// deadline when the handling has not answered by then (an inline run then goes on in a
    /// task of its own, as a queued command stays with its worker); a queued command without
    /// a deadline is done with here once queued.
    async fn serve_remote(self: Arc<Self>, command: IncomingCommand) {
        let (env, deadline, responder) = command.into_parts();
        let topic = env.topic.clone();
        let slot = RemoteSlot::new(responder);
        let failed = match self.queue_remote(env, deadline, &slot).await {
            Ok(Taken::Queued(None)) => return,
            Ok(Taken::Inline(run, None)) => {
                // Answered by the run (or, stopped by shutdown, by its dropped reply).
                let _ = run.await;
                return;
            }
            Ok(Taken::Queued(Some((d, answered)))) => {
                // The handler side stops waiting at the deadline too: `timeout`, unless the
                // worker answered first (then the slot is empty).
                if tokio::time::timeout(d, answered).await.is_ok() {
                    return;
                }
                SendError::Timeout { deadline: d }
            }
            Ok(Taken::Inline(run, Some(d))) => {
                if tokio::time::timeout(d, run).await.is_ok() {
                    return;
                }
                SendError::Timeout { deadline: d }
            }
            Err(e) => e,
        };
        if let Some(responder) = slot.take() {
            respond_soon(
                responder.respond(Err(failed)),
                self.config.name.clone(),
                topic,
            );
        }
    }

    /// Runs a remote command inline or queues it, its reply going to `slot`; with a deadline,
    /// a receiver that completes once the handling answered (or dropped) it comes with it.
    async fn queue_remote(
        self: &Arc<Self>,
        mut env: Envelope,
        deadline: Option<Duration>,
        slot: &Arc<RemoteSlot>,
    ) -> Result<Taken, SendError> {
        if let (Some(d), None) = (deadline, env.delivery.deadline) {
            // What was left of the sender's deadline on arrival, for `Ctx::deadline`.
            env.delivery.deadline = crate::deadline::now_std().checked_add(d);
        }
        // A bus that is stopping takes no more commands: the sender may try another
        // process, so it hears that this one has no handler any more.
        let Some(bus) = self.bus.upgrade() else {
            return Err(SendError::NoHandler { topic: env.topic });
        };
        if bus.state.load(Ordering::Acquire) != RUNNING {
            return Err(SendError::NoHandler { topic: env.topic });
        }
        if let Some(check) = &bus.intake {
            // A panicking check is answered (`Failed`, its text) and dead-lettered
            // `Panicked`; the pump serving the topic goes on.
            let verdict = match crate::intake::run_check(check, &env) {
                Ok(verdict) => verdict,
                Err(why) => return Err(self.give_up_panicked(&bus, &env, why)),
            };
            match verdict {
                IntakeVerdict::Accept => {}
                IntakeVerdict::Warn(why) => {
                    inc(&self.counters.intake_warned);
                    tracing::warn!(handler = %self.name(), topic = %env.topic, message_id = %env.id, "intake check: {why}");
                }
                IntakeVerdict::Reject(why) => {
                    // Answered as a rejection, and kept in the dead-letter sink.
                    inc(&self.counters.intake_rejected);
                    inc(&self.counters.dead_lettered);
                    bus.dead_letter(
                        DeadLetter::new(env, DeadLetterReason::Rejected, why.clone())
                            .with_handler(self.config.name.clone()),
                    );
                    return Err(SendError::Rejected { reason: why });
                }
            }
        }
        // Past its sender's deadline already (it waited in a stream, or on the way): not
        // handled, dead-lettered `Expired` (a durable command's delivery is terminated).
        // To its sender it is what it would have been had it waited: a timeout.
        if let Some(why) = crate::deadline::expired(env.delivery.deadline, "before it arrived") {
            return Err(self.dead_letter_expired(&bus, env, why));
        }
        let topic = env.topic.clone();
        // Without `done`: an inline run is watched through its own future; a channel for
        // the worker to signal is only made below, for a command that is queued.
        let reply = CommandReply::remote(RemoteReply {
            slot: Arc::clone(slot),
            done: None,
            bus: self.bus.clone(),
            topic: topic.clone(),
            handler: self.config.name.clone(),
        });
        let env = shared(env);
        let lane = self.admit(&bus, &env)?;
        // From here a reply dropped unanswered answers (`RemoteReply`'s drop); a command
        // refused below is answered here instead, before the slot is marked.
        let (env, mut reply) = match Arc::clone(self).try_inline(&bus, env, lane.as_ref(), reply) {
            Ok(run) => {
                slot.set_queued();
                return Ok(Taken::Inline(run, deadline));
            }
            Err(Refused { env, reply, .. }) => (env, reply),
        };
        let answered = deadline.map(|d| {
            let (tx, rx) = oneshot::channel();
            reply.set_done(tx);
            (d, rx)
        });
        let result = match self.try_push_command(&bus, env, reply, lane) {
            Ok(result) => result,
            Err(entry) => self.finish_enqueue(&bus, entry).await,
        };
        match enqueue_result(self, result) {
            Ok(()) => {
                slot.set_queued();
                Ok(Taken::Queued(answered))
            }
            // Unregistered meanwhile: this process has no handler any more.
            Err(SendError::NotProcessed(_)) => Err(SendError::NoHandler { topic }),
            Err(e) => Err(e),
        }
    }
}

/// How a remote command was taken ([`SubShared::queue_remote`]), with its deadline (and, when
/// queued, a receiver that completes once it was answered), when it has a deadline.
enum Taken {
    /// Queued for a worker, which answers it.
    Queued(Option<(Duration, oneshot::Receiver<()>)>),
    /// Being handled in the pump (`inline.rs`); the run answers it, and the pump waits on
    /// the run itself until the deadline.
    Inline(InlineRun, Option<Duration>),
}
