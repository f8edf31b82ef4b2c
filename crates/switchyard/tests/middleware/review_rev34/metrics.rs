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
