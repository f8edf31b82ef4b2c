use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::Bus;
use switchyard::testkit::VirtualClock;
use tokio::time::Instant;

use crate::Tick;

type Batches = Arc<Mutex<Vec<(Vec<u64>, Instant)>>>;

async fn batcher(
    bus: &Bus,
    size: usize,
    wait: Duration,
    batches: Batches,
) -> switchyard::Subscription {
    bus.on_batch("batcher", move |ticks: Vec<Tick>, _| {
        let batches = batches.clone();
        async move {
            batches
                .lock()
                .unwrap()
                .push((ticks.iter().map(|t| t.n).collect(), Instant::now()));
            Ok::<_, std::io::Error>(())
        }
    })
    .batch(size, wait)
    .queue_capacity(100)
    .start()
    .await
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn batches_honour_max_size() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let batches: Batches = Arc::default();
    let sub = batcher(&bus, 10, Duration::from_secs(3600), batches.clone()).await;
    bus.publish_batch((0..20).map(|n| Tick { n }))
        .await
        .unwrap();
    bus.run_until_idle().await;
    let got = batches.lock().unwrap().clone();
    let sizes: Vec<usize> = got.iter().map(|b| b.0.len()).collect();
    assert_eq!(sizes, [10, 10]);
    let all: Vec<u64> = got.iter().flat_map(|b| b.0.clone()).collect();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
    assert_eq!(sub.stats().acked, 20);
}

#[tokio::test(flavor = "current_thread")]
async fn a_partial_batch_is_delivered_at_max_wait_and_not_before() {
    let clock = VirtualClock::pause();
    let bus = Bus::new();
    let batches: Batches = Arc::default();
    let sub = batcher(&bus, 10, Duration::from_millis(50), batches.clone()).await;
    let t0 = clock.now();
    bus.publish_batch((0..3).map(|n| Tick { n })).await.unwrap();
    // let the worker take all three (max_wait counts from the first one taken)
    while sub.info().in_flight < 3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(clock.now(), t0);
    clock.advance(Duration::from_millis(49)).await;
    tokio::task::yield_now().await;
    assert!(batches.lock().unwrap().is_empty(), "not before max_wait");
    bus.run_until_idle().await;
    let got = batches.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, [0, 1, 2]);
    let waited = (got[0].1 - t0).as_millis();
    assert!(
        (50..=51).contains(&waited),
        "delivered after {waited} ms (timers round up to 1 ms)"
    );
}

#[tokio::test]
async fn undecodable_messages_are_left_out_of_the_batch_and_dead_lettered() {
    let bus = Bus::new();
    let batches: Batches = Arc::default();
    let _sub = batcher(&bus, 3, Duration::from_millis(10), batches.clone()).await;
    use switchyard::{Envelope, Message, Topic};
    bus.publish(Tick { n: 1 }).await.unwrap();
    bus.publish_envelope(Envelope::new(Topic::new(Tick::TOPIC).unwrap(), "garbage"))
        .await
        .unwrap();
    bus.publish(Tick { n: 2 }).await.unwrap();
    bus.run_until_idle().await;
    let all: Vec<u64> = batches
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| b.0.clone())
        .collect();
    assert_eq!(all, [1, 2]);
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].envelope.payload, "garbage");
}

#[tokio::test]
async fn shutdown_mid_batch_reports_every_message_of_the_batch_and_the_queue() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let _sub = bus
        .on_batch("stuck", |_: Vec<Tick>, _| async move {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .batch(3, Duration::from_millis(10))
        .queue_capacity(100)
        .start()
        .await
        .unwrap();
    bus.publish_batch((0..5).map(|n| Tick { n })).await.unwrap();
    let sub_info = || bus.registry().into_iter().find(|s| s.name == "stuck");
    while sub_info().map(|s| s.in_flight) != Some(3) {
        tokio::task::yield_now().await;
    }
    let report = bus.shutdown(Duration::from_millis(100)).await.unwrap();
    assert_eq!(report.drained, 0);
    assert_eq!(report.left.len(), 5, "3 in the batch + 2 waiting");
    let letters = bus.dead_letters().unwrap().list();
    let mut left = report.left.clone();
    let mut lettered: Vec<_> = letters.iter().map(|l| l.envelope.id.clone()).collect();
    left.sort();
    lettered.sort();
    assert_eq!(left, lettered);
    assert_eq!(bus.pending(), 0);
}
