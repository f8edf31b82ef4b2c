//! Review rev8: `switchyard serve` as an operator runs it: environment overrides with bad
//! values, a data directory that cannot be one, and SIGTERM while HTTP publishes and a
//! command held by a WebSocket handler are in flight (docs/cli.md, docs/gateway.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// `switchyard serve --config <file>` with `env`, run to its end (it must not start).
fn serve_fails(dir: &Path, config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let cfg = dir.join("node.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = assert_cmd::Command::new(bin());
    cmd.args(["serve", "--config", cfg.to_str().unwrap()])
        .current_dir(dir)
        .env_remove("SWITCHYARD_URL")
        .env_remove("SWITCHYARD_TOKEN")
        .env_remove("SWITCHYARD_TRANSPORT__KIND")
        .timeout(WAIT);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o: Output = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const MEMORY: &str = "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"memory\"\n";

/// Environment overrides are checked like the file: a bad value or an unknown key in a known
/// section names the key and the value, exits 1 and listens nowhere.
#[test]
fn bad_environment_overrides_name_the_key_and_the_value_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, names) in [
        (
            "SWITCHYARD_LIMITS__MAX_BODY_BYTES",
            "lots",
            "max_body_bytes",
        ),
        ("SWITCHYARD_TRANSPORT__KIND", "pigeon", "pigeon"),
        ("SWITCHYARD_WS__SLOW_CLIENT", "ignore", "slow_client"),
        ("SWITCHYARD_BUS__WORKERS", "-3", "workers"),
        ("SWITCHYARD_LISTEN", "0.0.0.0:0", "auth"),
    ] {
        let (code, out, err) = serve_fails(dir.path(), MEMORY, &[(var, value)]);
        assert_eq!(code, 1, "{var}={value}: {err}");
        assert!(out.is_empty(), "{var}={value}: it listened: {out}");
        assert!(
            err.contains("invalid configuration") && err.to_lowercase().contains(names),
            "{var}={value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// "Unknown keys are refused" also when the key comes from the environment: a typo in an
/// override (`MAX_BODY_BYTE`) must not be silently ignored.
#[test]
fn an_unknown_key_in_an_environment_override_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = serve_fails(
        dir.path(),
        MEMORY,
        &[("SWITCHYARD_LIMITS__MAX_BODY_BYTE", "1024")],
    );
    assert_eq!(code, 1, "stdout: {out} stderr: {err}");
    assert!(err.contains("max_body_byte"), "{err}");
}

/// A data directory that is a file: exit 1 with the path, no panic, nothing listening.
#[test]
fn a_data_dir_that_is_a_file_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data-is-a-file");
    std::fs::write(&file, b"x").unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"log\"\ndata_dir = {:?}\n",
        file.to_str().unwrap()
    );
    let (code, out, err) = serve_fails(dir.path(), &config, &[]);
    assert_eq!(code, 1, "stdout: {out} stderr: {err}");
    assert!(out.is_empty(), "it listened: {out}");
    assert!(err.contains("data-is-a-file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A running `switchyard serve`; killed on drop.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn spawn(dir: &Path, config: &str) -> Served {
        let cfg = dir.join("node.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .current_dir(dir)
            .env_remove("SWITCHYARD_TRANSPORT__KIND")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let url = first
            .trim()
            .strip_prefix("switchyard node listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Served { child, url }
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http://", "ws://", 1))
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the exit after a SIGTERM (polling the process state, bounded).
    fn wait_exit(&mut self) -> std::process::ExitStatus {
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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_ask(ws: &mut Ws, frame: Value) -> Value {
    ws.send(Message::text(frame.to_string())).await.unwrap();
    ws_next(ws).await
}

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

fn log_config(dir: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"log\"\ndata_dir = {:?}\n\
         [logging]\nfilter = \"error\"\n[bus]\nshutdown_timeout_ms = 2000\n",
        dir.join("data").to_str().unwrap()
    )
}

/// SIGTERM while four clients publish over HTTP: every publish is answered 202 or refused
/// (503 or a refused connection), serve exits 0, and after a restart on the same data
/// directory a durable group created before gets every message that was answered 202.
#[test]
fn sigterm_during_http_publishes_loses_nothing_that_was_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let config = log_config(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut node = Served::spawn(dir.path(), &config);
    let ws_url = node.ws_url();
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap();
        let v = ws_ask(
            &mut ws,
            json!({"op": "subscribe", "id": 1, "pattern": "orders.#", "group": "audit"}),
        )
        .await;
        assert_eq!(v["op"], "subscribed", "{v}");
        ws.close(None).await.unwrap();
    });

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<String, String>>();
    let url = node.url.clone();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let tx = tx.clone();
            let url = url.clone();
            rt.spawn(async move {
                let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
                for i in 0..100_000 {
                    let id = format!("m-{p}-{i}");
                    let res = http
                        .post(format!("{url}/v1/publish/orders.placed"))
                        .header("x-message-id", &id)
                        .json(&json!({"p": p, "i": i}))
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status() == 202 => {
                            let _ = tx.send(Ok(id));
                        }
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            let _ = tx.send(Err(format!("{status} {body}")));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("transport: {e}")));
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut accepted = BTreeSet::new();
    let mut refusals = Vec::new();
    rt.block_on(async {
        while accepted.len() < 200 {
            match tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap()
            {
                Ok(id) => {
                    accepted.insert(id);
                }
                Err(e) => panic!("refused before the stop: {e}"),
            }
        }
        node.sigterm();
        while let Some(r) = tokio::time::timeout(WAIT, rx.recv()).await.unwrap() {
            match r {
                Ok(id) => {
                    accepted.insert(id);
                }
                Err(e) => refusals.push(e),
            }
        }
        for p in publishers {
            p.await.unwrap();
        }
    });
    let status = node.wait_exit();
    assert_eq!(status.code(), Some(0), "serve's exit after SIGTERM");
    for r in &refusals {
        assert!(
            r.starts_with("503") || r.starts_with("transport:"),
            "a publish at the stop was answered {r}"
        );
    }

    let node = Served::spawn(dir.path(), &config);
    let ws_url = node.ws_url();
    let got = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap();
        let v = ws_ask(
            &mut ws,
            json!({"op": "subscribe", "id": 1, "pattern": "orders.#", "group": "audit"}),
        )
        .await;
        assert_eq!(v["op"], "subscribed", "{v}");
        let mut got = BTreeSet::new();
        while !accepted.is_subset(&got) {
            let v = ws_next(&mut ws).await;
            if v["op"] == "message" {
                got.insert(v["message"]["id"].as_str().unwrap().to_owned());
            }
        }
        got
    });
    let lost: Vec<_> = accepted.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} accepted and lost: {lost:?}",
        lost.len()
    );
    drop(node);
}

