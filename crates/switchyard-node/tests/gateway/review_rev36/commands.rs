//! `send` and `request` outcomes as an HTTP client sees them: typed failures, prompt
//! answers, deadlines at their edges, nothing left pending, many clients at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};
use tokio::sync::Semaphore;

use super::{handle, post, wait_nothing_pending};
use crate::common::{MEMORY, TestNode, client, error_of};

/// A handler that waits for a permit of `gate` (then replies `"late"`), counting its calls.
fn held(gate: Arc<Semaphore>, calls: Arc<AtomicUsize>) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let gate = gate.clone();
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            gate.acquire().await.unwrap().forget();
            Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply(r#""late""#)))
        }
    })
}

/// No handler, a failing, a flaky, a rejecting and a panicking handler: each answer is the
/// documented status and kind, comes promptly, and nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_outcome_is_typed_prompt_and_leaves_nothing_pending() {
    let node = TestNode::start(MEMORY).await;
    handle(
        &node,
        "broken",
        "jobs.fail",
        handler_fn(|_env: Envelope| async {
            Err::<Outcome, _>(std::io::Error::other("disk on fire"))
        }),
    )
    .await;
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let f = flaky_calls.clone();
    handle(
        &node,
        "flaky",
        "jobs.flaky",
        handler_fn(move |env: Envelope| {
            let n = f.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    return Err(std::io::Error::other("not yet"));
                }
                Ok(Outcome::reply(env.reply(r#"{"done":true}"#)))
            }
        }),
    )
    .await;
    handle(
        &node,
        "picky",
        "jobs.reject",
        handler_fn(|_env: Envelope| async {
            Ok::<_, std::convert::Infallible>(Outcome::reject("not on sundays"))
        }),
    )
    .await;
    handle(
        &node,
        "crashy",
        "jobs.panic",
        handler_fn(|env: Envelope| async move {
            if !env.payload.is_empty() {
                panic!("handler blew up");
            }
            Ok::<_, std::convert::Infallible>(Outcome::Ack)
        }),
    )
    .await;
    let cases: [(&str, u16, &str, &str); 4] = [
        ("/v1/send/jobs.nobody", 404, "no_handler", "jobs.nobody"),
        ("/v1/send/jobs.fail", 422, "handler_failed", "disk on fire"),
        (
            "/v1/send/jobs.reject",
            422,
            "handler_rejected",
            "not on sundays",
        ),
        (
            "/v1/request/jobs.panic?timeout_ms=20000",
            422,
            "handler_failed",
            "",
        ),
    ];
    for (path, want_status, want_kind, names) in cases {
        let started = Instant::now();
        let res = post(&node, path, None, "x").await;
        let took = started.elapsed();
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (want_status, want_kind),
            "{path}: {message}"
        );
        assert!(message.contains(names), "{path}: {message}");
        // Retries back off at most 100 + 200 ms; the panic is not waited out to a deadline.
        assert!(took < Duration::from_secs(5), "{path} took {took:?}");
    }
    // The flaky handler's third attempt replies, within the same prompt answer.
    let res = post(&node, "/v1/send/jobs.flaky", None, "x").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["payload"], json!({"done": true}), "{body}");
    assert_eq!(flaky_calls.load(Ordering::SeqCst), 3);
    // A handler that acknowledged without replying: `"payload": null`.
    let res = post(&node, "/v1/send/jobs.panic", None, "").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["payload"], Value::Null, "{body}");
    assert_eq!(body["content_type"], "application/json", "{body}");
    wait_nothing_pending(&node).await;
    node.stop().await.unwrap();
}

