//! Review rev43: the dashboard as an operator on call uses it, in headless Chromium, driven by
//! `tests/browser/review_rev43.mjs` (one `MODE` per test): do the figures the page shows match
//! what the bus did, exactly (known traffic, then live traffic without a reload); dead letters
//! with binary / HTML / hostile bytes, filters, replay and purge from the page; one
//! correlation id followed across handlers in the trace view; and a JWT that expires while
//! the page is live. Screenshots: `target/dashboard-screenshots/review_rev43-*.png`.

use std::time::Duration;

use switchyard::{Envelope, Outcome, handler_fn};
use switchyard_node::NodeConfig;

use super::common::{MEMORY, TestNode, client};
use super::{BROWSER, browser, screenshots};

mod dead_letters;

/// A subscription on `pattern` that rejects a message whose JSON payload has `why` (with that
/// reason), fails (an error, so the bus retries) one with `"fail": true`, and acks the rest;
/// a replayed message (`replay-count` header) is always acked.
async fn judging(node: &TestNode, name: &str, pattern: &str, attempts: u32) {
    node.bus
        .subscribe(
            name,
            pattern,
            handler_fn(|env: Envelope| async move {
                if env.header("replay-count").is_some() {
                    return Ok(Outcome::Ack);
                }
                let v = serde_json::from_slice::<serde_json::Value>(&env.payload).ok();
                let v = v.unwrap_or(serde_json::json!({"why": "not JSON"}));
                if v["fail"] == true {
                    return Err(std::io::Error::other("downstream timed out"));
                }
                Ok(match v["why"].as_str() {
                    Some(why) => Outcome::reject(why),
                    None => Outcome::Ack,
                })
            }),
        )
        .max_attempts(attempts)
        .retry_delay(Duration::from_millis(5))
        .start()
        .await
        .unwrap()
        .detach();
}

