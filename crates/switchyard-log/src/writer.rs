//! The writer thread: the only code that appends to segments.
//!
//! It owns the tail of every stream and stops when it is asked to close or every handle is
//! gone. Publishers leave encoded envelopes in the [`Intake`] and wait for their ticket to be
//! settled; each round the thread takes everything there as one batch (waiting briefly for
//! the rest of the previous batch's publishers, see `gather`), frames it into one reused
//! buffer, writes it with one `write` per stream, syncs each touched segment once (group
//! commit under `Durability::Always`), makes the records visible to consumers and only then
//! settles the batch's tickets and wakes their publishers. The last segment of each stream
//! carries zeros written ahead of the data (`PREALLOC`), trimmed at a roll and at close. It
//! also writes committed group offsets (every `commit_interval`) and enforces retention.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::config::{Durability, LogConfig};
use crate::error::AppendError;
use crate::fsio;
use crate::group::GroupShared;
use crate::intake::{Control, Intake, Records};
use crate::manifest::{self, Manifest};
use crate::offsets;
use crate::record::{self, MAGIC};
use crate::stream::{StreamShared, create_segment, lock};

/// Counters kept by the writer, read by [`LogTransport::stats`](crate::LogTransport::stats).
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes: AtomicU64,
    /// Set while batches fail (`health.rs`).
    pub failure: crate::health::FailureState,
}

/// A group position waiting to be written.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    /// The committed offset when it was reported (compaction counts it until written).
    pub offset: u64,
    /// The group whose position moved: the writer takes its committed offset and settled
    /// ranges from its state when it writes. `None` for the start of a group (nothing
    /// settled yet).
    pub group: Option<Arc<GroupShared>>,
}

/// Group positions waiting to be written: (stream index, group) → commit.
pub(crate) type PendingCommits = Arc<Mutex<HashMap<(usize, String), Commit>>>;

/// Held while committed offsets are written (by the writer, or by
/// [`LogTransport::delete_group`](crate::LogTransport::delete_group)), from taking the pending
/// commits to updating [`StreamShared::committed`], so neither undoes the other.
pub(crate) type CommitWrite = Arc<Mutex<()>>;

/// Records written to the last segment of a stream but not yet visible.
struct Staged {
    stream: usize,
    positions: Vec<u32>,
    len: u64,
}

pub(crate) struct Writer {
    pub intake: Arc<Intake>,
    pub streams: Vec<Arc<StreamShared>>,
    pub config: LogConfig,
    pub commits: PendingCommits,
    commit_write: CommitWrite,
    pub notify: Arc<Notify>,
    pub stats: Arc<WriterStats>,
    dirty: Vec<bool>,
    /// Recent largest number of publishes in one batch (see `gather`).
    batch_peak: usize,
    /// How long the last group-commit sync took.
    last_sync_cost: Duration,
    last_sync: Instant,
    last_commit: Instant,
    last_retention: Instant,
    /// Whether the last round appended: then the next publish is likely a few microseconds
    /// away (see `next_round`).
    appended: bool,
    /// Reused per round: the batch taken, wakers to wake, streams touched, frames.
    batch: Records,
    wake: Vec<Waker>,
    touched: Vec<bool>,
    buf: Vec<u8>,
    /// Size on disk of the last segment of each stream: past its visible end the file holds
    /// zeros written ahead of time (see [`PREALLOC`]).
    alloc_end: Vec<u64>,
    /// While batches fail: when to probe next whether the disk takes writes again
    /// (`health.rs`); `None` while writes work.
    probe_at: Option<Instant>,
}

/// How long the thread polls for the next request after a round that appended, before it
/// sleeps (only while batches are small, see `next_round`). Waking a sleeping thread costs tens of microseconds on some machines (virtual
/// CPUs that halt when idle), more than a publisher that was just answered takes to come
/// back; polling (which yields the CPU between looks) costs at most this much CPU per round.
const SPIN: Duration = Duration::from_micros(50);

