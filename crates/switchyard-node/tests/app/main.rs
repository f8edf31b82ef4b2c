//! The reference app's frontend (`/app`): every call the page makes, through the gateway as
//! the `frontend` principal (auth on), against the data-pipeline app running on the node's
//! bus with its topology enforced on gateway traffic; and the page itself in headless
//! Chromium (`browser.rs`, driving `tests/browser/app.mjs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod browser;
#[path = "../common/browser.rs"]
mod browser_common;
#[path = "../common/mod.rs"]
mod common;
mod review_rev27;

use std::time::Duration;

use common::{client, error_of};
use data_pipeline::testdb::{self, TestPg};
use data_pipeline::{DOMAINS, DemoApp, DemoConfig, PerformanceSettings};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_node::auth::sha256_hex;
use switchyard_node::{Node, NodeConfig, NodeError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const FRONTEND_TOKEN: &str = "app-frontend-token";
const OPERATOR_TOKEN: &str = "app-operator-token";

/// The frontend's grants: what the page needs, plus a publish grant on `staging.#` so that a
/// message past the CPM is refused by the layer rule, not by the grants.
fn config() -> NodeConfig {
    NodeConfig::from_toml(&format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "frontend"
publish = ["cpm.pipeline.request", "cpm.pipeline.cancel", "staging.#"]
send = ["cpm.query.*"]
subscribe = ["*.status.update", "cpm.pipeline.complete"]
[[auth.principals]]
name = "operator"
admin = true
[[auth.tokens]]
principal = "frontend"
sha256 = "{}"
[[auth.tokens]]
principal = "operator"
sha256 = "{}"
"#,
        sha256_hex(FRONTEND_TOKEN.as_bytes()),
        sha256_hex(OPERATOR_TOKEN.as_bytes())
    ))
    .unwrap()
}

/// A node running the reference app, as `switchyard serve --demo` runs it (no trickle).
pub(crate) struct AppNode {
    pub url: String,
    pub app: DemoApp,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

impl AppNode {
    pub async fn start(config: NodeConfig) -> Self {
        Self::start_with(
            config,
            DemoConfig {
                rows: 60,
                ..DemoConfig::default()
            },
        )
        .await
    }

