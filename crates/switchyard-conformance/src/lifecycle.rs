//! Lifecycle tests of the suite: closing twice, one group subscribed with two patterns, and a
//! group member that leaves with messages in hand. Each is a `pub async fn` taking a
//! [`Harness`], like those of [`suite`](crate::suite), and
//! [`lifecycle_tests!`](crate::lifecycle_tests) expands them into `#[tokio::test]`s
//! ([`conformance_tests!`](crate::conformance_tests) calls it, so every transport runs them).
//!
//! They hold every transport to what issue 13 found NATS (items 4, 10, 11) getting wrong.

use std::collections::HashSet;
use std::time::Instant;

use switchyard_core::{Envelope, MessageId, Publisher, SubscribeError, Subscriber};

use crate::suite::{WAIT, next};
use crate::{Failure, Harness, Setup, Verdict};

type Outcome = Result<Verdict, Failure>;

macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(Failure::Check(format!($($arg)+)));
        }
    };
}

async fn open<H: Harness>(h: &H, setup: &Setup) -> Result<H::Transport, Failure> {
    h.open(setup).await.map_err(Failure::Harness)
}

/// `close` twice in a row: both return `Ok` (closing is idempotent), and the subscription
/// open before ends.
pub async fn close_twice_succeeds<H: Harness>(h: &H) -> Outcome {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("closer")).await?;
    let sent = Envelope::new(setup.topic("close")?, "before close");
    t.publish(vec![sent.clone()]).await?;
    let d = next(&mut sub, "the message published before close").await?;
    check!(
        d.envelope.id == sent.id,
        "got another message than published"
    );
    d.ack().await?;
    t.close(Instant::now() + WAIT).await?;
    if let Err(e) = t.close(Instant::now() + WAIT).await {
        return Err(Failure::Check(format!("the second close failed: {e}")));
    }
    // Whatever the transport hands out after close, the stream must end.
    let ended = tokio::time::timeout(WAIT, async {
        while futures::StreamExt::next(&mut sub).await.is_some() {}
    })
    .await;
    check!(ended.is_ok(), "the subscription did not end after close");
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// One group subscribed with two patterns (`<ns>.a`, then `<ns>.b`): the second subscribe is
/// refused with `InvalidConfig`, or both patterns are served; either way no message is lost.
/// Once the members are gone, the group may take a new pattern and reads on.
pub async fn group_on_two_patterns<H: Harness>(h: &H) -> Outcome {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if !h.capabilities().core.consumer_groups {
        return Ok(Verdict::Skipped(format!(
            "{} has no consumer groups",
            h.name()
        )));
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let group = "two-patterns";
    let mut first = t.subscribe(&setup.pattern("a")?, Some(group)).await?;
    let second = t.subscribe(&setup.pattern("b")?, Some(group)).await;
    let on_a = Envelope::new(setup.topic("a")?, "a");
    let on_b = Envelope::new(setup.topic("b")?, "b");
    t.publish(vec![on_a.clone(), on_b.clone()]).await?;
    let second = match second {
        Err(SubscribeError::InvalidConfig(_)) => None,
        Err(e) => return Err(e.into()),
        Ok(sub) => Some(sub),
    };
    let d = next(&mut first, "the message on the first member's pattern").await?;
    check!(
        d.envelope.id == on_a.id,
        "the first member (pattern a) got {} instead of the message on a",
        d.envelope.topic
    );
    d.ack().await?;
    if let Some(mut second) = second {
        let d = next(&mut second, "the message on the second member's pattern").await?;
        check!(
            d.envelope.id == on_b.id,
            "the second member (pattern b) got {} instead of the message on b",
            d.envelope.topic
        );
        d.ack().await?;
    }
    drop(first);
    // No member left: the group may change its pattern, and must then read new messages.
    let mut later = t.subscribe(&setup.all()?, Some(group)).await?;
    let on_c = Envelope::new(setup.topic("c")?, "c");
    t.publish(vec![on_c.clone()]).await?;
    loop {
        // The message on b may come first (published while the group read only a).
        let d = next(
            &mut later,
            "a new message after the group changed its pattern",
        )
        .await?;
        let id = d.envelope.id.clone();
        d.ack().await?;
        if id == on_c.id {
            break;
        }
        check!(
            id == on_b.id,
            "the group read {id} again, which it had acknowledged"
        );
    }
    drop(later);
    t.close(Instant::now() + WAIT).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Seven members of one group, a long ack wait (100 s) and a backlog of 2,000 messages: six
/// members each take a message and leave (dropped, their delivery unsettled) while the
/// backlog waits. The remaining member gets every message, all within [`WAIT`], long before
/// the ack wait could have returned one: a leaving member hands back everything it pulled
/// (and everything its open pull requests still bring).
pub async fn dropped_member_hands_back<H: Harness>(h: &H) -> Outcome {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    if !h.capabilities().core.consumer_groups {
        return Ok(Verdict::Skipped(format!(
            "{} has no consumer groups",
            h.name()
        )));
    }
    const N: usize = 2000;
    const LEAVING: usize = 6;
    let ack_wait = WAIT * 5;
    let setup = Setup::new().with_ack_wait(ack_wait);
    let t = open(h, &setup).await?;
    let topic = setup.topic("handback")?;
    let envs: Vec<Envelope> = (0..N)
        .map(|i| Envelope::new(topic.clone(), format!("{i}")))
        .collect();
    let want: HashSet<MessageId> = envs.iter().map(|e| e.id.clone()).collect();
    let mut leaving = Vec::new();
    for _ in 0..LEAVING {
        leaving.push(t.subscribe(&setup.all()?, Some("members")).await?);
    }
    let mut staying = t.subscribe(&setup.all()?, Some("members")).await?;
    // A backlog: more than any prefetch, so the leaving members have pulled messages (and
    // may have pull requests open) when they leave.
    t.publish(envs).await?;
    let mut held = Vec::new();
    for sub in &mut leaving {
        held.push(next(sub, "a first message for a leaving member").await?);
    }
    // They leave without settling what they hold.
    for (sub, d) in leaving.into_iter().zip(held) {
        drop(sub);
        drop(d);
    }
    let started = Instant::now();
    let mut seen = HashSet::new();
    while seen.len() < want.len() {
        let missing = want.len() - seen.len();
        let d = match tokio::time::timeout(WAIT, futures::StreamExt::next(&mut staying)).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err(Failure::Check("the staying member's stream ended".into())),
            Err(_) => {
                return Err(Failure::Check(format!(
                    "{missing} of {N} message(s) did not reach the staying member within \
                     {WAIT:?} (ack wait {ack_wait:?}): the leaving members kept them"
                )));
            }
        };
        check!(
            want.contains(&d.envelope.id),
            "the staying member got a message nobody published"
        );
        seen.insert(d.envelope.id.clone());
        d.ack().await?;
    }
    let took = started.elapsed();
    check!(
        took < ack_wait / 2,
        "the staying member needed {took:?}, about the ack wait ({ack_wait:?})"
    );
    drop(staying);
    t.close(Instant::now() + WAIT).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// Expands into one `#[tokio::test]` per test of this module, each building its harness with
/// the given expression. [`conformance_tests!`](crate::conformance_tests) calls it.
#[macro_export]
macro_rules! lifecycle_tests {
    ($harness:expr) => {
        $crate::lifecycle_tests!(@one $harness; close_twice_succeeds, group_on_two_patterns,
            dropped_member_hands_back);
    };
    (@one $harness:expr; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let h = $harness;
                let r = $crate::lifecycle::$test(&h).await;
                if let Err(e) = $crate::report(stringify!($test), $crate::Harness::name(&h), r) {
                    panic!("{e}");
                }
            }
        )*
    };
}
