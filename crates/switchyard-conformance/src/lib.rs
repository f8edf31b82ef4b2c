//! # switchyard-conformance
//!
//! One test suite every switchyard transport runs (in the manner of Watermill's `TestPubSub`),
//! and [`MemoryTransport`], the in-process transport that is its baseline.
//!
//! A transport crate implements [`Harness`] in its own `tests/` (how to open the transport for
//! one test, what it can promise) and calls [`conformance_tests!`], which expands into one
//! `#[tokio::test]` per suite function of [`suite`] (the transport alone) and [`bus_suite`] (a
//! `switchyard::Bus` on the transport). A test whose capability the transport lacks prints
//! `SKIPPED <test>: <reason>` and passes.
//!
//! ```ignore
//! struct Memory;
//! impl Harness for Memory { /* ... */ }
//! switchyard_conformance::conformance_tests!(Memory);
//! ```
//!
//! See `docs/conformance.md` for the list of tests and what each one proves.
#![forbid(unsafe_code)]

pub mod bus_suite;
pub mod faulty;
pub mod lifecycle;
pub mod memory;
pub mod suite;
mod suite_durable;
mod suite_settle;

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{
    BoxError, BoxFuture, Capabilities, CloseError, DeadLetter, DeadLetterSink, InMemoryDeadLetters,
    Pattern, PublishError, Publisher, SubscribeError, Subscriber, Topic, TopicError,
    TransportError,
};

pub use memory::{MemoryConfig, MemorySubscription, MemoryTransport};

/// What a transport promises, as the suite sees it: the core [`Capabilities`] plus the
/// behaviours the core flags do not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SuiteCapabilities {
    /// The transport's own capabilities.
    pub core: Capabilities,
    /// `nack` redelivers and an unsettled delivery comes back after the ack wait.
    pub redelivery: bool,
    /// After `max_deliver` deliveries a message goes to the dead-letter sink.
    pub dead_letters: bool,
    /// The harness can restart the broker (or reopen the storage) under a live test.
    pub restart: bool,
    /// The harness offers request/reply ([`Harness::request`], [`Harness::serve`]).
    pub request_reply: bool,
    /// A message's delivery count survives closing and reopening the transport (a
    /// redelivery after a restart says how many deliveries came before, and `max_deliver`
    /// counts across restarts).
    pub durable_delivery_counts: bool,
    /// Opening the same [`Setup`] again gives another connection to the same broker, and the
    /// transport carries commands and requests between connections
    /// ([`Subscriber::remote_commands`]): a bus on each is another process, as far as the
    /// bus can tell. Off for a transport whose commands stay in process.
    pub cross_process: bool,
}

/// Everything one suite test asks of a fresh transport.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Unique per test: a valid topic segment and stream/consumer name (`t` + lower-case
    /// ULID). Every topic a test uses starts with it, so tests can share one broker.
    pub namespace: String,
    /// How long an unsettled delivery waits before it is redelivered. Default: 30 s.
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered. Default: 5.
    pub max_deliver: u32,
    /// Where the transport must put dead letters.
    pub dead_letters: Arc<RecordingDeadLetters>,
}

impl Setup {
    /// The ack wait of a new setup.
    pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

    /// The deliveries before dead-lettering of a new setup.
    pub const DEFAULT_MAX_DELIVER: u32 = 5;

    /// A setup with a fresh namespace and the defaults.
    pub fn new() -> Self {
        Self {
            namespace: format!("t{}", ulid_lower()),
            ack_wait: Self::DEFAULT_ACK_WAIT,
            max_deliver: Self::DEFAULT_MAX_DELIVER,
            dead_letters: Arc::new(RecordingDeadLetters::default()),
        }
    }

    /// Sets the ack wait.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets the maximum number of deliveries.
    pub fn with_max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    /// `<namespace>.<suffix>` as a topic.
    pub fn topic(&self, suffix: &str) -> Result<Topic, TopicError> {
        Topic::new(&format!("{}.{suffix}", self.namespace))
    }

    /// `<namespace>.<suffix>` as a pattern (`suffix` may hold wildcards).
    pub fn pattern(&self, suffix: &str) -> Result<Pattern, TopicError> {
        Pattern::new(&format!("{}.{suffix}", self.namespace))
    }

