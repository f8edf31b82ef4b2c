//! A command from another NATS client that nobody can answer: published (not requested), so
//! it arrives without a reply subject. Published on a topic's stream subject it is never
//! handled and dead-lettered `Rejected` with the reason in words; published on the command
//! subject (`_sy.cmd.<topic>`, a plain `nats pub`) it is handled by its one handler as a
//! fire-and-forget command, and only its failure is dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use switchyard::{Bus, DeadLetterReason, Envelope, InMemoryDeadLetters, handler_fn};
use switchyard_conformance::Setup;
use switchyard_nats::NatsTransport;
use tokio::sync::mpsc;

use crate::harness::{NatsHarness, SHARED_URL, shared_unavailable};
use crate::interop::foreign_publish;

async fn delete_stream(name: &str) {
    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let _ = async_nats::jetstream::new(client).delete_stream(name).await;
}

/// A `Sy-Kind: command` published on a stream subject cannot be answered (nobody waits on a
/// reply subject): dead-lettered `Rejected`, saying so and what to do, never handled.
#[tokio::test]
async fn a_command_published_on_a_stream_is_rejected_as_unanswerable() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let nats = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let letters = Arc::new(InMemoryDeadLetters::new(100));
    let bus = Bus::builder()
        .transport(nats.clone())
        .dead_letters(letters.clone())
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
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
    let topic = setup.topic("orders.place").unwrap().to_string();
    foreign_publish(topic.clone(), &[("Sy-Kind", "command")], "{}").await;
    foreign_publish(topic, &[], "event").await;
    // The stream is ordered: once the event after it is handled, the command was taken.
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"event", "a command reached the event handler");
    bus.run_until_idle().await;
    let dl = letters.list();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].reason, DeadLetterReason::Rejected, "{dl:?}");
    assert!(
        dl[0].error.contains("without a reply subject") && dl[0].error.contains("_sy.cmd."),
        "the reason in words, and what to do: {}",
        dl[0].error
    );
    assert!(rx.try_recv().is_err(), "a command reached an event handler");
    drop(sub);
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
    delete_stream(&setup.namespace).await;
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Charge {
    cents: u64,
}

impl switchyard::Message for Charge {
    const TOPIC: &'static str = "billing.charge";
    const KIND: switchyard::Kind = switchyard::Kind::Command;
}

impl switchyard::Command for Charge {
    type Output = u64;
}

/// A plain `nats pub` (no reply subject) to the command subject is handled once by the one
/// handler, fire-and-forget; its failure, which no sender can be told, is dead-lettered
/// (`HandlerFailed`, with the handler's error) instead of being lost.
#[tokio::test]
async fn a_command_published_without_a_reply_subject_is_handled_and_its_failure_dead_lettered() {
    if shared_unavailable().is_some() {
        return;
    }
    let prefix = format!("_sy.cmdtest.{}", switchyard::MessageId::new());
    let mut config = switchyard_nats::NatsConfig::new(SHARED_URL);
    config.command_prefix = prefix.clone();
    let nats = NatsTransport::connect(config).await.unwrap();
    let letters = Arc::new(InMemoryDeadLetters::new(100));
    let bus = Bus::builder()
        .transport(nats.clone())
        .dead_letters(letters.clone())
        .max_attempts(2)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .handle(move |c: Charge, _ctx| {
            let tx = tx.clone();
            async move {
                tx.send(c.cents).map_err(|e| e.to_string())?;
                if c.cents == 0 {
                    return Err("nothing to charge".to_owned());
                }
                Ok::<_, String>(c.cents)
            }
        })
        .start()
        .await
        .unwrap();
    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let subject = format!("{prefix}.billing.charge");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sy-Kind", "command");
    client
        .publish_with_headers(subject.clone(), headers.clone(), r#"{"cents":250}"#.into())
        .await
        .unwrap();
    client
        .publish_with_headers(subject, headers, r#"{"cents":0}"#.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut seen = Vec::new();
    // 250 once, 0 twice (two attempts).
    while seen.len() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("handled so far: {seen:?}"))
            .unwrap();
        seen.push(n);
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 0, 250]);
    bus.run_until_idle().await;
    let dl = letters.list();
    assert_eq!(dl.len(), 1, "only the failure is dead-lettered: {dl:?}");
    assert_eq!(dl[0].reason, DeadLetterReason::HandlerFailed, "{dl:?}");
    assert!(dl[0].error.contains("nothing to charge"), "{}", dl[0].error);
    assert_eq!(&dl[0].envelope.payload[..], br#"{"cents":0}"#);
}