/// `send` waits `limits.send_timeout_ms`, then `504 timeout` naming it; the late reply is
/// discarded (the next send gets its own), and nothing stays pending once the handler ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_past_send_timeout_ms_is_504_and_its_late_reply_goes_nowhere() {
    let node = TestNode::start(
        r#"
[transport]
kind = "memory"
[limits]
send_timeout_ms = 300
"#,
    )
    .await;
    let release = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    handle(
        &node,
        "slow",
        "reports.build",
        held(release.clone(), calls.clone()),
    )
    .await;
    let started = Instant::now();
    let res = post(&node, "/v1/send/reports.build", None, "{}").await;
    let took = started.elapsed();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (504, "timeout"), "{message}");
    assert!(message.contains("send_timeout_ms = 300"), "{message}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    release.add_permits(1);
    wait_nothing_pending(&node).await;
    // The next send gets its own reply, not the discarded one.
    release.add_permits(1);
    let res = client()
        .post(node.url("/v1/send/reports.build"))
        .header("x-message-id", "second")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["id"].as_str(), body["payload"].as_str()),
        (Some("second"), Some("late"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    wait_nothing_pending(&node).await;
    node.stop().await.unwrap();
}

/// `timeout_ms` at its edges: 0, past the maximum, past u64, negative, fractional, empty,
/// twice, or named wrong is `400 bad_query` and no handler is called; 1 ms answers 504 at
/// once; the maximum is allowed; without it the default applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_deadlines_at_their_edges() {
    let node = TestNode::start(
        r#"
[transport]
kind = "memory"
[limits]
default_request_timeout_ms = 600
max_request_timeout_ms = 2000
"#,
    )
    .await;
    let release = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    handle(
        &node,
        "slow",
        "calc.slow",
        held(release.clone(), calls.clone()),
    )
    .await;
    let fast_calls = Arc::new(AtomicUsize::new(0));
    let fc = fast_calls.clone();
    handle(
        &node,
        "fast",
        "calc.fast",
        handler_fn(move |env: Envelope| {
            fc.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply("42"))) }
        }),
    )
    .await;
    for q in [
        "timeout_ms=0",
        "timeout_ms=2001",
        "timeout_ms=18446744073709551615",
        "timeout_ms=18446744073709551616",
        "timeout_ms=-1",
        "timeout_ms=1.5",
        "timeout_ms=",
        "timeout_ms=abc",
        "timeout_ms=10&timeout_ms=20",
        "timeout=10",
        "deadline_ms=10",
    ] {
        let res = post(&node, &format!("/v1/request/calc.fast?{q}"), None, "{}").await;
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "bad_query"),
            "{q}: {message}"
        );
    }
    assert_eq!(
        fast_calls.load(Ordering::SeqCst),
        0,
        "a refused request reached the handler"
    );

    let res = post(&node, "/v1/request/calc.fast?timeout_ms=2000", None, "{}").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["payload"], 42, "{body}");

    let started = Instant::now();
    let res = post(&node, "/v1/request/calc.slow?timeout_ms=1", None, "{}").await;
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (504, "timeout"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let res = post(&node, "/v1/request/calc.slow", None, "{}").await;
    let took = started.elapsed();
    let (status, kind, message) = error_of(res).await;
    assert_eq!((status, kind.as_str()), (504, "timeout"), "{message}");
    assert!(
        took >= Duration::from_millis(590) && took < Duration::from_millis(1900),
        "the default deadline of 600 ms answered after {took:?}"
    );
    // Both held calls end; nothing stays pending.
    release.add_permits(2);
    assert!(calls.load(Ordering::SeqCst) <= 2);
    wait_nothing_pending(&node).await;
    node.stop().await.unwrap();
}

/// "400 bad_query: unknown or invalid query parameter" (docs/gateway.md, Errors): `send`
/// and `publish` take no query, so a client's `?timeout_ms=` (a deadline it believes it set)
/// or any other parameter is refused, not silently ignored while the send waits 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Fixed: send and publish take no query parameter and refuse any.
async fn send_and_publish_refuse_query_parameters_they_do_not_take() {
    let node = TestNode::start(
        r#"
[transport]
kind = "memory"
[limits]
send_timeout_ms = 1500
"#,
    )
    .await;
    let release = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    handle(
        &node,
        "slow",
        "reports.build",
        held(release.clone(), calls.clone()),
    )
    .await;
    let started = Instant::now();
    let res = post(&node, "/v1/send/reports.build?timeout_ms=50", None, "{}").await;
    let took = started.elapsed();
    let (status, kind, message) = error_of(res).await;
    release.add_permits(1);
    assert_eq!(
        (status, kind.as_str()),
        (400, "bad_query"),
        "send?timeout_ms=50 answered after {took:?}: {message}"
    );
    let res = post(&node, "/v1/publish/reports.done?priority=3", None, "{}").await;
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    assert_eq!(status, 400, "publish?priority=3: {body}");
    assert!(body.contains("bad_query"), "{body}");
    node.stop().await.unwrap();
}

