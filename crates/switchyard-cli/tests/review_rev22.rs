//! Review rev22, outside in: message contracts as a team uses them through the `switchyard`
//! binary. Schemas generated from real Rust types are evolved and checked with
//! `switchyard schema check` (the documented CI step), hostile input to every `schema`
//! command gives a typed error and the documented exit code, a node with validation on
//! refuses invalid `pub`/`send` through the CLI with 422 `invalid_message` naming the field,
//! and `switchyard schema export` gives a document that matches the registry, validates
//! against the official AsyncAPI 3.0.0 schema and changes when a type is added.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::{BoxError, Bus, Envelope, Kind, Message, Subscription, handler_fn};
use switchyard_contracts::{Contract, JsonSchema, Registry, Validator};
use switchyard_node::{Node, NodeConfig};

const WAIT: Duration = Duration::from_secs(30);

// ---- the team's message, in three generations ----

mod v1 {
    use super::*;
    /// The first release.
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(crate = "switchyard_contracts::schemars")]
    pub struct OrderPlaced {
        pub order: String,
        pub amount: u64,
    }
}
mod v2 {
    use super::*;
    /// v2: an optional field added (compatible both ways).
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(crate = "switchyard_contracts::schemars")]
    pub struct OrderPlaced {
        pub order: String,
        pub amount: u64,
        pub note: Option<String>,
    }
}
mod renamed {
    use super::*;
    /// A rename of `amount` (breaks: old data has no `amount_cents`).
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(crate = "switchyard_contracts::schemars")]
    pub struct OrderPlaced {
        pub order: String,
        pub amount_cents: u64,
    }
}
mod retyped {
    use super::*;
    /// A type change of `amount` (integer → string: breaks both ways).
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(crate = "switchyard_contracts::schemars")]
    pub struct OrderPlaced {
        pub order: String,
        pub amount: String,
    }
}

/// The registered type of the node tests (`orders.placed`, version 2).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
struct OrderPlaced {
    order: String,
    amount: u64,
    note: Option<String>,
}
impl Message for OrderPlaced {
    const TOPIC: &'static str = "orders.placed";
    const VERSION: u32 = 2;
}
impl Contract for OrderPlaced {}

/// A command with a schema (`billing.charge`).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
struct Charge {
    account: String,
    cents: u64,
}
impl Message for Charge {
    const TOPIC: &'static str = "billing.charge";
    const KIND: Kind = Kind::Command;
}
impl switchyard::Command for Charge {
    type Output = Value;
}
impl Contract for Charge {}

/// A type added later (`users.renamed`, unicode in its doc and field values).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
struct UserRenamed {
    /// Der neue Name — 名前 🚀
    name: String,
}
impl Message for UserRenamed {
    const TOPIC: &'static str = "users.renamed";
}
impl Contract for UserRenamed {}

fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(switchyard_contracts::schemars::schema_for!(T)).unwrap()
}

fn write(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    p.to_str().unwrap().to_owned()
}

fn bin(args: &[&str]) -> Output {
    Command::cargo_bin("switchyard")
        .unwrap()
        .args(args)
        .env_remove("SWITCHYARD_TOKEN")
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_URL")
        .timeout(WAIT)
        .output()
        .unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed by a signal")
}
fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
fn no_panic(out: &Output) {
    let err = stderr(out);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "the binary panicked: {err}"
    );
}

// ---- schema check: the CI step on real evolution ----

