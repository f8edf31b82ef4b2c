//! Review rev35: the outbox, relay, inbox and dead-letter store (docs/postgres.md and the
//! rustdoc) attacked as a user would, through the public API only, on cases review_rev3 and
//! review_rev9 left out: every envelope field and a large binary payload round-tripped
//! through PostgreSQL; savepoints and failed transactions; several relays draining at once
//! (counts add up); the bus refusing (a publish hook, a full queue) and the relay dropped
//! mid-batch; many concurrent duplicates in the inbox; delayed keyed messages against an open
//! writer of the key; a failed replay surviving a restart; missing or damaged tables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Ping, TestDb, eventually, unique, url};
use sqlx::Acquire;
use sqlx::postgres::PgPoolOptions;
use switchyard::{
    BoxHandler, Bus, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, Message, MessageId,
    Outcome, Overflow, Priority, PublishError, Subscription, Topic,
};
use switchyard_middleware::dlq::{DeadLetterQueue, Replayer};
use switchyard_postgres::{
    Error, Handoff, Inbox, ORDERING_KEY_HEADER, Outbox, PgDeadLetterQueue, Relay, Schema, migrate,
};
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const T: Duration = Duration::from_secs(15);

fn ping(key: &str, n: i64) -> Ping {
    Ping { key: key.into(), n }
}

/// A pool of its own (another process, as far as PostgreSQL can tell).
async fn pool(max: u32) -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url())
        .await
        .expect("connect")
}

/// A subscriber to `topic` on `bus` that forwards every envelope it handles, as received.
async fn raw_recorder(bus: &Bus, topic: &str) -> (mpsc::UnboundedReceiver<Envelope>, Subscription) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = BoxHandler::new(tower::service_fn(move |env: Envelope| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(env);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let sub = bus.subscribe("raw", topic, handler).start().await.unwrap();
    (rx, sub)
}

/// A "rec" subscriber of `Ping` on `bus` (one key at a time) forwarding `(key, n)`.
async fn recorder(bus: &Bus) -> (mpsc::UnboundedReceiver<(String, i64)>, Subscription) {
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
    (rx, sub)
}

async fn recv_n<X: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<X>, n: usize) -> Vec<X> {
    let mut v = Vec::new();
    while v.len() < n {
        match tokio::time::timeout(T, rx.recv()).await {
            Ok(Some(x)) => v.push(x),
            _ => panic!("only {} of {n} messages arrived: {v:?}", v.len()),
        }
    }
    v
}

/// The `n`s of key `key`, in arrival order.
fn of_key(seen: &[(String, i64)], key: &str) -> Vec<i64> {
    seen.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, n)| *n)
        .collect()
}

async fn sent_rows(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NOT NULL")
        .await
}

/// "Each row keeps the whole envelope ... the relay publishes it with the same message id":
/// every field (ids, correlation and causation, source, target, priority, a timestamp with
/// nanoseconds, content type, type name and version, 60 headers with quotes, escapes, NUL-free
/// unicode and empty values, the ordering key) and a 3 MiB payload of every byte value come
/// out of the relay as they went in; so does a bare envelope with an empty payload.
#[tokio::test]
async fn every_envelope_field_and_a_large_binary_payload_come_out_exactly() {
    let Some(db) = TestDb::new("r35full").await else {
        return;
    };
    let parent = Envelope::new(Topic::new("review.parent").unwrap(), "p");
    let payload: Vec<u8> = (0..3usize << 20).map(|i| (i * 31 % 256) as u8).collect();
    let mut full = Envelope::new(Topic::new("review.full").unwrap(), payload)
        .caused_by(&parent)
        .with_correlation_id(MessageId::new())
        .with_source("billing-svc")
        .with_target("ledger")
        .with_priority(Priority(201))
        .with_content_type("application/x-protobuf; proto=review.Full")
        .with_header(ORDERING_KEY_HEADER, "acct-7")
        .with_header("ünïcode-ключ", "値 \"quoted\" \\ back\nslash\ttab 🚀")
        .with_header("empty", "");
    for i in 0..57 {
        full = full.with_header(format!("h-{i:02}"), "v".repeat(i * 20));
    }
    full.type_name = Some("review::Full".into());
    full.type_version = 7;
    full.timestamp = UNIX_EPOCH + Duration::new(1_765_000_000, 123_456_789);
    let bare = Envelope::new(Topic::new("review.full").unwrap(), Vec::<u8>::new());

    let outbox = Outbox::new(db.schema.clone());
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        outbox
            .publish_envelope(&mut tx, full.clone())
            .await
            .unwrap(),
        full.id
    );
    assert_eq!(
        outbox
            .publish_envelope(&mut tx, bare.clone())
            .await
            .unwrap(),
        bare.id
    );
    tx.commit().await.unwrap();

    let bus = Bus::new();
    let (mut rx, _sub) = raw_recorder(&bus, "review.full").await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    assert_eq!(relay.drain().await.unwrap(), 2);
    let got = recv_n(&mut rx, 2).await;
    for (sent, got) in [(&full, &got[0]), (&bare, &got[1])] {
        assert_eq!(got.id, sent.id);
        assert_eq!(got.topic, sent.topic);
        assert_eq!(got.kind, sent.kind);
        assert_eq!(got.correlation_id, sent.correlation_id);
        assert_eq!(got.causation_id(), sent.causation_id());
        assert_eq!(got.source(), sent.source());
        assert_eq!(got.target(), sent.target());
        assert_eq!(got.priority, sent.priority);
        assert_eq!(got.timestamp, sent.timestamp, "timestamp precision");
        assert_eq!(got.content_type(), sent.content_type());
        assert_eq!(got.type_name, sent.type_name);
        assert_eq!(got.type_version, sent.type_version);
        assert_eq!(got.headers(), sent.headers());
        assert_eq!(got.payload.len(), sent.payload.len());
        assert!(got.payload == sent.payload, "payload bytes differ");
        assert!(got.same_message(sent), "some field differs");
    }
    db.finish().await;
}

