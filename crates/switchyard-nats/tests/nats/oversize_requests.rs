//! Commands and requests over core NATS (not JetStream) count their encoded headers with the
//! payload against the server's `max_payload`, as the JetStream publish does: over it they are
//! refused with a typed `TooLarge` at once, instead of the server dropping the connection and
//! the sender waiting for its deadline.

use std::time::{Duration, Instant};

use futures::StreamExt;

use switchyard_core::{Envelope, RemoteCommands, SendError, Topic};
use switchyard_nats::{NatsConfig, NatsTransport, RequestError};

use crate::harness::{server_binary_available, spawn_args};

const LIMIT: usize = 4096;

/// A server of the test's own (core NATS only) with `max_payload: 4096`, killed on drop.
struct SmallServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl SmallServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("server.conf");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\nmax_payload: {LIMIT}\n"),
        )
        .unwrap();
        let child = spawn_args(&["-c".into(), conf.display().to_string()]);
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for SmallServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A payload just under `max_payload`: it fits alone, not with the envelope's headers.
fn just_under(topic: &str) -> Envelope {
    Envelope::new(Topic::new(topic).unwrap(), vec![b'x'; LIMIT - 8])
}

/// A command whose payload fits `max_payload` but not with its headers is `TooLarge` at once,
/// its size counting the headers; the connection stays up and a small command is answered.
#[tokio::test]
async fn a_command_over_max_payload_with_its_headers_is_too_large_at_once() {
    if !server_binary_available() {
        return;
    }
    let server = SmallServer::start();
    let t = NatsTransport::connect(NatsConfig::new(server.url.clone()))
        .await
        .unwrap();
    let started = Instant::now();
    let r = RemoteCommands::send(&t, just_under("calc.big"), Some(Duration::from_secs(3))).await;
    let took = started.elapsed();
    match &r {
        Err(SendError::TooLarge(e)) => {
            assert_eq!(e.limit, LIMIT);
            assert!(e.size > LIMIT, "size counts the headers: {e:?}");
        }
        other => panic!(
            "payload {} + headers over max_payload {LIMIT}: {other:?} (after {took:?}; \
             disconnects {})",
            LIMIT - 8,
            t.health().disconnects
        ),
    }
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        t.health().disconnects,
        0,
        "the server dropped the connection"
    );
    let small = Envelope::new(Topic::new("calc.small").unwrap(), "s");
    assert!(matches!(
        RemoteCommands::send(&t, small, Some(Duration::from_secs(3))).await,
        Err(SendError::NoHandler { .. })
    ));
}

/// The same for a request (`NatsTransport::request`): `RequestError::TooLarge` at once.
#[tokio::test]
async fn a_request_over_max_payload_with_its_headers_is_too_large_at_once() {
    if !server_binary_available() {
        return;
    }
    let server = SmallServer::start();
    let t = NatsTransport::connect(NatsConfig::new(server.url.clone()))
        .await
        .unwrap();
    let started = Instant::now();
    let r = t
        .request(just_under("calc.big"), Duration::from_secs(3))
        .await;
    let took = started.elapsed();
    match &r {
        Err(RequestError::TooLarge(e)) => {
            assert_eq!(e.limit, LIMIT);
            assert!(e.size > LIMIT, "size counts the headers: {e:?}");
        }
        other => panic!(
            "payload {} + headers over max_payload {LIMIT}: {other:?} (after {took:?}; \
             disconnects {})",
            LIMIT - 8,
            t.health().disconnects
        ),
    }
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        t.health().disconnects,
        0,
        "the server dropped the connection"
    );
    let small = Envelope::new(Topic::new("calc.small").unwrap(), "s");
    assert!(matches!(
        t.request(small, Duration::from_secs(3)).await,
        Err(RequestError::NoResponders { .. })
    ));
}

/// A responder's reply whose payload fits `max_payload` but not with its headers is refused
/// by `IncomingRequest::reply` at once (`Rejected`, the `TooLarge` as its source) instead of
/// being sent: the responder's connection stays up and its next reply arrives.
#[tokio::test]
async fn a_reply_over_max_payload_with_its_headers_is_refused_and_the_connection_kept() {
    if !server_binary_available() {
        return;
    }
    let server = SmallServer::start();
    let responder = NatsTransport::connect(NatsConfig::new(server.url.clone()))
        .await
        .unwrap();
    let requester = NatsTransport::connect(NatsConfig::new(server.url.clone()))
        .await
        .unwrap();
    let mut requests = responder
        .respond(&switchyard_core::Pattern::new("calc.#").unwrap(), None)
        .await
        .unwrap();
    let (replied_tx, replied) = tokio::sync::oneshot::channel();
    let serving = tokio::spawn(async move {
        let first = requests.next().await.unwrap();
        let reply = Envelope::new(Topic::new("calc.big").unwrap(), vec![b'x'; LIMIT - 8]);
        let _ = replied_tx.send(first.reply(reply).await);
        let second = requests.next().await.unwrap();
        let reply = Envelope::new(Topic::new("calc.small").unwrap(), "ok");
        second.reply(reply).await
    });
    let big = requester
        .request(
            Envelope::new(Topic::new("calc.big").unwrap(), "1"),
            Duration::from_millis(500),
        )
        .await;
    assert!(matches!(big, Err(RequestError::Timeout { .. })), "{big:?}");
    let refused = tokio::time::timeout(Duration::from_secs(3), replied)
        .await
        .unwrap()
        .unwrap();
    let e = refused.expect_err("an oversize reply was sent");
    let too_large = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<switchyard_core::TooLarge>())
        .unwrap_or_else(|| panic!("no TooLarge source: {e:?}"));
    assert!(too_large.size > LIMIT, "{too_large:?}");
    let small = requester
        .request(
            Envelope::new(Topic::new("calc.small").unwrap(), "2"),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    assert_eq!(&small.payload[..], b"ok");
    serving.await.unwrap().unwrap();
    assert_eq!(
        responder.health().disconnects,
        0,
        "the responder's connection dropped"
    );
}
