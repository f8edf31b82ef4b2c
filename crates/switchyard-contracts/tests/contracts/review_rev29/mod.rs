//! Review rev29: evolution over time. Records written at version 1 by a bus that is then
//! dropped (a restart) meet a version-2 consumer, with and without upcasters; a version-2
//! producer meets a version-1 consumer; compatibility verdicts and the AsyncAPI export against
//! what the bus accepts; dead letters kept across a restart and replayed through an upcasting
//! handler; a Python process writing version 1 and 2 of a class into the log.

mod dlq;
mod nats;
mod pipeline;
mod python;
mod restart;
mod schema;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard::{Bus, DeadLetter, DeadLetterSink, Envelope, Message, Topic};
use switchyard_contracts::{Contract, JsonSchema, Upcasters};
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::mpsc;

pub(super) const WAIT: Duration = Duration::from_secs(10);
pub(super) const TOPIC: &str = "rev29.orders";

/// Version 1 of `Order`, as last month's binary had it: `amount` in whole units, no currency.
pub(super) mod v1 {
    use super::*;
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct Order {
        pub id: u64,
        pub amount: f64,
    }
    impl Message for Order {
        const TOPIC: &'static str = super::TOPIC;
    }
    impl Contract for Order {}
}

/// Version 2 of `Order`: `amount_cents` replaces `amount`, `currency` is required.
pub(super) mod v2 {
    use super::*;
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct Order {
        pub id: u64,
        pub amount_cents: u64,
        pub currency: String,
    }
    impl Message for Order {
        const TOPIC: &'static str = super::TOPIC;
        const VERSION: u32 = 2;
    }
    impl Contract for Order {}
}

/// The one step `1 → 2`, counting its calls.
pub(super) fn upcasters(calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Upcasters {
    Upcasters::new().step_for::<v2::Order, _, _>(1, move |mut v| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let amount = v["amount"].as_f64().ok_or("`amount` is not a number")?;
        v["amount_cents"] = json!((amount * 100.0).round() as u64);
        v["currency"] = json!("EUR");
        v.as_object_mut().ok_or("not an object")?.remove("amount");
        Ok::<_, String>(v)
    })
}

/// Dead letters on a channel.
pub(super) struct Letters(pub mpsc::UnboundedSender<DeadLetter>);
impl DeadLetterSink for Letters {
    fn put(&self, letter: DeadLetter) {
        let _ = self.0.send(letter);
    }
}

/// A bus on the log at `dir`, with upcasters if given, its dead letters going to `sink`.
pub(super) fn bus_on(dir: &Path, ups: Option<Upcasters>, sink: impl DeadLetterSink) -> Bus {
    let mut b = Bus::builder()
        .transport(LogTransport::open(LogConfig::new(dir)).unwrap())
        .dead_letters(sink);
    if let Some(u) = ups {
        b = b.upcaster(u);
    }
    b.build().unwrap()
}

/// A v1 envelope exactly as the v1 binary published it.
pub(super) fn v1_raw(id: u64, amount: f64) -> Envelope {
    let mut env = Envelope::new(
        Topic::new(TOPIC).unwrap(),
        serde_json::to_vec(&json!({"id": id, "amount": amount})).unwrap(),
    );
    env.type_name = Some("Order".into());
    env.type_version = 1;
    env
}

/// Receives one item or fails after [`WAIT`].
pub(super) async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("channel closed")
}

/// A typed v2 handler named `group`, sending what it decodes with the envelope's version.
pub(super) async fn v2_handler(
    bus: &Bus,
    group: &str,
) -> (
    switchyard::Subscription,
    mpsc::UnboundedReceiver<(v2::Order, u32)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on(group, move |o: v2::Order, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((o, ctx.envelope().type_version))
                    .map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    (sub, rx)
}
