//! Issue 17, item 1: durable commands. The commands of topics listed in
//! `NatsConfig::durable_commands` go through a JetStream work-queue stream, so they survive
//! the handler processes being down. Every test has its own command prefixes and its own
//! stream (in memory, deleted at the end).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Kind, Message, MessageId, Pattern, SendError};
use switchyard_nats::{NatsConfig, NatsTransport, Storage};
use tokio::sync::mpsc;

use crate::harness::{SHARED_URL, shared_unavailable};

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

/// Names no other test (or run) shares: command prefixes and the work-queue stream.
#[derive(Clone)]
struct Names {
    tag: String,
}

impl Names {
    fn new() -> Self {
        Self {
            tag: MessageId::new().to_string(),
        }
    }

    fn stream(&self) -> String {
        format!("SY_DCMD_TEST_{}", self.tag)
    }

    /// A config with `calc.double` durable.
    fn config(&self) -> NatsConfig {
        let mut c = NatsConfig::new(SHARED_URL)
            .with_storage(Storage::Memory)
            .with_durable_commands([Pattern::new("calc.#").unwrap()])
            .with_durable_command_stream(self.stream());
        c.command_prefix = format!("_sy.dcmdtest.core.{}", self.tag);
        c.durable_command_prefix = format!("_sy.dcmdtest.durable.{}", self.tag);
        c
    }

    /// Deletes the stream (and so its consumers).
    async fn cleanup(&self) {
        let js = async_nats::jetstream::new(async_nats::connect(SHARED_URL).await.unwrap());
        let _ = js.delete_stream(self.stream()).await;
    }

    /// Commands still in the work-queue stream, and how many it ever stored.
    async fn state(&self) -> (u64, u64) {
        let js = async_nats::jetstream::new(async_nats::connect(SHARED_URL).await.unwrap());
        let mut stream = js.get_stream(self.stream()).await.unwrap();
        let state = &stream.info().await.unwrap().state;
        (state.messages, state.last_sequence)
    }

    /// Commands still in the work-queue stream.
    async fn stored(&self) -> u64 {
        self.state().await.0
    }

