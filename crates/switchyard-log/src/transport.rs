//! [`LogTransport`]: the handle users and the bus hold; implements the core transport traits.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use fs4::fs_std::FileExt;
use switchyard_core::{
    AckHandle, BoxFuture, Capabilities, CloseError, CodecDirection, CodecError, DeadLetter,
    DeadLetterRoute, Delivery, Envelope, InMemoryDeadLetters, Pattern, PublishError, Publisher,
    SubscribeError, Subscriber, TooLarge, Topic, TransportError, TransportErrorKind,
};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::config::{LogConfig, StartPosition, valid_stream_name};
use crate::error::{OpenError, ReadError};
use crate::group::{Dispatch, GroupSettings, GroupShared};
use crate::intake::{Control, Intake, Records, Settled, Unsettled, with_scratch};
use crate::record;
use crate::stream::{StreamShared, lock};
use crate::writer::{Commit, CommitWrite, PendingCommits, Writer, WriterStats};

mod ack;
mod delete;

use ack::LogAck;

/// An embedded, durable, append-only log that carries bus messages.
///
/// Cheap to clone: clones share one log. Open it once per directory: a file lock stops a
/// second open (in this or another process) until [`close`](Publisher::close) or the last
/// clone is dropped.
///
/// Appends run on a dedicated writer thread, so `publish` works from any executor;
/// subscriptions and `close` use Tokio timers and need a Tokio runtime with time enabled.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use switchyard_core::{Envelope, Pattern, Publisher, Subscriber, Topic};
/// use switchyard_log::{LogConfig, LogTransport};
/// use futures::StreamExt;
///
/// let log = LogTransport::open(LogConfig::new("/var/lib/app/bus"))?;
/// log.publish(vec![Envelope::new(Topic::new("users.created")?, "{}")]).await?;
/// let mut sub = log.subscribe(&Pattern::new("users.#")?, Some("mailer")).await?;
/// if let Some(delivery) = sub.next().await {
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LogTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogTransport")
            .field("dir", &self.inner.config.dir)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

struct Inner {
    config: LogConfig,
    settings: GroupSettings,
    /// Configured streams in match order, then the catch-all stream (if any).
    streams: Vec<Arc<StreamShared>>,
    /// Where publishes and requests go to the writer thread.
    intake: Arc<Intake>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Woken on every append, settle and close.
    notify: Arc<Notify>,
    closed: AtomicBool,
    /// Settles hold it shared while they check `closed` and record the settle; `close`
    /// takes it exclusively to set `closed`. So a settle that was accepted has reached the
    /// pending commits before the writer writes them for the last time, and one that comes
    /// later is refused rather than silently forgotten.
    settle_gate: RwLock<()>,
    groups: Mutex<HashMap<(usize, String), Arc<GroupShared>>>,
    commits: PendingCommits,
    /// Serializes the writing of committed offsets (writer and `delete_group`).
    commit_write: CommitWrite,
    next_ephemeral: AtomicU64,
    lock_file: Mutex<Option<File>>,
    stats: Arc<WriterStats>,
    /// Where dead letters go: the configured sink, or the log's own store (never dropped).
    dead_letters: DeadLetterRoute,
}

impl Inner {
    /// Hands messages that reached `max_deliver` to the configured sink, or to the log's own
    /// store when there is none.
    fn dead_letter(&self, dead: Vec<DeadLetter>) {
        for letter in dead {
            for old in self.dead_letters.put(letter) {
                tracing::warn!(
                    id = %old.envelope.id,
                    error = %old.error,
                    "log dead-letter store full: its oldest letter was evicted (the record stays in the log until retention removes it)"
                );
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Makes the writer sync, write offsets and stop (if it has not stopped already).
        self.intake.disconnect();
        let handle = lock(&self.writer_thread).take();
        if handle.is_some_and(|h| h.join().is_err()) {
            tracing::error!("log writer thread panicked");
        }
    }
}

/// One stream as the inspect API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Stream name.
    pub name: String,
    /// Offset of the oldest retained record.
    pub first_offset: u64,
    /// Offset the next record will get.
    pub next_offset: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes on disk.
    pub bytes: u64,
}

/// How far one consumer group is behind on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    /// Stream name.
    pub stream: String,
    /// Group name.
    pub group: String,
    /// Every record below this offset is settled (in memory if the group is active here,
    /// else as committed on disk).
    pub committed: u64,
    /// Unsettled messages the group holds in memory.
    pub pending: usize,
    /// Records from `committed` to the end of the stream.
    pub lag: u64,
}

