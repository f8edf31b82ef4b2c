//! Stress tests of the hand-off between publishers and workers: several publishers and
//! workers on a multi-thread runtime, small queues, every overflow policy, ordering keys and
//! priorities mixed. Each run is bounded by a timeout, so a lost wake-up fails instead of
//! hanging, and every message is accounted for exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::{
    Bus, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, MessageId, Outcome, Overflow,
    Priority, PublishError, Topic, handler_fn,
};

/// Upper bound for one stress run; a lost wake-up shows as this timeout.
const RUN: Duration = Duration::from_secs(30);
const PUBLISHERS: u64 = 4;
const PER_PUBLISHER: u64 = 12_500;
const KEYS_PER_PUBLISHER: u64 = 5;

/// What the handlers saw.
struct Tally {
    /// Times each message was handled, by global number.
    seen: Vec<AtomicU8>,
    handled: AtomicUsize,
    /// Last number handled per ordering key.
    last: Mutex<HashMap<String, u64>>,
    /// Per-key order violations, as text.
    disorder: Mutex<Vec<String>>,
}

impl Tally {
    fn new(total: u64) -> Arc<Self> {
        Arc::new(Self {
            seen: (0..total).map(|_| AtomicU8::new(0)).collect(),
            handled: AtomicUsize::new(0),
            last: Mutex::default(),
            disorder: Mutex::default(),
        })
    }
}

/// Every dead letter (the default in-memory store is bounded): reason, id and number.
#[derive(Clone, Default)]
struct Letters(Arc<Mutex<Vec<(DeadLetterReason, MessageId, u64)>>>);

impl DeadLetterSink for Letters {
    fn put(&self, letter: DeadLetter) {
        let n = number(&letter.envelope);
        self.0
            .lock()
            .unwrap()
            .push((letter.reason, letter.envelope.id, n));
    }
}

impl Letters {
    fn list(&self) -> Vec<(DeadLetterReason, MessageId, u64)> {
        self.0.lock().unwrap().clone()
    }
}

/// Message `i` of publisher `p`: every third unkeyed, the rest on one of the publisher's keys
/// (so a key has one publisher and its order is defined); priorities rotate.
fn message(topic: &Topic, p: u64, i: u64) -> Envelope {
    let n = p * PER_PUBLISHER + i;
    let priority = match i % 3 {
        0 => Priority::LOW,
        1 => Priority::NORMAL,
        _ => Priority::HIGH,
    };
    let env = Envelope::new(topic.clone(), n.to_string()).with_priority(priority);
    if i.is_multiple_of(3) {
        env
    } else {
        env.with_header("key", format!("p{p}k{}", i % KEYS_PER_PUBLISHER))
    }
}

fn number(env: &Envelope) -> u64 {
    std::str::from_utf8(&env.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("payload is a number")
}

/// A handler that counts each message, checks per-key order and now and then yields, so
/// workers interleave.
fn counting(tally: Arc<Tally>) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let tally = tally.clone();
        async move {
            let n = number(&env);
            if let Some(key) = env.header("key") {
                let mut last = tally.last.lock().unwrap();
                if let Some(prev) = last.insert(key.to_owned(), n)
                    && prev >= n
                {
                    tally
                        .disorder
                        .lock()
                        .unwrap()
                        .push(format!("{key}: {n} after {prev}"));
                }
            }
            tally.seen[n as usize].fetch_add(1, Ordering::SeqCst);
            tally.handled.fetch_add(1, Ordering::SeqCst);
            if n.is_multiple_of(7) {
                tokio::task::yield_now().await;
            }
            Ok::<_, std::io::Error>(Outcome::Ack)
        }
    })
}

