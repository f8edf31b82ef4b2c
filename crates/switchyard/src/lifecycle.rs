//! Lifecycle events the bus publishes for observers when
//! [`BusBuilder::lifecycle_events`](crate::BusBuilder::lifecycle_events) is on.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_core::{Envelope, Message};

use crate::bus::Bus;
use crate::state::BusInner;

/// A command or request handler started working on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStarted {
    /// The command's message id.
    pub command_id: String,
    /// The command's topic.
    pub topic: String,
    /// The handler's name.
    pub handler: String,
}
impl Message for CommandStarted {
    const TOPIC: &'static str = "switchyard.command.started";
}

/// A command or request handler finished (successfully or not, after all attempts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFinished {
    /// The command's message id.
    pub command_id: String,
    /// The command's topic.
    pub topic: String,
    /// The handler's name.
    pub handler: String,
    /// True when the handler acknowledged or replied.
    pub ok: bool,
    /// The last error, when it failed.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Time from the first attempt to the end, in microseconds.
    pub duration_us: u64,
}
impl Message for CommandFinished {
    const TOPIC: &'static str = "switchyard.command.finished";
}

/// Publishing them, from the worker that runs the handler.
impl BusInner {
    /// Publishes a lifecycle event; failures are logged, never surfaced to the handler.
    pub(crate) async fn lifecycle<M: Message>(self: &Arc<Self>, cause: &Envelope, event: M) {
        let bus = Bus {
            inner: self.clone(),
        };
        let result = match event.to_envelope() {
            Ok(env) => bus.publish_envelope(env.caused_by(cause)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, topic = M::TOPIC, "lifecycle event not published");
        }
    }

    pub(crate) async fn command_started(self: &Arc<Self>, env: &Envelope, handler: &str) {
        let event = CommandStarted {
            command_id: env.id.to_string(),
            topic: env.topic.to_string(),
            handler: handler.to_owned(),
        };
        self.lifecycle(env, event).await;
    }

    pub(crate) async fn command_finished(
        self: &Arc<Self>,
        env: &Envelope,
        handler: &str,
        ok: bool,
        error: Option<String>,
        took: Duration,
    ) {
        let event = CommandFinished {
            command_id: env.id.to_string(),
            topic: env.topic.to_string(),
            handler: handler.to_owned(),
            ok,
            error,
            attempts: env.delivery.attempt,
            duration_us: took.as_micros() as u64,
        };
        self.lifecycle(env, event).await;
    }
}
