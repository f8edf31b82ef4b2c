//! Review rev19: the dashboard in headless Chromium under attack, driven by
//! `tests/browser/review_rev19.mjs` (one `MODE` per test): hostile text in every field the
//! page shows, a fresh node's empty dashboard, 2,000 topics / 500 dead letters, and a
//! token without the admin grant. Screenshots go to `/tmp/rev19-*.png`.

use std::time::Duration;

use switchyard::{Envelope, Outcome, handler_fn};
use switchyard_node::NodeConfig;
use switchyard_node::auth::sha256_hex;

use super::common::{MEMORY, TestNode, client};
use super::{BROWSER, browser};

/// The markup every hostile field carries: it must show as text, never run.
const XSS: &str = "<img src=x onerror=window.__pwned=1>";
const SCRIPT_END: &str = "</script><script>window.__pwned=1</script>";
const JS_URL: &str = "javascript:window.__pwned=1";
/// A valid message id (visible ASCII, no space) that is markup.
const XSS_ID: &str = "<svg/onload=window.__pwned=1>";

/// A subscription on `pattern` that rejects every message with the payload's `why` (or acks
/// when there is none), so dead-letter errors carry the publisher's text.
async fn rejecting(node: &TestNode, name: &str, pattern: &str) -> Result<(), String> {
    let sub = node.bus.subscribe(
        name,
        pattern,
        handler_fn(|env: Envelope| async move {
            let why = serde_json::from_slice::<serde_json::Value>(&env.payload)
                .ok()
                .and_then(|v| v["why"].as_str().map(str::to_owned));
            Ok::<_, std::convert::Infallible>(match why {
                Some(why) => Outcome::reject(why),
                None => Outcome::Ack,
            })
        }),
    );
    let handle = sub.start().await.map_err(|e| e.to_string())?;
    handle.detach();
    Ok(())
}

async fn post(
    http: &reqwest::Client,
    node: &TestNode,
    topic: &str,
    headers: &[(&str, &str)],
    body: String,
) -> u16 {
    let mut req = http
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Every view of the page with hostile topic, source, header, payload, error, dead-letter
/// and alert text: nothing runs (`window.__pwned` stays undefined, no `<img src=x>` in the
/// DOM, no `javascript:` link) and the text shows literally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_shows_literally_and_never_runs() {
    let Some(browser) = browser::browser_or_skip("hostile_text_shows_literally_and_never_runs")
    else {
        return;
    };
    let _one = BROWSER.lock().await;
    let node = TestNode::start(MEMORY).await;
    // A subscription named with markup, if the bus takes such a name; else a plain one.
    let named = rejecting(&node, XSS, "evil.#").await;
    println!("subscription named {XSS:?}: {named:?}");
    if named.is_err() {
        rejecting(&node, "evil-sink", "evil.#").await.unwrap();
    }
    let http = client();
    let encoded: String = XSS
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let topic_status = post(
        &http,
        &node,
        &format!("evil.{encoded}"),
        &[],
        r#"{"a": 1}"#.to_owned(),
    )
    .await;
    println!("publish to a topic named {XSS:?}: {topic_status}");
    let payload =
        serde_json::json!({ "why": format!("{XSS} {SCRIPT_END}"), "link": JS_URL, "html": XSS });
    let status = post(
        &http,
        &node,
        "evil.charge",
        &[
            ("x-source", XSS),
            ("x-correlation-id", XSS_ID),
            ("x-meta-note", SCRIPT_END),
            ("x-meta-link", JS_URL),
        ],
        payload.to_string(),
    )
    .await;
    assert_eq!(status, 202, "the hostile message is accepted");
    for active in [true, false] {
        let alert = serde_json::json!({
            "rule": XSS, "severity": "critical", "subject": JS_URL,
            "message": SCRIPT_END, "active": active,
        });
        assert_eq!(
            post(
                &http,
                &node,
                "system.alert.critical",
                &[("x-source", XSS)],
                alert.to_string()
            )
            .await,
            202
        );
    }
    let alert = serde_json::json!({
        "rule": format!("{XSS}-firing"), "severity": "warning", "subject": XSS,
        "message": XSS, "active": true,
    });
    assert_eq!(
        post(&http, &node, "system.alert.warning", &[], alert.to_string()).await,
        202
    );
    node.bus.run_until_idle().await;

    let out = browser
        .run(
            "review_rev19.mjs",
            &[
                ("MODE", "hostile"),
                ("DASHBOARD_URL", node.url("/").as_str()),
                ("XSS", XSS),
                ("XSS_ID", XSS_ID),
                ("SCRIPT_END", SCRIPT_END),
            ],
            Duration::from_secs(55),
        )
        .await;
    assert!(out.contains("rev19: ok"), "{out}");
    node.stop().await.unwrap();
}

