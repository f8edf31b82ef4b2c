//! Loading the node config: defaults, file, `SWITCHYARD_*` environment, and errors that name
//! the key, the value and what is allowed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)] // tests fail by panicking

use std::path::Path;
use std::time::Duration;

use figment::Jail;
use switchyard_node::config::{ConfigError, SlowClientPolicy};
use switchyard_node::{NodeConfig, TransportConfig};

fn invalid(e: ConfigError) -> (String, String, String) {
    match e {
        ConfigError::Invalid {
            key,
            value,
            allowed,
        } => (key, value, allowed),
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn no_file_means_the_log_under_switchyard_data_on_loopback_7878() {
    Jail::expect_with(|_jail| {
        let c = NodeConfig::load(None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7878");
        match &c.transport {
            TransportConfig::Log(l) => assert_eq!(l.data_dir, Path::new("./switchyard-data")),
            other => panic!("default transport is the log, got {other:?}"),
        }
        assert!(!c.auth.enabled);
        Ok(())
    });
}

#[test]
fn the_environment_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "node.toml",
            r#"
listen = "127.0.0.1:9000"
[transport]
kind = "log"
data_dir = "/tmp/from-file"
[ws]
slow_client = "disconnect"
"#,
        )?;
        jail.set_env("SWITCHYARD_LISTEN", "127.0.0.1:9100");
        jail.set_env("SWITCHYARD_LIMITS__MAX_BODY_BYTES", "2048");
        jail.set_env("SWITCHYARD_TRANSPORT__DATA_DIR", "/tmp/from-env");
        // The operator CLI's variables are not node settings and must not break loading.
        jail.set_env("SWITCHYARD_URL", "http://elsewhere");
        jail.set_env("SWITCHYARD_TOKEN", "secret");
        let c = NodeConfig::load(Some(Path::new("node.toml"))).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.limits.max_body_bytes, 2048);
        assert_eq!(c.ws.slow_client, SlowClientPolicy::Disconnect);
        match &c.transport {
            TransportConfig::Log(l) => assert_eq!(l.data_dir, Path::new("/tmp/from-env")),
            other => panic!("{other:?}"),
        }
        jail.set_env("SWITCHYARD_TRANSPORT__KIND", "memory");
        jail.clear_env();
        jail.set_env("SWITCHYARD_TRANSPORT__KIND", "nats");
        jail.set_env("SWITCHYARD_TRANSPORT__URL", "nats://127.0.0.1:4333");
        let e = NodeConfig::load(None).unwrap_err();
        assert!(e.to_string().contains("transport.streams"), "{e}");
        jail.set_env(
            "SWITCHYARD_TRANSPORT__STREAMS",
            "[{name=\"events\",patterns=[\"orders.#\"]}]",
        );
        let c = NodeConfig::load(None).unwrap();
        match &c.transport {
            TransportConfig::Nats(n) => assert_eq!(n.url, "nats://127.0.0.1:4333"),
            other => panic!("{other:?}"),
        }
        Ok(())
    });
}

/// A command line's listen address (`switchyard serve --listen`) is the top layer and is what
/// validation judges: a file's or `SWITCHYARD_LISTEN`'s non-loopback address without auth is
/// refused by `load`, not once the flag replaces it with a loopback one.
#[test]
fn a_listen_override_is_applied_before_validation() {
    Jail::expect_with(|jail| {
        jail.create_file("node.toml", "listen = \"0.0.0.0:7878\"\n")?;
        let file = Some(Path::new("node.toml"));
        let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (key, value, _) = invalid(NodeConfig::load(file).unwrap_err());
        assert_eq!((key.as_str(), value.as_str()), ("listen", "0.0.0.0:7878"));
        let c = NodeConfig::load_with_listen(file, Some(loopback)).unwrap();
        assert_eq!(c.listen, loopback);
        jail.set_env("SWITCHYARD_LISTEN", "0.0.0.0:8080");
        let c = NodeConfig::load_with_listen(None, Some(loopback)).unwrap();
        assert_eq!(c.listen, loopback);
        // The override is judged too.
        let open: std::net::SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let (key, value, _) = invalid(NodeConfig::load_with_listen(None, Some(open)).unwrap_err());
        assert_eq!((key.as_str(), value.as_str()), ("listen", "0.0.0.0:9000"));
        Ok(())
    });
}

