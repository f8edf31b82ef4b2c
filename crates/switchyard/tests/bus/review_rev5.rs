//! Review rev5: outside-in attacks on the bus's promises (docs/bus.md, ARCHITECTURE.md
//! "Invariants"), through the public API only. Attacks that found no defect pass and are kept
//! for their coverage; a defect is an `#[ignore = "defect: ..."]` test whose doc comment says
//! what is expected and what was observed.

use switchyard::{Bus, DeadLetterReason, MessageId};
use tokio::sync::Semaphore;

pub(super) type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Waits for a permit of `gate` (and keeps it used).
pub(super) async fn pass(gate: &Semaphore) -> Result<(), String> {
    gate.acquire()
        .await
        .map(|p| p.forget())
        .map_err(|e| e.to_string())
}

/// The ids of the dead letters with `reason`.
pub(super) fn letters_with(bus: &Bus, reason: DeadLetterReason) -> Vec<MessageId> {
    bus.dead_letters()
        .unwrap()
        .list()
        .into_iter()
        .filter(|l| l.reason == reason)
        .map(|l| l.envelope.id)
        .collect()
}

mod backpressure;
mod boundaries;
mod order_and_time;
mod outcomes;
mod shutdown;
