//! Messages per second through the demo's four stages (parse → process → metrics → export), three
//! ways in the same run:
//!
//! - `plain_loop`: the four stage functions called in a loop (the floor: no runtime, no tasks);
//! - `runner_feed`: the same four stages as a `Pipeline` under the `Runner` (one task per stage,
//!   256 runs in flight), fed in-process through a `Feed`;
//! - `zmq_runner`: a ZeroMQ PUSH publisher → `ZmqSource` (PULL) → the same pipeline;
//! - `zmq_raw`: the same PUSH publisher → a bare PULL socket receive loop (the transport alone).
//!
//! The export stage writes JSON lines into an in-memory buffer (cleared every MiB) in all variants,
//! so disk speed does not enter the comparison.
//!
//! ```text
//! cargo bench -p data-pipeline --bench sensors   # the sensor pipeline's stages, in examples/data-pipeline
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use data_pipeline::sensors::{Enriched, Measurement, SensorStats, export_line, parse, process};
use switchyard_pipeline::zmq::ZmqSource;
use switchyard_pipeline::{Feed, Monitor, Pipeline, Runner, RunningPipeline, map_fn};
use tokio::sync::Notify;
use zeromq::{Socket, SocketRecv, SocketSend};

const PAYLOADS: usize = 4096;
const WAIT: Duration = Duration::from_secs(120);

fn payloads() -> Vec<Bytes> {
    (0..PAYLOADS)
        .map(|i| {
            let unit = ["c", "f", "k"][i % 3];
            Bytes::from(format!(
                r#"{{"id": {i}, "sensor": "sensor-{}", "value": {}.5, "unit": "{unit}"}}"#,
                i % 7,
                20 + i % 13
            ))
        })
        .collect()
}

/// The in-memory JSON-lines sink shared by every variant.
struct Sink {
    buf: Vec<u8>,
}

impl Sink {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(1 << 20),
        }
    }

    fn write(&mut self, e: &Enriched) -> Result<(), switchyard_pipeline::StageError> {
        if self.buf.len() > 1 << 20 {
            self.buf.clear();
        }
        export_line(e, &mut self.buf)
    }
}

fn four_stages() -> Pipeline<Bytes, ()> {
    let mut stats = SensorStats::default();
    let mut sink = Sink::new();
    Pipeline::new(map_fn("parse", |b: Bytes| parse(&b)))
        .then(map_fn("process", process))
        .then(map_fn("metrics", move |m: Measurement| Ok(stats.update(m))))
        .then(map_fn("export", move |e: Enriched| sink.write(&e)))
}

async fn start_runner() -> RunningPipeline<Bytes> {
    Runner::new(four_stages())
        .max_in_flight(256)
        .monitor(Monitor::new())
        .start()
        .await
        .unwrap()
}

async fn feed_and_wait(feed: &Feed<Bytes>, monitor: &Monitor, data: &[Bytes], iters: u64) {
    let target = monitor.completed() + iters;
    for i in 0..iters {
        feed.send(data[i as usize % data.len()].clone())
            .await
            .unwrap();
    }
    assert!(monitor.wait_until(WAIT, |m| m.completed() >= target).await);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = payloads();
    let mut group = c.benchmark_group("pipeline_4_stages");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));

    group.bench_function("plain_loop", |b| {
        let mut stats = SensorStats::default();
        let mut sink = Sink::new();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let payload = &data[i as usize % data.len()];
                let r = parse(payload).unwrap();
                let m = process(r).unwrap();
                let e = stats.update(m);
                sink.write(&e).unwrap();
            }
            start.elapsed()
        });
    });

    let running = rt.block_on(start_runner());
    let feed = running.feed();
    let monitor = running.monitor().clone();
    group.bench_function("runner_feed", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                feed_and_wait(&feed, &monitor, &data, iters).await;
                start.elapsed()
            })
        });
    });
    let report = rt.block_on(running.shutdown());
    assert_eq!(report.monitor.failed, 0);
    eprintln!("runner_feed monitor:\n{}", report.monitor);

    // ZeroMQ publisher → ZmqSource → the four stages.
    let (zmq_running, endpoint) = rt.block_on(async {
        let source = ZmqSource::pull().bind("tcp://127.0.0.1:0").await.unwrap();
        let endpoint = source.endpoint().to_owned();
        let mut running = start_runner().await;
        running.spawn_source(source);
        (running, endpoint)
    });
    let mut push = rt.block_on(async {
        let mut push = zeromq::PushSocket::new();
        push.connect(&endpoint).await.unwrap();
        push
    });
    let monitor = zmq_running.monitor().clone();
    group.bench_function("zmq_runner", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let target = monitor.completed() + iters;
                let start = Instant::now();
                for i in 0..iters {
                    push.send(data[i as usize % data.len()].clone().into())
                        .await
                        .unwrap();
                }
                assert!(monitor.wait_until(WAIT, |m| m.completed() >= target).await);
                start.elapsed()
            })
        });
    });
    let report = rt.block_on(zmq_running.shutdown());
    assert_eq!(report.monitor.failed, 0);
    eprintln!("zmq_runner monitor:\n{}", report.monitor);

    // ZeroMQ publisher → bare PULL loop: the transport's own cost.
    let received = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(Notify::new());
    let (endpoint, receiver) = rt.block_on(async {
        let mut pull = zeromq::PullSocket::new();
        let endpoint = pull.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
        let (r, a) = (received.clone(), arrived.clone());
        // Owns the PULL socket; counts messages until aborted at the end of the bench.
        let receiver = tokio::spawn(async move {
            while let Ok(m) = pull.recv().await {
                std::hint::black_box(m);
                r.fetch_add(1, Ordering::Release);
                a.notify_waiters();
            }
        });
        (endpoint, receiver)
    });
    let mut push = rt.block_on(async {
        let mut push = zeromq::PushSocket::new();
        push.connect(&endpoint).await.unwrap();
        push
    });
    group.bench_function("zmq_raw", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let target = received.load(Ordering::Acquire) + iters;
                let start = Instant::now();
                for i in 0..iters {
                    push.send(data[i as usize % data.len()].clone().into())
                        .await
                        .unwrap();
                }
                let wait = async {
                    loop {
                        let notified = arrived.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        if received.load(Ordering::Acquire) >= target {
                            break;
                        }
                        notified.await;
                    }
                };
                tokio::time::timeout(WAIT, wait).await.unwrap();
                start.elapsed()
            })
        });
    });
    receiver.abort();
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
