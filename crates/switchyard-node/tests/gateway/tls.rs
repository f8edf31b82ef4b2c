//! HTTPS with rustls, and RS256 JWTs (test-only keys in tests/fixtures).

use crate::common::TestNode;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_gateway_serves_https_when_a_certificate_is_configured() {
    let toml = format!(
        "[transport]\nkind = \"memory\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        fixture("tls-cert.pem"),
        fixture("tls-key.pem")
    );
    let node = TestNode::start(&toml).await;
    assert!(node.url.starts_with("https://"));
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(fixture("ca-cert.pem")).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(cert)
        .build()
        .unwrap();
    let res = https.get(node.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = https
        .post(node.url("/v1/publish/a.b"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(node.url("/health").replacen("https", "http", 1))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    node.stop().await.unwrap();
}

#[tokio::test]
async fn rs256_jwts_verify_against_the_public_key() {
    let toml = format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[auth.jwt]
algorithm = "RS256"
public_key_pem = "{}"
[[auth.principals]]
name = "svc"
admin = true
"#,
        fixture("jwt-public.pem")
    );
    let node = TestNode::start(&toml).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixture("jwt-private.pem")).unwrap(),
    )
    .unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &serde_json::json!({"sub": "svc", "exp": exp}),
        &key,
    )
    .unwrap();
    let http = crate::common::client();
    let res = http
        .get(node.url("/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // An HS256 token signed with the public key text (algorithm confusion) is refused.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "svc", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(fixture("jwt-public.pem")).unwrap()),
    )
    .unwrap();
    let res = http
        .get(node.url("/v1/status"))
        .bearer_auth(&confused)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    node.stop().await.unwrap();
}
