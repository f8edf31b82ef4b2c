//! Request contexts across the four layers: one correlation id end to end under many
//! interleaved flows, fan-out inside one flow, the newest-live-context lookup, and a timeout
//! in the middle of the chain.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchyard::{BoxError, Bus, Envelope, MessageId, Topic};
use switchyard_components::trace::TraceRecorder;
use switchyard_components::{Assembly, ComponentBuilder, ContextConfig, RequestId, Role};

use super::{DOWN_AND_UP, Opts, Outcome, chain, results_of, send, wait_top};
use crate::{Note, WAIT};

/// §5: "`correlation_id` (inherited from the message being handled)"; `context_for` finds
/// "the exact context a result belongs to"; §7: "Every event a context publishes carries the
/// flow's correlation id and ... that message's id as causation, so traces are complete".
/// 64 flows in flight at once, four workers per layer, the processor yielding a different
/// number of times per request so the flows interleave: every flow gets exactly one result,
/// its own (2 n), every message of the flow carries its id, its trace is the one chain of the
/// eight hops in order, and every context ended exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_interleaved_flows_keep_their_own_context_and_correlation_id() {
    const FLOWS: u64 = 64;
    let bus = Bus::new();
    let traces = TraceRecorder::start(&bus, 100_000).await.unwrap();
    let opts = Opts {
        workers: 4,
        ..Opts::default()
    };
    let c = chain(&bus, Arc::new(|_, _| Outcome::Double), opts).await;
    let flows: Vec<(MessageId, u64)> = (0..FLOWS).map(|n| (MessageId::new(), n + 100)).collect();
    for (flow, n) in &flows {
        send(&c, flow, *n).await;
    }
    wait_top(&c, FLOWS as usize).await;
    bus.run_until_idle().await;
    assert_eq!(
        c.top.envelopes().len(),
        FLOWS as usize,
        "a flow got more than one result"
    );
    for (flow, n) in &flows {
        let got = results_of(&c, flow);
        assert_eq!(got.len(), 1, "flow of {n}");
        assert!(got[0].is_ok(), "{:?}", got[0]);
        assert_eq!(
            got[0].result,
            Some(serde_json::json!(n * 2)),
            "flow of {n} got another flow's result"
        );
        assert_eq!(
            got[0].metadata.get("n").map(String::as_str),
            Some(n.to_string().as_str())
        );
        let trace = traces.trace(flow.clone());
        let chain = trace.pruned(|t| !t.topic.ends_with(".status.update"));
        assert_eq!(chain.roots.len(), 1, "{}", chain.render());
        let topics: Vec<&str> = chain.roots[0]
            .walk()
            .iter()
            .map(|t| t.topic.as_str())
            .collect();
        assert_eq!(topics, DOWN_AND_UP, "{}", chain.render());
        // Four contexts, three status updates each, all in this flow.
        assert_eq!(trace.len(), 8 + 12, "{}", trace.render());
    }
    for e in traces.envelopes() {
        if e.topic.as_str().starts_with("shop.") {
            let n: Option<u64> = serde_json::from_slice::<Note>(&e.payload).ok().map(|x| x.n);
            if let Some(n) = n {
                let flow = &flows[(n - 100) as usize].0;
                assert_eq!(
                    &e.correlation_id, flow,
                    "{} carried another flow's id",
                    e.topic
                );
            }
        }
    }
    let stats = c.running.contexts().stats();
    assert!(c.running.contexts().is_empty());
    assert_eq!(
        (stats.created, stats.completed, stats.failed),
        (4 * FLOWS, 4 * FLOWS, 0),
        "{stats:?}"
    );
}

/// §5: "`cx.context_for(&completion)` finds the exact context a result belongs to". Fan-out
/// inside ONE flow: three requests (n = 1, 2, 3) under the same correlation id; the processor
/// finishes 3 first and holds 1 and 2 until released one at a time. Every layer has three live
/// contexts of the flow at once; each result must complete its own context, so each of the
/// top's three completions carries 2 n for the n of its own metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_inside_one_flow_matches_each_result_to_its_own_context() {
    let bus = Bus::new();
    let behaviour = Arc::new(|n, _| {
        if n == 3 {
            Outcome::Double
        } else {
            Outcome::Hold
        }
    });
    let c = chain(
        &bus,
        behaviour,
        Opts {
            workers: 3,
            ..Opts::default()
        },
    )
    .await;
    let flow = MessageId::new();
    for n in [1, 2, 3] {
        send(&c, &flow, n).await;
    }
    wait_top(&c, 1).await;
    c.gate.add_permits(1);
    wait_top(&c, 2).await;
    c.gate.add_permits(1);
    wait_top(&c, 3).await;
    bus.run_until_idle().await;
    let got = results_of(&c, &flow);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].metadata["n"], "3", "{got:?}");
    for done in &got {
        assert!(done.is_ok(), "{done:?}");
        let n: u64 = done.metadata["n"].parse().unwrap();
        assert_eq!(done.result, Some(serde_json::json!(n * 2)), "{done:?}");
    }
    assert!(c.running.contexts().is_empty());
}

