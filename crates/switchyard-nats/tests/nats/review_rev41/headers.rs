//! Headers read from a foreign publish and written on a switchyard publish (docs/interop.md
//! "Headers", docs/nats.md "Envelope fields as headers").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard::{Envelope, Kind, MessageId, Priority, PublishError, Topic, TransportErrorKind};
use switchyard_conformance::Setup;

use super::{
    bus_on, collect, event_transport, get, headers, js_publish, next, raw, raw_next, raw_subscribe,
    skip,
};

/// interop.md: "A foreign message needs no switchyard header at all: it arrives as an event
/// with a fresh id, the current time and its body as the payload."
#[tokio::test]
async fn a_foreign_message_with_no_headers_is_an_event_with_a_fresh_id_now_and_its_body() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "plain", setup.all().unwrap().as_str()).await;
    let client = raw().await;
    let before = SystemTime::now();
    let body = b"\x00\xff not json at all";
    js_publish(
        &client,
        setup.topic("plain").unwrap().to_string(),
        None,
        body,
    )
    .await;
    js_publish(
        &client,
        setup.topic("plain").unwrap().to_string(),
        None,
        body,
    )
    .await;
    let a = next(&mut rx).await;
    let b = next(&mut rx).await;
    let after = SystemTime::now();
    for env in [&a, &b] {
        assert_eq!(env.kind, Kind::Event);
        assert_eq!(&env.payload[..], body);
        assert!(env.headers().is_empty(), "{:?}", env.headers());
        assert_eq!(env.correlation_id, env.id);
        assert!(env.causation_id().is_none());
        assert!(
            env.timestamp >= before - Duration::from_secs(1) && env.timestamp <= after,
            "the current time: {:?}",
            env.timestamp
        );
        assert!(!env.id.to_string().is_empty());
    }
    assert_ne!(a.id, b.id, "each gets a fresh id");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "`Sy-Correlation-Id`, `Sy-Causation-Id`, `Sy-Source`, `Sy-Target`,
