//! The sync of a round in flight while the writer writes the next one (`Durability::Always`).
//!
//! The writer frames and writes round k, then hands it here: a thread of its own syncs
//! round k's segments, makes its records visible and settles its tickets (waking the
//! publishers), while the writer gathers and writes round k + 1 behind it in the same files.
//! One round is in flight at a time: before the writer hands over round k + 1 it waits for
//! round k's outcome ([`Syncer::finish`]), so rounds are synced, made visible and settled in
//! order, and every publish resolves only after a sync that began after its record was
//! written. A failed sync settles round k with the error and is reported to the writer,
//! which then cuts everything past the visible end (round k and the round written behind
//! it) and writes the round behind it again, synced by itself, as a round of its own.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{SPIN_MAX_PEAK, Staged, Writer, WriterStats, make_visible};
use crate::error::AppendError;
use crate::intake::Intake;
use crate::intake::Records;
use crate::record;
use crate::stream::{StreamShared, lock};

/// A round written by the writer, to be synced, made visible and settled.
pub(super) struct Round {
    /// Every ticket below this is settled with the round.
    pub end: u64,
    /// The round's records per stream, not yet visible.
    pub staged: Vec<Staged>,
    /// The segments to sync (the last of each stream in `staged`).
    pub files: Vec<Arc<File>>,
}

#[derive(Default)]
struct State {
    /// The round handed over and not yet taken by the thread.
    next: Option<Round>,
    /// A round is handed over and its outcome not yet reported.
    busy: bool,
    /// The outcome of the last round, until the writer collects it.
    outcome: Option<Result<(), AppendError>>,
    /// The writer is gone: the thread stops once idle.
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits on it for a round; the writer for an outcome.
    changed: Condvar,
    intake: Arc<Intake>,
    streams: Vec<Arc<StreamShared>>,
    stats: Arc<WriterStats>,
    notify: Arc<Notify>,
    /// How long the last sync took, in nanoseconds.
    sync_nanos: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    /// The thread: syncs each round handed over, then makes it visible and settles it.
    fn run(&self) {
        let mut wake: Vec<Waker> = Vec::new();
        loop {
            let round = {
                let mut st = self.state();
                loop {
                    if let Some(r) = st.next.take() {
                        break r;
                    }
                    if st.stop {
                        return;
                    }
                    st = self.wait(st);
                }
            };
            let started = Instant::now();
            let mut result = Ok(());
            for file in &round.files {
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = file.sync_data() {
                    result = Err(AppendError::Io(format!("sync: {e}")));
                    break;
                }
            }
            let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.sync_nanos.store(took, Ordering::Relaxed);
            if result.is_ok() {
                for s in round.staged {
                    make_visible(&self.streams, &self.stats, s);
                }
                self.notify.notify_waiters();
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
            }
            // Settled (and its publishers woken) before the writer may hand over the next
            // round: rounds settle in order.
            self.intake.settle(round.end, result.clone(), &mut wake);
            let mut st = self.state();
            st.outcome = Some(result);
            st.busy = false;
            drop(st);
            self.changed.notify_all();
        }
    }
}

/// The writer's handle on the sync thread.
pub(super) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread. `None` if it cannot be started (the writer then syncs itself).
    pub fn start(
        intake: Arc<Intake>,
        streams: Vec<Arc<StreamShared>>,
        stats: Arc<WriterStats>,
        notify: Arc<Notify>,
    ) -> Option<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            intake,
            streams,
            stats,
            notify,
            sync_nanos: AtomicU64::new(0),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("switchyard-log-sync".to_owned())
                .spawn(move || shared.run())
        };
        match thread {
            Ok(t) => Some(Self {
                shared,
                thread: Some(t),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "log: cannot start the sync thread; the writer syncs each round itself");
                None
            }
        }
    }

    /// Waits for the round in flight (if any) and returns its outcome (`None` when there was
    /// none since the last call). The round is settled by then.
    pub fn finish(&self) -> Option<Result<(), AppendError>> {
        let mut st = self.shared.state();
        while st.busy {
            st = self.shared.wait(st);
        }
        st.outcome.take()
    }

    /// Hands `round` over. The caller collected the previous round's outcome (`finish`).
    pub fn launch(&self, round: Round) {
        let mut st = self.shared.state();
        st.next = Some(round);
        st.busy = true;
        drop(st);
        self.shared.changed.notify_all();
    }

    /// How long the last sync took.
    pub fn last_sync_cost(&self) -> Duration {
        Duration::from_nanos(self.shared.sync_nanos.load(Ordering::Relaxed))
    }
}

