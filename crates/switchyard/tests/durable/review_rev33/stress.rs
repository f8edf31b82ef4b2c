//! Retries exhausted across a drop, and many quick drops under load.

use std::time::Duration;

use switchyard::DeadLetterReason;

use super::{Script, log_bus, no_dead_letters, once_each, settles, wait_until};
use crate::Job;

/// Job 3 fails every call (max_attempts 3); the subscription is dropped while its second
/// retry waits and a new instance starts: job 3 is called exactly three times (1, 2, 3) and
/// dead-lettered once (attempts 3); every other job is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_across_a_drop_dead_letter_once_after_max_attempts_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(5));
    let s = Script::new();
    s.fail_always.lock().unwrap().insert(3);
    let handler = s.handler("w", None);
    let first = bus
        .subscribe("w", "jobs.#", handler.clone())
        .workers(1)
        .max_attempts(3)
        .retry_delay(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    for n in 0..6 {
        bus.publish(Job { n }).await.unwrap();
    }
    wait_until(
        "job 3 failed twice",
        || s.done().iter().filter(|c| c.n == 3).count() == 2,
        || format!("{:?}", s.done()),
    )
    .await;
    drop(first);
    let _second = bus
        .subscribe("w", "jobs.#", handler)
        .max_attempts(3)
        .retry_delay(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    wait_until(
        "job 3 dead-lettered",
        || !bus.dead_letters().unwrap().is_empty(),
        || format!("{:?}", s.done()),
    )
    .await;
    wait_until(
        "the other jobs handled",
        || s.ok_set().len() == 5,
        || format!("{:?}", s.done()),
    )
    .await;
    settles(&bus, "after the dead letter").await;
    let three: Vec<u32> = s.per_n()[&3].iter().map(|c| c.attempt).collect();
    assert_eq!(three, [1, 2, 3], "job 3's calls (attempt numbers)");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    assert_eq!(
        (letters[0].reason, letters[0].attempts),
        (DeadLetterReason::HandlerFailed, 3),
        "{:?}",
        letters[0]
    );
    let on_log = log.dead_letters().map(|d| d.list()).unwrap_or_default();
    assert!(on_log.is_empty(), "the log dead-lettered too: {on_log:?}");
    for (n, calls) in s.per_n() {
        if n != 3 {
            assert!(
                calls.len() == 1 && calls[0].ok && calls[0].attempt == 1,
                "job {n}: {calls:?}"
            );
        }
    }
    bus.shutdown(crate::WAIT).await.unwrap();
}

/// 300 jobs published while instances of one name (4 workers, queue 8) are started and
/// dropped 12 times, two alive at a time, with max_deliver 2: every job is handled exactly
/// once, on attempt 1, nothing is dead-lettered, and the bus settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quick_churn_under_load_handles_each_job_once_on_attempt_1() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(2));
    let s = Script::new();
    let total = 300u64;
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for n in 0..total {
                bus.publish(Job { n }).await.unwrap();
                if n % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut alive = std::collections::VecDeque::new();
    for round in 0..12 {
        let by = format!("r{round}");
        let sub = bus
            .subscribe("w", "jobs.#", s.handler(&by, None))
            .workers(4)
            .queue_capacity(8)
            .start()
            .await
            .unwrap();
        alive.push_back(sub);
        let seen = s.done().len();
        // some progress before the next drop (or all done)
        wait_until(
            "progress",
            || s.done().len() >= seen + 5 || s.ok_set().len() == total as usize,
            || format!("{} done", s.done().len()),
        )
        .await;
        if alive.len() > 1 {
            drop(alive.pop_front());
        }
    }
    publisher.await.unwrap();
    wait_until(
        "all handled",
        || s.ok_set().len() == total as usize,
        || format!("{} of {total}", s.ok_set().len()),
    )
    .await;
    settles(&bus, "after the churn").await;
    no_dead_letters(&bus, &log, "quick churn");
    once_each(&s, 0..total, "quick churn");
    let late: Vec<_> = s.done().into_iter().filter(|c| c.attempt != 1).collect();
    assert!(late.is_empty(), "no job was ever failed: {late:?}");
    drop(alive);
    bus.shutdown(crate::WAIT).await.unwrap();
}
