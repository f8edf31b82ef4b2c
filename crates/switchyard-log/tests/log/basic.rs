//! Publish/subscribe, consumer groups, redelivery, ordering, streams, retention, inspect.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{
    DeadLetterReason, InMemoryDeadLetters, Publisher, Subscriber, TransportErrorKind,
};
use switchyard_log::{Durability, LogTransport, OpenError, Retention, StartPosition};

use crate::common::*;

#[tokio::test]
async fn publish_then_subscribe_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let sent: Vec<_> = (0..20).map(|i| env("a.b", &format!("m{i}"))).collect();
    publish_all(&log, sent.clone()).await;
    log.publish(vec![env("other.x", "no")]).await.unwrap();
    let mut sub = log.subscribe(&pattern("a.#"), Some("g")).await.unwrap();
    for e in &sent {
        let d = next(&mut sub).await;
        assert_eq!(d.envelope.id, e.id);
        assert_eq!(d.envelope.payload, e.payload);
        assert_eq!(d.envelope.delivery.attempt, 1);
        d.ack().await.unwrap();
    }
    assert!(try_next(&mut sub).is_none());
    // Live messages arrive too.
    let live = env("a.c", "live");
    let id = live.id.clone();
    let (d, _) = tokio::join!(next(&mut sub), log.publish(vec![live]));
    assert_eq!(d.envelope.id, id);
    let caps = log.capabilities();
    assert!(caps.durable && caps.ordered && caps.consumer_groups && caps.wildcards);
    close(&log).await;
}

#[tokio::test]
async fn new_subscriber_reads_old_messages_and_groups_resume_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        publish_all(&log, (0..10).map(|i| env("a.b", &i.to_string())).collect()).await;
        let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
        for _ in 0..4 {
            next(&mut sub).await.ack().await.unwrap();
        }
        // One delivered but never settled: redelivered after the restart.
        let _held = next(&mut sub).await;
        close(&log).await;
    }
    let log = open(dir.path());
    assert_eq!(log.committed_offset("default", "g"), Some(4));
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(payload(&d), "4");
    d.ack().await.unwrap();
    // A brand-new group sees everything from the start.
    let mut other = log.subscribe(&pattern("a.*"), Some("h")).await.unwrap();
    assert_eq!(payload(&next(&mut other).await), "0");
    close(&log).await;
}

#[tokio::test]
async fn each_message_goes_to_one_member_of_each_group() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut g1 = log.subscribe(&pattern("t.#"), Some("g")).await.unwrap();
    let mut g2 = log.subscribe(&pattern("t.#"), Some("g")).await.unwrap();
    let mut h = log.subscribe(&pattern("t.#"), Some("h")).await.unwrap();
    // A member with another pattern in the same group is refused.
    assert!(log.subscribe(&pattern("u.#"), Some("g")).await.is_err());
    publish_all(&log, (0..100).map(|i| env("t.x", &i.to_string())).collect()).await;
    let mut seen = Vec::new();
    let mut per_member = [0usize; 2];
    loop {
        let mut progressed = false;
        for (m, sub) in [&mut g1, &mut g2].into_iter().enumerate() {
            if let Some(d) = try_next(sub) {
                seen.push(payload(&d));
                per_member[m] += 1;
                d.ack().await.unwrap();
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), 100, "every message exactly once in the group");
    assert_eq!(unique.len(), 100);
    assert!(per_member[0] > 0 && per_member[1] > 0);
    for i in 0..100 {
        let d = next(&mut h).await;
        assert_eq!(payload(&d), i.to_string());
        d.ack().await.unwrap();
    }
    close(&log).await;
}

#[tokio::test]
async fn ungrouped_subscribers_each_get_everything() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(config(dir.path()).with_start(StartPosition::Latest)).unwrap();
    publish_all(&log, vec![env("t.old", "old")]).await;
    let mut a = log.subscribe(&pattern("t.*"), None).await.unwrap();
    let mut b = log.subscribe(&pattern("t.*"), None).await.unwrap();
    publish_all(&log, vec![env("t.new", "new")]).await;
    assert_eq!(payload(&next(&mut a).await), "new");
    assert_eq!(payload(&next(&mut b).await), "new");
    close(&log).await;
}

