//! Review rev35: the outbox, relay, inbox and dead-letter store (docs/postgres.md and the
//! rustdoc) attacked as a user would, through the public API only, on cases review_rev3 and
//! review_rev9 left out: every envelope field and a large binary payload round-tripped
//! through PostgreSQL; savepoints and failed transactions; several relays draining at once
//! (counts add up); the bus refusing (a publish hook, a full queue) and the relay dropped
//! mid-batch; many concurrent duplicates in the inbox; delayed keyed messages against an open
//! writer of the key; a failed replay surviving a restart; missing or damaged tables.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;
#[path = "review_rev35/stores.rs"]
mod stores;

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
    Error, Handoff, Inbox, ORDERING_KEY_HEADER, Outbox, PgDeadLetterQueue, Relay, RelayConfig,
    Schema, migrate,
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
        match relay
            .drain()
            .await
            .as_ref()
            .map_err(|e| (e.relayed(), e.cause()))
        {
            // The first attempt relays 1 and 2 before the refusal; the second nothing.
            Err((Some(relayed), Error::Publish(PublishError::Refused(why)))) => {
                assert!(why.contains("message 3"), "{why}");
                assert_eq!(relayed, if attempt == 1 { 2 } else { 0 });
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
    let drained = relay.drain().await;
    match drained.as_ref().map_err(Error::cause) {
        Err(Error::Publish(PublishError::Full {
            subscriptions,
            delivered,
        })) => {
            assert_eq!(*subscriptions, vec!["slow".to_string()]);
            assert_eq!(*delivered, 0);
        }
        other => panic!("expected a full queue, got {other:?}"),
    }
    let accepted = sent_rows(&db).await;
    assert!((1..=2).contains(&accepted), "{accepted} rows marked");
    // The error says how many went out before the full queue: the rows marked.
    let relayed = drained.as_ref().err().and_then(Error::relayed);
    assert_eq!(relayed, usize::try_from(accepted).ok(), "{drained:?}");
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

/// The relay on a small pool of its own (nothing in docs/postgres.md or the rustdoc asks for
/// a minimum size): with one connection, and with two, a spawned relay relays a committed
/// row. (Its `LISTEN` connection is taken from the pool for good, so a pool of one leaves
/// no connection for the passes.)
#[tokio::test]
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

/// `RelayConfig::batch_size` ("rows claimed per transaction") set to 0 through
/// `Relay::config` (`Relay::batch_size` clamps to 1, `config` does not): `drain` must still
/// answer (relaying the row, or nothing, or an error), not loop for ever on empty "full"
/// passes.
#[tokio::test]
async fn a_batch_size_of_zero_given_through_the_config_does_not_hang_drain() {
    let Some(db) = TestDb::new("r35batch0").await else {
        return;
    };
    let outbox = Outbox::new(db.schema.clone());
    let mut tx = db.pool.begin().await.unwrap();
    outbox.publish(&mut tx, ping("k", 1)).await.unwrap();
    tx.commit().await.unwrap();
    let bus = Bus::new();
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus).config(RelayConfig {
        batch_size: 0,
        ..RelayConfig::default()
    });
    let answered = tokio::time::timeout(Duration::from_secs(5), relay.drain()).await;
    db.finish().await;
    assert!(answered.is_ok(), "drain has not returned after 5 s");
}

/// A row the bus can never take (larger than its `max_message_bytes`: `TooLarge`, the same
/// answer at every attempt) must not stall the whole outbox for ever. The relay already
/// dead-letters the rows it can never publish (undecodable rows, command rows) for exactly
/// that reason ("would block the outbox if it were retried"); a permanent refusal of the bus
/// is not handled so: every pass stops at the row, and an unrelated row behind it (other
/// key, or none) never goes out.
#[tokio::test]
async fn a_row_the_bus_can_never_take_does_not_stall_the_outbox_for_ever() {
    let Some(db) = TestDb::new("r35toolarge").await else {
        return;
    };
    let bus = Bus::builder().max_message_bytes(1024).build().unwrap();
    let (mut rx, _sub) = recorder(&bus).await;
    let outbox = Outbox::new(db.schema.clone());
    let mut tx = db.pool.begin().await.unwrap();
    outbox.publish(&mut tx, ping("small", 1)).await.unwrap();
    outbox
        .publish(&mut tx, ping(&"x".repeat(4096), 2))
        .await
        .unwrap();
    outbox
        .publish_keyed(&mut tx, "other", ping("other", 3))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    // Fixed: the row the bus refuses for good is dead-lettered (as command and undecodable
    // rows are) and the rows after it go out in the same drain.
    let first = relay.drain().await;
    assert!(matches!(first, Ok(2)), "{first:?}");
    let dlq = bus.dead_letters().expect("the default in-memory store");
    let letters = dlq.list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, DeadLetterReason::Rejected);
    assert!(
        letters[0].error.contains("refused by the bus on every try")
            && letters[0].error.contains("larger"),
        "{}",
        letters[0].error
    );
    let stored: Ping = serde_json::from_slice(&letters[0].envelope.payload).unwrap();
    assert_eq!(
        stored,
        ping(&"x".repeat(4096), 2),
        "the row's payload as stored"
    );
    let running = relay.poll_interval(Duration::from_millis(50)).spawn();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < 2 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((_, n))) => got.push(n),
            _ => break,
        }
    }
    running.stop().await.unwrap();
    let backlog = db
        .count("SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NULL")
        .await;
    db.finish().await;
    assert_eq!(
        got,
        vec![1, 3],
        "row 3 (another key) still waits behind the oversized row 2 after 5 s; {backlog} rows unsent"
    );
}
