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
//! 2. **Outstanding publishes**: N = 1, 8, 64, 256 single-record publishes in flight, kept
//!    two ways: N tasks each publishing one record at a time ("tasks"), and one task keeping
//!    N publish futures in flight in a `FuturesUnordered`, refilled as each completes, as a
//!    client of an async-publish API does ("1 task"). Each with p50/p99 latency, records per
//!    `fdatasync` and CPU-seconds per million records, against the floor of raw `write` +
//!    `fdatasync` of N records per round into a pre-allocated file: the three alternate in
//!    ten slices (the two log sides taking turns in going first), and the report gives the
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
//! (for profiling); `SWITCHYARD_LOG_N=256` (a comma-separated list) limits part 2 to those N,
//! `SWITCHYARD_LOG_DRIVE=tasks` or `=window` to one way of driving the log, and
//! `SWITCHYARD_LOG_PUBLISH=one` publishes through `publish_one` instead of a batch of one. Both sides
//! write under the system temporary directory: `TMPDIR=/dev/shm` puts them on tmpfs, where a
//! sync costs nothing and only the CPU is compared.
//!
//! Envelopes are built before the timed part (building one is the application's work, and its
//! cost is printed separately); encoding, framing, CRC, the write, the sync and the wake-up
//! of the publisher are the log's work and are timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use switchyard_core::{Envelope, Publisher, Topic};
use switchyard_log::{Durability, LogConfig, LogTransport};

#[path = "log_support/peers.rs"]
mod peers;

use peers::{JetStream, redis_rate};

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

