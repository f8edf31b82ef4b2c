//! The bus beside its floors (issue 18, "Benchmarks"), every comparison interleaved: each
//! round runs every side once (the order rotates from round to round), and a ratio is the
//! median of the per-round ratios, steadier on a loaded machine than two separate runs.
//!
//! - **1 -> 1 events**, 64-byte payloads, on a two-worker and a current-thread runtime:
//!   typed `bus.on` / `bus.publish` against a `tokio::sync::mpsc` of the same struct, and
//!   `subscribe` / `publish_envelope` against an `mpsc` of `Bytes`;
//! - **fan-out 1 -> 8 and 1 -> 64**, per delivery, typed (handlers taking their own copy, and
//!   taking it shared: `Shared<Tick>`) and envelope, against
//!   `tokio::sync::broadcast` (of `Arc<Tick>` / `Bytes`, capacity above a round so nothing
//!   lags; the bus's queues likewise never fill);
//! - **command round trip** with the client a task on the runtime (as handlers call `send`),
//!   both flavours: `send_envelope` and typed `send` against `mpsc` + `oneshot` and a `kameo`
//!   actor's `ask`;
//! - **the default resilience stack** through the bus, 1 -> 1 envelope events, per message:
//!   a bare bus against one built `with_default_resilience`, the median per-round difference;
//! - **memory per queued message**, 1,000,000 queued behind a handler that does not finish:
//!   envelope and typed against an `mpsc` of `Bytes`, each side in a fresh child process
//!   (freed memory that the allocator keeps would hide the next side's growth), RSS delta
//!   read from `/proc/self/statm`.
//!
//! Publishers and clients are tasks spawned on the runtime under test. Run:
//! `cargo bench -p switchyard --bench compare` (about a minute). Built and run as a test
//! (`cargo test --benches`), it makes one quick pass with small sizes. With
//! `SWITCHYARD_BENCH_ONLY` set to a comma-separated list of `one_to_one`, `fan_out`,
//! `resilience`, `round_trip` and `memory`, only those comparisons run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kameo::Actor;
use kameo::actor::Spawn;
use serde::{Deserialize, Serialize};
use switchyard::{
    Bus, Command, Envelope, Kind, Message, Outcome, Overflow, Shared, Topic, handler_fn,
};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

const TOPIC: &str = "bench.event";
const COMMAND: &str = "bench.double";
const MEM_ENV: &str = "SWITCHYARD_BENCH_MEMORY";
const ONLY_ENV: &str = "SWITCHYARD_BENCH_ONLY";

/// Whether the comparison `name` runs (all do unless `SWITCHYARD_BENCH_ONLY` lists some).
fn selected(name: &str) -> bool {
    std::env::var(ONLY_ENV).map_or(true, |only| only.split(',').any(|o| o.trim() == name))
}

/// A typed event whose JSON encoding is 64 bytes (the same as `switchyard-guards`'s).
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

/// The `kameo` side of the round trip: an actor answering `Double` with the doubled number.
#[derive(Actor)]
struct Doubler;

impl kameo::message::Message<Double> for Doubler {
    type Reply = u64;

    async fn handle(
        &mut self,
        msg: Double,
        _ctx: &mut kameo::message::Context<Self, Self::Reply>,
    ) -> u64 {
        msg.n * 2
    }
}

struct Sizes {
    rounds: usize,
    events: u64,
    fanout_deliveries: u64,
    round_trips: u64,
    queued: u64,
}

const FULL: Sizes = Sizes {
    rounds: 21,
    events: 100_000,
    fanout_deliveries: 160_000,
    round_trips: 5_000,
    queued: 1_000_000,
};

const QUICK: Sizes = Sizes {
    rounds: 3,
    events: 1_000,
    fanout_deliveries: 1_024,
    round_trips: 100,
    queued: 10_000,
};

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One side of a comparison: runs one round and returns its duration.
type Side<'a> = Box<dyn FnMut() -> Duration + 'a>;

