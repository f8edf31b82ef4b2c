//! Dead letters written before a restart (a file dead-letter queue) are browsable after it, and
//! a v1 dead letter replayed through a v2 handler with an upcaster is upcast.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard::DeadLetterReason;
use switchyard_middleware::dlq::{
    DeadLetterFilter, DeadLetterQueue, FileDeadLetterQueue, FileDlqOptions, Replayer,
};

use super::*;

fn open_dlq(path: &Path) -> Arc<FileDeadLetterQueue> {
    Arc::new(FileDeadLetterQueue::open(path, FileDlqOptions::default()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_dead_letter_from_before_a_restart_is_browsable_and_replays_upcast() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let dlq_path = dir.path().join("dlq.jsonl");

    // Run 1: v1 records reach a v2 handler deployed without its upcaster: dead-lettered.
    let (_id1, _id2) = {
        let dlq = open_dlq(&dlq_path);
        let bus = bus_on(&log_dir, None, dlq.clone());
        let (a, b) = (v1_raw(1, 12.5), v1_raw(2, 0.5));
        let ids = (a.id.clone(), b.id.clone());
        bus.publish_envelope(a).await.unwrap();
        bus.publish_envelope(b).await.unwrap();
        let (_sub, mut rx) = v2_handler(&bus, "billing").await;
        // Settled when both are in the queue; wait on it with a bounded poll of the bus idle.
        tokio::time::timeout(WAIT, async {
            loop {
                bus.run_until_idle().await;
                if dlq.len() == 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("two dead letters");
        assert!(rx.try_recv().is_err(), "nothing decoded wrongly");
        bus.shutdown(WAIT).await.unwrap();
        ids
    };

    // Run 2: the fixed build (upcaster) on the same log and the same dead-letter file.
    let dlq = open_dlq(&dlq_path);
    let listed = dlq.list(
        &DeadLetterFilter::new()
            .reason(DeadLetterReason::DecodeFailed)
            .handler("billing"),
    );
    assert_eq!(listed.len(), 2, "both dead letters survive the restart");
    for l in &listed {
        assert_eq!(l.envelope.type_version, 1);
        assert_eq!(l.envelope.type_name.as_deref(), Some("Order"));
        let v: serde_json::Value = serde_json::from_slice(&l.envelope.payload).unwrap();
        assert!(v.get("amount").is_some(), "the raw v1 bytes: {v}");
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let bus = bus_on(&log_dir, Some(upcasters(calls.clone())), dlq.clone());
    let (_sub, mut rx) = v2_handler(&bus, "billing").await;
    let b = bus.clone();
    let republish = move |env: Envelope| {
        let b = b.clone();
        async move { b.publish_envelope(env).await }
    };
    let report = Replayer::new(&*dlq, &republish).all().await;
    assert_eq!(report.replayed.len(), 2, "{:?}", report.failed);
    let mut got = vec![next(&mut rx).await, next(&mut rx).await];
    got.sort_by_key(|(o, _)| o.id);
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
                    amount_cents: 50,
                    currency: "EUR".into()
                },
                1
            ),
        ]
    );
    // Exactly once: the originals were settled in run 1 and are not delivered again.
    bus.publish(v2::Order {
        id: 9,
        amount_cents: 1,
        currency: "EUR".into(),
    })
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await.0.id, 9);
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert!(rx.try_recv().is_err(), "a record was handled twice");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(dlq.len(), 0, "the replayed letters were removed");
    bus.shutdown(WAIT).await.unwrap();
}
