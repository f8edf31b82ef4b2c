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

/// Runs `ops` on a fresh log and shuts down with `shutdown_ms`.
pub fn run_log(ops: &[Op], shutdown_ms: u64) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
        let bus = Bus::builder().transport(log).build().unwrap();
        run(bus, Backend::Log, ops, shutdown_ms, 5).await
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
        let checked = run_log(&ops, shutdown_ms);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
