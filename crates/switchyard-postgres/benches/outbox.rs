//! Outbox throughput and commit→handler latency, against the same transactions without an
//! outbox (business insert, commit, then `bus.publish`: the dual write the outbox replaces),
//! at 1 and 16 concurrent writers. Floor and outbox alternate within each round; the summary
//! is the median of the per-round ratios.
//!
//! `cargo bench -p switchyard-postgres --bench outbox` (PostgreSQL on 127.0.0.1:5432, db
//! `test`, or `SWITCHYARD_PG_URL`; `BENCH_ROUNDS`, `BENCH_TXS` override the defaults; `BENCH_NOTIFY=0` writes without
//! `NOTIFY`, the relay polling every 5 ms; `BENCH_KEYS=n` writes with `publish_keyed` over n
//! ordering keys).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use switchyard::{Bus, Message, MessageId};
use switchyard_postgres::{Outbox, Relay, Retention, Schema, migrate};
use tokio::sync::Notify;

#[derive(Clone, Serialize, Deserialize)]
struct Placed {
    order: i64,
}
impl Message for Placed {
    const TOPIC: &'static str = "bench.placed";
}

#[derive(Default)]
struct Times {
    committed: Mutex<HashMap<MessageId, Instant>>,
    handled: Mutex<HashMap<MessageId, Instant>>,
    done: Notify,
    want: Mutex<usize>,
}

