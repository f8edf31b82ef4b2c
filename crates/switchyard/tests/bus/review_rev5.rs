//! Review rev5: outside-in attacks on the bus's promises (docs/bus.md, ARCHITECTURE.md
//! "Invariants"), through the public API only. Attacks that found no defect pass and are kept
//! for their coverage; a defect is an `#[ignore = "defect: ..."]` test whose doc comment says
//! what is expected and what was observed.

use switchyard::{Bus, DeadLetterReason, MessageId};
use tokio::sync::Semaphore;

pub(super) type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// A subscription named `name` whose handler reports each `Ping` it starts on the returned
/// channel and never finishes.
pub(super) async fn stuck(
    bus: &Bus,
    name: &str,
) -> (
    switchyard::Subscription,
    tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    let (tx, started) = tokio::sync::mpsc::unbounded_channel();
    let sub = bus
        .on(name, move |p: crate::Ping, _| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(p.n);
                std::future::pending::<()>().await;
                Ok::<_, String>(())
            }
        })
        .start()
        .await
        .unwrap();
    (sub, started)
}

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
