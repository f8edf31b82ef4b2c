//! Nodes that die, stop or leave: what their clients' messages and commands become.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;

/// What the group members of the kill test saw: ids acked by A or B (and by whom), ids C
/// held unacked.
#[derive(Default)]
struct Tally {
    acked: BTreeMap<String, Vec<String>>,
    c_holds: BTreeSet<String>,
}

impl Tally {
    /// A and B ack every message they get; C holds its deliveries.
    fn frame(&mut self, tag: String, v: Value, clients: &BTreeMap<String, Client>) {
        if v["op"] != "message" {
            assert_ne!(v["op"], "error", "{tag}: {v}");
            return;
        }
        assert_ids_kept(&v["message"]);
        let id = v["message"]["id"].as_str().unwrap().to_owned();
        if tag == "c" {
            self.c_holds.insert(id);
        } else {
            clients[&tag].send(json!({"op": "ack", "delivery": v["delivery"]}));
            self.acked.entry(id).or_default().push(tag);
        }
    }
}

/// Node C killed (`kill -9`) while its WS group member holds unacked manual deliveries and
/// its WS handler is the only one of a command topic: what C held is redelivered to the
/// members on A and B (every accepted publish arrives, ids and headers intact), a command to
/// C's topic gets a typed answer within its deadline, and C restarted rejoins the group and
/// serves its topic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_c_killed_mid_traffic_loses_nothing_and_rejoins_after_restart() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(dir.path(), &nats, &["a", "b", "c"]);
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    let mut clients = BTreeMap::new();
    for (i, tag) in [(0, "a"), (1, "b"), (2, "c")] {
        let c = Client::connect(&nodes[i], tag, out.clone()).await;
        c.send(
            json!({"op": "subscribe", "id": 1, "pattern": "p.job.#", "group": "work",
                      "ack": "manual", "max_in_flight": 64}),
        );
        expect_op(&mut rx, tag, "subscribed", &mut held).await;
        clients.insert(tag.to_owned(), c);
    }
    clients["c"].send(json!({"op": "handle", "id": 2, "topic": "p.conly"}));
    expect_op(&mut rx, "c", "handling", &mut held).await;

    let a = nodes[0].url.clone();
    let b = nodes[1].url.clone();
    let mut tally = Tally::default();
    for (t, v) in held.drain(..) {
        tally.frame(t, v, &clients);
    }
    let mut accepted = BTreeSet::new();
    let mut i = 0;
    // Publish through A until C holds at least 3 deliveries (bounded).
    let deadline = Instant::now() + WAIT;
    while tally.c_holds.len() < 3 {
        assert!(Instant::now() < deadline, "C never got 3 of {i} messages");
        let id = format!("job-{i:03}");
        let (s, v) = post(&a, "/v1/publish/p.job.run", &id, json!({"i": i})).await;
        assert_eq!(s, 202, "{v}");
        accepted.insert(id);
        i += 1;
        while let Ok(Some((t, v))) =
            tokio::time::timeout(Duration::from_millis(20), rx.recv()).await
        {
            tally.frame(t, v, &clients);
        }
    }
    let c_held_at_kill = tally.c_holds.clone();
    nodes[2].kill9();
    // Mid-traffic: 20 more through B right after the kill.
    for _ in 0..20 {
        let id = format!("job-{i:03}");
        let (s, v) = post(&b, "/v1/publish/p.job.run", &id, json!({"i": i})).await;
        assert_eq!(s, 202, "{v}");
        accepted.insert(id);
        i += 1;
    }
    // A command to the topic only C served: a typed answer by its deadline, not a hang.
    let t = Instant::now();
    let (s, v) = post(
        &a,
        "/v1/request/p.conly?timeout_ms=2000",
        "conly-1",
        json!({}),
    )
    .await;
    let took = t.elapsed();
    assert!(
        (s == 504 && v["error"]["kind"] == "timeout")
            || (s == 404 && v["error"]["kind"] == "no_handler"),
        "{s} {v}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    eprintln!("command to the killed node's topic: {s} {v} after {took:?}");
    // Everything accepted is acked by A or B, C's held deliveries included (ack wait 2 s).
    let deadline = Instant::now() + WAIT;
    while !accepted.iter().all(|id| tally.acked.contains_key(id)) {
        assert!(
            Instant::now() < deadline,
            "never delivered to A or B: {:?} (C held {c_held_at_kill:?})",
            accepted
                .iter()
                .filter(|id| !tally.acked.contains_key(*id))
                .collect::<Vec<_>>()
        );
        if let Ok(Some((t, v))) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            tally.frame(t, v, &clients);
        }
    }
    let twice: Vec<_> = tally
        .acked
        .iter()
        .filter(|(id, w)| w.len() > 1 && !c_held_at_kill.contains(*id))
        .collect();
    assert!(twice.is_empty(), "acked twice by A/B: {twice:?}");

    // C restarted: its new client rejoins the group and serves p.conly again.
    let c = tokio::task::block_in_place(|| Node::start(dir.path(), "c", nats.port));
    nodes[2] = c;
    let c2 = Client::connect(&nodes[2], "c2", out.clone()).await;
    c2.send(
        json!({"op": "subscribe", "id": 1, "pattern": "p.job.#", "group": "work",
                   "ack": "manual", "max_in_flight": 64}),
    );
    let mut held = Vec::new();
    expect_op(&mut rx, "c2", "subscribed", &mut held).await;
    c2.send(json!({"op": "handle", "id": 2, "topic": "p.conly"}));
    expect_op(&mut rx, "c2", "handling", &mut held).await;
    for (t, v) in held.drain(..) {
        tally.frame(t, v, &clients);
    }
    let send = tokio::spawn({
        let b = b.clone();
        async move { post(&b, "/v1/send/p.conly", "conly-2", json!({})).await }
    });
    let mut c2_got_job = false;
    let mut answered = false;
    let deadline = Instant::now() + WAIT;
    while !send.is_finished() || !c2_got_job {
        assert!(
            Instant::now() < deadline,
            "restarted C: job {c2_got_job}, command {answered}"
        );
        if !c2_got_job {
            let id = format!("job-{i:03}");
            let (s, _) = post(&a, "/v1/publish/p.job.run", &id, json!({"i": i})).await;
            assert_eq!(s, 202);
            i += 1;
        }
        while let Ok(Some((t, v))) =
            tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
        {
            if t == "c2" {
                if v["op"] == "message" {
                    assert_ids_kept(&v["message"]);
                    c2.send(json!({"op": "ack", "delivery": v["delivery"]}));
                    c2_got_job = true;
                } else if v["op"] == "command" {
                    assert_eq!(v["message"]["id"], "conly-2");
                    assert_eq!(v["message"]["correlation_id"], "corr-conly-2");
                    c2.send(json!({"op": "result", "call": v["call"], "ok": true,
                                   "payload": {"by": "c2"}}));
                    answered = true;
                }
            } else {
                tally.frame(t, v, &clients);
            }
        }
    }
    let (s, v) = send.await.unwrap();
    assert_eq!((s, &v["payload"]["by"]), (200, &json!("c2")), "{v}");
    assert!(answered);
    drop((clients, c2));
}

