//! `/metrics`, the HTTP routes and the WebSocket ops against docs/gateway.md.

use super::*;

/// The documented `/metrics` names of docs/gateway.md's Observability section, with `{a,b}`
/// expanded and `..._x` read as `switchyard_gateway_x`.
fn documented_metrics() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/gateway.md"
    ))
    .unwrap();
    let start = doc
        .find("\n## Observability")
        .expect("an Observability section");
    let end = start + doc[start..].find("\n## Scale-out").unwrap();
    let mut names = BTreeSet::new();
    for (i, chunk) in doc[start..end].split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let name = chunk.split('{').next().unwrap_or_default();
        let name = if let Some(rest) = name.strip_prefix("..._") {
            format!("switchyard_gateway_{rest}")
        } else {
            name.to_owned()
        };
        if !name.starts_with("switchyard_") {
            continue;
        }
        // `prefix_{a,b}suffix` or `prefix_{a,b}` (braces around alternatives, not labels).
        match chunk.find('{') {
            Some(open) if chunk[..open] == *name && chunk[..open].ends_with('_') => {
                let close = chunk.find('}').unwrap();
                let suffix = chunk[close + 1..].split('{').next().unwrap_or_default();
                for alt in chunk[open + 1..close].split(',') {
                    names.insert(format!("{name}{alt}{suffix}"));
                }
            }
            _ => {
                names.insert(name);
            }
        }
    }
    names
}

