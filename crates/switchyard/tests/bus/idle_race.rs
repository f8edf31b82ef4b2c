//! The pending count across threads (`pending.rs`: accepts and releases counted on separate
//! cache lines): publishers and workers on a two-thread runtime, the count taken back by
//! workers while the publisher waits for idle. `run_until_idle` must return after every
//! message was handled (never before) and never miss the last release; the shutdown report
//! counts each drained message once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard::{Bus, Envelope, Outcome, Topic, handler_fn};

/// A bound for one wait; a missed last release shows as this timeout.
const BOUND: Duration = Duration::from_secs(10);

fn counting(handled: Arc<AtomicUsize>) -> switchyard::BoxHandler {
    handler_fn(move |_env: Envelope| {
        let handled = handled.clone();
        async move {
            handled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Outcome::Ack)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_idle_waits_for_the_last_settle_of_workers_on_other_threads() {
    let bus = Bus::builder().build().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let mut subs = Vec::new();
    for name in ["a", "b"] {
        subs.push(
            bus.subscribe(name, "race.#", counting(handled.clone()))
                .workers(2)
                .start()
                .await
                .unwrap(),
        );
    }
    let topic = Topic::new("race.msg").unwrap();
    let mut total = 0;
    for round in 0..1_000usize {
        let n = 1 + round % 5;
        // Two publishers on the runtime's threads, then the wait, with workers settling.
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let (bus, topic) = (bus.clone(), topic.clone());
                tokio::spawn(async move {
                    for _ in 0..n {
                        bus.publish_envelope(Envelope::new(topic.clone(), "x"))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for p in publishers {
            p.await.unwrap();
        }
        total += 2 * n * subs.len();
        tokio::time::timeout(BOUND, bus.run_until_idle())
            .await
            .unwrap_or_else(|_| panic!("round {round}: run_until_idle missed the last settle"));
        assert_eq!(
            handled.load(Ordering::SeqCst),
            total,
            "round {round}: run_until_idle returned before every delivery was handled"
        );
        assert_eq!(bus.pending(), 0);
    }
    let per_sub: u64 = subs.iter().map(|s| s.stats().acked).sum();
    assert_eq!(per_sub, total as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_counts_every_drained_message_once() {
    let bus = Bus::builder().build().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    // Closed until the shutdown has begun, so every message settles during it.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let n = 2_000;
    let sub = bus
        .subscribe("drain", "drain.#", {
            let (handled, gate) = (handled.clone(), gate.clone());
            handler_fn(move |_env: Envelope| {
                let (handled, gate) = (handled.clone(), gate.clone());
                async move {
                    gate.acquire().await.unwrap().forget();
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Outcome::Ack)
                }
            })
        })
        .workers(2)
        .queue_capacity(n)
        .start()
        .await
        .unwrap();
    let topic = Topic::new("drain.msg").unwrap();
    for _ in 0..n {
        bus.publish_envelope(Envelope::new(topic.clone(), "x"))
            .await
            .unwrap();
    }
    // The shutdown reads the settled count when first polled; only then may handlers run.
    let (report, ()) = tokio::join!(tokio::time::timeout(BOUND, bus.shutdown(BOUND)), async {
        gate.add_permits(n);
    });
    let report = report.expect("shutdown returns").unwrap();
    assert!(
        report.left.is_empty() && report.nacked.is_empty(),
        "{report:?}"
    );
    assert_eq!(handled.load(Ordering::SeqCst), n);
    assert_eq!(
        report.drained, n as u64,
        "each message drained, counted once"
    );
    assert_eq!(sub.stats().acked, n as u64);
    assert_eq!(bus.pending(), 0);
}
