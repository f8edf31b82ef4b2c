use serde::{Deserialize, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{Bus, Message, MessageId};

use crate::WAIT;

#[derive(Clone, Serialize, Deserialize)]
struct One;
impl Message for One {
    const TOPIC: &'static str = "chain.one";
}
#[derive(Clone, Serialize, Deserialize)]
struct Two;
impl Message for Two {
    const TOPIC: &'static str = "chain.two";
}
#[derive(Clone, Serialize, Deserialize)]
struct Three;
impl Message for Three {
    const TOPIC: &'static str = "chain.three";
}

#[tokio::test]
async fn causation_and_correlation_over_three_hops() {
    let bus = Bus::new();
    let all = Recorder::start(&bus, "chain.#").await.unwrap();
    let b = bus.clone();
    // hop 1 -> 2 through the plain bus handle (the bus knows which message is being handled)
    let _h1 = bus
        .on("one-to-two", move |_: One, _ctx| {
            let b = b.clone();
            async move { b.publish(Two).await }
        })
        .start()
        .await
        .unwrap();
    // hop 2 -> 3 through the context, from a spawned task (no task-local there)
    let _h2 = bus
        .on("two-to-three", |_: Two, ctx| async move {
            tokio::spawn(async move { ctx.publish(Three).await })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })
        .start()
        .await
        .unwrap();
    bus.publish(One).await.unwrap();
    let got = all.wait_for(3, WAIT).await.unwrap();
    let find = |t: &str| got.iter().find(|e| e.topic.as_str() == t).cloned().unwrap();
    let (one, two, three) = (find("chain.one"), find("chain.two"), find("chain.three"));
    assert_eq!(one.causation_id(), None);
    assert_eq!(one.correlation_id, one.id);
    assert_eq!(two.causation_id(), Some(&one.id));
    assert_eq!(three.causation_id(), Some(&two.id));
    assert_eq!(two.correlation_id, one.id);
    assert_eq!(three.correlation_id, one.id);
}

#[tokio::test]
async fn explicit_correlation_is_kept() {
    let bus = Bus::new();
    let rec = Recorder::start(&bus, "chain.two").await.unwrap();
    let b = bus.clone();
    let chosen = MessageId::new();
    let kept = chosen.clone();
    let _h = bus
        .on("relay", move |_: One, _| {
            let b = b.clone();
            let chosen = kept.clone();
            async move {
                b.publish_envelope(Two.to_envelope()?.with_correlation_id(chosen))
                    .await
            }
        })
        .start()
        .await
        .unwrap();
    bus.publish(One).await.unwrap();
    let got = rec.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].correlation_id, chosen);
    assert!(
        got[0].causation_id().is_some(),
        "causation is still recorded"
    );
}

/// A correlation id from another system (not a ULID) set through the public API is kept
/// byte for byte: the handler sees it, and what the handler publishes (through the bus
/// handle and through its context) carries it on, caused by the message it handled.
#[tokio::test]
async fn a_foreign_correlation_id_reaches_the_handler_and_its_follow_ups()
-> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new();
    let all = Recorder::start(&bus, "chain.#").await?;
    let b = bus.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let saw = seen.clone();
    let _h1 = bus
        .on("one-to-two", move |_: One, ctx| {
            let b = b.clone();
            saw.lock().unwrap().push(ctx.correlation_id().to_string());
            async move { b.publish(Two).await }
        })
        .start()
        .await?;
    let _h2 = bus
        .on("two-to-three", |_: Two, ctx| async move {
            ctx.publish(Three).await
        })
        .start()
        .await?;
    let first = One.to_envelope()?.with_correlation_id("corr-42".parse()?);
    bus.publish_envelope(first.clone()).await?;
    let got = all.wait_for(3, WAIT).await?;
    let find = |t: &str| got.iter().find(|e| e.topic.as_str() == t).cloned();
    let (one, two, three) = (find("chain.one"), find("chain.two"), find("chain.three"));
    let (one, two, three) = (one.ok_or("one")?, two.ok_or("two")?, three.ok_or("three")?);
    assert_eq!(*seen.lock().unwrap(), ["corr-42"], "the handler's ctx");
    for e in [&one, &two, &three] {
        assert_eq!(e.correlation_id.to_string(), "corr-42", "{}", e.topic);
    }
    assert_eq!(one.id, first.id);
    assert_eq!(two.causation_id(), Some(&one.id));
    assert_eq!(three.causation_id(), Some(&two.id));
    Ok(())
}
