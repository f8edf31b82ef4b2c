//! Review rev10: outside-in attacks on events and durability over NATS JetStream, with two
//! or more transports (separate connections) on one server: fan-out to groups, wildcards,
//! subjects NATS treats specially, competing consumers, redelivery, restarts of the bus and of
//! the server, dedup, max_payload, the DLQ and headers seen by a plain nats-py client.
//!
//! Every test uses its own stream (`Setup::new()` namespace) and deletes it in a guard's
//! `Drop`, so a failing test cleans up too.

use std::collections::{BTreeSet, HashSet};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::{Bus, DeadLetterReason, handler_fn};
use switchyard_conformance::{RecordingDeadLetters, Setup};
use switchyard_core::{
    Delivery, Envelope, Pattern, PublishError, Publisher, Subscriber, Topic, TransportErrorKind,
};
use switchyard_nats::{NatsConfig, NatsSubscription, NatsTransport};
use tokio::sync::mpsc;

use crate::harness::{NatsServer, SHARED_URL, server_binary_available, shared_unavailable};

mod bus;
mod servers;

const WAIT: Duration = Duration::from_secs(5);

/// Deletes the test's stream (and with it its consumers) when dropped, even on panic.
struct StreamGuard {
    url: String,
    name: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: delete on a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(Ok(c)) =
                    tokio::time::timeout(Duration::from_secs(3), async_nats::connect(url)).await
                {
                    let js = async_nats::jetstream::new(c);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(3), js.delete_stream(&name)).await;
                }
            });
        })
        .join();
    }
}

fn config(url: &str, setup: &Setup) -> NatsConfig {
    NatsConfig::new(url)
        .with_stream(setup.namespace.clone(), [setup.all().unwrap()])
        .with_ack_wait(setup.ack_wait)
        .with_max_deliver(setup.max_deliver)
        .with_dead_letters(setup.dead_letters.clone())
        .with_max_age(Duration::from_secs(600))
        .with_max_bytes(8 << 20)
        .with_ack_timeout(Duration::from_secs(1))
        .with_publish_timeout(Duration::from_secs(4))
        .with_pull_expires(Duration::from_millis(250))
}

fn guard(url: &str, setup: &Setup) -> StreamGuard {
    StreamGuard {
        url: url.to_owned(),
        name: setup.namespace.clone(),
    }
}

async fn connect(url: &str, setup: &Setup) -> NatsTransport {
    NatsTransport::connect(config(url, setup)).await.unwrap()
}

fn env(setup: &Setup, rest: &str, body: &str) -> Envelope {
    Envelope::new(setup.topic(rest).unwrap(), body.to_owned())
}

async fn next(sub: &mut NatsSubscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("no delivery within 5 s")
        .expect("subscription ended")
}

async fn next_acked(sub: &mut NatsSubscription) -> Envelope {
    let d = next(sub).await;
    let e = d.envelope.clone();
    d.ack().await.unwrap();
    e
}

fn body(e: &Envelope) -> String {
    String::from_utf8_lossy(&e.payload).into_owned()
}

/// The smallest `attempt` a redelivery (after a nack) can show on the server `t` is
/// connected to: 2, except on nats-server before 2.10.14. Those rewind the consumer when a
/// redelivery finds only expired (or abandoned) pull requests waiting, so the message comes
/// again as a first delivery (attempt 1). Fixed upstream by nats-io/nats-server#5305 (2.10.14,
/// "Multiple deliveries of messages with delivery count going backwards"); see docs/nats.md.
fn least_redelivery_attempt(t: &NatsTransport) -> u32 {
    let version = t.client().server_info().version;
    let parts: Vec<u32> = version
        .split(['.', '-'])
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    match parts.as_slice() {
        [major, minor, patch] if (*major, *minor, *patch) < (2, 10, 14) => 1,
        _ => 2,
    }
}

async fn close(t: &NatsTransport) {
    t.close(Instant::now() + WAIT).await.unwrap();
}

