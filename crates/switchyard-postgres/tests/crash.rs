//! The relay killed with SIGKILL at random points while messages are being written: every
//! committed message is handled, none lost, redeliveries absorbed by the inbox, per-key
//! order kept. The relay runs in a child process: this test binary run again with
//! `CRASH_CHILD_SCHEMA` set, which makes `crash_child` the relay instead of a no-op.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Ping, TestDb};
use sqlx::postgres::PgPoolOptions;
use switchyard::{Bus, Message};
use switchyard_postgres::{Handoff, Inbox, ORDERING_KEY_HEADER, Outbox, Relay, Schema};
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::ServiceExt;

const CHILD_ENV: &str = "CRASH_CHILD_SCHEMA";
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

/// The child: a relay with a consumer behind the inbox, on an in-memory bus. Every delivery is
/// logged (autocommit) in `deliveries`; the inbox handler writes `received` in its transaction.
#[tokio::test]
async fn crash_child() {
    let Ok(schema) = std::env::var(CHILD_ENV) else {
        return;
    };
    let schema = Schema::new(schema).unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&common::url())
        .await
        .unwrap();
    let inbox = Inbox::new(pool.clone(), schema.clone(), "crash");
    let received = format!("INSERT INTO {schema}.received (id, key, n) VALUES ($1, $2, $3)");
    let handler = inbox.handler(move |p: Ping, tx, env| {
        let received = received.clone();
        let id = env.id.to_string();
        Box::pin(async move {
            sqlx::query(&received)
                .bind(id)
                .bind(p.key)
                .bind(p.n)
                .execute(&mut *tx)
                .await?;
            Ok::<_, sqlx::Error>(())
        })
    });
    let log = format!("INSERT INTO {schema}.deliveries (id) VALUES ($1)");
    let log_pool = pool.clone();
    let logged = tower::service_fn(move |env: switchyard::Envelope| {
        let handler = handler.clone();
        let log = log.clone();
        let pool = log_pool.clone();
        async move {
            sqlx::query(&log)
                .bind(env.id.to_string())
                .execute(&pool)
                .await?;
            handler.oneshot(env).await
        }
    });
    let bus = Bus::new();
    let _sub = bus
        .subscribe("crash", Ping::TOPIC, switchyard::boxed(logged))
        .ordering_header(ORDERING_KEY_HEADER)
        .start()
        .await
        .unwrap();
    let _relay = Relay::new(pool, schema, bus)
        .batch_size(16)
        .handoff(Handoff::Handled)
        .poll_interval(Duration::from_millis(200))
        .spawn();
    println!("ready");
    std::future::pending::<()>().await;
}

/// A small xorshift generator: the kill points need to vary, not to be cryptographic.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn spawn_child(schema: &Schema) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, schema.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("ready") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the child relay did not start");
    child
}

#[tokio::test]
async fn relay_killed_at_random_points_loses_nothing_and_sends_nothing_twice() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(db) = TestDb::new("crash").await else {
        return;
    };
    db.exec(
        "CREATE TABLE {schema}.received (seq BIGSERIAL, id TEXT NOT NULL, key TEXT NOT NULL, n BIGINT NOT NULL);
         CREATE TABLE {schema}.deliveries (id TEXT NOT NULL)",
    )
    .await;
    let started = Instant::now();
    let outbox = Outbox::new(db.schema.clone());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut next_n: HashMap<&str, i64> = HashMap::new();
    let mut committed: HashSet<String> = HashSet::new();
    let cycles = 50;
    for _cycle in 0..cycles {
        let mut child = spawn_child(&db.schema).await;
        // Write while the relay runs, then kill it at a random point.
        let kill_after = Duration::from_millis(5 + rng.below(120));
        let deadline = Instant::now() + kill_after;
        while Instant::now() < deadline {
            let mut tx = db.pool.begin().await.unwrap();
            let mut ids = Vec::new();
            let mut taken = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                let n = next_n.entry(key).or_default();
                ids.push(
                    outbox
                        .publish_keyed(
                            &mut tx,
                            key,
                            Ping {
                                key: key.into(),
                                n: *n,
                            },
                        )
                        .await
                        .unwrap(),
                );
                taken.push(key);
                *n += 1;
            }
            if rng.below(5) == 0 {
                tx.rollback().await.unwrap();
                for key in taken {
                    *next_n.get_mut(key).unwrap() -= 1;
                }
            } else {
                tx.commit().await.unwrap();
                committed.extend(ids.iter().map(ToString::to_string));
            }
        }
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
    }
    // A last relay, left to finish.
    let mut child = spawn_child(&db.schema).await;
    let want = committed.len() as i64;
    let all_in = common::eventually(Duration::from_secs(30), || async {
        db.count("SELECT count(DISTINCT id) FROM {schema}.received")
            .await
            >= want
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(all_in, "not every committed message was handled");

    let received: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        "SELECT id, key, n FROM {}.received ORDER BY seq",
        db.schema
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let ids: HashSet<String> = received.iter().map(|r| r.0.clone()).collect();
    assert_eq!(ids, committed, "lost or extra (rolled-back) messages");
    assert_eq!(
        received.len(),
        committed.len(),
        "a handler ran twice for one message"
    );
    for key in KEYS {
        let ns: Vec<i64> = received
            .iter()
            .filter(|r| r.1 == key)
            .map(|r| r.2)
            .collect();
        assert_eq!(
            ns,
            (0..ns.len() as i64).collect::<Vec<_>>(),
            "order of key {key}"
        );
    }
    let deliveries = db.count("SELECT count(*) FROM {schema}.deliveries").await;
    println!(
        "{cycles} kills, {} messages, {} deliveries ({} redeliveries absorbed by the inbox), {:?}",
        committed.len(),
        deliveries,
        deliveries - committed.len() as i64,
        started.elapsed()
    );
    assert!(deliveries >= committed.len() as i64);
    db.finish().await;
}
