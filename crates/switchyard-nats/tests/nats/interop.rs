//! Issue 17, item 2: messages from and to NATS clients that are not switchyard. Each test
//! failed before its fix (named in the commit that made it pass).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard::{Bus, DeadLetterReason, Envelope, Kind, Publisher, Subscriber, handler_fn};
use switchyard_conformance::Setup;
use switchyard_nats::NatsTransport;
use tokio::sync::mpsc;

use crate::harness::{NatsHarness, SHARED_URL, shared_unavailable};

const UUID: &str = "550e8400-e29b-41d4-a716-446655440000";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Publishes `payload` on `subject` with `headers` as a plain NATS client would (through
/// JetStream, waiting for the store's acknowledgement).
pub(crate) async fn foreign_publish(
    subject: String,
    headers: &[(&str, &str)],
    payload: &'static str,
) {
    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    js.publish_with_headers(subject, h, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A plain client's subscription the server already has: `flush` only writes the socket, so
/// a message published right after from another connection could be routed before the server
/// read the SUB (seen in CI under load: the forwarded message never arrived). A request to an
/// inbox nobody serves comes back (no responders) only after the server processed the SUB.
async fn raw_subscribe(client: &async_nats::Client, subject: String) -> async_nats::Subscriber {
    let sub = client.subscribe(subject).await.unwrap();
    match client.request(client.new_inbox(), "".into()).await {
        Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {}
        other => panic!("a round trip through the server: {other:?}"),
    }
    sub
}

async fn next(sub: &mut switchyard_nats::NatsSubscription) -> Envelope {
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    let env = d.envelope.clone();
    d.ack().await.unwrap();
    env
}

#[tokio::test]
async fn foreign_headers_and_ids_arrive_intact() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let nats = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let topic = setup.topic("orders").unwrap();
    let mut sub = nats.subscribe(&setup.all().unwrap(), None).await.unwrap();
    foreign_publish(
        topic.to_string(),
        &[
            ("traceparent", TRACEPARENT),
            ("tracestate", "vendor=opaque,other=1"),
            ("X-Correlation-Id", "abc-123"),
            ("X-Percent", "50%25 off"),
        ],
        "{\"n\":1}",
    )
    .await;
    let env = next(&mut sub).await;
    assert_eq!(env.header("traceparent"), Some(TRACEPARENT));
    assert_eq!(env.header("tracestate"), Some("vendor=opaque,other=1"));
    assert_eq!(env.header("X-Correlation-Id"), Some("abc-123"));
    // A foreign value is not switchyard's percent-encoding: kept byte for byte.
    assert_eq!(env.header("X-Percent"), Some("50%25 off"));
    // JetStream's own headers are not the message's.
    assert!(
        env.headers().iter().all(|(k, _)| !k.starts_with("Nats-")),
        "{:?}",
        env.headers()
    );
}

#[tokio::test]
async fn republished_headers_and_ids_keep_their_standard_names() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let nats = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let topic = setup.topic("in").unwrap();
    let mut sub = nats.subscribe(&setup.all().unwrap(), None).await.unwrap();
    foreign_publish(
        topic.to_string(),
        &[
            ("traceparent", TRACEPARENT),
            ("X-Correlation-Id", "abc-123"),
        ],
        "{}",
    )
    .await;
    let got = next(&mut sub).await;
    // Forward it (as a bridge or a handler re-publishing would) and read it as a plain
    // client does.
    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let out = setup.topic("out").unwrap();
    let mut raw = raw_subscribe(&client, out.to_string()).await;
    let mut fwd = got.clone();
    fwd.topic = out;
    nats.publish(vec![fwd]).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), raw.next())
        .await
        .unwrap()
        .unwrap();
    let hm = msg.headers.unwrap();
    let get = |k: &str| hm.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(
        hm.get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.to_string()),
        Some(got.id.to_string())
    );
    assert_eq!(get("traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(get("X-Correlation-Id").as_deref(), Some("abc-123"));
    assert_eq!(get("H-traceparent"), None);
    // A header switchyard itself sets stays under its `H-` escape only when it must.
    let env = Envelope::new(setup.topic("out").unwrap(), "{}")
        .with_header("plain-name", "v")
        .with_header("needs escape", "x\ny")
        .with_header("Sy-Kind", "not the kind");
    nats.publish(vec![env.clone()]).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), raw.next())
        .await
        .unwrap()
        .unwrap();
    let hm = msg.headers.unwrap();
    assert_eq!(hm.get("plain-name").map(|v| v.as_str()), Some("v"));
    assert_eq!(hm.get("Sy-Kind"), None, "a user header posed as the kind");
    // The subscription sees the forwarded message, then this one.
    let forwarded = next(&mut sub).await;
    assert_eq!(forwarded.header("X-Correlation-Id"), Some("abc-123"));
    let back2 = next(&mut sub).await;
    assert_eq!(back2.id, env.id);
    assert_eq!(back2.headers(), env.headers());
    assert_eq!(back2.kind, Kind::Event);
}

