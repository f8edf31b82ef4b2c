//! The PostgreSQL dead-letter queue and delayed delivery, including surviving a restart
//! (a new pool, queue and relay on the same schema).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

use std::time::{Duration, SystemTime};

use common::{Ping, TestDb};
use sqlx::postgres::PgPoolOptions;
use switchyard::{Bus, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, Message, Topic};
use switchyard_middleware::dlq::{DeadLetterFilter, DeadLetterQueue, Replayer};
use switchyard_postgres::{Outbox, PgDeadLetterQueue, Relay};
use tokio::sync::mpsc;

async fn fresh_pool() -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&common::url())
        .await
        .unwrap()
}

#[tokio::test]
async fn dead_letters_round_trip_and_survive_a_restart() {
    let Some(db) = TestDb::new("dlq").await else {
        return;
    };
    let dlq = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    let letters: Vec<DeadLetter> = (0..3)
        .map(|i| {
            let topic = if i == 2 {
                "billing.charge"
            } else {
                "orders.placed"
            };
            let env =
                Envelope::new(Topic::new(topic).unwrap(), vec![i, 255, 0]).with_header("h", "v");
            DeadLetter::new(env, DeadLetterReason::HandlerFailed, format!("error {i}"))
                .with_handler("h1")
        })
        .collect();
    for l in &letters {
        dlq.put(l.clone());
    }
    assert!(dlq.remove(&letters[0].envelope.id).unwrap());
    dlq.flush().await.unwrap();

    let pool = fresh_pool().await;
    let reopened = PgDeadLetterQueue::open(pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    assert_eq!(reopened.len(), 2);
    assert_eq!(
        reopened.get(&letters[1].envelope.id),
        Some(letters[1].clone()),
        "every field kept"
    );
    assert_eq!(
        reopened.get(&letters[0].envelope.id),
        None,
        "the removal was stored"
    );
    let billing = DeadLetterFilter::new().topic("billing.#".parse().unwrap());
    assert_eq!(reopened.purge(&billing).unwrap(), 1);

    // Replay through the bus: the entry leaves the queue, and the store.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let republish = move |env: Envelope| {
        let sent = tx
            .send(env)
            .map_err(|_| switchyard::PublishError::ShuttingDown);
        async move { sent }
    };
    let report = Replayer::new(&reopened, &republish).all().await;
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(rx.recv().await.unwrap().id, letters[1].envelope.id);
    reopened.flush().await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.dead_letters").await,
        0
    );
    pool.close().await;
    db.finish().await;
}

#[tokio::test]
async fn dead_letters_keep_one_entry_per_message_and_the_capacity() {
    let Some(db) = TestDb::new("dlqcap").await else {
        return;
    };
    let dlq = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 3)
        .await
        .unwrap();
    let env = Envelope::new(Topic::new("a.b").unwrap(), "x");
    dlq.put(DeadLetter::new(
        env.clone(),
        DeadLetterReason::Rejected,
        "first",
    ));
    dlq.put(DeadLetter::new(
        env.clone(),
        DeadLetterReason::Rejected,
        "second",
    ));
    for _ in 0..4 {
        dlq.put(DeadLetter::new(
            Envelope::new(Topic::new("a.c").unwrap(), "y"),
            DeadLetterReason::Dropped,
            "z",
        ));
    }
    dlq.flush().await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.dead_letters").await,
        3
    );
    let reopened = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 3)
        .await
        .unwrap();
    assert_eq!(reopened.len(), 3);
    assert_eq!(reopened.get(&env.id), None, "the oldest was evicted");
    db.finish().await;
}

#[tokio::test]
async fn the_bus_dead_letters_into_postgres() {
    let Some(db) = TestDb::new("busdlq").await else {
        return;
    };
    let dlq = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    let bus = Bus::builder().dead_letters(dlq.clone()).build().unwrap();
    let _sub = bus
        .on("fails", |_p: Ping, _ctx| async {
            Err::<(), _>(std::io::Error::other("nope"))
        })
        .max_attempts(1)
        .start()
        .await
        .unwrap();
    let report = bus
        .publish_and_wait(Ping {
            key: "k".into(),
            n: 1,
        })
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1);
    dlq.flush().await.unwrap();
    let stored: String =
        sqlx::query_scalar(&format!("SELECT reason FROM {}.dead_letters", db.schema))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, "\"handler_failed\"");
    db.finish().await;
}

