//! Issue 17, item 1: commands and requests across processes over NATS. Every test uses its
//! own command subject prefix, so tests (and other runs) on the shared server never meet.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Kind, Message, SendError};
use switchyard_nats::{NatsConfig, NatsTransport};
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

/// A config whose commands no other test sees.
fn config(prefix: &str) -> NatsConfig {
    let mut c = NatsConfig::new(SHARED_URL);
    c.command_prefix = prefix.to_owned();
    c
}

fn prefix() -> String {
    format!("_sy.cmdtest.{}", switchyard::MessageId::new())
}

/// A bus on its own connection.
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
async fn a_command_sent_on_one_bus_is_handled_on_another() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_handler_bus, _hn, _sub) = doubler(config(&p), "handler", tx).await;
    let (sender, _sn) = bus(config(&p)).await;
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
}

#[tokio::test]
async fn a_local_handler_is_preferred() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (a, _an, _asub) = doubler(config(&p), "a", tx.clone()).await;
    let (_b, _bn, _bsub) = doubler(config(&p), "b", tx).await;
    for n in 0..20 {
        assert_eq!(a.send(Double { n }).await.unwrap(), n * 2);
        assert_eq!(
            rx.recv().await,
            Some(("a", n)),
            "a command went to the other bus"
        );
    }
}

#[tokio::test]
async fn a_typed_failure_comes_back_typed() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (handler_bus, _hn) = bus(config(&p)).await;
    let _sub = handler_bus
        .handle(|c: Double, _ctx| async move { Err::<u64, _>(format!("cannot double {}", c.n)) })
        .start()
        .await
        .unwrap();
    let (sender, _sn) = bus(config(&p)).await;
    match sender.send(Double { n: 3 }).await {
        Err(SendError::Failed { error, attempts }) => {
            assert!(error.contains("cannot double 3"), "{error}");
            // The handler bus makes two attempts (max_attempts(2)) and says so.
            assert_eq!(attempts, 2);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn two_handler_buses_share_the_work_each_command_handled_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_h1, _n1, _s1) = doubler(config(&p), "one", tx.clone()).await;
    let (_h2, _n2, _s2) = doubler(config(&p), "two", tx).await;
    let (sender, _sn) = bus(config(&p)).await;
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
    assert!(rx.try_recv().is_err(), "more handler calls than commands");
    assert!(by[0] > 0 && by[1] > 0, "one bus did all the work: {by:?}");
}

#[tokio::test]
async fn no_handler_anywhere_fails_fast() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (sender, _sn) = bus(config(&p)).await;
    let start = Instant::now();
    let r = sender
        .request(Double { n: 1 }, Duration::from_secs(20))
        .await;
    assert!(matches!(r, Err(SendError::NoHandler { .. })), "{r:?}");
    let r = sender.send(Double { n: 1 }).await;
    assert!(matches!(r, Err(SendError::NoHandler { .. })), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_dropped_handler_stops_serving() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (tx, _rx) = mpsc::unbounded_channel();
    let (_h, _hn, sub) = doubler(config(&p), "h", tx).await;
    let (sender, _sn) = bus(config(&p)).await;
    assert_eq!(sender.send(Double { n: 2 }).await.unwrap(), 4);
    drop(sub);
    // The unsubscribe reaches the server asynchronously: NoHandler arrives within a bound,
    // and never anything but NoHandler.
    let start = Instant::now();
    loop {
        match sender
            .request(Double { n: 2 }, Duration::from_secs(5))
            .await
        {
            Err(SendError::NoHandler { .. }) => break,
            Ok(4) => assert!(start.elapsed() < Duration::from_secs(5), "still served"),
            other => panic!("expected NoHandler, got {other:?}"),
        }
        tokio::task::yield_now().await;
    }
}

