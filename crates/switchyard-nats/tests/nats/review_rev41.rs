//! Review rev41: NATS interop as a client in another language uses it. Every test acts as
//! that foreign client with the raw `async-nats` crate (never through switchyard) against a
//! switchyard `Bus` on `NatsTransport`, and checks one statement of docs/interop.md or
//! docs/nats.md. Each test has a stream / command prefix of its own on the shared server and
//! deletes the streams it made (a guard, so also when it fails).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use switchyard::{Bus, Envelope, InMemoryDeadLetters, Outcome, Subscription, handler_fn};
use switchyard_conformance::Setup;
use switchyard_nats::{NatsConfig, NatsTransport};
use tokio::sync::mpsc;

use crate::harness::{NatsHarness, SHARED_URL, shared_unavailable};

mod commands;
mod flows;
mod headers;
mod jetstream;
mod python;
mod responders;
mod subjects;

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// True (with the harness's loud message) when the shared server is unreachable outside CI.
pub(crate) fn skip() -> bool {
    shared_unavailable().is_some()
}

/// A plain NATS client, as a service in another language has.
pub(crate) async fn raw() -> async_nats::Client {
    async_nats::connect(SHARED_URL).await.unwrap()
}

/// A raw subscription the server has processed (a request to an inbox nobody serves comes
/// back "no responders" only after the server read the SUB before it).
pub(crate) async fn raw_subscribe(
    client: &async_nats::Client,
    subject: String,
) -> async_nats::Subscriber {
    let sub = client.subscribe(subject).await.unwrap();
    round_trip(client).await;
    sub
}

/// Waits until the server has processed everything this client sent before.
pub(crate) async fn round_trip(client: &async_nats::Client) {
    match client.request(client.new_inbox(), "".into()).await {
        Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {}
        other => panic!("a round trip through the server: {other:?}"),
    }
}

/// Headers from pairs; a name given twice gets both values (`append`).
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, *v);
    }
    h
}

/// A JetStream publish as a foreign client makes it; the server's acknowledgement.
pub(crate) async fn js_publish(
    client: &async_nats::Client,
    subject: String,
    h: Option<HeaderMap>,
    payload: &[u8],
) -> async_nats::jetstream::publish::PublishAck {
    let js = async_nats::jetstream::new(client.clone());
    let payload = bytes::Bytes::copy_from_slice(payload);
    let ack = match h {
        Some(h) => js.publish_with_headers(subject, h, payload).await,
        None => js.publish(subject, payload).await,
    };
    ack.unwrap().await.unwrap()
}

/// Deletes the stream named on drop, also when the test panicked (on a thread of its own:
/// a drop cannot await). Never the CI anchor.
pub(crate) struct StreamGuard(pub(crate) String);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        assert_ne!(name, "SWITCHYARD_CI_ANCHOR");
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(c) = async_nats::connect(SHARED_URL).await {
                    let _ = async_nats::jetstream::new(c).delete_stream(&name).await;
                }
            });
        })
        .join();
    }
}

/// A fresh event setup on the shared server: its own stream (`<ns>.#`), transport, and the
/// guard that deletes the stream.
pub(crate) async fn event_transport(setup: &Setup) -> (NatsTransport, StreamGuard) {
    let guard = StreamGuard(setup.namespace.clone());
    let nats = NatsTransport::connect(NatsHarness::shared().config(setup))
        .await
        .unwrap();
    (nats, guard)
}

/// A bus on `nats` whose bus-side dead letters go to the returned store (the transport's
/// own, `MaxDeliveries` / `DecodeFailed`, go to `setup.dead_letters`).
pub(crate) fn bus_on(nats: &NatsTransport) -> (Bus, Arc<InMemoryDeadLetters>) {
    let letters = Arc::new(InMemoryDeadLetters::new(100));
    let bus = Bus::builder()
        .transport(nats.clone())
        .dead_letters(letters.clone())
        .max_attempts(2)
        .retry_delay(Duration::from_millis(5))
        .build()
        .unwrap();
    (bus, letters)
}

/// An event subscription `name` on `pattern` that sends every envelope it handles to the
/// returned channel and acks it.
pub(crate) async fn collect(
    bus: &Bus,
    name: &str,
    pattern: &str,
) -> (Subscription, mpsc::UnboundedReceiver<Envelope>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe(
            name,
            pattern,
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(env);
                    Ok::<_, switchyard::BoxError>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    (sub, rx)
}

/// The next envelope, within [`WAIT`].
pub(crate) async fn next(rx: &mut mpsc::UnboundedReceiver<Envelope>) -> Envelope {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no message within the wait")
        .expect("channel closed")
}

/// A unique core command prefix is not needed: command topics are made unique per test
/// (`<ns>.double`) and sent under the documented default prefix `_sy.cmd`.
pub(crate) fn default_config() -> NatsConfig {
    NatsConfig::new(SHARED_URL)
}

/// Polls `f` every 20 ms until it holds, for at most [`WAIT`] (a server-side state with no
/// event to wait on: consumer info).
pub(crate) async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let until = Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(()) => return,
            Err(last) if Instant::now() >= until => panic!("{what}: still {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The raw message of a raw subscription, within [`WAIT`].
pub(crate) async fn raw_next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("no raw message within the wait")
        .expect("raw subscription ended")
}

/// A header of a raw message as text (the first value).
pub(crate) fn get(msg: &async_nats::Message, name: &str) -> Option<String> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}
