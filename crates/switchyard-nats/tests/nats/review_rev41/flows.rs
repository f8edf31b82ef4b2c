//! A flow started by a foreign client through switchyard handlers (docs/interop.md
//! "Headers": ids and correlation), and the `Sy-Id` rule of replayed messages.

use std::time::Duration;

use switchyard::{BoxError, Envelope, Outcome, Topic, handler_fn};
use switchyard_conformance::Setup;

use super::{
    bus_on, collect, event_transport, get, headers, js_publish, next, raw, raw_next, raw_subscribe,
    skip,
};

/// interop.md: "a flow started elsewhere with correlation id `corr-42` keeps it through
/// every switchyard handler and follow-up message (each follow-up gets its own ULID as
/// `Nats-Msg-Id`, the id it was caused by as `Sy-Causation-Id`)". A handler of a foreign
/// event publishes a follow-up (no ids set by hand); a foreign subscriber reads it.
#[tokio::test]
async fn a_follow_up_published_by_a_handler_keeps_the_foreign_correlation() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, letters) = bus_on(&nats);
    let out = Topic::new(&format!("{ns}.out.shipped")).unwrap();
    let publisher = bus.clone();
    let _sub = bus
        .subscribe(
            "relay",
            &format!("{ns}.in.#"),
            handler_fn(move |env: Envelope| {
                let (bus, out) = (publisher.clone(), out.clone());
                async move {
                    let follow = Envelope::new(out, env.payload.clone());
                    bus.publish_envelope(follow).await?;
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let client = raw().await;
    let mut sub = raw_subscribe(&client, format!("{ns}.out.>")).await;
    let h = headers(&[
        ("Nats-Msg-Id", "order-42"),
        ("Sy-Correlation-Id", "corr-42"),
    ]);
    js_publish(&client, format!("{ns}.in.placed"), Some(h), b"{\"id\":42}").await;
    let m = raw_next(&mut sub).await;
    assert_eq!(&m.payload[..], b"{\"id\":42}");
    assert_eq!(get(&m, "Sy-Correlation-Id").as_deref(), Some("corr-42"));
    assert_eq!(get(&m, "Sy-Causation-Id").as_deref(), Some("order-42"));
    let id = m
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .unwrap();
    let crockford = |c: char| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c));
    assert!(
        id.len() == 26 && id.chars().all(crockford),
        "its own ULID: {id}"
    );
    bus.run_until_idle().await;
    assert!(letters.list().is_empty(), "{:?}", letters.list());
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "A replayed dead letter is the one exception: its `Nats-Msg-Id` is
/// `<id>.replay-<n>` and its id is in `Sy-Id` (which, when present, is the id)." A foreign
/// client that re-sends a message that way has it handled under the `Sy-Id`, and JetStream
/// stores it although the original id was seen (a different `Nats-Msg-Id`).
#[tokio::test]
async fn sy_id_when_present_is_the_id_and_the_replay_msg_id_is_not_a_duplicate() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "replays", setup.all().unwrap().as_str()).await;
    let client = raw().await;
    let topic = setup.topic("r").unwrap().to_string();
    let first = js_publish(
        &client,
        topic.clone(),
        Some(headers(&[("Nats-Msg-Id", "m-1")])),
        b"1",
    )
    .await;
    let h = headers(&[("Nats-Msg-Id", "m-1.replay-1"), ("Sy-Id", "m-1")]);
    let replay = js_publish(&client, topic, Some(h), b"2").await;
    assert!(!first.duplicate && !replay.duplicate, "{replay:?}");
    let a = next(&mut rx).await;
    let b = next(&mut rx).await;
    assert_eq!(
        (a.id.to_string(), b.id.to_string()),
        ("m-1".into(), "m-1".into())
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
