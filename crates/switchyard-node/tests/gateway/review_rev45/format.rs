//! The Prometheus text of `/metrics`: valid as a whole, label values escaped, and a series
//! count that does not follow the topics publishers choose.

use std::time::Duration;

use switchyard::{Envelope, Outcome, Topic, handler_fn};

use super::{parse_exposition, scrape, value};
use crate::common::{MEMORY, TestNode, client};

fn ack() -> switchyard::BoxHandler {
    handler_fn(|_e: Envelope| async move { Ok::<_, std::convert::Infallible>(Outcome::Ack) })
}

/// The Prometheus text exposition format (what `/metrics` promises: "Prometheus text"):
/// HELP/TYPE at most once per family and before its samples, a family's samples together,
/// counters named `_total`, no series twice, histogram buckets cumulative with `le="+Inf"`
/// equal to `_count`, and label values escaped (`\\`, `\"`, `\n`). A subscription and a
/// handler whose names hold a quote, a backslash and a newline must come out escaped (or be
/// refused when registered), never as text a scraper rejects: one bad line makes Prometheus
/// drop the whole scrape, so every other figure would be lost too.
#[tokio::test]
async fn metrics_text_is_valid_prometheus_with_escaped_label_values() {
    let node = TestNode::start(MEMORY).await;
    let odd = "odd \"quoted\" back\\slash\nnewline";
    let registered = node.bus.subscribe(odd, "fmt.#", ack()).start().await;
    let odd_ok = match registered {
        Ok(sub) => {
            sub.detach();
            true
        }
        Err(e) => {
            eprintln!("the odd subscription name is refused: {e}");
            false
        }
    };
    node.bus
        .subscribe("plain", "fmt.#", ack())
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    for i in 0..5 {
        let res = http
            .post(node.url(&format!("/v1/publish/fmt.t{i}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let _ = http.get(node.url("/v1/nope")).send().await.unwrap();
    let _ = http.delete(node.url("/v1/status")).send().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), node.bus.run_until_idle())
        .await
        .unwrap();
    let text = scrape(&node, None).await;
    let samples = parse_exposition(&text);
    assert_eq!(
        value(
            &samples,
            "switchyard_subscription_acked_total",
            &[("subscription", "plain")]
        ),
        Some(5.0),
        "{text}"
    );
    if odd_ok {
        assert_eq!(
            value(
                &samples,
                "switchyard_subscription_acked_total",
                &[("subscription", odd)]
            ),
            Some(5.0),
            "the odd name round-trips through the escapes:\n{text}"
        );
    }
    // Units: every duration family is in seconds.
    for s in &samples {
        assert!(
            !(s.name.contains("_ms") || s.name.contains("millis") || s.name.contains("_micro")),
            "a time not in seconds: {}",
            s.name
        );
    }
    node.stop().await.unwrap();
}

/// docs/gateway.md: the per-handler `topic` label "is the pattern the handler was registered
/// for ... not the topics of the messages it handled, which publishers choose: one series per
/// subscription or command handler, however many topics flow". 10 000 distinct topics through
/// one wildcard subscription must not add series: the scrape after them has the same series as
/// the scrape after one topic.
#[tokio::test]
async fn ten_thousand_topics_through_a_wildcard_do_not_add_series() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe("wide", "wide.#", ack())
        .start()
        .await
        .unwrap()
        .detach();
    let publish = |i: usize| {
        node.bus.publish_envelope(Envelope::new(
            Topic::new(&format!("wide.t{i}.x")).unwrap(),
            "{}",
        ))
    };
    publish(0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), node.bus.run_until_idle())
        .await
        .unwrap();
    // A first scrape, so that the `/metrics` route's own series exist before we count.
    let _ = scrape(&node, None).await;
    let before = parse_exposition(&scrape(&node, None).await);
    for i in 1..10_000 {
        publish(i).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), node.bus.run_until_idle())
        .await
        .unwrap();
    let text = scrape(&node, None).await;
    let after = parse_exposition(&text);
    assert_eq!(
        value(&after, "switchyard_delivered_total", &[("handler", "wide")]),
        Some(10_000.0)
    );
    assert_eq!(
        value(
            &after,
            "switchyard_delivered_total",
            &[("handler", "wide"), ("topic", "wide.#")]
        ),
        Some(10_000.0),
        "the topic label is the pattern"
    );
    let names = |s: &[super::Sample]| {
        s.iter()
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (b, a) = (names(&before), names(&after));
    let added: Vec<_> = a.difference(&b).take(10).collect();
    assert!(
        a.len() <= b.len(),
        "{} series before, {} after 10 000 topics; new ones include {added:?}",
        b.len(),
        a.len()
    );
    assert!(text.len() < 1 << 20, "the scrape is {} bytes", text.len());
    let stats = crate::common::get_json(&node, "/v1/stats").await;
    let rows = stats["handlers"]["handlers"].as_array().unwrap().len();
    assert_eq!(rows, 1, "one handlers row per registration: {rows}");
    node.stop().await.unwrap();
}

/// docs/gateway.md: "when one goes away (... an application drops a `Subscription`), its rows
/// (per subscription, per handler, latency quantiles, breaker state) are gone from the next
/// scrape".
#[tokio::test]
async fn a_dropped_subscription_leaves_the_next_scrape() {
    let node = TestNode::start(MEMORY).await;
    let sub = node
        .bus
        .subscribe("brief", "brief.#", ack())
        .start()
        .await
        .unwrap();
    node.bus
        .publish_envelope(Envelope::new(Topic::new("brief.x").unwrap(), "{}"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), node.bus.run_until_idle())
        .await
        .unwrap();
    let text = scrape(&node, None).await;
    let samples = parse_exposition(&text);
    assert_eq!(
        value(
            &samples,
            "switchyard_subscription_acked_total",
            &[("subscription", "brief")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "switchyard_breaker_state",
            &[("handler", "brief")]
        ),
        Some(0.0),
        "{text}"
    );
    drop(sub);
    tokio::time::timeout(Duration::from_secs(30), node.bus.run_until_idle())
        .await
        .unwrap();
    let text = scrape(&node, None).await;
    let samples = parse_exposition(&text);
    let left: Vec<String> = samples
        .iter()
        .filter(|s| {
            s.labels.get("subscription").map(String::as_str) == Some("brief")
                || s.labels.get("handler").map(String::as_str) == Some("brief")
        })
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect();
    assert!(
        left.is_empty(),
        "series of the dropped subscription remain: {left:?}"
    );
    node.stop().await.unwrap();
}
