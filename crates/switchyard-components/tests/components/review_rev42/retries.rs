//! The error handler's retries and dead letters with many flows failing at once: per-flow
//! attempts, no flow's retry leaking into another's, each given-up flow dead-lettered once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Jitter, MessageId};
use switchyard_components::builtin::{
    ErrorHandler, RetryExhausted, RetryPolicy, RetryRequest, StateTracker,
};
use switchyard_components::{Completion, ComponentBuilder, ErrorInfo, Role};

use super::{Opts, Outcome, chain, results_of, send, wait_top};
use crate::{Note, WAIT};

/// The users' manager (the guide's): waits for the error handler on a retryable failure,
/// re-submits on `retry.request` from the flow's context, fails on `retry.exhausted`.
fn retrying_manager() -> ComponentBuilder {
    ComponentBuilder::new("shop-manager", Role::Manager, "shop")
        .publishes("shop.order.submit")
        .on("shop.order.request", |n: Note, cx| async move {
            let ctx = cx.begin("order").await?;
            ctx.set_metadata("n", n.n.to_string())?;
            ctx.start().await?;
            ctx.publish_to("shop.order.submit", n).await?;
            Ok::<_, BoxError>(())
        })
        .on::<Completion<serde_json::Value>, _, _, _, _>(
            "shop.order.served",
            |done, cx| async move {
                if let Some(ctx) = cx.context_for(&done) {
                    match done.error {
                        None => ctx.complete(&done.result).await?,
                        Some(e) if e.retryable => {}
                        Some(e) => ctx.fail_propagated(&e).await?,
                    }
                }
                Ok::<_, BoxError>(())
            },
        )
        .on("shop.retry.request", |_: RetryRequest, cx| async move {
            if let Some(ctx) = cx.context() {
                let n: u64 = ctx.snapshot().unwrap().metadata["n"].parse()?;
                ctx.publish_to("shop.order.submit", Note { n }).await?;
            }
            Ok::<_, BoxError>(())
        })
        .on(
            "shop.retry.exhausted",
            |ex: RetryExhausted, cx| async move {
                if let Some(ctx) = cx.context() {
                    let info = ErrorInfo {
                        error_type: "RetryExhausted".into(),
                        message: format!("{} attempts", ex.attempts),
                        retryable: false,
                    };
                    ctx.fail_propagated(&info).await?;
                }
                Ok::<_, BoxError>(())
            },
        )
}

fn errors() -> ErrorHandler {
    ErrorHandler::new(
        RetryPolicy::attempts(3)
            .initial_delay(Duration::ZERO)
            .jitter(Jitter::None),
    )
}

/// §6: "per (correlation id, domain), an original retryable failure gets
/// `<domain>.retry.request` (a `RetryRequest` with the next attempt number)"; §7: "at most
/// `max_attempts` per flow and domain". 20 flows whose processor fails the first time, all
/// in flight at once: each gets exactly one retry request (attempt 2, its own correlation
/// id), each completes once with its own result, nothing is dead-lettered, no context stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flows_failing_once_are_each_retried_once_and_complete() {
    const FLOWS: u64 = 20;
    let bus = Bus::new();
    let (eh, tracker) = (errors(), StateTracker::new(10_000));
    let retries = Recorder::start(&bus, "shop.retry.request").await.unwrap();
    let opts = Opts {
        workers: 4,
        extra: vec![eh.component(), tracker.component()],
        manager: Some(retrying_manager()),
        ..Opts::default()
    };
    let behaviour = Arc::new(|_, d| {
        if d == 1 {
            Outcome::Flaky
        } else {
            Outcome::Double
        }
    });
    let c = chain(&bus, behaviour, opts).await;
    let flows: Vec<MessageId> = (0..FLOWS).map(|_| MessageId::new()).collect();
    for (n, f) in flows.iter().enumerate() {
        send(&c, f, n as u64).await;
    }
    wait_top(&c, FLOWS as usize).await;
    bus.run_until_idle().await;
    for (n, f) in flows.iter().enumerate() {
        let got = results_of(&c, f);
        assert_eq!(got.len(), 1, "flow {n}: {got:?}");
        assert_eq!(
            got[0].result,
            Some(serde_json::json!(2 * n as u64)),
            "{got:?}"
        );
    }
    let reqs: Vec<RetryRequest> = retries
        .envelopes()
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .collect();
    assert_eq!(reqs.len(), FLOWS as usize, "{reqs:?}");
    assert!(reqs.iter().all(|r| r.attempt == 2), "{reqs:?}");
    let by_flow: BTreeSet<String> = retries
        .envelopes()
        .iter()
        .map(|e| e.correlation_id.to_string())
        .collect();
    let want: BTreeSet<String> = flows.iter().map(ToString::to_string).collect();
    assert_eq!(by_flow, want, "a retry went to another flow");
    let s = eh.stats();
    assert_eq!((s.retries, s.gave_up), (FLOWS, 0), "{s:?}");
    assert!(bus.dead_letters().unwrap().is_empty());
    assert!(c.running.contexts().is_empty());
    assert!(tracker.anomalies().is_empty(), "{:?}", tracker.anomalies());
}

/// §6/§7: after `max_attempts` "the request the failing component was handling goes to the
/// dead-letter sink" and the error handler "dead-letters a flow once". 10 flows always
/// failing, in flight at once, 3 attempts each: 10 dead letters (one per flow, each the
/// processor's `execute` of that flow), 10 `retry.exhausted`, 20 retries, and the top gets
/// one failed result per flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flows_that_always_fail_are_each_dead_lettered_once() {
    const FLOWS: usize = 10;
    let bus = Bus::new();
    let eh = errors();
    let exhausted = Recorder::start(&bus, "shop.retry.exhausted").await.unwrap();
    let opts = Opts {
        workers: 4,
        extra: vec![eh.component()],
        manager: Some(retrying_manager()),
        ..Opts::default()
    };
    let c = chain(&bus, Arc::new(|_, _| Outcome::Flaky), opts).await;
    let flows: Vec<MessageId> = (0..FLOWS).map(|_| MessageId::new()).collect();
    for (n, f) in flows.iter().enumerate() {
        send(&c, f, n as u64).await;
    }
    wait_top(&c, FLOWS).await;
    exhausted.wait_for(FLOWS, WAIT).await.unwrap();
    bus.run_until_idle().await;
    for f in &flows {
        let got = results_of(&c, f);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0].error.as_ref().map(|e| e.error_type.as_str()),
            Some("RetryExhausted")
        );
    }
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), FLOWS, "{letters:#?}");
    let lettered: BTreeSet<String> = letters
        .iter()
        .map(|l| l.envelope.correlation_id.to_string())
        .collect();
    assert_eq!(lettered.len(), FLOWS, "a flow was dead-lettered twice");
    assert!(
        letters
            .iter()
            .all(|l| l.envelope.topic.as_str() == "shop.order.execute")
    );
    let s = eh.stats();
    assert_eq!(
        (s.retries, s.gave_up),
        (2 * FLOWS as u64, FLOWS as u64),
        "{s:?}"
    );
    assert_eq!(exhausted.envelopes().len(), FLOWS);
    assert!(c.running.contexts().is_empty());
}