// Virtual time: the delay passes only when the runtime is idle, so the checks cannot race.
#[tokio::test(start_paused = true)]
async fn nack_redelivers_now_or_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, vec![env("a.b", "x")]).await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let d = next(&mut sub).await;
    let id = d.envelope.id.clone();
    d.nack(None).await.unwrap();
    let d = try_next(&mut sub).expect("immediate redelivery");
    assert_eq!(
        (d.envelope.id.clone(), d.envelope.delivery.attempt),
        (id.clone(), 2)
    );
    d.nack(Some(Duration::from_secs(3))).await.unwrap();
    assert!(try_next(&mut sub).is_none(), "not before the delay");
    let d = next(&mut sub).await;
    assert_eq!(
        (d.envelope.id.clone(), d.envelope.delivery.attempt),
        (id, 3)
    );
    assert!(d.envelope.delivery.first_delivered_at.is_some());
    d.ack().await.unwrap();
    // Under paused time a close deadline would fire while the writer syncs; drop instead.
    drop(log);
}

#[tokio::test]
async fn unsettled_messages_come_back_after_the_ack_wait_or_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        LogTransport::open(config(dir.path()).with_ack_wait(Duration::from_millis(200))).unwrap();
    publish_all(&log, vec![env("a.b", "x")]).await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let first = next(&mut sub).await;
    assert!(try_next(&mut sub).is_none());
    let again = next(&mut sub).await; // after the ack wait
    assert_eq!(again.envelope.id, first.envelope.id);
    assert_eq!(again.envelope.delivery.attempt, 2);
    // The stale delivery's nack is ignored; dropping the current one redelivers at once.
    first.nack(None).await.unwrap();
    assert!(try_next(&mut sub).is_none());
    drop(again);
    let third = try_next(&mut sub).expect("redelivered on drop");
    assert_eq!(third.envelope.delivery.attempt, 3);
    third.term("done").await.unwrap();
    assert!(try_next(&mut sub).is_none());
    // Under paused time a close deadline would fire while the writer syncs; drop instead.
    drop(log);
}

#[tokio::test]
async fn max_deliver_sends_to_the_dead_letter_sink() {
    let dir = tempfile::tempdir().unwrap();
    let dlq = Arc::new(InMemoryDeadLetters::new(10));
    let log = LogTransport::open(
        config(dir.path())
            .with_max_deliver(2)
            .with_dead_letters(dlq.clone()),
    )
    .unwrap();
    publish_all(&log, vec![env("a.b", "poison"), env("a.b", "fine")]).await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for attempt in 1..=2 {
        let d = next(&mut sub).await;
        assert_eq!(payload(&d), "poison");
        assert_eq!(d.envelope.delivery.attempt, attempt);
        d.nack(None).await.unwrap();
    }
    let d = next(&mut sub).await;
    assert_eq!(payload(&d), "fine");
    d.ack().await.unwrap();
    let letters = dlq.list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(letters[0].handler.as_deref(), Some("g"));
    log.flush().await.unwrap();
    assert_eq!(log.committed_offset("default", "g"), Some(2));
    close(&log).await;
}

/// A hand-back (`Delivery::hand_back`: not worked on here) is redelivered without counting
/// towards `max_deliver`; the deliveries' numbers still count it, and a nack after the
/// hand-backs counts as usual (docs/log.md, `max_deliver`).
#[tokio::test]
async fn hand_backs_do_not_count_towards_max_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let dlq = Arc::new(InMemoryDeadLetters::new(10));
    let log = LogTransport::open(
        config(dir.path())
            .with_max_deliver(2)
            .with_dead_letters(dlq.clone()),
    )
    .unwrap();
    publish_all(&log, vec![env("a.b", "m")]).await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for attempt in 1..=6 {
        let d = next(&mut sub).await;
        assert_eq!(d.envelope.delivery.attempt, attempt);
        d.hand_back(None).await.unwrap();
    }
    for attempt in 7..=8 {
        let d = next(&mut sub).await;
        assert_eq!(d.envelope.delivery.attempt, attempt);
        d.nack(None).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while dlq.list().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        assert!(try_next(&mut sub).is_none(), "delivered after two nacks");
        tokio::task::yield_now().await;
    }
    let letters = dlq.list();
    assert_eq!(letters[0].reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(letters[0].attempts, 2, "{letters:?}");
    assert!(
        letters[0].error.contains("besides 6 hand-backs"),
        "{letters:?}"
    );
    close(&log).await;
}

