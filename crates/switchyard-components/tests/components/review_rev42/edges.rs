//! Forbidden edges are refused the documented way (typed error naming component, topic and
//! rule; nothing delivered; counted), and every allowed edge of the users' system works.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Envelope, MessageId, PublishError};
use switchyard_components::{Assembly, ComponentBuilder, Role, StartError};

use super::{DOWN_AND_UP, Opts, Outcome, chain, results_of, send, wait_top};
use crate::Note;

/// A component that counts what reaches it on `pattern`.
fn counting(
    name: &str,
    role: Role,
    domain: &str,
    pattern: &str,
    hits: Arc<AtomicU32>,
) -> ComponentBuilder {
    ComponentBuilder::new(name, role, domain).on_envelope(pattern, move |_: Envelope, _| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        }
    })
}

fn violation(err: PublishError) -> Box<switchyard::LayerViolation> {
    match err {
        PublishError::LayerViolation(v) => v,
        other => panic!("expected a layer violation, got {other:?}"),
    }
}

/// docs/components.md §1/§4: "A forbidden edge names the rule it breaks"; strict mode
/// "refuses with `PublishError::LayerViolation(v)` (nothing is delivered; `v.rule`, `v.from`,
/// `v.to`, `v.topic` say what was refused and `v.detail` explains it)"; "every check,
/// violation and refusal is counted". One publish per rule, from the component a user would
/// get wrong, at run time (the publishers did not declare these topics, so the assembly
/// started); none reaches the receiving handler.
#[tokio::test]
async fn each_forbidden_runtime_edge_is_refused_with_its_rule_and_reaches_no_handler() {
    let bus = Bus::new();
    let hits = Arc::new(AtomicU32::new(0));
    let extra = vec![
        ComponentBuilder::new("web", Role::Frontend, "web"),
        ComponentBuilder::new("audit", Role::System, "audit"),
        counting(
            "billing-processor",
            Role::Processor,
            "billing",
            "billing.charge.execute",
            hits.clone(),
        ),
        counting(
            "billing-service",
            Role::Service,
            "billing",
            "billing.charge.submit",
            hits.clone(),
        ),
        counting(
            "web-inbox",
            Role::Frontend,
            "inbox",
            "web.inbox.update",
            hits.clone(),
        ),
    ];
    let c = chain(
        &bus,
        Arc::new(|_, _| Outcome::Double),
        Opts {
            extra,
            ..Opts::default()
        },
    )
    .await;
    let cases: [(&str, &str, &str, &str); 7] = [
        // (publisher, topic, receiver, rule)
        (
            "web",
            "shop.order.execute",
            "shop-processor",
            "frontend-only-to-cpm",
        ),
        (
            "cpm",
            "shop.order.submit",
            "shop-service",
            "cpm-reaches-managers-and-processors",
        ),
        (
            "shop-processor",
            "shop.order.submit",
            "shop-service",
            "one-layer-at-a-time",
        ),
        (
            "shop-handler",
            "billing.charge.execute",
            "billing-processor",
            "same-domain-below-manager",
        ),
        (
            "shop-service",
            "billing.charge.submit",
            "billing-service",
            "no-peer-talk-below-manager",
        ),
        (
            "audit",
            "shop.order.dispatch",
            "shop-handler",
            "system-reaches-cpm-and-managers",
        ),
        (
            "shop-manager",
            "web.inbox.update",
            "web-inbox",
            "only-cpm-to-frontend",
        ),
    ];
    for (from, topic, to, rule) in cases {
        let cbus = c.running.component_bus(from).unwrap();
        let v = violation(cbus.publish_to(topic, Note { n: 7 }).await.unwrap_err());
        assert_eq!(
            (
                v.from.as_str(),
                v.to.as_deref(),
                v.topic.as_str(),
                v.rule.as_str()
            ),
            (from, Some(to), topic, rule),
            "{v:?}"
        );
        assert!(
            v.detail.contains(from) && v.detail.contains(to) && v.detail.contains(rule),
            "{}",
            v.detail
        );
    }
    // An undeclared topic nobody receives: the publisher and the topic are named.
    let v = violation(
        c.running
            .component_bus("shop-handler")
            .unwrap()
            .publish_to("shop.order.nowhere", Note { n: 1 })
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (
            v.from.as_str(),
            v.to.as_deref(),
            v.topic.as_str(),
            v.rule.as_str()
        ),
        (
            "shop-handler",
            None,
            "shop.order.nowhere",
            "undeclared-publish"
        )
    );
    bus.run_until_idle().await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused publish reached a handler"
    );
    assert_eq!(
        c.executed.load(Ordering::SeqCst),
        0,
        "web reached the processor"
    );
    assert!(
        c.running.contexts().is_empty(),
        "a refused request began a context"
    );
    let stats = c.running.enforcement();
    assert_eq!(
        (stats.checked, stats.violations, stats.refused),
        (8, 8, 8),
        "{stats:?}"
    );
    for (_, _, _, rule) in cases {
        assert_eq!(stats.by_rule.get(rule), Some(&1), "{rule}: {stats:?}");
    }
    assert_eq!(stats.by_rule.get("undeclared-publish"), Some(&1));
    assert_eq!(c.running.enforcer().recent_violations().len(), 8);
    // The allowed chain still works afterwards.
    let flow = MessageId::new();
    send(&c, &flow, 4).await;
    wait_top(&c, 1).await;
    assert_eq!(results_of(&c, &flow)[0].result, Some(serde_json::json!(8)));
}

