//! Review rev32, outside in: a Manager -> Service -> Handler chain begun with `cx.begin`, with
//! the results fed back up (docs/components.md §5, §7 "Every event a context publishes carries
//! the flow's correlation id and, when it was made while handling a message, that message's id
//! as causation, so traces are complete").

use std::sync::{Arc, Mutex};

use switchyard::{BoxError, Bus, Envelope, Message, Outcome, Topic, handler_fn};
use switchyard_components::{Assembly, Completion, ComponentBuilder, EnforcementMode, Role};

use crate::Note;

/// Promise (§5, §7): one request through three layers and back: every message on the bus in
/// the flow (requests down, status updates, completions up) has the flow's correlation id;
/// exactly one (the request) has no cause, and every other names as cause a message of the
/// same flow; the feedback reaches the top (`shop.order.complete`) and the trace is one tree.
#[tokio::test]
async fn a_three_layer_flow_with_feedback_up_is_one_complete_trace() -> Result<(), BoxError> {
    let bus = Bus::new();
    let all: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let rec = all.clone();
    let _spy = bus
        .subscribe(
            "r32-spy",
            "#",
            handler_fn(move |env: Envelope| {
                let rec = rec.clone();
                async move {
                    rec.lock().unwrap().push(env);
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await?;
    let manager = ComponentBuilder::new("shop-manager", Role::Manager, "shop")
        .publishes("pay.charge.submit")
        .on::<Note, _, _, _, _>("shop.order.request", |n, cx| async move {
            let ctx = cx.begin("order").await?;
            ctx.start().await?;
            ctx.publish_to("pay.charge.submit", n).await?;
            Ok::<_, BoxError>(())
        })
        .on::<Completion<serde_json::Value>, _, _, _, _>(
            "pay.charge.served",
            |done, cx| async move {
                if let Some(ctx) = cx.context_for(&done) {
                    ctx.complete(&done.result).await?;
                }
                Ok::<_, BoxError>(())
            },
        );
    let service = ComponentBuilder::new("pay-service", Role::Service, "pay")
        .publishes("pay.charge.dispatch")
        .on::<Note, _, _, _, _>("pay.charge.submit", |n, cx| async move {
            let ctx = cx.begin("charge").await?;
            ctx.start().await?;
            ctx.publish_to("pay.charge.dispatch", n).await?;
            Ok::<_, BoxError>(())
        })
        .on::<Completion<serde_json::Value>, _, _, _, _>(
            "pay.charge.handled",
            |done, cx| async move {
                if let Some(ctx) = cx.context_for(&done) {
                    ctx.complete(&done.result).await?;
                }
                Ok::<_, BoxError>(())
            },
        );
    let handler = ComponentBuilder::new("pay-handler", Role::Handler, "pay")
        .on::<Note, _, _, _, _>("pay.charge.dispatch", |n, cx| async move {
            let ctx = cx.begin("charge").await?;
            ctx.start().await?;
            ctx.complete(&(n.n * 2)).await?;
            Ok::<_, BoxError>(())
        });
    let _running = Assembly::new(&bus)
        .mode(EnforcementMode::Warn)
        .component(ComponentBuilder::new("ui", Role::Frontend, "ui"))
        .component(manager)
        .component(service)
        .component(handler)
        .start()
        .await?;
    let mut request = Note { n: 21 }.to_envelope()?;
    request.topic = Topic::new("shop.order.request")?;
    let request = request.with_correlation_id("corr-r32-layers".parse()?);
    let root_id = request.id.clone();
    bus.publish_envelope(request).await?;
    tokio::time::timeout(crate::WAIT, async {
        loop {
            bus.run_until_idle().await;
            if all
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.topic.as_str() == "shop.order.complete")
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .map_err(|_| format!("no shop.order.complete in {:#?}", topics(&all)))?;
    bus.run_until_idle().await;
    let got = all.lock().unwrap().clone();
    let ids: std::collections::HashSet<_> = got.iter().map(|e| e.id.clone()).collect();
    let mut roots = Vec::new();
    for e in &got {
        assert_eq!(
            e.correlation_id.to_string(),
            "corr-r32-layers",
            "{} {:?}",
            e.topic,
            topics(&all)
        );
        match e.causation_id() {
            None => roots.push(e.topic.to_string()),
            Some(c) => assert!(
                ids.contains(c),
                "{}'s cause {c} is not in the flow: {:?}",
                e.topic,
                topics(&all)
            ),
        }
    }
    assert_eq!(roots, ["shop.order.request"], "one root");
    assert!(got.iter().any(|e| e.id == root_id));
    for t in [
        "pay.charge.handled",
        "pay.charge.served",
        "shop.order.complete",
    ] {
        assert!(
            got.iter().any(|e| e.topic.as_str() == t),
            "{t} in {:?}",
            topics(&all)
        );
    }
    Ok(())
}

fn topics(all: &Arc<Mutex<Vec<Envelope>>>) -> Vec<(String, String)> {
    all.lock()
        .unwrap()
        .iter()
        .map(|e| (e.topic.to_string(), format!("{:?}", e.causation_id())))
        .collect()
}

/// Promise (§6 `ErrorHandler`, §7): a manager's retryable failure is retried through
/// `<domain>.retry.request` (after the policy's delay, through the bus's delayed delivery)
/// and, when the attempts run out, the failing request is dead-lettered "with the correlation
/// id" and `<domain>.retry.exhausted` published: every message of that flow, the error
/// reports, the delayed retry request and the exhausted notice included, has the flow's
/// correlation id and a cause inside the flow, and the dead letter is a message of the flow.
#[tokio::test]
async fn a_retried_then_exhausted_flow_stays_one_complete_trace() -> Result<(), BoxError> {
    use std::time::Duration;
    use switchyard_components::builtin::{ErrorHandler, RetryPolicy};

    let bus = Bus::new();
    let all: Arc<Mutex<Vec<Envelope>>> = Arc::default();
    let rec = all.clone();
    let _spy = bus
        .subscribe(
            "r32-spy",
            "#",
            handler_fn(move |env: Envelope| {
                let rec = rec.clone();
                async move {
                    rec.lock().unwrap().push(env);
                    Ok::<_, BoxError>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await?;
    let errors = ErrorHandler::new(
        RetryPolicy::attempts(2)
            .initial_delay(Duration::from_millis(5))
            .jitter(switchyard::Jitter::None),
    );
    let manager = ComponentBuilder::new("x-manager", Role::Manager, "x")
        .on::<Note, _, _, _, _>("x.order.request", |_n, cx| async move {
            let ctx = cx.begin("order").await?;
            ctx.start().await?;
            ctx.fail("Flaky", "try again", true).await?;
            Ok::<_, BoxError>(())
        })
        .on_envelope("x.retry.request", |_env, cx| async move {
            let ctx = cx.begin("order").await?;
            ctx.start().await?;
            ctx.fail("Flaky", "still failing", true).await?;
            Ok::<_, BoxError>(())
        })
        .on_envelope("x.retry.exhausted", |_, _| async {
            Ok::<_, std::convert::Infallible>(())
        });
    let _running = Assembly::new(&bus)
        .mode(EnforcementMode::Warn)
        .component(errors.component())
        .component(manager)
        .start()
        .await?;
    let mut request = Note { n: 1 }.to_envelope()?;
    request.topic = Topic::new("x.order.request")?;
    let request = request.with_correlation_id("corr-r32-retry".parse()?);
    bus.publish_envelope(request).await?;
    tokio::time::timeout(crate::WAIT, async {
        loop {
            bus.run_until_idle().await;
            if all
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.topic.as_str() == "x.retry.exhausted")
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .map_err(|_| format!("no x.retry.exhausted in {:#?}", topics(&all)))?;
    bus.run_until_idle().await;
    let got = all.lock().unwrap().clone();
    let ids: std::collections::HashSet<_> = got.iter().map(|e| e.id.clone()).collect();
    let mut roots = Vec::new();
    for e in &got {
        assert_eq!(
            e.correlation_id.to_string(),
            "corr-r32-retry",
            "{} {:?}",
            e.topic,
            topics(&all)
        );
        match e.causation_id() {
            None => roots.push(e.topic.to_string()),
            Some(c) => assert!(
                ids.contains(c),
                "{}'s cause {c} is not in the flow: {:?}",
                e.topic,
                topics(&all)
            ),
        }
    }
    assert_eq!(roots, ["x.order.request"], "one root: {:?}", topics(&all));
    assert!(got.iter().any(|e| e.topic.as_str() == "x.retry.request"));
    let letters = bus.dead_letters().ok_or("dead letters")?.list();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].envelope.correlation_id.to_string(),
        "corr-r32-retry"
    );
    assert!(ids.contains(&letters[0].envelope.id), "{letters:?}");
    Ok(())
}