#[tokio::test]
async fn order_is_kept_per_key_within_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let keys = ["k0", "k1", "k2"];
    let mut sent: HashMap<&str, Vec<String>> = HashMap::new();
    let mut batch = Vec::new();
    for i in 0..30 {
        let k = keys[i % 3];
        let p = format!("{k}-{i}");
        sent.entry(k).or_default().push(p.clone());
        batch.push(keyed("o.x", k, &p));
    }
    publish_all(&log, batch).await;
    let mut sub = log.subscribe(&pattern("o.x"), Some("g")).await.unwrap();
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    let mut round = 0;
    loop {
        // Take everything that can be handed out now: at most one per key.
        let mut held = Vec::new();
        while let Some(d) = try_next(&mut sub) {
            held.push(d);
        }
        if held.is_empty() {
            break;
        }
        let ks: BTreeSet<_> = held
            .iter()
            .map(|d| d.envelope.header("ordering-key").unwrap().to_owned())
            .collect();
        assert_eq!(ks.len(), held.len(), "two messages of one key in flight");
        // Settle in reverse order; nack the first of each round once.
        held.reverse();
        for (j, d) in held.into_iter().enumerate() {
            if j == 0 && round % 2 == 0 {
                d.nack(None).await.unwrap();
                continue;
            }
            let k = d.envelope.header("ordering-key").unwrap().to_owned();
            got.entry(k).or_default().push(payload(&d));
            d.ack().await.unwrap();
        }
        round += 1;
    }
    for k in keys {
        assert_eq!(got[k], sent[k], "order of key {k}");
    }
    close(&log).await;
}

#[tokio::test]
async fn topics_map_to_streams_and_inspect_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogTransport::open(
        config(dir.path())
            .with_stream("orders", [pattern("orders.#")])
            .with_stream("users", [pattern("users.*"), pattern("accounts.#")]),
    )
    .unwrap();
    assert_eq!(log.stream_for(&topic("orders.eu.created")), Some("orders"));
    assert_eq!(log.stream_for(&topic("accounts.x")), Some("users"));
    assert_eq!(log.stream_for(&topic("misc")), Some("default"));
    publish_all(
        &log,
        vec![
            env("orders.a", "1"),
            env("orders.b", "2"),
            env("users.a", "3"),
            env("misc", "4"),
        ],
    )
    .await;
    let streams = log.streams();
    let count: HashMap<_, _> = streams
        .iter()
        .map(|s| (s.name.as_str(), s.next_offset - s.first_offset))
        .collect();
    assert_eq!(count["orders"], 2);
    assert_eq!(count["users"], 1);
    assert_eq!(count["default"], 1);
    let recs = log.read_range("orders", 0, 10).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].offset, 1);
    assert!(log.read_range("nope", 0, 1).is_err());

    // A wildcard subscription reads across streams.
    let mut sub = log.subscribe(&pattern("#"), Some("all")).await.unwrap();
    let mut payloads = BTreeSet::new();
    for _ in 0..4 {
        let d = next(&mut sub).await;
        payloads.insert(payload(&d));
        if payload(&d) != "2" {
            d.ack().await.unwrap();
        } else {
            std::mem::forget(d); // stays pending in memory
        }
    }
    assert_eq!(payloads.len(), 4);
    let lags = log.group_lags();
    let orders = lags.iter().find(|l| l.stream == "orders").unwrap();
    assert_eq!((orders.committed, orders.pending, orders.lag), (1, 1, 1));
    let users = lags.iter().find(|l| l.stream == "users").unwrap();
    assert_eq!((users.committed, users.lag), (1, 0));

    // Without a catch-all stream, an unmapped topic is refused.
    close(&log).await;
    let strict = LogTransport::open(
        config(dir.path())
            .with_stream("orders", [pattern("orders.#")])
            .with_default_stream(None),
    )
    .unwrap();
    let err = strict.publish(vec![env("misc", "x")]).await.unwrap_err();
    match err {
        switchyard_core::PublishError::Transport(t) => {
            assert_eq!(t.kind, TransportErrorKind::Rejected)
        }
        other => panic!("unexpected {other:?}"),
    }
    close(&strict).await;
}

