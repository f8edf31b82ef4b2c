//! The relay: moves committed outbox rows to the bus.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use switchyard::Bus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::row::join;
use crate::{Error, Schema, names};

/// What happens to a row once the relay has handed its message to the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Deleted in the transaction that hands it over.
    Delete,
    /// Marked sent, and deleted once it has been sent for longer than this.
    Keep(Duration),
}

/// When the relay counts a message as handed over (and marks its row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// When the bus accepted it (`Bus::publish_envelope` returned `Ok`): right for a bus on a
    /// durable transport (NATS JetStream, the log), where accepted means stored.
    Accepted,
    /// When every local handler has finished with it (`Bus::publish_envelope_and_wait`): for
    /// the in-memory bus, whose queues die with the process, so a crash before a handler ran
    /// leaves the row to be sent again. Needs the in-memory bus.
    Handled,
}

/// The relay's settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows claimed per transaction (default 100).
    pub batch_size: usize,
    /// How often the relay looks for rows when no notification woke it, and how long it backs
    /// off after an error (default 1 s).
    pub poll_interval: Duration,
    /// What happens to sent rows (default: kept for 1 hour).
    pub retention: Retention,
    /// When a message counts as handed over (default [`Handoff::Accepted`]).
    pub handoff: Handoff,
    /// Wake on `LISTEN/NOTIFY` (default true); polling alone otherwise.
    pub listen: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            retention: Retention::Keep(Duration::from_secs(3600)),
            handoff: Handoff::Accepted,
            listen: true,
        }
    }
}

/// What one pass found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Another relay holds the schema's lock.
    Busy,
    /// Relayed this many rows; `full` when the batch was full (more may be waiting);
    /// `next_due` is how long until the earliest delayed row is due.
    Relayed {
        count: usize,
        full: bool,
        next_due: Option<Duration>,
    },
}

