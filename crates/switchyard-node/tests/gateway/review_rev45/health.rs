//! `/v1/health`, `/ready` and `switchyard_breaker_state` through a breaker cycle (paused
//! clock, the node's router called directly), and which endpoints need a token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use switchyard::{Envelope, Outcome, Topic, handler_fn};
use switchyard_node::{Node, NodeConfig};
use tower::ServiceExt;

use super::{parse_exposition, value};
use crate::common::{TestNode, client};

/// GETs `path` on the router: (status, body text).
async fn get(router: &axum::Router, path: &str) -> (u16, String) {
    let res = router
        .clone()
        .oneshot(
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The breaker state of `handler` in `/metrics`, `/v1/stats` `breakers` and `/v1/health`.
async fn breaker_views(router: &axum::Router, handler: &str) -> (Option<f64>, Value, Value) {
    let (_, text) = get(router, "/metrics").await;
    let samples = parse_exposition(&text);
    let metric = value(
        &samples,
        "switchyard_breaker_state",
        &[("handler", handler)],
    );
    let (_, stats) = get(router, "/v1/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let (_, health) = get(router, "/v1/health").await;
    let health: Value = serde_json::from_str(&health).unwrap();
    (metric, stats["breakers"].clone(), health)
}

/// The component of `/v1/health` for subscription `name`.
fn component<'a>(health: &'a Value, name: &str) -> &'a Value {
    health["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {health}"))
}