struct Phase {
    tps: f64,
    p50: Duration,
    p99: Duration,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn phase(
    pool: &PgPool,
    schema: &Schema,
    bus: &Bus,
    times: &Arc<Times>,
    writers: usize,
    txs: usize,
    outbox: bool,
) -> Phase {
    times.committed.lock().clear();
    times.handled.lock().clear();
    *times.want.lock() = txs;
    let insert: Arc<str> =
        format!("INSERT INTO {schema}.orders (v) VALUES ($1) RETURNING id").into();
    let notify = std::env::var("BENCH_NOTIFY").map_or(true, |v| v != "0");
    let keys = env_usize("BENCH_KEYS", 0);
    let ob = Outbox::new(schema.clone()).notify(notify);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (pool, bus, times, insert, ob) = (
            pool.clone(),
            bus.clone(),
            times.clone(),
            insert.clone(),
            ob.clone(),
        );
        let n = txs / writers + usize::from(w < txs % writers);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let mut tx = pool.begin().await.expect("begin");
                let order: i64 = sqlx::query_scalar(&insert)
                    .bind(i as i64)
                    .fetch_one(&mut *tx)
                    .await
                    .expect("insert");
                let msg = Placed { order };
                if outbox {
                    let id = match keys {
                        0 => ob.publish(&mut tx, msg).await,
                        n => {
                            let key = format!("k{}", order.rem_euclid(n as i64));
                            ob.publish_keyed(&mut tx, &key, msg).await
                        }
                    }
                    .expect("outbox");
                    tx.commit().await.expect("commit");
                    times.committed.lock().insert(id, Instant::now());
                } else {
                    tx.commit().await.expect("commit");
                    let env = msg.to_envelope().expect("envelope");
                    times
                        .committed
                        .lock()
                        .insert(env.id.clone(), Instant::now());
                    bus.publish_envelope(env).await.expect("publish");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let notified = times.done.notified();
    if times.handled.lock().len() < txs {
        tokio::time::timeout(Duration::from_secs(60), notified)
            .await
            .expect("every message handled");
    }
    let elapsed = start.elapsed();
    let committed = times.committed.lock();
    let handled = times.handled.lock();
    // A handler can run before the writer has noted the commit time (the relay sees the row
    // at commit): such a latency counts as zero.
    let mut lat: Vec<Duration> = committed
        .iter()
        .map(|(id, c)| {
            handled
                .get(id)
                .map_or(Duration::ZERO, |h| h.saturating_duration_since(*c))
        })
        .collect();
    lat.sort();
    Phase {
        tps: txs as f64 / elapsed.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[(lat.len() * 99 / 100).min(lat.len() - 1)],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let url = std::env::var("SWITCHYARD_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = match PgPoolOptions::new().max_connections(24).connect(&url).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED: PostgreSQL at {url} unreachable: {e}");
            return;
        }
    };
    let schema = Schema::new(format!("bench_outbox_{}", std::process::id())).expect("schema");
    migrate(&pool, &schema).await.expect("migrate");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {schema}.orders (id BIGSERIAL PRIMARY KEY, v BIGINT)"
    ))
    .execute(&pool)
    .await
    .expect("orders");
    let times = Arc::new(Times::default());
    let bus = Bus::new();
    let _sub = {
        let times = times.clone();
        bus.on("bench", move |_m: Placed, ctx| {
            let times = times.clone();
            async move {
                let mut h = times.handled.lock();
                h.insert(ctx.envelope().id.clone(), Instant::now());
                if h.len() >= *times.want.lock() {
                    times.done.notify_one();
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .workers(4)
        .start()
        .await
        .expect("subscribe")
    };
    // BENCH_NOTIFY=0: inserts without NOTIFY, the relay polling every 5 ms instead.
    let notify = std::env::var("BENCH_NOTIFY").map_or(true, |v| v != "0");
    let poll = if notify {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(5)
    };
    let relay = Relay::new(pool.clone(), schema.clone(), bus.clone())
        .retention(Retention::Delete)
        .poll_interval(poll)
        .spawn();
    let rounds = env_usize("BENCH_ROUNDS", 5);
    let txs = env_usize("BENCH_TXS", 2000);
    println!(
        "{rounds} rounds of {txs} transactions per phase; floor = insert, commit, then bus.publish; NOTIFY {notify}"
    );
    for writers in [1, 16] {
        let (mut tps_ratio, mut p50_ratio) = (Vec::new(), Vec::new());
        let (mut floor_tps, mut ob_tps, mut floor_p50, mut ob_p50, mut ob_p99, mut floor_p99) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        phase(&pool, &schema, &bus, &times, writers, txs / 4, true).await; // warm-up
        for round in 0..rounds {
            let (floor, ob) = if round % 2 == 0 {
                let f = phase(&pool, &schema, &bus, &times, writers, txs, false).await;
                (
                    f,
                    phase(&pool, &schema, &bus, &times, writers, txs, true).await,
                )
            } else {
                let o = phase(&pool, &schema, &bus, &times, writers, txs, true).await;
                (
                    phase(&pool, &schema, &bus, &times, writers, txs, false).await,
                    o,
                )
            };
            tps_ratio.push(ob.tps / floor.tps);
            p50_ratio.push(ob.p50.as_secs_f64() / floor.p50.as_secs_f64().max(1e-9));
            floor_tps.push(floor.tps);
            ob_tps.push(ob.tps);
            floor_p50.push(floor.p50.as_secs_f64() * 1e3);
            ob_p50.push(ob.p50.as_secs_f64() * 1e3);
            floor_p99.push(floor.p99.as_secs_f64() * 1e3);
            ob_p99.push(ob.p99.as_secs_f64() * 1e3);
            println!(
                "writers {writers:>2} round {round}: floor {:>7.0} tx/s p50 {:>6.2} ms p99 {:>6.2} ms | outbox {:>7.0} tx/s p50 {:>6.2} ms p99 {:>6.2} ms",
                floor.tps,
                floor.p50.as_secs_f64() * 1e3,
                floor.p99.as_secs_f64() * 1e3,
                ob.tps,
                ob.p50.as_secs_f64() * 1e3,
                ob.p99.as_secs_f64() * 1e3
            );
        }
        println!(
            "writers {writers:>2} MEDIAN: floor {:.0} tx/s, outbox {:.0} tx/s (ratio {:.2}); commit->handler p50 floor {:.2} ms, outbox {:.2} ms (ratio {:.1}); p99 floor {:.2} ms, outbox {:.2} ms",
            median(floor_tps),
            median(ob_tps),
            median(tps_ratio),
            median(floor_p50),
            median(ob_p50),
            median(p50_ratio),
            median(floor_p99),
            median(ob_p99)
        );
    }
    relay.stop().await.expect("relay");
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .expect("drop");
}
