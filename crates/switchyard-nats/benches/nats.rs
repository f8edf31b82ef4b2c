//! The NATS transport against raw async-nats JetStream, same server, same stream settings,
//! same run:
//!
//! - `publish_ack`: 100 messages of 64 bytes published and acknowledged by JetStream,
//!   pipelined (`NatsTransport::publish(batch)` vs `send_publish` x100 then awaiting the acks,
//!   each with a `Nats-Msg-Id`).
//! - `publish_one`: one message at a time, waiting for its acknowledgement.
//! - `end_to_end`: 500 messages published, pulled by a durable consumer and acked.
//! - `request_reply`: one core NATS request/reply round trip.
//! - `max_payload_check`: what the size check before every publish, command and reply costs:
//!   `max_message_bytes()` (the transport's `max_payload`, the limit that check reads) vs
//!   `Client::server_info().max_payload` (a copy of the server's whole INFO: its strings and
//!   `connect_urls`).
//!
//! After the criterion groups it prints an interleaved summary with the ratios
//! (switchyard / raw throughput).
//!
//! Run: `CARGO_TARGET_DIR=/work/target-nats cargo bench -p switchyard-nats --bench nats`
//! (server: `SWITCHYARD_BENCH_NATS`, default `nats://127.0.0.1:4222`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, context::Publish, stream};
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use switchyard_core::{Envelope, MessageId, Pattern, Publisher, Subscriber, Topic};
use switchyard_nats::{NatsConfig, NatsSubscription, NatsTransport};

const PAYLOAD: [u8; 64] = [7u8; 64];
const BATCH: usize = 100;
const E2E: usize = 500;

