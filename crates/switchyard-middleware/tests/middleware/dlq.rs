use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use switchyard_core::{
    BoxError, BoxFuture, DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, Outcome,
    PublishError,
};
use switchyard_middleware::dedup::{DedupConfig, DedupLayer};
use switchyard_middleware::dlq::{
    DeadLetterFilter, DeadLetterQueue, FileDeadLetterQueue, FileDlqOptions, InMemoryDeadLetters,
    REPLAY_COUNT, REPLAYED_FROM, ReplayError, Replayer,
};
use switchyard_middleware::retry::{Permanent, RetryLayer, RetryPolicy};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use crate::common::{drive, env, envs, queue_of};

fn letter(topic: &str, reason: DeadLetterReason, error: &str, handler: &str) -> DeadLetter {
    DeadLetter::new(env(topic), reason, error).with_handler(handler)
}

fn filters_on(q: &dyn DeadLetterQueue) {
    let t0 = SystemTime::now() - Duration::from_secs(100);
    let mut old = letter(
        "billing.charge",
        DeadLetterReason::HandlerFailed,
        "DbError: timeout",
        "charger",
    );
    old.dead_lettered_at = t0;
    q.put(old.clone());
    q.put(letter(
        "billing.refund",
        DeadLetterReason::Rejected,
        "invalid amount",
        "refunder",
    ));
    q.put(letter(
        "users.created",
        DeadLetterReason::Panicked,
        "handler panicked: oops",
        "mailer",
    ));
    q.put(letter(
        "users.deleted",
        DeadLetterReason::HandlerFailed,
        "DbError: constraint",
        "mailer",
    ));

    let topics = |f: DeadLetterFilter| -> Vec<String> {
        q.list(&f)
            .iter()
            .map(|l| l.envelope.topic.to_string())
            .collect()
    };
    assert_eq!(topics(DeadLetterFilter::new()).len(), 4);
    assert_eq!(
        topics(DeadLetterFilter::new().topic("billing.#".parse().unwrap())),
        vec!["billing.charge", "billing.refund"]
    );
    assert_eq!(
        topics(DeadLetterFilter::new().reason(DeadLetterReason::Panicked)),
        vec!["users.created"]
    );
    assert_eq!(
        topics(DeadLetterFilter::new().error_contains("DbError")),
        vec!["billing.charge", "users.deleted"]
    );
    assert_eq!(
        topics(
            DeadLetterFilter::new()
                .handler("mailer")
                .error_contains("DbError")
        ),
        vec!["users.deleted"]
    );
    assert_eq!(
        topics(DeadLetterFilter::new().until(t0 + Duration::from_secs(1))),
        vec!["billing.charge"]
    );
    assert_eq!(
        topics(DeadLetterFilter::new().since(t0 + Duration::from_secs(1))).len(),
        3
    );
    assert_eq!(
        topics(DeadLetterFilter::new().limit(2)),
        vec!["billing.charge", "billing.refund"]
    );

    assert_eq!(q.get(&old.envelope.id), Some(old.clone()));
    assert_eq!(
        q.purge(&DeadLetterFilter::new().handler("mailer")).unwrap(),
        2
    );
    assert_eq!(q.len(), 2);
    assert!(q.remove(&old.envelope.id).unwrap());
    assert!(!q.remove(&old.envelope.id).unwrap());
    assert_eq!(q.get(&old.envelope.id), None);
    assert_eq!(q.len(), 1);
}

#[test]
fn memory_queue_filters_inspects_and_purges() {
    filters_on(&InMemoryDeadLetters::new(100));
}

#[test]
fn file_queue_filters_inspects_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    filters_on(
        &FileDeadLetterQueue::open(dir.path().join("dlq.jsonl"), FileDlqOptions::default())
            .unwrap(),
    );
}

#[test]
fn memory_queue_is_bounded_and_counts_evictions() {
    let q = InMemoryDeadLetters::new(3);
    let letters: Vec<_> = (0..5)
        .map(|_| letter("a.b", DeadLetterReason::Rejected, "no", "h"))
        .collect();
    for l in &letters {
        q.put(l.clone());
    }
    assert_eq!(q.len(), 3);
    assert_eq!(q.evicted(), 2);
    assert_eq!(q.total(), 5);
    assert!(q.get(&letters[0].envelope.id).is_none());
    assert!(q.get(&letters[4].envelope.id).is_some());
}

