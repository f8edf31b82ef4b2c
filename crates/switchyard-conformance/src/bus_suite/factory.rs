//! How the bus suite gets a bus ([`BusFactory`]: on a transport, in process, or with its
//! guarantees declared at the call) and what that bus promises ([`BusGuarantees`]).

use std::sync::Arc;

use switchyard::{Bus, BusBuilder};
use switchyard_core::{BoxError, BoxFuture, CloseError, IncomingCommands, SubscribeError, Topic};

use crate::{Harness, Setup};

/// What a bus promises beyond delivering every message at least once. A test that needs a
/// promise the bus does not make skips, saying which, instead of passing silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusGuarantees {
    /// Each message reaches a subscription's handler once (no duplicate deliveries).
    pub no_duplicates: bool,
    /// Messages of one ordering key are handled in publish order.
    pub ordered: bool,
    /// The attempt number a handler sees counts only the bus's own attempts (the transport
    /// loses no delivery that would be counted).
    pub exact_attempts: bool,
    /// Subscriptions of one name form a consumer group: each message goes to one of them.
    pub consumer_groups: bool,
    /// A transport is under the bus (the factory can close it under the live bus).
    pub transport: bool,
    /// A delivery left unsettled past the transport's ack wait is handed out again, to any
    /// member of its group (so a member that stops answering does not keep its messages).
    pub ack_wait_redelivery: bool,
    /// A new bus opened on the same [`Setup`] reads what the last one left in the transport
    /// (unhandled, or handed back at shutdown).
    pub durable: bool,
    /// A message read again by a new bus says how many deliveries came before (the
    /// transport keeps delivery counts across a reopen).
    pub durable_attempts: bool,
}

impl BusGuarantees {
    /// Every promise: what the bus on a healthy durable transport makes.
    pub const ALL: Self = Self {
        no_duplicates: true,
        ordered: true,
        exact_attempts: true,
        consumer_groups: true,
        transport: true,
        ack_wait_redelivery: true,
        durable: true,
        durable_attempts: true,
    };

    /// What `Bus::new()`'s own in-process bus promises: exactly once and in order, but no
    /// consumer groups (each subscription gets every message) and no transport to redeliver
    /// or keep anything.
    pub const IN_PROCESS: Self = Self {
        consumer_groups: false,
        transport: false,
        ack_wait_redelivery: false,
        durable: false,
        durable_attempts: false,
        ..Self::ALL
    };

    /// What the bus promises on a transport that promises `caps`.
    pub fn on_transport(caps: crate::SuiteCapabilities) -> Self {
        Self {
            consumer_groups: caps.core.consumer_groups,
            ack_wait_redelivery: caps.redelivery,
            durable: caps.core.durable,
            durable_attempts: caps.core.durable && caps.durable_delivery_counts,
            ..Self::ALL
        }
    }
}

/// Closes the transport under a live bus (as another holder of the transport would), at the
/// latest by the deadline.
pub type CloseTransport =
    Arc<dyn Fn(std::time::Instant) -> BoxFuture<'static, Result<(), CloseError>> + Send + Sync>;

/// Serves one command topic straight from the transport under a bus
/// ([`RemoteCommands::serve`](switchyard_core::RemoteCommands::serve)), as the handler side of
/// another process's bus does: how the suite sees what reaches the remote side of a command.
pub type ServeCommands = Arc<
    dyn Fn(Topic) -> BoxFuture<'static, Result<IncomingCommands, SubscribeError>> + Send + Sync,
>;

/// A fresh bus's builder and, when a transport is under it, a way to close that transport.
pub struct OpenedBus {
    /// The builder (transport set, if any).
    pub builder: BusBuilder,
    /// Closes the transport behind the bus's back; `None` without a transport.
    pub close_transport: Option<CloseTransport>,
    /// Serves command topics from the transport; `None` when the transport does not carry
    /// commands across processes (no `remote_commands`).
    pub serve_commands: Option<ServeCommands>,
}

impl std::fmt::Debug for OpenedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedBus")
            .field("close_transport", &self.close_transport.is_some())
            .field("serve_commands", &self.serve_commands.is_some())
            .finish_non_exhaustive()
    }
}

impl OpenedBus {
    /// `builder` over `transport`, which [`close_transport`](Self::close_transport) closes
    /// and whose command topics [`serve_commands`](Self::serve_commands) serves (when it
    /// carries commands across processes).
    pub fn on<T>(transport: T) -> Self
    where
        T: switchyard_core::Publisher + switchyard_core::Subscriber + Clone,
    {
        let closer = transport.clone();
        let close_transport: CloseTransport = Arc::new(move |deadline| {
            let t = closer.clone();
            Box::pin(async move { switchyard_core::Publisher::close(&t, deadline).await })
        });
        let serve_commands = transport.remote_commands().is_some().then(|| {
            let server = transport.clone();
            let serve: ServeCommands = Arc::new(move |topic: Topic| {
                let t = server.clone();
                Box::pin(async move {
                    match t.remote_commands() {
                        Some(remote) => remote.serve(&topic).await,
                        None => Err(SubscribeError::InvalidConfig(
                            "the transport no longer carries commands across processes",
                        )),
                    }
                })
            });
            serve
        });
        Self {
            builder: Bus::builder().transport(transport),
            close_transport: Some(close_transport),
            serve_commands,
        }
    }
}

