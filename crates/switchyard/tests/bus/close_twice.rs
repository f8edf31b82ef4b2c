//! Closing is idempotent (issue 13, item 4): a second `shutdown`, at once or later, succeeds
//! with the first call's report.

use std::time::Duration;

use switchyard::Bus;
use switchyard::testkit::VirtualClock;

use crate::{Ping, WAIT};

#[tokio::test]
async fn a_second_shutdown_returns_the_first_report() {
    let bus = Bus::new();
    let _sub = bus
        .on("worker", |_: Ping, _| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap();
    for n in 0..10 {
        bus.publish(Ping { n }).await.unwrap();
    }
    let first = bus.shutdown(WAIT).await.unwrap();
    let second = bus.shutdown(WAIT).await;
    assert_eq!(
        second.unwrap(),
        first,
        "the second call reports the first's work"
    );
    assert!(bus.is_shutting_down());
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_shutdowns_both_wait_and_report_the_leftovers_once() {
    let _clock = VirtualClock::pause();
    let bus = Bus::new();
    let _stuck = bus
        .on("stuck", |_: Ping, _| async {
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await
        .unwrap();
    for n in 0..3 {
        bus.publish(Ping { n }).await.unwrap();
    }
    tokio::task::yield_now().await;
    let (a, b) = tokio::join!(
        bus.shutdown(Duration::from_millis(50)),
        bus.shutdown(Duration::from_millis(50))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.left.len(), 3, "1 in flight + 2 waiting: {a:?}");
    assert_eq!(a, b, "both callers get the one report");
    assert_eq!(
        bus.dead_letters().unwrap().len(),
        3,
        "the leftovers are dead-lettered once, not once per call"
    );
}
