//! Commands are never delayed nor published (review rev20, "delayed commands"): there is no
//! `send_after`, and a command envelope given to `schedule_envelope` (or `publish_after`,
//! `schedule`, a publish with the `deliver-at` header) or to a publish was treated as an
//! event: in memory an event subscriber got it (with none: `Ok`, and it was gone), on the log
//! it was dead-lettered `Unroutable` when due. Now the bus refuses it before any transport,
//! with a typed error that says why, and nothing is delivered, dead-lettered or left pending.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{
    Bus, Command, DELIVER_AT_HEADER, Envelope, Kind, Message, PublishError, SendError, Topic,
};
use tokio::sync::mpsc;

use super::{Job, WAIT, bus_on_log};

/// A command on the topic the event subscription below listens to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunJob {
    n: u64,
}
impl Message for RunJob {
    const TOPIC: &'static str = "jobs.run";
    const KIND: Kind = Kind::Command;
}
impl Command for RunJob {
    type Output = u64;
}

fn envelope(kind: Kind, n: u64) -> Envelope {
    let mut env = Envelope::new(
        Topic::new("jobs.run").unwrap(),
        serde_json::to_vec(&Job { n }).unwrap(),
    );
    env.kind = kind;
    env
}

fn is_delayed_command(got: &Result<impl std::fmt::Debug, PublishError>, kind: Kind) -> bool {
    matches!(got, Err(PublishError::DelayedCommand { kind: k }) if *k == kind)
}

/// Every way to delay or publish a command on `bus` is refused with its typed error; an event
/// subscription on the topic gets none of them (only the event published after them, which
/// it must get), and nothing is dead-lettered or left pending.
async fn commands_are_refused(bus: &Bus) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .subscribe(
            "w",
            "jobs.#",
            switchyard::handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    tx.send((env.kind, super::n_of(&env)))
                        .map_err(|e| e.to_string())
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let soon = || switchyard::deadline_after(Duration::from_millis(100));
    for kind in [Kind::Command, Kind::Request] {
        let got = bus.schedule_envelope(soon(), envelope(kind, 1)).await;
        assert!(is_delayed_command(&got, kind), "schedule_envelope: {got:?}");
        let text = got.unwrap_err().to_string();
        assert!(
            text.starts_with("commands cannot be delayed: send the")
                && text.contains("when it is due"),
            "{text}"
        );
        let got = bus.schedule(soon(), envelope(kind, 2));
        assert!(is_delayed_command(&got, kind), "schedule: {got:?}");
        let with_header = envelope(kind, 3).with_header(DELIVER_AT_HEADER, "1");
        let got = bus.publish_envelope(with_header).await;
        assert!(is_delayed_command(&got, kind), "deliver-at: {got:?}");
        let got = bus.publish_envelope(envelope(kind, 4)).await;
        assert!(
            matches!(got, Err(PublishError::NotAnEvent { kind: k }) if k == kind),
            "publish_envelope: {got:?}"
        );
    }
    let got = bus
        .publish_after(Duration::from_millis(100), RunJob { n: 5 })
        .await;
    assert!(
        is_delayed_command(&got, Kind::Command),
        "publish_after: {got:?}"
    );
    let got = bus.publish(RunJob { n: 6 }).await;
    assert!(
        matches!(
            got,
            Err(PublishError::NotAnEvent {
                kind: Kind::Command
            })
        ),
        "publish: {got:?}"
    );
    let text = got.unwrap_err().to_string();
    assert!(text.contains("bus.send / bus.request"), "{text}");
    // Turned into a `SendError` (a hook refusing a send says so), it reads as a rejection.
    let send: SendError = PublishError::DelayedCommand {
        kind: Kind::Command,
    }
    .into();
    assert!(
        matches!(&send, SendError::Rejected { reason } if reason.contains("cannot be delayed"))
    );
    // An event published after all of them is the first and only message the subscription
    // gets (`run_until_idle` also waits for anything delayed: it would be pending).
    bus.publish_envelope(envelope(Kind::Event, 7))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
    assert_eq!(first, Some((Kind::Event, 7)));
    bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "an event handler got a command");
    assert!(bus.dead_letters().unwrap().list().is_empty());
    assert_eq!(bus.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn in_memory_a_command_is_neither_delayed_nor_published() {
    let bus = Bus::new();
    commands_are_refused(&bus).await;
    let got = bus
        .publish_envelope_and_wait(envelope(Kind::Command, 8))
        .await;
    assert!(
        matches!(got, Err(PublishError::NotAnEvent { .. })),
        "publish_envelope_and_wait: {got:?}"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// Review rev20's test (on the log a delayed command envelope was dead-lettered
/// `Unroutable` when due) turned into the rule: refused at once, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_log_a_command_is_neither_delayed_nor_published() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus_on_log(dir.path());
    commands_are_refused(&bus).await;
    bus.shutdown(WAIT).await.unwrap();
}

/// The command itself still goes to its handler when it is sent (the error's advice works).
#[tokio::test(start_paused = true)]
async fn the_command_sent_when_due_is_handled() {
    let bus = Bus::new();
    let _h = bus
        .handle(|cmd: RunJob, _ctx| async move { Ok::<_, std::io::Error>(cmd.n * 2) })
        .start()
        .await
        .unwrap();
    assert!(
        bus.publish_after(Duration::from_secs(1), RunJob { n: 21 })
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bus.send(RunJob { n: 21 }).await.unwrap(), 42);
}