    /// The node with the app started on `demo` (its database, for one).
    pub async fn start_with(config: NodeConfig, demo: DemoConfig) -> Self {
        let node = Node::start(config).await.unwrap();
        let app = DemoApp::start(node.bus(), &demo).await.unwrap();
        node.set_topology_enforced(app.topology().clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            app,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        self.app.stop();
    }
}

/// `POST /v1/publish/cpm.pipeline.request` as the page does it.
async fn start_run(node: &AppNode, body: Value) -> String {
    let res = client()
        .post(node.url("/v1/publish/cpm.pipeline.request"))
        .bearer_auth(FRONTEND_TOKEN)
        .header("x-source", "frontend")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let v: Value = res.json().await.unwrap();
    v["correlation_id"].as_str().unwrap().to_owned()
}

/// `POST /v1/request/<topic>` as the page does it: the reply's payload.
async fn query(node: &AppNode, topic: &str, body: Value) -> Value {
    let res = client()
        .post(node.url(&format!("/v1/request/{topic}?timeout_ms=10000")))
        .bearer_auth(FRONTEND_TOKEN)
        .header("x-source", "frontend")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{topic}");
    let v: Value = res.json().await.unwrap();
    v["payload"].clone()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The page's WebSocket: status updates and results.
async fn live(node: &AppNode) -> Ws {
    let url = format!(
        "{}/v1/ws?token={FRONTEND_TOKEN}",
        node.url.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for (id, pattern) in [
        ("status", "*.status.update"),
        ("results", "cpm.pipeline.complete"),
    ] {
        ws.send(WsMessage::text(
            json!({"op": "subscribe", "id": id, "pattern": pattern}).to_string(),
        ))
        .await
        .unwrap();
        let f = next_frame(&mut ws).await;
        assert_eq!(f["op"], "subscribed", "{f}");
    }
    ws
}

async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        if let WsMessage::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Reads the WebSocket until the result of `correlation` arrives; returns it and the
/// managers' status updates of that flow as (domain, state).
async fn follow(ws: &mut Ws, correlation: &str) -> (Value, Vec<(String, String)>) {
    let mut steps = Vec::new();
    loop {
        let f = next_frame(ws).await;
        if f["op"] != "message" {
            continue;
        }
        let m = &f["message"];
        let p = &m["payload"];
        if p["correlation_id"] != correlation {
            continue;
        }
        if m["topic"] == "cpm.pipeline.complete" {
            return (p.clone(), steps);
        }
        if p["role"] == "manager" {
            steps.push((
                p["domain"].as_str().unwrap().to_owned(),
                p["to"].as_str().unwrap().to_owned(),
            ));
        }
    }
}

/// Reads on until the manager of `domain` reported `to` for `correlation`: its status update
/// travels on another topic than the CPM's result and may arrive after it.
async fn await_step(
    ws: &mut Ws,
    correlation: &str,
    steps: &mut Vec<(String, String)>,
    domain: &str,
    to: &str,
) {
    while !steps.iter().any(|(d, s)| d == domain && s == to) {
        let f = next_frame(ws).await;
        let p = &f["message"]["payload"];
        if p["correlation_id"] == correlation && p["role"] == "manager" {
            steps.push((
                p["domain"].as_str().unwrap().to_owned(),
                p["to"].as_str().unwrap().to_owned(),
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_run_moves_through_every_domain_and_its_data_matches_the_store() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let correlation = start_run(&node, json!({"run_id": "api-1", "dataset": "", "rows": 90})).await;
    let (done, mut steps) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "completed", "{done}");
    await_step(
        &mut ws,
        &correlation,
        &mut steps,
        "recommendation",
        "completed",
    )
    .await;
    // Live status: every domain's manager ran and completed, in order.
    let completed: Vec<&str> = steps
        .iter()
        .filter(|(_, s)| s == "completed")
        .map(|(d, _)| d.as_str())
        .collect();
    let domains: Vec<&str> = DOMAINS.iter().map(|(d, _)| *d).collect();
    assert_eq!(completed, domains);
    assert!(steps.iter().any(|(d, s)| d == "staging" && s == "running"));

    let runs = query(&node, "cpm.query.runs", json!({})).await;
    let run = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == "api-1")
        .unwrap();
    assert_eq!(run["status"], "completed");
    assert_eq!(run["input"], "generated");
    assert_eq!(run["correlation_id"], correlation.as_str());
    assert_eq!(run["domains"].as_array().unwrap().len(), 6);
    assert!(run["finished_ms"].as_u64().unwrap() >= run["started_ms"].as_u64().unwrap());

    let d = query(
        &node,
        "cpm.query.run",
        json!({"run_id": "api-1", "preview_rows": 5}),
    )
    .await;
    let t = node.app.store().run_tables("api-1").await.unwrap();
    assert_eq!(d["staged"]["rows"], t.raw_rows["api-1"].len());
    assert_eq!(t.raw_rows["api-1"].len(), 90);
    assert_eq!(d["staged"]["preview"].as_array().unwrap().len(), 5);
    assert_eq!(d["quality"]["valid"], t.sales["api-1"].len());
    assert_eq!(d["quality"]["issues"], t.quality_issues["api-1"].len());
    assert!(
        !t.quality_issues["api-1"].is_empty(),
        "the generator makes bad rows"
    );
    let failed_checks: u64 = d["quality"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["failed"].as_u64().unwrap())
        .sum();
    assert_eq!(failed_checks as usize, t.quality_issues["api-1"].len());
    assert_eq!(
        d["quality"]["failed_rows"][0]["line"],
        t.quality_issues["api-1"][0].line
    );
    let f = &t.features["api-1"];
    assert_eq!(
        d["features"]["total_revenue"].as_f64().unwrap(),
        f.total_revenue
    );
    assert_eq!(
        d["insights"]["anomalies"].as_array().unwrap().len(),
        t.insights["api-1"].anomalies.len()
    );
    assert_eq!(
        d["recommendations"].as_array().unwrap().len(),
        t.recommendations["api-1"].len()
    );
    assert_eq!(d["report"]["markdown"], t.reports["api-1"].as_str());
    let csv = d["report"]["csv"].as_str().unwrap();
    assert!(csv.starts_with("section,key,value\n"), "{csv}");
    assert!(
        csv.contains(&format!("revenue,total,{:.2}\n", f.total_revenue)),
        "{csv}"
    );
    assert_eq!(
        query(&node, "cpm.query.run", json!({"run_id": "nope"})).await,
        json!({"run": null})
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_csv_is_staged_and_checked() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let csv = "date,region,product,units,unit_price\n\
               2026-01-01,north,alpha,3,2.50\n\
               2026-01-02,atlantis,alpha,1,2.50\n\
               2026-01-03,south,beta,2,4.00\n";
    let correlation = start_run(&node, json!({"run_id": "csv-1", "dataset": "", "csv": csv})).await;
    let (done, _) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "completed", "{done}");
    let d = query(&node, "cpm.query.run", json!({"run_id": "csv-1"})).await;
    assert_eq!(d["run"]["input"], "csv");
    assert_eq!(d["staged"]["rows"], 3);
    assert_eq!(d["quality"]["valid"], 2);
    assert_eq!(d["quality"]["issues"], 1);
    let bad = &d["quality"]["failed_rows"][0];
    assert_eq!(bad["rule"], "rule.known_region");
    assert_eq!(bad["value"], "atlantis");
    assert_eq!(bad["fields"][1], "atlantis");
    let region = d["quality"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["rule"] == "rule.known_region")
        .unwrap();
    assert_eq!(region["passed"], false);
    assert_eq!(
        d["features"]["total_revenue"].as_f64().unwrap(),
        3.0 * 2.5 + 2.0 * 4.0
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_switch_fails_the_run_with_a_dead_letter() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let correlation = start_run(
        &node,
        json!({"run_id": "fail-1", "dataset": "", "rows": 40, "fail": "insight"}),
    )
    .await;
    let (done, mut steps) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "failed", "{done}");
    // The insight manager's own status update travels on another topic than the CPM's
    // result: it may arrive after it.
    await_step(&mut ws, &correlation, &mut steps, "insight", "failed").await;
    let d = query(&node, "cpm.query.run", json!({"run_id": "fail-1"})).await;
    let run = &d["run"];
    assert_eq!(run["status"], "failed");
    assert_eq!(run["fail"], "insight");
    assert_eq!(run["error"]["error_type"], "InjectedFailure");
    let done_domains: Vec<&str> = run["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert_eq!(done_domains, ["staging", "quality", "analytics"]);
    let letters = run["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{run}");
    // The insight request the processor failed on, under its subscription (a replay re-runs
    // that step).
    assert_eq!(
        letters[0]["handler"],
        "insight-processor:insight.detect.execute"
    );
    assert_eq!(letters[0]["topic"], "insight.detect.execute");
    assert!(d["report"]["markdown"].is_null());
    // The same dead letter is in the node's queue (what an operator sees).
    let id = letters[0]["id"].as_str().unwrap();
    let res = client()
        .get(node.url(&format!("/v1/dlq/{id}")))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let entry: Value = res.json().await.unwrap();
    assert_eq!(entry["message"]["correlation_id"], correlation.as_str());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_message_past_the_cpm_is_refused_and_counted() {
    let node = AppNode::start(config()).await;
    let http = client();
    let job = json!({"run_id": "rogue", "dataset": "sales.csv", "attempt": 1});
    // Straight to the staging processor, as the frontend (named by x-source, and without one
    // by the principal's name): refused by the layer rule, though the grant allows it.
    for source in [Some("frontend"), None] {
        let mut req = http
            .post(node.url("/v1/publish/staging.load.execute"))
            .bearer_auth(FRONTEND_TOKEN)
            .json(&job);
        if let Some(s) = source {
            req = req.header("x-source", s);
        }
        let (status, kind, message) = error_of(req.send().await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (403, "forbidden"), "{message}");
        assert!(message.contains("frontend-only-to-cpm"), "{message}");
    }
    // The frontend principal may not pass itself off as another component.
    let (status, _, message) = error_of(
        http.post(node.url("/v1/publish/staging.load.execute"))
            .bearer_auth(FRONTEND_TOKEN)
            .header("x-source", "cpm")
            .json(&job)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("may not publish as"), "{message}");
    // Over the WebSocket too.
    let url = format!(
        "{}/v1/ws?token={FRONTEND_TOKEN}",
        node.url.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(WsMessage::text(
        json!({"op": "publish", "id": "p", "topic": "staging.load.execute", "source": "frontend", "payload": job})
            .to_string(),
    ))
    .await
    .unwrap();
    let f = next_frame(&mut ws).await;
    assert_eq!(f["op"], "error", "{f}");
    assert_eq!(f["error"]["kind"], "forbidden", "{f}");

    // Counted: the gateway's layer counters and the denial counters.
    let stats: Value = http
        .get(node.url("/v1/stats"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["layers"]["refused"], 3, "{}", stats["layers"]);
    assert_eq!(stats["layers"]["by_rule"]["frontend-only-to-cpm"], 3);
    assert_eq!(stats["denials"]["forbidden"]["publish"], 4);
    // Nothing reached the processor: no run named rogue was staged.
    assert!(
        node.app
            .store()
            .run_tables("rogue")
            .await
            .unwrap()
            .raw_rows
            .is_empty()
    );
    // The CPM is reachable: the allowed path still works.
    start_run(&node, json!({"run_id": "ok", "dataset": "sales.csv"})).await;
    node.stop().await;
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_credentials() {
    let node = AppNode::start(config()).await;
    let http = client();
    for (path, ty) in [
        ("/app", "text/html"),
        ("/app/", "text/html"),
        ("/app/app.js", "text/javascript"),
        ("/app/app.css", "text/css"),
    ] {
        let res = http.get(node.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(ty), "{path}: {ct}");
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    let (status, kind, _) =
        error_of(http.get(node.url("/app/nope.js")).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (404, "not_found"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_page_reads_its_numbers_from_the_postgres_store() {
    let Some(pg) = TestPg::new("node_app").await else {
        return;
    };
    let node = AppNode::start_with(
        config(),
        DemoConfig {
            rows: 60,
            database_url: Some(testdb::url()),
            database_schema: pg.schema().to_owned(),
            ..DemoConfig::default()
        },
    )
    .await;
    assert_eq!(node.app.store().kind(), "postgres");
    let mut ws = live(&node).await;
    let correlation = start_run(&node, json!({"run_id": "pg-1", "dataset": "", "rows": 90})).await;
    let (done, _) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "completed", "{done}");

    // The history: the one run, and the store it ran on.
    let runs = query(&node, "cpm.query.runs", json!({})).await;
    assert_eq!(runs["store"], "postgres", "{runs}");
    let listed: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["pg-1"]);
    assert_eq!(runs["runs"][0]["status"], "completed");
    // Every run the page lists has its rows in the PostgreSQL schema.
    assert_eq!(
        pg.count("SELECT COUNT(DISTINCT run) FROM {schema}.batches")
            .await,
        1
    );

    // The run view's numbers are the PostgreSQL tables', counted by SQL.
    let d = query(&node, "cpm.query.run", json!({"run_id": "pg-1"})).await;
    assert_eq!(d["store"], "postgres");
    let n = |table: &str| {
        let sql = format!("SELECT COUNT(*) FROM {{schema}}.{table} WHERE run = 'pg-1'");
        let pg = &pg;
        async move { pg.count(&sql).await }
    };
    let (staged, valid, issues) = (
        n("raw_rows").await,
        n("sales").await,
        n("quality_issues").await,
    );
    assert_eq!(staged, 90);
    assert_eq!(d["staged"]["rows"], staged);
    assert_eq!(d["quality"]["valid"], valid);
    assert_eq!(d["quality"]["issues"], issues);
    assert!(issues > 0, "the generator makes bad rows");
    assert_eq!(valid + issues, staged);
    let failed_checks: i64 = d["quality"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["failed"].as_i64().unwrap())
        .sum();
    assert_eq!(failed_checks, issues);
    let cents = pg
        .count(
            "SELECT ROUND(total_revenue * 100)::BIGINT FROM {schema}.features WHERE run = 'pg-1'",
        )
        .await;
    let page_cents = (d["features"]["total_revenue"].as_f64().unwrap() * 100.0).round() as i64;
    assert_eq!(page_cents, cents);
    assert_eq!(
        d["recommendations"].as_array().unwrap().len() as i64,
        n("recommendations").await
    );
    assert_eq!(n("reports").await, 1);
    node.stop().await;
    pg.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_is_cancelled_and_takes_no_further_step() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    // A run whose staging step holds until the run is cancelled, so it is certainly still
    // under way when the cancel arrives.
    let correlation = start_run(
        &node,
        json!({"run_id": "cancel-1", "dataset": "", "rows": 200, "hold": "staging"}),
    )
    .await;
    let mut steps = Vec::new();
    await_step(&mut ws, &correlation, &mut steps, "staging", "running").await;
    let res = client()
        .post(node.url("/v1/publish/cpm.pipeline.cancel"))
        .bearer_auth(FRONTEND_TOKEN)
        .header("x-source", "frontend")
        .json(&json!({"run_id": "cancel-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // The CPM's context of the run ends cancelled (its status update on the live socket).
    loop {
        let f = next_frame(&mut ws).await;
        let p = &f["message"]["payload"];
        if p["correlation_id"] == correlation.as_str()
            && p["role"] == "cpm"
            && p["to"] == "cancelled"
        {
            break;
        }
        if p["correlation_id"] == correlation.as_str() && p["role"] == "manager" {
            steps.push((
                p["domain"].as_str().unwrap().to_owned(),
                p["to"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let d = query(&node, "cpm.query.run", json!({"run_id": "cancel-1"})).await;
    assert_eq!(d["run"]["status"], "cancelled", "{}", d["run"]);
    assert_eq!(d["run"]["error"]["error_type"], "Cancelled");
    assert!(d["run"]["finished_ms"].as_u64().is_some());
    // The step under way finishes; the next domain's manager never starts the run. The step
    // under way is the one whose manager is running and not yet ended.
    let running: Vec<String> = steps
        .iter()
        .filter(|(d, s)| {
            s == "running"
                && !steps.iter().any(|(e, t)| {
                    e == d && ["completed", "failed", "cancelled"].contains(&t.as_str())
                })
        })
        .map(|(d, _)| d.clone())
        .collect();
    assert_eq!(running.len(), 1, "{steps:?}");
    let last = &running[0];
    await_step(&mut ws, &correlation, &mut steps, last, "completed").await;
    let next = DOMAINS
        .iter()
        .position(|(d, _)| d == last)
        .and_then(|i| DOMAINS.get(i + 1))
        .map(|(d, _)| *d);
    // Another run through every domain: by its end, a next step of the cancelled run would
    // have started (the managers take their triggers in order).
    let other = start_run(
        &node,
        json!({"run_id": "after-1", "dataset": "", "rows": 30}),
    )
    .await;
    loop {
        let f = next_frame(&mut ws).await;
        let m = &f["message"];
        let p = &m["payload"];
        if p["correlation_id"] == correlation.as_str() && p["role"] == "manager" {
            assert_ne!(p["domain"].as_str(), next, "a step after the cancel: {p}");
        }
        if m["topic"] == "cpm.pipeline.complete" && p["correlation_id"] == other.as_str() {
            assert_eq!(p["status"], "completed", "{p}");
            break;
        }
    }
    let d = query(&node, "cpm.query.run", json!({"run_id": "cancel-1"})).await;
    assert_eq!(
        d["run"]["status"], "cancelled",
        "a late completion does not overwrite it"
    );
    assert!(d["report"]["markdown"].is_null());
    assert!((d["run"]["domains"].as_array().unwrap().len()) < DOMAINS.len());
    // Cancelling a run that is not running changes nothing.
    let res = client()
        .post(node.url("/v1/publish/cpm.pipeline.cancel"))
        .bearer_auth(FRONTEND_TOKEN)
        .header("x-source", "frontend")
        .json(&json!({"run_id": "after-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let runs = query(&node, "cpm.query.runs", json!({})).await;
    let after = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == "after-1")
        .unwrap();
    assert_eq!(after["status"], "completed");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_domain_run_carries_its_latency_flags_in_the_run_query() {
    let warmup = 3;
    let node = AppNode::start_with(
        config(),
        DemoConfig {
            rows: 60,
            performance: PerformanceSettings {
                warmup,
                ..PerformanceSettings::default()
            },
            ..DemoConfig::default()
        },
    )
    .await;
    let mut ws = live(&node).await;
    // Warm-up: one latency sample per step and run, none flagged.
    for i in 0..warmup {
        let c = start_run(
            &node,
            json!({"run_id": format!("warm-{i}"), "dataset": "", "rows": 60}),
        )
        .await;
        assert_eq!(follow(&mut ws, &c).await.0["status"], "completed");
    }
    let c = start_run(
        &node,
        json!({"run_id": "slow-1", "dataset": "", "rows": 60, "slow": "analytics"}),
    )
    .await;
    assert_eq!(follow(&mut ws, &c).await.0["status"], "completed");
    // The tracker's anomalies travel on their own topic: wait until every handler ran.
    tokio::time::timeout(
        Duration::from_secs(20),
        node.app.running().bus().run_until_idle(),
    )
    .await
    .unwrap();

    let d = query(&node, "cpm.query.run", json!({"run_id": "slow-1"})).await;
    assert_eq!(d["performance_tracker"]["warmup"], warmup);
    assert_eq!(d["run"]["slow"], "analytics");
    let flags = d["run"]["performance_anomalies"].as_array().unwrap();
    for role in ["processor", "handler", "service", "manager"] {
        let f = flags
            .iter()
            .find(|f| f["component"] == format!("analytics-{role}"))
            .unwrap_or_else(|| panic!("analytics-{role} not flagged: {flags:?}"));
        assert_eq!(f["domain"], "analytics");
        assert_eq!(f["action"], "features");
        assert_eq!(f["metric"], "latency_ms");
        let (value, mean) = (f["value"].as_f64().unwrap(), f["mean"].as_f64().unwrap());
        let deviation = f["deviation"].as_f64().unwrap();
        assert!(value >= 400.0, "{f}");
        assert!(value - mean > (6.0 * deviation).max(50.0), "{f}");
    }
    // The flags are the run's own: the warm-up runs have none, in the history either.
    let runs = query(&node, "cpm.query.runs", json!({})).await;
    for r in runs["runs"].as_array().unwrap() {
        let n = r["performance_anomalies"].as_array().unwrap().len();
        if r["run_id"] == "slow-1" {
            assert_eq!(n, flags.len());
        } else {
            assert_eq!(n, 0, "{r}");
        }
    }
    node.stop().await;
}
