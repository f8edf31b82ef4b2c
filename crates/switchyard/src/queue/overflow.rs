//! The overflow policy of a subscription's queue.

use std::time::Duration;

/// What a full subscription queue does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The publisher waits for room, at most `timeout`, then gets `PublishError::Full`.
    Block {
        /// Longest wait for room.
        timeout: Duration,
    },
    /// The oldest waiting message is evicted (counted as dropped and dead-lettered) to make room.
    DropOldest,
    /// The publisher gets `PublishError::Full` at once.
    RejectNew,
    /// Above half capacity the publisher is slowed down in proportion to the fill level (up to
    /// `max_delay` per publish); when full it waits like `Block` for at most `timeout`. A
    /// shutdown or unsubscribe ends the slow-down at once (the publisher is told
    /// `ShuttingDown`).
    Adaptive {
        /// Delay per publish when the queue is just short of full.
        max_delay: Duration,
        /// Longest wait for room when full.
        timeout: Duration,
    },
}

impl Default for Overflow {
    /// `Block` for at most one second.
    fn default() -> Self {
        Self::Block {
            timeout: Duration::from_secs(1),
        }
    }
}

impl Overflow {
    /// Short name for registries and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Block { .. } => "block",
            Self::DropOldest => "drop_oldest",
            Self::RejectNew => "reject_new",
            Self::Adaptive { .. } => "adaptive",
        }
    }
}
