//! One subscription name, its instances dropped and started again mid-flight.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use super::{MS, Script, log_bus, no_dead_letters, once_each, settles, wait_until};
use crate::Job;

/// Dropped while its handler runs one message and its queue is full (the pump may hold one
/// more); a new instance of the same name starts, then the old handler is released: every job
/// is handled once, each on its first attempt, and the bus settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_mid_handler_with_a_full_queue_then_restarted_handles_each_once_as_attempt_1() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(2));
    let s = Script::new();
    s.hold.lock().unwrap().insert(0);
    let first = bus
        .subscribe("w", "jobs.#", s.handler("first", None))
        .workers(1)
        .queue_capacity(2)
        .start()
        .await
        .unwrap();
    for n in 0..12 {
        bus.publish(Job { n }).await.unwrap();
    }
    wait_until(
        "job 0 in the handler and the queue full",
        || s.entered_n(0) && first.info().depth == 2,
        || format!("{:?}", first.info()),
    )
    .await;
    drop(first);
    let second = bus
        .subscribe("w", "jobs.#", s.handler("second", None))
        .workers(2)
        .start()
        .await
        .unwrap();
    s.release();
    wait_until(
        "all 12 handled",
        || s.ok_set().len() == 12,
        || format!("{:?}", s.done()),
    )
    .await;
    settles(&bus, "after the hand-over").await;
    once_each(&s, 0..12, "hand-over");
    let calls = s.done();
    assert!(
        calls.iter().all(|c| c.attempt == 1),
        "no job was ever failed, each is attempt 1: {calls:?}"
    );
    no_dead_letters(&bus, &log, "hand-over");
    let by_second = calls.iter().filter(|c| c.by == "second").count() as u64;
    let st = second.stats();
    assert_eq!(
        (st.delivered, st.acked, st.failed, st.retried),
        (by_second, by_second, 0, 0),
        "the second instance's stats against its {by_second} calls: {st:?}"
    );
    let live_w = || -> Vec<_> {
        bus.registry()
            .into_iter()
            .filter(|i| i.name == "w")
            .collect()
    };
    wait_until(
        "one live `w` left, idle",
        || {
            let r = live_w();
            r.len() == 1 && r[0].active && r[0].depth == 0 && r[0].in_flight == 0
        },
        || format!("{:?}", live_w()),
    )
    .await;
    drop(second);
    bus.shutdown(crate::WAIT).await.unwrap();
}

/// Dropped while a failed job waits for its retry (retry_delay): the job is called again once,
/// as attempt 2, whoever makes the call; nothing is dead-lettered, nothing else is called twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_while_a_retry_is_pending_the_job_comes_back_once_as_attempt_2() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(3));
    let s = Script::new();
    s.fail_once.lock().unwrap().insert(3);
    let first = bus
        .subscribe("w", "jobs.#", s.handler("first", None))
        .workers(1)
        .retry_delay(Duration::from_millis(400))
        .start()
        .await
        .unwrap();
    for n in 0..8 {
        bus.publish(Job { n }).await.unwrap();
    }
    wait_until(
        "job 3 failed once",
        || s.done().iter().any(|c| c.n == 3 && !c.ok),
        || format!("{:?}", s.done()),
    )
    .await;
    drop(first);
    let _second = bus
        .subscribe("w", "jobs.#", s.handler("second", None))
        .retry_delay(Duration::from_millis(400))
        .start()
        .await
        .unwrap();
    wait_until(
        "all 8 handled",
        || s.ok_set().len() == 8,
        || format!("{:?}", s.done()),
    )
    .await;
    settles(&bus, "after the retry").await;
    once_each(&s, 0..8, "retry pending at drop");
    let three: Vec<_> = s.per_n()[&3].iter().map(|c| (c.attempt, c.ok)).collect();
    assert_eq!(
        three,
        [(1, false), (2, true)],
        "job 3: failed on attempt 1, then succeeded on attempt 2 (attempt, ok)"
    );
    let others = s.done();
    assert!(
        others.iter().filter(|c| c.n != 3).all(|c| c.attempt == 1),
        "the other jobs on their first attempt: {others:?}"
    );
    no_dead_letters(&bus, &log, "retry pending at drop");
    bus.shutdown(crate::WAIT).await.unwrap();
}

