//! The dead-letter queue kept in PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{PgPool, Row};
use switchyard::{DeadLetter, DeadLetterSink, MessageId};
use switchyard_middleware::dlq::{
    DeadLetterFilter, DeadLetterKey, DeadLetterQueue, DlqWriteError, InMemoryDeadLetters,
};
use tokio::sync::oneshot;

use crate::{Error, Schema, names};

mod pending;

use pending::{Op, Pending};

/// The one key of the JSON object a dead letter is stored as when its own JSON cannot be
/// (see [`stored_json`]).
const ESCAPED_KEY: &str = "switchyard_escaped_letter";

/// The JSON stored in the `letter` column for `letter`. JSONB refuses the `\u0000` escape (a
/// NUL character in any string: a handler's error text, a header value), so a letter whose
/// JSON holds one is stored as `{"switchyard_escaped_letter": "<its JSON text>"}` instead:
/// inside that string the escape is plain text (a backslash and `u0000`), which JSONB keeps,
/// and [`decode_stored`] gives the letter back exactly. Other letters are stored as they
/// are, so the table stays queryable (`letter->'envelope'->>'topic'`).
fn stored_json(letter: &DeadLetter) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(letter)?;
    if json.contains("\\u0000") {
        let mut wrapped = serde_json::Map::new();
        wrapped.insert(ESCAPED_KEY.to_owned(), serde_json::Value::String(json));
        return serde_json::to_string(&wrapped);
    }
    Ok(json)
}

/// The dead letter stored as `text` (the `letter` column, written by [`stored_json`]).
fn decode_stored(text: &str) -> Result<DeadLetter, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    if let serde_json::Value::Object(map) = &value
        && map.len() == 1
        && let Some(serde_json::Value::String(inner)) = map.get(ESCAPED_KEY)
    {
        return serde_json::from_str(inner);
    }
    serde_json::from_value(value)
}

/// Whether retrying `e` cannot help: the database refused the data itself (SQLSTATE class
/// 22 data exception, 23 integrity constraint violation, 54 program limit exceeded), the
/// statement cannot run against the schema as it is (class 42 syntax error or access rule
/// violation: the table or a column is gone, the schema was dropped, a privilege is missing),
/// or the letter could not be encoded. Anything else (a lost connection, a pool timeout, a
/// server shutting down) is retried. A closed pool is final too, for every later write as
/// well: see [`is_pool_closed`].
fn is_permanent(e: &Error) -> bool {
    match e {
        Error::Json(_) | Error::Database(sqlx::Error::Encode(_)) => true,
        Error::Database(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| matches!(code.get(..2), Some("22" | "23" | "42" | "54"))),
        _ => false,
    }
}

/// Whether `e` says the pool was closed (`PgPool::close`): no write can be made any more.
fn is_pool_closed(e: &Error) -> bool {
    matches!(e, Error::Database(sqlx::Error::PoolClosed))
}

/// Counts one write given up for good (the [`PgDeadLetterQueue::unstored`] count and the
/// [`DEAD_LETTERS_UNSTORED`](names::DEAD_LETTERS_UNSTORED) metric).
fn count_unstored(unstored: &AtomicU64, schema: &Schema) {
    unstored.fetch_add(1, Ordering::Relaxed);
    ::metrics::counter!(names::DEAD_LETTERS_UNSTORED, "schema" => schema.to_string()).increment(1);
}

