//! Review rev33 (outside-in): subscriptions and consumer groups that come and go while
//! messages are in flight, on the embedded log through the bus (docs/bus.md "HandBack" and
//! "On a transport", docs/log.md "max_deliver", "Keep-alive", "Per-key order").
//!
//! Every test records each handler call (which subscription instance, which message, which
//! attempt, how it ended) and checks that each message was handled exactly once (or
//! dead-lettered once), numbered as the docs say, and that the bus settles afterwards.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::{BoxError, BoxHandler, Bus, Envelope, HandBack, Outcome, handler_fn};
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::Semaphore;

use super::{WAIT, n_of};

/// The resolution of the `deliver-at` header (milliseconds, floored): a delayed job may be
/// handled up to this much before `publish time + delay` as the test measures it.
const MS: Duration = Duration::from_millis(1);

mod churn;
mod group;
mod shutdown;
mod stress;

/// One handler call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    /// The subscription instance that made the call.
    by: String,
    n: u64,
    attempt: u32,
    ok: bool,
    /// The `ordering-key` header.
    key: Option<String>,
}

/// What every instance's handler shares with the test: calls entered and finished, which
/// messages fail their first call, and which messages wait for the gate.
#[derive(Clone)]
struct Script {
    entered: Arc<Mutex<Vec<Call>>>,
    done: Arc<Mutex<Vec<Call>>>,
    fail_once: Arc<Mutex<HashSet<u64>>>,
    fail_always: Arc<Mutex<HashSet<u64>>>,
    /// Messages whose next call hands them back (`HandBack`), once.
    hand_back_once: Arc<Mutex<HashSet<u64>>>,
    hold: Arc<Mutex<HashSet<u64>>>,
    gate: Arc<Semaphore>,
}

impl Script {
    fn new() -> Self {
        Self {
            entered: Arc::default(),
            done: Arc::default(),
            fail_once: Arc::default(),
            fail_always: Arc::default(),
            hand_back_once: Arc::default(),
            hold: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    /// Lets every held call (now and later) go on.
    fn release(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn entered_n(&self, n: u64) -> bool {
        self.entered.lock().unwrap().iter().any(|c| c.n == n)
    }

    fn done(&self) -> Vec<Call> {
        self.done.lock().unwrap().clone()
    }

    /// The `n` of every successful call.
    fn ok_set(&self) -> HashSet<u64> {
        self.done().iter().filter(|c| c.ok).map(|c| c.n).collect()
    }

    /// Calls per message.
    fn per_n(&self) -> BTreeMap<u64, Vec<Call>> {
        let mut m = BTreeMap::<u64, Vec<Call>>::new();
        for c in self.done() {
            m.entry(c.n).or_default().push(c);
        }
        m
    }

    /// A handler for the instance `by`. With `hold_first`, the instance's first call waits for
    /// `gate_of_instance` (its own gate) besides the shared hold list.
    fn handler(&self, by: &str, hold_first: Option<Arc<Semaphore>>) -> BoxHandler {
        let s = self.clone();
        let by = by.to_owned();
        let first = Arc::new(AtomicBool::new(true));
        handler_fn(move |env: Envelope| {
            let (s, by, first, hold_first) =
                (s.clone(), by.clone(), first.clone(), hold_first.clone());
            async move {
                let n = n_of(&env);
                let call = |ok| Call {
                    by: by.clone(),
                    n,
                    attempt: env.delivery.attempt,
                    ok,
                    key: env.header("ordering-key").map(str::to_owned),
                };
                s.entered.lock().unwrap().push(call(true));
                if let Some(own) = hold_first
                    && first.swap(false, Ordering::SeqCst)
                {
                    let _p = own.acquire().await.unwrap();
                }
                let held = s.hold.lock().unwrap().contains(&n);
                if held {
                    let _p = s.gate.acquire().await.unwrap();
                }
                if s.hand_back_once.lock().unwrap().remove(&n) {
                    s.done.lock().unwrap().push(call(false));
                    return Err::<Outcome, BoxError>(Box::new(HandBack::new("not here")));
                }
                let fail = s.fail_once.lock().unwrap().remove(&n)
                    || s.fail_always.lock().unwrap().contains(&n);
                s.done.lock().unwrap().push(call(!fail));
                if fail {
                    Err(format!("job {n} fails its first call").into())
                } else {
                    Ok(Outcome::Ack)
                }
            }
        })
    }
}

/// Polls `done` until it holds, at most [`WAIT`]; `what` and `state()` name what was missing.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool, state: impl Fn() -> String) {
    let until = Instant::now() + WAIT;
    while !done() {
        assert!(
            Instant::now() < until,
            "timed out waiting until {what}; state: {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `run_until_idle` ends within [`WAIT`] and leaves nothing pending.
async fn settles(bus: &Bus, what: &str) {
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: run_until_idle did not end; pending() = {}",
                bus.pending()
            )
        });
    assert_eq!(bus.pending(), 0, "{what}: pending after idle");
}

/// The log (with `cfg` applied) and a bus on it; the log is kept to read its own dead letters.
fn log_bus(dir: &std::path::Path, cfg: impl FnOnce(LogConfig) -> LogConfig) -> (Bus, LogTransport) {
    let log = LogTransport::open(cfg(LogConfig::new(dir))).unwrap();
    let bus = Bus::builder().transport(log.clone()).build().unwrap();
    (bus, log)
}

/// No dead letter on the bus nor in the log's own store.
fn no_dead_letters(bus: &Bus, log: &LogTransport, what: &str) {
    let on_bus = bus.dead_letters().map(|d| d.list()).unwrap_or_default();
    let on_log = log.dead_letters().map(|d| d.list()).unwrap_or_default();
    assert!(
        on_bus.is_empty() && on_log.is_empty(),
        "{what}: no message was failed by a handler, yet dead letters: bus {:?}, log {:?}",
        on_bus
            .iter()
            .map(|l| (l.reason, l.attempts, l.error.clone()))
            .collect::<Vec<_>>(),
        on_log
            .iter()
            .map(|l| (l.reason, l.attempts, l.error.clone()))
            .collect::<Vec<_>>(),
    );
}

/// Each `n` in `want` handled successfully exactly once, and no call for any other `n`.
fn once_each(script: &Script, want: impl IntoIterator<Item = u64>, what: &str) {
    let want: HashSet<u64> = want.into_iter().collect();
    for (n, calls) in script.per_n() {
        assert!(
            want.contains(&n),
            "{what}: job {n} was not expected: {calls:?}"
        );
        let oks = calls.iter().filter(|c| c.ok).count();
        assert_eq!(
            oks, 1,
            "{what}: job {n} handled successfully {oks} times: {calls:?}"
        );
    }
    let missing: Vec<_> = want.difference(&script.ok_set()).copied().collect();
    assert!(missing.is_empty(), "{what}: never handled: {missing:?}");
}
