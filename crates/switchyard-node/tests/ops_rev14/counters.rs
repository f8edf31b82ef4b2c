//! Counters and gauges of `/metrics` and `/v1/stats` after known load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchyard::{Envelope, Outcome, handler_fn};

use crate::common::{MEMORY, TestNode, client, get_json};
use crate::{metric, scrape};

#[derive(Debug, thiserror::Error)]
#[error("boom")]
struct Boom;

/// Starts a node whose subscription `mix` on `mix.*` acks `mix.ok`, rejects `mix.reject`,
/// always fails `mix.fail` and fails `mix.flaky` once; publishes 5 ok, 2 reject, 1 fail,
/// 1 flaky (4 failed attempts: under the default breaker's 5) and waits until idle.
async fn mixed_load() -> TestNode {
    let node = TestNode::start(MEMORY).await;
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    node.bus
        .subscribe(
            "mix",
            "mix.*",
            handler_fn(move |env: Envelope| {
                let seen = seen.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        let c = s.entry(env.id.to_string()).or_insert(0);
                        *c += 1;
                        *c
                    };
                    match env.topic.as_str() {
                        "mix.ok" => Ok(Outcome::Ack),
                        "mix.reject" => Ok(Outcome::reject("no")),
                        "mix.fail" => Err(Boom),
                        _ if n == 1 => Err(Boom),
                        _ => Ok(Outcome::Ack),
                    }
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    for (topic, n) in [("ok", 5), ("reject", 2), ("fail", 1), ("flaky", 1)] {
        for _ in 0..n {
            let res = http
                .post(node.url(&format!("/v1/publish/mix.{topic}")))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
        }
    }
    node.bus.run_until_idle().await;
    node
}

/// Every counter equals the known load, in `/metrics`, `/v1/stats` and `/v1/status` (the
/// retries in `retries_of_the_default_policy_are_counted`); the gauges are back at 0; the
/// duration histogram counts every delivery, the latency every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_a_known_mix_of_outcomes() {
    let node = mixed_load().await;
    let text = scrape(&node).await;
    let m = |name: &str, needle: &str| metric(&text, name, &[needle]);
    let sub = "subscription=\"mix\"";
    for (series, want) in [
        ("switchyard_subscription_delivered_total", 9.0),
        ("switchyard_subscription_acked_total", 6.0),
        ("switchyard_subscription_rejected_total", 2.0),
        ("switchyard_subscription_failed_total", 1.0),
        ("switchyard_subscription_dead_lettered_total", 3.0),
        ("switchyard_subscription_panicked_total", 0.0),
        ("switchyard_subscription_refused_full_total", 0.0),
        ("switchyard_queue_depth", 0.0),
        ("switchyard_subscription_in_flight", 0.0),
    ] {
        assert_eq!(m(series, sub), Some(want), "{series}\n{text}");
    }
    let h = "handler=\"mix\"";
    for (series, want) in [
        ("switchyard_delivered_total", 9.0),
        ("switchyard_acked_total", 6.0),
        ("switchyard_rejected_total", 2.0),
        ("switchyard_failed_total", 1.0),
        ("switchyard_in_flight", 0.0),
        ("switchyard_handler_duration_seconds_count", 9.0),
        ("switchyard_breaker_state", 0.0),
    ] {
        assert_eq!(m(series, h), Some(want), "{series}\n{text}");
    }
    assert_eq!(
        metric(&text, "switchyard_dlq_size", &[]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "switchyard_pending", &[]),
        Some(0.0),
        "{text}"
    );
    let stats = get_json(&node, "/v1/stats").await;
    let s = stats["bus"]["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "mix")
        .unwrap()
        .clone();
    for (field, want) in [
        ("delivered", 9),
        ("acked", 6),
        ("rejected", 2),
        ("failed", 1),
        ("dead_lettered", 3),
    ] {
        assert_eq!(s["stats"][field], want, "{field}: {s}");
    }
    let lat = stats["latency"]["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["handler"] == "mix")
        .unwrap_or_else(|| panic!("no latency row for mix: {stats}"))
        .clone();
    // "every handler call": the 9 deliveries and the 3 re-attempts of the retry policy
    // (while `switchyard_handler_duration_seconds_count` above counts deliveries: 9).
    assert_eq!(lat["count"], 12, "latency counts every call: {lat}");
    let status = get_json(&node, "/v1/status").await;
    assert_eq!(status["dead_letters"], 3, "{status}");
    assert_eq!(status["published"], 9, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    let dlq = get_json(&node, "/v1/dlq").await;
    assert_eq!(dlq["total"], 3, "{dlq}");
    node.stop().await.unwrap();
}

/// The node's retry policy re-attempts 3 times here (2 for `mix.fail`, 1 for `mix.flaky`,
/// which then succeeds): the subscription's `retried` (in `/metrics` and `/v1/stats`) and
/// the handler's `switchyard_retried_total` all show them.
///
/// Failed before the fix with: `no retry figure shows the 3 re-attempts:
/// switchyard_subscription_retried_total Some(0.0), switchyard_retried_total Some(0.0),
/// switchyard_retry_attempts_total None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_the_default_policy_are_counted() {
    let node = mixed_load().await;
    let text = scrape(&node).await;
    let sub = metric(
        &text,
        "switchyard_subscription_retried_total",
        &["subscription=\"mix\""],
    );
    let handler = metric(&text, "switchyard_retried_total", &["handler=\"mix\""]);
    let attempts = metric(
        &text,
        "switchyard_retry_attempts_total",
        &["handler=\"mix\""],
    );
    assert!(
        sub == Some(3.0) && handler == Some(3.0),
        "no retry figure shows the 3 re-attempts: switchyard_subscription_retried_total \
         {sub:?}, switchyard_retried_total {handler:?}, switchyard_retry_attempts_total \
         {attempts:?}"
    );
    let stats = get_json(&node, "/v1/stats").await;
    let s = stats["bus"]["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "mix")
        .unwrap()
        .clone();
    assert_eq!(s["stats"]["retried"], 3, "/v1/stats subscription: {s}");
    let h = stats["handlers"]["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["handler"] == "mix")
        .unwrap()
        .clone();
    assert_eq!(h["retried"], 3, "/v1/stats handler row: {h}");
    // One name for the retries: the retired `switchyard_retry_attempts_total` is not shown.
    assert_eq!(attempts, None, "{text}");
    node.stop().await.unwrap();
}

/// Backpressure: a full queue with `RejectNew` refuses publishes with 503 `queue_full`, and
/// `refused_full_total` equals the refusals exactly; the depth gauge returns to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_refusals_are_counted_exactly() {
    let node = TestNode::start(MEMORY).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    node.bus
        .subscribe(
            "narrow",
            "bp.#",
            handler_fn(move |_e: Envelope| {
                let g = g.clone();
                async move {
                    g.acquire().await.unwrap().forget();
                    Ok::<_, std::convert::Infallible>(Outcome::Ack)
                }
            }),
        )
        .queue_capacity(2)
        .overflow(switchyard::Overflow::RejectNew)
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let (mut accepted, mut refused) = (0u32, 0u32);
    for _ in 0..10 {
        let res = http
            .post(node.url("/v1/publish/bp.x"))
            .body("{}")
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            202 => accepted += 1,
            503 => {
                let (_, kind, _) = crate::common::error_of(res).await;
                assert_eq!(kind, "queue_full");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "nothing refused: accepted {accepted}");
    let text = scrape(&node).await;
    assert_eq!(
        metric(
            &text,
            "switchyard_subscription_refused_full_total",
            &["subscription=\"narrow\""]
        ),
        Some(f64::from(refused)),
        "{text}"
    );
    gate.add_permits(100);
    node.bus.run_until_idle().await;
    let text = scrape(&node).await;
    let m = |n: &str| metric(&text, n, &["subscription=\"narrow\""]);
    assert_eq!(m("switchyard_queue_depth"), Some(0.0), "{text}");
    assert_eq!(m("switchyard_subscription_in_flight"), Some(0.0), "{text}");
    assert_eq!(
        m("switchyard_subscription_acked_total"),
        Some(f64::from(accepted)),
        "{text}"
    );
    let status = get_json(&node, "/v1/status").await;
    assert_eq!(status["published"], accepted, "{status}");
    node.stop().await.unwrap();
}