/// A [`DeadLetterQueue`] kept in `<schema>.dead_letters`, so dead letters survive restarts.
///
/// The trait is synchronous (the bus calls `put` from its workers, which must not wait on a
/// database), so reads are served from an in-memory copy loaded at [`open`](Self::open), and
/// writes update the copy at once and go to PostgreSQL in order through a background task
/// (a write that fails for a passing reason, such as a lost connection, is retried until it
/// succeeds while the process lives; one the database refuses for its data is given up at
/// once, the entry kept in memory only, logged and counted in [`unstored`](Self::unstored),
/// so it never holds back the writes after it; so is one whose table is gone, SQLSTATE
/// class 42). A closed pool (`PgPool::close`) is final: the writes waiting and every later
/// put are given up the same way, and [`flush`](Self::flush) answers
/// `Error::Database(sqlx::Error::PoolClosed)`. [`flush`](Self::flush) waits until every
/// earlier write is in the database or given up. In memory it holds, like the other queues, one
/// entry per message and handler; the table holds one row per message id (the newest put),
/// deleted only when no entry of the message is left. Past `capacity` it evicts the oldest.
///
/// While PostgreSQL is slow or down, puts wait in a bounded write queue: at most `capacity`
/// of them by default ([`with_write_queue`](Self::with_write_queue) changes it). Past it the
/// oldest waiting put is dropped from the queue (the table would trim the oldest rows first
/// anyway): its entry stays in memory, listed and replayable, but is not written, so it is
/// lost at a restart. Drops are counted in [`write_dropped`](Self::write_dropped) and the
/// [`DEAD_LETTERS_WRITE_DROPPED`](names::DEAD_LETTERS_WRITE_DROPPED) metric, and logged (a
/// warning when the queue overflows, an info line when it has caught up).
#[derive(Clone)]
pub struct PgDeadLetterQueue {
    memory: Arc<InMemoryDeadLetters>,
    pending: Arc<Pending>,
    /// Closes the write queue when the last handle is dropped.
    _closer: Arc<Closer>,
    unstored: Arc<AtomicU64>,
    schema: Schema,
}

/// Held by every handle; the last one dropped lets the writer end once the queue is empty.
struct Closer(Arc<Pending>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Marks the writer ended however its task ends (a panic included), so flushes do not wait
/// forever and later writes report it.
struct WriterGuard(Arc<Pending>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.0.writer_ended();
    }
}

impl std::fmt::Debug for PgDeadLetterQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDeadLetterQueue")
            .field("len", &self.memory.len())
            .finish_non_exhaustive()
    }
}

struct Writer {
    pool: PgPool,
    upsert: String,
    remove: String,
    trim: String,
    capacity: i64,
    schema: Schema,
    unstored: Arc<AtomicU64>,
}

impl Writer {
    async fn apply(&self, op: &Op) -> Result<(), Error> {
        match op {
            Op::Put(letter) => {
                let json = stored_json(letter)?;
                let mut tx = self.pool.begin().await?;
                sqlx::query(&self.upsert)
                    .bind(letter.envelope.id.to_string())
                    .bind(letter.envelope.topic.as_str())
                    .bind(serde_json::to_string(&letter.reason)?)
                    .bind(json)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&self.trim)
                    .bind(self.capacity)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Op::Remove(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                sqlx::query(&self.remove)
                    .bind(&ids)
                    .execute(&self.pool)
                    .await?;
            }
            Op::Flush(_) => {}
        }
        Ok(())
    }

