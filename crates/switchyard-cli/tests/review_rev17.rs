//! Review rev17: `switchyard serve` on its embedded log, killed (`kill -9`) and restarted
//! under traffic, as an operator and its HTTP/WS clients see it (docs/cli.md, docs/gateway.md,
//! docs/log.md). Every node is a child process on a free port and a temporary data dir,
//! killed by a guard on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Bound of any single wait; each test stays well under 20 s in practice.
const WAIT: Duration = Duration::from_secs(15);

/// A `switchyard serve` child; SIGKILLed and reaped on drop (also when a test panics).
struct Node {
    child: Child,
    url: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// Spawns a thread copying `r` into the returned buffer; the first line also goes to `first`.
fn pump(
    r: impl Read + Send + 'static,
    first: Option<std::sync::mpsc::Sender<String>>,
) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut first = first;
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if let Some(tx) = first.take() {
                let _ = tx.send(line.clone());
            }
            b.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    buf
}

/// The node config: log transport on `<dir>/data`, free port, warnings on stderr.
fn config(dir: &Path) -> PathBuf {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"log\"\ndata_dir = {:?}\n\
             [logging]\nfilter = \"warn\"\n[bus]\nshutdown_timeout_ms = 2000\n",
            dir.join("data").to_str().unwrap()
        ),
    )
    .unwrap();
    cfg
}

impl Node {
    /// Starts serve; `Err((exit code, stderr))` when it exits without listening.
    fn try_start(dir: &Path) -> Result<Node, (Option<i32>, String)> {
        let cfg = config(dir);
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .current_dir(dir)
            .env_remove("SWITCHYARD_TRANSPORT__KIND")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = pump(child.stdout.take().unwrap(), Some(tx));
        let stderr = pump(child.stderr.take().unwrap(), None);
        let mut node = Node {
            child,
            url: String::new(),
            stdout,
            stderr,
        };
        match rx.recv_timeout(WAIT) {
            Ok(first) => {
                node.url = first
                    .trim()
                    .strip_prefix("switchyard node listening on ")
                    .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
                    .to_owned();
                Ok(node)
            }
            Err(_) => {
                let status = node.wait_exit();
                let err = node.stderr();
                Err((status.code(), err))
            }
        }
    }

