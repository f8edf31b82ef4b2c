//! A request (`NatsTransport::request`, core request/reply) while the client is disconnected
//! is refused at once (`Unavailable`), not written: async-nats would keep it in its reconnect
//! buffer and send it after the reconnect, when its sender had long been answered `Timeout`
//! (the same as a command, `send_command`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::{Envelope, Pattern, Topic, TransportErrorKind};
use switchyard_nats::{ConnectionState, NatsConfig, NatsTransport, RequestError};

use crate::harness::{NatsServer, server_binary_available};

/// Waits (up to 30 s, checking every 20 ms) until `t` is in `state`.
async fn wait_state(t: &NatsTransport, state: ConnectionState) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while t.health().state != state {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "not {state:?} within 30 s: {:?}",
        t.health()
    );
}

fn quote() -> Envelope {
    Envelope::new(Topic::new("quotes.q").unwrap(), "{}")
}

/// The server killed: a request with a 10 s deadline is `Transport(Unavailable)` at once, and
/// once the server is back the responder never sees it (only the requests answered `Ok`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_while_disconnected_is_unavailable_at_once_and_never_sent() {
    if !server_binary_available() {
        return;
    }
    let mut server = NatsServer::start();
    let responder = NatsTransport::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let requester = NatsTransport::connect(NatsConfig::new(server.url()))
        .await
        .unwrap();
    let mut requests = responder
        .respond(&Pattern::new("quotes.#").unwrap(), None)
        .await
        .unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    let serving = tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            s.fetch_add(1, Ordering::SeqCst);
            let reply = Envelope::new(req.envelope.topic.clone(), "{\"price\":1}");
            let _ = req.reply(reply).await;
        }
    });
    requester
        .request(quote(), Duration::from_secs(5))
        .await
        .unwrap();

    server.kill();
    wait_state(&requester, ConnectionState::Reconnecting).await;
    let started = Instant::now();
    let refused = requester.request(quote(), Duration::from_secs(10)).await;
    let took = started.elapsed();

    server.restart();
    wait_state(&requester, ConnectionState::Connected).await;
    wait_state(&responder, ConnectionState::Connected).await;
    // Answered after the reconnect (the responder's subscription restored): anything the
    // requester's client had buffered was sent before it, on the same connection.
    let mut answered = 1;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        match requester.request(quote(), Duration::from_secs(5)).await {
            Ok(_) => {
                answered += 1;
                break;
            }
            Err(RequestError::NoResponders { .. }) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("a request after the reconnect: {e:?}"),
        }
    }
    let seen = served.load(Ordering::SeqCst);
    serving.abort();
    let mut wrong = Vec::new();
    match &refused {
        Err(RequestError::Transport(e))
            if e.kind == TransportErrorKind::Unavailable && took < Duration::from_secs(1) => {}
        other => wrong.push(format!(
            "while disconnected: {other:?} after {took:?}, not Unavailable at once"
        )),
    }
    if seen != answered {
        wrong.push(format!(
            "the responder served {seen} requests for {answered} answered Ok: the refused one \
             was sent after the reconnect"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("; "));
}
