//! Configuration: keys, defaults, errors, the environment and the reference of docs/gateway.md.

use super::*;

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