    fn start(dir: &Path) -> Node {
        Node::try_start(dir).unwrap_or_else(|(code, err)| panic!("serve exited {code:?}: {err}"))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http://", "ws://", 1))
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits (bounded, polling the process state) for the child to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit in {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` and reap.
    fn kill9(mut self) {
        self.signal("-KILL");
        let status = self.wait_exit();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(node: &Node) -> Ws {
    tokio_tungstenite::connect_async(node.ws_url())
        .await
        .unwrap()
        .0
}

async fn ws_send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON text frame (bounded).
async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Joins group `group` on `orders.#` with manual acks.
async fn subscribe_manual(ws: &mut Ws, pattern: &str, group: &str, max_in_flight: u32) {
    ws_send(
        ws,
        json!({"op": "subscribe", "id": 1, "pattern": pattern, "group": group,
               "ack": "manual", "max_in_flight": max_in_flight}),
    )
    .await;
    let v = ws_next(ws).await;
    assert_eq!(v["op"], "subscribed", "{v}");
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn publish(url: &str, topic: &str, id: &str) {
    let r = http()
        .post(format!("{url}/v1/publish/{topic}"))
        .header("x-message-id", id)
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
}

async fn get_json(url: &str) -> Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// Polls `f` until it returns `Some` (bounded).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Every publish answered 202 before a `kill -9` reaches a manual-ack WS group after the
/// restart; the ten messages the group acked a second or more (many `commit_interval`s)
/// before the kill are not delivered again; delivered-but-unacked ones come back; and a
/// message is not delivered twice within the restarted session.
#[test]
fn kill9_under_publishes_loses_nothing_answered_202_and_redelivers_no_old_ack() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let node = Node::start(dir.path());
    let url = node.url.clone();
    let (acked, mut accepted) = rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 16).await;
        let mut accepted = BTreeSet::new();
        for i in 0..20 {
            let id = format!("pre-{i:02}");
            publish(&url, "orders.placed", &id).await;
            accepted.insert(id);
        }
        // Ack the first ten in publish order; leave the rest delivered but unacked.
        let mut acked = BTreeSet::new();
        let mut held = Vec::new();
        while acked.len() < 10 {
            let v = ws_next(&mut ws).await;
            assert_eq!(v["op"], "message", "{v}");
            let id = v["message"]["id"].as_str().unwrap().to_owned();
            if id.as_str() < "pre-10" {
                ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
                acked.insert(id);
            } else {
                held.push(v);
            }
        }
        let acked_at = Instant::now();
        // Traffic: four HTTP publishers until 150 more are accepted and 1 s has passed.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for p in 0..4 {
            let tx = tx.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let http = http();
                for i in 0..100_000 {
                    let id = format!("m-{p}-{i:05}");
                    match http
                        .post(format!("{url}/v1/publish/orders.placed"))
                        .header("x-message-id", &id)
                        .json(&json!({"p": p}))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 202 => {
                            if tx.send(id).is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
        drop(tx);
        let mut n = 0;
        while n < 150 || acked_at.elapsed() < Duration::from_secs(1) {
            let id = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            accepted.insert(id);
            n += 1;
        }
        node.signal("-KILL");
        // Answers already written before the kill count as accepted too.
        while let Ok(Some(id)) = tokio::time::timeout(WAIT, rx.recv()).await {
            accepted.insert(id);
        }
        drop(ws);
        (acked, accepted)
    });
    node.kill9();
    for id in &acked {
        accepted.remove(id);
    }

    let node = Node::start(dir.path());
    let seen: BTreeMap<String, usize> = rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 64).await;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        while !accepted.iter().all(|id| seen.contains_key(id)) {
            let v = ws_next(&mut ws).await;
            assert_eq!(v["op"], "message", "{v}");
            ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
            *seen
                .entry(v["message"]["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        seen
    });
    let redelivered_acked: Vec<_> = acked.iter().filter(|id| seen.contains_key(*id)).collect();
    assert!(
        redelivered_acked.is_empty(),
        "acked >= 1 s before the kill and delivered again: {redelivered_acked:?}"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered twice after the restart: {twice:?}"
    );
}

/// A command held by a remote WS handler when the node is `kill -9`ed: the HTTP sender
/// sees its connection end at once (no 30 s hang); after the restart the registration is
/// gone (`404 no_handler` at once) and a new handler serves new sends.
#[test]
fn kill9_with_a_command_held_by_a_ws_handler() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let node = Node::start(dir.path());
    let url = node.url.clone();
    let (answer, took) = rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        ws_send(
            &mut ws,
            json!({"op": "handle", "id": 1, "topic": "jobs.hold"}),
        )
        .await;
        assert_eq!(ws_next(&mut ws).await["op"], "handling");
        let u = url.clone();
        let call = tokio::spawn(async move {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap()
                .post(format!("{u}/v1/send/jobs.hold"))
                .json(&json!({"n": 1}))
                .send()
                .await
        });
        let cmd = ws_next(&mut ws).await;
        assert_eq!(cmd["op"], "command", "{cmd}");
        let started = Instant::now();
        node.signal("-KILL");
        let res = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
        let answer = match res {
            Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => format!("transport: {e}"),
        };
        (answer, started.elapsed())
    });
    node.kill9();
    assert!(
        answer.starts_with("transport:"),
        "the held send was answered {answer}"
    );
    assert!(took < Duration::from_secs(5), "the sender waited {took:?}");

    let node = Node::start(dir.path());
    rt.block_on(async {
        let r = http()
            .post(format!("{}/v1/send/jobs.hold", node.url))
            .json(&json!({"n": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{}", r.text().await.unwrap_or_default());
        let mut ws = ws_connect(&node).await;
        ws_send(
            &mut ws,
            json!({"op": "handle", "id": 1, "topic": "jobs.hold"}),
        )
        .await;
        assert_eq!(ws_next(&mut ws).await["op"], "handling");
        let u = node.url.clone();
        let call = tokio::spawn(async move {
            http()
                .post(format!("{u}/v1/send/jobs.hold"))
                .json(&json!({"n": 3}))
                .send()
                .await
                .unwrap()
        });
        let cmd = ws_next(&mut ws).await;
        assert_eq!(cmd["op"], "command", "{cmd}");
        // Only the new command: the one held at the kill is not handed out again.
        assert_eq!(cmd["message"]["payload"], json!({"n": 3}), "{cmd}");
        ws_send(
            &mut ws,
            json!({"op": "result", "call": cmd["call"], "ok": true, "payload": {"done": 3}}),
        )
        .await;
        let r = call.await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["payload"], json!({"done": 3}));
    });
}

/// A dead letter (a manual group's member nacked the delivery past the retry policy) survives `kill -9`
/// (docs: "a file that survives restarts"), is browsable after the restart, and its replay
/// reaches the group, after which the queue is empty.
///
/// Duplicate, within the docs: the dead-lettering settles the log delivery, but the group's
/// committed offset is written only every `commit_interval` (100 ms, docs/log.md "After a
/// crash a group resumes at or before it"). A `kill -9` right after the dead-lettering (as
/// here) makes the log hand the message to the group again after the restart (attempt 1)
/// *and* keeps it in the DLQ, so the replay delivers it a second time (seen 3 runs in 3; with
/// 800 ms between the dead letter and the kill it came once). Hence 1..=2 below.
#[test]
fn dead_letters_survive_kill9_and_replay_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let node = Node::start(dir.path());
    let url = node.url.clone();
    let entry = rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "pay.#", "payers", 1).await;
        publish(&url, "pay.due", "p-1").await;
        // The member nacks it through the node's retry policy (3 attempts): dead-lettered.
        // (A member that leaves holding it now hands it back to the log for the group's next
        // member instead: docs/gateway.md "When a connection ends".)
        for attempt in 1..=3 {
            let v = ws_next(&mut ws).await;
            assert_eq!(v["message"]["id"], "p-1", "{v}");
            assert_eq!(v["message"]["attempt"], attempt, "{v}");
            ws_send(
                &mut ws,
                json!({"op": "nack", "delivery": v["delivery"], "delay_ms": 1}),
            )
            .await;
        }
        let dlq = format!("{url}/v1/dlq");
        eventually("the delivery dead-lettered", || {
            let dlq = dlq.clone();
            async move {
                let v = get_json(&dlq).await;
                (v["total"] == 1).then(|| v["items"][0].clone())
            }
        })
        .await
    });
    assert_eq!(entry["message"]["id"], "p-1", "{entry}");
    node.kill9();

    let node = Node::start(dir.path());
    let url = node.url.clone();
    rt.block_on(async {
        let v = get_json(&format!("{url}/v1/dlq")).await;
        assert_eq!(v["total"], 1, "dead letters after kill -9 and restart: {v}");
        assert_eq!(v["items"][0]["id"], entry["id"], "{v}");
        let st = get_json(&format!("{url}/v1/status")).await;
        assert_eq!(st["dead_letters"], 1, "{st}");

        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "pay.#", "payers", 1).await;
        let r = http()
            .post(format!("{url}/v1/dlq/replay"))
            .json(&json!({"ids": [entry["id"]]}))
            .send()
            .await
            .unwrap();
        let rs = r.status();
        assert!(
            rs.is_success(),
            "{rs} {}",
            r.text().await.unwrap_or_default()
        );
        publish(&url, "pay.due", "marker").await;
        let mut p1 = 0;
        loop {
            let v = ws_next(&mut ws).await;
            assert_eq!(v["op"], "message", "{v}");
            ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
            match v["message"]["id"].as_str().unwrap() {
                "p-1" => p1 += 1,
                "marker" => break,
                other => panic!("unexpected {other}"),
            }
        }
        assert!(
            (1..=2).contains(&p1),
            "the replayed message was delivered {p1} times"
        );
        let v = get_json(&format!("{url}/v1/dlq")).await;
        assert_eq!(v["total"], 0, "{v}");
    });
}

