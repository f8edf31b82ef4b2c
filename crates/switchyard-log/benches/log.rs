//! Publish throughput of the log under `Durability::Always`, 64-byte payloads.
//!
//! Run: `cargo bench -p switchyard-log --bench log` (a short criterion part).
//!
//! With `SWITCHYARD_LOG_REPORT=1` the report compares like with like, in one run:
//!
//! 1. **Floor**: one `publish` of B envelopes, awaited, in a loop, against a raw
//!    `write` + `fdatasync` loop of B records of the log's on-disk record size (into a
//!    pre-allocated file, as the log writes ahead of its data), for B in 1, 8,
//!    64, 256. The two run interleaved in ten slices each, so a slow spell of the disk (its
//!    sync latency drifts a lot) hits both; three times over.
//! 2. **Outstanding publishes**: N tasks each publishing one record at a time (N = 1, 8, 64,
//!    256 publishes in flight) with p50/p99 latency, records per `fdatasync` and CPU-seconds per
//!    million records, against the floor of raw `write` + `fdatasync` of N records per round
//!    into a pre-allocated file: the two alternate in ten slices, and the report gives the
//!    median of the per-slice ratios over three repeats; beside it, with `SWITCHYARD_BENCH_NATS=host:port` (a server with
//!    `jetstream { sync_interval: always }`), JetStream with the same N async publishes in
//!    flight on one connection, interleaved with the log in ten slices
//!    (`SWITCHYARD_BENCH_NATS_PID=<pid of that server>` adds the server's CPU-seconds per
//!    million records).
//! 3. With `SWITCHYARD_BENCH_NATS_INTERVAL=host:port` (a server with the default sync
//!    interval; `SWITCHYARD_BENCH_NATS_INTERVAL_PID` for its CPU), the same against the log
//!    in `Interval` mode; with `SWITCHYARD_BENCH_REDIS=host:port`, Redis `XADD` from 1 and 8
//!    clients; then the open + recovery time of a 500,000-record log.
//!
//! `SWITCHYARD_LOG_REPORT=a` or `=b` runs only part 1 or parts 2-3, without the criterion part
//! (for profiling); `SWITCHYARD_LOG_N=256` (a comma-separated list) limits part 2 to those N. Both sides write under the system temporary directory: `TMPDIR=/dev/shm`
//! puts them on tmpfs, where a sync costs nothing and only the CPU is compared.
//!
//! Envelopes are built before the timed part (building one is the application's work, and its
//! cost is printed separately); encoding, framing, CRC, the write, the sync and the wake-up
//! of the publisher are the log's work and are timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

fn envelopes(n: usize) -> Vec<Envelope> {
    let topic = Topic::new("bench.publish").unwrap();
    (0..n)
        .map(|_| Envelope::new(topic.clone(), &PAYLOAD[..]))
        .collect()
}

/// Work for `publishers` tasks of `per` envelopes each.
fn work(publishers: usize, per: usize) -> Vec<Vec<Envelope>> {
    (0..publishers).map(|_| envelopes(per)).collect()
}

