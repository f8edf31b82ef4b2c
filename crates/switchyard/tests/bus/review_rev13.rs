//! Review rev13: the core bus under churn and concurrency. Whatever the interleaving, once
//! everything is quiet `bus.pending() == 0`, and every accepted message is handled, answered
//! with a typed error, dead-lettered, or named in the `ShutdownReport`: never silently gone;
//! `shutdown` returns within its deadline. Randomness is seeded (a tiny xorshift), so a failing
//! seed can be run again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use switchyard::{BoxError, Bus, Envelope, Outcome, Permanent, SendError, Topic, handler_fn};
use tokio::sync::{mpsc, watch};

use crate::WAIT;

mod churn;

/// A tiny seeded generator (xorshift64*): reproducible interleavings without a dependency.
#[derive(Clone)]
pub struct Rng(u64);
impl Rng {
    /// A generator from `seed` (any value; 0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next value below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Waits (at most [`WAIT`]) until `bus.pending()` is zero; panics with what is left.
pub async fn until_quiet(bus: &Bus, what: &str) {
    let quiet = tokio::time::timeout(WAIT, async {
        while bus.pending() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        quiet.is_ok(),
        "{what}: bus.pending() is still {} after {WAIT:?}",
        bus.pending()
    );
}

/// A "connection" a remote-style handler awaits: its calls end with a permanent error when
/// it closes (as the node's WebSocket handler's calls do).
#[derive(Clone)]
struct Conn {
    closed: watch::Receiver<bool>,
}

async fn remote_call(
    conn: Conn,
    env: Envelope,
    took: mpsc::UnboundedSender<String>,
) -> Result<Outcome, BoxError> {
    let mut closed = conn.closed.clone();
    if *closed.borrow() {
        return Err(Box::new(Permanent::new("connection gone")));
    }
    let _ = took.send(env.id.to_string());
    // The remote side never answers: the call ends when the connection closes.
    let _ = closed.wait_for(|c| *c).await;
    Err(Box::new(Permanent::new(
        "connection closed before answering",
    )))
}

/// The bus-level form of the node's open defect
/// (`switchyard-node/tests/ws/answer_first.rs::nothing_stays_pending_after_busy_handlers_closed`)
/// on a plain bus: four senders keep sending commands with
/// `timeout(50 ms, bus.send_envelope(env))` (futures dropped mid-send) to a raw command
/// handler (`handle_envelope`, `workers(1)`) whose calls await a connection and fail when it
/// closes; every round a new handler (same name) starts, takes one command, its connection
/// closes and its `Subscription` is dropped. Once the senders stopped, nothing stays pending.
/// (It passes: the defect needs the resilience stack's breaker, see
/// `churn::commands_to_dropped_resilient_handlers_do_not_stay_pending`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_dropped_busy_handlers_do_not_stay_pending() {
    let bus = Bus::new();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Outcomes::default());
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let bus = bus.clone();
            let stop = stop.clone();
            let outcomes = outcomes.clone();
            tokio::spawn(async move {
                let topic = Topic::new("busy.job").unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 2_000_000 {
                    let env = Envelope::new(topic.clone(), format!("{{\"n\":{n}}}"));
                    let r = tokio::time::timeout(Duration::from_millis(50), bus.send_envelope(env))
                        .await;
                    outcomes.count(r.ok());
                    n += 1;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for round in 0..30 {
        let (close, closed) = watch::channel(false);
        let (took_tx, mut took) = mpsc::unbounded_channel();
        let conn = Conn { closed };
        let handler =
            handler_fn(move |env: Envelope| remote_call(conn.clone(), env, took_tx.clone()));
        let sub = bus
            .handle_envelope("remote-handler", "busy.job", handler)
            .workers(1)
            .start()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        tokio::time::timeout(WAIT, took.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: no command reached the handler"))
            .unwrap();
        // The connection closes: the call in hand fails, and the subscription is dropped.
        close.send(true).unwrap();
        drop(sub);
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    assert!(outcomes.sent.load(Ordering::Relaxed) > 0);
    until_quiet(&bus, "after the handlers closed").await;
    let report = tokio::time::timeout(WAIT, bus.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown returns within its deadline")
        .unwrap();
    assert!(report.left.is_empty(), "{report:?}");
}

/// How the senders' calls ended (each must end in one of these typed ways).
#[derive(Default)]
pub struct Outcomes {
    /// Calls made.
    pub sent: AtomicU64,
    /// Answered (a reply or an ack).
    pub ok: AtomicU64,
    /// Typed errors (`NoHandler`, `Failed`, `NotProcessed`, ...).
    pub err: AtomicU64,
    /// Futures dropped by their timeout before an answer.
    pub dropped: AtomicU64,
}
impl Outcomes {
    /// Counts one call's end.
    pub fn count<T>(&self, r: Option<Result<T, SendError>>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        match r {
            Some(Ok(_)) => &self.ok,
            Some(Err(_)) => &self.err,
            None => &self.dropped,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}