#[test]
fn a_missing_file_is_an_error() {
    let e = NodeConfig::load(Some(Path::new("/nonexistent/switchyard.toml"))).unwrap_err();
    assert!(matches!(e, ConfigError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/switchyard.toml"));
}

#[test]
fn unknown_keys_and_bad_kinds_are_refused_by_name() {
    let e = NodeConfig::from_toml("[limits]\nmax_body_byte = 5\n").unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("max_body_byte") && text.contains("max_body_bytes"),
        "{text}"
    );

    let e = NodeConfig::from_toml("[transport]\nkind = \"kafka\"\n").unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("kafka") && text.contains("memory") && text.contains("nats"),
        "{text}"
    );

    let e = NodeConfig::from_toml("[ws]\nslow_client = \"block\"\n").unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("block") && text.contains("drop_oldest") && text.contains("disconnect"),
        "{text}"
    );

    let e = NodeConfig::from_toml("listen = \"nowhere\"\n").unwrap_err();
    assert!(e.to_string().contains("listen"), "{e}");
}

#[test]
fn a_public_address_without_auth_is_refused_with_an_explanation() {
    let (key, value, allowed) =
        invalid(NodeConfig::from_toml("listen = \"0.0.0.0:7878\"\n").unwrap_err());
    assert_eq!(key, "listen");
    assert_eq!(value, "0.0.0.0:7878");
    assert!(allowed.contains("auth.enabled"), "{allowed}");
}

#[test]
fn out_of_range_values_name_key_value_and_allowed() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "[limits]\nmax_body_bytes = 0\n",
            "limits.max_body_bytes",
            "0",
            "at least 1",
        ),
        (
            "[limits]\ndefault_request_timeout_ms = 100\nmax_request_timeout_ms = 10\n",
            "limits.max_request_timeout_ms",
            "10",
            "at least limits.default_request_timeout_ms (100)",
        ),
        (
            "[ws]\noutbound_buffer = 0\n",
            "ws.outbound_buffer",
            "0",
            "at least 1",
        ),
        (
            "[auth]\nenabled = true\n[[auth.principals]]\nname = \"p\"\n[[auth.tokens]]\nprincipal = \"p\"\nsha256 = \"xyz\"\n",
            "auth.tokens[0].sha256",
            "\"xyz\"",
            "64 lower-case hex digits",
        ),
        (
            "[auth]\nenabled = true\n[[auth.tokens]]\nprincipal = \"ghost\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
            "auth.tokens[0].principal",
            "\"ghost\"",
            "the name of a principal",
        ),
        (
            "[[auth.principals]]\nname = \"p\"\npublish = [\"a..b\"]\n",
            "auth.principals[0].publish[0]",
            "\"a..b\"",
            "a topic pattern",
        ),
        (
            "[auth]\nenabled = true\n",
            "auth.enabled",
            "true",
            "auth.tokens or auth.jwt",
        ),
        (
            "[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"short\"\n",
            "auth.jwt.secret",
            "(5 bytes)",
            "at least 32 bytes",
        ),
        (
            "[transport]\nkind = \"nats\"\nurl = \"http://x\"\n[[transport.streams]]\nname = \"s\"\npatterns = [\"a.#\"]\n",
            "transport.url",
            "http://x",
            "nats://",
        ),
        (
            "[transport]\nkind = \"nats\"\nephemeral_inactive_s = 0\n[[transport.streams]]\nname = \"s\"\npatterns = [\"a.#\"]\n",
            "transport.ephemeral_inactive_s",
            "0",
            "at least 1",
        ),
        (
            "[transport]\nkind = \"nats\"\nmax_age_s = 60\n[[transport.streams]]\nname = \"s\"\npatterns = [\"a.#\"]\n",
            "transport.max_age_s",
            "60",
            "0 (no age limit) or at least 120",
        ),
        (
            "[[ingest.zmq]]\nendpoint = \"udp://x\"\ntopic = \"a.b\"\n",
            "ingest.zmq[0].endpoint",
            "\"udp://x\"",
            "tcp://",
        ),
        (
            "[[ingest.zmq]]\nendpoint = \"tcp://127.0.0.1:5555\"\ntopic = \"a.*\"\n",
            "ingest.zmq[0].topic",
            "\"a.*\"",
            "a topic",
        ),
        (
            "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
            "tls.cert",
            "/nonexistent/cert.pem",
            "an existing PEM file",
        ),
    ];
    for (toml, want_key, want_value, want_allowed) in cases {
        let (key, value, allowed) = invalid(NodeConfig::from_toml(toml).unwrap_err());
        assert_eq!(&key, want_key, "{toml}");
        assert_eq!(&value, want_value, "{toml}");
        assert!(allowed.contains(want_allowed), "{toml}: {allowed}");
    }
}

#[tokio::test]
async fn an_invalid_config_does_not_start_a_node() {
    let mut c = NodeConfig::from_toml("[transport]\nkind = \"memory\"\n").unwrap();
    c.limits.max_message_bytes = 0;
    let e = switchyard_node::Node::start(c).await.unwrap_err();
    assert!(e.to_string().contains("limits.max_message_bytes"), "{e}");
}