#[test]
fn same_message_twice_is_one_entry_with_the_newer_story() {
    let q = InMemoryDeadLetters::new(10);
    let first = letter("a.b", DeadLetterReason::HandlerFailed, "first", "h");
    let mut second = first.clone();
    second.error = "second".into();
    second.attempts = 6;
    q.put(first.clone());
    q.put(letter("a.c", DeadLetterReason::Rejected, "other", "h"));
    q.put(second.clone());
    assert_eq!(q.len(), 2);
    assert_eq!(q.get(&first.envelope.id).unwrap().error, "second");
    // The replaced entry moved to the end.
    assert_eq!(
        q.select(&DeadLetterFilter::new())
            .last()
            .unwrap()
            .envelope
            .id,
        first.envelope.id
    );
}

#[test]
fn file_queue_survives_reopen_and_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dlq.jsonl");
    let letters: Vec<_> = (0..10)
        .map(|i| {
            letter(
                "a.b",
                DeadLetterReason::HandlerFailed,
                &format!("e{i}"),
                "h",
            )
        })
        .collect();
    {
        let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
        for l in &letters {
            q.put(l.clone());
        }
        q.remove(&letters[3].envelope.id).unwrap();
    }
    // A crash in the middle of a write leaves half a line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"op\":\"put\",\"letter\":{\"envel")
        .unwrap();
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    assert_eq!(q.skipped_lines(), 1);
    assert_eq!(q.len(), 9);
    assert!(q.get(&letters[3].envelope.id).is_none());
    let back = q.get(&letters[7].envelope.id).unwrap();
    assert_eq!(
        back, letters[7],
        "every field, payload included, round-trips"
    );
    // Appending after the torn tail still works and survives another reopen.
    let extra = letter("a.b", DeadLetterReason::Rejected, "late", "h");
    q.put(extra.clone());
    drop(q);
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    assert_eq!(q.len(), 10);
    assert_eq!(q.get(&extra.envelope.id), Some(extra));
}

#[test]
fn file_queue_bounded_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let opts = FileDlqOptions {
        capacity: Some(5),
        compact_threshold: 10,
        ..FileDlqOptions::default()
    };
    let letters: Vec<_> = (0..40)
        .map(|_| letter("a.b", DeadLetterReason::Rejected, "no", "h"))
        .collect();
    {
        let q = FileDeadLetterQueue::open(&path, opts).unwrap();
        for l in &letters {
            q.put(l.clone());
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.evicted(), 35);
    }
    let before = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(before, 75, "40 puts + 35 evictions");
    let q = FileDeadLetterQueue::open(&path, opts).unwrap();
    let after = std::fs::read_to_string(&path).unwrap().lines().count();
    assert_eq!(after, 5, "compacted on open");
    let ids: Vec<_> = q
        .list(&DeadLetterFilter::new())
        .iter()
        .map(|l| l.envelope.id.clone())
        .collect();
    let want: Vec<_> = letters[35..]
        .iter()
        .map(|l| l.envelope.id.clone())
        .collect();
    assert_eq!(ids, want);
}

type Sent = Arc<Mutex<Vec<Envelope>>>;

fn collecting() -> (
    Sent,
    impl Fn(Envelope) -> futures::future::Ready<Result<(), PublishError>> + Send + Sync,
) {
    let sent: Sent = Arc::default();
    let s = sent.clone();
    (sent, move |e: Envelope| {
        s.lock().unwrap().push(e);
        futures::future::ready(Ok(()))
    })
}

