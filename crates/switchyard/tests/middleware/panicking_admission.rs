//! A subscription's filter or ordering-key function that panics (it runs on the publisher's
//! or sender's task): that subscription's copy is dead-lettered (`Panicked`), counted, and a
//! command's sender is answered with a typed error; every other subscription gets the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use switchyard::{
    BoxError, Bus, Command, DeadLetterReason, Envelope, Kind, Message, Outcome, SendError, Topic,
    boxed,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    cents: u64,
}
impl Message for Refund {
    const TOPIC: &'static str = "billing.refund";
    const KIND: Kind = Kind::Command;
}
impl Command for Refund {
    type Output = u64;
}

fn counting(calls: Arc<AtomicU32>) -> switchyard::BoxHandler {
    boxed(tower::service_fn(move |_e: Envelope| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<Outcome, BoxError>(Outcome::Ack) }
    }))
}

/// The panicking subscription's copy is dead-lettered with its raw envelope, its name and
/// the panic's message, counted as `panicked` and `dead_lettered`; the subscription takes the
/// next message; the other one gets both.
#[tokio::test(start_paused = true)]
async fn a_panicking_filter_dead_letters_that_subscriptions_copy() {
    let bus = Bus::new();
    let bad_calls = Arc::new(AtomicU32::new(0));
    let good = Arc::new(AtomicU32::new(0));
    let bad = bus
        .subscribe("bad", "orders.#", counting(bad_calls.clone()))
        .filter(|e| {
            assert!(&e.payload[..] != b"boom", "filter panics");
            true
        })
        .start()
        .await
        .unwrap();
    let _good = bus
        .subscribe("good", "orders.#", counting(good.clone()))
        .start()
        .await
        .unwrap();
    let boom = Envelope::new(Topic::new("orders.placed").unwrap(), "boom");
    let id = boom.id.clone();
    bus.publish_envelope(boom).await.unwrap();
    bus.publish_envelope(Envelope::new(Topic::new("orders.placed").unwrap(), "fine"))
        .await
        .unwrap();
    bus.run_until_idle().await;
    assert_eq!(good.load(Ordering::SeqCst), 2);
    assert_eq!(
        bad_calls.load(Ordering::SeqCst),
        1,
        "the next one is handled"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.envelope.id, id);
    assert_eq!(&letter.envelope.payload[..], b"boom");
    assert_eq!(letter.reason, DeadLetterReason::Panicked);
    assert_eq!(letter.handler.as_deref(), Some("bad"));
    assert!(
        letter.error.contains("filter panicked: filter panics"),
        "{}",
        letter.error
    );
    let stats = bad.stats();
    assert_eq!((stats.panicked, stats.dead_lettered), (1, 1), "{stats:?}");
    assert_eq!(bus.pending(), 0);
}

/// The same for an ordering key function, and with `publish_and_wait` the publisher hears of
/// it as that subscription's failure.
#[tokio::test(start_paused = true)]
async fn a_panicking_ordering_key_is_that_subscriptions_failure() {
    let bus = Bus::new();
    let good = Arc::new(AtomicU32::new(0));
    let keyed = bus
        .subscribe("keyed", "orders.#", counting(Arc::default()))
        .ordering_key(|e| {
            assert!(&e.payload[..] != b"boom", "key fn panics");
            Some("k".into())
        })
        .start()
        .await
        .unwrap();
    let _good = bus
        .subscribe("good", "orders.#", counting(good.clone()))
        .start()
        .await
        .unwrap();
    let report = bus
        .publish_envelope_and_wait(Envelope::new(Topic::new("orders.placed").unwrap(), "boom"))
        .await
        .unwrap();
    assert_eq!(report.handled, 1, "{report:?}");
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].subscription, "keyed");
    assert_eq!(good.load(Ordering::SeqCst), 1);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, DeadLetterReason::Panicked);
    assert!(
        letters[0]
            .error
            .contains("ordering key panicked: key fn panics"),
        "{}",
        letters[0].error
    );
    assert_eq!(keyed.stats().panicked, 1);
}

/// A command handler whose filter panics: the sender gets a typed error at once (not a hang,
/// not the panic), the command is dead-lettered, and the handler takes the next command.
#[tokio::test(start_paused = true)]
async fn a_command_whose_filter_panics_answers_the_sender() {
    let bus = Bus::new();
    let h = bus
        .handle(|r: Refund, _| async move { Ok::<_, std::io::Error>(r.cents) })
        .filter(|e| {
            assert!(!e.payload.ends_with(b"13}"), "refund filter panics");
            true
        })
        .start()
        .await
        .unwrap();
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        bus.send(Refund { cents: 13 }),
    )
    .await
    .expect("answered, not left waiting");
    match &got {
        Err(SendError::Failed { error, attempts: 0 }) => {
            assert!(
                error.contains("filter panicked: refund filter panics"),
                "{error}"
            );
        }
        other => panic!("expected SendError::Failed, got {other:?}"),
    }
    assert_eq!(bus.send(Refund { cents: 7 }).await.unwrap(), 7);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, DeadLetterReason::Panicked);
    assert_eq!(letters[0].handler.as_deref(), Some(h.name()));
    assert_eq!(h.stats().panicked, 1);
    assert_eq!(bus.pending(), 0);
}
