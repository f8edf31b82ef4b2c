//! NATS-specific behaviour beyond the suite.

use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_conformance::Setup;
use switchyard_core::{
    DeadLetterReason, Envelope, Pattern, Publisher, Subscriber, Topic, TransportErrorKind,
};
use switchyard_nats::{
    ConnectionState, INVALID_SUBJECT_TOPIC, NatsConfig, NatsTransport, RAW_SUBJECT_HEADER,
};

use crate::harness::{NatsHarness, shared_unavailable};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn same_id_twice_is_stored_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    assert_eq!(t.health().state, ConnectionState::Connected);
    let e = Envelope::new(setup.topic("dup").unwrap(), "once");
    t.publish(vec![e.clone()]).await.unwrap();
    t.publish(vec![e.clone()]).await.unwrap();
    assert_eq!(t.health().duplicates, 1);
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope.id, e.id);
    d.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "the duplicate was delivered"
    );
    drop(sub);
    t.close(Instant::now() + WAIT).await.unwrap();
    assert_eq!(t.health().state, ConnectionState::Closed);
    let _ = t.delete_stream(&setup.namespace).await;
}

/// A replayed dead letter keeps its id, which JetStream saw when it was first published:
/// within the duplicate window it is stored again all the same (once, however often it is
/// resent), and delivered with its id.
#[tokio::test]
async fn a_replay_of_a_stored_id_is_stored_again_and_keeps_its_id() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let first = Envelope::new(setup.topic("replayed").unwrap(), "first");
    t.publish(vec![first.clone()]).await.unwrap();
    let mut replay = first.clone();
    replay.payload = "replay".into();
    replay
        .headers_mut()
        .insert(switchyard_core::dead_letter::REPLAY_COUNT, "1");
    // The replay, and a resend of it (a publish retried after a lost ack).
    t.publish(vec![replay.clone()]).await.unwrap();
    t.publish(vec![replay.clone()]).await.unwrap();
    assert_eq!(t.health().duplicates, 1, "only the resend is a duplicate");

    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    for want in ["first", "replay"] {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&d.envelope.payload[..], want.as_bytes());
        assert_eq!(d.envelope.id, first.id, "{want} keeps the id");
        d.ack().await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "the resent replay was delivered"
    );
    drop(sub);
    t.close(Instant::now() + WAIT).await.unwrap();
    let _ = t.delete_stream(&setup.namespace).await;
}

#[tokio::test]
async fn topic_without_stream_is_refused() {
    if shared_unavailable().is_some() {
        return;
    }
    let t = NatsTransport::connect(NatsConfig::new(crate::harness::SHARED_URL))
        .await
        .unwrap();
    let err = t
        .publish(vec![Envelope::new(
            Topic::new("nowhere.at.all").unwrap(),
            "x",
        )])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no configured stream"), "{err}");
    let err = t
        .subscribe(&Pattern::new("nowhere.#").unwrap(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no configured stream"), "{err}");
}

#[tokio::test]
async fn in_progress_extends_the_ack_wait() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new().with_ack_wait(Duration::from_secs(1));
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let e = Envelope::new(setup.topic("long").unwrap(), "slow work");
    t.publish(vec![e.clone()]).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    // Work for 2.5 ack waits, reporting progress about three times per ack wait: no
    // redelivery.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(t.in_progress(&e.id).await.unwrap(), 1);
        if let Ok(again) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            panic!("redelivered while in progress: {again:?}");
        }
    }
    d.ack().await.unwrap();
    assert_eq!(t.in_progress(&e.id).await.unwrap(), 0);
    drop(sub);
    t.close(Instant::now() + WAIT).await.unwrap();
    let _ = t.delete_stream(&setup.namespace).await;
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = NatsTransport::connect(NatsConfig::new(format!("nats://127.0.0.1:{port}"))).await;
    assert!(r.is_err());
}

#[tokio::test]
async fn max_ack_pending_holds_back_delivery() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let config = h.config(&setup).with_max_ack_pending(5).with_pull_batch(10);
    let t = NatsTransport::connect(config).await.unwrap();
    let envs: Vec<Envelope> = (0..20)
        .map(|i| Envelope::new(setup.topic("bp").unwrap(), format!("{i}")))
        .collect();
    t.publish(envs).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Five unsettled: the server sends no sixth.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "a sixth message arrived past max_ack_pending"
    );
    // Settling one lets exactly the next one through.
    held.remove(0).ack().await.unwrap();
    held.push(
        tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap(),
    );
    for d in held {
        d.ack().await.unwrap();
    }
    drop(sub);
    t.close(Instant::now() + WAIT).await.unwrap();
    let _ = t.delete_stream(&setup.namespace).await;
}