    /// `<namespace>.#`: every topic of this test.
    pub fn all(&self) -> Result<Pattern, TopicError> {
        self.pattern("#")
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

/// A dead-letter sink the suite can wait on: an [`InMemoryDeadLetters`] that also wakes
/// waiters on every new letter.
#[derive(Debug, Default)]
pub struct RecordingDeadLetters {
    letters: InMemoryDeadLetters,
    notify: tokio::sync::Notify,
}

impl RecordingDeadLetters {
    /// The letters received so far, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.letters.list()
    }

    /// Waits until at least `n` letters arrived; `false` when `timeout` passed first.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.letters.len() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

impl DeadLetterSink for RecordingDeadLetters {
    fn put(&self, letter: DeadLetter) {
        self.letters.put(letter);
        self.notify.notify_waiters();
    }
}

fn ulid_lower() -> String {
    switchyard_core::MessageId::new()
        .to_string()
        .to_ascii_lowercase()
}

/// Answers one request in [`Harness::serve`]: `Some(reply)` replies, `None` stays silent
/// (the requester then times out).
pub type ReplyFn =
    Arc<dyn Fn(switchyard_core::Envelope) -> Option<switchyard_core::Envelope> + Send + Sync>;

/// Keeps a responder of [`Harness::serve`] running; dropping it stops the responder.
pub struct ServeGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl ServeGuard {
    /// Wraps whatever keeps the responder alive (a task handle that aborts on drop, a
    /// subscription).
    pub fn new(keep: impl Send + Sync + 'static) -> Self {
        Self(Box::new(keep))
    }
}

impl std::fmt::Debug for ServeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServeGuard")
    }
}

/// How a request of the suite failed, mapped from each transport's own error.
#[derive(Debug, thiserror::Error)]
pub enum RequestFailure {
    /// Nobody serves the topic; must come back well before the deadline.
    #[error("no responders")]
    NoResponders,
    /// The deadline passed.
    #[error("request timed out")]
    Timeout,
    /// The harness does not offer request/reply.
    #[error("request/reply is not supported")]
    Unsupported,
    /// Anything else.
    #[error("request failed: {0}")]
    Other(BoxError),
}

/// How the suite reaches one transport: implemented by each transport crate in its tests.
pub trait Harness: Send + Sync + 'static {
    /// The transport under test.
    type Transport: Publisher + Subscriber + Clone;

    /// Short name for messages (`memory`, `log`, `nats`).
    fn name(&self) -> &str;

    /// What the transport and this harness can do.
    fn capabilities(&self) -> SuiteCapabilities;

    /// `Some(reason)` when the transport cannot run here (e.g. no server reachable and not
    /// under CI): every test then skips with that reason.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// Opens a transport for `setup`. Opening again with the same setup (after closing the
    /// first) must reach the same durable storage.
    fn open<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<Self::Transport, BoxError>>;

    /// Restarts the broker (or closes and reopens the storage) under a live `transport`;
    /// returns the transport to go on with. Only called when `capabilities().restart`.
    fn restart<'a>(
        &'a self,
        setup: &'a Setup,
        transport: Self::Transport,
    ) -> BoxFuture<'a, Result<Self::Transport, BoxError>> {
        let _ = (setup, transport);
        Box::pin(async { Err::<Self::Transport, BoxError>("restart is not supported".into()) })
    }

    /// Sends a request and waits at most `deadline` for the reply.
    fn request(
        &self,
        transport: &Self::Transport,
        request: switchyard_core::Envelope,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<switchyard_core::Envelope, RequestFailure>> {
        let _ = (transport, request, deadline);
        Box::pin(async { Err(RequestFailure::Unsupported) })
    }

    /// Serves requests matching `pattern` with `handler` until the guard is dropped.
    fn serve(
        &self,
        transport: &Self::Transport,
        pattern: &Pattern,
        handler: ReplyFn,
    ) -> BoxFuture<'static, Result<ServeGuard, BoxError>> {
        let _ = (transport, pattern, handler);
        Box::pin(async { Err::<ServeGuard, BoxError>("request/reply is not supported".into()) })
    }

    /// Removes what the test left on the broker (streams, consumers). Called at the end of
    /// each test that passed.
    fn cleanup<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, ()> {
        let _ = setup;
        Box::pin(async {})
    }
}

/// The result of one suite test that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check held.
    Passed,
    /// The test did not apply; the reason says why.
    Skipped(String),
}

/// Why a suite test failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// A check did not hold.
    #[error("check failed: {0}")]
    Check(String),
    /// An awaited event did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The harness could not open or restart the transport.
    #[error("harness failed: {0}")]
    Harness(BoxError),
    /// A topic or pattern of the test was invalid (a bug in the suite).
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Subscribing failed.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// Settling failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Closing failed.
    #[error(transparent)]
    Close(#[from] CloseError),
    /// A task of the test panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(String),
}