/// Two nodes on one data dir: the second exits 1 with a typed message naming the lock, the
/// first keeps serving.
#[test]
fn a_second_node_on_a_locked_data_dir_exits_1_naming_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let first = Node::start(dir.path());
    let (code, err) = match Node::try_start(dir.path()) {
        Ok(second) => panic!(
            "a second node started on the same data dir at {}",
            second.url
        ),
        Err(e) => e,
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("locked"), "{err}");
    assert!(err.contains("LOCK") || err.contains("data"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let v = rt.block_on(get_json(&format!("{}/health", first.url)));
    assert_eq!(v["status"], "ok");
}

/// Newest segment cut by a few bytes while the node is stopped: the node starts, a warning
/// says what was dropped, and a group gets every record before the torn one.
#[test]
fn a_torn_newest_segment_is_truncated_with_a_warning_and_the_rest_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut node = Node::start(dir.path());
    let url = node.url.clone();
    rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 16).await;
        drop(ws);
        for i in 0..5 {
            publish(&url, "orders.placed", &format!("t-{i}")).await;
        }
    });
    node.signal("-TERM");
    assert_eq!(node.wait_exit().code(), Some(0), "{}", node.stderr());
    drop(node);
    let segs = files(&dir.path().join("data"), |p| {
        p.extension().is_some_and(|x| x == "log") && std::fs::metadata(p).unwrap().len() > 0
    });
    assert_eq!(segs.len(), 1, "segments: {segs:?}");
    let seg = &segs[0];
    let len = std::fs::metadata(seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let node = Node::start(dir.path());
    let err = node.stderr();
    let url = node.url.clone();
    let got = rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 16).await;
        let mut got = BTreeSet::new();
        while got.len() < 4 {
            let v = ws_next(&mut ws).await;
            ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
            got.insert(v["message"]["id"].as_str().unwrap().to_owned());
        }
        publish(&url, "orders.placed", "after").await;
        loop {
            let v = ws_next(&mut ws).await;
            ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
            let id = v["message"]["id"].as_str().unwrap().to_owned();
            if id == "after" {
                break got;
            }
            got.insert(id);
        }
    });
    let want: BTreeSet<String> = (0..4).map(|i| format!("t-{i}")).collect();
    assert_eq!(got, want, "records after the torn cut");
    // The warning comes while the log opens, before the listening line.
    let err = if err.is_empty() { node.stderr() } else { err };
    assert!(
        err.to_lowercase().contains("truncat") && err.contains("bytes"),
        "no warning saying what was dropped: {err}"
    );
    // Written to a pipe (a log file, a journal), the log carries no terminal colour codes.
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape codes in a log written to a pipe: {err:?}"
    );
}

