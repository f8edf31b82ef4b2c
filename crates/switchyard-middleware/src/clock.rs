//! Time arithmetic that never panics, and wall-clock times as Unix nanoseconds.

use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// About 30 years: what "never" means for a deadline.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `d` in whole nanoseconds, saturating at `u64::MAX` (about 584 years).
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `now + d`, or a deadline about 30 years away when that would overflow.
pub(crate) fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// Wall-clock times as nanoseconds since the Unix epoch, as
/// `t.duration_since(UNIX_EPOCH)` would give them (0 before the epoch, saturating at
/// `u64::MAX`), in a few instructions where the platform allows.
///
/// `SystemTime` offers its seconds and nanoseconds only through `duration_since`, whose
/// out-of-line subtraction and normalisation cost about 55 instructions; the stack turns a
/// message's timestamp into Unix nanoseconds on every call (end-to-end latency). But a
/// `SystemTime`'s `Hash` writes exactly its parts: on Unix, the seconds since the epoch
/// (`i64`, negative before it) and then the nanoseconds (`u32`, below one second). [`new`]
/// checks that this holds on the running standard library, on times whose parts are known
/// (before, at and after the epoch, and now), against `duration_since`; where it does not
/// (another platform's representation, a future standard library), every reading takes
/// `duration_since`.
///
/// [`new`]: UnixNanos::new
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnixNanos {
    /// The `Hash` of a `SystemTime` gives its parts (checked by [`UnixNanos::new`]).
    parts: bool,
}

/// Takes the parts a `SystemTime`'s `Hash` writes: an `i64` (the seconds), then a `u32`
/// (the nanoseconds). `order` records what was written, for the check.
#[derive(Default)]
struct Parts {
    secs: i64,
    nanos: u32,
    order: u32,
}

impl Hasher for Parts {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, _: &[u8]) {
        self.order = u32::MAX;
    }

    #[inline]
    fn write_i64(&mut self, secs: i64) {
        self.secs = secs;
        self.order = self.order.saturating_mul(4).saturating_add(1);
    }

    #[inline]
    fn write_u32(&mut self, nanos: u32) {
        self.nanos = nanos;
        self.order = self.order.saturating_mul(4).saturating_add(2);
    }
}

impl Parts {
    #[inline]
    fn of(t: SystemTime) -> Self {
        let mut parts = Self::default();
        t.hash(&mut parts);
        parts
    }

    /// The time as Unix nanoseconds, as `unix_nanos_slow` gives it.
    #[inline]
    fn unix_nanos(&self) -> u64 {
        match u64::try_from(self.secs) {
            Ok(secs) => secs
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(self.nanos)),
            Err(_) => 0,
        }
    }
}

/// `t` as Unix nanoseconds through `duration_since`.
fn unix_nanos_slow(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, nanos)
}

impl UnixNanos {
    /// Checks how this platform's `SystemTime` hashes (see the type's docs).
    pub(crate) fn new() -> Self {
        let epoch = SystemTime::UNIX_EPOCH;
        // (time, its seconds, its nanoseconds); checked arithmetic, so a platform that cannot
        // represent one of them takes `duration_since` instead of panicking.
        let known = [
            (Some(epoch), 0, 0),
            (
                epoch.checked_add(Duration::new(1, 500_000_000)),
                1,
                500_000_000,
            ),
            (
                epoch.checked_add(Duration::new(1_765_000_000, 999_999_999)),
                1_765_000_000,
                999_999_999,
            ),
            (
                epoch.checked_sub(Duration::new(1, 500_000_000)),
                -2,
                500_000_000,
            ),
        ];
        let agrees = |t: SystemTime| {
            let p = Parts::of(t);
            p.order == 0b0110 && p.unix_nanos() == unix_nanos_slow(t)
        };
        let parts = agrees(SystemTime::now())
            && known.iter().all(|&(t, secs, nanos)| {
                t.is_some_and(|t| {
                    let p = Parts::of(t);
                    agrees(t) && p.secs == secs && p.nanos == nanos
                })
            });
        Self { parts }
    }

    /// `t` as nanoseconds since the Unix epoch (0 before it).
    #[inline]
    pub(crate) fn of(self, t: SystemTime) -> u64 {
        if self.parts {
            Parts::of(t).unix_nanos()
        } else {
            unix_nanos_slow(t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of reading a time agree, before, at and after the epoch and at the
    /// saturation point; and this platform (Linux, where CI runs) takes the parts.
    #[test]
    fn unix_nanos_agrees_with_duration_since() {
        let fast = UnixNanos::new();
        assert!(
            fast.parts,
            "the Hash of SystemTime no longer gives its parts here"
        );
        let slow = UnixNanos { parts: false };
        let epoch = SystemTime::UNIX_EPOCH;
        let mut times = vec![
            epoch,
            SystemTime::now(),
            epoch + Duration::from_nanos(1),
            epoch + Duration::new(599, 999_999_999),
            epoch + Duration::from_nanos(u64::MAX),
            epoch + Duration::from_nanos(u64::MAX) + Duration::from_secs(1),
            epoch - Duration::from_nanos(1),
            epoch - Duration::new(3_600, 250),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..1_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = Duration::new(x % 4_000_000_000, (x >> 32) as u32 % 1_000_000_000);
            times.push(epoch + d);
            times.push(epoch - d);
        }
        for t in times {
            assert_eq!(fast.of(t), unix_nanos_slow(t), "{t:?}");
            assert_eq!(slow.of(t), unix_nanos_slow(t), "{t:?}");
        }
        assert_eq!(fast.of(epoch - Duration::from_secs(1)), 0);
        assert_eq!(
            fast.of(epoch + Duration::from_nanos(u64::MAX) + Duration::from_secs(1)),
            u64::MAX
        );
    }

    #[test]
    fn huge_durations_do_not_panic() {
        let now = Instant::now();
        assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
