//! The fault-injecting transport of [`switchyard::testkit`] ([`FaultyTransport`], re-exported
//! here), and [`OnFaultyTransport`]: the bus suite through it, over a harness's transport
//! ([`faulty_bus_suite_tests!`](crate::faulty_bus_suite_tests)).

use std::time::Duration;

pub use switchyard::testkit::{FaultCounter, FaultCounts, Faults, FaultyTransport};
use switchyard_core::BoxFuture;

/// The bus on a [`FaultyTransport`] over a harness's transport: the bus suite through a
/// misbehaving transport ([`bus_suite_tests!`](crate::bus_suite_tests)). The wrapped transport
/// is opened with a short ack wait ([`ACK_WAIT`](Self::ACK_WAIT)) when the faults lose
/// deliveries or acks and the test did not choose its own, so that they come back quickly.
#[derive(Debug, Clone)]
pub struct OnFaultyTransport<H> {
    harness: H,
    faults: Faults,
    name: String,
    counter: FaultCounter,
}

impl<H: crate::Harness> OnFaultyTransport<H> {
    /// The ack wait of the wrapped transport.
    pub const ACK_WAIT: Duration = Duration::from_secs(1);

    /// The max deliveries of the wrapped transport when faults lose deliveries or acks.
    pub const MAX_DELIVER: u32 = 100;

    /// `harness`'s transport with `faults`.
    pub fn new(harness: H, faults: Faults) -> Self {
        let name = format!("faulty {}", harness.name());
        Self {
            harness,
            faults,
            name,
            counter: FaultCounter::new(),
        }
    }

    /// The harness's transport for `setup` (ack wait and max deliveries adjusted to the
    /// faults) behind a [`FaultyTransport`].
    async fn open_faulty(
        &self,
        setup: &crate::Setup,
    ) -> Result<crate::bus_suite::OpenedBus, switchyard_core::BoxError> {
        // A test that chose its ack wait keeps it (one with handlers stuck on purpose
        // wants no redelivery meanwhile); the default one is shortened.
        let mut short = setup.clone();
        if short.ack_wait == crate::Setup::DEFAULT_ACK_WAIT && self.faults.may_reorder() {
            short.ack_wait = Self::ACK_WAIT;
        }
        // Lost deliveries and acks count towards the transport's max_deliver: unless the
        // test chose its own, a budget the injected faults do not use up, so a message
        // is not dead-lettered for faults the test did not ask about.
        if short.max_deliver == crate::Setup::DEFAULT_MAX_DELIVER && self.faults.may_reorder() {
            short.max_deliver = Self::MAX_DELIVER;
        }
        let inner = self.harness.open(&short).await?;
        let faulty = FaultyTransport::with_counter(inner, self.faults, self.counter.clone());
        Ok(crate::bus_suite::OpenedBus::on(faulty))
    }

    /// How many faults the transports this factory opened injected so far, together.
    pub fn counts(&self) -> FaultCounts {
        self.counter.counts()
    }
}

impl<H: crate::Harness> crate::bus_suite::BusFactory for OnFaultyTransport<H> {
    fn name(&self) -> &str {
        &self.name
    }

    fn guarantees(&self) -> crate::bus_suite::BusGuarantees {
        crate::bus_suite::BusGuarantees {
            no_duplicates: !self.faults.may_duplicate(),
            ordered: !self.faults.may_reorder(),
            exact_attempts: !self.faults.may_reorder(),
            ..crate::bus_suite::BusGuarantees::on_transport(self.harness.capabilities())
        }
    }

    fn unavailable(&self) -> Option<String> {
        self.harness.unavailable()
    }

    fn builder<'a>(
        &'a self,
        setup: &'a crate::Setup,
    ) -> BoxFuture<'a, Result<switchyard::BusBuilder, switchyard_core::BoxError>> {
        Box::pin(async move { Ok(self.open(setup).await?.builder) })
    }

    fn open<'a>(
        &'a self,
        setup: &'a crate::Setup,
    ) -> BoxFuture<'a, Result<crate::bus_suite::OpenedBus, switchyard_core::BoxError>> {
        Box::pin(self.open_faulty(setup))
    }

    /// Another connection through the same faults, when the harness declares
    /// [`cross_process`](crate::SuiteCapabilities::cross_process). The faults are on
    /// deliveries and acks; commands pass through (`FaultyTransport` forwards
    /// `remote_commands`).
    fn second_bus<'a>(
        &'a self,
        setup: &'a crate::Setup,
    ) -> Option<BoxFuture<'a, Result<crate::bus_suite::OpenedBus, switchyard_core::BoxError>>> {
        if !self.harness.capabilities().cross_process {
            return None;
        }
        Some(Box::pin(self.open_faulty(setup)))
    }

    fn cleanup<'a>(&'a self, setup: &'a crate::Setup) -> BoxFuture<'a, ()> {
        self.harness.cleanup(setup)
    }
}