/// The handler's process goes away while it handles a command: the sender gets an answer
/// (not processed, no handler or a timeout), never a hang.
#[tokio::test]
async fn a_handler_bus_closed_mid_command_never_hangs_the_sender() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (handler_bus, handler_nats) = bus(config(&p)).await;
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
    let (sender, _sn) = bus(config(&p).with_command_timeout(Duration::from_secs(3))).await;
    let sent = tokio::spawn(async move {
        let start = Instant::now();
        (sender.send(Double { n: 9 }).await, start.elapsed())
    });
    assert_eq!(started.recv().await, Some(9));
    let report = handler_bus.shutdown(Duration::from_millis(200)).await;
    drop(report);
    let _ = switchyard::Publisher::close(
        &handler_nats,
        std::time::Instant::now() + Duration::from_secs(1),
    )
    .await;
    drop(handler_bus);
    let (result, took) = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .expect("the sender hung")
        .unwrap();
    assert!(
        matches!(
            result,
            Err(SendError::NotProcessed(_)
                | SendError::NoHandler { .. }
                | SendError::Timeout { .. })
        ),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The deadline travels with the command and the handler side enforces it too: a raw
/// client asks with a long wait of its own but `Sy-Deadline-Ms: 150`; the handler never
/// finishes, and the handler bus answers `timeout` once the 150 ms are up.
#[tokio::test]
async fn the_deadline_travels_and_is_enforced_by_the_handler_side() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (handler_bus, _hn) = bus(config(&p)).await;
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    let _sub = handler_bus
        .handle(move |_c: Double, _ctx| {
            c2.fetch_add(1, Ordering::SeqCst);
            async move {
                std::future::pending::<()>().await;
                Ok::<u64, String>(0)
            }
        })
        .start()
        .await
        .unwrap();
    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sy-Kind", "request");
    headers.insert("Sy-Deadline-Ms", "150");
    let start = Instant::now();
    let reply = client
        .send_request(
            format!("{p}.calc.double"),
            async_nats::Request::new()
                .headers(headers)
                .payload("{\"n\":1}".into())
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let took = start.elapsed();
    let h = reply.headers.unwrap();
    assert_eq!(h.get("Sy-Status").map(|v| v.as_str()), Some("timeout"));
    assert_eq!(h.get("Sy-Deadline-Ms").map(|v| v.as_str()), Some("150"));
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // And through the bus: the sender's own deadline gives it `Timeout` with that deadline.
    let (sender, _sn) = bus(config(&p)).await;
    let r = sender
        .request(Double { n: 1 }, Duration::from_millis(200))
        .await;
    assert!(
        matches!(r, Err(SendError::Timeout { deadline }) if deadline == Duration::from_millis(200)),
        "{r:?}"
    );
}

/// Issue 17, item 5: on NATS, `publish_and_wait` and handler priority groups are refused
/// with a typed error that says why and what to use instead.
#[tokio::test]
async fn publish_and_wait_and_priority_groups_are_refused_with_what_to_use_instead() {
    if shared_unavailable().is_some() {
        return;
    }
    let (bus, _n) = bus(config(&prefix())).await;
    match bus.publish_and_wait(Double { n: 1 }).await {
        Err(switchyard::PublishError::Transport(e)) => {
            assert_eq!(e.kind, switchyard::TransportErrorKind::Unsupported);
            assert!(e.message.contains("bus.request"), "{}", e.message);
        }
        other => panic!("expected an Unsupported transport error, got {other:?}"),
    }
    let grouped = bus
        .subscribe(
            "tiered",
            "calc.#",
            switchyard::handler_fn(|_env: switchyard::Envelope| async {
                Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack)
            }),
        )
        .handler_priority(1)
        .start()
        .await;
    match grouped {
        Err(switchyard::SubscribeError::InvalidConfig(why)) => {
            assert!(
                why.contains("in-memory bus") && why.contains("instead"),
                "{why}"
            );
        }
        other => panic!("expected InvalidConfig, got {:?}", other.map(|_| ())),
    }
}

/// Replies `n` on every command it gets.
fn replies(n: u64) -> switchyard::BoxHandler {
    switchyard::handler_fn(move |env: switchyard::Envelope| async move {
        let reply = env.reply(n.to_string());
        Ok::<_, std::convert::Infallible>(switchyard::Outcome::reply(reply))
    })
}

/// Once registering a handler has returned, a command sent from another connection reaches
/// it: registration waits until the server has the interest (a flush only writes the socket,
/// and the other connection's request could be routed before the server read the
/// subscription, answering no responders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_is_reachable_from_another_connection_once_registered() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (handler_bus, _hn) = bus(config(&p)).await;
    let (sender, _sn) = bus(config(&p)).await;
    for i in 0..40u64 {
        let topic = format!("calc.reach{i}");
        handler_bus
            .handle_envelope(&format!("h{i}"), &topic, replies(i))
            .start()
            .await
            .unwrap()
            .detach();
        let r = sender
            .send_envelope(switchyard::Envelope::new(
                switchyard::Topic::new(&topic).unwrap(),
                "",
            ))
            .await;
        let reply = r.unwrap_or_else(|e| panic!("command {i}: {e:?}"));
        assert_eq!(
            reply.reply.unwrap().payload.as_ref(),
            i.to_string().as_bytes()
        );
    }
}

