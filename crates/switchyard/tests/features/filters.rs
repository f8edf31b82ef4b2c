use switchyard::testkit::Recorder;
use switchyard::{Bus, Envelope, Message, Topic, handler_fn};

use crate::{Tick, WAIT};

fn tick(n: u64, tenant: &str) -> Envelope {
    Envelope::new(Topic::new(Tick::TOPIC).unwrap(), format!("{{\"n\":{n}}}"))
        .with_header("tenant", tenant)
}

#[tokio::test]
async fn header_and_predicate_filters_count_what_they_keep_out() {
    let bus = Bus::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acme = bus
        .subscribe(
            "acme-only",
            "clock.#",
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    tx.send(env.header("tenant").unwrap_or_default().to_owned())
                        .map_err(|e| e.to_string())
                }
            }),
        )
        .filter_header("tenant", "acme")
        .filter(|env| !env.payload.starts_with(b"{\"n\":13"))
        .start()
        .await
        .unwrap();
    let everyone = Recorder::start(&bus, "clock.#").await.unwrap();
    for (n, tenant) in [(1, "acme"), (2, "globex"), (13, "acme"), (4, "acme")] {
        bus.publish_envelope(tick(n, tenant)).await.unwrap();
    }
    everyone.wait_for(4, WAIT).await.unwrap();
    bus.run_until_idle().await;
    let mut got = vec![];
    while let Ok(t) = rx.try_recv() {
        got.push(t);
    }
    assert_eq!(got, ["acme", "acme"]);
    let stats = acme.stats();
    assert_eq!(
        stats.filtered, 2,
        "globex and the 13 were filtered, and counted"
    );
    assert_eq!(stats.acked, 2);
}

#[tokio::test]
async fn registry_lists_what_is_registered_and_forgets_what_was_dropped() {
    let bus = Bus::new();
    let a = Recorder::start(&bus, "a.#").await.unwrap();
    let cmd = bus
        .handle(|_: crate::Whoami, _| async move { Ok::<_, std::io::Error>("global".to_owned()) })
        .workers(2)
        .queue_capacity(7)
        .start()
        .await
        .unwrap();
    let reg = bus.registry();
    assert_eq!(reg.len(), 2);
    let c = reg.iter().find(|s| s.pattern == "id.whoami").unwrap();
    assert_eq!(
        (c.kind, c.workers, c.capacity, c.overflow, c.depth),
        (switchyard::SubscriptionKind::Command, 2, 7, "block", 0)
    );
    let r = reg.iter().find(|s| s.pattern == "a.#").unwrap();
    assert!(r.name.starts_with("recorder-"), "{}", r.name);
    drop(cmd);
    drop(a);
    tokio::time::timeout(WAIT, async {
        while !bus.registry().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("dropped subscriptions leave the registry");
}

#[tokio::test]
async fn lifecycle_events_surround_commands() {
    let bus = Bus::builder().lifecycle_events(true).build().unwrap();
    let rec = Recorder::start(&bus, "switchyard.command.#").await.unwrap();
    let _h = bus
        .handle(|_: crate::Whoami, _| async move { Ok::<_, std::io::Error>("me".to_owned()) })
        .start()
        .await
        .unwrap();
    assert_eq!(bus.send(crate::Whoami).await.unwrap(), "me");
    let got = rec.wait_for(2, WAIT).await.unwrap();
    assert_eq!(got[0].topic.as_str(), "switchyard.command.started");
    assert_eq!(got[1].topic.as_str(), "switchyard.command.finished");
    let finished: switchyard::lifecycle::CommandFinished =
        serde_json::from_slice(&got[1].payload).unwrap();
    assert!(finished.ok);
    assert_eq!(finished.topic, "id.whoami");
    assert_eq!(finished.attempts, 1);
    assert_eq!(
        got[1].causation_id(),
        got[0].causation_id(),
        "both are caused by the command"
    );
}

#[tokio::test]
async fn publish_hooks_stamp_and_refuse_before_anything_is_queued() {
    let bus = Bus::builder()
        .publish_hook(|env| {
            if env.payload.len() > 16 {
                return Err(switchyard::PublishError::Refused(
                    "payload over 16 bytes".into(),
                ));
            }
            env.headers_mut().insert("origin", "billing");
            Ok(())
        })
        .build()
        .unwrap();
    let rec = Recorder::start(&bus, "clock.#").await.unwrap();
    bus.publish_envelope(tick(1, "acme")).await.unwrap();
    let big = Envelope::new(Topic::new(Tick::TOPIC).unwrap(), vec![b'x'; 17]);
    match bus.publish_envelope(big).await {
        Err(switchyard::PublishError::Refused(reason)) => {
            assert_eq!(reason, "payload over 16 bytes")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let _h = bus
        .handle(|_: crate::Whoami, _| async move { Ok::<_, std::io::Error>("me".to_owned()) })
        .start()
        .await
        .unwrap();
    assert_eq!(
        bus.send(crate::Whoami).await.unwrap(),
        "me",
        "hooks see commands too, and this one passes"
    );
    let got = rec.wait_for(1, WAIT).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(
        rec.envelopes().len(),
        1,
        "the refused message never reached a queue"
    );
    assert_eq!(got[0].header("origin"), Some("billing"));
}
