//! Instants on tokio's clock, made without panicking however long the duration.

use std::time::Duration;

use tokio::time::Instant;

/// About a century: what "never" means for a deadline.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 100);

/// `d` from now on tokio's clock (so a paused test clock moves it), at most about a century
/// ahead: a duration such as `Duration::MAX`, or a binding's "forever" (Python's
/// `sys.maxsize` seconds), waits "forever" instead of overflowing as `Instant::now() + d`
/// does. What the bus uses for its own deadlines; also the `at` to pass to
/// [`Bus::schedule_envelope`](crate::Bus::schedule_envelope).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// let soon = switchyard::deadline_after(Duration::from_secs(5));
/// let never = switchyard::deadline_after(Duration::MAX); // no panic
/// assert!(never > soon);
/// # }
/// ```
pub fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// Now on tokio's clock, as a `std` instant: the same as `std::time::Instant::now()` unless
/// the runtime's clock is paused, then virtual time. Deadlines the bus sets (`bus.request`)
/// and [`Ctx::remaining`](crate::Ctx::remaining) use it, so a test on the virtual clock sees
/// them move with it.
pub(crate) fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

/// Why a retry `delay` from now is not made: the message's deadline (a request's,
/// `delivery.deadline`) passes first, so nobody would wait for its result. `None` (retry)
/// without a deadline or when the attempt would start before it. Only read when a message
/// is to be retried.
pub(crate) fn too_late(deadline: Option<std::time::Instant>, delay: Duration) -> Option<String> {
    let left = deadline?.saturating_duration_since(now_std());
    (delay >= left).then(|| {
        format!(
            "not retried: the message's deadline passes before another attempt ({left:?} left, \
             the next due in {delay:?})"
        )
    })
}

/// Why a message whose sender's deadline has passed is not handed to its handler: the text
/// of its `Expired` dead letter, "deadline passed `when` (N ms late)" (`when`: e.g. "while
/// queued"). `None` (handle it) without a deadline, the one branch a message without one
/// pays, or before it.
#[inline(always)]
pub(crate) fn expired(deadline: Option<std::time::Instant>, when: &str) -> Option<String> {
    match deadline {
        None => None,
        Some(deadline) => passed(deadline, when),
    }
}

/// [`expired`] of a message that has a deadline.
#[inline(never)]
fn passed(deadline: std::time::Instant, when: &str) -> Option<String> {
    let now = now_std();
    (now >= deadline).then(|| {
        let late = now.duration_since(deadline).as_millis();
        format!("deadline passed {when} ({late} ms late)")
    })
}

/// Whether `deadline` (a waiting message's) has passed at `now`: the queue's test when it
/// looks for expired messages to evict.
#[inline]
pub(crate) fn is_past(deadline: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    deadline.is_some_and(|d| now >= d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_deadline_passed_is_named_with_how_late() {
        assert_eq!(expired(None, "while queued"), None);
        let at = now_std() + Duration::from_millis(50);
        assert_eq!(expired(Some(at), "while queued"), None);
        tokio::time::advance(Duration::from_millis(80)).await;
        assert_eq!(
            expired(Some(at), "while queued").as_deref(),
            Some("deadline passed while queued (30 ms late)")
        );
        assert!(is_past(Some(at), now_std()) && !is_past(None, now_std()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_huge_duration_is_far_ahead_not_a_panic() {
        let now = Instant::now();
        assert!(after(Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        let one = after(Duration::from_secs(1));
        assert!(one >= now + Duration::from_secs(1) && one < now + Duration::from_secs(2));
    }

    /// `sys.maxsize` seconds (the Python package's "forever") and the largest `Duration`:
    /// no overflow, and an ordinary wait is exact (moved from switchyard-py's `due_after`).
    #[tokio::test(flavor = "current_thread")]
    async fn a_wait_no_instant_can_hold_saturates() {
        let before = Instant::now();
        let far = after(Duration::from_secs(i64::MAX as u64));
        assert!(far >= before + Duration::from_secs(50 * 365 * 24 * 3600));
        assert!(after(Duration::MAX) >= far);
        let soon = after(Duration::from_secs(5));
        assert!(soon >= before + Duration::from_secs(5) && soon < far);
    }
}
