//! Traces, topology, `/v1/stream` and connection gauges against known traffic.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use switchyard::{Envelope, Outcome, Topic, handler_fn};

use crate::common::{MEMORY, TestNode, client, get_json};
use crate::{eventually, metric, scrape};

/// A request through manager -> service -> handler and the answers back up: the trace of its
/// correlation id holds every hop, in causal order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_follows_a_request_through_every_layer_and_back() {
    let node = TestNode::start(MEMORY).await;
    let bus = node.bus.clone();
    // manager: a command that asks the service.
    node.bus
        .handle_envelope(
            "manager",
            "mgr.plan",
            handler_fn(move |env: Envelope| {
                let bus = bus.clone();
                async move {
                    let res = bus
                        .send_envelope(Envelope::new(Topic::new("svc.work")?, "{}"))
                        .await?;
                    let got = res.reply.map(|r| r.payload.clone()).unwrap_or_default();
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Outcome::reply(
                        env.reply(got),
                    ))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let bus = node.bus.clone();
    // service: a command that publishes an event for the handler and answers.
    node.bus
        .handle_envelope(
            "service",
            "svc.work",
            handler_fn(move |env: Envelope| {
                let bus = bus.clone();
                async move {
                    bus.publish_envelope(Envelope::new(Topic::new("fx.done")?, "{}"))
                        .await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Outcome::reply(
                        env.reply(r#"{"done":true}"#),
                    ))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    node.bus
        .subscribe("effect", "fx.#", crate::common::forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    let correlation = ulid::Ulid::new().to_string();
    let res = client()
        .post(node.url("/v1/request/mgr.plan"))
        .header("x-correlation-id", &correlation)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["payload"],
        serde_json::json!({"done": true}),
        "{answer}"
    );
    let fx = crate::common::recv(&mut rx, "the effect").await;
    assert_eq!(fx.correlation_id.to_string(), correlation);
    node.bus.run_until_idle().await;
    let trace = get_json(&node, &format!("/v1/trace/{correlation}")).await;
    let msgs = trace["messages"].as_array().unwrap();
    let topics: Vec<&str> = msgs.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    for hop in ["mgr.plan", "svc.work", "fx.done"] {
        assert!(
            topics.contains(&hop),
            "{hop} missing from the trace {topics:?}"
        );
    }
    let pos = |t: &str| topics.iter().position(|x| *x == t).unwrap();
    assert!(
        pos("mgr.plan") < pos("svc.work") && pos("svc.work") < pos("fx.done"),
        "{topics:?}"
    );
    // causal links: svc.work caused by mgr.plan, fx.done by svc.work.
    let id_of = |t: &str| msgs[pos(t)]["id"].clone();
    assert_eq!(
        msgs[pos("svc.work")]["causation_id"],
        id_of("mgr.plan"),
        "{trace}"
    );
    assert_eq!(
        msgs[pos("fx.done")]["causation_id"],
        id_of("svc.work"),
        "{trace}"
    );
    let root = &trace["tree"]["roots"][0];
    assert_eq!(root["topic"], "mgr.plan", "{trace}");
    assert_eq!(root["children"][0]["topic"], "svc.work", "{trace}");
    assert_eq!(
        root["children"][0]["children"][0]["topic"], "fx.done",
        "{trace}"
    );
    node.stop().await.unwrap();
}

fn graph_names(topo: &Value) -> String {
    topo.to_string()
}

/// Without a declared topology the graph is the bus's: a subscription that goes away leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_drops_a_subscription_that_went_away() {
    let node = TestNode::start(MEMORY).await;
    let sub = node
        .bus
        .subscribe(
            "ephemeral-watcher",
            "watch.#",
            handler_fn(|_e: Envelope| async { Ok::<_, std::convert::Infallible>(Outcome::Ack) }),
        )
        .start()
        .await
        .unwrap();
    node.bus
        .subscribe(
            "stayer",
            "stay.#",
            handler_fn(|_e: Envelope| async { Ok::<_, std::convert::Infallible>(Outcome::Ack) }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let topo = get_json(&node, "/v1/topology?format=json").await;
    assert!(graph_names(&topo).contains("ephemeral-watcher"), "{topo}");
    let mermaid = client()
        .get(node.url("/v1/topology?format=mermaid"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(mermaid.contains("ephemeral-watcher"), "{mermaid}");
    drop(sub);
    let topo = eventually(10, "the watcher gone from /v1/topology", || async {
        let topo = get_json(&node, "/v1/topology?format=json").await;
        (!graph_names(&topo).contains("ephemeral-watcher")).then_some(topo)
    })
    .await;
    assert!(graph_names(&topo).contains("stayer"), "{topo}");
    let dot = client()
        .get(node.url("/v1/topology?format=dot"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!dot.contains("ephemeral-watcher"), "{dot}");
    let status = get_json(&node, "/v1/status").await;
    assert_eq!(status["subscriptions"], 1, "{status}");
    let text = scrape(&node).await;
    assert!(
        !text.contains("subscription=\"ephemeral-watcher\""),
        "a removed subscription keeps its series: unbounded labels\n{text}"
    );
    node.stop().await.unwrap();
}

/// WebSocket connections: the gauge follows clients in and out and ends at 0; the counter
/// counts each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ws_connection_gauge_returns_to_zero() {
    let node = TestNode::start(MEMORY).await;
    let ws_url = node.url("/v1/ws").replace("http://", "ws://");
    let mut conns = Vec::new();
    for _ in 0..5 {
        let (ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        conns.push(ws);
    }
    eventually(10, "5 ws connections in the gauge", || async {
        let text = scrape(&node).await;
        (metric(&text, "switchyard_gateway_ws_connections", &[]) == Some(5.0)).then_some(())
    })
    .await;
    for mut ws in conns.drain(..3) {
        ws.close(None).await.unwrap();
    }
    // Two dropped without a close frame.
    conns.clear();
    let text = eventually(10, "ws gauge back to 0", || async {
        let text = scrape(&node).await;
        (metric(&text, "switchyard_gateway_ws_connections", &[]) == Some(0.0)).then_some(text)
    })
    .await;
    assert_eq!(
        metric(&text, "switchyard_gateway_ws_connections_total", &[]),
        Some(5.0),
        "{text}"
    );
    node.stop().await.unwrap();
}

/// Reads SSE events from `/v1/stream` until `want` of type `kind` arrived.
async fn sse_events(node: &TestNode, kind: &str, want: usize) -> Vec<Value> {
    let res = client().get(node.url("/v1/stream")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut ev = "";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        ev = e.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if ev == kind {
                    out.push(serde_json::from_str(&data).unwrap());
                    if out.len() >= want {
                        return;
                    }
                }
            }
        }
    })
    .await
    .expect("SSE events in time");
    out
}

/// The dashboard's feed: its `stats` equal `/metrics` once the traffic stopped, and clients
/// that come and go leave nothing behind in the figures (connections, requests in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_stats_equal_metrics_and_clients_leave_no_trace() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe(
            "feed",
            "feed.#",
            handler_fn(|e: Envelope| async move {
                if e.topic.as_str() == "feed.bad" {
                    return Ok::<_, std::convert::Infallible>(Outcome::reject("bad"));
                }
                Ok(Outcome::Ack)
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    for t in ["feed.a", "feed.a", "feed.a", "feed.bad"] {
        let r = http
            .post(node.url(&format!("/v1/publish/{t}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    node.bus.run_until_idle().await;
    // Ten clients read the stream and leave.
    for _ in 0..10 {
        let ev = sse_events(&node, "hello", 1).await;
        assert!(ev[0]["version"].is_string());
    }
    let stats = sse_events(&node, "stats", 2).await.pop().unwrap();
    let text = scrape(&node).await;
    let sub = stats["bus"]["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "feed")
        .unwrap()
        .clone();
    for (field, series) in [
        ("acked", "switchyard_subscription_acked_total"),
        ("rejected", "switchyard_subscription_rejected_total"),
        ("delivered", "switchyard_subscription_delivered_total"),
        (
            "dead_lettered",
            "switchyard_subscription_dead_lettered_total",
        ),
    ] {
        assert_eq!(
            sub["stats"][field].as_f64(),
            metric(&text, series, &["subscription=\"feed\""]),
            "{field}: stream {sub} vs /metrics"
        );
    }
    assert_eq!(sub["stats"]["acked"], 3, "{sub}");
    assert_eq!(sub["stats"]["rejected"], 1, "{sub}");
    let dlq = metric(&text, "switchyard_dlq_size", &[]);
    assert_eq!(dlq, Some(1.0), "{text}");
    node.stop().await.unwrap();
}

/// The gateway's duration histogram counts every request of a route, refused ones too: its
/// `_count` equals the sum of `requests_total` over statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_histogram_counts_every_request() {
    let node = TestNode::start(MEMORY).await;
    let http = client();
    for i in 0..7 {
        // Every third with a bad priority header: 400.
        let mut req = http.post(node.url("/v1/publish/h.x")).body("{}");
        if i % 3 == 0 {
            req = req.header("x-priority", "999");
        }
        let res = req.send().await.unwrap();
        assert!(
            res.status() == 202 || res.status() == 400,
            "{}",
            res.status()
        );
    }
    let text = scrape(&node).await;
    let route = "route=\"/v1/publish/{topic}\"";
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("switchyard_gateway_requests_total") && l.contains(route))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 7.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "switchyard_gateway_requests_total",
            &[route, "status=\"400\""]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "switchyard_gateway_request_duration_seconds_count",
            &[route]
        ),
        Some(7.0),
        "{text}"
    );
    node.stop().await.unwrap();
}

/// Each dead letter reaches a `/v1/stream` reader as a `dead_letter` event whose
/// `dead_letters` is the queue's size after it, and which matches `/v1/dlq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_dead_letter_events_match_the_dlq() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe(
            "refuser",
            "dl.#",
            handler_fn(|_e: Envelope| async {
                Ok::<_, std::convert::Infallible>(Outcome::reject("nope"))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let (hello_tx, hello_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let url = node.url("");
        let mut hello_tx = Some(hello_tx);
        tokio::spawn(async move {
            let res = client()
                .get(format!("{url}/v1/stream"))
                .send()
                .await
                .unwrap();
            let mut body = res.bytes_stream();
            let mut buf = String::new();
            let mut out: Vec<Value> = Vec::new();
            while let Some(chunk) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if block.contains("event: dead_letter") || block.contains("event:dead_letter") {
                        let data = block
                            .lines()
                            .find_map(|l| l.strip_prefix("data:"))
                            .unwrap()
                            .trim_start()
                            .to_owned();
                        out.push(serde_json::from_str(&data).unwrap());
                        if out.len() == 3 {
                            return out;
                        }
                    }
                    if block.contains("event: hello") || block.contains("event:hello") {
                        // connected: the publisher may start
                        if let Some(tx) = hello_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            }
            out
        })
    };
    // The reader is subscribed once it got its `hello`.
    tokio::time::timeout(Duration::from_secs(10), hello_rx)
        .await
        .expect("hello in time")
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let res: Value = client()
            .post(node.url("/v1/publish/dl.x"))
            .body("{}")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(res["correlation_id"].as_str().unwrap().to_owned());
        node.bus.run_until_idle().await;
    }
    let events = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .expect("3 dead_letter events")
        .unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    let sizes: Vec<u64> = events
        .iter()
        .map(|e| e["dead_letters"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [1, 2, 3], "{events:?}");
    let got: Vec<&str> = events
        .iter()
        .map(|e| e["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids, "{events:?}");
    let dlq = get_json(&node, "/v1/dlq").await;
    assert_eq!(dlq["total"], 3, "{dlq}");
    node.stop().await.unwrap();
}