/// Writer counters since the log was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Records appended.
    pub records: u64,
    /// Bytes appended (frames included).
    pub bytes: u64,
    /// Batches written (each answered many publishes at once).
    pub batches: u64,
    /// `fdatasync` calls. Under `Always`, `records / syncs` is the group-commit factor.
    pub syncs: u64,
}

/// A record read back through the inspect API.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// Its offset in the stream.
    pub offset: u64,
    /// The stored envelope.
    pub envelope: Envelope,
}

/// Longest duration accepted in the config (and for a nack delay): 100 years.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn validate(config: &LogConfig) -> Result<(), OpenError> {
    let bad = |m: String| Err(OpenError::InvalidConfig(m));
    let mut durations = vec![
        ("ack_wait", config.ack_wait),
        ("commit_interval", config.commit_interval),
        ("retention_check_interval", config.retention_check_interval),
    ];
    if let crate::config::Durability::Interval(d) = config.durability {
        durations.push(("durability interval", d));
    }
    for (name, d) in durations {
        if d > MAX_DURATION {
            return bad(format!("{name} must be at most 100 years"));
        }
    }
    if config.segment_bytes < 4096 || config.segment_bytes > (u32::MAX / 2) as u64 {
        return bad(format!(
            "segment_bytes must be within 4 KiB..2 GiB, got {}",
            config.segment_bytes
        ));
    }
    if config.max_record_bytes == 0 || config.max_record_bytes > crate::record::MAX_LEN {
        return bad("max_record_bytes must be within 1..1 GiB".to_owned());
    }
    if config.max_ack_pending == 0 {
        return bad("max_ack_pending must be at least 1".to_owned());
    }
    let mut names: Vec<&str> = config.streams.iter().map(|s| s.name.as_str()).collect();
    names.extend(config.default_stream.as_deref());
    for (i, n) in names.iter().enumerate() {
        if !valid_stream_name(n) {
            return bad(format!("invalid stream name {n:?}"));
        }
        if names[..i].contains(n) {
            return bad(format!("duplicate stream name {n:?}"));
        }
    }
    if let Some(s) = config.streams.iter().find(|s| s.patterns.is_empty()) {
        return bad(format!("stream {:?} has no patterns", s.name));
    }
    if names.is_empty() {
        return bad("no streams and no default stream".to_owned());
    }
    Ok(())
}

