//! A durable command carries its sender's absolute deadline (`Sy-Deadline-At`) as a core
//! command does, and the serving side honours it: a command stored only after its sender
//! gave up (written while the server was stalled, stored once it went on) is dead-lettered
//! `Expired` and not run, although `Sy-Deadline-Ms` counted from its (late) storage time has
//! not passed yet.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, DeadLetterReason, Kind, Message, MessageId, Pattern, SendError};
use switchyard_nats::{NatsConfig, NatsTransport, Storage};
use tokio::sync::mpsc;

use crate::harness::{NatsServer, server_binary_available};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Double {
    n: u64,
}

impl Message for Double {
    const TOPIC: &'static str = "calc.double";
    const KIND: Kind = Kind::Command;
}

impl Command for Double {
    type Output = u64;
}

/// The sender's deadline for the command sent during the outage.
const DEADLINE: Duration = Duration::from_secs(3);

/// `calc.#` durable, in a file-storage work-queue stream (it outlives the restart).
fn config(url: &str, tag: &str) -> NatsConfig {
    let mut c = NatsConfig::new(url)
        .with_storage(Storage::File)
        .with_max_age(Duration::from_secs(600))
        .with_durable_commands([Pattern::new("calc.#").unwrap()])
        .with_durable_command_stream(format!("SY_DDEADLINE_{tag}"));
    c.durable_command_prefix = format!("_sy.ddeadline.{tag}");
    c
}

async fn bus(config: NatsConfig) -> (Bus, NatsTransport) {
    let nats = NatsTransport::connect(config).await.unwrap();
    let bus = Bus::builder()
        .transport(nats.clone())
        .max_attempts(1)
        .build()
        .unwrap();
    (bus, nats)
}

/// Commands the work-queue stream holds.
async fn stored(url: &str, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_command_stored_after_its_senders_deadline_is_dead_lettered_not_run() {
    if !server_binary_available() {
        return;
    }
    let server = NatsServer::start();
    let url = server.url();
    let tag = MessageId::new().to_string();
    let stream = format!("SY_DDEADLINE_{tag}");
    let (sender, sender_nats) = bus(config(&url, &tag)).await;

    // The server stalls (SIGSTOP: the connection stays up, so the command is written);
    // the sender is told `Timeout` at its deadline.
    server.pause();
    let sent = Instant::now();
    let r = sender.request(Double { n: 7 }, DEADLINE).await;
    assert!(matches!(r, Err(SendError::Timeout { .. })), "{r:?}");
    // It goes on and stores the command now, after its sender's deadline.
    server.resume();
    let wait = Instant::now();
    while stored(&url, &stream).await == 0 {
        assert!(
            wait.elapsed() < Duration::from_secs(20),
            "the command was never stored (health {:?})",
            sender_nats.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored_after = sent.elapsed();
    assert!(stored_after > DEADLINE, "stored after {stored_after:?}");

    // A handler process starts now, well within `Sy-Deadline-Ms` of the storage time.
    let (handler, _hn) = bus(config(&url, &tag)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = handler
        .handle(move |c: Double, _ctx| {
            let tx = tx.clone();
            async move {
                tx.send(c.n).map_err(|e| e.to_string())?;
                Ok::<_, String>(c.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let letters = handler.dead_letters().unwrap();
    let wait = Instant::now();
    loop {
        if let Ok(n) = rx.try_recv() {
            panic!(
                "the handler ran command n={n}, stored {stored_after:?} after it was sent with \
                 a {DEADLINE:?} deadline whose sender had been told Timeout; dead letters: {:?}",
                letters.list()
            );
        }
        if !letters.is_empty() {
            break;
        }
        assert!(
            wait.elapsed() < Duration::from_secs(10),
            "neither run nor dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let letter = &letters.list()[0];
    assert_eq!(letter.reason, DeadLetterReason::Expired, "{letter:?}");
    assert!(letter.error.contains("before it arrived"), "{letter:?}");
    assert_eq!(letter.attempts, 0, "{letter:?}");

    // The next command is served, and it is the handler's first call.
    assert_eq!(
        sender
            .request(Double { n: 8 }, Duration::from_secs(10))
            .await
            .unwrap(),
        16
    );
    assert_eq!(rx.recv().await, Some(8));
    assert!(rx.try_recv().is_err(), "the expired command ran after all");
    drop(server);
}
