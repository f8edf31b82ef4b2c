use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::Bus;
use switchyard::testkit::VirtualClock;
use tokio::time::Instant;

use crate::Tick;

type Spans = Arc<Mutex<Vec<(&'static str, Instant, Instant)>>>;

async fn timed(
    bus: &Bus,
    name: &'static str,
    priority: i32,
    work: Duration,
    spans: Spans,
) -> switchyard::Subscription {
    bus.on(name, move |_: Tick, _| {
        let spans = spans.clone();
        async move {
            let start = Instant::now();
            tokio::time::sleep(work).await;
            spans.lock().unwrap().push((name, start, Instant::now()));
            Ok::<_, std::io::Error>(())
        }
    })
    .handler_priority(priority)
    .start()
    .await
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn higher_groups_finish_before_lower_ones_start_and_equal_ones_overlap() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let spans: Spans = Arc::default();
    // registered lowest first, so registration order cannot explain the result
    let _low = timed(&bus, "low", 0, Duration::from_millis(10), spans.clone()).await;
    let _mid_a = timed(&bus, "mid-a", 5, Duration::from_millis(30), spans.clone()).await;
    let _mid_b = timed(&bus, "mid-b", 5, Duration::from_millis(20), spans.clone()).await;
    let _high = timed(&bus, "high", 10, Duration::from_millis(50), spans.clone()).await;
    bus.publish(Tick { n: 1 }).await.unwrap();
    bus.run_until_idle().await;
    let spans = spans.lock().unwrap().clone();
    let get = |n: &str| *spans.iter().find(|s| s.0 == n).unwrap();
    let (high, mid_a, mid_b, low) = (get("high"), get("mid-a"), get("mid-b"), get("low"));
    assert!(
        high.2 <= mid_a.1 && high.2 <= mid_b.1,
        "high ended before mid started: {spans:?}"
    );
    assert!(
        mid_a.2 <= low.1 && mid_b.2 <= low.1,
        "both mids ended before low started: {spans:?}"
    );
    assert_eq!(mid_a.1, mid_b.1, "equal priorities start together");
    assert!(
        mid_b.2 < mid_a.2 && mid_a.1 < mid_b.2,
        "equal priorities overlap: {spans:?}"
    );
    // total: 50 + max(30, 20) + 10, not the 110 a sequential run would take
    let total = (low.2 - high.1).as_millis();
    // tokio timers round each sleep up to the next millisecond: 3 sequential groups
    assert!((90..=93).contains(&total), "took {total} ms");
}

#[tokio::test(flavor = "current_thread")]
async fn publish_and_wait_honours_groups_too() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let spans: Spans = Arc::default();
    let _low = timed(&bus, "low", -1, Duration::from_millis(5), spans.clone()).await;
    let _high = timed(&bus, "high", 1, Duration::from_millis(5), spans.clone()).await;
    let report = bus.publish_and_wait(Tick { n: 1 }).await.unwrap();
    assert_eq!(report.handled, 2);
    let names: Vec<_> = spans.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(names, ["high", "low"]);
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_waits_for_lower_groups_and_dead_letters_what_they_did_not_get() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let spans: Spans = Arc::default();
    let _high = timed(&bus, "high", 1, Duration::from_secs(3600), spans.clone()).await;
    let _low = timed(&bus, "low", 0, Duration::from_millis(1), spans.clone()).await;
    bus.publish(Tick { n: 1 }).await.unwrap();
    tokio::task::yield_now().await;
    let report = bus.shutdown(Duration::from_millis(10)).await.unwrap();
    assert_eq!(report.left.len(), 1, "high's in-flight copy: {report:?}");
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(
        letters.len(),
        2,
        "high's copy and the copy low never got: {letters:?}"
    );
    assert!(spans.lock().unwrap().is_empty(), "low never ran");
    assert_eq!(bus.pending(), 0);
}