#[tokio::test]
async fn one_open_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert!(matches!(
        LogTransport::open(config(dir.path())),
        Err(OpenError::Locked { .. })
    ));
    close(&log).await;
    assert!(log.publish(vec![env("a.b", "x")]).await.is_err());
    let again = open(dir.path());
    drop(again);
    drop(log);
    let _third = open(dir.path());
}

#[tokio::test]
async fn segments_roll_and_retention_removes_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(1000);
    let log = LogTransport::open(config(dir.path()).with_segment_bytes(4096).with_retention(
        Retention {
            max_bytes: Some(20_000),
            ..Retention::default()
        },
    ))
    .unwrap();
    for i in 0..60 {
        publish_all(&log, vec![env("a.b", &format!("{i}{big}"))]).await;
    }
    let before = log.streams()[0].clone();
    assert!(before.segments > 10, "{before:?}");
    log.enforce_retention().await.unwrap();
    let after = log.streams()[0].clone();
    assert!(after.bytes <= 20_000 + 4096, "{after:?}");
    assert!(after.first_offset > 0);
    assert_eq!(after.next_offset, 60);
    // A new group starts at the oldest retained record.
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let d = next(&mut sub).await;
    assert!(payload(&d).starts_with(&after.first_offset.to_string()));
    close(&log).await;
    // Everything retained survives a reopen.
    let log = open(dir.path());
    assert_eq!(log.streams()[0].first_offset, after.first_offset);
    assert_eq!(
        log.read_range("default", 0, 1000).unwrap().len() as u64,
        60 - after.first_offset
    );
    close(&log).await;
}

#[tokio::test]
async fn consumed_segments_are_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let big = "y".repeat(1000);
    let log = LogTransport::open(config(dir.path()).with_segment_bytes(4096).with_retention(
        Retention {
            delete_consumed: true,
            ..Retention::default()
        },
    ))
    .unwrap();
    publish_all(
        &log,
        (0..40).map(|i| env("a.b", &format!("{i}{big}"))).collect(),
    )
    .await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for _ in 0..30 {
        next(&mut sub).await.ack().await.unwrap();
    }
    log.enforce_retention().await.unwrap();
    let s = log.streams()[0].clone();
    assert!(s.first_offset > 0 && s.first_offset <= 30, "{s:?}");
    // Records not yet consumed are kept.
    for _ in 30..40 {
        next(&mut sub).await.ack().await.unwrap();
    }
    close(&log).await;
}

#[tokio::test]
async fn interval_and_never_modes_persist_on_close() {
    for durability in [
        Durability::Interval(Duration::from_millis(5)),
        Durability::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = LogTransport::open(config(dir.path()).with_durability(durability)).unwrap();
        publish_all(&log, (0..50).map(|i| env("a.b", &i.to_string())).collect()).await;
        close(&log).await;
        let log = open(dir.path());
        assert_eq!(log.read_range("default", 0, 100).unwrap().len(), 50);
        close(&log).await;
    }
}

