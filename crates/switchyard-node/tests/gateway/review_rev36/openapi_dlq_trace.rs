//! The OpenAPI document against the real routes and answers; DLQ paging and filters at their
//! edges; `/v1/trace` deliveries of retried and dead-lettered messages.

use serde_json::{Value, json};
use switchyard::{Envelope, Outcome, handler_fn};

use super::{handle, ids_of, post, wait_dead_letters};
use crate::common::{MEMORY, TestNode, client, error_of, get_json};

/// Every HTTP route the gateway serves is a path of `/v1/openapi.json` with its method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_http_route_with_its_method() {
    let node = TestNode::start(MEMORY).await;
    let doc = get_json(&node, "/v1/openapi.json").await;
    let routes = [
        ("/v1/publish/{topic}", "post"),
        ("/v1/send/{topic}", "post"),
        ("/v1/request/{topic}", "post"),
        ("/v1/topics", "get"),
        ("/v1/subscriptions", "get"),
        ("/v1/dlq", "get"),
        ("/v1/dlq/{id}", "get"),
        ("/v1/dlq/replay", "post"),
        ("/v1/dlq/replays", "get"),
        ("/v1/dlq/purge", "post"),
        ("/v1/topology", "get"),
        ("/v1/trace/{correlation_id}", "get"),
        ("/v1/status", "get"),
        ("/v1/stats", "get"),
        ("/v1/stats/history", "get"),
        ("/v1/stream", "get"),
        ("/v1/health", "get"),
        ("/v1/alerts", "get"),
        ("/v1/asyncapi.json", "get"),
        ("/metrics", "get"),
        ("/health", "get"),
        ("/ready", "get"),
    ];
    let missing: Vec<String> = routes
        .iter()
        .filter(|(path, method)| doc["paths"][*path][*method].is_null())
        .map(|(path, method)| format!("{} {path}", method.to_uppercase()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the OpenAPI document: {missing:?}"
    );
    // And each documented operation is served (not a 404 / 405 of the router).
    for (path, method) in routes {
        let concrete = path
            .replace("{topic}", "a.b")
            .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .replace("{correlation_id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV");
        if concrete == "/v1/stream" {
            continue; // an endless stream
        }
        let req = if method == "post" {
            client()
                .post(node.url(&concrete))
                .header("content-type", "application/json")
                .body("{}")
        } else {
            client().get(node.url(&concrete))
        };
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert!(
            status != 405 && !body.contains("no route"),
            "{method} {concrete}: {status} {body}"
        );
    }
    node.stop().await.unwrap();
}

