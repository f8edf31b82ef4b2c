//! Commands and requests: one handler, one result back to the sender.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use switchyard_core::{
    Command, DeadLetter, DeadLetterReason, Envelope, IncomingCommand, IncomingCommands, Kind,
    SendError,
};
use tokio::sync::oneshot;

use crate::bus::Bus;
use crate::config::SESSION_HEADER;
use crate::intake::IntakeVerdict;
use crate::publish::{EnqueueError, Enqueued, inherit_parent};
use crate::reply::{CommandReply, CommandResult, RemoteReply, RemoteSlot};
use crate::state::{BusInner, RUNNING, SubShared};
use crate::stats::inc;

impl Bus {
    /// Sends a command to its one handler and waits for the typed result.
    pub async fn send<C: Command>(&self, cmd: C) -> Result<C::Output, SendError> {
        let mut env = cmd.to_envelope()?;
        env.kind = Kind::Command;
        self.send_typed::<C>(env, None).await
    }

    /// Sends a request: a command with a deadline. Past the deadline the caller gets
    /// `SendError::Timeout`; the handler's late reply is discarded.
    pub async fn request<C: Command>(
        &self,
        cmd: C,
        deadline: Duration,
    ) -> Result<C::Output, SendError> {
        let mut env = cmd.to_envelope()?;
        env.kind = Kind::Request;
        self.send_typed::<C>(env, Some(deadline)).await
    }

    pub(crate) async fn send_typed<C: Command>(
        &self,
        env: Envelope,
        deadline: Option<Duration>,
    ) -> Result<C::Output, SendError> {
        let result = match deadline {
            None => self.send_envelope(env).await?,
            Some(d) => self.request_envelope(env, d).await?,
        };
        let payload = result
            .reply
            .map(|r| r.payload)
            .unwrap_or_else(|| "null".into());
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
    pub async fn send_envelope(&self, env: Envelope) -> Result<CommandResult, SendError> {
        self.dispatch_command(env, None).await
    }

    async fn dispatch_command(
        &self,
        mut env: Envelope,
        deadline: Option<Duration>,
    ) -> Result<CommandResult, SendError> {
        self.check_running()?;
        inherit_parent(&mut env);
        self.run_hooks(&mut env)?;
        if env.kind == Kind::Event {
            env.kind = Kind::Command;
        }
        let handler = {
            let commands = self.inner.commands.read();
            commands.get(&env.topic).and_then(|slot| {
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
                return remote.send(env, deadline).await;
            }
            return Err(SendError::NoHandler { topic: env.topic });
        };
        let rx = handler.enqueue_command(&self.inner, env).await;
        if matches!(rx, Err(SendError::NotProcessed(_))) {
            self.check_running()?;
        }
        await_result(rx?).await
    }
    /// [`send_envelope`](Self::send_envelope) with a deadline.
    pub async fn request_envelope(
        &self,
        mut env: Envelope,
        deadline: Duration,
    ) -> Result<CommandResult, SendError> {
        if env.kind == Kind::Event || env.kind == Kind::Command {
            env.kind = Kind::Request;
        }
        // The handler sees it (`Ctx::deadline`); a transport carries what is left of it.
        env.delivery.deadline = std::time::Instant::now().checked_add(deadline);
        match tokio::time::timeout(deadline, self.dispatch_command(env, Some(deadline))).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout { deadline }),
        }
    }
}

async fn await_result(
    rx: oneshot::Receiver<Result<CommandResult, SendError>>,
) -> Result<CommandResult, SendError> {
    match rx.await {
        Ok(result) => result,
        Err(_) => Err(SendError::NotProcessed(
            "the handler stopped before answering".into(),
        )),
    }
}