/// Prints the outcome of one suite test. Returns the failure so the caller (the generated
/// test) can fail. Used by [`conformance_tests!`] and [`bus_suite_tests!`].
///
/// A skip is loud: its `SKIPPED <transport>::<test>: <reason>` line is written straight to
/// the process's stderr, past the test harness's output capture, so it shows in a plain
/// `cargo test` run (where the output of passing tests is otherwise hidden). A skipped test
/// passes, but never silently.
pub fn report(
    test: &str,
    transport: &str,
    result: Result<Verdict, Failure>,
) -> Result<(), Failure> {
    match result {
        Ok(Verdict::Passed) => Ok(()),
        Ok(Verdict::Skipped(reason)) => {
            use std::io::Write;
            // `eprintln!` would be captured (and dropped) for a passing test: write to the
            // stream itself. Nothing to do if stderr is gone.
            let _ = writeln!(
                std::io::stderr().lock(),
                "!!!! SKIPPED {transport}::{test}: {reason}"
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("FAILED {transport}::{test}: {e}");
            Err(e)
        }
    }
}

/// Expands into one `#[tokio::test]` per suite function (of [`suite`] and [`bus_suite`]),
/// each building its harness with the given expression. A second expression after
/// `restart =` builds the harness for the restart test (for brokers the test must own to
/// restart).
///
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!($harness, restart = $harness);
    };
    ($harness:expr, restart = $restart:expr) => {
        $crate::conformance_tests!(@one $harness; roundtrip, concurrent_publishers, many_topics,
            nack_redelivers, ack_wait_redelivers, new_subscriber_continues, concurrent_close,
            continue_after_handler_errors, in_order_per_key, publisher_close_flushes,
            delivery_context_and_cancellation, consumer_groups, durable_new_subscriber_reads_old,
            wildcards, request_reply, dead_letter_after_max_deliveries,
            ack_after_close_is_refused_or_kept);
        $crate::bus_suite_tests!($crate::bus_suite::OnTransport($harness));
        $crate::lifecycle_tests!($harness);
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn reconnect_after_restart() {
            let h = $restart;
            let r = $crate::suite::reconnect_after_restart(&h).await;
            if let Err(e) = $crate::report("reconnect_after_restart", $crate::Harness::name(&h), r) {
                panic!("{e}");
            }
        }
    };
    (@one $harness:expr; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let h = $harness;
                let r = $crate::suite::$test(&h).await;
                if let Err(e) = $crate::report(stringify!($test), $crate::Harness::name(&h), r) {
                    panic!("{e}");
                }
            }
        )*
    };
}

/// Expands into one `#[tokio::test]` per function of [`bus_suite`], each building its bus
/// through the given [`bus_suite::BusFactory`] expression: `bus_suite::InProcess` for
/// `Bus::new()`'s own bus, `bus_suite::OnTransport(harness)` for the bus on a transport
/// (which [`conformance_tests!`] does for every harness).
///
/// What the bus cannot promise is declared, never found out: by the factory
/// ([`BusFactory::guarantees`](bus_suite::BusFactory::guarantees)), or at the call with
/// `guarantees = <BusGuarantees expression>`, which overrides the factory's. A test that needs
/// a promise not declared is skipped with a loud `SKIPPED` line naming it (see [`report`]).
///
/// ```ignore
/// bus_suite_tests!(OnFaultyTransport::new(Log::new(), faults),
///     guarantees = BusGuarantees { no_duplicates: false, ..BusGuarantees::ALL });
/// ```
#[macro_export]
macro_rules! bus_suite_tests {
    ($factory:expr) => {
        $crate::bus_suite_tests!(@each $factory; bus_attempts_count_from_one,
            bus_message_failing_twice_is_delivered, bus_shutdown_twice_returns_the_first_report,
            bus_concurrent_publishers_lose_nothing, bus_concurrent_publishers_duplicate_nothing, bus_keeps_order_per_key,
            bus_retry_outcome_redelivers, bus_refuses_work_after_shutdown,
            bus_shutdown_report_names_what_was_in_flight,
            bus_requests_fail_without_handler_and_on_timeout,
            bus_consumer_group_shares_and_keeps_one_pattern,
            bus_dropped_group_member_hands_its_messages_on,
            bus_shutdown_racing_publishers_loses_nothing,
            bus_ack_after_transport_close_is_settled,
            bus_shutdown_report_accounts_for_every_pending_message,
            bus_nacked_at_shutdown_come_back,
            bus_command_reaches_its_handler_and_returns_its_result,
            bus_command_failures_come_back_typed, bus_request_past_its_deadline_times_out,
            bus_command_without_handler_fails_fast,
            bus_two_handler_buses_share_each_command_once,
            bus_handler_shut_down_never_hangs_the_sender,
            bus_request_deadline_reaches_the_remote_side);
    };
    ($factory:expr, guarantees = $guarantees:expr) => {
        $crate::bus_suite_tests!($crate::bus_suite::Declared::new($factory, $guarantees));
    };
    (@each $factory:expr; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let f = $factory;
                let r = $crate::bus_suite::$test(&f).await;
                if let Err(e) = $crate::report(
                    stringify!($test),
                    $crate::bus_suite::BusFactory::name(&f),
                    r,
                ) {
                    panic!("{e}");
                }
            }
        )*
    };
}

/// docs/conformance.md, compiled as doc tests so its examples cannot rot.
#[doc = include_str!("../../../docs/conformance.md")]
#[cfg(doctest)]
pub struct ConformanceGuide;
