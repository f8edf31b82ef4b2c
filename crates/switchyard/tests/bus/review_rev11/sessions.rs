//! Review rev11, sessions: follow-ups of a session's handler stay in the session (`ctx.publish`,
//! `ctx.send`), and same-named handlers of two sessions (or of a session and the bus) on the log.

use super::*;

/// features.md (Sessions): "Messages published while handling a session's message stay in that
/// session." A session handler's follow-up published with `ctx.publish` (the guide's way to
/// publish a consequence) keeps the `session-id` header, as `ctx.bus().publish` does, so the
/// session's own handlers see it.
///
/// Fixed defect (review rev11): it left the session (`follow-up session header: None`):
/// `Ctx::publish` set causation with `caused_by`, so `inherit_parent` returned early and never
/// copied the session header.
#[tokio::test]
async fn a_session_handlers_ctx_publish_stays_in_the_session() {
    let bus = Bus::new();
    let (tx, mut seen) = mpsc::unbounded_channel::<(u8, Option<String>)>();
    let job = bus.session("job-9").await.unwrap();
    let all = tx.clone();
    bus.on("global-progress", move |p: Progress, ctx| {
        let all = all.clone();
        async move {
            all.send((p.percent, ctx.header("session-id").map(str::to_owned)))
                .unwrap();
            Ok::<_, std::io::Error>(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    let (stx, mut in_session) = mpsc::unbounded_channel::<u8>();
    job.on("job-progress", move |p: Progress, ctx| {
        let stx = stx.clone();
        async move {
            stx.send(p.percent).unwrap();
            if p.percent == 50 {
                ctx.publish(Progress { percent: 51 }).await?;
            }
            Ok::<_, switchyard::PublishError>(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    job.publish(Progress { percent: 50 }).await.unwrap();
    bus.run_until_idle().await;
    let mut global = Vec::new();
    while let Ok(x) = seen.try_recv() {
        global.push(x);
    }
    let follow_up = global.iter().find(|(p, _)| *p == 51).cloned();
    let header = follow_up.and_then(|f| f.1);
    assert_eq!(
        header.as_deref(),
        Some("job-9"),
        "follow-up session header: {header:?}"
    );
    assert_eq!(recv(&mut in_session).await, 50);
    assert_eq!(recv(&mut in_session).await, 51);
    job.end().await.unwrap();
}

/// The same for commands: features.md "For commands, the session's handler wins" and "Messages
/// published while handling a session's message stay in that session"; a session handler that
/// sends a command with `ctx.send` reaches its session's handler, as through the bus handle.
///
/// Fixed defect (review rev11): it reached the global handler (`ctx.send from the session
/// answered 1`): `Ctx::send` set causation with `caused_by`, so `inherit_parent` did not copy
/// `session-id` and the command lookup took the global slot.
#[tokio::test]
async fn a_session_handlers_ctx_send_reaches_the_sessions_command_handler() {
    let bus = Bus::new();
    bus.handle(|_: Quote, _| async move { Ok::<_, std::io::Error>(1) })
        .start()
        .await
        .unwrap()
        .detach();
    let job = bus.session("job-10").await.unwrap();
    job.handle(|_: Quote, _| async move { Ok::<_, std::io::Error>(2) })
        .start()
        .await
        .unwrap()
        .detach();
    let (tx, mut answers) = mpsc::unbounded_channel();
    job.on("planner", move |_: Progress, ctx| {
        let tx = tx.clone();
        async move {
            let via_ctx = ctx.send(Quote { sku: "a".into() }).await?;
            let via_bus = ctx.bus().send(Quote { sku: "a".into() }).await?;
            tx.send((via_ctx, via_bus)).unwrap();
            Ok::<_, SendError>(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    job.publish(Progress { percent: 1 }).await.unwrap();
    let (via_ctx, via_bus) = recv(&mut answers).await;
    assert_eq!(via_bus, 2, "the bus handle inside the session handler");
    assert_eq!(via_ctx, 2, "ctx.send from the session answered {via_ctx}");
    job.end().await.unwrap();
}

/// Two sessions (two jobs of the same kind) register the same handler name, as the llmgine
/// sessions do: each session's handler must see exactly its own session's messages.
async fn two_sessions(bus: &Bus) -> (Vec<u8>, Vec<u8>) {
    let (tx, mut seen) = mpsc::unbounded_channel::<(&'static str, u8)>();
    let a = bus.session("job-a").await.unwrap();
    let b = bus.session("job-b").await.unwrap();
    for (name, s) in [("job-a", &a), ("job-b", &b)] {
        let tx = tx.clone();
        s.on("progress", move |p: Progress, _| {
            let tx = tx.clone();
            async move {
                tx.send((name, p.percent)).unwrap();
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap()
        .detach();
    }
    for i in 0..10u8 {
        a.publish(Progress { percent: i }).await.unwrap();
        b.publish(Progress { percent: 100 + i }).await.unwrap();
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while got_a.len() + got_b.len() < 20 {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(("job-a", p))) => got_a.push(p),
            Ok(Some((_, p))) => got_b.push(p),
            _ => break,
        }
    }
    got_a.sort_unstable();
    got_b.sort_unstable();
    a.end().await.unwrap();
    b.end().await.unwrap();
    (got_a, got_b)
}

#[tokio::test]
async fn two_sessions_with_the_same_handler_name_in_memory() {
    let (a, b) = two_sessions(&Bus::new()).await;
    assert_eq!(a, (0..10).collect::<Vec<u8>>());
    assert_eq!(b, (100..110).collect::<Vec<u8>>());
}

/// transports.md: sessions are supported on the embedded log ("yes, in process"), and "the bus
/// API is the same on every transport": the same handler name in two sessions gets each
/// session's messages on the log as in memory.
///
/// Fixed defect (review rev11): a session's event subscription consumed with its subscription
/// *name* as the consumer group, so the two sessions' handlers were one group, the log shared
/// the messages between them and each dropped (filtered) the other session's share
/// (`job-b got []`, 3 of 3 runs). A session's subscription now consumes without a group.
#[tokio::test]
async fn two_sessions_with_the_same_handler_name_on_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let bus = Bus::builder().transport(log).build().unwrap();
    let (a, b) = two_sessions(&bus).await;
    assert_eq!(a, (0..10).collect::<Vec<u8>>(), "job-a got {a:?}");
    assert_eq!(b, (100..110).collect::<Vec<u8>>(), "job-b got {b:?}");
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A global `bus.on("progress")` and a session's `session.on("progress")` on the log: the
/// global one gets every message (the session's and the others), the session's gets its
/// session's; they do not share a consumer group. Once the session ended the log keeps no
/// group for its subscription: the global one's is the only durable group.
#[tokio::test]
async fn a_global_and_a_session_handler_of_one_name_on_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let bus = Bus::builder().transport(log.clone()).build().unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel::<(&'static str, u8)>();
    let g = tx.clone();
    bus.on("progress", move |p: Progress, _| {
        let g = g.clone();
        async move {
            g.send(("global", p.percent)).unwrap();
            Ok::<_, std::io::Error>(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    let job = bus.session("job-g").await.unwrap();
    job.on("progress", move |p: Progress, _| {
        let tx = tx.clone();
        async move {
            tx.send(("session", p.percent)).unwrap();
            Ok::<_, std::io::Error>(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    for i in 0..10u8 {
        job.publish(Progress { percent: i }).await.unwrap();
        bus.publish(Progress { percent: 100 + i }).await.unwrap();
    }
    let (mut global, mut session) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while global.len() + session.len() < 30 {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(("global", p))) => global.push(p),
            Ok(Some((_, p))) => session.push(p),
            _ => break,
        }
    }
    global.sort_unstable();
    session.sort_unstable();
    let all: Vec<u8> = (0..10).chain(100..110).collect();
    assert_eq!(global, all, "the global handler got {global:?}");
    assert_eq!(
        session,
        (0..10).collect::<Vec<u8>>(),
        "the session's handler got {session:?}"
    );
    job.end().await.unwrap();
    let groups: std::collections::BTreeSet<String> =
        log.group_lags().into_iter().map(|l| l.group).collect();
    assert_eq!(
        groups.into_iter().collect::<Vec<_>>(),
        ["progress"],
        "durable groups on the log"
    );
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// On the log a session's subscription gets every message of its topic and settles the other
/// sessions' at once; only its own session's count as owed to it. So a session that ends while
/// another session's messages are still on their way to it leaves nothing owed: the bus goes
/// idle (before, each session's subscription was owed every message and one that ended early
/// left its share owed: `run_until_idle` waited for deliveries that never came).
#[tokio::test]
async fn a_session_ending_while_another_sessions_messages_are_on_the_way_leaves_nothing_owed() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        switchyard_log::LogTransport::open(switchyard_log::LogConfig::new(dir.path())).unwrap();
    let bus = Bus::builder().transport(log).build().unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel::<u8>();
    let a = bus.session("job-early").await.unwrap();
    let b = bus.session("job-late").await.unwrap();
    a.on("progress", |_: Progress, _| async {
        Ok::<_, std::io::Error>(())
    })
    .start()
    .await
    .unwrap()
    .detach();
    b.on("progress", move |p: Progress, _| {
        let tx = tx.clone();
        async move {
            tx.send(p.percent).unwrap();
            Ok::<_, std::io::Error>(())
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    for i in 0..50u8 {
        b.publish(Progress { percent: i }).await.unwrap();
    }
    // At once: most of b's messages have not reached a's subscription yet.
    a.end().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(recv(&mut seen).await);
    }
    got.sort_unstable();
    assert_eq!(got, (0..50).collect::<Vec<u8>>());
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .expect("the bus goes idle: nothing owed to the ended session");
    b.end().await.unwrap();
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}
