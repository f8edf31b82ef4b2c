//! Review rev4: dead-letter replay by entry key, attacked through eviction, stale keys, the
//! file journal across restarts (and capacity changes), a `limit` cutting a message's
//! entries, `keep_entries`, and a purge racing a replay.

use std::sync::Arc;

use switchyard_core::{DeadLetter, DeadLetterSink, Envelope, PublishError};
use switchyard_middleware::dlq::{
    DeadLetterFilter, DeadLetterQueue, FileDeadLetterQueue, FileDlqOptions, InMemoryDeadLetters,
    REPLAY_COUNT, Replayer,
};

use crate::common::env;
use crate::dlq_entries::{letter, recording};

fn handlers(q: &dyn DeadLetterQueue) -> Vec<(String, String)> {
    q.list(&DeadLetterFilter::new())
        .into_iter()
        .map(|l| {
            (
                l.envelope.topic.to_string(),
                l.handler.map(|h| h.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

/// An entry evicted and then dead-lettered again gets a new key: the keys read before the
/// eviction remove nothing, the re-added entry stays.
#[test]
fn stale_keys_of_an_evicted_then_re_added_entry_remove_nothing() {
    let q = InMemoryDeadLetters::new(2);
    let a = env("a.a");
    q.insert(letter(&a, "h"));
    let old: Vec<_> = DeadLetterQueue::entries_of(&q, &a.id)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    q.insert(letter(&env("a.b"), "h"));
    let evicted = q.insert(letter(&env("a.c"), "h"));
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].envelope.id, a.id);
    q.insert(letter(&a, "h")); // evicts a.b
    assert_eq!(q.len(), 2);
    assert_eq!(
        q.remove_entries(&old).unwrap(),
        0,
        "the key died with the eviction"
    );
    assert!(q.get(&a.id).is_some(), "the re-added entry stays");
    assert_eq!(q.len(), 2);
    // Keys of entries evicted meanwhile (a.c goes when two more arrive) are skipped too.
    let keys: Vec<_> = DeadLetterQueue::entries(&q, &DeadLetterFilter::new())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    q.insert(letter(&env("a.d"), "h"));
    q.insert(letter(&env("a.e"), "h"));
    assert_eq!(q.remove_entries(&keys).unwrap(), 0);
    assert_eq!(q.len(), 2);
    assert_eq!(
        q.bytes(),
        q.list().iter().map(DeadLetter::size).sum::<usize>()
    );
}

/// A `limit` that lists only one of a message's two entries: the replay publishes the
/// message once and removes the listed entry only; the other stays, intact, and a later
/// replay of everything publishes the message again and empties the queue.
async fn a_limit_cutting_a_message_in_half(q: &dyn DeadLetterQueue) {
    let (x, y) = (env("billing.x"), env("billing.y"));
    q.put(letter(&x, "a"));
    q.put(letter(&y, "a"));
    q.put(letter(&x, "b"));
    let (seen, target) = recording();
    let report = Replayer::new(q, &target)
        .filtered(&DeadLetterFilter::new().limit(1))
        .await;
    assert_eq!(report.replayed, vec![x.id.clone()]);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        handlers(q),
        vec![
            ("billing.y".into(), "a".into()),
            ("billing.x".into(), "b".into())
        ],
        "x's entry by b was not listed and stays"
    );
    assert_eq!(q.entries_of(&x.id).len(), 1);
    assert_eq!(q.get(&x.id).unwrap().handler.as_deref(), Some("b"));
    let report = Replayer::new(q, &target).all().await;
    assert_eq!(report.replayed, vec![y.id.clone(), x.id.clone()]);
    assert!(q.is_empty());
}

#[tokio::test]
async fn a_limit_cutting_a_message_in_half_removes_only_the_listed_entry_from_memory() {
    a_limit_cutting_a_message_in_half(&InMemoryDeadLetters::new(10)).await;
}

#[tokio::test]
async fn a_limit_cutting_a_message_in_half_removes_only_the_listed_entry_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    a_limit_cutting_a_message_in_half(&q).await;
    drop(q);
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    assert!(q.is_empty());
}

/// A removal by key written before a restart removes, when the journal is read back, only
/// the entry it removed: the other handler's entry of the same message stays, and the same
/// (message, handler) dead-lettered again after the removal stays too.
#[tokio::test]
async fn a_removal_by_key_read_back_after_restarts_removes_only_what_it_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let x = env("billing.x");
    {
        let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
        q.put(letter(&x, "a"));
        q.put(letter(&x, "b"));
        let (_seen, target) = recording();
        let report = Replayer::new(&q, &target)
            .filtered(&DeadLetterFilter::new().handler("a"))
            .await;
        assert_eq!(report.replayed, vec![x.id.clone()]);
        assert_eq!(q.len(), 1);
    }
    {
        let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
        assert_eq!(handlers(&q), vec![("billing.x".into(), "b".into())]);
        let mut again = letter(&x, "a");
        again.error = "again".into();
        q.put(again);
        // A key read in this process, then the entry replaced: the key removes nothing.
        let stale: Vec<_> = q.entries_of(&x.id).into_iter().map(|(k, _)| k).collect();
        let mut third = letter(&x, "a");
        third.error = "third".into();
        q.put(third);
        assert_eq!(q.remove_entries(&stale).unwrap(), 1, "only b's entry");
    }
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    let left = q.list(&DeadLetterFilter::new());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].handler.as_deref(), Some("a"));
    assert_eq!(left[0].error, "third");
}