    /// Waits (bounded) until the stream holds no command.
    async fn until_empty(&self) {
        let start = Instant::now();
        loop {
            let n = self.stored().await;
            if n == 0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{n} command(s) still in the stream"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn bus(config: NatsConfig) -> (Bus, NatsTransport) {
    let nats = NatsTransport::connect(config).await.unwrap();
    let bus = Bus::builder()
        .transport(nats.clone())
        .max_attempts(2)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    (bus, nats)
}

/// A handler bus that doubles `n`, telling `tx` its `name` for every command it handles.
async fn doubler(
    config: NatsConfig,
    name: &'static str,
    tx: mpsc::UnboundedSender<(&'static str, u64)>,
) -> (Bus, NatsTransport, switchyard::Subscription) {
    let (bus, nats) = bus(config).await;
    let sub = bus
        .handle(move |c: Double, _ctx| {
            let tx = tx.clone();
            async move {
                tx.send((name, c.n)).map_err(|e| e.to_string())?;
                Ok::<_, String>(c.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    (bus, nats, sub)
}

#[tokio::test]
async fn a_durable_command_is_handled_by_another_bus_and_leaves_the_stream() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_h, _hn, _sub) = doubler(names.config(), "handler", tx).await;
    let (sender, _sn) = bus(names.config()).await;
    assert_eq!(sender.send(Double { n: 21 }).await.unwrap(), 42);
    assert_eq!(
        sender
            .request(Double { n: 5 }, Duration::from_secs(5))
            .await
            .unwrap(),
        10
    );
    assert_eq!(rx.recv().await, Some(("handler", 21)));
    assert_eq!(rx.recv().await, Some(("handler", 5)));
    // Went through the stream, handled and acknowledged: the work queue has let go of both.
    names.until_empty().await;
    assert_eq!(names.state().await.1, 2, "both commands were stored");
    names.cleanup().await;
}

/// No handler process runs: the sender gets `Timeout` at its deadline (never `NoHandler`),
/// the command stays stored, and the first handler bus to start handles it, once; a sender
/// still waiting then gets its result.
#[tokio::test]
async fn a_command_sent_while_no_handler_runs_is_handled_when_one_starts() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (sender, _sn) = bus(names
        .config()
        .with_command_timeout(Duration::from_millis(300)))
    .await;
    let start = Instant::now();
    let r = sender.send(Double { n: 1 }).await;
    assert!(
        matches!(r, Err(SendError::Timeout { deadline }) if deadline == Duration::from_millis(300)),
        "{r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(names.stored().await, 1, "the command is kept");

    // A second sender waits (20 s) while no handler runs yet.
    let (waiting, _wn) = bus(names.config()).await;
    let pending = tokio::spawn(async move {
        waiting
            .request(Double { n: 2 }, Duration::from_secs(20))
            .await
    });
    // It is stored before the handler starts (its sender is waiting on the reply).
    let stored = Instant::now();
    while names.stored().await < 2 {
        assert!(
            stored.elapsed() < Duration::from_secs(5),
            "second command not stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_h, _hn, _sub) = doubler(names.config(), "late", tx).await;
    assert_eq!(pending.await.unwrap().unwrap(), 4);
    let mut seen = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    seen.sort();
    assert_eq!(seen, vec![("late", 1), ("late", 2)]);
    names.until_empty().await;
    assert!(rx.try_recv().is_err(), "a command was handled twice");
    names.cleanup().await;
}

#[tokio::test]
async fn two_handler_buses_handle_each_durable_command_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Small pulls, so that both buses get work.
    let (_h1, _n1, _s1) = doubler(names.config().with_pull_batch(2), "one", tx.clone()).await;
    let (_h2, _n2, _s2) = doubler(names.config().with_pull_batch(2), "two", tx).await;
    let (sender, _sn) = bus(names.config()).await;
    let total = 60u64;
    let sends = (0..total).map(|n| {
        let sender = sender.clone();
        async move { sender.send(Double { n }).await.unwrap() }
    });
    let results = futures::future::join_all(sends).await;
    assert_eq!(results, (0..total).map(|n| n * 2).collect::<Vec<_>>());
    let mut seen = HashSet::new();
    let mut by = [0u32; 2];
    for _ in 0..total {
        let (name, n) = rx.recv().await.unwrap();
        assert!(seen.insert(n), "command {n} handled twice");
        by[usize::from(name == "two")] += 1;
    }
    names.until_empty().await;
    assert_eq!(
        names.state().await.1,
        total,
        "every command went through the stream"
    );
    assert!(rx.try_recv().is_err(), "more handler calls than commands");
    assert!(by[0] > 0 && by[1] > 0, "one bus did all the work: {by:?}");
    names.cleanup().await;
}

/// The handler fails on every attempt: the handler's bus retries it (`max_attempts(2)`),
/// dead-letters it, and the sender gets `Failed` with the attempts; the stream does not
/// redeliver it (it is terminated, not handed back).
#[tokio::test]
async fn a_failing_durable_command_follows_the_retry_and_dead_letter_rules() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (handler_bus, _hn) = bus(names.config()).await;
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let _sub = handler_bus
        .handle(move |c: Double, _ctx| {
            c2.fetch_add(1, Ordering::SeqCst);
            async move { Err::<u64, _>(format!("cannot double {}", c.n)) }
        })
        .start()
        .await
        .unwrap();
    let (sender, _sn) = bus(names.config()).await;
    match sender.send(Double { n: 3 }).await {
        Err(SendError::Failed { error, attempts }) => {
            assert!(error.contains("cannot double 3"), "{error}");
            assert_eq!(attempts, 2);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let letters = handler_bus.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    // Settled for good: gone from the work queue, so never redelivered.
    names.until_empty().await;
    assert_eq!(
        names.state().await.1,
        1,
        "the command went through the stream"
    );
    // A command after it is handled normally: the failed one did not come back first.
    assert!(matches!(
        sender.send(Double { n: 4 }).await,
        Err(SendError::Failed { attempts: 2, .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    names.cleanup().await;
}

/// The handler's process dies mid-command (its runtime and connection vanish without a
/// word): the command is not lost, nor handled by another bus while the first still holds
/// it; once the server notices (the ack wait), another handler bus gets it, and the waiting
/// sender gets that bus's result.
#[tokio::test]
async fn a_command_whose_handler_process_dies_is_redelivered_to_another() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let config = || names.config().with_ack_wait(Duration::from_secs(2));

    // The first handler process: its own runtime on its own thread, stuck in the handler.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = std::sync::mpsc::channel::<()>();
    let doomed_config = config();
    let doomed = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (bus, nats) = bus(doomed_config).await;
            let sub = bus
                .handle(move |c: Double, _ctx| {
                    let started_tx = started_tx.clone();
                    async move {
                        let _ = started_tx.send(c.n);
                        std::future::pending::<()>().await;
                        Ok::<u64, String>(0)
                    }
                })
                .start()
                .await
                .unwrap();
            // Kept alive until the runtime dies with them.
            std::mem::forget((bus, nats, sub));
        });
        die_rx.recv().unwrap();
        // Every task stops where it is and the connection is dropped: no ack, no nack.
        rt.shutdown_background();
    });

    let (sender, _sn) = bus(config()).await;
    let sent = tokio::spawn(async move {
        sender
            .request(Double { n: 7 }, Duration::from_secs(20))
            .await
    });
    let got = tokio::task::spawn_blocking(move || {
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(got, 7);

    // A second handler bus meanwhile: the command is in progress at the first (kept so past
    // the ack wait), so it does not get it until the first dies.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_h, _hn, _sub) = doubler(config(), "survivor", tx).await;
    let quiet = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    assert!(
        quiet.is_err(),
        "handled twice while the first bus held it: {quiet:?}"
    );

    die_tx.send(()).unwrap();
    doomed.join().unwrap();
    let died = Instant::now();
    assert_eq!(sent.await.unwrap().unwrap(), 14);
    assert!(
        died.elapsed() < Duration::from_secs(10),
        "{:?}",
        died.elapsed()
    );
    assert_eq!(rx.recv().await, Some(("survivor", 7)));
    names.until_empty().await;
    assert!(rx.try_recv().is_err());
    names.cleanup().await;
}

/// Durable commands need the prefixes apart: one inside the other would make the stream
/// capture core requests.
#[tokio::test]
async fn overlapping_durable_prefix_is_refused_at_connect() {
    let mut c = NatsConfig::new(SHARED_URL);
    c.durable_command_prefix = format!("{}.durable", c.command_prefix);
    match NatsTransport::connect(c).await {
        Err(switchyard_nats::ConnectError::InvalidConfig(why)) => {
            assert!(why.contains("durable_command_prefix"), "{why}");
        }
        other => panic!("expected InvalidConfig, got {:?}", other.map(|_| ())),
    }
}

/// A durable command goes into a stream, where JetStream refuses a header block over 64 KiB
/// (error 10097): refused before it is sent, as `TooLarge` naming the header block, and
/// nothing is stored (review rev41's limit, on the durable path).
#[tokio::test]
async fn a_durable_command_with_a_header_block_over_jetstreams_limit_is_too_large() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    let (_h, _hn, _sub) = doubler(names.config(), "handler", tx).await;
    let (sender, _sn) = bus(names.config()).await;
    let command =
        switchyard::Envelope::new(switchyard::Topic::new("calc.double").unwrap(), r#"{"n":1}"#)
            .with_kind(Kind::Command)
            .with_header("X-Big", "o".repeat(70 * 1024).as_str());
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(30), sender.send_envelope(command))
        .await
        .expect("send hung");
    match res {
        Err(SendError::TooLarge(e)) => {
            assert_eq!(e.limit, 65_535, "{e}");
            assert!(e.to_string().contains("header block"), "{e}");
        }
        other => panic!(
            "not TooLarge after {:?}: {:?}",
            started.elapsed(),
            other.map(|_| ())
        ),
    }
    assert_eq!(names.state().await.1, 0, "nothing was stored");
    // The next command of a normal size still goes through.
    assert_eq!(sender.send(Double { n: 4 }).await.unwrap(), 8);
    names.cleanup().await;
}
