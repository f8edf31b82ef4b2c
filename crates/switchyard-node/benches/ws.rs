//! WebSocket gateway benchmark, on loopback against a node in this process (memory
//! transport, one counting subscriber on the published topic):
//!
//! - publish msgs/s from a Rust client: one `publish` frame per message, pipelined (at most
//!   `WINDOW` unanswered; each `published` answer frees a slot), and `publish_batch` frames
//!   of `BATCH` messages; next to `bus.publish_envelope` in process, same node. The three
//!   alternate in `RUNS` rounds; the summary gives median rates and the median of the
//!   per-round ratios in-process / WebSocket (only same-round ratios compare: the machine's
//!   state changes between runs);
//! - p50/p99 of `request` over WebSocket (one at a time) next to `bus.request_envelope`.
//!
//! Run: `cargo bench -p switchyard-node --bench ws` (`-- --quick` for fewer messages).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark binary

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use switchyard::{Bus, Envelope, Kind, Outcome, Topic};
use switchyard_node::{Node, NodeConfig};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Unanswered single publishes in flight.
const WINDOW: usize = 4096;
/// Messages per `publish_batch` frame.
const BATCH: usize = 100;
const RUNS: usize = 5;

fn payload(n: u64) -> String {
    format!(r#"{{"n":{n},"sensor":"s-17","value":21.5}}"#)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let messages: u64 = if quick { 20_000 } else { 100_000 };
    let requests: u64 = if quick { 2_000 } else { 20_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The load client runs as a task on the node's runtime, as a handler would: driven from
    // `block_on`'s thread, every round trip would pay a cross-thread wake on both sides.
    rt.block_on(async { tokio::spawn(run(messages, requests)).await })
        .expect("benchmark task");
}

async fn run(messages: u64, requests: u64) {
    let config = NodeConfig::from_toml(
        "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"memory\"\n[retention]\ntrace_messages = 0\n[bus]\nqueue_capacity = 65536",
    )
    .unwrap();
    let node = Node::start(config).await.unwrap();
    let bus = node.bus().clone();
    let consumed = Arc::new(AtomicU64::new(0));
    let seen = consumed.clone();
    let _counter = bus
        .subscribe(
            "bench-counter",
            "bench.#",
            switchyard::handler_fn(move |_env: Envelope| {
                seen.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, std::convert::Infallible>(Outcome::Ack) }
            }),
        )
        .start()
        .await
        .unwrap();
    let _echo = bus
        .handle_envelope(
            "bench-echo",
            "bench.echo",
            switchyard::handler_fn(|env: Envelope| async move {
                let reply = env.reply(env.payload.clone());
                Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
            }),
        )
        .workers(2)
        .start()
        .await
        .unwrap();
    let listener = node.bind().await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(node.serve(listener, async move {
        let _ = stopped.await;
    }));

    println!(
        "switchyard-node WebSocket benchmark: {messages} messages per publish run, {requests} requests per latency run, {RUNS} runs each"
    );
    println!("publish (msgs/s accepted; median of runs, [all runs]):");
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("in-process bus.publish_envelope", Vec::new()),
        ("WebSocket publish, 1 frame/msg", Vec::new()),
        ("WebSocket publish_batch (100/frame)", Vec::new()),
    ];
    for _ in 0..RUNS {
        rows[0].1.push(bus_publish(&bus, messages).await);
        bus.run_until_idle().await;
        rows[1].1.push(ws_publish(&url, messages).await);
        bus.run_until_idle().await;
        rows[2].1.push(ws_publish_batch(&url, messages).await);
        bus.run_until_idle().await;
    }
    for (name, runs) in &rows {
        println!(
            "  {name:<38} {:>10.0}   {:?}",
            median(runs),
            runs.iter().map(|r| r.round() as u64).collect::<Vec<_>>()
        );
    }
    for (k, name) in [(1, "1 frame/msg"), (2, "publish_batch")] {
        let ratios: Vec<f64> = rows[0]
            .1
            .iter()
            .zip(&rows[k].1)
            .map(|(b, w)| b / w)
            .collect();
        println!(
            "  median per-round ratio in-process / WebSocket {name}: {:.2}x   {:?}",
            median(&ratios),
            ratios
                .iter()
                .map(|r| (r * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        consumed.load(Ordering::Relaxed),
        messages * 3 * RUNS as u64,
        "every published message reached the subscriber"
    );

    println!("request round trip (one at a time, microseconds):");
    let bus_hist = bus_request(&bus, requests).await;
    let ws_hist = ws_request(&url, requests).await;
    for (name, h) in [
        ("in-process bus.request_envelope", &bus_hist),
        ("WebSocket request", &ws_hist),
    ] {
        println!(
            "  {name:<38} p50 {:>7.1}   p99 {:>7.1}   max {:>8.1}",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
    let _ = stop.send(());
    let _ = served.await;
}

fn median(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn bus_publish(bus: &Bus, n: u64) -> f64 {
    let topic = Topic::new("bench.bus").unwrap();
    let started = Instant::now();
    for i in 0..n {
        let env = Envelope::new(topic.clone(), payload(i));
        bus.publish_envelope(env).await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Sends `frames` (each answered by one frame of op `answer_op`) pipelined with at most
/// `window` unanswered; returns the time from the first send to the last answer.
async fn pipelined(
    url: &str,
    frames: Vec<String>,
    window: usize,
    answer_op: &'static str,
) -> Duration {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let total = frames.len();
    let slots = Arc::new(Semaphore::new(window));
    let freed = slots.clone();
    let prefix = format!(r#"{{"op":"{answer_op}""#);
    let reader = tokio::spawn(async move {
        let mut answered = 0;
        while answered < total {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    assert!(t.as_str().starts_with(&prefix), "unexpected answer {t}");
                    answered += 1;
                    freed.add_permits(1);
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
        Instant::now()
    });
    let started = Instant::now();
    let mut unflushed = 0;
    for f in frames {
        if slots.try_acquire().map(|p| p.forget()).is_err() {
            sink.flush().await.unwrap();
            unflushed = 0;
            slots.acquire().await.unwrap().forget();
        }
        sink.feed(Message::text(f)).await.unwrap();
        unflushed += 1;
        if unflushed == 64 {
            sink.flush().await.unwrap();
            unflushed = 0;
        }
    }
    sink.flush().await.unwrap();
    let finished = reader.await.unwrap();
    let _ = sink.close().await;
    finished - started
}

async fn ws_publish(url: &str, n: u64) -> f64 {
    let frames = (0..n)
        .map(|i| {
            format!(
                r#"{{"op":"publish","topic":"bench.ws","payload":{}}}"#,
                payload(i)
            )
        })
        .collect();
    let took = pipelined(url, frames, WINDOW, "published").await;
    n as f64 / took.as_secs_f64()
}

async fn ws_publish_batch(url: &str, n: u64) -> f64 {
    let frames: Vec<String> = (0..n)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|chunk| {
            let items: Vec<String> = chunk
                .iter()
                .map(|i| format!(r#"{{"topic":"bench.batch","payload":{}}}"#, payload(*i)))
                .collect();
            format!(
                r#"{{"op":"publish_batch","messages":[{}]}}"#,
                items.join(",")
            )
        })
        .collect();
    let took = pipelined(url, frames, WINDOW / BATCH, "published_batch").await;
    n as f64 / took.as_secs_f64()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

async fn bus_request(bus: &Bus, n: u64) -> Histogram<u64> {
    let topic = Topic::new("bench.echo").unwrap();
    let mut h = histogram();
    for i in 0..n + n / 10 {
        let env = Envelope::new(topic.clone(), payload(i)).with_kind(Kind::Request);
        let started = Instant::now();
        bus.request_envelope(env, Duration::from_secs(5))
            .await
            .unwrap();
        if i >= n / 10 {
            h.record(started.elapsed().as_nanos() as u64).unwrap();
        }
    }
    h
}

async fn ws_request(url: &str, n: u64) -> Histogram<u64> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut h = histogram();
    for i in 0..n + n / 10 {
        let frame = json!({"op": "request", "id": i, "topic": "bench.echo", "payload": {"n": i}});
        let started = Instant::now();
        ws.send(Message::text(frame.to_string())).await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    assert!(t.as_str().starts_with(r#"{"op":"reply""#), "{t}");
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
        if i >= n / 10 {
            h.record(started.elapsed().as_nanos() as u64).unwrap();
        }
    }
    let _ = ws.close(None).await;
    h
}
