//! The operator commands and `serve`, end to end: the `switchyard` binary against a node the
//! test starts (in process on an ephemeral port, or `switchyard serve --listen 127.0.0.1:0`
//! spawned, reading the bound address from its first line).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking
#![allow(clippy::result_large_err)] // tungstenite's handshake callback type, not ours

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::{BoxError, Bus, Kind, Message, Outcome, Subscription, handler_fn};
use switchyard_node::{Node, NodeConfig};

/// Generous bound for anything to happen; polling stops as soon as it does.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CreateUser {
    name: String,
}
impl Message for CreateUser {
    const TOPIC: &'static str = "users.create";
    const KIND: Kind = Kind::Command;
}
impl switchyard::Command for CreateUser {
    type Output = Value;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Explode {}
impl Message for Explode {
    const TOPIC: &'static str = "users.explode";
    const KIND: Kind = Kind::Command;
}
impl switchyard::Command for Explode {
    type Output = Value;
}

/// A node on the memory transport, served on an ephemeral port by its own runtime, with a
/// command handler (`users.create`), a failing one (`users.explode`), and a subscription
/// that rejects everything on `audit.#` (so every such event is dead-lettered).
struct TestNode {
    rt: tokio::runtime::Runtime,
    url: String,
    bus: Bus,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), switchyard_node::NodeError>>>,
    _subs: Vec<Subscription>,
}

impl TestNode {
    fn start() -> TestNode {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (url, bus, stop, served, subs) = rt.block_on(async {
            let config =
                NodeConfig::from_toml("listen = \"127.0.0.1:0\"\n[transport]\nkind = \"memory\"\n")
                    .unwrap();
            let node = Node::start(config).await.unwrap();
            let bus = node.bus().clone();
            let create = bus
                .handle(|cmd: CreateUser, _ctx| async move {
                    Ok::<_, BoxError>(json!({"id": 7, "name": cmd.name}))
                })
                .start()
                .await
                .unwrap();
            let explode = bus
                .handle(|_: Explode, _ctx| async move {
                    Err::<Value, BoxError>("the user store is on fire".into())
                })
                .start()
                .await
                .unwrap();
            let audit = bus
                .subscribe(
                    "audit-sink",
                    "audit.#",
                    handler_fn(|_env| async move {
                        Ok::<_, BoxError>(Outcome::reject("audit store refuses everything"))
                    }),
                )
                .start()
                .await
                .unwrap();
            let listener = node.bind().await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let served = tokio::spawn(node.serve(listener, async {
                let _ = rx.await;
            }));
            (url, bus, tx, served, vec![create, explode, audit])
        });
        TestNode {
            rt,
            url,
            bus,
            stop: Some(stop),
            served: Some(served),
            _subs: subs,
        }
    }

    /// `switchyard <args> --url <this node>`.
    fn run(&self, args: &[&str]) -> Output {
        Command::cargo_bin("switchyard")
            .unwrap()
            .args(args)
            .args(["--url", &self.url])
            .env_remove("SWITCHYARD_TOKEN")
            .env_remove("SWITCHYARD_CONFIG")
            .timeout(WAIT)
            .output()
            .unwrap()
    }