#[test]
fn ci_check_passes_an_added_optional_field_and_catches_a_rename_and_a_type_change() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "v1.json", &schema_of::<v1::OrderPlaced>());
    let added = write(dir.path(), "v2.json", &schema_of::<v2::OrderPlaced>());
    let renamed = write(
        dir.path(),
        "renamed.json",
        &schema_of::<renamed::OrderPlaced>(),
    );
    let retyped = write(
        dir.path(),
        "retyped.json",
        &schema_of::<retyped::OrderPlaced>(),
    );

    for mode in ["backward", "forward", "full"] {
        let out = bin(&["schema", "check", &old, &added, "--mode", mode]);
        no_panic(&out);
        assert_eq!(code(&out), 0, "{mode}: {}{}", stdout(&out), stderr(&out));
        assert_eq!(stdout(&out).trim(), format!("compatible ({mode})"));
    }

    // The rename: new readers need `amount_cents`, which old data never has.
    let out = bin(&["schema", "check", &old, &renamed]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("/amount_cents"), "{}", stdout(&out));
    // Old readers need `amount`, which new data no longer has.
    let out = bin(&["schema", "check", &old, &renamed, "--mode", "forward"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("/amount"), "{}", stdout(&out));

    // The type change breaks every mode and names the field and both types.
    for mode in ["backward", "forward", "full"] {
        let out = bin(&["schema", "check", &old, &retyped, "--mode", mode, "--json"]);
        no_panic(&out);
        assert_eq!(code(&out), 1, "{mode}: {}{}", stdout(&out), stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let issues = v["issues"].as_array().unwrap();
        assert!(issues.iter().any(|i| i["path"] == "/amount"), "{mode}: {v}");
    }
    // A schema against itself is compatible in every mode.
    let out = bin(&["schema", "check", &old, &old, "--mode", "full"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

#[test]
fn check_with_unicode_field_names_reports_them_intact() {
    let dir = tempfile::tempdir().unwrap();
    let old =
        json!({"type": "object", "properties": {"名前": {"type": "string"}}, "required": ["名前"]});
    let new = json!({"type": "object",
        "properties": {"名前": {"type": "integer"}, "prénom🚀": {"type": "string"}},
        "required": ["名前", "prénom🚀"]});
    let (o, n) = (
        write(dir.path(), "o.json", &old),
        write(dir.path(), "n.json", &new),
    );
    let out = bin(&["schema", "check", &o, &n]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("/名前"), "{text}");
    assert!(text.contains("prénom🚀"), "{text}");
    // A unicode file name too.
    let u = write(dir.path(), "schéma-名前.json", &old);
    let out = bin(&["schema", "check", &u, &u]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn check_of_a_huge_schema_finishes_and_finds_the_one_break() {
    let dir = tempfile::tempdir().unwrap();
    let mut props = serde_json::Map::new();
    for i in 0..5000 {
        props.insert(format!("field_{i}"), json!({"type": "integer"}));
    }
    // ...and a deep nest of 200 objects.
    let mut deep = json!({"type": "integer"});
    for _ in 0..40 {
        deep = json!({"type": "object", "properties": {"x": deep}, "required": ["x"]});
    }
    props.insert("deep".into(), deep);
    let required: Vec<String> = (0..5000).map(|i| format!("field_{i}")).collect();
    let old = json!({"type": "object", "properties": props, "required": required});
    let mut new = old.clone();
    new["properties"]["field_4321"] = json!({"type": "string"});
    let (o, n) = (
        write(dir.path(), "o.json", &old),
        write(dir.path(), "n.json", &new),
    );
    let started = Instant::now();
    let out = bin(&["schema", "check", &o, &n, "--json"]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let issues = v["issues"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "{v}");
    assert_eq!(issues[0]["path"], "/field_4321");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let out = bin(&["schema", "check", &o, &o, "--mode", "full"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // Past serde_json's nesting limit (128) the file is refused with the reason, exit 2, not a
    // stack overflow.
    let mut deeper = json!({"type": "integer"});
    for _ in 0..200 {
        deeper = json!({"type": "object", "properties": {"x": deeper}});
    }
    let d = write(dir.path(), "d.json", &deeper);
    let out = bin(&["schema", "check", &d, &d]);
    no_panic(&out);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("recursion limit"), "{}", stderr(&out));
}

/// Every bad input to `schema check` is exit 2 with a `switchyard:`/`error:` line, never a
/// panic, never a verdict.
#[test]
fn check_with_bad_input_is_exit_2_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", &schema_of::<v1::OrderPlaced>());
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "").unwrap();
    let binary = dir.path().join("binary.json");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x7b]).unwrap();
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, r#"{"type": "object", "properties": {"#).unwrap();
    let dirpath = dir.path().to_str().unwrap().to_owned();
    for bad in [
        empty.to_str().unwrap(),
        binary.to_str().unwrap(),
        truncated.to_str().unwrap(),
        dirpath.as_str(),
        "/nonexistent/schema.json",
    ] {
        for args in [
            vec!["schema", "check", &good, bad],
            vec!["schema", "check", bad, &good],
        ] {
            let out = bin(&args);
            no_panic(&out);
            assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
            assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
            assert!(
                stderr(&out).contains("switchyard:") || stderr(&out).contains("error:"),
                "{args:?}: {}",
                stderr(&out)
            );
        }
    }
    // Argument errors.
    for args in [
        vec!["schema", "check"],
        vec!["schema", "check", &good],
        vec!["schema", "check", &good, &good, &good],
        vec!["schema", "check", &good, &good, "--mode"],
        vec!["schema", "check", &good, &good, "--mode", "BACKWARDS"],
        vec!["schema", "frobnicate"],
        vec!["schema"],
    ] {
        let out = bin(&args);
        no_panic(&out);
        assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
    }
}

/// Valid JSON that is not a schema object (`42`, `[]`, `"s"`, `null`): a typed answer, never a
/// panic. JSON Schema allows `true` / `false` as schemas; anything else is not one.
#[test]
fn check_of_json_that_is_not_a_schema_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", &schema_of::<v1::OrderPlaced>());
    for (i, v) in [
        json!(42),
        json!([]),
        json!("s"),
        json!(null),
        json!({"type": 7}),
        json!({"$ref": "#/nowhere"}),
        json!({"$ref": "#"}),
    ]
    .iter()
    .enumerate()
    {
        let bad = write(dir.path(), &format!("bad{i}.json"), v);
        for args in [
            vec!["schema", "check", &good, &bad, "--mode", "full"],
            vec!["schema", "check", &bad, &good, "--mode", "full"],
            vec!["schema", "check", &bad, &bad, "--mode", "full"],
        ] {
            let out = bin(&args);
            no_panic(&out);
            let c = code(&out);
            assert!(
                matches!(c, 0..=2),
                "{v}: {args:?}: exit {c}: {}",
                stderr(&out)
            );
        }
    }
}

// ---- a node with contracts and validation, driven by the CLI ----

struct TestNode {
    rt: tokio::runtime::Runtime,
    url: String,
    bus: Bus,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), switchyard_node::NodeError>>>,
    subs: Vec<Subscription>,
    delivered: std::sync::Arc<std::sync::Mutex<Vec<Envelope>>>,
    _dir: tempfile::TempDir,
}

fn registry(with_users: bool) -> Registry {
    let mut reg = Registry::new();
    reg.register::<OrderPlaced>()
        .unwrap()
        .produces::<OrderPlaced>("shop")
        .unwrap()
        .register::<Charge>()
        .unwrap();
    if with_users {
        reg.register::<UserRenamed>().unwrap();
    }
    reg
}

impl TestNode {
    /// A node on the embedded log in a temp dir with the registry as its contracts and
    /// validation `enforce`, a subscription recording every `orders.#` delivery and a
    /// `billing.charge` handler.
    fn start(with_users: bool) -> TestNode {
        TestNode::start_with(
            registry(with_users),
            Validator::new(&registry(with_users)).unwrap(),
        )
    }

    /// The same node with these contracts and this validator.
    fn start_with(contracts: Registry, validator: Validator) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let delivered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = delivered.clone();
        let toml = format!(
            "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"log\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        );
        let (url, bus, stop, served, subs) = rt.block_on(async move {
            let node = Node::start(NodeConfig::from_toml(&toml).unwrap())
                .await
                .unwrap();
            node.set_contracts(contracts);
            node.set_validation(validator);
            let bus = node.bus().clone();
            let orders = bus
                .subscribe(
                    "orders-recorder",
                    "orders.#",
                    handler_fn(move |env: Envelope| {
                        let seen = seen.clone();
                        async move {
                            seen.lock().unwrap().push(env);
                            Ok::<_, BoxError>(switchyard::Outcome::Ack)
                        }
                    }),
                )
                .start()
                .await
                .unwrap();
            let charge = bus
                .handle(
                    |c: Charge, _ctx| async move { Ok::<_, BoxError>(json!({"charged": c.cents})) },
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
            (url, bus, tx, served, vec![orders, charge])
        });
        TestNode {
            rt,
            url,
            bus,
            stop: Some(stop),
            served: Some(served),
            subs,
            delivered,
            _dir: dir,
        }
    }

    /// `switchyard <args> --url <this node>`.
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &self.url]);
        let out = bin(&all);
        no_panic(&out);
        out
    }

    /// Waits until `n` `orders.#` messages were delivered.
    fn delivered(&self, n: usize) -> Vec<Envelope> {
        let until = Instant::now() + WAIT;
        loop {
            let got = self.delivered.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20)); // polling with a deadline
        }
    }

    fn dlq(&self) -> Value {
        let out = self.run(&["dlq", "list", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    }

    /// Waits until the dead-letter queue holds `n` entries.
    fn dlq_len(&self, n: u64) -> Value {
        let until = Instant::now() + WAIT;
        loop {
            let v = self.dlq();
            if v["total"].as_u64() >= Some(n) || Instant::now() > until {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.subs.clear();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = self.rt.block_on(served);
        }
    }
}

#[test]
fn cli_pub_of_an_invalid_payload_is_exit_1_with_422_naming_the_field_and_a_valid_one_arrives() {
    let node = TestNode::start(false);
    // Wrong type for `amount`, `order` missing.
    let out = node.run(&["pub", "orders.placed", r#"{"amount": "ten"}"#]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("422"), "{err}");
    assert!(err.contains("invalid_message"), "{err}");
    assert!(err.contains("/amount"), "the wrong field is named: {err}");
    assert!(err.contains("order"), "the missing field is named: {err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    // Unicode in a valid payload goes through as written.
    let valid = r#"{"order": "注文-🚀", "amount": 1250, "note": "für Zoë"}"#;
    let out = node.run(&["pub", "orders.placed", valid]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let got = node.delivered(1);
    assert_eq!(got.len(), 1);
    let v: Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(v["order"], "注文-🚀");

    // The refused one was dead-lettered (rejected, the error naming the path), never delivered.
    let dlq = node.dlq_len(1);
    assert_eq!(dlq["total"], 1, "{dlq}");
    let entry = &dlq["items"][0];
    assert_eq!(entry["reason"], "rejected", "{entry}");
    assert!(
        entry["error"].as_str().unwrap().contains("/amount"),
        "{entry}"
    );
    assert_eq!(entry["message"]["payload"]["amount"], "ten", "{entry}");
    node.rt.block_on(node.bus.run_until_idle());
    assert_eq!(
        node.delivered.lock().unwrap().len(),
        1,
        "the invalid one was delivered"
    );

    // `dlq show` of it prints the message.
    let id = entry["id"].as_str().unwrap().to_owned();
    let out = node.run(&["dlq", "show", &id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("ten"), "{}", stdout(&out));
}

#[test]
fn cli_send_of_an_invalid_command_is_refused_before_the_handler_and_a_valid_one_is_answered() {
    let node = TestNode::start(false);
    let out = node.run(&[
        "send",
        "billing.charge",
        r#"{"account": "a-1", "cents": -5}"#,
    ]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("422") && err.contains("invalid_message"),
        "{err}"
    );
    assert!(err.contains("/cents"), "{err}");

    let out = node.run(&[
        "send",
        "billing.charge",
        r#"{"account": "a-1", "cents": 500}"#,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let reply: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(reply["payload"]["charged"], 500, "{reply}");

    // `request` too.
    let out = node.run(&["request", "billing.charge", r#"{"account": 7, "cents": 1}"#]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("/account"), "{}", stderr(&out));
    // A payload that is not JSON at all is the gateway's `malformed_json`, not a panic.
    let out = node.run(&["pub", "orders.placed", "{not json"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("malformed_json"), "{}", stderr(&out));
    // Raw bytes with another content type on a validated topic: invalid (not JSON), refused.
    let out = node.run(&[
        "pub",
        "orders.placed",
        "\u{1}\u{2}",
        "--content-type",
        "application/octet-stream",
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid_message"), "{}", stderr(&out));
}

/// What arrives over the transport (here the log, written by the node's own bus as another
/// process would) invalid is dead-lettered with its bytes as they were, never delivered.
#[test]
fn an_invalid_message_from_the_transport_is_dead_lettered_with_its_raw_bytes() {
    let node = TestNode::start(false);
    let topic = switchyard::Topic::new("orders.placed").unwrap();
    let raw: &[u8] = b"{\"order\": 1, \"amount\": \"\xc3\xa9\"}";
    node.rt
        .block_on(
            node.bus
                .publish_envelope(Envelope::new(topic.clone(), raw.to_vec())),
        )
        .unwrap();
    let dlq = node.dlq_len(1);
    assert_eq!(dlq["total"], 1, "{dlq}");
    let entry = &dlq["items"][0];
    assert_eq!(entry["reason"], "rejected", "{entry}");
    assert!(
        entry["error"].as_str().unwrap().contains("/order"),
        "{entry}"
    );
    let payload = &entry["message"]["payload"];
    assert_eq!(payload["amount"], "é", "{entry}");
    node.rt.block_on(node.bus.run_until_idle());
    assert!(node.delivered.lock().unwrap().is_empty(), "delivered");

    // Bytes that are not JSON (not even UTF-8) claimed as JSON: dead-lettered too, shown as
    // `payload_base64` with exactly those bytes, and replaying it is refused again, not lost.
    let garbage: &[u8] = b"\xff\x00{\"order\":";
    node.rt
        .block_on(
            node.bus
                .publish_envelope(Envelope::new(topic, garbage.to_vec())),
        )
        .unwrap();
    let dlq = node.dlq_len(2);
    assert_eq!(dlq["total"], 2, "{dlq}");
    let entry = dlq["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["message"]["payload_base64"].is_string())
        .unwrap_or_else(|| panic!("no entry with payload_base64: {dlq}"));
    assert_eq!(entry["reason"], "rejected", "{entry}");
    let b64 = entry["message"]["payload_base64"].as_str().unwrap();
    assert_eq!(b64, "/wB7Im9yZGVyIjo=", "{entry}");

    // Replayed with the CLI: whatever the exit code, the message is not lost; it is in the
    // queue again (refused at the replay, or dead-lettered again when it comes back).
    let id = entry["id"].as_str().unwrap().to_owned();
    let out = node.run(&["dlq", "replay", &id]);
    assert!(matches!(code(&out), 0 | 1), "{}", stderr(&out));
    let until = Instant::now() + WAIT;
    let again = loop {
        let v = node.dlq();
        let found = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"]["payload_base64"] == b64);
        if found || Instant::now() > until {
            break (found, v);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(again.0, "the replayed invalid message is gone: {}", again.1);
    node.rt.block_on(node.bus.run_until_idle());
    assert!(node.delivered.lock().unwrap().is_empty(), "delivered");
}

fn official_asyncapi_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!(
        "../../switchyard-contracts/tests/fixtures/asyncapi-3.0.0.schema.json"
    ))
    .unwrap();
    jsonschema::draft7::new(&schema).unwrap()
}

fn export_from(node: &TestNode) -> Value {
    let out = node.run(&["schema", "export"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[test]
fn schema_export_matches_the_registry_validates_and_changes_when_a_type_is_added() {
    let validator = official_asyncapi_validator();
    let node = TestNode::start(false);
    let doc = export_from(&node);
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let messages = doc["components"]["messages"].as_object().unwrap();
    let names: std::collections::BTreeSet<&str> = messages.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["Charge", "OrderPlaced"].into_iter().collect(),
        "{doc}"
    );
    let channels = doc["channels"].as_object().unwrap();
    let addresses: std::collections::BTreeSet<&str> = channels
        .values()
        .filter_map(|c| c["address"].as_str())
        .collect();
    assert!(
        addresses.contains("orders.placed") && addresses.contains("billing.charge"),
        "{addresses:?}"
    );
    // The payload is the registered schema: `order` and `amount` required, `note` optional.
    let payload = &messages["OrderPlaced"]["payload"];
    let required: Vec<&str> = payload["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["order", "amount"], "{payload}");
    assert!(payload["properties"]["note"].is_object(), "{payload}");
    // The producer declared, the live subscription a consumer.
    let ops = doc["operations"].as_object().unwrap();
    assert!(
        ops.keys().any(|k| k.starts_with("shop.send.")),
        "{:?}",
        ops.keys()
    );
    assert!(
        ops.keys()
            .any(|k| k.contains("orders-recorder") && k.contains(".receive.")),
        "{:?}",
        ops.keys()
    );
    // To a file: the same document.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ドキュメント.json");
    let out = node.run(&["schema", "export", "-o", f.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let from_file: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(from_file, doc);
    // ...and from that file as Python, every registered type a class.
    let out = bin(&[
        "schema",
        "export",
        "--lang",
        "python",
        "--from",
        f.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("class OrderPlaced:") && stdout(&out).contains("class Charge:"),
        "{}",
        stdout(&out)
    );
    drop(node);

    // A node whose registry has one more type: the document has it, its doc comment's unicode
    // intact, and still validates.
    let node = TestNode::start(true);
    let doc2 = export_from(&node);
    let errors: Vec<String> = validator
        .iter_errors(&doc2)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let m = &doc2["components"]["messages"]["UserRenamed"];
    assert!(m.is_object(), "{doc2}");
    assert!(m.to_string().contains("名前 🚀"), "{m}");
    assert_ne!(
        doc2["components"]["messages"],
        doc["components"]["messages"]
    );
}

/// `schema export` with bad input: typed errors and the documented codes, no panic.
#[test]
fn schema_export_with_bad_input_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let notjson = dir.path().join("x.json");
    std::fs::write(&notjson, "{{{").unwrap();
    let empty_doc = write(dir.path(), "e.json", &json!({"asyncapi": "3.0.0"}));
    let wrong = write(
        dir.path(),
        "w.json",
        &json!({"components": {"messages": 5}}),
    );
    // An unreadable or non-JSON `--from` is exit 2, as `schema check`'s unreadable input is.
    for args in [
        vec!["schema", "export", "--from", "/nonexistent/doc.json"],
        vec!["schema", "export", "--from", notjson.to_str().unwrap()],
        vec![
            "schema",
            "export",
            "--lang",
            "python",
            "--from",
            notjson.to_str().unwrap(),
        ],
    ] {
        let out = bin(&args);
        no_panic(&out);
        assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
        assert!(
            stderr(&out).contains("switchyard:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    for args in [
        vec!["schema", "export", "--lang", "python", "--from", &wrong],
        // Nothing listens there.
        vec!["schema", "export", "--url", "http://127.0.0.1:9"],
    ] {
        let out = bin(&args);
        no_panic(&out);
        assert_eq!(code(&out), 1, "{args:?}: {}{}", stdout(&out), stderr(&out));
        assert!(
            stderr(&out).contains("switchyard:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A document with no messages is an empty module, or a reason, but not a panic.
    let out = bin(&["schema", "export", "--lang", "python", "--from", &empty_doc]);
    no_panic(&out);
    assert!(matches!(code(&out), 0 | 1), "{}", stderr(&out));
    // Unwritable output: exit 1 naming the file.
    let out = bin(&[
        "schema",
        "export",
        "--from",
        &empty_doc,
        "-o",
        "/nonexistent/dir/out.json",
    ]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write output"),
        "{}",
        stderr(&out)
    );
    for args in [
        vec!["schema", "export", "--lang"],
        vec!["schema", "export", "--lang", "rust"],
        vec!["schema", "export", "-o"],
    ] {
        let out = bin(&args);
        no_panic(&out);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
}

/// Version 3 of a ledger entry; versions 1 and 2 still sit on the log.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(crate = "switchyard_contracts::schemars")]
struct LedgerEntry {
    entry: String,
    amount_cents: u64,
    currency: String,
}
impl Message for LedgerEntry {
    const TOPIC: &'static str = "orders.ledger";
    const VERSION: u32 = 3;
}
impl Contract for LedgerEntry {}

/// At the node, the validator given the upcasters checks an old message as the `1 → 2 → 3`
/// chain brings it to version 3 (on a copy) and delivers it as written; one the chain cannot
/// bring there is dead-lettered with the step that failed.
#[test]
fn at_the_node_a_v1_message_on_the_transport_is_validated_through_the_v1_to_v3_chain() {
    let upcasters = switchyard_contracts::Upcasters::new()
        .step_for::<LedgerEntry, _, _>(1, |mut v| {
            v["currency"] = json!("EUR");
            Ok::<_, String>(v)
        })
        .step_for::<LedgerEntry, _, _>(2, |mut v| {
            let amount = v["amount"].as_f64().ok_or("`amount` is not a number")?;
            v["amount_cents"] = json!((amount * 100.0).round() as u64);
            Ok::<_, String>(v)
        });
    let mut reg = Registry::new();
    reg.register::<LedgerEntry>().unwrap();
    let validator = Validator::new(&reg).unwrap().upcasters(upcasters);
    let node = TestNode::start_with(reg, validator);

    let topic = switchyard::Topic::new("orders.ledger").unwrap();
    let v1 = |payload: &str| {
        let mut env = Envelope::new(topic.clone(), payload.to_owned());
        env.type_name = Some("LedgerEntry".into());
        env.type_version = 1;
        env
    };
    // Valid only once upcast: v1 has no `currency` and no `amount_cents`.
    node.rt
        .block_on(
            node.bus
                .publish_envelope(v1(r#"{"entry": "e-1", "amount": 12.5}"#)),
        )
        .unwrap();
    // Step 2 fails on it: `amount` is not a number.
    node.rt
        .block_on(
            node.bus
                .publish_envelope(v1(r#"{"entry": "e-2", "amount": "lots"}"#)),
        )
        .unwrap();
    // A v3 message that is valid as it is.
    let mut v3 = Envelope::new(
        topic.clone(),
        r#"{"entry": "e-3", "amount_cents": 5, "currency": "NOK"}"#.to_owned(),
    );
    v3.type_name = Some("LedgerEntry".into());
    v3.type_version = 3;
    node.rt.block_on(node.bus.publish_envelope(v3)).unwrap();

    let got = node.delivered(2);
    let entries: Vec<Value> = got
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    // Delivered as written (the upcast copy was only checked).
    assert_eq!(entries[0], json!({"entry": "e-1", "amount": 12.5}));
    assert_eq!(got[0].type_version, 1);
    assert_eq!(entries[1]["entry"], "e-3");

    let dlq = node.dlq_len(1);
    assert_eq!(dlq["total"], 1, "{dlq}");
    let entry = &dlq["items"][0];
    assert_eq!(entry["reason"], "rejected", "{entry}");
    let error = entry["error"].as_str().unwrap();
    assert!(error.contains("not upcast"), "{error}");
    assert!(error.contains("`amount` is not a number"), "{error}");
    node.rt.block_on(node.bus.run_until_idle());
    assert_eq!(node.delivered.lock().unwrap().len(), 2);
}
