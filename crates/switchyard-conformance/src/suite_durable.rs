//! Suite tests about what outlives one subscriber or one connection (durable reads, reconnects)
//! and about patterns, requests and dead letters. Re-exported from [`crate::suite`], where
//! [`conformance_tests!`](crate::conformance_tests) finds them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_core::{Bytes, DeadLetterReason, Envelope, Kind, MessageId, Publisher, Subscriber};

use crate::suite::{
    Outcome, WAIT, check, close, drain_until, env, join, next, open, precheck, skip,
};
use crate::{Failure, Harness, RequestFailure, Setup, Verdict};

/// On a durable transport, a subscriber that arrives after the messages were published (and
/// after the publisher's transport was closed) reads them.
pub async fn durable_new_subscriber_reads_old<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().core.durable {
        return skip(format!("{} is not durable", h.name()));
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let envs: Vec<Envelope> = (0..10)
        .map(|i| Ok(env(setup.topic("old")?, format!("{i}"))))
        .collect::<Result<_, Failure>>()?;
    let want: HashSet<MessageId> = envs.iter().map(|e| e.id.clone()).collect();
    t.publish(envs).await?;
    close(&t).await?;
    drop(t);
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("late")).await?;
    let seen = drain_until(&mut sub, &want).await?;
    check!(seen == want, "the late subscriber got other messages");
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// The broker restarts (or durable storage is closed and reopened) between publishes:
/// every publish that returned `Ok`, before and after, is delivered.
pub async fn reconnect_after_restart<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().restart {
        return skip(format!(
            "the {} harness cannot restart its broker",
            h.name()
        ));
    }
    // Short ack wait: messages prefetched before the restart come back quickly.
    let setup = Setup::new().with_ack_wait(Duration::from_secs(2));
    let t = open(h, &setup).await?;
    let topic = setup.topic("restart")?;
    let mut want = HashSet::new();
    for _ in 0..3 {
        let envs: Vec<Envelope> = (0..10)
            .map(|i| env(topic.clone(), format!("{i}")))
            .collect();
        want.extend(envs.iter().map(|e| e.id.clone()));
        t.publish(envs).await?;
    }
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let d = next(&mut sub, "messages before the restart").await?;
        seen.insert(d.envelope.id.clone());
        d.ack().await?;
    }
    drop(sub);
    let t = h.restart(&setup, t).await.map_err(Failure::Harness)?;
    // Publishes after the restart may fail while the client reconnects; retry each (the
    // same envelope, so a deduplicating transport stores it once).
    let deadline = Instant::now() + WAIT;
    for i in 0..30 {
        let e = env(topic.clone(), format!("after-{i}"));
        loop {
            match t.publish(vec![e.clone()]).await {
                Ok(()) => break,
                Err(err) if Instant::now() < deadline => {
                    tracing::debug!(error = %err, "publish after restart failed; retrying");
                    tokio::task::yield_now().await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        want.insert(e.id);
    }
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let rest: HashSet<MessageId> = want.difference(&seen).cloned().collect();
    drain_until(&mut sub, &rest).await?;
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// `*` matches exactly one segment and `#` zero or more (`w.#` matches `w`); each
/// subscription gets exactly the topics its pattern matches.
pub async fn wildcards<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    let caps = h.capabilities().core;
    if !caps.wildcards {
        return skip(format!("{} has no wildcard subscriptions", h.name()));
    }
    if !caps.ordered {
        return skip(format!(
            "{} does not promise order; the test's end marker needs it",
            h.name()
        ));
    }
    // Short ack wait: messages prefetched before the restart come back quickly.
    let setup = Setup::new().with_ack_wait(Duration::from_secs(2));
    let t = open(h, &setup).await?;
    let patterns = ["w.*", "w.#", "#", "*.x", "#.x", "w.*.b"];
    let topics = ["w", "w.a", "w.a.b", "q.x", "w.x", "q.r.x", "z", "w.c.b"];
    let mut readers = Vec::new();
    for (idx, p) in patterns.iter().enumerate() {
        let pattern = setup.pattern(p)?;
        let mine = idx.to_string();
        let mut sub = t.subscribe(&pattern, None).await?;
        let expected: Vec<String> = topics
            .iter()
            .filter_map(|s| setup.topic(s).ok())
            .filter(|topic| pattern.matches(topic))
            .map(|topic| topic.to_string())
            .collect();
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let d = next(&mut sub, &format!("messages for {pattern}")).await?;
                let end = d.envelope.header("end").map(str::to_owned);
                let topic = d.envelope.topic.to_string();
                d.ack().await?;
                match end {
                    None => got.push(topic),
                    Some(e) if e == mine => break,
                    Some(_) => {}
                }
            }
            got.sort();
            let mut expected = expected;
            expected.sort();
            if got != expected {
                return Err(Failure::Check(format!(
                    "{pattern} got {got:?}, expected {expected:?}"
                )));
            }
            Ok::<_, Failure>(())
        }));
    }
    let envs: Vec<Envelope> = topics
        .iter()
        .map(|s| Ok(env(setup.topic(s)?, *s)))
        .collect::<Result<_, Failure>>()?;
    t.publish(envs).await?;
    // One end marker per pattern (its wildcards filled in), after everything else.
    let markers: Vec<Envelope> = patterns
        .iter()
        .enumerate()
        .map(|(idx, p)| {
            let filled: Vec<&str> = p
                .split('.')
                .map(|s| if s == "*" || s == "#" { "m" } else { s })
                .collect();
            Ok(env(setup.topic(&filled.join("."))?, "end").with_header("end", idx.to_string()))
        })
        .collect::<Result<_, Failure>>()?;
    t.publish(markers).await?;
    for r in readers {
        join(r, "a wildcard subscriber").await??;
    }
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A request gets its reply (correlated, caused by the request) within the deadline; a
/// request nobody answers fails at its deadline; a request to a topic nobody serves fails
/// at once with no-responders, long before its deadline.
pub async fn request_reply<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().request_reply {
        return skip(format!("{} has no request/reply", h.name()));
    }
    let setup = Setup::new();
    let t = open(h, &setup).await?;
    let handler: crate::ReplyFn = Arc::new(|req: Envelope| {
        if req.topic.as_str().ends_with(".slow") {
            return None;
        }
        let mut payload = req.payload.to_vec();
        payload.extend_from_slice(b"!");
        Some(req.reply(payload))
    });
    let guard = h
        .serve(&t, &setup.pattern("rr.*")?, handler)
        .await
        .map_err(Failure::Harness)?;
    let req = env(setup.topic("rr.ping")?, "hi").with_kind(Kind::Request);
    let reply = match h.request(&t, req.clone(), Duration::from_secs(5)).await {
        Ok(r) => r,
        Err(e) => return Err(Failure::Check(format!("request failed: {e}"))),
    };
    check!(
        reply.payload.as_ref() == b"hi!",
        "reply payload {:?}",
        reply.payload
    );
    check!(reply.kind == Kind::Reply, "reply kind {:?}", reply.kind);
    check!(
        reply.causation_id() == Some(&req.id),
        "reply not caused by the request"
    );
    check!(
        reply.correlation_id == req.correlation_id,
        "reply not correlated"
    );

    let deadline = Duration::from_millis(300);
    let at = Instant::now();
    let slow = h
        .request(&t, env(setup.topic("rr.slow")?, "x"), deadline)
        .await;
    let took = at.elapsed();
    check!(
        matches!(slow, Err(RequestFailure::Timeout)),
        "unanswered request: {slow:?}"
    );
    check!(
        took >= deadline.mul_f32(0.8) && took < deadline + Duration::from_secs(3),
        "unanswered request failed after {took:?} with a {deadline:?} deadline"
    );

    let at = Instant::now();
    let nobody = h
        .request(
            &t,
            env(setup.topic("nobody.home")?, "x"),
            Duration::from_secs(10),
        )
        .await;
    let took = at.elapsed();
    check!(
        matches!(nobody, Err(RequestFailure::NoResponders)),
        "request without responder: {nobody:?}"
    );
    check!(took < Duration::from_secs(2), "no-responders took {took:?}");
    drop(guard);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}

