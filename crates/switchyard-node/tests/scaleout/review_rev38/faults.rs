//! Faults under two nodes: a node stopped while it holds messages, and the NATS server
//! restarted under running nodes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::{Envelope, Outcome, handler_fn};
use tokio::sync::mpsc;

use super::{Nats, SHARED, T, Ws, config, delete_stream, eventually, get, post, unique};
use crate::common::TestNode;

fn tagged(who: char, tx: mpsc::UnboundedSender<(char, Envelope)>) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((who, env));
            Ok::<_, std::convert::Infallible>(Outcome::Ack)
        }
    })
}

/// Group `workers` has its only member on B, whose handler hangs on the first message; 20
/// messages are published through A (B pulls them, holds one in its handler and the others
/// queued). A joins the group, then B stops gracefully (1 s grace). Every message B held
/// reaches A's member within the bound (handed back at once, not after the 30 s ack wait),
/// and none is dead-lettered on either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_messages_in_flight_hands_every_one_to_the_other_node() {
    if !crate::nats_available().await {
        return;
    }
    let u = unique();
    let (stream, p) = (format!("SYREV38STOP_{u}").to_uppercase(), format!("r38{u}"));
    let toml = config(
        SHARED,
        &stream,
        &p,
        "memory",
        "[bus]\nshutdown_timeout_ms = 1000",
    );
    let a = TestNode::start(&toml).await;
    let b = TestNode::start(&toml).await;
    let (held_tx, mut held_rx) = mpsc::unbounded_channel::<String>();
    b.bus
        .subscribe(
            "workers",
            &format!("{p}.jobs.#"),
            handler_fn(move |env: Envelope| {
                let tx = held_tx.clone();
                async move {
                    let _ = tx.send(env.id.to_string());
                    std::future::pending::<()>().await;
                    Ok::<_, std::convert::Infallible>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let mut sent = HashSet::new();
    for i in 0..20 {
        let id = format!("job-{i}-{p}");
        let (s, body) = post(
            &a,
            &format!("/v1/publish/{p}.jobs.j"),
            &[("x-message-id", &id)],
            &json!({"i": i}),
        )
        .await;
        assert_eq!(s, 202, "{body}");
        sent.insert(id);
    }
    let stuck = tokio::time::timeout(T, held_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(sent.contains(&stuck));

    let (tx, mut rx) = mpsc::unbounded_channel();
    a.bus
        .subscribe("workers", &format!("{p}.jobs.#"), tagged('a', tx))
        .start()
        .await
        .unwrap()
        .detach();
    let stopped = Instant::now();
    b.stop().await.unwrap();
    let stop_took = stopped.elapsed();

    let mut got = HashSet::new();
    while got.len() < sent.len() {
        match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Ok(Some((_, env))) => {
                got.insert(env.id.to_string());
            }
            _ => break,
        }
    }
    let missing: Vec<_> = sent.difference(&got).collect();
    let (_, dlq_a) = get(&a, "/v1/dlq").await;
    a.stop().await.unwrap();
    delete_stream(SHARED, &stream).await;
    assert!(
        missing.is_empty(),
        "A got {} of 20 within 15 s after B stopped (stop took {stop_took:?}); missing {missing:?} \
         (B's handler held {stuck}); A's dead letters: {dlq_a}",
        got.len()
    );
    assert_eq!(dlq_a["total"], 0, "{dlq_a}");
}

/// The NATS server (file storage, the test's own) killed under two running nodes, then
/// started again on its store. While it is gone: both nodes say not ready (`/ready` 503,
/// `/v1/health` transport `failing`); a publish over HTTP through A and over the WebSocket
/// through B, each get a typed error (`not_ready`) within the transport's publish timeout
/// (10 s) plus slack, not silence or a hang. Once it is back:
/// both ready, a publish through A reaches B's group and a command through A is answered by
/// B's handler, and what was stored before the outage but not yet handled is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_ride_out_a_nats_restart_with_typed_errors_meanwhile() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let u = unique();
    let (stream, p) = ("REV38".to_owned(), format!("r38{u}"));
    let toml = config(
        &nats.url(),
        &stream,
        &p,
        "file",
        "[bus]\nshutdown_timeout_ms = 2000",
    );
    let a = TestNode::start(&toml).await;
    let b = TestNode::start(&toml).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _workers = b
        .bus
        .subscribe("workers", &format!("{p}.jobs.#"), tagged('b', tx))
        .start()
        .await
        .unwrap();
    b.bus
        .handle_envelope(
            "billing",
            &format!("{p}.bill"),
            handler_fn(|env: Envelope| async move {
                let reply = env.reply(br#"{"ok": 1}"#.to_vec());
                Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let (s, body) = post(
        &a,
        &format!("/v1/publish/{p}.jobs.before"),
        &[("x-message-id", "before")],
        &json!({}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let (_, env) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert_eq!(env.id.to_string(), "before");
    let (s, body) = post(&a, &format!("/v1/send/{p}.bill"), &[], &json!({})).await;
    assert_eq!(s, 200, "{body}");

    nats.kill();
    for node in [&a, &b] {
        eventually(20, "/ready 503 with the server gone", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 503).then_some(())
        })
        .await;
        let (_, h) = get(node, "/v1/health").await;
        assert_eq!(h["transport"]["status"], "failing", "{h}");
    }

    let bound = Duration::from_secs(15);
    let started = Instant::now();
    let (s, body) = post(
        &a,
        &format!("/v1/publish/{p}.jobs.down"),
        &[("x-message-id", "down-http")],
        &json!({}),
    )
    .await;
    let took = started.elapsed();
    eprintln!("publish during the outage: {s} {body} after {took:?}");
    assert_eq!(
        (s, body["error"]["kind"].as_str()),
        (503, Some("not_ready")),
        "{body}"
    );
    assert!(took < bound, "the publish was answered after {took:?}");

    let mut ws = Ws::connect(&b).await;
    let started = Instant::now();
    ws.send(
        json!({"op": "publish", "id": "w1", "topic": format!("{p}.jobs.down"),
        "payload": {}, "message_id": "down-ws"}),
    )
    .await;
    let ans = ws.recv().await;
    let took = started.elapsed();
    eprintln!("WebSocket publish during the outage: {ans} after {took:?}");
    assert_eq!(
        (ans["op"].as_str(), ans["error"]["kind"].as_str()),
        (Some("error"), Some("not_ready")),
        "{ans}"
    );
    assert!(
        took < bound,
        "the WebSocket publish was answered after {took:?}"
    );

    nats.start_again();
    for node in [&a, &b] {
        eventually(30, "/ready 200 with the server back", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 200).then_some(())
        })
        .await;
    }
    let (s, body) = post(
        &a,
        &format!("/v1/publish/{p}.jobs.after"),
        &[("x-message-id", "after")],
        &json!({}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let mut seen = Vec::new();
    loop {
        let (_, env) = tokio::time::timeout(T, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("B's group got nothing after the restart; so far {seen:?}"))
            .unwrap();
        seen.push(env.id.to_string());
        if env.id.to_string() == "after" {
            break;
        }
    }
    eprintln!("B's group after the restart: {seen:?}");
    let started = Instant::now();
    let (s, body) = post(&a, &format!("/v1/send/{p}.bill"), &[], &json!({})).await;
    assert_eq!(
        s,
        200,
        "a command through A after the restart: {body} after {:?}",
        started.elapsed()
    );
    ws.close().await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A command sent through A to B's handler while the NATS server is down (both nodes already
/// say not ready). docs/gateway.md lists 503 `not_ready` for "transport down", and a publish
/// meanwhile gets it after the publish timeout (10 s). The command instead waits for the whole
/// `send_timeout_ms` (30 s) and is answered 504 `timeout` ("no reply before the deadline",
/// which tells the client the handler may have run), and the client's NATS connection keeps
/// the request buffered: measured here whether B's handler runs it after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_while_nats_is_down_is_refused_promptly_as_not_ready() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let u = unique();
    let p = format!("r38{u}");
    let toml = config(
        &nats.url(),
        "REV38C",
        &p,
        "file",
        "[bus]\nshutdown_timeout_ms = 2000",
    );
    let a = TestNode::start(&toml).await;
    let b = TestNode::start(&toml).await;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    b.bus
        .handle_envelope(
            "billing",
            &format!("{p}.bill"),
            handler_fn(move |env: Envelope| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let reply = env.reply(br#"{"ok": 1}"#.to_vec());
                    Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let (s, body) = post(&a, &format!("/v1/send/{p}.bill"), &[], &json!({})).await;
    assert_eq!(s, 200, "{body}");

    nats.kill();
    for node in [&a, &b] {
        eventually(20, "/ready 503 with the server gone", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 503).then_some(())
        })
        .await;
    }
    let started = Instant::now();
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(70))
        .build()
        .unwrap()
        .post(a.url(&format!("/v1/send/{p}.bill")))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    let took = started.elapsed();

    nats.start_again();
    for node in [&a, &b] {
        eventually(30, "/ready 200 with the server back", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 200).then_some(())
        })
        .await;
    }
    let (s, after) = post(&a, &format!("/v1/send/{p}.bill"), &[], &json!({})).await;
    assert_eq!(s, 200, "{after}");
    let ran = calls.load(std::sync::atomic::Ordering::SeqCst);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let mut wrong = Vec::new();
    if ran != 2 {
        wrong.push(format!(
            "B's handler ran {ran} times for 2 commands answered 200 and this one, which \
             was answered {status}: it ran after its sender's deadline (it waited in A's \
             reconnect buffer and arrived with a fresh Sy-Deadline-Ms)"
        ));
    }
    if !(status == 503 && body["error"]["kind"] == "not_ready" && took < Duration::from_secs(15)) {
        wrong.push(format!(
            "it was answered {status} {body} after {took:?}, not a prompt 503 not_ready"
        ));
    }
    assert!(
        wrong.is_empty(),
        "a command through A while NATS was down: {}",
        wrong.join("; ")
    );
}

/// As [`a_command_while_nats_is_down_is_refused_promptly_as_not_ready`], for a request
/// (`POST /v1/request/{topic}`, a command with a deadline): through A while the NATS server
/// is down it is answered 503 `not_ready` at once, not 504 `timeout` at its deadline (20 s
/// here), and B's handler does not run it once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_while_nats_is_down_is_refused_promptly_as_not_ready() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let u = unique();
    let p = format!("r38{u}");
    let toml = config(
        &nats.url(),
        "REV38R",
        &p,
        "file",
        "[bus]\nshutdown_timeout_ms = 2000",
    );
    let a = TestNode::start(&toml).await;
    let b = TestNode::start(&toml).await;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    b.bus
        .handle_envelope(
            "quotes",
            &format!("{p}.quote"),
            handler_fn(move |env: Envelope| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let reply = env.reply(br#"{"price": 1}"#.to_vec());
                    Ok::<_, std::convert::Infallible>(Outcome::reply(reply))
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let path = format!("/v1/request/{p}.quote?timeout_ms=20000");
    let (s, body) = post(&a, &path, &[], &json!({})).await;
    assert_eq!(s, 200, "{body}");

    nats.kill();
    for node in [&a, &b] {
        eventually(20, "/ready 503 with the server gone", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 503).then_some(())
        })
        .await;
    }
    let started = Instant::now();
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .post(a.url(&path))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    let took = started.elapsed();
    eprintln!("a request while NATS was down: {status} {body} after {took:?}");

    nats.start_again();
    for node in [&a, &b] {
        eventually(30, "/ready 200 with the server back", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 200).then_some(())
        })
        .await;
    }
    // Answered after the reconnect: anything A's client buffered was flushed before it.
    let (s, after) = post(&a, &path, &[], &json!({})).await;
    assert_eq!(s, 200, "{after}");
    let ran = calls.load(std::sync::atomic::Ordering::SeqCst);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let mut wrong = Vec::new();
    if ran != 2 {
        wrong.push(format!(
            "B's handler ran {ran} times for 2 requests answered 200 and this one, which \
             was answered {status}"
        ));
    }
    if !(status == 503 && body["error"]["kind"] == "not_ready" && took < Duration::from_secs(5)) {
        wrong.push(format!(
            "it was answered {status} {body} after {took:?}, not a prompt 503 not_ready"
        ));
    }
    assert!(
        wrong.is_empty(),
        "a request through A while NATS was down: {}",
        wrong.join("; ")
    );
}

/// A publish answered 503 `not_ready` while the NATS server is down (over HTTP through A,
/// over the WebSocket through B, neither with a message id of the client's) is not there
/// once the server is back: a 503 tells the client it was not accepted, so it publishes
/// again, and a message both refused and delivered is then delivered twice (the error body
/// has no id the gateway gave it, so the retry cannot be deduplicated either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_while_nats_is_down_is_not_delivered_later() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let u = unique();
    let p = format!("r38{u}");
    let toml = config(
        &nats.url(),
        "REV38P",
        &p,
        "file",
        "[bus]\nshutdown_timeout_ms = 2000",
    );
    let a = TestNode::start(&toml).await;
    let b = TestNode::start(&toml).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _workers = b
        .bus
        .subscribe("workers", &format!("{p}.jobs.#"), tagged('b', tx))
        .start()
        .await
        .unwrap();
    nats.kill();
    for node in [&a, &b] {
        eventually(20, "/ready 503 with the server gone", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 503).then_some(())
        })
        .await;
    }
    let (s, http_body) = post(
        &a,
        &format!("/v1/publish/{p}.jobs.x"),
        &[],
        &json!({"mark": "down-http"}),
    )
    .await;
    assert_eq!(s, 503, "{http_body}");
    let mut ws = Ws::connect(&b).await;
    ws.send(json!({"op": "publish", "id": "w1", "topic": format!("{p}.jobs.x"), "payload": {"mark": "down-ws"}}))
        .await;
    let ans = ws.recv().await;
    assert_eq!(ans["error"]["kind"], "not_ready", "{ans}");

    nats.start_again();
    for node in [&a, &b] {
        eventually(30, "/ready 200 with the server back", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 200).then_some(())
        })
        .await;
    }
    let (s, body) = post(
        &a,
        &format!("/v1/publish/{p}.jobs.x"),
        &[],
        &json!({"mark": "after"}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let mut marks = Vec::new();
    loop {
        let (_, env) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&env.payload).unwrap();
        let mark = v["mark"].as_str().unwrap_or("?").to_owned();
        if mark == "after" {
            break;
        }
        marks.push(format!("{mark} (id {})", env.id));
    }
    ws.close().await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert!(
        marks.is_empty(),
        "publishes answered 503 while NATS was down were delivered after it came back: {marks:?} \
         (the HTTP 503 said: {http_body})"
    );
}

