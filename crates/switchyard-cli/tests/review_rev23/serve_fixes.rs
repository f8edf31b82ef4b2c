//! Fixes after review rev23 (task fixserve): `serve`'s logging precedence and a node whose
//! standard output and error are closed.

use super::*;

/// The `node started` log line of `node`'s stderr (bounded wait), or `None` when it did not
/// come within 5 s.
fn node_started_line(node: &Node) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let err = node.stderr.lock().unwrap().clone();
        if let Some(l) = err.lines().find(|l| l.contains("node started")) {
            return Some(l.to_owned());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// docs/cli.md: for `serve` the filter is the first of `--log` (or `SWITCHYARD_LOG`),
/// `RUST_LOG` and `[logging] filter`; `[logging] format` applies whichever it is.
#[test]
fn serve_log_filter_precedence_is_flag_then_rust_log_then_config() {
    let dir = tempfile::tempdir().unwrap();
    let json_warn = MEMORY.replace(
        "[logging]\nfilter = \"warn\"\n",
        "[logging]\nformat = \"json\"\nfilter = \"warn\"\n",
    );
    assert!(json_warn.contains("format = \"json\""), "{json_warn}");
    // RUST_LOG over the config's filter, in the config's format.
    let node = Node::try_start(dir.path(), &json_warn, &[], &[("RUST_LOG", "info")])
        .unwrap_or_else(|(c, e, _)| panic!("serve exited {c:?}: {e}"));
    let line = node_started_line(&node).expect("RUST_LOG=info logs the start");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    drop(node);
    // --log over RUST_LOG.
    let node = Node::try_start(
        dir.path(),
        &json_warn,
        &["--log", "info"],
        &[("RUST_LOG", "error")],
    )
    .unwrap_or_else(|(c, e, _)| panic!("serve exited {c:?}: {e}"));
    let line = node_started_line(&node).expect("--log info logs the start");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    drop(node);
    // An invalid --log is no longer skipped for the next source: it is a usage error
    // (task fixsmall; `fixsmall::an_invalid_log_flag_is_a_usage_error`).
}

/// `switchyard serve 2>&1 | head`: once the reader has gone, stdout and stderr are closed
/// pipes. The node goes on (log lines and its own lines are dropped) and stops cleanly on
/// SIGTERM: exit 0, not 101 (a panic on a failed print).
#[test]
fn serve_survives_closed_stdout_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, MEMORY).unwrap();
    let mut child = bin(dir.path())
        .args(["serve", "--log", "debug", "--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("switchyard node listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    // The reader goes away: both pipes are closed.
    drop(stdout);
    drop(child.stderr.take());
    let rt = rt();
    rt.block_on(async {
        // Requests are logged (debug) to the closed stderr; the node still answers.
        for _ in 0..3 {
            let r = http().get(format!("{url}/health")).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
        let (status, _) = publish(&url, "orders.placed", "{\"id\": 1}").await;
        assert_eq!(status, 202);
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// docs/gateway.md#message-json: `attempt` is 0 on a message as published (what
/// `/v1/trace` records: the publish, before any delivery) and 1 on its first delivery (a
/// WebSocket `message`).
#[test]
fn attempt_is_0_in_a_trace_and_1_on_the_first_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), MEMORY, &[]);
    rt().block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url())
            .await
            .unwrap();
        ws_call(
            &mut ws,
            json!({"op": "subscribe", "id": 1, "pattern": "orders.#"}),
            "subscribed",
        )
        .await;
        let (status, published) = publish(&node.url, "orders.placed", r#"{"id": 7}"#).await;
        assert_eq!(status, 202, "{published}");
        let delivered = ws_next(&mut ws).await;
        assert_eq!(delivered["op"], "message", "{delivered}");
        assert_eq!(delivered["message"]["attempt"], 1, "{delivered}");
        let correlation = published["correlation_id"].as_str().unwrap();
        let trace: Value = http()
            .get(format!("{}/v1/trace/{correlation}", node.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let messages = trace["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1, "{trace}");
        assert_eq!(messages[0]["attempt"], 0, "{trace}");
    });
}

/// docs/gateway.md: "A WebSocket subscription has the node's retry policy and timeout but no
/// circuit breaker", so neither `/metrics` nor `/v1/stats` shows a breaker for a WebSocket
/// subscription; nor for a remote handler (`ws-handler:<principal>:<connection>:<id>`), which has none either
/// since stop 39 (fixwsgroup: ARCHITECTURE.md, "Decisions").
#[test]
fn a_websocket_subscription_shows_no_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), MEMORY, &[]);
    rt().block_on(async {
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
        let get = |path: &'static str| {
            let url = format!("{}{path}", node.url);
            async move { http().get(url).send().await.unwrap().text().await.unwrap() }
        };
        let metrics = get("/metrics").await;
        let breakers: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("switchyard_breaker_state{"))
            .collect();
        assert!(breakers.is_empty(), "{metrics}");
        let stats: Value = serde_json::from_str(&get("/v1/stats").await).unwrap();
        let handlers: Vec<&str> = stats["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["handler"].as_str().unwrap())
            .collect();
        assert!(handlers.is_empty(), "{stats}");
    });
}