/// The file queue's evicted entries: an entry evicted on reopen with a lower capacity
/// ("the oldest are evicted (and counted) beyond it") comes back when the queue is opened
/// again with a higher one: the eviction on open is not written to the journal.
#[test]
fn entries_evicted_on_reopen_with_a_lower_capacity_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let cap = |n| FileDlqOptions {
        capacity: Some(n),
        ..FileDlqOptions::default()
    };
    {
        let q = FileDeadLetterQueue::open(&path, cap(3)).unwrap();
        for t in ["a.a", "a.b", "a.c"] {
            q.put(letter(&env(t), "h"));
        }
        assert_eq!(q.len(), 3);
    }
    {
        let q = FileDeadLetterQueue::open(&path, cap(1)).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.evicted(), 2);
    }
    let q = FileDeadLetterQueue::open(&path, cap(3)).unwrap();
    assert_eq!(
        handlers(&q),
        vec![("a.c".into(), "h".into())],
        "the two entries evicted by the capacity of 1 stay gone"
    );
}

/// Runtime evictions are journaled: reopening with the same capacity shows the same
/// entries, and with a higher capacity nothing evicted at runtime comes back.
#[test]
fn runtime_evictions_stay_gone_after_reopen_with_a_higher_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let cap = |n| FileDlqOptions {
        capacity: Some(n),
        ..FileDlqOptions::default()
    };
    let x = env("a.x");
    {
        let q = FileDeadLetterQueue::open(&path, cap(2)).unwrap();
        q.put(letter(&x, "h"));
        q.put(letter(&env("a.b"), "h"));
        q.put(letter(&env("a.c"), "h")); // evicts x
        q.put(letter(&x, "h2")); // evicts a.b
        assert_eq!(
            handlers(&q),
            vec![("a.c".into(), "h".into()), ("a.x".into(), "h2".into())]
        );
    }
    let q = FileDeadLetterQueue::open(&path, cap(10)).unwrap();
    assert_eq!(
        handlers(&q),
        vec![("a.c".into(), "h".into()), ("a.x".into(), "h2".into())]
    );
}

