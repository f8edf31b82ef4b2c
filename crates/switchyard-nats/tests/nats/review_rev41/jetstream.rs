//! The JetStream side, seen by a foreign client: dedup by `Nats-Msg-Id`, redelivery, the
//! dead-letter paths and ack state in consumer info (docs/nats.md "Publishing", "Settling").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use switchyard::{BoxError, DeadLetterReason, Envelope, HandBack, Outcome, handler_fn};
use switchyard_conformance::Setup;

use super::{bus_on, collect, event_transport, eventually, headers, js_publish, next, raw, skip};

/// Consumer `name` of stream `stream` has nothing unacknowledged or waiting, and acked up
/// to stream sequence `upto`.
async fn settled(client: &async_nats::Client, stream: &str, name: &str, upto: u64) {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.unwrap();
    eventually("consumer settled", || {
        let stream = stream.clone();
        async move {
            let info = stream
                .consumer_info(name)
                .await
                .map_err(|e| format!("no consumer named {name}: {e}"))?;
            let state = (
                info.num_ack_pending,
                info.num_pending,
                info.ack_floor.stream_sequence,
            );
            if state == (0, 0, upto) {
                Ok(())
            } else {
                Err(format!("(ack pending, pending, ack floor) = {state:?}"))
            }
        }
    })
    .await;
}

/// nats.md: "Every envelope is published with `Nats-Msg-Id` = its id: JetStream drops a
/// second copy within the duplicate window"; interop.md: "`Nats-Msg-Id`: the message id and
/// JetStream's dedup key". A foreign client resending with the same `Nats-Msg-Id` is told
/// `duplicate`, and the handler sees the message once; and "each event subscription
/// becomes a durable consumer named after the subscription" (docs/nats.md), which shows
/// everything acknowledged once handled.
#[tokio::test]
async fn a_foreign_resend_with_the_same_nats_msg_id_is_handled_once_and_acked() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "dedup", setup.all().unwrap().as_str()).await;
    let client = raw().await;
    let topic = setup.topic("orders").unwrap().to_string();
    let h = headers(&[("Nats-Msg-Id", "order-42")]);
    let first = js_publish(&client, topic.clone(), Some(h.clone()), b"one").await;
    let again = js_publish(&client, topic.clone(), Some(h), b"one again").await;
    assert!(!first.duplicate && again.duplicate, "{first:?} {again:?}");
    js_publish(&client, topic, None, b"end").await;
    let a = next(&mut rx).await;
    let b = next(&mut rx).await;
    let mut got = [a.payload.to_vec(), b.payload.to_vec()];
    got.sort();
    assert_eq!(got, [b"end".to_vec(), b"one".to_vec()]);
    settled(&client, &ns, "dedup", 2).await;
    bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "the duplicate was handled");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// docs/bus.md: a handler's failure is attempted again up to `max_attempts`; a `HandBack`
