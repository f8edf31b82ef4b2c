//! A consumer group of two members, one dropped mid-flight.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard::Message;
use tokio::sync::Semaphore;

use super::{Script, log_bus, no_dead_letters, once_each, settles, wait_until};
use crate::Job;

const KEYS: [&str; 3] = ["k0", "k1", "k2"];

/// Members `a` and `b` of group `g` (2 workers each, per-key order on `ordering-key`); `a`'s
/// first call is held, and `a` is dropped while it holds it and others run; then released.
/// Every job is handled once, none twice after its ack, and per key the jobs succeed in the
/// order they were published, across the hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dropped_mid_flight_loses_nothing_doubles_nothing_and_keeps_key_order() {
    member_dropped(false).await;
}

/// The same with the first job of each key failing once (retried in place after 200 ms,
/// possibly while its member is being dropped): each retried job succeeds on attempt 2 before
/// any later job of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dropped_with_retries_pending_keeps_key_order() {
    member_dropped(true).await;
}

async fn member_dropped(fail_first_of_each_key: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (bus, log) = log_bus(dir.path(), |c| c.with_max_deliver(2));
    let s = Script::new();
    if fail_first_of_each_key {
        s.fail_once.lock().unwrap().extend([0, 1, 2]);
    }
    let a_gate = Arc::new(Semaphore::new(0));
    let a = bus
        .subscribe("g", "jobs.#", s.handler("a", Some(a_gate.clone())))
        .workers(2)
        .queue_capacity(4)
        .retry_delay(std::time::Duration::from_millis(200))
        .ordering_header("ordering-key")
        .start()
        .await
        .unwrap();
    let _b = bus
        .subscribe("g", "jobs.#", s.handler("b", None))
        .workers(2)
        .queue_capacity(4)
        .retry_delay(std::time::Duration::from_millis(200))
        .ordering_header("ordering-key")
        .start()
        .await
        .unwrap();
    let total = 45u64;
    for n in 0..total {
        let key = KEYS[(n % 3) as usize];
        let env = Job { n }
            .to_envelope()
            .unwrap()
            .with_header("ordering-key", key);
        bus.publish_envelope(env).await.unwrap();
    }
    wait_until(
        "a holds its first job and b handled some",
        || {
            let entered = s.entered.lock().unwrap();
            entered.iter().any(|c| c.by == "a")
                && s.done().iter().filter(|c| c.by == "b").count() >= 3
        },
        || format!("a {:?}; calls {:?}", a.info(), s.done()),
    )
    .await;
    drop(a);
    a_gate.add_permits(1);
    wait_until(
        "all handled",
        || s.ok_set().len() == total as usize,
        || format!("{:?}", s.done()),
    )
    .await;
    settles(&bus, "after the member left").await;
    once_each(&s, 0..total, "a member dropped mid-flight");
    let mut per_key = BTreeMap::<String, Vec<u64>>::new();
    for c in s.done().into_iter().filter(|c| c.ok) {
        per_key.entry(c.key.clone().unwrap()).or_default().push(c.n);
    }
    for (key, ns) in &per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {key}: handled out of published order");
    }
    let retried = if fail_first_of_each_key { 0..3 } else { 0..0 };
    for n in retried.clone() {
        let calls: Vec<_> = s.per_n()[&n].iter().map(|c| (c.attempt, c.ok)).collect();
        assert_eq!(calls, [(1, false), (2, true)], "job {n} (attempt, ok)");
    }
    assert!(
        s.done()
            .iter()
            .filter(|c| !retried.contains(&c.n))
            .all(|c| c.attempt == 1),
        "no job was failed, each on attempt 1: {:?}",
        s.done()
            .iter()
            .filter(|c| c.attempt != 1)
            .collect::<Vec<_>>()
    );
    no_dead_letters(&bus, &log, "a member dropped mid-flight");
    bus.shutdown(crate::WAIT).await.unwrap();
}
