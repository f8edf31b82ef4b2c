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
#[tokio::test]
#[ignore = "defect: the relay publishes committed rows past an uncommitted lower seq of the same key, so one key goes out of seq order"]
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
