use std::sync::{Arc, Mutex};

use switchyard::session::{SESSION_HEADER, SessionEnded};
use switchyard::testkit::Recorder;
use switchyard::{Bus, Envelope, Session, handler_fn};

use crate::{Tick, WAIT, Whoami};

fn collecting(seen: Arc<Mutex<Vec<(String, u64)>>>, who: &'static str) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let seen = seen.clone();
        async move {
            let tick: Tick = serde_json::from_slice(&env.payload)?;
            seen.lock().unwrap().push((who.to_owned(), tick.n));
            Ok::<_, serde_json::Error>(())
        }
    })
}

async fn active_handlers(bus: &Bus, session: &str) -> usize {
    bus.registry()
        .iter()
        .filter(|s| s.active && s.session.as_deref() == Some(session))
        .count()
}

#[tokio::test]
async fn session_cleanup_removes_handlers_and_emits_both_events() {
    let bus = Bus::new();
    let events = Recorder::start(&bus, "switchyard.session.#").await.unwrap();
    let session = bus.session("job-1").await.unwrap();
    session
        .subscribe("s-log", "clock.#", collecting(Arc::default(), "s"))
        .start()
        .await
        .unwrap()
        .detach();
    session
        .handle(|_: Whoami, _| async move { Ok::<_, std::io::Error>("s".to_owned()) })
        .start()
        .await
        .unwrap()
        .detach();
    assert_eq!(active_handlers(&bus, "job-1").await, 2);
    drop(session);
    assert_eq!(active_handlers(&bus, "job-1").await, 0);
    let got = events.wait_for(2, WAIT).await.unwrap();
    assert_eq!(got[0].topic.as_str(), "switchyard.session.started");
    assert_eq!(got[1].topic.as_str(), "switchyard.session.ended");
    assert_eq!(got[1].header(SESSION_HEADER), Some("job-1"));
    let ended: SessionEnded = serde_json::from_slice(&got[1].payload).unwrap();
    assert_eq!(ended.handlers_removed, 2);
    assert!(matches!(
        bus.send(Whoami).await,
        Err(switchyard::SendError::NoHandler { .. })
    ));
}

async fn job_that_fails(bus: &Bus) -> Result<(), std::io::Error> {
    let session = bus
        .session("job-err")
        .await
        .map_err(std::io::Error::other)?;
    session
        .subscribe("s", "clock.#", collecting(Arc::default(), "s"))
        .start()
        .await
        .map_err(std::io::Error::other)?
        .detach();
    Err(std::io::Error::other("the job failed"))
}

#[tokio::test]
async fn cleanup_happens_on_error_and_on_panic() {
    let bus = Bus::new();
    let ended = Recorder::start(&bus, "switchyard.session.ended")
        .await
        .unwrap();
    assert!(job_that_fails(&bus).await.is_err());
    assert_eq!(active_handlers(&bus, "job-err").await, 0);

    let b = bus.clone();
    let panicked = tokio::spawn(async move {
        let session = b.session("job-panic").await.unwrap();
        session
            .subscribe("s", "clock.#", collecting(Arc::default(), "s"))
            .start()
            .await
            .unwrap()
            .detach();
        assert_eq!(active_handlers(&b, "job-panic").await, 1);
        panic!("the job panicked");
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    assert_eq!(active_handlers(&bus, "job-panic").await, 0);
    let got = ended.wait_for(2, WAIT).await.unwrap();
    let ids: Vec<_> = got
        .iter()
        .map(|e| e.header(SESSION_HEADER).unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["job-err", "job-panic"]);
}

#[tokio::test]
async fn session_isolation_with_one_global_handler() {
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _global = bus
        .subscribe("global", "clock.#", collecting(seen.clone(), "global"))
        .start()
        .await
        .unwrap();
    let s1 = bus.session("s1").await.unwrap();
    let s2 = bus.session("s2").await.unwrap();
    s1.subscribe("h1", "clock.#", collecting(seen.clone(), "s1"))
        .start()
        .await
        .unwrap()
        .detach();
    s2.subscribe("h2", "clock.#", collecting(seen.clone(), "s2"))
        .start()
        .await
        .unwrap()
        .detach();
    s1.publish(Tick { n: 1 }).await.unwrap();
    s2.publish(Tick { n: 2 }).await.unwrap();
    bus.publish(Tick { n: 3 }).await.unwrap();
    bus.run_until_idle().await;
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    let want: Vec<(String, u64)> = vec![
        ("global".into(), 1),
        ("global".into(), 2),
        ("global".into(), 3),
        ("s1".into(), 1),
        ("s2".into(), 2),
    ];
    assert_eq!(got, want);
}

#[tokio::test]
async fn session_command_handler_wins_and_falls_back_to_global() {
    let bus = Bus::new();
    let _global = bus
        .handle(|_: Whoami, _| async move { Ok::<_, std::io::Error>("global".to_owned()) })
        .start()
        .await
        .unwrap();
    let s1: Session = bus.session("s1").await.unwrap();
    let s2 = bus.session("s2").await.unwrap();
    s1.handle(|_: Whoami, ctx| async move {
        Ok::<_, std::io::Error>(format!("s1:{}", ctx.header(SESSION_HEADER).unwrap()))
    })
    .start()
    .await
    .unwrap()
    .detach();
    assert_eq!(s1.send(Whoami).await.unwrap(), "s1:s1");
    assert_eq!(s2.send(Whoami).await.unwrap(), "global");
    assert_eq!(bus.send(Whoami).await.unwrap(), "global");
    let dup = s1
        .handle(|_: Whoami, _| async move { Ok::<_, std::io::Error>(String::new()) })
        .start()
        .await;
    assert!(matches!(
        dup,
        Err(switchyard::SubscribeError::DuplicateHandler { .. })
    ));
    s1.end().await.unwrap();
    let s1_again = bus.session("s1").await.unwrap();
    assert_eq!(
        s1_again.send(Whoami).await.unwrap(),
        "global",
        "the ended session's handler is gone"
    );
}

#[tokio::test]
async fn messages_published_while_handling_a_session_message_stay_in_the_session() {
    let bus = Bus::new();
    let rec = Recorder::start(&bus, "echo.#").await.unwrap();
    let b = bus.clone();
    let _relay = bus
        .on("relay", move |t: Tick, _| {
            let b = b.clone();
            async move { b.publish_to("echo.tick", t).await }
        })
        .start()
        .await
        .unwrap();
    let s = bus.session("s9").await.unwrap();
    s.publish(Tick { n: 1 }).await.unwrap();
    let got = rec.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].header(SESSION_HEADER), Some("s9"));
}
