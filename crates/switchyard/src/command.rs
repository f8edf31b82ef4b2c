//! Commands and requests: one handler, one result back to the sender.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{Command, Envelope, Kind, SendError};
use tokio::sync::oneshot;

use crate::bus::Bus;
use crate::config::SESSION_HEADER;
use crate::publish::{EnqueueError, Enqueued, inherit_parent};
use crate::reply::CommandResult;

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
    /// With no handler registered this fails at once with `SendError::NoHandler`.
    pub async fn send_envelope(&self, mut env: Envelope) -> Result<CommandResult, SendError> {
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
            return Err(SendError::NoHandler { topic: env.topic });
        };
        let (tx, rx) = oneshot::channel();
        match handler.enqueue(&self.inner, Arc::new(env), Some(tx)).await {
            Ok(Enqueued::Queued) => {}
            Ok(Enqueued::Filtered) => {
                return Err(SendError::Rejected {
                    reason: format!("filtered out by handler {}", handler.name()),
                });
            }
            Err(EnqueueError::Full) => {
                return Err(SendError::Full {
                    handler: handler.name().to_owned(),
                });
            }
            Err(EnqueueError::Closed) => {
                self.check_running()?;
                return Err(SendError::NotProcessed(
                    "command handler was unregistered".into(),
                ));
            }
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(SendError::NotProcessed(
                "the handler stopped before answering".into(),
            )),
        }
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
        match tokio::time::timeout(deadline, self.send_envelope(env)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout { deadline }),
        }
    }
}