/// While gathering a batch, stop waiting once no publish has arrived for this long.
const STALL: Duration = Duration::from_micros(40);

/// Batches of up to this many publishes are followed by polling (`SPIN`); larger ones by
/// sleeping until the next batch is full (`gather`), which leaves the CPU to the publishers.
const SPIN_MAX_PEAK: usize = 8;

/// Longest wait for the rest of a batch.
const MAX_GATHER: Duration = Duration::from_millis(1);

/// The last segment is extended by writing this many zeros past the end of the data (but not
/// past `segment_bytes`) whenever a write would pass the zeros already there. Overwriting blocks that are already allocated
/// and written does not change the file's size or block map, so the `fdatasync` that makes a
/// batch durable writes the data and flushes, without also writing the inode (which appending
/// costs: on the benchmark machine a sync after an append takes 1.4-2x as long). Recovery
/// treats an all-zero tail as the clean end of a segment; close trims it.
const PREALLOC: u64 = 1 << 20;

/// The frame buffer is kept between rounds unless a round made it larger than this.
const KEEP_BUF: usize = 8 << 20;

impl Writer {
    pub fn new(
        intake: Arc<Intake>,
        streams: Vec<Arc<StreamShared>>,
        config: LogConfig,
        commits: PendingCommits,
        commit_write: CommitWrite,
        notify: Arc<Notify>,
        stats: Arc<WriterStats>,
    ) -> Self {
        let now = Instant::now();
        let n = streams.len();
        Self {
            intake,
            streams,
            config,
            commits,
            commit_write,
            notify,
            stats,
            dirty: vec![false; n],
            batch_peak: 0,
            last_sync_cost: Duration::ZERO,
            last_sync: now,
            last_commit: now,
            last_retention: now,
            probe_at: None,
            appended: false,
            batch: Records::default(),
            wake: Vec::new(),
            touched: Vec::new(),
            buf: Vec::new(),
            alloc_end: Vec::new(),
        }
        .with_alloc_ends()
    }

    /// Reads the size on disk of every stream's last segment (recovery leaves an unused
    /// zero tail in place).
    fn with_alloc_ends(mut self) -> Self {
        self.alloc_end = self
            .streams
            .iter()
            .map(|s| {
                let idx = lock(&s.index);
                idx.segments.last().map_or(0, |seg| {
                    seg.file
                        .metadata()
                        .map_or(seg.len, |m| m.len().max(seg.len))
                })
            })
            .collect();
        self
    }

    /// After data was written up to `end` of the last segment of stream `i`: writes zeros
    /// ahead when the data reached past the zeros already there. Only an optimisation: if
    /// it fails (a full disk), the data is appended as before.
    fn extend_ahead(&mut self, i: usize, file: &std::fs::File, end: u64) {
        let Some(alloc) = self.alloc_end.get_mut(i) else {
            return;
        };
        if end <= *alloc {
            return;
        }
        // Not past the segment's size limit: small segments would write mostly zeros.
        let to = (end + PREALLOC)
            .min(self.config.segment_bytes)
            .next_multiple_of(4096);
        if to <= end {
            return; // the segment is full; the next write rolls
        }
        match fsio::write_zeros(file, end, to) {
            Ok(()) => *alloc = to,
            Err(e) => {
                // Zeros written before the error are a valid tail; the next write past
                // `end` tries again.
                *alloc = end;
                tracing::debug!(error = %e, "log: cannot write ahead of the data");
            }
        }
    }

    /// Cuts the unused zero tail of the last segment of every stream (at close), so a
    /// closed log's files end at their last record.
    fn trim_all(&mut self) -> Result<(), AppendError> {
        let mut result = Ok(());
        for (i, stream) in self.streams.iter().enumerate() {
            let Some((file, len)) = stream.tail() else {
                continue;
            };
            let Some(alloc) = self.alloc_end.get_mut(i) else {
                continue;
            };
            if *alloc <= len {
                continue;
            }
            match file.set_len(len).and_then(|()| file.sync_data()) {
                Ok(()) => *alloc = len,
                Err(e) => {
                    result = Err(AppendError::Io(format!("trim of {}: {e}", stream.name)));
                }
            }
        }
        result
    }

