//! Traffic across the nodes: fan-out, groups, commands, dedup, each node's own figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;

/// An event published over HTTP on A reaches an ungrouped WS subscriber on each of A, B and C
/// exactly once, and a WS group with a member on each node gets it once in total; ids,
/// correlation and causation ids and headers are those sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_on_a_reaches_every_node_once_and_a_cross_node_group_once() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &nats, &["a", "b", "c"]);
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    let mut held = Vec::new();
    for (node, n) in nodes.iter().zip(["a", "b", "c"]) {
        let all = Client::connect(node, &format!("all-{n}"), out.clone()).await;
        all.send(json!({"op": "subscribe", "id": 1, "pattern": "p.ev.#"}));
        expect_op(&mut rx, &format!("all-{n}"), "subscribed", &mut held).await;
        let grp = Client::connect(node, &format!("grp-{n}"), out.clone()).await;
        grp.send(json!({"op": "subscribe", "id": 1, "pattern": "p.ev.#", "group": "g25"}));
        expect_op(&mut rx, &format!("grp-{n}"), "subscribed", &mut held).await;
        clients.push((all, grp));
    }
    assert!(held.is_empty(), "{held:?}");

    let ids: BTreeSet<String> = (0..30).map(|i| format!("ev-{i:02}")).collect();
    for id in &ids {
        let (s, v) = post(
            &nodes[0].url,
            "/v1/publish/p.ev.made",
            id,
            json!({"id": id}),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["correlation_id"], format!("corr-{id}"));
    }
    // tag -> id -> times seen
    let mut seen: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let complete = |seen: &BTreeMap<String, BTreeMap<String, usize>>| {
        ["all-a", "all-b", "all-c"]
            .iter()
            .all(|t| seen.get(*t).is_some_and(|m| m.len() == ids.len()))
            && ids.iter().all(|id| {
                ["grp-a", "grp-b", "grp-c"]
                    .iter()
                    .any(|t| seen.get(*t).is_some_and(|m| m.contains_key(id)))
            })
    };
    while !complete(&seen) {
        let (tag, v) = next(&mut rx).await;
        assert_eq!(v["op"], "message", "{tag}: {v}");
        assert_ids_kept(&v["message"]);
        assert_eq!(v["message"]["payload"]["id"], v["message"]["id"]);
        *seen
            .entry(tag)
            .or_default()
            .entry(v["message"]["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    // The group's counters on the three nodes add up to the messages, no more: a message
    // handed to two members would count twice.
    let total = eventually("the group's handled counts add up to 30", || async {
        let mut sum = 0;
        for n in &nodes {
            sum += subscription(&n.url, "ws:group:anonymous:g25")
                .await
                .unwrap()["handled"]
                .as_u64()
                .unwrap();
        }
        (sum >= 30).then_some(sum)
    })
    .await;
    let dupes: Vec<_> = seen
        .iter()
        .flat_map(|(t, m)| {
            m.iter()
                .filter(|(_, n)| **n > 1)
                .map(move |(id, _)| (t, id))
        })
        .collect();
    assert!(dupes.is_empty(), "seen more than once: {dupes:?}");
    assert_eq!(total, 30, "the group handled more deliveries than messages");
    let group_total: usize = ["grp-a", "grp-b", "grp-c"]
        .iter()
        .map(|t| seen.get(*t).map_or(0, |m| m.len()))
        .sum();
    assert_eq!(group_total, 30);
    drop(clients);
}

/// Answers every `command` frame of the clients in `answer` with its identity, id, correlation
/// id and tenant header (`p.cmd.reject`: rejects, `p.cmd.slow`: never answers); records who got
/// which command id.
fn serve_commands(
    clients: &BTreeMap<String, Client>,
    got: &mut BTreeMap<String, Vec<String>>,
    frame: (String, Value),
) {
    let (tag, v) = frame;
    if v["op"] != "command" {
        return;
    }
    let m = &v["message"];
    got.entry(m["id"].as_str().unwrap().to_owned())
        .or_default()
        .push(tag.clone());
    if m["topic"] == "p.cmd.reject" {
        clients[&tag].send(json!({"op": "result", "call": v["call"], "ok": false,
            "error": "no such account", "reject": true}));
    } else if m["topic"] == "p.cmd.slow" {
        // never answered: the sender's deadline decides
    } else {
        clients[&tag].send(json!({"op": "result", "call": v["call"], "ok": true,
            "payload": {"by": tag, "id": m["id"], "corr": m["correlation_id"],
                        "cause": m["causation_id"], "tenant": m["headers"]["tenant"],
                        "kind": m["kind"]}}));
    }
}

/// Commands sent over HTTP on B are each handled by exactly one WS handler of the topic,
/// registered on A and on C; the reply, a rejection and a deadline come back to B typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_b_is_handled_once_by_a_handler_on_a_or_c() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &nats, &["a", "b", "c"]);
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut clients = BTreeMap::new();
    let mut held = Vec::new();
    for (i, tag) in [(0, "a"), (2, "c")] {
        let c = Client::connect(&nodes[i], tag, out.clone()).await;
        for topic in ["p.cmd.double", "p.cmd.reject", "p.cmd.slow"] {
            c.send(json!({"op": "handle", "id": topic, "topic": topic}));
            expect_op(&mut rx, tag, "handling", &mut held).await;
        }
        clients.insert(tag.to_owned(), c);
    }
    let b = nodes[1].url.clone();
    let mut got = BTreeMap::new();

    // 20 sends on B, answered while they wait.
    let sends = tokio::spawn({
        let b = b.clone();
        async move {
            let mut answers = Vec::new();
            for i in 0..20 {
                let id = format!("cmd-{i:02}");
                let r = post(&b, "/v1/send/p.cmd.double", &id, json!({"n": i})).await;
                answers.push((id, r));
            }
            answers
        }
    });
    while !sends.is_finished() {
        if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            serve_commands(&clients, &mut got, f);
        }
    }
    let answers = sends.await.unwrap();
    let mut by = BTreeMap::<String, usize>::new();
    for (id, (status, v)) in &answers {
        assert_eq!(*status, 200, "{id}: {v}");
        assert_eq!(v["id"], id.as_str(), "{v}");
        assert_eq!(v["correlation_id"], format!("corr-{id}"), "{v}");
        let p = &v["payload"];
        assert_eq!(p["id"], id.as_str(), "{v}");
        assert_eq!(p["corr"], format!("corr-{id}"), "{v}");
        assert_eq!(p["cause"], format!("cause-{id}"), "{v}");
        assert_eq!(p["tenant"], "acme", "{v}");
        assert_eq!(p["kind"], "command", "{v}");
        *by.entry(p["by"].as_str().unwrap().to_owned()).or_default() += 1;
        assert_eq!(got[id].len(), 1, "{id} handled by {:?}", got[id]);
    }
    assert_eq!(by.values().sum::<usize>(), 20);
    assert_eq!(by.len(), 2, "A and C share the commands: {by:?}");

    // A rejection on A or C comes back to B as 422 handler_rejected, at once.
    let t = Instant::now();
    let rej = tokio::spawn({
        let b = b.clone();
        async move { post(&b, "/v1/send/p.cmd.reject", "rej-1", json!({})).await }
    });
    while !rej.is_finished() {
        if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            serve_commands(&clients, &mut got, f);
        }
    }
    let (s, v) = rej.await.unwrap();
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["kind"], "handler_rejected", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no such account"),
        "{v}"
    );
    assert_eq!(
        got["rej-1"].len(),
        1,
        "a rejection is final: {:?}",
        got["rej-1"]
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A request with a 1.5 s deadline whose handler never answers: 504 timeout at about the
    // deadline, on B.
    let t = Instant::now();
    let slow = tokio::spawn({
        let b = b.clone();
        async move {
            post(
                &b,
                "/v1/request/p.cmd.slow?timeout_ms=1500",
                "slow-1",
                json!({}),
            )
            .await
        }
    });
    while !slow.is_finished() {
        if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            serve_commands(&clients, &mut got, f);
        }
    }
    let (s, v) = slow.await.unwrap();
    let took = t.elapsed();
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"]["kind"], "timeout", "{v}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(got["slow-1"].len(), 1, "{:?}", got["slow-1"]);

    // A topic nobody serves on any node: 404 no_handler at once.
    let t = Instant::now();
    let (s, v) = post(&b, "/v1/send/p.cmd.nobody", "none-1", json!({})).await;
    assert_eq!(
        (s, v["error"]["kind"].clone()),
        (404, json!("no_handler")),
        "{v}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(clients);
}

