//! Sessions: a scope (one job, one conversation, one user session) whose handlers live exactly
//! as long as the scope.
//!
//! `bus.session("job-123")` publishes `switchyard.session.started` and returns a [`Session`].
//! Handlers registered through it see only messages of that session (header `session-id`);
//! session command handlers win over global ones for commands of their session. Dropping the
//! session (also by an error return or a panic unwinding through its owner) removes its
//! handlers and publishes `switchyard.session.ended`.
//!
//! On a transport a session's event subscription consumes without a consumer group (as
//! [`SubscriptionBuilder::ephemeral`]): the same handler name in two sessions, or in a session
//! and on the bus, are separate subscriptions, and the transport keeps nothing for it once the
//! session ends.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard_core::{
    BoxError, Command, Envelope, Message, PublishError, SendError, TransportErrorKind,
};

use crate::bus::Bus;
use crate::ctx::Ctx;
use crate::handler::{BoxHandler, IntoOutcome};
use crate::state::SessionSubs;
use crate::subscription::SubscriptionBuilder;

pub use crate::config::SESSION_HEADER;

/// Published when a session starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStarted {
    /// The session's id.
    pub session_id: String,
}
impl Message for SessionStarted {
    const TOPIC: &'static str = "switchyard.session.started";
}

/// Published when a session ends (its guard was dropped or [`Session::end`] was called).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    /// The session's id.
    pub session_id: String,
    /// Handlers that were removed.
    pub handlers_removed: usize,
}
impl Message for SessionEnded {
    const TOPIC: &'static str = "switchyard.session.ended";
}

/// A scope of handlers; see the [module docs](self).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use switchyard::{Bus, testkit::Recorder};
/// let bus = Bus::new();
/// let ended = Recorder::start(&bus, "switchyard.session.ended").await?;
/// {
///     let session = bus.session("job-1").await?;
///     session.subscribe("job-log", "jobs.#", switchyard::handler_fn(|_env| async { Ok::<_, std::io::Error>(()) }))
///         .start().await?.detach(); // lives as long as the session
///     assert_eq!(bus.registry().iter().filter(|s| s.active).count(), 2);
/// } // dropped: handlers removed, `switchyard.session.ended` published
/// ended.wait_for(1, std::time::Duration::from_secs(1)).await?;
/// # Ok(()) }
/// ```
pub struct Session {
    bus: Bus,
    id: SmolStr,
    subs: Arc<SessionSubs>,
    ended: bool,
}

impl Session {
    pub(crate) async fn start(bus: Bus, id: SmolStr) -> Result<Self, PublishError> {
        let mut started = SessionStarted {
            session_id: id.to_string(),
        }
        .to_envelope()?;
        started.headers_mut().insert(SESSION_HEADER, id.clone());
        publish_session_event(&bus, started).await?;
        Ok(Self {
            bus,
            id,
            subs: Arc::default(),
            ended: false,
        })
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Subscribes a typed handler that sees only this session's messages. As with
    /// [`Bus::on`], it takes the message itself (`M`) or shared
    /// ([`Shared<M>`](switchyard_core::Shared)).
    pub fn on<M, F, Fut, O, E>(&self, name: &str, f: F) -> SubscriptionBuilder
    where
        M: switchyard_core::MessageArg,
        F: Fn(M, Ctx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        O: IntoOutcome,
        E: Into<BoxError>,
    {
        self.bus
            .on(name, f)
            .in_session(self.id.clone(), self.subs.clone())
    }

    /// Subscribes a raw handler that sees only this session's messages.
    pub fn subscribe(&self, name: &str, pattern: &str, handler: BoxHandler) -> SubscriptionBuilder {
        self.bus
            .subscribe(name, pattern, handler)
            .in_session(self.id.clone(), self.subs.clone())
    }

    /// Registers this session's handler of command `C`; it takes precedence over the global
    /// handler for commands sent in this session.
    pub fn handle<C, F, Fut, E>(&self, f: F) -> SubscriptionBuilder
    where
        C: Command,
        F: Fn(C, Ctx) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Output, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.bus
            .handle(f)
            .in_session(self.id.clone(), self.subs.clone())
    }

    /// Tags an envelope with this session.
    pub fn tag(&self, mut env: Envelope) -> Envelope {
        env.headers_mut().insert(SESSION_HEADER, self.id.clone());
        env
    }

    /// Publishes an event in this session.
    pub async fn publish<M: Message>(&self, msg: M) -> Result<(), PublishError> {
        // Typed, as `Bus::publish`: session handlers of its type take the value as it is.
        let env = self.tag(switchyard_core::message::blank_envelope::<M>()?);
        self.bus
            .publish_local(env, crate::publish::Typed(msg))
            .await
    }

    /// Sends a command in this session (its session handler first, else the global one).
    pub async fn send<C: Command>(&self, cmd: C) -> Result<C::Output, SendError> {
        // Typed, as `Bus::send`: a typed handler of `C` takes the command as it is.
        let mut env = self.tag(switchyard_core::message::blank_envelope::<C>()?);
        env.kind = switchyard_core::Kind::Command;
        env.set_unencoded(cmd);
        self.bus
            .send_typed::<C>(crate::queue::spare::shared(env), None)
            .await
    }

    /// Ends the session now and waits until `switchyard.session.ended` is published.
    pub async fn end(mut self) -> Result<(), PublishError> {
        self.ended = true;
        let removed = self.remove_handlers();
        publish_session_event(&self.bus, self.ended_event(removed)?).await
    }

    fn remove_handlers(&self) -> usize {
        let subs = self.subs.take();
        for sub in &subs {
            self.bus.inner().unroute(sub);
            sub.deactivate();
        }
        subs.len()
    }

    fn ended_event(&self, handlers_removed: usize) -> Result<Envelope, PublishError> {
        let ended = SessionEnded {
            session_id: self.id.to_string(),
            handlers_removed,
        };
        Ok(self.tag(ended.to_envelope()?))
    }
}

/// Publishes `switchyard.session.started` / `.ended`. A transport that refuses the topic
/// (`Rejected`: on NATS, no configured stream takes `switchyard.session.#`) can deliver it to
/// nobody, since nobody can subscribe to it there either: the session goes on without the
/// event (logged at debug), as lifecycle events do. Every other failure is the caller's.
async fn publish_session_event(bus: &Bus, env: Envelope) -> Result<(), PublishError> {
    match bus.publish_envelope(env).await {
        Err(PublishError::Transport(e)) if e.kind == TransportErrorKind::Rejected => {
            tracing::debug!(error = %e, "session event not published: the transport takes no such topic");
            Ok(())
        }
        other => other,
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let removed = self.remove_handlers();
        let Ok(env) = self.ended_event(removed) else {
            return;
        };
        // Drop cannot wait: the ended event is published from a task (it still goes through
        // the normal publish path, with backpressure and counting).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let bus = self.bus.clone();
                rt.spawn(async move {
                    if let Err(e) = publish_session_event(&bus, env).await {
                        tracing::warn!(error = %e, "could not publish switchyard.session.ended");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(session = %self.id, "session dropped outside a runtime; ended event not published")
            }
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Bus {
    /// Starts a session: publishes `switchyard.session.started` and returns its guard.
    /// See [`Session`].
    pub async fn session(&self, id: impl Into<SmolStr>) -> Result<Session, PublishError> {
        self.check_running()?;
        Session::start(self.clone(), id.into()).await
    }
}
