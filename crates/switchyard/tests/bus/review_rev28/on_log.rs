//! The model against the bus on the embedded log (`switchyard-log` in a temp dir), real
//! clock: retries 2 ms apart, slow handlers at most 5 ms. The log keeps every message, so a
//! subscription (or group) alive at the end owes every message of its pattern, also those
//! published before it started; the test waits (bounded) for each to be settled, then shuts
//! down.

use proptest::prelude::*;
use switchyard::Bus;
use switchyard_log::{LogConfig, LogTransport};

use super::model::{Op, ops};
use super::runner::{Backend, run};

/// Runs `ops` on a fresh log and shuts down with `shutdown_ms`; with `restart`, at once
/// (no wait for the backlog), then checks on a second bus over the same log.
pub fn run_log(ops: &[Op], shutdown_ms: u64, restart: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let open = || {
            let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
            Bus::builder().transport(log).build().unwrap()
        };
        let reopen: Option<&dyn Fn() -> Bus> = if restart { Some(&open) } else { None };
        run(open(), Backend::Log, ops, shutdown_ms, 5, reopen).await
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    /// As in memory, plus consumer groups: a group handles each message once across its
    /// members, also when members leave.
    #[test]
    fn the_bus_on_the_log_agrees_with_the_model(
        ops in ops(true, 20, 4, 5),
        shutdown_ms in prop_oneof![Just(200u64), Just(2_000)],
    ) {
        let checked = run_log(&ops, shutdown_ms, false);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }

    /// A shutdown mid-flight (deadline 0 or 20 ms), then a second bus on the same log with
    /// the same subscriptions: every owed pair is settled once across the two buses
    /// (handled once, or dead-lettered once), nothing acked or dead-lettered by the first
    /// is handled again by the second.
    #[test]
    fn what_a_shutdown_leaves_on_the_log_is_settled_once_after_a_restart(
        ops in ops(true, 20, 4, 5),
        shutdown_ms in prop_oneof![Just(0u64), Just(20)],
    ) {
        let checked = run_log(&ops, shutdown_ms, true);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