/// One warm-up run of every side, then `rounds` rounds of all sides, the order rotated each
/// round. Returns each side's round times in seconds.
fn interleave(rounds: usize, sides: &mut [Side<'_>]) -> Vec<Vec<f64>> {
    for side in sides.iter_mut() {
        side();
    }
    let mut times = vec![Vec::new(); sides.len()];
    for r in 0..rounds {
        for k in 0..sides.len() {
            let i = (r + k) % sides.len();
            times[i].push(sides[i]().as_secs_f64());
        }
    }
    times
}

/// Median over rounds of `a[r] / b[r]`.
fn ratio(a: &[f64], b: &[f64]) -> f64 {
    median(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>())
}

/// Runs `fut` as a task on `rt` (the publisher or client inside the runtime).
fn on_task<F>(rt: &Runtime, fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(async { tokio::spawn(fut).await.unwrap() })
}

/// Counts one subscription's deliveries; `done` is notified once `n` more have arrived since
/// `arm`. Each subscription has its own, on a cache line of its own, and its handler counts
/// in its call without cloning it: the floors' receivers share nothing either, so a shared
/// counter (written from every worker thread) or per-delivery reference counts would charge
/// the bench's own bookkeeping to the bus.
#[repr(align(128))]
struct Hits {
    seen: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Hits {
    fn hit(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }
}

/// The counters of every subscription of a bus under test.
#[derive(Clone)]
struct Counter(Vec<Arc<Hits>>);

impl Counter {
    fn new(subscriptions: usize) -> Self {
        Counter(
            (0..subscriptions)
                .map(|_| {
                    Arc::new(Hits {
                        seen: AtomicU64::new(0),
                        target: AtomicU64::new(u64::MAX),
                        done: Notify::new(),
                    })
                })
                .collect(),
        )
    }

    /// Expects `n` more deliveries on every subscription.
    fn arm(&self, n: u64) {
        for h in &self.0 {
            let now = h.seen.load(Ordering::Relaxed);
            h.target.store(now + n, Ordering::Relaxed);
        }
    }

    /// Returns once every subscription has seen what `arm` expects.
    async fn wait(&self) {
        for h in &self.0 {
            h.done.notified().await;
        }
    }
}

/// The handlers of a bus under test.
#[derive(Clone, Copy, PartialEq)]
enum Sink {
    /// `bus.on(|t: Tick, ctx|)`: each its own copy.
    Typed,
    /// `bus.on(|t: Shared<Tick>, ctx|)`: the published value, shared.
    Shared,
    /// `subscribe` with `handler_fn`.
    Envelope,
}

impl Sink {
    fn of(typed: bool) -> Self {
        if typed { Sink::Typed } else { Sink::Envelope }
    }
}

/// A bus with `subscribers` subscriptions on `TOPIC` (typed, shared or envelope handlers)
/// that count.
fn counting_bus(
    rt: &Runtime,
    sink: Sink,
    subscribers: usize,
    capacity: usize,
    resilient: bool,
) -> (Bus, Counter, Vec<switchyard::Subscription>) {
    rt.block_on(async {
        let mut builder = Bus::builder().queue_capacity(capacity);
        if resilient {
            builder = builder.with_default_resilience();
        }
        let bus = builder.build().unwrap();
        let counter = Counter::new(subscribers);
        let mut subs = Vec::new();
        for i in 0..subscribers {
            let c = Arc::clone(&counter.0[i]);
            let name = format!("sink{i}");
            let builder = if sink == Sink::Typed {
                bus.on(&name, move |_t: Tick, _ctx| {
                    c.hit();
                    std::future::ready(Ok::<_, std::convert::Infallible>(()))
                })
            } else if sink == Sink::Shared {
                bus.on(&name, move |_t: Shared<Tick>, _ctx| {
                    c.hit();
                    std::future::ready(Ok::<_, std::convert::Infallible>(()))
                })
            } else {
                bus.subscribe(
                    &name,
                    TOPIC,
                    handler_fn(move |_env: Envelope| {
                        c.hit();
                        std::future::ready(Ok::<_, std::convert::Infallible>(Outcome::Ack))
                    }),
                )
            };
            let sub = builder
                .overflow(Overflow::Block {
                    timeout: Duration::from_secs(60),
                })
                .start()
                .await
                .unwrap();
            subs.push(sub);
        }
        (bus, counter, subs)
    })
}

/// A bus round: `n` publishes from a task, then waits until every subscription has had them.
fn bus_round(rt: &Runtime, bus: &Bus, counter: &Counter, typed: bool, n: u64) -> Duration {
    let (bus, counter) = (bus.clone(), counter.clone());
    on_task(rt, async move {
        let start = Instant::now();
        counter.arm(n);
        let topic = Topic::new(TOPIC).unwrap();
        let payload = Bytes::from(vec![b'7'; 64]);
        for i in 0..n {
            if typed {
                bus.publish(Tick::new(i)).await.unwrap();
            } else {
                bus.publish_envelope(Envelope::new(topic.clone(), payload.clone()))
                    .await
                    .unwrap();
            }
        }
        counter.wait().await;
        start.elapsed()
    })
}

/// 1 -> 1 events on one runtime flavour: typed and envelope, each against its mpsc floor.
fn one_to_one(flavour: &str, rt: &Runtime, s: &Sizes) {
    let n = s.events;
    for typed in [true, false] {
        let (bus, counter, _subs) = counting_bus(rt, Sink::of(typed), 1, 1024, false);
        let floor: Side<'_> = if typed {
            Box::new(|| {
                on_task(rt, async move {
                    let start = Instant::now();
                    let (tx, mut rx) = mpsc::channel::<Tick>(1024);
                    let consumer = tokio::spawn(async move {
                        let mut seen = 0u64;
                        while let Some(t) = rx.recv().await {
                            seen += u64::from(t.seq > 0);
                        }
                        seen
                    });
                    for i in 0..n {
                        tx.send(Tick::new(i)).await.unwrap();
                    }
                    drop(tx);
                    assert_eq!(consumer.await.unwrap(), n);
                    start.elapsed()
                })
            })
        } else {
            Box::new(|| {
                on_task(rt, async move {
                    let start = Instant::now();
                    let payload = Bytes::from(vec![b'7'; 64]);
                    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
                    let consumer = tokio::spawn(async move {
                        let mut total = 0u64;
                        while let Some(p) = rx.recv().await {
                            total += p.len() as u64;
                        }
                        total
                    });
                    for _ in 0..n {
                        tx.send(payload.clone()).await.unwrap();
                    }
                    drop(tx);
                    assert_eq!(consumer.await.unwrap(), n * 64);
                    start.elapsed()
                })
            })
        };
        let mut sides = [
            floor,
            Box::new(|| bus_round(rt, &bus, &counter, typed, n)) as Side<'_>,
        ];
        let t = interleave(s.rounds, &mut sides);
        let rate = |v: &[f64]| n as f64 / median(v) / 1e6;
        println!(
            "| 1 -> 1 {} | {flavour} | mpsc of {} {:.2} M/s | {:.2} M/s | {:.2}x |",
            if typed { "typed" } else { "envelope" },
            if typed { "Tick" } else { "Bytes" },
            rate(&t[0]),
            rate(&t[1]),
            ratio(&t[0], &t[1]),
        );
    }
}

/// A broadcast floor round: `n` sends to `fanout` receiver tasks.
async fn broadcast_round<T: Clone + Send + 'static>(
    n: u64,
    fanout: usize,
    make: impl Fn(u64) -> T,
) -> Duration {
    let start = Instant::now();
    let (tx, _) = broadcast::channel::<T>((n as usize).next_power_of_two());
    let receivers: Vec<_> = (0..fanout)
        .map(|_| {
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                for _ in 0..n {
                    rx.recv().await.unwrap();
                }
            })
        })
        .collect();
    for i in 0..n {
        tx.send(make(i)).map_err(|_| ()).unwrap();
    }
    for r in receivers {
        r.await.unwrap();
    }
    start.elapsed()
}