fn url() -> String {
    std::env::var("SWITCHYARD_BENCH_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Fixture {
    sy: NatsTransport,
    sy_sub: NatsSubscription,
    raw: jetstream::Context,
    raw_client: async_nats::Client,
    raw_messages: pull::Stream,
    ns: String,
    _responders: Vec<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    async fn new() -> Self {
        let ns = format!("bench{}", MessageId::new().to_string().to_ascii_lowercase());
        let sy = NatsTransport::connect(
            NatsConfig::new(url())
                .with_stream(
                    format!("{ns}_sy"),
                    [Pattern::new(&format!("{ns}.sy.#")).unwrap()],
                )
                .with_max_age(Duration::from_secs(600)),
        )
        .await
        .expect("NATS server for the benchmark");
        let sy_sub = sy
            .subscribe(
                &Pattern::new(&format!("{ns}.sy.e2e")).unwrap(),
                Some("bench"),
            )
            .await
            .unwrap();
        // The raw side: same stream settings, same kind of consumer.
        let raw_client = async_nats::connect(url()).await.unwrap();
        let mut raw = jetstream::new(raw_client.clone());
        raw.set_timeout(Duration::from_secs(2));
        let stream = raw
            .create_stream(stream::Config {
                name: format!("{ns}_raw"),
                subjects: vec![format!("{ns}.raw"), format!("{ns}.raw.>")],
                max_age: Duration::from_secs(600),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1024,
                filter_subject: format!("{ns}.raw.e2e"),
                ..Default::default()
            })
            .await
            .unwrap();
        let raw_messages = consumer
            .stream()
            .max_messages_per_batch(64)
            .messages()
            .await
            .unwrap();
        // Echo responders for request/reply, one per side.
        let mut requests = sy
            .respond(&Pattern::new(&format!("{ns}.rr")).unwrap(), None)
            .await
            .unwrap();
        let sy_responder = tokio::spawn(async move {
            while let Some(r) = requests.next().await {
                let reply = r.envelope.reply(r.envelope.payload.clone());
                let _ = r.reply(reply).await;
            }
        });
        let mut raw_requests = raw_client.subscribe(format!("{ns}.rawrr")).await.unwrap();
        let c = raw_client.clone();
        let raw_responder = tokio::spawn(async move {
            while let Some(m) = raw_requests.next().await {
                if let Some(to) = m.reply {
                    let _ = c.publish(to, m.payload).await;
                }
            }
        });
        raw_client.flush().await.unwrap();
        Self {
            sy,
            sy_sub,
            raw,
            raw_client,
            raw_messages,
            ns,
            _responders: vec![sy_responder, raw_responder],
        }
    }

    fn topic(&self, t: &str) -> Topic {
        Topic::new(&format!("{}.sy.{t}", self.ns)).unwrap()
    }

    async fn sy_publish(&self, n: usize, t: &Topic) {
        let batch: Vec<Envelope> = (0..n)
            .map(|_| Envelope::new(t.clone(), Bytes::from_static(&PAYLOAD)))
            .collect();
        self.sy.publish(batch).await.unwrap();
    }

    async fn raw_publish(&self, n: usize, subject: &str) {
        let mut acks = Vec::with_capacity(n);
        for _ in 0..n {
            let p = Publish::build()
                .payload(Bytes::from_static(&PAYLOAD))
                .message_id(MessageId::new().to_string());
            acks.push(self.raw.send_publish(subject.to_owned(), p).await.unwrap());
        }
        for a in acks {
            a.await.unwrap();
        }
    }

    async fn sy_e2e(&mut self) {
        let t = self.topic("e2e");
        self.sy_publish(E2E, &t).await;
        for _ in 0..E2E {
            let d = self.sy_sub.next().await.unwrap();
            d.ack().await.unwrap();
        }
    }

    async fn raw_e2e(&mut self) {
        let subject = format!("{}.raw.e2e", self.ns);
        self.raw_publish(E2E, &subject).await;
        for _ in 0..E2E {
            let m = self.raw_messages.next().await.unwrap().unwrap();
            m.ack().await.unwrap();
        }
    }

    async fn sy_request(&self) {
        let req = Envelope::new(
            Topic::new(&format!("{}.rr", self.ns)).unwrap(),
            Bytes::from_static(&PAYLOAD),
        );
        self.sy.request(req, Duration::from_secs(2)).await.unwrap();
    }

    async fn raw_request(&self) {
        self.raw_client
            .request(format!("{}.rawrr", self.ns), Bytes::from_static(&PAYLOAD))
            .await
            .unwrap();
    }

    async fn cleanup(&self) {
        let _ = self.raw.delete_stream(format!("{}_raw", self.ns)).await;
        let _ = self.raw.delete_stream(format!("{}_sy", self.ns)).await;
    }
}

/// Interleaved rounds of both sides; returns (switchyard, raw) messages per second.
fn rounds<A, B>(
    rt: &tokio::runtime::Runtime,
    fx: &mut Fixture,
    msgs: usize,
    mut sy: A,
    mut raw: B,
) -> (f64, f64)
where
    A: FnMut(&tokio::runtime::Runtime, &mut Fixture),
    B: FnMut(&tokio::runtime::Runtime, &mut Fixture),
{
    let (mut t_sy, mut t_raw) = (Duration::ZERO, Duration::ZERO);
    let n = 5;
    for _ in 0..n {
        let at = Instant::now();
        sy(rt, fx);
        t_sy += at.elapsed();
        let at = Instant::now();
        raw(rt, fx);
        t_raw += at.elapsed();
    }
    let total = (msgs * n) as f64;
    (total / t_sy.as_secs_f64(), total / t_raw.as_secs_f64())
}

fn main() {
    let addr = url().trim_start_matches("nats://").to_owned();
    let reachable = addr
        .parse()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok());
    if !reachable {
        eprintln!("NATS server unreachable at {}; benchmark skipped", url());
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Drops (async-nats subscribers) need the runtime's context.
    let _guard = rt.enter();
    let mut fx = rt.block_on(Fixture::new());
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();

    {
        let mut g = c.benchmark_group("max_payload_check");
        g.bench_function("switchyard", |b| {
            b.iter(|| Publisher::max_message_bytes(std::hint::black_box(&fx.sy)))
        });
        g.bench_function("raw_server_info", |b| {
            b.iter(|| {
                std::hint::black_box(&fx.raw_client)
                    .server_info()
                    .max_payload
            })
        });
        g.finish();
        // What each check copied before: every non-empty string of the INFO, and the
        // `connect_urls` vector with each of its strings (one allocation each).
        let info = fx.raw_client.server_info();
        let strings = [
            &info.server_id,
            &info.server_name,
            &info.host,
            &info.version,
            &info.go,
            &info.nonce,
            &info.client_ip,
        ];
        let mut allocations = strings.iter().filter(|s| !s.is_empty()).count();
        let mut bytes: usize = strings.iter().map(|s| s.len()).sum();
        if !info.connect_urls.is_empty() {
            allocations += 1 + info.connect_urls.len();
            bytes += info.connect_urls.iter().map(String::len).sum::<usize>();
        }
        println!(
            "server_info() copy: {allocations} allocations, {bytes} bytes of strings per call \
             (connect_urls: {})",
            info.connect_urls.len()
        );
    }
    let sy_topic = fx.topic("pub");
    let raw_subject = format!("{}.raw.pub", fx.ns);
    {
        let mut g = c.benchmark_group("publish_ack");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("switchyard", |b| {
            b.iter(|| rt.block_on(fx.sy_publish(BATCH, &sy_topic)))
        });
        g.bench_function("raw_async_nats", |b| {
            b.iter(|| rt.block_on(fx.raw_publish(BATCH, &raw_subject)))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("publish_one");
        g.throughput(Throughput::Elements(1));
        g.bench_function("switchyard", |b| {
            b.iter(|| rt.block_on(fx.sy_publish(1, &sy_topic)))
        });
        g.bench_function("raw_async_nats", |b| {
            b.iter(|| rt.block_on(fx.raw_publish(1, &raw_subject)))
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("end_to_end");
        g.throughput(Throughput::Elements(E2E as u64));
        g.bench_function("switchyard", |b| b.iter(|| rt.block_on(fx.sy_e2e())));
        g.bench_function("raw_async_nats", |b| b.iter(|| rt.block_on(fx.raw_e2e())));
        g.finish();
    }
    {
        let mut g = c.benchmark_group("request_reply");
        g.bench_function("switchyard", |b| b.iter(|| rt.block_on(fx.sy_request())));
        g.bench_function("raw_async_nats", |b| {
            b.iter(|| rt.block_on(fx.raw_request()))
        });
        g.finish();
    }

    // Interleaved summary (same run, alternating sides to share any drift).
    let t = sy_topic.clone();
    let s = raw_subject.clone();
    let (sy_pub, raw_pub) = rounds(
        &rt,
        &mut fx,
        BATCH * 20,
        |rt, fx| {
            for _ in 0..20 {
                rt.block_on(fx.sy_publish(BATCH, &t));
            }
        },
        |rt, fx| {
            for _ in 0..20 {
                rt.block_on(fx.raw_publish(BATCH, &s));
            }
        },
    );
    let (sy_e2e, raw_e2e) = rounds(
        &rt,
        &mut fx,
        E2E * 2,
        |rt, fx| {
            rt.block_on(fx.sy_e2e());
            rt.block_on(fx.sy_e2e());
        },
        |rt, fx| {
            rt.block_on(fx.raw_e2e());
            rt.block_on(fx.raw_e2e());
        },
    );
    let (sy_rr, raw_rr) = rounds(
        &rt,
        &mut fx,
        200,
        |rt, fx| {
            for _ in 0..200 {
                rt.block_on(fx.sy_request());
            }
        },
        |rt, fx| {
            for _ in 0..200 {
                rt.block_on(fx.raw_request());
            }
        },
    );
    println!("\nsummary (messages/s, interleaved rounds; ratio = switchyard / raw async-nats)");
    println!(
        "publish+ack, batches of {BATCH}: switchyard {sy_pub:.0}/s, raw {raw_pub:.0}/s, ratio {:.2}",
        sy_pub / raw_pub
    );
    println!(
        "end to end (publish, pull, ack) {E2E}: switchyard {sy_e2e:.0}/s, raw {raw_e2e:.0}/s, ratio {:.2}",
        sy_e2e / raw_e2e
    );
    println!(
        "request/reply: switchyard {:.0} us, raw {:.0} us per round trip, ratio {:.2}",
        1e6 / sy_rr,
        1e6 / raw_rr,
        sy_rr / raw_rr
    );
    rt.block_on(fx.cleanup());
}
