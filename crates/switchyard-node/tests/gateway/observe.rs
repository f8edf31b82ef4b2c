//! Health, readiness, metrics, stats, status, topology, traces, OpenAPI.

use serde_json::Value;
use switchyard::{Envelope, Outcome, Topic, handler_fn};

use crate::common::{MEMORY, TestNode, client};

#[tokio::test]
async fn health_ready_and_openapi() {
    let node = TestNode::start(MEMORY).await;
    let http = client();
    let health: Value = http
        .get(node.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = http.get(node.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let doc: Value = http
        .get(node.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/publish/{topic}",
        "/v1/send/{topic}",
        "/v1/request/{topic}",
        "/v1/dlq",
        "/v1/dlq/replay",
        "/v1/topology",
        "/v1/stream",
        "/v1/stats/history",
        "/v1/health",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(doc["components"]["schemas"].get("MessageJson").is_some());
    node.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_and_stats_show_bus_and_gateway_figures() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe(
            "counter",
            "m.#",
            handler_fn(
                |_e: Envelope| async move { Ok::<_, std::convert::Infallible>(Outcome::Ack) },
            ),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    for _ in 0..3 {
        let res = http
            .post(node.url("/v1/publish/m.x"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let _ = http.get(node.url("/v1/nope")).send().await.unwrap();
    node.bus.run_until_idle().await;
    let text = http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |prefix: &str, needles: &[&str]| -> String {
        text.lines()
            .find(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no {prefix} {needles:?} in\n{text}"))
            .to_owned()
    };
    assert!(
        line(
            "switchyard_subscription_acked_total",
            &["subscription=\"counter\""]
        )
        .ends_with(" 3")
    );
    assert!(line("switchyard_delivered_total", &["handler=\"counter\""]).ends_with(" 3"));
    assert!(
        line(
            "switchyard_gateway_requests_total",
            &["route=\"/v1/publish/{topic}\"", "status=\"202\""]
        )
        .ends_with(" 3")
    );
    assert!(
        line(
            "switchyard_gateway_requests_total",
            &["route=\"unmatched\"", "status=\"404\""]
        )
        .ends_with(" 1")
    );
    line(
        "switchyard_gateway_request_duration_seconds_bucket",
        &["route=\"/v1/publish/{topic}\""],
    );
    assert!(line("switchyard_ready", &[]).ends_with(" 1"));

    let stats: Value = http
        .get(node.url("/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sub = stats["bus"]["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "counter")
        .unwrap()
        .clone();
    assert_eq!(sub["stats"]["acked"], 3);
    assert_eq!(stats["gateway"]["published"], 3);
    assert_eq!(stats["handlers"]["handlers"][0]["handler"], "counter");
    assert_eq!(stats["transport"]["kind"], "memory");

    let status: Value = http
        .get(node.url("/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["transport"], "memory");
    assert_eq!(status["ready"], true);
    assert_eq!(status["published"], 3);
    assert_eq!(status["subscriptions"], 1);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    // The address the node serves on (an ephemeral port), not the configured `listen`.
    assert_eq!(
        status["listen"],
        node.url.trim_start_matches("http://"),
        "{status}"
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn stats_and_metrics_show_handler_latency_percentiles() {
    let node = TestNode::start(MEMORY).await;
    // Nine quick calls and one that takes at least 50 ms: p99 (rank 10 of 10) is the slow one.
    node.bus
        .subscribe(
            "timed",
            "lat.#",
            handler_fn(|e: Envelope| async move {
                if e.topic.as_str() == "lat.slow" {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Ok::<_, std::convert::Infallible>(Outcome::Ack)
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let empty: Value = http
        .get(node.url("/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty["latency"]["all"]["count"], 0, "{empty}");
    assert!(empty["latency"]["all"]["p50_seconds"].is_null(), "{empty}");
    for topic in ["lat.fast"; 9].into_iter().chain(["lat.slow"]) {
        let res = http
            .post(node.url(&format!("/v1/publish/{topic}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    node.bus.run_until_idle().await;
    let stats: Value = http
        .get(node.url("/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let latency = &stats["latency"];
    assert_eq!(latency["window"], "since_start");
    let row = latency["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["handler"] == "timed")
        .unwrap_or_else(|| panic!("no row for the handler in {latency}"));
    let f = |v: &Value, k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
    };
    assert_eq!(row["count"], 10, "{row}");
    assert!(f(row, "p50_seconds") <= f(row, "p95_seconds"), "{row}");
    assert!(f(row, "p95_seconds") <= f(row, "p99_seconds"), "{row}");
    assert!(f(row, "p99_seconds") >= 0.05, "p99 is the slow call: {row}");
    assert!(f(row, "p99_seconds") <= f(row, "max_seconds"), "{row}");
    assert!(f(row, "max_seconds") >= 0.05, "{row}");
    assert_eq!(latency["all"]["count"], 10, "{latency}");
    assert_eq!(latency["all"]["p99_seconds"], row["p99_seconds"]);

    let text = http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let p99 = text
        .lines()
        .find(|l| {
            l.starts_with("switchyard_handler_latency_seconds")
                && l.contains("handler=\"timed\"")
                && l.contains("quantile=\"0.99\"")
        })
        .unwrap_or_else(|| panic!("no p99 gauge in\n{text}"));
    let v: f64 = p99.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(v >= 0.05, "{p99}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_trace_shows_the_causal_tree_of_a_correlation_id() {
    let node = TestNode::start(MEMORY).await;
    let bus = node.bus.clone();
    node.bus
        .subscribe(
            "fulfil",
            "orders.placed",
            handler_fn(move |_env: Envelope| {
                let bus = bus.clone();
                async move {
                    bus.publish_envelope(Envelope::new(Topic::new("orders.shipped")?, "{}"))
                        .await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let res: Value = http
        .post(node.url("/v1/publish/orders.placed"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    node.bus.run_until_idle().await;
    let correlation = res["correlation_id"].as_str().unwrap();
    let trace: Value = http
        .get(node.url(&format!("/v1/trace/{correlation}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let topics: Vec<&str> = trace["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["orders.placed", "orders.shipped"]);
    assert_eq!(trace["tree"]["roots"][0]["topic"], "orders.placed");
    assert_eq!(
        trace["tree"]["roots"][0]["children"][0]["topic"],
        "orders.shipped"
    );
    assert_eq!(trace["messages"][1]["causation_id"], res["id"]);
    let missing = http
        .get(node.url("/v1/trace/01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    node.stop().await.unwrap();
}

/// `/v1/trace` also shows each handler call of the traced messages: which handler, the
/// attempt, the outcome and why it was not handled.
#[tokio::test]
async fn a_trace_shows_which_handler_got_each_message_and_how_it_ended() {
    let node = TestNode::start(MEMORY).await;
    let bus = node.bus.clone();
    node.bus
        .subscribe(
            "fulfil",
            "orders.placed",
            handler_fn(move |_env: Envelope| {
                let bus = bus.clone();
                async move {
                    bus.publish_envelope(Envelope::new(Topic::new("orders.shipped")?, "{}"))
                        .await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    node.bus
        .subscribe(
            "audit",
            "orders.shipped",
            handler_fn(|_env: Envelope| async {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Outcome::Reject {
                    reason: "audit refused it".into(),
                })
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let res: Value = http
        .post(node.url("/v1/publish/orders.placed"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    node.bus.run_until_idle().await;
    let correlation = res["correlation_id"].as_str().unwrap();
    let trace: Value = http
        .get(node.url(&format!("/v1/trace/{correlation}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shipped = trace["messages"][1]["id"].as_str().unwrap().to_owned();
    let deliveries = trace["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("no deliveries in the trace: {trace}"));
    let seen: Vec<(&str, &str, u64, &str)> = deliveries
        .iter()
        .map(|d| {
            (
                d["message_id"].as_str().unwrap(),
                d["handler"].as_str().unwrap(),
                d["attempt"].as_u64().unwrap(),
                d["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (res["id"].as_str().unwrap(), "fulfil", 1, "handled"),
            (shipped.as_str(), "audit", 1, "rejected"),
        ],
        "{trace}"
    );
    assert!(deliveries[0]["error"].is_null(), "{trace}");
    assert_eq!(deliveries[1]["error"], "audit refused it");
    assert!(deliveries[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        deliveries[0]["at"].as_str().unwrap().ends_with('Z'),
        "{trace}"
    );
    let text = trace["text"].as_str().unwrap();
    assert!(
        text.contains("orders.shipped -> audit (attempt 1): rejected")
            && text.contains("audit refused it"),
        "{text}"
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn topology_exports_the_bus_graph_in_three_formats() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe(
            "mailer",
            "users.#",
            handler_fn(
                |_e: Envelope| async move { Ok::<_, std::convert::Infallible>(Outcome::Ack) },
            ),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let json: Value = http
        .get(node.url("/v1/topology"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["source"], "bus");
    assert!(
        json["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["pattern"] == "users.#" && e["subscription"] == "mailer")
    );
    let mermaid = http
        .get(node.url("/v1/topology?format=mermaid"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("mailer"),
        "{mermaid}"
    );
    let dot = http
        .get(node.url("/v1/topology?format=dot"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(dot.contains("\"users.#\" -> \"mailer\""), "{dot}");
    let bad = http
        .get(node.url("/v1/topology?format=svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn an_open_breaker_of_a_critical_handler_makes_the_node_not_ready() {
    let node = TestNode::start(
        r#"
[transport]
kind = "memory"
[readiness]
critical_handlers = ["payments"]
[bus]
shutdown_timeout_ms = 1000
"#,
    )
    .await;
    let (tx, mut breaker_events) = tokio::sync::mpsc::unbounded_channel();
    node.bus
        .subscribe(
            "breaker-watch",
            "switchyard.breaker.#",
            crate::common::forward(tx),
        )
        .start()
        .await
        .unwrap()
        .detach();
    node.bus
        .handle_envelope(
            "payments",
            "payments.charge",
            handler_fn(|_e: Envelope| async move {
                Err::<Outcome, _>(std::io::Error::other("gateway down"))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    assert_eq!(
        http.get(node.url("/ready")).send().await.unwrap().status(),
        200
    );
    // Failing calls until the breaker opens (5 failures in its window; bounded).
    let mut opened = None;
    for _ in 0..10 {
        // A request, not a send: once the breaker is open the command waits in the queue.
        let res = http
            .post(node.url("/v1/request/payments.charge?timeout_ms=2000"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error() || res.status().is_server_error());
        if let Ok(ev) = breaker_events.try_recv() {
            opened = Some(ev);
            break;
        }
    }
    let ev = match opened {
        Some(ev) => ev,
        None => crate::common::recv(&mut breaker_events, "the breaker opening").await,
    };
    assert_eq!(ev.topic.as_str(), "switchyard.breaker.opened");
    let res = http.get(node.url("/ready")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["reasons"][0].as_str().unwrap().contains("payments"),
        "{body}"
    );
    // The node raised an alert for it before publishing the event.
    let alerts: Value = http
        .get(node.url("/v1/alerts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let firing = &alerts["firing"][0];
    assert_eq!(firing["rule"], "breaker_open", "{alerts}");
    assert_eq!(firing["subject"], "payments", "{alerts}");
    assert_eq!(firing["source"], "node", "{alerts}");
    assert_eq!(firing["active"], true, "{alerts}");
    let metrics = http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_breaker_state")
                && l.contains("payments")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "switchyard_ready 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn alerts_published_on_the_bus_fire_and_resolve() {
    let node = TestNode::start(MEMORY).await;
    let http = client();
    let alerts = || async {
        http.get(node.url("/v1/alerts"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let empty = alerts().await;
    assert_eq!(empty["firing"], serde_json::json!([]), "{empty}");
    assert_eq!(empty["history"], serde_json::json!([]), "{empty}");
    let publish = |body: &'static str| {
        http.post(node.url("/v1/publish/system.alert.critical"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for _ in 0..2 {
        let res = publish(r#"{"rule": "error-rate", "subject": "billing", "message": "40% failing", "active": true}"#)
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let firing = alerts().await;
    let a = &firing["firing"][0];
    assert_eq!(a["rule"], "error-rate", "{firing}");
    assert_eq!(a["severity"], "critical", "the topic's severity: {firing}");
    assert_eq!(a["source"], "bus", "{firing}");
    assert_eq!(a["count"], 2, "deduplicated: {firing}");
    assert!(a["resolved_ms"].is_null(), "{firing}");
    let res = publish(r#"{"rule": "error-rate", "subject": "billing", "active": false}"#)
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let resolved = alerts().await;
    assert_eq!(resolved["firing"], serde_json::json!([]), "{resolved}");
    let h = &resolved["history"][0];
    assert_eq!(h["active"], false, "{resolved}");
    assert!(h["resolved_ms"].as_u64().unwrap() >= h["first_ms"].as_u64().unwrap());
    node.stop().await.unwrap();
}
