//! The workloads of the instruction-count guards (issue 18: W1, W2, W4), one per run:
//! `instructions <workload> <n>` builds a bus on a current-thread runtime, runs a fixed
//! warm-up, then `n` more messages, and exits. `.ci/instructions` runs it under
//! `valgrind --tool=callgrind` with `n` and with `n = 0` and divides the difference of the
//! two totals by `n`: instructions per message, without the runtime's and the bus's setup and
//! teardown. A current-thread runtime keeps the interleaving of publisher and worker (and so
//! the count) the same from run to run.
//!
//! Workloads (64-byte payloads; "per message" is per publish or per round trip):
//! - `w1_typed`, `w1_envelope`: one publisher, one subscriber (`bus.on` + `bus.publish`, or
//!   `subscribe` + `publish_envelope`);
//! - `w1_envelope_resilient`: `w1_envelope` on a bus built `with_default_resilience` (the
//!   stack's cost per message is its difference to `w1_envelope`);
//! - `w2_fanout8_typed`, `w2_fanout8_envelope`: one publisher, eight subscriptions on the
//!   topic (eight deliveries per message);
//! - `w2_fanout8_shared`: `w2_fanout8_typed` with handlers that take the message shared
//!   (`|t: Shared<Tick>, ctx|`: one value for all eight, no clone per delivery);
//! - `w4_roundtrip_typed`, `w4_roundtrip_envelope`: `bus.send` / `send_envelope` to the one
//!   handler, which answers; the client is a task on the same runtime;
//! - `w4_floor_mpsc_oneshot` (not guarded, for comparison): the same round trip over a
//!   `tokio::sync::mpsc` and a `oneshot`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard::{
    Bus, Command, Envelope, Kind, Message, Outcome, Overflow, Shared, Topic, handler_fn,
};
use tokio::sync::Notify;

/// Messages before the measured ones (caches, pools and the queue's allocation warm).
const WARMUP: u64 = 2_000;
const TOPIC: &str = "bench.event";
const COMMAND: &str = "bench.double";

/// A typed event whose JSON encoding is 64 bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick {
    seq: u64,
    body: String,
}

impl Message for Tick {
    const TOPIC: &'static str = TOPIC;
}

