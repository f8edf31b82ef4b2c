//! Replay removes exactly the entries it re-published (by entry key, not message id), and a
//! bulk replay publishes each message once however many entries it has.

use std::sync::{Arc, Mutex};

use switchyard_core::{DeadLetter, DeadLetterReason, Envelope, PublishError};
use switchyard_middleware::dlq::{
    DeadLetterFilter, DeadLetterQueue, FileDeadLetterQueue, FileDlqOptions, InMemoryDeadLetters,
    Replayer,
};

use crate::common::env;

/// A rejection of `e` by `handler` (also used by `review_rev4`).
pub(crate) fn letter(e: &Envelope, handler: &str) -> DeadLetter {
    DeadLetter::new(e.clone(), DeadLetterReason::Rejected, "declined").with_handler(handler)
}

pub(crate) type Published = Arc<Mutex<Vec<Envelope>>>;

/// Records what it publishes (also used by `review_rev4`).
pub(crate) fn recording() -> (
    Published,
    impl Fn(Envelope) -> futures::future::Ready<Result<(), PublishError>> + Send + Sync,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |e: Envelope| {
        sink.lock().unwrap().push(e);
        futures::future::ready(Ok(()))
    })
}

/// Two subscriptions gave up on `twice`, one on `once`.
fn two_messages(q: &dyn DeadLetterQueue) -> (Envelope, Envelope) {
    let (twice, once) = (env("billing.charge"), env("billing.refund"));
    q.put(letter(&twice, "billing-a"));
    q.put(letter(&once, "billing-a"));
    q.put(letter(&twice, "billing-b"));
    (twice, once)
}

async fn bulk_replay_publishes_each_message_once(q: &dyn DeadLetterQueue) {
    let (twice, once) = two_messages(q);
    assert_eq!(q.len(), 3);
    let (seen, target) = recording();
    let report = Replayer::new(q, &target).all().await;
    let ids: Vec<_> = seen.lock().unwrap().iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        ids,
        vec![twice.id.clone(), once.id.clone()],
        "each message once, oldest first"
    );
    assert_eq!(report.replayed, ids);
    assert!(report.failed.is_empty());
    assert!(q.is_empty(), "all three entries left the queue");
}

#[tokio::test]
async fn a_bulk_replay_publishes_a_message_with_two_entries_once_from_memory() {
    bulk_replay_publishes_each_message_once(&InMemoryDeadLetters::new(10)).await;
}

#[tokio::test]
async fn a_bulk_replay_publishes_a_message_with_two_entries_once_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    bulk_replay_publishes_each_message_once(&q).await;
    drop(q);
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    assert!(q.is_empty(), "and the journal says so after a reopen");
}

/// A bulk replay whose messages all fail again before the publish returns: every new
/// entry stays (one per handler that failed again), nothing else is left.
async fn bulk_replay_failing_again_keeps_the_new_entries(q: Arc<dyn DeadLetterQueue>) {
    let (twice, once) = two_messages(&*q);
    let sink = q.clone();
    let target = move |e: Envelope| {
        sink.put(
            DeadLetter::new(e, DeadLetterReason::Rejected, "declined again")
                .with_handler("billing-a"),
        );
        futures::future::ready(Ok::<(), PublishError>(()))
    };
    let report = Replayer::new(&*q, &target).all().await;
    assert_eq!(report.replayed.len(), 2);
    let left = q.list(&DeadLetterFilter::new());
    assert_eq!(left.len(), 2, "the two new entries: {left:?}");
    for (entry, id) in left.iter().zip([&twice.id, &once.id]) {
        assert_eq!(&entry.envelope.id, id);
        assert_eq!(entry.error, "declined again");
        assert_eq!(entry.envelope.header("replay-count"), Some("1"));
    }
}

#[tokio::test]
async fn a_bulk_replay_failing_again_keeps_the_new_entries_in_memory() {
    bulk_replay_failing_again_keeps_the_new_entries(Arc::new(InMemoryDeadLetters::new(10))).await;
}

#[tokio::test]
async fn a_bulk_replay_failing_again_keeps_the_new_entries_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let q = Arc::new(FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap());
    bulk_replay_failing_again_keeps_the_new_entries(q.clone()).await;
    drop(q);
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    let left = q.list(&DeadLetterFilter::new());
    assert_eq!(left.len(), 2, "the new entries survive a reopen: {left:?}");
    assert!(left.iter().all(|l| l.error == "declined again"));
}

/// A replay narrowed to one handler's entries removes those only: the other subscription's
/// entry of the same message stays.
#[tokio::test]
async fn replaying_one_handlers_entries_leaves_the_other_handlers_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    let (twice, once) = two_messages(&q);
    let (seen, target) = recording();
    let report = Replayer::new(&q, &target)
        .filtered(&DeadLetterFilter::new().handler("billing-b"))
        .await;
    assert_eq!(report.replayed, vec![twice.id.clone()]);
    assert_eq!(seen.lock().unwrap().len(), 1);
    drop(q);
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    let left: Vec<_> = q
        .list(&DeadLetterFilter::new())
        .into_iter()
        .map(|l| (l.envelope.id, l.handler.unwrap_or_default()))
        .collect();
    assert_eq!(
        left,
        vec![
            (twice.id, "billing-a".into()),
            (once.id, "billing-a".into())
        ],
        "billing-a's entries stay, after a reopen too"
    );
}

/// A journal written before entry keys existed (records `put`, `remove` of a whole id, and
/// `remove` of one handler's entry) still opens to the same entries: the format did not change.
#[test]
fn a_journal_from_before_entry_keys_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let (a, b) = (env("billing.a"), env("billing.b"));
    let put = |l: DeadLetter| serde_json::json!({"op": "put", "letter": l}).to_string();
    let lines = [
        put(letter(&a, "x")),
        put(letter(&a, "y")),
        put(letter(&b, "x")),
        serde_json::json!({"op": "remove", "id": a.id.to_string(), "only": {"handler": "x"}})
            .to_string(),
        put(letter(&b, "y")),
        serde_json::json!({"op": "remove", "id": b.id.to_string()}).to_string(),
    ];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    let left: Vec<_> = q
        .entries(&DeadLetterFilter::new())
        .into_iter()
        .map(|(_, l)| (l.envelope.id, l.handler.unwrap_or_default()))
        .collect();
    assert_eq!(left, vec![(a.id, "y".into())]);
    assert_eq!(q.skipped_lines(), 0);
}
