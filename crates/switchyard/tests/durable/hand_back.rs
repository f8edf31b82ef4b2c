//! A handler's [`HandBack`]: a transport's delivery goes back to the transport (nacked, not
//! retried in place, not dead-lettered, and not counted as an attempt when it comes back to
//! this bus); a message with no transport has nowhere to go back to and fails for good.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::{BoxError, Bus, Envelope, HandBack, Message, Outcome};
use switchyard_log::{LogConfig, LogTransport};

use crate::{Job, WAIT};

/// A handler that hands every message back on its first `hand_backs` calls, then fails;
/// records the attempt number of every call.
fn handing_back(hand_backs: u32, seen: Arc<Mutex<Vec<u32>>>) -> switchyard::BoxHandler {
    let calls = Arc::new(Mutex::new(0u32));
    switchyard::handler_fn(move |env: Envelope| {
        let seen = seen.clone();
        let calls = calls.clone();
        async move {
            seen.lock().unwrap().push(env.delivery.attempt);
            let n = {
                let mut c = calls.lock().unwrap();
                *c += 1;
                *c
            };
            if n <= hand_backs {
                return Err::<Outcome, BoxError>(Box::new(HandBack::new("nobody here")));
            }
            Err("always fails".into())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_log_a_hand_back_is_redelivered_without_counting_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
    let bus = Bus::builder()
        .transport(log)
        .max_attempts(3)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _sub = bus
        .subscribe("worker", "jobs.#", handing_back(2, seen.clone()))
        .start()
        .await
        .unwrap();
    bus.publish(Job { n: 1 }).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while bus.dead_letters().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered; calls {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [1, 1, 1, 2, 3],
        "two hand-backs (attempt 1 each time), then max_attempts(3) calls"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3, "{letters:?}");
    assert!(letters[0].error.contains("always fails"), "{letters:?}");
    bus.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_transport_a_hand_back_fails_for_good_at_once() {
    let bus = Bus::builder()
        .max_attempts(3)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _sub = bus
        .subscribe("worker", "jobs.#", handing_back(5, seen.clone()))
        .start()
        .await
        .unwrap();
    bus.publish_envelope(Job { n: 1 }.to_envelope().unwrap())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), [1], "not retried");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .error
            .contains("handed back to the transport: nobody here"),
        "{letters:?}"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// A hand-back is "not mine", not a failure of the handler: with the default resilience
/// stack, eight messages each handed back once (more hand-backs than its breaker's threshold
/// of 5 failures) do not open it, so each comes back at once and is handled on its second
/// delivery, instead of waiting the breaker's 30 s cool-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_backs_do_not_open_the_default_resilience_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
    let bus = Bus::builder()
        .transport(log)
        .with_default_resilience()
        .build()
        .unwrap();
    let handed = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let h = handed.clone();
    let handler = switchyard::handler_fn(move |env: Envelope| {
        let h = h.clone();
        let done_tx = done_tx.clone();
        async move {
            if h.lock().unwrap().insert(env.id.clone()) {
                return Err::<Outcome, BoxError>(Box::new(HandBack::new("nobody here")));
            }
            let _ = done_tx.send(env.id.clone());
            Ok(Outcome::Ack)
        }
    });
    let _sub = bus
        .subscribe("worker", "jobs.#", handler)
        .start()
        .await
        .unwrap();
    for n in 0..8 {
        bus.publish(Job { n }).await.unwrap();
    }
    let mut handled = std::collections::HashSet::new();
    while handled.len() < 8 {
        match tokio::time::timeout(WAIT, done_rx.recv()).await {
            Ok(Some(id)) => assert!(handled.insert(id), "a message was handled twice"),
            other => panic!(
                "{} of 8 handled after {} hand-backs, then: {other:?}",
                handled.len(),
                handed.lock().unwrap().len()
            ),
        }
    }
    assert!(
        bus.dead_letters().unwrap().is_empty(),
        "{:?}",
        bus.dead_letters().unwrap().list()
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// A hand-back is not a failed delivery on the log either: a message handed back six times
/// (more than the log's `max_deliver` of 5) is still delivered, and handled on its seventh
/// delivery with attempt 1, not dead-lettered (docs/log.md, "max_deliver"). Before the fix the
/// log counted each hand-back towards `max_deliver` and dead-lettered it after five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_log_hand_backs_do_not_count_towards_max_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(log.config().max_deliver, 5);
    let bus = Bus::builder()
        .transport(log)
        .max_attempts(1)
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(Mutex::new(0u32));
    let s = seen.clone();
    let handler = switchyard::handler_fn(move |env: Envelope| {
        let (s, calls, done_tx) = (s.clone(), calls.clone(), done_tx.clone());
        async move {
            s.lock().unwrap().push(env.delivery.attempt);
            let n = {
                let mut c = calls.lock().unwrap();
                *c += 1;
                *c
            };
            if n <= 6 {
                return Err::<Outcome, BoxError>(Box::new(HandBack::new("not here yet")));
            }
            let _ = done_tx.send(env.id.clone());
            Ok(Outcome::Ack)
        }
    });
    let _sub = bus
        .subscribe("worker", "jobs.#", handler)
        .start()
        .await
        .unwrap();
    bus.publish(Job { n: 1 }).await.unwrap();
    let handled = tokio::time::timeout(WAIT, done_rx.recv()).await;
    assert!(
        matches!(handled, Ok(Some(_))),
        "not handled after six hand-backs; calls {:?}, dead letters {:?}",
        seen.lock().unwrap(),
        bus.dead_letters().unwrap().list()
    );
    assert_eq!(*seen.lock().unwrap(), [1, 1, 1, 1, 1, 1, 1]);
    assert!(
        bus.dead_letters().unwrap().is_empty(),
        "{:?}",
        bus.dead_letters().unwrap().list()
    );
    bus.shutdown(WAIT).await.unwrap();
}
