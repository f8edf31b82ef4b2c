//! The operator commands against a node with auth on: the right token works; no token, a
//! wrong one or one without the grant exits 1 naming the node's 401 or 403, and nothing
//! refused reaches the bus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::{Value, json};
use switchyard::{BoxError, Kind, Message, Subscription};
use switchyard_node::auth::sha256_hex;
use switchyard_node::{Node, NodeConfig};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "right-token";
const READER_TOKEN: &str = "reader-token";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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

/// A node with auth on, on an ephemeral port, served by its own runtime: principal `ops`
/// (token [`TOKEN`]) may publish `orders.#` and send `users.*`; `reader` ([`READER_TOKEN`])
/// may only subscribe.
struct AuthNode {
    rt: tokio::runtime::Runtime,
    url: String,
    recorder: switchyard::testkit::Recorder,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), switchyard_node::NodeError>>>,
    _subs: Vec<Subscription>,
    /// The CLI's default profile directory, empty, so no user profile is picked up.
    config_home: tempfile::TempDir,
}

impl AuthNode {
    fn start() -> AuthNode {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let toml = format!(
            r##"
listen = "127.0.0.1:0"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "ops"
publish = ["orders.#"]
send = ["users.*"]
[[auth.principals]]
name = "reader"
subscribe = ["#"]
[[auth.tokens]]
principal = "ops"
sha256 = "{}"
[[auth.tokens]]
principal = "reader"
sha256 = "{}"
"##,
            sha256_hex(TOKEN.as_bytes()),
            sha256_hex(READER_TOKEN.as_bytes())
        );
        let (url, recorder, stop, served, subs) = rt.block_on(async {
            let node = Node::start(NodeConfig::from_toml(&toml).unwrap())
                .await
                .unwrap();
            let bus = node.bus().clone();
            let create = bus
                .handle(|cmd: CreateUser, _ctx| async move {
                    Ok::<_, BoxError>(json!({"id": 1, "name": cmd.name}))
                })
                .start()
                .await
                .unwrap();
            let recorder = switchyard::testkit::Recorder::start(&bus, "orders.#")
                .await
                .unwrap();
            let listener = node.bind().await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let served = tokio::spawn(node.serve(listener, async {
                let _ = rx.await;
            }));
            (url, recorder, tx, served, vec![create])
        });
        AuthNode {
            rt,
            url,
            recorder,
            stop: Some(stop),
            served: Some(served),
            _subs: subs,
            config_home: tempfile::tempdir().unwrap(),
        }
    }

    /// `switchyard <args> --url <this node> [--token <token>]`.
    fn run(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut cmd = Command::cargo_bin("switchyard").unwrap();
        cmd.args(args)
            .args(["--url", &self.url])
            .env_remove("SWITCHYARD_TOKEN")
            .env_remove("SWITCHYARD_CONFIG")
            .env_remove("SWITCHYARD_URL")
            .env("XDG_CONFIG_HOME", self.config_home.path())
            .timeout(WAIT);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        cmd.output().unwrap()
    }

    /// Events on `orders.#` the bus has seen so far.
    fn published(&self) -> usize {
        self.recorder.envelopes().len()
    }
}

impl Drop for AuthNode {
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

/// Exit 1, and the message names `status` and `kind`.
fn refused(out: &Output, status: &str, kind: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {} stderr {}",
        stdout(out),
        stderr(out)
    );
    let err = stderr(out);
    assert!(err.contains(status), "names {status}: {err}");
    assert!(err.contains(kind), "names {kind}: {err}");
    assert!(stdout(out).is_empty(), "nothing printed as a result");
}

#[test]
fn pub_and_send_with_the_right_token_succeed_and_without_it_exit_1_naming_401_or_403() {
    let node = AuthNode::start();

    // The right token.
    let out = node.run(&["pub", "orders.placed", r#"{"order": 1}"#], Some(TOKEN));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let got = node.rt.block_on(node.recorder.wait_for(1, WAIT)).unwrap();
    assert_eq!(v["id"].as_str().unwrap(), got[0].id.to_string());
    let out = node.run(&["send", "users.create", r#"{"name": "ada"}"#], Some(TOKEN));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["payload"], json!({"id": 1, "name": "ada"}));

    // No token, a wrong one: 401.
    for token in [None, Some("wrong-token")] {
        refused(
            &node.run(&["pub", "orders.placed", r#"{"order": 2}"#], token),
            "401",
            "unauthenticated",
        );
        refused(
            &node.run(&["send", "users.create", r#"{"name": "eve"}"#], token),
            "401",
            "unauthenticated",
        );
    }
    // A valid token without the grant: 403.
    refused(
        &node.run(
            &["pub", "orders.placed", r#"{"order": 3}"#],
            Some(READER_TOKEN),
        ),
        "403",
        "forbidden",
    );
    refused(
        &node.run(
            &["send", "users.create", r#"{"name": "eve"}"#],
            Some(READER_TOKEN),
        ),
        "403",
        "forbidden",
    );
    // The right token, a topic outside its grant: 403.
    refused(
        &node.run(&["pub", "billing.paid", "{}"], Some(TOKEN)),
        "403",
        "forbidden",
    );

    // Nothing refused reached the bus: a marker published last is the second event.
    let out = node.run(&["pub", "orders.marker", "{}"], Some(TOKEN));
    assert!(out.status.success(), "{}", stderr(&out));
    let got = node.rt.block_on(node.recorder.wait_for(2, WAIT)).unwrap();
    assert_eq!(got[1].topic.as_str(), "orders.marker");
    assert_eq!(node.published(), 2, "only the two allowed publishes");
}
