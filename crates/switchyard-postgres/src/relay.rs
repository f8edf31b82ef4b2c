//! The relay: moves committed outbox rows to the bus.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPoolOptions, PgRow};
use sqlx::{Acquire, PgPool, Row};
use switchyard::{
    Bus, DeadLetter, DeadLetterReason, Envelope, Headers, MessageId, PublishError, Topic,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::outbox::KEY_LOCK_ID;
use crate::row::join;
use crate::{Error, Schema, names};

/// How long a key's oldest due row waits before the relay queues for the key's lock instead
/// of only trying it (see `Relay::wait_for_starving`).
const STARVE_AFTER: Duration = Duration::from_millis(500);

/// How often the relay looks for starving keys, at most.
const STARVING_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Keys the relay queues for in one pass, at most.
const STARVING_KEYS_PER_PASS: i64 = 4;

/// SQLSTATE `lock_not_available` (raised when `lock_timeout` expires).
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// What the dead letter of a command row says (after the row's seq, schema, id and topic):
/// such a row (a `Kind::Command`/`Request` envelope stored before the outbox refused them) is
/// never published, since a command goes to its one handler, which answers it.
const COMMAND_ROW: &str = "holds a command, not an event: only events are relayed (published \
     to every subscriber), and a command goes to its one handler, which answers its sender; the \
     row was not published and is not retried. Send the command with bus.send / bus.request \
     once the transaction has committed, or store an event that a handler turns into the \
     command";

/// The columns the relay reads of a row.
const ROW_COLUMNS: &str = "seq, id, topic, ordering_key, deliver_at IS NOT NULL AS delayed,
    headers::text AS headers, payload, meta::text AS meta,
    extract(epoch FROM clock_timestamp() - created_at)::float8 AS lag";

/// The topic of the dead letter of an undecodable outbox row whose stored topic is not a
/// valid topic.
pub const UNDECODABLE_TOPIC: &str = "switchyard.outbox.undecodable";

/// Header of the dead letter of an undecodable outbox row: the row's `seq`.
pub const ROW_SEQ_HEADER: &str = "switchyard-outbox-seq";

/// Header of the dead letter of an undecodable outbox row: the raw text of its `meta` column.
pub const ROW_META_HEADER: &str = "switchyard-outbox-meta";

/// Header of the dead letter of an undecodable outbox row: the raw text of its `headers`
/// column.
pub const ROW_HEADERS_HEADER: &str = "switchyard-outbox-headers";

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
    /// The longest the relay queues, per pass, for the lock of a key whose writers keep
    /// overlapping (default 200 ms); writers of that key queue behind it meanwhile. Keep it
    /// below PostgreSQL's `deadlock_timeout` (default 1 s): see docs/postgres.md, Order.
    pub key_wait: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            retention: Retention::Keep(Duration::from_secs(3600)),
            handoff: Handoff::Accepted,
            listen: true,
            key_wait: Duration::from_millis(200),
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
    /// When the last pass looked for starving keys (shared by clones, which share the work).
    starving_checked: Arc<Mutex<Option<Instant>>>,
    claim: String,
    reread: String,
    starving: String,
    lock_key: String,
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
        let lock_id = KEY_LOCK_ID.replace("{key}", "ordering_key");
        // A keyed, undelayed row is a candidate only if the relay gets its key's lock
        // exclusively (see `pass`); rows of keys it cannot lock do not take up the batch.
        let claim = schema.sql(&format!(
            "SELECT {ROW_COLUMNS}
             FROM {{schema}}.outbox
             WHERE sent_at IS NULL AND (deliver_at IS NULL OR deliver_at <= now())
               AND (ordering_key IS NULL OR deliver_at IS NOT NULL
                    OR pg_try_advisory_xact_lock({lock_id}))
             ORDER BY seq LIMIT $1"
        ));
        let reread = schema.sql(&format!(
            "SELECT {ROW_COLUMNS}
             FROM {{schema}}.outbox
             WHERE sent_at IS NULL AND deliver_at IS NULL AND ordering_key = ANY($1)
             ORDER BY seq LIMIT $2"
        ));
        let starving = schema.sql(
            "SELECT ordering_key FROM {schema}.outbox
             WHERE sent_at IS NULL AND deliver_at IS NULL AND ordering_key IS NOT NULL
               AND NOT (ordering_key = ANY($1))
             GROUP BY ordering_key
             HAVING min(created_at) < now() - make_interval(secs => $2)
             ORDER BY min(seq) LIMIT $3",
        );
        let lock_key = schema.sql(&format!(
            "SELECT pg_advisory_xact_lock({})",
            KEY_LOCK_ID.replace("{key}", "$1::text")
        ));
        Self {
            reread,
            starving,
            lock_key,
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
            // The rows the pass's claim did not see as due (due after its transaction began,
            // `now()`), reckoned from the clock at the pass's end: one that fell due during
            // a long pass is due at once (a negative time, taken as 0), not a pass later.
            next_due: schema.sql(
                "SELECT extract(epoch FROM min(deliver_at) - clock_timestamp())::float8
                 FROM {schema}.outbox WHERE sent_at IS NULL AND deliver_at > now()",
            ),
            claim,
            pool,
            schema,
            bus,
            config: RelayConfig::default(),
            starving_checked: Arc::new(Mutex::new(None)),
        }
    }

    /// Replaces the settings (a `batch_size` of 0 is taken as 1, as in
    /// [`batch_size`](Self::batch_size)).
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self.config.batch_size = self.config.batch_size.max(1);
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

    /// The longest the relay queues for a starving key's lock ([`RelayConfig::key_wait`]).
    pub fn key_wait(mut self, d: Duration) -> Self {
        self.config.key_wait = d;
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
    /// messages it relayed. For tests and for callers that drive the relay themselves.
    ///
    /// It works in transactions of up to a batch each. When one fails, the batches before it
    /// are committed and their messages are out, and so are the messages of the failing
    /// batch handed to the bus before the bus refused one (their rows are committed as sent
    /// before the error is returned). The error is then always [`Error::Relay`]: `relayed`
    /// counts all of those (0 when nothing went out), `source` is what stopped it
    /// ([`Error::cause`] reaches it). A database failure in a batch's own transaction rolls
    /// that batch back: the messages it had handed to the bus are not counted, and are
    /// relayed again (at-least-once, same ids).
    pub async fn drain(&self) -> Result<usize, Error> {
        let mut total = 0;
        loop {
            match self.pass().await {
                Ok(Pass::Relayed { count, full, .. }) => {
                    total += count;
                    if !full {
                        return Ok(total);
                    }
                }
                Ok(Pass::Busy) => return Ok(total),
                Err(Error::Relay { relayed, source }) => {
                    return Err(Error::Relay {
                        relayed: total + relayed,
                        source,
                    });
                }
                Err(e) => {
                    return Err(Error::Relay {
                        relayed: total,
                        source: Box::new(e),
                    });
                }
            }
        }
    }

    /// Claims up to `limit` due rows, in `seq` order, such that every key among them goes
    /// out in `seq` order; `full` when the candidate batch was full (more may be waiting).
    ///
    /// A keyed row (not delayed) is taken only if the relay gets its key's advisory lock
    /// EXCLUSIVE, which it tries without waiting: writers hold it SHARED from before their
    /// row's `seq` is drawn until they end, so success means no transaction that wrote the key
    /// is still open, and none can start writing it until the lock is released. The key's rows
    /// are then read again in a new statement (a new snapshot under READ COMMITTED, taken
    /// after the lock): every row of the key with a lower `seq` than a later writer's is
    /// committed and seen. Keys whose lock is taken are held back for a later pass. The locks
    /// are taken in a savepoint that is rolled back as soon as the rows are read, so no writer
    /// waits while the relay publishes (a handler that writes the same key from inside the
    /// relay's `Handoff::Handled` publish would otherwise deadlock with it).
    async fn claim(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        limit: i64,
    ) -> Result<(Vec<PgRow>, bool), Error> {
        let mut locks = tx.begin().await?;
        let candidates = sqlx::query(&self.claim)
            .bind(limit)
            .fetch_all(&mut *locks)
            .await?;
        let mut full = candidates.len() >= self.config.batch_size;
        let mut keys: Vec<String> = Vec::new();
        let mut rows: Vec<(i64, PgRow)> = Vec::with_capacity(candidates.len());
        for row in candidates {
            let key: Option<String> = row.try_get("ordering_key")?;
            let delayed: bool = row.try_get("delayed")?;
            match key {
                Some(key) if !delayed => {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                _ => rows.push((row.try_get("seq")?, row)),
            }
        }
        if !keys.is_empty() {
            // After the locks: this statement's snapshot sees every row of these keys that
            // can precede a row not yet committed.
            self.reread(&mut locks, &keys, limit, &mut rows).await?;
        }
        locks.rollback().await?;
        if !full && self.starving_due() {
            self.wait_for_starving(tx, &keys, limit, &mut rows).await?;
        }
        rows.sort_unstable_by_key(|(seq, _)| *seq);
        // A prefix of the rows in `seq` order is a prefix of each key's rows.
        full |= rows.len() > self.config.batch_size;
        rows.truncate(self.config.batch_size);
        Ok((rows.into_iter().map(|(_, row)| row).collect(), full))
    }

    /// Whether to look for starving keys in this pass: at most every [`STARVING_CHECK_EVERY`]
    /// (a key starves only after [`STARVE_AFTER`], so looking in every pass of a busy relay
    /// would only add a statement to each).
    fn starving_due(&self) -> bool {
        let mut last = self
            .starving_checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < STARVING_CHECK_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Reads the due rows of `keys` (whose locks the caller holds) into `rows`.
    async fn reread(
        &self,
        conn: &mut sqlx::PgConnection,
        keys: &[String],
        limit: i64,
        rows: &mut Vec<(i64, PgRow)>,
    ) -> Result<(), Error> {
        let keyed = sqlx::query(&self.reread)
            .bind(keys)
            .bind(limit)
            .fetch_all(conn)
            .await?;
        for row in keyed {
            rows.push((row.try_get("seq")?, row));
        }
        Ok(())
    }

    /// Writers hold a key's lock shared and never wait for each other, so a key written by a
    /// stream of overlapping transactions is never free when the relay only tries its lock.
    /// For a few keys whose oldest row has waited longer than [`STARVE_AFTER`], the relay
    /// queues for the lock (PostgreSQL then queues later writers of the key behind it) for at
    /// most [`RelayConfig::key_wait`], one key at a time and holding no other key's lock,
    /// reads the key's rows and lets go. With `key_wait` below PostgreSQL's `deadlock_timeout`
    /// (default 200 ms against 1 s), if a writer queued behind the relay is part of a wait
    /// cycle, the relay gives up before the deadlock detector could abort that writer.
    async fn wait_for_starving(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        taken: &[String],
        limit: i64,
        rows: &mut Vec<(i64, PgRow)>,
    ) -> Result<(), Error> {
        let starving: Vec<String> = sqlx::query_scalar(&self.starving)
            .bind(taken)
            .bind(STARVE_AFTER.as_secs_f64())
            .bind(STARVING_KEYS_PER_PASS)
            .fetch_all(&mut **tx)
            .await?;
        // `lock_timeout = 0` would mean no limit.
        let key_wait = format!(
            "SET LOCAL lock_timeout = '{}ms'",
            self.config.key_wait.as_millis().max(1)
        );
        for key in starving {
            let mut wait = tx.begin().await?;
            sqlx::query(&key_wait).execute(&mut *wait).await?;
            match sqlx::query(&self.lock_key)
                .bind(&key)
                .execute(&mut *wait)
                .await
            {
                Ok(_) => {
                    self.reread(&mut wait, std::slice::from_ref(&key), limit, rows)
                        .await?;
                }
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
                {
                    tracing::debug!(schema = %self.schema, key, "outbox key still written; held back");
                }
                Err(e) => return Err(e.into()),
            }
            wait.rollback().await?;
        }
        Ok(())
    }

    /// One transaction: take the schema's relay lock, claim up to a batch of due rows in
    /// order (see `claim`), hand them to the bus, mark (or delete) those handed over, commit.
    /// A failure to publish stops the batch there, so later rows (and later rows of the same
    /// key) wait; the rows handed over before it are committed, and the error is an
    /// [`Error::Relay`] counting them. Any other error is the database's, and the transaction
    /// is rolled back.
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
        let (rows, full) = self.claim(&mut tx, limit).await?;
        let label = self.schema.to_string();
        let mut done: Vec<i64> = Vec::with_capacity(rows.len());
        let mut dead = 0;
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
                    // A row no envelope can be rebuilt from would block the outbox forever:
                    // it goes to the dead-letter queue as it is stored, and is marked.
                    let why = format!("cannot be rebuilt: {e}");
                    self.dead_letter_row(&row, seq, DeadLetterReason::DecodeFailed, &why)?;
                    dead += 1;
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
                // A command row (written before the outbox refused them) is never published:
                // dead-lettered as it is stored, rather than blocking the rows behind it.
                Err(PublishError::NotAnEvent { .. } | PublishError::DelayedCommand { .. }) => {
                    self.dead_letter_row(&row, seq, DeadLetterReason::Rejected, COMMAND_ROW)?;
                    dead += 1;
                    done.push(seq);
                }
                // Refused for good by this bus as it is configured (the same answer on every
                // try): dead-lettered as it is stored rather than stopping every later row of
                // every key; it can be replayed once the bus takes it.
                Err(
                    e @ (PublishError::TooLarge(_)
                    | PublishError::InvalidTopic(_)
                    | PublishError::Encode(_)
                    | PublishError::LayerViolation(_)),
                ) => {
                    let why = format!(
                        "is refused by the bus on every try ({e}): dead-lettered, not retried; \
                         replay it once the bus takes it"
                    );
                    self.dead_letter_row(&row, seq, DeadLetterReason::Rejected, &why)?;
                    dead += 1;
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
        let relayed = done.len() - dead;
        ::metrics::counter!(names::OUTBOX_RELAYED, "schema" => label.clone())
            .increment(relayed as u64);
        if dead > 0 {
            ::metrics::counter!(names::OUTBOX_DEAD_LETTERED, "schema" => label)
                .increment(dead as u64);
        }
        if let Some(e) = failure {
            return Err(Error::Relay {
                relayed,
                source: Box::new(e.into()),
            });
        }
        Ok(Pass::Relayed {
            count: relayed,
            full,
            next_due: next_due.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// Sends a row the relay cannot publish to the bus's dead-letter sink with `reason` and
    /// `why` (after the row's seq, schema, id and topic): one no envelope can be rebuilt
    /// from (`DecodeFailed`), or a command row ([`COMMAND_ROW`], `Rejected`), as it is stored: its id and topic (a fresh id, or the topic
    /// [`UNDECODABLE_TOPIC`], when the stored one is not valid), its raw payload, its headers
    /// when they decode, and the raw text of the `meta` and `headers` columns and the row's
    /// `seq` in the [`ROW_META_HEADER`], [`ROW_HEADERS_HEADER`] and [`ROW_SEQ_HEADER`] headers.
    fn dead_letter_row(
        &self,
        row: &PgRow,
        seq: i64,
        reason: DeadLetterReason,
        why: &str,
    ) -> Result<(), Error> {
        let id: String = row.try_get("id")?;
        let topic: String = row.try_get("topic")?;
        let meta: String = row.try_get("meta")?;
        let headers: String = row.try_get("headers")?;
        let payload: Vec<u8> = row.try_get("payload")?;
        let parsed_topic = Topic::new(&topic).or_else(|_| Topic::new(UNDECODABLE_TOPIC));
        let Ok(parsed_topic) = parsed_topic else {
            // UNDECODABLE_TOPIC is a valid topic (a unit test checks it).
            return Err(Error::Task(format!("invalid topic {UNDECODABLE_TOPIC}")));
        };
        let mut env = Envelope::new(parsed_topic, payload);
        if let Ok(parsed) = id.parse::<MessageId>() {
            env.correlation_id = parsed.clone();
            env.id = parsed;
        }
        let mut kept = serde_json::from_str::<Headers>(&headers).unwrap_or_default();
        kept.insert(ROW_SEQ_HEADER, seq.to_string());
        kept.insert(ROW_META_HEADER, meta);
        kept.insert(ROW_HEADERS_HEADER, headers);
        env.set_headers(kept);
        let error = format!(
            "outbox row {seq} of schema {} (id {id}, topic {topic}) {why}",
            self.schema
        );
        tracing::error!(schema = %self.schema, seq, message_id = %id, error = %error,
            "outbox row dead-lettered");
        self.bus.dead_letter(DeadLetter::new(env, reason, error));
        Ok(())
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
        // The listener keeps its connection for as long as it listens: taken from a pool of
        // its own (the same connect options), so the relay's passes always have the caller's
        // whole pool, a pool of one connection too.
        let result = async {
            let own = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with((*self.pool.connect_options()).clone());
            let mut l = PgListener::connect_with(&own).await?;
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
    /// and retried after the poll interval, except a closed pool (`PgPool::close`), which is
    /// final: the relay logs it and returns.
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
                Err(Error::Database(sqlx::Error::PoolClosed)) => {
                    tracing::error!(schema = %self.schema, "outbox relay stopped: its PostgreSQL pool was closed");
                    return;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_undecodable_topic_is_a_valid_topic() {
        assert!(Topic::new(UNDECODABLE_TOPIC).is_ok());
    }
}