/// A NATS transport config with `keys` in its `[transport]` table.
fn nats_toml(keys: &str) -> String {
    format!(
        "[transport]\nkind = \"nats\"\n{keys}[[transport.streams]]\nname = \"s\"\npatterns = [\"a.#\"]\n"
    )
}

fn nats(c: &NodeConfig) -> &switchyard_node::config::NatsTransportConfig {
    match &c.transport {
        TransportConfig::Nats(n) => n,
        other => panic!("{other:?}"),
    }
}

#[test]
fn retention_is_bounded_by_default_for_nats_and_the_log() {
    let c = NodeConfig::from_toml(&nats_toml("")).unwrap();
    let nc = nats(&c).nats_config();
    assert_eq!(nc.max_age, Some(Duration::from_secs(7 * 24 * 3600)));
    assert_eq!(nc.max_bytes, Some(1 << 30));
    assert_eq!(nc.ephemeral_inactive_threshold, Duration::from_secs(300));
    assert_eq!(
        nc.durable_inactive_threshold,
        Some(Duration::from_secs(30 * 24 * 3600))
    );
    let r = NodeConfig::from_toml("").unwrap().retention.log_retention();
    assert_eq!(r.max_bytes, Some(1 << 30));
    assert_eq!(r.max_age, Some(Duration::from_secs(7 * 24 * 3600)));
}

#[test]
fn retention_keys_come_from_the_file_and_the_environment_and_zero_means_unlimited() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "node.toml",
            &(nats_toml(
                "max_age_s = 3600\nmax_bytes = 0\nephemeral_inactive_s = 30\ndurable_inactive_s = 0\n",
            ) + "[retention]\nlog_max_bytes = 8192\nlog_max_age_s = 0\n"),
        )?;
        jail.set_env("SWITCHYARD_TRANSPORT__MAX_AGE_S", "600");
        let c = NodeConfig::load(Some(Path::new("node.toml"))).unwrap();
        let nc = nats(&c).nats_config();
        assert_eq!(nc.max_age, Some(Duration::from_secs(600)), "env wins");
        assert_eq!(nc.max_bytes, None, "0 is no size limit");
        assert_eq!(nc.ephemeral_inactive_threshold, Duration::from_secs(30));
        assert_eq!(nc.durable_inactive_threshold, None, "0 is never");
        let r = c.retention.log_retention();
        assert_eq!(r.max_bytes, Some(8192));
        assert_eq!(r.max_age, None);
        Ok(())
    });
}

#[test]
fn a_negative_or_non_numeric_retention_value_names_the_key_and_the_value() {
    let e = NodeConfig::from_toml(&nats_toml("max_bytes = -1\n")).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("transport.max_bytes") && text.contains("-1") && text.contains("u64"),
        "{text}"
    );
    let e = NodeConfig::from_toml("[retention]\nlog_max_age_s = \"week\"\n").unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("log_max_age_s") && text.contains("week"),
        "{text}"
    );
}

/// The node's log retention from the config removes old segments: small limits, several
/// segments' worth of records, then only about what the limit allows is kept.
#[tokio::test]
async fn log_retention_from_the_config_removes_old_segments() {
    use switchyard::{Envelope, Publisher, Topic};
    let dir = tempfile::tempdir().unwrap();
    let c = NodeConfig::from_toml("[retention]\nlog_max_bytes = 8192\n").unwrap();
    let log = switchyard_log::LogTransport::open(
        switchyard_log::LogConfig::new(dir.path())
            .with_segment_bytes(4096)
            .with_retention(c.retention.log_retention()),
    )
    .unwrap();
    let topic = Topic::new("r.x").unwrap();
    for _ in 0..10 {
        let batch = (0..10)
            .map(|_| Envelope::new(topic.clone(), vec![7u8; 200]))
            .collect();
        log.publish(batch).await.unwrap();
    }
    log.enforce_retention().await.unwrap();
    let info = log
        .streams()
        .into_iter()
        .find(|s| s.name == "default")
        .unwrap();
    assert!(info.first_offset > 0, "old segments removed: {info:?}");
    assert!(
        info.bytes <= 8192 + 4096,
        "at most the limit plus one segment: {info:?}"
    );
    log.close(std::time::Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
}

const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

#[test]
fn the_encryption_section_reads_keys_and_topics_from_the_file_and_the_environment() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "node.toml",
            &format!("[encryption]\ntopics = [\"payments.#\"]\n[encryption.keys]\nk1 = \"{K1}\"\n"),
        )?;
        // Rotation from the environment: a second key, made the active one.
        jail.set_env("SWITCHYARD_ENCRYPTION__KEYS__K2", K2);
        jail.set_env("SWITCHYARD_ENCRYPTION__ACTIVE", "k2");
        let c = NodeConfig::load(Some(Path::new("node.toml"))).unwrap();
        let section = c.encryption.as_ref().unwrap();
        assert_eq!(section.topics, ["payments.#"]);
        let enc = section.build().unwrap();
        assert_eq!(enc.keyring().ids().collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!(enc.keyring().active_id(), Some("k2"));
        let debug = format!("{c:?}");
        assert!(!debug.contains(K1) && !debug.contains(K2), "{debug}");
        Ok(())
    });
}

