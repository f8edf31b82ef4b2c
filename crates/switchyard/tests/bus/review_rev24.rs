//! Review rev24: bounded resources under churn and abuse, through the public API only. A bus
//! that runs for months sees many distinct topics, subscriptions and sessions come and go,
//! requests that time out, and slow handlers. After each churn the figures the API exposes
//! (`registry()`, `pending()`, the dead-letter store, the dedup store, the log's streams and
//! groups) must come back to a bound: the one the docs state, or, where they are silent, the
//! one named in the test. RSS (`/proc/self/statm`) is printed as a supporting figure only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchyard::{
    BoxError, Bus, Envelope, Outcome, Overflow, PublishError, SendError, Topic, handler_fn,
};
use switchyard_middleware::dedup::{DedupConfig, DedupLayer};

use crate::{Double, WAIT};

/// Resident set size in MiB (supporting figure, never asserted on).
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096 / (1024 * 1024))
}

async fn idle(bus: &Bus, what: &str) {
    tokio::time::timeout(WAIT * 2, bus.run_until_idle())
        .await
        .unwrap_or_else(|_| panic!("{what}: bus.pending() still {}", bus.pending()));
    assert_eq!(bus.pending(), 0, "{what}");
}

fn ack_counter(n: Arc<AtomicU64>) -> switchyard::BoxHandler {
    handler_fn(move |_env: Envelope| {
        let n = n.clone();
        async move {
            n.fetch_add(1, Ordering::Relaxed);
            Ok::<_, std::io::Error>(())
        }
    })
}

/// 100 000 distinct topics, each published once to a `#` subscription: every one is handled,
/// and nothing per topic is left behind that the API shows (one registry row, no pending,
/// an empty queue). The router's cache is documented as bounded (bus.md "a trie plus a
/// bounded cache"); it has no public size, so RSS is printed beside the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_distinct_topics_leave_one_row_and_nothing_pending() {
    const N: u64 = 100_000;
    let bus = Bus::new();
    let handled = Arc::new(AtomicU64::new(0));
    let sub = bus
        .subscribe("all", "#", ack_counter(handled.clone()))
        .queue_capacity(4096)
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(10),
        })
        .start()
        .await
        .unwrap();
    let before = rss_mib();
    for i in 0..N {
        let topic = Topic::new(&format!("tenant{}.device{i}.reading", i % 97)).unwrap();
        bus.publish_envelope(Envelope::new(topic, "{}"))
            .await
            .unwrap();
    }
    idle(&bus, "after 100k distinct topics").await;
    assert_eq!(handled.load(Ordering::Relaxed), N);
    let rows = bus.registry();
    assert_eq!(rows.len(), 1, "one subscription, one row: {rows:?}");
    assert_eq!(rows[0].depth, 0);
    assert_eq!(rows[0].in_flight, 0);
    assert_eq!(rows[0].stats.acked, N);
    assert_eq!(sub.stats().delivered, N);
    eprintln!("100k topics: RSS {before} MiB -> {} MiB", rss_mib());
}

/// 100 000 subscribe / drop cycles (a fresh pattern each time): the registry returns to the
/// one subscription kept, publishes reach only it, and nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_subscribe_and_drop_cycles_return_the_registry_to_its_baseline() {
    const N: u64 = 100_000;
    let bus = Bus::new();
    let kept = Arc::new(AtomicU64::new(0));
    let _kept = bus
        .subscribe("kept", "churn.#", ack_counter(kept.clone()))
        .start()
        .await
        .unwrap();
    let transient = Arc::new(AtomicU64::new(0));
    let before = rss_mib();
    for i in 0..N {
        let sub = bus
            .subscribe(
                &format!("transient-{i}"),
                &format!("churn.t{i}.*"),
                ack_counter(transient.clone()),
            )
            .start()
            .await
            .unwrap();
        if i % 10_000 == 0 {
            // a publish through the cache while the transient one is routed
            bus.publish_envelope(Envelope::new(
                Topic::new(&format!("churn.t{i}.x")).unwrap(),
                "{}",
            ))
            .await
            .unwrap();
        }
        drop(sub);
    }
    idle(&bus, "after 100k subscribe/drop cycles").await;
    // A dropped subscription leaves the registry once its workers have exited (a few dozen
    // were still winding down right after the loop): wait for that, bounded by WAIT.
    let lingering = bus.registry().len() - 1;
    crate::until("the dropped subscriptions' workers exit", || {
        bus.registry().len() == 1
    })
    .await;
    let rows = bus.registry();
    assert_eq!(
        rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["kept"],
        "only the kept subscription is left"
    );
    // every dropped pattern is gone from the router: publishing to them reaches only `kept`
    for i in (0..N).step_by(9_973) {
        bus.publish_envelope(Envelope::new(
            Topic::new(&format!("churn.t{i}.x")).unwrap(),
            "{}",
        ))
        .await
        .unwrap();
    }
    idle(&bus, "after publishing to dropped patterns").await;
    let transient_seen = transient.load(Ordering::Relaxed);
    assert_eq!(transient_seen, 10, "one per i % 10000 == 0, while routed");
    assert_eq!(kept.load(Ordering::Relaxed), 10 + N.div_ceil(9_973));
    eprintln!(
        "100k sub cycles: {lingering} rows still winding down after the loop; RSS {before} MiB -> {} MiB",
        rss_mib()
    );
}