/// "A rolled-back transaction publishes nothing", also in part: a savepoint rolled back
/// inside a committed transaction takes its message with it; a transaction aborted by a
/// failed statement, a dropped one, and a delayed message in a rolled-back transaction
/// publish nothing either.
#[tokio::test]
async fn savepoints_aborted_and_dropped_transactions_publish_nothing_of_theirs() {
    let Some(db) = TestDb::new("r35savepoint").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());

    let mut tx = db.pool.begin().await.unwrap();
    outbox.publish(&mut tx, ping("a", 1)).await.unwrap();
    {
        let mut sp = tx.begin().await.unwrap();
        outbox
            .publish_keyed(&mut sp, "a", ping("a", 2))
            .await
            .unwrap();
        sp.rollback().await.unwrap();
    }
    outbox
        .publish_keyed(&mut tx, "a", ping("a", 3))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Aborted by a failing statement after the publish: the commit cannot keep it.
    let mut tx = db.pool.begin().await.unwrap();
    outbox.publish(&mut tx, ping("a", 4)).await.unwrap();
    assert!(sqlx::query("SELECT 1/0").execute(&mut *tx).await.is_err());
    let _ = tx.commit().await;

    // Dropped without commit or rollback.
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut tx, "a", ping("a", 5))
        .await
        .unwrap();
    drop(tx);

    // Delayed (already due) in a rolled-back transaction.
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_at(
            &mut tx,
            SystemTime::now() - Duration::from_secs(1),
            ping("a", 6).to_envelope().unwrap(),
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let bus = Bus::new();
    let (mut rx, _sub) = recorder(&bus).await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    assert_eq!(
        relay.drain().await.unwrap(),
        2,
        "only 1 and 3 are committed"
    );
    bus.run_until_idle().await;
    let got = recv_n(&mut rx, 2).await;
    assert_eq!(of_key(&got, "a"), vec![1, 3]);
    assert!(rx.try_recv().is_err(), "an uncommitted message went out");
    assert_eq!(db.count("SELECT count(*) FROM {schema}.outbox").await, 2);
    assert_eq!(relay.backlog().await.unwrap(), 0);
    db.finish().await;
}

/// Four relays on four pools (four processes) drain one outbox at the same time, with small
/// batches: every row goes out exactly once, each key in order, and the counts `drain`
/// returns add up to the number of rows (no pass counts a row another relay sent).
#[tokio::test]
async fn four_relays_draining_at_once_send_each_row_once_and_their_counts_add_up() {
    let Some(db) = TestDb::new("r35drain4").await else {
        return;
    };
    const ROWS: i64 = 120;
    let outbox = Outbox::new(db.schema.clone());
    for chunk in 0..(ROWS / 10) {
        let mut tx = db.pool.begin().await.unwrap();
        for i in 0..10 {
            let n = chunk * 10 + i + 1;
            match n % 3 {
                0 => outbox.publish(&mut tx, ping("none", n)).await.unwrap(),
                1 => outbox
                    .publish_keyed(&mut tx, "a", ping("a", n))
                    .await
                    .unwrap(),
                _ => outbox
                    .publish_keyed(&mut tx, "b", ping("b", n))
                    .await
                    .unwrap(),
            };
        }
        tx.commit().await.unwrap();
    }
    let bus = Bus::new();
    let (mut rx, _sub) = recorder(&bus).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let p = pool(2).await;
        let relay = Relay::new(p.clone(), db.schema.clone(), bus.clone()).batch_size(7);
        tasks.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + T;
            let mut total = 0;
            loop {
                total += relay.drain().await.unwrap();
                if relay.backlog().await.unwrap() == 0 {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "rows still due");
                tokio::task::yield_now().await;
            }
            p.close().await;
            total
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, ROWS as usize, "the relays' counts do not add up");
    bus.run_until_idle().await;
    let got = recv_n(&mut rx, ROWS as usize).await;
    assert!(rx.try_recv().is_err(), "more than {ROWS} messages handled");
    let mut ns: Vec<i64> = got.iter().map(|(_, n)| *n).collect();
    ns.sort_unstable();
    assert_eq!(ns, (1..=ROWS).collect::<Vec<_>>(), "lost or duplicated");
    for key in ["a", "b"] {
        let seen = of_key(&got, key);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{key}: {seen:?}");
    }
    assert_eq!(sent_rows(&db).await, ROWS);
    db.finish().await;
}

