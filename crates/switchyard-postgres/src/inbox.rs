//! The inbox: an idempotent consumer whose "handled" mark commits with the handler's writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use smol_str::SmolStr;
use sqlx::{PgConnection, PgPool};
use switchyard::{BoxError, BoxHandler, Envelope, IntoOutcome, Message, MessageId, Outcome};
use tower::service_fn;

use crate::{Error, Schema, names};

/// The future an inbox handler returns: it borrows the transaction for `'t`.
pub type InboxFuture<'t, O, E> = Pin<Box<dyn Future<Output = Result<O, E>> + Send + 't>>;

/// Records, per consumer, the ids of the messages it has handled, in `<schema>.inbox`.
///
/// [`handler`](Self::handler) wraps a handler that gets the message and `&mut` the open
/// transaction. For each delivery the wrapper begins a transaction, inserts
/// `(consumer, message id)`, and
/// - if that id was already there (a redelivery: the relay or the transport sent it again),
///   rolls back and acknowledges without running the handler (counted in
///   [`INBOX_DUPLICATES`](names::INBOX_DUPLICATES));
/// - otherwise runs the handler and commits its writes together with the id when it returns
///   `Ok` with an ack (or a reply); an error, a retry or a reject rolls everything back, so
///   a later delivery runs the handler again.
///
/// Two deliveries of one id at the same time serialize on the inbox row: the second waits for
/// the first's commit and is then a duplicate.
///
/// What the handler writes to an [`Outbox`](crate::Outbox) in the transaction continues the
/// incoming message's trace without passing any id: the written message's correlation id is
/// the incoming message's (unless the envelope names its own) and its causation id is the
/// incoming message's id, as for a publish on the bus from a handler.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Serialize, Deserialize)] struct OrderPlaced { id: i64 }
/// # impl switchyard::Message for OrderPlaced { const TOPIC: &'static str = "orders.placed"; }
/// # async fn demo(pool: sqlx::PgPool, bus: switchyard::Bus) -> Result<(), Box<dyn std::error::Error>> {
/// use switchyard_postgres::{Inbox, Schema};
/// let inbox = Inbox::new(pool, Schema::new("shop")?, "billing");
/// let handler = inbox.handler(|ev: OrderPlaced, tx, _env| Box::pin(async move {
///     sqlx::query("INSERT INTO shop.invoices (order_id) VALUES ($1)").bind(ev.id).execute(tx).await?;
///     Ok::<_, sqlx::Error>(())
/// }));
/// let _sub = bus.subscribe("billing", "orders.placed", handler).start().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Inbox {
    pool: PgPool,
    consumer: SmolStr,
    insert: Arc<str>,
    seen: Arc<str>,
    purge: Arc<str>,
}

impl Inbox {
    /// The inbox of `consumer` (a stable name: the ids are recorded under it) in `schema`.
    pub fn new(pool: PgPool, schema: Schema, consumer: &str) -> Self {
        Self {
            pool,
            consumer: consumer.into(),
            insert: schema
                .sql(
                    "INSERT INTO {schema}.inbox (consumer, message_id) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                )
                .into(),
            seen: schema
                .sql("SELECT EXISTS (SELECT 1 FROM {schema}.inbox WHERE consumer = $1 AND message_id = $2)")
                .into(),
            purge: schema
                .sql(
                    "DELETE FROM {schema}.inbox
                     WHERE consumer = $1 AND handled_at < now() - make_interval(secs => $2)",
                )
                .into(),
        }
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Whether the message `id` has been handled (committed) by this consumer.
    pub async fn handled(&self, id: MessageId) -> Result<bool, Error> {
        Ok(sqlx::query_scalar(&self.seen)
            .bind(self.consumer.as_str())
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?)
    }

    /// Forgets ids handled longer ago than `age` (redeliveries older than that would run the
    /// handler again); returns how many.
    pub async fn purge_older_than(&self, age: Duration) -> Result<u64, Error> {
        Ok(sqlx::query(&self.purge)
            .bind(self.consumer.as_str())
            .bind(age.as_secs_f64())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Wraps a typed handler: it gets the decoded message, the open transaction and the
    /// envelope. A payload that does not decode as `M` is an error (the bus dead-letters it),
    /// before any transaction. Subscribe the result with `Bus::subscribe(name, M::TOPIC, h)`.
    pub fn handler<M, F, O, E>(&self, f: F) -> BoxHandler
    where
        M: Message,
        F: for<'t> Fn(M, &'t mut PgConnection, &'t Envelope) -> InboxFuture<'t, O, E>
            + Clone
            + Send
            + Sync
            + 'static,
        O: IntoOutcome + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        self.envelope_handler(move |env: &Envelope, tx: &mut PgConnection| {
            let f = f.clone();
            Box::pin(async move {
                let msg = M::from_envelope(env)?;
                f(msg, tx, env).await.map_err(Into::into)
            })
        })
    }

    /// Wraps a handler of raw envelopes; see [`handler`](Self::handler).
    pub fn envelope_handler<F, O, E>(&self, f: F) -> BoxHandler
    where
        F: for<'t> Fn(&'t Envelope, &'t mut PgConnection) -> InboxFuture<'t, O, E>
            + Clone
            + Send
            + Sync
            + 'static,
        O: IntoOutcome + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inbox = self.clone();
        BoxHandler::new(service_fn(move |env: Envelope| {
            let f = f.clone();
            let inbox = inbox.clone();
            async move {
                let mut tx = inbox.pool.begin().await?;
                let inserted = sqlx::query(&inbox.insert)
                    .bind(inbox.consumer.as_str())
                    .bind(env.id.to_string())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    tx.rollback().await?;
                    ::metrics::counter!(names::INBOX_DUPLICATES, "consumer" => inbox.consumer.to_string())
                        .increment(1);
                    tracing::debug!(consumer = %inbox.consumer, message_id = %env.id, "duplicate acknowledged");
                    return Ok::<_, BoxError>(Outcome::Ack);
                }
                // The handler's outbox writes follow the message (`Outbox` reads it): the bus
                // already runs a handler with it as the delivered message; a call from
                // anywhere else (another executor, a test calling the handler) gets it here.
                let handled = f(&env, &mut tx);
                let delivered = switchyard::delivered::with(|d| d.id == env.id);
                let result = if delivered == Some(true) {
                    handled.await
                } else {
                    switchyard::delivered::scope(Arc::new(env.clone()), handled).await
                };
                // An error drops `tx`, which rolls it back.
                let outcome = result.map_err(Into::into)?.into_outcome();
                match outcome {
                    Outcome::Ack | Outcome::Reply(_) => tx.commit().await?,
                    _ => tx.rollback().await?,
                }
                Ok(outcome)
            }
        }))
    }
}
