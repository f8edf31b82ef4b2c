//! Task fixdlq: with no dead-letter sink configured, the transport's dead letters (past
//! `max_deliver`, a subject that is not a topic) used to be terminated with only a warning,
//! lost with nothing to browse. They go to the transport's own store now,
//! `NatsTransport::dead_letters()`.
//!
//! Every test uses its own stream (`Setup::new()` namespace) and deletes it in a guard's
//! `Drop`, so a failing test cleans up too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_conformance::Setup;
use switchyard_core::{DeadLetterReason, Envelope, InMemoryDeadLetters, Publisher, Subscriber};
use switchyard_nats::{INVALID_SUBJECT_TOPIC, NatsConfig, NatsTransport, RAW_SUBJECT_HEADER};

use crate::harness::{SHARED_URL, shared_unavailable};

const WAIT: Duration = Duration::from_secs(10);

/// Deletes the test's stream (and with it its consumers) when dropped, even on panic.
struct StreamGuard {
    name: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: delete on a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(Ok(c)) =
                    tokio::time::timeout(Duration::from_secs(3), async_nats::connect(SHARED_URL))
                        .await
                {
                    let js = async_nats::jetstream::new(c);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(3), js.delete_stream(&name)).await;
                }
            });
        })
        .join();
    }
}

/// A config with no dead-letter sink.
fn config_without_sink(setup: &Setup) -> NatsConfig {
    NatsConfig::new(SHARED_URL)
        .with_stream(setup.namespace.clone(), [setup.all().unwrap()])
        .with_ack_wait(setup.ack_wait)
        .with_max_deliver(setup.max_deliver)
        .with_max_age(Duration::from_secs(600))
        .with_max_bytes(8 << 20)
        .with_pull_expires(Duration::from_millis(250))
}

/// Waits (at most `WAIT`) until `store` holds `n` letters.
async fn wait_for_len(store: &InMemoryDeadLetters, n: usize) -> bool {
    tokio::time::timeout(WAIT, async {
        while store.len() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

/// With no sink, a message nacked `max_deliver` times is not dropped: the next delivery is
/// dead-lettered into `NatsTransport::dead_letters()`, browsable with its payload, reason,
/// handler (the group) and the stream and sequence of the stored message; it is not
/// delivered again. (Before the fix it was terminated with only a warning: the store, had
/// it existed, stayed empty.)
#[tokio::test]
async fn without_a_sink_a_message_past_max_deliver_is_kept_in_the_transports_own_store() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new().with_max_deliver(2);
    let _g = StreamGuard {
        name: setup.namespace.clone(),
    };
    let t = NatsTransport::connect(config_without_sink(&setup))
        .await
        .unwrap();
    let store = t
        .dead_letters()
        .expect("no sink configured: the transport keeps a store");
    assert!(store.is_empty());
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let poison = Envelope::new(setup.topic("poison").unwrap(), "poison body");
    t.publish(vec![poison.clone()]).await.unwrap();
    for attempt in 1..=2 {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("no delivery in time")
            .expect("subscription ended");
        assert_eq!(d.envelope.id, poison.id);
        assert_eq!(d.envelope.delivery.attempt, attempt);
        d.nack(None).await.unwrap();
    }
    assert!(
        wait_for_len(&store, 1).await,
        "the message past max_deliver is nowhere to browse (health: {:?})",
        t.health()
    );
    let letters = store.list();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.envelope.id, poison.id);
    assert_eq!(&letter.envelope.payload[..], b"poison body");
    assert_eq!(letter.reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(letter.attempts, 2);
    assert!(letter.handler.is_some(), "the letter names no handler");
    assert!(
        letter.error.contains(&setup.namespace) && letter.error.contains("sequence 1"),
        "the error text names neither the stream nor the sequence: {}",
        letter.error
    );
    assert_eq!(t.health().dead_lettered, 1);
    // Settled for good: not delivered again.
    let fine = Envelope::new(setup.topic("fine").unwrap(), "fine");
    t.publish(vec![fine.clone()]).await.unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("no delivery in time")
        .expect("subscription ended");
    assert_eq!(
        d.envelope.id, fine.id,
        "the dead letter was delivered again"
    );
    d.ack().await.unwrap();
    // A clone shares the store.
    assert!(Arc::ptr_eq(&store, &t.clone().dead_letters().unwrap()));
    drop(sub);
    t.close(Instant::now() + WAIT).await.unwrap();
}

/// With no sink, a stored message whose subject is not a topic goes to the transport's own
/// store too (it used to be terminated with only a warning); with a sink configured the
/// transport keeps no store (`dead_letters()` is `None`) and the sink gets the letter.
#[tokio::test]
async fn without_a_sink_a_subject_that_is_not_a_topic_is_kept_and_with_one_there_is_no_store() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = StreamGuard {
        name: setup.namespace.clone(),
    };
    let t = NatsTransport::connect(config_without_sink(&setup))
        .await
        .unwrap();
    let store = t.dead_letters().unwrap();
    let with_sink = NatsTransport::connect(
        config_without_sink(&setup).with_dead_letters(setup.dead_letters.clone()),
    )
    .await
    .unwrap();
    assert!(with_sink.dead_letters().is_none());
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("a")).await.unwrap();
    let mut sink_sub = with_sink
        .subscribe(&setup.all().unwrap(), Some("b"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(t.client().clone());
    let hash = format!("{}.x.#", setup.namespace);
    js.publish(hash.clone(), bytes::Bytes::from_static(b"raw hash"))
        .await
        .unwrap()
        .await
        .unwrap();
    let fine = Envelope::new(setup.topic("fine").unwrap(), "fine");
    t.publish(vec![fine.clone()]).await.unwrap();
    for s in [&mut sub, &mut sink_sub] {
        let d = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("no delivery in time")
            .expect("subscription ended");
        assert_eq!(
            d.envelope.id, fine.id,
            "only the valid message is handed out"
        );
        d.ack().await.unwrap();
    }
    assert!(
        wait_for_len(&store, 1).await,
        "the message under an invalid subject is nowhere to browse"
    );
    let letter = &store.list()[0];
    assert_eq!(letter.reason, DeadLetterReason::DecodeFailed);
    assert_eq!(&letter.envelope.payload[..], b"raw hash");
    assert_eq!(letter.envelope.topic.as_str(), INVALID_SUBJECT_TOPIC);
    assert_eq!(
        letter.envelope.header(RAW_SUBJECT_HEADER),
        Some(hash.as_str())
    );
    assert!(
        setup.dead_letters.wait_for(1, WAIT).await,
        "the configured sink got nothing"
    );
    assert_eq!(
        setup.dead_letters.list()[0].reason,
        DeadLetterReason::DecodeFailed
    );
    assert_eq!(
        store.len(),
        1,
        "the sink's letter went to the other store too"
    );
    drop((sub, sink_sub));
    t.close(Instant::now() + WAIT).await.unwrap();
    with_sink.close(Instant::now() + WAIT).await.unwrap();
}