/// Expands into the bus suite through a [`FaultyTransport`] over the given harness's
/// transport, once per kind of fault and once with all of them, each module declaring at the
/// call what the bus still promises under its fault ([`bus_suite_tests!`](crate::bus_suite_tests)
/// with `guarantees = ..`); a test needing more skips loudly. Plus `faults_are_injected`,
/// which checks that the faults do happen. The harness expression is evaluated once per test.
///
/// What each fault means for the expected outcome:
///
/// - `delayed` (every delivery held 2 ms): nothing changes. Every promise of the transport
///   holds: none lost, none duplicated, per-key order, exact attempt numbers.
/// - `dropped` (every 3rd delivery lost before the bus sees it): the transport hands it out
///   again (at once where dropping a delivery hands it back, else after the ack wait), so
///   nothing is lost and nothing is handled twice; but it comes back after later messages
///   (no per-key order) and as a later delivery (its attempt number counts the lost one).
/// - `duplicated` (every 3rd delivery handed on twice): at least once, not exactly once. A
///   handler sees copies; every message is still handled, and order and attempt counts are
///   off by the copies.
/// - `failed_acks` (every 3rd ack lost): the transport hands the message out again after its
///   ack wait: at least once (handled twice), out of order, the redelivery numbered after the
///   lost ack.
/// - `all_faults` (drop 1 in 7, copy 1 in 5, lose 1 ack in 6, 1 ms delay): the sum: only "none
///   lost" is promised, with what the transport keeps (durability) and its groups.
///
/// ```ignore
/// switchyard_conformance::faulty_bus_suite_tests!(Log::new());
/// ```
#[macro_export]
macro_rules! faulty_bus_suite_tests {
    ($harness:expr) => {
        /// Delays only: every promise holds.
        mod delayed {
            #[allow(unused_imports)]
            use super::*;
            $crate::bus_suite_tests!(
                $crate::faulty::OnFaultyTransport::new(
                    $harness,
                    $crate::faulty::Faults {
                        delay: Some(::std::time::Duration::from_millis(2)),
                        ..$crate::faulty::Faults::default()
                    }
                ),
                guarantees = $crate::bus_suite::BusGuarantees::on_transport(
                    $crate::Harness::capabilities(&$harness)
                )
            );
        }
        /// Lost deliveries come back: none lost, none twice; no order, no exact attempts.
        mod dropped {
            #[allow(unused_imports)]
            use super::*;
            $crate::bus_suite_tests!(
                $crate::faulty::OnFaultyTransport::new(
                    $harness,
                    $crate::faulty::Faults {
                        drop_every: Some(3),
                        ..$crate::faulty::Faults::default()
                    }
                ),
                guarantees = $crate::bus_suite::BusGuarantees {
                    ordered: false,
                    exact_attempts: false,
                    ..$crate::bus_suite::BusGuarantees::on_transport($crate::Harness::capabilities(
                        &$harness
                    ))
                }
            );
        }
        /// Copies: at least once; no exactly once, no order, no exact attempts.
        mod duplicated {
            #[allow(unused_imports)]
            use super::*;
            $crate::bus_suite_tests!(
                $crate::faulty::OnFaultyTransport::new(
                    $harness,
                    $crate::faulty::Faults {
                        duplicate_every: Some(3),
                        ..$crate::faulty::Faults::default()
                    }
                ),
                guarantees = $crate::bus_suite::BusGuarantees {
                    no_duplicates: false,
                    ordered: false,
                    exact_attempts: false,
                    ..$crate::bus_suite::BusGuarantees::on_transport($crate::Harness::capabilities(
                        &$harness
                    ))
                }
            );
        }
        /// Lost acks: redelivered after the ack wait; at least once, no order, no exact attempts.
        mod failed_acks {
            #[allow(unused_imports)]
            use super::*;
            $crate::bus_suite_tests!(
                $crate::faulty::OnFaultyTransport::new(
                    $harness,
                    $crate::faulty::Faults {
                        fail_ack_every: Some(3),
                        ..$crate::faulty::Faults::default()
                    }
                ),
                guarantees = $crate::bus_suite::BusGuarantees {
                    no_duplicates: false,
                    ordered: false,
                    exact_attempts: false,
                    ..$crate::bus_suite::BusGuarantees::on_transport($crate::Harness::capabilities(
                        &$harness
                    ))
                }
            );
        }
        /// Every fault at once: none lost is what is left.
        mod all_faults {
            #[allow(unused_imports)]
            use super::*;
            fn all() -> $crate::faulty::Faults {
                $crate::faulty::Faults {
                    drop_every: Some(7),
                    delay: Some(::std::time::Duration::from_millis(1)),
                    duplicate_every: Some(5),
                    fail_ack_every: Some(6),
                }
            }
            $crate::bus_suite_tests!(
                $crate::faulty::OnFaultyTransport::new($harness, all()),
                guarantees = $crate::bus_suite::BusGuarantees {
                    no_duplicates: false,
                    ordered: false,
                    exact_attempts: false,
                    ..$crate::bus_suite::BusGuarantees::on_transport($crate::Harness::capabilities(
                        &$harness
                    ))
                }
            );

            /// The faults do happen: one run of the concurrent publishers meets every kind,
            /// and nothing is lost anyway.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn faults_are_injected() {
                let f = $crate::faulty::OnFaultyTransport::new($harness, all());
                let r = $crate::bus_suite::bus_concurrent_publishers_lose_nothing(&f).await;
                match r {
                    Ok($crate::Verdict::Passed) => {}
                    Ok($crate::Verdict::Skipped(reason)) => {
                        // Unavailable transport: reported loudly, nothing to count.
                        let _ = $crate::report(
                            "faults_are_injected",
                            "faulty",
                            Ok($crate::Verdict::Skipped(reason)),
                        );
                        return;
                    }
                    Err(e) => panic!("{e}"),
                }
                let c = f.counts();
                assert!(
                    c.dropped > 0 && c.duplicated > 0 && c.failed_acks > 0,
                    "faults injected: {c:?}"
                );
            }
        }
    };
}