/// `storage = "memory"` (a documented choice) and the NATS server restarted: the server
/// comes back without the node's stream. Both nodes say ready again once reconnected; a
/// publish through A must then either be stored and reach B's group (the stream made again)
/// or be refused, while `/ready` does not claim a node that cannot publish is ready.
/// Seen: `/ready` 200 on both, and every publish a 503 after about 10 s, "no stream found
/// for given subject": the nodes never make their configured streams again. Then (streams
/// made again): publish 202, but B's group consumer was not made again within 20 s (its pull
/// requests to the lost consumer went unanswered). Fixed: each consumer worker checks its
/// consumer once the streams are made again and re-creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_memory_storage_a_nats_restart_leaves_the_nodes_able_to_publish_or_not_ready() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let u = unique();
    let p = format!("r38{u}");
    let toml = config(
        &nats.url(),
        "REV38M",
        &p,
        "memory",
        "[bus]\nshutdown_timeout_ms = 2000",
    );
    let a = TestNode::start(&toml).await;
    let b = TestNode::start(&toml).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _workers = b
        .bus
        .subscribe("workers", &format!("{p}.jobs.#"), tagged('b', tx))
        .start()
        .await
        .unwrap();
    nats.kill();
    eventually(20, "/ready 503 with the server gone", || async {
        let (s, _) = get(&a, "/ready").await;
        (s == 503).then_some(())
    })
    .await;
    nats.start_again();
    for node in [&a, &b] {
        eventually(30, "/ready 200 with the server back", || async {
            let (s, _) = get(node, "/ready").await;
            (s == 200).then_some(())
        })
        .await;
    }
    let started = Instant::now();
    let (s, body) = post(
        &a,
        &format!("/v1/publish/{p}.jobs.x"),
        &[("x-message-id", "m-after")],
        &json!({}),
    )
    .await;
    let took = started.elapsed();
    let (ready, ready_body) = get(&a, "/ready").await;
    let delivered = if s == 202 {
        tokio::time::timeout(T, rx.recv())
            .await
            .ok()
            .flatten()
            .map(|(_, e)| e.id.to_string())
    } else {
        None
    };
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert!(
        delivered.as_deref() == Some("m-after") || (s != 202 && ready == 503),
        "after a restart of a memory-storage server: publish {s} {body} after {took:?}, \
         delivered to B's group: {delivered:?}, A's /ready then {ready} {ready_body}"
    );
}