/// The statuses the message and DLQ routes really answer to client mistakes (all in the
/// error table of docs/gateway.md) are listed as responses of their operation in
/// `/v1/openapi.json`, so a client generated from it knows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Fixed: the OpenAPI document declares it.
async fn the_openapi_document_lists_the_statuses_the_routes_answer() {
    let node = TestNode::start(
        r#"
[transport]
kind = "memory"
[limits]
max_message_bytes = 16
"#,
    )
    .await;
    let doc = get_json(&node, "/v1/openapi.json").await;
    let big = "x".repeat(64);
    // (template, method, concrete path, content type, body)
    let calls: Vec<(&str, &str, String, Option<&str>, String)> = vec![
        (
            "/v1/send/{topic}",
            "post",
            "/v1/send/a..b".into(),
            None,
            "{}".into(),
        ),
        (
            "/v1/send/{topic}",
            "post",
            "/v1/send/a.b".into(),
            Some("application/json"),
            "{".into(),
        ),
        (
            "/v1/send/{topic}",
            "post",
            "/v1/send/a.b".into(),
            None,
            big.clone(),
        ),
        (
            "/v1/request/{topic}",
            "post",
            "/v1/request/a.b?timeout_ms=0".into(),
            None,
            "{}".into(),
        ),
        (
            "/v1/request/{topic}",
            "post",
            "/v1/request/a.b".into(),
            None,
            big.clone(),
        ),
        (
            "/v1/publish/{topic}",
            "post",
            "/v1/publish/a.b".into(),
            None,
            big.clone(),
        ),
        (
            "/v1/dlq",
            "get",
            "/v1/dlq?limit=0".into(),
            None,
            String::new(),
        ),
        (
            "/v1/dlq/{id}",
            "get",
            "/v1/dlq/a%20b".into(),
            None,
            String::new(),
        ),
        (
            "/v1/dlq/replay",
            "post",
            "/v1/dlq/replay".into(),
            Some("text/plain"),
            "{}".into(),
        ),
        (
            "/v1/dlq/replay",
            "post",
            "/v1/dlq/replay".into(),
            Some("application/json"),
            "{}".into(),
        ),
        (
            "/v1/dlq/purge",
            "post",
            "/v1/dlq/purge".into(),
            Some("application/json"),
            "{\"x\":1}".into(),
        ),
        (
            "/v1/trace/{correlation_id}",
            "get",
            "/v1/trace/a%20b".into(),
            None,
            String::new(),
        ),
    ];
    let mut missing = Vec::new();
    for (template, method, path, ct, body) in calls {
        let mut req = if method == "post" {
            client().post(node.url(&path)).body(body)
        } else {
            client().get(node.url(&path))
        };
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        assert!(status >= 400, "{method} {path} answered {status}");
        let listed = &doc["paths"][template][method]["responses"];
        if listed.get(status.to_string()).is_none() {
            missing.push(format!(
                "{} {template} answers {status} ({path})",
                method.to_uppercase()
            ));
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "answered but not in the OpenAPI document:\n{}",
        missing.join("\n")
    );
    node.stop().await.unwrap();
}

/// `billing` on `billing.#` rejects everything, so each publish becomes one dead letter.
async fn billing_rejects(node: &TestNode) {
    node.bus
        .subscribe(
            "billing",
            "billing.#",
            handler_fn(|env: Envelope| async move {
                let why = format!("declined {}", env.topic);
                Ok::<_, std::convert::Infallible>(Outcome::reject(why))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
}

/// Paging walks the whole list in order without a gap or a repeat, `total` counts the
/// filtered list whatever the page, a page past the end is empty, filters combine, `since`
/// equal to `until` is empty, and purge by filter or ids says what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_paging_and_filters_at_their_edges() {
    let node = TestNode::start(MEMORY).await;
    billing_rejects(&node).await;
    for i in 0..7 {
        let topic = if i % 2 == 0 {
            "billing.eu"
        } else {
            "billing.us"
        };
        let res = post(&node, &format!("/v1/publish/{topic}"), None, format!("{i}")).await;
        assert_eq!(res.status(), 202);
    }
    let all = wait_dead_letters(&node, "", 7).await;
    let all_ids = ids_of(&all);
    let mut paged = Vec::new();
    for offset in [0, 3, 6] {
        let page = get_json(&node, &format!("/v1/dlq?limit=3&offset={offset}")).await;
        assert_eq!(page["total"], 7, "offset {offset}: {page}");
        paged.extend(ids_of(&page));
    }
    assert_eq!(paged, all_ids, "pages of 3 walk the list once, in order");
    let past = get_json(&node, "/v1/dlq?limit=1000&offset=7").await;
    assert_eq!(
        (past["total"].as_u64(), ids_of(&past).len()),
        (Some(7), 0),
        "{past}"
    );
    let huge = get_json(&node, &format!("/v1/dlq?offset={}", u64::MAX)).await;
    assert_eq!(
        (huge["total"].as_u64(), ids_of(&huge).len()),
        (Some(7), 0),
        "{huge}"
    );

    let eu = get_json(&node, "/v1/dlq?topic=billing.eu&limit=2&offset=1").await;
    assert_eq!(eu["total"], 4, "{eu}");
    assert_eq!(ids_of(&eu).len(), 2, "{eu}");
    for item in eu["items"].as_array().unwrap() {
        assert_eq!(item["message"]["topic"], "billing.eu", "{eu}");
    }
    let both = get_json(
        &node,
        "/v1/dlq?topic=billing.*&subscription=billing&error=declined%20billing.us",
    )
    .await;
    assert_eq!(both["total"], 3, "{both}");
    let nobody = get_json(&node, "/v1/dlq?subscription=someone-else").await;
    assert_eq!(nobody["total"], 0, "{nobody}");
    let at = all["items"][0]["dead_lettered_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let empty = get_json(&node, &format!("/v1/dlq?since={at}&until={at}")).await;
    assert_eq!(
        empty["total"], 0,
        "since = until is an empty window: {empty}"
    );

    for q in [
        "limit=-1",
        "offset=-1",
        "offset=x",
        "limit=1.5",
        "page=2",
        "until=soon",
    ] {
        let res = client()
            .get(node.url(&format!("/v1/dlq?{q}")))
            .send()
            .await
            .unwrap();
        let (status, kind, message) = error_of(res).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "bad_query"),
            "{q}: {message}"
        );
    }

    // Purge the us entries by filter, then one eu entry by id with an unknown id beside it.
    let res = client()
        .post(node.url("/v1/dlq/purge"))
        .json(&json!({"all": true, "topic": "billing.us"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let purged: Value = res.json().await.unwrap();
    assert_eq!(purged, json!({"purged": 3, "unknown": []}));
    let first_eu = ids_of(&eu)[0].clone();
    let ghost = switchyard::MessageId::new().to_string();
    let res = client()
        .post(node.url("/v1/dlq/purge"))
        .json(&json!({"ids": [first_eu, ghost]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let purged: Value = res.json().await.unwrap();
    assert_eq!(purged, json!({"purged": 1, "unknown": [ghost]}));
    let left = get_json(&node, "/v1/dlq").await;
    assert_eq!(left["total"], 3, "{left}");
    assert!(!ids_of(&left).contains(&first_eu), "{left}");
    node.stop().await.unwrap();
}

/// A message whose handler fails every attempt: `/v1/trace` lists its three calls (attempts
/// 1, 2, 3, each `failed` with the error) and the dead letter says 3 attempts; a command whose
/// handler fails twice then replies shows failed, failed, handled; a handler asking for a
/// retry (`Outcome::Retry`) shows `retry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_lists_every_attempt_of_retried_and_dead_lettered_messages() {
    let node = TestNode::start(MEMORY).await;
    node.bus
        .subscribe(
            "ledger",
            "ledger.#",
            handler_fn(|_env: Envelope| async {
                Err::<Outcome, _>(std::io::Error::other("ledger locked"))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    handle(
        &node,
        "settle",
        "ledger.settle.cmd",
        handler_fn(move |env: Envelope| {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 2 {
                    return Err(std::io::Error::other(format!("busy {n}")));
                }
                Ok(Outcome::reply(env.reply("true")))
            }
        }),
    )
    .await;
    let res = client()
        .post(node.url("/v1/publish/ledger.posted"))
        .header("x-message-id", "posting-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let list = wait_dead_letters(&node, "subscription=ledger", 1).await;
    let item = &list["items"][0];
    assert_eq!(item["id"], "posting-1", "{list}");
    assert_eq!(item["attempts"], 3, "{list}");
    assert!(
        item["error"].as_str().unwrap().contains("ledger locked"),
        "{list}"
    );

    let trace = get_json(&node, "/v1/trace/posting-1").await;
    let calls_of = |trace: &Value, id: &str| -> Vec<(String, u64, String, String)> {
        trace["deliveries"]
            .as_array()
            .unwrap_or_else(|| panic!("no deliveries: {trace}"))
            .iter()
            .filter(|d| d["message_id"] == id)
            .map(|d| {
                (
                    d["handler"].as_str().unwrap().to_owned(),
                    d["attempt"].as_u64().unwrap(),
                    d["outcome"].as_str().unwrap().to_owned(),
                    d["error"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let seen = calls_of(&trace, "posting-1");
    let shape: Vec<(&str, u64, &str)> = seen
        .iter()
        .map(|(h, a, o, _)| (h.as_str(), *a, o.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("ledger", 1, "failed"),
            ("ledger", 2, "failed"),
            ("ledger", 3, "failed")
        ],
        "{trace}"
    );
    assert!(
        seen.iter().all(|(_, _, _, e)| e.contains("ledger locked")),
        "every call says why: {trace}"
    );
    assert_eq!(trace["messages"][0]["attempt"], 0, "{trace}");

    let res = client()
        .post(node.url("/v1/send/ledger.settle.cmd"))
        .header("x-message-id", "settle-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let trace = get_json(&node, "/v1/trace/settle-1").await;
    let shape: Vec<(String, u64, String, String)> = calls_of(&trace, "settle-1");
    let settle: Vec<(&str, u64, &str)> = shape
        .iter()
        .filter(|(h, ..)| h == "settle")
        .map(|(h, a, o, _)| (h.as_str(), *a, o.as_str()))
        .collect();
    assert_eq!(
        settle,
        [
            ("settle", 1, "failed"),
            ("settle", 2, "failed"),
            ("settle", 3, "handled")
        ],
        "{trace}"
    );
    assert_eq!(
        settle.len(),
        shape.len(),
        "only the command handler got the command: {trace}"
    );

    // A handler asking for a retry, then acking.
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = asked.clone();
    node.bus
        .subscribe(
            "later",
            "later.#",
            handler_fn(move |_env: Envelope| {
                let n = a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    Ok::<_, std::convert::Infallible>(if n == 0 {
                        Outcome::Retry {
                            after: Some(std::time::Duration::from_millis(10)),
                        }
                    } else {
                        Outcome::Ack
                    })
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let res = client()
        .post(node.url("/v1/publish/later.on"))
        .header("x-message-id", "later-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let trace = loop {
        let trace = get_json(&node, "/v1/trace/later-1").await;
        if trace["deliveries"].as_array().is_some_and(|d| d.len() >= 2) {
            break trace;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never two calls: {trace}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let shape: Vec<(String, u64, String, String)> = calls_of(&trace, "later-1");
    let later: Vec<(&str, u64, &str)> = shape
        .iter()
        .map(|(h, a, o, _)| (h.as_str(), *a, o.as_str()))
        .collect();
    assert_eq!(
        later,
        [("later", 1, "retry"), ("later", 2, "handled")],
        "{trace}"
    );
    node.stop().await.unwrap();
}

/// `/v1/trace` keeps "the last `retention.trace_messages` messages ... and the last as many
/// handler calls": with 4, a flow of 6 messages shows its last 4 and their 4 calls, in order;
/// another correlation id's traffic is not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_keeps_the_last_trace_messages_messages_and_calls() {
    let node = TestNode::start(
        r#"
[transport]
kind = "memory"
[retention]
trace_messages = 4
"#,
    )
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    node.bus
        .subscribe("audit", "flow.#", crate::common::forward(tx))
        .start()
        .await
        .unwrap()
        .detach();
    for i in 0..6 {
        let res = client()
            .post(node.url("/v1/publish/flow.step"))
            .header("x-message-id", format!("m{i}"))
            .header("x-correlation-id", "flow-1")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        crate::common::recv(&mut rx, "the step").await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let trace = loop {
        let trace = get_json(&node, "/v1/trace/flow-1").await;
        let last = trace["deliveries"]
            .as_array()
            .and_then(|d| d.last().cloned())
            .unwrap_or_default();
        if last["message_id"] == "m5" {
            break trace;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "m5's call never traced: {trace}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let ids = |key: &str, field: &str| -> Vec<String> {
        trace[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m[field].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("messages", "id"), ["m2", "m3", "m4", "m5"], "{trace}");
    assert_eq!(
        ids("deliveries", "message_id"),
        ["m2", "m3", "m4", "m5"],
        "{trace}"
    );
    let other = client()
        .get(node.url("/v1/trace/flow-2"))
        .send()
        .await
        .unwrap();
    let (status, kind, _) = error_of(other).await;
    assert_eq!((status, kind.as_str()), (404, "not_found"));
    node.stop().await.unwrap();
}

/// `since` / `until` are "RFC 3339": an instant written with a UTC offset (`+01:00`, as
/// clients in other languages write local time) filters exactly as the same instant in `Z`,
/// or (were offsets not supported) is `400 bad_query`, never read as another instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Fixed: parsed with the `time` crate's RFC 3339 parser, offset and all.
async fn dlq_time_filters_never_misread_an_rfc3339_offset() {
    let node = TestNode::start(MEMORY).await;
    billing_rejects(&node).await;
    for i in 0..2 {
        let res = post(&node, "/v1/publish/billing.eu", None, format!("{i}")).await;
        assert_eq!(res.status(), 202);
    }
    let all = wait_dead_letters(&node, "", 2).await;
    let last = all["items"][1]["dead_lettered_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let instant = humantime::parse_rfc3339(&last).unwrap();
    // The same instant, an hour later on a clock at UTC+1.
    let plus_one = humantime::format_rfc3339_millis(instant + std::time::Duration::from_secs(3600))
        .to_string()
        .replace('Z', "+01:00");
    for key in ["since", "until"] {
        let in_z = get_json(&node, &format!("/v1/dlq?{key}={last}")).await;
        let res = client()
            .get(node.url(&format!("/v1/dlq?{key}={}", plus_one.replace('+', "%2B"))))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let in_offset: Value = res.json().await.unwrap();
        if status == 400 {
            assert_eq!(in_offset["error"]["kind"], "bad_query", "{in_offset}");
            continue;
        }
        assert_eq!(
            (status, &in_offset["total"]),
            (200, &in_z["total"]),
            "{key}={plus_one} (= {last}): {in_offset}\nvs {key}={last}: {in_z}"
        );
    }
    node.stop().await.unwrap();
}
