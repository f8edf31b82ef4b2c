//! A `via_bus` hop's intake for foreign envelopes (published on the hop's topic by someone else):
//! they wait for a slot in order without holding up the pipeline's own envelopes, the intake is
//! bounded, and at shutdown those still waiting are handed back or dead-lettered, never lost.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use switchyard_core::{DeadLetterReason, Envelope, InMemoryDeadLetters, Topic};
use switchyard_pipeline::{
    Handoff, HandoffError, InMemoryHandoff, Pipeline, Received, Runner, Settle, StageError, map_fn,
    stage_fn,
};
use tokio::sync::{Semaphore, oneshot};

use crate::{WAIT, collector};

/// parse (held by `gate`) → bus:`topic` → collect; returns the collected values.
fn gated_hop_pipeline<H: Handoff>(
    handoff: H,
    topic: &Topic,
    gate: &Arc<Semaphore>,
) -> (Arc<std::sync::Mutex<Vec<u64>>>, Pipeline<u64, ()>) {
    let g = gate.clone();
    let (out, sink) = collector::<u64>();
    let pipeline = Pipeline::new(stage_fn("parse", move |x: u64| {
        let g = g.clone();
        async move {
            g.acquire().await.map_err(StageError::other)?.forget();
            Ok(x)
        }
    }))
    .via_bus(handoff, topic.clone())
    .then(map_fn("enrich", Ok))
    .then(sink);
    (out, pipeline)
}

fn payloads(dlq: &InMemoryDeadLetters) -> Vec<(DeadLetterReason, String)> {
    dlq.list()
        .iter()
        .map(|l| {
            (
                l.reason,
                String::from_utf8_lossy(&l.envelope.payload).into_owned(),
            )
        })
        .collect()
}

/// Every slot is held by the pipeline's own runs (in `parse`). Foreign envelopes wait in the
/// intake: 64 queued (`max_in_flight`, at least 64) plus the one waiting for its slot; the next
/// one finds the intake full and (with nowhere to hand it back to) is dead-lettered `Dropped`
/// with its raw bytes, counted rejected. Once the own runs crossed the hop and ended, the
/// waiting foreign envelopes run, in the order received.
#[tokio::test(start_paused = true)]
async fn foreign_envelopes_wait_in_order_in_a_bounded_intake() {
    let bus = InMemoryHandoff::new();
    let topic = Topic::new("jobs.intake").unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (out, pipeline) = gated_hop_pipeline(bus.clone(), &topic, &gate);
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(pipeline)
        .max_in_flight(2)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    let feed = running.feed();
    feed.send(1).await.unwrap();
    feed.send(2).await.unwrap();
    // The first foreign envelope is taken by the intake's task, which waits for a slot...
    bus.publish(Envelope::new(topic.clone(), "100"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // virtual: every task ran until idle
    // ... the next 64 are queued, the one after them finds the intake full.
    for v in 101..=165u64 {
        bus.publish(Envelope::new(topic.clone(), v.to_string()))
            .await
            .unwrap();
    }
    assert!(monitor.wait_until(WAIT, |m| m.rejected() == 1).await);
    assert_eq!(
        payloads(&dlq),
        vec![(DeadLetterReason::Dropped, "165".to_string())]
    );
    let snap = monitor.snapshot();
    assert_eq!((snap.accepted, snap.completed), (2, 0));
    // The own runs go on across the hop although 65 foreign envelopes arrived first.
    gate.add_permits(2);
    assert!(monitor.wait_until(WAIT, |m| m.completed() == 67).await);
    let report = running.shutdown().await;
    let m = &report.monitor;
    assert!(report.drained);
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected),
        (67, 67, 0, 1)
    );
    let hop = m.op(&format!("bus:{topic}"), "receive").unwrap();
    assert_eq!((hop.success, hop.errors), (67, 1));
    assert_eq!(hop.error_types["intake_full"], 1);
    let got = out.lock().unwrap().clone();
    let want: Vec<u64> = [1, 2].into_iter().chain(100..=164).collect();
    assert_eq!(got, want, "own first, then foreign in order");
}

/// Shutdown while foreign envelopes wait in the intake (the only slot held by an own run):
/// closing intake refuses them at once, in order; an in-memory hand-off cannot take them back,
/// so each is dead-lettered `Shutdown` with its raw bytes and counted rejected. The own run
/// still drains.
#[tokio::test]
async fn at_shutdown_foreign_envelopes_in_the_intake_are_dead_lettered_in_memory() {
    let bus = InMemoryHandoff::new();
    let topic = Topic::new("jobs.intake.stop").unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (out, pipeline) = gated_hop_pipeline(bus.clone(), &topic, &gate);
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(pipeline)
        .max_in_flight(1)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.feed().send(1).await.unwrap();
    for v in ["100", "101"] {
        bus.publish(Envelope::new(topic.clone(), v)).await.unwrap();
    }
    let stopping = tokio::spawn(running.shutdown());
    assert!(monitor.wait_until(WAIT, |m| m.rejected() == 2).await);
    gate.add_permits(1);
    let report = tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    let m = &report.monitor;
    assert!(report.drained);
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected),
        (1, 1, 0, 2)
    );
    assert_eq!(*out.lock().unwrap(), vec![1]);
    assert_eq!(
        payloads(&dlq),
        vec![
            (DeadLetterReason::Shutdown, "100".to_string()),
            (DeadLetterReason::Shutdown, "101".to_string()),
        ]
    );
}