/// A WS handler on C holds a command sent (as a request with a 2 s deadline) through A when
/// C is killed: A answers a typed 504 `timeout` by the deadline (docs/gateway.md "Scale-out
/// on NATS"), and after the server dropped C's connection the topic is `no_handler` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_held_on_a_killed_node_is_a_timeout_at_its_deadline() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(dir.path(), &nats, &["a", "c"]);
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    let cc = Client::connect(&nodes[1], "c", out.clone()).await;
    cc.send(json!({"op": "handle", "id": 1, "topic": "p.held"}));
    expect_op(&mut rx, "c", "handling", &mut held).await;
    let a = nodes[0].url.clone();
    let t = Instant::now();
    let req = tokio::spawn({
        let a = a.clone();
        async move {
            post(
                &a,
                "/v1/request/p.held?timeout_ms=2000",
                "held-1",
                json!({}),
            )
            .await
        }
    });
    let cmd = expect_op(&mut rx, "c", "command", &mut held).await;
    assert_eq!(cmd["message"]["id"], "held-1");
    assert_eq!(cmd["message"]["correlation_id"], "corr-held-1");
    nodes[1].kill9();
    let (s, v) = req.await.unwrap();
    let took = t.elapsed();
    assert_eq!((s, &v["error"]["kind"]), (504, &json!("timeout")), "{v}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let v = eventually("no_handler once C's connection is gone", || {
        let a = a.clone();
        async move {
            let (s, v) = post(&a, "/v1/send/p.held", "held-2", json!({})).await;
            assert!(s == 404 || s == 504, "{s} {v}");
            (s == 404).then_some(v)
        }
    })
    .await;
    assert_eq!(v["error"]["kind"], "no_handler", "{v}");
    drop(cc);
}

