//! Bus benchmarks beside their floors, in one run:
//!
//! - `pubsub/1to1`: 1 publisher → 1 subscriber, 64-byte payloads, vs a raw `tokio::sync::mpsc`
//!   pass-through;
//! - `command/roundtrip`: send → handler → result, vs raw mpsc + oneshot;
//! - `publish/10k_patterns`: publish to a topic while 10,000 patterns are registered, on a
//!   match-cache hit and on a miss.
//!
//! After the criterion groups, an interleaved summary alternates floor and bus rounds of the
//! 1 -> 1 case (21 rounds of 200,000 events each, same runtime shape as `pubsub/1to1`) and
//! prints the median rate of each and the median of the per-round ratios: on a machine
//! whose speed drifts (other work, vCPU placement) that ratio is steadier than one taken
//! from two separate criterion runs.
//!
//! Run: `cargo bench -p switchyard --bench bus`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use switchyard::{Bus, Envelope, Outcome, Overflow, Subscription, Topic, handler_fn};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, mpsc, oneshot};

const BATCH: u64 = 10_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pubsub(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("pubsub");
    g.throughput(Throughput::Elements(BATCH));
    let payload = Bytes::from(vec![7u8; 64]);

    g.bench_function("1to1/mpsc_floor", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let payload = payload.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
                    let consumer = tokio::spawn(async move {
                        let mut n = 0u64;
                        while let Some(p) = rx.recv().await {
                            n += p.len() as u64;
                        }
                        n
                    });
                    for _ in 0..BATCH {
                        tx.send(payload.clone()).await.unwrap();
                    }
                    drop(tx);
                    assert_eq!(consumer.await.unwrap(), BATCH * 64);
                }
                start.elapsed()
            }
        })
    });

    let Sink {
        bus,
        seen,
        done,
        sub: _sub,
    } = rt.block_on(sink(BATCH));
    let topic = Topic::new("bench.event").unwrap();
    g.bench_function("1to1/bus", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (bus, topic, payload, seen, done) = (
                bus.clone(),
                topic.clone(),
                payload.clone(),
                seen.clone(),
                done.clone(),
            );
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    seen.store(0, Ordering::Relaxed);
                    for _ in 0..BATCH {
                        bus.publish_envelope(Envelope::new(topic.clone(), payload.clone()))
                            .await
                            .unwrap();
                    }
                    done.notified().await;
                }
                start.elapsed()
            }
        })
    });
    g.finish();
}

fn command(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("command");
    g.bench_function("roundtrip/mpsc_oneshot_floor", |b| {
        let (tx, mut rx) = mpsc::channel::<(Bytes, oneshot::Sender<Bytes>)>(1024);
        rt.spawn(async move {
            while let Some((p, reply)) = rx.recv().await {
                let _ = reply.send(p);
            }
        });
        b.to_async(&rt).iter(|| {
            let tx = tx.clone();
            async move {
                let (rtx, rrx) = oneshot::channel();
                tx.send((Bytes::from_static(b"{\"n\":1}"), rtx))
                    .await
                    .unwrap();
                rrx.await.unwrap()
            }
        })
    });
    let bus = rt.block_on(async { Bus::new() });
    let _h = rt.block_on(async {
        bus.handle_envelope(
            "echo",
            "bench.echo",
            handler_fn(|env: Envelope| async move {
                Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply(env.payload.clone())))
            }),
        )
        .start()
        .await
        .unwrap()
    });
    let topic = Topic::new("bench.echo").unwrap();
    g.bench_function("roundtrip/bus", |b| {
        b.to_async(&rt).iter(|| {
            let (bus, topic) = (bus.clone(), topic.clone());
            async move {
                bus.send_envelope(Envelope::new(topic, Bytes::from_static(b"{\"n\":1}")))
                    .await
                    .unwrap()
            }
        })
    });
    g.finish();
}