impl Tick {
    fn new(seq: u64) -> Self {
        // {"seq":<10 digits>,"body":"..."}: 64 bytes in all.
        Tick {
            seq: 1_000_000_000 + seq,
            body: "x".repeat(36),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Double {
    n: u64,
}

impl Message for Double {
    const TOPIC: &'static str = COMMAND;
    const KIND: Kind = Kind::Command;
}

impl Command for Double {
    type Output = u64;
}

/// Counts deliveries and wakes the driver when a target count is reached.
#[derive(Clone)]
struct Counter {
    seen: Arc<AtomicU64>,
    target: Arc<AtomicU64>,
    done: Arc<Notify>,
}

impl Counter {
    fn new() -> Self {
        Counter {
            seen: Arc::new(AtomicU64::new(0)),
            target: Arc::new(AtomicU64::new(u64::MAX)),
            done: Arc::new(Notify::new()),
        }
    }

    fn hit(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }

    /// Arms the counter for `deliveries` more deliveries.
    fn arm(&self, deliveries: u64) {
        let now = self.seen.load(Ordering::Relaxed);
        self.target.store(now + deliveries, Ordering::Relaxed);
    }
}

fn block() -> Overflow {
    Overflow::Block {
        timeout: Duration::from_secs(60),
    }
}

/// The workload's bus (built `with_default_resilience` when `resilient`), after quanta's
/// one-off calibration of the time-stamp counter: a loop that runs for a stretch of wall
/// time, so its instruction count differs from run to run. The message clock's first read
/// (`clock::now`, which stamps every message) runs it; so would the resilience stack (the
/// breaker reads `quanta::Instant::now`, the stack makes a `quanta::Clock`), and a throwaway
/// stack is made here too; all of them share the one calibration. `.ci/instructions` leaves
/// this function out of the count (`--toggle-collect`): never inlined, so callgrind sees its
/// entry and exit.
#[inline(never)]
fn calibrated_bus(resilient: bool) -> Bus {
    use switchyard::middleware::resilience::{ResilienceConfig, ResilienceLayer};
    use tower::Layer;
    std::hint::black_box(switchyard::clock::now());
    if !resilient {
        return Bus::builder().queue_capacity(1024).build().unwrap();
    }
    let calibrate = ResilienceLayer::new("calibrate", ResilienceConfig::default());
    drop(calibrate.layer(handler_fn(|_env: Envelope| async {
        Ok::<_, std::convert::Infallible>(Outcome::Ack)
    })));
    Bus::builder()
        .queue_capacity(1024)
        .with_default_resilience()
        .build()
        .unwrap()
}

/// A typed subscription counting its messages, taking them `shared` (`Shared<Tick>`) or its
/// own copy (`Tick`). Out of `events`, whose future (and so its count) stays as it was
/// before the shared workload.
fn typed_sink(bus: &Bus, name: &str, c: Counter, shared: bool) -> switchyard::SubscriptionBuilder {
    if shared {
        bus.on(name, move |_t: Shared<Tick>, _ctx| {
            let c = c.clone();
            async move {
                c.hit();
                Ok::<_, std::convert::Infallible>(())
            }
        })
    } else {
        bus.on(name, move |_t: Tick, _ctx| {
            let c = c.clone();
            async move {
                c.hit();
                Ok::<_, std::convert::Infallible>(())
            }
        })
    }
}

/// Events, `subscribers` subscriptions, typed (owned, or `shared`) or envelope API, on a bare
/// bus or one built `with_default_resilience`.
async fn events(typed: bool, shared: bool, subscribers: usize, n: u64, resilient: bool) {
    let bus = calibrated_bus(resilient);
    let counter = Counter::new();
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let c = counter.clone();
        let name = format!("sink{i}");
        let builder = if typed {
            typed_sink(&bus, &name, c, shared)
        } else {
            bus.subscribe(
                &name,
                TOPIC,
                handler_fn(move |_env: Envelope| {
                    let c = c.clone();
                    async move {
                        c.hit();
                        Ok::<_, std::convert::Infallible>(Outcome::Ack)
                    }
                }),
            )
        };
        subs.push(builder.overflow(block()).start().await.unwrap());
    }
    let topic = Topic::new(TOPIC).unwrap();
    let payload = Bytes::from(vec![b'7'; 64]);
    for (start, count) in [(0, WARMUP), (WARMUP, n)] {
        if count == 0 {
            continue;
        }
        counter.arm(count * subscribers as u64);
        for i in start..start + count {
            if typed {
                bus.publish(Tick::new(i)).await.unwrap();
            } else {
                bus.publish_envelope(Envelope::new(topic.clone(), payload.clone()))
                    .await
                    .unwrap();
            }
        }
        counter.done.notified().await;
    }
    drop(subs);
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Sequential command round trips from a task on the runtime.
async fn roundtrip(typed: bool, n: u64) {
    let bus = calibrated_bus(false);
    let _handler = if typed {
        bus.handle(|c: Double, _ctx| async move { Ok::<_, std::convert::Infallible>(c.n * 2) })
            .start()
            .await
            .unwrap()
    } else {
        bus.handle_envelope(
            "echo",
            COMMAND,
            handler_fn(|env: Envelope| async move {
                Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply(env.payload.clone())))
            }),
        )
        .start()
        .await
        .unwrap()
    };
    let client = bus.clone();
    tokio::spawn(async move {
        let topic = Topic::new(COMMAND).unwrap();
        let payload = Bytes::from(vec![b'7'; 64]);
        for i in 0..WARMUP + n {
            if typed {
                assert_eq!(client.send(Double { n: i }).await.unwrap(), i * 2);
            } else {
                let r = client
                    .send_envelope(Envelope::new(topic.clone(), payload.clone()))
                    .await
                    .unwrap();
                assert_eq!(r.reply.unwrap().payload.len(), 64);
            }
        }
    })
    .await
    .unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The floor of the round trip, for comparison (not guarded): `mpsc` + `oneshot` to a task
/// that doubles the number, the client a task on the same runtime.
async fn roundtrip_floor(n: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, tokio::sync::oneshot::Sender<u64>)>(1024);
    let server = tokio::spawn(async move {
        while let Some((v, reply)) = rx.recv().await {
            let _ = reply.send(v * 2);
        }
    });
    tokio::spawn(async move {
        for i in 0..WARMUP + n {
            let (rtx, rrx) = tokio::sync::oneshot::channel();
            tx.send((i, rtx)).await.unwrap();
            assert_eq!(rrx.await.unwrap(), i * 2);
        }
    })
    .await
    .unwrap();
    server.await.unwrap();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(workload), Some(n)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: instructions <w1_typed|w1_envelope|w1_envelope_resilient|w2_fanout8_typed|w2_fanout8_shared|w2_fanout8_envelope|w4_roundtrip_typed|w4_roundtrip_envelope|w4_floor_mpsc_oneshot> <n>"
        );
        std::process::exit(2);
    };
    let n: u64 = n.parse().expect("n: a number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match workload.as_str() {
            "w1_typed" => events(true, false, 1, n, false).await,
            "w1_envelope" => events(false, false, 1, n, false).await,
            "w1_envelope_resilient" => events(false, false, 1, n, true).await,
            "w2_fanout8_typed" => events(true, false, 8, n, false).await,
            "w2_fanout8_shared" => events(true, true, 8, n, false).await,
            "w2_fanout8_envelope" => events(false, false, 8, n, false).await,
            "w4_roundtrip_typed" => roundtrip(true, n).await,
            "w4_roundtrip_envelope" => roundtrip(false, n).await,
            "w4_floor_mpsc_oneshot" => roundtrip_floor(n).await,
            other => panic!("unknown workload {other}"),
        }
    });
}