/// `>` is an ordinary segment for switchyard but the NATS "one or more" wildcard. A
/// subscription to `ns.>` (switchyard: exactly the topic `ns.>`, which NATS cannot even
/// publish) must be refused or stay silent: it must never hand out `ns.x`, a topic its
/// pattern does not match.
#[tokio::test]
async fn a_pattern_with_a_gt_segment_never_hands_out_a_topic_it_does_not_match() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let pattern = Pattern::new(&format!("{}.>", setup.namespace)).unwrap();
    let other = env(&setup, "x", "x");
    assert!(!pattern.matches(&other.topic));
    match t.subscribe(&pattern, Some("gt")).await {
        Err(e) => {
            // A typed refusal is fine: say why.
            assert!(!e.to_string().is_empty());
        }
        Ok(mut sub) => {
            t.publish(vec![other.clone()]).await.unwrap();
            if let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                let topic = d.envelope.topic.clone();
                let _ = d.ack().await;
                panic!("subscription to `{pattern}` was handed `{topic}`, which it does not match");
            }
        }
    }
    close(&t).await;
}

/// Publishing a batch whose second topic has a `>` segment is refused with a typed
/// `Rejected` error, at once, and the first message of the batch is not stored either.
#[tokio::test]
async fn a_gt_segment_topic_is_refused_typed_and_nothing_of_its_batch_is_stored() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let good = env(&setup, "ok", "good");
    let bad = Envelope::new(
        Topic::new(&format!("{}.a.>", setup.namespace)).unwrap(),
        "bad",
    );
    let started = Instant::now();
    match t.publish(vec![good, bad]).await {
        Err(PublishError::Transport(e)) => {
            assert_eq!(e.kind, TransportErrorKind::Rejected, "{e}");
            assert!(e.to_string().contains('>'), "{e}");
        }
        other => panic!("expected a Rejected transport error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let sentinel = env(&setup, "ok", "sentinel");
    t.publish(vec![sentinel.clone()]).await.unwrap();
    let mut sub = t.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    let first = next_acked(&mut sub).await;
    assert_eq!(
        body(&first),
        "sentinel",
        "part of the refused batch was stored"
    );
    drop(sub);
    close(&t).await;
}

/// Topics NATS forbids (whitespace, empty segments) never reach the wire: the topic itself
/// is refused with a typed error.
#[test]
fn topics_nats_forbids_are_refused_when_built() {
    for bad in ["a b", "a..b", ".a", "a.", "a\tb", "", "a.*", "a.#"] {
        assert!(Topic::new(bad).is_err(), "{bad:?} was accepted as a topic");
    }
}

/// `a.#` holds `a` itself (zero segments) and deeper topics but not `ab`; a middle `#` is
/// widened on the server and filtered here: exactly the matching topics, the others acked
/// away (a second group sees all of them).
#[tokio::test]
async fn hash_patterns_match_zero_or_more_segments_and_a_middle_hash_is_filtered() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let ns = &setup.namespace;
    let tail = Pattern::new(&format!("{ns}.a.#")).unwrap();
    let middle = Pattern::new(&format!("{ns}.#.z")).unwrap();
    let mut s_tail = t.subscribe(&tail, Some("tail")).await.unwrap();
    let mut s_mid = t.subscribe(&middle, Some("mid")).await.unwrap();
    let mut s_all = t
        .subscribe(&setup.all().unwrap(), Some("all"))
        .await
        .unwrap();
    let rests = [
        "ab", "a", "q", "a.b.c", "z", "q.r.z", "a.z", "q.z.q", "end.a",
    ];
    let batch: Vec<Envelope> = rests.iter().map(|r| env(&setup, r, r)).collect();
    t.publish(batch).await.unwrap();
    // The last one each group must see: `a.z` matches both patterns.
    let mut got_tail = Vec::new();
    loop {
        let e = next_acked(&mut s_tail).await;
        got_tail.push(body(&e));
        if body(&e) == "a.z" {
            break;
        }
    }
    let mut got_mid = Vec::new();
    loop {
        let e = next_acked(&mut s_mid).await;
        got_mid.push(body(&e));
        if body(&e) == "a.z" {
            break;
        }
    }
    assert_eq!(got_tail, ["a", "a.b.c", "a.z"]);
    assert_eq!(got_mid, ["z", "q.r.z", "a.z"]);
    let mut all = Vec::new();
    for _ in 0..rests.len() {
        all.push(body(&next_acked(&mut s_all).await));
    }
    assert_eq!(all, rests, "a `#` group sees every topic in publish order");
    drop((s_tail, s_mid, s_all));
    close(&t).await;
}

