//! The suite: one `pub async fn` per behaviour, each taking a [`Harness`]. Every function
//! opens its own transport with a fresh [`Setup`] (unique namespace), so tests run in
//! parallel against one broker. A test whose capability is missing returns
//! [`Verdict::Skipped`] with the reason.
//!
//! No test sleeps to synchronise: every wait is on an event (a delivery, a dead letter, a
//! task finishing) bounded by [`WAIT`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::{
    Bytes, CloseError, Delivery, Envelope, Kind, MessageId, Pattern, Priority, Publisher, SmolStr,
    Subscriber, Topic,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{Failure, Harness, Setup, Verdict};

pub use crate::suite_durable::{
    dead_letter_after_max_deliveries, durable_new_subscriber_reads_old, reconnect_after_restart,
    request_reply, wildcards,
};
pub use crate::suite_settle::ack_after_close_is_refused_or_kept;

/// The longest any single awaited event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Header the suite uses as ordering key (the default of the memory and log transports).
pub const ORDERING_HEADER: &str = "ordering-key";

macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Failure::Check(format!($($arg)+)));
        }
    };
}
pub(crate) use check;

pub(crate) type Outcome = Result<Verdict, Failure>;

pub(crate) fn skip(reason: impl Into<String>) -> Outcome {
    Ok(Verdict::Skipped(reason.into()))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) async fn open<H: Harness>(h: &H, setup: &Setup) -> Result<H::Transport, Failure> {
    h.open(setup).await.map_err(Failure::Harness)
}

pub(crate) async fn close<T: Publisher>(t: &T) -> Result<(), Failure> {
    match t.close(Instant::now() + WAIT).await {
        Ok(()) | Err(CloseError::AlreadyShuttingDown) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The next delivery, or a failure after [`WAIT`] or when the stream ends.
pub async fn next<S>(sub: &mut S, what: &str) -> Result<Delivery, Failure>
where
    S: futures::Stream<Item = Delivery> + Unpin,
{
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(Failure::Check(format!(
            "subscription ended waiting for {what}"
        ))),
        Err(_) => Err(Failure::Timeout {
            what: what.to_owned(),
            after: WAIT,
        }),
    }
}

pub(crate) async fn join<T>(handle: JoinHandle<T>, what: &str) -> Result<T, Failure> {
    match tokio::time::timeout(WAIT, handle).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Task(format!("{what}: {e}"))),
        Err(_) => Err(Failure::Timeout {
            what: what.to_owned(),
            after: WAIT,
        }),
    }
}

pub(crate) fn env(topic: Topic, payload: impl Into<Bytes>) -> Envelope {
    Envelope::new(topic, payload)
}

/// Reads `sub`, acking everything, until every id of `want` was seen; returns the ids seen
/// (duplicates collapsed).
pub(crate) async fn drain_until<S>(
    sub: &mut S,
    want: &HashSet<MessageId>,
) -> Result<HashSet<MessageId>, Failure>
where
    S: futures::Stream<Item = Delivery> + Unpin,
{
    let mut seen = HashSet::new();
    while !want.is_subset(&seen) {
        let d = next(
            sub,
            &format!("{} more message(s)", want.difference(&seen).count()),
        )
        .await?;
        seen.insert(d.envelope.id.clone());
        d.ack().await?;
    }
    Ok(seen)
}

/// Runs the skip checks every test shares.
pub(crate) fn precheck<H: Harness>(h: &H) -> Option<Verdict> {
    h.unavailable().map(Verdict::Skipped)
}

