//! The writer thread: the only code that appends to segments.
//!
//! It owns the tail of every stream and stops when it receives `Close` or every sender is
//! gone. Publishers hand it encoded envelopes (one buffer per publish) and wait on a oneshot;
//! the thread takes every request queued at that moment as one batch (waiting briefly for
//! the rest of the previous batch's publishers, see `gather_stragglers`), frames it into one
//! reused buffer, writes it with one `write` per stream, syncs each touched segment once
//! (group commit under `Durability::Always`), makes the records visible to consumers and
//! only then answers. The last segment of each stream carries zeros written ahead of the
//! data (`PREALLOC`), trimmed at a roll and at close. It also writes committed group offsets
//! (every `commit_interval`) and enforces retention.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, oneshot};

use crate::config::{Durability, LogConfig};
use crate::error::AppendError;
use crate::fsio;
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
}

/// Committed offsets waiting to be written: (stream index, group) → offset.
pub(crate) type PendingCommits = Arc<Mutex<HashMap<(usize, String), u64>>>;

/// Where the writer answers an append, flush or close.
pub(crate) type Reply = oneshot::Sender<Result<(), AppendError>>;

/// The encoded envelopes of one publish, in order, back to back in one buffer (one
/// allocation per publish rather than one per record).
#[derive(Debug, Default)]
pub(crate) struct Records {
    /// The encodings, concatenated.
    pub bytes: Vec<u8>,
    /// (stream index, end of its encoding in `bytes`) of each record.
    pub ends: Vec<(usize, usize)>,
}

impl Records {
    /// (stream index, encoding) of each record, in order.
    fn iter(&self) -> impl Iterator<Item = (usize, &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(stream, end)| {
            let rec = self.bytes.get(start..end).unwrap_or(&[]);
            start = end;
            (stream, rec)
        })
    }
}

