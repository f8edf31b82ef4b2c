//! Dedup in the bus's stack (`ResilienceConfig::dedup`): a message id seen twice is handled
//! once; the copy is settled (acked), not lost or dead-lettered; a copy arriving while the
//! first is in flight waits for it and is handled if the first failed.

use std::time::Duration;

use switchyard_middleware::dedup::DedupConfig;

use super::*;

fn with_dedup() -> switchyard::BusBuilder {
    Bus::builder().with_resilience(|| {
        ResilienceConfig::default()
            .retry(exact(3, Duration::from_millis(10)))
            .dedup(DedupConfig::default())
    })
}

/// The same envelope (same id) published twice, one after the other, and a third time on a
/// typed subscription: each handler runs once per id; the copies are acked; nothing waits,
/// nothing is dead-lettered.
#[tokio::test(start_paused = true)]
async fn the_same_message_id_twice_is_handled_once_and_the_copy_acked() {
    let bus = with_dedup().build().unwrap();
    let calls = Calls::default();
    let sub = bus
        .subscribe(
            "rows",
            "rows.#",
            scripted(calls.clone(), Duration::ZERO, |_| Ok(Outcome::Ack)),
        )
        .start()
        .await
        .unwrap();
    let typed = Arc::new(AtomicU32::new(0));
    let t = typed.clone();
    let tsub = bus
        .on("typed", move |_: Row, _| {
            t.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        })
        .start()
        .await
        .unwrap();
    let env = Row { n: 1 }.to_envelope().unwrap();
    for _ in 0..3 {
        bus.publish_envelope(env.clone()).await.unwrap();
        bus.run_until_idle().await;
    }
    assert_eq!(calls.lock().len(), 1, "handled once");
    assert_eq!(
        typed.load(Ordering::SeqCst),
        1,
        "the typed handler once too"
    );
    for s in [sub.stats(), tsub.stats()] {
        assert_eq!(
            (s.acked, s.failed, s.dead_lettered, s.retried),
            (3, 0, 0, 0),
            "every copy settled as acked: {s:?}"
        );
    }
    assert_eq!(bus.pending(), 0);
    assert!(letters(&bus).is_empty());
}

/// Copies arriving while the first is still being handled (two workers, the handler takes
/// 1 s): they wait for it and are acked without a call when it succeeds; when it fails for
/// good (a permanent error) the next copy is handled.
#[tokio::test(start_paused = true)]
async fn a_copy_arriving_while_the_first_is_in_flight_waits_for_its_result() {
    for first_fails in [false, true] {
        let bus = with_dedup().build().unwrap();
        let calls = Calls::default();
        let c = calls.clone();
        let handler = boxed(tower::service_fn(move |_e: Envelope| {
            let call = {
                let mut calls = c.lock();
                calls.push((0, Instant::now()));
                calls.len()
            };
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if first_fails && call == 1 {
                    return Err(Permanent::new("bad once").into());
                }
                Ok::<_, BoxError>(Outcome::Ack)
            }
        }));
        let sub = bus
            .subscribe("rows", "rows.#", handler)
            .workers(2)
            .start()
            .await
            .unwrap();
        let env = ev("rows.added", "1");
        bus.publish_envelope(env.clone()).await.unwrap();
        bus.publish_envelope(env.clone()).await.unwrap();
        bus.run_until_idle().await;
        let times = offsets_ms(&calls);
        let s = sub.stats();
        if first_fails {
            assert!(
                near(&times, &[0, 1_000]),
                "the copy handled after: {times:?}"
            );
            assert_eq!((s.acked, s.dead_lettered), (1, 1), "{s:?}");
            assert_eq!(letters(&bus).len(), 1);
        } else {
            assert_eq!(
                times.len(),
                1,
                "the copy waited and was not handled: {times:?}"
            );
            assert_eq!((s.acked, s.dead_lettered), (2, 0), "{s:?}");
            assert!(letters(&bus).is_empty());
        }
        assert_eq!(bus.pending(), 0);
    }
}

/// A message that failed every attempt is not marked seen: its copy (a redelivery, a replay)
/// is handled again and can succeed.
#[tokio::test(start_paused = true)]
async fn a_message_that_failed_is_handled_again_when_it_comes_back() {
    let bus = with_dedup().build().unwrap();
    let calls = Calls::default();
    let sub = bus
        .subscribe(
            "rows",
            "rows.#",
            scripted(calls.clone(), Duration::ZERO, {
                let calls = calls.clone();
                move |_| {
                    if calls.lock().len() <= 3 {
                        Err("backend down".into())
                    } else {
                        Ok(Outcome::Ack)
                    }
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let env = ev("rows.added", "1");
    bus.publish_envelope(env.clone()).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(letters(&bus).len(), 1);
    bus.publish_envelope(env.clone()).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(
        calls.lock().len(),
        4,
        "three failing attempts, then the copy's one"
    );
    let s = sub.stats();
    assert_eq!((s.acked, s.dead_lettered), (1, 1), "{s:?}");
}

/// A command sent twice with the same id (`send_envelope`): the handler runs once; the first
/// sender gets the reply, the second an acknowledgement without one (replies are not cached,
/// docs/middleware.md "Deduplication"), not an error.
#[tokio::test(start_paused = true)]
async fn a_duplicate_command_is_acknowledged_without_running_the_handler() {
    let bus = with_dedup().build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let charges = bus
        .handle(move |ch: Charge, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<u64, BoxError>(ch.cents * 2) }
        })
        .start()
        .await
        .unwrap();
    let env = Charge { cents: 4 }.to_envelope().unwrap();
    let first = bus.send_envelope(env.clone()).await.unwrap();
    let reply = first.reply.expect("the first gets the reply");
    assert_eq!(serde_json::from_slice::<u64>(&reply.payload).unwrap(), 8);
    let second = bus.send_envelope(env).await.unwrap();
    assert!(second.reply.is_none(), "acknowledged, no reply: {second:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = charges.stats();
    assert_eq!((s.acked, s.dead_lettered), (2, 0), "{s:?}");
}