/// Two transports in group `g1`, a third in `g2`: each message reaches `g1` exactly once
/// (split over its members) and `g2` once; nothing is lost or doubled.
#[tokio::test]
async fn competing_consumers_on_two_connections_get_each_message_once_per_group() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let mut cfg = config(SHARED_URL, &setup);
    cfg.pull_batch = 4;
    let a = NatsTransport::connect(cfg.clone()).await.unwrap();
    let b = NatsTransport::connect(cfg.clone()).await.unwrap();
    let c = NatsTransport::connect(cfg).await.unwrap();
    let all = setup.all().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, String)>();
    let mut tasks = Vec::new();
    for (who, t, group) in [("a", &a, "g1"), ("b", &b, "g1"), ("c", &c, "g2")] {
        let mut sub = t.subscribe(&all, Some(group)).await.unwrap();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                let _ = tx.send((who, d.envelope.id.to_string()));
                d.ack().await.unwrap();
            }
        }));
    }
    let batch: Vec<Envelope> = (0..60).map(|i| env(&setup, "e", &i.to_string())).collect();
    let ids: BTreeSet<String> = batch.iter().map(|e| e.id.to_string()).collect();
    // Published from a fourth connection's point of view: another bus.
    let p = connect(SHARED_URL, &setup).await;
    p.publish(batch).await.unwrap();
    let (mut g1, mut g2) = (Vec::new(), Vec::new());
    let mut members = HashSet::new();
    while g1.len() < 60 || g2.len() < 60 {
        let (who, id) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("g1 {} g2 {} of 60", g1.len(), g2.len()))
            .unwrap();
        if who == "c" {
            g2.push(id);
        } else {
            members.insert(who);
            g1.push(id);
        }
    }
    let set1: BTreeSet<String> = g1.iter().cloned().collect();
    let set2: BTreeSet<String> = g2.iter().cloned().collect();
    assert_eq!(set1, ids, "g1 lost messages");
    assert_eq!(g1.len(), 60, "g1 got duplicates");
    assert_eq!(set2, ids);
    assert_eq!(g2.len(), 60);
    for t in tasks {
        t.abort();
    }
    for t in [&a, &b, &c, &p] {
        close(t).await;
    }
}

/// A member that holds a message past the ack wait without settling it: JetStream
/// redelivers it (attempt 2) to the group while the first holder still has it.
#[tokio::test]
async fn a_message_held_past_the_ack_wait_is_redelivered_to_the_group() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new().with_ack_wait(Duration::from_secs(1));
    let _g = guard(SHARED_URL, &setup);
    let a = connect(SHARED_URL, &setup).await;
    let b = connect(SHARED_URL, &setup).await;
    let all = setup.all().unwrap();
    let mut sa = a.subscribe(&all, Some("g")).await.unwrap();
    let mut sb = b.subscribe(&all, Some("g")).await.unwrap();
    let m = env(&setup, "held", "held");
    a.publish(vec![m.clone()]).await.unwrap();
    let held = tokio::select! {
        d = sa.next() => d.unwrap(),
        d = sb.next() => d.unwrap(),
    };
    assert_eq!(held.envelope.id, m.id);
    assert_eq!(held.envelope.delivery.attempt, 1);
    let again = tokio::time::timeout(WAIT, async {
        tokio::select! {
            d = sa.next() => d.unwrap(),
            d = sb.next() => d.unwrap(),
        }
    })
    .await
    .expect("not redelivered after the ack wait");
    assert_eq!(again.envelope.id, m.id);
    assert_eq!(again.envelope.delivery.attempt, 2);
    again.ack().await.unwrap();
    drop(held);
    drop((sa, sb));
    close(&a).await;
    close(&b).await;
}