/// 20 000 sessions, each with a handler of its own, opened and ended: the registry returns to
/// its baseline and nothing is pending (the started/ended events are handled by the watcher).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_sessions_opened_and_ended_leave_no_subscription_behind() {
    const N: u64 = 20_000;
    let bus = Bus::new();
    let lifecycle = Arc::new(AtomicU64::new(0));
    let _watch = bus
        .subscribe(
            "watch",
            "switchyard.session.#",
            ack_counter(lifecycle.clone()),
        )
        .queue_capacity(4096)
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(10),
        })
        .start()
        .await
        .unwrap();
    let baseline = bus.registry().len();
    for i in 0..N {
        let session = bus.session(format!("s-{i}")).await.unwrap();
        session
            .subscribe("log", "jobs.#", ack_counter(Arc::new(AtomicU64::new(0))))
            .start()
            .await
            .unwrap()
            .detach();
        if i % 2 == 0 {
            session.end().await.unwrap();
        } else {
            drop(session); // ended from a task
        }
    }
    crate::until("every session's ended event is handled", || {
        lifecycle.load(Ordering::Relaxed) == 2 * N
    })
    .await;
    idle(&bus, "after 20k sessions").await;
    // A removed subscription leaves the registry when its worker has seen the removal, a
    // moment after the session ended (its `ended` event may be handled first): wait for it.
    crate::until("every session's handler to leave the registry", || {
        bus.registry().len() == baseline
    })
    .await;
    let rows = bus.registry();
    assert_eq!(rows.len(), baseline, "session handlers left behind");
    assert!(rows.iter().all(|r| r.session.is_none()));
}

/// 2 000 requests that each time out while their handler is still busy: every caller gets
/// `Timeout` (or `Full`, the queue's refusal) and, once the handlers finish, nothing is
/// pending, queued or in flight: the late replies are discarded, not kept.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn two_thousand_timed_out_requests_leave_nothing_pending() {
    const N: u64 = 2_000;
    let bus = Bus::new();
    let finished = Arc::new(AtomicU64::new(0));
    let done = finished.clone();
    let _h = bus
        .handle(move |c: Double, _| {
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::io::Error>(c.n * 2)
            }
        })
        .workers(4)
        .queue_capacity(256)
        .start()
        .await
        .unwrap();
    let (mut timeouts, mut full) = (0u64, 0u64);
    for n in 0..N {
        match bus.request(Double { n }, Duration::from_millis(1)).await {
            Err(SendError::Timeout { .. }) => timeouts += 1,
            Err(SendError::Full { .. }) => full += 1,
            other => panic!("request {n}: expected Timeout, got {other:?}"),
        }
    }
    assert_eq!(timeouts + full, N);
    idle(&bus, "after 2000 timed-out requests").await;
    let row = &bus.registry()[0];
    assert_eq!((row.depth, row.in_flight), (0, 0), "{row:?}");
    eprintln!(
        "timeouts {timeouts}, full {full}, handler runs finished {}",
        finished.load(Ordering::Relaxed)
    );
}

