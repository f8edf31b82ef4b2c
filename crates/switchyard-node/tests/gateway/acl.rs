//! The ACL matrix: every principal × publish / subscribe / send / admin × an allowed and a
//! denied topic; the status code of each call, and nothing denied reaching a handler.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use switchyard::{Envelope, Outcome, handler_fn};
use switchyard_node::auth::{Action, sha256_hex};
use switchyard_node::{Auth, NodeConfig};

use crate::common::{TestNode, client, error_of};

fn config() -> String {
    let t = |s: &str| sha256_hex(s.as_bytes());
    format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "publisher"
publish = ["orders.#"]
[[auth.principals]]
name = "subscriber"
subscribe = ["orders.#"]
[[auth.principals]]
name = "sender"
send = ["users.*"]
[[auth.principals]]
name = "operator"
admin = true
[[auth.tokens]]
principal = "publisher"
sha256 = "{}"
[[auth.tokens]]
principal = "subscriber"
sha256 = "{}"
[[auth.tokens]]
principal = "sender"
sha256 = "{}"
[[auth.tokens]]
principal = "operator"
sha256 = "{}"
"#,
        t("pub-token"),
        t("sub-token"),
        t("send-token"),
        t("op-token")
    )
}

const PRINCIPALS: [(&str, &str); 4] = [
    ("publisher", "pub-token"),
    ("subscriber", "sub-token"),
    ("sender", "send-token"),
    ("operator", "op-token"),
];

/// Which (principal, action) pairs are allowed on the "allowed" topic; the "denied" topic
/// is allowed to nobody (admin has no topic: its denied case is a principal without it).
fn allowed(principal: &str, action: Action) -> bool {
    matches!(
        (principal, action),
        ("publisher", Action::Publish)
            | ("subscriber", Action::Subscribe)
            | ("sender", Action::Send)
            | ("operator", Action::Admin)
    )
}

