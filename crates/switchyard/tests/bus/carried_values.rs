//! The typed value a message carries beside (or instead of) its bytes is let go of once the
//! message is settled: not kept by the queue's spent envelopes, nor by a dead letter. Found by
//! review rev1; each test failed before its fix.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Message, Outcome, Shared};
use tokio::sync::mpsc;

use crate::{received, until};

/// An event whose value counts how many of it are alive (a field the encoding skips), so a
/// test sees when the bus lets go of the value it carried beside the payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tracked {
    pub n: u64,
    pub tenant: String,
    /// Holds a count for as long as the value lives.
    #[serde(skip)]
    #[allow(dead_code)]
    pub alive: Option<Arc<()>>,
}
impl Message for Tracked {
    const TOPIC: &'static str = "rev1.tracked";
}

/// docs/bus.md, `Shared<T>`: "The last holder can take the value out". A handler that keeps
/// the `Shared` it was given (here: sends it out) is its last holder once the publish has
/// settled everywhere. With an ordering key the publish is encoded and the value travels
/// beside the bytes; the queue then keeps the settled envelope for reuse (`queue.rs`
/// `State::complete`, `spent`) with its value inside, so the value stays held by the idle
/// queue. FAILED when written (defect).
#[tokio::test(flavor = "current_thread")]
async fn a_kept_shared_value_is_its_last_holder_once_the_publish_settled() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("keeper", move |t: Shared<Tracked>, _ctx| {
            let tx = tx.clone();
            async move {
                tx.send(t).map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
        })
        .ordering_header("tenant")
        .start()
        .await
        .unwrap();
    let alive = Arc::new(());
    bus.publish(Tracked {
        n: 1,
        tenant: "acme".into(),
        alive: Some(Arc::clone(&alive)),
    })
    .await
    .unwrap();
    let got = received(&mut rx, 1).await.pop().unwrap();
    bus.run_until_idle().await;
    // The worker completes the message in its queue as it goes back to wait for work.
    until("the worker waits again", || {
        bus.registry()
            .into_iter()
            .find(|s| s.name == "keeper")
            .is_some_and(|s| s.in_flight == 0)
    })
    .await;
    tokio::task::yield_now().await;
    assert_eq!(got.n, 1);
    match Shared::try_unwrap(got) {
        Ok(value) => assert_eq!(value.n, 1),
        Err(_) => panic!(
            "Shared::try_unwrap failed: the handler's Shared is not the last holder after \
             the publish settled"
        ),
    }
}

/// The same retention seen without `Shared`: a typed event carried beside its bytes (here,
/// next to a raw subscriber, which makes the publish encode) is not let go of once every
/// subscription handled it; up to 16 per idle queue (256 while busy) stay alive in the
/// queues' `spent` envelopes until later publishes push them out. FAILED when written.
#[tokio::test(flavor = "current_thread")]
async fn a_carried_value_is_dropped_once_every_subscription_handled_it() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _typed = bus
        .on("typed", move |t: Tracked, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(t.n);
                Ok::<_, String>(())
            }
        })
        .start()
        .await
        .unwrap();
    let _raw = bus
        .subscribe(
            "raw",
            "rev1.tracked",
            switchyard::handler_fn(|_env: switchyard::Envelope| async {
                Ok::<_, std::io::Error>(Outcome::Ack)
            }),
        )
        .start()
        .await
        .unwrap();
    let alive = Arc::new(());
    for n in 0..4 {
        bus.publish(Tracked {
            n,
            tenant: "acme".into(),
            alive: Some(Arc::clone(&alive)),
        })
        .await
        .unwrap();
    }
    assert_eq!(received(&mut rx, 4).await.len(), 4);
    bus.run_until_idle().await;
    until("the workers wait again", || {
        bus.registry().into_iter().all(|s| s.in_flight == 0)
    })
    .await;
    tokio::task::yield_now().await;
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "values of handled messages are still alive in the bus"
    );
}

/// A dead letter holds the message's bytes (docs/bus.md); the typed value the bus carried
/// beside them is of no use to it, and a dead-letter store bounded by bytes
/// (`DEFAULT_DEAD_LETTER_BYTES`) does not weigh it. Found kept: the letter's envelope still
/// holds the value (`DeadLetter::new` encodes the payload but leaves `local`).
#[tokio::test(flavor = "current_thread")]
async fn a_dead_letter_does_not_keep_the_typed_value_alive() {
    let bus = Bus::new();
    let _sub = bus
        .on("fails", |_t: Tracked, _ctx| async move {
            Ok::<_, String>(Outcome::reject("no"))
        })
        .start()
        .await
        .unwrap();
    let alive = Arc::new(());
    bus.publish(Tracked {
        n: 1,
        tenant: "acme".into(),
        alive: Some(Arc::clone(&alive)),
    })
    .await
    .unwrap();
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        &letters[0].envelope.payload[..],
        br#"{"n":1,"tenant":"acme"}"#
    );
    drop(letters);
    until("the worker waits again", || {
        bus.registry().into_iter().all(|s| s.in_flight == 0)
    })
    .await;
    tokio::task::yield_now().await;
    let held = Arc::strong_count(&alive);
    drop(bus.dead_letters().unwrap().drain());
    let after_drain = Arc::strong_count(&alive);
    assert_eq!(
        (held, after_drain),
        (1, 1),
        "holders of the value with the letter in the store, and once it was drained from it"
    );
}