#[tokio::test]
async fn replay_sets_headers_resets_delivery_and_removes_entries() {
    let q = InMemoryDeadLetters::new(10);
    let mut l = letter(
        "billing.charge",
        DeadLetterReason::HandlerFailed,
        "down",
        "charger",
    );
    l.envelope.delivery.attempt = 5;
    l.envelope.delivery.first_delivered_at = Some(SystemTime::now());
    q.put(l.clone());
    q.put(letter(
        "users.created",
        DeadLetterReason::Rejected,
        "no",
        "mailer",
    ));
    let (sent, republish) = collecting();

    Replayer::new(&q, &republish)
        .one(l.envelope.id.clone())
        .await
        .unwrap();
    let replayed = sent.lock().unwrap()[0].clone();
    assert_eq!(
        replayed.id, l.envelope.id,
        "same id, so dedup recognises it"
    );
    assert_eq!(replayed.payload, l.envelope.payload);
    assert_eq!(replayed.delivery.attempt, 0);
    assert_eq!(replayed.delivery.first_delivered_at, None);
    assert_eq!(replayed.header(REPLAYED_FROM), Some("charger"));
    assert_eq!(replayed.header(REPLAY_COUNT), Some("1"));
    assert_eq!(q.len(), 1);
    assert!(matches!(
        Replayer::new(&q, &republish).one(l.envelope.id).await,
        Err(ReplayError::NotFound(_))
    ));
}

#[tokio::test]
async fn replay_filtered_keep_and_failures() {
    let q = InMemoryDeadLetters::new(10);
    for t in ["a.x", "a.y", "b.x"] {
        q.put(letter(t, DeadLetterReason::HandlerFailed, "e", "h"));
    }
    let (sent, republish) = collecting();
    let report = Replayer::new(&q, &republish)
        .keep_entries(true)
        .filtered(&DeadLetterFilter::new().topic("a.*".parse().unwrap()))
        .await;
    assert_eq!(report.replayed.len(), 2);
    assert_eq!(sent.lock().unwrap().len(), 2);
    assert_eq!(q.len(), 3, "kept");

    let refuse = |_e: Envelope| futures::future::ready(Err::<(), _>(PublishError::ShuttingDown));
    let report = Replayer::new(&q, &refuse).all().await;
    assert!(report.replayed.is_empty());
    assert_eq!(report.failed.len(), 3);
    assert!(report.failed[0].error.contains("shutting down"));
    assert_eq!(q.len(), 3, "failed replays stay in the queue");
}

/// The scenario: messages dead-lettered into a file queue, the process restarts, the
/// handler is healthy again and the queue is replayed (twice, as an operator might) through a
/// dedup-protected handler: every message is processed exactly once.
#[tokio::test(start_paused = true)]
async fn dlq_survives_restart_and_replay_processes_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let msgs = envs("orders.placed", 20);
    let mut ids: Vec<_> = msgs.iter().map(|e| e.id.clone()).collect();
    ids.sort();

    // Run 1: the handler is broken; permanent errors go straight to the DLQ.
    {
        let dlq = Arc::new(FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap());
        let broken = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryPolicy::default()))
            .service_fn(|_e: Envelope| async {
                Err::<Outcome, BoxError>(Permanent::new("schema mismatch").into())
            });
        let settled = drive(
            broken,
            queue_of(msgs),
            2,
            dlq.clone() as Arc<dyn DeadLetterSink>,
        )
        .await;
        assert!(settled.acked().is_empty());
        assert_eq!(dlq.len(), 20);
        let one = dlq.list(&DeadLetterFilter::new().limit(1)).remove(0);
        assert_eq!(one.attempts, 1, "permanent: no retries");
        assert!(one.error.contains("schema mismatch"), "{}", one.error);
    }

    // Run 2: a new process, a healthy handler behind dedup.
    let dlq = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    assert_eq!(dlq.len(), 20);
    let processed = Arc::new(Mutex::new(Vec::new()));
    let p = processed.clone();
    let dedup = DedupLayer::new(DedupConfig::default());
    let dedup_handle = dedup.handle();
    let healthy = BoxCloneSyncService::new(ServiceBuilder::new().layer(dedup).service_fn(
        move |e: Envelope| {
            let p = p.clone();
            async move {
                assert_eq!(e.header(REPLAYED_FROM), Some("h"));
                p.lock().unwrap().push(e.id);
                Ok::<_, BoxError>(Outcome::Ack)
            }
        },
    ));
    // The "bus": republish hands the envelope to the handler and waits for its outcome.
    let bus = move |e: Envelope| {
        let svc = healthy.clone();
        let fut: BoxFuture<'static, Result<(), PublishError>> = Box::pin(async move {
            match svc.oneshot(e).await {
                Ok(_) => Ok(()),
                Err(_) => Err(PublishError::ShuttingDown),
            }
        });
        fut
    };
    let first = Replayer::new(&dlq, &bus).keep_entries(true).all().await;
    let second = Replayer::new(&dlq, &bus).all().await;
    assert_eq!(first.replayed.len(), 20);
    assert_eq!(second.replayed.len(), 20);
    let mut got = processed.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, ids, "each message processed exactly once");
    assert_eq!(dedup_handle.duplicates(), 20);
    assert!(dlq.is_empty());
    drop(dlq);
    assert!(
        FileDeadLetterQueue::open(&path, FileDlqOptions::default())
            .unwrap()
            .is_empty(),
        "removals are durable"
    );
}