/// SIGINT stops like SIGTERM (exit 0, "switchyard node stopped"); after a `kill -9` the
/// node restarts on the same dir (the lock died with the process); `/v1/status` and
/// `/metrics` counters of gateway publishes start again from 0, dead letters come back.
#[test]
fn sigint_stops_gracefully_and_counters_start_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let node = Node::start(dir.path());
    let url = node.url.clone();
    rt.block_on(async {
        for i in 0..3 {
            publish(&url, "orders.placed", &format!("c-{i}")).await;
        }
        let st = get_json(&format!("{url}/v1/status")).await;
        assert_eq!(st["published"], 3, "{st}");
        assert_eq!(st["transport"], "log", "{st}");
    });
    node.kill9();
    let mut node = Node::start(dir.path());
    let url = node.url.clone();
    rt.block_on(async {
        let st = get_json(&format!("{url}/v1/status")).await;
        assert_eq!(st["published"], 0, "published after a restart: {st}");
        assert_eq!(st["ready"], true, "{st}");
        let m = http()
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !m.lines()
                .any(|l| l.starts_with("switchyard_gateway_requests_total")
                    && l.contains("/v1/publish/{topic}")),
            "publish requests counted before the restart: {m}"
        );
    });
    node.signal("-INT");
    let status = node.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", node.stderr());
    let out = node.stdout.lock().unwrap().clone();
    assert!(out.contains("switchyard node stopped"), "{out}");
}