impl LogTransport {
    /// Opens (or creates) the log in `config.dir`: takes the lock, recovers every stream
    /// (a torn tail is truncated with a warning; damage elsewhere is an error) and starts the
    /// writer thread.
    pub fn open(config: LogConfig) -> Result<Self, OpenError> {
        validate(&config)?;
        let dir = config.dir.clone();
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock_file.try_lock_exclusive() {
            Ok(true) => {}
            Ok(false) => return Err(OpenError::Locked { path: lock_path }),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(OpenError::Locked { path: lock_path });
            }
            Err(e) => return Err(io(&lock_path)(e)),
        }
        let mut specs: Vec<(String, Vec<Pattern>)> = config
            .streams
            .iter()
            .map(|s| (s.name.clone(), s.patterns.clone()))
            .collect();
        if let Some(d) = &config.default_stream {
            specs.push((d.clone(), Vec::new()));
        }
        let mut streams = Vec::new();
        for (name, patterns) in specs {
            let sdir = dir.join("streams").join(&name);
            streams.push(Arc::new(StreamShared::open(
                name,
                sdir,
                patterns,
                config.recovery,
            )?));
        }
        let notify = Arc::new(Notify::new());
        let commits: PendingCommits = Arc::default();
        let commit_write: CommitWrite = Arc::default();
        let intake = Arc::new(Intake::new());
        let stats = Arc::new(WriterStats::default());
        let writer = Writer::new(
            intake.clone(),
            streams.clone(),
            config.clone(),
            commits.clone(),
            commit_write.clone(),
            notify.clone(),
            stats.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("switchyard-log-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(OpenError::Thread)?;
        let settings = GroupSettings {
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            max_ack_pending: config.max_ack_pending,
            ordering_header: config.ordering_header.clone(),
        };
        let dead_letters = DeadLetterRoute::new(config.dead_letters.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                settings,
                streams,
                intake,
                writer_thread: Mutex::new(Some(handle)),
                notify,
                closed: AtomicBool::new(false),
                settle_gate: RwLock::new(()),
                groups: Mutex::new(HashMap::new()),
                commits,
                commit_write,
                next_ephemeral: AtomicU64::new(0),
                lock_file: Mutex::new(Some(lock_file)),
                stats,
                dead_letters,
            }),
        })
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// The stream a topic is stored in, or `None` if no stream takes it.
    pub fn stream_for(&self, topic: &Topic) -> Option<&str> {
        self.route(topic)
            .map(|i| self.inner.streams[i].name.as_str())
    }

    fn route(&self, topic: &Topic) -> Option<usize> {
        self.inner
            .streams
            .iter()
            .position(|s| s.patterns.is_empty() || s.patterns.iter().any(|p| p.matches(topic)))
    }

    /// Every stream with its offsets and size.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.inner
            .streams
            .iter()
            .map(|s| {
                let idx = lock(&s.index);
                StreamInfo {
                    name: s.name.clone(),
                    first_offset: idx.first_offset(),
                    next_offset: idx.next_offset(),
                    segments: idx.segments.len(),
                    bytes: idx.bytes(),
                }
            })
            .collect()
    }

    /// Lag of every durable group on every stream it has used.
    pub fn group_lags(&self) -> Vec<GroupLag> {
        let live: HashMap<(usize, String), (u64, usize)> = lock(&self.inner.groups)
            .iter()
            .filter(|(_, g)| g.durable)
            .map(|(k, g)| {
                let st = lock(&g.state);
                (k.clone(), (st.floor(), st.pending_len()))
            })
            .collect();
        let mut out = Vec::new();
        for (i, s) in self.inner.streams.iter().enumerate() {
            let (first, next) = {
                let idx = lock(&s.index);
                (idx.first_offset(), idx.next_offset())
            };
            let mut names: Vec<String> = lock(&s.committed).keys().cloned().collect();
            names.extend(live.keys().filter(|(j, _)| *j == i).map(|(_, n)| n.clone()));
            names.sort();
            names.dedup();
            for group in names {
                let (committed, pending) = match live.get(&(i, group.clone())) {
                    Some(&(floor, pending)) => (floor, pending),
                    None => (lock(&s.committed).get(&group).map_or(0, |p| p.offset), 0),
                };
                let committed = committed.max(first);
                out.push(GroupLag {
                    stream: s.name.clone(),
                    group,
                    committed,
                    pending,
                    lag: next.saturating_sub(committed),
                });
            }
        }
        out
    }

    /// The log's own dead-letter store: where messages that reached `max_deliver` go when
    /// the config names no sink ([`LogConfig::with_dead_letters`]), to be browsed
    /// ([`InMemoryDeadLetters::list`], `select`) and taken. `None` when a sink is configured.
    ///
    /// It holds [`InMemoryDeadLetters::default`] (10 000 letters, 64 MiB; the oldest is
    /// evicted with a warning past that) and lives as long as the log is open: a letter's
    /// error text names the stream and offset of its record, which stays readable with
    /// [`read_range`](Self::read_range) until retention removes it.
    pub fn dead_letters(&self) -> Option<Arc<InMemoryDeadLetters>> {
        self.inner.dead_letters.own_store()
    }

    /// Writer counters since open.
    pub fn stats(&self) -> LogStats {
        let s = &self.inner.stats;
        LogStats {
            records: s.records.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
        }
    }

    /// `Some` while the log's writes fail (a full disk, a file-size limit, a segment that
    /// cannot be created): every publish is refused with a transport error of kind `Io`
    /// until the disk takes writes again. The writer probes every second by writing a block
    /// past a stream's end; the failure clears when that works or a batch is stored. A
    /// node reports it on `/ready` (503) and `/v1/health`.
    pub fn write_failure(&self) -> Option<crate::WriteFailure> {
        self.inner.stats.failure.get()
    }

    /// The committed offset of `group` on `stream` as last written to disk.
    pub fn committed_offset(&self, stream: &str, group: &str) -> Option<u64> {
        let s = self.inner.streams.iter().find(|s| s.name == stream)?;
        lock(&s.committed).get(group).map(|p| p.offset)
    }

    /// Reads up to `max` records of `stream` starting at offset `from`.
    pub fn read_range(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, ReadError> {
        let s = self
            .inner
            .streams
            .iter()
            .find(|s| s.name == stream)
            .ok_or_else(|| ReadError::UnknownStream(stream.to_owned()))?;
        let (first, end) = {
            let idx = lock(&s.index);
            (idx.first_offset(), idx.next_offset())
        };
        let mut at = from.max(first);
        let mut out = Vec::new();
        while out.len() < max && at < end {
            let chunk = s.read(at, (max - out.len()).min(1024))?;
            if chunk.is_empty() {
                break;
            }
            for (offset, envelope) in chunk {
                at = offset + 1;
                out.push(StoredRecord { offset, envelope });
            }
        }
        Ok(out)
    }

    /// Syncs every stream and writes committed offsets now.
    pub async fn flush(&self) -> Result<(), TransportError> {
        let (reply, rx) = oneshot::channel();
        self.request(Control::Flush(reply))?;
        match rx.await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(TransportError::new(
                TransportErrorKind::Closed,
                "log is closed",
            )),
        }
    }

    /// Applies retention and compaction now (the writer also does it every
    /// `retention_check_interval`). Committed offsets are written first, so compaction sees
    /// the latest acknowledgements.
    pub async fn enforce_retention(&self) -> Result<(), TransportError> {
        self.flush().await?;
        let (reply, rx) = oneshot::channel();
        self.request(Control::Retention(reply))?;
        match rx.await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(TransportError::new(
                TransportErrorKind::Closed,
                "log is closed",
            )),
        }
    }

    fn request(&self, c: Control) -> Result<(), TransportError> {
        self.inner
            .intake
            .request(c)
            .map_err(|_| TransportError::new(TransportErrorKind::Closed, "log is closed"))
    }

    /// Routes and encodes `batch` into `out`, refusing it whole if one envelope cannot be
    /// stored.
    fn encode(&self, batch: &[Envelope], out: &mut Records) -> Result<(), PublishError> {
        let limit = self.inner.config.max_record_bytes as usize;
        for env in batch {
            let stream = self.route(&env.topic).ok_or_else(|| {
                TransportError::new(
                    TransportErrorKind::Rejected,
                    format!("no log stream takes topic {}", env.topic),
                )
            })?;
            let start = out.bytes.len();
            record::encode_into(env, &mut out.bytes).map_err(|e| CodecError {
                direction: CodecDirection::Encode,
                type_name: "Envelope",
                source: Box::new(e),
            })?;
            let len = out.bytes.len() - start;
            if len > limit {
                return Err(too_large(len, limit));
            }
            out.ends.push((stream, out.bytes.len()));
        }
        Ok(())
    }

    /// The first poll of a publish: refuses what cannot be stored, encodes `batch` and hands it
    /// to the writer with `waker` (the publishing task's). `None` for an empty batch. Inlined
    /// into both publishes (as one call it cost ~60 instructions a publish more, callgrind).
    #[inline(always)]
    fn hand_over(&self, batch: &[Envelope], waker: Waker) -> Result<Option<u64>, PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShuttingDown);
        }
        if batch.is_empty() {
            return Ok(None);
        }
        let limit = self.inner.config.max_record_bytes as usize;
        // Refused before anything is encoded or allocated for it.
        if let Some(env) = batch.iter().find(|e| e.payload.len() > limit) {
            return Err(too_large(env.payload.len(), limit));
        }
        with_scratch(|out| {
            self.encode(batch, out)?;
            self.inner
                .intake
                .submit(&out.bytes, &out.ends, waker)
                .map(Some)
                .ok_or(PublishError::ShuttingDown)
        })
    }

    /// Where a group starts reading, and the records above that it settled before (from the
    /// offsets file; passed over).
    fn start_offset(
        &self,
        stream: &StreamShared,
        group: &str,
        durable: bool,
    ) -> (u64, crate::offsets::Ranges) {
        let (first, next) = {
            let idx = lock(&stream.index);
            (idx.first_offset(), idx.next_offset())
        };
        let committed = durable
            .then(|| lock(&stream.committed).get(group).cloned())
            .flatten();
        match (committed, self.inner.config.start) {
            (Some(c), _) => (c.offset.clamp(first, next), c.settled),
            (None, StartPosition::Earliest) => (first, Vec::new()),
            (None, StartPosition::Latest) if durable && stream.offsets_damaged => {
                (first, Vec::new())
            }
            (None, StartPosition::Latest) => (next, Vec::new()),
        }
    }
}

