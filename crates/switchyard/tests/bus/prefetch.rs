//! Prefetch subscriptions (`Bus::subscribe_prefetch`): several queued messages per handler
//! call, each settled by its own answer, failed ones retried in place before the next.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::testkit::VirtualClock;
use switchyard::{BoxError, BoxPrefetchHandler, Bus, DeadLetterReason, Envelope, Message, Outcome};
use tokio::sync::{Semaphore, mpsc};
use tower::service_fn;
use tower::util::BoxCloneService;

use crate::{Ping, WAIT};

/// Each call: the `(n, attempt)` of the messages it got.
type Calls = Arc<Mutex<Vec<Vec<(u64, u32)>>>>;

fn n_of(env: &Envelope) -> u64 {
    Ping::decode(&env.payload).unwrap().n
}

/// A prefetch handler that records its calls, handles the messages in order with
/// `handle(n, attempt)` and stops after the first one that fails (as a handler must for
/// in-place retries); the first call waits for `gate`.
fn recording(
    calls: Calls,
    gate: Arc<Semaphore>,
    handle: fn(u64, u32) -> Result<Outcome, BoxError>,
) -> BoxPrefetchHandler {
    BoxCloneService::new(service_fn(move |envs: Vec<Envelope>| {
        let (calls, gate) = (calls.clone(), gate.clone());
        async move {
            let first_call = calls.lock().unwrap().is_empty();
            calls
                .lock()
                .unwrap()
                .push(envs.iter().map(|e| (n_of(e), e.delivery.attempt)).collect());
            if first_call {
                gate.acquire().await?.forget();
            }
            let mut answers = Vec::new();
            for env in &envs {
                let answer = handle(n_of(env), env.delivery.attempt);
                let failed = answer.is_err();
                answers.push(answer);
                if failed {
                    break;
                }
            }
            Ok::<_, BoxError>(answers)
        }
    }))
}

async fn publish_after_first_call(bus: &Bus, calls: &Calls, gate: &Semaphore, n: u64) {
    bus.publish(Ping { n: 0 }).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while calls.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    for i in 1..n {
        bus.publish(Ping { n: i }).await.unwrap();
    }
    gate.add_permits(1);
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
}

fn flat(calls: &Calls) -> Vec<(u64, u32)> {
    calls.lock().unwrap().iter().flatten().copied().collect()
}

