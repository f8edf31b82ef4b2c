//! Version-1 records written by one bus instance, read after a restart by version-2 consumers;
//! a version-2 producer and a version-1 consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard::DeadLetterReason;
use tokio::sync::mpsc;

use super::*;

/// Last month's binary: publishes `orders` as version-1 envelopes on a bus on `dir`, shuts
/// down and is dropped (its log closed), as a process that exits.
async fn last_months_binary(dir: &Path, orders: &[(u64, f64)]) {
    let (tx, _rx) = mpsc::unbounded_channel();
    let bus = bus_on(dir, None, Letters(tx));
    for &(id, amount) in orders {
        bus.publish_envelope(v1_raw(id, amount)).await.unwrap();
    }
    bus.shutdown(WAIT).await.unwrap();
    drop(bus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_records_from_before_a_restart_reach_a_v2_handler_upcast_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    last_months_binary(dir.path(), &[(1, 12.5), (2, 0.99)]).await;

    // This month's binary, with the upcaster.
    let calls = Arc::new(AtomicUsize::new(0));
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = bus_on(dir.path(), Some(upcasters(calls.clone())), Letters(ltx));
    let (sub, mut rx) = v2_handler(&bus, "billing").await;
    bus.publish(v2::Order {
        id: 3,
        amount_cents: 700,
        currency: "NOK".into(),
    })
    .await
    .unwrap();
    let got = [
        next(&mut rx).await,
        next(&mut rx).await,
        next(&mut rx).await,
    ];
    assert_eq!(
        got,
        [
            (
                v2::Order {
                    id: 1,
                    amount_cents: 1250,
                    currency: "EUR".into()
                },
                1
            ),
            (
                v2::Order {
                    id: 2,
                    amount_cents: 99,
                    currency: "EUR".into()
                },
                1
            ),
            (
                v2::Order {
                    id: 3,
                    amount_cents: 700,
                    currency: "NOK".into()
                },
                2
            ),
        ],
        "the v1 records upcast, the v2 one as it is, in log order"
    );
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert!(rx.try_recv().is_err(), "each record handled once");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one upcast per v1 record");
    assert!(letters.try_recv().is_err(), "nothing dead-lettered");
    drop(sub);
    bus.shutdown(WAIT).await.unwrap();
    drop(bus);

    // A second restart: the group's offsets were committed, nothing is handled (or upcast) again.
    let calls2 = Arc::new(AtomicUsize::new(0));
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = bus_on(dir.path(), Some(upcasters(calls2.clone())), Letters(ltx));
    let (_sub, mut rx) = v2_handler(&bus, "billing").await;
    bus.publish(v2::Order {
        id: 4,
        amount_cents: 1,
        currency: "SEK".into(),
    })
    .await
    .unwrap();
    let first = next(&mut rx).await;
    assert_eq!(
        first.0.id, 4,
        "after the restart the group resumes after what it handled"
    );
    assert_eq!(calls2.load(Ordering::SeqCst), 0);
    assert!(letters.try_recv().is_err());
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_upcaster_v1_records_after_a_restart_are_dead_lettered_with_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    last_months_binary(dir.path(), &[(1, 12.5)]).await;

    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = bus_on(dir.path(), None, Letters(ltx));
    let (_sub, mut rx) = v2_handler(&bus, "billing").await;
    let letter = next(&mut letters).await;
    assert_eq!(letter.reason, DeadLetterReason::DecodeFailed, "{letter:?}");
    assert_eq!(letter.envelope.type_version, 1);
    assert_eq!(letter.envelope.type_name.as_deref(), Some("Order"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&letter.envelope.payload).unwrap(),
        json!({"id": 1, "amount": 12.5}),
        "the dead letter holds the bytes as written"
    );
    // Never decoded wrongly: the handler saw nothing, a later v2 message is the first it sees.
    bus.publish(v2::Order {
        id: 2,
        amount_cents: 5,
        currency: "EUR".into(),
    })
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await.0.id, 2);
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert!(rx.try_recv().is_err());
    bus.shutdown(WAIT).await.unwrap();
    drop(bus);

    // The dead-lettered record is settled: not delivered (nor dead-lettered) again after a restart.
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = bus_on(dir.path(), None, Letters(ltx));
    let (_sub, mut rx) = v2_handler(&bus, "billing").await;
    bus.publish(v2::Order {
        id: 3,
        amount_cents: 5,
        currency: "EUR".into(),
    })
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await.0.id, 3);
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert!(
        letters.try_recv().is_err(),
        "the old record was dead-lettered again"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// A v1 record whose shape the v2 struct happens to accept must still not be decoded "as it is"
/// when an upcaster for its type exists: the step runs. Here the v1 record already carries a
/// `currency` field (the producer added it by hand); the step overrides it, proving it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_record_that_would_decode_as_v2_is_still_upcast() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (tx, _rx) = mpsc::unbounded_channel();
        let bus = bus_on(dir.path(), None, Letters(tx));
        let mut env = v1_raw(1, 2.0);
        env.payload = serde_json::to_vec(
            &json!({"id": 1, "amount": 2.0, "amount_cents": 1, "currency": "USD"}),
        )
        .unwrap()
        .into();
        bus.publish_envelope(env).await.unwrap();
        bus.shutdown(WAIT).await.unwrap();
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let (ltx, _letters) = mpsc::unbounded_channel();
    let bus = bus_on(dir.path(), Some(upcasters(calls.clone())), Letters(ltx));
    let (_sub, mut rx) = v2_handler(&bus, "billing").await;
    let (order, version) = next(&mut rx).await;
    assert_eq!(version, 1);
    assert_eq!(
        order,
        v2::Order {
            id: 1,
            amount_cents: 200,
            currency: "EUR".into()
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    bus.shutdown(WAIT).await.unwrap();
}

/// Forward compatibility (contracts.md: "Newer messages reaching an older handler are decoded
/// as they are (serde ignores unknown fields)"): a v2 producer writes, a v1 consumer that was
/// not upgraded reads after a restart. Here v2 dropped v1's required `amount`, so serde cannot
/// fill it: the message must be dead-lettered as undecodable, never handed over half-made.
/// A v2 that only adds fields is read by the v1 handler with the extras ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_producer_and_a_v1_consumer_across_a_restart() {
    /// A compatible v2: v1's fields kept, `currency` added.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Order {
        id: u64,
        amount: f64,
        currency: String,
    }
    impl Message for Order {
        const TOPIC: &'static str = TOPIC;
        const VERSION: u32 = 2;
    }

    let dir = tempfile::tempdir().unwrap();
    {
        let (tx, _rx) = mpsc::unbounded_channel();
        let bus = bus_on(dir.path(), None, Letters(tx));
        bus.publish(Order {
            id: 1,
            amount: 3.5,
            currency: "NOK".into(),
        })
        .await
        .unwrap();
        bus.publish(v2::Order {
            id: 2,
            amount_cents: 350,
            currency: "NOK".into(),
        })
        .await
        .unwrap();
        bus.shutdown(WAIT).await.unwrap();
    }
    // The consumer still on v1 (no upcasters: it does not know v2).
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = bus_on(dir.path(), None, Letters(ltx));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("legacy", move |o: v1::Order, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((o, ctx.envelope().type_version))
                    .map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        (v1::Order { id: 1, amount: 3.5 }, 2),
        "the added field is ignored"
    );
    let letter = next(&mut letters).await;
    assert_eq!(letter.reason, DeadLetterReason::DecodeFailed, "{letter:?}");
    assert_eq!(letter.envelope.type_version, 2);
    assert!(
        letter.error.contains("amount"),
        "the error names the missing field: {}",
        letter.error
    );
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "the incompatible v2 was not handed over"
    );
    bus.shutdown(WAIT).await.unwrap();
}