/// How the suite gets a bus: on a transport, or the in-process one.
pub trait BusFactory: Send + Sync + 'static {
    /// Short name for messages (`in-process`, `memory`, `log`, `nats`).
    fn name(&self) -> &str;

    /// What this bus promises. Default: [`BusGuarantees::ALL`].
    fn guarantees(&self) -> BusGuarantees {
        BusGuarantees::ALL
    }

    /// `Some(reason)` when this bus cannot run here: every test then skips with that reason.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// A builder for a fresh bus of `setup` (transport opened, if any).
    fn builder<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<BusBuilder, BoxError>>;

    /// [`builder`](Self::builder), with a way to close the transport under the bus. Default:
    /// the builder and no closer (tests that need one skip).
    fn open<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<OpenedBus, BoxError>> {
        Box::pin(async move {
            Ok(OpenedBus {
                builder: self.builder(setup).await?,
                close_transport: None,
                serve_commands: None,
            })
        })
    }

    /// Another bus on the same transport as the buses [`open`](Self::open) makes for
    /// `setup`, over a connection of its own: another process, as far as the buses can tell
    /// (commands sent on one reach handlers on the other). `None` when this bus does not reach
    /// other processes (in process, or a single-process transport): the cross-process tests
    /// then skip, saying so. Default: `None`.
    fn second_bus<'a>(
        &'a self,
        setup: &'a Setup,
    ) -> Option<BoxFuture<'a, Result<OpenedBus, BoxError>>> {
        let _ = setup;
        None
    }

    /// Removes what the test left behind. Called at the end of each test that passed.
    fn cleanup<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, ()> {
        let _ = setup;
        Box::pin(async {})
    }
}

/// The bus on a harness's transport (`Bus::builder().transport(..)`).
#[derive(Debug, Clone)]
pub struct OnTransport<H>(pub H);

impl<H: Harness> BusFactory for OnTransport<H> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn unavailable(&self) -> Option<String> {
        self.0.unavailable()
    }

    fn guarantees(&self) -> BusGuarantees {
        BusGuarantees::on_transport(self.0.capabilities())
    }

    fn builder<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<BusBuilder, BoxError>> {
        Box::pin(async move {
            let transport = self.0.open(setup).await?;
            Ok(Bus::builder().transport(transport))
        })
    }

    fn open<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<OpenedBus, BoxError>> {
        Box::pin(async move { Ok(OpenedBus::on(self.0.open(setup).await?)) })
    }

    /// Opens the harness's transport again (a connection of its own) when the harness
    /// declares [`cross_process`](crate::SuiteCapabilities::cross_process).
    fn second_bus<'a>(
        &'a self,
        setup: &'a Setup,
    ) -> Option<BoxFuture<'a, Result<OpenedBus, BoxError>>> {
        if !self.0.capabilities().cross_process {
            return None;
        }
        Some(Box::pin(async move {
            Ok(OpenedBus::on(self.0.open(setup).await?))
        }))
    }

    fn cleanup<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, ()> {
        self.0.cleanup(setup)
    }
}

/// `Bus::new()`'s own in-process bus, with no transport under it.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcess;

impl BusFactory for InProcess {
    fn name(&self) -> &str {
        "in-process"
    }

    fn guarantees(&self) -> BusGuarantees {
        BusGuarantees::IN_PROCESS
    }

    fn builder<'a>(&'a self, _setup: &'a Setup) -> BoxFuture<'a, Result<BusBuilder, BoxError>> {
        Box::pin(async { Ok(Bus::builder()) })
    }
}

/// A factory with its guarantees declared at the call (`bus_suite_tests!(f, guarantees = g)`)
/// instead of by the factory: everything else is `F`'s.
#[derive(Debug, Clone)]
pub struct Declared<F> {
    factory: F,
    guarantees: BusGuarantees,
}

impl<F: BusFactory> Declared<F> {
    /// `factory`, promising `guarantees`.
    pub fn new(factory: F, guarantees: BusGuarantees) -> Self {
        Self {
            factory,
            guarantees,
        }
    }
}

impl<F: BusFactory> BusFactory for Declared<F> {
    fn name(&self) -> &str {
        self.factory.name()
    }

    fn guarantees(&self) -> BusGuarantees {
        self.guarantees
    }

    fn unavailable(&self) -> Option<String> {
        self.factory.unavailable()
    }

    fn builder<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<BusBuilder, BoxError>> {
        self.factory.builder(setup)
    }

    fn open<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<OpenedBus, BoxError>> {
        self.factory.open(setup)
    }

    fn second_bus<'a>(
        &'a self,
        setup: &'a Setup,
    ) -> Option<BoxFuture<'a, Result<OpenedBus, BoxError>>> {
        self.factory.second_bus(setup)
    }

    fn cleanup<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, ()> {
        self.factory.cleanup(setup)
    }
}
