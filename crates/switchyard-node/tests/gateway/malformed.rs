//! Client mistakes get typed 4xx answers in the error JSON, never a 500.

use serde_json::Value;

use crate::common::{TestNode, client, error_of};

const SMALL_LIMITS: &str = r#"
[transport]
kind = "memory"
[limits]
max_body_bytes = 1024
max_message_bytes = 512
"#;

#[tokio::test]
async fn bad_json_is_400_with_the_parse_error() {
    let node = TestNode::start(SMALL_LIMITS).await;
    let res = client()
        .post(node.url("/v1/publish/a.b"))
        .header("content-type", "application/json")
        .body(r#"{"id": 7,"#)
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "malformed_json"));
    assert!(message.contains("EOF"), "parse error named: {message}");
}

#[tokio::test]
async fn oversized_bodies_and_messages_are_413_naming_the_limit() {
    let node = TestNode::start(SMALL_LIMITS).await;
    let http = client();
    let res = http
        .post(node.url("/v1/publish/a.b"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (413, "too_large"));
    assert!(
        message.contains("limits.max_body_bytes") && message.contains("1024"),
        "{message}"
    );

    let res = http
        .post(node.url("/v1/publish/a.b"))
        .body(vec![b'x'; 600])
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (413, "too_large"));
    assert!(
        message.contains("limits.max_message_bytes") && message.contains("512"),
        "{message}"
    );
}

#[tokio::test]
async fn an_oversized_chunked_body_is_413_too() {
    let node = TestNode::start(SMALL_LIMITS).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'y'; 400])).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let res = client()
        .post(node.url("/v1/publish/a.b"))
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (413, "too_large"));
}

#[tokio::test]
async fn invalid_topics_are_400_naming_the_rule() {
    let node = TestNode::start(SMALL_LIMITS).await;
    let http = client();
    for (topic, rule) in [
        ("a..b", "empty segment"),
        ("a.%2A", "wildcards"),
        ("a.b%20c", "whitespace"),
    ] {
        let res = http
            .post(node.url(&format!("/v1/publish/{topic}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        let (status, kind, message) = error_of(res).await;
        assert_eq!((status, kind.as_str()), (400, "invalid_topic"), "{topic}");
        assert!(message.contains(rule), "{topic}: {message}");
    }
    let long = "a".repeat(300);
    let res = http
        .post(node.url(&format!("/v1/publish/{long}")))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "invalid_topic"));
    assert!(message.contains("255"), "{message}");
}

#[tokio::test]
async fn unknown_fields_wrong_types_and_wrong_content_types_are_refused() {
    let node = TestNode::start(SMALL_LIMITS).await;
    let http = client();
    let res = http
        .post(node.url("/v1/dlq/replay"))
        .header("content-type", "application/json")
        .body(r#"{"idz": []}"#)
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "bad_request"));
    assert!(message.contains("unknown field `idz`"), "{message}");

    let res = http
        .post(node.url("/v1/dlq/purge"))
        .header("content-type", "application/json")
        .body(r#"{"all": "yes"}"#)
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "bad_request"));

    let res = http
        .post(node.url("/v1/dlq/replay"))
        .header("content-type", "text/plain")
        .body(r#"{"all": true}"#)
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (415, "unsupported_content_type"));
    assert!(message.contains("text/plain"), "{message}");

    let res = http
        .post(node.url("/v1/request/a.b?timeout_ms=soon"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "bad_query"));

    let res = http
        .post(node.url("/v1/request/a.b?deadline=5"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "bad_query"));
    assert!(message.contains("deadline"), "{message}");

    let res = http
        .post(node.url("/v1/request/a.b?timeout_ms=999999999"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "bad_query"));
    assert!(message.contains("max_request_timeout_ms"), "{message}");
}

#[tokio::test]
async fn bad_headers_are_400_bad_header() {
    let node = TestNode::start(SMALL_LIMITS).await;
    let http = client();
    for (name, value, needle) in [
        ("x-priority", "300", "0 to 255"),
        ("x-causation-id", "not an id", "visible ASCII"),
        ("traceparent", "garbage", "traceparent"),
    ] {
        let res = http
            .post(node.url("/v1/publish/a.b"))
            .header(name, value)
            .body("{}")
            .send()
            .await
            .unwrap();
        let (status, kind, message) = error_of(res).await;
        assert_eq!((status, kind.as_str()), (400, "bad_header"), "{name}");
        assert!(message.contains(needle), "{name}: {message}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let node = TestNode::start(SMALL_LIMITS).await;
    let http = client();
    let res = http.get(node.url("/v1/nope")).send().await.unwrap();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (404, "not_found"));
    assert!(message.contains("/v1/nope"), "{message}");

    let res = http.get(node.url("/v1/publish/a.b")).send().await.unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (405, "method_not_allowed"));

    let res = http
        .get(node.url("/v1/dlq/not%20an%20id"))
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (400, "bad_request"));
    // A foreign id that is not a ULID is an id like any other: just not there.
    let res = http.get(node.url("/v1/dlq/corr-42")).send().await.unwrap();
    let (status, kind, _) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (404, "not_found"));

    let body: Value = http
        .get(node.url("/v1/dlq/01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"]["kind"], "not_found");
}

#[tokio::test]
async fn a_full_queue_is_503_queue_full() {
    let node = TestNode::start(
        r#"
[transport]
kind = "memory"
[bus]
queue_capacity = 1
"#,
    )
    .await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    node.bus
        .subscribe(
            "stuck",
            "q.#",
            switchyard::handler_fn(move |_env: switchyard::Envelope| {
                let g = g.clone();
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(());
                    let _permit = g.acquire().await;
                    Ok::<_, std::convert::Infallible>(switchyard::Outcome::Ack)
                }
            }),
        )
        .overflow(switchyard::Overflow::RejectNew)
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let publish = || http.post(node.url("/v1/publish/q.x")).body("{}").send();
    assert_eq!(publish().await.unwrap().status(), 202);
    crate::common::recv(&mut started, "the handler holding the first message").await;
    assert_eq!(publish().await.unwrap().status(), 202, "queue holds one");
    let (status, kind, message) = error_of(publish().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (503, "queue_full"));
    assert!(message.contains("stuck"), "{message}");
    gate.add_permits(10);
    node.stop().await.unwrap();
}
