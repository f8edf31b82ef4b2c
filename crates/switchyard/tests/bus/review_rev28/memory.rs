//! The model against the in-memory bus, on tokio's paused clock (retries, backoffs, slow
//! handlers, overflow time-outs and the shutdown deadline all run in virtual time).

use proptest::prelude::*;
use switchyard::Bus;

use super::model::{Op, ops};
use super::runner::{Backend, run};

/// Runs `ops` in memory and shuts down with `shutdown_ms` (virtual).
pub fn run_memory(ops: &[Op], shutdown_ms: u64) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = Bus::builder().build().unwrap();
        run(bus, Backend::Memory, ops, shutdown_ms, 40, None).await
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        max_shrink_iters: 400,
        ..ProptestConfig::default()
    })]

    /// Every accepted pair is handled once, dead-lettered once, or reported by the shutdown;
    /// key order, the workers bound, command results and counters agree with the model.
    #[test]
    fn the_in_memory_bus_agrees_with_the_model(
        ops in ops(false, 30, 6, 40),
        shutdown_ms in prop_oneof![Just(0u64), Just(20), Just(150), Just(5_000)],
    ) {
        let checked = run_memory(&ops, shutdown_ms);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