/// A member whose transport closes while it holds an unsettled message hands it back: the
/// other member gets it at once, long before the 30 s ack wait.
#[tokio::test]
async fn a_member_closed_mid_message_hands_it_to_the_other_member_at_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let a = connect(SHARED_URL, &setup).await;
    let all = setup.all().unwrap();
    let mut sa = a.subscribe(&all, Some("g")).await.unwrap();
    let m = env(&setup, "mid", "mid");
    a.publish(vec![m.clone()]).await.unwrap();
    let held = next(&mut sa).await;
    assert_eq!(held.envelope.id, m.id);
    let b = connect(SHARED_URL, &setup).await;
    let mut sb = b.subscribe(&all, Some("g")).await.unwrap();
    close(&a).await;
    // Settling after close is refused; the message went back.
    let settle = held.ack().await;
    assert!(settle.is_err(), "ack after close: {settle:?}");
    let started = Instant::now();
    let d = next(&mut sb).await;
    assert_eq!(d.envelope.id, m.id);
    assert!(d.envelope.delivery.attempt >= 2);
    assert!(started.elapsed() < WAIT);
    d.ack().await.unwrap();
    drop((sa, sb));
    close(&b).await;
}

/// Publishing with no subscriber is fine; a new group reads what was stored before it
/// existed, an ungrouped subscription only what comes after it.
#[tokio::test]
async fn zero_subscribers_then_a_new_group_reads_old_messages_an_ephemeral_only_new() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let old = env(&setup, "e", "old");
    t.publish(vec![old.clone()]).await.unwrap();
    let all = setup.all().unwrap();
    let mut eph = t.subscribe(&all, None).await.unwrap();
    let mut grp = t.subscribe(&all, Some("late")).await.unwrap();
    let new = env(&setup, "e", "new");
    t.publish(vec![new.clone()]).await.unwrap();
    assert_eq!(
        next_acked(&mut eph).await.id,
        new.id,
        "ephemeral got an old one"
    );
    assert_eq!(next_acked(&mut grp).await.id, old.id);
    assert_eq!(next_acked(&mut grp).await.id, new.id);
    drop((eph, grp));
    close(&t).await;
}

/// A group's position survives its bus going away: what was published meanwhile (from
/// another connection) is delivered after it comes back, in order, and what it had acked
/// is not delivered again.
#[tokio::test]
async fn a_group_resumes_after_its_bus_restarts_with_what_was_published_while_down() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let all = setup.all().unwrap();
    let first = connect(SHARED_URL, &setup).await;
    let mut sub = first.subscribe(&all, Some("billing")).await.unwrap();
    let m1 = env(&setup, "o", "1");
    first.publish(vec![m1.clone()]).await.unwrap();
    assert_eq!(next_acked(&mut sub).await.id, m1.id);
    drop(sub);
    close(&first).await;
    let other = connect(SHARED_URL, &setup).await;
    let down: Vec<Envelope> = (2..=6).map(|i| env(&setup, "o", &i.to_string())).collect();
    other.publish(down.clone()).await.unwrap();
    let again = connect(SHARED_URL, &setup).await;
    let mut sub = again.subscribe(&all, Some("billing")).await.unwrap();
    for m in &down {
        let got = next_acked(&mut sub).await;
        assert_eq!(body(&got), body(m), "m1 redelivered or order broken");
    }
    drop(sub);
    close(&again).await;
    close(&other).await;
}

