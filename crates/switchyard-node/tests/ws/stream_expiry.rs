//! The live stream (`GET /v1/stream`) of an admin who authenticated with a JWT ends when the
//! JWT expires, as a WebSocket opened with it is closed then: an expired credential must not
//! keep receiving dead letters and figures.

use serde_json::{Value, json};

use crate::review_rev31::{AUDIENCE, ISSUER, SECRET, config, hs256, now_s};
use crate::support::{TestNode, WAIT};

/// The `event:` names and `data:` of the server-sent events in `text`.
fn events(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            event.map(|e| (e, data))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_of_a_jwt_ends_when_the_jwt_expires() {
    let node = TestNode::start(&config("leeway_s = 0")).await;
    let exp = now_s() + 3;
    let token = hs256(
        &json!({"sub": "ops", "exp": exp, "iss": ISSUER, "aud": AUDIENCE}),
        SECRET.as_bytes(),
    );
    let mut res = reqwest::Client::new()
        .get(node.http("/v1/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the admin's JWT opens the stream");

    // Read until the node ends the stream; a stream still open well past `exp` fails.
    let mut text = String::new();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = res.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    let seen = events(&text);
    assert!(
        ended.is_ok(),
        "the stream was still open {WAIT:?} after it opened, past the JWT's exp {exp}: events {:?}",
        seen.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>()
    );
    assert!(now_s() >= exp, "ended before exp {exp}");
    assert_eq!(
        seen.first().map(|(e, _)| e.as_str()),
        Some("hello"),
        "{text}"
    );
    let (last, data) = seen.last().unwrap();
    assert_eq!(
        last, "expired",
        "the last event says why the stream ended: {text}"
    );
    let data: Value = serde_json::from_str(data).unwrap();
    let message = data["message"].as_str().unwrap();
    assert!(
        message.contains("expired") && message.contains("reconnect"),
        "{data}"
    );
    // The same token is refused now.
    let again = reqwest::Client::new()
        .get(node.http("/v1/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401);
}