    async fn run(self, pending: Arc<Pending>) {
        let _guard = WriterGuard(pending.clone());
        while let Some(op) = pending.next().await {
            let mut backoff = std::time::Duration::from_millis(50);
            while let Err(e) = self.apply(&op).await {
                if is_pool_closed(&e) {
                    self.give_up(&op, &e);
                    for waiting in pending.pool_was_closed() {
                        self.give_up(&waiting, &e);
                    }
                    // `op` (a flush among them) is dropped unanswered: its waiter reads
                    // `pool_closed` and answers the typed error.
                    return;
                }
                if is_permanent(&e) {
                    self.give_up(&op, &e);
                    break;
                }
                tracing::warn!(schema = %self.schema, error = %e, "dead-letter write to PostgreSQL failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            if let Op::Flush(done) = op {
                let _ = done.send(());
            }
        }
    }
}

impl Writer {
    /// Logs and counts a write the database refused for good; the entry stays in memory.
    fn give_up(&self, op: &Op, e: &Error) {
        let what = match op {
            Op::Put(letter) => format!("dead letter of message {}", letter.envelope.id),
            Op::Remove(ids) => format!("removal of {} dead letter(s)", ids.len()),
            Op::Flush(_) => return,
        };
        count_unstored(&self.unstored, &self.schema);
        tracing::error!(schema = %self.schema, error = %e,
            "PostgreSQL refused the {what}; kept in memory only, later writes go on");
    }
}

impl PgDeadLetterQueue {
    /// Opens the queue in `schema` (created by [`migrate`](crate::migrate)), loading the
    /// entries stored there, and starts its writer on the current tokio runtime. Holds at
    /// most `capacity` entries.
    pub async fn open(pool: PgPool, schema: &Schema, capacity: usize) -> Result<Self, Error> {
        // The table's trim keeps `capacity` rows; the in-memory copy has the same bound only.
        let memory = Arc::new(InMemoryDeadLetters::bounded(capacity, usize::MAX));
        let rows = sqlx::query(
            &schema.sql("SELECT letter::text AS letter FROM {schema}.dead_letters ORDER BY seq"),
        )
        .fetch_all(&pool)
        .await?;
        for row in rows {
            let text: String = row.try_get("letter")?;
            match decode_stored(&text) {
                Ok(letter) => memory.put(letter),
                Err(e) => {
                    tracing::error!(schema = %schema, error = %e, "undecodable dead letter skipped")
                }
            }
        }
        let writer = Writer {
            pool,
            upsert: schema.sql(
                "INSERT INTO {schema}.dead_letters (id, topic, reason, letter)
                 VALUES ($1, $2, $3, $4::jsonb)
                 ON CONFLICT (id) DO UPDATE SET topic = EXCLUDED.topic, reason = EXCLUDED.reason,
                     letter = EXCLUDED.letter, stored_at = clock_timestamp(),
                     seq = nextval(pg_get_serial_sequence('{schema}.dead_letters', 'seq'))",
            ),
            remove: schema.sql("DELETE FROM {schema}.dead_letters WHERE id = ANY($1)"),
            trim: schema.sql(
                "DELETE FROM {schema}.dead_letters WHERE seq NOT IN
                 (SELECT seq FROM {schema}.dead_letters ORDER BY seq DESC LIMIT $1)",
            ),
            capacity: i64::try_from(capacity.max(1)).unwrap_or(i64::MAX),
            schema: schema.clone(),
            unstored: Arc::new(AtomicU64::new(0)),
        };
        let unstored = writer.unstored.clone();
        let pending = Arc::new(Pending::new(schema.clone(), capacity));
        tokio::spawn(writer.run(pending.clone()));
        Ok(Self {
            memory,
            _closer: Arc::new(Closer(pending.clone())),
            pending,
            unstored,
            schema: schema.clone(),
        })
    }

    /// Sets how many puts may wait for PostgreSQL (at least 1; default: the queue's
    /// `capacity`). Past it the oldest waiting put is dropped; see the type's docs.
    pub fn with_write_queue(self, max_waiting: usize) -> Self {
        self.pending.set_max_puts(max_waiting);
        self
    }

    /// Writes waiting for PostgreSQL now (puts, removals and flushes; not counting the one
    /// being written).
    pub fn write_backlog(&self) -> usize {
        self.pending.len()
    }

    /// Puts dropped from the full write queue since [`open`](Self::open): their entries were
    /// kept in memory only (see the type's docs).
    pub fn write_dropped(&self) -> u64 {
        self.pending.dropped()
    }

    /// Writes PostgreSQL refused for their data (a constraint the table was given, a value
    /// it cannot hold) or could not run (the table is gone, the pool was closed) since
    /// [`open`](Self::open): each such entry is kept in memory only,
    /// so it is lost at a restart. Also counted in the
    /// [`DEAD_LETTERS_UNSTORED`](names::DEAD_LETTERS_UNSTORED) metric and logged as an error.
    pub fn unstored(&self) -> u64 {
        self.unstored.load(Ordering::Relaxed)
    }

    /// Waits until every write made before this call is stored in PostgreSQL (or given up,
    /// see the type's docs). Once the pool is closed it answers at once with
    /// `Error::Database(sqlx::Error::PoolClosed)`; `Error::Task` if the writer task is gone.
    pub async fn flush(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        if self.pending.push(Op::Flush(tx)).is_err() {
            return Err(self.stopped());
        }
        rx.await.map_err(|_| self.stopped())
    }

    /// Why the writer is gone: the pool was closed, or its task ended otherwise.
    fn stopped(&self) -> Error {
        if self.pending.pool_closed() {
            Error::Database(sqlx::Error::PoolClosed)
        } else {
            Error::Task("dead-letter writer stopped".into())
        }
    }

