//! Bus-suite tests about a bus's end and its members' ends: a group member dropped with
//! messages in hand, shutdown racing publishers, an ack after the transport closed, and the
//! shutdown report against what was pending. Re-exported from [`crate::bus_suite`], where
//! [`bus_suite_tests!`](crate::bus_suite_tests) finds them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard::{DeadLetterReason, Envelope, MessageId, Outcome, Subscription, handler_fn};
use switchyard_core::{BoxError, PublishError, TransportErrorKind};
use tokio::sync::{Notify, mpsc};

use super::{
    BusFactory, STUCK_ACK_WAIT, TestResult, bus_and_closer, bus_on, idle, inexact_deliveries, lock,
};
use crate::suite::WAIT;
use crate::{Failure, Setup, Verdict};

/// The ack wait of the tests here that wait for one to pass: short, so they stay fast.
const ACK_WAIT: Duration = Duration::from_millis(500);

/// A max_deliver budget that faults (lost deliveries and acks) do not use up.
const MANY_DELIVERIES: u32 = 50;

/// How long a shutdown waits for handlers that never finish.
const SHORT_DRAIN: Duration = Duration::from_millis(200);

/// Handled message ids (with how often each was handled), and a wake-up on every one.
#[derive(Default)]
struct Tally {
    seen: std::sync::Mutex<BTreeMap<MessageId, usize>>,
    notify: Notify,
}

impl Tally {
    fn add(&self, id: MessageId) {
        *lock(&self.seen).entry(id).or_default() += 1;
        self.notify.notify_waiters();
    }

    fn ids(&self) -> BTreeSet<MessageId> {
        lock(&self.seen).keys().cloned().collect()
    }

    fn twice(&self) -> Vec<MessageId> {
        lock(&self.seen)
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Waits until every id of `want` was handled; `false` after `timeout`.
    async fn wait_for(&self, want: &BTreeSet<MessageId>, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if want.is_subset(&self.ids()) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// A handler that counts each message and acks it.
    fn acking(self: &Arc<Self>) -> switchyard::BoxHandler {
        let tally = self.clone();
        handler_fn(move |env: Envelope| {
            tally.add(env.id);
            async { Ok::<_, BoxError>(Outcome::Ack) }
        })
    }
}

/// A handler that reports each message it starts on `entered` and never finishes: a member
/// that stopped answering.
fn stuck(entered: mpsc::UnboundedSender<MessageId>) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let _ = entered.send(env.id);
        async { std::future::pending::<Result<Outcome, BoxError>>().await }
    })
}

async fn entered(
    rx: &mut mpsc::UnboundedReceiver<MessageId>,
    what: &str,
) -> Result<MessageId, Failure> {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(id)) => Ok(id),
        _ => Err(Failure::Timeout {
            what: what.to_owned(),
            after: WAIT,
        }),
    }
}

