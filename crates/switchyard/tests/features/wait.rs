use switchyard::{Bus, SendError};

use crate::Tick;

#[tokio::test]
async fn publish_and_wait_returns_after_every_handler_and_surfaces_failures() {
    let bus = Bus::builder().max_attempts(1).build().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let d = done.clone();
    let _ok = bus
        .on("counter", move |_: Tick, _| {
            let d = d.clone();
            async move {
                tokio::task::yield_now().await;
                d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    let _bad = bus
        .on("broken", |_: Tick, _| async move {
            Err::<(), _>(std::io::Error::other("nope"))
        })
        .start()
        .await
        .unwrap();
    let report = bus.publish_and_wait(Tick { n: 1 }).await.unwrap();
    assert_eq!(
        done.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the handler finished before publish_and_wait returned"
    );
    assert_eq!(report.handled, 1);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].subscription, "broken");
    assert!(
        matches!(&report.failures[0].error, SendError::Failed { error, attempts: 1 } if error.contains("nope"))
    );
    let err = report.into_result().unwrap_err();
    assert!(err.to_string().contains("broken"));
}

#[tokio::test]
async fn publish_batch_publishes_in_order() {
    let bus = Bus::new();
    let rec = switchyard::testkit::Recorder::start(&bus, "clock.tick")
        .await
        .unwrap();
    let n = bus.publish_batch((0..5).map(|n| Tick { n })).await.unwrap();
    assert_eq!(n, 5);
    let got = rec.wait_for(5, crate::WAIT).await.unwrap();
    let ns: Vec<u64> = got
        .iter()
        .map(|e| serde_json::from_slice::<Tick>(&e.payload).unwrap().n)
        .collect();
    assert_eq!(ns, [0, 1, 2, 3, 4]);
}
