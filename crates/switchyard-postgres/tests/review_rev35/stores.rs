//! Review rev35, the inbox, the dead-letter store and the schema: many simultaneous
//! duplicates, inbox purge, a commit that fails, a failed replay across a restart, missing or
//! damaged tables, schema names PostgreSQL cannot use.

use super::*;

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
    // (A drain's error is `Error::Relay`, relayed 0 here, around the database's.)
    let names = |e: &Error, table: &str| {
        assert!(matches!(e.cause(), Error::Database(_)), "{e:?}");
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
        matches!(e.cause(), Error::Database(_)) && e.to_string().contains("meta"),
        "{e:?}"
    );

    sqlx::raw_sql(&format!("DROP SCHEMA {absent} CASCADE"))
        .execute(&db.pool)
        .await
        .unwrap();
    db.finish().await;
}

/// `Schema` promises a name "validated ... so it can be spliced into SQL without quoting",
/// yet it accepts SQL reserved words (`order`, `user`, `select`, ...) and names starting
/// with `pg_` (kept for system schemas). Such a schema must be refused with
/// `Error::InvalidSchema` or work; it does neither: `migrate` fails with a syntax error, or
/// "unacceptable schema name". (The test holds a session advisory lock so copies running in parallel do
/// not share the fixed name.)
#[tokio::test]
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

/// An inbox handler whose writes fail only at commit (a deferred unique constraint): the
/// delivery is an error, not an acknowledgement, and neither the write nor the inbox mark is
/// kept, so the message is not taken as handled ("an error ... rolls both back").
#[tokio::test]
async fn a_commit_that_fails_is_an_error_and_leaves_no_inbox_mark() {
    let Some(db) = TestDb::new("r35commitfail").await else {
        return;
    };
    db.exec(
        "CREATE TABLE {schema}.effects (n BIGINT,
         CONSTRAINT one_n UNIQUE (n) DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO {schema}.effects (n) VALUES (5)",
    )
    .await;
    let inbox = Inbox::new(db.pool.clone(), db.schema.clone(), "c");
    let insert = format!("INSERT INTO {}.effects (n) VALUES ($1)", db.schema);
    let h = inbox.handler(move |m: Ping, tx, _env| {
        let insert = insert.clone();
        Box::pin(async move {
            // Accepted now; the constraint is checked at commit.
            sqlx::query(&insert).bind(m.n).execute(&mut *tx).await?;
            Ok::<_, BoxError>(())
        })
    });
    let env = ping("k", 5).to_envelope().unwrap();
    let result = h.clone().oneshot(env.clone()).await;
    let err = result.expect_err("acknowledged although the commit failed");
    assert!(err.to_string().contains("one_n"), "{err}");
    assert!(
        !inbox.handled(env.id.clone()).await.unwrap(),
        "inbox mark kept"
    );
    assert_eq!(db.count("SELECT count(*) FROM {schema}.effects").await, 1);
    // Once the conflict is gone, the redelivery runs the handler and commits.
    db.exec("DELETE FROM {schema}.effects").await;
    assert!(matches!(
        h.oneshot(env.clone()).await.unwrap(),
        Outcome::Ack
    ));
    assert!(inbox.handled(env.id.clone()).await.unwrap());
    assert_eq!(db.count("SELECT count(*) FROM {schema}.effects").await, 1);
    db.finish().await;
}