#[test]
fn an_invalid_encryption_section_names_the_key_at_fault() {
    let load = |section: &str| NodeConfig::from_toml(&format!("[encryption]\n{section}"));
    let keys = format!("[encryption.keys]\nk1 = \"{K1}\"\nk2 = \"{K2}\"\n");
    let (key, _, allowed) = invalid(load(&format!("topics = [\"a.#\"]\n{keys}")).unwrap_err());
    assert_eq!(key, "encryption.active");
    assert!(
        allowed.contains("required with more than one key"),
        "{allowed}"
    );
    let (key, _, allowed) =
        invalid(load(&format!("topics = [\"a.#\"]\nactive = \"k3\"\n{keys}")).unwrap_err());
    assert_eq!(key, "encryption.active");
    assert!(allowed.contains("no key k3"), "{allowed}");
    let (key, value, allowed) =
        invalid(load("topics = [\"a.#\"]\n[encryption.keys]\nshort = \"AQID\"\n").unwrap_err());
    assert_eq!(
        (key.as_str(), value.as_str()),
        ("encryption.keys.short", "(hidden)")
    );
    assert!(allowed.contains("3 bytes, a key has 32"), "{allowed}");
    let (key, _, _) =
        invalid(load("topics = [\"a.#\"]\n[encryption.keys]\nk1 = \"not base64!\"\n").unwrap_err());
    assert_eq!(key, "encryption.keys.k1");
    let (key, _, _) =
        invalid(load(&format!("topics = []\n[encryption.keys]\nk1 = \"{K1}\"\n")).unwrap_err());
    assert_eq!(key, "encryption.topics");
    let (key, _, _) = invalid(load("topics = [\"a.#\"]\n[encryption.keys]\n").unwrap_err());
    assert_eq!(key, "encryption.keys");
}

#[test]
fn max_connections_per_principal_defaults_to_the_global_limit_and_is_checked() {
    let c = NodeConfig::from_toml("[ws]\nmax_connections = 50\n").unwrap();
    assert_eq!(c.ws.max_connections_per_principal, None);
    assert_eq!(c.ws.per_principal_limit(), 50, "unset: the global value");
    let c = NodeConfig::from_toml("[ws]\nmax_connections_per_principal = 3\n").unwrap();
    assert_eq!(c.ws.per_principal_limit(), 3);
    let (key, value, allowed) =
        invalid(NodeConfig::from_toml("[ws]\nmax_connections_per_principal = 0\n").unwrap_err());
    assert_eq!(
        (key.as_str(), value.as_str(), allowed.as_str()),
        ("ws.max_connections_per_principal", "0", "at least 1")
    );
    let (key, value, allowed) = invalid(
        NodeConfig::from_toml("[ws]\nmax_connections = 10\nmax_connections_per_principal = 11\n")
            .unwrap_err(),
    );
    assert_eq!(
        (key.as_str(), value.as_str(), allowed.as_str()),
        (
            "ws.max_connections_per_principal",
            "11",
            "at most ws.max_connections (10)"
        )
    );
}

/// `bus.max_hold_ms`: the bus's default (5 minutes) when not set, from the file, the
/// environment over the file, 0 accepted (keep-alive off).
#[test]
fn bus_max_hold_comes_from_the_file_and_the_environment() {
    let c = NodeConfig::from_toml("").unwrap();
    assert_eq!(
        Duration::from_millis(c.bus.max_hold_ms),
        switchyard::DEFAULT_MAX_HOLD
    );
    assert_eq!(
        NodeConfig::from_toml("[bus]\nmax_hold_ms = 0\n")
            .unwrap()
            .bus
            .max_hold_ms,
        0
    );
    Jail::expect_with(|jail| {
        jail.create_file("node.toml", "[bus]\nmax_hold_ms = 60000\n")?;
        let c = NodeConfig::load(Some(Path::new("node.toml"))).unwrap();
        assert_eq!(c.bus.max_hold_ms, 60_000);
        jail.set_env("SWITCHYARD_BUS__MAX_HOLD_MS", "2500");
        let c = NodeConfig::load(Some(Path::new("node.toml"))).unwrap();
        assert_eq!(c.bus.max_hold_ms, 2_500, "env wins");
        Ok(())
    });
    let e = NodeConfig::from_toml("[bus]\nmax_hold_ms = \"5m\"\n").unwrap_err();
    assert!(e.to_string().contains("max_hold_ms"), "{e}");
}