/// A delayed job (deliver-at) waits while the subscription is dropped and started again three
/// times, with max_deliver 2: it is handled once, when due, as attempt 1, not dead-lettered,
/// and the last instance does not count it as a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_survives_three_restarts_of_its_subscription_and_comes_as_attempt_1() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(2));
    let s = Script::new();
    let delay = Duration::from_millis(1500);
    let published = SystemTime::now();
    bus.publish_after(delay, Job { n: 99 }).await.unwrap();
    let mut sub = None;
    for round in 0..3u64 {
        let n = round;
        drop(sub.take());
        let this = bus
            .subscribe("w", "jobs.#", s.handler(&format!("round{round}"), None))
            .start()
            .await
            .unwrap();
        // a job published now is handled by this instance: the instance is reading
        bus.publish(Job { n }).await.unwrap();
        let want = n;
        wait_until(
            "this round's job handled",
            || s.ok_set().contains(&want),
            || format!("{:?}", s.done()),
        )
        .await;
        sub = Some(this);
    }
    assert!(
        !s.entered_n(99),
        "the delayed job was handled before it was due (test too slow?): {:?}",
        s.done()
    );
    drop(sub.take());
    let last = bus
        .subscribe("w", "jobs.#", s.handler("last", None))
        .start()
        .await
        .unwrap();
    wait_until(
        "the delayed job handled",
        || s.ok_set().contains(&99),
        || format!("{:?}", s.done()),
    )
    .await;
    let at = SystemTime::now();
    settles(&bus, "after the delayed job").await;
    once_each(&s, [0, 1, 2, 99], "delayed job across restarts");
    let call = s.per_n()[&99][0].clone();
    assert_eq!(
        (call.by.as_str(), call.attempt),
        ("last", 1),
        "the delayed job, never handled before, comes as attempt 1 to the live instance"
    );
    let waited = at.duration_since(published).unwrap();
    assert!(
        waited + MS >= delay, // deliver-at is whole milliseconds (floored)
        "handled {waited:?} after the publish, before due ({delay:?})"
    );
    assert_eq!(
        last.stats().retried,
        0,
        "an early hand-back is not a retry: {:?}",
        last.stats()
    );
    no_dead_letters(&bus, &log, "delayed job across restarts");
    bus.shutdown(crate::WAIT).await.unwrap();
}

/// With max_deliver 2, the subscription is dropped four times with its handler busy and its
/// queue full (what the pump read is handed back), then a last instance handles the rest:
/// no job that no handler failed is dead-lettered (MaxDeliveries), each is handled once on
/// attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churned_four_times_with_max_deliver_2_nothing_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(2));
    let s = Script::new();
    for n in 0..40 {
        bus.publish(Job { n }).await.unwrap();
    }
    for round in 0..4 {
        let gate = Arc::new(Semaphore::new(0));
        let sub = bus
            .subscribe(
                "w",
                "jobs.#",
                s.handler(&format!("round{round}"), Some(gate.clone())),
            )
            .workers(1)
            .queue_capacity(2)
            .start()
            .await
            .unwrap();
        let by = format!("round{round}");
        wait_until(
            "this round's first call held and its queue full",
            || s.entered.lock().unwrap().iter().any(|c| c.by == by) && sub.info().depth == 2,
            || format!("{:?}", sub.info()),
        )
        .await;
        drop(sub);
        gate.add_permits(1);
        // the dropped instance drains its queue
        wait_until(
            "the dropped instance drained",
            || s.done().iter().filter(|c| c.by == by).count() >= 3,
            || format!("{:?}", s.done()),
        )
        .await;
    }
    let _last = bus
        .subscribe("w", "jobs.#", s.handler("last", None))
        .start()
        .await
        .unwrap();
    wait_until(
        "all 40 handled",
        || s.ok_set().len() == 40,
        || format!("{:?}", s.done()),
    )
    .await;
    settles(&bus, "after the churn").await;
    no_dead_letters(&bus, &log, "churn with max_deliver 2");
    once_each(&s, 0..40, "churn with max_deliver 2");
    let calls = s.done();
    assert!(
        calls.iter().all(|c| c.attempt == 1),
        "no job was ever failed, each is attempt 1: {:?}",
        calls.iter().filter(|c| c.attempt != 1).collect::<Vec<_>>()
    );
    bus.shutdown(crate::WAIT).await.unwrap();
}

