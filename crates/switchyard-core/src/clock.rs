//! Message times: the system clock, read through the CPU's time-stamp counter.
//!
//! Every message gets a wall-clock time when it is made (its [`timestamp`] and the time part
//! of its [`MessageId`]) and when it is first handed to a handler
//! ([`first_delivered_at`]). [`now`] gives those times. A plain `SystemTime::now()` costs
//! about 34 ns on a Linux machine with the `tsc` clock source (the vDSO's `clock_gettime`)
//! against about 10 ns for reading the counter, and a round trip reads the clock three times:
//! in process, those reads were about a sixth of a message's time on the bus.
//!
//! # How it reads
//!
//! Each thread keeps an *anchor*: a counter reading and the `SystemTime::now()` taken just
//! before it. A read within [`ANCHOR_SPAN`] of counter time after the anchor is the anchor's
//! system time plus the counter's elapsed time, converted to nanoseconds with
//! [`quanta`]'s calibration and shortened by one part in 1024 (below). A later read, or one
//! whose counter reads lower than the anchor's (a thread moved to a core whose counter lags),
//! takes a new anchor from the system clock and returns its time. So:
//!
//! - **A step of the system clock** (NTP stepping it, an administrator setting it) shows up
//!   in every thread's readings within [`ANCHOR_SPAN`] of it; a slew (NTP's gradual
//!   correction, at most 500 ppm) changes the rate only within a span, where it moves a
//!   reading by at most 0.5 µs.
//! - **A reading is never later than the anchor's system time plus the counter's elapsed
//!   time**, and runs slow against it by 1/1024 (≈ 977 ppm, at most ≈ 1 µs at the span's
//!   end). So it is not later than the system clock read at the same moment unless the
//!   counter's calibrated rate is off from the system clock's by more than that, and the next
//!   anchor steps forward to the system clock rather than back: the readings of one thread go
//!   on increasing across anchors, which keeps a thread's [`MessageId`]s in creation order.
//!   The price is that a reading may trail the system clock by about 1.5 µs (the bias, a slew
//!   against it, and the few nanoseconds between the anchor's two reads). How far off the
//!   calibrated rate can be is not bounded by quanta: it calibrates against the monotonic
//!   clock (itself slewed by NTP, so the slew then and now may differ by up to 1000 ppm), and
//!   a preemption between its reads skews the ratio; measured on the 2-core VM no reading was
//!   ever ahead of a later `SystemTime::now()` (25 processes of 11 M reads, review rev2), but
//!   code must not compare message times strictly with system clock reads.
//! - **These promises assume the cores' counters agree**, as the kernel requires before it
//!   uses `tsc` as its clock source. Where they do not (quanta may still trust the counter), a
//!   thread moved to a core whose counter lags by less than the time since its anchor reads
//!   earlier than before (ids stay unique: `id.rs` continues or redraws the run), and one moved
//!   to a core ahead reads later than the system clock by the difference, until its next anchor.
//! - **Where quanta has no counter** (a CPU without an invariant time-stamp counter, an
//!   architecture other than x86-64 and AArch64), quanta's clock is the monotonic clock,
//!   which costs as much as the system clock: [`now`] is then `SystemTime::now()` itself.
//!
//! The span is 1 ms, the resolution of a ULID's time part: a new anchor costs one system
//! clock read per thread and millisecond of use (≤ 0.003% of a busy thread's time), and a
//! longer span would save nothing measurable while letting a clock step show later.
//!
//! The first read in a process calibrates the counter (quanta's one-off loop, shared with
//! every other quanta clock in the process: at least 0.5 ms, at most 200 ms); building a bus
//! makes that read, so the first publish does not pay it.
//!
//! Not for timeouts and deadlines: those use monotonic instants (tokio's or `std`'s), which
//! a step of the system clock does not move.
//!
//! [`timestamp`]: crate::Envelope::timestamp
//! [`first_delivered_at`]: crate::DeliveryInfo::first_delivered_at
//! [`MessageId`]: crate::MessageId

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// How long (in counter time) one thread's anchor serves before [`now`] takes a new one
/// from the system clock: the longest a step of the system clock takes to show up.
pub const ANCHOR_SPAN: Duration = Duration::from_millis(1);

