//! Exact counters after a known workload, in `/metrics` and in `/v1/stats`, and their
//! agreement.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};

use super::{Sample, parse_exposition, scrape, value};
use crate::common::{MEMORY, TestNode, client, get_json};

const SUB_FIELDS: [&str; 14] = [
    "delivered",
    "acked",
    "failed",
    "panicked",
    "retried",
    "rejected",
    "dead_lettered",
    "expired",
    "dropped",
    "refused_full",
    "decode_failed",
    "filtered",
    "intake_warned",
    "intake_rejected",
];
const HANDLER_FIELDS: [&str; 6] = [
    "delivered",
    "acked",
    "retried",
    "rejected",
    "failed",
    "handed_back",
];

/// Every per-subscription and per-handler counter of `/metrics` for `name` equals its
/// `/v1/stats` counterpart.
pub(super) fn assert_views_agree(samples: &[Sample], stats: &Value, name: &str) {
    let sub = stats["bus"]["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no subscription {name} in {stats}"));
    for f in SUB_FIELDS {
        let m = value(
            samples,
            &format!("switchyard_subscription_{f}_total"),
            &[("subscription", name)],
        );
        let s = sub["stats"][f].as_f64();
        assert_eq!(
            m, s,
            "subscription {name} {f}: /metrics {m:?} vs /v1/stats {s:?}"
        );
    }
    let row = stats["handlers"]["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["handler"] == name)
        .unwrap_or_else(|| panic!("no handler row {name} in {stats}"));
    for f in HANDLER_FIELDS {
        let m = value(
            samples,
            &format!("switchyard_{f}_total"),
            &[("handler", name)],
        );
        let s = row[f].as_f64();
        assert_eq!(
            m, s,
            "handler {name} {f}: /metrics {m:?} vs /v1/stats {s:?}"
        );
    }
}

/// Per-series counter values of an exposition (name + labels → value) for `_total` samples.
fn counters(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name.ends_with("_total"))
        .map(|s| (format!("{}{:?}", s.name, s.labels), s.value))
        .collect()
}