#[tokio::test]
async fn delayed_messages_wait_until_due_and_survive_a_restart() {
    let Some(db) = TestDb::new("delayed").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let delay = Duration::from_millis(1500);
    let due = SystemTime::now() + delay;
    let env = Ping {
        key: "k".into(),
        n: 1,
    }
    .to_envelope()
    .unwrap();
    let id = outbox.schedule(&db.pool, due, env).await.unwrap();
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("rec", move |_p: Ping, ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((ctx.envelope().id.clone(), SystemTime::now()));
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    // Not due yet: nothing relayed. Then the process "restarts": a new pool and relay.
    let early = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    assert_eq!(early.drain().await.unwrap(), 0, "relayed before it was due");
    drop(early);
    let pool = fresh_pool().await;
    // Polling every hour: the relay must wake for the due time on its own.
    let relay = Relay::new(pool.clone(), db.schema.clone(), bus.clone())
        .poll_interval(Duration::from_secs(3600))
        .spawn();
    let (got, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("delivered once due")
        .unwrap();
    assert_eq!(got, id);
    assert!(
        at >= due,
        "delivered {:?} early",
        due.duration_since(at).unwrap_or_default()
    );
    relay.stop().await.unwrap();
    pool.close().await;
    db.finish().await;
}

/// A replayed message dead-lettered again before the re-publish returns keeps its new entry,
/// in memory and in the table (review rev3); and a purge of one handler's entry keeps the
/// message's row while another handler's entry is left.
#[tokio::test]
async fn a_replay_dead_lettered_again_is_kept_across_a_restart() {
    let Some(db) = TestDb::new("dlqagain").await else {
        return;
    };
    let dlq = std::sync::Arc::new(
        PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
            .await
            .unwrap(),
    );
    let env = Envelope::new(Topic::new("billing.charge").unwrap(), "{}");
    let id = env.id.clone();
    dlq.put(DeadLetter::new(env.clone(), DeadLetterReason::Rejected, "declined").with_handler("a"));
    dlq.put(DeadLetter::new(env, DeadLetterReason::Rejected, "declined").with_handler("b"));
    let sink = dlq.clone();
    let failing_again = move |e: Envelope| {
        sink.put(
            DeadLetter::new(e, DeadLetterReason::Rejected, "declined again").with_handler("a"),
        );
        async { Ok::<(), switchyard::PublishError>(()) }
    };
    Replayer::new(&*dlq, &failing_again)
        .one(id.clone())
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1, "a's new entry; b's entry was replayed");
    assert_eq!(dlq.get(&id).unwrap().error, "declined again");
    dlq.flush().await.unwrap();

    let pool = fresh_pool().await;
    let reopened = PgDeadLetterQueue::open(pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    let entry = reopened
        .get(&id)
        .expect("the entry of the failed replay survives a restart");
    assert_eq!(entry.error, "declined again");
    assert_eq!(entry.envelope.header("replay-count"), Some("1"));

    // Two handlers' entries; purging one keeps the row for the other.
    let env = Envelope::new(Topic::new("billing.refund").unwrap(), "{}");
    reopened.put(DeadLetter::new(env.clone(), DeadLetterReason::Rejected, "no").with_handler("a"));
    reopened.put(DeadLetter::new(env.clone(), DeadLetterReason::Rejected, "no").with_handler("b"));
    assert_eq!(
        reopened
            .purge(&DeadLetterFilter::new().handler("b"))
            .unwrap(),
        1
    );
    reopened.flush().await.unwrap();
    let again = PgDeadLetterQueue::open(pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    assert_eq!(
        again.get(&env.id).and_then(|l| l.handler).as_deref(),
        Some("a"),
        "a's entry is still stored"
    );
    pool.close().await;
    db.finish().await;
}

/// A NUL character (which JSONB refuses as `\u0000`) in a dead letter's error text, header
/// and handler name is stored, and the letter comes back exactly after a restart.
#[tokio::test]
async fn a_dead_letter_with_nul_characters_is_stored_and_comes_back_exactly() {
    let Some(db) = TestDb::new("dlqnul").await else {
        return;
    };
    let dlq = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    let env = Envelope::new(Topic::new("orders.placed").unwrap(), vec![0u8, 1, 0])
        .with_header("x-bad", "a\0b")
        .with_header("x-backslash", "\\u0000 is not a NUL");
    let nul = DeadLetter::new(env, DeadLetterReason::HandlerFailed, "bad byte \0 in input")
        .with_handler("h\0");
    let plain = DeadLetter::new(
        Envelope::new(Topic::new("orders.placed").unwrap(), "p"),
        DeadLetterReason::Rejected,
        "no NUL here",
    );
    dlq.put(nul.clone());
    dlq.put(plain.clone());
    tokio::time::timeout(Duration::from_secs(10), dlq.flush())
        .await
        .expect("flush did not return")
        .unwrap();
    assert_eq!(dlq.unstored(), 0);
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.dead_letters").await,
        2
    );
    // A letter without NUL stays plain, queryable JSON.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM {{schema}}.dead_letters \
             WHERE id = '{}' AND letter->>'error' = 'no NUL here'",
            plain.envelope.id
        ))
        .await,
        1
    );
    let pool = fresh_pool().await;
    let reopened = PgDeadLetterQueue::open(pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    assert_eq!(reopened.get(&nul.envelope.id), Some(nul.clone()));
    assert_eq!(reopened.get(&plain.envelope.id), Some(plain));
    pool.close().await;
    db.finish().await;
}

