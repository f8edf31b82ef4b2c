//! The bus suite through a transport that drops, delays and duplicates deliveries and loses
//! acks (the memory transport under `FaultyTransport`). Tests that need a promise such a
//! transport cannot keep (exactly once, order, exact attempt numbers) skip, saying so.

use std::time::Duration;

use switchyard_conformance::faulty::{Faults, OnFaultyTransport};

use super::memory::Memory;

fn faulty() -> OnFaultyTransport<Memory> {
    OnFaultyTransport::new(
        Memory,
        Faults {
            drop_every: Some(7),
            delay: Some(Duration::from_millis(1)),
            duplicate_every: Some(5),
            fail_ack_every: Some(6),
        },
    )
}

switchyard_conformance::bus_suite_tests!(faulty());

/// The faults do happen: one run of the concurrent publishers meets every kind, and nothing is
/// lost anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_fault_is_injected_and_nothing_is_lost() {
    let f = faulty();
    let r = switchyard_conformance::bus_suite::bus_concurrent_publishers_lose_nothing(&f).await;
    assert!(
        matches!(r, Ok(switchyard_conformance::Verdict::Passed)),
        "{r:?}"
    );
    let c = f.counts();
    assert!(
        c.dropped > 0 && c.duplicated > 0 && c.failed_acks > 0,
        "faults injected: {c:?}"
    );
}

/// Faults that keep order, count and attempts (only delays): every test of the suite runs.
mod delayed {
    use super::*;

    fn delayed() -> OnFaultyTransport<Memory> {
        OnFaultyTransport::new(
            Memory,
            Faults {
                delay: Some(Duration::from_millis(2)),
                ..Faults::default()
            },
        )
    }

    switchyard_conformance::bus_suite_tests!(delayed());
}
