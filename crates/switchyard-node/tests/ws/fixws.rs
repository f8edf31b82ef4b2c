//! Task fixws: each remote handler a WebSocket client registers has a bus name of its own
//! (`ws-handler:<principal>:<connection>:<id>`), so two handlers of one principal, or two
//! topics one connection handles, are told apart in `/v1/stats`, `/v1/topology` and
//! `/metrics`; and the rows kept under that name go when it ends.

use serde_json::{Value, json};

use crate::support::{TestNode, WAIT, eventually};

async fn get(node: &TestNode, path: &str) -> Value {
    reqwest::get(node.http(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

/// The bus names of the lone remote handlers, by command topic.
fn ws_handlers(node: &TestNode) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = node
        .bus
        .registry()
        .iter()
        .filter(|s| s.name.starts_with("ws-handler:") && !s.name.starts_with("ws-handler:group:"))
        .map(|s| (s.pattern.to_string(), s.name.to_string()))
        .collect();
    rows.sort();
    rows
}

/// Before the fix every lone remote handler of a principal was `ws-handler:<principal>`: the
/// three registrations below shared one name (and one row of figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_handlers_of_one_principal_have_distinct_names_and_leave_no_rows() {
    let node = TestNode::start("").await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    for (on_a, topic) in [(true, "fa.run"), (true, "fa.other"), (false, "fb.run")] {
        let client = if on_a { &mut a } else { &mut b };
        let v = client
            .ask(json!({"op": "handle", "id": "h", "topic": topic}))
            .await;
        assert_eq!(v["op"], "handling", "{v}");
    }
    let rows = ws_handlers(&node);
    let names: Vec<&str> = rows.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let distinct: std::collections::HashSet<&str> = names.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        3,
        "remote handlers of one principal share a bus name: {rows:?}"
    );
    for n in &names {
        assert!(n.starts_with("ws-handler:anonymous:"), "{n}");
        assert_eq!(
            n.split(':').count(),
            4,
            "ws-handler:<principal>:<conn>:<id>: {n}"
        );
    }
    let name_of = |topic: &str| rows.iter().find(|(t, _)| t == topic).unwrap().1.clone();
    let (run_a, other_a, run_b) = (name_of("fa.run"), name_of("fa.other"), name_of("fb.run"));

    // A command to fa.run is counted under its handler's name only.
    let http = reqwest::Client::new();
    let sent = tokio::spawn(
        http.post(node.http("/v1/send/fa.run"))
            .header("content-type", "application/json")
            .body("{}")
            .send(),
    );
    let cmd = a.expect("command").await;
    a.send(json!({"op": "result", "call": cmd["call"], "ok": true, "payload": 1}))
        .await;
    let resp = tokio::time::timeout(WAIT, sent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stats = get(&node, "/v1/stats").await;
    let handlers = stats["handlers"].to_string();
    assert!(handlers.contains(&run_a), "{run_a} not in {handlers}");
    assert!(!handlers.contains(&run_b), "{run_b} in {handlers}");

    // Unhandled: its registration and its /v1/stats rows go; the others stay.
    let v = a
        .ask(json!({"op": "unhandle", "id": "u", "topic": "fa.run"}))
        .await;
    assert_eq!(v["op"], "unhandled", "{v}");
    eventually("fa.run's handler to end", || async {
        (!ws_handlers(&node).iter().any(|(_, n)| *n == run_a)).then_some(())
    })
    .await;
    let stats = get(&node, "/v1/stats").await;
    let text = stats["handlers"].to_string() + &stats["latency"].to_string();
    assert!(
        !text.contains(&run_a),
        "/v1/stats keeps rows of the departed handler {run_a}: {text}"
    );
    let metrics = reqwest::get(node.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains(&run_a),
        "/metrics keeps series of the departed handler {run_a}"
    );
    assert_eq!(
        ws_handlers(&node),
        vec![
            ("fa.other".to_owned(), other_a.clone()),
            ("fb.run".to_owned(), run_b.clone())
        ]
    );

    // A disconnect ends the connection's handlers (and their rows) too.
    a.close().await;
    eventually("a's handlers to end", || async {
        (ws_handlers(&node) == vec![("fb.run".to_owned(), run_b.clone())]).then_some(())
    })
    .await;
    b.close().await;
    node.stop().await;
}

/// A remote handler's `hand_back: true` is the bus's `HandBack`, not a failed attempt. A
/// command is no transport delivery, so it fails for good at once (as a Rust handler's
/// `HandBack` does): one call, the sender learns why. Before there was no `hand_back`, and a
/// Python `HandBack` went as `ok: false`: retried, 3 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_hand_back_is_no_failed_attempt() {
    let node = TestNode::start("").await;
    let mut worker = node.client().await;
    worker
        .ask(json!({"op": "handle", "id": "h", "topic": "jobs.back"}))
        .await;
    let bus = node.bus.clone();
    let sent = tokio::spawn(async move {
        bus.send_envelope(switchyard::Envelope::new(
            switchyard::Topic::new("jobs.back").unwrap(),
            "{}",
        ))
        .await
    });
    let cmd = worker.expect("command").await;
    // Both at once is refused; the call still waits.
    let v = worker
        .ask(
            json!({"op": "result", "id": "r", "call": cmd["call"], "ok": false,
                    "reject": true, "hand_back": true}),
        )
        .await;
    assert_eq!(v["op"], "error", "{v}");
    worker
        .send(json!({"op": "result", "call": cmd["call"], "ok": false,
                     "hand_back": true, "delay_ms": 50, "error": "not mine"}))
        .await;
    let err = tokio::time::timeout(WAIT, sent)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    match &err {
        switchyard::SendError::Failed { error, attempts } => {
            assert_eq!(*attempts, 1, "{err}");
            assert!(
                error.contains("handed back to the transport: not mine"),
                "{error}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // Not offered again.
    let v = worker
        .ask(json!({"op": "unhandle", "id": "u", "topic": "jobs.back"}))
        .await;
    assert_eq!(v["op"], "unhandled", "a second command came instead: {v}");
    worker.close().await;
    node.stop().await;
}