/// A message nacked on every delivery goes to the dead-letter sink after `max_deliver` (3)
/// deliveries, with its payload intact, and is not delivered a fourth time.
pub async fn dead_letter_after_max_deliveries<H: Harness>(h: &H) -> Outcome {
    if let Some(v) = precheck(h) {
        return Ok(v);
    }
    if !h.capabilities().dead_letters {
        return skip(format!("{} has no max-deliver dead-lettering", h.name()));
    }
    let setup = Setup::new().with_max_deliver(3);
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let sent = env(
        setup.topic("poison")?,
        Bytes::from_static(b"\x00poison\xff"),
    );
    t.publish(vec![sent.clone()]).await?;
    for attempt in 1..=3 {
        let d = next(&mut sub, "a delivery of the poison message").await?;
        check!(d.envelope.id == sent.id, "another message came");
        check!(
            d.envelope.delivery.attempt == attempt,
            "attempt {} (expected {attempt})",
            d.envelope.delivery.attempt
        );
        d.nack(None).await?;
    }
    // Keep the subscription polled (transports dead-letter when they would deliver again).
    tokio::select! {
        d = sub.next() => {
            return Err(Failure::Check(format!(
                "delivered again after max deliveries: {:?}",
                d.map(|d| d.envelope.delivery.attempt)
            )));
        }
        arrived = setup.dead_letters.wait_for(1, WAIT) => {
            check!(arrived, "no dead letter within {WAIT:?}");
        }
    }
    let letters = setup.dead_letters.list();
    check!(letters.len() == 1, "{} dead letters", letters.len());
    let l = &letters[0];
    check!(l.envelope.id == sent.id, "dead letter for another message");
    check!(
        l.envelope.payload == sent.payload,
        "dead letter payload changed"
    );
    check!(
        l.reason == DeadLetterReason::MaxDeliveries,
        "reason {:?}",
        l.reason
    );
    check!(l.attempts == 3, "dead letter says {} attempts", l.attempts);
    drop(sub);
    close(&t).await?;
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}
