//! The same promise on NATS JetStream (contracts.md: the version travels as the
//! `Sy-Type-Version` header): v1 envelopes published by one bus, read after it is gone by a
//! v2 handler with an upcaster, upcast once; a v2 one as it is. Needs 127.0.0.1:4222.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_core::Pattern;
use switchyard_nats::{NatsConfig, NatsTransport};

use super::*;

const STREAM: &str = "REV29_ORDERS";

async fn nats() -> Option<NatsTransport> {
    let cfg = NatsConfig::new("nats://127.0.0.1:4222")
        .with_stream(STREAM, [Pattern::new(TOPIC).unwrap()]);
    match NatsTransport::connect(cfg).await {
        Ok(t) => Some(t),
        Err(e) => {
            let ci = matches!(std::env::var("CI").as_deref(), Ok("true" | "1"));
            assert!(!ci, "NATS at 127.0.0.1:4222: {e}");
            eprintln!("\n==== SKIPPING review_rev29::nats: no NATS at 127.0.0.1:4222 ({e}) ====\n");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_messages_in_a_stream_reach_a_v2_handler_upcast_once_after_a_restart() {
    let Some(admin) = nats().await else { return };
    let _ = admin.delete_stream(STREAM).await; // a leftover of an interrupted run
    let Some(t1) = nats().await else { return };
    let (ltx, _l) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .transport(t1)
        .dead_letters(Letters(ltx))
        .build()
        .unwrap();
    bus.publish_envelope(v1_raw(1, 12.5)).await.unwrap();
    bus.publish(v2::Order {
        id: 2,
        amount_cents: 7,
        currency: "NOK".into(),
    })
    .await
    .unwrap();
    bus.shutdown(WAIT).await.unwrap();
    drop(bus);

    let Some(t2) = nats().await else { return };
    let calls = Arc::new(AtomicUsize::new(0));
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = Bus::builder()
        .transport(t2)
        .dead_letters(Letters(ltx))
        .upcaster(upcasters(calls.clone()))
        .build()
        .unwrap();
    let (_sub, mut rx) = v2_handler(&bus, "rev29-billing").await;
    let mut got = vec![next(&mut rx).await, next(&mut rx).await];
    got.sort_by_key(|(o, _)| o.id);
    let result = (
        got,
        calls.load(Ordering::SeqCst),
        letters.try_recv().is_err(),
    );
    bus.shutdown(WAIT).await.unwrap();
    let _ = admin.delete_stream(STREAM).await;
    drop(admin);
    assert_eq!(
        result,
        (
            vec![
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
                        amount_cents: 7,
                        currency: "NOK".into()
                    },
                    2
                ),
            ],
            1,
            true
        )
    );
}
