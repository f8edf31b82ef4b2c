//! What the Python binding relies on from the bus's public API, checked from Rust.

use std::time::Duration;

use switchyard::{Bus, Envelope, Overflow, Topic, handler_fn};

/// Dropping a publish that waits for room (a cancelled Python await would abort it) must not
/// leave the message counted as pending, or `run_until_idle` would never return. The bus
/// guarantees it: the message's pending count travels with its queue entry and is released
/// when the publish future drops it.
#[tokio::test]
async fn a_dropped_publish_waiting_for_room_is_not_left_pending() {
    let bus = Bus::new();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let _sub = bus
        .subscribe(
            "slow",
            "slow.x",
            handler_fn(move |_env: Envelope| {
                let mut rx = release_rx.clone();
                async move {
                    let _ = rx.wait_for(|r| *r).await;
                    Ok::<_, std::io::Error>(())
                }
            }),
        )
        .queue_capacity(1)
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(30),
        })
        .start()
        .await
        .unwrap();
    let env = || Envelope::new(Topic::new("slow.x").unwrap(), "{}");
    bus.publish_envelope(env()).await.unwrap(); // taken by the worker
    while bus.registry()[0].in_flight == 0 {
        tokio::task::yield_now().await;
    }
    bus.publish_envelope(env()).await.unwrap(); // fills the queue
    let blocked = bus.publish_envelope(env());
    // Polled until it waits for room, then dropped.
    assert!(
        tokio::time::timeout(Duration::from_millis(20), blocked)
            .await
            .is_err()
    );
    release_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), bus.run_until_idle())
        .await
        .expect("run_until_idle returns once the two accepted messages are handled");
}