#[tokio::test]
async fn queued_messages_are_handed_over_together_and_each_is_settled() {
    let bus = Bus::new();
    let calls = Calls::default();
    let gate = Arc::new(Semaphore::new(0));
    let handler = recording(calls.clone(), gate.clone(), |_, _| Ok(Outcome::Ack));
    let _sub = bus
        .subscribe_prefetch("pf", Ping::TOPIC, handler, 4)
        .start()
        .await
        .unwrap();
    publish_after_first_call(&bus, &calls, &gate, 10).await;
    let sizes: Vec<usize> = calls.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        [1, 4, 4, 1],
        "the first alone (nothing else queued yet), then at most 4 per call"
    );
    assert_eq!(flat(&calls), (0..10).map(|n| (n, 1)).collect::<Vec<_>>());
    let stats = &bus.registry()[0].stats;
    assert_eq!((stats.delivered, stats.acked), (10, 10));
    assert_eq!(bus.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_message_is_retried_alone_before_the_ones_after_it() {
    let bus = Bus::new();
    let calls = Calls::default();
    let gate = Arc::new(Semaphore::new(0));
    let handler = recording(calls.clone(), gate.clone(), |n, attempt| {
        if n == 3 && attempt == 1 {
            Err("once".into())
        } else {
            Ok(Outcome::Ack)
        }
    });
    let _sub = bus
        .subscribe_prefetch("pf", Ping::TOPIC, handler, 8)
        .retry_delay(Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    publish_after_first_call(&bus, &calls, &gate, 8).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            vec![(0, 1)],
            vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1)],
            vec![(3, 2)],
            vec![(4, 1), (5, 1), (6, 1), (7, 1)],
        ],
        "3 retried alone, then the messages after it, which were not handled the first time"
    );
    let stats = &bus.registry()[0].stats;
    assert_eq!((stats.acked, stats.retried, stats.failed), (8, 1, 1));
    assert!(bus.dead_letters().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn out_of_attempts_a_message_is_dead_lettered_and_the_rest_go_on() {
    let bus = Bus::new();
    let calls = Calls::default();
    let gate = Arc::new(Semaphore::new(0));
    let handler = recording(calls.clone(), gate.clone(), |n, _| {
        if n == 2 {
            Err("always".into())
        } else {
            Ok(Outcome::Ack)
        }
    });
    let _sub = bus
        .subscribe_prefetch("pf", Ping::TOPIC, handler, 8)
        .max_attempts(2)
        .retry_delay(Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    publish_after_first_call(&bus, &calls, &gate, 5).await;
    assert_eq!(
        flat(&calls),
        [
            (0, 1),
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 1),
            (2, 2),
            (3, 1),
            (4, 1)
        ]
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(n_of(&letters[0].envelope), 2);
    assert_eq!(letters[0].attempts, 2);
    assert!(letters[0].error.contains("always"), "{}", letters[0].error);
}

#[tokio::test]
async fn an_error_of_the_whole_call_fails_the_first_message_only() {
    let bus = Bus::new();
    let calls = Calls::default();
    let c = calls.clone();
    let handler: BoxPrefetchHandler =
        BoxCloneService::new(service_fn(move |envs: Vec<Envelope>| {
            let c = c.clone();
            async move {
                let ns: Vec<u64> = envs.iter().map(n_of).collect();
                let first = c.lock().unwrap().is_empty();
                c.lock().unwrap().push(ns.iter().map(|&n| (n, 0)).collect());
                if first {
                    return Err::<Vec<Result<Outcome, BoxError>>, BoxError>("down".into());
                }
                Ok(envs.iter().map(|_| Ok(Outcome::Ack)).collect())
            }
        }));
    let _sub = bus
        .subscribe_prefetch("pf", Ping::TOPIC, handler, 8)
        .max_attempts(1)
        .start()
        .await
        .unwrap();
    // Queued before the worker runs (the test's thread does not yield in between).
    for n in 0..4 {
        bus.publish(Ping { n }).await.unwrap();
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    let sizes: Vec<usize> = calls.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        [4, 3],
        "the failed call's unanswered messages come again"
    );
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(n_of(&letters[0].envelope), 0);
    assert_eq!(bus.registry()[0].stats.acked, 3);
}

#[tokio::test]
async fn a_layer_makes_the_handler_take_one_message_per_call() {
    let bus = Bus::new();
    let calls = Calls::default();
    let gate = Arc::new(Semaphore::new(1));
    let handler = recording(calls.clone(), gate.clone(), |_, _| Ok(Outcome::Ack));
    let _sub = bus
        .subscribe_prefetch("pf", Ping::TOPIC, handler, 8)
        .layer(tower::layer::util::Identity::new())
        .start()
        .await
        .unwrap();
    for n in 0..5 {
        bus.publish(Ping { n }).await.unwrap();
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    assert!(calls.lock().unwrap().iter().all(|c| c.len() == 1));
    assert_eq!(flat(&calls).len(), 5);
}

#[tokio::test]
async fn prefetch_zero_is_refused() {
    let bus = Bus::new();
    let handler = recording(Calls::default(), Arc::new(Semaphore::new(1)), |_, _| {
        Ok(Outcome::Ack)
    });
    assert!(
        bus.subscribe_prefetch("pf", Ping::TOPIC, handler, 0)
            .start()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn messages_handed_over_and_not_answered_at_the_deadline_are_reported_left() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handler: BoxPrefetchHandler =
        BoxCloneService::new(service_fn(move |envs: Vec<Envelope>| {
            let tx = started_tx.clone();
            async move {
                let _ = tx.send(envs.len());
                std::future::pending::<()>().await;
                Ok::<Vec<Result<Outcome, BoxError>>, BoxError>(Vec::new())
            }
        }));
    let _sub = bus
        .subscribe_prefetch("pf", Ping::TOPIC, handler, 4)
        .start()
        .await
        .unwrap();
    for n in 0..6 {
        bus.publish(Ping { n }).await.unwrap();
    }
    assert_eq!(
        started.recv().await,
        Some(4),
        "4 handed over, 2 still queued"
    );
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    assert_eq!(report.drained, 0);
    assert_eq!(report.left.len(), 6, "{:?}", report.left);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 6);
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown)
    );
    assert_eq!(bus.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_retry_keeps_the_first_attempts_first_delivered_at() {
    let bus = Bus::new();
    // Each message the handler got: its attempt and `first_delivered_at`.
    type Seen = Arc<Mutex<Vec<(u32, Option<std::time::SystemTime>)>>>;
    let seen = Seen::default();
    let log = seen.clone();
    let handler: BoxPrefetchHandler =
        BoxCloneService::new(service_fn(move |envs: Vec<Envelope>| {
            let log = log.clone();
            async move {
                let mut answers = Vec::new();
                for env in &envs {
                    let attempt = env.delivery.attempt;
                    log.lock()
                        .unwrap()
                        .push((attempt, env.delivery.first_delivered_at));
                    answers.push(if attempt == 1 {
                        Err::<Outcome, BoxError>("once".into())
                    } else {
                        Ok(Outcome::Ack)
                    });
                }
                Ok::<_, BoxError>(answers)
            }
        }));
    let _sub = bus
        .subscribe_prefetch("pf", Ping::TOPIC, handler, 4)
        .retry_delay(Duration::from_millis(10))
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 0 }).await.unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the first attempt and its retry: {seen:?}");
    assert_eq!((seen[0].0, seen[1].0), (1, 2));
    assert!(seen[0].1.is_some(), "stamped on the first delivery");
    assert_eq!(
        seen[1].1, seen[0].1,
        "the retry says when the message was first delivered"
    );
    let stats = &bus.registry()[0].stats;
    assert_eq!((stats.delivered, stats.retried, stats.acked), (2, 1, 1));
}