fn patterns(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("publish");
    let bus = rt.block_on(async { Bus::new() });
    let mut subs = Vec::new();
    rt.block_on(async {
        for i in 0..10_000 {
            let pattern = match i % 4 {
                0 => format!("svc{i}.*.request"),
                1 => format!("svc{i}.#"),
                2 => format!("domain.svc{i}.*"),
                _ => format!("*.svc{i}.update"),
            };
            let h = handler_fn(|_env: Envelope| async move {
                Ok::<_, std::convert::Infallible>(Outcome::Ack)
            });
            subs.push(bus.subscribe("idle", &pattern, h).start().await.unwrap());
        }
        let h =
            handler_fn(
                |_env: Envelope| async move { Ok::<_, std::convert::Infallible>(Outcome::Ack) },
            );
        subs.push(
            bus.subscribe("hit", "analytics.*.request", h)
                .queue_capacity(1 << 22)
                .overflow(Overflow::Block {
                    timeout: Duration::from_secs(60),
                })
                .start()
                .await
                .unwrap(),
        );
    });
    let hit = Topic::new("analytics.feature.request").unwrap();
    g.bench_function("10k_patterns/cache_hit", |b| {
        b.to_async(&rt).iter(|| {
            let (bus, topic) = (bus.clone(), hit.clone());
            async move {
                bus.publish_envelope(Envelope::new(topic, Bytes::from_static(b"{}")))
                    .await
                    .unwrap()
            }
        })
    });
    // Routing alone: a topic none of the 10,000 patterns matches (envelope creation, cache
    // lookup, no queue).
    let nobody = Topic::new("unrouted.feature.request").unwrap();
    g.bench_function("10k_patterns/cache_hit_route_only", |b| {
        b.to_async(&rt).iter(|| {
            let (bus, topic) = (bus.clone(), nobody.clone());
            async move {
                bus.publish_envelope(Envelope::new(topic, Bytes::from_static(b"{}")))
                    .await
                    .unwrap()
            }
        })
    });
    // More distinct topics than the cache holds (4096), so every publish misses.
    let misses: Vec<Topic> = (0..20_000)
        .map(|i| Topic::new(&format!("analytics.f{i}.request")).unwrap())
        .collect();
    let mut i = 0usize;
    g.bench_function("10k_patterns/cache_miss", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % misses.len();
            let (bus, topic) = (bus.clone(), misses[i].clone());
            async move {
                bus.publish_envelope(Envelope::new(topic, Bytes::from_static(b"{}")))
                    .await
                    .unwrap()
            }
        })
    });
    g.finish();
    rt.block_on(bus.run_until_idle());
    drop(subs);
}

/// One floor round: `n` payloads through a fresh `mpsc` channel to a spawned consumer.
async fn floor_round(payload: &Bytes, n: u64) -> Duration {
    let start = Instant::now();
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
    assert_eq!(consumer.await.unwrap(), n * payload.len() as u64);
    start.elapsed()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A bus with one subscriber on `bench.event` that counts events and signals `done` when
/// the count reaches `n` (reset `seen` to run another round).
struct Sink {
    bus: Bus,
    seen: Arc<AtomicU64>,
    done: Arc<Notify>,
    sub: Subscription,
}

async fn sink(n: u64) -> Sink {
    let bus = Bus::builder().queue_capacity(1024).build().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (s, d) = (seen.clone(), done.clone());
    let sub = bus
        .subscribe(
            "sink",
            "bench.event",
            handler_fn(move |_env: Envelope| {
                let (s, d) = (s.clone(), d.clone());
                async move {
                    if s.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        d.notify_one();
                    }
                    Ok::<_, std::convert::Infallible>(Outcome::Ack)
                }
            }),
        )
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(60),
        })
        .start()
        .await
        .unwrap();
    Sink {
        bus,
        seen,
        done,
        sub,
    }
}

/// Floor and bus rounds of the 1 -> 1 case, alternating; prints medians.
fn interleaved() {
    const ROUNDS: usize = 21;
    const N: u64 = 200_000;
    let rt = runtime();
    let payload = Bytes::from(vec![7u8; 64]);
    let Sink {
        bus,
        seen,
        done,
        sub: _sub,
    } = rt.block_on(sink(N));
    let topic = Topic::new("bench.event").unwrap();
    let bus_round = || {
        rt.block_on(async {
            seen.store(0, Ordering::Relaxed);
            let start = Instant::now();
            for _ in 0..N {
                bus.publish_envelope(Envelope::new(topic.clone(), payload.clone()))
                    .await
                    .unwrap();
            }
            done.notified().await;
            start.elapsed()
        })
    };
    let rate = |d: Duration| N as f64 / d.as_secs_f64() / 1e6;
    // One warm-up round each, not counted.
    rt.block_on(floor_round(&payload, N));
    bus_round();
    let (mut f, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let floor = rate(rt.block_on(floor_round(&payload, N)));
        let bus = rate(bus_round());
        f.push(floor);
        b.push(bus);
        r.push(bus / floor);
    }
    println!(
        "interleaved 1to1 ({ROUNDS} rounds x {N} events): mpsc floor {:.2} M/s, bus {:.2} M/s, bus/floor {:.2}x (median of per-round ratios)",
        median(&mut f),
        median(&mut b),
        median(&mut r)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = pubsub, command, patterns
}

fn main() {
    benches();
    // Only when benchmarking (`cargo test --benches` runs the groups once, as a test).
    if std::env::args().any(|a| a == "--bench") {
        interleaved();
    }
    Criterion::default().configure_from_args().final_summary();
}
