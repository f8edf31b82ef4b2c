//! Small defects found by reviews, through the public API: a `drain` that fails part-way
//! says how many messages it relayed before the failure; an outbox write made inside an
//! inbox handler continues the incoming message's trace (its correlation id, and the
//! incoming message as its cause), as a publish on the bus from a handler does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::{Ping, TestDb};
use serde::{Deserialize, Serialize};
use switchyard::{BoxHandler, Bus, Envelope, Message, MessageId, Outcome, PublishError};
use switchyard_postgres::{Inbox, Outbox, Relay};
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const T: Duration = Duration::from_secs(15);

/// What the inbox handler below writes to the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pong {
    n: i64,
}

impl Message for Pong {
    const TOPIC: &'static str = "test.pong";
}

/// A subscriber to `topic` on `bus` that forwards every envelope it handles, as received.
async fn raw_recorder(
    bus: &Bus,
    name: &str,
    topic: &str,
) -> (mpsc::UnboundedReceiver<Envelope>, switchyard::Subscription) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = BoxHandler::new(tower::service_fn(move |env: Envelope| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(env);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let sub = bus.subscribe(name, topic, handler).start().await.unwrap();
    (rx, sub)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Envelope>, what: &str) -> Envelope {
    tokio::time::timeout(T, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {T:?}"))
        .unwrap_or_else(|| panic!("{what}: channel closed"))
}

async fn sent_rows(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM {schema}.outbox WHERE sent_at IS NOT NULL")
        .await
}

/// Batches of 2, six rows, the bus refusing message 4 for a passing reason (a publish hook:
/// `Refused` is retried by the relay): the first batch (1, 2) is committed, the second
/// publishes 3 and stops at 4, committing 3. The error says 3 were relayed before it, which
/// is exactly what the subscriber got and the rows marked sent.
#[tokio::test]
async fn a_drain_that_fails_part_way_says_how_many_it_relayed_first() {
    let Some(db) = TestDb::new("mends_drain").await else {
        return;
    };
    let refuse = Arc::new(AtomicI64::new(4));
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
    let (mut rx, _sub) = raw_recorder(&bus, "rec", Ping::TOPIC).await;
    let outbox = Outbox::new(db.schema.clone());
    let mut tx = db.pool.begin().await.unwrap();
    for n in 1..=6 {
        let ping = Ping { key: "k".into(), n };
        outbox.publish(&mut tx, ping).await.unwrap();
    }
    tx.commit().await.unwrap();

    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone()).batch_size(2);
    let err = match relay.drain().await {
        Ok(n) => panic!("expected the hook's refusal, drained {n}"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.contains("3 message(s) relayed") && text.contains("message 4 refused"),
        "the error does not say how many went out before it: {text:?} ({err:?})"
    );
    assert_eq!(err.relayed(), Some(3), "{err:?}");
    match &err {
        switchyard_postgres::Error::Relay { relayed, source } => {
            assert_eq!(*relayed, 3);
            assert!(
                matches!(
                    **source,
                    switchyard_postgres::Error::Publish(PublishError::Refused(_))
                ),
                "{source:?}"
            );
        }
        other => panic!("expected Error::Relay, got {other:?}"),
    }
    assert_eq!(sent_rows(&db).await, 3);
    bus.run_until_idle().await;
    for n in 1..=3 {
        let env = next(&mut rx, "relayed before the failure").await;
        assert_eq!(Ping::from_envelope(&env).unwrap().n, n);
    }
    assert!(rx.try_recv().is_err(), "more went out than the error says");

    // Nothing relayed before a failure is still a count: 0.
    let err = relay.drain().await.unwrap_err();
    assert_eq!(err.relayed(), Some(0), "{err:?}");

    refuse.store(-1, Ordering::SeqCst);
    assert_eq!(relay.drain().await.unwrap(), 3);
    db.finish().await;
}

/// An inbox handler that writes an event to the outbox in its transaction, passing no ids:
/// the relayed event has the incoming message's correlation id and the incoming message's id
/// as its causation id, as a handler's publish on the bus would. An envelope that names its
/// own correlation id or cause keeps them.
#[tokio::test]
async fn an_inbox_handlers_outbox_write_continues_the_incoming_trace() {
    let Some(db) = TestDb::new("mends_trace").await else {
        return;
    };
    let bus = Bus::new();
    let (mut pongs, _rec) = raw_recorder(&bus, "pongs", Pong::TOPIC).await;
    let outbox = Outbox::new(db.schema.clone());
    let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "ponger");
    let own_correlation = MessageId::new();
    let own = own_correlation.clone();
    let typed = inbox.handler(move |p: Ping, tx, _env| {
        let outbox = outbox.clone();
        let own = own.clone();
        Box::pin(async move {
            if p.n == 2 {
                // Names its own flow: kept, and still caused by the incoming message.
                let env = Pong { n: p.n }.to_envelope()?.with_correlation_id(own);
                outbox.publish_envelope(tx, env).await?;
            } else {
                outbox.publish(tx, Pong { n: p.n }).await?;
            }
            Ok::<_, BoxError>(())
        })
    });
    let _sub = bus
        .subscribe("ponger", Ping::TOPIC, typed)
        .start()
        .await
        .unwrap();

    let correlation = MessageId::new();
    let mut incoming = Vec::new();
    for n in 1..=2 {
        let ping = Ping { key: "k".into(), n };
        let env = ping
            .to_envelope()
            .unwrap()
            .with_correlation_id(correlation.clone());
        incoming.push(env.id.clone());
        bus.publish_envelope(env).await.unwrap();
    }
    bus.run_until_idle().await;
    let relay = Relay::new(db.pool.clone(), db.schema.clone(), bus.clone());
    assert_eq!(relay.drain().await.unwrap(), 2);
    bus.run_until_idle().await;
    for (n, cause) in (1..=2).zip(&incoming) {
        let pong = next(&mut pongs, "the inbox handler's outbox write").await;
        assert_eq!(Pong::from_envelope(&pong).unwrap().n, n);
        let want = if n == 2 {
            &own_correlation
        } else {
            &correlation
        };
        assert_eq!(
            &pong.correlation_id, want,
            "pong {n}: the outbox write did not inherit the incoming correlation id"
        );
        assert_eq!(
            pong.causation_id(),
            Some(cause),
            "pong {n}: the outbox write is not caused by the incoming message"
        );
    }
    db.finish().await;
}
