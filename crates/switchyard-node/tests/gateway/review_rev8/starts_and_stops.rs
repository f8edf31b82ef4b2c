//! Review rev8, continued: starting with a bad data directory, stopping with requests in
//! flight, asset paths, forged JWTs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use switchyard_node::{Node, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::common::{TestNode, client, error_of, recv};

/// A client that sent half a request and went quiet must not hold the node's graceful stop
/// past its shutdown budget (`bus.shutdown_timeout_ms`).
#[tokio::test]
async fn a_half_sent_request_does_not_hold_up_a_graceful_stop() {
    let node =
        TestNode::start("[transport]\nkind = \"memory\"\n[bus]\nshutdown_timeout_ms = 500\n").await;
    let addr = node.url.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(
        b"POST /v1/publish/orders.slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":",
    )
    .await
    .unwrap();
    // The node has the request head (its answer to a second connection proves it serves).
    let res = client().get(node.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let stopped = tokio::time::timeout(Duration::from_secs(5), node.stop()).await;
    assert!(
        stopped.is_ok(),
        "the node did not stop within 5 s while a client held half a request"
    );
    // The half-sent request got an answer or a close, not silence.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slow client's connection was left open");
}

/// A command in flight when the node stops gets an answer (a typed error), not a reset
/// connection or a hang, within the shutdown budget.
#[tokio::test]
async fn a_send_in_flight_at_stop_is_answered_with_a_typed_error() {
    let node =
        TestNode::start("[transport]\nkind = \"memory\"\n[bus]\nshutdown_timeout_ms = 500\n").await;
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let never = Arc::new(tokio::sync::Notify::new());
    let n = never.clone();
    node.bus
        .handle_envelope(
            "stuck",
            "jobs.stuck",
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                let n = n.clone();
                async move {
                    let _ = tx.send(());
                    n.notified().await;
                    Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply("{}")))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let url = node.url("/v1/send/jobs.stuck");
    let call = tokio::spawn(async move { client().post(url).json(&json!({})).send().await });
    recv(&mut rx, "the handler holding the command").await;
    let stop = tokio::spawn(node.stop());
    let answer = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the in-flight send was not answered within 5 s of the stop")
        .unwrap();
    let res = answer.expect("the in-flight send got no HTTP answer (connection reset)");
    let (status, kind, message) = error_of(res).await;
    assert!(
        matches!(status, 503 | 504 | 422),
        "{status} {kind}: {message}"
    );
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("stopped")
        .unwrap()
        .ok();
}

/// The stop sequence of docs/gateway.md: a send and a request held by stuck handlers when
/// the node stops are both answered `503 shutting_down` (after the running requests' grace
/// and the bus drain), and the node stops.
#[tokio::test]
async fn calls_held_by_stuck_handlers_at_stop_are_answered_shutting_down() {
    let node =
        TestNode::start("[transport]\nkind = \"memory\"\n[bus]\nshutdown_timeout_ms = 300\n").await;
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let never = Arc::new(tokio::sync::Notify::new());
    for topic in ["jobs.stuck", "jobs.asked"] {
        let (tx, n) = (tx.clone(), never.clone());
        node.bus
            .handle_envelope(
                topic,
                topic,
                handler_fn(move |env: Envelope| {
                    let (tx, n) = (tx.clone(), n.clone());
                    async move {
                        let _ = tx.send(());
                        n.notified().await;
                        Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply("{}")))
                    }
                }),
            )
            .start()
            .await
            .unwrap()
            .detach();
    }
    let calls: Vec<_> = [
        node.url("/v1/send/jobs.stuck"),
        node.url("/v1/request/jobs.asked?timeout_ms=60000"),
    ]
    .into_iter()
    .map(|url| tokio::spawn(async move { client().post(url).json(&json!({})).send().await }))
    .collect();
    recv(&mut rx, "the first handler holding a call").await;
    recv(&mut rx, "the second handler holding a call").await;
    let stop = tokio::spawn(node.stop());
    for call in calls {
        let res = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("an in-flight call was not answered within 5 s of the stop")
            .unwrap()
            .expect("an in-flight call got no HTTP answer");
        let (status, kind, message) = error_of(res).await;
        assert_eq!((status, kind.as_str()), (503, "shutting_down"), "{message}");
    }
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("stopped")
        .unwrap()
        .ok();
}

