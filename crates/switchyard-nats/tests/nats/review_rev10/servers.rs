//! Review rev10 on servers of the tests' own: `max_payload`, server restarts, the server
//! down.

use super::*;

/// A payload exactly at `max_payload` passes the transport's own check (`payload >
/// limit`), but NATS counts the headers too (HPUB total size). Expected: a typed error
/// (`TooLarge`) at once, or the message stored; not a connection dropped by the server
/// and a publish that fails only after the publish timeout.
#[tokio::test]
async fn a_payload_at_max_payload_plus_headers_is_typed_not_a_timeout() {
    if !server_binary_available() {
        return;
    }
    let server = crate::harness::SmallPayloadServer::start(true);
    let url = server.url.clone();
    let setup = Setup::new();
    let t = connect(&url, &setup).await;
    let (limit, _) = Publisher::max_message_bytes(&t).unwrap();
    assert_eq!(limit, 4096);
    let m = Envelope::new(setup.topic("big").unwrap(), vec![b'x'; limit]);
    let started = Instant::now();
    let r = t.publish(vec![m]).await;
    let took = started.elapsed();
    match &r {
        Ok(()) | Err(PublishError::TooLarge(_)) => {}
        Err(e) => panic!(
            "payload == max_payload: {e} (after {took:?}; disconnects {})",
            t.health().disconnects
        ),
    }
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        t.health().disconnects,
        0,
        "the server dropped the connection"
    );
    t.publish(vec![env(&setup, "small", "s")]).await.unwrap();
    close(&t).await;
}

/// The size the transport counts is the size the server counts: a message of exactly
/// `max_payload` bytes, payload and headers, is stored; one byte more is `TooLarge` at once,
/// naming the whole size; the connection is never dropped.
#[tokio::test]
async fn payload_and_headers_at_max_payload_are_stored_one_byte_more_is_too_large() {
    if !server_binary_available() {
        return;
    }
    let server = crate::harness::SmallPayloadServer::start(true);
    let url = server.url.clone();
    let setup = Setup::new();
    let t = connect(&url, &setup).await;
    let (limit, _) = Publisher::max_message_bytes(&t).unwrap();
    let probe = Envelope::new(setup.topic("edge").unwrap(), vec![b'x'; limit]);
    let headers = match t.publish(vec![probe]).await {
        Err(PublishError::TooLarge(e)) => {
            assert_eq!(e.limit, limit);
            assert!(e.limit_of.contains("headers"), "{}", e.limit_of);
            e.size - limit
        }
        other => panic!("payload == max_payload: {other:?}"),
    };
    // Same header fields (a fresh id of the same length, a timestamp of as many digits).
    let fits = Envelope::new(setup.topic("edge").unwrap(), vec![b'y'; limit - headers]);
    t.publish(vec![fits.clone()]).await.unwrap();
    let over = Envelope::new(
        setup.topic("edge").unwrap(),
        vec![b'z'; limit - headers + 1],
    );
    match t.publish(vec![over]).await {
        Err(PublishError::TooLarge(e)) => assert_eq!(e.size, limit + 1),
        other => panic!("one byte over max_payload: {other:?}"),
    }
    assert_eq!(
        t.health().disconnects,
        0,
        "the server dropped the connection"
    );
    let mut sub = t
        .subscribe(&setup.all().unwrap(), Some("edge"))
        .await
        .unwrap();
    let got = next_acked(&mut sub).await;
    assert_eq!(got.id, fits.id);
    assert_eq!(got.payload.len(), limit - headers);
    drop(sub);
    close(&t).await;
}

/// The server restarts while a group reads: what was published before and after (a
/// publish sent while the server is down completes once it is back) all arrives, each id
/// once at least, and health shows the reconnect.
#[tokio::test]
async fn a_server_restart_mid_stream_loses_nothing_published() {
    if !server_binary_available() {
        return;
    }
    let mut server = NatsServer::start();
    let url = server.url();
    let setup = Setup::new().with_ack_wait(Duration::from_secs(2));
    let mut cfg = config(&url, &setup);
    cfg.publish_timeout = Duration::from_secs(15);
    let t = NatsTransport::connect(cfg.clone()).await.unwrap();
    let p = NatsTransport::connect(cfg).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let before: Vec<Envelope> = (0..10)
        .map(|i| env(&setup, "r", &format!("b{i}")))
        .collect();
    p.publish(before.clone()).await.unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        seen.insert(next_acked(&mut sub).await.id.to_string());
    }
    server.kill();
    let after: Vec<Envelope> = (0..10)
        .map(|i| env(&setup, "r", &format!("a{i}")))
        .collect();
    let publisher = {
        let p = p.clone();
        let after = after.clone();
        tokio::spawn(async move { p.publish(after).await })
    };
    let restarted = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    });
    let want: BTreeSet<String> = before
        .iter()
        .chain(&after)
        .map(|e| e.id.to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen != want {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<&String> = want.difference(&seen).collect();
                panic!("missing {} of {}: {missing:?}", missing.len(), want.len())
            })
            .unwrap();
        seen.insert(d.envelope.id.to_string());
        let _ = d.ack().await;
    }
    publisher.await.unwrap().unwrap();
    assert!(t.health().reconnects >= 1);
    let _server = restarted.await.unwrap();
    drop(sub);
    let _ = t.close(Instant::now() + WAIT).await;
    let _ = p.close(Instant::now() + WAIT).await;
}

