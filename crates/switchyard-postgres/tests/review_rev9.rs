//! Review rev9: durability of the outbox, relay and inbox (docs/postgres.md) through the public
//! API: a writer killed with SIGKILL before and after its commit, concurrent relays with
//! concurrent writers, inbox deduplication across restarts and concurrent deliveries, poison
//! rows and messages, idempotent concurrent migrations, and the relay's connections
//! terminated mid-run (`pg_terminate_backend` of this test's own backends only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Ping, TestDb, eventually, url};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use switchyard::{Bus, Envelope, Message, Topic};
use switchyard_postgres::{
    Handoff, Inbox, ORDERING_KEY_HEADER, Outbox, Relay, Retention, Schema, migrate,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const T: Duration = Duration::from_secs(10);
const CHILD_ENV: &str = "REV9_PG_CHILD_SCHEMA";

fn ping(key: &str, n: i64) -> Ping {
    Ping { key: key.into(), n }
}

fn ping_env(n: i64) -> Envelope {
    ping("k", n).to_envelope().unwrap()
}

/// A bus whose "rec" handler sends `(key, n)` of every Ping to a channel, one key at a time.
async fn recorder() -> (
    Bus,
    mpsc::UnboundedReceiver<(String, i64)>,
    switchyard::Subscription,
) {
    let bus = Bus::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on("rec", move |p: Ping, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((p.key, p.n));
                Ok::<_, std::io::Error>(())
            }
        })
        .ordering_header(ORDERING_KEY_HEADER)
        .start()
        .await
        .unwrap();
    (bus, rx, sub)
}

async fn recv_n(rx: &mut mpsc::UnboundedReceiver<(String, i64)>, n: usize) -> Vec<(String, i64)> {
    let mut v = Vec::new();
    while v.len() < n {
        match tokio::time::timeout(T, rx.recv()).await {
            Ok(Some(x)) => v.push(x),
            _ => panic!("only {} of {n} messages arrived: {v:?}", v.len()),
        }
    }
    v
}

/// The child: commits one keyed outbox row (n = 1), prints COMMITTED, then writes a second
/// row of the same key (n = 2) in a transaction it never commits, prints INSERTED and waits
/// to be killed.
#[tokio::test]
async fn rev9_writer_child() {
    let Ok(schema) = std::env::var(CHILD_ENV) else {
        return;
    };
    let schema = Schema::new(schema).unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url())
        .await
        .unwrap();
    let outbox = Outbox::new(schema);
    let mut tx = pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut tx, "k", ping("k", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    println!("COMMITTED");
    let mut tx = pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut tx, "k", ping("k", 2))
        .await
        .unwrap();
    println!("INSERTED");
    std::future::pending::<()>().await;
}