/// SIGTERM while a manual group holds four unacked deliveries: the stop closes the socket,
/// which the docs answer by dead-lettering them ("no connected WebSocket subscriber"). After
/// the restart each of them is in exactly one place: the DLQ or the group's redelivery, never
/// lost, never both (which would be a duplicate once the DLQ is replayed).
#[test]
fn sigterm_with_unacked_manual_deliveries_neither_loses_nor_doubles_them() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut node = Node::start(dir.path());
    let url = node.url.clone();
    let held: BTreeSet<String> = rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 4).await;
        for i in 0..4 {
            publish(&url, "orders.placed", &format!("u-{i}")).await;
        }
        let mut held = BTreeSet::new();
        while held.len() < 4 {
            let v = ws_next(&mut ws).await;
            assert_eq!(v["op"], "message", "{v}");
            held.insert(v["message"]["id"].as_str().unwrap().to_owned());
        }
        node.signal("-TERM");
        // The node closes the socket (1001); read to its end.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
        held
    });
    assert_eq!(node.wait_exit().code(), Some(0), "{}", node.stderr());
    drop(node);

    let node = Node::start(dir.path());
    let url = node.url.clone();
    let (in_dlq, redelivered) = rt.block_on(async {
        let v = get_json(&format!("{url}/v1/dlq")).await;
        let in_dlq: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["message"]["id"].as_str().unwrap().to_owned())
            .collect();
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 1).await;
        publish(&url, "orders.placed", "marker").await;
        let mut redelivered = Vec::new();
        loop {
            let v = ws_next(&mut ws).await;
            assert_eq!(v["op"], "message", "{v}");
            ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
            let id = v["message"]["id"].as_str().unwrap().to_owned();
            if id == "marker" {
                break;
            }
            redelivered.push(id);
        }
        (in_dlq, redelivered)
    });
    for id in &held {
        let n = in_dlq.iter().filter(|x| *x == id).count()
            + redelivered.iter().filter(|x| *x == id).count();
        assert_eq!(
            n, 1,
            "{id}: dead letters {in_dlq:?}, redelivered after restart {redelivered:?}"
        );
    }
}

/// A delivery nacked with a long delay (its redelivery scheduled by the node's retry policy)
/// when the node is `kill -9`ed is not lost: after the restart the group gets it again (at
/// least once; the scheduled delay is the dead process's and is not kept, which the docs allow).
#[test]
fn a_delayed_redelivery_pending_at_kill9_comes_back_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let node = Node::start(dir.path());
    let url = node.url.clone();
    rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 4).await;
        publish(&url, "orders.placed", "d-1").await;
        let v = ws_next(&mut ws).await;
        assert_eq!(v["message"]["id"], "d-1", "{v}");
        ws_send(
            &mut ws,
            json!({"op": "nack", "delivery": v["delivery"], "delay_ms": 60000}),
        )
        .await;
        // Frames are handled in order: the answer to a bad nack says the real one was taken.
        ws_send(
            &mut ws,
            json!({"op": "nack", "id": 9, "delivery": "no-such"}),
        )
        .await;
        let e = ws_next(&mut ws).await;
        assert_eq!(e["op"], "error", "{e}");
        assert_eq!(e["id"], 9, "{e}");
    });
    node.kill9();
    let node = Node::start(dir.path());
    rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 4).await;
        let v = ws_next(&mut ws).await;
        assert_eq!(v["message"]["id"], "d-1", "{v}");
        ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
    });
}

/// Files under `root` whose name satisfies `pick`.
fn files(root: &Path, pick: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if pick(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Starts a node, publishes `ids` on `orders.placed` to group `audit` (manual acks; acked
/// when `ack`), then stops it with SIGTERM (exit 0).
fn run_and_stop(dir: &Path, ids: &[&str], ack: bool) {
    let rt = rt();
    let mut node = Node::start(dir);
    let url = node.url.clone();
    rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 16).await;
        for id in ids {
            publish(&url, "orders.placed", id).await;
        }
        if ack {
            for _ in ids {
                let v = ws_next(&mut ws).await;
                ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
            }
            // A round trip: every ack above was read before this answer.
            ws_send(
                &mut ws,
                json!({"op": "ack", "id": 9, "delivery": "no-such"}),
            )
            .await;
            loop {
                let v = ws_next(&mut ws).await;
                if v["op"] == "error" && v["id"] == 9 {
                    break;
                }
            }
        }
    });
    node.signal("-TERM");
    assert_eq!(node.wait_exit().code(), Some(0), "{}", node.stderr());
}