/// `Sy-Priority`, `Sy-Timestamp`, `Sy-Content-Type`, `Sy-Type-Name`, `Sy-Type-Version`: the
/// other envelope fields … all optional", and "What it does carry is honoured". Every field
/// a foreign client sets arrives on the envelope, and free headers beside them.
#[tokio::test]
async fn every_documented_header_of_a_foreign_publish_is_on_the_envelope() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "fields", setup.all().unwrap().as_str()).await;
    let h = headers(&[
        ("Nats-Msg-Id", "order-42"),
        ("Sy-Correlation-Id", "corr-42"),
        ("Sy-Causation-Id", "cause-41"),
        ("Sy-Source", "py-shop"),
        ("Sy-Target", "billing"),
        ("Sy-Priority", "200"),
        ("Sy-Timestamp", "1700000000123456789"),
        ("Sy-Content-Type", "application/x-protobuf"),
        ("Sy-Type-Name", "shop.OrderPlaced"),
        ("Sy-Type-Version", "3"),
        ("X-Tenant", "acme"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]);
    let topic = setup.topic("fields").unwrap();
    js_publish(&raw().await, topic.to_string(), Some(h), b"\x08\x2a").await;
    let env = next(&mut rx).await;
    assert_eq!(env.id.to_string(), "order-42");
    assert_eq!(env.correlation_id.to_string(), "corr-42");
    assert_eq!(
        env.causation_id().map(|c| c.to_string()).as_deref(),
        Some("cause-41")
    );
    assert_eq!(env.source(), Some("py-shop"));
    assert_eq!(env.target(), Some("billing"));
    assert_eq!(env.priority, Priority(200));
    assert_eq!(
        env.timestamp,
        UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)
    );
    assert_eq!(env.content_type(), "application/x-protobuf");
    assert_eq!(env.type_name.as_deref(), Some("shop.OrderPlaced"));
    assert_eq!(env.type_version, 3);
    assert_eq!(env.kind, Kind::Event);
    assert_eq!(&env.payload[..], b"\x08\x2a");
    let free: Vec<(&str, &str)> = env.headers().iter().collect();
    assert_eq!(
        free,
        vec![
            ("X-Tenant", "acme"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )
        ],
        "only the free headers, as they came"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// nats.md's table "Envelope fields as headers" and interop.md "What switchyard publishes
/// carries the same headers": a foreign subscriber reads every field under its documented
/// name and format (timestamp in ns since the epoch), the defaults omitted (`Sy-Kind` for an
/// event, `Sy-Priority` 128, `Sy-Content-Type` JSON, `Sy-Type-Version` 1, correlation equal
/// to the id), free headers under their own name or `H-<percent-encoded>`.
#[tokio::test]
async fn a_switchyard_publish_writes_every_field_under_its_documented_header() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let client = raw().await;
    let mut sub = raw_subscribe(&client, format!("{ns}.>")).await;
    let parent = Envelope::new(setup.topic("parent").unwrap(), "p");
    let mut full = Envelope::new(setup.topic("full").unwrap(), "{\"n\":1}")
        .caused_by(&parent)
        .with_correlation_id("corr-7".parse::<MessageId>().unwrap())
        .with_source("svc a")
        .with_target("billing")
        .with_priority(Priority(7))
        .with_content_type("application/x-protobuf")
        .with_header("X-Tenant", "acme")
        .with_header("needs space", "a\r\nb%");
    full.type_name = Some("shop.Order".into());
    full.type_version = 3;
    full.timestamp = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001);
    let bare = Envelope::new(setup.topic("bare").unwrap(), "{}");
    bus.publish_envelope(full.clone()).await.unwrap();
    bus.publish_envelope(bare.clone()).await.unwrap();

    let m = raw_next(&mut sub).await;
    let msg_id = m
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned());
    assert_eq!(msg_id, Some(full.id.to_string()));
    let want = [
        ("Sy-Correlation-Id", Some("corr-7")),
        ("Sy-Source", Some("svc%20a")),
        ("Sy-Target", Some("billing")),
        ("Sy-Priority", Some("7")),
        ("Sy-Timestamp", Some("1700000000000000001")),
        ("Sy-Content-Type", Some("application/x-protobuf")),
        ("Sy-Type-Name", Some("shop.Order")),
        ("Sy-Type-Version", Some("3")),
        ("X-Tenant", Some("acme")),
        ("H-needs%20space", Some("a%0D%0Ab%25")),
        ("Sy-Kind", None),
        ("needs space", None),
    ];
    for (name, value) in want {
        assert_eq!(get(&m, name).as_deref(), value, "{name}");
    }
    assert_eq!(
        get(&m, "Sy-Causation-Id"),
        Some(parent.id.to_string()),
        "causation"
    );

    let m = raw_next(&mut sub).await;
    for absent in [
        "Sy-Kind",
        "Sy-Correlation-Id",
        "Sy-Causation-Id",
        "Sy-Priority",
        "Sy-Content-Type",
        "Sy-Type-Version",
        "Sy-Source",
        "Sy-Target",
    ] {
        assert_eq!(get(&m, absent), None, "{absent} at its default is omitted");
    }
    let ts: u128 = get(&m, "Sy-Timestamp").unwrap().parse().unwrap();
    let want = bare
        .timestamp
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert_eq!(ts, want, "nanoseconds since the epoch");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "A valid id is 1 to 256 bytes of visible ASCII (`!` to `~`); a value outside
/// that (a space, a control character, non-ASCII) is not used as an id: the message gets a
/// fresh ULID instead." 256 bytes is kept; 257 bytes, a space and non-ASCII are replaced,
/// and the message is still handled with its body.
#[tokio::test]
async fn foreign_ids_of_256_bytes_are_kept_and_invalid_ones_replaced_by_a_fresh_ulid() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "ids", setup.all().unwrap().as_str()).await;
    let client = raw().await;
    let topic = setup.topic("ids").unwrap().to_string();
    let max = "i".repeat(256);
    let over = "o".repeat(257);
    let cases = [
        (max.as_str(), true),
        ("~!exotic{id}~", true),
        (over.as_str(), false),
        ("has space", false),
        ("grüße", false),
    ];
    for (i, (id, _)) in cases.iter().enumerate() {
        let h = headers(&[("Nats-Msg-Id", id)]);
        js_publish(&client, topic.clone(), Some(h), i.to_string().as_bytes()).await;
    }
    let mut got = Vec::new();
    for _ in 0..cases.len() {
        got.push(next(&mut rx).await);
    }
    got.sort_by_key(|e| e.payload.clone());
    for (env, (id, kept)) in got.iter().zip(cases) {
        let seen = env.id.to_string();
        if kept {
            assert_eq!(seen, id, "a valid id kept");
        } else {
            assert_ne!(seen, id, "an invalid id used as the id");
            assert_eq!(seen.len(), 26, "a fresh ULID: {seen}");
            let crockford =
                |c: char| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c));
            assert!(seen.chars().all(crockford), "a fresh ULID: {seen}");
        }
        assert_eq!(env.correlation_id, env.id);
    }
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "Any header outside the reserved prefixes … is kept exactly as it came, name
/// and value: on the envelope … and written back under the same name when switchyard
/// republishes or forwards the message." NATS headers are multi-valued (RFC 822 style, as
/// HTTP); a foreign client sending `X-Tag: a` and `X-Tag: b` must not see one of them
/// silently dropped on the envelope or on a forward. interop.md's rule (fixed in
/// h-natsfix2): "A header sent more than once keeps every value, joined with `, ` in the
/// order they came", on the envelope and on the forward.
#[tokio::test]
async fn a_multi_valued_foreign_header_keeps_every_value() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "multi", &format!("{ns}.in")).await;
    let client = raw().await;
    let h = headers(&[("X-Tag", "a"), ("X-Tag", "b")]);
    js_publish(&client, format!("{ns}.in"), Some(h), b"{}").await;
    let env = next(&mut rx).await;
    let mut out = raw_subscribe(&client, format!("{ns}.out")).await;
    let mut fwd = env.clone();
    fwd.topic = Topic::new(&format!("{ns}.out")).unwrap();
    bus.publish_envelope(fwd).await.unwrap();
    let m = raw_next(&mut out).await;
    let forwarded: Vec<String> = match m.headers.as_ref() {
        Some(h) => h.get_all("X-Tag").map(|v| v.as_str().to_owned()).collect(),
        None => Vec::new(),
    };
    let on_envelope = env.header("X-Tag").unwrap_or_default().to_owned();
    assert_eq!(
        on_envelope, "a, b",
        "a value of X-Tag lost on the envelope: {on_envelope:?} (sent `a` and `b`)"
    );
    assert_eq!(
        forwarded,
        vec!["a, b".to_owned()],
        "a value of X-Tag lost on the forward: {forwarded:?} (sent `a` and `b`)"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// interop.md: "What it does carry is honoured" and nats.md "A message from a non-switchyard
/// publisher gets defaults for the rest". A foreign message whose `Sy-` headers are not in
/// their documented format (a word for a priority, a date for a timestamp), or that carries
/// a 32 KiB free header (JetStream refuses header blocks over 64 KiB), is still handed to the handler, not lost: body and free headers
/// exactly as sent, the malformed fields at their defaults.
#[tokio::test]
async fn malformed_sy_headers_and_a_large_free_header_do_not_lose_the_message() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, letters) = bus_on(&nats);
    let (_sub, mut rx) = collect(&bus, "odd", setup.all().unwrap().as_str()).await;
    let big = "v".repeat(32 * 1024);
    let h = headers(&[
        ("Sy-Priority", "high"),
        ("Sy-Timestamp", "yesterday"),
        ("Sy-Type-Version", "v2"),
        ("Sy-Kind", "evnt"),
        ("X-Big", &big),
        ("X-Keep", "1"),
    ]);
    let before = SystemTime::now();
    js_publish(
        &raw().await,
        setup.topic("odd").unwrap().to_string(),
        Some(h),
        b"body",
    )
    .await;
    let env = next(&mut rx).await;
    assert_eq!(&env.payload[..], b"body");
    assert_eq!(env.header("X-Big"), Some(big.as_str()));
    assert_eq!(env.header("X-Keep"), Some("1"));
    assert_eq!(env.priority, Priority::NORMAL);
    assert_eq!(env.type_version, 1);
    assert_eq!(env.kind, Kind::Event);
    assert!(env.timestamp >= before - Duration::from_secs(1));
    bus.run_until_idle().await;
    assert!(letters.list().is_empty(), "{:?}", letters.list());
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// nats.md: "A publish is never reported `Ok` unless the server acknowledged it, and never
/// dropped silently: it either succeeds or returns an error", and its size rules (headers
/// count against `max_payload`). JetStream refuses a header block over 64 KiB (error 10097)
/// although it is far under `max_payload` (1 MiB): a switchyard publish with a 70 KiB free
/// header must fail with an error, promptly (well before `publish_timeout`), and store
/// nothing; one of 32 KiB is stored and read back by a foreign client intact. (Fixed in
/// h-natsfix2: refused before it is sent, `PublishError::TooLarge` naming JetStream's
/// 65535-byte limit on the header block.)
#[tokio::test]
async fn a_switchyard_publish_with_a_header_over_jetstreams_limit_fails_promptly() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let fits = "f".repeat(32 * 1024);
    let over = "o".repeat(70 * 1024);
    let ok = Envelope::new(setup.topic("fits").unwrap(), "x").with_header("X-Big", fits.as_str());
    bus.publish_envelope(ok).await.unwrap();
    let started = std::time::Instant::now();
    let bad = Envelope::new(setup.topic("over").unwrap(), "y").with_header("X-Big", over.as_str());
    let res = tokio::time::timeout(Duration::from_secs(30), bus.publish_envelope(bad))
        .await
        .expect("publish hung");
    let took = started.elapsed();
    assert!(res.is_err(), "a publish JetStream refused reported Ok");
    assert!(
        took < Duration::from_secs(5),
        "not prompt: {res:?} after {took:?} (publish_timeout 20 s)"
    );
    match &res {
        Err(PublishError::TooLarge(e)) => {
            assert_eq!(e.limit, 65_535, "{e}");
            assert!(e.size > 70 * 1024, "{e}");
            assert!(e.to_string().contains("header block"), "{e}");
        }
        other => panic!("not TooLarge: {other:?}"),
    }
    let js = async_nats::jetstream::new(raw().await);
    let stream = js.get_stream(&ns).await.unwrap();
    let stored = stream
        .get_last_raw_message_by_subject(&format!("{ns}.fits"))
        .await
        .unwrap();
    assert_eq!(
        stored.headers.get("X-Big").map(|v| v.as_str()),
        Some(fits.as_str())
    );
    assert!(
        stream
            .get_last_raw_message_by_subject(&format!("{ns}.over"))
            .await
            .is_err(),
        "the refused message is stored"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// nats.md: a message whose acknowledgement does not come is resent until
/// `publish_timeout`; a refusal by the server is not a missing acknowledgement. A publish
/// JetStream refuses for good (here: over the stream's `max_msg_size`, set by another
/// client, error 10054, status 400) fails at once with the server's reason, not after
/// resending it until `publish_timeout` (h-natsfix2; before, 20 s of resends).
#[tokio::test]
async fn a_publish_the_server_refuses_fails_at_once_with_its_reason() {
    if skip() {
        return;
    }
    let setup = Setup::new();
    let ns = setup.namespace.clone();
    let (nats, _guard) = event_transport(&setup).await;
    let (bus, _letters) = bus_on(&nats);
    let js = async_nats::jetstream::new(raw().await);
    let mut config = js
        .get_stream(&ns)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.max_message_size = 512;
    js.update_stream(&config).await.unwrap();
    let started = std::time::Instant::now();
    let big = Envelope::new(setup.topic("big").unwrap(), "b".repeat(2048));
    let res = tokio::time::timeout(Duration::from_secs(30), bus.publish_envelope(big))
        .await
        .expect("publish hung");
    let took = started.elapsed();
    assert!(res.is_err(), "a publish JetStream refused reported Ok");
    assert!(
        took < Duration::from_secs(5),
        "not prompt: {res:?} after {took:?} (publish_timeout 20 s)"
    );
    match &res {
        Err(PublishError::Transport(e)) => {
            assert_eq!(e.kind, TransportErrorKind::Rejected, "{e:?}");
            assert!(e.message.contains("10054"), "the server's reason: {e:?}");
        }
        other => panic!("not a Rejected transport error: {other:?}"),
    }
    // A message the stream takes still goes through.
    let small = Envelope::new(setup.topic("small").unwrap(), "s");
    bus.publish_envelope(small).await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
