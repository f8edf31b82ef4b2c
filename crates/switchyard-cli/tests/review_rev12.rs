//! Review rev12: the docs as a contract. A first-time user follows README.md, docs/cli.md,
//! docs/gateway.md and docs/app.md literally; each test checks one promise of those pages by
//! running the `switchyard` binary (and plain HTTP against the node it serves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// `switchyard <args>` in `dir`, without the caller's node settings.
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let o: Output = assert_cmd::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("SWITCHYARD_URL")
        .env_remove("SWITCHYARD_TOKEN")
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("DATABASE_URL")
        .env("XDG_CONFIG_HOME", dir)
        .timeout(WAIT)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A running `switchyard serve` on the memory transport and an ephemeral port; its standard
/// output is collected; killed on drop.
struct Node {
    child: Child,
    url: String,
    addr: String,
    out: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("node.toml");
        std::fs::write(
            &cfg,
            "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"memory\"\n[logging]\nfilter = \"error\"\n",
        )
        .unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .args(extra)
            .current_dir(dir.path())
            .env_remove("SWITCHYARD_TRANSPORT__KIND")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        let out = Arc::new(Mutex::new(first.clone()));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let url = first
            .trim()
            .strip_prefix("switchyard node listening on ")
            .unwrap_or_else(|| panic!("first line is not the documented one: {first:?}"))
            .to_owned();
        let addr = url.trim_start_matches("http://").to_owned();
        Node {
            child,
            url,
            addr,
            out,
            dir,
        }
    }

    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &self.url]);
        run(self.dir.path(), &all)
    }

    /// One HTTP/1.1 call with `Connection: close`: (status, body).
    fn http(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        match body {
            Some((ct, b)) => req.push_str(&format!(
                "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )),
            None => req.push_str("\r\n"),
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {raw:?}"));
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it gives `Some`, or panics with `what` after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50)); // poll interval, not synchronisation
    }
}

/// cli.md "switchyard serve": the first line is the documented one with the bound address, and
/// SIGINT stops it after draining: `switchyard node stopped`, exit 0.
#[test]
fn serve_prints_the_bound_address_first_and_sigint_stops_it_with_exit_0() {
    let mut node = Node::start(&[]);
    let port: u16 = node.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{}", node.url);
    let (code, out, err) = node.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ready"), "{out}");
    let pid = node.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_for(WAIT, "serve to exit", || node.child.try_wait().unwrap());
    assert_eq!(status.code(), Some(0));
    wait_for(WAIT, "the stop line", || {
        node.stdout()
            .contains("switchyard node stopped")
            .then_some(())
    });
}

/// cli.md "Connecting to a node": an unreachable node is exit 1 with the documented sentence.
#[test]
fn an_unreachable_node_is_exit_1_with_the_documented_hint() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one, learn it, free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, out, err) = run(
        dir.path(),
        &["status", "--url", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!(
            "switchyard: cannot reach the switchyard node at http://127.0.0.1:{port}/:"
        )) && err.contains("(is `switchyard serve` running? set --url or SWITCHYARD_URL)"),
        "{err}"
    );
}

/// cli.md "Exit codes": usage errors are exit 2 (an unknown shell, a malformed `--header`, a
/// `--url` that is not http(s), a missing topic).
#[test]
fn usage_errors_are_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["completions", "tcsh"][..],
        &["pub", "a.b", "1", "-H", "no-equals-sign"],
        &["status", "--url", "ftp://example.org"],
        &["pub"],
        &["frobnicate"],
    ] {
        let (code, out, err) = run(dir.path(), args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(!err.is_empty(), "{args:?}");
    }
}

/// cli.md "Shell completions": the three documented shells print a script, exit 0.
#[test]
fn completions_for_the_documented_shells() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(dir.path(), &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("switchyard"), "{shell}");
    }
}

/// README "Run a node": `pub` prints its id and correlation id; cli.md: `send` to a topic with no
/// handler is exit 1 with `404 Not Found: no_handler:` (the message as fixed in cli.md).
#[test]
fn pub_prints_ids_and_send_without_a_handler_is_no_handler() {
    let node = Node::start(&[]);
    let (code, out, err) =
        node.cli(&["pub", "orders.placed", r#"{"id": 42}"#, "-H", "tenant=acme"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["id"].is_string() && v["correlation_id"].is_string(),
        "{out}"
    );
    let (code, out, err) = node.cli(&["send", "users.create", r#"{"name": "ada"}"#]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(
            "the node answered 404 Not Found: no_handler: no handler registered for command topic users.create"
        ),
        "{err}"
    );
    // Invalid JSON under the default content type: `malformed_json`, exit 1.
    let (code, _, err) = node.cli(&["pub", "orders.placed", "not json"]);
    assert_eq!(code, 1);
    assert!(err.contains("malformed_json"), "{err}");
    // Another content type sends the bytes as they are.
    let (code, _, err) = node.cli(&[
        "pub",
        "orders.placed",
        "raw",
        "--content-type",
        "text/plain",
    ]);
    assert_eq!(code, 0, "{err}");
}

/// gateway.md "Errors": the example error (an empty segment) has kind `invalid_topic` and a
/// message naming the rule and the topic; malformed JSON and a bad priority have their kinds.
#[test]
fn gateway_errors_have_the_documented_kinds() {
    let node = Node::start(&[]);
    let json = Some(("application/json", "{}"));
    let (status, body) = node.http("POST", "/v1/publish/a..b", json);
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["kind"], "invalid_topic", "{body}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("empty segment") && msg.contains("\"a..b\""),
        "{msg}"
    );
    let (status, body) = node.http("POST", "/v1/publish/a.b", Some(("application/json", "{x")));
    assert_eq!(status, 400);
    assert!(body.contains("\"malformed_json\""), "{body}");
    let (status, body) = node.http("POST", "/v1/dlq", None);
    assert_eq!(status, 405);
    assert!(body.contains("\"method_not_allowed\""), "{body}");
    let (status, body) = node.http("GET", "/v1/dlq?foo=1", None);
    assert_eq!(status, 400);
    assert!(body.contains("\"bad_query\""), "{body}");
    let (status, body) = node.http("GET", "/nope", None);
    assert_eq!(status, 404);
    assert!(body.contains("\"not_found\""), "{body}");
    let (status, body) = node.http("GET", "/health", None);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
}