    /// Polls for work for up to [`SPIN`]; whether some came.
    fn spin(&self) -> bool {
        let until = Instant::now() + SPIN;
        loop {
            for _ in 0..64 {
                if self.intake.has_pending() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                return false;
            }
            // Lets a publisher waiting for this CPU run (on a busy or one-core machine).
            std::thread::yield_now();
        }
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut due = self.last_commit + self.config.commit_interval;
        if let Durability::Interval(d) = self.config.durability
            && self.dirty.iter().any(|&d| d)
        {
            due = due.min(self.last_sync + d);
        }
        if self.retention_enabled() {
            due = due.min(self.last_retention + self.config.retention_check_interval);
        }
        if let Some(at) = self.probe_at {
            due = due.min(at);
        }
        due.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    fn retention_enabled(&self) -> bool {
        let r = self.config.retention;
        r.max_bytes.is_some() || r.max_age.is_some() || r.delete_consumed
    }

    /// The thread's main loop.
    pub fn run(mut self) {
        // However the thread ends, publishers still waiting are told rather than left hanging.
        let _stop = StopOnExit(self.intake.clone());
        loop {
            if !self.next_round() {
                self.appended = false;
                self.periodic();
                continue;
            }
            let mut batch = std::mem::take(&mut self.batch);
            let taken = self.intake.take(&mut batch);
            let publishes = (taken.end - taken.start) as usize;
            self.appended = publishes > 0;
            if self.appended {
                let result = self.append_batch(&batch);
                self.intake.settle(taken.end, result, &mut self.wake);
                // The peak follows increases at once and decays by an eighth (at least one)
                // per batch, so a drop in concurrency stops costing waits after a few batches.
                let decayed = self.batch_peak - self.batch_peak.div_ceil(8);
                self.batch_peak = publishes.max(decayed);
            }
            batch.clear();
            if batch.bytes.capacity() <= KEEP_BUF {
                self.batch = batch;
            }
            self.periodic();
            let mut flushes = Vec::new();
            let mut closing = None;
            for c in taken.control {
                match c {
                    Control::Flush(reply) => flushes.push(reply),
                    Control::Retention(reply) => {
                        for i in 0..self.streams.len() {
                            self.enforce_retention(i);
                        }
                        let _ = reply.send(Ok(()));
                    }
                    Control::Close(reply) => closing = Some(reply),
                }
            }
            if !flushes.is_empty() || closing.is_some() || taken.disconnected {
                let mut result = self.sync_all();
                if (closing.is_some() || taken.disconnected) && result.is_ok() {
                    result = self.trim_all();
                }
                self.write_commits();
                for reply in flushes {
                    let _ = reply.send(result.clone());
                }
                if let Some(reply) = closing {
                    let _ = reply.send(result);
                    return;
                }
                if taken.disconnected {
                    return;
                }
            }
        }
    }

    /// Waits until there is work for a round (publishes or requests); `false` when none
    /// came before the next periodic task is due.
    ///
    /// After a round that appended, the publishers just answered are about to come back.
    /// With small batches the thread polls for them briefly ([`SPIN`]): waking a sleeping
    /// thread costs tens of microseconds on some machines (virtual CPUs that halt when
    /// idle), more than a publisher takes to come back. With large batches under `Always`
    /// it sleeps until the batch is as full as recent ones (`gather`): polling would take
    /// CPU from the publishers, and one wake-up per batch is cheap.
    fn next_round(&mut self) -> bool {
        let always = self.config.durability == Durability::Always;
        if self.appended {
            if always && self.batch_peak > SPIN_MAX_PEAK {
                let (n, other) = self.gather();
                if n > 0 || other {
                    return true;
                }
            } else if self.spin() {
                if always {
                    self.gather();
                }
                return true;
            }
        }
        // A relay of wake-ups nobody took is woken here once overdue, so sleep no longer.
        let mut timeout = self.next_wakeup();
        if let Some(left) = self.intake.relay_overdue() {
            timeout = timeout.min(left);
        }
        if !self.intake.wait_any(timeout) {
            return false;
        }
        if always {
            self.gather();
        }
        true
    }

    /// Group commit under `Always`: publishers answered by the previous sync come back a few
    /// microseconds apart, so a batch taken the instant the first one arrives is often small
    /// and the next sync serves few (with N publishers in flight, batches settle at N/2: one
    /// half waits for the sync the other half is in). When the open batch has fewer
    /// publishes than recent ones, sleep until it has as many (the publish that completes it
    /// wakes the thread) for at most as long as the last sync took (waiting that long costs
    /// what a second sync for the rest would; at most [`MAX_GATHER`]), and stop early once
    /// none has arrived for [`STALL`]. Returns the open batch's publishes and whether a
    /// request waits.
    fn gather(&mut self) -> (usize, bool) {
        let target = self.batch_peak;
        let (mut n, mut other) = self.intake.open();
        let start = Instant::now();
        let deadline = start + self.last_sync_cost.min(MAX_GATHER);
        let (mut seen, mut last_arrival) = (n, start);
        while n < target && !other {
            self.intake.relay_overdue();
            let now = Instant::now();
            if n > seen {
                seen = n;
                last_arrival = now;
            }
            let until = deadline.min(last_arrival + STALL);
            if now >= until {
                break;
            }
            (n, other) = self.intake.wait_for(target, until - now);
        }
        (n, other)
    }

    fn periodic(&mut self) {
        let now = Instant::now();
        if self.probe_at.is_some_and(|at| now >= at) {
            self.probe();
        }
        if let Durability::Interval(d) = self.config.durability
            && now >= self.last_sync + d
            && let Err(e) = self.sync_all()
        {
            tracing::error!(error = %e, "log interval sync failed");
        }
        if now >= self.last_commit + self.config.commit_interval {
            self.write_commits();
        }
        if self.retention_enabled()
            && now >= self.last_retention + self.config.retention_check_interval
        {
            self.last_retention = now;
            for i in 0..self.streams.len() {
                self.enforce_retention(i);
            }
        }
    }

    /// Syncs every stream with unsynced writes.
    fn sync_all(&mut self) -> Result<(), AppendError> {
        self.last_sync = Instant::now();
        let mut result = Ok(());
        for (i, stream) in self.streams.iter().enumerate() {
            if !self.dirty[i] {
                continue;
            }
            let file = lock(&stream.index).segments.last().map(|s| s.file.clone());
            if let Some(file) = file {
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                match file.sync_data() {
                    Ok(()) => self.dirty[i] = false,
                    Err(e) => {
                        result = Err(AppendError::Io(format!("sync of {}: {e}", stream.name)))
                    }
                }
            }
        }
        result
    }

    /// Writes pending committed offsets: one file (one sync) per stream whose groups moved,
    /// however many groups did.
    fn write_commits(&mut self) {
        self.last_commit = Instant::now();
        let commit_write = self.commit_write.clone();
        let _writing = lock(&commit_write);
        // Taken out first: a group's state is locked below, and a settle locks the pending
        // commits while it holds its group's state.
        let pending: Vec<_> = lock(&self.commits).drain().collect();
        let mut by_stream: HashMap<usize, Vec<(String, Commit, offsets::Position)>> =
            HashMap::new();
        for ((i, group), commit) in pending {
            let position = match &commit.group {
                Some(g) => match g.take_position() {
                    Some(p) => p,
                    // Deleted since it reported.
                    None => continue,
                },
                None => offsets::Position::at(commit.offset),
            };
            by_stream
                .entry(i)
                .or_default()
                .push((group, commit, position));
        }
        for (i, moved) in by_stream {
            let Some(stream) = self.streams.get(i) else {
                continue;
            };
            let mut all = lock(&stream.committed).clone();
            all.extend(moved.iter().map(|(g, _, p)| (g.clone(), p.clone())));
            match offsets::store_all(&stream.dir.join("groups"), &all) {
                Ok(()) => *lock(&stream.committed) = all,
                Err(e) => {
                    tracing::warn!(stream = %stream.name, error = %e, "cannot write committed offsets; will retry");
                    let mut commits = lock(&self.commits);
                    for (group, commit, _) in moved {
                        commits.entry((i, group)).or_insert(commit);
                    }
                }
            }
        }
    }

    /// Writes, syncs (under `Always`) and publishes the records of `batch`; the result is
    /// every publisher's.
    fn append_batch(&mut self, batch: &Records) -> Result<(), AppendError> {
        let n = self.streams.len();
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        touched.resize(n, false);
        for &(i, _) in &batch.ends {
            if let Some(t) = touched.get_mut(i) {
                *t = true;
            }
        }
        let mut result = Ok(());
        let mut staged = Vec::new();
        for i in (0..n).filter(|&i| touched[i]) {
            match self.write_stream(i, batch) {
                Ok(s) => staged.push(s),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() && self.config.durability == Durability::Always {
            let started = Instant::now();
            for s in &staged {
                if let Err(e) = self.sync_all_one(s.stream) {
                    result = Err(e);
                    break;
                }
            }
            self.last_sync_cost = started.elapsed();
        }
        match &result {
            Ok(()) => {
                if self.probe_at.is_some() {
                    self.probe_at = None;
                    self.stats.failure.recovered();
                }
                for s in staged {
                    self.publish(s);
                }
                self.notify.notify_waiters();
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                for i in (0..n).filter(|&i| touched[i]) {
                    self.discard(i);
                }
                self.stats.failure.failed(e);
                self.probe_at = Some(Instant::now() + crate::health::PROBE_EVERY);
            }
        }
        self.touched = touched;
        result
    }

    fn sync_all_one(&mut self, i: usize) -> Result<(), AppendError> {
        let Some(stream) = self.streams.get(i) else {
            return Ok(());
        };
        let file = lock(&stream.index).segments.last().map(|s| s.file.clone());
        if let Some(file) = file {
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            file.sync_data()
                .map_err(|e| AppendError::Io(format!("sync of {}: {e}", stream.name)))?;
        }
        self.dirty[i] = false;
        Ok(())
    }

    /// Makes staged records visible.
    fn publish(&mut self, s: Staged) {
        let Some(stream) = self.streams.get(s.stream) else {
            return;
        };
        let mut idx = lock(&stream.index);
        if let Some(seg) = idx.segments.last_mut() {
            self.stats
                .records
                .fetch_add(s.positions.len() as u64, Ordering::Relaxed);
            self.stats
                .bytes
                .fetch_add(s.len.saturating_sub(seg.len), Ordering::Relaxed);
            seg.positions.extend_from_slice(&s.positions);
            seg.len = s.len;
            seg.modified = SystemTime::now();
        }
    }

    /// While batches fail: writes a block of zeros past the visible end of every stream's
    /// last segment and cuts it off again. When every stream takes it, writes work again
    /// (until a batch fails anew); otherwise the next probe is in [`PROBE_EVERY`].
    ///
    /// [`PROBE_EVERY`]: crate::health::PROBE_EVERY
    fn probe(&mut self) {
        let mut ok = true;
        for i in 0..self.streams.len() {
            if let Some((file, len)) = self.streams.get(i).and_then(|s| s.tail()) {
                let wrote = fsio::write_zeros(&file, len, len + 4096);
                ok &= wrote.is_ok() && file.set_len(len).is_ok();
                if let Some(a) = self.alloc_end.get_mut(i) {
                    *a = len;
                }
            }
        }
        if ok {
            self.probe_at = None;
            self.stats.failure.recovered();
        } else {
            self.probe_at = Some(Instant::now() + crate::health::PROBE_EVERY);
        }
    }

    /// Drops bytes written past the visible end of a stream after a failed batch.
    fn discard(&mut self, i: usize) {
        let Some(stream) = self.streams.get(i) else {
            return;
        };
        if let Some((file, len)) = stream.tail() {
            match file.set_len(len) {
                Ok(()) => {
                    if let Some(a) = self.alloc_end.get_mut(i) {
                        *a = len;
                    }
                }
                Err(e) => {
                    tracing::error!(stream = %stream.name, error = %e, "cannot drop a failed write; recovery will truncate it on the next open");
                }
            }
        }
    }

    /// Writes the records of stream `i` in `batch` (in order) with one `write` (more at a
    /// segment roll), framing them in a buffer kept between rounds.
    fn write_stream(&mut self, i: usize, batch: &Records) -> Result<Staged, AppendError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let records = batch.iter().filter(|&(s, _)| s == i).map(|(_, rec)| rec);
        let result = self.write_stream_with(i, records, &mut buf);
        if buf.capacity() <= KEEP_BUF {
            self.buf = buf;
        }
        result
    }

    /// Writes records to a stream, rolling segments as needed. Records before a roll are made
    /// visible at the roll (after a sync under `Always`); the rest are returned staged.
    fn write_stream_with<'a>(
        &mut self,
        i: usize,
        records: impl Iterator<Item = &'a [u8]>,
        buf: &mut Vec<u8>,
    ) -> Result<Staged, AppendError> {
        let stream = self.streams[i].clone();
        let io = |what: &str, e: std::io::Error| {
            AppendError::Io(format!("{what} in stream {}: {e}", stream.name))
        };
        let (mut file, mut next, mut len) = {
            let idx = lock(&stream.index);
            let last = idx
                .segments
                .last()
                .ok_or_else(|| AppendError::Io(format!("stream {} has no segment", stream.name)))?;
            (last.file.clone(), last.end(), last.len)
        };
        let mut positions = Vec::new();
        let mut seed = record::LenCrc::default();
        for rec in records {
            let pos = len + buf.len() as u64;
            if pos >= self.config.segment_bytes && pos > MAGIC.len() as u64 {
                fsio::write_all_at(&file, buf, len).map_err(|e| io("write", e))?;
                // The closed segment ends at its last record.
                file.set_len(pos).map_err(|e| io("trim", e))?;
                if self.config.durability != Durability::Never {
                    self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    file.sync_data().map_err(|e| io("sync", e))?;
                }
                self.publish(Staged {
                    stream: i,
                    positions: std::mem::take(&mut positions),
                    len: pos,
                });
                buf.clear();
                let seg = create_segment(
                    &stream.dir,
                    next,
                    self.config.durability != Durability::Never,
                )
                .map_err(|e| io("create segment", e))?;
                file = seg.file.clone();
                len = seg.len;
                if let Some(a) = self.alloc_end.get_mut(i) {
                    *a = len;
                }
                let oldest = {
                    let mut idx = lock(&stream.index);
                    idx.segments.push(seg);
                    idx.first_offset()
                };
                // After the file exists: the manifest never names a segment that is not
                // there. If it cannot be written it lags behind, which open accepts.
                if let Err(e) = manifest::store(
                    &stream.dir,
                    Manifest {
                        oldest,
                        newest: next,
                    },
                ) {
                    tracing::warn!(stream = %stream.name, error = %e, "cannot record the new segment in the stream manifest");
                }
                tracing::debug!(stream = %stream.name, base = next, "log segment rolled");
            }
            let pos = len + buf.len() as u64;
            positions.push(u32::try_from(pos).map_err(|_| {
                AppendError::Io(format!("segment of stream {} too large", stream.name))
            })?);
            record::frame(next, rec, buf, &mut seed);
            next += 1;
        }
        fsio::write_all_at(&file, buf, len).map_err(|e| io("write", e))?;
        self.dirty[i] = true;
        self.extend_ahead(i, &file, len + buf.len() as u64);
        Ok(Staged {
            stream: i,
            positions,
            len: len + buf.len() as u64,
        })
    }

    /// The lowest offset a durable group of stream `i` still needs, for compaction: over the
    /// offsets written to `OFFSETS` and those waiting to be written (which include the start
    /// of every group created since, acked or not). `None` when the stream has no durable
    /// group. The caller holds the pending commits (`commits`).
    fn min_committed(
        stream: &StreamShared,
        i: usize,
        commits: &HashMap<(usize, String), Commit>,
    ) -> Option<u64> {
        let written = lock(&stream.committed).values().map(|p| p.offset).min();
        let waiting = commits
            .iter()
            .filter(|((s, _), _)| *s == i)
            .map(|(_, c)| c.offset)
            .min();
        match (written, waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many of the oldest segments retention removes, given the lowest offset a group
    /// still needs (`min_committed`, compaction only).
    fn removable(
        r: crate::config::Retention,
        idx: &crate::stream::StreamIndex,
        min_committed: Option<u64>,
    ) -> usize {
        let mut total = idx.bytes();
        let mut n = 0;
        while n + 1 < idx.segments.len() {
            let seg = &idx.segments[n];
            let end = idx.segments[n + 1].base;
            let too_big = r.max_bytes.is_some_and(|m| total > m);
            let too_old = r
                .max_age
                .is_some_and(|a| seg.modified.elapsed().is_ok_and(|age| age > a));
            let consumed = min_committed.is_some_and(|c| c >= end);
            if !(too_big || too_old || consumed) {
                break;
            }
            total -= seg.len;
            n += 1;
        }
        n
    }

    /// Removes whole closed segments that retention no longer keeps.
    fn enforce_retention(&mut self, i: usize) {
        let Some(stream) = self.streams.get(i) else {
            return;
        };
        let r = self.config.retention;
        let min_of = |commits: &HashMap<(usize, String), Commit>| {
            if r.delete_consumed {
                Self::min_committed(stream, i, commits)
            } else {
                None
            }
        };
        let (n, keep) = {
            let min_committed = min_of(&lock(&self.commits));
            let idx = lock(&stream.index);
            let n = Self::removable(r, &idx, min_committed);
            let keep = Manifest {
                oldest: idx.segments.get(n).map_or(0, |s| s.base),
                newest: idx.segments.last().map_or(0, |s| s.base),
            };
            (n, keep)
        };
        if n == 0 {
            return;
        }
        // The manifest names the new oldest segment before any file goes, so a crash in
        // between leaves extra files (taken as found on open), never a missing one. Only
        // this thread adds or removes segments, so `n` still holds after the lock.
        if let Err(e) = manifest::store(&stream.dir, keep) {
            tracing::warn!(stream = %stream.name, error = %e, "log retention: cannot update the stream manifest; keeping the segments for now");
            return;
        }
        // A durable group created meanwhile registered its start in the pending commits
        // (under that lock, see subscribe): count again with it, holding the lock until the
        // segments are out of the index. Keeping more than the manifest says is a retention
        // interrupted, which the next round (and open) completes.
        let removed = {
            let commits = lock(&self.commits);
            let min_committed = min_of(&commits);
            let mut idx = lock(&stream.index);
            let n = Self::removable(r, &idx, min_committed).min(n);
            idx.segments.drain(..n).collect::<Vec<_>>()
        };
        for seg in removed {
            tracing::info!(stream = %stream.name, base = seg.base, records = seg.positions.len(), "log retention: removing segment");
            if let Err(e) = std::fs::remove_file(&seg.path) {
                tracing::warn!(path = %seg.path.display(), error = %e, "cannot remove segment");
            }
        }
    }
}

/// Stops the intake when the writer thread ends, however it ends.
struct StopOnExit(Arc<Intake>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.stop();
    }
}
