//! Outbox, relay and inbox against the local PostgreSQL, each test in its own schema.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Ping, TestDb};
use parking_lot::Mutex;
use switchyard::{Bus, Message};
use switchyard_postgres::{Handoff, Inbox, ORDERING_KEY_HEADER, Outbox, Relay, Retention};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

/// A bus whose "test.ping" subscriber forwards each message to a channel.
async fn recording_bus() -> (Bus, mpsc::UnboundedReceiver<Ping>, switchyard::Subscription) {
    let bus = Bus::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = bus
        .on("rec", move |p: Ping, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(p);
                Ok::<_, std::io::Error>(())
            }
        })
        .ordering_header(ORDERING_KEY_HEADER)
        .start()
        .await
        .expect("subscribe");
    (bus, rx, sub)
}

fn ping(key: &str, n: i64) -> Ping {
    Ping { key: key.into(), n }
}

#[tokio::test]
async fn rolled_back_business_write_publishes_nothing() {
    let Some(db) = TestDb::new("rollback").await else {
        return;
    };
    db.exec("CREATE TABLE {schema}.orders (id BIGINT PRIMARY KEY)")
        .await;
    let outbox = Outbox::new(db.schema.clone());
    let orders = format!("INSERT INTO {}.orders (id) VALUES ($1)", db.schema);

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(&orders)
        .bind(1_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox
        .publish(&mut tx, ping("rolled-back", 1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(&orders)
        .bind(2_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox.publish(&mut tx, ping("committed", 2)).await.unwrap();
    tx.commit().await.unwrap();

    let (bus, mut rx, _sub) = recording_bus().await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    assert_eq!(relay.backlog().await.unwrap(), 1);
    assert_eq!(
        relay.drain().await.unwrap(),
        1,
        "only the committed row is relayed"
    );
    bus.run_until_idle().await;
    assert_eq!(rx.recv().await.unwrap(), ping("committed", 2));
    assert!(
        rx.try_recv().is_err(),
        "the rolled-back message was published"
    );
    assert_eq!(db.count("SELECT count(*) FROM {schema}.outbox").await, 1);
    assert_eq!(relay.backlog().await.unwrap(), 0);
    db.finish().await;
}

#[tokio::test]
async fn committed_message_is_handled_exactly_once_with_the_inbox() {
    let Some(db) = TestDb::new("once").await else {
        return;
    };
    db.exec("CREATE TABLE {schema}.orders (id BIGINT PRIMARY KEY); CREATE TABLE {schema}.effects (n BIGINT)")
        .await;
    let outbox = Outbox::new(db.schema.clone());
    let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "effects");
    let effects = format!("INSERT INTO {}.effects (n) VALUES ($1)", db.schema);
    let runs = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let handler = {
        let runs = runs.clone();
        inbox.handler(move |p: Ping, tx, _env| {
            let effects = effects.clone();
            let runs = runs.clone();
            let done_tx = done_tx.clone();
            Box::pin(async move {
                sqlx::query(&effects).bind(p.n).execute(&mut *tx).await?;
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = done_tx.send(());
                Ok::<_, sqlx::Error>(())
            })
        })
    };
    let bus = Bus::new();
    let _sub = bus
        .subscribe("effects", Ping::TOPIC, handler)
        .start()
        .await
        .unwrap();
    // Polling every hour: only the NOTIFY sent on commit can wake the relay in time.
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .poll_interval(Duration::from_secs(3600))
        .spawn();

    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {}.orders (id) VALUES (7)", db.schema))
        .execute(&mut *tx)
        .await
        .unwrap();
    let id = outbox.publish(&mut tx, ping("k", 7)).await.unwrap();
    tx.commit().await.unwrap();
    tokio::time::timeout(T, done_rx.recv())
        .await
        .expect("relayed on NOTIFY")
        .unwrap();

    // The same message again, as a transport redelivering it would: acknowledged, not run.
    // (Its inbox insert waits for the first delivery's commit, so no race.)
    let row = format!(
        "SELECT meta::text, headers::text, payload FROM {}.outbox",
        db.schema
    );
    let (meta, headers, payload): (String, String, Vec<u8>) =
        sqlx::query_as(&row).fetch_one(&db.pool).await.unwrap();
    let mut again: switchyard::Envelope = serde_json::from_str(&meta).unwrap();
    again.set_headers(serde_json::from_str(&headers).unwrap());
    again.payload = payload.into();
    assert_eq!(again.id, id);
    let report = bus.publish_envelope_and_wait(again).await.unwrap();
    assert_eq!(report.into_result().unwrap(), 1, "acknowledged");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "handler ran twice");
    assert_eq!(db.count("SELECT count(*) FROM {schema}.effects").await, 1);
    assert!(inbox.handled(id).await.unwrap());
    relay.stop().await.unwrap();
    bus.shutdown(T).await.unwrap();
    db.finish().await;
}

#[tokio::test]
async fn a_failing_handler_rolls_back_its_writes_and_its_inbox_mark() {
    let Some(db) = TestDb::new("fail").await else {
        return;
    };
    db.exec("CREATE TABLE {schema}.effects (n BIGINT)").await;
    let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "c");
    let effects = format!("INSERT INTO {}.effects (n) VALUES ($1)", db.schema);
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let handler = {
        let fail = fail.clone();
        inbox.handler(move |p: Ping, tx, _env| {
            let effects = effects.clone();
            let fail = fail.clone();
            Box::pin(async move {
                sqlx::query(&effects).bind(p.n).execute(&mut *tx).await?;
                if fail.load(Ordering::SeqCst) {
                    return Err::<(), Box<dyn std::error::Error + Send + Sync>>("boom".into());
                }
                Ok(())
            })
        })
    };
    let bus = Bus::new();
    let _sub = bus
        .subscribe("c", Ping::TOPIC, handler)
        .max_attempts(1)
        .start()
        .await
        .unwrap();
    let env = ping("k", 1).to_envelope().unwrap();
    let report = bus.publish_envelope_and_wait(env.clone()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    assert_eq!(db.count("SELECT count(*) FROM {schema}.effects").await, 0);
    assert!(!inbox.handled(env.id.clone()).await.unwrap());
    fail.store(false, Ordering::SeqCst);
    bus.publish_envelope_and_wait(env.clone())
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(db.count("SELECT count(*) FROM {schema}.effects").await, 1);
    assert!(inbox.handled(env.id).await.unwrap());
    db.finish().await;
}

#[tokio::test]
async fn order_per_key_is_kept_across_relay_restarts() {
    let Some(db) = TestDb::new("order").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let keys = ["a", "b", "c"];
    let per_key = 40;
    for n in 0..per_key {
        let mut tx = db.pool.begin().await.unwrap();
        for key in keys {
            outbox
                .publish_keyed(&mut tx, key, ping(key, n))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let seen: Arc<Mutex<Vec<Ping>>> = Arc::default();
    // Each round: a fresh bus and relay (small batches), stopped after a few messages.
    let mut round = 0;
    while seen.lock().len() < keys.len() * per_key as usize {
        round += 1;
        assert!(round < 100, "no progress");
        let bus = Bus::new();
        let (stop_tx, mut stop_rx) = mpsc::unbounded_channel();
        let stop_at = (seen.lock().len() + 7 + round % 5).min(keys.len() * per_key as usize);
        let sub = {
            let seen = seen.clone();
            bus.on("rec", move |p: Ping, _ctx| {
                let seen = seen.clone();
                let stop_tx = stop_tx.clone();
                async move {
                    let mut s = seen.lock();
                    s.push(p);
                    if s.len() >= stop_at {
                        let _ = stop_tx.send(());
                    }
                    Ok::<_, std::io::Error>(())
                }
            })
            .ordering_header(ORDERING_KEY_HEADER)
            .start()
            .await
            .unwrap()
        };
        let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
            .batch_size(4)
            .handoff(Handoff::Handled)
            .spawn();
        let finished = tokio::time::timeout(T, stop_rx.recv()).await;
        relay.stop().await.unwrap();
        drop(sub);
        bus.shutdown(T).await.unwrap();
        if finished.is_err() {
            break;
        }
    }
    let seen = seen.lock().clone();
    for key in keys {
        let ns: Vec<i64> = seen.iter().filter(|p| p.key == key).map(|p| p.n).collect();
        assert_eq!(ns, (0..per_key).collect::<Vec<_>>(), "key {key}");
    }
    assert!(round > 3, "the relay was restarted ({round} rounds)");
    db.finish().await;
}

#[tokio::test]
async fn concurrent_relays_never_send_a_row_twice() {
    let Some(db) = TestDb::new("concurrent").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let total = 300;
    for n in 0..total {
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .publish_keyed(&mut tx, "k", ping("k", n))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut relays = Vec::new();
    let mut buses = Vec::new();
    for _ in 0..3 {
        let bus = Bus::new();
        let seen = seen.clone();
        let sub = bus
            .on("rec", move |p: Ping, _ctx| {
                let seen = seen.clone();
                async move {
                    seen.lock().push(p.n);
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
            .await
            .unwrap();
        let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
            .batch_size(5)
            .handoff(Handoff::Handled)
            .poll_interval(Duration::from_millis(10));
        relays.push(tokio::spawn(async move {
            let mut sent = 0;
            while relay.backlog().await.unwrap() > 0 {
                sent += relay.drain().await.unwrap();
                tokio::task::yield_now().await;
            }
            sent
        }));
        buses.push((bus, sub));
    }
    let mut sent = 0;
    for r in relays {
        sent += r.await.unwrap();
    }
    assert_eq!(sent, total as usize);
    let seen = seen.lock().clone();
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "sent twice or out of order"
    );
    db.finish().await;
}

#[tokio::test]
async fn retention_deletes_or_keeps_sent_rows() {
    let Some(db) = TestDb::new("retention").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let (bus, _rx, _sub) = recording_bus().await;
    let mut conn = db.pool.acquire().await.unwrap();
    outbox.publish(&mut conn, ping("k", 1)).await.unwrap();
    let keep = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .retention(Retention::Keep(Duration::from_secs(3600)));
    assert_eq!(keep.drain().await.unwrap(), 1);
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NOT NULL")
            .await,
        1
    );
    outbox.publish(&mut conn, ping("k", 2)).await.unwrap();
    let delete =
        Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).retention(Retention::Delete);
    assert_eq!(delete.drain().await.unwrap(), 1);
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.outbox").await,
        1,
        "the kept row only"
    );
    drop(conn);
    db.finish().await;
}

#[tokio::test]
async fn without_notify_the_relay_finds_rows_by_polling() {
    let Some(db) = TestDb::new("quiet").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone()).notify(false);
    let (bus, mut rx, _sub) = recording_bus().await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .poll_interval(Duration::from_millis(50))
        .spawn();
    let mut tx = db.pool.begin().await.unwrap();
    outbox.publish(&mut tx, ping("q", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let got = tokio::time::timeout(T, rx.recv())
        .await
        .expect("relayed by polling");
    assert_eq!(got, Some(ping("q", 1)));
    relay.stop().await.unwrap();
    db.finish().await;
}

/// Defect: with its stop sender dropped, `run` used to spin (its `changed()` failed at once,
/// every loop) instead of returning.
#[tokio::test]
async fn the_relay_returns_when_its_stop_sender_is_dropped() {
    let Some(db) = TestDb::new("dropstop").await else {
        return;
    };
    let (bus, _rx, _sub) = recording_bus().await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    drop(stop_tx);
    tokio::time::timeout(T, relay.run(stop_rx))
        .await
        .expect("run returned");
    db.finish().await;
}

/// A closed pool is final: `run` returns (logging it) instead of failing a pass every poll
/// interval forever, and `drain` answers the typed `PoolClosed` error.
#[tokio::test]
async fn the_relay_returns_when_its_pool_is_closed() {
    let Some(db) = TestDb::new("poolclosed").await else {
        return;
    };
    let (bus, _rx, _sub) = recording_bus().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&common::url())
        .await
        .unwrap();
    let relay =
        Relay::new(pool.clone(), db.schema.clone(), bus).poll_interval(Duration::from_millis(20));
    pool.close().await;
    let drained = relay.drain().await;
    assert!(
        matches!(
            drained.as_ref().map_err(|e| (e.relayed(), e.cause())),
            Err((
                Some(0),
                switchyard_postgres::Error::Database(sqlx::Error::PoolClosed)
            ))
        ),
        "{drained:?}"
    );
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::time::timeout(T, relay.run(stop_rx))
        .await
        .expect("run still failing its passes: a closed pool is retried forever");
    db.finish().await;
}

/// An outbox row no envelope can be rebuilt from (its `meta` or its `headers` damaged) goes to
/// the bus's dead-letter queue (reason `DecodeFailed`) with its id, topic, raw payload and the
/// raw text of its damaged columns, and is marked so it is not dead-lettered again; the rows
/// after it go out.
#[tokio::test]
async fn an_undecodable_row_is_dead_lettered_with_its_raw_bytes() {
    let Some(db) = TestDb::new("undecodable").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let mut ids = Vec::new();
    for n in 1..=4 {
        let mut tx = db.pool.begin().await.unwrap();
        ids.push(outbox.publish(&mut tx, ping("p", n)).await.unwrap());
        tx.commit().await.unwrap();
    }
    let payload: Vec<u8> = sqlx::query_scalar(&format!(
        "SELECT payload FROM {}.outbox WHERE id = $1",
        db.schema
    ))
    .bind(ids[0].to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    db.exec(&format!(
        "UPDATE {{schema}}.outbox SET meta = '{{\"nonsense\": true}}'::jsonb WHERE id = '{}'",
        ids[0]
    ))
    .await;
    db.exec(&format!(
        "UPDATE {{schema}}.outbox SET headers = '\"not a map\"'::jsonb WHERE id = '{}'",
        ids[1]
    ))
    .await;
    db.exec(&format!(
        "UPDATE {{schema}}.outbox SET meta = '{{}}'::jsonb, topic = 'not a topic!' \
         WHERE id = '{}'",
        ids[3]
    ))
    .await;
    let (bus, mut rx, _sub) = recording_bus().await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .handoff(Handoff::Handled)
        .retention(Retention::Keep(Duration::from_secs(3600)));
    relay.drain().await.unwrap();
    let got = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, ping("p", 3));
    assert_eq!(relay.backlog().await.unwrap(), 0);
    let dlq = bus.dead_letters().expect("the default in-memory store");
    assert_eq!(dlq.len(), 3, "{:?}", dlq.list());
    let bad_meta = dlq.get(&ids[0]).expect("the row with damaged meta");
    assert_eq!(bad_meta.reason, switchyard::DeadLetterReason::DecodeFailed);
    assert_eq!(bad_meta.envelope.topic.as_str(), Ping::TOPIC);
    assert_eq!(bad_meta.envelope.payload.as_ref(), payload.as_slice());
    assert_eq!(
        bad_meta.envelope.header("switchyard-outbox-meta"),
        Some("{\"nonsense\": true}")
    );
    assert!(bad_meta.error.contains("outbox row"), "{}", bad_meta.error);
    let bad_headers = dlq.get(&ids[1]).expect("the row with damaged headers");
    assert_eq!(
        bad_headers.reason,
        switchyard::DeadLetterReason::DecodeFailed
    );
    assert_eq!(
        bad_headers.envelope.header("switchyard-outbox-headers"),
        Some("\"not a map\"")
    );
    let bad_topic = dlq.get(&ids[3]).expect("the row with an invalid topic");
    assert_eq!(
        bad_topic.envelope.topic.as_str(),
        switchyard_postgres::UNDECODABLE_TOPIC
    );
    assert!(
        bad_topic.error.contains("not a topic!"),
        "{}",
        bad_topic.error
    );
    // Marked: a later pass neither relays nor dead-letters them again.
    assert_eq!(relay.drain().await.unwrap(), 0);
    assert_eq!(dlq.len(), 3);
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NULL")
            .await,
        0
    );
    db.finish().await;
}

/// Only events go through the outbox: a command envelope is refused when written (now or
/// delayed), and a command row already stored (written before the outbox refused them) is
/// dead-lettered by the relay instead of blocking the rows behind it (the bus refuses to
/// publish a command: `PublishError::NotAnEvent`).
#[tokio::test]
async fn a_command_is_refused_by_the_outbox_and_a_stored_one_does_not_block_the_relay() {
    let Some(db) = TestDb::new("command_row").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let mut tx = db.pool.begin().await.unwrap();
    let command = ping("cmd", 1)
        .to_envelope()
        .unwrap()
        .with_kind(switchyard::Kind::Command);
    let got = outbox.publish_envelope(&mut tx, command.clone()).await;
    assert!(
        matches!(
            got,
            Err(switchyard_postgres::Error::Publish(
                switchyard::PublishError::NotAnEvent { .. }
            ))
        ),
        "{got:?}"
    );
    let got = outbox
        .publish_at(&mut tx, std::time::SystemTime::now(), command)
        .await;
    assert!(
        matches!(
            got,
            Err(switchyard_postgres::Error::Publish(
                switchyard::PublishError::DelayedCommand { .. }
            ))
        ),
        "{got:?}"
    );
    // A stored command row, then an event behind it.
    outbox.publish(&mut tx, ping("cmd", 2)).await.unwrap();
    outbox.publish(&mut tx, ping("after", 3)).await.unwrap();
    tx.commit().await.unwrap();
    db.exec(
        "UPDATE {schema}.outbox SET meta = jsonb_set(meta, '{kind}', '\"command\"') \
         WHERE seq = (SELECT min(seq) FROM {schema}.outbox)",
    )
    .await;
    let (bus, mut rx, _sub) = recording_bus().await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    let relayed = tokio::time::timeout(Duration::from_secs(10), relay.drain())
        .await
        .expect("the relay drains");
    assert_eq!(relayed.unwrap(), 1, "the event behind the command row");
    bus.run_until_idle().await;
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert_eq!(first.unwrap().unwrap(), ping("after", 3));
    assert!(rx.try_recv().is_err(), "an event handler got the command");
    assert_eq!(relay.backlog().await.unwrap(), 0, "the command row blocks");
    // The dead letter says in plain words what happened and what to do.
    let dlq = bus.dead_letters().expect("the default in-memory store");
    let letters = dlq.list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(
        letter.reason,
        switchyard::DeadLetterReason::Rejected,
        "{letter:?}"
    );
    assert!(
        letter.error.contains("holds a command, not an event")
            && letter.error.contains("only events are relayed")
            && letter.error.contains("bus.send"),
        "{}",
        letter.error
    );
    assert!(
        !letter.error.contains("cannot be rebuilt"),
        "{}",
        letter.error
    );
    db.finish().await;
}