/// §5: "`cx.context()` finds the component's newest live context of the flow". A manager
/// with two live contexts in one flow (two requests of the flow, A then B); B ends. A is
/// still live and now the newest live one: `cx.context()` must find it (the users' manager
/// finds the context to retry with `cx.context()` on `retry.request`, as the guide's does).
#[tokio::test]
async fn the_newest_live_context_is_found_after_a_newer_one_ended() {
    let bus = Bus::new();
    let opened: Arc<Mutex<Vec<RequestId>>> = Arc::default();
    let probed: Arc<Mutex<Vec<Option<RequestId>>>> = Arc::default();
    let (o, p) = (opened.clone(), probed.clone());
    let manager = ComponentBuilder::new("shop-manager", Role::Manager, "shop")
        .on("shop.open.request", move |_: Note, cx| {
            let o = o.clone();
            async move {
                let ctx = cx.begin("open").await?;
                ctx.start().await?;
                o.lock().push(ctx.id());
                Ok::<_, BoxError>(())
            }
        })
        .on("shop.close.request", |_: Note, cx| async move {
            // Ends the newest context of the flow (B).
            if let Some(ctx) = cx.context() {
                ctx.complete(&"closed").await?;
            }
            Ok::<_, BoxError>(())
        })
        .on("shop.probe.request", move |_: Note, cx| {
            let p = p.clone();
            async move {
                p.lock().push(cx.context().map(|c| c.id()));
                Ok::<_, BoxError>(())
            }
        });
    let cpm = ComponentBuilder::new("cpm", Role::Cpm, "cpm")
        .publishes("shop.open.request")
        .publishes("shop.close.request")
        .publishes("shop.probe.request");
    let running = Assembly::new(&bus)
        .component(cpm)
        .component(manager)
        .start()
        .await
        .unwrap();
    let cpm = running.component_bus("cpm").unwrap();
    let flow = MessageId::new();
    for topic in [
        "shop.open.request",
        "shop.open.request",
        "shop.close.request",
        "shop.probe.request",
    ] {
        let env = Envelope::new(
            Topic::new(topic).unwrap(),
            serde_json::to_vec(&Note { n: 1 }).unwrap(),
        )
        .with_correlation_id(flow.clone());
        cpm.publish_envelope(env).await.unwrap();
        bus.run_until_idle().await;
    }
    let opened = opened.lock().clone();
    assert_eq!(opened.len(), 2);
    assert_eq!(running.contexts().len(), 1, "A should still be live");
    assert!(running.contexts().get(opened[0]).is_some());
    assert_eq!(
        *probed.lock(),
        vec![Some(opened[0])],
        "the live context A was not found"
    );
}

/// §5: "A sweeper task fails every context still alive after `ContextConfig::timeout` ...
/// with error type `Timeout`"; the failure walks up as a failed completion. The processor
/// never answers in time: the top gets exactly one result for the flow, a failure of type
/// `Timeout`, and nothing more when the processor finishes late; every context ended once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_outlives_its_timeout_fails_the_flow_once_at_the_top() {
    let bus = Bus::new();
    let contexts = ContextConfig {
        timeout: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(20),
    };
    let c = chain(
        &bus,
        Arc::new(|_, _| Outcome::Hold),
        Opts {
            contexts,
            ..Opts::default()
        },
    )
    .await;
    let status = switchyard::testkit::Recorder::start(&bus, "shop.status.update")
        .await
        .unwrap();
    let flow = MessageId::new();
    send(&c, &flow, 5).await;
    wait_top(&c, 1).await;
    // Four contexts: pending, running and a terminal update each.
    status.wait_for(12, WAIT).await.unwrap();
    let got = results_of(&c, &flow);
    assert_eq!(got.len(), 1);
    let err = got[0].error.as_ref().expect("a failed completion");
    assert_eq!(err.error_type, "Timeout", "{err:?}");
    // Late answer: the processor completes after its context timed out.
    c.gate.add_permits(1);
    bus.run_until_idle().await;
    assert_eq!(
        status.envelopes().len(),
        12,
        "a context changed state after it ended"
    );
    assert_eq!(
        results_of(&c, &flow).len(),
        1,
        "a second result reached the top"
    );
    let stats = c.running.contexts().stats();
    assert!(c.running.contexts().is_empty());
    assert_eq!(stats.created, 4);
    assert_eq!(
        stats.completed + stats.failed + stats.cancelled,
        4,
        "{stats:?}"
    );
    assert!(stats.timed_out >= 1, "{stats:?}");
}