/// Dropped mid-flight with nothing to take its place: the held and queued jobs drain, the one
/// the pump read goes back to the log, and `run_until_idle` / `pending()` settle; a later
/// instance of the name gets exactly the jobs not handled, on attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_with_no_successor_the_bus_settles_and_a_later_instance_gets_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(2));
    let s = Script::new();
    s.hold.lock().unwrap().insert(0);
    let first = bus
        .subscribe("w", "jobs.#", s.handler("first", None))
        .workers(1)
        .queue_capacity(2)
        .start()
        .await
        .unwrap();
    for n in 0..10 {
        bus.publish(Job { n }).await.unwrap();
    }
    wait_until(
        "job 0 in the handler and the queue full",
        || s.entered_n(0) && first.info().depth == 2,
        || format!("{:?}", first.info()),
    )
    .await;
    drop(first);
    s.release();
    settles(&bus, "dropped with no successor").await;
    let handled = s.ok_set();
    assert!(
        handled.len() == 3 && (0..3).all(|n| handled.contains(&n)),
        "the held job and the two queued ones, no more: {:?}",
        s.done()
    );
    wait_until(
        "the drained subscription is gone from the registry",
        || bus.registry().iter().all(|i| i.name != "w"),
        || format!("{:?}", bus.registry()),
    )
    .await;
    let _later = bus
        .subscribe("w", "jobs.#", s.handler("later", None))
        .start()
        .await
        .unwrap();
    wait_until(
        "all 10 handled",
        || s.ok_set().len() == 10,
        || format!("{:?}", s.done()),
    )
    .await;
    settles(&bus, "after the later instance").await;
    once_each(&s, 0..10, "dropped with no successor");
    assert!(
        s.done().iter().all(|c| c.attempt == 1),
        "no job was ever failed: {:?}",
        s.done()
    );
    no_dead_letters(&bus, &log, "dropped with no successor");
    bus.shutdown(crate::WAIT).await.unwrap();
}

/// The dropped instance's handler, released after a new instance started, hands its job back
/// (`HandBack`): the new instance gets it as attempt 1 (a hand-back is not an attempt), does
/// not count it as a retry, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_handed_back_by_a_dropped_instance_comes_to_the_next_as_attempt_1() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(2));
    let s = Script::new();
    s.hold.lock().unwrap().insert(0);
    s.hand_back_once.lock().unwrap().insert(0);
    let first = bus
        .subscribe("w", "jobs.#", s.handler("first", None))
        .workers(1)
        .queue_capacity(2)
        .start()
        .await
        .unwrap();
    for n in 0..6 {
        bus.publish(Job { n }).await.unwrap();
    }
    wait_until(
        "job 0 in the handler",
        || s.entered_n(0) && first.info().depth == 2,
        || format!("{:?}", first.info()),
    )
    .await;
    drop(first);
    let second = bus
        .subscribe("w", "jobs.#", s.handler("second", None))
        .start()
        .await
        .unwrap();
    s.hold.lock().unwrap().clear();
    s.release();
    wait_until(
        "all 6 handled",
        || s.ok_set().len() == 6,
        || format!("{:?}", s.done()),
    )
    .await;
    settles(&bus, "after the hand-back").await;
    once_each(&s, 0..6, "hand-back from a dropped instance");
    let zero: Vec<_> = s.per_n()[&0]
        .iter()
        .map(|c| (c.by.clone(), c.attempt, c.ok))
        .collect();
    assert_eq!(
        zero,
        [
            ("first".to_owned(), 1, false),
            ("second".to_owned(), 1, true)
        ],
        "job 0 handed back by `first`, then handled by `second` as attempt 1"
    );
    assert_eq!(second.stats().retried, 0, "{:?}", second.stats());
    no_dead_letters(&bus, &log, "hand-back from a dropped instance");
    bus.shutdown(crate::WAIT).await.unwrap();
}

/// An ephemeral subscription dropped with its handler busy and its queue full: what it held
/// drains, the rest is the transport's to forget, and `run_until_idle` / `pending()` settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_subscription_dropped_mid_flight_leaves_nothing_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c);
    let s = Script::new();
    s.hold.lock().unwrap().insert(0);
    let sub = bus
        .subscribe("view", "jobs.#", s.handler("view", None))
        .ephemeral()
        .workers(1)
        .queue_capacity(2)
        .start()
        .await
        .unwrap();
    for n in 0..10 {
        bus.publish(Job { n }).await.unwrap();
    }
    wait_until(
        "job 0 in the handler and the queue full",
        || s.entered_n(0) && sub.info().depth == 2,
        || format!("{:?}", sub.info()),
    )
    .await;
    drop(sub);
    s.release();
    settles(&bus, "ephemeral dropped mid-flight").await;
    let handled = s.ok_set();
    assert!(
        (0..3).all(|n| handled.contains(&n)) && handled.len() == 3,
        "the held job and the two queued ones drain, no more: {:?}",
        s.done()
    );
    no_dead_letters(&bus, &log, "ephemeral dropped mid-flight");
    bus.shutdown(crate::WAIT).await.unwrap();
}
