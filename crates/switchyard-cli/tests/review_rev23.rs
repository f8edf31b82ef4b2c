//! Review rev23: the reference is the truth. A user configures and operates
//! `switchyard serve` from docs/cli.md, docs/gateway.md and the README; these tests drive the
//! built binary as a child process (free port, temporary directory, memory transport unless a
//! test needs another) and hold it to what those documents say: configuration keys and their
//! errors, `/metrics` series and labels, routes and WebSocket frames, `--help`, and the
//! README's first commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Bound of any single wait.
const WAIT: Duration = Duration::from_secs(15);

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A minimal config: memory transport on a free loopback port, warnings only.
const MEMORY: &str = "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"memory\"\n\
                      [logging]\nfilter = \"warn\"\n[bus]\nshutdown_timeout_ms = 2000\n";

/// A `switchyard serve` child; killed and reaped on drop (also when a test panics).
struct Node {
    child: Child,
    url: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// Copies `r` into the returned buffer on a thread; the first line also goes to `first`.
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

/// A command on the binary with none of the caller's `SWITCHYARD_*`, `RUST_LOG` or
/// `DATABASE_*` variables (so the test sees only what it sets).
fn bin(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHYARD_") || k == "RUST_LOG" || k.starts_with("DATABASE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Node {
    /// `serve --config <dir>/node.toml ARGS` with `env`; `Err((exit code, stderr, stdout))`
    /// when it exits without listening.
    fn try_start(
        dir: &Path,
        toml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Node, (Option<i32>, String, String)> {
        let cfg = dir.join("node.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut cmd = bin(dir);
        cmd.args(["serve", "--config", cfg.to_str().unwrap()])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
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
                // The pumps end with the pipes; wait (bounded) for them to have it all.
                let deadline = Instant::now() + Duration::from_secs(2);
                while node.stderr.lock().unwrap().is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let out = node.stdout.lock().unwrap().clone();
                Err((status.code(), node.stderr.lock().unwrap().clone(), out))
            }
        }
    }

    fn start(dir: &Path, toml: &str, args: &[&str]) -> Node {
        Node::try_start(dir, toml, args, &[])
            .unwrap_or_else(|(code, err, _)| panic!("serve exited {code:?}: {err}"))
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http://", "ws://", 1))
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
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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

/// Sends `frame` and returns the next frame, which must have op `op`.
async fn ws_call(ws: &mut Ws, frame: Value, op: &str) -> Value {
    ws_send(ws, frame.clone()).await;
    let v = ws_next(ws).await;
    assert_eq!(v["op"], op, "{frame} answered {v}");
    v
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn publish(url: &str, topic: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = http()
        .post(format!("{url}/v1/publish/{topic}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Every config file here is refused: exit 1, `switchyard: invalid configuration: ...` naming
/// the key, nothing on standard output, no panic (docs/cli.md: "An invalid configuration
/// names the key, the value and what is allowed, and exits 1 without starting anything").
#[test]
fn invalid_config_files_exit_1_naming_the_key_and_start_nothing() {
    let cases: &[(&str, &[&str])] = &[
        ("lisen = \"127.0.0.1:0\"", &["lisen", "listen"]),
        (
            "[transport]\nkind = \"log\"\nsegment_byts = 5000",
            &["segment_byts"],
        ),
        ("[transport]\nkind = \"mem\"", &["mem", "memory"]),
        (
            "[limits]\nmax_body_bytes = \"big\"",
            &["max_body_bytes", "big"],
        ),
        ("[limits]\nmax_body_bytes = -1", &["max_body_bytes", "-1"]),
        (
            "[limits]\nmax_body_bytes = 0",
            &["limits.max_body_bytes = 0", "at least 1"],
        ),
        (
            "[ws]\nping_interval_ms = 99999999999999999999",
            &["ping_interval_ms", "too large"],
        ),
        (
            "[limits]\ndefault_request_timeout_ms = 9000\nmax_request_timeout_ms = 8000",
            &["limits.max_request_timeout_ms = 8000"],
        ),
        ("[bus]\nworkers = 0", &["bus.workers = 0"]),
        ("[bus]\nqueue_capacity = 0", &["bus.queue_capacity = 0"]),
        ("[ws]\nmax_connections = 0", &["ws.max_connections = 0"]),
        (
            "[ws]\nslow_client = \"fast\"",
            &["slow_client", "fast", "disconnect"],
        ),
        (
            "[retention]\ndead_letters = 0",
            &["retention.dead_letters = 0"],
        ),
        (
            "[limits.publish_rate]\nper_second = 10\nburst = 0",
            &["limits.publish_rate.burst"],
        ),
        ("[auth]\nenabled = true", &["auth.enabled"]),
        (
            "[auth]\nenabled = true\n[[auth.tokens]]\nprincipal = \"x\"\nsha256 = \"abc\"",
            &["auth.tokens[0].sha256"],
        ),
        (
            "[transport]\nkind = \"log\"\nsegment_bytes = 100",
            &["transport.segment_bytes = 100"],
        ),
        ("[transport]\nkind = \"nats\"", &["transport.streams"]),
        (
            "[[ingest.zmq]]\nendpoint = \"udp://x:1\"\ntopic = \"a.b\"",
            &["ingest.zmq[0].endpoint"],
        ),
        (
            "[tls]\ncert = \"nope.pem\"\nkey = \"nope.pem\"",
            &["tls.cert", "nope.pem"],
        ),
        (
            "[encryption]\ntopics = [\"payments.#\"]\n[encryption.keys]\nk1 = \"short\"",
            &["encryption.keys.k1"],
        ),
        ("[logging]\nformat = \"xml\"", &["format", "xml"]),
    ];
    for (body, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!("listen = \"127.0.0.1:0\"\n{body}\n");
        let (code, err, out) = match Node::try_start(dir.path(), &toml, &[], &[]) {
            Ok(node) => panic!("{body:?} was accepted: listening on {}", node.url),
            Err(e) => e,
        };
        assert_eq!(code, Some(1), "{body:?}: exit {code:?}, stderr {err}");
        assert!(
            err.starts_with("switchyard: invalid configuration: "),
            "{body:?}: {err}"
        );
        for n in *needles {
            assert!(
                err.contains(n),
                "{body:?}: stderr does not name {n:?}: {err}"
            );
        }
        assert!(!err.contains("panicked"), "{body:?}: {err}");
        assert!(out.is_empty(), "{body:?} printed {out:?}");
        assert!(
            !dir.path().join("switchyard-data").exists(),
            "{body:?} created the data dir"
        );
    }
}

/// `SWITCHYARD_<SECTION>__<KEY>` overrides reach the node (gateway.md#configuration), a
/// misspelled or ill-typed one is refused naming it, and the CLI's own `SWITCHYARD_URL` /
/// `SWITCHYARD_TOKEN` do not disturb `serve`.
#[test]
fn env_overrides_take_effect_and_bad_ones_are_refused_naming_the_key() {
    for (var, value, needles) in [
        (
            "SWITCHYARD_LIMITS__MAX_BODY_BYTE",
            "5",
            &["max_body_byte", "max_body_bytes"][..],
        ),
        (
            "SWITCHYARD_LIMITS__MAX_BODY_BYTES",
            "abc",
            &["MAX_BODY_BYTES", "abc"][..],
        ),
        (
            "SWITCHYARD_LIMITS__MAX_BODY_BYTES",
            "0",
            &["limits.max_body_bytes = 0"][..],
        ),
        (
            "SWITCHYARD_TRANSPORT__KIND",
            "bogus",
            &["bogus", "memory"][..],
        ),
        (
            "SWITCHYARD_WS__SLOW_CLIENT",
            "fast",
            &["SLOW_CLIENT", "fast"][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, err, _) = match Node::try_start(dir.path(), MEMORY, &[], &[(var, value)]) {
            Ok(node) => panic!("{var}={value} was accepted: {}", node.url),
            Err(e) => e,
        };
        assert_eq!(code, Some(1), "{var}={value}: {err}");
        for n in needles {
            assert!(
                err.contains(n),
                "{var}={value}: stderr does not name {n:?}: {err}"
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let node = Node::try_start(
        dir.path(),
        MEMORY,
        &[],
        &[
            ("SWITCHYARD_LIMITS__MAX_BODY_BYTES", "64"),
            ("SWITCHYARD_URL", "http://example.invalid:1"),
            ("SWITCHYARD_TOKEN", "not-a-node-key"),
        ],
    )
    .unwrap_or_else(|(c, e, _)| panic!("exit {c:?}: {e}"));
    rt().block_on(async {
        let (status, _) = publish(&node.url, "a.b", r#"{"n": 1}"#).await;
        assert_eq!(status, 202);
        let (status, body) = publish(&node.url, "a.b", format!("\"{}\"", "x".repeat(100))).await;
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"]["kind"], "too_large", "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("limits.max_body_bytes") && msg.contains("64"),
            "{msg}"
        );
    });
}

/// The documented defaults hold with an empty `[limits]`: 1 MiB bodies (exactly 1 MiB is
/// taken, one byte more is 413 naming the limit), request deadline at most 60000 ms
/// (60001 is 400 `bad_query`), and `/v1/status` reports the transport and the bound address.
#[test]
fn documented_limit_defaults_hold() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), MEMORY, &[]);
    rt().block_on(async {
        const MIB: usize = 1024 * 1024;
        let (status, body) =
            publish(&node.url, "a.b", format!("\"{}\"", "a".repeat(MIB - 2))).await;
        assert_eq!(status, 202, "{body}");
        let (status, body) =
            publish(&node.url, "a.b", format!("\"{}\"", "a".repeat(MIB - 1))).await;
        assert_eq!(status, 413, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1048576"),
            "{body}"
        );
        for (ms, want, kind) in [(60_001, 400, "bad_query"), (60_000, 404, "no_handler")] {
            let r = http()
                .post(format!("{}/v1/request/a.b?timeout_ms={ms}", node.url))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), want, "timeout_ms={ms}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["kind"], kind, "{v}");
        }
        let status: Value = http()
            .get(format!("{}/v1/status", node.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["transport"], "memory", "{status}");
        assert_eq!(
            format!("http://{}", status["listen"].as_str().unwrap()),
            node.url,
            "{status}"
        );
    });
}

/// docs/cli.md: "`--listen` overriding its `listen`". A node config written for a server
/// (`listen = "0.0.0.0:7878"`, here without auth, as when the auth section lives in another
/// deployment layer) run locally with `--listen 127.0.0.1:0` listens on loopback, where auth
/// off is allowed. The same for `SWITCHYARD_LISTEN=0.0.0.0:8080` left in the environment.
///
/// Fails: `serve exited Some(1): switchyard: invalid configuration: invalid config: listen =
/// 0.0.0.0:7878: a non-loopback address needs auth: set auth.enabled = true with tokens or
/// jwt, or listen on 127.0.0.1`: `NodeConfig::load` validates the loaded value before
/// `--listen` replaces it.
#[test]
#[ignore = "defect: serve refuses a non-loopback config listen that --listen 127.0.0.1:0 overrides"]
fn listen_flag_overrides_a_non_loopback_listen_before_it_is_judged() {
    let dir = tempfile::tempdir().unwrap();
    let toml = MEMORY.replace("127.0.0.1:0", "0.0.0.0:7878");
    let node = Node::try_start(dir.path(), &toml, &["--listen", "127.0.0.1:0"], &[])
        .unwrap_or_else(|(c, e, _)| panic!("serve exited {c:?}: {e}"));
    assert!(node.url.starts_with("http://127.0.0.1:"), "{}", node.url);
    drop(node);
    let node = Node::try_start(
        dir.path(),
        MEMORY,
        &["--listen", "127.0.0.1:0"],
        &[("SWITCHYARD_LISTEN", "0.0.0.0:8080")],
    )
    .unwrap_or_else(|(c, e, _)| panic!("serve exited {c:?}: {e}"));
    assert!(node.url.starts_with("http://127.0.0.1:"), "{}", node.url);
}

/// docs/gateway.md: "`[logging] format = "json"` writes one JSON object per line
/// (`tracing-subscriber`); `RUST_LOG` overrides the filter", and the config reference has
/// `[logging] format`/`filter`. `switchyard serve --config` with `format = "json"`,
/// `filter = "info"` (no `--log`, no `SWITCHYARD_LOG`) should log its start as a JSON line.
///
/// Fails: `no "node started" log line within 5s; stderr: ""`: `serve` accepts `[logging]`
/// but never applies it: crates/switchyard-cli/src/main.rs:221 installs the CLI's own
/// subscriber (`--log`, default `warn`, text) before the config is read, so
/// `switchyard_node::logging::init` is never called (the same for `RUST_LOG`).
#[test]
#[ignore = "defect: serve silently ignores the [logging] section (format and filter) and RUST_LOG"]
fn serve_applies_the_logging_section() {
    let dir = tempfile::tempdir().unwrap();
    let toml = MEMORY.replace(
        "[logging]\nfilter = \"warn\"\n",
        "[logging]\nformat = \"json\"\nfilter = \"info\"\n",
    );
    assert!(toml.contains("format = \"json\""), "{toml}");
    let node = Node::start(dir.path(), &toml, &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let err = node.stderr.lock().unwrap().clone();
        if let Some(l) = err.lines().find(|l| l.contains("node started")) {
            break l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no \"node started\" log line within 5s; stderr: {err:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
}

/// The TOML block of docs/gateway.md#configuration.
fn documented_config() -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/gateway.md"
    ))
    .unwrap();
    let start = doc
        .find("\n## Configuration")
        .expect("a Configuration section");
    let block = &doc[start..];
    let open = block.find("```toml\n").unwrap() + "```toml\n".len();
    let close = open + block[open..].find("```").unwrap();
    block[open..close].to_owned()
}

/// Every key path (`a.b.c`, array items without index) of a serialized config.
fn key_paths(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                if path != "encryption.keys" {
                    key_paths(&path, child, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                key_paths(prefix, item, out);
            }
        }
        _ => {}
    }
}

/// Every key the node's config parser accepts (`crates/switchyard-node/src/config.rs`: the
/// fields of every section, optional ones included) is in the configuration reference of
/// docs/gateway.md, as `key = ...` (possibly commented out) or as a `[table]` header.
#[test]
fn every_key_the_node_accepts_is_in_the_configuration_reference() {
    use switchyard_node::NodeConfig;
    let full = r#"
        [transport]
        kind = "log"
        [auth]
        [[auth.tokens]]
        principal = "p"
        sha256 = "x"
        [[auth.principals]]
        name = "p"
        [auth.jwt]
        algorithm = "HS256"
        [limits.publish_rate]
        per_second = 1
        [tls]
        cert = "c"
        key = "k"
        [[ingest.zmq]]
        endpoint = "tcp://127.0.0.1:1"
        topic = "a.b"
        [encryption]
        topics = ["a.#"]
        keys = {}
        "#;
    let nats =
        "[transport]\nkind = \"nats\"\n[[transport.streams]]\nname = \"s\"\npatterns = [\"a.#\"]\n";
    let mut keys = BTreeSet::new();
    for src in [full, nats] {
        let cfg: NodeConfig = toml::from_str(src).unwrap_or_else(|e| panic!("{e}"));
        key_paths("", &serde_json::to_value(&cfg).unwrap(), &mut keys);
    }
    assert!(keys.len() > 60, "{keys:?}");
    let doc = documented_config();
    let documented = |path: &str| {
        let leaf = path.rsplit('.').next().unwrap();
        doc.lines().any(|l| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            let l = l.split('#').next().unwrap_or_default();
            l.split('=').next().is_some_and(|k| k.trim() == leaf) && l.contains('=')
                || l.trim() == format!("[{path}]")
                || l.trim() == format!("[[{path}]]")
                || l.trim_start_matches('[').starts_with(&format!("{path}."))
                || l.contains(&format!("{leaf} = "))
        })
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !documented(k)).collect();
    assert!(
        missing.is_empty(),
        "accepted by the node, not in docs/gateway.md#configuration: {missing:?}"
    );
}

/// The configuration reference of docs/gateway.md, as written (less `[tls]`, which needs real
/// PEM files, and `[[ingest.zmq]]`, which binds a fixed port), on a free port with the
/// placeholder token hash filled in and the JWT secret in its variable: the node starts, and
/// the documented grants apply (`shop` publishes `orders.#`, not `users.*`).
#[test]
fn the_documented_configuration_starts_a_node_with_its_grants() {
    let mut doc = documented_config();
    for section in ["[tls]", "[[ingest.zmq]]"] {
        let at = doc.find(&format!("\n{section}")).unwrap();
        let end = doc[at + 1..].find("\n[").map_or(doc.len(), |e| at + 1 + e);
        doc.replace_range(at..end, "");
    }
    // sha256("test"), as in the node's rustdoc.
    let doc = doc
        .replace("listen = \"127.0.0.1:7878\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "<printf %s TOKEN | sha256sum>",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        );
    assert!(doc.contains("listen = \"127.0.0.1:0\""), "{doc}");
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef";
    let node = Node::try_start(dir.path(), &doc, &[], &[("SWITCHYARD_JWT_SECRET", secret)])
        .unwrap_or_else(|(c, e, _)| panic!("the documented config: exit {c:?}: {e}\n{doc}"));
    rt().block_on(async {
        for (topic, token, status) in [
            ("orders.placed", Some("test"), 202),
            ("users.created", Some("test"), 403),
            ("orders.placed", None, 401),
        ] {
            let mut req = http()
                .post(format!("{}/v1/publish/{topic}", node.url))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{topic} with {token:?}");
        }
    });
}

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
        "switchyard_breaker_state",
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
        "switchyard_delivered_total{topic=\"orders.#\",handler=\"ws:anonymous\"}",
        "switchyard_delivered_total{topic=\"users.create\",handler=\"ws-handler:anonymous\"} 1",
        "switchyard_breaker_state{handler=\"ws-handler:anonymous\"} 0",
        "switchyard_transport_connected{transport=\"memory\"} 1",
        "switchyard_ready 1",
    ] {
        assert!(
            series.iter().any(|l| l.starts_with(needle)),
            "no {needle} in\n{text}"
        );
    }
    for q in ["0.5", "0.95", "0.99"] {
        let needle = format!(
            "switchyard_handler_latency_seconds{{handler=\"ws-handler:anonymous\",quantile=\"{q}\"}}"
        );
        assert!(
            series.iter().any(|l| l.starts_with(&needle)),
            "no {needle} in\n{text}"
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
            ("/v1/dlq/replay", "application/json", r#"{"ids": []}"#, 200, None),
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
        let batch = ws_call(
            &mut ws,
            json!({"op": "publish_batch", "id": [1], "messages": [
                {"topic": "t.a", "payload": {"v": 1}},
                {"topic": "t.b", "payload_base64": "AAEC", "content_type": "application/octet-stream"}]}),
            "published_batch",
        )
        .await;
        assert_eq!((batch["id"].clone(), batch["count"].clone()), (json!([1]), json!(2)), "{batch}");
        let mut seen = Vec::new();
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

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = bin(dir);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    // Bounded: a command that hangs is killed (by its own pid) after WAIT.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("switchyard {args:?} did not finish in {WAIT:?}");
        }
    }
}

fn help(dir: &Path, args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.push("--help");
    let out = run(dir, &a, &[]);
    assert!(out.status.success(), "{a:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every flag docs/cli.md's synopses name is in the subcommand's `--help`, with the default
/// docs/cli.md states; a usage error is exit 2 with `error:`.
#[test]
fn help_matches_cli_md() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["serve"],
            &[
                "--config",
                "--listen",
                "--demo",
                "--demo-interval-ms",
                "[default: 1500]",
                "--log",
            ],
        ),
        (
            &["pub"],
            &[
                "--file",
                "--content-type",
                "--message-id",
                "--correlation-id",
                "--causation-id",
                "--traceparent",
                "--priority",
                "--source",
                "--header",
                "--url",
                "--token",
                "--config",
                "--http-timeout",
                "[default: 60]",
            ],
        ),
        (&["send"], &["--file", "--header", "--url"]),
        (&["request"], &["--timeout-ms", "5000"]),
        (
            &["sub"],
            &["--group", "--count", "--format", "[default: json]"],
        ),
        (&["tail"], &["--count", "--format", "[default: text]"]),
        (
            &["dlq", "list"],
            &[
                "--topic",
                "--subscription",
                "--limit",
                "--offset",
                "--json",
                "[default: 100]",
            ],
        ),
        (&["dlq", "show"], &["<ID>"]),
        (
            &["dlq", "replay"],
            &["--all", "--topic", "--batch", "[default: 200]"],
        ),
        (&["dlq", "purge"], &["--all", "--topic"]),
        (
            &["topology"],
            &["--format", "mermaid", "dot", "json", "[default: mermaid]"],
        ),
        (&["trace"], &["--json"]),
        (&["status"], &["--json"]),
        (
            &["bench"],
            &[
                "--topic",
                "[default: bench.load]",
                "--count",
                "[default: 10000]",
                "--concurrency",
                "[default: 16]",
                "--size",
                "[default: 64]",
            ],
        ),
        (
            &["schema", "check"],
            &["--mode", "backward", "forward", "full", "--json"],
        ),
        (&["completions"], &["bash", "zsh", "fish"]),
        (
            &["schema", "export"],
            &[
                "--lang",
                "asyncapi",
                "python",
                "--from",
                "--out",
                "[default: asyncapi]",
            ],
        ),
        (&["demo", "pipeline"], &["--rows", "--runs"]),
    ];
    for (args, needles) in cases {
        let h = help(d, args);
        for n in *needles {
            assert!(
                h.contains(n),
                "switchyard {args:?} --help lacks {n:?}:\n{h}"
            );
        }
    }
    // `--token`'s value never shows in --help, even when set in the environment.
    let out = run(
        d,
        &["pub", "--help"],
        &[("SWITCHYARD_TOKEN", "s3cret-value")],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret-value"));
    // The text line format as docs/cli.md writes it (and as `tail` prints it).
    let h = help(d, &["tail"]);
    assert!(h.contains("timestamp kind topic corr="), "{h}");
    // Usage errors: exit 2 with `error:` (the parser's) or `switchyard:` naming the option.
    for (args, says) in [
        (&["frobnicate"][..], "error:"),
        (&["pub"][..], "error:"),
        (&["serve", "--bogus"][..], "error:"),
        (&["completions", "tcsh"][..], "error:"),
        (&["pub", "a.b", "-H", "novalue"][..], "error:"),
        (&["pub", "a.b", "--url", "ftp://x"][..], "switchyard: --url"),
        (
            &["status", "--config", "/nonexistent/cli.toml"][..],
            "switchyard: cannot read",
        ),
    ] {
        let out = run(d, args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with(says),
            "{args:?}: {out:?}"
        );
    }
}

/// The README's commands, as written, against `serve --demo` (memory transport, a run every
/// 200 ms, the URL from `SWITCHYARD_URL`): `tail`, `pub`, `send cpm.query.runs '{}'`,
/// `dlq list` (entries within seconds), `topology --format mermaid`, `trace`, `status`.
#[test]
fn readme_commands_work_against_serve_demo() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Node::start(d, MEMORY, &["--demo", "--demo-interval-ms", "200"]);
    let env = [("SWITCHYARD_URL", node.url.as_str())];

    let out = run(d, &["tail", "-n", "1"], &env);
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains(" corr="), "{line}");

    let out = run(d, &["pub", "orders.placed", r#"{"id": 42}"#], &env);
    assert!(out.status.success(), "{out:?}");
    let ids: Value = serde_json::from_slice(&out.stdout).unwrap();
    let corr = ids["correlation_id"].as_str().unwrap().to_owned();
    assert!(ids["id"].is_string(), "{ids}");

    let out = run(d, &["send", "cpm.query.runs", "{}"], &env);
    assert!(out.status.success(), "{out:?}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(reply["payload"]["runs"].is_array(), "{reply}");

    let deadline = Instant::now() + WAIT;
    loop {
        let out = run(d, &["dlq", "list"], &env);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let last = text.lines().last().unwrap_or_default().to_owned();
        // `K of N dead letter(s)`, or `no dead letters (total 0)` while there are none.
        if last.ends_with("dead letter(s)") && !last.starts_with("0 of") {
            break;
        }
        assert!(last.starts_with("no dead letters"), "{text}");
        assert!(
            Instant::now() < deadline,
            "no dead letter within {WAIT:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = run(d, &["topology", "--format", "mermaid"], &env);
    assert!(out.status.success(), "{out:?}");
    let mermaid = String::from_utf8(out.stdout).unwrap();
    assert!(
        mermaid.starts_with("flowchart") && mermaid.contains("frontend"),
        "{mermaid}"
    );

    let out = run(d, &["trace", &corr], &env);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("orders.placed")
    );

    let out = run(d, &["status"], &env);
    assert!(out.status.success(), "{out:?}");
    let status = String::from_utf8(out.stdout).unwrap();
    assert!(
        status.contains("ready") && status.contains("memory"),
        "{status}"
    );
}