/// A user reads `/v1/status` (or `switchyard status --json`) to learn where the node listens;
/// with `--listen 127.0.0.1:0` it should say the bound address, as the first line does.
/// Observed before the fix: `"listen": "127.0.0.1:0"` (the configured value).
#[test]
fn status_names_the_bound_address() {
    let node = Node::start(&[]);
    let (code, out, err) = node.cli(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["listen"], node.addr.as_str(), "{out}");
}

/// The demo node's dead letters for the undecodable pipeline requests (cli.md `--demo`).
fn demo_undecodable_letters(node: &Node) -> Vec<Value> {
    wait_for(WAIT, "an undecodable request in the DLQ", || {
        let (code, out, _) =
            node.cli(&["dlq", "list", "--topic", "cpm.pipeline.request", "--json"]);
        if code != 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&out).ok()?;
        let items = v["items"].as_array()?.clone();
        (!items.is_empty()).then_some(items)
    })
}

/// cli.md `--demo`: "every 10th tick also publishes a request whose payload does not decode,
/// which the bus dead-letters with its raw bytes"; README: the send example now names the
/// demo's own command (`cpm.query.runs`) and prints the handler's reply.
#[test]
fn demo_dead_letters_the_undecodable_request_with_its_bytes_and_answers_its_query() {
    let node = Node::start(&["--demo", "--demo-interval-ms", "50"]);
    let items = demo_undecodable_letters(&node);
    let msg = &items[0]["message"];
    assert_eq!(msg["payload"]["note"], "not a PipelineRequest", "{msg}");
    assert_eq!(msg["source"], "demo-trickle", "{msg}");
    let (code, out, err) = node.cli(&["send", "cpm.query.runs", "{}"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["payload"]["runs"].is_array(), "{out}");
}

/// docs/bus.md "Failures and dead letters": "Rejections and undecodable payloads (kept as raw
/// bytes) go there at once", reason `decode_failed`. On a node (every handler under the default
/// resilience stack) the demo's undecodable request was retried 3 times and dead-lettered as
/// `handler_failed` with "permanent failure: gave up after 3 attempt(s): cannot decode ..."
/// (fixed: the retry classifier and the bus find the decode error in the chain).
#[test]
fn demo_undecodable_request_is_dead_lettered_at_once_as_decode_failed() {
    let node = Node::start(&["--demo", "--demo-interval-ms", "50"]);
    let items = demo_undecodable_letters(&node);
    let e = &items[0];
    assert_eq!(
        (e["reason"].as_str(), e["attempts"].as_u64()),
        (Some("decode_failed"), Some(1)),
        "{e}"
    );
}

/// The same through HTTP: a command whose payload its typed handler cannot decode. The caller
/// got `handler_failed` after 3 attempts instead of one decode failure (fixed).
#[test]
fn an_undecodable_command_is_not_retried() {
    let node = Node::start(&["--demo", "--demo-interval-ms", "5000"]);
    let (code, _, err) = node.cli(&["send", "cpm.query.runs", "null"]);
    assert_eq!(code, 1);
    assert!(
        !err.contains("after 3 attempt(s)"),
        "a decode failure was retried: {err}"
    );
}

/// app.md / cli.md: an unsupported `DATABASE_URL` stops `serve --demo` with exit 1, the URL
/// named with its password replaced by `***`, and nothing listens.
#[test]
fn an_unsupported_database_url_exits_1_with_the_password_masked() {
    let dir = tempfile::tempdir().unwrap();
    let o = assert_cmd::Command::new(bin())
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("SWITCHYARD_TRANSPORT__KIND", "memory")
        .env("DATABASE_URL", "mysql://u:s3cret@127.0.0.1/db")
        .timeout(WAIT)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!out.contains("listening"), "{out}");
    assert!(err.contains("mysql://u:***@127.0.0.1/db"), "{err}");
    assert!(!err.contains("s3cret") && !out.contains("s3cret"), "{err}");
}