/// A fresh node: every view renders a sensible empty state and the console has no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_shows_an_empty_dashboard_without_console_errors() {
    let Some(browser) = browser::browser_or_skip("fresh_node_empty_dashboard") else {
        return;
    };
    let _one = BROWSER.lock().await;
    let node = TestNode::start(MEMORY).await;
    let out = browser
        .run(
            "review_rev19.mjs",
            &[("MODE", "empty"), ("DASHBOARD_URL", node.url("/").as_str())],
            Duration::from_secs(55),
        )
        .await;
    assert!(out.contains("rev19: ok"), "{out}");
    node.stop().await.unwrap();
}

/// 2,000 distinct topics (each from its own source) and 500 dead letters, then live traffic
/// on new topics while the page is open: every view renders within a few seconds, the page
/// answers, and the DOM / JS heap do not keep growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_topics_and_500_dead_letters_stay_responsive_and_bounded() {
    let Some(browser) = browser::browser_or_skip("scale") else {
        return;
    };
    let _one = BROWSER.lock().await;
    let node = TestNode::start(MEMORY).await;
    rejecting(&node, "many", "load.#").await.unwrap();
    let http = client();
    let started = std::time::Instant::now();
    for chunk in (0..2000u32).collect::<Vec<_>>().chunks(50) {
        let sends = chunk.iter().map(|n| {
            let http = http.clone();
            let url = node.url(&format!("/v1/publish/load.t{n}.x"));
            async move {
                let body = if *n < 500 {
                    format!(r#"{{"n": {n}, "why": "refused {n}"}}"#)
                } else {
                    format!(r#"{{"n": {n}}}"#)
                };
                http.post(url)
                    .header("content-type", "application/json")
                    .header("x-source", format!("src-{}", n % 200))
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        });
        for status in futures::future::join_all(sends).await {
            assert_eq!(status, 202);
        }
    }
    node.bus.run_until_idle().await;
    println!("2,000 topics published in {:?}", started.elapsed());
    let dlq: serde_json::Value = http
        .get(node.url("/v1/dlq?limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["total"], 500, "{dlq}");

    // Traffic while the page is open: new topics and new dead letters, 20 per second.
    let url = node.url("");
    let traffic = tokio::spawn(async move {
        let http = client();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for n in 0u64.. {
            tick.tick().await;
            let why = if n % 10 == 0 {
                r#", "why": "late""#
            } else {
                ""
            };
            let _ = http
                .post(format!("{url}/v1/publish/load.live{n}.x"))
                .header("content-type", "application/json")
                .header("x-source", format!("live-{}", n % 50))
                .body(format!(r#"{{"n": {n}{why}}}"#))
                .send()
                .await;
        }
    });
    let out = browser
        .run(
            "review_rev19.mjs",
            &[("MODE", "scale"), ("DASHBOARD_URL", node.url("/").as_str())],
            Duration::from_secs(58),
        )
        .await;
    traffic.abort();
    assert!(out.contains("rev19: ok"), "{out}");
    node.stop().await.unwrap();
}

const SHOP_TOKEN: &str = "rev19-shop-token";
const OPS_TOKEN: &str = "rev19-ops-token";

/// With auth on: no token shows no data; a token without the admin grant (docs: the
/// dashboard needs an admin token) is refused and sees no topic, dead letter or figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_admin_sees_no_data() {
    let Some(browser) = browser::browser_or_skip("auth") else {
        return;
    };
    let _one = BROWSER.lock().await;
    let config = NodeConfig::from_toml(&format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "shop"
publish = ["secret.#"]
subscribe = ["secret.#"]
[[auth.principals]]
name = "ops"
admin = true
[[auth.tokens]]
principal = "shop"
sha256 = "{}"
[[auth.tokens]]
principal = "ops"
sha256 = "{}"
"#,
        sha256_hex(SHOP_TOKEN.as_bytes()),
        sha256_hex(OPS_TOKEN.as_bytes())
    ))
    .unwrap();
    let node = TestNode::from_config(config, |_| {}).await;
    rejecting(&node, "vault", "secret.#").await.unwrap();
    let http = client();
    let res = http
        .post(node.url("/v1/publish/secret.launch-codes"))
        .bearer_auth(SHOP_TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"why": "classified-reason-0000"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    node.bus.run_until_idle().await;
    let out = browser
        .run(
            "review_rev19.mjs",
            &[
                ("MODE", "auth"),
                ("DASHBOARD_URL", node.url("/").as_str()),
                ("SHOP_TOKEN", SHOP_TOKEN),
                ("OPS_TOKEN", OPS_TOKEN),
            ],
            Duration::from_secs(55),
        )
        .await;
    assert!(out.contains("rev19: ok"), "{out}");
    node.stop().await.unwrap();
}

/// Opening the dashboard leaves the console clean. Failed before the page declared its icon:
/// Chromium asked for `/favicon.ico`,
/// the node answers 404 and the console says
/// `Failed to load resource: the server responded with a status of 404 (Not Found)
/// "http://127.0.0.1:<port>/favicon.ico"` on every page load (index.html declares no icon).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_dashboard_logs_no_console_error() {
    let Some(browser) = browser::browser_or_skip("favicon") else {
        return;
    };
    let _one = BROWSER.lock().await;
    let node = TestNode::start(MEMORY).await;
    let out = browser
        .run(
            "review_rev19.mjs",
            &[
                ("MODE", "favicon"),
                ("DASHBOARD_URL", node.url("/").as_str()),
            ],
            Duration::from_secs(40),
        )
        .await;
    assert!(out.contains("rev19: ok"), "{out}");
    node.stop().await.unwrap();
}

/// An acking node with live traffic started on `listener`.
async fn live_node(listener: tokio::net::TcpListener) -> TestNode {
    let node =
        TestNode::from_listener(NodeConfig::from_toml(MEMORY).unwrap(), listener, |_| {}).await;
    rejecting(&node, "orders", "orders.#").await.unwrap();
    node
}

/// Without auth: the node restarts on the same port under live traffic; the page says it
/// lost the connection meanwhile and shows the new node's figures without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_to_a_restarted_node_and_shows_live_data() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let Some(browser) = browser::browser_or_skip("reconnect") else {
        return;
    };
    let _one = BROWSER.lock().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut node = Some(live_node(listener).await);
    let traffic = tokio::spawn(async move {
        let http = client();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let _ = http
                .post(format!("http://{addr}/v1/publish/orders.placed"))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await;
        }
    });
    let mut child = tokio::process::Command::new("node")
        .arg(browser.dir.join("review_rev19.mjs"))
        .env("MODE", "reconnect")
        .env("DASHBOARD_URL", format!("http://{addr}/"))
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
            match line.as_str() {
                "STOP_NODE" => {
                    node.take().unwrap().stop().await.unwrap();
                    stdin.write_all(b"STOPPED\n").await.unwrap();
                }
                "START_NODE" => {
                    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                    node = Some(live_node(listener).await);
                    stdin.write_all(b"STARTED\n").await.unwrap();
                }
                _ => {}
            }
        }
    };
    let finished = tokio::time::timeout(Duration::from_secs(55), drive).await;
    traffic.abort();
    finished.expect("the browser script finishes within 55 s");
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "browser script failed:\n{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("rev19: ok"), "{log}");
    if let Some(node) = node {
        node.stop().await.unwrap();
    }
}