#[tokio::test]
async fn acl_matrix_status_codes_and_no_denied_delivery() {
    let seen: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let node = TestNode::start(&config()).await;
    for (name, pattern, command) in [
        ("events", "#", false),
        ("create", "users.create", true),
        ("secret-cmd", "secret.cmd", true),
    ] {
        let s = seen.clone();
        let handler = handler_fn(move |env: Envelope| {
            let s = s.clone();
            async move {
                *s.lock().unwrap().entry(env.topic.to_string()).or_default() += 1;
                let reply = env.reply("{}");
                Ok::<_, std::convert::Infallible>(if env.kind == switchyard::Kind::Event {
                    Outcome::Ack
                } else {
                    Outcome::reply(reply)
                })
            }
        });
        let b = if command {
            node.bus.handle_envelope(name, pattern, handler)
        } else {
            node.bus.subscribe(name, pattern, handler)
        };
        b.start().await.unwrap().detach();
    }

    let http = client();
    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
    for (principal, token) in PRINCIPALS {
        for action in [Action::Publish, Action::Send, Action::Admin] {
            for (topic_allowed, topic) in match action {
                Action::Publish => [(true, "orders.placed"), (false, "secret.event")],
                Action::Send => [(true, "users.create"), (false, "secret.cmd")],
                _ => [(true, ""), (false, "")],
            } {
                if action == Action::Admin && !topic_allowed {
                    continue;
                }
                let req = match action {
                    Action::Publish => http.post(format!("{}/v1/publish/{topic}", node.url)),
                    Action::Send => http.post(format!("{}/v1/send/{topic}", node.url)),
                    _ => http.get(format!("{}/v1/subscriptions", node.url)),
                };
                let res = req.bearer_auth(token).body("{}").send().await.unwrap();
                let ok = topic_allowed && allowed(principal, action);
                let want = match (ok, action) {
                    (true, Action::Publish) => 202,
                    (true, _) => 200,
                    (false, _) => 403,
                };
                let status = res.status().as_u16();
                assert_eq!(
                    status,
                    want,
                    "{principal} {action:?} {topic:?}: {}",
                    res.text().await.unwrap_or_default()
                );
                if want == 403 {
                    // The reason names the principal (checked on a fresh request).
                } else if action != Action::Admin {
                    *expected.entry(topic.to_owned()).or_default() += 1;
                }
            }
        }
        // Admin-only endpoints all refuse a principal without the grant.
        for path in [
            "/v1/topics",
            "/v1/dlq",
            "/v1/status",
            "/v1/stats",
            "/metrics",
            "/v1/topology",
        ] {
            let res = http
                .get(format!("{}{path}", node.url))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let want = if principal == "operator" { 200 } else { 403 };
            assert_eq!(res.status().as_u16(), want, "{principal} GET {path}");
            if want == 403 {
                let (_, kind, message) = error_of(res).await;
                assert_eq!(kind, "forbidden");
                assert!(
                    message.contains(principal) && message.contains("admin"),
                    "{message}"
                );
            }
        }
    }

    // No credentials, or wrong ones: 401 everywhere, with a reason.
    for (req, reason) in [
        (
            http.post(format!("{}/v1/publish/orders.placed", node.url)),
            "missing bearer token",
        ),
        (
            http.post(format!("{}/v1/publish/orders.placed", node.url))
                .bearer_auth("nope"),
            "unknown bearer token",
        ),
        (
            http.post(format!("{}/v1/send/users.create", node.url))
                .header("authorization", "Basic dXNlcjpwYXNz"),
            "Bearer",
        ),
        (
            http.get(format!("{}/v1/dlq", node.url)),
            "missing bearer token",
        ),
    ] {
        let (status, kind, message) = error_of(req.body("{}").send().await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (401, "unauthenticated"));
        assert!(message.contains(reason), "{message}");
    }

    node.bus.run_until_idle().await;
    assert_eq!(
        *seen.lock().unwrap(),
        expected,
        "only allowed calls reached handlers"
    );
    assert!(!seen.lock().unwrap().contains_key("secret.event"));
    assert!(!seen.lock().unwrap().contains_key("secret.cmd"));

    // Denials are counted in the metrics.
    let metrics = http
        .get(format!("{}/metrics", node.url))
        .bearer_auth("op-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let forbidden_publish = metrics
        .lines()
        .find(|l| {
            l.starts_with("switchyard_gateway_denials_total")
                && l.contains("kind=\"forbidden\"")
                && l.contains("action=\"publish\"")
        })
        .expect("forbidden publish denials exported");
    // publisher→secret.event, and subscriber, sender, operator on both topics: 1 + 3×2.
    assert!(forbidden_publish.ends_with(" 7"), "{forbidden_publish}");
    node.stop().await.unwrap();
}

/// Subscribe has no HTTP route (it is a WebSocket op); the matrix checks it on the auth API
/// the WebSocket module calls, with the same principals and tokens.
#[test]
fn subscribe_grants_on_the_auth_api() {
    let config = NodeConfig::from_toml(&config()).unwrap();
    let auth = Auth::from_config(&config.auth).unwrap();
    for (principal, token) in PRINCIPALS {
        let p = auth.authenticate(Some(token)).unwrap();
        assert_eq!(p.name(), principal);
        for pattern in ["orders.#", "orders.*.eu", "orders.placed"] {
            assert_eq!(
                auth.authorize(&p, Action::Subscribe, pattern).is_ok(),
                allowed(principal, Action::Subscribe),
                "{principal} subscribe {pattern}"
            );
        }
        for pattern in ["#", "secret.#", "*.placed"] {
            let denied = auth.authorize(&p, Action::Subscribe, pattern).unwrap_err();
            assert_eq!(denied.kind, switchyard_node::ErrorKind::Forbidden);
            assert!(denied.reason.contains(pattern));
        }
    }
    assert!(auth.denials().forbidden(Action::Subscribe) >= 12);
    let unauth = auth.authenticate(None).unwrap_err();
    assert_eq!(unauth.kind, switchyard_node::ErrorKind::Unauthenticated);
    assert_eq!(auth.denials().unauthenticated(), 1);
}

#[tokio::test]
async fn jwt_hs256_maps_sub_to_a_principal() {
    let secret = "a-test-secret-that-is-at-least-32-bytes-long";
    let toml = format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[auth.jwt]
algorithm = "HS256"
secret = "{secret}"
issuer = "tests"
[[auth.principals]]
name = "svc"
publish = ["svc.#"]
"#
    );
    let node = TestNode::start(&toml).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |sub: &str, exp: u64, iss: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": sub, "exp": exp, "iss": iss}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let http = client();
    let publish = |t: String, topic: &str| {
        http.post(format!("{}/v1/publish/{topic}", node.url))
            .bearer_auth(t)
            .body("{}")
            .send()
    };
    assert_eq!(
        publish(token("svc", now + 600, "tests"), "svc.up")
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        publish(token("svc", now + 600, "tests"), "other.up")
            .await
            .unwrap()
            .status(),
        403
    );
    let (status, _, message) = error_of(
        publish(token("svc", now - 600, "tests"), "svc.up")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        message.contains("invalid JWT") && message.contains("Expired"),
        "{message}"
    );
    let (status, _, message) = error_of(
        publish(token("svc", now + 600, "evil"), "svc.up")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(message.contains("Issuer"), "{message}");
    let (status, _, message) = error_of(
        publish(token("ghost", now + 600, "tests"), "svc.up")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(message.contains("unknown principal \"ghost\""), "{message}");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "svc", "exp": now + 600, "iss": "tests"}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another"),
    )
    .unwrap();
    let (status, _, message) = error_of(publish(forged, "svc.up").await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(message.contains("InvalidSignature"), "{message}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn publish_rate_is_limited_per_principal() {
    let t = |s: &str| sha256_hex(s.as_bytes());
    let toml = format!(
        r##"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "a"
publish = ["#"]
[[auth.principals]]
name = "b"
publish = ["#"]
[[auth.tokens]]
principal = "a"
sha256 = "{}"
[[auth.tokens]]
principal = "b"
sha256 = "{}"
[limits.publish_rate]
per_second = 1
burst = 3
"##,
        t("ta"),
        t("tb")
    );
    let node = TestNode::start(&toml).await;
    let http = client();
    let publish = |token: &'static str| {
        http.post(format!("{}/v1/publish/x.y", node.url))
            .bearer_auth(token)
            .body("{}")
            .send()
    };
    for _ in 0..3 {
        assert_eq!(publish("ta").await.unwrap().status(), 202);
    }
    let (status, kind, message) = error_of(publish("ta").await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (429, "rate_limited"));
    assert!(
        message.contains("limits.publish_rate") && message.contains("\"a\""),
        "{message}"
    );
    // Another principal has its own bucket.
    assert_eq!(publish("tb").await.unwrap().status(), 202);
    node.stop().await.unwrap();
}

/// With auth on, the dashboard's page and assets load without credentials (they hold no
/// data), and every API call the page makes needs an admin token.
#[tokio::test]
async fn the_dashboard_needs_an_admin_token_for_every_figure() {
    let node = TestNode::start(&config()).await;
    let http = client();
    for asset in [
        "/",
        "/dashboard/app.js",
        "/dashboard/app.css",
        "/dashboard/uPlot.iife.min.js",
        "/dashboard/uPlot.min.css",
        "/dashboard/uPlot.LICENSE",
    ] {
        let res = http.get(node.url(asset)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{asset}");
    }
    let js = http
        .get(node.url("/dashboard/app.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every GET the page makes, as written in app.js: `api("/v1/...")`.
    let mut calls: Vec<String> = js
        .split("api(\"")
        .skip(1)
        .filter_map(|rest| rest.split(['"', '?']).next())
        .map(str::to_owned)
        .filter(|p| !p.ends_with('/') && !p.contains("replay") && !p.contains("purge"))
        .collect();
    calls.sort();
    calls.dedup();
    for needed in [
        "/v1/stats",
        "/v1/stats/history",
        "/v1/health",
        "/v1/alerts",
        "/v1/dlq",
        "/v1/subscriptions",
        "/v1/topology",
    ] {
        assert!(calls.iter().any(|c| c == needed), "{needed} in {calls:?}");
    }
    for path in &calls {
        let none = http.get(node.url(path)).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        let publisher = http
            .get(node.url(path))
            .bearer_auth("pub-token")
            .send()
            .await
            .unwrap();
        assert_eq!(publisher.status(), 403, "{path} as a non-admin");
        let operator = http
            .get(node.url(path))
            .bearer_auth("op-token")
            .send()
            .await
            .unwrap();
        assert_eq!(operator.status(), 200, "{path} as admin");
    }
    node.stop().await.unwrap();
}

/// A DLQ replay is the admin's power: it needs the admin grant and no publish grant on the
/// message's topic (it re-delivers, with its id, topic, payload and headers, a message that
/// was published once; the replay cannot change any of them). A principal with a publish
/// grant on the topic but no admin grant cannot replay.
#[tokio::test]
async fn a_dlq_replay_needs_admin_and_no_publish_grant_on_the_topic() {
    let node = TestNode::start(&config()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    node.bus
        .subscribe(
            "vault",
            "secret.#",
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    if env.header("replay-count").is_none() {
                        return Ok::<_, std::convert::Infallible>(Outcome::reject("not yet"));
                    }
                    let _ = tx.send(env);
                    Ok(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    // On a topic nobody may publish to through the gateway (an application's own message).
    let env = Envelope::new(switchyard::Topic::new("secret.event").unwrap(), "{}");
    let id = env.id.to_string();
    node.bus.publish_envelope(env).await.unwrap();
    node.bus.run_until_idle().await;

    let http = client();
    let replay = |token: &'static str| {
        http.post(node.url("/v1/dlq/replay"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"all": true}"#)
            .send()
    };
    let res = replay("pub-token").await.unwrap();
    assert_eq!(res.status(), 403, "publisher (no admin grant) replays");
    let res = replay("op-token").await.unwrap();
    assert_eq!(res.status(), 200, "operator (admin, no publish grant)");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["replayed"], 1, "{v}");
    let got = crate::common::recv(&mut rx, "the replayed message").await;
    assert_eq!(got.id.to_string(), id);
    node.stop().await.unwrap();
}
