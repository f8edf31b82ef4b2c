//! A transport delivery the bus holds past the log's ack wait (a slow handler, in-place
//! retries whose backoffs add up past it) is kept alive: the log does not hand a second copy
//! to the group while the first is still being worked on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::Bus;
use switchyard_log::{LogConfig, LogTransport};

use crate::{Job, WAIT};

const ACK_WAIT: Duration = Duration::from_millis(300);

/// Calls of the handler: the attempt number of each, and the most running at once.
#[derive(Default)]
struct Calls {
    attempts: Mutex<Vec<u32>>,
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Calls {
    fn enter(&self, attempt: u32) {
        self.attempts.lock().unwrap().push(attempt);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs one message through a handler on the log (ack wait 300 ms, four workers) and
/// returns the calls and the group's lag once the bus is idle.
async fn run(
    fails: usize,
    work: Duration,
    retry_delay: Duration,
) -> (Arc<Calls>, Vec<switchyard_log::GroupLag>) {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path()).with_ack_wait(ACK_WAIT)).unwrap();
    let bus = Bus::builder()
        .transport(log.clone())
        .max_attempts(3)
        .retry_delay(retry_delay)
        .build()
        .unwrap();
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    let _worker = bus
        .on("worker", move |_: Job, ctx| {
            let c = c.clone();
            async move {
                c.enter(ctx.attempt());
                // The work: a timer, longer than the ack wait when `work` says so.
                tokio::time::sleep(work).await;
                c.leave();
                let failed = c.attempts.lock().unwrap().len() <= fails;
                if failed {
                    Err::<(), _>("fails")
                } else {
                    Ok(())
                }
            }
        })
        .workers(4)
        .start()
        .await
        .unwrap();
    bus.publish(Job { n: 1 }).await.unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .expect("not idle");
    let lags = log.group_lags();
    bus.shutdown(WAIT).await.unwrap();
    (calls, lags)
}

fn assert_once(calls: &Calls, expected: &[u32], lags: &[switchyard_log::GroupLag]) {
    assert_eq!(
        *calls.attempts.lock().unwrap(),
        expected,
        "a second copy was handed out while the first was held (attempts of each call)"
    );
    assert_eq!(
        calls.most.load(Ordering::SeqCst),
        1,
        "two copies in flight at once"
    );
    let lag: Vec<_> = lags.iter().filter(|l| l.group == "worker").collect();
    assert!(!lag.is_empty(), "no group lag for `worker`: {lags:?}");
    assert!(
        lag.iter().all(|l| l.lag == 0 && l.pending == 0),
        "not acked: {lags:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_ack_wait_gets_no_second_copy() {
    let (calls, lags) = run(0, ACK_WAIT * 3, Duration::from_millis(1)).await;
    assert_once(&calls, &[1], &lags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_retries_whose_backoffs_pass_the_ack_wait_get_no_second_copy() {
    let (calls, lags) = run(2, Duration::ZERO, ACK_WAIT * 2).await;
    assert_once(&calls, &[1, 2, 3], &lags);
}

/// The bound: a handler that never returns keeps its delivery alive only for the
/// subscription's `max_hold`, counted from when the log handed it out; then the log hands it
/// out again one ack wait later (here to the subscription's other worker, which acks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_keeps_its_delivery_only_for_max_hold() {
    const MAX_HOLD: Duration = Duration::from_millis(900);
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path()).with_ack_wait(ACK_WAIT)).unwrap();
    let bus = Bus::builder().transport(log.clone()).build().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _worker = bus
        .on("worker", move |_: Job, ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((ctx.attempt(), std::time::Instant::now()));
                if ctx.attempt() == 1 {
                    // Hangs: never returns.
                    std::future::pending::<()>().await;
                }
                Ok::<(), &'static str>(())
            }
        })
        .workers(2)
        .max_hold(MAX_HOLD)
        .start()
        .await
        .unwrap();
    bus.publish(Job { n: 1 }).await.unwrap();
    let (first, at) = next(&mut rx).await;
    assert_eq!(first, 1);
    let (second, again) = next(&mut rx).await;
    assert_eq!(
        second, 2,
        "the hung call's delivery comes back as attempt 2"
    );
    // Kept alive for max_hold (3 ack waits): not handed out again before it (a little slack
    // for when the log made the delivery, just before the handler's first call).
    assert!(
        again.duration_since(at) + Duration::from_millis(100) >= MAX_HOLD,
        "handed out again after {:?}, before max_hold {MAX_HOLD:?}",
        again.duration_since(at)
    );
    tokio::time::timeout(WAIT, async {
        while log
            .group_lags()
            .iter()
            .any(|l| l.group == "worker" && (l.lag > 0 || l.pending > 0))
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the second copy is never acked");
    let report = bus.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(
        report.nacked.len(),
        1,
        "the hung call is handed back: {report:?}"
    );
}

/// The next call the handler reported: its attempt and when it started.
async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u32, std::time::Instant)>,
) -> (u32, std::time::Instant) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no call")
        .expect("channel closed")
}
