//! Suite tests about settling deliveries around `close`. Re-exported from [`crate::suite`],
//! where [`conformance_tests!`](crate::conformance_tests) finds them.

use std::time::Duration;

use futures::StreamExt;
use switchyard_core::{Envelope, Publisher, Subscriber, TransportErrorKind};

use crate::suite::{Outcome, WAIT, close, next, open};
use crate::{Failure, Harness, Setup, Verdict};

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failure> {
    if cond {
        Ok(())
    } else {
        Err(Failure::Check(what()))
    }
}

/// An `ack` after the transport was closed is never `Ok` and forgotten: it either fails
/// with [`TransportErrorKind::Closed`] (and then the message is not settled: a durable
/// transport delivers it again once reopened), or it returns `Ok` and is kept (the closed
/// subscription ends without the message, and a durable transport, reopened, does not
/// deliver it again: a marker published after reopening comes first and nothing follows
/// within three ack waits).
pub async fn ack_after_close_is_refused_or_kept<H: Harness>(h: &H) -> Outcome {
    if let Some(reason) = h.unavailable() {
        return Ok(Verdict::Skipped(reason));
    }
    let caps = h.capabilities();
    if !caps.core.consumer_groups {
        return Ok(Verdict::Skipped(format!(
            "{} has no consumer groups",
            h.name()
        )));
    }
    let durable = caps.core.durable;
    // A short ack wait, so an `Ok` that was not kept shows as a redelivery quickly.
    let setup = Setup::new().with_ack_wait(Duration::from_secs(1));
    let t = open(h, &setup).await?;
    let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
    let sent = Envelope::new(setup.topic("settle")?, "acked after close");
    t.publish(vec![sent.clone()]).await?;
    let d = next(&mut sub, "the message").await?;
    ensure(d.envelope.id == sent.id, || "another message came".into())?;
    close(&t).await?;
    match d.ack().await {
        Err(e) => {
            ensure(e.kind == TransportErrorKind::Closed, || {
                format!("ack after close failed with {e}; expected kind Closed")
            })?;
            drop(sub);
            if durable {
                let t = open(h, &setup).await?;
                let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
                let again = next(&mut sub, "the message whose ack was refused, again").await?;
                ensure(again.envelope.id == sent.id, || {
                    "another message came instead of the one whose ack was refused".into()
                })?;
                again.ack().await?;
                drop(sub);
                close(&t).await?;
            }
        }
        Ok(()) => {
            match tokio::time::timeout(WAIT, sub.next()).await {
                Ok(None) => {}
                Ok(Some(d)) => {
                    return Err(Failure::Check(format!(
                        "an ack after close returned Ok, and the subscription handed out {} \
                         (the acked message: {}) instead of ending",
                        d.envelope.id,
                        d.envelope.id == sent.id
                    )));
                }
                Err(_) => {
                    return Err(Failure::Timeout {
                        what: "the subscription to end after close".into(),
                        after: WAIT,
                    });
                }
            }
            drop(sub);
            if durable {
                let t = open(h, &setup).await?;
                let mut sub = t.subscribe(&setup.all()?, Some("g")).await?;
                let marker = Envelope::new(setup.topic("settle")?, "marker");
                t.publish(vec![marker.clone()]).await?;
                let first = next(&mut sub, "the marker").await?;
                ensure(first.envelope.id != sent.id, || {
                    "an ack after close returned Ok but was not kept: the message came back \
                     after reopening"
                        .into()
                })?;
                ensure(first.envelope.id == marker.id, || {
                    "an unexpected message came".into()
                })?;
                first.ack().await?;
                match tokio::time::timeout(setup.ack_wait * 3, sub.next()).await {
                    Err(_) | Ok(None) => {}
                    Ok(Some(d)) => {
                        return Err(Failure::Check(format!(
                            "after reopening, {} came after the marker (the acked message: {})",
                            d.envelope.id,
                            d.envelope.id == sent.id
                        )));
                    }
                }
                drop(sub);
                close(&t).await?;
            }
        }
    }
    h.cleanup(&setup).await;
    Ok(Verdict::Passed)
}