/// SIGTERM while a WebSocket handler holds a command sent over HTTP: the sender gets a
/// typed answer soon (the handler's connection is closed at the stop, which the docs answer
/// with `422 handler_failed`), not a reset or a 30 s wait, and serve exits 0.
#[test]
fn sigterm_with_a_command_held_by_a_ws_handler_answers_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Served::spawn(dir.path(), MEMORY);
    let ws_url = node.ws_url();
    let url = node.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (answer, took) = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap();
        let v = ws_ask(
            &mut ws,
            json!({"op": "handle", "id": 1, "topic": "jobs.hold"}),
        )
        .await;
        assert_eq!(v["op"], "handling", "{v}");
        let call = tokio::spawn(async move {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap()
                .post(format!("{url}/v1/send/jobs.hold"))
                .json(&json!({"n": 1}))
                .send()
                .await
        });
        let cmd = ws_next(&mut ws).await;
        assert_eq!(cmd["op"], "command", "{cmd}");
        // The handler holds it (never answers); the operator stops the node.
        let started = Instant::now();
        node.sigterm();
        let res = call.await.unwrap();
        let took = started.elapsed();
        let answer = match res {
            Ok(r) => {
                let s = r.status().as_u16();
                format!("{s} {}", r.text().await.unwrap_or_default())
            }
            Err(e) => format!("transport: {e}"),
        };
        drop(ws);
        (answer, took)
    });
    assert!(
        answer.starts_with("422") || answer.starts_with("503"),
        "the held command was answered {answer}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the held command was answered only after {took:?}: {answer}"
    );
    assert_eq!(node.wait_exit().code(), Some(0));
}
