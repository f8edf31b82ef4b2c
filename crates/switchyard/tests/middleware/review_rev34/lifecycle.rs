//! The stack under load and at shutdown: many workers on a multi-thread runtime, every way a
//! first attempt can end mixed, each message settled once with the right counts; a shutdown
//! while a first attempt is pending or a retry is backing off leaves nothing lost (each one
//! dead-lettered `Shutdown`, named in the report, a waiting sender told) and nothing counted
//! in flight.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_middleware::metrics::MetricsRegistry;

use super::*;

/// 400 events over 4 workers and 100 concurrent commands over 2, on 2 threads: a fifth of
/// the events ack at once, a fifth after yielding, and the rest end their first attempt
/// failing on the first poll, asking for a retry, or failing after a wait; each is handled
/// exactly once, 240 retries are counted by the subscription and the registry, nothing is
/// dead-lettered or left in flight; every command gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_first_attempt_ending_mixed_over_many_workers_settles_each_message_once() {
    const N: u64 = 400;
    let registry = MetricsRegistry::new();
    let r = registry.clone();
    let bus = Bus::builder()
        .with_resilience(move || {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_millis(1)))
                .breaker(BreakerConfig::default().failures(100_000))
                .registry(r.clone())
        })
        .build()
        .unwrap();
    let handled = Arc::new(Mutex::new(BTreeMap::<u64, u32>::new()));
    let h = handled.clone();
    let sub = bus
        .on("rows", move |row: Row, ctx| {
            let h = h.clone();
            async move {
                let first = ctx.attempt() == 1;
                match row.n % 5 {
                    0 => {}
                    1 => tokio::task::yield_now().await,
                    2 if first => return Err::<Outcome, BoxError>("fails on first poll".into()),
                    3 if first => return Ok(Outcome::Retry { after: None }),
                    4 if first => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        return Err("fails after a wait".into());
                    }
                    _ => {}
                }
                *h.lock().entry(row.n).or_default() += 1;
                Ok(Outcome::Ack)
            }
        })
        .workers(4)
        .start()
        .await
        .unwrap();
    let _charges = bus
        .handle(|c: Charge, ctx| async move {
            if c.cents % 2 == 1 && ctx.attempt() == 1 {
                return Err::<u64, BoxError>("fails once".into());
            }
            Ok(c.cents * 2)
        })
        .workers(2)
        .start()
        .await
        .unwrap();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for n in 0..N {
                bus.publish(Row { n }).await.unwrap();
            }
        })
    };
    let sends = (0..100u64).map(|cents| {
        let bus = bus.clone();
        tokio::spawn(async move { (cents, bus.send(Charge { cents }).await) })
    });
    for send in sends {
        let (cents, answer) = tokio::time::timeout(Duration::from_secs(30), send)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(answer.unwrap(), cents * 2, "charge {cents}");
    }
    publisher.await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), bus.run_until_idle())
        .await
        .expect("settled");
    let handled = handled.lock().clone();
    assert_eq!(handled.len() as u64, N, "every row handled");
    assert!(
        handled.values().all(|&n| n == 1),
        "handled once each: {:?}",
        handled.iter().filter(|(_, n)| **n != 1).collect::<Vec<_>>()
    );
    let s = sub.stats();
    assert_eq!(
        (s.acked, s.retried, s.dead_lettered),
        (N, N * 3 / 5, 0),
        "{s:?}"
    );
    let rows = registry.snapshot();
    let rows = rows.get("rows.added", "rows").expect("the rows series");
    assert_eq!(
        (rows.delivered, rows.acked, rows.retried, rows.in_flight),
        (N, N, N * 3 / 5, 0),
        "{rows:?}"
    );
    assert!(letters(&bus).is_empty());
}