/// One task per entry of `work` publishes its envelopes one at a time, each awaited before the
/// next. Returns every publish latency.
fn drive(
    rt: &tokio::runtime::Runtime,
    log: &LogTransport,
    work: Vec<Vec<Envelope>>,
) -> Vec<Duration> {
    rt.block_on(async {
        let tasks: Vec<_> = work
            .into_iter()
            .map(|envs| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(envs.len());
                    for env in envs {
                        let t = Instant::now();
                        log.publish(vec![env]).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

/// One task publishes each entry of `work` as one batch, each awaited before the next.
fn drive_batches(
    rt: &tokio::runtime::Runtime,
    log: &LogTransport,
    work: Vec<Vec<Envelope>>,
) -> Vec<Duration> {
    rt.block_on(async {
        let mut lat = Vec::with_capacity(work.len());
        for b in work {
            let t = Instant::now();
            log.publish(b).await.unwrap();
            lat.push(t.elapsed());
        }
        lat
    })
}

fn close(rt: &tokio::runtime::Runtime, log: LogTransport) {
    rt.block_on(log.close(Instant::now() + Duration::from_secs(30)))
        .unwrap();
}

fn criterion_part(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("log_publish_always");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for (publishers, batch) in [(1usize, 1usize), (64, 1), (1, 256)] {
        let dir = tempfile::tempdir().unwrap();
        let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
        group.throughput(Throughput::Elements((publishers * batch) as u64));
        group.bench_function(
            BenchmarkId::new(format!("{publishers}_publishers"), format!("batch_{batch}")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let w = work(publishers, batch);
                        let start = Instant::now();
                        if batch == 1 {
                            drive(&rt, &log, w);
                        } else {
                            drive_batches(&rt, &log, w);
                        }
                        total += start.elapsed();
                    }
                    total
                })
            },
        );
        close(&rt, log);
    }
    group.finish();
}

/// The floor: `batch` records of `record_bytes` written with one positional `write` into a
/// file pre-allocated (written with zeros and synced beforehand, as the log pre-allocates its
/// segment), then `fdatasync`, round after round; it wraps around at the end of the file.
struct Raw {
    _dir: tempfile::TempDir,
    file: std::fs::File,
    buf: Vec<u8>,
    at: u64,
}

/// Size of the floor's pre-allocated file.
const RAW_FILE: u64 = 64 << 20;

impl Raw {
    fn new(batch: usize, record_bytes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("raw"))
            .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..RAW_FILE / zeros.len() as u64 {
            file.write_all(&zeros).unwrap();
        }
        file.sync_all().unwrap();
        Self {
            _dir: dir,
            file,
            buf: vec![1u8; record_bytes * batch],
            at: 0,
        }
    }

    /// Runs `rounds` rounds; returns (seconds, CPU-seconds).
    fn run(&mut self, rounds: usize) -> (f64, f64) {
        use std::os::unix::fs::FileExt;
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        for _ in 0..rounds {
            if self.at + self.buf.len() as u64 > RAW_FILE {
                self.at = 0;
            }
            self.file.write_all_at(&self.buf, self.at).unwrap();
            self.file.sync_data().unwrap();
            self.at += self.buf.len() as u64;
        }
        (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0)
    }
}

/// Part (a) for one batch size: the log (one publish of `batch` records, awaited, `rounds`
/// times) and the raw floor (`rounds` rounds of `batch` records), interleaved in `CHUNKS`
/// slices so a slow spell of the disk hits both. Returns the log's run, the floor's rate and
/// CPU per million records, and the log's on-disk record size.
fn floor_vs_log(
    rt: &tokio::runtime::Runtime,
    batch: usize,
    rounds: usize,
) -> (Run, f64, f64, usize) {
    const CHUNKS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
    drive(rt, &log, work(4, 50)); // warm up; also gives the record size
    let warm = log.stats();
    let record_bytes = (warm.bytes / warm.records.max(1)) as usize;
    let mut raw = Raw::new(batch, record_bytes);
    raw.run(5);
    let mut chunks: Vec<Vec<Vec<Envelope>>> = Vec::new();
    let mut all = work(rounds, batch).into_iter();
    for _ in 0..CHUNKS {
        chunks.push(all.by_ref().take(rounds / CHUNKS).collect());
    }
    let before = log.stats();
    let (mut log_secs, mut log_cpu, mut raw_secs, mut raw_cpu) = (0.0, 0.0, 0.0, 0.0);
    let mut lat = Vec::new();
    for chunk in chunks {
        let (s, c) = raw.run(rounds / CHUNKS);
        raw_secs += s;
        raw_cpu += c;
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        lat.extend(drive_batches(rt, &log, chunk));
        log_secs += start.elapsed().as_secs_f64();
        log_cpu += cpu_seconds() - cpu0;
    }
    let after = log.stats();
    close(rt, log);
    let records = (after.records - before.records) as f64;
    let raw_records = (rounds / CHUNKS * CHUNKS * batch) as f64;
    lat.sort_unstable();
    let run = Run {
        rate: records / log_secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        cpu_per_m: log_cpu / records * 1e6,
        per_sync: records / (after.syncs - before.syncs).max(1) as f64,
    };
    (
        run,
        raw_records / raw_secs,
        raw_cpu / raw_records * 1e6,
        record_bytes,
    )
}

/// On-CPU seconds of every live thread of this process (from `/proc/self/task/*/schedstat`,
/// nanosecond resolution; Linux only, 0 elsewhere). Measured before a log is closed, so its
/// writer thread is counted.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// User + system CPU seconds of another process (`/proc/<pid>/stat`, 10 ms ticks).
fn process_cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Result of one measured run.
struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_m: f64,
    per_sync: f64,
}