/// Damage in the newest segment followed by good records is not a torn write: the node must
/// not start (nothing skipped silently), exit 1 naming the segment.
#[test]
fn a_corrupt_record_before_good_ones_stops_the_node_naming_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    run_and_stop(dir.path(), &["k-0", "k-1", "k-2"], false);
    let segs = files(&dir.path().join("data"), |p| {
        p.extension().is_some_and(|x| x == "log")
    });
    assert_eq!(segs.len(), 1, "{segs:?}");
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[40] ^= 0xff; // inside the first record's envelope: its CRC no longer matches
    std::fs::write(&segs[0], bytes).unwrap();
    let (code, err) = match Node::try_start(dir.path()) {
        Ok(n) => panic!("started on a corrupt log at {}", n.url),
        Err(e) => e,
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("00000000000000000000.log"), "{err}");
    assert!(err.to_lowercase().contains("corrupt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A damaged `OFFSETS` file is not an error: the group starts again from the oldest record
/// (at-least-once, docs/log.md "A damaged offsets file"), with a warning.
#[test]
fn a_damaged_offsets_file_redelivers_from_the_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    run_and_stop(dir.path(), &["o-0", "o-1", "o-2"], true);
    let offs = files(&dir.path().join("data"), |p| {
        p.file_name().is_some_and(|n| n == "OFFSETS")
    });
    assert_eq!(offs.len(), 1, "{offs:?}");
    std::fs::write(&offs[0], b"SWYOFS01 garbage").unwrap();
    let rt = rt();
    let node = Node::start(dir.path());
    let url = node.url.clone();
    let got = rt.block_on(async {
        let mut ws = ws_connect(&node).await;
        subscribe_manual(&mut ws, "orders.#", "audit", 16).await;
        publish(&url, "orders.placed", "marker").await;
        let mut got = BTreeSet::new();
        loop {
            let v = ws_next(&mut ws).await;
            ws_send(&mut ws, json!({"op": "ack", "delivery": v["delivery"]})).await;
            let id = v["message"]["id"].as_str().unwrap().to_owned();
            if id == "marker" {
                break got;
            }
            got.insert(id);
        }
    });
    let want: BTreeSet<String> = ["o-0", "o-1", "o-2"].map(String::from).into();
    assert_eq!(got, want);
    assert!(
        node.stderr().to_lowercase().contains("offsets"),
        "{}",
        node.stderr()
    );
}

/// Clears the immutable flag of the paths it holds on drop (so the temp dir can go).
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// `chattr +i` on `paths`; `None` when the flag cannot be set here (not root, no ext4).
    fn set(paths: Vec<PathBuf>) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .args(&paths)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let guard = Immutable(paths);
        ok.then_some(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

/// A data dir that cannot be written (immutable: the closest a root test gets to read-only)
/// and, after some traffic, a segment that cannot be opened for writing: exit 1 naming the
/// file, nothing listening, no panic.
#[test]
fn an_unwritable_data_dir_or_segment_exits_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let Some(guard) = Immutable::set(vec![data.clone()]) else {
        eprintln!("skipped: chattr +i is not available here");
        return;
    };
    let (code, err) = match Node::try_start(dir.path()) {
        Ok(n) => panic!("started on an unwritable data dir at {}", n.url),
        Err(e) => e,
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(data.to_str().unwrap()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    drop(guard);

    run_and_stop(dir.path(), &["w-0"], false);
    let segs = files(&data, |p| p.extension().is_some_and(|x| x == "log"));
    let _guard = Immutable::set(segs.clone()).expect("chattr worked a moment ago");
    let (code, err) = match Node::try_start(dir.path()) {
        Ok(n) => panic!("started with an unwritable segment at {}", n.url),
        Err(e) => e,
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("00000000000000000000.log"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
