//! Gateway benchmark: HTTP publish requests/s from a Rust client on loopback next to the
//! in-process bus publish in the same run, and p50/p99 of `request` over HTTP (unloaded).
//!
//! `cargo bench -p switchyard-node --bench gateway` (env BENCH_SCALE=0.1 for a quick run).
//! The node runs in memory with its defaults (trace buffer and resilience stack on).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchyard::{Envelope, Outcome, Topic, handler_fn};
use switchyard_node::{Node, NodeConfig};

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(100)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
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

    // 1. In-process publish (same bus, same subscription).
    let n = scale(200_000);
    let topic = Topic::new("bench.inproc").expect("topic");
    let started = Instant::now();
    for _ in 0..n {
        bus.publish_envelope(Envelope::new(topic.clone(), &b"{\"v\":1}"[..]))
            .await
            .expect("publish");
    }
    bus.run_until_idle().await;
    let inproc = n as f64 / started.elapsed().as_secs_f64();
    println!("in-process publish:        {inproc:>10.0} msgs/s ({n} messages)");

    // 2. HTTP publish, 32 concurrent keep-alive clients.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let n = scale(40_000);
    let clients = 32;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let url = format!("{url}/v1/publish/bench.http");
        let per = n / clients + usize::from(c < n % clients);
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
    let http_rate = n as f64 / started.elapsed().as_secs_f64();
    bus.run_until_idle().await;
    println!(
        "HTTP publish ({clients} clients): {http_rate:>10.0} requests/s ({n} requests; {:.1}x slower than in-process)",
        inproc / http_rate
    );

    // 3. HTTP request latency, one client, unloaded.
    let n = scale(5_000);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let url_req = format!("{url}/v1/request/bench.echo?timeout_ms=5000");
    for i in 0..n + 200 {
        let t = Instant::now();
        let res = http
            .post(&url_req)
            .header("content-type", "application/json")
            .body("{\"v\":1}")
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 200);
        let _ = res.bytes().await.expect("body");
        if i >= 200 {
            hist.record(t.elapsed().as_micros() as u64).expect("record");
        }
    }
    println!(
        "HTTP request latency:      p50 {} µs, p99 {} µs, max {} µs ({n} requests after 200 warm-up)",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
}
