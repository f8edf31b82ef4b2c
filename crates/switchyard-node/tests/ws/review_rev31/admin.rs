//! The admin surface (registry, dead letters, replay, topology, trace, status, stats, live
//! stream, health, alerts, AsyncAPI, `/metrics`) against callers without the admin grant.

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};

use super::{NARROW, OPS, WIDE, config, denials, denials_metric, hs256, now_s};
use crate::support::{TestNode, WAIT, eventually};

const SECRET_PAYLOAD: &str = "SECRET-PAYLOAD-rev31";

/// Status and body of a call; a body that does not end within [`WAIT`] (a stream that was
/// opened) is reported as such instead of hanging.
async fn call(req: reqwest::RequestBuilder) -> (u16, String) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = match tokio::time::timeout(WAIT, res.text()).await {
        Ok(body) => body.unwrap(),
        Err(_) => "<the body did not end: a stream was opened>".to_owned(),
    };
    (status, body)
}

/// `GET /v1/dlq` as the admin.
async fn dlq(node: &TestNode) -> Value {
    reqwest::Client::new()
        .get(node.http("/v1/dlq"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Promise: the admin grant guards "registry, DLQ, topology, trace, status, stats, `/metrics`"
/// and the Observability routes ("admin unless noted"); "Every denial is answered 401/403 with
/// the reason, counted in `switchyard_gateway_denials_total{kind, action}`"; a DLQ replay
/// "needs the admin grant". Every admin route is asked without a token, with a static token
/// and a JWT of a principal holding every other kind of grant, and with the admin token in
/// `?token=` (accepted "on `/v1/ws` only"): each is refused with its reason, counted, and
/// no answer carries the dead-lettered message's payload or topic; the refused replay and
/// purge left the entry in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_refuses_non_admins_with_a_counted_reason_and_leaks_nothing() {
    let node = TestNode::start(&config("")).await;
    node.bus
        .subscribe(
            "vault",
            "vault.#",
            handler_fn(|_env: Envelope| async {
                Ok::<_, std::convert::Infallible>(Outcome::reject("refused by the vault"))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = reqwest::Client::new();
    let res = http
        .post(node.http("/v1/publish/vault.secret"))
        .bearer_auth(WIDE)
        .header("content-type", "application/json")
        .body(json!({"code": SECRET_PAYLOAD}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let published: Value = res.json().await.unwrap();
    let correlation = published["correlation_id"].as_str().unwrap().to_owned();
    let entry = eventually("the vault message is dead-lettered", || async {
        let v = dlq(&node).await;
        (v["total"] == 1).then(|| v["items"][0].clone())
    })
    .await;
    assert!(entry.to_string().contains(SECRET_PAYLOAD), "{entry}");
    let id = entry["id"].as_str().unwrap().to_owned();

    let jwt = hs256(
        &json!({"sub": "narrow", "exp": now_s() + 600, "iss": super::ISSUER, "aud": super::AUDIENCE}),
        super::SECRET.as_bytes(),
    );
    let body = json!({"ids": [id]}).to_string();
    let routes: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "/v1/topics".into(), None),
        ("GET", "/v1/subscriptions".into(), None),
        ("GET", "/v1/dlq".into(), None),
        ("GET", "/v1/dlq?topic=vault.%23&limit=1000".into(), None),
        ("GET", format!("/v1/dlq/{id}"), None),
        ("GET", format!("/v1/dlq/replays?ids={id}"), None),
        ("POST", "/v1/dlq/replay".into(), Some(body.clone())),
        (
            "POST",
            "/v1/dlq/replay".into(),
            Some(r#"{"all": true}"#.into()),
        ),
        ("POST", "/v1/dlq/purge".into(), Some(body.clone())),
        (
            "POST",
            "/v1/dlq/purge".into(),
            Some(r#"{"all": true}"#.into()),
        ),
        ("GET", "/v1/topology".into(), None),
        ("GET", "/v1/topology?format=mermaid".into(), None),
        ("GET", "/v1/topology?format=dot".into(), None),
        ("GET", format!("/v1/trace/{correlation}"), None),
        ("GET", "/v1/status".into(), None),
        ("GET", "/v1/stats".into(), None),
        ("GET", "/v1/stats/history".into(), None),
        ("GET", "/v1/stream".into(), None),
        ("GET", "/v1/health".into(), None),
        ("GET", "/v1/alerts".into(), None),
        ("GET", "/v1/asyncapi.json".into(), None),
        ("GET", "/metrics".into(), None),
    ];
    let (unauth_before, forbidden_before) = denials(&node).await;
    let metric_unauth_before = denials_metric(&node, "unauthenticated", "any").await;
    let metric_admin_before = denials_metric(&node, "forbidden", "admin").await;
    let (mut unauth, mut forbidden) = (0u64, 0u64);
    for (method, path, body) in &routes {
        let build = |auth: Option<&str>, path: &str| {
            let mut req = match *method {
                "GET" => http.get(node.http(path)),
                _ => http.post(node.http(path)),
            };
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            if let Some(t) = auth {
                req = req.bearer_auth(t);
            }
            req
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let cases = [
            ("no token", build(None, path), 401),
            (
                "the admin token in ?token=",
                build(None, &format!("{path}{sep}token={OPS}")),
                401,
            ),
            (
                "a static token without admin",
                build(Some(NARROW), path),
                403,
            ),
            ("the widest non-admin token", build(Some(WIDE), path), 403),
            ("a JWT without admin", build(Some(&jwt), path), 403),
        ];
        for (who, req, want) in cases {
            let (status, text) = call(req).await;
            assert_eq!(status, want, "{method} {path} with {who}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{method} {path} with {who}: not the error JSON ({e}): {text}")
            });
            let kind = if want == 401 {
                "unauthenticated"
            } else {
                "forbidden"
            };
            assert_eq!(v["error"]["kind"], kind, "{method} {path} with {who}: {v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(!message.is_empty(), "{method} {path}: a reason");
            if want == 403 {
                assert!(message.contains("admin"), "{method} {path} with {who}: {v}");
                forbidden += 1;
            } else {
                unauth += 1;
            }
            for secret in [SECRET_PAYLOAD, "vault.secret", "refused by the vault"] {
                assert!(
                    !text.contains(secret),
                    "{method} {path} with {who} leaked {secret}: {text}"
                );
            }
        }
    }
    let (unauth_after, forbidden_after) = denials(&node).await;
    assert_eq!(unauth_after - unauth_before, unauth, "401s counted");
    let admin = |v: &Value| v["admin"].as_u64().unwrap_or(0);
    assert_eq!(
        admin(&forbidden_after) - admin(&forbidden_before),
        forbidden,
        "403s counted"
    );
    assert_eq!(
        denials_metric(&node, "unauthenticated", "any").await - metric_unauth_before,
        unauth,
        "switchyard_gateway_denials_total{{kind=\"unauthenticated\"}}"
    );
    assert_eq!(
        denials_metric(&node, "forbidden", "admin").await - metric_admin_before,
        forbidden,
        "switchyard_gateway_denials_total{{kind=\"forbidden\",action=\"admin\"}}"
    );
    // The refused replays and purges did nothing: the entry is still there, never replayed.
    let v = dlq(&node).await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["items"][0]["id"], id.as_str());
    let (status, text) = call(
        http.get(node.http(&format!("/v1/dlq/replays?ids={id}")))
            .bearer_auth(OPS),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["replays"][0]["status"],
        "unknown",
        "{text}"
    );

    // What needs no credentials: `/health`, `/ready`, `/v1/openapi.json`.
    for path in ["/health", "/ready", "/v1/openapi.json"] {
        let (status, text) = call(http.get(node.http(path))).await;
        assert_eq!(status, 200, "{path}: {text}");
        assert!(!text.contains(SECRET_PAYLOAD), "{path}");
    }
    node.stop().await;
}