/// The application commits its outbox row and dies (SIGKILL) before any relay ran, with a
/// second transaction open: the relay started afterwards delivers the committed message
/// exactly once (also across a relay restart) and never the uncommitted one; the dead
/// writer's shared key lock does not hold the key back for good.
#[tokio::test]
async fn an_app_killed_after_commit_is_relayed_once_and_its_open_transaction_never() {
    let Some(db) = TestDb::new("rev9kill").await else {
        return;
    };
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rev9_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, db.schema.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let inserted = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("INSERTED") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(inserted, Ok(true), "the child did not write");
    child.kill().await.unwrap();

    let (bus, mut rx, _sub) = recorder().await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .handoff(Handoff::Handled)
        .key_wait(Duration::from_millis(100));
    // The dead client's backend ends (and its key lock goes) once PostgreSQL sees the socket
    // close: drain until the committed row went out.
    let sent = AtomicUsize::new(0);
    let out = eventually(T, || async {
        sent.fetch_add(relay.drain().await.unwrap(), Ordering::SeqCst);
        sent.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(out, "the committed row of the killed app was never relayed");
    assert_eq!(recv_n(&mut rx, 1).await, [("k".to_owned(), 1)]);
    let restarted = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    assert_eq!(restarted.drain().await.unwrap(), 0);
    assert_eq!(relay.backlog().await.unwrap(), 0);
    assert!(rx.try_recv().is_err(), "something else was relayed");
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.outbox").await,
        1,
        "the killed transaction's row is visible"
    );
    db.finish().await;
}

/// Several processes may call `migrate` at once: each migration is applied once, every call
/// succeeds, and a later call applies nothing.
#[tokio::test]
async fn concurrent_migrations_of_a_new_schema_apply_each_migration_once() {
    let Some(db) = TestDb::new("rev9mig").await else {
        return;
    };
    let fresh = Schema::new(common::unique("rev9fresh")).unwrap();
    let m = || migrate(&db.pool, &fresh);
    let r = tokio::join!(m(), m(), m(), m(), m(), m());
    let applied: Vec<usize> = [r.0, r.1, r.2, r.3, r.4, r.5]
        .into_iter()
        .map(|x| x.expect("a concurrent migrate failed"))
        .collect();
    let total: usize = applied.iter().sum();
    assert_eq!(applied.iter().filter(|&&n| n > 0).count(), 1, "{applied:?}");
    assert_eq!(migrate(&db.pool, &fresh).await.unwrap(), 0);
    let versions: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {fresh}.migrations"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(versions as usize, total);
    sqlx::raw_sql(&format!("DROP SCHEMA {fresh} CASCADE"))
        .execute(&db.pool)
        .await
        .unwrap();
    db.finish().await;
}

/// An inbox handler that ran and committed is not run again for the same message id after
/// the consumer restarts (new pool, new `Inbox`): the redelivery is acked without the handler.
#[tokio::test]
async fn the_inbox_deduplicates_a_redelivery_after_the_consumer_restarts() {
    let Some(db) = TestDb::new("rev9inbox").await else {
        return;
    };
    db.exec("CREATE TABLE {schema}.effects (n BIGINT)").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let make = |pool: sqlx::PgPool| {
        let runs = runs.clone();
        let effects = format!("INSERT INTO {}.effects (n) VALUES ($1)", db.schema);
        let inbox = Inbox::new(pool, db.schema.clone(), "billing");
        let h = inbox.handler(move |p: Ping, tx, _env| {
            let runs = runs.clone();
            let effects = effects.clone();
            Box::pin(async move {
                sqlx::query(&effects).bind(p.n).execute(&mut *tx).await?;
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, sqlx::Error>(())
            })
        });
        (inbox, h)
    };
    let env = ping_env(7);
    let pool1 = PgPoolOptions::new().connect(&url()).await.unwrap();
    let (_, h) = make(pool1.clone());
    h.oneshot(env.clone()).await.unwrap();
    pool1.close().await;

    let pool2 = PgPoolOptions::new().connect(&url()).await.unwrap();
    let (inbox, h) = make(pool2.clone());
    assert!(inbox.handled(env.id.clone()).await.unwrap());
    h.oneshot(env.clone()).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran twice");
    assert_eq!(db.count("SELECT count(*) FROM {schema}.effects").await, 1);
    // Another consumer name is another inbox: it does run.
    let other = Inbox::new(pool2.clone(), db.schema.clone(), "shipping");
    let ran = Arc::new(AtomicUsize::new(0));
    let r2 = ran.clone();
    other
        .handler(move |_p: Ping, _tx, _env| {
            let r2 = r2.clone();
            Box::pin(async move {
                r2.fetch_add(1, Ordering::SeqCst);
                Ok::<_, sqlx::Error>(())
            })
        })
        .oneshot(env)
        .await
        .unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    pool2.close().await;
    db.finish().await;
}

/// Two deliveries of one id at once "serialize on the inbox row": the effect happens once.
/// When the first attempt fails (rolled back), the concurrent second one runs it; when the
/// first succeeds, the second is a duplicate.
#[tokio::test]
async fn two_concurrent_deliveries_of_one_id_take_effect_once_even_if_the_first_fails() {
    let Some(db) = TestDb::new("rev9conc").await else {
        return;
    };
    db.exec("CREATE TABLE {schema}.effects (n BIGINT)").await;
    for fail_first in [false, true] {
        let calls = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "conc");
        let effects = format!("INSERT INTO {}.effects (n) VALUES ($1)", db.schema);
        let c = calls.clone();
        let h = inbox.handler(move |p: Ping, tx, _env| {
            let c = c.clone();
            let effects = effects.clone();
            Box::pin(async move {
                sqlx::query(&effects).bind(p.n).execute(&mut *tx).await?;
                // Hold the transaction open a little so the other delivery queues behind it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if c.fetch_add(1, Ordering::SeqCst) == 0 && fail_first {
                    return Err::<(), BoxError>("first attempt fails".into());
                }
                Ok(())
            })
        });
        let env = ping_env(if fail_first { 2 } else { 1 });
        let (a, b) = tokio::join!(h.clone().oneshot(env.clone()), h.oneshot(env.clone()));
        let oks = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
        assert!(oks >= 1, "neither delivery succeeded");
        let n = db
            .count(&format!(
                "SELECT count(*) FROM {{schema}}.effects WHERE n = {}",
                if fail_first { 2 } else { 1 }
            ))
            .await;
        assert_eq!(n, 1, "fail_first={fail_first}: effect applied {n} times");
        assert!(inbox.handled(env.id.clone()).await.unwrap());
    }
    db.finish().await;
}