impl Drop for Syncer {
    /// Lets the round in flight finish (it is settled), then stops the thread.
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("log sync thread panicked");
        }
    }
}

impl Writer {
    /// Appends one round (tickets below `end`) and settles it, or hands it to the sync thread
    /// to be synced and settled while the writer goes on with the next round.
    ///
    /// Pipelined only under `Always` with large rounds (after rounds of at most
    /// [`SPIN_MAX_PEAK`] the writer polls for the next publish, which a wait for the sync
    /// thread would delay), while writes work, and when the round cannot roll a segment (a
    /// roll makes records visible as it goes, which must not overtake the round in flight).
    /// Otherwise the round in flight is collected first and this one written and synced here.
    pub(super) fn append_round(&mut self, batch: &Records, end: u64) {
        let pipelined = self.syncer.is_some()
            && self.batch_peak > SPIN_MAX_PEAK
            && self.probe_at.is_none()
            && !self.may_roll(batch);
        if !pipelined {
            // A failed round in flight is cut off and reported; this round is tried anyway.
            let _ = self.finish_in_flight();
            let result = self.append_batch(batch);
            self.intake.settle(end, result, &mut self.wake);
            return;
        }
        // Written while the round before syncs; then wait for that round's outcome.
        let written = self.write_round(batch);
        let before = self.finish_in_flight();
        let result = match (written, before) {
            (Ok(staged), Ok(())) => {
                let mut files = Vec::with_capacity(staged.len());
                for s in &staged {
                    if let Some(slot) = self.in_flight.get_mut(s.stream) {
                        *slot = Some((s.next, s.len));
                    }
                    if let Some((file, _)) = self.streams.get(s.stream).and_then(|st| st.tail()) {
                        files.push(file);
                    }
                }
                if let Some(syncer) = &self.syncer {
                    syncer.launch(Round { end, staged, files });
                    return;
                }
                Err(AppendError::Io("log sync thread is gone".to_owned()))
            }
            // The round before failed: everything past the visible end, this round too, was
            // cut off by `finish_in_flight`. This round is written again and synced here, on
            // its own (it fails only if the disk fails it too).
            (_, Err(_)) => self.append_batch(batch),
            (Err(e), Ok(())) => {
                self.fail_written(&e);
                Err(e)
            }
        };
        self.intake.settle(end, result, &mut self.wake);
    }

    /// Whether writing `batch` behind what is written could pass `segment_bytes` (and roll).
    fn may_roll(&self, batch: &Records) -> bool {
        let most = (batch.bytes.len() + batch.ends.len() * record::HEADER) as u64;
        self.streams.iter().enumerate().any(|(i, s)| {
            batch.ends.iter().any(|&(j, _)| j == i) && {
                let len = match self.in_flight.get(i) {
                    Some(&Some((_, len))) => len,
                    _ => s.tail().map_or(0, |(_, len)| len),
                };
                len + most >= self.config.segment_bytes
            }
        })
    }

    /// Frames and writes the records of `batch`, staged (not visible, not synced).
    fn write_round(&mut self, batch: &Records) -> Result<Vec<Staged>, AppendError> {
        let n = self.streams.len();
        let mut staged = Vec::new();
        for i in 0..n {
            if batch.ends.iter().any(|&(j, _)| j == i) {
                staged.push(self.write_stream(i, batch)?);
            }
        }
        Ok(staged)
    }

    /// Waits for the round in flight (if any); it is settled by then. If its sync failed,
    /// cuts everything written past the visible end (it and any round written behind it)
    /// and records the failure.
    pub(super) fn finish_in_flight(&mut self) -> Result<(), AppendError> {
        let Some(outcome) = self.syncer.as_ref().and_then(Syncer::finish) else {
            return Ok(());
        };
        for slot in &mut self.in_flight {
            *slot = None;
        }
        if let Some(syncer) = &self.syncer {
            self.last_sync_cost = syncer.last_sync_cost();
        }
        outcome.inspect_err(|e| self.fail_written(e))
    }