/// The default dead-letter store keeps at most 10 000 entries, the oldest evicted and counted
/// (bus.md: "`InMemoryDeadLetters`, 10 000 entries, the oldest evicted and counted").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_dead_letter_store_stops_at_ten_thousand_and_counts_evictions() {
    const N: u64 = 12_500;
    let bus = Bus::new();
    let _rejecting = bus
        .subscribe(
            "rejecting",
            "bad.#",
            handler_fn(|_env: Envelope| async {
                Ok::<_, BoxError>(Outcome::Reject {
                    reason: "no".into(),
                })
            }),
        )
        .queue_capacity(4096)
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(10),
        })
        .start()
        .await
        .unwrap();
    for i in 0..N {
        let env = Envelope::new(Topic::new(&format!("bad.k{i}")).unwrap(), "{}");
        bus.publish_envelope(env).await.unwrap();
    }
    idle(&bus, "after 12.5k rejections").await;
    let store = bus.dead_letters().expect("the default store");
    assert_eq!(store.len(), 10_000);
    assert_eq!(store.evicted(), N - 10_000);
    let snap = bus.metrics_snapshot();
    assert_eq!(snap.dead_letters, Some(10_000));
    assert_eq!(snap.dead_letters_evicted, Some(N - 10_000));
    assert_eq!(bus.registry()[0].stats.dead_lettered, N);
}

/// The dedup store is bounded by its capacity (keys beyond it evicted and counted) and by its
/// TTL: once the TTL has passed, the next message's check drops every expired key.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_dedup_store_is_bounded_by_its_capacity_and_forgets_after_its_ttl() {
    const CAP: usize = 1_000;
    const N: u64 = 5_000;
    let bus = Bus::new();
    let dedup = DedupLayer::new(
        DedupConfig::default()
            .ttl(Duration::from_secs(60))
            .capacity(CAP),
    )
    .handler("deduped");
    let seen = dedup.handle();
    let handled = Arc::new(AtomicU64::new(0));
    let _s = bus
        .subscribe("deduped", "dd.#", ack_counter(handled.clone()))
        .layer(dedup)
        .queue_capacity(8192)
        .start()
        .await
        .unwrap();
    for i in 0..N {
        bus.publish_envelope(Envelope::new(
            Topic::new(&format!("dd.k{i}")).unwrap(),
            "{}",
        ))
        .await
        .unwrap();
    }
    idle(&bus, "after 5000 distinct ids").await;
    assert_eq!(handled.load(Ordering::Relaxed), N);
    assert_eq!(seen.len(), CAP, "at most `capacity` keys kept");
    assert_eq!(seen.evicted(), N - CAP as u64);

    tokio::time::advance(Duration::from_secs(61)).await;
    bus.publish_envelope(Envelope::new(Topic::new("dd.after").unwrap(), "{}"))
        .await
        .unwrap();
    idle(&bus, "after the TTL").await;
    assert_eq!(seen.len(), 1, "expired keys dropped once the TTL passed");
}