    /// Mirrors in the table the removal of `taken` from the in-memory copy. The table holds
    /// one row per message id (the newest put) and writes are applied in order, so: a
    /// message with no entry left loses its row; one that still has an entry (another
    /// handler's, or one put while a replay ran) has its newest entry written again.
    fn forget(&self, taken: &[DeadLetter]) -> Result<(), DlqWriteError> {
        let mut ids: Vec<MessageId> = taken.iter().map(|l| l.envelope.id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let (gone, kept): (Vec<MessageId>, Vec<MessageId>) = ids
            .into_iter()
            .partition(|id| self.memory.get(id).is_none());
        if !gone.is_empty() {
            self.send(Op::Remove(gone))?;
        }
        for id in kept {
            if let Some(letter) = self.memory.get(&id) {
                self.send(Op::Put(Box::new(letter)))?;
            }
        }
        Ok(())
    }

    fn send(&self, op: Op) -> Result<(), DlqWriteError> {
        self.pending
            .push(op)
            .map_err(|_| DlqWriteError::from(std::io::Error::other(self.stopped().to_string())))
    }
}

impl DeadLetterSink for PgDeadLetterQueue {
    fn put(&self, letter: DeadLetter) {
        self.memory.put(letter.clone());
        if self.pending.push(Op::Put(Box::new(letter))).is_err() {
            count_unstored(&self.unstored, &self.schema);
            tracing::error!(schema = %self.schema, error = %self.stopped(),
                "dead-letter writer stopped; entry kept in memory only");
        }
    }
}

impl DeadLetterQueue for PgDeadLetterQueue {
    fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        self.memory.select(filter)
    }

    fn entries(&self, filter: &DeadLetterFilter) -> Vec<(DeadLetterKey, DeadLetter)> {
        self.memory.select_keyed(filter)
    }

    fn get(&self, id: &MessageId) -> Option<DeadLetter> {
        self.memory.get(id)
    }

    fn entries_of(&self, id: &MessageId) -> Vec<(DeadLetterKey, DeadLetter)> {
        self.memory.entries_of(id)
    }

    fn remove(&self, id: &MessageId) -> Result<bool, DlqWriteError> {
        let removed = !self.memory.take(id).is_empty();
        if removed {
            self.send(Op::Remove(vec![id.clone()]))?;
        }
        Ok(removed)
    }

    fn remove_entries(&self, keys: &[DeadLetterKey]) -> Result<usize, DlqWriteError> {
        let taken = self.memory.take_keys(keys);
        self.forget(&taken)?;
        Ok(taken.len())
    }

    fn purge(&self, filter: &DeadLetterFilter) -> Result<usize, DlqWriteError> {
        let taken = self.memory.take_matching(filter);
        self.forget(&taken)?;
        Ok(taken.len())
    }

    fn len(&self) -> usize {
        self.memory.len()
    }

    fn evicted(&self) -> u64 {
        self.memory.evicted()
    }
}

#[cfg(test)]
mod tests {
    use switchyard::{DeadLetterReason, Envelope, Topic};

    use super::*;

    /// Whether a string anywhere in `v` holds a NUL (what JSONB refuses).
    fn holds_nul(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(holds_nul),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
            _ => false,
        }
    }

    #[test]
    fn a_letter_with_a_nul_is_stored_without_one_and_read_back_exactly()
    -> Result<(), Box<dyn std::error::Error>> {
        let env = Envelope::new(Topic::new("a.b")?, "p").with_header("h", "x\0y");
        let nul = DeadLetter::new(env, DeadLetterReason::HandlerFailed, "bad \0 byte");
        let stored = stored_json(&nul)?;
        assert!(!holds_nul(&serde_json::from_str(&stored)?), "{stored}");
        assert_eq!(decode_stored(&stored)?, nul);
        let plain = DeadLetter::new(
            Envelope::new(Topic::new("a.b")?, "p"),
            DeadLetterReason::Rejected,
            "ok",
        );
        let stored = stored_json(&plain)?;
        assert!(!stored.contains(ESCAPED_KEY), "{stored}");
        assert_eq!(decode_stored(&stored)?, plain);
        Ok(())
    }
}
