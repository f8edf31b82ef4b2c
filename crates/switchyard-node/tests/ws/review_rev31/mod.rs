//! Review rev31: an outside-in attack on the node's authentication and topic grants. A node
//! with auth on (static tokens and HS256/RS256 JWTs) is attacked by clients holding narrow
//! grants, over the WebSocket and HTTP; each test names the promise of docs/gateway.md
//! ("Authentication and grants", "WebSocket `/v1/ws`", "Dead letters (admin)",
//! "Observability (admin unless noted)") it checks.

mod admin;
mod grants;
mod tokens;

use serde_json::Value;
use switchyard_node::auth::sha256_hex;

use crate::support::TestNode;

/// Static tokens of the principals of [`config`].
pub const NARROW: &str = "rev31-narrow-token";
pub const WIDE: &str = "rev31-wide-token";
pub const OPS: &str = "rev31-ops-token";
/// The HS256 secret of [`config`]'s `[auth.jwt]`.
pub const SECRET: &str = "rev31-a-secret-that-is-longer-than-32-bytes";
pub const ISSUER: &str = "login.rev31";
pub const AUDIENCE: &str = "switchyard-rev31";

/// `narrow` may subscribe and publish inside `orders.eu.#` and send `orders.cancel`; `wide`
/// has `#` for both and sends `jobs.run`; `ops` is the admin. Tokens as above, and HS256 JWTs
/// with `iss`/`aud` checked; `jwt_extra` goes into `[auth.jwt]` (e.g. `leeway_s = 0`).
pub fn config(jwt_extra: &str) -> String {
    format!(
        r##"
[auth]
enabled = true
[[auth.principals]]
name = "narrow"
subscribe = ["orders.eu.#"]
publish = ["orders.eu.#"]
send = ["orders.cancel"]
[[auth.principals]]
name = "wide"
subscribe = ["#"]
publish = ["#"]
send = ["jobs.run"]
[[auth.principals]]
name = "ops"
admin = true
[[auth.tokens]]
principal = "narrow"
sha256 = "{}"
[[auth.tokens]]
principal = "wide"
sha256 = "{}"
[[auth.tokens]]
principal = "ops"
sha256 = "{}"
[auth.jwt]
algorithm = "HS256"
secret = "{SECRET}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
{jwt_extra}
"##,
        sha256_hex(NARROW.as_bytes()),
        sha256_hex(WIDE.as_bytes()),
        sha256_hex(OPS.as_bytes()),
    )
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 JWT with `claims`, signed with `secret`.
pub fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// `GET /v1/stats` as the admin.
pub async fn admin_stats(node: &TestNode) -> Value {
    let res = reqwest::Client::new()
        .get(node.http("/v1/stats"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// `(unauthenticated, forbidden by action)` from `/v1/stats` `denials`.
pub async fn denials(node: &TestNode) -> (u64, Value) {
    let stats = admin_stats(node).await;
    (
        stats["denials"]["unauthenticated"].as_u64().unwrap(),
        stats["denials"]["forbidden"].clone(),
    )
}

/// The value of `switchyard_gateway_denials_total{kind, action}` on `/metrics` (0 when absent).
pub async fn denials_metric(node: &TestNode, kind: &str, action: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(node.http("/metrics"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (k, a) = (format!("kind=\"{kind}\""), format!("action=\"{action}\""));
    text.lines()
        .filter(|l| l.starts_with("switchyard_gateway_denials_total{"))
        .find(|l| l.contains(&k) && l.contains(&a))
        .and_then(|l| l.rsplit_once(' '))
        .map_or(0, |(_, v)| v.parse::<f64>().unwrap() as u64)
}