/// A handler that never finishes: the queue holds at most its capacity, every further publish
/// is refused with `Full` naming the subscription (`RejectNew` at once, `Block` after its
/// timeout), and `pending()` stays at capacity + workers.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handler_that_never_finishes_bounds_its_queue_and_tells_the_publisher() {
    const CAP: usize = 16;
    let bus = Bus::new();
    let stuck = |name: &str, pattern: &str, overflow| {
        bus.subscribe(
            name,
            pattern,
            handler_fn(|_env: Envelope| async {
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(())
            }),
        )
        .workers(2)
        .queue_capacity(CAP)
        .overflow(overflow)
        .start()
    };
    let _reject = stuck("reject", "slow.reject", Overflow::RejectNew)
        .await
        .unwrap();
    let _block = stuck(
        "block",
        "slow.block",
        Overflow::Block {
            timeout: Duration::from_millis(20),
        },
    )
    .await
    .unwrap();
    for topic in ["slow.reject", "slow.block"] {
        let (mut ok, mut refused) = (0usize, 0usize);
        for _ in 0..1_000 {
            match bus
                .publish_envelope(Envelope::new(Topic::new(topic).unwrap(), "{}"))
                .await
            {
                Ok(()) => ok += 1,
                Err(PublishError::Full { subscriptions, .. }) => {
                    assert_eq!(subscriptions.len(), 1, "{subscriptions:?}");
                    refused += 1;
                }
                Err(e) => panic!("{topic}: unexpected {e}"),
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(ok, CAP + 2, "{topic}: capacity + workers accepted");
        assert_eq!(refused, 1_000 - CAP - 2, "{topic}");
    }
    for row in bus.registry() {
        assert_eq!(row.depth, CAP, "{row:?}");
        assert_eq!(row.in_flight, 2, "{row:?}");
        assert_eq!(row.stats.refused_full, (1_000 - CAP - 2) as u64, "{row:?}");
    }
    assert_eq!(bus.pending(), 2 * (CAP + 2));
    let report = bus.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(report.left.len(), 2 * (CAP + 2), "every held message named");
    assert_eq!(bus.pending(), 0);
}

/// On the log transport, 3 000 distinct topics go to the one catch-all stream, and 300
/// add/drop cycles of one named subscription keep one consumer group: the log's streams and
/// groups do not grow with topics or with re-subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_log_distinct_topics_and_resubscriptions_do_not_grow_streams_or_groups() {
    use switchyard_log::{Durability, LogConfig, LogTransport};
    let dir = tempfile::tempdir().unwrap();
    let log =
        LogTransport::open(LogConfig::new(dir.path()).with_durability(Durability::Never)).unwrap();
    let bus = Bus::builder().transport(log.clone()).build().unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    for round in 0..300u64 {
        let sub = bus
            .subscribe("reader", "dev.#", ack_counter(handled.clone()))
            .start()
            .await
            .unwrap();
        for i in 0..10 {
            let topic = Topic::new(&format!("dev.r{round}.t{i}")).unwrap();
            bus.publish_envelope(Envelope::new(topic, "{}"))
                .await
                .unwrap();
        }
        idle(&bus, "a log round").await;
        drop(sub);
    }
    assert_eq!(handled.load(Ordering::Relaxed), 3_000);
    let streams = log.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    let groups = log.group_lags();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].group, "reader");
    bus.shutdown(WAIT).await.unwrap();
}

/// Requests to a command handler that never finishes: each caller is answered (`Timeout` while
/// its command waits), none hangs, and what the bus holds stays at the queue's capacity plus
/// its workers however many requests are made. (Until h-fixexpired the queue filled with
/// expired requests and refused the next ones, `Full`; now a full queue dead-letters its
/// expired requests, `Expired`, to make room.)
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn requests_to_a_handler_that_never_finishes_are_answered_and_stay_bounded() {
    const CAP: usize = 8;
    let bus = Bus::new();
    let _h = bus
        .handle(|_c: Double, _| async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(0)
        })
        .workers(1)
        .queue_capacity(CAP)
        .overflow(Overflow::RejectNew)
        .start()
        .await
        .unwrap();
    let (mut timeouts, mut full) = (0usize, 0usize);
    for n in 0..500 {
        match tokio::time::timeout(WAIT, bus.request(Double { n }, Duration::from_millis(5)))
            .await
            .expect("a request to a stuck handler hung past its deadline")
        {
            Err(SendError::Timeout { .. }) => timeouts += 1,
            Err(SendError::Full { .. }) => full += 1,
            other => panic!("request {n}: {other:?}"),
        }
        assert!(
            bus.pending() <= CAP + 1,
            "after request {n}: pending {} over capacity + workers",
            bus.pending()
        );
    }
    assert_eq!(timeouts + full, 500);
    assert_eq!(full, 0, "a queue full of expired requests makes room");
    let row = &bus.registry()[0];
    assert!(row.depth <= CAP && row.in_flight <= 1, "{row:?}");
    let expired = bus
        .dead_letters()
        .unwrap()
        .select(&switchyard::DeadLetterFilter::new().reason(switchyard::DeadLetterReason::Expired))
        .len();
    assert_eq!(
        expired,
        500 - 1 - row.depth,
        "every request but the stuck one and those still queued is dead-lettered"
    );
    eprintln!(
        "stuck handler: {timeouts} timeouts, {full} full, pending {}",
        bus.pending()
    );
}