/// "A publish the bus refuses stops the batch there (later rows wait)": a publish hook
/// refusing message 3 makes `drain` answer the hook's `PublishError::Refused`; 1 and 2 are
/// sent and marked, 3 to 6 wait and are not skipped (also by a second attempt); once the bus
/// accepts, a running relay sends them, each once and in order.
#[tokio::test]
async fn a_refusing_bus_stops_the_batch_at_the_refused_row_and_reports_it() {
    let Some(db) = TestDb::new("r35refuse").await else {
        return;
    };
    let refuse = Arc::new(AtomicI64::new(3));
    let r = refuse.clone();
    let bus = Bus::builder()
        .publish_hook(move |env: &mut Envelope| {
            let n = serde_json::from_slice::<Ping>(&env.payload).map_or(0, |p| p.n);
            if n == r.load(Ordering::SeqCst) {
                Err(PublishError::Refused(format!("message {n} refused")))
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    let (mut rx, _sub) = recorder(&bus).await;
    let outbox = Outbox::new(db.schema.clone());
    let mut tx = db.pool.begin().await.unwrap();
    for n in 1..=6 {
        outbox
            .publish_keyed(&mut tx, "k", ping("k", n))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    for attempt in 1..=2 {
        match relay.drain().await {
            Err(Error::Publish(PublishError::Refused(why))) => {
                assert!(why.contains("message 3"), "{why}")
            }
            other => panic!("attempt {attempt}: expected the hook's refusal, got {other:?}"),
        }
        assert_eq!(sent_rows(&db).await, 2, "attempt {attempt}");
        assert_eq!(relay.backlog().await.unwrap(), 4, "attempt {attempt}");
    }
    bus.run_until_idle().await;
    assert_eq!(of_key(&recv_n(&mut rx, 2).await, "k"), vec![1, 2]);
    assert!(
        rx.try_recv().is_err(),
        "a row after the refused one went out"
    );

    let running = relay.poll_interval(Duration::from_millis(50)).spawn();
    refuse.store(-1, Ordering::SeqCst);
    assert_eq!(of_key(&recv_n(&mut rx, 4).await, "k"), vec![3, 4, 5, 6]);
    running.stop().await.unwrap();
    bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "a message went out twice");
    assert_eq!(sent_rows(&db).await, 6);
    db.finish().await;
}

/// A subscription whose queue is full (capacity 1, `Overflow::RejectNew`, its handler stuck)
/// refuses the relay's publish: `drain` reports `PublishError::Full` naming it, the rows
/// from there on stay unsent, and once the handler moves again a running relay delivers the
/// rest: 1..=6 each exactly once and in order (nothing lost, nothing twice).
#[tokio::test]
async fn a_full_subscription_queue_is_reported_and_nothing_is_lost_or_doubled() {
    let Some(db) = TestDb::new("r35full_q").await else {
        return;
    };
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bus = Bus::new();
    let g = gate.clone();
    let _sub = bus
        .on("slow", move |p: Ping, _ctx| {
            let tx = tx.clone();
            let g = g.clone();
            async move {
                if p.n == 1 {
                    g.acquire().await.unwrap().forget();
                }
                let _ = tx.send(p.n);
                Ok::<_, std::io::Error>(())
            }
        })
        .queue_capacity(1)
        .overflow(Overflow::RejectNew)
        .start()
        .await
        .unwrap();
    let outbox = Outbox::new(db.schema.clone());
    let mut wtx = db.pool.begin().await.unwrap();
    for n in 1..=6 {
        outbox.publish(&mut wtx, ping("k", n)).await.unwrap();
    }
    wtx.commit().await.unwrap();

    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    match relay.drain().await {
        Err(Error::Publish(PublishError::Full {
            subscriptions,
            delivered,
        })) => {
            assert_eq!(subscriptions, vec!["slow".to_string()]);
            assert_eq!(delivered, 0);
        }
        other => panic!("expected a full queue, got {other:?}"),
    }
    let accepted = sent_rows(&db).await;
    assert!((1..=2).contains(&accepted), "{accepted} rows marked");
    assert_eq!(relay.backlog().await.unwrap(), 6 - accepted as u64);

    let running = relay.poll_interval(Duration::from_millis(50)).spawn();
    gate.add_permits(1);
    let got = recv_n(&mut rx, 6).await;
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    running.stop().await.unwrap();
    bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "a message went out twice");
    assert_eq!(sent_rows(&db).await, 6);
    db.finish().await;
}

/// The relay dropped in the middle of a batch (its task aborted while a `Handoff::Handled`
/// publish waits for a handler), as a process dying would leave it: the pass's marks are
/// never committed and its locks are released, so a relay of another process (own pool, own
/// bus) sends the whole batch, in order, and the outbox ends with nothing due.
#[tokio::test]
async fn a_relay_dropped_mid_batch_leaves_the_whole_batch_to_another_relay() {
    let Some(db) = TestDb::new("r35dropped").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let mut tx = db.pool.begin().await.unwrap();
    for n in 1..=4 {
        outbox
            .publish_keyed(&mut tx, "k", ping("k", n))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    // Process A: its handler takes 1 and gets stuck on 2.
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let bus_a = Bus::new();
    let _sub_a = bus_a
        .on("stuck", move |p: Ping, _ctx| {
            let entered_tx = entered_tx.clone();
            async move {
                let _ = entered_tx.send(p.n);
                if p.n == 2 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    let pool_a = pool(2).await;
    let relay_a =
        Relay::new(pool_a.clone(), db.schema.clone(), bus_a.clone()).handoff(Handoff::Handled);
    let pass = tokio::spawn(async move { relay_a.drain().await });
    assert_eq!(recv_n(&mut entered, 2).await, vec![1, 2]);
    pass.abort();
    assert!(pass.await.unwrap_err().is_cancelled());
    assert_eq!(
        sent_rows(&db).await,
        0,
        "a mark of the dropped pass was kept"
    );

    // Process B.
    let pool_b = pool(2).await;
    let bus_b = Bus::new();
    let (mut rx, _sub_b) = recorder(&bus_b).await;
    let relay_b =
        Relay::new(pool_b.clone(), db.schema.clone(), bus_b.clone()).handoff(Handoff::Handled);
    let relayed = Arc::new(AtomicUsize::new(0));
    let ok = eventually(T, || {
        let relay_b = relay_b.clone();
        let relayed = relayed.clone();
        async move {
            relayed.fetch_add(relay_b.drain().await.unwrap(), Ordering::SeqCst);
            relayed.load(Ordering::SeqCst) >= 4
        }
    })
    .await;
    assert!(
        ok,
        "another relay sent {} of 4 rows in {T:?}: the dropped pass still holds the outbox",
        relayed.load(Ordering::SeqCst)
    );
    assert_eq!(relayed.load(Ordering::SeqCst), 4);
    assert_eq!(of_key(&recv_n(&mut rx, 4).await, "k"), vec![1, 2, 3, 4]);
    assert_eq!(relay_b.backlog().await.unwrap(), 0);
    assert_eq!(sent_rows(&db).await, 4);
    pool_a.close().await;
    pool_b.close().await;
    db.finish().await;
}

/// Backends of this schema's inbox waiting on a lock (a concurrent insert of the same id).
async fn inbox_waiters(db: &TestDb) -> i64 {
    let like = format!("%{}.inbox%", db.schema);
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND query LIKE $1",
    )
    .bind(like)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// "Two concurrent deliveries of one id serialize on the inbox row", with many: 6 deliveries
/// of one message to each of two consumers at once, all of them inside the inbox while the
/// first of each holds its transaction open. Each consumer runs its handler exactly once,
/// every delivery is acknowledged, and each consumer's write is in the table once.
#[tokio::test]
async fn many_simultaneous_duplicates_run_the_handler_once_per_consumer() {
    let Some(db) = TestDb::new("r35dups").await else {
        return;
    };
    db.exec("CREATE TABLE {schema}.effects (consumer TEXT, n BIGINT)")
        .await;
    const EACH: usize = 6;
    let p = pool(2 * EACH as u32 + 4).await;
    let gate = Arc::new(Semaphore::new(0));
    let env = ping("k", 7).to_envelope().unwrap();
    let mut handlers = Vec::new();
    let mut calls = Vec::new();
    for consumer in ["c1", "c2"] {
        let inbox = Inbox::new(p.clone(), db.schema.clone(), consumer);
        let count = Arc::new(AtomicUsize::new(0));
        let (c, g) = (count.clone(), gate.clone());
        let insert = format!(
            "INSERT INTO {}.effects (consumer, n) VALUES ($1, $2)",
            db.schema
        );
        let h = inbox.handler(move |m: Ping, tx, _env| {
            let (c, g, insert) = (c.clone(), g.clone(), insert.clone());
            Box::pin(async move {
                c.fetch_add(1, Ordering::SeqCst);
                sqlx::query(&insert)
                    .bind(consumer)
                    .bind(m.n)
                    .execute(&mut *tx)
                    .await?;
                g.acquire().await?.forget();
                Ok::<_, BoxError>(())
            })
        });
        handlers.push((inbox, h));
        calls.push(count);
    }
    let mut deliveries = Vec::new();
    for (_, h) in &handlers {
        for _ in 0..EACH {
            deliveries.push(tokio::spawn(h.clone().oneshot(env.clone())));
        }
    }
    // Every duplicate is queued on the row (not one missed the overlap).
    let queued = eventually(T, || async {
        inbox_waiters(&db).await >= 2 * (EACH as i64 - 1)
    })
    .await;
    assert!(
        queued,
        "only {} deliveries waited",
        inbox_waiters(&db).await
    );
    gate.add_permits(2 * EACH);
    for d in deliveries {
        let outcome = d.await.unwrap().expect("delivery failed");
        assert!(matches!(outcome, Outcome::Ack), "{outcome:?}");
    }
    for (i, (inbox, _)) in handlers.iter().enumerate() {
        assert_eq!(
            calls[i].load(Ordering::SeqCst),
            1,
            "{}: handler runs",
            inbox.consumer()
        );
        assert!(inbox.handled(env.id.clone()).await.unwrap());
    }
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.effects").await,
        2,
        "one effect per consumer"
    );
    p.close().await;
    db.finish().await;
}

/// "A delayed message neither waits for nor holds back messages with the same ordering key":
/// while a writer of key `k` is open (which holds `k`'s undelayed rows back), a delayed `k`
/// message goes out when due, not before; a `k` message due in an hour holds nothing back;
/// when the writer commits, its row and the one committed meanwhile go out in sequence order.
/// `Relay::backlog` counts due rows only.
#[tokio::test]
async fn a_delayed_keyed_message_goes_out_on_time_past_an_open_writer_of_its_key() {
    let Some(db) = TestDb::new("r35delaykey").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let keyed = |n| {
        ping("k", n)
            .to_envelope()
            .unwrap()
            .with_header(ORDERING_KEY_HEADER, "k")
    };
    outbox
        .schedule(
            &db.pool,
            SystemTime::now() + Duration::from_secs(3600),
            keyed(99),
        )
        .await
        .unwrap();
    let mut writer = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut writer, "k", ping("k", 3))
        .await
        .unwrap();
    let due = SystemTime::now() + Duration::from_millis(1200);
    outbox.schedule(&db.pool, due, keyed(1)).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox
        .publish_keyed(&mut tx, "k", ping("k", 2))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("rec", move |p: Ping, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((p.n, SystemTime::now()));
                Ok::<_, std::io::Error>(())
            }
        })
        .ordering_header(ORDERING_KEY_HEADER)
        .start()
        .await
        .unwrap();
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .poll_interval(Duration::from_secs(3600));
    assert_eq!(relay.backlog().await.unwrap(), 1, "only row 2 is due");
    let running = relay.clone().spawn();
    let (n, at) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(
        n, 1,
        "the delayed message waited for the open writer of its key"
    );
    assert!(
        at >= due,
        "delivered {:?} early",
        due.duration_since(at).unwrap_or_default()
    );
    assert!(
        rx.try_recv().is_err(),
        "row 2 overtook the open writer's row 3"
    );
    writer.commit().await.unwrap();
    let rest: Vec<i64> = recv_n(&mut rx, 2)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(rest, vec![3, 2], "sequence order of key k");
    running.stop().await.unwrap();
    bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "the hour-delayed row went out");
    assert_eq!(relay.backlog().await.unwrap(), 0);
    assert_eq!(
        db.count("SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NULL")
            .await,
        1
    );
    db.finish().await;
}

/// A replay the bus refuses leaves the dead letter where it was, in memory and in the
/// table: after a restart (new pool, new queue) it is there with every field of its
/// envelope intact, while the replayed one is gone.
#[tokio::test]
async fn a_failed_replay_keeps_the_dead_letter_across_a_restart() {
    let Some(db) = TestDb::new("r35replay").await else {
        return;
    };
    let dlq = PgDeadLetterQueue::open(db.pool.clone(), &db.schema, 100)
        .await
        .unwrap();
    let parent = Envelope::new(Topic::new("review.parent").unwrap(), "p");
    let mut kept_env = Envelope::new(Topic::new("orders.stuck").unwrap(), vec![0u8, 1, 255])
        .caused_by(&parent)
        .with_source("svc")
        .with_priority(Priority::HIGH)
        .with_content_type("application/octet-stream")
        .with_header("tenant", "ünï \"q\"");
    kept_env.timestamp = UNIX_EPOCH + Duration::new(1_765_000_001, 987_654_321);
    kept_env.type_name = Some("Stuck".into());
    kept_env.type_version = 3;
    let kept =
        DeadLetter::new(kept_env, DeadLetterReason::HandlerFailed, "boom").with_handler("h1");
    let replayed = DeadLetter::new(
        Envelope::new(Topic::new("orders.ok").unwrap(), "x"),
        DeadLetterReason::Rejected,
        "no",
    )
    .with_handler("h1");
    dlq.put(kept.clone());
    dlq.put(replayed.clone());
    let refuse = kept.envelope.id.clone();
    let republish = move |env: Envelope| {
        let result = if env.id == refuse {
            Err(PublishError::ShuttingDown)
        } else {
            Ok(())
        };
        async move { result }
    };
    let report = Replayer::new(&dlq, &republish).all().await;
    assert_eq!(report.replayed, vec![replayed.envelope.id.clone()]);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(dlq.len(), 1);
    dlq.flush().await.unwrap();

    let p = pool(2).await;
    let reopened = PgDeadLetterQueue::open(p.clone(), &db.schema, 100)
        .await
        .unwrap();
    assert_eq!(reopened.len(), 1);
    assert_eq!(reopened.get(&replayed.envelope.id), None);
    assert_eq!(reopened.get(&kept.envelope.id), Some(kept.clone()));
    p.close().await;
    db.finish().await;
}

/// Missing or damaged tables are typed errors whose text names what is missing, never a
/// panic or a silent nothing: an invalid schema name, every entry point on a schema never
/// migrated, an outbox table missing a column; and a running relay that started before the
/// schema existed picks the rows up once it is migrated ("a failed pass is logged and
/// retried after the poll interval").
#[tokio::test]
async fn missing_or_damaged_tables_are_typed_errors_that_name_them() {
    let Some(db) = TestDb::new("r35missing").await else {
        return;
    };
    match Schema::new("Shop-1") {
        Err(e @ Error::InvalidSchema(_)) => assert!(e.to_string().contains("Shop-1"), "{e}"),
        other => panic!("expected InvalidSchema, got {other:?}"),
    }
    let absent = Schema::new(unique("r35absent")).unwrap();
    let names = |e: &Error, table: &str| {
        assert!(matches!(e, Error::Database(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("{absent}.{table}")) && text.contains("does not exist"),
            "{text}"
        );
    };
    let bus = Bus::new();
    let (mut rx, _sub) = recorder(&bus).await;
    let relay = Relay::new(db.pool.clone(), absent.clone(), bus.clone());
    names(&relay.drain().await.unwrap_err(), "outbox");
    names(&relay.backlog().await.unwrap_err(), "outbox");
    let outbox = Outbox::new(absent.clone());
    let mut tx = db.pool.begin().await.unwrap();
    names(
        &outbox.publish(&mut tx, ping("k", 0)).await.unwrap_err(),
        "outbox",
    );
    tx.rollback().await.unwrap();
    let inbox = Inbox::new(db.pool.clone(), absent.clone(), "c");
    names(&inbox.handled(MessageId::new()).await.unwrap_err(), "inbox");
    names(
        &inbox
            .purge_older_than(Duration::from_secs(1))
            .await
            .unwrap_err(),
        "inbox",
    );
    let h = inbox.handler(|_m: Ping, _tx, _env| Box::pin(async { Ok::<_, BoxError>(()) }));
    let err = h
        .oneshot(ping("k", 0).to_envelope().unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!("{absent}.inbox")),
        "{err}"
    );
    match PgDeadLetterQueue::open(db.pool.clone(), &absent, 10).await {
        Err(e) => names(&e, "dead_letters"),
        Ok(_) => panic!("opened a dead-letter queue without its table"),
    }

    // A relay running before the schema exists relays once it is migrated.
    let running = relay.poll_interval(Duration::from_millis(50)).spawn();
    assert_eq!(migrate(&db.pool, &absent).await.unwrap(), 3);
    assert_eq!(migrate(&db.pool, &absent).await.unwrap(), 0, "idempotent");
    let mut tx = db.pool.begin().await.unwrap();
    outbox.publish(&mut tx, ping("k", 1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(recv_n(&mut rx, 1).await, vec![("k".to_string(), 1)]);
    running.stop().await.unwrap();

    // A damaged outbox (a column dropped by hand): both ends say which column.
    db.exec("ALTER TABLE {schema}.outbox DROP COLUMN meta")
        .await;
    let damaged = Outbox::new(db.schema.clone());
    let mut tx = db.pool.begin().await.unwrap();
    let e = damaged.publish(&mut tx, ping("k", 2)).await.unwrap_err();
    assert!(
        matches!(e, Error::Database(_)) && e.to_string().contains("meta"),
        "{e:?}"
    );
    tx.rollback().await.unwrap();
    let e = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .drain()
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Database(_)) && e.to_string().contains("meta"),
        "{e:?}"
    );

    sqlx::raw_sql(&format!("DROP SCHEMA {absent} CASCADE"))
        .execute(&db.pool)
        .await
        .unwrap();
    db.finish().await;
}

/// "`stop` stops the relay after its current pass (a pass's rows are committed or rolled
/// back whole) and waits for it", and "dropping the handle stops it too (after its current
/// pass)": a stop (or a drop) while a `Handoff::Handled` pass waits for a handler lets the
/// pass finish; its rows are marked, so no later relay sends them again.
#[tokio::test]
async fn stopping_or_dropping_the_relay_mid_pass_finishes_the_pass_and_sends_nothing_twice() {
    let Some(db) = TestDb::new("r35stop").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    for drop_it in [false, true] {
        let base = if drop_it { 10 } else { 0 };
        let mut tx = db.pool.begin().await.unwrap();
        for n in 1..=4 {
            outbox
                .publish_keyed(&mut tx, "k", ping("k", base + n))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let bus = Bus::new();
        let g = gate.clone();
        let _sub = bus
            .on("slow", move |p: Ping, _ctx| {
                let (seen_tx, g) = (seen_tx.clone(), g.clone());
                async move {
                    let _ = seen_tx.send(p.n);
                    if p.n == base + 2 {
                        g.acquire().await.unwrap().forget();
                    }
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
            .await
            .unwrap();
        let handle = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
            .handoff(Handoff::Handled)
            .spawn();
        assert_eq!(recv_n(&mut seen, 2).await, vec![base + 1, base + 2]);
        let stopped = if drop_it {
            drop(handle);
            None
        } else {
            Some(tokio::spawn(handle.stop()))
        };
        gate.add_permits(1);
        assert_eq!(recv_n(&mut seen, 2).await, vec![base + 3, base + 4]);
        if let Some(stopped) = stopped {
            tokio::time::timeout(T, stopped)
                .await
                .expect("stop returns")
                .unwrap()
                .unwrap();
        }
        let rows = if drop_it { 8 } else { 4 };
        let marked = eventually(T, || async { sent_rows(&db).await == rows }).await;
        assert!(
            marked,
            "drop={drop_it}: {} rows marked",
            sent_rows(&db).await
        );
        let later = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
        assert_eq!(
            later.drain().await.unwrap(),
            0,
            "drop={drop_it}: sent again"
        );
        bus.run_until_idle().await;
        assert!(seen.try_recv().is_err(), "drop={drop_it}: a message twice");
    }
    db.finish().await;
}

/// "The relay wakes for the earliest due row and publishes it then": a delayed message that
/// falls due while a long pass runs (a `Handoff::Handled` handler working 3 s) is published
/// soon after that pass ends, not the time-to-due (measured from the pass's start) later.
/// Default settings, polling every hour as in `delayed_messages_wait_until_due...`: both
/// rows are written before the relay starts (so no notification is pending), the delayed one
/// due 2.5 s on.
#[tokio::test]
#[ignore = "defect: the relay reckons the next due time from its pass's transaction start (now()), so a row falling due during a long pass waits that long again after it"]
async fn a_message_that_falls_due_during_a_long_pass_is_not_held_a_pass_longer() {
    let Some(db) = TestDb::new("r35duelate").await else {
        return;
    };
    let work = Duration::from_secs(3);
    let outbox = Outbox::new(db.schema.clone());
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let bus = Bus::new();
    let _sub = bus
        .on("rec", move |p: Ping, _ctx| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send((p.n, SystemTime::now()));
                if p.n == 1 {
                    // The handler's work (not synchronisation): the pass lasts this long.
                    tokio::time::sleep(work).await;
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .workers(2)
        .start()
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    outbox.publish(&mut tx, ping("slow", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let due = SystemTime::now() + work * 5 / 6;
    outbox
        .schedule(&db.pool, due, ping("d", 2).to_envelope().unwrap())
        .await
        .unwrap();
    let running = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone())
        .handoff(Handoff::Handled)
        .poll_interval(Duration::from_secs(3600))
        .spawn();
    let (n, started) = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    assert_eq!(n, 1);
    let (n, at) = tokio::time::timeout(T, seen.recv()).await.unwrap().unwrap();
    running.stop().await.unwrap();
    db.finish().await;
    assert_eq!(n, 2);
    assert!(at >= due, "published early");
    let pass_end = started + work;
    let late = at.duration_since(pass_end.max(due)).unwrap_or_default();
    assert!(
        late < Duration::from_millis(800),
        "published {late:?} after the pass it fell due in ended (due {:?} after that pass began)",
        due.duration_since(started).unwrap_or_default()
    );
}

/// `Schema` promises a name "validated ... so it can be spliced into SQL without quoting",
/// yet it accepts SQL reserved words (`order`, `user`, `select`, ...) and names starting
/// with `pg_` (kept for system schemas). Such a schema must be refused with
/// `Error::InvalidSchema` or work; it does neither: `migrate` fails with a syntax error, or
/// "unacceptable schema name". (The test holds a session advisory lock so copies running in parallel do
/// not share the fixed name.)
#[tokio::test]
#[ignore = "defect: Schema::new accepts SQL reserved words (order, user, ...) and pg_ names, on which migrate then fails (syntax error / unacceptable schema name)"]
async fn a_schema_name_postgres_cannot_use_is_refused_by_schema_new_or_works() {
    let Some(db) = TestDb::new("r35reserved").await else {
        return;
    };
    let mut guard = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('switchyard-review-rev35-reserved'))")
        .execute(&mut *guard)
        .await
        .unwrap();
    let mut failures = Vec::new();
    // `pg_` starts the names PostgreSQL keeps for system schemas.
    let reserved_prefix = format!("pg_r35_{}", std::process::id());
    for word in ["order", "user", "select", "table", &reserved_prefix] {
        match Schema::new(word) {
            Err(Error::InvalidSchema(_)) => {}
            Err(e) => failures.push(format!("{word}: unexpected {e}")),
            Ok(schema) => {
                match migrate(&db.pool, &schema).await {
                    Ok(_) => {
                        let mut tx = db.pool.begin().await.unwrap();
                        if let Err(e) = Outbox::new(schema.clone())
                            .publish(&mut tx, ping("k", 1))
                            .await
                        {
                            failures.push(format!("{word}: publish: {e}"));
                        }
                        tx.rollback().await.unwrap();
                    }
                    Err(e) => failures.push(format!("{word}: accepted, then migrate: {e}")),
                }
                sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{word}\" CASCADE"))
                    .execute(&db.pool)
                    .await
                    .unwrap();
            }
        }
    }
    drop(guard);
    db.finish().await;
    assert!(failures.is_empty(), "{failures:#?}");
}

/// "`Inbox::purge_older_than` forgets old ids": only ids older than the age go (a recent
/// one is still deduplicated), only this consumer's, and a redelivery of a forgotten id
/// runs the handler again.
#[tokio::test]
async fn purging_the_inbox_forgets_only_old_ids_of_its_own_consumer() {
    let Some(db) = TestDb::new("r35purge").await else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let handler_of = |inbox: &Inbox| {
        let c = calls.clone();
        inbox.handler(move |_m: Ping, _tx, _env| {
            let c = c.clone();
            Box::pin(async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            })
        })
    };
    let mine = Inbox::new(db.pool.clone(), db.schema.clone(), "mine");
    let other = Inbox::new(db.pool.clone(), db.schema.clone(), "other");
    let (old, recent) = (
        ping("k", 1).to_envelope().unwrap(),
        ping("k", 2).to_envelope().unwrap(),
    );
    for env in [&old, &recent] {
        handler_of(&mine).oneshot(env.clone()).await.unwrap();
    }
    handler_of(&other).oneshot(old.clone()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Backdate the old id of both consumers (instead of waiting an hour).
    sqlx::query(&format!(
        "UPDATE {}.inbox SET handled_at = now() - interval '2 hours' WHERE message_id = $1",
        db.schema
    ))
    .bind(old.id.to_string())
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        mine.purge_older_than(Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    assert!(!mine.handled(old.id.clone()).await.unwrap());
    assert!(mine.handled(recent.id.clone()).await.unwrap());
    assert!(
        other.handled(old.id.clone()).await.unwrap(),
        "another consumer's id purged"
    );
    handler_of(&mine).oneshot(recent.clone()).await.unwrap();
    handler_of(&other).oneshot(old.clone()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "a remembered id ran again");
    handler_of(&mine).oneshot(old.clone()).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the forgotten id did not run again"
    );
    db.finish().await;
}

/// The relay on a small pool of its own (nothing in docs/postgres.md or the rustdoc asks for
/// a minimum size): with one connection, and with two, a spawned relay relays a committed
/// row. (Its `LISTEN` connection is taken from the pool for good, so a pool of one leaves
/// no connection for the passes.)
#[tokio::test]
#[ignore = "defect: the relay's LISTEN keeps one pool connection for good; on a pool of 1 every pass times out acquiring and nothing is ever relayed (no minimum pool size documented)"]
async fn a_spawned_relay_works_on_a_pool_of_one_or_two_connections() {
    let Some(db) = TestDb::new("r35smallpool").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let bus = Bus::new();
    let (mut rx, _sub) = recorder(&bus).await;
    let mut failures = Vec::new();
    for size in [2u32, 1] {
        let small = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&url())
            .await
            .unwrap();
        let running = Relay::new(small.clone(), db.schema.clone(), bus.clone())
            .poll_interval(Duration::from_millis(100))
            .spawn();
        let mut tx = db.pool.begin().await.unwrap();
        outbox
            .publish(&mut tx, ping("k", i64::from(size)))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        match tokio::time::timeout(T, rx.recv()).await {
            Ok(Some(got)) => assert_eq!(got, ("k".to_string(), i64::from(size))),
            _ => failures.push(format!("pool of {size}: nothing relayed in {T:?}")),
        }
        running.stop().await.unwrap();
        small.close().await;
    }
    db.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
}