/// Publishes `PUBLISHERS * PER_PUBLISHER` messages from concurrent publishers into one
/// subscription and waits until all accepted ones are settled. Returns how many publishes
/// were accepted, and the tally.
async fn run(overflow: Overflow, workers: usize, capacity: usize) -> (Letters, u64, Arc<Tally>) {
    let total = PUBLISHERS * PER_PUBLISHER;
    let letters = Letters::default();
    let bus = Bus::builder()
        .retry_delay(Duration::ZERO)
        .dead_letters(letters.clone())
        .build()
        .unwrap();
    let tally = Tally::new(total);
    let sub = bus
        .subscribe("stress", "stress.#", counting(tally.clone()))
        .workers(workers)
        .queue_capacity(capacity)
        .overflow(overflow)
        .ordering_header("key")
        .start()
        .await
        .unwrap();
    let topic = Topic::new("stress.msg").unwrap();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (bus, topic) = (bus.clone(), topic.clone());
            tokio::spawn(async move {
                let mut accepted = 0u64;
                for i in 0..PER_PUBLISHER {
                    match bus.publish_envelope(message(&topic, p, i)).await {
                        Ok(()) => accepted += 1,
                        Err(PublishError::Full { .. }) => {}
                        Err(e) => panic!("unexpected publish error: {e}"),
                    }
                }
                accepted
            })
        })
        .collect();
    let finished = tokio::time::timeout(RUN, async {
        let mut accepted = 0;
        for p in publishers {
            accepted += p.await.unwrap();
        }
        bus.run_until_idle().await;
        accepted
    })
    .await;
    let accepted = match finished {
        Ok(accepted) => accepted,
        Err(_) => panic!(
            "stalled ({overflow:?}): handled {}, queue {:?}, pending {}",
            tally.handled.load(Ordering::SeqCst),
            sub.info().depth,
            bus.pending()
        ),
    };
    let disorder = tally.disorder.lock().unwrap();
    assert!(disorder.is_empty(), "per-key order broken: {disorder:?}");
    let twice: Vec<_> = (0..total)
        .filter(|&n| tally.seen[n as usize].load(Ordering::SeqCst) > 1)
        .collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(sub.info().in_flight, 0);
    assert_eq!(sub.info().depth, 0);
    drop(disorder);
    (letters, accepted, tally)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_hands_every_message_to_exactly_one_worker() {
    let overflow = Overflow::Block {
        timeout: Duration::from_secs(3600),
    };
    let (letters, accepted, tally) = run(overflow, 3, 4).await;
    assert_eq!(accepted, PUBLISHERS * PER_PUBLISHER);
    assert_eq!(
        tally.handled.load(Ordering::SeqCst) as u64,
        PUBLISHERS * PER_PUBLISHER
    );
    assert!(letters.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_with_one_slot_and_one_worker() {
    let overflow = Overflow::Block {
        timeout: Duration::from_secs(3600),
    };
    let (_bus, accepted, tally) = run(overflow, 1, 1).await;
    assert_eq!(accepted, PUBLISHERS * PER_PUBLISHER);
    assert_eq!(tally.handled.load(Ordering::SeqCst) as u64, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adaptive_hands_every_message_to_exactly_one_worker() {
    let overflow = Overflow::Adaptive {
        max_delay: Duration::ZERO,
        timeout: Duration::from_secs(3600),
    };
    let (_bus, accepted, tally) = run(overflow, 4, 6).await;
    assert_eq!(accepted, PUBLISHERS * PER_PUBLISHER);
    assert_eq!(tally.handled.load(Ordering::SeqCst) as u64, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reject_new_handles_exactly_what_it_accepted() {
    let (_bus, accepted, tally) = run(Overflow::RejectNew, 3, 4).await;
    assert!(accepted > 0);
    assert_eq!(tally.handled.load(Ordering::SeqCst) as u64, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_oldest_handles_or_dead_letters_every_message_once() {
    let (letters, accepted, tally) = run(Overflow::DropOldest, 3, 4).await;
    let total = PUBLISHERS * PER_PUBLISHER;
    assert_eq!(accepted, total, "drop-oldest never refuses");
    let letters = letters.list();
    assert!(
        letters
            .iter()
            .all(|(reason, _, _)| *reason == DeadLetterReason::Dropped)
    );
    for &(_, _, n) in &letters {
        assert_eq!(
            tally.seen[n as usize].load(Ordering::SeqCst),
            0,
            "{n} was both dropped and handled"
        );
    }
    assert_eq!(
        tally.handled.load(Ordering::SeqCst) + letters.len(),
        total as usize
    );
}

/// Shutdown while publishers wait for room and workers are busy, some of them stuck: every
/// accepted message is handled or reported (and dead-lettered) exactly once, and what was
/// refused is neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_under_load_accounts_for_every_accepted_message_once() {
    let total = PUBLISHERS * PER_PUBLISHER;
    let letters = Letters::default();
    let bus = Bus::builder()
        .dead_letters(letters.clone())
        .build()
        .unwrap();
    let tally = Tally::new(total);
    let t = tally.clone();
    let progress = Arc::new(tokio::sync::Notify::new());
    let pr = progress.clone();
    let _sub = bus
        .subscribe(
            "stress",
            "stress.#",
            handler_fn(move |env: Envelope| {
                let (t, pr) = (t.clone(), pr.clone());
                async move {
                    let n = number(&env);
                    // Two unkeyed messages never finish (a stuck keyed one would fill the queue with its
                    // lane): the deadline has to abort their workers.
                    if n == 99 || n == PER_PUBLISHER + 99 {
                        std::future::pending::<()>().await;
                    }
                    t.seen[n as usize].fetch_add(1, Ordering::SeqCst);
                    if t.handled.fetch_add(1, Ordering::SeqCst) + 1 == 2_000 {
                        pr.notify_one();
                    }
                    Ok::<_, std::io::Error>(Outcome::Ack)
                }
            }),
        )
        .workers(4)
        .queue_capacity(3)
        .overflow(Overflow::Block {
            timeout: Duration::from_secs(3600),
        })
        .ordering_header("key")
        .start()
        .await
        .unwrap();
    let topic = Topic::new("stress.msg").unwrap();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (bus, topic) = (bus.clone(), topic.clone());
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for i in 0..PER_PUBLISHER {
                    let env = message(&topic, p, i);
                    let id = env.id.clone();
                    match bus.publish_envelope(env).await {
                        Ok(()) => accepted.push((id, p * PER_PUBLISHER + i)),
                        Err(PublishError::ShuttingDown) => break,
                        Err(e) => panic!("unexpected publish error: {e}"),
                    }
                }
                accepted
            })
        })
        .collect();
    tokio::time::timeout(RUN, progress.notified())
        .await
        .expect("the first 2000 messages are handled");
    let report = tokio::time::timeout(RUN, bus.shutdown(Duration::from_millis(300)))
        .await
        .expect("shutdown returns")
        .unwrap();
    let mut accepted = Vec::new();
    for p in publishers {
        accepted.extend(tokio::time::timeout(RUN, p).await.unwrap().unwrap());
    }
    let left: HashSet<MessageId> = report.left.iter().cloned().collect();
    assert_eq!(left.len(), report.left.len(), "reported twice");
    let accepted_ids: HashSet<MessageId> = accepted.iter().map(|(id, _)| id.clone()).collect();
    for (id, n) in &accepted {
        let handled = tally.seen[*n as usize].load(Ordering::SeqCst);
        let reported = left.contains(id) as u8;
        assert_eq!(
            handled + reported,
            1,
            "message {n}: handled {handled} times, reported {reported} times"
        );
    }
    assert!(
        left.is_subset(&accepted_ids),
        "a refused message was reported"
    );
    let lettered: HashSet<MessageId> = letters.list().iter().map(|(_, id, _)| id.clone()).collect();
    assert_eq!(lettered, left, "reported and dead-lettered agree");
    assert!(!left.is_empty(), "the stuck messages are reported");
    assert_eq!(bus.pending(), 0);
}

/// A worker whose handler is always ready and whose queue stays full never waits on
/// anything; it must still give its thread to other tasks now and then (tokio's cooperative
/// budget), or one busy subscription starves everything else on that thread.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_worker_lets_other_tasks_run() {
    const N: usize = 10_000;
    let bus = Bus::builder().queue_capacity(N).build().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let _sub = bus
        .subscribe(
            "busy",
            "work.item",
            handler_fn(move |_env: Envelope| {
                h.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, std::convert::Infallible>(Outcome::Ack) }
            }),
        )
        .start()
        .await
        .unwrap();
    let topic = Topic::new("work.item").unwrap();
    for i in 0..N {
        bus.publish_envelope(Envelope::new(topic.clone(), i.to_string()))
            .await
            .unwrap();
    }
    // Queued behind the worker, which was woken by the first publish.
    let other = tokio::spawn({
        let handled = handled.clone();
        async move { handled.load(Ordering::Relaxed) }
    });
    let seen_by_other = tokio::time::timeout(RUN, other).await.unwrap().unwrap();
    assert!(
        seen_by_other < N,
        "the other task ran only after the worker had handled all {seen_by_other} messages"
    );
    tokio::time::timeout(RUN, async {
        while handled.load(Ordering::Relaxed) < N {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}