/// docs/gateway.md "Observability": "each figure of `/metrics` equals its counterpart in
/// `/v1/stats`", per handler "`delivered` and the duration's `count` are deliveries ...
/// `retried` the re-attempts the stack's retry made, which the subscription's `retried`
/// counts too", the latency `count` "is deliveries plus re-attempts"; and "Gateway figures are
/// recorded as they happen" (`switchyard_gateway_requests_total{route,method,status}`).
/// Workload: 10 publishes over HTTP (8 handled at once, 1 failing once then handled, 1 failing
/// every attempt: dead-lettered), then the dead letter replayed and handled. Every counter
/// must be exactly that, in both views, and no counter may go down between scrapes.
#[tokio::test]
async fn counters_after_a_known_workload_are_exact_and_agree_in_both_views() {
    let node = TestNode::start(MEMORY).await;
    let healed = Arc::new(AtomicBool::new(false));
    let failed_once = Arc::new(Mutex::new(HashSet::<String>::new()));
    let (h, f) = (healed.clone(), failed_once.clone());
    node.bus
        .subscribe(
            "work",
            "work.#",
            handler_fn(move |e: Envelope| {
                let topic = e.topic.as_str().to_owned();
                let fail = if topic.starts_with("work.flaky") {
                    f.lock().unwrap().insert(topic.clone())
                } else {
                    topic.starts_with("work.dead") && !h.load(Ordering::SeqCst)
                };
                async move {
                    if fail {
                        Err(std::io::Error::other(format!("{topic} failed")))
                    } else {
                        Ok(Outcome::Ack)
                    }
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    // One failure fewer than the node's breaker threshold (5): 1 + 3 failed calls.
    let topics: Vec<String> = (0..8)
        .map(|i| format!("work.ok.{i}"))
        .chain(["work.flaky.0".to_owned(), "work.dead.0".to_owned()])
        .collect();
    for t in &topics {
        let res = http
            .post(node.url(&format!("/v1/publish/{t}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        *statuses.entry(res.status().as_u16()).or_default() += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(202, 10)]));
    tokio::time::timeout(Duration::from_secs(30), node.bus.run_until_idle())
        .await
        .expect("the workload settles");

    let first = parse_exposition(&scrape(&node, None).await);
    let stats = get_json(&node, "/v1/stats").await;
    assert_views_agree(&first, &stats, "work");
    let w = [("handler", "work")];
    let s = [("subscription", "work")];
    let got = |name: &str, l: &[(&str, &str)]| value(&first, name, l);
    assert_eq!(got("switchyard_delivered_total", &w), Some(10.0), "{stats}");
    assert_eq!(got("switchyard_acked_total", &w), Some(9.0), "{stats}");
    assert_eq!(got("switchyard_failed_total", &w), Some(1.0), "{stats}");
    assert_eq!(
        got("switchyard_retried_total", &w),
        Some(3.0),
        "1 + 2 re-attempts: {stats}"
    );
    assert_eq!(got("switchyard_subscription_acked_total", &s), Some(9.0));
    assert_eq!(
        got("switchyard_subscription_dead_lettered_total", &s),
        Some(1.0)
    );
    assert_eq!(got("switchyard_subscription_retried_total", &s), Some(3.0));
    assert_eq!(got("switchyard_dlq_size", &[]), Some(1.0));
    assert_eq!(
        got(
            "switchyard_gateway_requests_total",
            &[
                ("route", "/v1/publish/{topic}"),
                ("method", "POST"),
                ("status", "202")
            ]
        ),
        Some(10.0)
    );
    assert_eq!(stats["gateway"]["published"], 10, "{stats}");
    assert_eq!(
        got("switchyard_handler_duration_seconds_count", &w),
        Some(10.0)
    );
    let lat = stats["latency"]["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["handler"] == "work")
        .unwrap()
        .clone();
    assert_eq!(lat["count"], 13, "10 deliveries + 3 re-attempts: {lat}");

    // Replay the dead letter after the backend healed.
    healed.store(true, Ordering::SeqCst);
    let res = http
        .post(node.url("/v1/dlq/replay"))
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["replayed"], 1, "{body}");
    tokio::time::timeout(Duration::from_secs(30), node.bus.run_until_idle())
        .await
        .expect("the replay settles");

    let text = scrape(&node, None).await;
    let second = parse_exposition(&text);
    let stats = get_json(&node, "/v1/stats").await;
    assert_views_agree(&second, &stats, "work");
    let got = |name: &str, l: &[(&str, &str)]| value(&second, name, l);
    assert_eq!(got("switchyard_delivered_total", &w), Some(11.0), "{stats}");
    assert_eq!(got("switchyard_acked_total", &w), Some(10.0), "{stats}");
    assert_eq!(got("switchyard_failed_total", &w), Some(1.0), "{stats}");
    assert_eq!(got("switchyard_subscription_acked_total", &s), Some(10.0));
    assert_eq!(
        got("switchyard_subscription_dead_lettered_total", &s),
        Some(1.0)
    );
    assert_eq!(got("switchyard_dlq_size", &[]), Some(0.0));
    assert_eq!(
        got(
            "switchyard_gateway_requests_total",
            &[
                ("route", "/v1/dlq/replay"),
                ("method", "POST"),
                ("status", "200")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    // Counters never go down between two scrapes of a node that did not restart.
    let before = counters(&first);
    let after = counters(&second);
    for (series, v) in &before {
        let now = after
            .get(series)
            .unwrap_or_else(|| panic!("counter {series} vanished while its owner lives"));
        assert!(now >= v, "counter {series} went down: {v} -> {now}");
    }
    node.stop().await.unwrap();
}

/// "Gateway figures are recorded as they happen": every answer a client got is counted once
/// under its route, method and status (sends answered 200, requests timed out by
/// `timeout_ms`, a send with no handler), and the counts in `/metrics` equal what the client
/// saw.
#[tokio::test]
async fn gateway_request_counters_equal_the_answers_clients_got() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .handle_envelope(
            "slowcmd",
            "cmd.slow",
            handler_fn(|e: Envelope| async move {
                if e.payload.as_ref() == b"\"slow\"" {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                Ok::<_, std::convert::Infallible>(Outcome::Reply(Box::new(e.reply(b"{}".to_vec()))))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let mut seen: BTreeMap<(String, u16), u64> = BTreeMap::new();
    let calls: [(&str, &str, &str); 6] = [
        ("/v1/send/cmd.slow", "/v1/send/{topic}", "\"fast\""),
        ("/v1/send/cmd.slow", "/v1/send/{topic}", "\"fast\""),
        (
            "/v1/request/cmd.slow?timeout_ms=2000",
            "/v1/request/{topic}",
            "\"fast\"",
        ),
        (
            "/v1/request/cmd.slow?timeout_ms=50",
            "/v1/request/{topic}",
            "\"slow\"",
        ),
        (
            "/v1/request/cmd.slow?timeout_ms=50",
            "/v1/request/{topic}",
            "\"slow\"",
        ),
        ("/v1/send/cmd.none", "/v1/send/{topic}", "\"fast\""),
    ];
    for (path, route, body) in calls {
        let res = http
            .post(node.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        *seen
            .entry((route.to_owned(), res.status().as_u16()))
            .or_default() += 1;
    }
    tokio::time::timeout(Duration::from_secs(30), node.bus.run_until_idle())
        .await
        .unwrap();
    let samples = parse_exposition(&scrape(&node, None).await);
    for ((route, status), n) in &seen {
        let code = status.to_string();
        assert_eq!(
            value(
                &samples,
                "switchyard_gateway_requests_total",
                &[("route", route), ("method", "POST"), ("status", &code)]
            ),
            Some(*n as f64),
            "{route} {status}: the client saw {seen:?}"
        );
    }
    let total: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "switchyard_gateway_requests_total"
                && (s.labels["route"] == "/v1/send/{topic}"
                    || s.labels["route"] == "/v1/request/{topic}")
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 6.0, "every call counted once: {seen:?}");
    assert!(
        seen.keys()
            .any(|(r, s)| r == "/v1/request/{topic}" && *s != 200),
        "the 50 ms requests to a 400 ms handler timed out: {seen:?}"
    );
    node.stop().await.unwrap();
}
