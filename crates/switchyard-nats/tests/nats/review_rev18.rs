//! Review rev18, from the user's side: commands and requests across processes over NATS, plain
//! (core request/reply) and durable (JetStream work queue). Every test has its own command
//! prefixes (and its own work-queue stream) on the shared server, or a server of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard::{
    BoxError, Bus, Command, Ctx, Envelope, Kind, Message, MessageId, Outcome, Pattern, SendError,
    Topic, handler_fn,
};
use switchyard_nats::{NatsConfig, NatsTransport, Storage};
use tokio::sync::mpsc;

mod oversize;

use crate::harness::{
    NatsServer, SHARED_URL, SMALL_MAX_PAYLOAD, SmallPayloadServer, server_binary_available,
    shared_unavailable,
};

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

/// Every test bounded well under 15 s.
const BOUND: Duration = Duration::from_secs(14);

/// Unique prefixes (and stream) of one test.
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
        format!("SY_REV18_{}", self.tag)
    }

    fn plain(&self, url: &str) -> NatsConfig {
        let mut c = NatsConfig::new(url);
        c.command_prefix = format!("_sy.rev18.core.{}", self.tag);
        c
    }

    fn durable(&self, url: &str) -> NatsConfig {
        let mut c = NatsConfig::new(url)
            .with_storage(Storage::Memory)
            .with_max_bytes(16 * 1024 * 1024)
            .with_durable_commands([Pattern::new("calc.#").unwrap()])
            .with_durable_command_stream(self.stream());
        c.command_prefix = format!("_sy.rev18.core.{}", self.tag);
        c.durable_command_prefix = format!("_sy.rev18.durable.{}", self.tag);
        c
    }

    async fn cleanup(&self, url: &str) {
        if let Ok(c) = async_nats::connect(url).await {
            let _ = async_nats::jetstream::new(c)
                .delete_stream(self.stream())
                .await;
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

type Seen = Arc<Mutex<HashMap<u64, Vec<usize>>>>;

/// A handler bus (number `id`) that doubles `n` and records who handled what.
async fn doubler(
    config: NatsConfig,
    id: usize,
    seen: Seen,
) -> (Bus, NatsTransport, switchyard::Subscription) {
    let (bus, nats) = bus(config).await;
    let sub = bus
        .handle(move |c: Double, _ctx| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().entry(c.n).or_default().push(id);
                Ok::<_, String>(c.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    (bus, nats, sub)
}

/// 3 handler buses, 3 sender buses sending 40 commands each at once: every command answered
/// right and handled by exactly one bus.
async fn exactly_once_among_three(durable: bool) {
    let names = Names::new();
    let cfg = || {
        if durable {
            names.durable(SHARED_URL).with_pull_batch(2)
        } else {
            names.plain(SHARED_URL)
        }
    };
    let seen: Seen = Arc::default();
    let mut handlers = Vec::new();
    for id in 0..3 {
        handlers.push(doubler(cfg(), id, seen.clone()).await);
    }
    let mut senders = Vec::new();
    for _ in 0..3 {
        senders.push(bus(cfg()).await);
    }
    let per = 40u64;
    let work = senders.iter().enumerate().flat_map(|(s, (b, _))| {
        (0..per).map(move |i| {
            let n = s as u64 * 1000 + i;
            async move { (n, b.send(Double { n }).await) }
        })
    });
    let results = tokio::time::timeout(BOUND, futures::future::join_all(work))
        .await
        .expect("the commands did not all finish in time");
    for (n, r) in &results {
        assert_eq!(r.as_ref().ok(), Some(&(n * 2)), "command {n}: {r:?}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3 * per as usize,
        "commands handled: {}",
        seen.len()
    );
    for (n, by) in &seen {
        assert_eq!(by.len(), 1, "command {n} handled by {by:?}");
    }
    names.cleanup(SHARED_URL).await;
}

#[tokio::test]
async fn plain_three_handler_buses_concurrent_senders_each_command_handled_once() {
    if shared_unavailable().is_some() {
        return;
    }
    exactly_once_among_three(false).await;
}

#[tokio::test]
async fn durable_three_handler_buses_concurrent_senders_each_command_handled_once() {
    if shared_unavailable().is_some() {
        return;
    }
    exactly_once_among_three(true).await;
}

/// A plain command whose handler bus shuts down gracefully mid-command: the sender (no
/// deadline of its own, so `command_timeout` 30 s) gets a typed answer soon after the
/// shutdown deadline, not a `Timeout` 30 s later (docs: "commands still queued or in flight at
/// its shutdown deadline are answered no-handler").
#[tokio::test]
async fn plain_handler_bus_shut_down_mid_command_answers_the_sender_soon() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (handler_bus, _hn) = bus(names.plain(SHARED_URL)).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let _sub = handler_bus
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
    let (sender, _sn) = bus(names.plain(SHARED_URL)).await;
    let sent = tokio::spawn(async move {
        let start = Instant::now();
        (sender.send(Double { n: 9 }).await, start.elapsed())
    });
    assert_eq!(
        tokio::time::timeout(BOUND, started.recv()).await.unwrap(),
        Some(9)
    );
    let _ = handler_bus.shutdown(Duration::from_millis(300)).await;
    let (result, took) = tokio::time::timeout(Duration::from_secs(8), sent)
        .await
        .expect("the sender is still waiting 8 s after the handler bus shut down")
        .unwrap();
    assert!(
        matches!(
            result,
            Err(SendError::NoHandler { .. } | SendError::NotProcessed(_))
        ),
        "{result:?} after {took:?}"
    );
}

/// A durable command whose handler bus shuts down gracefully mid-command is handed back and
/// handled by the other bus serving the topic, once; the waiting sender gets that result.
#[tokio::test]
async fn durable_handler_bus_shut_down_mid_command_is_handled_by_another_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (stuck_bus, _stn) = bus(names.durable(SHARED_URL)).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let _stuck = stuck_bus
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
    let (sender, _sn) = bus(names.durable(SHARED_URL)).await;
    let sent = tokio::spawn(async move {
        sender
            .request(Double { n: 7 }, Duration::from_secs(13))
            .await
    });
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .unwrap(),
        Some(7)
    );
    let seen: Seen = Arc::default();
    let (_other, _on, _osub) = doubler(names.durable(SHARED_URL), 1, seen.clone()).await;
    let shut = Instant::now();
    let _ = stuck_bus.shutdown(Duration::from_millis(300)).await;
    let r = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("the sender hung")
        .unwrap();
    assert_eq!(r.ok(), Some(14), "after {:?}", shut.elapsed());
    assert_eq!(seen.lock().unwrap().get(&7).cloned(), Some(vec![1]));
    names.cleanup(SHARED_URL).await;
}

/// A durable request's handler sees the sender's deadline (less the time stored), and a
/// command whose deadline passed while stored is not handled: dead-lettered `Expired`
/// (stop 39, fixexpired; it used to be handled with `remaining()` zero).
#[tokio::test]
async fn durable_handler_sees_the_remaining_deadline_and_an_expired_one_as_zero() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (sender, _sn) = bus(names.durable(SHARED_URL)).await;
    // Stored while no handler runs: its deadline (300 ms) passes in the stream.
    let r = sender
        .request(Double { n: 1 }, Duration::from_millis(300))
        .await;
    assert!(matches!(r, Err(SendError::Timeout { .. })), "{r:?}");

    let (handler_bus, _hn) = bus(names.durable(SHARED_URL)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = handler_bus
        .handle(move |c: Double, ctx: Ctx| {
            let tx = tx.clone();
            async move {
                tx.send((c.n, ctx.deadline(), ctx.remaining()))
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(c.n * 2)
            }
        })
        .start()
        .await
        .unwrap();
    let letters = handler_bus.dead_letters().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while letters.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the expired command was not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let letter = &letters.list()[0];
    assert_eq!(
        letter.reason,
        switchyard::DeadLetterReason::Expired,
        "{letter:?}"
    );
    // docs/bus.md, "Expired messages": attempts 0, the handler never ran (h-fixexpire:
    // it used to be the stream's delivery count).
    assert_eq!(letter.attempts, 0, "{letter:?}");

    let before = Instant::now();
    assert_eq!(
        sender
            .request(Double { n: 2 }, Duration::from_secs(8))
            .await
            .unwrap(),
        4
    );
    let after = Instant::now();
    // The handler's first call is this one: the expired command never reached it.
    let (n, deadline, _) = rx.recv().await.unwrap();
    assert_eq!(n, 2);
    let deadline = deadline.expect("no deadline seen across the hop");
    assert!(
        deadline <= after + Duration::from_secs(8),
        "later than the sender's"
    );
    assert!(
        deadline > before + Duration::from_secs(6),
        "far earlier than the sender's"
    );
    names.cleanup(SHARED_URL).await;
}

/// A plain request whose deadline passes while it waits in the far handler's queue: the
/// sender gets `Timeout`, and the handler is not called for it: it is dead-lettered
/// `Expired` when the worker reaches it (stop 39, fixexpired; it used to run with
/// `remaining()` about zero).
#[tokio::test]
async fn plain_command_whose_deadline_passed_in_the_queue_is_not_handled() {
    if shared_unavailable().is_some() {
        return;
    }
    let names = Names::new();
    let (handler_bus, _hn) = bus(names.plain(SHARED_URL)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let _sub = handler_bus
        .handle(move |c: Double, ctx: Ctx| {
            let tx = tx.clone();
            let mut release = release_rx.clone();
            async move {
                let _ = tx.send((c.n, ctx.remaining()));
                if c.n == 0 {
                    let _ = release.wait_for(|r| *r).await;
                }
                Ok::<_, String>(c.n * 2)
            }
        })
        .workers(1)
        .start()
        .await
        .unwrap();
    let (sender, _sn) = bus(names.plain(SHARED_URL)).await;
    let s1 = sender.clone();
    let first =
        tokio::spawn(async move { s1.request(Double { n: 0 }, Duration::from_secs(10)).await });
    let (n, _) = tokio::time::timeout(BOUND, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    // Queued behind the stuck one; its 300 ms pass in the queue.
    let r = sender
        .request(Double { n: 1 }, Duration::from_millis(300))
        .await;
    assert!(matches!(r, Err(SendError::Timeout { .. })), "{r:?}");
    // The handler's side counts the 300 ms from the command's arrival (docs/nats.md: the
    // header carries what is left, not a wall-clock instant), which is later than the
    // send by the trip through the server: under load the stuck call was released while
    // the queued command still had a few ms left, and it was handled (3 of 6 runs). It
    // arrived before the sender gave up, so 300 ms after that its deadline has passed
    // on the handler's side too: this waits for that deadline itself, not for a handler.
    tokio::time::sleep(Duration::from_millis(300)).await;
    release_tx.send(true).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 0);
    let letters = handler_bus.dead_letters().unwrap();
    let until = Instant::now() + BOUND;
    while letters.is_empty() {
        assert!(
            Instant::now() < until,
            "the expired command was not dead-lettered: {:?} {:?}",
            handler_bus.registry(),
            rx.try_recv()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let letter = &letters.list()[0];
    assert_eq!(
        letter.reason,
        switchyard::DeadLetterReason::Expired,
        "{letter:?}"
    );
    // A later command is handled, and it is the handler's next call: the expired one never
    // reached it.
    assert_eq!(
        sender
            .request(Double { n: 2 }, Duration::from_secs(10))
            .await
            .unwrap(),
        4
    );
    let (n, _) = tokio::time::timeout(BOUND, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 2, "the expired command reached the handler");
}

fn variant(r: &Result<switchyard::CommandResult, SendError>) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{e:?}")
            .split([' ', '(', '{'])
            .next()
            .unwrap()
            .to_owned(),
    }
}

async fn register_failures(bus: &Bus) -> Vec<switchyard::Subscription> {
    vec![
        bus.handle_envelope(
            "rejecting",
            "calc.reject",
            handler_fn(|_env: Envelope| async { Ok::<_, BoxError>(Outcome::reject("odd only")) }),
        )
        .start()
        .await
        .unwrap(),
        bus.handle_envelope(
            "failing",
            "calc.fail",
            handler_fn(|_env: Envelope| async { Err::<Outcome, BoxError>("boom".into()) }),
        )
        .start()
        .await
        .unwrap(),
        bus.handle(|c: Double, _ctx| async move { Ok::<_, String>(c.n) })
            .start()
            .await
            .unwrap(),
    ]
}

async fn failures(sender: &Bus) -> Vec<String> {
    let mut out = Vec::new();
    for (topic, body) in [
        ("calc.reject", "1"),
        ("calc.fail", "1"),
        ("calc.double", "not json"),
    ] {
        let r = tokio::time::timeout(
            Duration::from_secs(4),
            sender.request_envelope(
                Envelope::new(Topic::new(topic).unwrap(), body),
                Duration::from_secs(3),
            ),
        )
        .await
        .expect("no answer");
        out.push(format!("{topic}: {}", variant(&r)));
    }
    out
}

/// Reject, failed and undecodable come back across the hop (plain and durable) as the same
/// `SendError` variants as in process.
#[tokio::test]
async fn far_handler_failures_are_the_same_variants_as_in_process() {
    if shared_unavailable().is_some() {
        return;
    }
    let local = Bus::builder()
        .max_attempts(2)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let _l = register_failures(&local).await;
    let expected = failures(&local).await;
    assert_eq!(expected[0], "calc.reject: Rejected");
    assert_eq!(expected[1], "calc.fail: Failed");

    for durable in [false, true] {
        let names = Names::new();
        let cfg = || {
            if durable {
                names.durable(SHARED_URL)
            } else {
                names.plain(SHARED_URL)
            }
        };
        let (handler_bus, _hn) = bus(cfg()).await;
        let _h = register_failures(&handler_bus).await;
        let (sender, _sn) = bus(cfg()).await;
        assert_eq!(failures(&sender).await, expected, "durable: {durable}");
        names.cleanup(SHARED_URL).await;
    }
}

/// Correlation id, causation id and the session header reach the far handler (plain and
/// durable), and the reply keeps the correlation id, as in process.
#[tokio::test]
async fn correlation_causation_and_session_cross_the_hop() {
    if shared_unavailable().is_some() {
        return;
    }
    for durable in [false, true] {
        let names = Names::new();
        let cfg = || {
            if durable {
                names.durable(SHARED_URL)
            } else {
                names.plain(SHARED_URL)
            }
        };
        let (handler_bus, _hn) = bus(cfg()).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _sub = handler_bus
            .handle_envelope(
                "echo",
                "calc.echo",
                handler_fn(move |env: Envelope| {
                    let _ = tx.send((
                        env.correlation_id.to_string(),
                        env.causation_id().map(ToString::to_string),
                        env.header("session-id").map(ToOwned::to_owned),
                    ));
                    async move { Ok::<_, BoxError>(Outcome::reply(env.reply("\"ok\""))) }
                }),
            )
            .start()
            .await
            .unwrap();
        let (sender, _sn) = bus(cfg()).await;
        let mut env = Envelope::new(Topic::new("calc.echo").unwrap(), "1")
            .with_correlation_id(MessageId::parse_opaque("corr-42").unwrap());
        env.set_causation_id(Some(MessageId::parse_opaque("cause-7").unwrap()));
        env.headers_mut().insert("session-id", "s-1");
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            sender.request_envelope(env, Duration::from_secs(4)),
        )
        .await
        .unwrap()
        .unwrap();
        let seen = rx.recv().await.unwrap();
        assert_eq!(
            seen,
            (
                "corr-42".to_owned(),
                Some("cause-7".to_owned()),
                Some("s-1".to_owned())
            ),
            "durable: {durable}"
        );
        let reply = r.reply.expect("no reply");
        assert_eq!(
            reply.correlation_id.to_string(),
            "corr-42",
            "durable: {durable}"
        );
        names.cleanup(SHARED_URL).await;
    }
}

/// The server restarts between two commands: after it is back, commands (plain and durable)
/// are answered again within a few seconds, every failure meanwhile typed and bounded, and no
/// command handled twice.
#[tokio::test]
async fn commands_work_again_after_a_server_restart() {
    if !server_binary_available() {
        return;
    }
    let mut server = NatsServer::start();
    let url = server.url();
    for durable in [false, true] {
        let names = Names::new();
        let cfg = || {
            let c = if durable {
                names.durable(&url).with_storage(Storage::File)
            } else {
                names.plain(&url)
            };
            c.with_command_timeout(Duration::from_secs(2))
        };
        let seen: Seen = Arc::default();
        let (_h, _hn, _sub) = doubler(cfg(), 0, seen.clone()).await;
        let (sender, _sn) = bus(cfg()).await;
        assert_eq!(sender.send(Double { n: 1 }).await.unwrap(), 2);
        server.restart();
        let back = Instant::now();
        let mut n = 10;
        let mut errors = Vec::new();
        loop {
            let start = Instant::now();
            let r = sender.send(Double { n }).await;
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{r:?} took {:?}",
                start.elapsed()
            );
            match r {
                Ok(v) => {
                    assert_eq!(v, n * 2);
                    break;
                }
                Err(e) => errors.push(format!("{e}")),
            }
            assert!(
                back.elapsed() < Duration::from_secs(6),
                "durable {durable}: no command answered 6 s after the restart: {errors:?}"
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (n, by) in seen.lock().unwrap().iter() {
            assert_eq!(by.len(), 1, "command {n} handled {by:?}");
        }
    }
}

/// One of three handler buses shuts down while 120 commands from 2 senders are in flight.
/// Durable: every command is still answered right (what the leaving bus held is handed to the
/// others). Plain: every command gets a typed answer in bounded time (`NoHandler` /
/// `NotProcessed` for what the leaving bus had taken, per docs/nats.md), none a `Timeout`.
/// Both: no command handled by two buses where the first finished it.
async fn one_of_three_leaves_under_load(durable: bool) {
    let names = Names::new();
    let cfg = || {
        if durable {
            names.durable(SHARED_URL).with_pull_batch(4)
        } else {
            names.plain(SHARED_URL)
        }
    };
    let seen: Seen = Arc::default();
    let mut handlers = Vec::new();
    for id in 0..3 {
        handlers.push(doubler(cfg(), id, seen.clone()).await);
    }
    let (s1, _n1) = bus(cfg()).await;
    let (s2, _n2) = bus(cfg()).await;
    let senders = [s1, s2];
    let per = 60u64;
    let work = senders.iter().enumerate().flat_map(|(s, b)| {
        (0..per).map(move |i| {
            let n = s as u64 * 1000 + i;
            async move { (n, b.request(Double { n }, Duration::from_secs(10)).await) }
        })
    });
    let all = futures::future::join_all(work);
    let leaving = handlers[0].0.clone();
    let leave = async move {
        // Once some commands are handled, bus 0 leaves.
        let start = Instant::now();
        while seen_len(&seen) < 10 && start.elapsed() < Duration::from_secs(5) {
            tokio::task::yield_now().await;
        }
        let _ = leaving.shutdown(Duration::from_millis(300)).await;
        seen
    };
    let (results, seen) = tokio::time::timeout(BOUND, futures::future::join(all, leave))
        .await
        .expect("commands not all answered in time");
    let mut typed_failures = 0;
    for (n, r) in &results {
        match r {
            Ok(v) => assert_eq!(*v, n * 2),
            Err(SendError::NoHandler { .. } | SendError::NotProcessed(_)) if !durable => {
                typed_failures += 1;
            }
            Err(e) => panic!("durable {durable}: command {n}: {e:?}"),
        }
    }
    let seen = seen.lock().unwrap().clone();
    for (n, by) in &seen {
        assert_eq!(
            by.len(),
            1,
            "durable {durable}: command {n} handled by {by:?}"
        );
    }
    eprintln!(
        "durable {durable}: {typed_failures} typed failures, {} handled",
        seen.len()
    );
    names.cleanup(SHARED_URL).await;
}

fn seen_len(seen: &Seen) -> usize {
    seen.lock().unwrap().len()
}

#[tokio::test]
async fn plain_one_of_three_handler_buses_leaves_under_load_every_sender_answered() {
    if shared_unavailable().is_some() {
        return;
    }
    one_of_three_leaves_under_load(false).await;
}

#[tokio::test]
async fn durable_one_of_three_handler_buses_leaves_under_load_every_command_answered() {
    if shared_unavailable().is_some() {
        return;
    }
    one_of_three_leaves_under_load(true).await;
}
