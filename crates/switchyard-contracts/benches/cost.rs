//! Cost per message of boundary validation and of payload encryption, 64 B and 4 KiB payloads,
//! against the same path without them (issue 19).
//!
//! Two measurements, each in rounds that interleave the variants (the order rotates every
//! round) so load on the machine hits them alike; the figure is the median over rounds:
//!
//! 1. **Path**: a bus on the embedded log (`Durability::Never`, so disk syncs do not drown the
//!    difference) publishes N messages that an envelope handler receives: plain, with the
//!    `Validator` as intake check, with `Encryption` as transport codec. Reported: µs per
//!    message of each, and the median of the per-round ratios variant / plain.
//! 2. **Step**: the added work alone, ns per message: `Validator::check`, and `seal` + `open`,
//!    next to the envelope clone every transport delivery already costs.
//!
//! `cargo bench -p switchyard-contracts --bench cost` (env `ROUNDS`, default 11; `MESSAGES`,
//! default 1000).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Envelope, Message, Topic};
use switchyard_contracts::{Contract, Encryption, JsonSchema, Keyring, Registry, Validator};
use switchyard_log::{Durability, LogConfig, LogTransport};
use tokio::sync::Notify;

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
struct Reading {
    id: u64,
    data: String,
}
impl Message for Reading {
    const TOPIC: &'static str = "bench.reading";
}
impl Contract for Reading {}

/// A valid `Reading` whose JSON is exactly `size` bytes.
fn payload(size: usize) -> Vec<u8> {
    let empty = br#"{"id":1,"data":""}"#.len();
    let json = format!(r#"{{"id":1,"data":"{}"}}"#, "x".repeat(size - empty));
    assert_eq!(json.len(), size);
    json.into_bytes()
}

fn validator() -> Validator {
    let mut registry = Registry::new();
    registry.register::<Reading>().expect("register");
    Validator::new(&registry).expect("compile")
}

fn encryption() -> Encryption {
    let keys = Keyring::new()
        .with_key("k1", &[1; 32])
        .and_then(|k| k.with_key("k2", &[2; 32]))
        .expect("keys");
    Encryption::new(keys)
        .and_then(|e| e.topic("bench.#"))
        .expect("encryption")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Plain,
    Validated,
    Encrypted,
}
const VARIANTS: [Variant; 3] = [Variant::Plain, Variant::Validated, Variant::Encrypted];

/// One run of the path: µs per message, publish of the first to receipt of the last.
async fn path_run(variant: Variant, size: usize, messages: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = LogTransport::open(LogConfig::new(dir.path()).with_durability(Durability::Never))
        .expect("log");
    let mut builder = Bus::builder().transport(log);
    builder = match variant {
        Variant::Plain => builder,
        Variant::Validated => builder.intake_check(validator().intake_check()),
        Variant::Encrypted => builder.transport_codec(encryption()),
    };
    let bus = builder.build().expect("bus");
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (s, d) = (seen.clone(), done.clone());
    let _sub = bus
        .subscribe(
            "bench",
            "bench.#",
            switchyard::handler_fn(move |env: Envelope| {
                let (s, d) = (s.clone(), d.clone());
                async move {
                    black_box(&env.payload);
                    if s.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                        d.notify_one();
                    }
                    Ok::<_, std::convert::Infallible>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .expect("subscribe");
    let topic = Topic::new(Reading::TOPIC).expect("topic");
    let body = bytes::Bytes::from(payload(size));
    let start = Instant::now();
    for _ in 0..messages {
        bus.publish_envelope(Envelope::new(topic.clone(), body.clone()))
            .await
            .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(120), done.notified())
        .await
        .expect("all messages handled");
    let per = start.elapsed().as_secs_f64() * 1e6 / messages as f64;
    let report = bus
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shutdown");
    black_box(report);
    assert_eq!(seen.load(Ordering::Relaxed), messages, "{variant:?}");
    per
}

/// One run of a step: ns per message over `n` calls.
fn step_run(n: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e9 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) runs once,
    // small, as a smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let rounds = if benching { env_usize("ROUNDS", 11) } else { 1 };
    let messages = if benching {
        env_usize("MESSAGES", 1000)
    } else {
        50
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("rounds {rounds}, {messages} messages per path run, variants interleaved");
    for size in [64usize, 4096] {
        // Path: plain / validated / encrypted, the order rotating each round.
        let mut per: [Vec<f64>; 3] = Default::default();
        let mut ratio_validated = Vec::new();
        let mut ratio_encrypted = Vec::new();
        for round in 0..rounds {
            let mut this = [0.0; 3];
            for k in 0..3 {
                let i = (round + k) % 3;
                this[i] = rt.block_on(path_run(VARIANTS[i], size, messages));
            }
            for i in 0..3 {
                per[i].push(this[i]);
            }
            ratio_validated.push(this[1] / this[0]);
            ratio_encrypted.push(this[2] / this[0]);
        }
        let [plain, validated, encrypted] = per.map(median);
        println!(
            "path {size:>5} B  plain {plain:8.2} µs/msg | validated {validated:8.2} µs/msg (ratio {:.3}) | encrypted {encrypted:8.2} µs/msg (ratio {:.3})",
            median(ratio_validated),
            median(ratio_encrypted),
        );

        // Step: the added work alone.
        let v = validator();
        let e = encryption();
        let env = Envelope::new(
            Topic::new(Reading::TOPIC).expect("topic"),
            bytes::Bytes::from(payload(size)),
        );
        let n = messages * 20;
        let mut steps: [Vec<f64>; 3] = Default::default();
        for round in 0..rounds {
            for k in 0..3 {
                let i = (round + k) % 3;
                let ns = match i {
                    0 => step_run(n, || {
                        black_box(env.clone());
                    }),
                    1 => step_run(n, || {
                        black_box(v.check(black_box(&env)));
                    }),
                    _ => step_run(n, || {
                        let mut m = env.clone();
                        e.seal(&mut m).expect("seal");
                        e.open(&mut m).expect("open");
                        black_box(m);
                    }),
                };
                steps[i].push(ns);
            }
        }
        let [clone, check, seal_open] = steps.map(median);
        println!(
            "step {size:>5} B  envelope clone {clone:8.0} ns | Validator::check {check:8.0} ns | seal+open {seal_open:8.0} ns"
        );
    }
}
