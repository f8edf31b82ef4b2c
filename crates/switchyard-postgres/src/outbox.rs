//! Writing messages into the outbox, inside the caller's transaction.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{PgConnection, PgPool};
use switchyard::{Envelope, Message, MessageId, PublishError};

use crate::row::split;
use crate::{Error, Schema};

/// The header holding a message's ordering key (the conformance suite's and
/// `SubscriptionBuilder::ordering_header`'s convention): the relay publishes messages with the
/// same key in the order they were written, and a consumer subscribed with
/// `.ordering_header(ORDERING_KEY_HEADER)` handles them in that order.
pub const ORDERING_KEY_HEADER: &str = "ordering-key";

/// Writes envelopes into `<schema>.outbox` on the caller's connection, normally inside the
/// transaction that holds the business write:
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Serialize, Deserialize)] struct OrderPlaced { id: i64 }
/// # impl switchyard::Message for OrderPlaced { const TOPIC: &'static str = "orders.placed"; }
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), switchyard_postgres::Error> {
/// use switchyard_postgres::{Outbox, Schema};
/// let outbox = Outbox::new(Schema::new("shop")?);
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO shop.orders (id) VALUES ($1)").bind(42_i64).execute(&mut *tx).await?;
/// outbox.publish(&mut tx, OrderPlaced { id: 42 }).await?;
/// tx.commit().await?; // both or neither
/// # Ok(()) }
/// ```
///
/// Each insert also signals `NOTIFY <schema>_outbox`, which PostgreSQL delivers on commit, so
/// a listening [`Relay`](crate::Relay) wakes at once.
///
/// A write made while a handler handles a message (an [`Inbox`](crate::Inbox) handler
/// writing in its transaction, or any bus handler) continues that message's trace, as the
/// bus's own publishes from a handler do: the written message's causation id is the handled
/// message's id, and its correlation id the handled message's, unless the envelope names
/// its own (a correlation id other than its id; a causation id already set keeps both).
#[derive(Clone, Debug)]
pub struct Outbox {
    schema: Schema,
    channel: Arc<str>,
    insert: Arc<str>,
    notify: bool,
}

/// The insert, and the notification PostgreSQL delivers on commit.
const INSERT_NOTIFY: &str = "WITH ins AS (
        INSERT INTO {schema}.outbox (id, topic, ordering_key, headers, payload, meta, deliver_at)
        SELECT $1, $2, $3, $4::jsonb, $5, $6::jsonb,
               CASE WHEN $7::float8 IS NULL THEN NULL ELSE to_timestamp($7::float8) END
        FROM ({key_lock}) AS key_lock
        RETURNING 1)
     SELECT pg_notify($8, '') FROM ins";

/// The insert alone (`$8` unused but bound, so both statements take the same arguments).
const INSERT_QUIET: &str = "INSERT INTO {schema}.outbox
        (id, topic, ordering_key, headers, payload, meta, deliver_at)
     SELECT $1, $2, $3, $4::jsonb, $5, $6::jsonb,
            CASE WHEN $7::float8 IS NULL THEN NULL ELSE to_timestamp($7::float8) END
     FROM ({key_lock}) AS key_lock
     WHERE $8::text IS NOT NULL";

/// Spliced into both inserts as `FROM ({key_lock})`: a keyed, undelayed row first takes its key's
/// advisory lock SHARED for the rest of the transaction, so the relay (which tries the same
/// lock EXCLUSIVE, never waiting) can tell that no transaction that wrote the key is still open
/// (see [`Relay`](crate::Relay) and docs/postgres.md, Outbox, Order). Shared: writers never
/// block each other, so writers of several keys cannot deadlock on these locks. The lock is
/// evaluated in a subquery, before the row's `seq` is drawn (`EXPLAIN VERBOSE`: the lock in
/// the inner `Result`, `nextval` in the `Subquery Scan` above it), so a writer holds the lock
/// before its row has a sequence number.
const KEY_LOCK: &str = "SELECT CASE WHEN $3::text IS NOT NULL AND $7::float8 IS NULL
        THEN pg_advisory_xact_lock_shared({lock_id}) END";

/// The advisory lock id of an ordering key in a schema (SQL; `{key}` is a text expression).
/// Shared by the writers and the relay, which must agree on it exactly.
pub(crate) const KEY_LOCK_ID: &str = "hashtextextended('switchyard-outbox:{schema}:' || {key}, 0)";