/// A shutdown (1 s) while a first attempt is pending (it would hang for an hour), an event's
/// retry is backing off (10 s) and a command's retry is backing off: all three are left,
/// dead-lettered `Shutdown` and named in the report; the command's sender gets
/// `NotProcessed`; the registry counts nothing in flight afterwards.
#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_pending_first_attempt_or_a_backoff_loses_nothing() {
    let registry = MetricsRegistry::new();
    let r = registry.clone();
    let bus = Bus::builder()
        .with_resilience(move || {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_secs(10)))
                .registry(r.clone())
        })
        .build()
        .unwrap();
    let calls = Calls::default();
    let c = calls.clone();
    let handler = boxed(tower::service_fn(move |e: Envelope| {
        c.lock().push((e.delivery.attempt, Instant::now()));
        async move {
            if &e.payload[..] == b"hang" {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(Outcome::Ack);
            }
            Err::<_, BoxError>("backend down".into())
        }
    }));
    let _sub = bus
        .subscribe("rows", "rows.#", handler)
        .workers(2)
        .start()
        .await
        .unwrap();
    let _charges = bus
        .handle(|_: Charge, _| async { Err::<u64, BoxError>("card processor down".into()) })
        .start()
        .await
        .unwrap();
    let hang = ev("rows.added", "hang");
    let backoff = ev("rows.added", "backoff");
    let ids = [hang.id.clone(), backoff.id.clone()];
    bus.publish_envelope(hang).await.unwrap();
    bus.publish_envelope(backoff).await.unwrap();
    let b = bus.clone();
    let sender = tokio::spawn(async move { b.send(Charge { cents: 1 }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls.lock().len(), 2, "both first attempts made");
    let report = bus.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.left.len(), 3, "{report:?}");
    for id in ids {
        assert!(report.left.contains(&id), "{id} named: {report:?}");
    }
    let answer = sender.await.unwrap();
    assert!(
        matches!(answer, Err(SendError::NotProcessed(_))),
        "the sender: {answer:?}"
    );
    let letters = letters(&bus);
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown),
        "{letters:?}"
    );
    let snapshot = registry.snapshot();
    for h in &snapshot.handlers {
        assert_eq!(h.in_flight, 0, "nothing left in flight: {h:?}");
    }
    assert_eq!(snapshot.handlers.len(), 2, "{:?}", snapshot.handlers);
}

/// A sender that stops waiting (its future dropped) while its command's first attempt is
/// pending on its task, or while the stack backs off before the retry, does not cancel the
/// command (docs/bus.md, "Commands and requests"): it is handled to the end, the retry made
/// and the message acked, or dead-lettered with its 3 attempts when every one fails.
#[tokio::test(start_paused = true)]
async fn a_sender_that_stops_waiting_does_not_cancel_the_stacks_retries() {
    let bus = Bus::builder()
        .with_resilience(|| ResilienceConfig::default().retry(exact(3, Duration::from_secs(1))))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(BTreeMap::<u64, Vec<u32>>::new()));
    let s = seen.clone();
    let charges = bus
        .handle(move |c: Charge, ctx| {
            let attempt = ctx.attempt();
            s.lock().entry(c.cents).or_default().push(attempt);
            async move {
                match (c.cents, attempt) {
                    (1, 1) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err::<u64, BoxError>("slow failure".into())
                    }
                    (2, 1) | (3, _) => Err("failure".into()),
                    _ => Ok(c.cents),
                }
            }
        })
        .workers(3)
        .start()
        .await
        .unwrap();
    // Gone while the first attempt waits (1), while the stack backs off (2, 3).
    for (cents, wait) in [(1, 50), (2, 500), (3, 500)] {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(wait), bus.send(Charge { cents })).await;
        assert!(
            gave_up.is_err(),
            "cents {cents}: still running: {gave_up:?}"
        );
    }
    bus.run_until_idle().await;
    let seen = seen.lock().clone();
    assert_eq!(seen[&1], [1, 2], "{seen:?}");
    assert_eq!(seen[&2], [1, 2], "{seen:?}");
    assert_eq!(seen[&3], [1, 2, 3], "{seen:?}");
    let s = charges.stats();
    assert_eq!((s.acked, s.dead_lettered), (2, 1), "{s:?}");
    let letters = letters(&bus);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
}
