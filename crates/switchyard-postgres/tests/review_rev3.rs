//! Review rev3: the outbox's order promise against commit-order inversion (docs/postgres.md,
//! Outbox: "rows are published in insertion (`BIGSERIAL`) order ... Two transactions writing
//! the same key concurrently are ordered by their sequence numbers").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

use std::time::Duration;

use common::{Ping, TestDb};
use switchyard::Bus;
use switchyard_postgres::{Handoff, ORDERING_KEY_HEADER, Outbox, Relay};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

/// Transaction A writes key `k` first (lower `seq`) and commits last; B writes `k` second and
/// commits first. The relay publishes B's row (the only committed one), then A's when it
/// commits: the consumer sees `k` in the order 2, 1, against the sequence numbers.
/// Before the fix (relay claiming `sent_at IS NULL ORDER BY seq`) it failed with
/// `key k went out as [2, 1]` (first pass relayed 1, second 1).
#[tokio::test]
async fn one_key_written_by_two_transactions_goes_out_in_seq_order() {
    let Some(db) = TestDb::new("rev3order").await else {
        return;
    };
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("rec", move |p: Ping, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(p.n);
                Ok::<_, std::io::Error>(())
            }
        })
        .ordering_header(ORDERING_KEY_HEADER)
        .start()
        .await
        .unwrap();
    let outbox = Outbox::new(db.schema.clone());
    let relay =
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).handoff(Handoff::Handled);

    let mut a = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(
            &mut a,
            "k",
            Ping {
                key: "k".into(),
                n: 1,
            },
        )
        .await
        .unwrap();
    let mut b = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(
            &mut b,
            "k",
            Ping {
                key: "k".into(),
                n: 2,
            },
        )
        .await
        .unwrap();
    b.commit().await.unwrap();
    let first_pass = relay.drain().await.unwrap();
    a.commit().await.unwrap();
    let second_pass = relay.drain().await.unwrap();
    assert_eq!(first_pass + second_pass, 2);
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            tokio::time::timeout(T, rx.recv())
                .await
                .expect("delivered")
                .unwrap(),
        );
    }
    let seqs: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT seq FROM {}.outbox ORDER BY seq",
        db.schema
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default();
    db.finish().await;
    assert_eq!(
        seen,
        vec![1, 2],
        "key k went out as {seen:?}; by sequence number (A's row {seqs:?} first) it is 1 then 2 \
         (first pass relayed {first_pass}, second {second_pass})"
    );
}

fn ping(key: &str, n: i64) -> Ping {
    Ping { key: key.into(), n }
}

/// A bus whose subscriber (ordered by key) records every `(key, n)` it handles.
async fn recorder(
    bus: &Bus,
) -> (
    switchyard::Subscription,
    mpsc::UnboundedReceiver<(String, i64)>,
) {
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
    (sub, rx)
}

async fn recv_n(rx: &mut mpsc::UnboundedReceiver<(String, i64)>, n: usize) -> Vec<(String, i64)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(
            tokio::time::timeout(T, rx.recv())
                .await
                .expect("delivered")
                .unwrap(),
        );
    }
    seen
}

fn of_key(seen: &[(String, i64)], key: &str) -> Vec<i64> {
    seen.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, n)| *n)
        .collect()
}

/// T1 writes k1 then k2 while T2 writes k2 then k1, interleaved (k1:1 by T1, k2:1 by T2, k2:2
/// by T1, k1:2 by T2), all four open at once: a writer-side exclusive per-key lock would
/// deadlock here (PostgreSQL aborting one). T2 commits first: its rows must wait for T1's
/// lower ones; a key no open transaction wrote (k3) and an unkeyed row go out meanwhile.
/// Before the fix it failed: k1 went out as [2, 1].
#[tokio::test]
async fn two_transactions_writing_two_keys_in_opposite_orders_neither_deadlock_nor_reorder() {
    let Some(db) = TestDb::new("rev3cross").await else {
        return;
    };
    let bus = Bus::new();
    let (_sub, mut rx) = recorder(&bus).await;
    let outbox = Outbox::new(db.schema.clone());
    let relay =
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).handoff(Handoff::Handled);

    let mut t1 = db.pool.begin().await.unwrap();
    let mut t2 = db.pool.begin().await.unwrap();
    let write = tokio::time::timeout(T, async {
        outbox.publish_keyed(&mut t1, "k1", ping("k1", 1)).await?;
        outbox.publish_keyed(&mut t2, "k2", ping("k2", 1)).await?;
        outbox.publish_keyed(&mut t1, "k2", ping("k2", 2)).await?;
        outbox.publish_keyed(&mut t2, "k1", ping("k1", 2)).await?;
        Ok::<_, switchyard_postgres::Error>(())
    })
    .await;
    write.expect("no writer waits").expect("no writer aborted");
    t2.commit().await.unwrap();
    let mut other = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut other, "k3", ping("k3", 1))
        .await
        .unwrap();
    outbox.publish(&mut other, ping("none", 1)).await.unwrap();
    other.commit().await.unwrap();

    let first_pass = relay.drain().await.unwrap();
    let early = recv_n(&mut rx, first_pass).await;
    t1.commit().await.unwrap();
    let second_pass = relay.drain().await.unwrap();
    let late = recv_n(&mut rx, second_pass).await;
    db.finish().await;

    let mut early_sorted = early.clone();
    early_sorted.sort();
    assert_eq!(
        early_sorted,
        vec![("k3".to_string(), 1), ("none".to_string(), 1)],
        "while T1 is open only k3 and the unkeyed row go out (k1, k2 wait)"
    );
    let all: Vec<(String, i64)> = early.into_iter().chain(late).collect();
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(of_key(&all, "k1"), vec![1, 2], "{all:?}");
    assert_eq!(of_key(&all, "k2"), vec![1, 2], "{all:?}");
}

