//! A small lock-free random source shared by the retry policy and trace id generation.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A small lock-free random source (SplitMix64) shared by the clones of one policy.
#[derive(Debug)]
pub(crate) struct SplitMix(AtomicU64);

impl SplitMix {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    pub(crate) fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    pub(crate) fn from_entropy() -> Self {
        Self::new(RandomState::new().hash_one(std::time::SystemTime::now()))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        mix(self
            .0
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA))
    }
}

/// The process-wide random source (seeded from the standard library's hash keys and the clock).
pub(crate) fn global() -> &'static SplitMix {
    static RNG: OnceLock<SplitMix> = OnceLock::new();
    RNG.get_or_init(SplitMix::from_entropy)
}

/// A random `u64` from this thread's own generator (seeded once from [`global`]), so
/// concurrent callers do not contend on one atomic.
#[inline]
pub(crate) fn thread_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(global().next_u64());
    }
    STATE.with(|state| {
        let z = state.get().wrapping_add(SplitMix::GAMMA);
        state.set(z);
        mix(z)
    })
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