    /// After a failed write or sync: cuts every stream back to its visible end and records
    /// the failure (`When writes fail` in docs/log.md).
    fn fail_written(&mut self, e: &AppendError) {
        for i in 0..self.streams.len() {
            self.discard(i);
        }
        self.stats.failure.failed(e);
        self.probe_at = Some(Instant::now() + crate::health::PROBE_EVERY);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::task::{Context, Poll};

    use super::*;
    use crate::config::Recovery;
    use crate::intake::Unsettled;

    /// A stream in a temporary directory, and a sync thread for it.
    fn setup() -> (tempfile::TempDir, Arc<Intake>, Arc<StreamShared>, Syncer) {
        let dir = tempfile::tempdir().unwrap();
        let stream = Arc::new(
            StreamShared::open(
                "s".to_owned(),
                dir.path().join("s"),
                Vec::new(),
                Recovery::Strict,
            )
            .unwrap(),
        );
        let intake = Arc::new(Intake::new());
        let syncer = Syncer::start(
            intake.clone(),
            vec![stream.clone()],
            Arc::new(WriterStats::default()),
            Arc::new(Notify::new()),
        )
        .unwrap();
        (dir, intake, stream, syncer)
    }

    /// Two publishes taken as one round: their tickets and the round's end.
    fn round_of_two(intake: &Intake) -> (Vec<u64>, u64) {
        let tickets = (0..2)
            .map(|_| {
                intake
                    .submit(b"r", &[(0, 1)], Waker::noop().clone())
                    .unwrap()
            })
            .collect();
        let end = intake.take(&mut Records::default()).end;
        (tickets, end)
    }

    fn poll(intake: &Intake, ticket: u64) -> Poll<Result<(), Unsettled>> {
        intake.poll_ticket(ticket, &mut Context::from_waker(Waker::noop()))
    }

    fn visible(stream: &StreamShared) -> (usize, u64) {
        let idx = lock(&stream.index);
        let seg = idx.segments.last().unwrap();
        (seg.positions.len(), seg.len)
    }

    #[test]
    fn a_synced_round_is_made_visible_and_settled_before_its_outcome_is_reported() {
        let (_dir, intake, stream, syncer) = setup();
        let (tickets, end) = round_of_two(&intake);
        let (before, len) = visible(&stream);
        let (file, _) = stream.tail().unwrap();
        syncer.launch(Round {
            end,
            staged: vec![Staged {
                stream: 0,
                positions: vec![len as u32, len as u32 + 20],
                len: len + 40,
                next: 2,
            }],
            files: vec![file],
        });
        assert!(matches!(syncer.finish(), Some(Ok(()))));
        assert_eq!(visible(&stream), (before + 2, len + 40));
        for t in tickets {
            assert!(matches!(poll(&intake, t), Poll::Ready(Ok(()))));
        }
        assert!(syncer.finish().is_none(), "an outcome is reported once");
    }

    #[test]
    fn a_failed_sync_fails_its_round_and_leaves_it_invisible() {
        let (_dir, intake, stream, syncer) = setup();
        // A file that cannot be synced: fdatasync of a pipe is EINVAL.
        let (reader, _writer) = std::io::pipe().unwrap();
        let unsyncable = File::from(std::os::fd::OwnedFd::from(reader));
        assert!(
            unsyncable.sync_data().is_err(),
            "precondition: a pipe cannot be synced"
        );
        let (tickets, end) = round_of_two(&intake);
        let before = visible(&stream);
        syncer.launch(Round {
            end,
            staged: vec![Staged {
                stream: 0,
                positions: vec![8],
                len: 100,
                next: 1,
            }],
            files: vec![Arc::new(unsyncable)],
        });
        assert!(matches!(syncer.finish(), Some(Err(AppendError::Io(_)))));
        assert_eq!(visible(&stream), before, "nothing of the round is visible");
        for t in tickets {
            assert!(matches!(
                poll(&intake, t),
                Poll::Ready(Err(Unsettled::Failed(AppendError::Io(_))))
            ));
        }
    }

    #[test]
    fn dropping_the_syncer_finishes_the_round_handed_over() {
        let (_dir, intake, stream, syncer) = setup();
        let (tickets, end) = round_of_two(&intake);
        let (file, len) = stream.tail().unwrap();
        syncer.launch(Round {
            end,
            staged: vec![Staged {
                stream: 0,
                positions: vec![len as u32],
                len: len + 20,
                next: 1,
            }],
            files: vec![file],
        });
        drop(syncer);
        for t in tickets {
            assert!(matches!(poll(&intake, t), Poll::Ready(Ok(()))));
        }
    }
}