/// Makes `env` a consequence of the message the bus is delivering to the handler this write
/// runs in (an [`Inbox`](crate::Inbox) handler, or any handler), as the bus does for a
/// handler's publishes: its causation id becomes that message's id and, unless `env` names a
/// correlation id of its own (one other than its own id), it joins that message's flow (its
/// correlation id). An envelope that already names its cause is written as it is, and so is
/// every envelope written outside a handler.
fn follow_delivered(env: &mut Envelope) {
    if env.causation_id().is_some() {
        return;
    }
    let _ = switchyard::delivered::with(|parent| {
        env.set_causation_id(Some(parent.id.clone()));
        if env.correlation_id == env.id {
            env.correlation_id = parent.correlation_id.clone();
        }
    });
}

/// `sql` with the key lock spliced in.
fn with_key_lock(sql: &str) -> String {
    let lock = KEY_LOCK.replace("{lock_id}", &KEY_LOCK_ID.replace("{key}", "$3::text"));
    sql.replace("{key_lock}", &lock)
}

impl Outbox {
    /// An outbox in `schema` (created by [`migrate`](crate::migrate)).
    pub fn new(schema: Schema) -> Self {
        let insert = schema.sql(&with_key_lock(INSERT_NOTIFY));
        Self {
            channel: schema.channel().into(),
            schema,
            insert: insert.into(),
            notify: true,
        }
    }

    /// Whether each insert signals `NOTIFY` (default true). PostgreSQL serializes the commits
    /// of transactions that sent a notification (a global lock on the notification queue),
    /// which caps throughput with many concurrent writers; without it, run the relay with a
    /// short poll interval instead. See docs/postgres.md for measured figures.
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self.insert = self
            .schema
            .sql(&with_key_lock(if on {
                INSERT_NOTIFY
            } else {
                INSERT_QUIET
            }))
            .into();
        self
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Writes a typed message (on `M::TOPIC`). Returns its id, which the relay keeps.
    pub async fn publish<M: Message>(
        &self,
        conn: &mut PgConnection,
        msg: M,
    ) -> Result<MessageId, Error> {
        self.publish_envelope(conn, msg.to_envelope()?).await
    }

    /// Writes a typed message with an ordering key: messages with the same key are relayed in
    /// the order they were written (the key travels in the [`ORDERING_KEY_HEADER`] header).
    pub async fn publish_keyed<M: Message>(
        &self,
        conn: &mut PgConnection,
        key: &str,
        msg: M,
    ) -> Result<MessageId, Error> {
        let env = msg.to_envelope()?.with_header(ORDERING_KEY_HEADER, key);
        self.publish_envelope(conn, env).await
    }

    /// Writes an envelope as it is (its [`ORDERING_KEY_HEADER`] header, if any, is its
    /// ordering key). Only events: a command or request envelope is refused
    /// (`Error::Publish(PublishError::NotAnEvent)`; `DelayedCommand` from
    /// [`publish_at`](Self::publish_at)), as `Bus::publish_envelope` refuses it.
    pub async fn publish_envelope(
        &self,
        conn: &mut PgConnection,
        env: Envelope,
    ) -> Result<MessageId, Error> {
        self.insert(conn, env, None).await
    }

    /// Writes an envelope that the relay publishes once `at` has passed (delayed delivery
    /// kept in PostgreSQL, so it survives restarts). A delayed message is not held back by,
    /// and does not hold back, messages with the same ordering key.
    pub async fn publish_at(
        &self,
        conn: &mut PgConnection,
        at: SystemTime,
        env: Envelope,
    ) -> Result<MessageId, Error> {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.insert(conn, env, Some(secs)).await
    }

    /// [`publish_at`](Self::publish_at) in a transaction of its own: the durable delayed
    /// store for a service with no business write to join.
    pub async fn schedule(
        &self,
        pool: &PgPool,
        at: SystemTime,
        env: Envelope,
    ) -> Result<MessageId, Error> {
        let mut conn = pool.acquire().await?;
        self.publish_at(&mut conn, at, env).await
    }

    async fn insert(
        &self,
        conn: &mut PgConnection,
        env: Envelope,
        deliver_at: Option<f64>,
    ) -> Result<MessageId, Error> {
        // Only events go through the outbox (the relay publishes them): a command would be
        // refused by the bus at every relay pass.
        if env.kind.is_command() {
            return Err(Error::Publish(PublishError::refused_command(
                env.kind,
                deliver_at.is_some(),
            )));
        }
        let mut env = env;
        follow_delivered(&mut env);
        let cols = split(&env)?;
        sqlx::query(&self.insert)
            .bind(env.id.to_string())
            .bind(env.topic.as_str())
            .bind(env.header(ORDERING_KEY_HEADER))
            .bind(cols.headers)
            .bind(env.payload.as_ref())
            .bind(cols.meta)
            .bind(deliver_at)
            .bind(&*self.channel)
            .execute(conn)
            .await?;
        Ok(env.id)
    }
}
