//! The server's `max_payload` is kept by the transport (read when the connection is made, not
//! copied out of the client's whole server INFO before every publish, command and reply) and
//! read again when the client reconnects: after a reconnect to a server with another limit,
//! the new limit is the one `max_message_bytes`, the publish check and the check on a reply
//! (by a responder serving since before the reconnect) use.

use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_conformance::Setup;
use switchyard_core::{Envelope, Pattern, PublishError, Publisher};
use switchyard_nats::{ConnectionState, NatsConfig, NatsTransport, RequestError};

use crate::harness::{SmallPayloadServer, server_binary_available};

/// The first server's `max_payload`.
const BEFORE: usize = 8192;
/// The restarted server's `max_payload`.
const AFTER: usize = 4096;
/// A payload that fits [`BEFORE`] with its headers and is over [`AFTER`] alone.
const MIDDLE: usize = 6000;

/// Waits (at most 10 s, checking every 10 ms: the transport has no event for it) until
/// `done` holds; panics with `what()` when it does not.
async fn until(what: impl Fn() -> String, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn limit(t: &NatsTransport) -> Option<usize> {
    Publisher::max_message_bytes(t).map(|(limit, _)| limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_to_a_server_with_a_smaller_max_payload_the_new_limit_applies() {
    if !server_binary_available() {
        return;
    }
    let mut server = SmallPayloadServer::start_with(true, BEFORE);
    let setup = Setup::new();
    let config = NatsConfig::new(server.url.clone())
        .with_stream(setup.namespace.clone(), [setup.all().unwrap()])
        .with_max_age(Duration::from_secs(600))
        .with_ack_timeout(Duration::from_secs(1))
        .with_publish_timeout(Duration::from_secs(20));
    let t = NatsTransport::connect(config).await.unwrap();
    let requester = NatsTransport::connect(NatsConfig::new(server.url.clone()))
        .await
        .unwrap();
    assert_eq!(limit(&t), Some(BEFORE));
    let middle = || Envelope::new(setup.topic("middle").unwrap(), vec![b'm'; MIDDLE]);
    t.publish(vec![middle()]).await.unwrap();

    // A responder serving since before the restart answers one request with a reply of
    // MIDDLE bytes.
    let ask = setup.topic("ask").unwrap();
    let mut requests = t
        .respond(&Pattern::new(ask.as_str()).unwrap(), None)
        .await
        .unwrap();
    let (replied_tx, replied) = tokio::sync::oneshot::channel();
    let reply_topic = ask.clone();
    let serving = tokio::spawn(async move {
        let request = requests.next().await.unwrap();
        let reply = Envelope::new(reply_topic, vec![b'r'; MIDDLE]);
        let _ = replied_tx.send(request.reply(reply).await);
    });

    let disconnects = t.health().disconnects;
    let server = tokio::task::spawn_blocking(move || {
        server.restart_with(AFTER);
        server
    })
    .await
    .unwrap();
    // Resent until the restarted server stores it: the transport is on the new server.
    t.publish(vec![Envelope::new(setup.topic("small").unwrap(), "s")])
        .await
        .unwrap();
    until(
        || format!("limit {:?} after the reconnect, want {AFTER}", limit(&t)),
        || limit(&t) == Some(AFTER),
    )
    .await;
    until(
        || format!("one reconnect: {:?}", t.health()),
        || t.health().reconnects == 1,
    )
    .await;

    let started = Instant::now();
    match t.publish(vec![middle()]).await {
        Err(PublishError::TooLarge(e)) => {
            assert_eq!(e.limit, AFTER, "{e:?}");
            assert!(e.size > MIDDLE, "size counts the headers: {e:?}");
        }
        other => panic!(
            "{MIDDLE} bytes + headers on a server with max_payload {AFTER}: {other:?} (after \
             {:?}; {:?})",
            started.elapsed(),
            t.health()
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(1));

    until(
        || format!("the requester did not reconnect: {:?}", requester.health()),
        || {
            let h = requester.health();
            h.reconnects == 1 && h.state == ConnectionState::Connected
        },
    )
    .await;
    let asked = requester
        .request(Envelope::new(ask, "q"), Duration::from_secs(1))
        .await;
    assert!(
        matches!(asked, Err(RequestError::Timeout { .. })),
        "a reply over the new limit arrived: {asked:?}"
    );
    let refused = tokio::time::timeout(Duration::from_secs(3), replied)
        .await
        .expect("the responder did not get the request")
        .unwrap();
    let e = refused.expect_err("a reply over the new limit was sent");
    let too_large = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<switchyard_core::TooLarge>())
        .unwrap_or_else(|| panic!("no TooLarge source: {e:?}"));
    assert_eq!(too_large.limit, AFTER, "{too_large:?}");
    serving.await.unwrap();
    assert_eq!(
        t.health().disconnects,
        disconnects + 1,
        "the server dropped the connection (once is the restart)"
    );
    drop(server);
}