/// A data directory that is a file: the node does not start, and says which path is wrong.
#[tokio::test]
async fn a_data_dir_that_is_a_file_fails_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let toml = format!(
        "[transport]\nkind = \"log\"\ndata_dir = {:?}\n",
        file.to_str().unwrap()
    );
    let err = match NodeConfig::from_toml(&toml) {
        Err(e) => e.to_string(),
        Ok(c) => match Node::start(c).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a node started on a data_dir that is a file"),
        },
    };
    assert!(err.contains("not-a-dir"), "{err}");
}

/// The dead-letter journal cannot be written (a directory stands where the file goes): the
/// node refuses to start naming it, or it starts and a dead letter is still kept (listed);
/// never a dead letter silently lost.
#[tokio::test]
async fn an_unwritable_dead_letter_journal_is_refused_or_still_keeps_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dead-letters.jsonl")).unwrap();
    let toml = format!(
        "[transport]\nkind = \"log\"\ndata_dir = {:?}\n",
        dir.path().to_str().unwrap()
    );
    let config = NodeConfig::from_toml(&toml).unwrap();
    let node = match Node::start(config.clone()).await {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("dead-letters.jsonl"), "{e}");
            return;
        }
        Ok(node) => node,
    };
    node.shutdown().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let node = TestNode::from_config(config, |_| {}).await;
    node.bus
        .subscribe(
            "rejecter",
            "orders.*",
            handler_fn(move |_env: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(());
                    Ok::<_, std::convert::Infallible>(Outcome::reject("no"))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let res = client()
        .post(node.url("/v1/publish/orders.placed"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    recv(&mut rx, "the delivery").await;
    node.bus.run_until_idle().await;
    let list: Value = client()
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "the dead letter was lost: {list}");
}

/// Dashboard and app assets are embedded: a traversal in the file name finds nothing.
#[tokio::test]
async fn asset_routes_do_not_traverse() {
    let node = TestNode::start(crate::common::MEMORY).await;
    for path in [
        "/dashboard/..%2F..%2FCargo.toml",
        "/dashboard/%2e%2e%2fsrc%2flib.rs",
        "/app/..%2F..%2F..%2FCargo.toml",
        "/dashboard/..\\Cargo.toml",
    ] {
        let res = client().get(node.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("[package]"), "{path} leaked a file");
    }
}

/// JWTs that must never authenticate: `alg: none`, an HMAC token signed with the RS256
/// public key (algorithm confusion), another HMAC algorithm, no `exp`, a bad signature.
/// Each is `401 unauthenticated`, and a well-signed one works (the setup is right).
#[tokio::test]
async fn forged_or_confused_jwts_are_refused() {
    let public = format!(
        "{}/tests/fixtures/jwt-public.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let private = format!(
        "{}/tests/fixtures/jwt-private.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let toml = format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[auth.jwt]
algorithm = "RS256"
public_key_pem = "{public}"
[[auth.principals]]
name = "svc"
admin = true
"#
    );
    let node = TestNode::start(&toml).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"sub": "svc", "exp": exp});
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let pem = std::fs::read(&public).unwrap();
    let hmac = |alg: jsonwebtoken::Algorithm, key: &[u8], claims: &Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let rsa = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let good = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &rsa,
    )
    .unwrap();
    let mut bad_sig = good.clone();
    let last = bad_sig.pop().unwrap();
    bad_sig.push(if last == 'A' { 'B' } else { 'A' });
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": "svc"}),
        &rsa,
    )
    .unwrap();
    let forged = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims)
            ),
        ),
        (
            "HS256 with the public key",
            hmac(jsonwebtoken::Algorithm::HS256, &pem, &claims),
        ),
        (
            "HS512 with the public key",
            hmac(jsonwebtoken::Algorithm::HS512, &pem, &claims),
        ),
        ("no exp", no_exp),
        ("bad signature", bad_sig),
    ];
    let http = client();
    for (what, token) in forged {
        let res = http
            .get(node.url("/v1/status"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (401, "unauthenticated"),
            "{what}: {message}"
        );
    }
    let res = http
        .get(node.url("/v1/status"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the well-signed token");
}