/// Moves committed outbox rows of one schema to a bus. See the crate docs.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    schema: Schema,
    bus: Bus,
    config: RelayConfig,
    claim: String,
    mark: String,
    delete: String,
    cleanup: String,
    backlog: String,
    next_due: String,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("schema", &self.schema)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay from `schema`'s outbox to `bus`, with the default [`RelayConfig`].
    pub fn new(pool: PgPool, schema: Schema, bus: Bus) -> Self {
        let claim = schema.sql(
            "SELECT seq, headers::text AS headers, payload, meta::text AS meta,
                    extract(epoch FROM clock_timestamp() - created_at)::float8 AS lag
             FROM {schema}.outbox
             WHERE sent_at IS NULL AND (deliver_at IS NULL OR deliver_at <= now())
             ORDER BY seq LIMIT $1",
        );
        Self {
            mark: schema
                .sql("UPDATE {schema}.outbox SET sent_at = clock_timestamp() WHERE seq = ANY($1)"),
            delete: schema.sql("DELETE FROM {schema}.outbox WHERE seq = ANY($1)"),
            cleanup: schema.sql(
                "DELETE FROM {schema}.outbox
                 WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)",
            ),
            backlog: schema.sql(
                "SELECT count(*) FROM {schema}.outbox
                 WHERE sent_at IS NULL AND (deliver_at IS NULL OR deliver_at <= now())",
            ),
            next_due: schema.sql(
                "SELECT extract(epoch FROM min(deliver_at) - now())::float8
                 FROM {schema}.outbox WHERE sent_at IS NULL AND deliver_at > now()",
            ),
            claim,
            pool,
            schema,
            bus,
            config: RelayConfig::default(),
        }
    }

    /// Replaces the settings.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Rows claimed per transaction.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n.max(1);
        self
    }

    /// The polling fallback's interval.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.config.poll_interval = d;
        self
    }

    /// What happens to sent rows.
    pub fn retention(mut self, r: Retention) -> Self {
        self.config.retention = r;
        self
    }

    /// When a message counts as handed over.
    pub fn handoff(mut self, h: Handoff) -> Self {
        self.config.handoff = h;
        self
    }

    /// Rows not sent yet and due, counted now (also published as the
    /// [`OUTBOX_BACKLOG`](names::OUTBOX_BACKLOG) gauge).
    pub async fn backlog(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(&self.backlog)
            .fetch_one(&self.pool)
            .await?;
        let n = u64::try_from(n).unwrap_or(0);
        ::metrics::gauge!(names::OUTBOX_BACKLOG, "schema" => self.schema.to_string()).set(n as f64);
        Ok(n)
    }

    /// Relays until no due row is left (or another relay holds the lock); returns how many
    /// rows it relayed. For tests and for callers that drive the relay themselves.
    pub async fn drain(&self) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            match self.pass().await? {
                Pass::Relayed { count, full, .. } => {
                    total += count;
                    if !full {
                        return Ok(total);
                    }
                }
                Pass::Busy => return Ok(total),
            }
        }
    }

    /// One transaction: take the schema's relay lock, claim up to a batch of due rows in
    /// order, hand them to the bus, mark (or delete) those handed over, commit. A failure
    /// to publish stops the batch there, so later rows (and later rows of the same key) wait.
    async fn pass(&self) -> Result<Pass, Error> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
            .bind(format!("switchyard-relay:{}", self.schema))
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            tx.rollback().await?;
            return Ok(Pass::Busy);
        }
        let limit = i64::try_from(self.config.batch_size).unwrap_or(i64::MAX);
        let rows = sqlx::query(&self.claim)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let full = rows.len() >= self.config.batch_size;
        let label = self.schema.to_string();
        let mut done: Vec<i64> = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in rows {
            let seq: i64 = row.try_get("seq")?;
            let lag: f64 = row.try_get("lag")?;
            let env = match join(
                row.try_get("meta")?,
                row.try_get("headers")?,
                row.try_get("payload")?,
            ) {
                Ok(env) => env,
                Err(e) => {
                    // A row no envelope can be rebuilt from would block the outbox forever.
                    tracing::error!(schema = %self.schema, seq, error = %e, "undecodable outbox row skipped");
                    done.push(seq);
                    continue;
                }
            };
            let published = match self.config.handoff {
                Handoff::Accepted => self.bus.publish_envelope(env).await,
                Handoff::Handled => self.bus.publish_envelope_and_wait(env).await.map(drop),
            };
            match published {
                Ok(()) => {
                    ::metrics::histogram!(names::OUTBOX_LAG, "schema" => label.clone()).record(lag);
                    done.push(seq);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let finish = match self.config.retention {
            Retention::Delete => &self.delete,
            Retention::Keep(_) => &self.mark,
        };
        sqlx::query(finish).bind(&done).execute(&mut *tx).await?;
        let next_due: Option<f64> = if full {
            None
        } else {
            sqlx::query_scalar(&self.next_due)
                .fetch_one(&mut *tx)
                .await?
        };
        tx.commit().await?;
        ::metrics::counter!(names::OUTBOX_RELAYED, "schema" => label).increment(done.len() as u64);
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(Pass::Relayed {
            count: done.len(),
            full,
            next_due: next_due.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    async fn cleanup(&self) -> Result<(), Error> {
        if let Retention::Keep(keep) = self.config.retention {
            sqlx::query(&self.cleanup)
                .bind(keep.as_secs_f64())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn listener(&self) -> Option<PgListener> {
        if !self.config.listen {
            return None;
        }
        let result = async {
            let mut l = PgListener::connect_with(&self.pool).await?;
            l.listen(&self.schema.channel()).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        match result {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(schema = %self.schema, error = %e, "LISTEN failed; the relay polls");
                None
            }
        }
    }

    /// Runs until `stop` turns true or its sender is dropped. Errors are logged, counted
    /// and retried after the poll interval; the relay never gives up on its own.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut listener = self.listener().await;
        let mut last_housekeeping: Option<Instant> = None;
        while !*stop.borrow() {
            // `None`: a full batch, go again at once.
            let wait = match self.pass().await {
                Ok(Pass::Relayed { full: true, .. }) => None,
                Ok(Pass::Relayed { next_due, .. }) => {
                    Some(next_due.map_or(self.config.poll_interval, |d| {
                        d.min(self.config.poll_interval)
                    }))
                }
                Ok(Pass::Busy) => Some(self.config.poll_interval),
                Err(e) => {
                    tracing::warn!(schema = %self.schema, error = %e, "outbox relay pass failed");
                    ::metrics::counter!(names::OUTBOX_RELAY_ERRORS, "schema" => self.schema.to_string())
                        .increment(1);
                    Some(self.config.poll_interval)
                }
            };
            if last_housekeeping.is_none_or(|t| t.elapsed() >= self.config.poll_interval) {
                last_housekeeping = Some(Instant::now());
                if let Err(e) = self.backlog().await {
                    tracing::debug!(error = %e, "outbox backlog query failed");
                }
                if let Err(e) = self.cleanup().await {
                    tracing::debug!(error = %e, "outbox cleanup failed");
                }
            }
            let Some(wait) = wait else { continue };
            let notified = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                r = notified => {
                    if let Err(e) = r {
                        tracing::warn!(schema = %self.schema, error = %e, "LISTEN connection lost; reconnecting");
                        listener = self.listener().await;
                    }
                }
            }
        }
    }

    /// Spawns [`run`](Self::run) on the current tokio runtime.
    pub fn spawn(self) -> RelayHandle {
        let (tx, rx) = watch::channel(false);
        RelayHandle {
            stop: tx,
            task: tokio::spawn(self.run(rx)),
        }
    }
}

/// A running relay; [`stop`](Self::stop) it to end it after its current pass. Dropping the
/// handle stops it too (after its current pass, without waiting).
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops the relay after its current pass (a pass's rows are committed or rolled back
    /// whole) and waits for it.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| Error::Task(e.to_string()))
    }
}
