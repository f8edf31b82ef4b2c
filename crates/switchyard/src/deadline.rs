//! Instants on tokio's clock, made without panicking however long the duration.

use std::time::Duration;

use tokio::time::Instant;

/// About 30 years: what "never" means for a deadline.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `d` from now on tokio's clock; at most about 30 years ahead, so a duration such as
/// `Duration::MAX` (a binding's "forever") waits "forever" instead of overflowing.
pub(crate) fn after(d: Duration) -> Instant {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_huge_duration_is_far_ahead_not_a_panic() {
        let now = Instant::now();
        assert!(after(Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        let one = after(Duration::from_secs(1));
        assert!(one >= now + Duration::from_secs(1) && one < now + Duration::from_secs(2));
    }
}