/// The bus keeps its queue as a trait object chosen from config.
#[tokio::test]
async fn queues_work_as_trait_objects() {
    let dir = tempfile::tempdir().unwrap();
    let queues: Vec<Arc<dyn DeadLetterQueue>> = vec![
        Arc::new(InMemoryDeadLetters::new(10)),
        Arc::new(
            FileDeadLetterQueue::open(dir.path().join("q.jsonl"), FileDlqOptions::default())
                .unwrap(),
        ),
    ];
    for q in queues {
        let l = letter("a.b", DeadLetterReason::Rejected, "no", "h");
        q.put(l.clone());
        let (sent, republish) = collecting();
        Replayer::new(&*q, &republish)
            .one(l.envelope.id)
            .await
            .unwrap();
        assert_eq!(sent.lock().unwrap().len(), 1);
        assert!(q.is_empty());
    }
}

#[test]
fn fsync_mode_and_explicit_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let opts = FileDlqOptions {
        sync: true,
        ..FileDlqOptions::default()
    };
    let q = FileDeadLetterQueue::open(&path, opts).unwrap();
    let letters: Vec<_> = (0..6)
        .map(|_| letter("a.b", DeadLetterReason::HandlerFailed, "e", "h"))
        .collect();
    for l in &letters {
        q.put(l.clone());
    }
    assert_eq!(q.purge(&DeadLetterFilter::new()).unwrap(), 6);
    q.put(letters[0].clone());
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 13);
    q.compact().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    // Still appendable after compaction, and consistent after reopen.
    q.put(letters[1].clone());
    assert_eq!(q.write_errors(), 0);
    drop(q);
    let q = FileDeadLetterQueue::open(&path, opts).unwrap();
    let ids: Vec<_> = q
        .list(&DeadLetterFilter::new())
        .iter()
        .map(|l| l.envelope.id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![
            letters[0].envelope.id.clone(),
            letters[1].envelope.id.clone()
        ]
    );
}

#[test]
fn two_handlers_copies_of_one_message_are_two_entries_in_memory_and_on_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let options = FileDlqOptions {
        capacity: Some(2),
        ..FileDlqOptions::default()
    };
    let high = letter("a.b", DeadLetterReason::Shutdown, "late", "high");
    let low = high.clone().with_handler("low");
    let memory = InMemoryDeadLetters::new(10);
    memory.put(high.clone());
    memory.put(low.clone());
    assert_eq!(memory.len(), 2, "one entry per handler");
    {
        let q = FileDeadLetterQueue::open(&path, options).unwrap();
        q.put(high.clone());
        q.put(low.clone());
        // Evicts high's entry only.
        q.put(letter("a.c", DeadLetterReason::Rejected, "other", "h"));
        assert_eq!(q.len(), 2);
    }
    let q = FileDeadLetterQueue::open(&path, options).unwrap();
    let handlers: Vec<_> = q
        .list(&DeadLetterFilter::new())
        .into_iter()
        .map(|l| l.handler.unwrap_or_default())
        .collect();
    assert_eq!(
        handlers,
        ["low", "h"],
        "the eviction removed only high's copy"
    );
}