/// Two relay instances (spawned, as two processes would run them) while four writers commit
/// concurrently: every message reaches the handlers exactly once and each key in order.
#[tokio::test]
async fn two_running_relays_and_concurrent_writers_deliver_each_message_once_in_key_order() {
    let Some(db) = TestDb::new("rev9relays").await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut handles = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..2 {
        let bus = Bus::new();
        let tx = tx.clone();
        let sub = bus
            .on("rec", move |p: Ping, _ctx| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((p.key, p.n));
                    Ok::<_, std::io::Error>(())
                }
            })
            .ordering_header(ORDERING_KEY_HEADER)
            .start()
            .await
            .unwrap();
        handles.push(
            Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
                .batch_size(7)
                .handoff(Handoff::Handled)
                .poll_interval(Duration::from_millis(20))
                .spawn(),
        );
        keep.push((bus, sub));
    }
    let per_writer = 40;
    let mut writers = Vec::new();
    for w in 0..4 {
        let pool = db.pool.clone();
        let outbox = Outbox::new(db.schema.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..per_writer {
                let mut tx = pool.begin().await.unwrap();
                let key = format!("w{w}");
                if n % 5 == 4 {
                    outbox.publish(&mut tx, ping(&key, n)).await.unwrap();
                } else {
                    outbox
                        .publish_keyed(&mut tx, &key, ping(&key, n))
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let got = recv_n(&mut rx, 4 * per_writer as usize).await;
    for h in handles {
        h.stop().await.unwrap();
    }
    let mut per_key: HashMap<String, Vec<i64>> = HashMap::new();
    let mut seen = HashSet::new();
    for (k, n) in &got {
        assert!(seen.insert((k.clone(), *n)), "({k}, {n}) delivered twice");
        per_key.entry(k.clone()).or_default().push(*n);
    }
    for (k, ns) in per_key {
        // Keyed rows are ordered per key; the unkeyed ones (every fifth) carry no promise.
        let keyed: Vec<i64> = ns.into_iter().filter(|n| n % 5 != 4).collect();
        let mut sorted = keyed.clone();
        sorted.sort_unstable();
        assert_eq!(keyed, sorted, "key {k} out of order");
    }
    assert!(rx.try_recv().is_err(), "extra deliveries");
    db.finish().await;
}

/// The relay's connections are terminated (`pg_terminate_backend`, only this test's own
/// backends, found by their application name) while messages are being written and
/// relayed: the relay recovers and every message takes effect exactly once through the inbox.
#[tokio::test]
async fn terminating_the_relays_connections_mid_run_loses_nothing_and_the_inbox_absorbs_repeats() {
    let Some(db) = TestDb::new("rev9term").await else {
        return;
    };
    db.exec("CREATE TABLE {schema}.effects (n BIGINT PRIMARY KEY)")
        .await;
    let app = format!("rev9relay_{}", db.schema);
    let relay_pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(
            PgConnectOptions::from_str(&url())
                .unwrap()
                .application_name(&app),
        )
        .await
        .unwrap();
    let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "term");
    let effects = format!("INSERT INTO {}.effects (n) VALUES ($1)", db.schema);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let deliveries = Arc::new(AtomicUsize::new(0));
    let d2 = deliveries.clone();
    let handler = inbox.handler(move |p: Ping, tx, _env| {
        let effects = effects.clone();
        let done_tx = done_tx.clone();
        d2.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            sqlx::query(&effects).bind(p.n).execute(&mut *tx).await?;
            let _ = done_tx.send(p.n);
            Ok::<_, sqlx::Error>(())
        })
    });
    let bus = Bus::new();
    let _sub = bus
        .subscribe("term", Ping::TOPIC, handler)
        .start()
        .await
        .unwrap();
    let relay = Relay::new(relay_pool.clone(), db.schema.clone(), bus.clone())
        .batch_size(4)
        .handoff(Handoff::Handled)
        .poll_interval(Duration::from_millis(50))
        .spawn();
    let outbox = Outbox::new(db.schema.clone());
    let total = 60i64;
    let mut kills = 0;
    let mut handled = HashSet::new();
    for n in 0..total {
        let mut tx = db.pool.begin().await.unwrap();
        outbox.publish(&mut tx, ping("t", n)).await.unwrap();
        tx.commit().await.unwrap();
        if n % 15 == 7 {
            let killed: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&app)
            .fetch_one(&db.pool)
            .await
            .unwrap();
            kills += killed;
        }
        while let Ok(x) = done_rx.try_recv() {
            handled.insert(x);
        }
    }
    while handled.len() < total as usize {
        match tokio::time::timeout(Duration::from_secs(20), done_rx.recv()).await {
            Ok(Some(x)) => {
                handled.insert(x);
            }
            _ => panic!(
                "after {kills} terminated backends only {} of {total} handled",
                handled.len()
            ),
        }
    }
    assert!(kills > 0, "no relay backend was terminated");
    // `done` is sent before the inbox commits: wait for the last commits.
    let all = eventually(T, || async {
        db.count("SELECT count(*) FROM {schema}.effects").await == total
    })
    .await;
    assert!(
        all,
        "effects: {}",
        db.count("SELECT count(*) FROM {schema}.effects").await
    );
    relay.stop().await.unwrap();
    relay_pool.close().await;
    db.finish().await;
}