/// The relay's key locks are released before it publishes: a handler that, inside a
/// `Handoff::Handled` publish, writes (and commits) a row with the same key would otherwise
/// wait for the relay while the relay waits for it. (A guard for the design: it passes
/// against the relay before the fix too, which took no key locks.)
#[tokio::test]
async fn a_handler_writing_the_key_it_handles_does_not_deadlock_the_relay() {
    let Some(db) = TestDb::new("rev3reent").await else {
        return;
    };
    let bus = Bus::new();
    let outbox = Outbox::new(db.schema.clone());
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (pool, ob) = (db.pool.clone(), outbox.clone());
    let _sub = bus
        .on("echo", move |p: Ping, _ctx| {
            let (pool, ob, done_tx) = (pool.clone(), ob.clone(), done_tx.clone());
            async move {
                if p.n == 1 {
                    let mut tx = pool.begin().await.map_err(std::io::Error::other)?;
                    ob.publish_keyed(&mut tx, &p.key, ping(&p.key, 2))
                        .await
                        .map_err(std::io::Error::other)?;
                    tx.commit().await.map_err(std::io::Error::other)?;
                }
                let _ = done_tx.send(p.n);
                Ok::<_, std::io::Error>(())
            }
        })
        .ordering_header(ORDERING_KEY_HEADER)
        .start()
        .await
        .unwrap();
    let relay =
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).handoff(Handoff::Handled);
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut tx, "k", ping("k", 1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let relayed = tokio::time::timeout(T, relay.drain())
        .await
        .expect("the relay does not wait on its own handler")
        .unwrap();
    assert!(relayed >= 1);
    let relayed_again = tokio::time::timeout(T, relay.drain())
        .await
        .expect("drains")
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            tokio::time::timeout(T, done_rx.recv())
                .await
                .expect("handled")
                .unwrap(),
        );
    }
    db.finish().await;
    assert_eq!(seen, vec![1, 2], "relayed {relayed} then {relayed_again}");
}

/// Waiters for the advisory lock of key `k` in this schema (the id the outbox uses:
/// `hashtextextended('switchyard-outbox:<schema>:' || key, 0)`, split into two halves).
async fn lock_waiters(db: &TestDb) -> i64 {
    db.count(
        "WITH id AS (SELECT hashtextextended('switchyard-outbox:{schema}:k', 0) AS h)
         SELECT count(*) FROM pg_locks, id
         WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
           AND classid::int8 = (h >> 32) & 4294967295 AND objid::int8 = h & 4294967295",
    )
    .await
}

/// Writers hold a key's lock shared and never wait for each other, so a key whose writers
/// keep overlapping is never free when the relay only tries the lock. Once the key's oldest
/// row is old enough (here backdated, not slept for), the relay queues for the lock, later
/// writers queue behind it, and the key goes out as soon as the writers it waits for end.
/// With try-lock only (the queueing switched off) it failed at "the relay queues for the key's
/// lock"; against the relay before the fix, likewise (no key locks at all).
#[tokio::test]
async fn a_key_whose_writers_keep_overlapping_is_relayed() {
    let Some(db) = TestDb::new("rev3starve").await else {
        return;
    };
    let bus = Bus::new();
    let (_sub, mut rx) = recorder(&bus).await;
    let outbox = Outbox::new(db.schema.clone());
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .handoff(Handoff::Handled)
        .key_wait(T);

    let mut w1 = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut w1, "k", ping("k", 1))
        .await
        .unwrap();
    let mut w2 = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut w2, "k", ping("k", 2))
        .await
        .unwrap();
    w1.commit().await.unwrap();
    db.exec("UPDATE {schema}.outbox SET created_at = created_at - interval '1 hour'")
        .await;
    assert_eq!(lock_waiters(&db).await, 0);

    let draining = tokio::spawn({
        let relay = relay.clone();
        async move { relay.drain().await }
    });
    assert!(
        common::eventually(T, || async { lock_waiters(&db).await == 1 }).await,
        "the relay queues for the key's lock"
    );
    // A new writer of the key now queues behind the relay instead of keeping the key busy.
    let writing = tokio::spawn({
        let (pool, outbox) = (db.pool.clone(), outbox.clone());
        async move {
            let mut w3 = pool.begin().await?;
            outbox.publish_keyed(&mut w3, "k", ping("k", 3)).await?;
            w3.commit().await?;
            Ok::<_, switchyard_postgres::Error>(())
        }
    });
    assert!(
        common::eventually(T, || async { lock_waiters(&db).await == 2 }).await,
        "the third writer queues behind the relay"
    );
    w2.commit().await.unwrap();
    let relayed = tokio::time::timeout(T, draining)
        .await
        .expect("the drain ends")
        .unwrap()
        .unwrap();
    tokio::time::timeout(T, writing)
        .await
        .expect("the third writer gets its lock")
        .unwrap()
        .unwrap();
    let relayed_after = relay.drain().await.unwrap();
    let seen = recv_n(&mut rx, relayed + relayed_after).await;
    db.finish().await;
    assert_eq!(relayed, 2, "w1's and w2's rows go out once w2 ends");
    assert_eq!(of_key(&seen, "k"), vec![1, 2, 3]);
}
