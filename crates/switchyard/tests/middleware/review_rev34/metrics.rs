//! The stack's metrics through a registry shared with `with_resilience`: one delivery per
//! message with its final outcome, re-attempts counted as retries, nothing left in flight;
//! labelled by the registered pattern; and the subscription's own counters agree.

use std::time::Duration;

use switchyard_middleware::metrics::MetricsRegistry;

use super::*;

#[tokio::test(start_paused = true)]
async fn the_registry_counts_each_message_once_with_its_final_outcome() {
    let registry = MetricsRegistry::new();
    let r = registry.clone();
    let bus = Bus::builder()
        .with_resilience(move || {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_millis(10)))
                .registry(r.clone())
        })
        .build()
        .unwrap();
    let handler = boxed(tower::service_fn(move |e: Envelope| async move {
        let attempt = e.delivery.attempt;
        match &e.payload[..] {
            b"ok" => Ok(Outcome::Ack),
            b"slow ok" => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(Outcome::Ack)
            }
            b"fails once" if attempt == 1 => Err("transient".into()),
            b"fails once" => Ok(Outcome::Ack),
            b"always fails" => Err("backend down".into()),
            b"permanent" => Err(Permanent::new("bad").into()),
            b"reject" => Ok(Outcome::Reject {
                reason: "no".into(),
            }),
            b"panic" => panic!("boom"),
            _ => Err::<_, BoxError>("unexpected".into()),
        }
    }));
    let sub = bus
        .subscribe("rows", "rows.#", handler)
        .start()
        .await
        .unwrap();
    let bodies = [
        "ok",
        "slow ok",
        "fails once",
        "always fails",
        "permanent",
        "reject",
        "panic",
    ];
    for body in bodies {
        // Different topics under the one pattern: still one series.
        bus.publish_envelope(ev(&format!("rows.{}", body.replace(' ', "_")), body))
            .await
            .unwrap();
    }
    let _charges = bus
        .handle(|c: Charge, _| async move { Ok::<u64, BoxError>(c.cents) })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(Charge { cents: 3 }).await.unwrap(), 3);
    bus.run_until_idle().await;
    let snapshot = registry.snapshot();
    assert_eq!(
        snapshot
            .handlers
            .iter()
            .filter(|h| h.handler == "rows")
            .count(),
        1,
        "one series for the subscription: {:?}",
        snapshot.handlers
    );
    let rows = snapshot
        .get("rows.#", "rows")
        .expect("labelled by the pattern");
    assert_eq!(
        (
            rows.delivered,
            rows.acked,
            rows.retried,
            rows.rejected,
            rows.failed,
            rows.in_flight
        ),
        (7, 3, 3, 1, 3, 0),
        "{rows:?}"
    );
    assert_eq!(rows.duration.count, 7, "one duration per message: {rows:?}");
    let charges = snapshot
        .get("billing.charge", "billing.charge")
        .unwrap_or_else(|| panic!("the command handler's row: {:?}", snapshot.handlers));
    assert_eq!((charges.delivered, charges.acked), (1, 1), "{charges:?}");
    let s = sub.stats();
    assert_eq!(
        (s.acked, s.retried, s.rejected, s.dead_lettered),
        (3, 3, 1, 4),
        "{s:?}"
    );
}

/// The in-flight figure follows a call whose first poll is pending (the stack's fast path
/// handed it over to the general future): 1 while it waits, 0 once it ended; a first attempt
/// that timed out and was retried to success counts one delivery, acked, one retry, no
/// failure.
#[tokio::test(start_paused = true)]
async fn in_flight_follows_a_pending_first_attempt_and_a_timeout_retried_counts_once() {
    let registry = MetricsRegistry::new();
    let r = registry.clone();
    let bus = Bus::builder()
        .with_resilience(move || {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_millis(10)))
                .timeout(Duration::from_secs(1))
                .registry(r.clone())
        })
        .build()
        .unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let handler = boxed(tower::service_fn(move |e: Envelope| {
        let g = g.clone();
        async move {
            match &e.payload[..] {
                b"gated" => g.notified().await,
                b"hangs once" if e.delivery.attempt == 1 => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                _ => {}
            }
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    let _sub = bus
        .subscribe("rows", "rows.#", handler)
        .start()
        .await
        .unwrap();
    let row = || {
        registry
            .snapshot()
            .get("rows.#", "rows")
            .cloned()
            .expect("the rows series")
    };
    bus.publish_envelope(ev("rows.added", "gated"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(row().in_flight, 1, "pending: {:?}", row());
    gate.notify_one();
    bus.run_until_idle().await;
    assert_eq!((row().in_flight, row().acked), (0, 1), "{:?}", row());
    bus.publish_envelope(ev("rows.added", "hangs once"))
        .await
        .unwrap();
    bus.run_until_idle().await;
    let r = row();
    assert_eq!(
        (r.delivered, r.acked, r.retried, r.failed, r.in_flight),
        (2, 2, 1, 0, 0),
        "{r:?}"
    );
}