/// [`ANCHOR_SPAN`] in nanoseconds.
const SPAN_NANOS: u64 = 1_000_000;

/// Readings run slow by one part in `2^SLOW_SHIFT` of the time since their anchor (see the
/// module docs): 1/1024, about 977 ppm, twice the fastest NTP slew.
const SLOW_SHIFT: u32 = 10;

/// The wall-clock time now, for a message's times (see the [module docs](self)): at most
/// about 1.5 µs behind `SystemTime::now()` and, where the CPU has an invariant time-stamp
/// counter, about three times cheaper.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let before = SystemTime::now();
/// let t = switchyard_core::clock::now();
/// let after = SystemTime::now();
/// assert!(t + Duration::from_millis(1) >= before && t <= after + Duration::from_millis(1));
/// ```
// Out of line, as `SystemTime::now` is: inlined, its ~40 instructions made the functions that
// build an envelope too big to inline in turn (`Envelope::new` then copied its 200 bytes out
// once more per message: +58 instructions in `w1_envelope`).
#[inline(never)]
pub fn now() -> SystemTime {
    match counter() {
        Some(c) => ANCHOR
            .try_with(|anchor| read(&c.clock, c.scale, anchor))
            // While the thread's locals are torn down (none to tear down here, in fact).
            .unwrap_or_else(|_| SystemTime::now()),
        None => SystemTime::now(),
    }
}

/// Where the clock's readings come from: a counter and the system clock (the real one is
/// quanta's clock; tests inject their own).
trait Source {
    /// The counter now, in its own ticks.
    fn raw(&self) -> u64;
    /// The system clock now.
    fn system(&self) -> SystemTime;
}

impl Source for quanta::Clock {
    #[inline]
    fn raw(&self) -> u64 {
        quanta::Clock::raw(self)
    }

    fn system(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The counter's ticks in nanoseconds, slowed by 1/1024: `ticks × mult / 2^32`, for fewer
/// than `span_ticks` ticks (the span), where the product cannot overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scale {
    mult: u64,
    span_ticks: u64,
}

impl Scale {
    /// The scale of a counter whose 2^32 ticks take `per_2_32` nanoseconds (`None` if that
    /// cannot be used: zero, or so slow a counter that the span's product would overflow).
    fn new(per_2_32: u64) -> Option<Self> {
        let mult = per_2_32 - (per_2_32 >> SLOW_SHIFT);
        let span_ticks =
            u64::try_from((u128::from(SPAN_NANOS) << 32) / u128::from(per_2_32.max(1))).ok()?;
        (mult > 0 && span_ticks.checked_mul(mult).is_some()).then_some(Self { mult, span_ticks })
    }

    /// `ticks` (fewer than `span_ticks`) in slowed nanoseconds (fewer than [`SPAN_NANOS`]).
    #[inline]
    fn nanos(self, ticks: u64) -> u64 {
        ticks.wrapping_mul(self.mult) >> 32
    }
}

/// Quanta's counter clock and its scale.
#[derive(Debug)]
struct Counter {
    clock: quanta::Clock,
    scale: Scale,
}

impl Counter {
    /// Quanta's clock (calibrated on first use in the process) if it reads a counter.
    /// Quanta does not say whether it does, but where it has none its clock is the monotonic
    /// clock, whose raw readings are nanoseconds (its conversion is the identity), while a
    /// counter's are ticks converted by the calibrated ratio. (A counter ticking at exactly
    /// 1 GHz would be taken for the monotonic clock: then readings are `SystemTime::now()`,
    /// correct and no faster.)
    fn new() -> Option<Self> {
        Self::of(quanta::Clock::new())
    }