/// A row whose stored envelope cannot be rebuilt (its `meta` damaged) must not block the
/// outbox: later rows go out.
#[tokio::test]
async fn an_undecodable_outbox_row_does_not_block_the_rows_after_it() {
    let Some(db) = TestDb::new("rev9poisonrow").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    for n in 1..=3 {
        let mut tx = db.pool.begin().await.unwrap();
        outbox.publish(&mut tx, ping("p", n)).await.unwrap();
        tx.commit().await.unwrap();
    }
    db.exec("UPDATE {schema}.outbox SET meta = '{\"nonsense\": true}'::jsonb WHERE seq = (SELECT min(seq) FROM {schema}.outbox)")
        .await;
    let (bus, mut rx, _sub) = recorder().await;
    let relay =
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).handoff(Handoff::Handled);
    relay.drain().await.unwrap();
    let got = recv_n(&mut rx, 2).await;
    assert_eq!(got, [("p".to_owned(), 2), ("p".to_owned(), 3)]);
    assert_eq!(relay.backlog().await.unwrap(), 0);
    db.finish().await;
}

/// A poison message (its handler always fails) relayed with `Handoff::Handled` does not stop
/// the outbox: the rows after it go out, and the poison row is not relayed again and again.
#[tokio::test]
async fn a_poison_message_whose_handler_always_fails_does_not_stall_the_relay() {
    let Some(db) = TestDb::new("rev9poison").await else {
        return;
    };
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let poison_runs = Arc::new(AtomicUsize::new(0));
    let pr = poison_runs.clone();
    let _sub = bus
        .on("rec", move |p: Ping, _ctx| {
            let tx = tx.clone();
            let pr = pr.clone();
            async move {
                if p.n == 1 {
                    pr.fetch_add(1, Ordering::SeqCst);
                    return Err(std::io::Error::other("poison"));
                }
                let _ = tx.send((p.key, p.n));
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let outbox = Outbox::new(db.schema.clone());
    for n in 1..=3 {
        let mut tx = db.pool.begin().await.unwrap();
        outbox.publish(&mut tx, ping("p", n)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let relay =
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).handoff(Handoff::Handled);
    let sent = tokio::time::timeout(T, relay.drain())
        .await
        .expect("drain hung")
        .unwrap();
    assert_eq!(sent, 3);
    assert_eq!(recv_n(&mut rx, 2).await.len(), 2);
    assert_eq!(
        relay.drain().await.unwrap(),
        0,
        "the poison row was relayed again"
    );
    db.finish().await;
}

/// A payload that does not decode as the handler's type is an error from the inbox handler
/// (for the bus to dead-letter), and it leaves no inbox mark, so it is not taken as handled.
#[tokio::test]
async fn an_undecodable_payload_is_an_error_and_leaves_no_inbox_mark() {
    let Some(db) = TestDb::new("rev9badpayload").await else {
        return;
    };
    let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "bad");
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let h = inbox.handler(move |_p: Ping, _tx, _env| {
        let r = r.clone();
        Box::pin(async move {
            r.fetch_add(1, Ordering::SeqCst);
            Ok::<_, sqlx::Error>(())
        })
    });
    let env = Envelope::new(Topic::new(Ping::TOPIC).unwrap(), "not json {");
    assert!(h.oneshot(env.clone()).await.is_err());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert!(!inbox.handled(env.id.clone()).await.unwrap());
    db.finish().await;
}

/// `Retention::Delete` with two relays: each row goes out once and the table ends empty.
#[tokio::test]
async fn delete_retention_with_two_relays_sends_each_row_once_and_empties_the_table() {
    let Some(db) = TestDb::new("rev9del").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    for n in 0..50 {
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .publish_keyed(&mut tx, "d", ping("d", n))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let (bus, mut rx, _sub) = recorder().await;
    let mk = || {
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
            .batch_size(3)
            .retention(Retention::Delete)
            .handoff(Handoff::Handled)
    };
    let (a, b) = (mk(), mk());
    let (sa, sb) = tokio::join!(
        async {
            let mut s = 0;
            while a.backlog().await.unwrap() > 0 {
                s += a.drain().await.unwrap();
                tokio::task::yield_now().await;
            }
            s
        },
        async {
            let mut s = 0;
            while b.backlog().await.unwrap() > 0 {
                s += b.drain().await.unwrap();
                tokio::task::yield_now().await;
            }
            s
        }
    );
    assert_eq!(sa + sb, 50);
    let got: Vec<i64> = recv_n(&mut rx, 50).await.into_iter().map(|x| x.1).collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    assert_eq!(db.count("SELECT count(*) FROM {schema}.outbox").await, 0);
    db.finish().await;
}

/// Writing to an outbox whose schema was never migrated is a typed database error, not a
/// panic, and the business transaction can still be rolled back.
#[tokio::test]
async fn publishing_into_an_unmigrated_schema_is_a_typed_error() {
    let Some(db) = TestDb::new("rev9nomig").await else {
        return;
    };
    let missing = Schema::new(common::unique("rev9missing")).unwrap();
    let outbox = Outbox::new(missing);
    let mut tx = db.pool.begin().await.unwrap();
    let err = outbox.publish(&mut tx, ping("x", 1)).await.unwrap_err();
    assert!(
        matches!(err, switchyard_postgres::Error::Database(_)),
        "{err:?}"
    );
    tx.rollback().await.unwrap();
    db.finish().await;
}

/// A bus that refuses (shut down) stops the pass with a typed error and marks nothing: the
/// rows wait, and a relay on a working bus later sends each exactly once, in order.
#[tokio::test]
async fn a_bus_that_refuses_leaves_the_rows_for_a_later_relay() {
    let Some(db) = TestDb::new("rev9refuse").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    for n in 0..5 {
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .publish_keyed(&mut tx, "r", ping("r", n))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let dead = Bus::new();
    dead.shutdown(Duration::from_secs(1)).await.unwrap();
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), dead.clone());
    let err = relay.drain().await.unwrap_err();
    assert!(
        matches!(err.cause(), switchyard_postgres::Error::Publish(_)),
        "{err:?}"
    );
    assert_eq!(err.relayed(), Some(0), "{err:?}");
    assert_eq!(relay.backlog().await.unwrap(), 5);
    let (bus, mut rx, _sub) = recorder().await;
    let relay =
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).handoff(Handoff::Handled);
    assert_eq!(relay.drain().await.unwrap(), 5);
    let got: Vec<i64> = recv_n(&mut rx, 5).await.into_iter().map(|x| x.1).collect();
    assert_eq!(got, (0..5).collect::<Vec<_>>());
    db.finish().await;
}

/// The relay's connection is terminated in the middle of a pass (by the handler of its second
/// message, after the bus took the first ones): the pass fails and marks nothing, the next
/// pass sends the batch again (at-least-once) and the inbox applies each message once.
#[tokio::test]
async fn a_connection_lost_mid_pass_resends_the_batch_and_the_inbox_applies_it_once() {
    let Some(db) = TestDb::new("rev9midpass").await else {
        return;
    };
    db.exec("CREATE TABLE {schema}.effects (n BIGINT PRIMARY KEY)")
        .await;
    let app = format!("rev9mid_{}", db.schema);
    let relay_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            PgConnectOptions::from_str(&url())
                .unwrap()
                .application_name(&app),
        )
        .await
        .unwrap();
    let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "mid");
    let effects = format!("INSERT INTO {}.effects (n) VALUES ($1)", db.schema);
    let deliveries = Arc::new(AtomicUsize::new(0));
    let (d2, pool2, app2) = (deliveries.clone(), db.pool.clone(), app.clone());
    let handler = inbox.handler(move |p: Ping, tx, _env| {
        let effects = effects.clone();
        let first = d2.fetch_add(1, Ordering::SeqCst) == 1;
        let (pool2, app2) = (pool2.clone(), app2.clone());
        Box::pin(async move {
            sqlx::query(&effects).bind(p.n).execute(&mut *tx).await?;
            if first {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1",
                )
                .bind(&app2)
                .execute(&pool2)
                .await?;
            }
            Ok::<_, sqlx::Error>(())
        })
    });
    let bus = Bus::new();
    let _sub = bus
        .subscribe("mid", Ping::TOPIC, handler)
        .start()
        .await
        .unwrap();
    let outbox = Outbox::new(db.schema.clone());
    for n in 0..4 {
        let mut tx = db.pool.begin().await.unwrap();
        outbox.publish(&mut tx, ping("m", n)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let relay =
        Relay::new(relay_pool.clone(), db.schema.clone(), bus.clone()).handoff(Handoff::Handled);
    let first = relay.drain().await;
    assert!(
        first.is_err(),
        "the pass survived its connection: {first:?}"
    );
    assert_eq!(
        relay.backlog().await.unwrap(),
        4,
        "rows marked by a failed pass"
    );
    assert_eq!(relay.drain().await.unwrap(), 4);
    assert_eq!(relay.backlog().await.unwrap(), 0);
    // The resent batch met the inbox marks: the handler ran once per message.
    assert_eq!(deliveries.load(Ordering::SeqCst), 4);
    assert_eq!(db.count("SELECT count(*) FROM {schema}.effects").await, 4);
    relay_pool.close().await;
    db.finish().await;
}

/// A header value with a NUL character cannot be stored (JSONB refuses `\u0000`): the
/// publish is a typed error at once, not a panic and not a row that fails later in the relay.
#[tokio::test]
async fn a_header_with_a_nul_character_is_a_typed_error_at_publish() {
    let Some(db) = TestDb::new("rev9nul").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let env = ping_env(1).with_header("x-bad", "a\0b");
    let mut tx = db.pool.begin().await.unwrap();
    let r = outbox.publish_envelope(&mut tx, env).await;
    match r {
        Err(switchyard_postgres::Error::Database(_) | switchyard_postgres::Error::Json(_)) => {
            tx.rollback().await.unwrap();
        }
        Err(e) => panic!("unexpected error kind {e:?}"),
        Ok(_) => {
            // Stored after all: it must then come out intact.
            tx.commit().await.unwrap();
            let (bus, _rx, _sub) = recorder().await;
            let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
            assert_eq!(relay.drain().await.unwrap(), 1);
        }
    }
    db.finish().await;
}

/// Consume-then-publish: an inbox handler writes its follow-up message through the outbox
/// on the same transaction. A failed attempt leaves no follow-up; the successful one leaves
/// exactly one; a redelivery of the input (a duplicate) adds none.
#[tokio::test]
async fn a_follow_up_written_by_an_inbox_handler_goes_out_once_across_failures_and_redeliveries() {
    let Some(db) = TestDb::new("rev9chain").await else {
        return;
    };
    let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "chain");
    let outbox = Outbox::new(db.schema.clone());
    let attempts = Arc::new(AtomicUsize::new(0));
    let a2 = attempts.clone();
    let h = inbox.handler(move |p: Ping, tx, _env| {
        let outbox = outbox.clone();
        let a2 = a2.clone();
        Box::pin(async move {
            outbox.publish(&mut *tx, ping("next", p.n + 100)).await?;
            if a2.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err::<(), BoxError>("first attempt fails after writing".into());
            }
            Ok(())
        })
    });
    let input = ping_env(1);
    assert!(h.clone().oneshot(input.clone()).await.is_err());
    assert_eq!(db.count("SELECT count(*) FROM {schema}.outbox").await, 0);
    h.clone().oneshot(input.clone()).await.unwrap();
    h.oneshot(input).await.unwrap();
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "the duplicate ran the handler"
    );
    let (bus, mut rx, _sub) = recorder().await;
    let relay =
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).handoff(Handoff::Handled);
    assert_eq!(relay.drain().await.unwrap(), 1);
    assert_eq!(recv_n(&mut rx, 1).await, [("next".to_owned(), 101)]);
    db.finish().await;
}

