//! Consumer groups on NATS (issue 13): one group name on two patterns is refused, on the
//! transport and through the bus.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard::{Bus, Message};
use switchyard_conformance::Setup;
use switchyard_core::{Envelope, Publisher, SubscribeError, Subscriber};
use switchyard_nats::NatsTransport;
use tokio::sync::mpsc;

use crate::harness::{NatsHarness, shared_unavailable};

const WAIT: Duration = Duration::from_secs(10);

/// Issue 13, item 10: `subscribe(a, g)` then `subscribe(b, g)` replaced the durable
/// consumer's filter, so the first member got nothing. The second is refused now, the first
/// keeps its messages, and a group name that differs only in characters NATS cannot hold
/// (same consumer name) is refused too.
#[tokio::test]
async fn one_group_on_two_patterns_is_refused() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let mut first = t
        .subscribe(&setup.pattern("a").unwrap(), Some("g.1"))
        .await
        .unwrap();
    let second = t.subscribe(&setup.pattern("b").unwrap(), Some("g.1")).await;
    assert!(
        matches!(second, Err(SubscribeError::InvalidConfig(_))),
        "{second:?}"
    );
    let twin = t.subscribe(&setup.pattern("a").unwrap(), Some("g_1")).await;
    assert!(
        matches!(twin, Err(SubscribeError::InvalidConfig(_))),
        "g_1 shares the consumer of g.1: {twin:?}"
    );
    // Another member on the same pattern is welcome.
    let same = t.subscribe(&setup.pattern("a").unwrap(), Some("g.1")).await;
    assert!(same.is_ok(), "{same:?}");
    drop(same);
    let on_a = Envelope::new(setup.topic("a").unwrap(), "a");
    let on_b = Envelope::new(setup.topic("b").unwrap(), "b");
    t.publish(vec![on_a.clone(), on_b]).await.unwrap();
    let d = tokio::time::timeout(WAIT, first.next())
        .await
        .expect("the first member got nothing")
        .unwrap();
    assert_eq!(d.envelope.id, on_a.id);
    d.ack().await.unwrap();
    drop(first);
    t.close(Instant::now() + WAIT).await.unwrap();
    let _ = t.delete_stream(&setup.namespace).await;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Audit {
    n: u32,
}

impl Message for Audit {
    const TOPIC: &'static str = "audit.event";
}

/// Issue 13, item 10 through the bus: two `bus.on("audit", ..)` with different patterns on
/// the NATS transport. The second `start` fails with `InvalidConfig`; the first handler
/// still gets its message.
#[tokio::test]
async fn bus_refuses_a_subscription_name_on_two_patterns() {
    if shared_unavailable().is_some() {
        return;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new();
    let nats = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let bus = Bus::builder().transport(nats.clone()).build().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = {
        let tx = tx.clone();
        bus.on("audit", move |m: Audit, _ctx| {
            let tx = tx.clone();
            async move { tx.send(m.n).map_err(|e| e.to_string()) }
        })
        .pattern(setup.pattern("a").unwrap().as_str())
        .start()
        .await
        .unwrap()
    };
    let second = bus
        .on("audit", move |m: Audit, _ctx| {
            let tx = tx.clone();
            async move { tx.send(m.n + 100).map_err(|e| e.to_string()) }
        })
        .pattern(setup.pattern("b").unwrap().as_str())
        .start()
        .await;
    assert!(
        matches!(second, Err(SubscribeError::InvalidConfig(_))),
        "the second pattern for `audit` was accepted"
    );
    bus.publish_to(setup.topic("a").unwrap().as_str(), Audit { n: 1 })
        .await
        .unwrap();
    bus.publish_to(setup.topic("b").unwrap().as_str(), Audit { n: 2 })
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the first `audit` subscription got nothing")
        .unwrap();
    assert_eq!(got, 1);
    drop(first);
    bus.shutdown(WAIT).await.unwrap();
    let _ = nats.delete_stream(&setup.namespace).await;
}