/// §4: "a topic the component did not declare breaks `undeclared-publish`". A processor
/// sending a request phase (`dispatch`) up to its handler, or a service sending a result
/// phase (`processed`) down to its handler, without having declared them: refused at run
/// time, nothing delivered.
#[tokio::test]
async fn an_undeclared_request_up_or_result_down_is_refused_at_run_time() {
    let bus = Bus::new();
    let c = chain(&bus, Arc::new(|_, _| Outcome::Double), Opts::default()).await;
    let seen = Recorder::start(&bus, "shop.order.*").await.unwrap();
    for (from, topic) in [
        ("shop-processor", "shop.order.dispatch"),
        ("shop-service", "shop.order.processed"),
    ] {
        let cbus = c.running.component_bus(from).unwrap();
        let v = violation(cbus.publish_to(topic, Note { n: 1 }).await.unwrap_err());
        assert_eq!(
            (v.from.as_str(), v.topic.as_str(), v.rule.as_str()),
            (from, topic, "undeclared-publish")
        );
    }
    bus.run_until_idle().await;
    assert!(seen.envelopes().is_empty());
    assert!(c.running.contexts().is_empty());
}

/// docs/components.md §2: the phase says which layer a message goes to — `dispatch` is
/// "published by service → handler" — and §1 rule `one-layer-at-a-time`: "Manager → Service
/// → Handler → Processor and back"; the seeds (broker guide): requests flow down, feedback
/// flows up. A processor that *declares* its handler's request topic sends requests upward:
/// strict mode must refuse that at assembly (§3 step 2) or at least at run time (§4).
#[tokio::test]
async fn a_processor_sending_requests_up_to_its_handler_is_refused() {
    let bus = Bus::new();
    let got = Arc::new(AtomicU32::new(0));
    let r = Assembly::new(&bus)
        .component(counting(
            "shop-handler",
            Role::Handler,
            "shop",
            "shop.order.dispatch",
            got.clone(),
        ))
        .component(
            ComponentBuilder::new("shop-processor", Role::Processor, "shop")
                .publishes("shop.order.dispatch"),
        )
        .start()
        .await;
    let running = match r {
        Err(StartError::Topology(e)) => {
            assert!(e.to_string().contains("shop.order.dispatch"), "{e}");
            return;
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(running) => running,
    };
    let sent = running
        .component_bus("shop-processor")
        .unwrap()
        .publish_to("shop.order.dispatch", Note { n: 1 })
        .await;
    bus.run_until_idle().await;
    assert!(
        matches!(sent, Err(PublishError::LayerViolation(_))),
        "started in strict mode; the processor's `dispatch` request was {sent:?} and reached the handler {} time(s)",
        got.load(Ordering::SeqCst)
    );
}

/// §1: every allowed edge works: the chain down and up (one layer at a time), the CPM's
/// shortcut to a processor, manager ↔ manager across domains, and a system component
/// addressing a manager; each delivered and observed, none counted as a violation.
#[tokio::test]
async fn every_allowed_edge_of_the_users_system_is_delivered() {
    let bus = Bus::new();
    let hits = Arc::new(AtomicU32::new(0));
    let extra = vec![
        counting(
            "billing-manager",
            Role::Manager,
            "billing",
            "billing.charge.request",
            hits.clone(),
        )
        .publishes("shop.order.request"),
        ComponentBuilder::new("ops", Role::System, "ops").publishes("billing.charge.request"),
    ];
    let opts = Opts {
        extra,
        cpm_publishes: vec!["shop.order.execute"],
        ..Opts::default()
    };
    let c = chain(&bus, Arc::new(|_, _| Outcome::Double), opts).await;
    let flow = MessageId::new();
    send(&c, &flow, 1).await;
    // CPM → processor directly (the one shortcut).
    c.running
        .component_bus("cpm")
        .unwrap()
        .publish_to("shop.order.execute", Note { n: 2 })
        .await
        .unwrap();
    // Another domain's manager → shop manager; system → a manager.
    c.running
        .component_bus("billing-manager")
        .unwrap()
        .publish_to("shop.order.request", Note { n: 3 })
        .await
        .unwrap();
    c.running
        .component_bus("ops")
        .unwrap()
        .publish_to("billing.charge.request", Note { n: 4 })
        .await
        .unwrap();
    wait_top(&c, 2).await;
    bus.run_until_idle().await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(c.executed.load(Ordering::SeqCst), 3);
    let stats = c.running.enforcement();
    assert_eq!(stats.violations, 0, "{stats:?}");
    let observed: Vec<(String, String, String)> = c
        .running
        .observed()
        .into_iter()
        .map(|e| (e.from.to_string(), e.to.to_string(), e.topic.to_string()))
        .collect();
    let names = [
        "cpm",
        "shop-manager",
        "shop-service",
        "shop-handler",
        "shop-processor",
        "shop-handler",
        "shop-service",
        "shop-manager",
        "cpm",
    ];
    for (i, topic) in DOWN_AND_UP.iter().enumerate() {
        let e = (
            names[i].to_string(),
            names[i + 1].to_string(),
            topic.to_string(),
        );
        assert!(observed.contains(&e), "{e:?} not in {observed:?}");
    }
    for e in [
        ("cpm", "shop-processor", "shop.order.execute"),
        ("billing-manager", "shop-manager", "shop.order.request"),
        ("ops", "billing-manager", "billing.charge.request"),
    ] {
        let e = (e.0.to_string(), e.1.to_string(), e.2.to_string());
        assert!(observed.contains(&e), "{e:?} not in {observed:?}");
    }
}
