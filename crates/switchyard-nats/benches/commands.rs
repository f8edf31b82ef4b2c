//! Issue 17: a command round trip across two connections over NATS (`bus.send` on one bus,
//! its handler on another bus with its own connection) against raw async-nats request/reply
//! on the same server (a requester connection and a responder connection, the responder
//! parsing the JSON request and answering the doubled number, as the handler does).
//!
//! Both are driven from a task on a two-worker runtime, sequential round trips, alternating
//! in one run: each round measures `ROUND` raw round trips and `ROUND` bus round trips (the
//! order flips every round); the figure is the median over rounds of raw time / bus time
//! (1.0 = as fast as the raw client).
//!
//! Run: `cargo bench -p switchyard-nats --bench commands` (server: `SWITCHYARD_BENCH_NATS`,
//! default `nats://127.0.0.1:4222`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Kind, Message, MessageId};
use switchyard_nats::{NatsConfig, NatsTransport};

const ROUNDS: usize = 21;
const ROUND: usize = 400;
const WARMUP: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Double {
    n: u64,
}

impl Message for Double {
    const TOPIC: &'static str = "bench.double";
    const KIND: Kind = Kind::Command;
}

impl Command for Double {
    type Output = u64;
}

fn url() -> String {
    std::env::var("SWITCHYARD_BENCH_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn raw_round(client: &async_nats::Client, subject: &str, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n as u64 {
        let body = serde_json::to_vec(&Double { n: i }).unwrap();
        let reply = client
            .request(subject.to_owned(), body.into())
            .await
            .unwrap();
        let v: u64 = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v, i * 2);
    }
    start.elapsed()
}

async fn bus_round(bus: &Bus, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n as u64 {
        assert_eq!(bus.send(Double { n: i }).await.unwrap(), i * 2);
    }
    start.elapsed()
}

async fn run(quick: bool) {
    let (rounds, round_len, warmup) = if quick {
        (3, 20, 10)
    } else {
        (ROUNDS, ROUND, WARMUP)
    };
    let prefix = format!("_sy.bench.{}", MessageId::new());
    // Raw: a responder on its own connection.
    let responder = async_nats::connect(url()).await.expect("NATS server");
    let requester = async_nats::connect(url()).await.unwrap();
    let raw_subject = format!("{prefix}.raw.double");
    let mut sub = responder
        .queue_subscribe(raw_subject.clone(), "raw".into())
        .await
        .unwrap();
    responder.flush().await.unwrap();
    let r = responder.clone();
    let raw_task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let d: Double = serde_json::from_slice(&msg.payload).unwrap();
            let out = serde_json::to_vec(&(d.n * 2)).unwrap();
            if let Some(to) = msg.reply {
                r.publish(to, out.into()).await.unwrap();
            }
        }
    });
    // The bus: a handler bus and a sender bus, each on its own connection.
    let config = || {
        let mut c = NatsConfig::new(url());
        c.command_prefix = format!("{prefix}.sy");
        c
    };
    let handler_bus = Bus::builder()
        .transport(NatsTransport::connect(config()).await.unwrap())
        .build()
        .unwrap();
    let _handler = handler_bus
        .handle(|c: Double, _ctx| async move { Ok::<_, std::io::Error>(c.n * 2) })
        .start()
        .await
        .unwrap();
    let sender = Bus::builder()
        .transport(NatsTransport::connect(config()).await.unwrap())
        .build()
        .unwrap();

    raw_round(&requester, &raw_subject, warmup).await;
    bus_round(&sender, warmup).await;
    let mut ratios = Vec::new();
    let mut raw_us = Vec::new();
    let mut bus_us = Vec::new();
    for round in 0..rounds {
        let (raw, bus) = if round % 2 == 0 {
            let raw = raw_round(&requester, &raw_subject, round_len).await;
            (raw, bus_round(&sender, round_len).await)
        } else {
            let bus = bus_round(&sender, round_len).await;
            (raw_round(&requester, &raw_subject, round_len).await, bus)
        };
        ratios.push(raw.as_secs_f64() / bus.as_secs_f64());
        raw_us.push(raw.as_secs_f64() * 1e6 / round_len as f64);
        bus_us.push(bus.as_secs_f64() * 1e6 / round_len as f64);
    }
    println!(
        "command round trip over NATS, two connections, {rounds} rounds x {round_len} sequential round trips"
    );
    println!(
        "  raw async-nats request/reply: median {:.1} us/round trip",
        median(raw_us)
    );
    println!(
        "  switchyard bus.send -> handler bus: median {:.1} us/round trip",
        median(bus_us)
    );
    let mut sorted = ratios.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "  switchyard / raw throughput: median of per-round ratios {:.3} (min {:.3}, max {:.3})",
        median(ratios),
        sorted[0],
        sorted[sorted.len() - 1]
    );
    raw_task.abort();
}

fn main() {
    // `cargo bench` passes `--bench`; built and run as a test (`--all-targets`), one quick
    // pass only.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tokio::spawn(run(quick)).await.unwrap() });
}