/// A dead letter PostgreSQL cannot store (its handler's error text holds a NUL character,
/// which JSONB refuses) must not block the dead letters put after it: `flush` returns and
/// the next letter is in the table (so it survives a restart).
#[tokio::test]
async fn an_unstorable_dead_letter_does_not_block_the_ones_after_it() {
    let Some(db) = TestDb::new("rev9dlq").await else {
        return;
    };
    let dlq = switchyard_postgres::PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    use switchyard::{DeadLetter, DeadLetterReason, DeadLetterSink};
    let poison = DeadLetter::new(
        ping_env(1),
        DeadLetterReason::HandlerFailed,
        "driver said: bad byte \0 in input",
    );
    let good = DeadLetter::new(ping_env(2), DeadLetterReason::HandlerFailed, "plain error");
    let good_id = good.envelope.id.to_string();
    dlq.put(poison);
    dlq.put(good);
    let flushed = tokio::time::timeout(Duration::from_secs(3), dlq.flush()).await;
    let stored: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.dead_letters WHERE id = $1",
        db.schema
    ))
    .bind(&good_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    db.finish().await;
    assert!(flushed.is_ok(), "flush() still waiting after 3 s");
    assert_eq!(
        stored, 1,
        "the letter after the unstorable one never reached the table"
    );
}