/// "goes back to [the transport] (a nack), to be delivered again". From the stream's side a
/// foreign message whose handler failed once, and one handed back once, are both handled
/// in the end and acknowledged: nothing stays pending.
#[tokio::test]
async fn a_failed_and_a_handed_back_foreign_message_are_handled_again_and_acked() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, letters) = bus_on(&nats);
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let seen = calls.clone();
    let failed = Arc::new(AtomicBool::new(false));
    let handed = Arc::new(AtomicBool::new(false));
    let _sub = bus
        .subscribe(
            "again",
            setup.all().unwrap().as_str(),
            handler_fn(move |env: Envelope| {
                let (tx, seen) = (tx.clone(), seen.clone());
                let (failed, handed) = (failed.clone(), handed.clone());
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let body = env.payload.to_vec();
                    let _ = tx.send((body.clone(), env.delivery.attempt));
                    // Flags, not the attempt number: on nats-server < 2.10.14 a redelivery
                    // can come as attempt 1 (docs/nats.md).
                    match &body[..] {
                        b"fail-once" if !failed.swap(true, Ordering::SeqCst) => {
                            Err::<Outcome, BoxError>("transient".into())
                        }
                        b"hand-back-once" if !handed.swap(true, Ordering::SeqCst) => {
                            Err(HandBack::new("not here").into())
                        }
                        _ => Ok(Outcome::Ack),
                    }
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let client = raw().await;
    let topic = setup.topic("work").unwrap().to_string();
    js_publish(&client, topic.clone(), None, b"fail-once").await;
    js_publish(&client, topic, None, b"hand-back-once").await;
    let mut fail_once = 0;
    let mut hand_back = 0;
    while fail_once < 2 || hand_back < 2 {
        let (body, _attempt) = tokio::time::timeout(super::WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("fail-once seen {fail_once}, hand-back {hand_back}"))
            .unwrap();
        match &body[..] {
            b"fail-once" => fail_once += 1,
            _ => hand_back += 1,
        }
    }
    settled(&client, &ns, "again", 2).await;
    bus.run_until_idle().await;
    assert!(letters.list().is_empty(), "{:?}", letters.list());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "each handled twice, no more"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// docs/bus.md: after `max_attempts` "the message goes to the dead-letter sink with the
/// error chain, the attempt count and the handler name"; "A dead letter always holds the
/// message's bytes"; interop.md: foreign ids and headers kept. A foreign message whose
/// handler always fails is dead-lettered with its raw bytes, foreign id and headers, and
/// then settled on the stream (not redelivered, nothing pending).
#[tokio::test]
async fn a_foreign_message_that_always_fails_is_dead_lettered_raw_and_settled() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, letters) = bus_on(&nats);
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let _sub = bus
        .subscribe(
            "fails",
            setup.all().unwrap().as_str(),
            handler_fn(move |_env: Envelope| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    Err::<Outcome, BoxError>("cannot charge".into())
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let client = raw().await;
    let h = headers(&[("Nats-Msg-Id", "pay-7"), ("X-Tenant", "acme")]);
    let body = b"\xff\x00 raw \xfe";
    js_publish(
        &client,
        setup.topic("pay").unwrap().to_string(),
        Some(h),
        body,
    )
    .await;
    settled(&client, &ns, "fails", 1).await;
    bus.run_until_idle().await;
    let dl = letters.list();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].reason, DeadLetterReason::HandlerFailed);
    assert_eq!(&dl[0].envelope.payload[..], body);
    assert_eq!(dl[0].envelope.id.to_string(), "pay-7");
    assert_eq!(dl[0].envelope.header("X-Tenant"), Some("acme"));
    assert_eq!(dl[0].attempts, 2);
    assert!(dl[0].error.contains("cannot charge"), "{}", dl[0].error);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "max_attempts 2, then no redelivery"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// nats.md: "When a message arrives for the `(max_deliver + 1)`-th time … the transport …
/// puts a `DeadLetter` (reason `MaxDeliveries`, attempts = `max_deliver`, the raw message as
/// the envelope — payload untouched — and stream and sequence in the error text) into
/// `NatsConfig::dead_letters` and terminates it", and "A hand-back counts here too". A
/// foreign message handed back every time ends there with its bytes and headers.
#[tokio::test]
async fn a_foreign_message_handed_back_max_deliver_times_is_dead_lettered_by_the_transport() {
    if skip() {
        return;
    }
    let setup = Setup::new().with_max_deliver(3);
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, letters) = bus_on(&nats);
    let _sub = bus
        .subscribe(
            "backs",
            setup.all().unwrap().as_str(),
            handler_fn(|_env: Envelope| async move {
                Err::<Outcome, BoxError>(HandBack::new("never here").into())
            }),
        )
        .start()
        .await
        .unwrap();
    let client = raw().await;
    let h = headers(&[("Nats-Msg-Id", "back-1"), ("X-Tenant", "acme")]);
    js_publish(
        &client,
        setup.topic("b").unwrap().to_string(),
        Some(h),
        b"\x01raw",
    )
    .await;
    assert!(
        setup.dead_letters.wait_for(1, super::WAIT).await,
        "not dead-lettered after max_deliver hand-backs"
    );
    let dl = setup.dead_letters.list();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(dl[0].attempts, 3);
    assert_eq!(&dl[0].envelope.payload[..], b"\x01raw");
    assert_eq!(dl[0].envelope.id.to_string(), "back-1");
    assert_eq!(dl[0].envelope.header("X-Tenant"), Some("acme"));
    assert!(
        dl[0].error.contains(&ns),
        "names the stream: {}",
        dl[0].error
    );
    settled(&client, &ns, "backs", 1).await;
    assert!(
        letters.list().is_empty(),
        "a hand-back is not a bus dead letter"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// nats.md: "`ack()` | `+ACK`" and the bus acks a handled message: after a burst of foreign
/// messages is handled, the subscription's consumer shows all of them acknowledged (ack
/// floor at the last sequence, nothing pending).
#[tokio::test]
async fn after_handling_a_foreign_burst_ack_pending_is_zero() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "burst", setup.all().unwrap().as_str()).await;
    let client = raw().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut acks = Vec::new();
    for i in 0..50 {
        let subject = setup.topic(&format!("b{}", i % 5)).unwrap().to_string();
        acks.push(js.publish(subject, i.to_string().into()).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    for _ in 0..50 {
        next(&mut rx).await;
    }
    settled(&client, &ns, "burst", 50).await;
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
