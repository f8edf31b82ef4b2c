//! Publish throughput of the log: `Always` (group commit) vs `Never`, with 1 and 16
//! concurrent publishers, 64-byte payloads; beside it the floor: a raw `write` + `fdatasync`
//! loop with batches of the same sizes.
//!
//! Run: `cargo bench -p switchyard-log --bench log`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchyard_core::{Envelope, Publisher, Topic};
use switchyard_log::{Durability, LogConfig, LogTransport};

const PAYLOAD: [u8; 64] = [7u8; 64];

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("log_publish");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for (mode_name, mode) in [("always", Durability::Always), ("never", Durability::Never)] {
        for publishers in [1usize, 16] {
            let dir = tempfile::tempdir().unwrap();
            let log = LogTransport::open(LogConfig::new(dir.path()).with_durability(mode)).unwrap();
            let topic = Topic::new("bench.publish").unwrap();
            group.bench_with_input(
                BenchmarkId::new(mode_name, format!("{publishers}_publishers")),
                &publishers,
                |b, &publishers| {
                    b.iter_custom(|iters| {
                        let per = (iters as usize).div_ceil(publishers);
                        let start = Instant::now();
                        rt.block_on(async {
                            let mut tasks = Vec::new();
                            for _ in 0..publishers {
                                let log = log.clone();
                                let topic = topic.clone();
                                tasks.push(tokio::spawn(async move {
                                    for _ in 0..per {
                                        let env = Envelope::new(topic.clone(), &PAYLOAD[..]);
                                        log.publish(vec![env]).await.unwrap();
                                    }
                                }));
                            }
                            for t in tasks {
                                t.await.unwrap();
                            }
                        });
                        start.elapsed()
                    })
                },
            );
            rt.block_on(log.close(Instant::now() + Duration::from_secs(30)))
                .unwrap();
        }
    }
    group.finish();
}

/// The floor: append `batch` records of the log's record size, then `fdatasync`.
fn raw_floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_write_fdatasync");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for batch in [1usize, 16] {
        let dir = tempfile::tempdir().unwrap();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("raw"))
            .unwrap();
        let buf = vec![1u8; 160 * batch];
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let rounds = (iters as usize).div_ceil(batch);
                let start = Instant::now();
                for _ in 0..rounds {
                    f.write_all(&buf).unwrap();
                    f.sync_data().unwrap();
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, publish, raw_floor);
criterion_main!(benches);