/// A pipelined JetStream publisher: one connection, at most `window` publishes awaiting their
/// ack (what `PublishAsync` with a max-pending of `window` does), on a fresh file-stored
/// stream.
struct JetStream {
    admin: NatsSync,
    w: BufWriter<TcpStream>,
    r: Option<BufReader<TcpStream>>,
    window: usize,
    seq: usize,
}

impl JetStream {
    fn new(addr: &str, window: usize) -> Self {
        let mut admin = NatsSync::connect(addr);
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
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut info = String::new();
        r.read_line(&mut info).unwrap();
        let mut w = BufWriter::new(conn);
        w.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _INBOX.swlogasync.* 1\r\n",
        )
        .unwrap();
        w.flush().unwrap();
        Self {
            admin,
            w,
            r: Some(r),
            window,
            seq: 0,
        }
    }

    /// Publishes `count` messages, keeping up to `window` in flight; returns the seconds it
    /// took and each publish's latency (publish to ack).
    fn run(&mut self, count: usize) -> (f64, Vec<Duration>) {
        let first = self.seq;
        let sent: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
        let (tokens_tx, tokens_rx) = std::sync::mpsc::sync_channel::<()>(self.window);
        for _ in 0..self.window {
            tokens_tx.send(()).unwrap();
        }
        let epoch = Instant::now();
        let mut r = self.r.take().unwrap();
        let reader = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(count);
                let mut line = String::new();
                while lat.len() < count {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    let Some(rest) = line.strip_prefix("MSG ") else {
                        assert!(!line.starts_with("-ERR"), "nats: {line}");
                        continue;
                    };
                    let mut parts = rest.split_whitespace();
                    let subject = parts.next().unwrap();
                    let len: usize = parts.last().unwrap().parse().unwrap();
                    let seq: usize = subject.rsplit('.').next().unwrap().parse().unwrap();
                    let mut body = vec![0u8; len + 2];
                    r.read_exact(&mut body).unwrap();
                    assert!(
                        body.starts_with(b"{\"stream\""),
                        "{}",
                        String::from_utf8_lossy(&body)
                    );
                    let now = epoch.elapsed().as_nanos() as u64;
                    lat.push(Duration::from_nanos(
                        now - sent[seq - first].load(Ordering::Relaxed),
                    ));
                    let _ = tokens_tx.send(());
                }
                (r, lat)
            })
        };
        let start = Instant::now();
        for k in 0..count {
            if tokens_rx.try_recv().is_err() {
                self.w.flush().unwrap();
                tokens_rx.recv().unwrap();
            }
            sent[k].store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            write!(
                self.w,
                "PUB swlogbench.x _INBOX.swlogasync.{} 64\r\n",
                first + k
            )
            .unwrap();
            self.w.write_all(&PAYLOAD).unwrap();
            self.w.write_all(b"\r\n").unwrap();
        }
        self.w.flush().unwrap();
        let (r, lat) = reader.join().unwrap();
        let secs = start.elapsed().as_secs_f64();
        self.r = Some(r);
        self.seq += count;
        (secs, lat)
    }
}

impl Drop for JetStream {
    fn drop(&mut self) {
        let _ = self.admin.request("$JS.API.STREAM.DELETE.SWLOGBENCH", b"");
    }
}

/// What [`outstanding`] measured: the log, JetStream (with a server), and the floor.
struct Outstanding {
    log: Run,
    js: Option<Run>,
    /// Raw write + fdatasync of `n` records per round into a pre-allocated file.
    raw_rate: f64,
    /// Log rate / floor rate of each slice (the two run back to back in every slice).
    ratios: Vec<f64>,
}