/// A dead letter the database refuses for its data (here a CHECK constraint the operator
/// added) is given up at once: kept in memory, counted as unstored, and the letters after
/// it are stored; `flush` returns.
#[tokio::test]
async fn a_dead_letter_the_database_refuses_is_kept_in_memory_and_does_not_block() {
    let Some(db) = TestDb::new("dlqrefused").await else {
        return;
    };
    db.exec(
        "ALTER TABLE {schema}.dead_letters ADD CONSTRAINT no_refused \
         CHECK (letter->>'error' <> 'refuse me')",
    )
    .await;
    let dlq = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    let refused = DeadLetter::new(
        Envelope::new(Topic::new("orders.placed").unwrap(), "1"),
        DeadLetterReason::HandlerFailed,
        "refuse me",
    );
    let later = DeadLetter::new(
        Envelope::new(Topic::new("orders.placed").unwrap(), "2"),
        DeadLetterReason::HandlerFailed,
        "store me",
    );
    dlq.put(refused.clone());
    dlq.put(later.clone());
    tokio::time::timeout(Duration::from_secs(10), dlq.flush())
        .await
        .expect("flush still waiting: the refused letter blocks the queue")
        .unwrap();
    assert_eq!(dlq.unstored(), 1);
    assert_eq!(
        dlq.get(&refused.envelope.id),
        Some(refused),
        "kept in memory"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM {{schema}}.dead_letters WHERE id = '{}'",
            later.envelope.id
        ))
        .await,
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.dead_letters").await,
        1
    );
    db.finish().await;
}

