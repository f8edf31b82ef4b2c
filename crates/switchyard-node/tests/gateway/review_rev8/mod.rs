//! Review rev8: the node as an operator runs it and as a client from another language calls
//! it over HTTP: auth on every route, grants and their patterns, metric correctness and
//! cardinality, input hardening, a graceful stop with requests in flight
//! (docs/gateway.md).

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use switchyard_node::auth::sha256_hex;
use switchyard_node::{Node, NodeConfig};
use tokio::sync::mpsc;

use crate::common::{TestNode, client, error_of, forward, recv};

mod starts_and_stops;

const PUB: &str = "rev8-pub-token";
const OPS: &str = "rev8-ops-token";

fn auth_config(extra: &str) -> String {
    format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "shop"
publish = ["orders.*"]
subscribe = ["orders.*"]
send = ["users.*"]
[[auth.principals]]
name = "ops"
admin = true
[[auth.tokens]]
principal = "shop"
sha256 = "{}"
[[auth.tokens]]
principal = "ops"
sha256 = "{}"
{extra}
"#,
        sha256_hex(PUB.as_bytes()),
        sha256_hex(OPS.as_bytes()),
    )
}

/// The value of the one series of `name` whose labels include every `labels` pair.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(node: &TestNode) -> String {
    let res = client()
        .get(node.url("/metrics"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// A subscription on `#` forwarding every envelope.
async fn watch_all(node: &TestNode) -> mpsc::UnboundedReceiver<Envelope> {
    let (tx, rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("rev8-watch", "#", forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    rx
}

/// A client picks the HTTP method: `/metrics` must not get one new series per method a
/// client invents (bounded label cardinality).
#[tokio::test]
async fn invented_http_methods_do_not_grow_the_request_series() {
    let node = TestNode::start(&auth_config("")).await;
    let http = client();
    for i in 0..40 {
        let method = reqwest::Method::from_bytes(format!("REV8X{i}").as_bytes()).unwrap();
        let res = http
            .request(method, node.url("/v1/stats"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let text = metrics(&node).await;
    let invented: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_gateway_requests_total") && l.contains("REV8X"))
        .collect();
    assert!(
        invented.len() <= 1,
        "{} series from invented methods, e.g. {:?}",
        invented.len(),
        invented.first()
    );
}

/// The request counters equal the traffic sent, by route template and status, the denials
/// are counted once each, and no series carries a topic the client chose.
#[tokio::test]
async fn request_counters_equal_the_traffic_and_never_carry_client_topics() {
    let node = TestNode::start(&auth_config("")).await;
    let mut rx = watch_all(&node).await;
    let http = client();
    for i in 0..7 {
        let res = http
            .post(node.url(&format!("/v1/publish/orders.rev8topic{i}")))
            .bearer_auth(PUB)
            .json(&json!({"n": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    for i in 0..3 {
        let res = http
            .post(node.url(&format!("/v1/publish/secret.rev8denied{i}")))
            .bearer_auth(PUB)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
    }
    for _ in 0..2 {
        let res = http
            .post(node.url("/v1/publish/orders.x"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    for i in 0..7 {
        let env = recv(&mut rx, "a published event").await;
        assert_eq!(env.topic.as_str(), format!("orders.rev8topic{i}"));
    }
    let text = metrics(&node).await;
    let route = ("route", "/v1/publish/{topic}");
    let count = |status: &str| {
        series(
            &text,
            "switchyard_gateway_requests_total",
            &[route, ("method", "POST"), ("status", status)],
        )
    };
    assert_eq!(count("202"), Some(7.0), "{text}");
    assert_eq!(count("403"), Some(3.0), "{text}");
    assert_eq!(count("401"), Some(2.0), "{text}");
    assert_eq!(
        series(
            &text,
            "switchyard_gateway_denials_total",
            &[("kind", "forbidden"), ("action", "publish")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "switchyard_gateway_denials_total",
            &[("kind", "unauthenticated")]
        ),
        Some(2.0),
        "{text}"
    );
    let leaked: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("rev8topic") || l.contains("rev8denied"))
        .collect();
    assert!(
        leaked.is_empty(),
        "{} series carry a client-chosen topic, e.g. {:?}",
        leaked.len(),
        leaked.first()
    );
    // An unknown path is one `unmatched` series, not one per path.
    for i in 0..5 {
        let res = http
            .get(node.url(&format!("/rev8/nowhere/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }
    let text = metrics(&node).await;
    assert!(
        !text.contains("/rev8/nowhere"),
        "a client path became a label"
    );
}

/// `?token=` is accepted on `/v1/ws` only: on every other route it is no credential.
#[tokio::test]
async fn a_query_token_is_no_credential_outside_the_websocket() {
    let node = TestNode::start(&auth_config("")).await;
    let http = client();
    for (method, path) in [
        ("GET", "/v1/dlq"),
        ("GET", "/metrics"),
        ("GET", "/v1/stats"),
        ("GET", "/v1/status"),
        ("POST", "/v1/publish/orders.a"),
        ("POST", "/v1/send/users.create"),
        ("GET", "/v1/ws/../dlq"),
    ] {
        let req = match method {
            "GET" => http.get(node.url(&format!("{path}?token={OPS}"))),
            _ => http
                .post(node.url(&format!("{path}?token={OPS}")))
                .json(&json!({})),
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        assert!(
            status == 401 || status == 404,
            "{method} {path}?token= answered {status}"
        );
        if status == 401 {
            let (_, kind, message) = error_of(res).await;
            assert_eq!(kind, "unauthenticated");
            assert!(message.contains("missing bearer token"), "{message}");
        }
    }
}

/// Every admin route refuses a principal without the grant (403 naming it and `admin`) and
/// a caller without credentials (401); the unauthenticated routes answer without any.
#[tokio::test]
async fn every_admin_route_refuses_non_admins_and_anonymous_callers() {
    let node = TestNode::start(&auth_config("")).await;
    let http = client();
    let routes: [(&str, &str); 14] = [
        ("GET", "/v1/stream"),
        ("GET", "/v1/stats/history"),
        ("GET", "/v1/health"),
        ("GET", "/v1/alerts"),
        ("GET", "/v1/asyncapi.json"),
        ("GET", "/v1/trace/01J9Z5V7D3K4M0Q5W8Y2B6C1E0"),
        ("GET", "/v1/dlq/replays?ids=01J9Z5V7D3K4M0Q5W8Y2B6C1E0"),
        ("GET", "/v1/dlq/01J9Z5V7D3K4M0Q5W8Y2B6C1E0"),
        ("POST", "/v1/dlq/replay"),
        ("POST", "/v1/dlq/purge"),
        ("GET", "/v1/subscriptions"),
        ("GET", "/v1/topology?format=mermaid"),
        ("GET", "/v1/topics"),
        ("GET", "/metrics"),
    ];
    for (method, path) in routes {
        for token in [Some(PUB), None] {
            let mut req = match method {
                "GET" => http.get(node.url(path)),
                _ => http.post(node.url(path)).json(&json!({"all": true})),
            };
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let (status, kind, message) = error_of(req.send().await.unwrap()).await;
            if token.is_some() {
                assert_eq!(
                    (status, kind.as_str()),
                    (403, "forbidden"),
                    "{method} {path}"
                );
                assert!(
                    message.contains("shop") && message.contains("admin"),
                    "{message}"
                );
            } else {
                assert_eq!(
                    (status, kind.as_str()),
                    (401, "unauthenticated"),
                    "{method} {path}"
                );
            }
        }
    }
    for path in ["/health", "/ready", "/v1/openapi.json"] {
        let res = http.get(node.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
}

/// A publisher cannot replay or purge a dead letter (the entry stays), whatever it may
/// publish itself.
#[tokio::test]
async fn a_non_admin_cannot_replay_or_purge_and_the_entry_stays() {
    let node = TestNode::start(&auth_config("")).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    node.bus
        .subscribe(
            "rejecter",
            "orders.*",
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(env.id.to_string());
                    Ok::<_, std::convert::Infallible>(Outcome::reject("no"))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let res = http
        .post(node.url("/v1/publish/orders.placed"))
        .bearer_auth(PUB)
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let _ = recv(&mut rx, "the first delivery").await;
    node.bus.run_until_idle().await;
    let list: Value = http
        .get(node.url("/v1/dlq"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "{list}");
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();
    for path in ["/v1/dlq/replay", "/v1/dlq/purge"] {
        for body in [json!({"all": true}), json!({"ids": [id]})] {
            let (status, kind, _) = error_of(
                http.post(node.url(path))
                    .bearer_auth(PUB)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!((status, kind.as_str()), (403, "forbidden"), "{path} {body}");
        }
    }
    let list: Value = http
        .get(node.url("/v1/dlq"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "the entry stays: {list}");
    assert!(rx.try_recv().is_err(), "nothing was replayed");
}

/// Grants are patterns: `orders.*` covers exactly one more segment; a topic that is not a
/// topic (wildcards, empty segments) is refused as such, never published.
#[tokio::test]
async fn publish_grants_cover_exactly_their_pattern_and_bad_topics_never_publish() {
    let node = TestNode::start(&auth_config("")).await;
    let mut rx = watch_all(&node).await;
    let http = client();
    let post = |topic: &str| {
        http.post(node.url(&format!("/v1/publish/{topic}")))
            .bearer_auth(PUB)
            .json(&json!({}))
            .send()
    };
    for topic in [
        "orders",
        "orders.a.b",
        "ordersx.a",
        "secret.orders",
        "Orders.a",
    ] {
        let (status, kind, message) = error_of(post(topic).await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (403, "forbidden"), "{topic}");
        assert!(message.contains("publish"), "{message}");
    }
    for topic in [
        "orders.*",
        "orders.%23",
        "orders..a",
        "orders.",
        "%2Eorders",
    ] {
        let res = post(topic).await.unwrap();
        let status = res.status().as_u16();
        assert!(status == 400 || status == 403, "{topic}: {status}");
        let (_, kind, message) = error_of(res).await;
        assert!(
            kind == "invalid_topic" || kind == "forbidden",
            "{topic}: {kind} {message}"
        );
    }
    let res = post("orders.placed").await.unwrap();
    assert_eq!(res.status(), 202);
    let env = recv(&mut rx, "the allowed publish").await;
    assert_eq!(
        env.topic.as_str(),
        "orders.placed",
        "nothing else got through"
    );
}

/// "the topic or pattern breaks a rule" is `400 invalid_topic`: a publisher granted
/// `orders.*` who publishes to the wildcard `orders.*` is told the topic is invalid, not that
/// it lacks a grant.
#[tokio::test]
async fn a_wildcard_topic_in_a_publish_is_invalid_topic_not_forbidden() {
    let node = TestNode::start(&auth_config("")).await;
    let http = client();
    for topic in ["orders.*", "orders.%23", "orders..a"] {
        let res = http
            .post(node.url(&format!("/v1/publish/{topic}")))
            .bearer_auth(PUB)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "invalid_topic"),
            "{topic}: {message}"
        );
    }
}

/// A grant that is not a valid pattern is a configuration error naming it; the node does
/// not start with a grant that silently matches nothing (or everything).
#[tokio::test]
async fn an_invalid_grant_pattern_is_refused_at_start_naming_it() {
    for bad in ["orders..x", "", "orders.#x", "or ders.*"] {
        let toml = format!(
            r#"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "p"
publish = ["{bad}"]
[[auth.tokens]]
principal = "p"
sha256 = "{}"
"#,
            sha256_hex(b"t")
        );
        let started = match NodeConfig::from_toml(&toml) {
            Err(e) => Err(e.to_string()),
            Ok(c) => Node::start(c).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        let err = started.expect_err(&format!("grant {bad:?} accepted"));
        assert!(
            err.contains("publish") || err.contains(&format!("{bad:?}")),
            "{bad:?}: {err}"
        );
    }
}

/// A token naming a principal that is not declared is refused when the node starts.
#[tokio::test]
async fn a_token_for_an_undeclared_principal_is_refused_at_start() {
    let toml = format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.tokens]]
principal = "ghost"
sha256 = "{}"
"#,
        sha256_hex(b"x")
    );
    let started = match NodeConfig::from_toml(&toml) {
        Err(e) => Err(e.to_string()),
        Ok(c) => Node::start(c).await.map(|_| ()).map_err(|e| e.to_string()),
    };
    let err = started.expect_err("a token for an undeclared principal");
    assert!(err.contains("ghost"), "{err}");
}

/// Bad headers are `400 bad_header` naming the header, and nothing is published.
#[tokio::test]
async fn bad_headers_are_refused_by_name_and_nothing_is_published() {
    let node = TestNode::start(crate::common::MEMORY).await;
    let mut rx = watch_all(&node).await;
    let http = client();
    let cases: Vec<(&str, reqwest::header::HeaderValue)> = vec![
        ("x-priority", "256".parse().unwrap()),
        ("x-priority", "-1".parse().unwrap()),
        ("x-priority", "high".parse().unwrap()),
        ("traceparent", "00-zz-yy-01".parse().unwrap()),
        ("x-causation-id", "has space".parse().unwrap()),
        (
            "x-meta-note",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        ),
    ];
    for (name, value) in cases {
        let res = http
            .post(node.url("/v1/publish/orders.placed"))
            .header(name, value.clone())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "bad_header"),
            "{name}: {value:?}: {message}"
        );
        assert!(message.contains(name), "{name}: {message}");
    }
    let res = http
        .post(node.url("/v1/publish/orders.fine"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let env = recv(&mut rx, "the good publish").await;
    assert_eq!(
        env.topic.as_str(),
        "orders.fine",
        "a refused publish got through"
    );
}

/// Bodies: exactly the limit passes, one byte over is 413 naming the limit, with or without
/// a Content-Length; JSON that does not parse (empty, trailing garbage, too deep, not UTF-8)
/// is `400 malformed_json`.
#[tokio::test]
async fn body_limits_and_malformed_json_are_typed() {
    let node = TestNode::start(
        "[transport]\nkind = \"memory\"\n[limits]\nmax_body_bytes = 1024\nmax_message_bytes = 4096\n",
    )
    .await;
    let mut rx = watch_all(&node).await;
    let http = client();
    let post = |body: reqwest::Body, ct: &str| {
        http.post(node.url("/v1/publish/raw.bytes"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let res = post(vec![b'a'; 1024].into(), "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(recv(&mut rx, "1024 bytes").await.payload.len(), 1024);
    let res = post(vec![b'a'; 1025].into(), "application/octet-stream")
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (413, "too_large"), "{message}");
    assert!(
        message.contains("max_body_bytes") && message.contains("1024"),
        "{message}"
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'b'; 256])).collect();
    let res = post(
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        "application/octet-stream",
    )
    .await
    .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!(
        (status, kind.as_str()),
        (413, "too_large"),
        "chunked: {message}"
    );

    for body in [
        Vec::new(),
        b"{} trailing".to_vec(),
        b"{\"a\":1,}".to_vec(),
        b"{\"a\":NaN}".to_vec(),
    ] {
        let res = post(body.clone().into(), "application/json").await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let kind = v["error"]["kind"].as_str().unwrap_or("").to_owned();
        let message = format!("{status} {text}");
        assert_eq!(
            (status, kind.as_str()),
            (400, "malformed_json"),
            "{:?}: {message}",
            String::from_utf8_lossy(&body[..body.len().min(20)])
        );
    }
    // Deeply nested JSON is still JSON (nothing recurses on it without a bound).
    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let res = client()
        .post(node.url("/v1/publish/raw.deep"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert!(
        matches!(res.status().as_u16(), 202 | 400 | 413),
        "{}",
        res.status()
    );
    if res.status() == 202 {
        assert_eq!(
            recv(&mut rx, "the deep publish").await.topic.as_str(),
            "raw.deep"
        );
    }
    // Unicode JSON is kept as sent.
    let res = post(
        r#"{"name":"Zoë ✓ 🚂"}"#.as_bytes().to_vec().into(),
        "application/json",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let env = recv(&mut rx, "the unicode publish").await;
    assert_eq!(&env.payload[..], r#"{"name":"Zoë ✓ 🚂"}"#.as_bytes());
    assert!(rx.try_recv().is_err(), "a refused body was published");
}

/// RFC 8259 JSON is UTF-8: a body labelled `application/json` whose string holds bytes that
/// are not UTF-8 does not parse, so it is `400 malformed_json` and never stored as JSON
/// (a subscriber in any language would fail to decode it).
#[tokio::test]
async fn json_with_invalid_utf8_in_a_string_is_malformed_json() {
    let node = TestNode::start(crate::common::MEMORY).await;
    let mut rx = watch_all(&node).await;
    for body in [&b"\"\xff\xfe\""[..], &b"{\"name\":\"caf\xe9\"}"[..]] {
        let res = client()
            .post(node.url("/v1/publish/orders.utf8"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!(
            status,
            400,
            "{:?} answered {status} {text}",
            String::from_utf8_lossy(body)
        );
        assert!(text.contains("malformed_json"), "{text}");
    }
    let res = client()
        .post(node.url("/v1/publish/orders.fine"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let env = recv(&mut rx, "the valid publish").await;
    assert_eq!(
        env.topic.as_str(),
        "orders.fine",
        "invalid JSON was published"
    );
}
