//! Subject mapping both ways (docs/interop.md "Subjects", docs/nats.md "Topics, patterns and
//! subjects").

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard::{DeadLetterReason, Envelope, Topic};
use switchyard_conformance::Setup;
use switchyard_nats::{INVALID_SUBJECT_TOPIC, RAW_SUBJECT_HEADER};

use super::{
    bus_on, collect, event_transport, js_publish, next, raw, raw_next, raw_subscribe, skip,
};

/// Payloads (as text) handled by a subscription until `want` arrived, then whatever else it
/// handled once the bus is idle.
async fn handled(
    bus: &switchyard::Bus,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Envelope>,
    want: usize,
) -> BTreeSet<(String, String)> {
    let mut got = BTreeSet::new();
    while got.len() < want {
        let env = next(rx).await;
        got.insert((
            env.topic.to_string(),
            String::from_utf8(env.payload.to_vec()).unwrap(),
        ));
    }
    bus.run_until_idle().await;
    while let Ok(env) = rx.try_recv() {
        got.insert((
            env.topic.to_string(),
            String::from_utf8(env.payload.to_vec()).unwrap(),
        ));
    }
    got
}

/// interop.md: "pattern `orders.*`, `orders.#` | `orders.*`, `orders.>` (and `orders`)";
/// nats.md: "Our `#` matches *zero* or more segments … a stream pattern `a.#` becomes the two
/// stream subjects `a` and `a.>`". Plain JetStream publishes on the subjects, as a foreign
/// client makes them, reach exactly the subscriptions whose pattern matches, with the
/// subject as the topic.
#[tokio::test]
async fn foreign_publishes_reach_star_hash_and_exact_subscriptions_as_their_patterns_say() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_h, mut hash) = collect(&bus, "hash", &format!("{ns}.orders.#")).await;
    let (_s, mut star) = collect(&bus, "star", &format!("{ns}.orders.*")).await;
    let (_e, mut exact) = collect(&bus, "exact", &format!("{ns}.orders.eu")).await;
    let client = raw().await;
    for (suffix, body) in [
        ("other", "none-1"),
        ("ordersx", "none-2"),
        ("orders", "zero-segments"),
        ("orders.eu.placed", "two-segments"),
        ("orders.eu", "one-segment"),
    ] {
        js_publish(&client, format!("{ns}.{suffix}"), None, body.as_bytes()).await;
    }
    let pair = |s: &str, b: &str| (format!("{ns}.{s}"), b.to_owned());
    let want_hash: BTreeSet<_> = [
        pair("orders", "zero-segments"),
        pair("orders.eu.placed", "two-segments"),
        pair("orders.eu", "one-segment"),
    ]
    .into();
    let want_one: BTreeSet<_> = [pair("orders.eu", "one-segment")].into();
    assert_eq!(handled(&bus, &mut hash, 3).await, want_hash, "orders.#");
    assert_eq!(handled(&bus, &mut star, 1).await, want_one, "orders.*");
    assert_eq!(handled(&bus, &mut exact, 1).await, want_one, "orders.eu");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "event topic `orders.placed` | subject `orders.placed`, stored by the
/// JetStream stream configured for it". What switchyard publishes is on the topic's own
/// subject for a plain core subscriber (`<ns>.>`) and stored in the stream under it, the
/// payload untouched; a topic of 255 bytes (the longest) and a non-ASCII one included.
#[tokio::test]
async fn a_switchyard_publish_is_on_the_topics_own_subject_and_in_its_stream() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let client = raw().await;
    let mut sub = raw_subscribe(&client, format!("{ns}.>")).await;
    let long = format!("{ns}.{}", "l".repeat(254 - ns.len()));
    assert_eq!(long.len(), 255);
    let topics = [format!("{ns}.orders.placed"), long, format!("{ns}.grüße.ü")];
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&ns).await.unwrap();
    for (i, t) in topics.iter().enumerate() {
        let body = format!("\u{0}raw-{i}");
        bus.publish_envelope(Envelope::new(Topic::new(t).unwrap(), body.clone()))
            .await
            .unwrap();
        let msg = raw_next(&mut sub).await;
        assert_eq!(msg.subject.as_str(), t, "core subject");
        assert_eq!(&msg.payload[..], body.as_bytes());
        let stored = stream.get_last_raw_message_by_subject(t).await.unwrap();
        assert_eq!(&stored.payload[..], body.as_bytes(), "stored under {t}");
    }
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// nats.md: "A topic with a `>` segment (valid for switchyard, a wildcard for NATS) is
/// refused at publish." Refused with an error, and nothing is stored.
#[tokio::test]
async fn a_topic_with_a_gt_segment_is_refused_and_nothing_is_stored() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let topic = Topic::new(&format!("{ns}.a.>")).expect("`>` is an ordinary character");
    let err = bus
        .publish_envelope(Envelope::new(topic, "x"))
        .await
        .expect_err("a `>` segment published");
    assert!(err.to_string().contains('>'), "says why: {err}");
    let js = async_nats::jetstream::new(raw().await);
    let mut stream = js.get_stream(&ns).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// nats.md: "A message stored on a subject that NATS accepts but switchyard cannot represent
/// as a topic (… a subject longer than 255 bytes …) … is dead-lettered with reason
/// `DecodeFailed`, the topic `switchyard.nats.invalid-subject`, the raw subject in the header
/// `nats-subject`, the payload and headers untouched". The boundary from a foreign client:
/// 255 bytes is handled with its foreign headers, 256 is dead-lettered with them; a bus
/// subscription on `<ns>.#` sees only the first.
#[tokio::test]
async fn foreign_subjects_of_255_bytes_are_handled_and_of_256_dead_lettered_intact() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "long", &format!("{ns}.#")).await;
    let client = raw().await;
    let fits = format!("{ns}.{}", "a".repeat(254 - ns.len()));
    let over = format!("{fits}b");
    assert_eq!((fits.len(), over.len()), (255, 256));
    let h = super::headers(&[("X-Trace", "t-1"), ("Nats-Msg-Id", "long-1")]);
    js_publish(&client, over.clone(), Some(h), b"\xffover").await;
    js_publish(&client, fits.clone(), None, b"fits").await;
    let env = next(&mut rx).await;
    assert_eq!(
        (env.topic.as_str(), &env.payload[..]),
        (fits.as_str(), &b"fits"[..])
    );
    assert!(
        setup.dead_letters.wait_for(1, super::WAIT).await,
        "the 256-byte subject was not dead-lettered"
    );
    let dl = setup.dead_letters.list();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].reason, DeadLetterReason::DecodeFailed);
    assert_eq!(dl[0].envelope.topic.as_str(), INVALID_SUBJECT_TOPIC);
    assert_eq!(
        dl[0].envelope.header(RAW_SUBJECT_HEADER),
        Some(over.as_str())
    );
    assert_eq!(&dl[0].envelope.payload[..], b"\xffover");
    assert_eq!(
        dl[0].envelope.header("X-Trace"),
        Some("t-1"),
        "headers untouched"
    );
    bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "the long subject reached a handler");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
