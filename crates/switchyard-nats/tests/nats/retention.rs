//! Retention: stream limits (defaults, configured, applied to an existing stream), consumer
//! inactivity thresholds, and removing a group's durable consumer for good.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};
use switchyard_conformance::Setup;
use switchyard_core::{Publisher, Subscriber, TransportErrorKind};
use switchyard_nats::{
    DEFAULT_DURABLE_INACTIVE, DEFAULT_EPHEMERAL_INACTIVE, DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES,
    NatsConfig, NatsTransport,
};

use crate::harness::{NatsHarness, SHARED_URL, shared_unavailable};

const WAIT: Duration = Duration::from_secs(10);

async fn stream_config(t: &NatsTransport, name: &str) -> jetstream::stream::Config {
    let js = jetstream::new(t.client().clone());
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

/// The configs of the consumers on a stream.
async fn consumers(t: &NatsTransport, name: &str) -> Vec<jetstream::consumer::Config> {
    let js = jetstream::new(t.client().clone());
    let stream = js.get_stream(name).await.unwrap();
    stream
        .consumers()
        .map_ok(|info| info.config)
        .try_collect()
        .await
        .unwrap()
}

async fn close(t: &NatsTransport) {
    t.close(Instant::now() + WAIT).await.unwrap();
}

#[tokio::test]
async fn a_new_stream_gets_bounded_default_limits_and_an_existing_one_the_configured_ones() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let defaults =
        NatsConfig::new(SHARED_URL).with_stream(&setup.namespace, [setup.all().unwrap()]);
    assert_eq!(defaults.max_age, Some(DEFAULT_MAX_AGE));
    assert_eq!(defaults.max_bytes, Some(DEFAULT_MAX_BYTES));
    let t = NatsTransport::connect(defaults.clone()).await.unwrap();
    let name = t.stream_for(&setup.topic("x").unwrap()).unwrap();
    let c = stream_config(&t, &name).await;
    assert_eq!(c.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.max_bytes, 1 << 30);
    close(&t).await;

    // Connecting again with other limits updates the existing stream.
    let t = NatsTransport::connect(
        defaults
            .clone()
            .with_max_age(Duration::from_secs(300))
            .with_max_bytes(2 << 20),
    )
    .await
    .unwrap();
    let c = stream_config(&t, &name).await;
    assert_eq!(c.max_age, Duration::from_secs(300));
    assert_eq!(c.max_bytes, 2 << 20);
    close(&t).await;

    // An age limit below the duplicate window is refused (by the server), naming the stream.
    let e = NatsTransport::connect(defaults.clone().with_max_age(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&setup.namespace), "{e}");

    // Unlimited only when chosen.
    let t = NatsTransport::connect(defaults.with_unlimited_retention())
        .await
        .unwrap();
    let c = stream_config(&t, &name).await;
    assert_eq!(c.max_age, Duration::ZERO);
    assert_eq!(c.max_bytes, -1);
    let _ = t.delete_stream(&setup.namespace).await;
    close(&t).await;
}

#[tokio::test]
async fn a_zero_limit_is_refused_rather_than_taken_as_unlimited() {
    let setup = Setup::new();
    let c = NatsConfig::new(SHARED_URL).with_stream(&setup.namespace, [setup.all().unwrap()]);
    for bad in [
        c.clone().with_max_bytes(0),
        c.clone().with_max_age(Duration::ZERO),
        c.clone().with_ephemeral_inactive_threshold(Duration::ZERO),
        c.clone()
            .with_durable_inactive_threshold(Some(Duration::ZERO)),
    ] {
        let e = NatsTransport::connect(bad).await.unwrap_err();
        assert!(
            e.to_string().contains("above zero") || e.to_string().contains("at least 1 s"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn consumers_get_their_inactive_thresholds() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    assert_eq!(
        NatsConfig::default().ephemeral_inactive_threshold,
        DEFAULT_EPHEMERAL_INACTIVE
    );
    assert_eq!(
        NatsConfig::default().durable_inactive_threshold,
        Some(DEFAULT_DURABLE_INACTIVE)
    );
    let t = NatsTransport::connect(
        h.config(&setup)
            .with_ephemeral_inactive_threshold(Duration::from_secs(42))
            .with_durable_inactive_threshold(Some(Duration::from_secs(3600))),
    )
    .await
    .unwrap();
    let name = t.stream_for(&setup.topic("x").unwrap()).unwrap();
    let ephemeral = t.subscribe(&setup.all().unwrap(), None).await.unwrap();
    let durable = t
        .subscribe(&setup.all().unwrap(), Some("keep"))
        .await
        .unwrap();
    let mut found = consumers(&t, &name).await;
    found.sort_by_key(|c| c.durable_name.is_some());
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].durable_name, None);
    assert_eq!(found[0].inactive_threshold, Duration::from_secs(42));
    assert_eq!(found[1].durable_name.as_deref(), Some("keep"));
    assert_eq!(found[1].inactive_threshold, Duration::from_secs(3600));
    drop((ephemeral, durable));
    let _ = t.delete_stream(&setup.namespace).await;
    close(&t).await;
}

#[tokio::test]
async fn deleting_a_group_removes_its_consumer_while_dropping_keeps_it() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let name = t.stream_for(&setup.topic("x").unwrap()).unwrap();
    let mut sub = t
        .subscribe(&setup.all().unwrap(), Some("orders"))
        .await
        .unwrap();
    t.publish(vec![switchyard_core::Envelope::new(
        setup.topic("x").unwrap(),
        "1",
    )])
    .await
    .unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    d.ack().await.unwrap();

    // Refused while the group has a live subscription.
    let e = t.delete_group("orders").await.unwrap_err();
    assert_eq!(e.kind, TransportErrorKind::Rejected, "{e}");

    // Dropped: the consumer stays, so the group resumes after a restart.
    drop(sub);
    let names: Vec<_> = consumers(&t, &name)
        .await
        .into_iter()
        .filter_map(|c| c.durable_name)
        .collect();
    assert_eq!(names, ["orders"]);

    // Deleted for good: gone from the server; a second delete finds nothing.
    assert_eq!(t.delete_group("orders").await.unwrap(), 1);
    assert!(consumers(&t, &name).await.is_empty());
    assert_eq!(t.delete_group("orders").await.unwrap(), 0);
    // The dropped subscription's worker (close waits for it to have handed back its last
    // pull) does not bring it back.
    close(&t).await;
    let js = jetstream::new(async_nats::connect(SHARED_URL).await.unwrap());
    let stream = js.get_stream(&name).await.unwrap();
    let left: Vec<_> = stream.consumer_names().try_collect().await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    js.delete_stream(&name).await.unwrap();
}

/// JetStream reserves a stream's `max_bytes` of the server's storage: a limit larger than
/// the server has is refused at connect, naming the stream.
#[tokio::test]
async fn a_size_limit_beyond_the_servers_storage_is_refused_naming_the_stream() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let e = NatsTransport::connect(
        NatsConfig::new(SHARED_URL)
            .with_stream(&setup.namespace, [setup.all().unwrap()])
            .with_storage(switchyard_nats::Storage::Memory)
            .with_max_bytes(1 << 50),
    )
    .await
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&setup.namespace), "{text}");
    assert!(text.contains("resources"), "{text}");
}