/// Node C stopped gracefully (SIGTERM) while its member of a manual-ack WS group holds
/// unacked deliveries; the group has a live member on B. Nothing may be lost: B's member
/// should get every one of them (docs/gateway.md: a stopping node closes its WebSocket
/// connections; a manual delivery not acked "is handed at once to another live member of its
/// group", and with none left on this node, on NATS, back to the transport).
///
/// Was a defect (review rev25, 3 runs of 3): `assertion left == right failed: lost with node
/// C's stop; left: {}; right: {"st-0", ..., "st-4"}`: C rejected them when its connections
/// closed at the stop (`ws/targets.rs`, `Target::nobody`), terminating them in JetStream with
/// their dead letters in C's in-memory queue. Now a group on NATS hands them back to the
/// transport (docs/gateway.md "When a connection ends").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_c_stopped_with_unacked_group_deliveries_hands_them_to_the_member_on_b() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_nodes(dir.path(), &nats, &["b", "c"]);
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    let cc = Client::connect(&nodes[1], "c", out.clone()).await;
    cc.send(
        json!({"op": "subscribe", "id": 1, "pattern": "p.stop.#", "group": "st",
                   "ack": "manual"}),
    );
    expect_op(&mut rx, "c", "subscribed", &mut held).await;
    let ids: BTreeSet<String> = (0..5).map(|i| format!("st-{i}")).collect();
    for id in &ids {
        let (s, _) = post(&nodes[1].url, "/v1/publish/p.stop.x", id, json!({})).await;
        assert_eq!(s, 202);
    }
    let mut c_holds = BTreeSet::new();
    while c_holds.len() < ids.len() {
        let (t, v) = next(&mut rx).await;
        assert_eq!((t.as_str(), &v["op"]), ("c", &json!("message")), "{v}");
        c_holds.insert(v["message"]["id"].as_str().unwrap().to_owned());
    }
    let cb = Client::connect(&nodes[0], "b", out.clone()).await;
    cb.send(
        json!({"op": "subscribe", "id": 1, "pattern": "p.stop.#", "group": "st",
                   "ack": "manual"}),
    );
    expect_op(&mut rx, "b", "subscribed", &mut held).await;
    let code = nodes[1].stop();
    assert_eq!(code, Some(0));
    let mut b_got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while b_got.len() < ids.len() && Instant::now() < deadline {
        if let Ok(Some((t, v))) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            && t == "b"
            && v["op"] == "message"
        {
            assert_ids_kept(&v["message"]);
            cb.send(json!({"op": "ack", "delivery": v["delivery"]}));
            b_got.insert(v["message"]["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(b_got, ids, "lost with node C's stop");
    drop((cb, cc));
}

/// The only member of a manual-ack WS group on node A leaves while holding unacked
/// deliveries; the group has a live member on node B. docs/gateway.md ("When a connection
/// ends"): with no member left on this node, on the log or NATS, each goes back to the
/// transport. The group spans the nodes, so B's member gets them, and nothing is
/// dead-lettered on A.
///
/// Was a defect (review rev25, 3 runs of 3): `B's member got {}; A dead-lettered:
/// {...,"error":"no connected WebSocket subscriber for WebSocket group lv (it disconnected or
/// unsubscribed before acking)",...,"reason":"rejected"},...],"total":5}`. Now a group on NATS
/// hands a delivery with no member left on this node back to the transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_leaving_node_a_hands_its_deliveries_to_the_member_on_b() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &nats, &["a", "b"]);
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    let ca = Client::connect(&nodes[0], "a", out.clone()).await;
    ca.send(
        json!({"op": "subscribe", "id": 1, "pattern": "p.leave.#", "group": "lv",
                   "ack": "manual"}),
    );
    expect_op(&mut rx, "a", "subscribed", &mut held).await;
    // Publish before B's member joins, so A's member holds some for sure.
    let ids: BTreeSet<String> = (0..5).map(|i| format!("lv-{i}")).collect();
    for id in &ids {
        let (s, _) = post(&nodes[0].url, "/v1/publish/p.leave.x", id, json!({})).await;
        assert_eq!(s, 202);
    }
    let mut a_holds = BTreeSet::new();
    while a_holds.len() < ids.len() {
        let (t, v) = next(&mut rx).await;
        assert_eq!((t.as_str(), &v["op"]), ("a", &json!("message")), "{v}");
        a_holds.insert(v["message"]["id"].as_str().unwrap().to_owned());
    }
    let cb = Client::connect(&nodes[1], "b", out.clone()).await;
    cb.send(
        json!({"op": "subscribe", "id": 1, "pattern": "p.leave.#", "group": "lv",
                   "ack": "manual"}),
    );
    expect_op(&mut rx, "b", "subscribed", &mut held).await;
    drop(ca); // A's member leaves, holding all five
    let mut b_got = BTreeSet::new();
    // B's member gets them within a few pull rounds when they are handed back (8 s bound).
    let deadline = Instant::now() + Duration::from_secs(8);
    while b_got.len() < ids.len() && Instant::now() < deadline {
        if let Ok(Some((t, v))) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            && t == "b"
            && v["op"] == "message"
        {
            assert_ids_kept(&v["message"]);
            cb.send(json!({"op": "ack", "delivery": v["delivery"]}));
            b_got.insert(v["message"]["id"].as_str().unwrap().to_owned());
        }
    }
    let (_, dlq) = get_json(&format!("{}/v1/dlq", nodes[0].url)).await;
    assert_eq!(
        (&b_got, &dlq["total"]),
        (&ids, &json!(0)),
        "B's member got {b_got:?}; A dead-lettered: {dlq}"
    );
    drop(cb);
}

/// A WS handler group `hg` with a member on A that fails (`ok: false`) its first two
/// commands, then answers, and one on C that answers; commands sent through B. docs/gateway.md ("Handler groups", "Scale-out on
/// NATS"): a handler group is per node: on NATS each node's members form their own group,
/// and a command reaches one node's group (NATS's queue group picks the node), whose
/// members alone may have it. So a command A's member failed fails with its error, without
/// going to C, and every other command is answered by the one member that got it.
///
/// (Review rev25 kept this as an ignored defect, "does not give a command its member on
/// one node failed to the member on another node"; cross-node failover is out of scope, the
/// documented behaviour is asserted instead. The error once said "permanent failure" three
/// times: `handler failed after 1 attempt(s): permanent failure: permanent failure on
/// attempt 1: permanent failure: remote handler group ...`; it says it once now.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_group_is_per_node_a_command_failed_on_one_node_is_not_given_to_another() {
    let Some(nats) = Nats::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_nodes(dir.path(), &nats, &["a", "b", "c"]);
    let (out, mut rx) = mpsc::unbounded_channel();
    let mut held = Vec::new();
    let mut clients = BTreeMap::new();
    for (i, tag) in [(0, "a"), (2, "c")] {
        let c = Client::connect(&nodes[i], tag, out.clone()).await;
        c.send(json!({"op": "handle", "id": 1, "topic": "p.hg.run", "group": "hg"}));
        expect_op(&mut rx, tag, "handling", &mut held).await;
        clients.insert(tag.to_owned(), c);
    }
    let b = nodes[1].url.clone();
    // Sends one command at a time until both nodes' groups had some (bounded: NATS picks
    // the node of each).
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut results = Vec::new();
    let mut a_failed: Vec<String> = Vec::new();
    for i in 0..40 {
        let handled_by_c = got.values().any(|w| w.contains(&"c".to_owned()));
        if handled_by_c && !a_failed.is_empty() && i >= 8 {
            break;
        }
        let id = format!("hg-{i}");
        let send = tokio::spawn({
            let b = b.clone();
            let id = id.clone();
            async move { post(&b, "/v1/send/p.hg.run", &id, json!({})).await }
        });
        while !send.is_finished() {
            if let Ok(Some((t, v))) =
                tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
                && v["op"] == "command"
            {
                got.entry(v["message"]["id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(t.clone());
                // A's member fails its first two commands, then answers: more failures in a
                // row would open the circuit breaker of A's handler group (docs/gateway.md
                // "Remote handlers"), which holds the next command until its cool-down.
                let answer = if t == "a" && a_failed.len() < 2 {
                    a_failed.push(v["message"]["id"].as_str().unwrap().to_owned());
                    json!({"op": "result", "call": v["call"], "ok": false, "error": "a is broken"})
                } else {
                    json!({"op": "result", "call": v["call"], "ok": true, "payload": {"by": t}})
                };
                clients[&t].send(answer);
            }
        }
        results.push((id, send.await.unwrap()));
    }
    assert!(
        !a_failed.is_empty(),
        "A's member never got a command: {got:?}"
    );
    assert!(
        got.values().any(|w| w.contains(&"c".to_owned())),
        "C's member never got a command: {got:?}"
    );
    for (id, (s, v)) in &results {
        let by = got.get(id).cloned().unwrap_or_default();
        assert_eq!(by.len(), 1, "{id} went to one member of one node: {by:?}");
        if a_failed.contains(id) {
            assert_eq!(
                (*s, &v["error"]["kind"]),
                (422, &json!("handler_failed")),
                "{id}: {v}"
            );
            let message = v["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(r#"remote handler group "hg": 1 member(s) tried once each"#)
                    && message.contains("a is broken"),
                "{id}: {v}"
            );
            assert_eq!(
                message.matches("permanent failure").count(),
                1,
                "says it once: {message}"
            );
        } else {
            assert_eq!((*s, &v["payload"]["by"]), (200, &json!(by[0])), "{id}: {v}");
        }
    }
}