/// `keep_entries(true)` leaves every entry (same keys, same count); replaying again without
/// it removes them; the second kept replay carries the same replay count (documented).
#[tokio::test]
async fn kept_replays_leave_the_entries_and_a_later_replay_removes_them() {
    let q = InMemoryDeadLetters::new(10);
    let x = env("billing.x");
    q.insert(letter(&x, "a"));
    q.insert(letter(&x, "b"));
    let before: Vec<_> = DeadLetterQueue::entries_of(&q, &x.id)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let (seen, target) = recording();
    for _ in 0..2 {
        let report = Replayer::new(&q, &target).keep_entries(true).all().await;
        assert_eq!(report.replayed, vec![x.id.clone()]);
    }
    let after: Vec<_> = DeadLetterQueue::entries_of(&q, &x.id)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(before, after, "kept entries keep their keys");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].header(REPLAY_COUNT), Some("1"));
        assert_eq!(seen[1].header(REPLAY_COUNT), Some("1"));
    }
    Replayer::new(&q, &target).one(x.id.clone()).await.unwrap();
    assert!(q.is_empty());
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// A purge that runs while a replay's publish is in flight: the replay still reports the
/// message replayed (its entries are gone either way), nothing is left, and the journal
/// agrees after a reopen; a message dead-lettered again after the purge stays.
#[tokio::test]
async fn a_purge_during_a_replay_leaves_nothing_and_a_newer_entry_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let q: Arc<FileDeadLetterQueue> =
        Arc::new(FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap());
    let (x, y) = (env("billing.x"), env("billing.y"));
    q.put(letter(&x, "a"));
    q.put(letter(&x, "b"));
    q.put(letter(&y, "a"));
    let inner = q.clone();
    let target = move |e: Envelope| {
        if e.id == x.id {
            let n = inner.purge(&DeadLetterFilter::new()).unwrap();
            assert_eq!(n, 3);
            inner.put(letter(&e, "b"));
        }
        futures::future::ready(Ok::<(), PublishError>(()))
    };
    let report = Replayer::new(&*q, &target).all().await;
    assert!(report.failed.is_empty(), "{report:?}");
    let x = q.list(&DeadLetterFilter::new());
    assert_eq!(report.replayed.len(), 2, "{report:?}");
    assert_eq!(x.len(), 1, "x failed again by b after the purge stays");
    drop(q);
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        q.list(&DeadLetterFilter::new())[0].handler.as_deref(),
        Some("b")
    );
}

mod recycle_drop {
    //! The resilience stack's recycle hook with a handler future whose `Drop` panics
    //! ("panic capture" is part of the stack): a timeout drops the future inside the
    //! stack's poll.

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use switchyard_core::{BoxError, Envelope, Outcome};
    use switchyard_middleware::resilience::{Recycle, ResilienceConfig, ResilienceLayer};
    use switchyard_middleware::retry::RetryPolicy;
    use tower::{Layer, Service, ServiceExt};

    use crate::common::env;

    #[derive(Clone, Default)]
    struct Handler {
        dropped: Arc<AtomicUsize>,
        hang: bool,
    }

    struct Call {
        hang: bool,
        dropped: Arc<AtomicUsize>,
    }

    impl Future for Call {
        type Output = Result<Outcome, BoxError>;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.hang {
                Poll::Pending
            } else {
                Poll::Ready(Err("failed".into()))
            }
        }
    }

    impl Drop for Call {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
            panic!("the handler's future panics in Drop");
        }
    }

    impl Service<Envelope> for Handler {
        type Response = Outcome;
        type Error = BoxError;
        type Future = Call;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _env: Envelope) -> Call {
            Call {
                hang: self.hang,
                dropped: self.dropped.clone(),
            }
        }
    }

    impl Recycle for Handler {
        fn recycle(&mut self, ended: Call) {
            drop(ended);
        }
    }

    /// A call that times out: the stack drops the handler's future in its poll; its `Drop`
    /// panics. Expected (panic capture): the call ends with an error, no unwind out of the
    /// stack's future.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_drop_at_a_timeout_is_captured() {
        let handler = Handler {
            hang: true,
            ..Handler::default()
        };
        let config = ResilienceConfig::default()
            .retry(RetryPolicy::default().max_attempts(1))
            .timeout(Duration::from_millis(50));
        let mut svc = ResilienceLayer::new("drop-panics", config).layer(handler.clone());
        svc.ready().await.unwrap();
        let fut = svc.call(env("t.drop"));
        let ended = tokio::spawn(fut).await;
        assert_eq!(handler.dropped.load(Ordering::SeqCst), 1);
        match ended {
            Ok(result) => assert!(result.is_err(), "the timeout is an error"),
            Err(join) => panic!("the stack's future unwound: {join}"),
        }
    }

    /// A failed first attempt that is retried: the stack drops its future when the retry
    /// begins; its `Drop` panics. Expected the same: an error (or the retry's result), no
    /// unwind.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_drop_when_a_retry_begins_is_captured() {
        let handler = Handler::default();
        let config = ResilienceConfig::default().retry(RetryPolicy::default().max_attempts(2));
        let mut svc = ResilienceLayer::new("drop-panics", config).layer(handler.clone());
        svc.ready().await.unwrap();
        let fut = svc.call(env("t.drop"));
        let ended = tokio::spawn(fut).await;
        assert!(handler.dropped.load(Ordering::SeqCst) >= 1);
        match ended {
            Ok(result) => assert!(result.is_err()),
            Err(join) => panic!("the stack's future unwound: {join}"),
        }
    }
}