    /// [`new`](Self::new) with `clock`.
    fn of(clock: quanta::Clock) -> Option<Self> {
        const PROBE: u64 = 1 << 32;
        let per_2_32 = clock.delta_as_nanos(0, PROBE);
        if per_2_32 == PROBE {
            return None;
        }
        Some(Self {
            scale: Scale::new(per_2_32)?,
            clock,
        })
    }
}

/// A counter reading and the system time taken just before it.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    raw: u64,
    at: SystemTime,
}

thread_local! {
    /// This thread's anchor (none before its first read).
    static ANCHOR: Cell<Option<Anchor>> = const { Cell::new(None) };
}

/// The process's counter, or `None` where quanta has none (made on first use).
#[inline]
fn counter() -> Option<&'static Counter> {
    static COUNTER: OnceLock<Option<Counter>> = OnceLock::new();
    COUNTER.get_or_init(Counter::new).as_ref()
}

/// One reading of `source` against the thread's `anchor` (see the module docs). A counter
/// reading below the anchor's wraps to a huge tick count, so it takes a new anchor too.
#[inline]
fn read(source: &impl Source, scale: Scale, anchor: &Cell<Option<Anchor>>) -> SystemTime {
    let raw = source.raw();
    if let Some(a) = anchor.get() {
        let ticks = raw.wrapping_sub(a.raw);
        if ticks < scale.span_ticks
            && let Ok(nanos) = u32::try_from(scale.nanos(ticks))
            && let Some(t) = a.at.checked_add(Duration::new(0, nanos))
        {
            return t;
        }
    }
    reanchor(source, anchor)
}