/// One `x-message-id` published through A and then through B is stored once (JetStream's
/// `Nats-Msg-Id` dedup, docs/gateway.md): subscribers on both nodes see it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_id_published_on_two_nodes_is_delivered_once() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &nats, &["a", "b"]);
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    let mut clients = Vec::new();
    for (i, tag) in [(0, "a"), (1, "b")] {
        let c = Client::connect(&nodes[i], tag, out.clone()).await;
        c.send(json!({"op": "subscribe", "id": 1, "pattern": "p.dup.#"}));
        expect_op(&mut rx, tag, "subscribed", &mut held).await;
        clients.push(c);
    }
    for n in &nodes {
        let (s, v) = post(&n.url, "/v1/publish/p.dup.x", "same-1", json!({"v": 1})).await;
        assert_eq!((s, &v["id"]), (202, &json!("same-1")), "{v}");
    }
    // A marker after both: once each subscriber has it, a second copy would be there too.
    let (s, _) = post(&nodes[1].url, "/v1/publish/p.dup.x", "marker", json!({})).await;
    assert_eq!(s, 202);
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    while !["a", "b"]
        .iter()
        .all(|t| seen.contains_key(&(t.to_string(), "marker".to_owned())))
    {
        let (t, v) = next(&mut rx).await;
        assert_eq!(v["op"], "message", "{v}");
        assert_ids_kept(&v["message"]);
        *seen
            .entry((t, v["message"]["id"].as_str().unwrap().to_owned()))
            .or_default() += 1;
    }
    for t in ["a", "b"] {
        assert_eq!(
            seen.get(&(t.to_owned(), "same-1".to_owned())),
            Some(&1),
            "{seen:?}"
        );
    }
    // Each node counts the JetStream duplicates of its own publishes: B's second copy.
    let (_, sa) = get_json(&format!("{}/v1/stats", nodes[0].url)).await;
    let (_, sb) = get_json(&format!("{}/v1/stats", nodes[1].url)).await;
    assert_eq!(sa["transport"]["kind"], "nats", "{}", sa["transport"]);
    assert_eq!(
        (
            &sa["transport"]["duplicates"],
            &sb["transport"]["duplicates"]
        ),
        (&json!(0), &json!(1)),
        "A: {} B: {}",
        sa["transport"],
        sb["transport"]
    );
    drop(clients);
}