/// Waits until `sub` holds `n` messages (queued or in its handlers). A transport hands its
/// deliveries over asynchronously and says nothing when it did, so this looks every 5 ms,
/// at most [`WAIT`].
async fn holds(sub: &Subscription, n: usize) -> Result<(), Failure> {
    let wait = async {
        loop {
            let info = sub.info();
            if info.depth + info.in_flight >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .map_err(|_| Failure::Timeout {
            what: format!("the subscription to hold {n} messages, {:?}", sub.info()),
            after: WAIT,
        })
}

/// Two members of one group; one takes messages and stops answering (its handler never
/// finishes) and is dropped. Every message, those it held included, is handled by the one
/// that remains: what the dropped member held comes back after the transport's ack wait
/// (what it had only prefetched, at once). The shutdown then names what the dropped
/// member's stuck handler still holds as handed back to the transport.
pub async fn bus_dropped_group_member_hands_its_messages_on<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let g = h.guarantees();
    if !g.consumer_groups {
        return Ok(Verdict::Skipped(
            "subscriptions of one name do not form a consumer group on this bus".into(),
        ));
    }
    if !g.ack_wait_redelivery {
        return Ok(Verdict::Skipped(
            "the transport does not hand out again a delivery left unsettled past its ack \
             wait: a member that stops answering keeps its messages"
                .into(),
        ));
    }
    const COUNT: usize = 20;
    // Deliveries lost to faults count towards max_deliver too: a generous budget, so that
    // this test is about members, not the dead-letter limit.
    let setup = Setup::new()
        .with_ack_wait(ACK_WAIT)
        .with_max_deliver(MANY_DELIVERIES);
    let (bus, letters) = bus_on(h, &setup, |b| b).await?;
    let pattern = setup.pattern("group.#")?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dying = bus
        .subscribe("group", pattern.as_str(), stuck(tx))
        .workers(1)
        .queue_capacity(1)
        .start()
        .await?;
    let topic = setup.topic("group.work")?;
    let mut sent = BTreeSet::new();
    for n in 0..COUNT {
        let env = Envelope::new(topic.clone(), n.to_string());
        sent.insert(env.id.clone());
        bus.publish_envelope(env).await?;
    }
    let held = entered(&mut rx, "the member that will be dropped to take a message").await?;
    let tally = Arc::new(Tally::default());
    let _staying = bus
        .subscribe("group", pattern.as_str(), tally.acking())
        .start()
        .await?;
    drop(dying);
    if !tally.wait_for(&sent, WAIT).await {
        let lost: Vec<_> = sent.difference(&tally.ids()).cloned().collect();
        return Err(Failure::Check(format!(
            "{} of {COUNT} never reached the remaining member within {WAIT:?} (ack wait \
             {ACK_WAIT:?}), the dropped member's held message {held} among them: {}; lost: \
             {lost:?}; dead-lettered by the transport: {:?}",
            lost.len(),
            lost.contains(&held),
            setup
                .dead_letters
                .list()
                .iter()
                .map(|l| (l.envelope.id.clone(), l.attempts))
                .collect::<Vec<_>>()
        )));
    }
    let foreign: Vec<_> = tally.ids().difference(&sent).cloned().collect();
    check!(
        foreign.is_empty(),
        "handled messages nobody sent: {foreign:?}"
    );
    check!(
        letters.list().is_empty(),
        "dead letters: {:?}",
        letters.list()
    );
    let report = bus.shutdown(SHORT_DRAIN).await?;
    check!(
        report.nacked.contains(&held),
        "the dropped member's stuck handler held {held}; the report does not name it as handed \
         back: {report:?}"
    );
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Four publishers publish 100 messages each while the bus is shut down under them (once a
/// hundred were accepted). Every publish is either accepted or refused with a typed error
/// (`ShuttingDown`, or a transport `Closed` for one caught between the bus and a closing
/// transport); once a publisher is refused it is refused for good. No refused message is
/// handled, every accepted one is handled (once, when the bus promises no duplicates), named
/// by the shutdown report, dead-lettered by the transport, or, on a durable transport,
/// handled by the next bus on it.
pub async fn bus_shutdown_racing_publishers_loses_nothing<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    const PUBLISHERS: usize = 4;
    const EACH: usize = 100;
    const SHUT_AFTER: usize = 100;
    let g = h.guarantees();
    if !g.no_duplicates && g.transport && !g.durable {
        return Ok(Verdict::Skipped(
            "the transport duplicates deliveries and keeps nothing past its close: the bus \
             counts the deliveries it is owed, a copy stands in for a lost delivery that has \
             not come back yet, so the shutdown may stop reading before it did, and the \
             transport loses it"
                .into(),
        ));
    }
    let setup = Setup::new()
        .with_ack_wait(Duration::from_secs(1))
        .with_max_deliver(MANY_DELIVERIES);
    let (bus, letters) = bus_on(h, &setup, |b| b).await?;
    let tally = Arc::new(Tally::default());
    let sub = bus
        .subscribe("worker", setup.all()?.as_str(), tally.acking())
        .workers(2)
        .start()
        .await?;
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let topic = setup.topic("race")?;
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..PUBLISHERS {
        let (bus, topic) = (bus.clone(), topic.clone());
        let (count, enough) = (accepted_count.clone(), enough.clone());
        publishers.spawn(async move {
            let mut accepted = Vec::new();
            let mut refused = Vec::new();
            for n in 0..EACH {
                let env = Envelope::new(topic.clone(), format!("{p}-{n}"));
                let id = env.id.clone();
                match bus.publish_envelope(env).await {
                    Ok(()) if refused.is_empty() => {
                        accepted.push(id);
                        if count.fetch_add(1, Ordering::AcqRel) + 1 == SHUT_AFTER {
                            enough.notify_one();
                        }
                    }
                    Ok(()) => {
                        return Err(format!(
                            "publisher {p}: message {n} was accepted after an earlier one was \
                             refused"
                        ));
                    }
                    Err(PublishError::ShuttingDown) => refused.push(id),
                    Err(PublishError::Transport(e)) if e.kind == TransportErrorKind::Closed => {
                        refused.push(id)
                    }
                    Err(e) => return Err(format!("publisher {p}: message {n}: {e}")),
                }
            }
            Ok((accepted, refused))
        });
    }
    let shutdown = {
        let bus = bus.clone();
        tokio::spawn(async move {
            enough.notified().await;
            bus.shutdown(WAIT).await
        })
    };
    let mut accepted = BTreeSet::new();
    let mut refused = BTreeSet::new();
    while let Some(done) = publishers.join_next().await {
        let (a, r) = done
            .map_err(|e| Failure::Task(e.to_string()))?
            .map_err(Failure::Check)?;
        accepted.extend(a);
        refused.extend(r);
    }
    let report = tokio::time::timeout(WAIT * 2, shutdown)
        .await
        .map_err(|_| Failure::Timeout {
            what: "the shutdown racing the publishers".into(),
            after: WAIT * 2,
        })?
        .map_err(|e| Failure::Task(e.to_string()))??;
    drop(sub);
    check!(
        accepted.len() >= SHUT_AFTER,
        "only {} accepted before the shutdown",
        accepted.len()
    );
    let handled = tally.ids();
    let delivered_refused: Vec<_> = handled.intersection(&refused).take(5).collect();
    check!(
        delivered_refused.is_empty(),
        "refused publishes were handled anyway, e.g. {delivered_refused:?}"
    );
    if g.no_duplicates {
        let twice = tally.twice();
        check!(twice.is_empty(), "handled more than once: {twice:?}");
    }
    // Dead-lettered by the transport (max deliveries) is accounted for, not lost.
    let reported: BTreeSet<MessageId> = report
        .left
        .iter()
        .chain(&report.nacked)
        .cloned()
        .chain(
            setup
                .dead_letters
                .list()
                .iter()
                .map(|l| l.envelope.id.clone()),
        )
        .collect();
    let mut missing: BTreeSet<MessageId> = accepted
        .difference(&handled)
        .filter(|id| !reported.contains(id))
        .cloned()
        .collect();
    if !missing.is_empty() && g.durable {
        // Accepted by the transport after this bus stopped reading: still there for the next.
        let (next, _letters) = bus_on(h, &setup, |b| b).await?;
        let later = Arc::new(Tally::default());
        let _sub = next
            .subscribe("worker", setup.all()?.as_str(), later.acking())
            .start()
            .await?;
        later.wait_for(&missing, WAIT).await;
        let dead: BTreeSet<MessageId> = setup
            .dead_letters
            .list()
            .iter()
            .map(|l| l.envelope.id.clone())
            .collect();
        missing.retain(|id| !later.ids().contains(id) && !dead.contains(id));
        next.shutdown(WAIT).await?;
    }
    check!(
        missing.is_empty(),
        "{} of {} accepted messages were neither handled, nor named by the shutdown report{}, \
         e.g. {:?}; report {report:?}, {} handled, {} refused, dead letters {}",
        missing.len(),
        accepted.len(),
        if g.durable {
            ", nor read by the next bus on the transport"
        } else {
            ""
        },
        missing.iter().take(5).collect::<Vec<_>>(),
        handled.len(),
        refused.len(),
        letters.list().len()
    );
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// The transport is closed under the bus (by another holder) while a handler works on a
/// message; then the handler finishes and the bus acks it on the closed transport. Nothing
/// panics: the ack's failure (if any) is the bus's to log; the message is settled (the bus
/// goes idle), a publish on the closed transport is refused with a typed error, and the
/// shutdown still returns a report.
pub async fn bus_ack_after_transport_close_is_settled<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if !h.guarantees().transport {
        return Ok(Verdict::Skipped(
            "no transport under this bus: nothing to close under it, nothing to ack".into(),
        ));
    }
    let setup = Setup::new();
    let (bus, _letters, close) = bus_and_closer(h, &setup, |b| b).await?;
    let Some(close) = close else {
        return Ok(Verdict::Skipped(
            "the factory cannot close its transport under the bus".into(),
        ));
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let handler = handler_fn(move |env: Envelope| {
        let _ = tx.send(env.id);
        let r = r.clone();
        async move {
            r.notified().await;
            Ok::<_, BoxError>(Outcome::Ack)
        }
    });
    let sub = bus
        .subscribe("worker", setup.all()?.as_str(), handler)
        .workers(1)
        .start()
        .await?;
    let sent = Envelope::new(setup.topic("late.ack")?, "acked after close");
    bus.publish_envelope(sent.clone()).await?;
    let got = entered(&mut rx, "the handler to start").await?;
    check!(got == sent.id, "the handler got another message");
    close(std::time::Instant::now() + WAIT).await?;
    release.notify_one();
    idle(
        &bus,
        "the message acked after the transport closed to be settled",
    )
    .await?;
    check!(
        sub.stats().acked == 1,
        "the handler acked; the subscription counts {:?}",
        sub.stats()
    );
    let late = tokio::time::timeout(
        WAIT,
        bus.publish_envelope(Envelope::new(setup.topic("late.publish")?, "x")),
    )
    .await
    .map_err(|_| Failure::Timeout {
        what: "a publish on the closed transport to return".into(),
        after: WAIT,
    })?;
    check!(
        late.is_err(),
        "a publish on the closed transport was accepted"
    );
    let report = tokio::time::timeout(WAIT * 2, bus.shutdown(WAIT))
        .await
        .map_err(|_| Failure::Timeout {
            what: "the shutdown after the transport closed".into(),
            after: WAIT * 2,
        })??;
    check!(
        report.left.is_empty(),
        "nothing was left in memory: {report:?}"
    );
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Two handlers stuck and four messages queued behind them: at shutdown the bus has six
/// messages pending, and the report accounts for each once: left (dead-lettered, reason
/// `Shutdown`) or handed back to the transport (nacked), none drained. Afterwards nothing is
/// pending.
pub async fn bus_shutdown_report_accounts_for_every_pending_message<F: BusFactory>(
    h: &F,
) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if let Some(reason) = inexact_deliveries(h) {
        return Ok(Verdict::Skipped(reason));
    }
    const WORKERS: usize = 2;
    const COUNT: usize = 6;
    let setup = Setup::new().with_ack_wait(STUCK_ACK_WAIT);
    let (bus, letters) = bus_on(h, &setup, |b| b).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe("stuck", setup.all()?.as_str(), stuck(tx))
        .workers(WORKERS)
        .queue_capacity(16)
        .start()
        .await?;
    let topic = setup.topic("pending")?;
    let mut sent = BTreeSet::new();
    for n in 0..COUNT {
        let env = Envelope::new(topic.clone(), n.to_string());
        sent.insert(env.id.clone());
        bus.publish_envelope(env).await?;
    }
    for _ in 0..WORKERS {
        entered(&mut rx, "the handlers to start").await?;
    }
    holds(&sub, COUNT).await?;
    let pending = bus.pending();
    check!(
        pending == COUNT,
        "{pending} pending with {COUNT} published and none settled"
    );
    let report = bus.shutdown(SHORT_DRAIN).await?;
    let named: Vec<MessageId> = report.left.iter().chain(&report.nacked).cloned().collect();
    let unique: BTreeSet<MessageId> = named.iter().cloned().collect();
    check!(
        unique.len() == named.len(),
        "the report names a message twice: {report:?}"
    );
    check!(
        unique == sent,
        "the report names {unique:?}, the pending messages were {sent:?}"
    );
    check!(
        report.drained == 0,
        "the report says {} drained; nothing was handled",
        report.drained
    );
    check!(
        named.len() + report.drained as usize == pending,
        "{pending} pending at shutdown, the report accounts for {}",
        named.len() + report.drained as usize
    );
    let shutdown_letters: BTreeSet<MessageId> = letters
        .list()
        .iter()
        .filter(|l| l.reason == DeadLetterReason::Shutdown)
        .map(|l| l.envelope.id.clone())
        .collect();
    let left: BTreeSet<MessageId> = report.left.iter().cloned().collect();
    check!(
        shutdown_letters == left,
        "dead-lettered for shutdown {shutdown_letters:?}, left {left:?}"
    );
    check!(
        bus.pending() == 0,
        "{} still pending after the shutdown",
        bus.pending()
    );
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// What a shutdown hands back to a durable transport comes back: one handler stuck, three
/// messages queued behind it; the shutdown names all four as nacked, and a new bus on the
/// same transport (the same subscription name) handles exactly those four, each as a
/// redelivery (attempt 2 or later, where the transport keeps delivery counts across a
/// reopen).
pub async fn bus_nacked_at_shutdown_come_back<F: BusFactory>(h: &F) -> TestResult {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let g = h.guarantees();
    if !g.durable {
        return Ok(Verdict::Skipped(
            "nothing outlives this bus: a new bus cannot read what the last one handed back".into(),
        ));
    }
    if let Some(reason) = inexact_deliveries(h) {
        return Ok(Verdict::Skipped(reason));
    }
    const COUNT: usize = 4;
    let setup = Setup::new().with_ack_wait(ACK_WAIT);
    let (bus, _letters) = bus_on(h, &setup, |b| b).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = bus
        .subscribe("worker", setup.all()?.as_str(), stuck(tx))
        .workers(1)
        .queue_capacity(16)
        .start()
        .await?;
    let topic = setup.topic("handback")?;
    let mut sent = BTreeSet::new();
    for n in 0..COUNT {
        let env = Envelope::new(topic.clone(), n.to_string());
        sent.insert(env.id.clone());
        bus.publish_envelope(env).await?;
    }
    entered(&mut rx, "the handler to start").await?;
    holds(&sub, COUNT).await?;
    let report = bus.shutdown(SHORT_DRAIN).await?;
    let nacked: BTreeSet<MessageId> = report.nacked.iter().cloned().collect();
    check!(
        nacked == sent && report.left.is_empty(),
        "a bus on a transport hands every unhandled delivery back; report {report:?}, sent \
         {sent:?}"
    );
    drop(sub);
    let (next, letters) = bus_on(h, &setup, |b| b).await?;
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tally = Arc::new(Tally::default());
    let (a, t) = (attempts.clone(), tally.clone());
    let handler = handler_fn(move |env: Envelope| {
        lock(&a).push(env.delivery.attempt);
        t.add(env.id);
        async { Ok::<_, BoxError>(Outcome::Ack) }
    });
    let _sub = next
        .subscribe("worker", setup.all()?.as_str(), handler)
        .start()
        .await?;
    let back = tally.wait_for(&sent, WAIT).await;
    idle(&next, "the messages handed back to be handled").await?;
    check!(
        back,
        "of the {COUNT} handed back, the next bus got {:?}",
        tally.ids()
    );
    check!(
        tally.ids() == sent,
        "the next bus handled {:?}, handed back were {sent:?}",
        tally.ids()
    );
    if g.exact_attempts && g.durable_attempts {
        let attempts = lock(&attempts).clone();
        check!(
            attempts.iter().all(|a| *a >= 2),
            "a message handed back came as a first delivery: attempts {attempts:?}"
        );
    }
    check!(
        letters.list().is_empty(),
        "dead letters: {:?}",
        letters.list()
    );
    next.shutdown(WAIT).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}
