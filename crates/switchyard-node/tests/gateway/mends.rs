//! Small defects found by reviews: every message a principal puts on the bus counts against
//! its `limits.publish_rate` (commands and requests too, not only publishes); a DLQ replay
//! of an empty `ids` list is a client mistake (400), not a silent "0 replayed".

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};

use crate::common::{TestNode, client, error_of, get_json};

/// A memory node whose principals may put 1 message a second on the bus, 3 back to back.
const LIMITED: &str = r#"
[transport]
kind = "memory"
[limits.publish_rate]
per_second = 1
burst = 3
"#;

/// `POST /v1/send` and `POST /v1/request` take from the principal's bucket as a publish does:
/// a principal over `limits.publish_rate` gets `429 rate_limited` for a command too, and the
/// handler does not run for it. (Looped up to 20 calls rather than counting exact tokens, so
/// a slow machine refilling a token between calls cannot make it flaky: at 1/s with a burst
/// of 3, twenty calls all accepted would take over 16 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_requests_count_against_the_publish_rate() {
    let node = TestNode::start(LIMITED).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    node.bus
        .handle_envelope(
            "doubler",
            "math.double",
            handler_fn(move |env: Envelope| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let reply = env.reply(b"{}".to_vec());
                    Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    for route in ["/v1/send/math.double", "/v1/request/math.double"] {
        let mut refused = None;
        let mut accepted = 0;
        for _ in 0..20 {
            let res = http
                .post(node.url(route))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            if res.status() == 200 {
                accepted += 1;
                continue;
            }
            refused = Some(error_of(res).await);
            break;
        }
        let Some((status, kind, message)) = refused else {
            panic!(
                "{route}: 20 calls all accepted ({accepted}) by a principal limited to 1/s \
                 (burst 3): commands do not count against limits.publish_rate"
            );
        };
        assert_eq!(
            (status, kind.as_str()),
            (429, "rate_limited"),
            "{route}: {message}"
        );
        assert!(message.contains("limits.publish_rate"), "{message}");
    }
    // The refused calls never reached the handler.
    let before = handled.load(Ordering::SeqCst);
    let res = http
        .post(node.url("/v1/publish/math.events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    // One bucket per principal, publishes and commands alike: still empty.
    assert_eq!(res.status(), 429);
    assert_eq!(handled.load(Ordering::SeqCst), before);
    // The OpenAPI document says so.
    let doc = get_json(&node, "/v1/openapi.json").await;
    for path in ["/v1/send/{topic}", "/v1/request/{topic}"] {
        assert!(
            !doc["paths"][path]["post"]["responses"]["429"].is_null(),
            "{path}: no 429 in the OpenAPI document"
        );
    }
    node.stop().await.unwrap();
}

/// `{"ids": []}` names no dead letter: a client bug (a filter that matched nothing on the
/// client's side), answered `400 bad_request` saying so, not `200` with 0 replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_an_empty_id_list_is_a_bad_request() {
    let node = TestNode::start("[transport]\nkind = \"memory\"\n").await;
    let http = client();
    for body in [json!({"ids": []}), json!({"ids": [], "topic": "billing.#"})] {
        let res = http
            .post(node.url("/v1/dlq/replay"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!(status, 400, "{body}: answered {status} {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["kind"], "bad_request", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("ids is empty") && message.contains("\"all\": true"),
            "{message}"
        );
    }
    let doc = get_json(&node, "/v1/openapi.json").await;
    let described = doc["paths"]["/v1/dlq/replay"]["post"]["responses"]["400"]["description"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(described.contains("empty"), "400 of replay: {described}");
    node.stop().await.unwrap();
}