/// Part (b) for one N: the log with `n` tasks publishing single records (`per` each), the
/// floor (rounds of `n` records written and synced into a pre-allocated file, as many
/// records as the log's slice) and, with a server, JetStream with `n` publishes in flight
/// (`js_total` in all), interleaved in `CHUNKS` slices so a slow spell of the disk hits all.
fn outstanding(
    rt: &tokio::runtime::Runtime,
    durability: Durability,
    n: usize,
    per: usize,
    server: Option<(&str, Option<&str>, usize)>,
) -> Outstanding {
    const CHUNKS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path()).with_durability(durability)).unwrap();
    drive(rt, &log, work(4, 50)); // warm up; also gives the record size
    let warm = log.stats();
    let record_bytes = (warm.bytes / warm.records.max(1)) as usize;
    let mut raw = Raw::new(n, record_bytes);
    raw.run(5);
    let mut js = server.map(|(addr, pid, total)| {
        let mut js = JetStream::new(addr, n);
        js.run(n.min(total)); // warm up
        (js, pid, total)
    });
    let before = log.stats();
    let (mut log_secs, mut log_cpu, mut js_secs, mut js_cpu) = (0.0, 0.0, 0.0, 0.0);
    let (mut raw_secs, mut raw_records) = (0.0, 0usize);
    let (mut log_lat, mut js_lat) = (Vec::new(), Vec::new());
    let mut ratios = Vec::with_capacity(CHUNKS);
    for _ in 0..CHUNKS {
        let (rs, _) = raw.run(per / CHUNKS);
        raw_secs += rs;
        raw_records += per / CHUNKS * n;
        let w = work(n, per / CHUNKS);
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        log_lat.extend(drive(rt, &log, w));
        let ls = start.elapsed().as_secs_f64();
        log_secs += ls;
        log_cpu += cpu_seconds() - cpu0;
        // Same record count on both sides, so the rate ratio is the time ratio.
        ratios.push(rs / ls);
        if let Some((js, pid, total)) = js.as_mut() {
            let c0 = pid.map(process_cpu_seconds);
            let (s, lat) = js.run(*total / CHUNKS);
            js_secs += s;
            js_lat.extend(lat);
            js_cpu += match (*pid, c0) {
                (Some(pid), Some(c0)) => process_cpu_seconds(pid) - c0,
                _ => f64::NAN,
            };
        }
    }
    let after = log.stats();
    close(rt, log);
    let records = (after.records - before.records) as f64;
    let syncs = (after.syncs - before.syncs) as f64;
    log_lat.sort_unstable();
    let log_run = Run {
        rate: records / log_secs,
        p50: percentile(&log_lat, 0.50),
        p99: percentile(&log_lat, 0.99),
        cpu_per_m: log_cpu / records * 1e6,
        per_sync: if syncs > 0.0 {
            records / syncs
        } else {
            f64::NAN
        },
    };
    let js_run = js.map(|(_, _, total)| {
        let published = (total / CHUNKS * CHUNKS) as f64;
        js_lat.sort_unstable();
        Run {
            rate: published / js_secs,
            p50: percentile(&js_lat, 0.50),
            p99: percentile(&js_lat, 0.99),
            cpu_per_m: js_cpu / published * 1e6,
            per_sync: f64::NAN,
        }
    });
    Outstanding {
        log: log_run,
        js: js_run,
        raw_rate: raw_records as f64 / raw_secs,
        ratios,
    }
}

/// A minimal blocking NATS request client, for stream administration.
struct NatsSync {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl NatsSync {
    fn connect(addr: &str) -> Self {
        let w = TcpStream::connect(addr).unwrap();
        let mut r = BufReader::new(w.try_clone().unwrap());
        let mut info = String::new();
        r.read_line(&mut info).unwrap();
        let mut n = Self { w, r };
        n.w.write_all(b"CONNECT {\"verbose\":false}\r\nSUB _INBOX.swlogadmin 1\r\n")
            .unwrap();
        n
    }