/// The same mismatch from the other side: a small payload with one large header (over
/// `max_payload` in total) passes the transport's and the bus's size checks (payload only)
/// and is refused by the server. Expected: a typed error at once, through the bus too.
#[tokio::test]
async fn a_large_header_over_max_payload_is_typed_not_a_timeout() {
    if !server_binary_available() {
        return;
    }
    let server = crate::harness::SmallPayloadServer::start(true);
    let url = server.url.clone();
    let setup = Setup::new();
    let t = connect(&url, &setup).await;
    let m = env(&setup, "hdr", "small").with_header("X-Blob", "b".repeat(5000));
    let bus = Bus::builder().transport(t.clone()).build().unwrap();
    let started = Instant::now();
    let r = bus.publish_envelope(m).await;
    let took = started.elapsed();
    match &r {
        Err(PublishError::TooLarge(_)) => {}
        Err(PublishError::Transport(e)) if e.kind == TransportErrorKind::Rejected => {}
        other => panic!(
            "5000-byte header on a 4096 max_payload server: {other:?} (after {took:?}; \
             disconnects {})",
            t.health().disconnects
        ),
    }
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let _ = bus.shutdown(WAIT).await;
}

/// An ungrouped subscription survives a server restart: it resumes after the last message
/// it acked (or, when the restart lost that ack, with that message once more) and gets what
/// is published after the restart.
#[tokio::test]
async fn an_ungrouped_subscription_resumes_after_a_server_restart() {
    if !server_binary_available() {
        return;
    }
    let mut server = NatsServer::start();
    let url = server.url();
    let setup = Setup::new();
    let mut cfg = config(&url, &setup);
    cfg.publish_timeout = Duration::from_secs(15);
    let t = NatsTransport::connect(cfg).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), None).await.unwrap();
    let m1 = env(&setup, "e", "1");
    t.publish(vec![m1.clone()]).await.unwrap();
    assert_eq!(next_acked(&mut sub).await.id, m1.id);
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let m2 = env(&setup, "e", "2");
    t.publish(vec![m2.clone()]).await.unwrap();
    // An ack is sent, not confirmed: one the server had not stored when it went down is
    // lost with it, and m1 comes back (at-least-once, docs/nats.md). It failed once so under
    // CI load ('m1 came back or m2 is lost: left "1" right "2"'). m2 must come, and m1 at
    // most once more.
    let mut again = 0;
    let d = loop {
        let d = tokio::time::timeout(Duration::from_secs(15), sub.next())
            .await
            .expect("nothing after the server restart")
            .unwrap();
        if body(&d.envelope) == "1" && again == 0 {
            again += 1;
            d.ack().await.unwrap();
            continue;
        }
        break d;
    };
    assert_eq!(body(&d.envelope), "2", "m2 is lost");
    d.ack().await.unwrap();
    drop(sub);
    let _ = t.close(Instant::now() + WAIT).await;
    drop(server);
}

/// With the server down: a publish fails with a typed `Timeout`/`Unavailable` once
/// `publish_timeout` is up (never `Ok`, never a hang), and `close` returns by its deadline.
#[tokio::test]
async fn with_the_server_down_publish_and_close_are_bounded_and_typed() {
    if !server_binary_available() {
        return;
    }
    let mut server = NatsServer::start();
    let url = server.url();
    let setup = Setup::new();
    let mut cfg = config(&url, &setup);
    cfg.publish_timeout = Duration::from_secs(2);
    let t = NatsTransport::connect(cfg).await.unwrap();
    let _live = t
        .subscribe(&setup.all().unwrap(), Some("live"))
        .await
        .unwrap();
    server.kill();
    let started = Instant::now();
    let r = tokio::time::timeout(WAIT, t.publish(vec![env(&setup, "e", "down")]))
        .await
        .expect("publish hung with the server down");
    match &r {
        Err(PublishError::Transport(e))
            if matches!(
                e.kind,
                TransportErrorKind::Timeout | TransportErrorKind::Unavailable
            ) => {}
        other => panic!("publish with the server down: {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(t.health().publish_failures >= 1);
    let started = Instant::now();
    let closed = tokio::time::timeout(WAIT, t.close(Instant::now() + Duration::from_secs(2))).await;
    assert!(
        closed.is_ok(),
        "close hung past its deadline with the server down"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// With the server down, `subscribe` comes back with an error that says what happened: a
/// `Timeout` or `Unavailable` (transient: retry later), not `Rejected` (the server refused
/// the consumer: fix the config), within a bound.
#[tokio::test]
async fn with_the_server_down_subscribe_fails_as_transient_not_rejected() {
    if !server_binary_available() {
        return;
    }
    let mut server = NatsServer::start();
    let url = server.url();
    let setup = Setup::new();
    let mut cfg = config(&url, &setup);
    cfg.publish_timeout = Duration::from_secs(2);
    let t = NatsTransport::connect(cfg).await.unwrap();
    server.kill();
    let started = Instant::now();
    let sub = tokio::time::timeout(
        Duration::from_secs(30),
        t.subscribe(&setup.all().unwrap(), Some("while-down")),
    )
    .await
    .expect("subscribe still pending after 30 s with the server down");
    let took = started.elapsed();
    match &sub {
        Ok(_) => {}
        Err(switchyard_core::SubscribeError::Transport(e))
            if matches!(
                e.kind,
                TransportErrorKind::Timeout | TransportErrorKind::Unavailable
            ) => {}
        Err(e) => panic!("subscribe with the server down, after {took:?}: {e:?}"),
    }
    drop(sub);
    let _ = t.close(Instant::now() + Duration::from_secs(2)).await;
}