/// A request to the writer thread.
pub(crate) enum WriterMsg {
    /// Append encoded envelopes in order.
    Append {
        records: Records,
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    /// Sync everything and write pending commits.
    Flush {
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    /// Enforce retention now.
    Retention {
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
    /// Flush, then stop.
    Close {
        reply: oneshot::Sender<Result<(), AppendError>>,
    },
}

/// Records written to the last segment of a stream but not yet visible.
struct Staged {
    stream: usize,
    positions: Vec<u32>,
    len: u64,
}

pub(crate) struct Writer {
    pub rx: Receiver<WriterMsg>,
    pub streams: Vec<Arc<StreamShared>>,
    pub config: LogConfig,
    pub commits: PendingCommits,
    pub notify: Arc<Notify>,
    pub stats: Arc<WriterStats>,
    dirty: Vec<bool>,
    /// Recent largest number of publishes in one batch (see `gather_stragglers`).
    batch_peak: usize,
    /// How long the last group-commit sync took.
    last_sync_cost: Duration,
    last_sync: Instant,
    last_commit: Instant,
    last_retention: Instant,
    /// Whether the last round appended: then the next request is likely a few microseconds
    /// away and the thread polls for it briefly before sleeping (see `SPIN`).
    busy: bool,
    /// Reused per round: requests taken, appends of the round, streams touched, frames.
    msgs: Vec<WriterMsg>,
    appends: Vec<(Records, Reply)>,
    touched: Vec<bool>,
    buf: Vec<u8>,
    /// Size on disk of the last segment of each stream: past its visible end the file holds
    /// zeros written ahead of time (see [`PREALLOC`]).
    alloc_end: Vec<u64>,
}

const MAX_BATCH_MSGS: usize = 4096;

/// How long the thread polls for the next request after a round that appended, before it
/// sleeps. Waking a sleeping thread costs tens of microseconds on some machines (virtual
/// CPUs that halt when idle), more than a publisher that was just answered takes to come
/// back; polling (which yields the CPU between looks) costs at most this much CPU per round.
const SPIN: Duration = Duration::from_micros(50);

/// While gathering a batch, stop waiting once no publish has arrived for this long.
const STALL: Duration = Duration::from_micros(40);

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
        rx: Receiver<WriterMsg>,
        streams: Vec<Arc<StreamShared>>,
        config: LogConfig,
        commits: PendingCommits,
        notify: Arc<Notify>,
        stats: Arc<WriterStats>,
    ) -> Self {
        let now = Instant::now();
        let n = streams.len();
        Self {
            rx,
            streams,
            config,
            commits,
            notify,
            stats,
            dirty: vec![false; n],
            batch_peak: 0,
            last_sync_cost: Duration::ZERO,
            last_sync: now,
            last_commit: now,
            last_retention: now,
            busy: false,
            msgs: Vec::new(),
            appends: Vec::new(),
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
            let tail = lock(&stream.index)
                .segments
                .last()
                .map(|s| (s.file.clone(), s.len));
            let Some((file, len)) = tail else {
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

    /// Polls for a request for up to [`SPIN`]; `None` if none came (or the channel closed:
    /// the blocking receive that follows sees that).
    fn spin_recv(&self) -> Option<WriterMsg> {
        let until = Instant::now() + SPIN;
        loop {
            for _ in 0..64 {
                match self.rx.try_recv() {
                    Ok(m) => return Some(m),
                    Err(TryRecvError::Disconnected) => return None,
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                }
            }
            if Instant::now() >= until {
                return None;
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
        due.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    fn retention_enabled(&self) -> bool {
        let r = self.config.retention;
        r.max_bytes.is_some() || r.max_age.is_some() || r.delete_consumed
    }

    /// The thread's main loop.
    pub fn run(mut self) {
        loop {
            let spun = if self.busy { self.spin_recv() } else { None };
            let first = match spun {
                Some(m) => Some(m),
                None => match self.rx.recv_timeout(self.next_wakeup()) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = self.sync_all();
                        let _ = self.trim_all();
                        self.write_commits();
                        return;
                    }
                },
            };
            let mut msgs = std::mem::take(&mut self.msgs);
            msgs.extend(first);
            while msgs.len() < MAX_BATCH_MSGS {
                match self.rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.gather_stragglers(&mut msgs);
            let mut appends = std::mem::take(&mut self.appends);
            let mut flushes = Vec::new();
            let mut closing = None;
            for m in msgs.drain(..) {
                match m {
                    WriterMsg::Append { records, reply } => appends.push((records, reply)),
                    WriterMsg::Flush { reply } => flushes.push(reply),
                    WriterMsg::Retention { reply } => {
                        for i in 0..self.streams.len() {
                            self.enforce_retention(i);
                        }
                        let _ = reply.send(Ok(()));
                    }
                    WriterMsg::Close { reply } => {
                        closing = Some(reply);
                        break;
                    }
                }
            }
            self.msgs = msgs;
            self.busy = !appends.is_empty();
            if self.busy {
                self.append_batch(&mut appends);
            }
            self.appends = appends;
            self.periodic();
            if !flushes.is_empty() || closing.is_some() {
                let mut result = self.sync_all();
                if closing.is_some() && result.is_ok() {
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
            }
        }
    }

    /// Group commit under `Always`: publishers answered by the previous sync come back a few
    /// microseconds apart, so a batch taken the instant the first one arrives is often small
    /// and the next sync serves few (with N publishers in flight, batches settle at N/2: one
    /// half waits for the sync the other half is in). When this batch has fewer publishes
    /// than recent ones, poll for the rest for at most half the last sync's duration (and at
    /// most 1 ms), and stop early once none has arrived for [`STALL`]. Polling yields the
    /// CPU between looks, so the publishers it waits for can run; sleeping instead would
    /// oversleep by the timer slack (50 µs on Linux), longer than the wait itself.
    fn gather_stragglers(&mut self, msgs: &mut Vec<WriterMsg>) {
        let appends = |m: &[WriterMsg]| {
            m.iter()
                .filter(|m| matches!(m, WriterMsg::Append { .. }))
                .count()
        };
        let mut n = appends(msgs);
        if self.config.durability != Durability::Always || n == 0 {
            return;
        }
        let target = self.batch_peak;
        let start = Instant::now();
        let deadline = start + (self.last_sync_cost / 2).min(Duration::from_millis(1));
        let mut last_arrival = start;
        'wait: while n < target && msgs.len() < MAX_BATCH_MSGS {
            loop {
                match self.rx.try_recv() {
                    Ok(m) => {
                        let is_append = matches!(m, WriterMsg::Append { .. });
                        msgs.push(m);
                        if !is_append {
                            break 'wait;
                        }
                        n += 1;
                        last_arrival = Instant::now();
                        if n >= target || msgs.len() >= MAX_BATCH_MSGS {
                            break 'wait;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'wait,
                }
            }
            let now = Instant::now();
            if now >= deadline || now.duration_since(last_arrival) >= STALL {
                break;
            }
            std::thread::yield_now();
        }
        // The peak follows increases at once and decays by an eighth (at least one) per
        // batch, so a drop in concurrency stops costing waits after a few batches.
        let decayed = self.batch_peak - self.batch_peak.div_ceil(8);
        self.batch_peak = n.max(decayed);
    }

    fn periodic(&mut self) {
        let now = Instant::now();
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
        let pending: Vec<_> = lock(&self.commits).drain().collect();
        let mut by_stream: HashMap<usize, Vec<(String, u64)>> = HashMap::new();
        for ((i, group), offset) in pending {
            by_stream.entry(i).or_default().push((group, offset));
        }
        for (i, moved) in by_stream {
            let Some(stream) = self.streams.get(i) else {
                continue;
            };
            let mut all = lock(&stream.committed).clone();
            all.extend(moved.iter().cloned());
            match offsets::store_all(&stream.dir.join("groups"), &all) {
                Ok(()) => *lock(&stream.committed) = all,
                Err(e) => {
                    tracing::warn!(stream = %stream.name, error = %e, "cannot write committed offsets; will retry");
                    let mut commits = lock(&self.commits);
                    for (group, offset) in moved {
                        commits.entry((i, group)).or_insert(offset);
                    }
                }
            }
        }
    }

    /// Writes, syncs (under `Always`) and publishes the records of `appends`, then answers
    /// every publisher; leaves `appends` empty.
    fn append_batch(&mut self, appends: &mut Vec<(Records, Reply)>) {
        let n = self.streams.len();
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        touched.resize(n, false);
        for (records, _) in appends.iter() {
            for &(i, _) in &records.ends {
                if let Some(t) = touched.get_mut(i) {
                    *t = true;
                }
            }
        }
        let mut result = Ok(());
        let mut staged = Vec::new();
        for i in (0..n).filter(|&i| touched[i]) {
            match self.write_stream(i, appends) {
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
                for s in staged {
                    self.publish(s);
                }
                self.notify.notify_waiters();
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                for i in (0..n).filter(|&i| touched[i]) {
                    self.discard(i);
                }
            }
        }
        self.touched = touched;
        for (_, reply) in appends.drain(..) {
            let _ = reply.send(result.clone());
        }
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

    /// Drops bytes written past the visible end of a stream after a failed batch.
    fn discard(&mut self, i: usize) {
        let Some(stream) = self.streams.get(i) else {
            return;
        };
        let tail = lock(&stream.index)
            .segments
            .last()
            .map(|s| (s.file.clone(), s.len));
        if let Some((file, len)) = tail {
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

    /// Writes the records of stream `i` in `appends` (in order) with one `write` (more at a
    /// segment roll), framing them in a buffer kept between rounds.
    fn write_stream(
        &mut self,
        i: usize,
        appends: &[(Records, Reply)],
    ) -> Result<Staged, AppendError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let records = appends
            .iter()
            .flat_map(|(r, _)| r.iter())
            .filter(|&(s, _)| s == i)
            .map(|(_, rec)| rec);
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
            record::frame(next, rec, buf);
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

    /// Removes whole closed segments that retention no longer keeps.
    fn enforce_retention(&mut self, i: usize) {
        let Some(stream) = self.streams.get(i) else {
            return;
        };
        let r = self.config.retention;
        let min_committed = if r.delete_consumed {
            lock(&stream.committed).values().copied().min()
        } else {
            None
        };
        let (n, keep) = {
            let idx = lock(&stream.index);
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
        let removed = lock(&stream.index).segments.drain(..n).collect::<Vec<_>>();
        for seg in removed {
            tracing::info!(stream = %stream.name, base = seg.base, records = seg.positions.len(), "log retention: removing segment");
            if let Err(e) = std::fs::remove_file(&seg.path) {
                tracing::warn!(path = %seg.path.display(), error = %e, "cannot remove segment");
            }
        }
    }
}
