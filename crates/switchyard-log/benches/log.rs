//! Publish throughput of the log: `Always` (group commit) vs `Never`, with 1 and 16
//! concurrent publishers, 64-byte payloads; beside it the floor, a raw `write` + `fdatasync`
//! loop with batches of the same sizes.
//!
//! Run: `cargo bench -p switchyard-log --bench log`
//!
//! With `SWITCHYARD_LOG_REPORT=1` a second part prints, for `Always` with 1, 8, 16 and 64
//! outstanding publishes: records/s, p50/p99 publish latency, CPU-seconds per million records,
//! the mean group-commit batch and the raw floor at that batch size. Set
//! `SWITCHYARD_BENCH_NATS=host:port` (a JetStream server) and/or
//! `SWITCHYARD_BENCH_REDIS=host:port` to add those servers, driven through their plain wire
//! protocols with the same number of outstanding publishes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use switchyard_core::{Envelope, Publisher, Topic};
use switchyard_log::{Durability, LogConfig, LogTransport};

const PAYLOAD: [u8; 64] = [7u8; 64];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Publishes `total` records from `publishers` concurrent tasks, one record per publish.
/// Returns every publish latency.
fn drive(
    rt: &tokio::runtime::Runtime,
    log: &LogTransport,
    publishers: usize,
    total: usize,
) -> Vec<Duration> {
    let per = total.div_ceil(publishers);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..publishers {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let topic = Topic::new("bench.publish").unwrap();
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let env = Envelope::new(topic.clone(), &PAYLOAD[..]);
                    let t = Instant::now();
                    log.publish(vec![env]).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

fn publish(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("log_publish");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for (mode_name, mode) in [("always", Durability::Always), ("never", Durability::Never)] {
        for publishers in [1usize, 16] {
            let dir = tempfile::tempdir().unwrap();
            let log = LogTransport::open(LogConfig::new(dir.path()).with_durability(mode)).unwrap();
            group.bench_with_input(
                BenchmarkId::new(mode_name, format!("{publishers}_publishers")),
                &publishers,
                |b, &publishers| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        drive(&rt, &log, publishers, iters as usize);
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

/// Consuming: a new group reads and acks records already in the log.
fn consume(c: &mut Criterion) {
    use futures::StreamExt;
    use switchyard_core::{Pattern, Subscriber};
    let rt = runtime();
    let mut group = c.benchmark_group("log_consume");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let log =
        LogTransport::open(LogConfig::new(dir.path()).with_durability(Durability::Never)).unwrap();
    let topic = Topic::new("bench.consume").unwrap();
    let preload = 200_000usize;
    rt.block_on(async {
        for _ in 0..preload / 1000 {
            let batch = (0..1000)
                .map(|_| Envelope::new(topic.clone(), &PAYLOAD[..]))
                .collect();
            log.publish(batch).await.unwrap();
        }
    });
    let pattern = Pattern::new("bench.#").unwrap();
    let mut round = 0u64;
    group.bench_function("ack_each_1_member", |b| {
        b.iter_custom(|iters| {
            let n = (iters as usize).min(preload);
            round += 1;
            let group_name = format!("g{round}");
            let start = Instant::now();
            rt.block_on(async {
                let mut sub = log.subscribe(&pattern, Some(&group_name)).await.unwrap();
                for _ in 0..n {
                    sub.next().await.unwrap().ack().await.unwrap();
                }
            });
            // Scaled when criterion asks for more than the preloaded records.
            start.elapsed().mul_f64(iters as f64 / n as f64)
        })
    });
    group.finish();
    rt.block_on(log.close(Instant::now() + Duration::from_secs(30)))
        .unwrap();
}

/// Records/s of `write(batch records)` + `fdatasync`, for `rounds` rounds.
fn raw_rate(batch: usize, rounds: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw"))
        .unwrap();
    let buf = vec![1u8; RECORD_BYTES * batch];
    let start = Instant::now();
    for _ in 0..rounds {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    (batch * rounds) as f64 / start.elapsed().as_secs_f64()
}

/// Size of one 64-byte-payload envelope as framed on disk (measured by the report).
const RECORD_BYTES: usize = 160;

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
        let buf = vec![1u8; RECORD_BYTES * batch];
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

/// User + system CPU seconds of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn print_row(name: &str, records: usize, elapsed: Duration, lat: &mut [Duration], extra: &str) {
    lat.sort_unstable();
    println!(
        "{name:<44} {:>10.0} rec/s  p50 {:>8.1} µs  p99 {:>8.1} µs  {extra}",
        records as f64 / elapsed.as_secs_f64(),
        percentile(lat, 0.50).as_secs_f64() * 1e6,
        percentile(lat, 0.99).as_secs_f64() * 1e6,
    );
}

/// Runs `per_client` request/response round trips on each of `clients` threads.
fn drive_threads<F>(clients: usize, per_client: usize, f: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Box<dyn FnMut() + Send> + Sync,
{
    let start = Instant::now();
    let lat = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let mut op = f(i);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        op();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    (start.elapsed(), lat)
}

/// A minimal NATS client: publish with a reply inbox, wait for the JetStream ack.
struct Nats {
    w: TcpStream,
    r: BufReader<TcpStream>,
    inbox: String,
}

impl Nats {
    fn connect(addr: &str, id: usize) -> Self {
        let w = TcpStream::connect(addr).unwrap();
        w.set_nodelay(true).unwrap();
        let mut r = BufReader::new(w.try_clone().unwrap());
        let mut info = String::new();
        r.read_line(&mut info).unwrap();
        let inbox = format!("_INBOX.swlogbench.{id}");
        let mut n = Self { w, r, inbox };
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {} 1\r\n",
            n.inbox
        );
        n.w.write_all(hello.as_bytes()).unwrap();
        n
    }

    fn request(&mut self, subject: &str, payload: &[u8]) -> Vec<u8> {
        let head = format!("PUB {subject} {} {}\r\n", self.inbox, payload.len());
        let mut msg = head.into_bytes();
        msg.extend_from_slice(payload);
        msg.extend_from_slice(b"\r\n");
        self.w.write_all(&msg).unwrap();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            if line.starts_with("PING") {
                self.w.write_all(b"PONG\r\n").unwrap();
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.split_whitespace().last().unwrap().parse().unwrap();
                let mut body = vec![0u8; len + 2];
                self.r.read_exact(&mut body).unwrap();
                body.truncate(len);
                return body;
            } else if line.starts_with("-ERR") {
                panic!("nats: {line}");
            }
        }
    }
}

fn nats_rate(addr: &str, clients: usize, total: usize) {
    let mut admin = Nats::connect(addr, 999);
    let _ = admin.request("$JS.API.STREAM.DELETE.SWLOGBENCH", b"");
    let created = admin.request(
        "$JS.API.STREAM.CREATE.SWLOGBENCH",
        br#"{"name":"SWLOGBENCH","subjects":["swlogbench.>"],"storage":"file"}"#,
    );
    assert!(
        !String::from_utf8_lossy(&created).contains("\"error\""),
        "{}",
        String::from_utf8_lossy(&created)
    );
    let per = total.div_ceil(clients);
    let (elapsed, mut lat) = drive_threads(clients, per, |i| {
        let mut c = Nats::connect(addr, i);
        Box::new(move || {
            let ack = c.request("swlogbench.x", &PAYLOAD);
            assert!(
                ack.starts_with(b"{\"stream\""),
                "{}",
                String::from_utf8_lossy(&ack)
            );
        })
    });
    print_row(
        &format!("jetstream {addr} {clients} outstanding"),
        per * clients,
        elapsed,
        &mut lat,
        "",
    );
    let _ = admin.request("$JS.API.STREAM.DELETE.SWLOGBENCH", b"");
}

fn redis_rate(addr: &str, clients: usize, total: usize) {
    let per = total.div_ceil(clients);
    let mut cmd =
        b"*5\r\n$4\r\nXADD\r\n$10\r\nswlogbench\r\n$1\r\n*\r\n$1\r\np\r\n$64\r\n".to_vec();
    cmd.extend_from_slice(&PAYLOAD);
    cmd.extend_from_slice(b"\r\n");
    let (elapsed, mut lat) = drive_threads(clients, per, |_| {
        let w = TcpStream::connect(addr).unwrap();
        w.set_nodelay(true).unwrap();
        let mut r = BufReader::new(w.try_clone().unwrap());
        let mut w = w;
        let cmd = cmd.clone();
        Box::new(move || {
            w.write_all(&cmd).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with('$'), "redis: {line}");
            line.clear();
            r.read_line(&mut line).unwrap();
        })
    });
    print_row(
        &format!("redis XADD {addr} {clients} outstanding"),
        per * clients,
        elapsed,
        &mut lat,
        "",
    );
    let mut w = TcpStream::connect(addr).unwrap();
    w.write_all(b"*2\r\n$3\r\nDEL\r\n$10\r\nswlogbench\r\n")
        .unwrap();
}

fn report() {
    let rt = runtime();
    println!("\n== publish report: 64-byte payloads, one record per publish ==");
    for publishers in [1usize, 8, 16, 64] {
        let dir = tempfile::tempdir().unwrap();
        let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
        drive(&rt, &log, publishers, 200); // warm up
        let before = log.stats();
        let total = if publishers == 1 { 3_000 } else { 20_000 };
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        let mut lat = drive(&rt, &log, publishers, total);
        let elapsed = start.elapsed();
        let cpu = cpu_seconds() - cpu0;
        let after = log.stats();
        let records = after.records - before.records;
        let syncs = (after.syncs - before.syncs).max(1);
        let batch = records as f64 / syncs as f64;
        let record_bytes = (after.bytes - before.bytes) as f64 / records as f64;
        let floor = raw_rate(batch.round().max(1.0) as usize, 300);
        let rate = records as f64 / elapsed.as_secs_f64();
        print_row(
            &format!("log Always, {publishers} outstanding"),
            records as usize,
            elapsed,
            &mut lat,
            &format!(
                "{:.1} CPU-s/M  batch {batch:.1}  {record_bytes:.0} B/rec  raw floor@batch {floor:.0} rec/s ({:.2}x)",
                cpu / records as f64 * 1e6,
                rate / floor
            ),
        );
        rt.block_on(log.close(Instant::now() + Duration::from_secs(30)))
            .unwrap();
    }
    for batch in [1usize, 8, 16, 64, 256] {
        let cpu0 = cpu_seconds();
        let rounds = if batch == 1 { 1000 } else { 300 };
        let rate = raw_rate(batch, rounds);
        let cpu = cpu_seconds() - cpu0;
        println!(
            "raw write+fdatasync, batch {batch:<4}                 {rate:>10.0} rec/s  {:.1} CPU-s/M",
            cpu / (batch * rounds) as f64 * 1e6
        );
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig::new(dir.path()).with_durability(Durability::Never);
        let log = LogTransport::open(cfg.clone()).unwrap();
        let topic = Topic::new("bench.open").unwrap();
        let n = 500_000usize;
        rt.block_on(async {
            for _ in 0..n / 1000 {
                let batch = (0..1000)
                    .map(|_| Envelope::new(topic.clone(), &PAYLOAD[..]))
                    .collect();
                log.publish(batch).await.unwrap();
            }
            log.close(Instant::now() + Duration::from_secs(30))
                .await
                .unwrap();
        });
        drop(log);
        let start = Instant::now();
        let log = LogTransport::open(cfg).unwrap();
        println!(
            "open + recovery scan of {n} records ({} MB): {:.0} ms",
            log.streams()[0].bytes / 1_000_000,
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Ok(addr) = std::env::var("SWITCHYARD_BENCH_NATS") {
        for clients in [1usize, 8, 16, 64] {
            nats_rate(&addr, clients, if clients == 1 { 1_000 } else { 5_000 });
        }
    }
    if let Ok(addr) = std::env::var("SWITCHYARD_BENCH_REDIS") {
        for clients in [1usize, 8, 16] {
            redis_rate(&addr, clients, 20_000);
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    publish(&mut c);
    consume(&mut c);
    raw_floor(&mut c);
    c.final_summary();
    if std::env::var_os("SWITCHYARD_LOG_REPORT").is_some() {
        report();
    }
}