/// Each node's `/health`, `/ready`, `/v1/status`, `/v1/subscriptions` and `/v1/dlq` speak
/// for its own part; a dead letter made on A, replayed on A, reaches the subscribers on B
/// with its id, correlation id and headers; with the NATS server gone, every node says
/// not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_reports_its_own_part_and_a_replay_on_a_reaches_b() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &nats, &["a", "b"]);
    let (a, b) = (nodes[0].url.clone(), nodes[1].url.clone());
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    // A: a group member that nacks everything; B: an ungrouped subscriber.
    let fa = Client::connect(&nodes[0], "fail-a", out.clone()).await;
    fa.send(
        json!({"op": "subscribe", "id": 1, "pattern": "p.bad.#", "group": "picky",
                   "ack": "manual"}),
    );
    expect_op(&mut rx, "fail-a", "subscribed", &mut held).await;
    let sb = Client::connect(&nodes[1], "sub-b", out.clone()).await;
    sb.send(json!({"op": "subscribe", "id": 1, "pattern": "p.bad.#"}));
    expect_op(&mut rx, "sub-b", "subscribed", &mut held).await;

    let (s, v) = post(&a, "/v1/publish/p.bad.one", "bad-1", json!({"x": 1})).await;
    assert_eq!(s, 202, "{v}");
    let mut b_seen = 0;
    let mut nacks = 0;
    let dl = eventually("a dead letter on A", || {
        while let Ok((t, v)) = rx.try_recv() {
            if v["op"] != "message" {
                continue;
            }
            assert_ids_kept(&v["message"]);
            if t == "fail-a" {
                nacks += 1;
                fa.send(json!({"op": "nack", "delivery": v["delivery"]}));
            } else if t == "sub-b" {
                b_seen += 1;
            }
        }
        let a = a.clone();
        async move {
            let (_, v) = get_json(&format!("{a}/v1/dlq")).await;
            (v["total"] == 1).then_some(v)
        }
    })
    .await;
    let item = &dl["items"][0];
    assert_eq!(item["message"]["id"], "bad-1", "{dl}");
    assert_ids_kept(&item["message"]);
    assert_eq!(item["handler"], "ws:group:anonymous:picky", "{dl}");
    assert!(nacks >= 1, "{nacks}");
    // B's own part: no dead letter there, its subscriber got the event once.
    let (_, vb) = get_json(&format!("{b}/v1/dlq")).await;
    assert_eq!(vb["total"], 0, "{vb}");
    let sub_a = subscription(&a, "ws:group:anonymous:picky").await.unwrap();
    assert_eq!(sub_a["dead_lettered"], 1, "{sub_a}");
    assert!(subscription(&b, "ws:group:anonymous:picky").await.is_none());
    let (_, sta) = get_json(&format!("{a}/v1/stats")).await;
    let (_, stb) = get_json(&format!("{b}/v1/stats")).await;
    assert_eq!(
        (&sta["dead_letters"]["size"], &stb["dead_letters"]["size"]),
        (&json!(1), &json!(0))
    );
    for st in [&sta, &stb] {
        assert_eq!(st["transport"]["state"], "Connected", "{}", st["transport"]);
    }
    let (_, st_a) = get_json(&format!("{a}/v1/status")).await;
    let (_, st_b) = get_json(&format!("{b}/v1/status")).await;
    assert_eq!(
        (st_a["dead_letters"].clone(), st_b["dead_letters"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(
        (st_a["published"].clone(), st_b["published"].clone()),
        (json!(1), json!(0))
    );
    for n in [&a, &b] {
        assert_eq!(
            get_json(&format!("{n}/health")).await,
            (200, json!({"status": "ok"}))
        );
        let (s, v) = get_json(&format!("{n}/ready")).await;
        assert_eq!((s, &v["status"]), (200, &json!("ready")), "{v}");
    }

    // The picky member leaves; B's subscriber is the one left, and a new member of the
    // group joins on B. The replay on A reaches both on B.
    drop(fa);
    let gb = Client::connect(&nodes[1], "grp-b", out.clone()).await;
    gb.send(json!({"op": "subscribe", "id": 1, "pattern": "p.bad.#", "group": "picky-b"}));
    expect_op(&mut rx, "grp-b", "subscribed", &mut held).await;
    let (s, v) = {
        let r = http()
            .post(format!("{a}/v1/dlq/replay"))
            .json(&json!({"all": true}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!((s, &v["replayed"]), (200, &json!(1)), "{v}");
    let mut got = BTreeSet::new();
    while got.len() < 2 {
        let (t, v) = next(&mut rx).await;
        if v["op"] != "message" || !t.ends_with("-b") {
            continue;
        }
        let m = &v["message"];
        assert_eq!(m["id"], "bad-1", "{v}");
        assert_ids_kept(m);
        if m["headers"]["replay-count"].is_null() {
            // The original: sub-b's if it came after the dead letter; the new group reads
            // the stream from its oldest message (docs/nats.md), so it gets it first.
            if t == "sub-b" {
                b_seen += 1;
            }
            continue;
        }
        assert_eq!(m["headers"]["replay-count"], "1", "{v}");
        assert!(!m["headers"]["replayed-from"].is_null(), "{v}");
        assert!(got.insert(t.clone()), "{t} got the replay twice");
    }
    let (_, va) = get_json(&format!("{a}/v1/dlq")).await;
    assert_eq!(va["total"], 0, "{va}");
    assert_eq!(b_seen, 1, "B's subscriber got the original once");

    // The NATS server gone: every node says so on /ready (503, a reason), /health stays 200.
    drop(nats);
    for n in [&a, &b] {
        let v = eventually("not ready without NATS", || async {
            let (s, v) = get_json(&format!("{n}/ready")).await;
            (s == 503).then_some(v)
        })
        .await;
        assert_eq!(v["status"], "not_ready", "{v}");
        assert!(!v["reasons"].as_array().unwrap().is_empty(), "{v}");
        assert_eq!(get_json(&format!("{n}/health")).await.0, 200);
        let (_, st) = get_json(&format!("{n}/v1/stats")).await;
        assert_ne!(st["transport"]["state"], "Connected", "{}", st["transport"]);
        assert!(
            st["transport"]["disconnects"].as_u64().unwrap() >= 1,
            "{}",
            st["transport"]
        );
    }
    drop((sb, gb));
}

/// The NATS server killed and started again on its store: both nodes say not ready while it
/// is gone, ready again once it is back, and a publish through A reaches the subscriber on
/// B again (its consumer resumed), with its ids and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_come_back_ready_and_deliver_after_the_nats_server_restarts() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes = tokio::task::block_in_place(|| {
        ["a", "b"].map(|n| Node::start_with(dir.path(), n, nats.port, "file"))
    });
    let (a, b) = (nodes[0].url.clone(), nodes[1].url.clone());
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    let sb = Client::connect(&nodes[1], "b", out.clone()).await;
    sb.send(json!({"op": "subscribe", "id": 1, "pattern": "p.rs.#"}));
    expect_op(&mut rx, "b", "subscribed", &mut held).await;
    let (s, _) = post(&a, "/v1/publish/p.rs.x", "rs-before", json!({})).await;
    assert_eq!(s, 202);
    let m = expect_op(&mut rx, "b", "message", &mut held).await;
    assert_eq!(m["message"]["id"], "rs-before");

    nats.kill();
    for n in [&a, &b] {
        eventually("not ready without NATS", || async {
            (get_json(&format!("{n}/ready")).await.0 == 503).then_some(())
        })
        .await;
    }
    nats.restart();
    for n in [&a, &b] {
        eventually("ready again with NATS back", || async {
            (get_json(&format!("{n}/ready")).await.0 == 200).then_some(())
        })
        .await;
    }
    let (s, v) = post(&a, "/v1/publish/p.rs.x", "rs-after", json!({})).await;
    assert_eq!(s, 202, "{v}");
    // The server's SIGKILL may lose the consumer's record of the ack of `rs-before` (acks
    // are fire-and-forget, docs/nats.md "Settling": at-least-once), so it may come again.
    let m = loop {
        let m = expect_op(&mut rx, "b", "message", &mut held).await;
        if m["message"]["id"] == "rs-before" {
            assert!(m["message"]["attempt"].as_u64().unwrap() >= 2, "{m}");
            continue;
        }
        break m;
    };
    assert_eq!(m["message"]["id"], "rs-after", "{m}");
    assert_ids_kept(&m["message"]);
    let (_, st) = get_json(&format!("{b}/v1/stats")).await;
    assert_eq!(st["transport"]["state"], "Connected", "{}", st["transport"]);
    assert!(
        st["transport"]["reconnects"].as_u64().unwrap() >= 1,
        "{}",
        st["transport"]
    );
    drop(sb);
}