/// 48 HTTP clients (each its own connection pool) send and request at once: each gets the
/// reply to its own command, under its own id and correlation id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_http_clients_at_once_each_get_their_own_reply() {
    let node = TestNode::start(MEMORY).await;
    handle(
        &node,
        "echo",
        "echo.who",
        handler_fn(|env: Envelope| async move {
            let input: Value = serde_json::from_slice(&env.payload)?;
            // Replies finish out of order: later clients' first.
            let i = input["i"].as_u64().unwrap_or_default();
            tokio::time::sleep(Duration::from_millis((47 - i) % 8 * 3)).await;
            let out = json!({"i": input["i"], "id": env.id.to_string(),
                             "correlation_id": env.correlation_id.to_string()});
            let reply = env.reply(serde_json::to_vec(&out)?);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Outcome::reply(reply))
        }),
    )
    .await;
    let url = node.url("");
    let mut tasks = Vec::new();
    for i in 0..48u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let path = if i % 2 == 0 {
                "/v1/send/echo.who".to_owned()
            } else {
                "/v1/request/echo.who?timeout_ms=20000".to_owned()
            };
            let mut req = http
                .post(format!("{url}{path}"))
                .header("content-type", "application/json")
                .body(json!({"i": i}).to_string());
            if i % 3 == 0 {
                req = req.header("x-message-id", format!("client-{i}"));
            }
            if i % 4 == 1 {
                req = req.header("x-correlation-id", format!("flow-{i}"));
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200, "client {i}");
            (i, res.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (i, body) = t.await.unwrap();
        let reply = &body["payload"];
        assert_eq!(reply["i"], i, "client {i} got another's reply: {body}");
        assert_eq!(reply["id"], body["id"], "client {i}: {body}");
        assert_eq!(
            reply["correlation_id"], body["correlation_id"],
            "client {i}: {body}"
        );
        if i % 3 == 0 {
            assert_eq!(body["id"], format!("client-{i}"), "{body}");
        }
        if i % 4 == 1 {
            assert_eq!(body["correlation_id"], format!("flow-{i}"), "{body}");
        } else {
            assert_eq!(body["correlation_id"], body["id"], "{body}");
        }
        assert!(
            ids.insert(body["id"].as_str().unwrap().to_owned()),
            "{body}"
        );
    }
    assert_eq!(ids.len(), 48);
    wait_nothing_pending(&node).await;
    node.stop().await.unwrap();
}

/// `"attempts"` of a send's answer is "Handler attempts it took" (the `ReplyJson` schema of
/// `/v1/openapi.json`; docs/gateway.md shows `"attempts": 1` for a first-time reply, and
/// `/v1/trace` lists the calls as attempts 1, 2, 3): a handler that failed twice and
/// replied on its third call took 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "defect: a send's reply says \"attempts\": 1 after the handler was called 3 times (retried by the node's resilience stack)"]
async fn a_reply_counts_the_attempts_its_handler_took() {
    let node = TestNode::start(MEMORY).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    handle(
        &node,
        "flaky",
        "jobs.flaky",
        handler_fn(move |env: Envelope| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    return Err(std::io::Error::other("not yet"));
                }
                Ok(Outcome::reply(env.reply("true")))
            }
        }),
    )
    .await;
    for path in [
        "/v1/send/jobs.flaky",
        "/v1/request/jobs.flaky?timeout_ms=10000",
    ] {
        calls.store(0, Ordering::SeqCst);
        let res = post(&node, path, None, "x").await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{path}");
        assert_eq!(
            body["attempts"], 3,
            "{path}: the handler was called 3 times: {body}"
        );
    }
    node.stop().await.unwrap();
}

/// 24 clients request at once with a 30 ms deadline a handler that is held: every one gets
/// `504 timeout` promptly; once the handler is let go, nothing stays pending and the
/// handler's subscription has nothing in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_past_a_tiny_deadline_all_time_out_and_leave_nothing_behind() {
    let node = TestNode::start(MEMORY).await;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    handle(
        &node,
        "held",
        "calc.held",
        held(gate.clone(), calls.clone()),
    )
    .await;
    let url = node.url("/v1/request/calc.held?timeout_ms=30");
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let res = client().post(url).body("{}").send().await.unwrap();
            (started.elapsed(), error_of(res).await)
        }));
    }
    for t in tasks {
        let (took, (status, kind, message)) = t.await.unwrap();
        assert_eq!((status, kind.as_str()), (504, "timeout"), "{message}");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
    }
    gate.add_permits(1000);
    wait_nothing_pending(&node).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subs = crate::common::get_json(&node, "/v1/subscriptions").await;
        let row = subs["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "held")
            .cloned()
            .unwrap_or_else(|| panic!("no held: {subs}"));
        if row["in_flight"] == 0 && row["depth"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "work left behind: {row}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(calls.load(Ordering::SeqCst) <= 24);
    node.stop().await.unwrap();
}