/// A message published with headers, every envelope field and a binary payload arrives with
/// all of them intact, as attempt 1.
pub async fn roundtrip<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.pattern("rt.data")?, None).await?;
    let parent = env(setup.topic("rt.parent")?, "p");
    let mut sent = env(
        setup.topic("rt.data")?,
        Bytes::from_static(&[0, 1, 2, 255, b'\r', b'\n', b'%', b':']),
    )
    .caused_by(&parent)
    .with_header("x-tenant", "acme")
    .with_header("Mixed-Case", "Value With Spaces")
    .with_header("x-odd", "grüße: a\r\nb %41 ")
    .with_source("svc-a")
    .with_target("svc-b")
    .with_priority(Priority::HIGH)
    .with_kind(Kind::Command);
    sent.set_content_type(SmolStr::new("application/octet-stream"));
    sent.type_name = Some(SmolStr::new("demo.Thing"));
    sent.type_version = 3;
    t.publish(vec![sent.clone()]).await?;
    let d = next(&mut sub, "the published message").await?;
    let got = &d.envelope;
    check!(got.id == sent.id, "id {} != {}", got.id, sent.id);
    check!(
        got.topic == sent.topic,
        "topic {} != {}",
        got.topic,
        sent.topic
    );
    check!(
        got.kind == sent.kind,
        "kind {:?} != {:?}",
        got.kind,
        sent.kind
    );
    check!(
        got.correlation_id == sent.correlation_id,
        "correlation id changed"
    );
    check!(
        got.causation_id() == sent.causation_id(),
        "causation id changed"
    );
    check!(got.source() == sent.source(), "source {:?}", got.source());
    check!(got.target() == sent.target(), "target {:?}", got.target());
    check!(got.priority == sent.priority, "priority {:?}", got.priority);
    check!(
        got.headers() == sent.headers(),
        "headers {:?} != {:?}",
        got.headers(),
        sent.headers()
    );
    check!(
        got.content_type() == sent.content_type(),
        "content type {:?}",
        got.content_type()
    );
    check!(
        got.type_name == sent.type_name,
        "type name {:?}",
        got.type_name
    );
    check!(got.type_version == 3, "type version {}", got.type_version);
    check!(got.payload == sent.payload, "payload {:?}", got.payload);
    check!(
        got.timestamp == sent.timestamp,
        "timestamp {:?} != {:?}",
        got.timestamp,
        sent.timestamp
    );
    check!(
        got.delivery.attempt == 1,
        "attempt {}",
        got.delivery.attempt
    );
    d.ack().await?;
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// 5,000 messages from 50 concurrent publishers are all delivered to a subscriber.
pub async fn concurrent_publishers<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    const PUBLISHERS: usize = 50;
    const EACH: usize = 100;
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let topic = setup.topic("load")?;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let t = t.clone();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let e = env(topic.clone(), format!("{p}-{i}"));
                ids.push(e.id.clone());
                t.publish(vec![e]).await?;
            }
            Ok::<_, switchyard_core::PublishError>(ids)
        }));
    }
    let reader = tokio::spawn(async move {
        let mut seen = HashSet::new();
        while seen.len() < PUBLISHERS * EACH {
            let d = next(&mut sub, "the 5,000 messages").await?;
            seen.insert(d.envelope.id.clone());
            d.ack().await?;
        }
        Ok::<_, Failure>(seen)
    });
    let mut want = HashSet::new();
    for task in tasks {
        want.extend(join(task, "a publisher").await??);
    }
    let seen = join(reader, "the reader").await??;
    check!(seen == want, "delivered ids differ from published ids");
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// 20 topics, each with its own subscriber and publisher, all at once: every subscriber gets
/// exactly its topic's messages.
pub async fn many_topics<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    const TOPICS: usize = 20;
    const EACH: usize = 25;
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut readers = Vec::new();
    let mut publishers = Vec::new();
    for k in 0..TOPICS {
        let topic = setup.topic(&format!("many.t{k}"))?;
        let mut sub = t.subscribe(&Pattern::from(topic.clone()), None).await?;
        let envs: Vec<Envelope> = (0..EACH)
            .map(|i| env(topic.clone(), format!("{i}")))
            .collect();
        let want: HashSet<MessageId> = envs.iter().map(|e| e.id.clone()).collect();
        readers.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            while seen.len() < EACH {
                let d = next(&mut sub, "a topic's messages").await?;
                if d.envelope.topic != topic {
                    return Err(Failure::Check(format!(
                        "subscriber of {topic} got {}",
                        d.envelope.topic
                    )));
                }
                seen.insert(d.envelope.id.clone());
                d.ack().await?;
            }
            Ok::<_, Failure>((seen, want))
        }));
        let t = t.clone();
        publishers.push(tokio::spawn(async move {
            for e in envs {
                t.publish(vec![e]).await?;
            }
            Ok::<_, switchyard_core::PublishError>(())
        }));
    }
    for p in publishers {
        join(p, "a publisher").await??;
    }
    for r in readers {
        let (seen, want) = join(r, "a reader").await??;
        check!(
            seen == want,
            "a topic's subscriber got other ids than published"
        );
    }
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// `nack` redelivers the message at once (attempt 2), and `nack` with a delay redelivers it
/// no sooner than the delay (attempt 3).
pub async fn nack_redelivers<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().redelivery {
        return skip(format!("{} does not redeliver", h.name()));
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let sent = env(setup.topic("nack")?, "again");
    t.publish(vec![sent.clone()]).await?;
    let d1 = next(&mut sub, "first delivery").await?;
    check!(d1.envelope.id == sent.id, "wrong message");
    check!(
        d1.envelope.delivery.attempt == 1,
        "attempt {}",
        d1.envelope.delivery.attempt
    );
    d1.nack(None).await?;
    let d2 = next(&mut sub, "redelivery after nack").await?;
    check!(d2.envelope.id == sent.id, "wrong message redelivered");
    check!(
        d2.envelope.delivery.attempt == 2,
        "attempt {}",
        d2.envelope.delivery.attempt
    );
    check!(
        d2.envelope.payload == sent.payload,
        "payload changed on redelivery"
    );
    let delay = Duration::from_millis(400);
    let nacked_at = Instant::now();
    d2.nack(Some(delay)).await?;
    let d3 = next(&mut sub, "redelivery after delayed nack").await?;
    let waited = nacked_at.elapsed();
    check!(d3.envelope.id == sent.id, "wrong message redelivered");
    check!(
        d3.envelope.delivery.attempt == 3,
        "attempt {}",
        d3.envelope.delivery.attempt
    );
    check!(
        waited >= delay.mul_f32(0.8),
        "redelivered after {waited:?}, before the {delay:?} nack delay"
    );
    d3.ack().await?;
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A delivery held without settling comes back after the ack wait, as attempt 2.
pub async fn ack_wait_redelivers<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().redelivery {
        return skip(format!("{} does not redeliver", h.name()));
    }
    let ack_wait = Duration::from_secs(1);
    let setup = Setup::new().with_ack_wait(ack_wait);
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let sent = env(setup.topic("ackwait")?, "slow");
    t.publish(vec![sent.clone()]).await?;
    let held = next(&mut sub, "first delivery").await?;
    let at = Instant::now();
    let again = next(&mut sub, "redelivery after the ack wait").await?;
    let waited = at.elapsed();
    check!(again.envelope.id == sent.id, "another message came instead");
    check!(
        again.envelope.delivery.attempt == 2,
        "attempt {}",
        again.envelope.delivery.attempt
    );
    check!(
        waited >= ack_wait.mul_f32(0.7),
        "redelivered after {waited:?}, before the {ack_wait:?} ack wait"
    );
    again.ack().await?;
    drop(held);
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A group member takes half the messages and closes; a new member of the same group gets
/// the rest, and nothing the first one acknowledged comes again.
pub async fn new_subscriber_continues<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    // Short ack wait: messages a closed member had prefetched come back quickly.
    let setup = Setup::new().with_ack_wait(Duration::from_secs(2));
    let t = open(h, &setup).await?;
    let mut first = t.subscribe(&setup.all()?, Some("g")).await?;
    let envs: Vec<Envelope> = (0..20)
        .map(|i| Ok(env(setup.topic("cont")?, format!("{i}"))))
        .collect::<Result<_, Failure>>()?;
    let want: HashSet<MessageId> = envs.iter().map(|e| e.id.clone()).collect();
    t.publish(envs).await?;
    let mut acked = HashSet::new();
    for _ in 0..10 {
        let d = next(&mut first, "the first half").await?;
        acked.insert(d.envelope.id.clone());
        d.ack().await?;
    }
    drop(first);
    let mut second = t.subscribe(&setup.all()?, Some("g")).await?;
    let rest: HashSet<MessageId> = want.difference(&acked).cloned().collect();
    let mut seen = HashSet::new();
    while !rest.is_subset(&seen) {
        let d = next(&mut second, "the rest").await?;
        check!(
            !acked.contains(&d.envelope.id),
            "message {} acknowledged by the first member came again",
            d.envelope.id
        );
        seen.insert(d.envelope.id.clone());
        d.ack().await?;
    }
    drop(second);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Subscriptions dropped from many tasks while messages flow, and two concurrent `close`
/// calls: nothing panics or hangs, both closes return, and every subscription ends.
pub async fn concurrent_close<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut consumers = Vec::new();
    for i in 0..8 {
        let group = (i % 2 == 0).then_some("g");
        let mut sub = t.subscribe(&setup.all()?, group).await?;
        consumers.push(tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                let _ = d.ack().await;
            }
        }));
    }
    let publisher = {
        let t = t.clone();
        let topic = setup.topic("close")?;
        tokio::spawn(async move {
            for i in 0..200 {
                if t.publish(vec![env(topic.clone(), format!("{i}"))])
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };
    // Half the consumers go away while the publisher runs.
    let dropped: Vec<JoinHandle<()>> = consumers.drain(..4).collect();
    let droppers: Vec<JoinHandle<()>> = dropped
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                c.abort();
                let _ = c.await;
            })
        })
        .collect();
    let closers: Vec<JoinHandle<Result<(), CloseError>>> = (0..2)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.close(Instant::now() + WAIT).await })
        })
        .collect();
    for d in droppers {
        join(d, "dropping a subscription").await?;
    }
    for c in closers {
        match join(c, "a close call").await? {
            Ok(()) | Err(CloseError::AlreadyShuttingDown) => {}
            Err(e) => return Err(e.into()),
        }
    }
    join(publisher, "the publisher").await?;
    for c in consumers {
        join(c, "a subscription to end after close").await?;
    }
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A handler that fails every third message (n % 3 == 1) on its first attempt (nack) keeps going: every
/// message is acknowledged in the end, the failed ones on attempt 2.
pub async fn continue_after_handler_errors<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().redelivery {
        return skip(format!("{} does not redeliver", h.name()));
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let envs: Vec<Envelope> = (0..30)
        .map(|i| Ok(env(setup.topic("errors")?, format!("{i}")).with_header("n", i.to_string())))
        .collect::<Result<_, Failure>>()?;
    let want: HashSet<MessageId> = envs.iter().map(|e| e.id.clone()).collect();
    t.publish(envs).await?;
    let mut done = HashSet::new();
    while done.len() < want.len() {
        let d = next(&mut sub, "messages after handler errors").await?;
        let n: u32 = d
            .envelope
            .header("n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let fails = n % 3 == 1 && d.envelope.delivery.attempt == 1;
        if fails {
            d.nack(None).await?;
        } else {
            check!(
                n % 3 != 1 || d.envelope.delivery.attempt == 2,
                "failed message {n} came back as attempt {}",
                d.envelope.delivery.attempt
            );
            done.insert(d.envelope.id.clone());
            d.ack().await?;
        }
    }
    check!(done == want, "not every message was handled");
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Four keys, each published in order by its own task, concurrently: one subscriber sees
/// every key's messages in publish order.
pub async fn in_order_per_key<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().core.ordered {
        return skip(format!("{} does not promise order", h.name()));
    }
    const KEYS: usize = 4;
    const EACH: u32 = 50;
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let mut publishers = Vec::new();
    for k in 0..KEYS {
        let t = t.clone();
        let topic = setup.topic("ordered")?;
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let e = env(topic.clone(), format!("{k}-{i}"))
                    .with_header(ORDERING_HEADER, format!("key{k}"))
                    .with_header("seq", i.to_string());
                t.publish(vec![e]).await?;
            }
            Ok::<_, switchyard_core::PublishError>(())
        }));
    }
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..KEYS * EACH as usize {
        let d = next(&mut sub, "ordered messages").await?;
        let key = d
            .envelope
            .header(ORDERING_HEADER)
            .unwrap_or_default()
            .to_owned();
        let seq: u32 = d
            .envelope
            .header("seq")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX);
        let expected = last.get(&key).map_or(0, |l| l + 1);
        check!(
            seq == expected,
            "key {key}: got seq {seq}, expected {expected}"
        );
        last.insert(key, seq);
        d.ack().await?;
    }
    for p in publishers {
        join(p, "a publisher").await??;
    }
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// `close` while 20 publishers are mid-flight: every publish that returned `Ok` is
/// delivered (read on, or after reopening a durable transport).
pub async fn publisher_close_flushes<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    // Short ack wait: what the closed transport had prefetched comes back quickly.
    let setup = Setup::new().with_ack_wait(Duration::from_secs(2));
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let accepted: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let progress = Arc::new(Notify::new());
    let mut publishers = Vec::new();
    for p in 0..20 {
        let t = t.clone();
        let topic = setup.topic("flush")?;
        let accepted = accepted.clone();
        let progress = progress.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..50 {
                let e = env(topic.clone(), format!("{p}-{i}"));
                let id = e.id.clone();
                if t.publish(vec![e]).await.is_err() {
                    break;
                }
                lock(&accepted).insert(id);
                progress.notify_waiters();
            }
        }));
    }
    // Close once some publishes went through and others are still in flight.
    let some = async {
        loop {
            let notified = progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&accepted).len() >= 100 {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(WAIT, some).await.is_err() {
        return Err(Failure::Timeout {
            what: "100 accepted publishes".into(),
            after: WAIT,
        });
    }
    close(&t).await?;
    for p in publishers {
        join(p, "a publisher after close").await?;
    }
    let want = lock(&accepted).clone();
    let mut seen = HashSet::new();
    while !want.is_subset(&seen) {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(d)) => {
                seen.insert(d.envelope.id.clone());
                let _ = d.ack().await;
            }
            Ok(None) => break,
            Err(_) => {
                return Err(Failure::Timeout {
                    what: "accepted messages after close".into(),
                    after: WAIT,
                });
            }
        }
    }
    drop(sub);
    if !want.is_subset(&seen) {
        check!(
            h.capabilities().core.durable,
            "{} accepted publishes were lost at close",
            want.difference(&seen).count()
        );
        let t = open(h, &setup).await?;
        let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
        let rest: HashSet<MessageId> = want.difference(&seen).cloned().collect();
        drain_until(&mut sub, &rest).await?;
        drop(sub);
        close(&t).await?;
    }
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A receive cancelled while waiting loses nothing (the next receive gets the message), and
/// a delivery carries its context: the envelope as published and attempt 1.
pub async fn delivery_context_and_cancellation<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let cancelled = tokio::time::timeout(Duration::from_millis(50), sub.next()).await;
    check!(
        cancelled.is_err(),
        "a delivery arrived before anything was published"
    );
    let sent = env(setup.topic("ctx")?, "ctx").with_source("me");
    t.publish(vec![sent.clone()]).await?;
    let d = next(&mut sub, "the message after a cancelled receive").await?;
    check!(d.envelope.id == sent.id, "wrong message");
    check!(
        d.envelope.correlation_id == sent.correlation_id,
        "correlation lost"
    );
    check!(d.envelope.source() == sent.source(), "source lost");
    check!(
        d.envelope.delivery.attempt == 1,
        "attempt {}",
        d.envelope.delivery.attempt
    );
    d.ack().await?;
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Two members of group `a` split the messages (each gets some, none gets one twice), and
/// group `b` still gets every message.
pub async fn consumer_groups<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().core.consumer_groups {
        return skip(format!("{} has no consumer groups", h.name()));
    }
    const N: usize = 100;
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let a1 = t.subscribe(&setup.all()?, Some("a")).await?;
    let a2 = t.subscribe(&setup.all()?, Some("a")).await?;
    let b = t.subscribe(&setup.all()?, Some("b")).await?;
    let topic = setup.topic("groups")?;
    let envs: Vec<Envelope> = (0..N).map(|i| env(topic.clone(), format!("{i}"))).collect();
    let want: HashSet<MessageId> = envs.iter().map(|e| e.id.clone()).collect();

    // Each member holds its first message until the other member got one too, so both
    // take part whatever the transport's prefetch.
    let started = Arc::new((Notify::new(), Mutex::new([false; 2])));
    let a_seen: Arc<Mutex<Vec<(usize, MessageId)>>> = Arc::default();
    let progress = Arc::new(Notify::new());
    let mut members = Vec::new();
    for (idx, mut sub) in [a1, a2].into_iter().enumerate() {
        let started = started.clone();
        let a_seen = a_seen.clone();
        let progress = progress.clone();
        members.push(tokio::spawn(async move {
            let mut first = true;
            while let Some(d) = sub.next().await {
                if first {
                    first = false;
                    lock(&started.1)[idx] = true;
                    started.0.notify_waiters();
                    let other = async {
                        loop {
                            let n = started.0.notified();
                            tokio::pin!(n);
                            n.as_mut().enable();
                            if lock(&started.1)[1 - idx] {
                                return;
                            }
                            n.await;
                        }
                    };
                    if tokio::time::timeout(WAIT, other).await.is_err() {
                        progress.notify_waiters();
                        return Err(Failure::Check(format!(
                            "member {idx} of group a got a message but the other member got none"
                        )));
                    }
                }
                lock(&a_seen).push((idx, d.envelope.id.clone()));
                d.ack().await?;
                progress.notify_waiters();
            }
            Ok::<(), Failure>(())
        }));
    }
    let b_reader = {
        let want = want.clone();
        let mut b = b;
        tokio::spawn(async move { drain_until(&mut b, &want).await })
    };
    t.publish(envs).await?;
    let b_seen = join(b_reader, "group b").await??;
    check!(b_seen == want, "group b did not get every message");
    // Wait until group a has everything (or a member stopped with an error).
    let done = async {
        loop {
            let n = progress.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            let all = lock(&a_seen)
                .iter()
                .map(|(_, id)| id.clone())
                .collect::<HashSet<_>>()
                == want;
            if all || members.iter().any(JoinHandle::is_finished) {
                return;
            }
            n.await;
        }
    };
    let finished = tokio::time::timeout(WAIT, done).await.is_ok();
    let mut member_error = None;
    for m in members {
        if m.is_finished() {
            if let Ok(Err(e)) = m.await {
                member_error = Some(e);
            }
        } else {
            m.abort();
        }
    }
    if let Some(e) = member_error {
        return Err(e);
    }
    check!(finished, "group a did not get every message in time");
    let seen = lock(&a_seen).clone();
    let ids: Vec<MessageId> = seen.iter().map(|(_, id)| id.clone()).collect();
    let unique: HashSet<MessageId> = ids.iter().cloned().collect();
    check!(unique == want, "group a did not get every message");
    check!(
        ids.len() == unique.len(),
        "group a got {} duplicate(s)",
        ids.len() - unique.len()
    );
    for idx in 0..2 {
        check!(
            seen.iter().any(|(m, _)| *m == idx),
            "member {idx} of group a got nothing"
        );
    }
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}