#[tokio::test]
async fn concurrent_publishers_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut tasks = Vec::new();
    for p in 0..16 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                log.publish(vec![env("c.x", &format!("{p}-{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.records, 800);
    assert!(
        stats.syncs < stats.records,
        "group commit shares syncs: {stats:?}"
    );
    let recs = log.read_range("default", 0, 10_000).unwrap();
    assert_eq!(recs.len(), 800);
    // Per publisher, log order is publish order.
    let mut last: HashMap<String, i32> = HashMap::new();
    for r in recs {
        let p = String::from_utf8(r.envelope.payload.to_vec()).unwrap();
        let (who, i) = p.split_once('-').unwrap();
        let i: i32 = i.parse().unwrap();
        let prev = last.insert(who.to_owned(), i).unwrap_or(-1);
        assert_eq!(i, prev + 1);
    }
    close(&log).await;
}

#[tokio::test]
async fn every_envelope_field_survives_storage() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let parent = env("a.parent", "p");
    let mut sent = env("a.b", "payload")
        .caused_by(&parent)
        .with_header("x-unknown", "kept")
        .with_header("tenant", "acme")
        .with_source("svc")
        .with_target("other")
        .with_priority(switchyard_core::Priority::HIGH)
        .with_kind(switchyard_core::Kind::Command);
    sent.type_name = Some("Thing".into());
    sent.type_version = 3;
    sent.payload = vec![0u8, 159, 255, 10].into();
    publish_all(&log, vec![sent.clone()]).await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let d = next(&mut sub).await;
    let mut got = d.envelope.clone();
    assert_eq!(got.delivery.attempt, 1);
    got.delivery = sent.delivery;
    assert_eq!(got, sent);
    d.ack().await.unwrap();
    close(&log).await;
}

/// Foreign (non-ULID) ids are stored as the text they are (ids were always stored as
/// strings in the MessagePack record, so the format is unchanged and older logs read the
/// same) and come back byte for byte after a reopen.
#[tokio::test]
async fn text_ids_survive_a_write_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut sent = env("a.b", "x").with_correlation_id("corr-42".parse().unwrap());
    sent.id = "550e8400-e29b-41d4-a716-446655440000".parse().unwrap();
    sent.set_causation_id(Some("cause-7".parse().unwrap()));
    let ulid = env("a.b", "y");
    {
        let log = open(dir.path());
        publish_all(&log, vec![sent.clone(), ulid.clone()]).await;
        close(&log).await;
    }
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for want in [&sent, &ulid] {
        let d = next(&mut sub).await;
        assert_eq!(d.envelope.id.to_string(), want.id.to_string());
        assert_eq!(d.envelope.correlation_id, want.correlation_id);
        assert_eq!(d.envelope.causation_id(), want.causation_id());
        d.ack().await.unwrap();
    }
    close(&log).await;
}

#[tokio::test]
async fn a_closed_member_hands_its_messages_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(&log, vec![keyed("w.x", "k", "1"), keyed("w.x", "k", "2")]).await;
    let mut a = log.subscribe(&pattern("w.*"), Some("g")).await.unwrap();
    let mut b = log.subscribe(&pattern("w.*"), Some("g")).await.unwrap();
    let first = next(&mut a).await;
    assert_eq!(payload(&first), "1");
    assert!(try_next(&mut b).is_none(), "key k is held by member a");
    drop(a);
    drop(first);
    let again = next(&mut b).await;
    assert_eq!(
        (payload(&again), again.envelope.delivery.attempt),
        ("1".to_owned(), 2)
    );
    again.ack().await.unwrap();
    assert_eq!(payload(&next(&mut b).await), "2");
    close(&log).await;
    // The subscription ends when the log closes.
    assert!(futures::StreamExt::next(&mut b).await.is_none());
}

#[tokio::test]
async fn age_retention_removes_closed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let big = "z".repeat(1000);
    let log = LogTransport::open(config(dir.path()).with_segment_bytes(4096).with_retention(
        Retention {
            max_age: Some(Duration::ZERO),
            ..Retention::default()
        },
    ))
    .unwrap();
    publish_all(
        &log,
        (0..20).map(|i| env("a.b", &format!("{i}{big}"))).collect(),
    )
    .await;
    assert!(log.streams()[0].segments > 2);
    log.enforce_retention().await.unwrap();
    let s = log.streams()[0].clone();
    assert_eq!(
        s.segments, 1,
        "only the segment being written is kept: {s:?}"
    );
    assert_eq!(s.next_offset, 20);
    close(&log).await;
}

