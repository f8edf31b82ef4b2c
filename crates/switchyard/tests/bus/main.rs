//! Integration tests of the in-process bus. Each module covers one behaviour of issue [core].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod backoff;
mod backpressure;
mod carried_values;
mod causation;
mod close_twice;
mod closed_handlers;
mod commands;
mod durations;
mod expired;
mod failures;
mod held;
mod idle_race;
mod inline;
mod inline_shutdown;
mod lent_and_kept;
mod limits;
mod local;
mod noticed_stop36;
mod ordering;
mod polls;
mod prefetch;
mod queued_ctx;
mod review_coverage;
mod review_rev11;
mod review_rev13;
mod review_rev24;
mod review_rev28;
mod review_rev32;
mod review_rev40;
mod review_rev5;
mod routing;
mod shared;
mod shutdown;
mod stress;
mod typed_slot;
mod unencoded;
mod wrap_target;

use serde::{Deserialize, Serialize};
use switchyard::{Command, Kind, Message};

/// A small event used across tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// A number.
    pub n: u64,
}
impl Message for Ping {
    const TOPIC: &'static str = "test.ping";
}

/// A command doubling its input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Double {
    /// The input.
    pub n: u64,
}
impl Message for Double {
    const TOPIC: &'static str = "math.double";
    const KIND: Kind = Kind::Command;
}
impl Command for Double {
    type Output = u64;
}

/// Longest wait for an expected event.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (yielding to other tasks, at most [`WAIT`]) until `done` holds; panics naming
/// `what` when it does not.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// The next `n` items from `rx`, each waited for at most [`WAIT`].
pub async fn received<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, n: usize) -> Vec<T> {
    let mut got = Vec::new();
    while got.len() < n {
        got.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    got
}

/// Readiness for test handlers that must not be ready until a test says so (as an open
/// circuit breaker or a rate limit is not): `poll` is `Pending` while closed, keeping the
/// waker; opening wakes every task that waits. Clones share one gate, so every worker's
/// clone of a handler sees it open.
#[derive(Clone, Default)]
pub struct ReadyGate {
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    wakers: std::sync::Arc<std::sync::Mutex<Vec<std::task::Waker>>>,
}

impl ReadyGate {
    /// Opens (waking the waiters) or closes the gate.
    pub fn set(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
        if open {
            for waker in self.wakers.lock().unwrap().drain(..) {
                waker.wake();
            }
        }
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A handler's `poll_ready`: ready while open, else pending until opened.
    pub fn poll(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), switchyard::BoxError>> {
        if self.is_open() {
            return std::task::Poll::Ready(Ok(()));
        }
        self.wakers.lock().unwrap().push(cx.waker().clone());
        std::task::Poll::Pending
    }
}
