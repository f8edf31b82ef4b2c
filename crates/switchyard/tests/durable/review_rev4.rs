//! Review rev4 (`pending.rs`): a transport publish that fails after some of its deliveries
//! arrived takes back only the count still owed: the deliveries (written all the same) are
//! handled and settled, and the pending count ends at 0, never below (a double release would
//! wrap it). A failed publish owes nothing: `run_until_idle` need not wait for a delivery
//! that had not arrived when the publish failed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use switchyard::{
    Bus, Capabilities, CloseError, Envelope, Pattern, PublishError, Publisher, SubscribeError,
    Subscriber, TransportError, TransportErrorKind,
};
use switchyard_log::{LogConfig, LogTransport};
use tokio::sync::Notify;

use super::WAIT;

/// The log, whose publish reports a failure once the first delivery of what it published
/// was handled (the records are written: their deliveries arrive all the same).
#[derive(Clone)]
struct FailsAfterADelivery {
    log: LogTransport,
    handled: Arc<Notify>,
}

impl Publisher for FailsAfterADelivery {
    fn publish(
        &self,
        batch: Vec<Envelope>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        let (log, handled) = (self.log.clone(), self.handled.clone());
        async move {
            log.publish(batch).await?;
            tokio::time::timeout(WAIT, handled.notified())
                .await
                .expect("a delivery was handled");
            Err(PublishError::Transport(TransportError::new(
                TransportErrorKind::Unavailable,
                "the acknowledgement was lost",
            )))
        }
    }

    fn close(&self, deadline: Instant) -> impl Future<Output = Result<(), CloseError>> + Send {
        let log = self.log.clone();
        async move { log.close(deadline).await }
    }
}

impl Subscriber for FailsAfterADelivery {
    type Stream = <LogTransport as Subscriber>::Stream;

    fn subscribe(
        &self,
        pattern: &Pattern,
        group: Option<&str>,
    ) -> impl Future<Output = Result<Self::Stream, SubscribeError>> + Send {
        self.log.subscribe(pattern, group)
    }

    fn capabilities(&self) -> Capabilities {
        self.log.capabilities()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_failing_after_a_delivery_arrived_releases_only_what_is_owed() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
    let handled = Arc::new(Notify::new());
    let transport = FailsAfterADelivery {
        log,
        handled: handled.clone(),
    };
    let bus = Bus::builder().transport(transport).build().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut subs = Vec::new();
    // Two subscriptions: two deliveries owed for one publish.
    for name in ["first", "second"] {
        let (count, handled, tx) = (count.clone(), handled.clone(), tx.clone());
        let sub = bus
            .subscribe(
                name,
                "jobs.#",
                switchyard::boxed(tower::service_fn(move |_e: Envelope| {
                    count.fetch_add(1, Ordering::SeqCst);
                    handled.notify_one();
                    let _ = tx.send(());
                    async { Ok::<_, switchyard::BoxError>(switchyard::Outcome::Ack) }
                })),
            )
            .start()
            .await
            .unwrap();
        subs.push(sub);
    }
    let env = Envelope::new(switchyard::Topic::new("jobs.created").unwrap(), "{}");
    assert!(bus.publish_envelope(env).await.is_err());
    for _ in 0..2 {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a delivery")
            .unwrap();
    }
    assert!(bus.pending() <= 2, "no wrapped count: {}", bus.pending());
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .expect("idle once both deliveries were handled");
    assert_eq!(count.load(Ordering::SeqCst), 2, "both deliveries handled");
    assert_eq!(
        bus.pending(),
        0,
        "nothing left counted, nothing released twice"
    );
    // The bus still counts right afterwards.
    let env = Envelope::new(switchyard::Topic::new("jobs.created").unwrap(), "{}");
    assert!(bus.publish_envelope(env).await.is_err());
    for _ in 0..2 {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a delivery")
            .unwrap();
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .expect("idle again");
    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert_eq!(bus.pending(), 0);
    drop(subs);
    bus.shutdown(WAIT).await.unwrap();
}
