//! Attempt numbers on a transport (issue 13, item 1): the transport numbers the delivery, the
//! bus numbers its retries in place, and the two must not add up to one too many.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::Bus;
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::mpsc;

use crate::{Job, WAIT};

fn bus_on_log_with_attempts(dir: &std::path::Path, attempts: u32) -> Bus {
    let log = LogTransport::open(LogConfig::new(dir)).unwrap();
    Bus::builder()
        .transport(log)
        .max_attempts(attempts)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_on_log_transport_start_at_one() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_on_log_with_attempts(dir.path(), 3);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _worker = bus
        .on("worker", move |_: Job, ctx| {
            s.lock().unwrap().push(ctx.attempt());
            async { Err::<(), _>("always fails") }
        })
        .start()
        .await
        .unwrap();
    bus.publish(Job { n: 1 }).await.unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [1, 2, 3],
        "max_attempts(3) calls the handler three times, numbered from 1"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3, "the dead letter counts every call");
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_two_on_log_transport_retries_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_on_log_with_attempts(dir.path(), 2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _worker = bus
        .on("worker", move |_: Job, ctx| {
            s.lock().unwrap().push(ctx.attempt());
            async { Err::<(), _>("always fails") }
        })
        .start()
        .await
        .unwrap();
    bus.publish(Job { n: 1 }).await.unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_twice_out_of_100_is_delivered_on_the_log_not_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_on_log_with_attempts(dir.path(), 3);
    let (tx, mut handled) = mpsc::unbounded_channel();
    // n = 42 fails on its first two calls (counted here, not from the attempt number)
    let failures_left = Arc::new(Mutex::new(2));
    let _worker = bus
        .on("worker", move |job: Job, ctx| {
            let tx = tx.clone();
            let fail = job.n == 42 && {
                let mut left = failures_left.lock().unwrap();
                *left > 0 && {
                    *left -= 1;
                    true
                }
            };
            async move {
                if fail {
                    return Err(format!("transient failure on attempt {}", ctx.attempt()));
                }
                tx.send((job.n, ctx.attempt())).map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    for n in 0..100 {
        bus.publish(Job { n }).await.unwrap();
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(x) = handled.try_recv() {
        got.push(x);
    }
    assert!(
        bus.dead_letters().unwrap().is_empty(),
        "nothing dead-lettered: {:?}",
        bus.dead_letters().unwrap().list()
    );
    assert_eq!(got.len(), 100, "every message handled");
    assert!(
        got.contains(&(42, 3)),
        "n=42 succeeded on its third attempt"
    );
    assert!(
        got.iter().all(|&(n, a)| n == 42 || a == 1),
        "the others on their first: {got:?}"
    );
    bus.shutdown(WAIT).await.unwrap();
}