impl SubShared {
    /// Queues a command for this handler; the receiver gets its result.
    async fn enqueue_command(
        &self,
        bus: &BusInner,
        env: Envelope,
    ) -> Result<oneshot::Receiver<Result<CommandResult, SendError>>, SendError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue_reply(bus, env, CommandReply::Local(tx))
            .await
            .map(|()| rx)
    }

    /// Queues a command whose result goes to `reply`.
    async fn enqueue_reply(
        &self,
        bus: &BusInner,
        env: Envelope,
        reply: CommandReply,
    ) -> Result<(), SendError> {
        match self.enqueue(bus, Arc::new(env), Some(reply)).await {
            Ok(Enqueued::Queued) => Ok(()),
            Ok(Enqueued::Filtered) => Err(SendError::Rejected {
                reason: format!("filtered out by handler {}", self.name()),
            }),
            Err(EnqueueError::Full) => Err(SendError::Full {
                handler: self.name().to_owned(),
            }),
            Err(EnqueueError::Closed) => Err(SendError::NotProcessed(
                "command handler was unregistered".into(),
            )),
        }
    }

    /// Serves this command handler to other processes: the pump takes the commands the
    /// transport receives for the topic and queues each with its responder, which the worker
    /// answers once this handler has handled it (the pump answers failures to queue it, and
    /// `timeout` when its deadline passes first). It stops, withdrawing the interest, when
    /// the handler is unregistered or the bus shuts down.
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
            // answer the commands already queued.
            drop(commands);
            while serving.next().await.is_some() {}
        });
        *self.pump.lock() = Some(pump);
    }

    /// Serves one command from another process: queued with its responder, which the worker
    /// answers itself once the handler is done (no hand-off back here). This task answers
    /// only what happens before the command is queued, and `timeout` at the deadline when the
    /// worker has not answered by then; without a deadline it is done once the command is
    /// queued.
    async fn serve_remote(self: Arc<Self>, command: IncomingCommand) {
        let (env, deadline, responder) = command.into_parts();
        let topic = env.topic.clone();
        let slot = RemoteSlot::new(responder);
        let answered = match self.queue_remote(env, deadline, &slot).await {
            Ok(answered) => answered,
            Err(e) => {
                if let Some(responder) = slot.take()
                    && let Err(e) = responder.respond(Err(e)).await
                {
                    tracing::warn!(handler = %self.name(), %topic, error = %e, "could not answer a remote command");
                }
                return;
            }
        };
        let (Some(d), Some(answered)) = (deadline, answered) else {
            return;
        };
        // The handler side stops waiting at the deadline too: `timeout`, unless the worker
        // answered first (then the slot is empty).
        if tokio::time::timeout(d, answered).await.is_err()
            && let Some(responder) = slot.take()
            && let Err(e) = responder
                .respond(Err(SendError::Timeout { deadline: d }))
                .await
        {
            tracing::warn!(handler = %self.name(), %topic, error = %e, "could not answer a remote command");
        }
    }

    /// Queues a remote command, its reply going to `slot`. Returns, when the command has a
    /// deadline, a receiver that completes once the worker answered (or dropped) it.
    async fn queue_remote(
        &self,
        mut env: Envelope,
        deadline: Option<Duration>,
        slot: &Arc<RemoteSlot>,
    ) -> Result<Option<oneshot::Receiver<()>>, SendError> {
        if let (Some(d), None) = (deadline, env.delivery.deadline) {
            // What was left of the sender's deadline on arrival, for `Ctx::deadline`.
            env.delivery.deadline = std::time::Instant::now().checked_add(d);
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
            match check(&env) {
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
        let (done, answered) = match deadline {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let topic = env.topic.clone();
        let reply = CommandReply::Remote(RemoteReply {
            slot: Arc::clone(slot),
            _done: done,
            bus: self.bus.clone(),
            topic: topic.clone(),
            handler: self.config.name.clone(),
        });
        match self.enqueue_reply(&bus, env, reply).await {
            Ok(()) => {
                slot.set_queued();
                Ok(answered)
            }
            // Unregistered meanwhile: this process has no handler any more.
            Err(SendError::NotProcessed(_)) => Err(SendError::NoHandler { topic }),
            Err(e) => Err(e),
        }
    }
}
