use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use tokio::time::Instant;

use super::{BreakerConfig, FailureThreshold};
use crate::metrics::names;

/// The three states of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls are held back until the cool-down ends.
    Open,
    /// A limited number of trial calls decide between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the `switchyard_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change of a breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerEvent {
    /// The handler the breaker protects.
    pub handler: SmolStr,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// When it changed (wall clock).
    pub at: SystemTime,
    /// Failures counted in the window when it changed.
    pub failures: u32,
    /// Calls counted in the window when it changed.
    pub calls: u32,
}

impl BreakerEvent {
    /// The bus event topic for this change: `switchyard.breaker.opened`,
    /// `switchyard.breaker.half_opened` or `switchyard.breaker.closed`.
    pub fn topic(&self) -> &'static str {
        match self.to {
            BreakerState::Open => "switchyard.breaker.opened",
            BreakerState::HalfOpen => "switchyard.breaker.half_opened",
            BreakerState::Closed => "switchyard.breaker.closed",
        }
    }
}

/// A point-in-time view of a breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerSnapshot {
    /// The handler.
    pub handler: SmolStr,
    /// Current state.
    pub state: BreakerState,
    /// Failures in the current window.
    pub failures: u32,
    /// Calls in the current window.
    pub calls: u32,
    /// How many times it has opened.
    pub times_opened: u64,
}

const BUCKETS: u64 = 10;
const TAG_MASK: u64 = 0xFFFF_FFFF;
const COUNT_MASK: u64 = 0xFFFF_FFFF;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: go ahead (outcomes recorded under this generation).
    Normal(u64),
    /// Half-open: a trial slot was reserved for the caller.
    Trial(u64),
    /// Open until this instant.
    WaitUntil(Instant),
    /// Half-open with every trial slot taken; wait for a trial to finish.
    WaitForTrial,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    generation: u64,
    buckets: VecDeque<Bucket>,
    open_until: Option<Instant>,
    trials_admitted: u32,
    trial_successes: u32,
    times_opened: u64,
    waiters: Vec<Waker>,
}