/// An in-memory hand-off whose envelopes must be settled where they came from (as a durable
/// bus's are): each received envelope carries a [`Settle::channel`], whose receiver the test
/// keeps to see whether the envelope was settled (`Ok`) or handed back (`Err`).
#[derive(Clone, Default)]
struct SettledHandoff {
    inner: InMemoryHandoff,
    settled: Arc<std::sync::Mutex<Vec<Settled>>>,
}

/// A received envelope's payload and the receiver its settle resolves.
type Settled = (String, oneshot::Receiver<()>);

impl Handoff for SettledHandoff {
    type Stream = BoxStream<'static, Received>;

    async fn publish(&self, envelope: Envelope) -> Result<(), HandoffError> {
        self.inner.publish(envelope).await
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Self::Stream, HandoffError> {
        let settled = self.settled.clone();
        let stream = self.inner.subscribe(topic).await?;
        Ok(stream
            .map(move |r| {
                let (settle, rx) = Settle::channel();
                let payload = String::from_utf8_lossy(&r.envelope.payload).into_owned();
                settled.lock().unwrap().push((payload, rx));
                Received {
                    envelope: r.envelope,
                    settle,
                }
            })
            .boxed())
    }
}

/// The same shutdown over a hand-off that takes envelopes back: the foreign envelopes still in
/// the intake are handed back (their settles dropped unsettled), not dead-lettered; the own run's
/// envelope is settled once its run ended.
#[tokio::test]
async fn at_shutdown_foreign_envelopes_in_the_intake_are_handed_back() {
    let handoff = SettledHandoff::default();
    let topic = Topic::new("jobs.intake.back").unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (out, pipeline) = gated_hop_pipeline(handoff.clone(), &topic, &gate);
    let dlq = Arc::new(InMemoryDeadLetters::new(100));
    let running = Runner::new(pipeline)
        .max_in_flight(1)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.feed().send(1).await.unwrap();
    for v in ["100", "101"] {
        handoff
            .publish(Envelope::new(topic.clone(), v))
            .await
            .unwrap();
    }
    let stopping = tokio::spawn(running.shutdown());
    gate.add_permits(1);
    let report = tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    let m = &report.monitor;
    assert!(report.drained);
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected),
        (1, 1, 0, 0)
    );
    assert_eq!(*out.lock().unwrap(), vec![1]);
    assert!(dlq.is_empty(), "{:?}", payloads(&dlq));
    assert_eq!(monitor.snapshot().rejected, 0);
    let mut settled: Vec<(String, &str)> = std::mem::take(&mut *handoff.settled.lock().unwrap())
        .into_iter()
        .map(|(payload, mut rx)| {
            let state = match rx.try_recv() {
                Ok(()) => "settled",
                Err(oneshot::error::TryRecvError::Closed) => "handed back",
                Err(oneshot::error::TryRecvError::Empty) => "pending",
            };
            (payload, state)
        })
        .collect();
    settled.sort();
    assert_eq!(
        settled,
        vec![
            ("1".to_string(), "settled"),
            ("100".to_string(), "handed back"),
            ("101".to_string(), "handed back"),
        ]
    );
}

/// Known limit (documented on `BusHandoff::in_flight`): a foreign envelope waiting for a slot
/// holds its `BusHandoff` worker; with as many workers as slots, the pipeline's own envelope
/// finds no free worker to come back through while the foreign one waits for the slot that own
/// run holds. Observed: "stalled: accepted 1 completed 1 rejected 0 drained true; out [1]", the
/// own envelope received only after 10 s, at shutdown, once the foreign one was handed back.
#[tokio::test]
#[ignore = "limit: a BusHandoff with no more workers than max_in_flight stalls when a foreign envelope waits for the slot of a run whose envelope needs its worker"]
async fn a_bus_handoff_with_as_many_workers_as_slots_stalls_behind_a_foreign_envelope() {
    let bus = switchyard::Bus::new();
    let handoff = switchyard_pipeline::BusHandoff::new(bus.clone()).in_flight(1);
    let topic = Topic::new("jobs.intake.workers").unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (out, pipeline) = gated_hop_pipeline(handoff.clone(), &topic, &gate);
    let running = Runner::new(pipeline)
        .max_in_flight(1)
        .drain_timeout(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.feed().send(1).await.unwrap();
    handoff
        .publish(Envelope::new(topic.clone(), "100"))
        .await
        .unwrap();
    gate.add_permits(1);
    let both = monitor.wait_until(WAIT, |m| m.completed() == 2).await;
    let report = running.shutdown().await;
    assert!(
        both,
        "stalled: accepted {} completed {} rejected {} drained {}; out {:?}; {}",
        report.monitor.accepted,
        report.monitor.completed,
        report.monitor.rejected,
        report.drained,
        out.lock().unwrap(),
        report.monitor
    );
}
