//! The live endpoints: `/v1/stream` (server-sent events), `/v1/stats/history`, `/v1/health`,
//! and the observed edges of `/v1/topology`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use switchyard::{Envelope, Outcome, Pattern, handler_fn};
use switchyard_components::builtin::HealthChecker;
use switchyard_components::{Assembly, ComponentBuilder, ComponentSpec, Role, Topology};
use switchyard_node::auth::sha256_hex;

use crate::common::{MEMORY, TestNode, client};

/// Reads server-sent events from a response.
pub(crate) struct Events {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    pub(crate) async fn open(node: &TestNode, token: Option<&str>) -> Events {
        let mut req = client().get(node.url("/v1/stream"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event (name, data), `None` when the stream ended.
    pub(crate) async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            let chunk = self.body.next().await?.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Skips events until one named `name` satisfies `pred` (10 s at most).
    pub(crate) async fn until(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let wait = async {
            loop {
                match self.next().await {
                    Some((n, v)) if n == name && pred(&v) => return v,
                    Some(_) => {}
                    None => panic!("the stream ended before a {name} event"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("no matching {name} event within 10 s"))
    }
}

fn ack() -> switchyard::BoxHandler {
    handler_fn(|_e: Envelope| async { Ok::<_, std::convert::Infallible>(Outcome::Ack) })
}

fn reject() -> switchyard::BoxHandler {
    handler_fn(|_e: Envelope| async { Ok::<_, std::convert::Infallible>(Outcome::reject("no")) })
}

async fn publish(node: &TestNode, topic: &str, source: Option<&str>, body: &str) {
    let mut req = client()
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(s) = source {
        req = req.header("x-source", s);
    }
    assert_eq!(req.send().await.unwrap().status(), 202, "publish {topic}");
}

async fn get(node: &TestNode, path: &str) -> Value {
    let res = client().get(node.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

#[tokio::test]
async fn the_stream_sends_stats_samples_alerts_and_dead_letters_and_ends_with_the_node() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe("billing", "billing.#", reject())
        .start()
        .await
        .unwrap()
        .detach();
    let mut events = Events::open(&node, None).await;
    let (name, hello) = events.next().await.unwrap();
    assert_eq!(name, "hello");
    assert_eq!(hello["transport"], "memory");
    assert_eq!(hello["sample_interval_ms"], 1000);
    // The current stats at once, the same document as /v1/stats.
    let stats = events.until("stats", |_| true).await;
    assert!(stats["bus"]["subscriptions"].is_array(), "{stats}");

    publish(&node, "billing.charge", None, r#"{"amount": 1}"#).await;
    let dead = events.until("dead_letter", |_| true).await;
    assert_eq!(dead["topic"], "billing.charge");
    assert_eq!(dead["handler"], "billing");
    assert_eq!(dead["reason"], "rejected");
    assert_eq!(dead["dead_letters"], 1);
    let listed = get(&node, "/v1/dlq").await;
    assert_eq!(
        listed["items"][0]["id"], dead["id"],
        "the event names the letter"
    );

    publish(
        &node,
        "system.alert.warning",
        None,
        r#"{"rule": "error-rate", "subject": "billing", "message": "1 failed"}"#,
    )
    .await;
    let alert = events.until("alert", |_| true).await;
    assert_eq!(
        (&alert["rule"], &alert["active"]),
        (&Value::from("error-rate"), &Value::from(true))
    );
    publish(
        &node,
        "system.alert.warning",
        None,
        r#"{"rule": "error-rate", "subject": "billing", "active": false}"#,
    )
    .await;
    let resolved = events.until("alert", |a| a["active"] == false).await;
    assert!(resolved["resolved_ms"].is_u64(), "{resolved}");

    // Every second a sample, which counts the dead letter and the failure.
    let sample = events.until("sample", |s| s["dead_letters"] == 1).await;
    assert!(sample["t_ms"].is_u64());
    events.until("stats", |_| true).await;

    // The stream does not keep the node from stopping, and ends when it does.
    tokio::time::timeout(Duration::from_secs(10), node.stop())
        .await
        .expect("the node stops with a stream open")
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while events.next().await.is_some() {}
    })
    .await;
    assert!(rest.is_ok(), "the stream ends when the node stops");
}

#[tokio::test]
async fn the_stream_needs_admin_with_auth_on() {
    let config = format!(
        r##"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "reader"
subscribe = ["#"]
[[auth.principals]]
name = "operator"
admin = true
[[auth.tokens]]
principal = "reader"
sha256 = "{}"
[[auth.tokens]]
principal = "operator"
sha256 = "{}"
"##,
        sha256_hex(b"read-token"),
        sha256_hex(b"op-token")
    );
    let node = TestNode::start(&config).await;
    for (token, status) in [(None, 401), (Some("wrong"), 401), (Some("read-token"), 403)] {
        let mut req = client().get(node.url("/v1/stream"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), status, "{token:?}");
        let mut req = client().get(node.url("/v1/stats/history"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), status, "{token:?}");
    }
    let mut events = Events::open(&node, Some("op-token")).await;
    assert_eq!(events.next().await.unwrap().0, "hello");
    drop(events);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn the_history_keeps_one_sample_a_second_with_rates() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe("orders", "orders.#", ack())
        .start()
        .await
        .unwrap()
        .detach();
    let mut events = Events::open(&node, None).await;
    events.until("sample", |_| true).await;
    for n in 0..5 {
        publish(&node, "orders.placed", None, &format!("{{\"n\": {n}}}")).await;
    }
    node.bus.run_until_idle().await;
    // The sample after the publishes measured them.
    let sample = events
        .until("sample", |s| s["handled_per_s"].as_f64() > Some(0.0))
        .await;
    assert!(sample["published_per_s"].as_f64() > Some(0.0), "{sample}");
    let history = get(&node, "/v1/stats/history").await;
    assert_eq!(history["interval_ms"], 1000);
    assert_eq!(history["capacity"], 900);
    let samples = history["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{history}");
    assert!(
        samples
            .windows(2)
            .all(|w| w[0]["t_ms"].as_u64() <= w[1]["t_ms"].as_u64()),
        "oldest first"
    );
    // The 5 handled messages are in the history: each rate times its sample's interval,
    // summed, makes about 5.
    let handled: f64 = samples
        .windows(2)
        .map(|w| {
            let dt = (w[1]["t_ms"].as_u64().unwrap() - w[0]["t_ms"].as_u64().unwrap()) as f64;
            w[1]["handled_per_s"].as_f64().unwrap() * dt / 1000.0
        })
        .sum();
    assert!(
        (4.0..=6.0).contains(&handled),
        "handled {handled}: {history}"
    );
    let last = samples.last().unwrap()["t_ms"].as_u64().unwrap();
    let since = get(&node, &format!("/v1/stats/history?since_ms={last}")).await;
    assert!(
        since["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["t_ms"].as_u64() >= Some(last)),
        "{since}"
    );
    let bad = client()
        .get(node.url("/v1/stats/history?since=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "unknown query parameter");
    drop(events);
    node.stop().await.unwrap();
}

fn shop() -> Topology {
    let mut ui = ComponentSpec::new("ui", Role::Frontend, "shop");
    ui.publishes.push(Pattern::new("shop.order.*").unwrap());
    let mut orders = ComponentSpec::new("orders", Role::Manager, "shop");
    orders.subscribes.push(Pattern::new("shop.#").unwrap());
    let mut billing = ComponentSpec::new("billing", Role::Service, "shop");
    billing.subscribes.push(Pattern::new("pay.#").unwrap());
    Topology::new(vec![ui, orders, billing])
}

#[tokio::test]
async fn health_judges_each_component_and_the_transport() {
    let node = TestNode::start_with(MEMORY, |n| n.set_topology(shop())).await;
    // Components name their subscriptions <component>:<pattern>.
    node.bus
        .subscribe("orders:shop.#", "shop.#", ack())
        .start()
        .await
        .unwrap()
        .detach();
    node.bus
        .subscribe("billing:pay.#", "pay.#", reject())
        .start()
        .await
        .unwrap()
        .detach();
    // A subscription outside the topology is judged on its own.
    node.bus
        .subscribe("audit", "audit.#", ack())
        .start()
        .await
        .unwrap()
        .detach();
    let mut events = Events::open(&node, None).await;
    events.until("sample", |_| true).await;
    for n in 0..4 {
        publish(
            &node,
            "shop.order.placed",
            Some("ui"),
            &format!("{{\"n\":{n}}}"),
        )
        .await;
        publish(
            &node,
            "pay.charge",
            Some("orders"),
            &format!("{{\"n\":{n}}}"),
        )
        .await;
    }
    node.bus.run_until_idle().await;
    events
        .until("sample", |s| s["errors_per_s"].as_f64() > Some(0.0))
        .await;
    let health = get(&node, "/v1/health").await;
    assert_eq!(health["transport"]["kind"], "memory");
    assert_eq!(health["transport"]["status"], "healthy");
    assert_eq!(health["transport"]["state"], "connected");
    let comps = health["components"].as_array().unwrap();
    let by = |name: &str| {
        comps
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {health}"))
    };
    let billing = by("billing");
    assert_eq!(billing["status"], "failing", "{billing}");
    assert_eq!(billing["role"], "Service");
    assert_eq!(billing["subscriptions"][0], "billing:pay.#");
    assert!(
        billing["reasons"][0]
            .as_str()
            .unwrap()
            .contains("100 % of deliveries failing"),
        "{billing}"
    );
    assert_eq!(billing["dead_lettered"], 4);
    let orders = by("orders");
    assert_eq!(orders["status"], "healthy", "{orders}");
    assert!(orders["handled_per_s"].as_f64() > Some(0.0), "{orders}");
    assert_eq!(by("audit")["role"], Value::Null);
    assert_eq!(by("ui")["subscriptions"].as_array().unwrap().len(), 0);
    assert_eq!(comps[0]["name"], "billing", "the worst first");
    assert_eq!(health["status"], "failing");
    drop(events);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn topology_shows_observed_edges_and_flags_undeclared_ones() {
    let node = TestNode::start_with(MEMORY, |n| n.set_topology(shop())).await;
    node.bus
        .subscribe("orders:shop.#", "shop.#", ack())
        .start()
        .await
        .unwrap()
        .detach();
    let mut events = Events::open(&node, None).await;
    events.until("sample", |_| true).await;
    publish(&node, "shop.order.placed", Some("ui"), "{}").await;
    publish(&node, "shop.order.placed", Some("ui"), "{}").await;
    // ui declares shop.order.* only: this edge is not declared.
    publish(&node, "shop.refund.asked", Some("ui"), "{}").await;
    // Published but handled by nobody: no edge.
    publish(&node, "nowhere.x", Some("ui"), "{}").await;
    node.bus.run_until_idle().await;
    events
        .until("sample", |s| s["handled_per_s"].as_f64() > Some(0.0))
        .await;
    let topo = get(&node, "/v1/topology").await;
    assert_eq!(topo["source"], "components");
    let observed = topo["observed"].as_array().unwrap();
    assert_eq!(observed.len(), 2, "{topo}");
    let placed = &observed[0];
    assert_eq!(
        (&placed["from"], &placed["to"], &placed["topic"]),
        (
            &Value::from("ui"),
            &Value::from("orders"),
            &Value::from("shop.order.placed")
        )
    );
    assert_eq!(placed["count"], 2);
    assert_eq!(placed["declared"], true);
    assert!(placed["rate_per_s"].as_f64() > Some(0.0), "{placed}");
    assert_eq!(observed[1]["topic"], "shop.refund.asked");
    assert_eq!(observed[1]["declared"], false);
    drop(events);
    node.stop().await.unwrap();

    // Without a declared topology: publisher → subscription, nothing called declared.
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe("orders", "orders.#", ack())
        .start()
        .await
        .unwrap()
        .detach();
    publish(&node, "orders.placed", None, "{}").await;
    node.bus.run_until_idle().await;
    let topo = get(&node, "/v1/topology").await;
    assert_eq!(topo["source"], "bus");
    assert_eq!(topo["observed"][0]["from"], "(no source)");
    assert_eq!(topo["observed"][0]["to"], "orders");
    assert_eq!(topo["observed"][0]["declared"], Value::Null);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn health_calls_a_nearly_full_queue_degraded() {
    let node = TestNode::start(MEMORY).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    node.bus
        .subscribe(
            "slow",
            "slow.#",
            handler_fn(move |_e: Envelope| {
                let g = g.clone();
                async move {
                    let _permit = g.acquire().await;
                    Ok::<_, std::convert::Infallible>(Outcome::Ack)
                }
            }),
        )
        .queue_capacity(5)
        .start()
        .await
        .unwrap()
        .detach();
    let topic = switchyard::Topic::new("slow.job").unwrap();
    for _ in 0..5 {
        node.bus
            .publish_envelope(Envelope::new(topic.clone(), b"{}".to_vec()))
            .await
            .unwrap();
    }
    // One is being handled (held by the gate), four wait: 4 of 5 is 80 %.
    let health = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let h = get(&node, "/v1/health").await;
            if h["components"][0]["backlog"] == 4 {
                return h;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the queue fills");
    let slow = &health["components"][0];
    assert_eq!(slow["name"], "slow");
    assert_eq!(slow["status"], "degraded", "{slow}");
    assert_eq!(slow["capacity"], 5);
    assert!(
        slow["reasons"][0]
            .as_str()
            .unwrap()
            .contains("backlog 4 of 5"),
        "{slow}"
    );
    assert_eq!(health["status"], "degraded");
    gate.add_permits(5);
    node.bus.run_until_idle().await;
    let health = get(&node, "/v1/health").await;
    assert_eq!(health["components"][0]["status"], "healthy", "{health}");
    node.stop().await.unwrap();
}

/// The app of the health-checker test: the checker and one worker component.
fn checked_app(bus: &switchyard::Bus, checker: &HealthChecker) -> Assembly {
    Assembly::new(bus).component(checker.component()).component(
        ComponentBuilder::new("shop-worker", Role::Processor, "shop")
            .on_envelope("shop.work.execute", |_, _| async {
                Ok::<_, std::convert::Infallible>(())
            }),
    )
}

#[tokio::test]
async fn health_shows_the_health_checkers_view_and_a_silent_component_fails() {
    let checker = HealthChecker::new(Duration::from_millis(300), 0.5);
    let topology = checked_app(&switchyard::Bus::new(), &checker)
        .topology()
        .unwrap();
    let attached = checker.clone();
    let node = TestNode::start_with(MEMORY, move |n| {
        n.set_topology(topology);
        n.set_health_checker(attached);
    })
    .await;
    let running = checked_app(&node.bus, &checker).start().await.unwrap();
    let worker = |h: &Value| {
        h["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "shop-worker")
            .cloned()
            .unwrap_or_else(|| panic!("no shop-worker in {h}"))
    };

    // A heartbeat: the checker has seen it, and says so.
    running.heartbeat().await.unwrap();
    node.bus.run_until_idle().await;
    let w = worker(&get(&node, "/v1/health").await);
    assert_eq!(w["status"], "healthy", "{w}");
    assert_eq!(w["heartbeat"]["status"], "healthy", "{w}");
    assert_eq!(w["heartbeat"]["heartbeats"], 1, "{w}");

    // Silent for longer than the checker's 300 ms: unresponsive, so failing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let w = loop {
        let w = worker(&get(&node, "/v1/health").await);
        if w["heartbeat"]["status"] == "unresponsive" {
            break w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never unresponsive: {w}"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(w["status"], "failing", "{w}");
    assert!(
        w["reasons"][0]
            .as_str()
            .unwrap()
            .contains("health checker: no heartbeat"),
        "{w}"
    );

    // Alive again with the next heartbeat.
    running.heartbeat().await.unwrap();
    node.bus.run_until_idle().await;
    let w = worker(&get(&node, "/v1/health").await);
    assert_eq!(w["status"], "healthy", "{w}");
    assert_eq!(w["heartbeat"]["heartbeats"], 2, "{w}");
    running.stop();
    node.stop().await.unwrap();
}