/// Fan-out 1 -> `fanout` on the two-worker runtime, per delivery: typed handlers taking their
/// own copy and taking it shared, against a broadcast of `Arc<Tick>`; envelope handlers
/// against a broadcast of `Bytes`.
fn fan_out(rt: &Runtime, s: &Sizes, fanout: usize) {
    let n = s.fanout_deliveries / fanout as u64;
    let capacity = (n as usize).next_power_of_two();
    for sink in [Sink::Typed, Sink::Shared, Sink::Envelope] {
        let typed = sink != Sink::Envelope;
        let (bus, counter, _subs) = counting_bus(rt, sink, fanout, capacity, false);
        let floor: Side<'_> = if typed {
            Box::new(|| on_task(rt, broadcast_round(n, fanout, |i| Arc::new(Tick::new(i)))))
        } else {
            let payload = Bytes::from(vec![b'7'; 64]);
            Box::new(move || {
                let p = payload.clone();
                on_task(rt, broadcast_round(n, fanout, move |_| p.clone()))
            })
        };
        let mut sides = [
            floor,
            Box::new(|| bus_round(rt, &bus, &counter, typed, n)) as Side<'_>,
        ];
        let t = interleave(s.rounds, &mut sides);
        let per = |v: &[f64]| median(v) * 1e9 / (n * fanout as u64) as f64;
        println!(
            "| fan-out 1 -> {fanout} {}, per delivery | 2 workers | broadcast of {} {:.0} ns | {:.0} ns | {:.2}x |",
            match sink {
                Sink::Typed => "typed",
                Sink::Shared => "typed shared (`Shared<Tick>`)",
                Sink::Envelope => "envelope",
            },
            if typed { "Arc<Tick>" } else { "Bytes" },
            per(&t[0]),
            per(&t[1]),
            ratio(&t[0], &t[1]),
        );
    }
}

