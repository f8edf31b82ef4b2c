//! Issue 19, item 6: with the contracts `Encryption` as the bus's transport codec, what
//! JetStream stores is ciphertext (read back raw with async-nats), while the handler gets the
//! plaintext.

use std::time::Duration;

use switchyard::{Bus, Envelope, handler_fn};
use switchyard_conformance::Setup;
use switchyard_contracts::{Encryption, KEY_HEADER, Keyring};
use switchyard_nats::NatsTransport;
use tokio::sync::mpsc;

use crate::harness::{NatsHarness, SHARED_URL, shared_unavailable};

const WAIT: Duration = Duration::from_secs(10);
const MARKER: &str = "MARKER-5500-0000-0000-0004";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Publishes a payload holding the marker on `<namespace>.cards`, waits for the handler,
/// and returns what the handler got and every message the stream stores, read raw.
async fn publish_and_read_stream(
    encryption: Option<Encryption>,
) -> (Envelope, Vec<async_nats::jetstream::message::StreamMessage>) {
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let nats = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let mut builder = Bus::builder().transport(nats);
    if let Some(e) = encryption {
        builder = builder.transport_codec(e);
    }
    let bus = builder.build().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(
            "cards",
            setup.all().unwrap().as_str(),
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move { tx.send(env).map_err(|e| e.to_string()) }
            }),
        )
        .start()
        .await
        .unwrap();
    let topic = setup.topic("cards").unwrap();
    let payload = format!(r#"{{"card": "{MARKER}", "cents": 1250}}"#);
    bus.publish_envelope(Envelope::new(topic, payload))
        .await
        .unwrap();
    let handled = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    bus.shutdown(WAIT).await.unwrap();

    let js = async_nats::jetstream::new(async_nats::connect(SHARED_URL).await.unwrap());
    let mut stream = js.get_stream(&setup.namespace).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut stored = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        stored.push(stream.get_raw_message(seq).await.unwrap());
    }
    let _ = js.delete_stream(&setup.namespace).await;
    (handled, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_stores_ciphertext_and_the_handler_gets_plaintext() {
    if shared_unavailable().is_some() {
        return;
    }
    // Without encryption the raw read finds the marker: the check below can fail.
    let (handled, stored) = publish_and_read_stream(None).await;
    assert!(contains(&handled.payload, MARKER.as_bytes()));
    assert_eq!(stored.len(), 1);
    assert!(contains(&stored[0].payload, MARKER.as_bytes()));

    let keys = Keyring::new().with_key("k1", &[1; 32]).unwrap();
    let encryption = Encryption::new(keys).unwrap().topic("#").unwrap();
    let (handled, stored) = publish_and_read_stream(Some(encryption)).await;
    assert!(
        contains(&handled.payload, MARKER.as_bytes()),
        "plaintext for the handler"
    );
    assert_eq!(handled.header(KEY_HEADER), None);
    assert_eq!(stored.len(), 1);
    let raw = &stored[0];
    assert!(
        !contains(&raw.payload, MARKER.as_bytes()),
        "the stream holds ciphertext"
    );
    assert_eq!(
        raw.headers.get(KEY_HEADER).map(|v| v.as_str()),
        Some("k1"),
        "the key id travels as a NATS header"
    );
}