/// One member reads one key's messages in publish order, over many pulls, with the key
/// carried on the envelope.
#[tokio::test]
async fn one_member_reads_a_key_in_publish_order_across_pulls() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let mut cfg = config(SHARED_URL, &setup);
    cfg.pull_batch = 7;
    let t = NatsTransport::connect(cfg).await.unwrap();
    let p = connect(SHARED_URL, &setup).await;
    let mut sub = t
        .subscribe(&setup.all().unwrap(), Some("ord"))
        .await
        .unwrap();
    for chunk in 0..5 {
        let batch: Vec<Envelope> = (0..20)
            .map(|i| {
                env(&setup, "k", &(chunk * 20 + i).to_string()).with_header("ordering-key", "k1")
            })
            .collect();
        p.publish(batch).await.unwrap();
    }
    for i in 0..100 {
        let e = next_acked(&mut sub).await;
        assert_eq!(body(&e), i.to_string());
        assert_eq!(e.header("ordering-key"), Some("k1"));
    }
    drop(sub);
    close(&t).await;
    close(&p).await;
}

/// A publish retried from another bus with the same id (the same envelope) is stored once;
/// the second publisher's health counts the duplicate.
#[tokio::test]
async fn the_same_id_from_two_buses_is_stored_once() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let a = connect(SHARED_URL, &setup).await;
    let b = connect(SHARED_URL, &setup).await;
    let m = env(&setup, "pay", "once");
    a.publish(vec![m.clone()]).await.unwrap();
    b.publish(vec![m.clone(), m.clone()]).await.unwrap();
    assert_eq!(b.health().duplicates, 2);
    let sentinel = env(&setup, "pay", "sentinel");
    a.publish(vec![sentinel.clone()]).await.unwrap();
    let mut sub = a.subscribe(&setup.all().unwrap(), Some("g")).await.unwrap();
    assert_eq!(next_acked(&mut sub).await.id, m.id);
    assert_eq!(
        next_acked(&mut sub).await.id,
        sentinel.id,
        "a duplicate was stored"
    );
    drop(sub);
    close(&a).await;
    close(&b).await;
}

/// `max_ack_pending` is per group, across members: with 2 unsettled at member A, member B
/// gets nothing more until A settles one.
#[tokio::test]
async fn max_ack_pending_holds_back_every_member_of_the_group() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let cfg = config(SHARED_URL, &setup).with_max_ack_pending(2);
    let a = NatsTransport::connect(cfg.clone()).await.unwrap();
    let all = setup.all().unwrap();
    let mut sa = a.subscribe(&all, Some("slow")).await.unwrap();
    let batch: Vec<Envelope> = (0..5).map(|i| env(&setup, "bp", &i.to_string())).collect();
    a.publish(batch).await.unwrap();
    let d0 = next(&mut sa).await;
    let d1 = next(&mut sa).await;
    let b = NatsTransport::connect(cfg).await.unwrap();
    let mut sb = b.subscribe(&all, Some("slow")).await.unwrap();
    // Bounded wait for something that must not happen.
    let over = tokio::time::timeout(Duration::from_millis(1500), async {
        tokio::select! { d = sa.next() => d, d = sb.next() => d }
    })
    .await;
    assert!(
        over.is_err(),
        "a third message was delivered with 2 pending"
    );
    d0.ack().await.unwrap();
    let d2 = tokio::time::timeout(WAIT, async {
        tokio::select! { d = sa.next() => d.unwrap(), d = sb.next() => d.unwrap() }
    })
    .await
    .expect("nothing after a settle");
    assert_eq!(body(&d2.envelope), "2");
    d2.ack().await.unwrap();
    d1.ack().await.unwrap();
    drop((sa, sb));
    close(&a).await;
    close(&b).await;
}

/// A pattern no configured stream can hold is refused at subscribe with a typed error.
#[tokio::test]
async fn a_pattern_no_stream_holds_is_refused_at_subscribe() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let elsewhere = Pattern::new(&format!("x{}.#", setup.namespace)).unwrap();
    let r = t.subscribe(&elsewhere, Some("g")).await;
    assert!(r.is_err(), "a pattern outside every stream was accepted");
    close(&t).await;
}