/// Publishes through the gateway; returns the status and the body.
async fn post(
    http: &reqwest::Client,
    node: &TestNode,
    topic: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut req = http
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

async fn json(http: &reqwest::Client, node: &TestNode, path: &str) -> serde_json::Value {
    http.get(node.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The known traffic of the counting tests: `pay` acks 5 and rejects 2; `flaky` (3 attempts)
/// acks 4 and fails 1 three times (2 retries) before dead-lettering it. 12 gateway publishes.
async fn counted_node() -> TestNode {
    let node = TestNode::start(MEMORY).await;
    judging(&node, "pay", "pay.#", 3).await;
    judging(&node, "flaky", "flaky.#", 3).await;
    let http = client();
    let mut sends = Vec::new();
    for n in 0..5 {
        sends.push(("pay.ok", format!(r#"{{"n": {n}}}"#)));
    }
    for n in 0..2 {
        sends.push((
            "pay.bad",
            format!(r#"{{"n": {n}, "why": "card declined"}}"#),
        ));
    }
    for n in 0..4 {
        sends.push(("flaky.ok", format!(r#"{{"n": {n}}}"#)));
    }
    sends.push(("flaky.bad", r#"{"fail": true}"#.to_owned()));
    for (topic, body) in sends {
        let (status, _) = post(&http, &node, topic, "application/json", &[], body.into()).await;
        assert_eq!(status, 202, "{topic}");
    }
    node.bus.run_until_idle().await;
    // What the bus did (the page must show exactly this).
    let subs = json(&http, &node, "/v1/subscriptions").await;
    let by = |name: &str| {
        subs["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["stats"]
            .clone()
    };
    let (pay, flaky) = (by("pay"), by("flaky"));
    assert_eq!(
        (&pay["acked"], &pay["rejected"], &pay["dead_lettered"]),
        (&5.into(), &2.into(), &2.into()),
        "{pay}"
    );
    assert_eq!(
        (
            &flaky["acked"],
            &flaky["failed"],
            &flaky["retried"],
            &flaky["dead_lettered"]
        ),
        (&4.into(), &1.into(), &2.into(), &1.into()),
        "{flaky}"
    );
    node
}

async fn run(node: &TestNode, mode: &str, extra: &[(&str, &str)], limit: u64) -> String {
    let browser = browser::browser_or_skip(mode).expect("checked by the caller");
    let shots = screenshots();
    let url = node.url("/");
    let mut env = vec![
        ("MODE", mode),
        ("DASHBOARD_URL", url.as_str()),
        ("SCREENSHOT_DIR", shots.to_str().unwrap()),
    ];
    env.extend_from_slice(extra);
    browser
        .run("review_rev43.mjs", &env, Duration::from_secs(limit))
        .await
}

/// Docs (gateway.md, Dashboard): "every figure comes from the admin API"; the overview shows
/// handled (acked), dead letters, published, and "queue depth per subscription"; the page
/// "reads /v1/stream" for live updates. An operator relies on the page showing exactly what
/// the bus counted: 9 acked, 3 dead letters, 12 published, per subscription acked / failed /
/// dead-lettered, in the overview's table and the Subscriptions view, and on those figures
/// moving without a reload when more traffic comes (3 acked, 1 dead letter more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_exactly_what_the_bus_counted_and_follows_it_live() {
    if browser::browser_or_skip("rev43 counts").is_none() {
        return;
    }
    let _one = BROWSER.lock().await;
    let node = counted_node().await;
    let out = run(&node, "counts", &[], 60).await;
    assert!(out.contains("rev43: ok"), "{out}");
    // What the page published really reached the bus.
    let subs = json(&client(), &node, "/v1/subscriptions").await;
    let pay = subs["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pay")
        .unwrap()
        .clone();
    assert_eq!(pay["stats"]["acked"], 8, "{pay}");
    node.stop().await.unwrap();
}

/// The same subscription's "Failed" figure in the overview's queue table, the Subscriptions
/// view and the Alerts & health view's handler table. An operator reads one "Failed" column
/// as one number: three views of the page must not disagree about the same subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriptions_failed_figure_is_the_same_in_every_view() {
    if browser::browser_or_skip("rev43 failed column").is_none() {
        return;
    }
    let _one = BROWSER.lock().await;
    let node = counted_node().await;
    let out = run(&node, "failed-column", &[], 50).await;
    assert!(out.contains("rev43: ok"), "{out}");
    node.stop().await.unwrap();
}

/// Docs (Dashboard): "Traces (/v1/trace/{id} as a tree with timings, under each message the
/// handler calls with their outcome, attempt, time and error, failed messages linked to their
/// dead letter)". One correlation id across two hops: orders.placed (handled by `orders`)
/// caused billing.charge (failed twice by `billing`, then dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_view_follows_one_correlation_across_handlers_in_order() {
    if browser::browser_or_skip("rev43 trace").is_none() {
        return;
    }
    let _one = BROWSER.lock().await;
    let node = TestNode::start(MEMORY).await;
    judging(&node, "orders", "orders.#", 1).await;
    judging(&node, "billing", "billing.#", 2).await;
    let http = client();
    let corr = ulid::Ulid::new().to_string();
    let (s, parent) = post(
        &http,
        &node,
        "orders.placed",
        "application/json",
        &[("x-correlation-id", &corr), ("x-source", "shop-ui")],
        br#"{"order": 1}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 202, "{parent}");
    node.bus.run_until_idle().await;
    let parent_id = parent["id"].as_str().unwrap().to_owned();
    let (s, child) = post(
        &http,
        &node,
        "billing.charge",
        "application/json",
        &[
            ("x-correlation-id", &corr),
            ("x-causation-id", &parent_id),
            ("x-source", "orders"),
        ],
        br#"{"fail": true}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 202, "{child}");
    node.bus.run_until_idle().await;
    let child_id = child["id"].as_str().unwrap().to_owned();
    let out = run(
        &node,
        "trace",
        &[
            ("CORRELATION_ID", corr.as_str()),
            ("CHILD_ID", child_id.as_str()),
        ],
        50,
    )
    .await;
    assert!(out.contains("rev43: ok"), "{out}");
    node.stop().await.unwrap();
}

const JWT_SECRET: &str = "rev43-secret-rev43-secret-rev43-secret";

/// Docs (gateway.md, auth and /v1/stream): "A stream opened with a JWT ends at the JWT's exp
/// plus auth.jwt.leeway_s ... with a last `expired` event"; the dashboard "A refused token's
/// reason (the node's error.message) stays in the sign-in dialog". An operator whose token
/// expires must see that the page is no longer live and why (the token expired), not figures
/// that silently stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_jwt_ends_the_live_page_with_a_visible_reason() {
    if browser::browser_or_skip("rev43 expired").is_none() {
        return;
    }
    let _one = BROWSER.lock().await;
    let config = NodeConfig::from_toml(&format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[auth.jwt]
algorithm = "HS256"
secret = "{JWT_SECRET}"
leeway_s = 0
[[auth.principals]]
name = "ops"
admin = true
"#
    ))
    .unwrap();
    let node = TestNode::from_config(config, |_| {}).await;
    judging(&node, "pay", "pay.#", 1).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now + 8;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "ops", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let exp_ms = (exp * 1000).to_string();
    let out = run(
        &node,
        "expired",
        &[("JWT", jwt.as_str()), ("EXP_MS", exp_ms.as_str())],
        50,
    )
    .await;
    assert!(out.contains("rev43: ok"), "{out}");
    node.stop().await.unwrap();
}

/// Docs (Dashboard): the trace view shows "failed messages linked to their dead letter"; the
/// dead-letter list is bounded (`limit`, 100 by default). With 1,100 older dead letters in the
/// queue (a bad night), the list says how many it shows of how many, and the message of the
/// trace that failed just now is still marked failed and linked to its dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_links_its_dead_letter_when_the_queue_holds_thousands() {
    if browser::browser_or_skip("rev43 trace scale").is_none() {
        return;
    }
    let _one = BROWSER.lock().await;
    let node = TestNode::start(MEMORY).await;
    judging(&node, "other", "other.#", 1).await;
    judging(&node, "billing", "billing.#", 1).await;
    let http = client();
    for chunk in (0..1100u32).collect::<Vec<_>>().chunks(50) {
        let sends = chunk.iter().map(|n| {
            let body = format!(r#"{{"n": {n}, "why": "old failure {n}"}}"#);
            post(
                &http,
                &node,
                "other.old",
                "application/json",
                &[],
                body.into(),
            )
        });
        for (status, _) in futures::future::join_all(sends).await {
            assert_eq!(status, 202);
        }
    }
    node.bus.run_until_idle().await;
    let corr = ulid::Ulid::new().to_string();
    let (s, child) = post(
        &http,
        &node,
        "billing.charge",
        "application/json",
        &[("x-correlation-id", &corr)],
        br#"{"why": "card declined"}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 202);
    node.bus.run_until_idle().await;
    let total = json(&http, &node, "/v1/dlq?limit=1").await["total"].clone();
    assert_eq!(total, 1101);
    let child_id = child["id"].as_str().unwrap().to_owned();
    let out = run(
        &node,
        "trace-scale",
        &[
            ("CORRELATION_ID", corr.as_str()),
            ("CHILD_ID", child_id.as_str()),
        ],
        50,
    )
    .await;
    assert!(out.contains("rev43: ok"), "{out}");
    node.stop().await.unwrap();
}

/// A node on `listener` whose `pay` subscription handled `acks` messages and dead-lettered
/// `rejects` (all published through its gateway).
async fn restarted_node(listener: tokio::net::TcpListener, acks: u32, rejects: u32) -> TestNode {
    let node =
        TestNode::from_listener(NodeConfig::from_toml(MEMORY).unwrap(), listener, |_| {}).await;
    judging(&node, "pay", "pay.#", 1).await;
    let http = client();
    for n in 0..acks + rejects {
        let body = if n < acks {
            format!(r#"{{"n": {n}}}"#)
        } else {
            format!(r#"{{"n": {n}, "why": "declined on node {acks}"}}"#)
        };
        let (s, _) = post(&http, &node, "pay.x", "application/json", &[], body.into()).await;
        assert_eq!(s, 202);
    }
    node.bus.run_until_idle().await;
    node
}

/// Docs (Dashboard): "When the stream breaks (the node stops or restarts) ... the page
/// reconnects ...; once back it reloads the history and the open view." After a restart the
/// figures are the new node's, exactly (its counters start again at 0, docs on /v1/status):
/// the page must not keep the old node's dead letters or add the two nodes' counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_node_restart_the_page_shows_exactly_the_new_nodes_figures() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let Some(browser) = browser::browser_or_skip("rev43 restart") else {
        return;
    };
    let _one = BROWSER.lock().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Old node: 7 acked, 2 dead letters. New node: 3 acked, 1 dead letter.
    let mut node = Some(restarted_node(listener, 7, 2).await);
    let mut child = tokio::process::Command::new("node")
        .arg(browser.dir.join("review_rev43.mjs"))
        .env("MODE", "restart")
        .env("DASHBOARD_URL", format!("http://{addr}/"))
        .env("SCREENSHOT_DIR", screenshots())
        .env("CHROMIUM", &browser.chromium)
        .current_dir(&browser.dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    let drive = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            println!("{line}");
            log.push_str(&line);
            log.push('\n');
            if line == "RESTART_NODE" {
                node.take().unwrap().stop().await.unwrap();
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                node = Some(restarted_node(listener, 3, 1).await);
                stdin.write_all(b"RESTARTED\n").await.unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(55), drive)
        .await
        .expect("the browser script finishes within 55 s");
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "browser script failed:\n{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("rev43: ok"), "{log}");
    node.unwrap().stop().await.unwrap();
}
