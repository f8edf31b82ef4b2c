//! Review rev3: replay from the dead-letter queue when the replayed message fails again
//! before the re-publish returns (module docs of `switchyard_middleware::dlq`: "when the same
//! message is dead-lettered again (say a replay failed again), the newer entry replaces the
//! older one"; "the entry is removed once the publish is accepted").

use std::sync::Arc;

use switchyard_core::{DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, PublishError};
use switchyard_middleware::dlq::{
    DeadLetterQueue, FileDeadLetterQueue, FileDlqOptions, InMemoryDeadLetters, Replayer,
};

use crate::common::env;

/// A republish target whose subscriber rejects the replayed message again and has it
/// dead-lettered before the publish is acknowledged (a transport whose publish ack comes
/// back after the consumer got the message, as JetStream's can; or a fast worker on
/// another thread racing the replayer's removal, as on the node).
fn failing_again<Q: DeadLetterSink + ?Sized + 'static>(
    queue: Arc<Q>,
) -> impl Fn(Envelope) -> futures::future::Ready<Result<(), PublishError>> + Send + Sync {
    move |e: Envelope| {
        queue.put(
            DeadLetter::new(e, DeadLetterReason::Rejected, "declined again")
                .with_handler("billing"),
        );
        futures::future::ready(Ok(()))
    }
}

async fn replay_fails_again_and_stays(q: Arc<dyn DeadLetterQueue>) {
    let first = DeadLetter::new(
        env("billing.charge"),
        DeadLetterReason::Rejected,
        "declined",
    )
    .with_handler("billing");
    let id = first.envelope.id.clone();
    q.put(first);
    let sink: Arc<dyn DeadLetterQueue> = q.clone();
    let target = failing_again(sink);
    Replayer::new(&*q, &target).one(id.clone()).await.unwrap();
    let entry = q.get(&id).expect(
        "the replayed message was dead-lettered again: its newer entry must be in the queue",
    );
    assert_eq!(entry.error, "declined again");
    assert_eq!(entry.envelope.header("replay-count"), Some("1"));
}

#[tokio::test]
async fn a_replay_that_fails_again_before_the_publish_returns_stays_in_the_memory_queue() {
    replay_fails_again_and_stays(Arc::new(InMemoryDeadLetters::new(10))).await;
}

#[tokio::test]
async fn a_replay_that_fails_again_before_the_publish_returns_stays_in_the_file_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let q = Arc::new(FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap());
    replay_fails_again_and_stays(q.clone()).await;
    drop(q);
    // And after a restart.
    let q = FileDeadLetterQueue::open(&path, FileDlqOptions::default()).unwrap();
    assert_eq!(
        q.len(),
        1,
        "the entry of the failed replay survives a reopen"
    );
}
