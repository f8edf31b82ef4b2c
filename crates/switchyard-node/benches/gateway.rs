//! HTTP gateway benchmark, on loopback against a node in this process (memory transport,
//! its defaults: trace buffer and resilience stack on):
//!
//! - publish: `POST /v1/publish/{topic}` requests/s from 32 keep-alive clients, next to
//!   `bus.publish_envelope` in process on the same node and subscription. The two alternate
//!   in `ROUNDS` rounds; the summary gives the median rates and the median of the per-round
//!   ratios (the machine's state changes between runs, so only same-round ratios compare);
//! - request: p50/p99 of `POST /v1/request/{topic}` one at a time (unloaded), next to
//!   `bus.request_envelope`, alternating in blocks.
//!
//! Bounded so it finishes in well under a minute on the 2-core machine:
//! `cargo bench -p switchyard-node --bench gateway` (`-- --quick` for a smoke run).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchyard::{Bus, Envelope, Kind, Outcome, Topic, handler_fn};
use switchyard_node::{Node, NodeConfig};

/// Concurrent keep-alive HTTP clients for the publish rate.
const CLIENTS: usize = 32;

struct Sizes {
    rounds: usize,
    bus_messages: usize,
    http_requests: usize,
    /// Request latency: blocks per side, requests per block.
    latency_blocks: usize,
    latency_block: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            rounds: 3,
            bus_messages: 20_000,
            http_requests: 1_000,
            latency_blocks: 2,
            latency_block: 200,
        }
    } else {
        Sizes {
            rounds: 7,
            bus_messages: 100_000,
            http_requests: 5_000,
            latency_blocks: 6,
            latency_block: 500,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The load client runs as a task on the node's runtime, as a handler would: driven from
    // `block_on`'s thread, every round trip would pay a cross-thread wake on both sides.
    rt.block_on(async { tokio::spawn(run(sizes)).await })
        .expect("benchmark task");
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

async fn run(sizes: Sizes) {
    let config = NodeConfig::from_toml("[transport]\nkind = \"memory\"\n").expect("config");
    let node = Node::start(config).await.expect("node");
    let bus = node.bus().clone();
    bus.subscribe(
        "sink",
        "bench.#",
        handler_fn(|_e: Envelope| async move { Ok::<_, Infallible>(Outcome::Ack) }),
    )
    .queue_capacity(65_536)
    .start()
    .await
    .expect("subscribe")
    .detach();
    bus.handle_envelope(
        "echo",
        "bench.echo",
        handler_fn(|e: Envelope| async move {
            let reply = e.reply(e.payload.clone());
            Ok::<_, Infallible>(Outcome::reply(reply))
        }),
    )
    .start()
    .await
    .expect("handler")
    .detach();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(node.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let url = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");

    println!(
        "switchyard-node HTTP gateway benchmark: {} rounds of {} in-process publishes and {} HTTP publishes ({CLIENTS} clients), alternating",
        sizes.rounds, sizes.bus_messages, sizes.http_requests
    );
    // Warm-up: connections opened, code paths touched.
    http_publish(&http, &url, 1_000).await;
    bus_publish(&bus, 10_000).await;
    let (mut bus_rates, mut http_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..sizes.rounds {
        let b = bus_publish(&bus, sizes.bus_messages).await;
        let h = http_publish(&http, &url, sizes.http_requests).await;
        println!(
            "  round {round}: in-process {b:>10.0} msgs/s   HTTP {h:>8.0} requests/s   ratio {:>6.1}x",
            b / h
        );
        bus_rates.push(b);
        http_rates.push(h);
        ratios.push(b / h);
    }
    println!("publish, medians:");
    println!(
        "  in-process bus.publish_envelope        {:>10.0} msgs/s",
        median(&bus_rates)
    );
    println!(
        "  HTTP POST /v1/publish ({CLIENTS} clients)     {:>10.0} requests/s",
        median(&http_rates)
    );
    println!(
        "  median per-round ratio in-process/HTTP {:>10.1}x",
        median(&ratios)
    );

    // Request latency, one at a time, in-process and HTTP alternating in blocks.
    let (mut bus_hist, mut http_hist) = (histogram(), histogram());
    bus_request(&bus, 200, &mut histogram()).await;
    http_request(&http, &url, 200, &mut histogram()).await;
    for _ in 0..sizes.latency_blocks {
        bus_request(&bus, sizes.latency_block, &mut bus_hist).await;
        http_request(&http, &url, sizes.latency_block, &mut http_hist).await;
    }
    println!(
        "request round trip, one at a time ({} per side after 200 warm-up, microseconds):",
        sizes.latency_blocks * sizes.latency_block
    );
    for (name, h) in [
        ("in-process bus.request_envelope", &bus_hist),
        ("HTTP POST /v1/request", &http_hist),
    ] {
        println!(
            "  {name:<38} p50 {:>7}   p99 {:>7}   max {:>8}",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
}

/// `n` in-process publishes and the wait until the subscriber handled them; msgs/s.
async fn bus_publish(bus: &Bus, n: usize) -> f64 {
    let topic = Topic::new("bench.inproc").expect("topic");
    let started = Instant::now();
    for _ in 0..n {
        bus.publish_envelope(Envelope::new(topic.clone(), &b"{\"v\":1}"[..]))
            .await
            .expect("publish");
    }
    bus.run_until_idle().await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// `n` HTTP publishes from [`CLIENTS`] concurrent clients; requests/s (each answered 202).
async fn http_publish(http: &reqwest::Client, url: &str, n: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let http = http.clone();
        let url = format!("{url}/v1/publish/bench.http");
        let per = n / CLIENTS + usize::from(c < n % CLIENTS);
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let res = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{\"v\":1}")
                    .send()
                    .await
                    .expect("send");
                assert_eq!(res.status(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn bus_request(bus: &Bus, n: usize, hist: &mut Histogram<u64>) {
    let topic = Topic::new("bench.echo").expect("topic");
    for _ in 0..n {
        let env = Envelope::new(topic.clone(), &b"{\"v\":1}"[..]).with_kind(Kind::Request);
        let t = Instant::now();
        bus.request_envelope(env, Duration::from_secs(5))
            .await
            .expect("request");
        hist.record(t.elapsed().as_micros().max(1) as u64)
            .expect("record");
    }
}

async fn http_request(http: &reqwest::Client, url: &str, n: usize, hist: &mut Histogram<u64>) {
    let url = format!("{url}/v1/request/bench.echo?timeout_ms=5000");
    for _ in 0..n {
        let t = Instant::now();
        let res = http
            .post(&url)
            .header("content-type", "application/json")
            .body("{\"v\":1}")
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await.expect("body");
        hist.record(t.elapsed().as_micros().max(1) as u64)
            .expect("record");
    }
}