/// While PostgreSQL cannot take writes (here the table is locked by another transaction, so
/// the writer waits on its first put), at most `with_write_queue(n)` puts wait: past that the
/// oldest waiting put is dropped and counted, every entry stays in memory, and once the table
/// is free the newest are stored and `flush` returns.
#[tokio::test]
async fn the_write_queue_is_bounded_while_the_database_cannot_take_writes() {
    let Some(db) = TestDb::new("dlqbound").await else {
        return;
    };
    let dlq = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
        .await
        .unwrap()
        .with_write_queue(3);
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query(&format!(
        "LOCK TABLE {}.dead_letters IN ACCESS EXCLUSIVE MODE",
        db.schema
    ))
    .execute(&mut *blocker)
    .await
    .unwrap();
    let letters: Vec<DeadLetter> = (0..10)
        .map(|n| {
            DeadLetter::new(
                Envelope::new(Topic::new("orders.placed").unwrap(), format!("{n}")),
                DeadLetterReason::Rejected,
                format!("declined {n}"),
            )
        })
        .collect();
    dlq.put(letters[0].clone());
    // The writer holds the first put, waiting for the lock (state in the database).
    let waiting = format!("%{}.dead_letters%", db.schema);
    let blocked = common::eventually(Duration::from_secs(10), || {
        let pool = db.pool.clone();
        let waiting = waiting.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE $1",
            )
            .bind(waiting)
            .fetch_one(&pool)
            .await
            .unwrap();
            n == 1
        }
    })
    .await;
    assert!(blocked, "the writer never waited for the table lock");
    for l in &letters[1..] {
        dlq.put(l.clone());
    }
    assert_eq!(dlq.write_backlog(), 3, "the queue holds the bound");
    assert_eq!(dlq.write_dropped(), 6, "9 puts into a queue of 3");
    assert_eq!(dlq.len(), 10, "every entry kept in memory");
    blocker.rollback().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), dlq.flush())
        .await
        .expect("flush did not return once the table was free")
        .unwrap();
    let mut stored: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT id FROM {}.dead_letters ORDER BY seq",
        db.schema
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    stored.sort();
    let mut expected: Vec<String> = [0, 7, 8, 9]
        .iter()
        .map(|&i| letters[i].envelope.id.to_string())
        .collect();
    expected.sort();
    assert_eq!(
        stored, expected,
        "the first (being written) and the newest 3"
    );
    assert_eq!(dlq.write_backlog(), 0);
    db.finish().await;
}

fn letter(n: u32) -> DeadLetter {
    DeadLetter::new(
        Envelope::new(Topic::new("orders.placed").unwrap(), format!("{n}")),
        DeadLetterReason::HandlerFailed,
        format!("failed {n}"),
    )
}

/// A table that is gone (SQLSTATE class 42, here the dead-letter table dropped under a running
/// queue) cannot be helped by retrying: each write is given up at once, kept in memory and
/// counted as unstored, and `flush` returns.
#[tokio::test]
async fn a_dropped_dead_letter_table_is_given_up_at_once_and_flush_returns() {
    let Some(db) = TestDb::new("dlqdropped").await else {
        return;
    };
    let dlq = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    db.exec("DROP TABLE {schema}.dead_letters").await;
    let (first, second) = (letter(1), letter(2));
    dlq.put(first.clone());
    dlq.put(second.clone());
    tokio::time::timeout(Duration::from_secs(5), dlq.flush())
        .await
        .expect("flush still waiting after 5 s: a missing table is retried forever")
        .unwrap();
    assert_eq!(dlq.unstored(), 2);
    assert_eq!(dlq.get(&first.envelope.id), Some(first), "kept in memory");
    assert_eq!(dlq.get(&second.envelope.id), Some(second), "kept in memory");
    db.finish().await;
}

/// A closed pool is final: `flush` answers at once with the typed `PoolClosed` error (it does
/// not wait for a write that can never be made), the waiting puts are counted as unstored and
/// kept in memory, and later puts are kept in memory and counted too.
#[tokio::test]
async fn a_closed_pool_is_final_and_flush_returns_a_typed_error() {
    let Some(db) = TestDb::new("dlqclosed").await else {
        return;
    };
    let pool = fresh_pool().await;
    let dlq = PgDeadLetterQueue::open(pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    pool.close().await;
    let (first, later) = (letter(1), letter(2));
    dlq.put(first.clone());
    let flushed = tokio::time::timeout(Duration::from_secs(5), dlq.flush())
        .await
        .expect("flush still waiting after 5 s: a closed pool is retried forever");
    assert!(
        matches!(
            flushed,
            Err(switchyard_postgres::Error::Database(
                sqlx::Error::PoolClosed
            ))
        ),
        "{flushed:?}"
    );
    assert_eq!(dlq.unstored(), 1);
    dlq.put(later.clone());
    assert_eq!(dlq.unstored(), 2, "a put after the pool closed is counted");
    assert_eq!(dlq.get(&first.envelope.id), Some(first), "kept in memory");
    assert_eq!(dlq.get(&later.envelope.id), Some(later), "kept in memory");
    let again = tokio::time::timeout(Duration::from_secs(5), dlq.flush())
        .await
        .expect("a second flush waited");
    assert!(
        matches!(
            again,
            Err(switchyard_postgres::Error::Database(
                sqlx::Error::PoolClosed
            ))
        ),
        "{again:?}"
    );
    db.finish().await;
}