pub(crate) struct Shared {
    pub(crate) name: SmolStr,
    pub(crate) config: BreakerConfig,
    epoch: Instant,
    /// Length of one window bucket, nanoseconds.
    bucket_nanos: u64,
    /// Successes of a closed breaker with a count threshold, recorded without the lock (they
    /// cannot trip it): `bucket index << 32 | count` per slot, slot = index % BUCKETS. Their
    /// buckets follow the time-stamp counter from `counter_epoch` (cheaper to read than the
    /// tokio clock; the same time except under tokio's paused clock, where only this
    /// informational count of calls differs).
    successes: [AtomicU64; BUCKETS as usize],
    counter_epoch: quanta::Instant,
    /// `counter_epoch` as a raw time-stamp counter reading.
    counter_epoch_raw: u64,
    /// `2^64 / bucket_nanos`: a bucket index by multiplication instead of division.
    bucket_reciprocal: u64,
    inner: Mutex<Inner>,
    /// `generation << 2 | state`, updated under the state lock: lets a closed breaker admit
    /// callers without locking.
    mirror: AtomicU64,
    pending_events: Mutex<VecDeque<BreakerEvent>>,
    dispatch: Mutex<()>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

impl Shared {
    pub(crate) fn new(name: SmolStr, config: BreakerConfig) -> Self {
        let clock = quanta::Clock::new();
        let counter_epoch_raw = clock.raw();
        let counter_epoch = clock.scaled(counter_epoch_raw);
        let bucket_nanos =
            crate::clock::nanos((config.window / BUCKETS as u32).max(Duration::from_millis(1)));
        let shared = Self {
            name,
            config,
            epoch: Instant::now(),
            bucket_nanos,
            successes: Default::default(),
            counter_epoch,
            counter_epoch_raw,
            bucket_reciprocal: u64::try_from(
                u128::from(u64::MAX) / u128::from(bucket_nanos.max(1)),
            )
            .unwrap_or(u64::MAX),
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                buckets: VecDeque::with_capacity(BUCKETS as usize + 1),
                open_until: None,
                trials_admitted: 0,
                trial_successes: 0,
                times_opened: 0,
                waiters: Vec::new(),
            }),
            mirror: AtomicU64::new(u64::from(BreakerState::Closed.to_u8())),
            pending_events: Mutex::new(VecDeque::new()),
            dispatch: Mutex::new(()),
        };
        ::metrics::gauge!(names::BREAKER_STATE, "handler" => shared.name.to_string())
            .set(BreakerState::Closed.as_gauge());
        shared
    }

    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8((self.mirror.load(Ordering::Acquire) & 0b11) as u8)
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let since = crate::clock::nanos(now.saturating_duration_since(self.epoch));
        since / self.bucket_nanos.max(1)
    }

    /// The success-ring bucket of `t`.
    #[inline]
    pub(crate) fn counter_index(&self, t: quanta::Instant) -> u64 {
        self.counter_bucket(crate::clock::nanos(t.duration_since(self.counter_epoch)))
    }

    /// The success-ring bucket of the raw reading `raw` of `clock` (a `quanta::Clock`, all of
    /// which share one calibration): the same bucket as [`counter_index`](Self::counter_index)
    /// of that reading scaled (give or take a nanosecond), without scaling it to an instant
    /// and going through a `Duration`.
    #[inline]
    pub(crate) fn counter_index_raw(&self, clock: &quanta::Clock, raw: u64) -> u64 {
        self.counter_bucket(clock.delta_as_nanos(self.counter_epoch_raw, raw))
    }

    /// The success-ring bucket `since` nanoseconds after the counter's epoch.
    #[inline]
    fn counter_bucket(&self, since: u64) -> u64 {
        // floor(since / bucket_nanos), give or take one at a bucket's edge.
        ((u128::from(since) * u128::from(self.bucket_reciprocal)) >> 64) as u64
    }

    fn totals(&self, inner: &mut Inner, now: Instant) -> (u32, u32) {
        let current = self.bucket_index(now);
        let oldest = current.saturating_sub(BUCKETS - 1);
        while inner.buckets.front().is_some_and(|b| b.index < oldest) {
            inner.buckets.pop_front();
        }
        let (calls, failures) = inner.buckets.iter().fold((0u32, 0u32), |(c, f), b| {
            (c.saturating_add(b.calls), f.saturating_add(b.failures))
        });
        let ring_now = self.counter_index(quanta::Instant::now());
        let ring_oldest = ring_now.saturating_sub(BUCKETS - 1);
        let fast = self.successes.iter().fold(0u32, |sum, slot| {
            let v = slot.load(Ordering::Relaxed);
            let tag = v >> 32;
            let window = (ring_oldest & TAG_MASK)..=(ring_now & TAG_MASK);
            // Tags are the low 32 bits of the index; a wrapped window is only a counting
            // blur every 2^32 buckets.
            if window.contains(&tag) {
                sum.saturating_add((v & COUNT_MASK) as u32)
            } else {
                sum
            }
        });
        (calls.saturating_add(fast), failures)
    }

    /// Counts a success of a closed breaker with a count threshold without taking the lock.
    #[inline]
    fn count_success(&self, index: u64) {
        let tag = index & TAG_MASK;
        let slot = &self.successes[(index % BUCKETS) as usize];
        let mut v = slot.load(Ordering::Relaxed);
        loop {
            if v >> 32 == tag && v & COUNT_MASK != COUNT_MASK {
                slot.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if v >> 32 == tag {
                return; // 2^32 successes in one bucket: saturated
            }
            match slot.compare_exchange_weak(v, tag << 32 | 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now_v) => v = now_v,
            }
        }
    }

    /// The generation of a closed breaker (a caller may go ahead, nothing else to do), read
    /// without the lock; `None` in any other state.
    #[inline]
    pub(crate) fn admit_closed(&self) -> Option<u64> {
        let mirror = self.mirror.load(Ordering::Acquire);
        (mirror & 0b11 == u64::from(BreakerState::Closed.to_u8())).then_some(mirror >> 2)
    }

    /// Decides whether a caller may go ahead now, moving open → half-open when the cool-down
    /// is over. Registers `waker` when the caller must wait.
    pub(crate) fn admit(&self, waker: Option<&Waker>) -> Admission {
        if let Some(generation) = self.admit_closed() {
            return Admission::Normal(generation);
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::Open {
            match inner.open_until {
                Some(until) if now < until => {
                    register(&mut inner, waker);
                    return Admission::WaitUntil(until);
                }
                _ => self.transition(&mut inner, BreakerState::HalfOpen, now),
            }
        }
        let admission = match inner.state {
            BreakerState::Closed => Admission::Normal(inner.generation),
            BreakerState::HalfOpen if inner.trials_admitted < self.config.trial_calls => {
                inner.trials_admitted += 1;
                Admission::Trial(inner.generation)
            }
            _ => {
                register(&mut inner, waker);
                Admission::WaitForTrial
            }
        };
        drop(inner);
        self.flush_events();
        admission
    }

    /// Gives back a trial slot that was reserved but never used.
    pub(crate) fn release_trial(&self, generation: u64) {
        let mut inner = self.inner.lock();
        if inner.generation == generation && inner.state == BreakerState::HalfOpen {
            inner.trials_admitted = inner.trials_admitted.saturating_sub(1);
            wake_all(&mut inner);
        }
    }

    /// Records the result of a call admitted under `generation`, which ended in the
    /// success-ring bucket `ended` gives ([`counter_index`](Self::counter_index) or
    /// [`counter_index_raw`](Self::counter_index_raw) of a time-stamp counter reading, worked
    /// out only for a success it counts; the tokio clock is read here only when the lock is
    /// taken).
    #[inline]
    pub(crate) fn record(
        &self,
        generation: u64,
        trial: bool,
        failed: bool,
        ended: impl FnOnce(&Self) -> u64,
    ) {
        if !trial
            && !failed
            && matches!(self.config.threshold, FailureThreshold::Count(_))
            && self.mirror.load(Ordering::Acquire) == generation << 2
        {
            // Closed (state bits 0) under the same generation: a success cannot trip a count
            // threshold, so only the window's call count changes.
            self.count_success(ended(self));
            return;
        }
        self.record_locked(generation, trial, failed);
    }

    /// [`Shared::record`] under the state lock: every result but a closed breaker's success
    /// with a count threshold.
    fn record_locked(&self, generation: u64, trial: bool, failed: bool) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            // Admitted before the last state change: its result says nothing about now.
            return;
        }
        match (inner.state, trial) {
            (BreakerState::Closed, _) => {
                let index = self.bucket_index(now);
                match inner.buckets.back_mut() {
                    Some(b) if b.index == index => {
                        b.calls = b.calls.saturating_add(1);
                        b.failures = b.failures.saturating_add(u32::from(failed));
                    }
                    _ => inner.buckets.push_back(Bucket {
                        index,
                        calls: 1,
                        failures: u32::from(failed),
                    }),
                }
                let (calls, failures) = self.totals(&mut inner, now);
                let trip = match self.config.threshold {
                    FailureThreshold::Count(n) => failed && failures >= n,
                    FailureThreshold::Ratio { ratio, min_calls } => {
                        calls >= min_calls && f64::from(failures) >= ratio * f64::from(calls)
                    }
                };
                if trip {
                    self.transition(&mut inner, BreakerState::Open, now);
                }
            }
            (BreakerState::HalfOpen, true) => {
                if failed {
                    self.transition(&mut inner, BreakerState::Open, now);
                } else {
                    inner.trial_successes += 1;
                    if inner.trial_successes >= self.config.trial_calls {
                        self.transition(&mut inner, BreakerState::Closed, now);
                    }
                }
            }
            _ => {}
        }
        drop(inner);
        self.flush_events();
    }

    pub(crate) fn force(&self, to: BreakerState) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if inner.state != to {
            self.transition(&mut inner, to, now);
        }
        drop(inner);
        self.flush_events();
    }

    pub(crate) fn snapshot(&self) -> BreakerSnapshot {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let (calls, failures) = self.totals(&mut inner, now);
        BreakerSnapshot {
            handler: self.name.clone(),
            state: inner.state,
            failures,
            calls,
            times_opened: inner.times_opened,
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, now: Instant) {
        let from = inner.state;
        let (calls, failures) = self.totals(inner, now);
        inner.state = to;
        inner.generation += 1;
        inner.trials_admitted = 0;
        inner.trial_successes = 0;
        match to {
            BreakerState::Open => {
                inner.open_until = Some(crate::clock::deadline(now, self.config.cool_down));
                inner.times_opened += 1;
            }
            BreakerState::Closed => {
                inner.open_until = None;
                inner.buckets.clear();
                for slot in &self.successes {
                    slot.store(0, Ordering::Relaxed);
                }
            }
            BreakerState::HalfOpen => inner.open_until = None,
        }
        self.mirror.store(
            inner.generation << 2 | u64::from(to.to_u8()),
            Ordering::Release,
        );
        ::metrics::gauge!(names::BREAKER_STATE, "handler" => self.name.to_string())
            .set(to.as_gauge());
        if to == BreakerState::Open {
            ::metrics::counter!(names::BREAKER_OPENED, "handler" => self.name.to_string())
                .increment(1);
        }
        ::tracing::info!(handler = %self.name, %from, %to, failures, calls, "circuit breaker changed state");
        wake_all(inner);
        if self.config.observer.is_some() {
            self.pending_events.lock().push_back(BreakerEvent {
                handler: self.name.clone(),
                from,
                to,
                at: SystemTime::now(),
                failures,
                calls,
            });
        }
    }

    /// Delivers queued events to the observer, in order, outside the state lock. Re-entrant
    /// calls (an observer that changes the breaker) leave their events to the running loop.
    fn flush_events(&self) {
        let Some(observer) = &self.config.observer else {
            return;
        };
        loop {
            let Some(guard) = self.dispatch.try_lock() else {
                return;
            };
            loop {
                let next = self.pending_events.lock().pop_front();
                match next {
                    Some(ev) => observer(&ev),
                    None => break,
                }
            }
            drop(guard);
            if self.pending_events.lock().is_empty() {
                return;
            }
        }
    }
}

fn register(inner: &mut Inner, waker: Option<&Waker>) {
    if let Some(w) = waker
        && !inner.waiters.iter().any(|x| x.will_wake(w))
    {
        inner.waiters.push(w.clone());
    }
}

fn wake_all(inner: &mut Inner) {
    for w in inner.waiters.drain(..) {
        w.wake();
    }
}

/// A cheap-clone handle to one breaker: read its state, force it open or closed.
#[derive(Debug, Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl BreakerHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The handler name.
    pub fn handler(&self) -> &str {
        &self.shared.name
    }

    /// The current state. An open breaker whose cool-down has passed reports `Open` until the
    /// next readiness poll moves it to half-open.
    pub fn state(&self) -> BreakerState {
        self.shared.state()
    }

    /// State plus window counters.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.snapshot()
    }

    /// Opens the breaker now (e.g. a dependency reported itself down).
    pub fn trip(&self) {
        self.shared.force(BreakerState::Open);
    }

    /// Closes the breaker now and clears its window.
    pub fn reset(&self) {
        self.shared.force(BreakerState::Closed);
    }
}