/// Every documented series this traffic should produce appears in `/metrics`, with the
/// documented labels, and every `switchyard_*` series `/metrics` exposes is documented.
#[test]
fn metrics_exposed_and_documented_are_the_same_set() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{MEMORY}[limits.publish_rate]\nper_second = 1\nburst = 3\n");
    let node = Node::start(dir.path(), &toml, &[]);
    let documented = documented_metrics();
    assert!(documented.len() > 40, "{documented:?}");
    let text = rt().block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url())
            .await
            .unwrap();
        ws_call(
            &mut ws,
            json!({"op": "subscribe", "id": 1, "pattern": "orders.#"}),
            "subscribed",
        )
        .await;
        ws_call(
            &mut ws,
            json!({"op": "handle", "id": 2, "topic": "users.create"}),
            "handling",
        )
        .await;
        let (status, _) = publish(&node.url, "orders.placed", r#"{"id": 42}"#).await;
        assert_eq!(status, 202);
        assert_eq!(ws_next(&mut ws).await["op"], "message");
        let send = {
            let url = node.url.clone();
            tokio::spawn(async move {
                http()
                    .post(format!("{url}/v1/send/users.create"))
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        };
        let cmd = ws_next(&mut ws).await;
        assert_eq!(cmd["op"], "command", "{cmd}");
        ws_send(
            &mut ws,
            json!({"op": "result", "call": cmd["call"], "ok": true, "payload": 1}),
        )
        .await;
        assert_eq!(send.await.unwrap(), 200);
        // The bucket (burst 3) is spent by now: one more publish is 429.
        let mut limited = false;
        for _ in 0..5 {
            if publish(&node.url, "orders.more", "{}").await.0 == 429 {
                limited = true;
                break;
            }
        }
        assert!(
            limited,
            "publish_rate per_second = 1, burst = 3 never answered 429"
        );
        let custom = reqwest::Method::from_bytes(b"FROB").unwrap();
        let _ = http()
            .request(custom, format!("{}/v1/status", node.url))
            .send()
            .await;
        let _ = http()
            .get(format!("{}/no/such/path", node.url))
            .send()
            .await;
        http()
            .get(format!("{}/metrics", node.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_"))
        .collect();
    let exposed: BTreeSet<String> = series
        .iter()
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let undocumented: Vec<&String> = exposed
        .iter()
        .filter(|n| {
            !documented.contains(*n)
                && !["_bucket", "_count", "_sum"]
                    .iter()
                    .any(|s| n.strip_suffix(s).is_some_and(|b| documented.contains(b)))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "exposed but not in docs/gateway.md: {undocumented:?}"
    );
    let expected = [
        "switchyard_gateway_requests_total",
        "switchyard_gateway_request_duration_seconds_bucket",
        "switchyard_gateway_rate_limited_total",
        "switchyard_gateway_ws_connections",
        "switchyard_gateway_ws_connections_total",
        "switchyard_gateway_ws_buffer_high_water",
        "switchyard_subscription_delivered_total",
        "switchyard_subscription_acked_total",
        "switchyard_subscription_intake_rejected_total",
        "switchyard_queue_depth",
        "switchyard_subscription_in_flight",
        "switchyard_delivered_total",
        "switchyard_acked_total",
        "switchyard_retried_total",
        "switchyard_rejected_total",
        "switchyard_failed_total",
        "switchyard_in_flight",
        "switchyard_handler_duration_seconds_count",
        "switchyard_handler_duration_seconds_sum",
        "switchyard_handler_duration_seconds_max",
        "switchyard_end_to_end_latency_seconds_count",
        "switchyard_handler_latency_seconds",
        // No `switchyard_breaker_state`: what a WebSocket client registers has no circuit
        // breaker (docs/gateway.md), so this traffic makes none; the node's tests cover a
        // Rust handler's (`ws::fixsmall`), and the check below that every exposed series is
        // documented still holds it to the docs.
        "switchyard_pending",
        "switchyard_dlq_size",
        "switchyard_dlq_evicted_total",
        "switchyard_ready",
        "switchyard_transport_connected",
    ];
    for name in expected {
        assert!(
            documented.contains(name.trim_end_matches("_bucket")) || documented.contains(name),
            "{name} is not documented"
        );
        assert!(
            exposed.contains(name),
            "{name} missing from /metrics:\n{text}"
        );
    }
    // Labels as documented.
    for needle in [
        "switchyard_gateway_requests_total{route=\"/v1/publish/{topic}\",method=\"POST\",status=\"202\"}",
        "switchyard_gateway_requests_total{route=\"/v1/send/{topic}\",method=\"POST\",status=\"200\"}",
        "switchyard_gateway_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}",
        "switchyard_gateway_requests_total{route=\"unmatched\",method=\"other\",status=\"405\"}",
        "switchyard_gateway_rate_limited_total{principal=\"anonymous\"}",
        "switchyard_delivered_total{topic=\"orders.#\",handler=\"ws:anonymous:",
        // ws-handler:<principal>:<connection>:<id> (task fixws)
        "switchyard_delivered_total{topic=\"users.create\",handler=\"ws-handler:anonymous:",
        "switchyard_transport_connected{transport=\"memory\"} 1",
        "switchyard_ready 1",
    ] {
        assert!(
            series.iter().any(|l| l.starts_with(needle)),
            "no {needle} in\n{text}"
        );
    }
    assert!(
        !text.contains("switchyard_breaker_state{"),
        "a WebSocket registration has no breaker to show:\n{text}"
    );
    for q in ["0.5", "0.95", "0.99"] {
        let needle = "switchyard_handler_latency_seconds{handler=\"ws-handler:anonymous:";
        let quantile = format!("quantile=\"{q}\"}}");
        assert!(
            series
                .iter()
                .any(|l| l.starts_with(needle) && l.contains(&quantile)),
            "no {needle}...{quantile} in\n{text}"
        );
    }
}

/// The routes of docs/gateway.md answer with their documented statuses and error kinds, and
/// the WebSocket ops of its tables answer with their documented frames.
#[test]
fn documented_routes_and_ws_ops_answer_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), MEMORY, &[]);
    let u = &node.url;
    let id = "01M96T9C7KY31QE3TKMK8S8P7X";
    let replays = format!("/v1/dlq/replays?ids={id}");
    let purge = format!(r#"{{"ids": ["{id}"]}}"#);
    rt().block_on(async {
        for path in [
            "/health", "/ready", "/", "/metrics", "/v1/status", "/v1/topics",
            "/v1/subscriptions", "/v1/dlq", "/v1/stats", "/v1/stats/history", "/v1/health",
            "/v1/alerts", "/v1/openapi.json", "/v1/asyncapi.json", "/v1/topology?format=json",
            "/v1/topology?format=mermaid", "/v1/topology?format=dot",
            replays.as_str(), "/dashboard/app.js", "/dashboard/app.css",
            "/v1/stream",
        ] {
            let r = http().get(format!("{u}{path}")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "GET {path}");
        }
        let get = |path: String| async move {
            let r = http().get(path).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        };
        for (path, status, kind) in [
            (format!("/v1/trace/{id}"), 404, "not_found"),
            (format!("/v1/dlq/{id}"), 404, "not_found"),
            ("/v1/dlq?limit=0".to_owned(), 400, "bad_query"),
            ("/v1/dlq?limit=1001".to_owned(), 400, "bad_query"),
            ("/v1/dlq?bogus=1".to_owned(), 400, "bad_query"),
            ("/v1/dlq?since=yesterday".to_owned(), 400, "bad_query"),
            ("/v1/topology?format=xml".to_owned(), 400, "bad_query"),
            ("/v1/ws".to_owned(), 400, "bad_request"),
            ("/no/such/route".to_owned(), 404, "not_found"),
        ] {
            let (got, body) = get(format!("{u}{path}")).await;
            assert_eq!((got, body["error"]["kind"].as_str()), (status, Some(kind)), "GET {path}: {body}");
        }
        let r = http().delete(format!("{u}/v1/status")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["kind"], "method_not_allowed");
        for (path, ct, body, status, kind) in [
            ("/v1/dlq/purge", "text/plain", "x", 415, Some("unsupported_content_type")),
            ("/v1/dlq/replay", "application/json", r#"{"ids": []}"#, 400, Some("bad_request")),
            ("/v1/dlq/purge", "application/json", purge.as_str(), 200, None),
            ("/v1/publish/a..b", "application/json", "{}", 400, Some("invalid_topic")),
            ("/v1/publish/a.b", "application/json", "{", 400, Some("malformed_json")),
            ("/v1/send/users.create", "application/json", "{}", 404, Some("no_handler")),
        ] {
            let r = http()
                .post(format!("{u}{path}"))
                .header("content-type", ct)
                .body(body.to_owned())
                .send()
                .await
                .unwrap();
            let got = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            assert_eq!((got, v["error"]["kind"].as_str()), (status, kind), "POST {path}: {v}");
            if path == "/v1/dlq/purge" && got == 200 {
                assert_eq!(v, json!({"purged": 0, "unknown": [id]}));
            }
        }
        let r = http()
            .post(format!("{u}/v1/publish/a.b"))
            .header("content-type", "application/json")
            .header("x-priority", "256")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["kind"], "bad_header");

        let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url()).await.unwrap();
        let sub = ws_call(&mut ws, json!({"op": "subscribe", "id": "s", "pattern": "t.#"}), "subscribed").await;
        assert_eq!(sub["id"], "s");
        let frame = json!({"op": "publish_batch", "id": [1], "messages": [
            {"topic": "t.a", "payload": {"v": 1}},
            {"topic": "t.b", "payload_base64": "AAEC", "content_type": "application/octet-stream"}]});
        ws_send(&mut ws, frame.clone()).await;
        // The connection's own subscription may get a published message before the batch's
        // answer (answers and deliveries share the socket; gateway.md promises no order
        // between them): keep the messages that come first.
        let mut seen = Vec::new();
        let batch = loop {
            let v = ws_next(&mut ws).await;
            if v["op"] == "message" {
                seen.push(v["message"].clone());
                continue;
            }
            assert_eq!(v["op"], "published_batch", "{frame} answered {v}");
            break v;
        };
        assert_eq!((batch["id"].clone(), batch["count"].clone()), (json!([1]), json!(2)), "{batch}");
        while seen.len() < 2 {
            let m = ws_next(&mut ws).await;
            assert_eq!(m["op"], "message", "{m}");
            seen.push(m["message"].clone());
        }
        assert_eq!(seen[0]["payload"], json!({"v": 1}));
        assert_eq!(seen[1]["payload_base64"], "AAEC");
        let un = ws_call(&mut ws, json!({"op": "unsubscribe", "id": 3, "subscription": sub["subscription"]}), "unsubscribed").await;
        assert_eq!(un["subscription"], sub["subscription"]);
        ws_call(&mut ws, json!({"op": "handle", "id": 4, "topic": "m.x"}), "handling").await;
        let un = ws_call(&mut ws, json!({"op": "unhandle", "id": 5, "topic": "m.x"}), "unhandled").await;
        assert_eq!(un["topic"], "m.x");
        for (frame, kind) in [
            (json!({"op": "request", "id": 6, "topic": "m.x", "payload": 1}), "no_handler"),
            (json!({"op": "frobnicate", "id": 7}), "bad_request"),
            (json!({"op": "subscribe", "id": 8, "pattern": "a..b"}), "invalid_topic"),
            (json!({"op": "ack", "id": 9, "delivery": "999"}), ""),
            (json!({"op": "publish", "id": 10, "topic": "a.b", "payload": 1, "pattern": "x"}), "bad_request"),
        ] {
            let e = ws_call(&mut ws, frame.clone(), "error").await;
            if !kind.is_empty() {
                assert_eq!(e["error"]["kind"], kind, "{frame}: {e}");
            }
            assert_eq!(e["id"], frame["id"], "{e}");
        }
    });
}