/// What the default resilience stack adds per message through the bus: 1 -> 1 envelope
/// events, a bare bus against the same bus built `with_default_resilience` (trace, metrics
/// with no recorder installed, retry, breaker, timeout, panic capture), interleaved; the
/// added time is the median of the per-round differences per message.
fn resilience(flavour: &str, rt: &Runtime, s: &Sizes) {
    let n = s.events;
    let (bare, bare_counter, _bare_subs) = counting_bus(rt, Sink::Envelope, 1, 1024, false);
    let (wrapped, wrapped_counter, _wrapped_subs) = counting_bus(rt, Sink::Envelope, 1, 1024, true);
    let mut sides = [
        Box::new(|| bus_round(rt, &bare, &bare_counter, false, n)) as Side<'_>,
        Box::new(|| bus_round(rt, &wrapped, &wrapped_counter, false, n)) as Side<'_>,
    ];
    let t = interleave(s.rounds, &mut sides);
    let per = |v: &[f64]| median(v) * 1e9 / n as f64;
    let added: Vec<f64> = t[0]
        .iter()
        .zip(&t[1])
        .map(|(bare, wrapped)| (wrapped - bare) * 1e9 / n as f64)
        .collect();
    println!(
        "| default resilience stack, 1 -> 1 envelope, per message | {flavour} | bare bus {:.0} ns | {:.0} ns | {:+.0} ns |",
        per(&t[0]),
        per(&t[1]),
        median(&added),
    );
}

/// Command round trips with the client a task on `rt`: mpsc + oneshot, kameo ask, bus
/// `send_envelope`, bus typed `send`.
fn round_trip(flavour: &str, rt: &Runtime, s: &Sizes) {
    let n = s.round_trips;
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
    rt.spawn(async move {
        while let Some((v, reply)) = rx.recv().await {
            let _ = reply.send(v * 2);
        }
    });
    let actor = rt.block_on(async { Doubler::spawn(Doubler) });
    let bus = rt.block_on(async { Bus::new() });
    let (_typed, _echo) = rt.block_on(async {
        let typed = bus
            .handle(|c: Double, _ctx| async move { Ok::<_, std::convert::Infallible>(c.n * 2) })
            .start()
            .await
            .unwrap();
        let echo = bus
            .handle_envelope(
                "echo",
                "bench.echo",
                handler_fn(|env: Envelope| async move {
                    Ok::<_, std::convert::Infallible>(Outcome::reply(
                        env.reply(env.payload.clone()),
                    ))
                }),
            )
            .start()
            .await
            .unwrap();
        (typed, echo)
    });
    let mut sides: [Side<'_>; 4] = [
        Box::new(|| {
            let tx = tx.clone();
            on_task(rt, async move {
                let start = Instant::now();
                for i in 0..n {
                    let (rtx, rrx) = oneshot::channel();
                    tx.send((i, rtx)).await.unwrap();
                    assert_eq!(rrx.await.unwrap(), i * 2);
                }
                start.elapsed()
            })
        }),
        Box::new(|| {
            let actor = actor.clone();
            on_task(rt, async move {
                let start = Instant::now();
                for i in 0..n {
                    assert_eq!(actor.ask(Double { n: i }).await.unwrap(), i * 2);
                }
                start.elapsed()
            })
        }),
        Box::new(|| {
            let bus = bus.clone();
            on_task(rt, async move {
                let topic = Topic::new("bench.echo").unwrap();
                let payload = Bytes::from(vec![b'7'; 64]);
                let start = Instant::now();
                for _ in 0..n {
                    let r = bus
                        .send_envelope(Envelope::new(topic.clone(), payload.clone()))
                        .await
                        .unwrap();
                    assert_eq!(r.reply.unwrap().payload.len(), 64);
                }
                start.elapsed()
            })
        }),
        Box::new(|| {
            let bus = bus.clone();
            on_task(rt, async move {
                let start = Instant::now();
                for i in 0..n {
                    assert_eq!(bus.send(Double { n: i }).await.unwrap(), i * 2);
                }
                start.elapsed()
            })
        }),
    ];
    let t = interleave(s.rounds, &mut sides);
    let us = |v: &[f64]| median(v) * 1e6 / n as f64;
    println!(
        "| round trip, {flavour} | mpsc + oneshot {:.2} us | kameo ask {:.2} us ({:.2}x floor) | send_envelope {:.2} us: {:.2}x floor, {:.2}x kameo | typed send {:.2} us: {:.2}x floor, {:.2}x kameo |",
        us(&t[0]),
        us(&t[1]),
        ratio(&t[1], &t[0]),
        us(&t[2]),
        ratio(&t[2], &t[0]),
        ratio(&t[2], &t[1]),
        us(&t[3]),
        ratio(&t[3], &t[0]),
        ratio(&t[3], &t[1]),
    );
}