#[tokio::test]
async fn absurd_durations_are_refused_or_capped() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        LogTransport::open(config(dir.path()).with_ack_wait(Duration::MAX)),
        Err(OpenError::InvalidConfig(_))
    ));
    assert!(matches!(
        LogTransport::open(config(dir.path()).with_segment_bytes(10)),
        Err(OpenError::InvalidConfig(_))
    ));
    let log = open(dir.path());
    publish_all(&log, vec![env("a.b", "x")]).await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    next(&mut sub)
        .await
        .nack(Some(Duration::MAX))
        .await
        .unwrap();
    assert!(try_next(&mut sub).is_none());
    assert_eq!(log.group_lags()[0].pending, 1);
    close(&log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_messages_from_fifty_publishers_to_four_members() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut members = Vec::new();
    for _ in 0..4 {
        let mut sub = log.subscribe(&pattern("many.#"), Some("g")).await.unwrap();
        members.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(Some(d)) =
                tokio::time::timeout(WAIT, futures::StreamExt::next(&mut sub)).await
            {
                let p = payload(&d);
                d.ack().await.unwrap();
                let done = p == "stop";
                got.push(p);
                if done {
                    break;
                }
            }
            got
        }));
    }
    let mut publishers = Vec::new();
    for p in 0..50 {
        let log = log.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..100 {
                let t = format!("many.t{}", (p + i) % 25);
                log.publish(vec![env(&t, &format!("{p}-{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    // One stop marker per member; a member stops at the first it sees.
    publish_all(&log, (0..4).map(|_| env("many.stop", "stop")).collect()).await;
    let mut all = Vec::new();
    for m in members {
        all.extend(m.await.unwrap().into_iter().filter(|p| p != "stop"));
    }
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 5000, "no duplicates without failures");
    assert_eq!(unique.len(), 5000);
    close(&log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_traffic_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("c.#"), Some("g")).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(d) = futures::StreamExt::next(&mut sub).await {
            match d.ack().await {
                Ok(()) => n += 1,
                // Received before the close, settled after it: refused (issue 13 item 8),
                // and delivered again once the log is reopened.
                Err(e) if e.kind == TransportErrorKind::Closed => break,
                Err(e) => panic!("unexpected ack error {e}"),
            }
        }
        n
    });
    let mut publishers = Vec::new();
    for p in 0..8 {
        let log = log.clone();
        publishers.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0.. {
                match log.publish(vec![env("c.x", &format!("{p}-{i}"))]).await {
                    Ok(()) => ok += 1,
                    Err(switchyard_core::PublishError::ShuttingDown) => return ok,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            ok
        }));
    }
    // Close once some traffic went through.
    tokio::time::timeout(WAIT, async {
        while log.stats().records < 200 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("publishers made no progress");
    close(&log).await;
    let mut accepted = 0;
    for p in publishers {
        accepted += tokio::time::timeout(WAIT, p).await.unwrap().unwrap();
    }
    tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    drop(log);
    // Every accepted publish is stored.
    let log = open(dir.path());
    let stored = log.read_range("default", 0, usize::MAX).unwrap().len();
    assert!(stored >= accepted, "{stored} stored < {accepted} accepted");
    close(&log).await;
}

/// Issue 13 item 8: settling a delivery after `close` used to return `Ok` without being
/// kept (the committed offsets were already written), so an acknowledged message came back
/// after reopening. Now it is refused with `Closed`, and the message does come back.
#[tokio::test]
async fn settling_after_close_is_refused_and_the_message_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    publish_all(
        &log,
        ["one", "two", "three"].map(|p| env("a.b", p)).to_vec(),
    )
    .await;
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    let (one, two, three) = (
        next(&mut sub).await,
        next(&mut sub).await,
        next(&mut sub).await,
    );
    close(&log).await;
    let refused = [
        one.ack().await.unwrap_err(),
        two.term("after close").await.unwrap_err(),
        three.nack(None).await.unwrap_err(),
    ];
    for e in &refused {
        assert_eq!(e.kind, TransportErrorKind::Closed, "{e}");
    }
    drop(sub);
    drop(log);
    let log = open(dir.path());
    let mut sub = log.subscribe(&pattern("a.b"), Some("g")).await.unwrap();
    for want in ["one", "two", "three"] {
        let d = next(&mut sub).await;
        assert_eq!(payload(&d), want);
        d.ack().await.unwrap();
    }
    close(&log).await;
}
