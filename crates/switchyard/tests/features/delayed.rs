use std::time::Duration;

use switchyard::testkit::{Recorder, VirtualClock};
use switchyard::{Bus, DeadLetterReason};

use crate::Tick;

#[tokio::test(flavor = "current_thread")]
async fn delayed_delivery_fires_at_the_virtual_instant_not_before() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let rec = Recorder::start(&bus, "clock.tick").await.unwrap();
    let t0 = clock.now();
    bus.publish_after(Duration::from_secs(10), Tick { n: 1 })
        .await
        .unwrap();
    bus.publish_at(t0 + Duration::from_secs(5), Tick { n: 2 })
        .await
        .unwrap();
    assert_eq!(bus.pending(), 2, "scheduled messages count as pending");
    clock.advance(Duration::from_millis(4_999)).await;
    tokio::task::yield_now().await;
    assert!(rec.envelopes().is_empty(), "nothing before 5 s");
    clock.advance(Duration::from_millis(1)).await;
    let got = rec.wait_for(1, Duration::from_millis(1)).await.unwrap();
    assert_eq!(got[0].payload, "{\"n\":2}");
    clock.advance(Duration::from_millis(4_999)).await;
    tokio::task::yield_now().await;
    assert_eq!(rec.envelopes().len(), 1, "the 10 s message is not early");
    clock.advance(Duration::from_millis(1)).await;
    let got = rec.wait_for(2, Duration::from_millis(1)).await.unwrap();
    assert_eq!(got[1].payload, "{\"n\":1}");
    bus.run_until_idle().await;
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_reports_delayed_messages_not_yet_due() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let id = bus
        .publish_after(Duration::from_secs(60), Tick { n: 1 })
        .await
        .unwrap();
    let report = bus.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.left, std::slice::from_ref(&id));
    let letter = bus.dead_letters().unwrap().get(&id).unwrap();
    assert_eq!(letter.reason, DeadLetterReason::Shutdown);
    assert_eq!(bus.pending(), 0);
}