/// Issue 13, item 11: a stored message whose subject is valid for NATS but not a topic
/// (`<ns>.x.#`, a 300-byte subject) used to be terminated with only a warning, its bytes
/// lost. It is dead-lettered now, with its raw payload and subject and the reason, and the
/// subscription goes on.
#[tokio::test]
async fn subject_that_is_not_a_topic_is_dead_lettered() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let js = async_nats::jetstream::new(t.client().clone());
    let hash = format!("{}.x.#", setup.namespace);
    let long = format!("{}.{}", setup.namespace, "a".repeat(300));
    for (subject, payload) in [(&hash, &b"\x00raw hash"[..]), (&long, &b"raw long"[..])] {
        js.publish(subject.clone(), bytes::Bytes::copy_from_slice(payload))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let fine = Envelope::new(setup.topic("fine").unwrap(), "fine");
    t.publish(vec![fine.clone()]).await.unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.envelope.id, fine.id,
        "only the valid message is handed out"
    );
    d.ack().await.unwrap();
    assert!(
        setup.dead_letters.wait_for(2, WAIT).await,
        "the messages with invalid subjects were not dead-lettered"
    );
    let letters = setup.dead_letters.list();
    assert_eq!(letters.len(), 2);
    for (letter, (subject, payload)) in letters
        .iter()
        .zip([(&hash, &b"\x00raw hash"[..]), (&long, &b"raw long"[..])])
    {
        assert_eq!(letter.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(&letter.envelope.payload[..], payload);
        assert_eq!(
            letter.envelope.header(RAW_SUBJECT_HEADER),
            Some(subject.as_str())
        );
        assert_eq!(letter.envelope.topic.as_str(), INVALID_SUBJECT_TOPIC);
        assert!(
            letter.error.contains("not a valid topic"),
            "{}",
            letter.error
        );
        assert_eq!(letter.attempts, 1);
    }
    assert_eq!(t.health().dead_lettered, 2);
    drop(sub);
    t.close(Instant::now() + WAIT).await.unwrap();
    let _ = t.delete_stream(&setup.namespace).await;
}

/// Issue 13, item 8: an ack after `close` returned `Ok` although nothing guaranteed it
/// reached the server (sometimes it did not, and the message came back after reopening).
/// Settling after close now fails with `TransportErrorKind::Closed`; the delivery is handed
/// back, so a reopened transport gets it at once rather than after the (100 s) ack wait.
#[tokio::test]
async fn settling_after_close_is_a_closed_error() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new().with_ack_wait(Duration::from_secs(100));
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let acked = Envelope::new(setup.topic("acked").unwrap(), "acked after close");
    let termed = Envelope::new(setup.topic("termed").unwrap(), "terminated after close");
    t.publish(vec![acked.clone(), termed.clone()])
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    t.close(Instant::now() + WAIT).await.unwrap();
    for d in got {
        let id = d.envelope.id.clone();
        let r = if id == acked.id {
            d.ack().await
        } else {
            d.term("after close").await
        };
        let e = r.expect_err("settling after close succeeded");
        assert_eq!(e.kind, TransportErrorKind::Closed, "{e}");
    }
    assert!(
        tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .is_none(),
        "the subscription went on after close"
    );
    drop(sub);
    // Neither settle was kept: a new transport gets both again, long before the ack wait.
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let mut ids = std::collections::HashSet::new();
    while ids.len() < 2 {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a message settled after close did not come back in time")
            .unwrap();
        ids.insert(d.envelope.id.clone());
        d.ack().await.unwrap();
    }
    assert!(ids.contains(&acked.id) && ids.contains(&termed.id));
    drop(sub);
    t.close(Instant::now() + WAIT).await.unwrap();
    let _ = t.delete_stream(&setup.namespace).await;
}

/// A publish over the server's `max_payload` (1 MiB by default) fails at once with a typed
/// error naming both sizes, instead of "didn't receive ack in time" after the publish timeout;
/// the bus on NATS refuses it the same way before handing it over.
#[tokio::test]
async fn a_publish_over_max_payload_is_too_large_at_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let (limit, whose) = Publisher::max_message_bytes(&t).expect("the server has a max_payload");
    assert_eq!(whose, "the NATS server's max_payload (payload and headers)");
    let big = Envelope::new(setup.topic("big").unwrap(), vec![0u8; 2 * 1024 * 1024]);
    let started = Instant::now();
    match t.publish(vec![big.clone()]).await {
        Err(switchyard_core::PublishError::TooLarge(e)) => {
            assert_eq!(e.limit, limit);
            // The transport counts what the server counts: the payload and the headers.
            assert!(e.size > 2 * 1024 * 1024, "headers not counted: {e}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    let bus = switchyard::Bus::builder().transport(t).build().unwrap();
    match bus.publish_envelope(big).await {
        Err(switchyard_core::PublishError::TooLarge(e)) => {
            assert_eq!(e.limit_of, whose);
            assert_eq!(e.size, 2 * 1024 * 1024, "the bus measures the payload");
        }
        other => panic!("expected TooLarge from the bus, got {other:?}"),
    }
    let _ = bus.shutdown(WAIT).await;
}