    fn dead_letters(&self) -> usize {
        let url = format!("{}/v1/status", self.url);
        self.rt.block_on(async {
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v["dead_letters"].as_u64().unwrap() as usize
        })
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = self.rt.block_on(served);
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn json_line(out: &Output) -> Value {
    serde_json::from_str(ok(out).trim()).unwrap()
}

#[test]
fn pub_prints_the_id_and_the_message_reaches_the_bus() {
    let node = TestNode::start();
    let seen = node
        .rt
        .block_on(switchyard::testkit::Recorder::start(&node.bus, "orders.#"))
        .unwrap();
    let out = node.run(&[
        "pub",
        "orders.placed",
        r#"{"order": 42}"#,
        "--correlation-id",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "-H",
        "tenant=acme",
    ]);
    let v = json_line(&out);
    let got = node.rt.block_on(seen.wait_for(1, WAIT)).unwrap();
    assert_eq!(v["id"].as_str().unwrap(), got[0].id.to_string());
    assert_eq!(v["correlation_id"], "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    assert_eq!(got[0].topic.as_str(), "orders.placed");
    assert_eq!(&got[0].payload[..], br#"{"order": 42}"#);
    assert_eq!(got[0].headers().get("tenant"), Some("acme"));
}

#[test]
fn send_and_request_print_the_reply_of_the_handler() {
    let node = TestNode::start();
    let v = json_line(&node.run(&["send", "users.create", r#"{"name": "ada"}"#]));
    assert_eq!(v["payload"], json!({"id": 7, "name": "ada"}));
    let v = json_line(&node.run(&[
        "request",
        "users.create",
        r#"{"name": "bob"}"#,
        "--timeout-ms",
        "5000",
    ]));
    assert_eq!(v["payload"], json!({"id": 7, "name": "bob"}));
    assert!(v["correlation_id"].as_str().is_some_and(|c| c.len() == 26));
}

#[test]
fn a_refused_call_exits_1_with_the_nodes_reason() {
    let node = TestNode::start();
    let out = node.run(&["send", "nobody.home", "{}"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    assert!(stderr(&out).contains("no_handler"), "{}", stderr(&out));

    let out = node.run(&["send", "users.explode", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("handler_failed"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the user store is on fire"),
        "{}",
        stderr(&out)
    );

    let out = node.run(&["pub", "orders.placed", "{not json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("malformed_json"), "{}", stderr(&out));
}

#[test]
fn dlq_list_show_replay_and_purge() {
    let node = TestNode::start();
    for i in 0..3 {
        ok(&node.run(&["pub", "audit.login", &format!(r#"{{"n": {i}}}"#)]));
    }
    let deadline = Instant::now() + WAIT;
    while node.dead_letters() < 3 {
        assert!(
            Instant::now() < deadline,
            "the 3 events were not dead-lettered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let table = ok(&node.run(&["dlq", "list"]));
    assert!(table.contains("3 of 3 dead letter(s)"), "{table}");
    assert!(
        table.contains("audit.login") && table.contains("audit-sink"),
        "{table}"
    );
    let listed = json_line(&node.run(&["dlq", "list", "--json"]));
    let ids: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);

    let shown: Value = serde_json::from_str(&ok(&node.run(&["dlq", "show", &ids[0]]))).unwrap();
    assert_eq!(shown["message"]["payload"], json!({"n": 0}));
    assert!(
        shown["error"]
            .as_str()
            .unwrap()
            .contains("audit store refuses everything")
    );

    // Replay one: the subscription refuses it again, so it comes back as a new entry.
    let out = ok(&node.run(&["dlq", "replay", &ids[0]]));
    assert!(out.contains("replayed 1 dead letter(s)"), "{out}");
    // Replay all (page by page): three replayed, none lost.
    let out = ok(&node.run(&["dlq", "replay", "--all", "--batch", "2"]));
    assert!(out.contains("replayed 3 dead letter(s)"), "{out}");
    let deadline = Instant::now() + WAIT;
    while node.dead_letters() < 3 {
        assert!(
            Instant::now() < deadline,
            "replayed events were not dead-lettered again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let out = ok(&node.run(&["dlq", "purge", &ids[1]]));
    assert!(out.contains("purged 1 dead letter(s)"), "{out}");
    let out = ok(&node.run(&["dlq", "purge", "--all", "--topic", "audit.#"]));
    assert!(out.contains("purged 2 dead letter(s)"), "{out}");
    assert_eq!(node.dead_letters(), 0);
    assert!(ok(&node.run(&["dlq", "list"])).contains("no dead letters"));

    // Unknown id: the node's 404, exit 1.
    let out = node.run(&["dlq", "show", &ids[0]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not_found"), "{}", stderr(&out));
}

#[test]
fn status_topology_and_trace() {
    let node = TestNode::start();
    let text = ok(&node.run(&["status"]));
    assert!(text.contains("transport memory"), "{text}");
    assert!(text.contains("ready"), "{text}");
    let v = json_line(&node.run(&["status", "--json"]));
    assert_eq!(v["command_handlers"], 2);
    assert_eq!(v["transport"], "memory");

    let mermaid = ok(&node.run(&["topology"]));
    assert!(mermaid.contains("users.create"), "{mermaid}");
    let dot = ok(&node.run(&["topology", "--format", "dot"]));
    assert!(dot.contains("digraph"), "{dot}");

    let published = json_line(&node.run(&["pub", "orders.placed", "{}"]));
    let correlation = published["correlation_id"].as_str().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = node.run(&["trace", correlation, "--json"]);
        if out.status.success() {
            let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
            assert_eq!(v["messages"][0]["topic"], "orders.placed");
            break;
        }
        assert!(Instant::now() < deadline, "no trace: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = ok(&node.run(&["trace", correlation]));
    assert!(
        text.contains(&format!("correlation {correlation}")),
        "{text}"
    );
    assert!(text.contains("orders.placed"), "{text}");
}

#[test]
fn bench_publishes_every_message() {
    let node = TestNode::start();
    let seen = node
        .rt
        .block_on(switchyard::testkit::Recorder::start(&node.bus, "bench.#"))
        .unwrap();
    let out = ok(&node.run(&["bench", "--count", "200", "--concurrency", "8"]));
    assert!(out.contains("published 200 of 200 to bench.load"), "{out}");
    node.rt.block_on(seen.wait_for(200, WAIT)).unwrap();
}

#[test]
fn an_unreachable_node_is_a_failure_with_a_clear_message() {
    // Bind and drop: nothing listens on that port now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["status"],
        vec!["pub", "a.b", "{}"],
        vec!["dlq", "list"],
        vec!["sub", "a.#"],
    ] {
        let out = Command::cargo_bin("switchyard")
            .unwrap()
            .args(&args)
            .args(["--url", &url])
            .timeout(WAIT)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("cannot reach the switchyard node at {url}/"))
                && err.contains("switchyard serve"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["pub"],                                                  // topic missing
        vec!["dlq", "replay"],                                        // neither ids nor --all
        vec!["dlq", "replay", "--all", "01ARZ3NDEKTSV4RRFFQ69G5FAV"], // both
        vec!["pub", "a.b", "{}", "-H", "no-equals"],                  // bad header
        vec!["topology", "--format", "png"],
        vec!["status", "--url", "ftp://x"], // not http(s)
    ] {
        let out = Command::cargo_bin("switchyard")
            .unwrap()
            .args(&args)
            .timeout(WAIT)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::cargo_bin("switchyard")
            .unwrap()
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = ok(&out);
        assert!(text.contains("dlq") && text.contains("serve"), "{shell}");
    }
}

/// `switchyard serve` spawned in `dir`; the first line of stdout names the bound address.
struct Served {
    child: Child,
    url: String,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Served {
    fn spawn(dir: &std::path::Path, extra: &[&str]) -> Served {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("switchyard"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(dir)
            .env_remove("SWITCHYARD_TRANSPORT__KIND")
            // The demo's default database (SQLite in memory), whatever the environment says.
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(WAIT).expect("serve printed nothing");
        let url = first
            .strip_prefix("switchyard node listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Served { child, url, lines }
    }

    /// Waits until a line containing `a` and one containing `b` came, in either order.
    fn lines_with(&self, a: &str, b: &str) -> (String, String) {
        let deadline = Instant::now() + WAIT;
        let (mut got_a, mut got_b) = (None, None);
        while got_a.is_none() || got_b.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if got_a.is_none() && l.contains(a) => got_a = Some(l),
                Ok(l) if got_b.is_none() && l.contains(b) => got_b = Some(l),
                Ok(_) => continue,
                Err(e) => {
                    panic!("no line with {a:?} ({got_a:?}) and one with {b:?} ({got_b:?}): {e}")
                }
            }
        }
        (got_a.unwrap_or_default(), got_b.unwrap_or_default())
    }

    fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.url);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let res = reqwest::get(url).await.unwrap();
            assert!(res.status().is_success(), "{path}: {}", res.status());
            res.json().await.unwrap()
        })
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_without_config_runs_the_log_node_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::spawn(dir.path(), &[]);
    assert_eq!(served.get("/health"), json!({"status": "ok"}));
    let status = served.get("/v1/status");
    assert_eq!(status["transport"], "log");
    assert!(dir.path().join("switchyard-data").is_dir());
    // The CLI against the spawned node.
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["pub", "orders.placed", "{}", "--url", &served.url])
        .timeout(WAIT)
        .output()
        .unwrap();
    ok(&out);
    let status = served.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_demo_shows_live_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::spawn(dir.path(), &["--demo", "--demo-interval-ms", "200"]);
    // The first line named the URL (Served::spawn read it); the node answers on it.
    assert!(
        served.url.starts_with("http://127.0.0.1:"),
        "{}",
        served.url
    );
    assert_eq!(served.get("/health"), json!({"status": "ok"}));
    // No config: the demo runs on the embedded log, under the working directory.
    assert_eq!(served.get("/v1/status")["transport"], "log");
    assert!(dir.path().join("switchyard-data/log").is_dir());
    // A completed run and a failed one, in whichever order they finish.
    let (completed, _failed) = served.lines_with("completed in", "FAILED");
    let correlation = completed.rsplit(' ').next().unwrap().to_owned();
    // Demo traffic shows in the node's status: handled messages and dead letters.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = served.get("/v1/status");
        let subs = served.get("/v1/subscriptions");
        let handled: u64 = subs["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["handled"].as_u64().unwrap_or(0))
            .sum();
        if status["dead_letters"].as_u64().unwrap() > 0 && handled > 0 {
            assert!(status["subscriptions"].as_u64().unwrap() > 30, "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "no demo traffic: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The operator commands see the demo: its topology, a run's trace, its dead letters.
    let cli = |args: &[&str]| {
        Command::cargo_bin("switchyard")
            .unwrap()
            .args(args)
            .args(["--url", &served.url])
            .timeout(WAIT)
            .output()
            .unwrap()
    };
    let topo = ok(&cli(&["topology"]));
    assert!(topo.contains("staging-processor"), "{topo}");
    let trace = ok(&cli(&["trace", &correlation]));
    assert!(trace.contains("cpm.pipeline.request"), "{trace}");
    let dlq = ok(&cli(&["dlq", "list"]));
    // The flows the error handler gave up on: the failed requests, under the processor's
    // subscription that failed them.
    assert!(dlq.contains("-processor:"), "{dlq}");
    assert_eq!(served.terminate().code(), Some(0));
}

/// What a scripted WebSocket server (speaking docs/gateway.md) saw from the client.
struct Seen {
    authorization: Option<String>,
    subscribe: Value,
}

/// A one-connection WebSocket server on an ephemeral port at `/v1/ws`: answers the
/// subscribe op with `answer` (after filling in the client's `id`), then sends `then`
/// frames, then closes (when `close`) or waits for the client to go.
fn scripted_ws(
    answer: Value,
    then: Vec<Value>,
    close: bool,
) -> (String, std::thread::JoinHandle<Seen>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Frame;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let mut authorization = None;
            let mut ws =
                tokio_tungstenite::accept_hdr_async(stream, |req: &Request, res: Response| {
                    assert_eq!(req.uri().path(), "/v1/ws");
                    authorization = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned());
                    Ok(res)
                })
                .await
                .unwrap();
            let first = ws.next().await.unwrap().unwrap();
            let subscribe: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
            let mut answer = answer;
            answer["id"] = subscribe["id"].clone();
            ws.send(Frame::text(answer.to_string())).await.unwrap();
            for f in then {
                ws.send(Frame::text(f.to_string())).await.unwrap();
            }
            if close {
                let _ = ws.close(None).await;
            }
            // Until the client goes.
            while let Some(Ok(_)) = ws.next().await {}
            Seen {
                authorization,
                subscribe,
            }
        })
    });
    (url, handle)
}

fn message(topic: &str, payload: Value) -> Value {
    json!({"op": "message", "subscription": "s1", "delivery": "d1", "message": {
        "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "topic": topic, "kind": "event",
        "correlation_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "causation_id": null, "source": null,
        "target": null, "priority": 128, "timestamp": "2026-01-02T03:04:05.678Z", "headers": {},
        "content_type": "application/json", "type_name": null, "type_version": 1, "attempt": 0,
        "payload": payload}})
}

#[test]
fn sub_speaks_the_websocket_protocol_and_prints_json_lines() {
    let (url, server) = scripted_ws(
        json!({"op": "subscribed", "subscription": "s1"}),
        vec![
            message("orders.placed", json!({"n": 1})),
            json!({"op": "dropped", "count": 3}),
            message("orders.paid", json!({"n": 2})),
            message("orders.never", json!({"n": 3})),
        ],
        false,
    );
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["sub", "orders.#", "--group", "billing", "--count", "2"])
        .args(["--url", &url, "--token", "t0k"])
        .timeout(WAIT)
        .output()
        .unwrap();
    let text = ok(&out);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["topic"], "orders.placed");
    assert_eq!(lines[1]["payload"], json!({"n": 2}));
    let err = stderr(&out);
    assert!(err.contains("subscribed to orders.#"), "{err}");
    assert!(err.contains("dropped 3 message(s)"), "{err}");
    let seen = server.join().unwrap();
    assert_eq!(seen.authorization.as_deref(), Some("Bearer t0k"));
    assert_eq!(seen.subscribe["op"], "subscribe");
    assert_eq!(seen.subscribe["pattern"], "orders.#");
    assert_eq!(seen.subscribe["group"], "billing");
    assert_eq!(seen.subscribe["ack"], "auto");
}

#[test]
fn tail_prints_readable_lines_and_a_closed_socket_is_a_failure() {
    let (url, server) = scripted_ws(
        json!({"op": "subscribed", "subscription": "s1"}),
        vec![message("a.b", json!({"x": 1}))],
        true,
    );
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["tail", "--url", &url])
        .timeout(WAIT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with(
            "2026-01-02T03:04:05.678Z  event   a.b  corr=01ARZ3NDEKTSV4RRFFQ69G5FAV  {\"x\":1}"
        ),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("the node closed the WebSocket while following"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.join().unwrap().subscribe["pattern"], "#");
}

#[test]
fn a_refused_subscription_exits_1_with_the_reason() {
    let (url, server) = scripted_ws(
        json!({"op": "error", "error": {"kind": "forbidden", "message": "principal ingest may not subscribe to secret.#"}}),
        vec![],
        false,
    );
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["sub", "secret.#", "--url", &url])
        .timeout(WAIT)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("forbidden: principal ingest may not subscribe to secret.#"),
        "{}",
        stderr(&out)
    );
    server.join().unwrap();
}

#[test]
fn pub_then_sub_sees_it_through_the_node() {
    let node = TestNode::start();
    let mut sub = std::process::Command::new(assert_cmd::cargo::cargo_bin("switchyard"))
        .args(["sub", "orders.#", "--count", "1", "--url", &node.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish only once the subscription is in place (the CLI says so on stderr).
    let mut err = BufReader::new(sub.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("subscribed to orders.#"), "{line}");
    let published = json_line(&node.run(&["pub", "orders.placed", r#"{"order": 1}"#]));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = sub.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = sub.kill();
            panic!("sub did not print the message");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut sub.stdout.take().unwrap(), &mut text).unwrap();
    let got: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(got["id"], published["id"]);
    assert_eq!(got["payload"], json!({"order": 1}));
}
