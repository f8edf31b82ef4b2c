//! A node with contracts and validation on, driven by the CLI.

use super::*;

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
// ---- a node with contracts and validation, driven by the CLI ----

pub(crate) struct TestNode {
    rt: tokio::runtime::Runtime,
    url: String,
    bus: Bus,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), switchyard_node::NodeError>>>,
    subs: Vec<Subscription>,
    delivered: std::sync::Arc<std::sync::Mutex<Vec<Envelope>>>,
    _dir: tempfile::TempDir,
}

pub(crate) fn registry(with_users: bool) -> Registry {
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
    pub(crate) fn start(with_users: bool) -> TestNode {
        TestNode::start_with(
            registry(with_users),
            Validator::new(&registry(with_users)).unwrap(),
        )
    }

    /// The same node with these contracts and this validator.
    pub(crate) fn start_with(contracts: Registry, validator: Validator) -> TestNode {
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
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &self.url]);
        let out = bin(&all);
        no_panic(&out);
        out
    }

    /// Waits until `n` `orders.#` messages were delivered.
    pub(crate) fn delivered(&self, n: usize) -> Vec<Envelope> {
        let until = Instant::now() + WAIT;
        loop {
            let got = self.delivered.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20)); // polling with a deadline
        }
    }

    pub(crate) fn dlq(&self) -> Value {
        let out = self.run(&["dlq", "list", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    }

    /// Waits until the dead-letter queue holds `n` entries.
    pub(crate) fn dlq_len(&self, n: u64) -> Value {
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

/// One frame over the node's WebSocket, and the answer with its id.
fn ws_call(node: &TestNode, frame: Value) -> Value {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let url = format!("{}/v1/ws", node.url.replacen("http://", "ws://", 1));
    node.rt.block_on(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let id = frame["id"].clone();
        ws.send(Ws::Text(frame.to_string().into())).await.unwrap();
        loop {
            let next = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("an answer in time")
                .unwrap()
                .unwrap();
            if let Ws::Text(t) = next {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        }
    })
}

/// gateway.md: in a `publish_batch` "one invalid message refuses the whole batch, naming it
/// (`messages[3]: ...`), and nothing is published": a payload that breaks its schema is an
/// invalid message too.
#[test]
fn a_websocket_batch_with_one_message_breaking_its_schema_publishes_nothing() {
    let node = TestNode::start(false);
    let good = json!({"topic": "orders.placed", "payload": {"order": "o-1", "amount": 1}});
    let bad = json!({"topic": "orders.placed", "payload": {"order": "o-3", "amount": "зерно"}});
    let answer = ws_call(
        &node,
        json!({"op": "publish_batch", "id": "b1", "messages": [good.clone(), good, bad]}),
    );
    assert_eq!(answer["op"], "error", "{answer}");
    assert_eq!(answer["error"]["kind"], "invalid_message", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("messages[2]"), "{answer}");
    assert!(message.contains("/amount"), "{answer}");
    node.rt.block_on(node.bus.run_until_idle());
    let delivered = node.delivered.lock().unwrap().len();
    assert_eq!(
        delivered, 0,
        "part of a refused batch was delivered: {answer}"
    );

    // A valid batch goes out whole; a WS publish naming a unicode field is refused alone.
    let ok = ws_call(
        &node,
        json!({"op": "publish_batch", "id": "b2", "messages": [
            {"topic": "orders.placed", "payload": {"order": "o-4", "amount": 4}},
            {"topic": "orders.placed", "payload": {"order": "o-5", "amount": 5, "note": "ok ✓"}}]}),
    );
    assert_eq!(ok["op"], "published_batch", "{ok}");
    assert_eq!(node.delivered(2).len(), 2);
    let one = ws_call(
        &node,
        json!({"op": "send", "id": "c1", "topic": "billing.charge", "payload": {"account": "a", "cents": 1.5}}),
    );
    assert_eq!(one["op"], "error", "{one}");
    assert_eq!(one["error"]["kind"], "invalid_message", "{one}");
    assert!(
        one["error"]["message"].as_str().unwrap().contains("/cents"),
        "{one}"
    );
}

/// A `warn` topic: the CLI publish is accepted (exit 0) and delivered; the enforced topic next
/// to it still refuses.
#[test]
fn a_warn_topic_accepts_and_delivers_while_enforce_refuses() {
    let node = warn_node();
    let out = node.run(&["pub", "orders.placed", r#"{"order": 5}"#]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(node.delivered(1).len(), 1);
    let out = node.run(&["send", "billing.charge", r#"{"cents": 5}"#]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid_message"), "{}", stderr(&out));
}

fn warn_node() -> TestNode {
    let validator = Validator::new(&registry(false))
        .unwrap()
        .mode("orders.#", switchyard_contracts::Enforcement::Warn)
        .unwrap();
    TestNode::start_with(registry(false), validator)
}

/// docs/contracts.md: a `warn` one "is logged, counted in
/// `switchyard_gateway_invalid_total{mode="warn"}` and delivered" (node.rs says the same).
/// The counter never reaches the node's `/metrics`. Failed 3 of 3:
///
/// ```text
/// no switchyard_gateway_invalid_total{mode="warn"} in /metrics; its lines with `invalid` or
/// the gateway's request count: [
///     "switchyard_gateway_requests_total{route=\"/v1/publish/{topic}\",method=\"POST\",status=\"202\"} 1",
/// ]
/// ```
///
/// Cause: `AppState::check_contract` (crates/switchyard-node/src/state.rs:103 and :107) calls
/// `::metrics::counter!` outside `GatewayMetrics::record`, so it goes to the global recorder,
/// which the node never installs (its `/metrics` renders its own local recorder).
#[test]
fn the_gateway_invalid_counter_is_in_the_metrics() {
    let node = warn_node();
    let out = node.run(&["pub", "orders.placed", r#"{"order": 5}"#]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = node.run(&["send", "billing.charge", r#"{"cents": 5}"#]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let metrics = node.rt.block_on(async {
        reqwest::get(format!("{}/metrics", node.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for mode in ["warn", "enforce"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("switchyard_gateway_invalid_total")
                    && l.contains(&format!("mode=\"{mode}\""))
            })
            .unwrap_or_else(|| {
                let gateway: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        l.contains("invalid")
                            || l.starts_with("switchyard_gateway_requests_total")
                    })
                    .collect();
                panic!("no switchyard_gateway_invalid_total{{mode=\"{mode}\"}} in /metrics; its lines with `invalid` or the gateway's request count: {gateway:#?}")
            });
        assert!(line.trim_end().ends_with(" 1"), "{line}");
    }
}

/// The served document follows the bus: a subscription started after the first export is a
/// consumer in the next one.
#[test]
fn a_live_subscription_appears_in_the_next_export() {
    let node = TestNode::start(false);
    let out = node.run(&["schema", "export"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let sub = node.rt.block_on(async {
        node.bus
            .subscribe(
                "ledger-writer",
                "billing.#",
                handler_fn(|_env| async move { Ok::<_, BoxError>(switchyard::Outcome::Ack) }),
            )
            .start()
            .await
            .unwrap()
    });
    let out = node.run(&["schema", "export"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let after: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let has = |doc: &Value| {
        doc["operations"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("ledger-writer") && k.contains(".receive.Charge"))
    };
    assert!(!has(&before), "{}", before["operations"]);
    assert!(has(&after), "{}", after["operations"]);
    drop(sub);
}