/// A `Sy-Kind: command` message published on an event topic by some client is never given
/// to an event handler: it arrived without a reply subject, so it is dead-lettered
/// `Rejected` (commands go to `bus.send`; see `no_reply.rs`).
#[tokio::test]
async fn a_command_is_never_handed_to_an_event_handler() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let nats = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let letters = Arc::new(switchyard::InMemoryDeadLetters::new(100));
    let bus = Bus::builder()
        .transport(nats.clone())
        .dead_letters(letters.clone())
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(
            "events",
            setup.all().unwrap().as_str(),
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    tx.send(env.payload.clone()).unwrap();
                    Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let topic = setup.topic("x").unwrap().to_string();
    foreign_publish(topic.clone(), &[("Sy-Kind", "command")], "command").await;
    foreign_publish(topic.clone(), &[("Sy-Kind", "request")], "request").await;
    foreign_publish(topic, &[], "event").await;
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"event", "a command reached the event handler");
    bus.run_until_idle().await;
    let dl = letters.list();
    assert_eq!(dl.len(), 2, "{dl:?}");
    assert!(dl.iter().all(|l| l.reason == DeadLetterReason::Rejected));
    assert!(rx.try_recv().is_err());
}

/// Ids are opaque strings: a foreign UUID `Nats-Msg-Id`, correlation and causation id are
/// kept as they are, and a Rust republish carries them on under their standard names (the
/// message forwarded as it is keeps its `Nats-Msg-Id`; a follow-up caused by it has the
/// foreign correlation id and the UUID as its causation). Failed before MessageId became an
/// opaque string: each foreign id was replaced by a fresh ULID.
#[tokio::test]
async fn foreign_ids_are_kept_as_they_are() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let nats = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let mut sub = nats
        .subscribe(&setup.pattern("ids").unwrap(), None)
        .await
        .unwrap();
    foreign_publish(
        setup.topic("ids").unwrap().to_string(),
        &[
            ("Nats-Msg-Id", UUID),
            ("Sy-Correlation-Id", "corr-42"),
            ("Sy-Causation-Id", "cause-7"),
        ],
        "{}",
    )
    .await;
    let env = next(&mut sub).await;
    assert_eq!(env.id.to_string(), UUID, "foreign Nats-Msg-Id replaced");
    assert_eq!(env.correlation_id.to_string(), "corr-42");
    assert_eq!(
        env.causation_id().map(|c| c.to_string()).as_deref(),
        Some("cause-7")
    );

    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let out = setup.topic("out").unwrap();
    let mut raw = raw_subscribe(&client, out.to_string()).await;
    let mut fwd = env.clone();
    fwd.topic = out.clone();
    let follow_up = Envelope::new(out, "{}").caused_by(&env);
    nats.publish(vec![fwd, follow_up.clone()]).await.unwrap();
    let mut read = async || {
        let msg = tokio::time::timeout(Duration::from_secs(10), raw.next())
            .await
            .unwrap()
            .unwrap();
        let hm = msg.headers.unwrap();
        let get = |k: &str| hm.get(k).map(|v| v.as_str().to_owned());
        // The standard name's constant: a `&str` key does not find it in async-nats' map.
        let id = hm.get(async_nats::header::NATS_MESSAGE_ID);
        (
            id.map(|v| v.as_str().to_owned()),
            get("Sy-Correlation-Id"),
            get("Sy-Causation-Id"),
        )
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(read().await, (some(UUID), some("corr-42"), some("cause-7")));
    assert_eq!(
        read().await,
        (some(&follow_up.id.to_string()), some("corr-42"), some(UUID))
    );
}