/// docs/gateway.md: `/v1/health` is `failing` with "an open breaker" and reports
/// `breakers_open`; `switchyard_breaker_state{handler}` is "0 closed, 1 open"; `/ready` is 503
/// while "a breaker of a handler listed in `readiness.critical_handlers` is open". The node's
/// breaker opens after 5 failures and tries again after a 30 s cool-down (paused clock). While
/// it is open every view must say so; once the trial succeeds every view must say closed and
/// `/ready` must be 200 again.
#[tokio::test(start_paused = true)]
async fn a_breaker_cycle_is_reported_truthfully_by_health_ready_metrics_and_stats() {
    let config = NodeConfig::from_toml(
        r#"
[transport]
kind = "memory"
[readiness]
critical_handlers = ["pay"]
"#,
    )
    .unwrap();
    let node = Node::start(config).await.unwrap();
    let router = node.router();
    let bus = node.bus().clone();
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    bus.subscribe(
        "pay",
        "pay.#",
        handler_fn(move |_e: Envelope| {
            let fail = b.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(std::io::Error::other("backend down"))
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
    let (metric, breakers, health) = breaker_views(&router, "pay").await;
    assert_eq!(metric, Some(0.0), "closed at start");
    assert_eq!(
        component(&health, "pay")["breakers_open"],
        serde_json::json!([]),
        "{health}"
    );
    assert_eq!(get(&router, "/ready").await.0, 200);
    eprintln!("/v1/stats breakers at start: {breakers}");

    for body in ["1", "2"] {
        bus.publish_envelope(Envelope::new(Topic::new("pay.x").unwrap(), body))
            .await
            .unwrap();
    }
    // Wait (virtual time) for the breaker to open: 5 failures.
    let mut opened = None;
    for _ in 0..2000 {
        let views = breaker_views(&router, "pay").await;
        if views.0 == Some(1.0) {
            opened = Some(views);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, breakers, health) = opened.expect("the breaker never showed open in /metrics");
    assert_eq!(
        breakers,
        serde_json::json!([{"handler": "pay", "state": "Open"}])
    );
    let pay = component(&health, "pay");
    assert_eq!(pay["breakers_open"], serde_json::json!(["pay"]), "{health}");
    assert_eq!(pay["status"], "failing", "{health}");
    assert!(
        pay["reasons"].to_string().contains("circuit breaker open"),
        "{health}"
    );
    assert_eq!(health["status"], "failing", "{health}");
    let (code, ready) = get(&router, "/ready").await;
    assert_eq!(code, 503, "critical handler's breaker open: {ready}");

    // The backend heals; after the cool-down the held retry is the trial, succeeds, closes.
    broken.store(false, Ordering::SeqCst);
    let mut closed = None;
    for _ in 0..2000 {
        let views = breaker_views(&router, "pay").await;
        if views.0 == Some(0.0) {
            closed = Some(views);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, breakers, health) = closed.expect("the breaker never closed after the cool-down");
    let pay = component(&health, "pay");
    assert_eq!(pay["breakers_open"], serde_json::json!([]), "{health}");
    assert!(
        !pay["reasons"].to_string().contains("circuit breaker"),
        "a closed breaker still named: {health}"
    );
    assert_eq!(
        breakers,
        serde_json::json!([{"handler": "pay", "state": "Closed"}])
    );
    let (code, ready) = get(&router, "/ready").await;
    assert_eq!(code, 200, "breaker closed: {ready}");
    node.shutdown().await.unwrap();
}

/// docs/gateway.md: "`GET /metrics`: Prometheus text (admin when auth is on; give the
/// scraper a token)", "`GET /health` (no auth)", "`GET /ready` (no auth)".
#[tokio::test]
async fn health_and_ready_need_no_token_and_metrics_needs_an_admin() {
    let hex = |s: &str| switchyard_node::auth::sha256_hex(s.as_bytes());
    let node = TestNode::start(&format!(
        r##"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "app"
publish = ["#"]
subscribe = ["#"]
[[auth.principals]]
name = "ops"
admin = true
[[auth.tokens]]
principal = "app"
sha256 = "{}"
[[auth.tokens]]
principal = "ops"
sha256 = "{}"
"##,
        hex("app-token"),
        hex("ops-token")
    ))
    .await;
    let http = client();
    let status = |path: &'static str, token: Option<&'static str>| {
        let http = http.clone();
        let url = node.url(path);
        async move {
            let mut req = http.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(status("/health", None).await, 200);
    assert_eq!(status("/ready", None).await, 200);
    assert_eq!(status("/metrics", None).await, 401);
    assert_eq!(status("/metrics", Some("app-token")).await, 403);
    assert_eq!(status("/metrics", Some("ops-token")).await, 200);
    assert_eq!(status("/v1/stats", None).await, 401);
    assert_eq!(status("/v1/stats", Some("app-token")).await, 403);
    assert_eq!(status("/v1/health", Some("app-token")).await, 403);
    assert_eq!(status("/v1/health", Some("ops-token")).await, 200);
    let text = super::scrape(&node, Some("ops-token")).await;
    let samples = parse_exposition(&text);
    // The denials just made are counted.
    let denials: f64 = samples
        .iter()
        .filter(|s| s.name == "switchyard_gateway_denials_total")
        .map(|s| s.value)
        .sum();
    assert!(denials >= 5.0, "5 denials made, counted {denials}:\n{text}");
    node.stop().await.unwrap();
}

/// docs/nats.md lists "a connect error for an unreachable server" among the transport's
/// promises; an SRE relies on a node that cannot reach NATS at start failing fast with an
/// error (so the orchestrator restarts it), not hanging while `/ready` is never served. A
/// node on a port nothing listens on: `Node::start` returns an error within 30 s.
#[tokio::test]
async fn a_node_on_an_unreachable_nats_fails_to_start_with_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // the listener is dropped here: nothing listens on the port
    let config = NodeConfig::from_toml(&format!(
        r#"
[transport]
kind = "nats"
url = "nats://127.0.0.1:{port}"
storage = "memory"
[[transport.streams]]
name = "rev45"
patterns = ["rev45.#"]
"#
    ))
    .unwrap();
    let started = tokio::time::timeout(Duration::from_secs(30), Node::start(config))
        .await
        .expect("Node::start neither failed nor succeeded within 30 s");
    match started {
        Ok(_) => panic!("a node started on a NATS nobody listens on"),
        Err(e) => eprintln!("refused as documented: {e}"),
    }
}