/// Whether single records go through `Publisher::publish_one` (`SWITCHYARD_LOG_PUBLISH=one`)
/// instead of a batch of one (`Publisher::publish(vec![env])`, as the bus does).
fn publish_one() -> bool {
    static ONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONE.get_or_init(|| std::env::var("SWITCHYARD_LOG_PUBLISH").as_deref() == Ok("one"))
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
                    let one = publish_one();
                    for env in envs {
                        let t = Instant::now();
                        if one {
                            log.publish_one(env).await.unwrap();
                        } else {
                            log.publish(vec![env]).await.unwrap();
                        }
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

/// What [`outstanding`] measured: the log driven both ways, JetStream (with a server), and
/// the floor.
struct Outstanding {
    /// N tasks, one publish outstanding each (`None` when not run).
    tasks: Option<Side>,
    /// One task keeping N publishes outstanding (`None` when not run).
    window: Option<Side>,
    js: Option<Run>,
    /// Raw write + fdatasync of `n` records per round into a pre-allocated file.
    raw_rate: f64,
}

/// One way of driving the log in part (b), summed over the slices.
#[derive(Default)]
struct Side {
    secs: f64,
    cpu: f64,
    records: u64,
    syncs: u64,
    lat: Vec<Duration>,
    /// Log rate / floor rate of each slice (the two run back to back in every slice).
    ratios: Vec<f64>,
}

impl Side {
    /// Runs `f` (one slice of publishes on `log`), against the floor's slice of `raw_secs` for
    /// the same number of records.
    fn slice(&mut self, log: &LogTransport, raw_secs: f64, f: impl FnOnce() -> Vec<Duration>) {
        let before = log.stats();
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        self.lat.extend(f());
        let secs = start.elapsed().as_secs_f64();
        self.cpu += cpu_seconds() - cpu0;
        let after = log.stats();
        self.secs += secs;
        self.records += after.records - before.records;
        self.syncs += after.syncs - before.syncs;
        // Same record count on both sides, so the rate ratio is the time ratio.
        self.ratios.push(raw_secs / secs);
    }

    fn run(mut self) -> (Run, Vec<f64>) {
        let records = self.records as f64;
        self.lat.sort_unstable();
        let run = Run {
            rate: records / self.secs,
            p50: percentile(&self.lat, 0.50),
            p99: percentile(&self.lat, 0.99),
            cpu_per_m: self.cpu / records * 1e6,
            per_sync: if self.syncs > 0 {
                records / self.syncs as f64
            } else {
                f64::NAN
            },
        };
        (run, self.ratios)
    }
}

/// How part (b) keeps N publishes outstanding (`SWITCHYARD_LOG_DRIVE=tasks` or `=window` runs
/// only one; both by default).
fn drivers() -> (bool, bool) {
    match std::env::var("SWITCHYARD_LOG_DRIVE").as_deref() {
        Ok("tasks") => (true, false),
        Ok("window") => (false, true),
        _ => (true, true),
    }
}

/// One task keeps `window` publishes of single records outstanding, the way a client of an
/// async-publish API does (JetStream's async publish, a Kafka producer): a
/// `FuturesUnordered` of publish futures, refilled as each completes. Returns every publish
/// latency (from its first poll, where it is encoded and handed over, to its completion).
fn drive_window(
    rt: &tokio::runtime::Runtime,
    log: &LogTransport,
    envs: Vec<Envelope>,
    window: usize,
) -> Vec<Duration> {
    let log = log.clone();
    rt.block_on(async move {
        tokio::spawn(async move {
            // One loop per way of publishing, so each keeps its own (smaller) future.
            if publish_one() {
                keep_window(envs, window, |env| async {
                    let t = Instant::now();
                    log.publish_one(env).await.unwrap();
                    t.elapsed()
                })
                .await
            } else {
                keep_window(envs, window, |env| async {
                    let t = Instant::now();
                    log.publish(vec![env]).await.unwrap();
                    t.elapsed()
                })
                .await
            }
        })
        .await
        .unwrap()
    })
}

/// Keeps `window` futures of `publish` in flight over `envs`; returns what each gave.
async fn keep_window<F, Fut>(envs: Vec<Envelope>, window: usize, publish: F) -> Vec<Duration>
where
    F: Fn(Envelope) -> Fut,
    Fut: Future<Output = Duration>,
{
    let mut lat = Vec::with_capacity(envs.len());
    let mut envs = envs.into_iter();
    let mut inflight: FuturesUnordered<_> = envs.by_ref().take(window).map(&publish).collect();
    while let Some(l) = inflight.next().await {
        lat.push(l);
        if let Some(env) = envs.next() {
            inflight.push(publish(env));
        }
    }
    lat
}

/// Part (b) for one N: the log with `n` publishes of single records outstanding (`per` per
/// publisher), driven two ways (`n` tasks of one publish each; one task keeping `n` in
/// flight), the floor (rounds of `n` records written and synced into a pre-allocated file, as
/// many records as each of the log's slices) and, with a server, JetStream with `n` publishes
/// in flight (`js_total` in all), interleaved in `CHUNKS` slices so a slow spell of the disk
/// hits all. The two ways of driving the log take turns in going first.
fn outstanding(
    rt: &tokio::runtime::Runtime,
    durability: Durability,
    n: usize,
    per: usize,
    server: Option<(&str, Option<&str>, usize)>,
) -> Outstanding {
    const CHUNKS: usize = 10;
    let (run_tasks, run_window) = drivers();
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path()).with_durability(durability)).unwrap();
    drive(rt, &log, work(4, 50)); // warm up; also gives the record size
    let warm = log.stats();
    let record_bytes = (warm.bytes / warm.records.max(1)) as usize;
    if run_window {
        drive_window(rt, &log, envelopes(200), n.min(64)); // warm up
    }
    let mut raw = Raw::new(n, record_bytes);
    raw.run(5);
    let mut js = server.map(|(addr, pid, total)| {
        let mut js = JetStream::new(addr, n);
        js.run(n.min(total)); // warm up
        (js, pid, total)
    });
    let (mut tasks, mut window) = (Side::default(), Side::default());
    let (mut js_secs, mut js_cpu) = (0.0, 0.0);
    let (mut raw_secs, mut raw_records) = (0.0, 0usize);
    let mut js_lat = Vec::new();
    for chunk in 0..CHUNKS {
        let (rs, _) = raw.run(per / CHUNKS);
        raw_secs += rs;
        raw_records += per / CHUNKS * n;
        let w = work(n, per / CHUNKS);
        let flat = envelopes(per / CHUNKS * n);
        let by_tasks = |tasks: &mut Side| {
            if run_tasks {
                tasks.slice(&log, rs, || drive(rt, &log, w));
            }
        };
        let by_window = |window: &mut Side| {
            if run_window {
                window.slice(&log, rs, || drive_window(rt, &log, flat, n));
            }
        };
        if chunk % 2 == 0 {
            by_tasks(&mut tasks);
            by_window(&mut window);
        } else {
            by_window(&mut window);
            by_tasks(&mut tasks);
        }
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
    close(rt, log);
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
        tasks: run_tasks.then_some(tasks),
        window: run_window.then_some(window),
        js: js_run,
        raw_rate: raw_records as f64 / raw_secs,
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
        let mut ratios: HashMap<(&str, usize), Vec<f64>> = HashMap::new();
        let mut floor_ratios: HashMap<(&str, usize), Vec<f64>> = HashMap::new();
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
                    tasks,
                    window,
                    js,
                    raw_rate,
                } = outstanding(&rt, durability, n, per, server.map(|a| (a, pid, total)));
                let mut rates = Vec::new();
                for (way, side) in [("tasks", tasks), ("1 task", window)] {
                    let Some(side) = side else { continue };
                    let (run, slices) = side.run();
                    row(
                        &format!("#{repeat} log {way:<6} N={n}"),
                        &run,
                        &format!(
                            "raw {raw_rate:>9.0} rec/s  log/raw slice median {:.2}x",
                            median(slices.clone())
                        ),
                    );
                    floor_ratios.entry((way, n)).or_default().extend(slices);
                    rates.push((way, run.rate));
                }
                if let Some(js) = js {
                    let mut extra = String::new();
                    for (way, rate) in rates {
                        let ratio = rate / js.rate;
                        ratios.entry((way, n)).or_default().push(ratio);
                        extra += &format!("log ({way})/jetstream {ratio:.1}x  ");
                    }
                    row(&format!("#{repeat} jetstream    N={n}"), &js, &extra);
                }
            }
        }
        println!(
            "   tasks: N tasks, one publish outstanding each; 1 task: one task keeping N \
             publishes outstanding (FuturesUnordered)"
        );
        for &n in &ns {
            for way in ["tasks", "1 task"] {
                let Some(r) = floor_ratios.get(&(way, n)) else {
                    continue;
                };
                println!(
                    "   N={n:<4} {way:<6} log/raw median of {} slice ratios {:.2}x  (min {:.2}x, max {:.2}x){}",
                    r.len(),
                    median(r.clone()),
                    r.iter().copied().fold(f64::INFINITY, f64::min),
                    r.iter().copied().fold(0.0, f64::max),
                    if n == 256 { "  target >= 0.5x" } else { "" },
                );
            }
        }
        if server.is_some() {
            for &n in &ns {
                for way in ["tasks", "1 task"] {
                    let Some(r) = ratios.get(&(way, n)) else {
                        continue;
                    };
                    println!(
                        "   N={n:<4} {way:<6} log/jetstream median {:.1}x  (min {:.1}x, max {:.1}x)",
                        median(r.clone()),
                        r.iter().copied().fold(f64::INFINITY, f64::min),
                        r.iter().copied().fold(0.0, f64::max),
                    );
                }
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
