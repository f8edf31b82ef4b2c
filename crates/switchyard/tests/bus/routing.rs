use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{Bus, Envelope, Pattern, PublishError, Topic, TopicErrorKind};

use crate::{Ping, WAIT};

/// (pattern, topic, should match)
const TABLE: &[(&str, &str, bool)] = &[
    ("a.b.c", "a.b.c", true),
    ("a.b.c", "a.b", false),
    ("a.b.c", "a.b.c.d", false),
    ("a.*.c", "a.b.c", true),
    ("a.*.c", "a.c", false),
    ("a.*.c", "a.b.x.c", false),
    ("*", "a", true),
    ("*", "a.b", false),
    ("#", "a", true),
    ("#", "a.b.c.d", true),
    ("a.#", "a", true),
    ("a.#", "a.b", true),
    ("a.#", "a.b.c", true),
    ("a.#", "b.a", false),
    ("#.c", "c", true),
    ("#.c", "a.b.c", true),
    ("#.c", "a.b.c.d", false),
    ("a.#.c", "a.c", true),
    ("a.#.c", "a.b.b.c", true),
    ("a.#.c", "a.b.d", false),
    ("*.#", "a", true),
    ("*.*.#", "a", false),
    ("analytics.*.request", "analytics.feature.request", true),
    ("analytics.*.request", "analytics.feature.complete", false),
    ("analytics.#", "analytics.feature.request", true),
    ("#.error", "analytics.error", true),
    ("*.status.update", "pipeline.status.update", true),
];

#[tokio::test]
async fn wildcard_routing_table_matches_reference_and_bus() {
    let bus = Bus::new();
    let mut recorders = Vec::new();
    for (i, (pattern, _, _)) in TABLE.iter().enumerate() {
        recorders.push((i, Recorder::start(&bus, pattern).await.unwrap()));
    }
    for (i, (pattern, topic, expected)) in TABLE.iter().enumerate() {
        let p = Pattern::new(pattern).unwrap();
        let t = Topic::new(topic).unwrap();
        assert_eq!(
            p.matches(&t),
            *expected,
            "reference matcher: {pattern} vs {topic}"
        );
        let env = Envelope::new(t, format!("{i}"));
        bus.publish_envelope(env).await.unwrap();
    }
    bus.run_until_idle().await;
    for (i, rec) in &recorders {
        let (pattern, _, _) = TABLE[*i];
        let p = Pattern::new(pattern).unwrap();
        let got: Vec<String> = rec
            .envelopes()
            .iter()
            .map(|e| e.topic.to_string())
            .collect();
        let want: Vec<String> = TABLE
            .iter()
            .map(|(_, t, _)| t.to_string())
            .filter(|t| p.matches(&Topic::new(t).unwrap()))
            .collect();
        assert_eq!(got, want, "pattern {pattern}");
        // the row's own topic is in there exactly when the table says so
        let own = Topic::new(TABLE[*i].1).unwrap();
        assert_eq!(
            got.contains(&own.to_string()),
            TABLE[*i].2,
            "pattern {pattern}"
        );
    }
}

#[tokio::test]
async fn fan_out_to_three_subscribers() {
    let bus = Bus::new();
    let a = Recorder::start(&bus, "test.ping").await.unwrap();
    let b = Recorder::start(&bus, "test.*").await.unwrap();
    let c = Recorder::start(&bus, "#").await.unwrap();
    let other = Recorder::start(&bus, "other.#").await.unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    for r in [&a, &b, &c] {
        let got = r.wait_for(1, WAIT).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, "{\"n\":1}");
    }
    bus.run_until_idle().await;
    assert!(other.envelopes().is_empty());
}

#[tokio::test]
async fn publishing_to_invalid_topics_is_a_typed_error() {
    let bus = Bus::new();
    for (topic, kind) in [
        ("a..b", TopicErrorKind::EmptySegment),
        ("a.*", TopicErrorKind::WildcardInTopic),
        ("a b", TopicErrorKind::Whitespace),
        ("", TopicErrorKind::Empty),
    ] {
        match bus.publish_to(topic, Ping { n: 0 }).await {
            Err(PublishError::InvalidTopic(e)) => assert_eq!(e.kind, kind, "{topic:?}"),
            other => panic!("{topic:?}: expected InvalidTopic, got {other:?}"),
        }
    }
    let long = "a".repeat(256);
    assert!(matches!(
        bus.publish_to(&long, Ping { n: 0 }).await,
        Err(PublishError::InvalidTopic(_))
    ));
}

#[tokio::test]
async fn dropping_the_subscription_unsubscribes() {
    let bus = Bus::new();
    let rec = Recorder::start(&bus, "test.#").await.unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    rec.wait_for(1, WAIT).await.unwrap();
    assert_eq!(bus.registry().len(), 1);
    drop(rec);
    bus.publish(Ping { n: 2 }).await.unwrap();
    bus.run_until_idle().await;
    // the dropped subscription's workers exit once drained, and the registry forgets it
    tokio::time::timeout(Duration::from_secs(5), async {
        while !bus.registry().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("registry forgets a dropped subscription");
}