    fn request(&mut self, subject: &str, payload: &[u8]) -> Vec<u8> {
        let mut msg = format!("PUB {subject} _INBOX.swlogadmin {}\r\n", payload.len()).into_bytes();
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

/// Redis `XADD` round trips from `clients` threads, one outstanding each.
fn redis_rate(addr: &str, clients: usize, total: usize) -> Run {
    let per = total.div_ceil(clients);
    let mut cmd =
        b"*5\r\n$4\r\nXADD\r\n$10\r\nswlogbench\r\n$1\r\n*\r\n$1\r\np\r\n$64\r\n".to_vec();
    cmd.extend_from_slice(&PAYLOAD);
    cmd.extend_from_slice(b"\r\n");
    let start = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let cmd = cmd.clone();
                s.spawn(move || {
                    let mut w = TcpStream::connect(addr).unwrap();
                    w.set_nodelay(true).unwrap();
                    let mut r = BufReader::new(w.try_clone().unwrap());
                    let mut lat = Vec::with_capacity(per);
                    let mut line = String::new();
                    for _ in 0..per {
                        let t = Instant::now();
                        w.write_all(&cmd).unwrap();
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        assert!(line.starts_with('$'), "redis: {line}");
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut w = TcpStream::connect(addr).unwrap();
    w.write_all(b"*2\r\n$3\r\nDEL\r\n$10\r\nswlogbench\r\n")
        .unwrap();
    lat.sort_unstable();
    Run {
        rate: (per * clients) as f64 / secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        cpu_per_m: f64::NAN,
        per_sync: f64::NAN,
    }
}

fn row(name: &str, r: &Run, extra: &str) {
    let name = format!("{name:<22}");
    let opt = |v: f64, prec: usize| {
        if v.is_finite() {
            format!("{v:.prec$}")
        } else {
            "-".to_owned()
        }
    };
    println!(
        "{name:<22} {:>9.0} rec/s  p50 {:>6.0} µs  p99 {:>6.0} µs  {:>6} CPU-s/M  {:>6} rec/sync  {extra}",
        r.rate,
        us(r.p50),
        us(r.p99),
        opt(r.cpu_per_m, 2),
        opt(r.per_sync, 1),
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report() {
    let rt = runtime();
    println!("\n== switchyard-log report: 64-byte payloads, Durability::Always ==");
    {
        let n = 100_000;
        let t = Instant::now();
        let envs = envelopes(n);
        let build = t.elapsed().as_secs_f64() / n as f64;
        let t = Instant::now();
        let bytes: usize = envs
            .iter()
            .map(|e| rmp_serde::to_vec(e).unwrap().len())
            .sum();
        let encode = t.elapsed().as_secs_f64() / n as f64;
        println!(
            "Envelope::new {:.0} ns (not timed below), MessagePack encode {:.0} ns, {} B encoded",
            build * 1e9,
            encode * 1e9,
            bytes / n
        );
    }

    let only = std::env::var("SWITCHYARD_LOG_REPORT").unwrap_or_default();
    let run_a = only != "b";
    let run_b = only != "a";
    if run_a {
        println!(
            "\n-- (a) one publish of B records, awaited, vs raw write+fdatasync of B records --"
        );
        println!("   the two run interleaved in 10 slices each, same file system");
        let mut ratios: HashMap<usize, Vec<f64>> = HashMap::new();
        let mut record_bytes = 0;
        for repeat in 1..=3 {
            for (batch, rounds) in [(1usize, 1500usize), (8, 1000), (64, 500), (256, 300)] {
                let (run, raw, raw_cpu, rb) = floor_vs_log(&rt, batch, rounds);
                record_bytes = rb;
                let ratio = run.rate / raw;
                ratios.entry(batch).or_default().push(ratio);
                row(
                    &format!("#{repeat} log  B={batch}"),
                    &run,
                    &format!("raw {raw:>9.0} rec/s ({raw_cpu:.2} CPU-s/M)  log/raw {ratio:.2}x"),
                );
            }
        }
        println!("   record size on disk: {record_bytes} B (the raw loop writes the same)");
        for batch in [1usize, 8, 64, 256] {
            let r = &ratios[&batch];
            println!(
                "   B={batch:<4} log/raw median {:.2}x  (min {:.2}x, max {:.2}x)  target >= 0.5x",
                median(r.clone()),
                r.iter().copied().fold(f64::INFINITY, f64::min),
                r.iter().copied().fold(0.0, f64::max),
            );
        }
    }
    if !run_b {
        return;
    }
    let env = |k: &str| std::env::var(k).ok();
    let nats = env("SWITCHYARD_BENCH_NATS");
    let nats_pid = env("SWITCHYARD_BENCH_NATS_PID");
    let nats_interval = env("SWITCHYARD_BENCH_NATS_INTERVAL");
    let nats_interval_pid = env("SWITCHYARD_BENCH_NATS_INTERVAL_PID");
    // `SWITCHYARD_LOG_N=256` (a comma-separated list) runs only those N (for profiling).
    let ns: Vec<usize> = env("SWITCHYARD_LOG_N")
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 8, 64, 256]);
    for (title, durability, server, pid) in [
        (
            "Always vs JetStream sync_interval: always",
            Durability::Always,
            nats.as_deref(),
            nats_pid.as_deref(),
        ),
        (
            "Interval(2 min) vs JetStream default sync (2 min)",
            Durability::Interval(Duration::from_secs(120)),
            nats_interval.as_deref(),
            nats_interval_pid.as_deref(),
        ),
    ] {
        if durability != Durability::Always && server.is_none() {
            continue;
        }
        println!("\n-- (b) N outstanding single-record publishes: {title} --");
        println!(
            "   interleaved in 10 slices each with the floor (raw write + fdatasync of N records \
             per round into a pre-allocated file, as many records as the log's slice)"
        );
        let mut ratios: HashMap<usize, Vec<f64>> = HashMap::new();
        let mut floor_ratios: HashMap<usize, Vec<f64>> = HashMap::new();
        for repeat in 1..=3 {
            for &n in &ns {
                let per = match n {
                    1 => 2000,
                    8 => 1500,
                    64 => 600,
                    _ => 300,
                };
                let total = match (durability, n) {
                    (Durability::Always, 1) => 1000,
                    (Durability::Always, 8) => 3000,
                    (Durability::Always, _) => 8000,
                    _ => 50_000,
                };
                let Outstanding {
                    log: run,
                    js,
                    raw_rate,
                    ratios: slices,
                } = outstanding(&rt, durability, n, per, server.map(|a| (a, pid, total)));
                row(
                    &format!("#{repeat} log        N={n}"),
                    &run,
                    &format!(
                        "raw {raw_rate:>9.0} rec/s  log/raw slice median {:.2}x",
                        median(slices.clone())
                    ),
                );
                floor_ratios.entry(n).or_default().extend(slices);
                if let Some(js) = js {
                    let ratio = run.rate / js.rate;
                    ratios.entry(n).or_default().push(ratio);
                    row(
                        &format!("#{repeat} jetstream  N={n}"),
                        &js,
                        &format!("log/jetstream {ratio:.1}x"),
                    );
                }
            }
        }
        for &n in &ns {
            let r = &floor_ratios[&n];
            println!(
                "   N={n:<4} log/raw median of {} slice ratios {:.2}x  (min {:.2}x, max {:.2}x){}",
                r.len(),
                median(r.clone()),
                r.iter().copied().fold(f64::INFINITY, f64::min),
                r.iter().copied().fold(0.0, f64::max),
                if n == 256 { "  target >= 0.5x" } else { "" },
            );
        }
        if server.is_some() {
            for &n in &ns {
                let r = &ratios[&n];
                println!(
                    "   N={n:<4} log/jetstream median {:.1}x  (min {:.1}x, max {:.1}x)",
                    median(r.clone()),
                    r.iter().copied().fold(f64::INFINITY, f64::min),
                    r.iter().copied().fold(0.0, f64::max),
                );
            }
        }
    }
    if let Ok(addr) = std::env::var("SWITCHYARD_BENCH_REDIS") {
        println!("\n-- Redis XADD (its own persistence settings; see docs/log.md) --");
        for clients in [1usize, 8] {
            row(
                &format!("redis XADD clients={clients}"),
                &redis_rate(&addr, clients, 20_000),
                "",
            );
        }
    }
    if only != "a" && only != "b" {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig::new(dir.path()).with_durability(Durability::Never);
        let log = LogTransport::open(cfg.clone()).unwrap();
        let n = 500_000usize;
        rt.block_on(async {
            for _ in 0..n / 1000 {
                log.publish(envelopes(1000)).await.unwrap();
            }
        });
        close(&rt, log);
        let start = Instant::now();
        let log = LogTransport::open(cfg).unwrap();
        println!(
            "\nopen + recovery scan of {n} records ({} MB): {:.0} ms",
            log.streams()[0].bytes / 1_000_000,
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}

fn main() {
    let only = std::env::var("SWITCHYARD_LOG_REPORT").unwrap_or_default();
    if only != "a" && only != "b" {
        let mut c = Criterion::default().configure_from_args();
        criterion_part(&mut c);
        c.final_summary();
    }
    if std::env::var_os("SWITCHYARD_LOG_REPORT").is_some() {
        report();
    }
}