/// `delete_group` is refused while a member lives; once deleted, the group comes back
/// from the oldest message (a fresh consumer).
#[tokio::test]
async fn delete_group_is_refused_while_live_and_a_deleted_group_starts_over() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let all = setup.all().unwrap();
    let m = env(&setup, "e", "1");
    t.publish(vec![m.clone()]).await.unwrap();
    let mut sub = t.subscribe(&all, Some("tmp")).await.unwrap();
    assert_eq!(next_acked(&mut sub).await.id, m.id);
    let live = t.delete_group("tmp").await;
    assert!(
        matches!(&live, Err(e) if e.kind == TransportErrorKind::Rejected),
        "{live:?}"
    );
    drop(sub);
    let other = connect(SHARED_URL, &setup).await;
    assert_eq!(other.delete_group("tmp").await.unwrap(), 1);
    assert_eq!(other.delete_group("tmp").await.unwrap(), 0);
    let mut sub = other.subscribe(&all, Some("tmp")).await.unwrap();
    assert_eq!(next_acked(&mut sub).await.id, m.id, "not started over");
    drop(sub);
    close(&t).await;
    close(&other).await;
}

/// `*` stays one segment: `ns.*.c` gets `ns.b.c` only.
#[tokio::test]
async fn a_star_matches_exactly_one_segment() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let t = connect(SHARED_URL, &setup).await;
    let star = Pattern::new(&format!("{}.*.c", setup.namespace)).unwrap();
    let mut sub = t.subscribe(&star, Some("star")).await.unwrap();
    let rests = ["c", "b.d.c", "b.c.d", "b.c"];
    t.publish(rests.iter().map(|r| env(&setup, r, r)).collect())
        .await
        .unwrap();
    assert_eq!(body(&next_acked(&mut sub).await), "b.c");
    drop(sub);
    close(&t).await;
}

/// Group names with characters NATS cannot hold in a consumer name (spaces, `/`, `.`, `>`)
/// or a very long one still work across two connections: each message once to the group.
#[tokio::test]
async fn odd_and_long_group_names_work_across_two_connections() {
    if shared_unavailable().is_some() {
        return;
    }
    let setup = Setup::new();
    let _g = guard(SHARED_URL, &setup);
    let a = connect(SHARED_URL, &setup).await;
    let b = connect(SHARED_URL, &setup).await;
    let all = setup.all().unwrap();
    for name in ["billing team/v1.>*", &"g".repeat(300)] {
        let sa = a.subscribe(&all, Some(name)).await;
        let sb = b.subscribe(&all, Some(name)).await;
        let (mut sa, mut sb) = match (sa, sb) {
            (Ok(sa), Ok(sb)) => (sa, sb),
            (ra, rb) => {
                // A typed refusal is acceptable, but it must be a clear one.
                let e = ra.err().or(rb.err()).unwrap();
                let clear = match &e {
                    switchyard_core::SubscribeError::InvalidConfig(_) => true,
                    switchyard_core::SubscribeError::Transport(t) => {
                        t.kind == TransportErrorKind::Rejected
                            && format!("{t:?}").contains("too long")
                    }
                    _ => false,
                };
                assert!(clear, "group name of {} chars: {e:?}", name.len());
                continue;
            }
        };
        let m = env(&setup, "g", name);
        a.publish(vec![m.clone()]).await.unwrap();
        let d = tokio::time::timeout(WAIT, async {
            tokio::select! { d = sa.next() => d.unwrap(), d = sb.next() => d.unwrap() }
        })
        .await
        .unwrap_or_else(|_| panic!("group of {} chars got nothing", name.len()));
        assert_eq!(d.envelope.id, m.id);
        d.ack().await.unwrap();
    }
    close(&a).await;
    close(&b).await;
}
