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