/// Takes a new anchor (the system clock, then the counter: the counter reading is the later
/// one, so readings against the anchor are never ahead of it) and returns its time.
#[cold]
#[inline(never)]
fn reanchor(source: &impl Source, anchor: &Cell<Option<Anchor>>) -> SystemTime {
    let at = source.system();
    anchor.set(Some(Anchor {
        raw: source.raw(),
        at,
    }));
    at
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::MessageId;

    /// A counter ticking once per nanosecond and a system clock, both set by the test.
    struct Fake {
        raw: Cell<u64>,
        system: Cell<SystemTime>,
        /// System clock reads so far (new anchors).
        anchors: Cell<u32>,
    }

    impl Fake {
        fn new(system: SystemTime) -> Self {
            Self {
                raw: Cell::new(1_000),
                system: Cell::new(system),
                anchors: Cell::new(0),
            }
        }

        /// Both clocks move on by `nanos`.
        fn advance(&self, nanos: u64) {
            self.raw.set(self.raw.get() + nanos);
            self.system
                .set(self.system.get() + Duration::from_nanos(nanos));
        }
    }

    impl Source for Fake {
        fn raw(&self) -> u64 {
            self.raw.get()
        }
        fn system(&self) -> SystemTime {
            self.anchors.set(self.anchors.get() + 1);
            self.system.get()
        }
    }

    /// 2026-01-01T00:00:00Z plus `nanos`.
    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_225_600) + Duration::from_nanos(nanos)
    }

    /// The fake's counter: one tick a nanosecond.
    const NS: Scale = Scale {
        mult: (1 << 32) - (1 << 22),
        span_ticks: SPAN_NANOS,
    };

    fn slow(nanos: u64) -> Duration {
        Duration::from_nanos(nanos * 1023 / 1024)
    }

    #[test]
    fn the_first_read_anchors_and_later_ones_add_the_counters_time_slowed_by_1_in_1024() {
        let fake = Fake::new(at(0));
        let anchor = Cell::new(None);
        assert_eq!(read(&fake, NS, &anchor), at(0));
        assert_eq!(fake.anchors.get(), 1);
        for step in [1, 300, 20_000, 500_000] {
            fake.advance(step);
            let elapsed = fake.raw.get() - 1_000;
            assert_eq!(read(&fake, NS, &anchor), at(0) + slow(elapsed));
        }
        assert_eq!(
            fake.anchors.get(),
            1,
            "no system clock read within the span"
        );
    }

    #[test]
    fn a_reading_is_never_later_than_the_anchor_plus_the_counters_elapsed_time() {
        let fake = Fake::new(at(0));
        let anchor = Cell::new(None);
        read(&fake, NS, &anchor);
        for _ in 0..2_000 {
            fake.advance(fastrand::u64(1..2_000));
            let Some(a) = anchor.get() else {
                panic!("anchored")
            };
            let t = read(&fake, NS, &anchor);
            let bound = a.at + Duration::from_nanos(fake.raw.get() - a.raw);
            assert!(t <= bound, "{t:?} later than {bound:?}");
            // And, the fake's clocks agreeing, never later than its system clock.
            assert!(t <= fake.system.get());
        }
    }

    #[test]
    fn a_step_of_the_system_clock_shows_up_within_the_span() {
        let fake = Fake::new(at(0));
        let anchor = Cell::new(None);
        read(&fake, NS, &anchor);
        // The system clock steps back by a minute: readings go on from the old anchor
        // until the span is over, then follow it.
        fake.system.set(fake.system.get() - Duration::from_secs(60));
        fake.advance(999_999);
        assert_eq!(read(&fake, NS, &anchor), at(0) + slow(999_999));
        fake.advance(1);
        assert_eq!(
            read(&fake, NS, &anchor),
            at(1_000_000) - Duration::from_secs(60)
        );
        // Forward by an hour: the same.
        fake.system
            .set(fake.system.get() + Duration::from_secs(3_600));
        fake.advance(SPAN_NANOS);
        assert_eq!(
            read(&fake, NS, &anchor),
            at(2_000_000) + Duration::from_secs(3_540)
        );
        assert_eq!(fake.anchors.get(), 3);
    }

    #[test]
    fn a_counter_reading_below_the_anchors_takes_a_new_anchor() {
        let fake = Fake::new(at(0));
        let anchor = Cell::new(None);
        read(&fake, NS, &anchor);
        fake.advance(50);
        // Another core's counter, 100 ticks behind, so 50 below the anchor's reading: not
        // the anchor's time, nor a huge elapsed time, but the system clock.
        fake.raw.set(fake.raw.get() - 100);
        assert_eq!(read(&fake, NS, &anchor), at(50));
        assert_eq!(fake.anchors.get(), 2);
    }

    #[test]
    fn anchors_step_forward_when_the_clocks_agree() {
        // Readings run slow, so the next anchor is never behind the last reading: one
        // thread's times only grow.
        let fake = Fake::new(at(0));
        let anchor = Cell::new(None);
        let mut last = read(&fake, NS, &anchor);
        for _ in 0..10_000 {
            fake.advance(fastrand::u64(1..3_000));
            let t = read(&fake, NS, &anchor);
            assert!(t >= last, "{t:?} before {last:?}");
            last = t;
        }
        assert!(fake.anchors.get() > 5, "{} anchors", fake.anchors.get());
    }

    #[test]
    fn ids_stay_unique_when_a_new_anchor_steps_back() {
        // The system clock runs 10% slower than the counter (far more than the 1/1024 the
        // readings are slowed by), so every new anchor steps back, by about 100 µs, and now
        // and then across a millisecond's boundary. The thread's run of ids (a fresh draw per
        // millisecond, +1 within it) must not repeat an id: within the millisecond the run
        // goes on, and a step back into the previous millisecond draws afresh.
        crate::id::forget_run();
        // Starting 50 µs into a millisecond, every tenth anchor is stepped back across one.
        let fake = Fake::new(at(50_000));
        let anchor = Cell::new(None);
        let mut seen = HashSet::new();
        let (mut back, mut back_across_ms, mut last, mut last_ms) = (0, 0, at(0), 0);
        for _ in 0..200_000 {
            fake.raw.set(fake.raw.get() + 250);
            fake.system
                .set(fake.system.get() + Duration::from_nanos(225));
            let t = read(&fake, NS, &anchor);
            let id = MessageId::made_at(t);
            let Some(ms) = id.as_u128().and_then(|b| u64::try_from(b >> 80).ok()) else {
                panic!("a ULID")
            };
            let want = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).ok();
            assert_eq!(
                Some(u128::from(ms)),
                want,
                "the id's time part is its reading's millisecond"
            );
            back += u32::from(t < last);
            back_across_ms += u32::from(ms < last_ms);
            (last, last_ms) = (t, ms);
            assert!(seen.insert(id), "an id repeated");
        }
        assert!(back > 40, "stepped back {back} times");
        assert!(
            back_across_ms > 0,
            "never stepped back across a millisecond"
        );
    }

    #[test]
    fn a_run_of_ids_goes_on_when_a_new_anchor_steps_back_within_its_millisecond() {
        crate::id::forget_run();
        // Anchored 0.9 ms into a millisecond; the next anchor, in the next millisecond, finds
        // the system clock 3 µs behind the last reading (more than the 1/1024 slowing makes
        // up for).
        let fake = Fake::new(at(900_000));
        let anchor = Cell::new(None);
        let first = MessageId::made_at(read(&fake, NS, &anchor));
        fake.advance(SPAN_NANOS - 1);
        let t2 = read(&fake, NS, &anchor);
        assert_eq!(t2, at(1_899_022));
        let second = MessageId::made_at(t2);
        fake.raw.set(fake.raw.get() + 1);
        fake.system.set(at(1_897_000));
        let t3 = read(&fake, NS, &anchor);
        assert_eq!(
            (t3, fake.anchors.get()),
            (at(1_897_000), 2),
            "a new anchor, back"
        );
        let third = MessageId::made_at(t3);
        let (Some(a), Some(b), Some(c)) = (first.as_u128(), second.as_u128(), third.as_u128())
        else {
            panic!("ULIDs")
        };
        assert_ne!(b, a + 1, "a new millisecond draws afresh");
        assert_eq!(
            c,
            b + 1,
            "one run within the millisecond, in creation order"
        );
    }

    #[test]
    fn now_agrees_with_the_system_clock_within_a_millisecond() {
        // This machine's counter: a generous bound (the design's is ~1.5 µs), and the
        // counter detection and the process-wide clock exercised.
        for _ in 0..1_000 {
            let before = SystemTime::now();
            let t = now();
            let after = SystemTime::now();
            assert!(t + ANCHOR_SPAN >= before, "{t:?} long before {before:?}");
            assert!(t <= after + ANCHOR_SPAN, "{t:?} long after {after:?}");
        }
    }

    #[test]
    fn a_monotonic_clock_is_told_from_a_counter() {
        let (mock, _) = quanta::Clock::mock();
        assert!(
            Counter::of(mock).is_none(),
            "a mock (as the monotonic clock) converts 1:1"
        );
    }

    #[test]
    fn the_scale_converts_ticks_slowed_within_the_span() {
        assert_eq!(Scale::new(1 << 32), Some(NS));
        assert_eq!(ANCHOR_SPAN.as_nanos(), u128::from(SPAN_NANOS));
        assert_eq!(Scale::new(0), None);
        // A 3 GHz counter: 3,000,000 ticks a millisecond.
        let Some(ghz3) = Scale::new((1 << 32) / 3) else {
            panic!("usable")
        };
        assert!(ghz3.span_ticks.abs_diff(3_000_000) <= 1, "{ghz3:?}");
        let ms = ghz3.nanos(ghz3.span_ticks);
        assert!(ms.abs_diff(SPAN_NANOS * 1023 / 1024) <= 1, "{ms}");
        // A slow counter (1 MHz): the span's product still fits.
        let Some(mhz) = Scale::new(1_000 << 32) else {
            panic!("usable")
        };
        assert_eq!(mhz.span_ticks, 1_000);
        assert_eq!(mhz.nanos(999), 999 * 1_000 * 1023 / 1024);
    }
}