/// What a publish returns once its ticket is settled (or never will be).
fn published(settled: Result<(), Unsettled>) -> Result<(), PublishError> {
    match settled {
        Ok(()) => Ok(()),
        Err(Unsettled::Failed(e)) => Err(PublishError::Transport(e.into())),
        Err(Unsettled::Stopped) => Err(PublishError::ShuttingDown),
    }
}

/// Whose limit a [`TooLarge`] from the log names.
const LIMIT_OF: &str = "the log's max_record_bytes";

fn too_large(size: usize, limit: usize) -> PublishError {
    PublishError::TooLarge(TooLarge {
        size,
        limit,
        limit_of: LIMIT_OF,
    })
}

impl Publisher for LogTransport {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<(), PublishError> {
        // The task's waker, left with the records so the writer can wake it (awaiting a
        // ready future: this is still the first poll, on this thread).
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let Some(ticket) = self.hand_over(&batch, waker)? else {
            return Ok(());
        };
        drop(batch);
        // Awaited here, not in a shared async fn: that nested future cost ~100 instructions
        // a publish (callgrind).
        published(Settled::new(&self.inner.intake, ticket).await)
    }

    /// [`Publisher::publish`] of a batch of one, without the batch's `Vec` (one allocation
    /// and a copy of the envelope less per publish); the bus publishes through it. Resolves,
    /// like `publish`, once the record is durable under the configured
    /// [`Durability`](crate::Durability); dropped after its first poll, the record is still
    /// written.
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`]: `ShuttingDown` once the log closes, `TooLarge` over
    /// `max_record_bytes`, a transport error when no stream takes the topic or the batch
    /// holding the record could not be written or synced.
    async fn publish_one(&self, envelope: Envelope) -> Result<(), PublishError> {
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let Some(ticket) = self.hand_over(std::slice::from_ref(&envelope), waker)? else {
            return Ok(());
        };
        drop(envelope);
        published(Settled::new(&self.inner.intake, ticket).await)
    }

    fn max_message_bytes(&self) -> Option<(usize, &'static str)> {
        Some((self.inner.config.max_record_bytes as usize, LIMIT_OF))
    }

    async fn close(&self, deadline: std::time::Instant) -> Result<(), CloseError> {
        {
            let _gate = self
                .inner
                .settle_gate
                .write()
                .unwrap_or_else(|p| p.into_inner());
            self.inner.closed.store(true, Ordering::Release);
        }
        self.inner.notify.notify_waiters();
        let (reply, rx) = oneshot::channel();
        // Refused when the log is already closing or closed.
        let sent = self.inner.intake.request(Control::Close(reply));
        let result = match sent {
            Ok(()) => match tokio::time::timeout_at(Instant::from_std(deadline), rx).await {
                Ok(Ok(r)) => r.map_err(|e| CloseError::Transport(e.into())),
                Ok(Err(_)) => Ok(()),
                Err(_) => Err(CloseError::Transport(TransportError::new(
                    TransportErrorKind::Timeout,
                    "log writer did not finish before the deadline",
                ))),
            },
            Err(_) => Ok(()),
        };
        if result.is_ok() {
            // The writer answered Close as its last act; joining returns at once.
            let handle = lock(&self.inner.writer_thread).take();
            if handle.is_some_and(|h| h.join().is_err()) {
                tracing::error!("log writer thread panicked");
            }
            lock(&self.inner.lock_file).take();
        }
        result
    }
}

impl Subscriber for LogTransport {
    type Stream = LogSubscription;

    async fn subscribe(
        &self,
        pattern: &Pattern,
        group: Option<&str>,
    ) -> Result<LogSubscription, SubscribeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::ShuttingDown);
        }
        let (name, durable) = match group {
            Some("") => return Err(SubscribeError::InvalidConfig("empty group name")),
            Some(g) if g.len() > crate::offsets::MAX_GROUP_NAME => {
                return Err(SubscribeError::InvalidConfig(
                    "group name longer than 65535 bytes",
                ));
            }
            Some(g) => (g.to_owned(), true),
            None => (
                format!(
                    "\u{0}ephemeral-{}",
                    self.inner.next_ephemeral.fetch_add(1, Ordering::Relaxed)
                ),
                false,
            ),
        };
        let mut map = lock(&self.inner.groups);
        let mut groups = Vec::new();
        for (i, stream) in self.inner.streams.iter().enumerate() {
            if !stream.may_hold(pattern) {
                continue;
            }
            let g = map
                .entry((i, name.clone()))
                .or_insert_with(|| {
                    // A durable group counts for compaction from the moment it exists: its
                    // start goes to the pending commits (which compaction reads with the
                    // written offsets) under the same lock compaction holds while it
                    // removes segments, so none it has not read can go in between.
                    let mut commits = lock(&self.inner.commits);
                    let (start, settled) = self.start_offset(stream, &name, durable);
                    if durable && !lock(&stream.committed).contains_key(&name) {
                        commits.entry((i, name.clone())).or_insert(Commit {
                            offset: start,
                            group: None,
                        });
                    }
                    drop(commits);
                    Arc::new(GroupShared::new(
                        i,
                        stream.clone(),
                        name.clone(),
                        durable,
                        pattern.clone(),
                        start,
                        settled,
                    ))
                })
                .clone();
            let st = lock(&g.state);
            if st.pattern != *pattern && st.members > 0 {
                return Err(SubscribeError::InvalidConfig(
                    "group already subscribed with another pattern",
                ));
            }
            drop(st);
            groups.push(g);
        }
        for g in &groups {
            let changed = lock(&g.state).pattern != *pattern;
            if changed {
                g.reset(pattern.clone());
            }
            lock(&g.state).members += 1;
        }
        drop(map);
        let member = Member {
            inner: self.inner.clone(),
            groups,
            cursor: 0,
        };
        let stream = futures::stream::unfold(member, |mut m| async move {
            let d = m.next().await?;
            Some((d, m))
        });
        Ok(LogSubscription::new(stream))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            ordered: true,
            consumer_groups: true,
            wildcards: true,
            delayed_delivery: false,
            dedup: false,
        }
    }
}

/// The deliveries of one subscription. Ends when the log is closed. Dropping it leaves the
/// group; messages it handed out and that are still unsettled are redelivered.
pub type LogSubscription = switchyard_core::DeliveryStream;

/// One subscription's membership in its groups (one per stream it may read).
struct Member {
    inner: Arc<Inner>,
    groups: Vec<Arc<GroupShared>>,
    cursor: usize,
}

impl Drop for Member {
    fn drop(&mut self) {
        for g in &self.groups {
            let left = {
                let mut st = lock(&g.state);
                st.members = st.members.saturating_sub(1);
                st.members
            };
            if left == 0 && !g.durable {
                lock(&self.inner.groups).remove(&(g.stream_idx, g.name.clone()));
            }
        }
    }
}

impl Member {
    /// Waits for the next message any of this member's groups can hand out.
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            // Register for wake-ups before looking, so a close or publish that happens while
            // we look is not missed.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.closed.load(Ordering::Acquire) {
                return None;
            }
            let now = Instant::now();
            let mut dead = Vec::new();
            let mut earliest: Option<Instant> = None;
            let mut found = None;
            let n = self.groups.len();
            for k in 0..n {
                let g = &self.groups[(self.cursor + k) % n];
                match g.dispatch(&self.inner.settings, now, &mut dead, &self.inner.commits) {
                    Ok(Dispatch::Deliver {
                        offset,
                        generation,
                        envelope,
                    }) => {
                        self.cursor = (self.cursor + k + 1) % n;
                        let handle = LogAck {
                            inner: self.inner.clone(),
                            group: g.clone(),
                            offset,
                            generation,
                            settled: false,
                        };
                        found = Some(Delivery::new(*envelope, Box::new(handle)));
                        break;
                    }
                    Ok(Dispatch::Wait(t)) => {
                        earliest = min_instant(earliest, t);
                    }
                    Err(e) => {
                        tracing::error!(stream = %g.stream.name, group = %g.name, error = %e, "log read failed; retrying in 1s");
                        earliest = min_instant(earliest, Some(now + Duration::from_secs(1)));
                    }
                }
            }
            if !dead.is_empty() {
                self.inner.dead_letter(dead);
                self.inner.notify.notify_waiters();
            }
            if found.is_some() {
                return found;
            }
            match earliest {
                Some(t) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