/// Resident set size in bytes (`/proc/self/statm`, second field, 4 KiB pages on x86-64).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// In a child process: queues `n` messages of one kind and prints the RSS growth per message.
fn memory_child(kind: &str, n: u64) {
    let rt = current_thread();
    rt.block_on(async {
        let gate = Arc::new(Notify::new());
        let (bus, _sub) = if kind == "mpsc" {
            (None, None)
        } else {
            let bus = Bus::builder()
                .queue_capacity((n as usize + 1).next_power_of_two())
                .build()
                .unwrap();
            let g = gate.clone();
            let builder = if kind == "typed" {
                bus.on("held", move |_t: Tick, _ctx| {
                    let g = g.clone();
                    async move {
                        g.notified().await;
                        Ok::<_, std::convert::Infallible>(())
                    }
                })
            } else {
                bus.subscribe(
                    "held",
                    TOPIC,
                    handler_fn(move |_env: Envelope| {
                        let g = g.clone();
                        async move {
                            g.notified().await;
                            Ok::<_, std::convert::Infallible>(Outcome::Ack)
                        }
                    }),
                )
            };
            let sub = builder.start().await.unwrap();
            (Some(bus), Some(sub))
        };
        let topic = Topic::new(TOPIC).unwrap();
        let (tx, rx) = mpsc::channel::<Bytes>(n as usize + 1);
        // One message first so that the worker's first take and the bus's lazily made
        // structures are not counted.
        if let Some(bus) = &bus {
            bus.publish_envelope(Envelope::new(topic.clone(), vec![b'7'; 64]))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        let before = rss();
        for i in 0..n {
            match (&bus, kind) {
                (None, _) => tx.send(Bytes::from(vec![b'7'; 64])).await.unwrap(),
                (Some(bus), "typed") => bus.publish(Tick::new(i)).await.unwrap(),
                (Some(bus), _) => bus
                    .publish_envelope(Envelope::new(topic.clone(), vec![b'7'; 64]))
                    .await
                    .unwrap(),
            }
        }
        let after = rss();
        println!("{}", (after - before) as f64 / n as f64);
        drop(rx);
        std::process::exit(0);
    });
}

fn memory(s: &Sizes) {
    let exe = std::env::current_exe().unwrap();
    let mut per = Vec::new();
    for kind in ["mpsc", "envelope", "typed"] {
        let out = std::process::Command::new(&exe)
            .env(MEM_ENV, format!("{kind}:{}", s.queued))
            .output()
            .unwrap();
        assert!(out.status.success(), "{kind}: {out:?}");
        per.push(
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse::<f64>()
                .unwrap(),
        );
    }
    println!(
        "| memory per queued message, {} queued | mpsc of Bytes {:.0} B | envelope {:.0} B | typed {:.0} B |",
        s.queued, per[0], per[1], per[2]
    );
}

fn main() {
    if let Ok(spec) = std::env::var(MEM_ENV) {
        let (kind, n) = spec.split_once(':').unwrap();
        memory_child(kind, n.parse().unwrap());
        return;
    }
    // `cargo bench` passes `--bench`; built and run as a test, one quick pass.
    let sizes = if std::env::args().any(|a| a == "--bench") {
        &FULL
    } else {
        &QUICK
    };
    println!(
        "interleaved, {} rounds, medians; ratios are medians of per-round ratios (bus rate / floor rate for events, time / other time for round trips)",
        sizes.rounds
    );
    println!("| workload | runtime | floor | bus | bus/floor |\n|---|---|---|---|---|");
    let mt = multi_thread();
    let ct = current_thread();
    if selected("one_to_one") {
        one_to_one("2 workers", &mt, sizes);
        one_to_one("current thread", &ct, sizes);
    }
    if selected("fan_out") {
        fan_out(&mt, sizes, 8);
        fan_out(&mt, sizes, 64);
    }
    if selected("resilience") {
        resilience("2 workers", &mt, sizes);
        resilience("current thread", &ct, sizes);
    }
    println!();
    if selected("round_trip") {
        round_trip("2 workers", &mt, sizes);
        round_trip("current thread", &ct, sizes);
    }
    println!();
    if selected("memory") {
        memory(sizes);
    }
}