/// Once a handler bus has shut down, no command is routed to it any more: the sender gets
/// `NoHandler` at once, never a wait for the command timeout (the unsubscriptions are
/// confirmed by the server before the transport's close returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_handler_bus_shut_down_the_sender_gets_no_handler_at_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (sender, _sn) = bus(config(&p).with_command_timeout(Duration::from_secs(20))).await;
    for i in 0..10u64 {
        let (handler_bus, _hn) = bus(config(&p)).await;
        let topic = switchyard::Topic::new(&format!("calc.gone{i}")).unwrap();
        handler_bus
            .handle_envelope("h", topic.as_str(), replies(i))
            .start()
            .await
            .unwrap()
            .detach();
        sender
            .send_envelope(switchyard::Envelope::new(topic.clone(), ""))
            .await
            .unwrap();
        handler_bus.shutdown(Duration::from_secs(5)).await.unwrap();
        let start = Instant::now();
        let r = sender
            .send_envelope(switchyard::Envelope::new(topic.clone(), ""))
            .await;
        assert!(matches!(r, Err(SendError::NoHandler { .. })), "{i}: {r:?}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{i}: {:?}",
            start.elapsed()
        );
    }
}

/// Issue 17: a handler in another process sees the sender's deadline (`Ctx::deadline`):
/// what was left of it when the command arrived (`Sy-Deadline-Ms`), so never later than
/// the sender's own; a command sent without one has none.
#[tokio::test]
async fn the_handler_in_another_process_sees_the_deadline() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (handler_bus, _hn) = bus(config(&p)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = handler_bus
        .handle(move |c: Double, ctx: switchyard::Ctx| {
            let tx = tx.clone();
            async move {
                tx.send(ctx.deadline()).map_err(|e| e.to_string())?;
                Ok::<_, String>(c.n)
            }
        })
        .start()
        .await
        .unwrap();
    let (sender, _sn) = bus(config(&p)).await;
    let before = std::time::Instant::now();
    sender
        .request(Double { n: 1 }, Duration::from_secs(20))
        .await
        .unwrap();
    let after = std::time::Instant::now();
    let deadline = rx.recv().await.unwrap().expect("no deadline seen");
    assert!(
        deadline <= after + Duration::from_secs(20),
        "the handler's deadline is later than the sender's"
    );
    assert!(
        deadline > before + Duration::from_secs(15),
        "the handler's deadline is far earlier than the sender's"
    );
    sender.send(Double { n: 2 }).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), None, "send without a deadline");

    // A raw client's `Sy-Deadline-Ms` reaches the handler as well.
    let client = async_nats::connect(SHARED_URL).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Sy-Kind", "request");
    headers.insert("Sy-Deadline-Ms", "3000");
    let sent = std::time::Instant::now();
    client
        .send_request(
            format!("{p}.calc.double"),
            async_nats::Request::new()
                .headers(headers)
                .payload("{\"n\":3}".into())
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let deadline = rx.recv().await.unwrap().expect("no deadline seen");
    assert!(deadline <= std::time::Instant::now() + Duration::from_secs(3));
    assert!(
        deadline > sent + Duration::from_secs(2),
        "deadline too early"
    );
}

/// Issue 17: a remote command for a handler with a free worker slot is handled at once (in
/// the pump, `inline.rs`), and one arriving while it runs waits in the queue: `workers(1)`
/// holds for remote commands run that way as for queued ones.
#[tokio::test]
async fn a_remote_command_on_a_free_handler_is_handled_and_a_second_respects_the_worker_limit() {
    if shared_unavailable().is_some() {
        return;
    }
    let p = prefix();
    let (handler_bus, _hn) = bus(config(&p)).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    // Each call waits for one permit: the test lets the handler finish.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let active = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let sub = {
        let (gate, active, most) = (gate.clone(), active.clone(), most.clone());
        handler_bus
            .handle(move |c: Double, _ctx| {
                let (tx, gate) = (started_tx.clone(), gate.clone());
                let (active, most) = (active.clone(), most.clone());
                async move {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tx.send(c.n).map_err(|e| e.to_string())?;
                    gate.acquire().await.map_err(|e| e.to_string())?.forget();
                    active.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, String>(c.n * 2)
                }
            })
            .workers(1)
            .start()
            .await
            .unwrap()
    };
    let (sender, _sn) = bus(config(&p)).await;
    let wait = Duration::from_secs(10);

    let first = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send(Double { n: 1 }).await }
    });
    let n = tokio::time::timeout(wait, started.recv()).await.unwrap();
    assert_eq!(n, Some(1));

    // The second arrives while the first holds the one worker slot: it is queued, not run.
    let second = tokio::spawn({
        let sender = sender.clone();
        async move {
            sender
                .request(Double { n: 2 }, Duration::from_secs(20))
                .await
        }
    });
    tokio::time::timeout(wait, async {
        while sub.info().depth != 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the second command never reached the handler's queue");
    assert!(
        started.try_recv().is_err(),
        "the second ran beside the first"
    );

    gate.add_permits(1);
    assert_eq!(
        tokio::time::timeout(wait, first)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        2
    );
    let n = tokio::time::timeout(wait, started.recv()).await.unwrap();
    assert_eq!(n, Some(2));
    gate.add_permits(1);
    assert_eq!(
        tokio::time::timeout(wait, second)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        4
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "more than one command at once"
    );
    assert_eq!(sub.info().depth, 0);
}
