//! Runtime enforcement: strict mode refuses forbidden publishes with `LayerViolation` (counted,
//! nothing delivered); warn mode delivers and counts; observed edges are recorded.

use switchyard::testkit::Recorder;
use switchyard::{Bus, Envelope, PublishError};
use switchyard_components::{Assembly, ComponentBuilder, EnforcementMode, Role, Running};

use crate::{Note, WAIT};

async fn shop(bus: &Bus, mode: EnforcementMode) -> Running {
    let noop = |_: Envelope, _| async { Ok::<_, std::convert::Infallible>(()) };
    Assembly::new(bus)
        .mode(mode)
        .component(
            ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                .publishes("shop.order.submit"),
        )
        .component(
            ComponentBuilder::new("shop-service", Role::Service, "shop")
                .on_envelope("shop.order.submit", noop),
        )
        .component(
            ComponentBuilder::new("shop-processor", Role::Processor, "shop")
                .on_envelope("shop.order.execute", noop),
        )
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn strict_mode_refuses_a_manager_publishing_to_a_processor() {
    let bus = Bus::new();
    let running = shop(&bus, EnforcementMode::Strict).await;
    let rec = Recorder::start(&bus, "shop.#").await.unwrap();
    let manager = running.component_bus("shop-manager").unwrap();

    let err = manager
        .publish_to("shop.order.execute", Note { n: 1 })
        .await
        .unwrap_err();
    let PublishError::LayerViolation(v) = err else {
        panic!("expected a layer violation, got {err:?}")
    };
    assert_eq!(
        (
            v.rule.as_str(),
            v.from.as_str(),
            v.to.as_deref(),
            v.topic.as_str()
        ),
        (
            "one-layer-at-a-time",
            "shop-manager",
            Some("shop-processor"),
            "shop.order.execute"
        )
    );
    let text = v.to_string();
    assert!(text.contains("`shop-manager`"), "{text}");
    assert!(text.contains("`shop-processor`"), "{text}");
    assert!(text.contains("one-layer-at-a-time"), "{text}");

    // The allowed edge still works, and is stamped with the source.
    manager
        .publish_to("shop.order.submit", Note { n: 2 })
        .await
        .unwrap();
    let got = rec.wait_for(1, WAIT).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(
        rec.envelopes().len(),
        1,
        "the refused message was not delivered"
    );
    assert_eq!(got[0].topic.as_str(), "shop.order.submit");
    assert_eq!(got[0].source(), Some("shop-manager"));

    let stats = running.enforcement();
    assert_eq!((stats.checked, stats.violations, stats.refused), (2, 1, 1));
    assert_eq!(stats.by_rule.get("one-layer-at-a-time"), Some(&1));
    assert_eq!(running.enforcer().recent_violations().len(), 1);
    let status = serde_json::to_value(running.status()).unwrap();
    assert_eq!(status["mode"], "strict");
    assert_eq!(status["enforcement"]["refused"], 1);
    assert_eq!(
        status["recent_violations"][0]["rule"],
        "one-layer-at-a-time"
    );
    assert_eq!(status["observed"][0]["to"], "shop-service");
    assert_eq!(status["contexts"]["active"], 0);
}

#[tokio::test]
async fn strict_mode_refuses_undeclared_topics() {
    let bus = Bus::new();
    let running = shop(&bus, EnforcementMode::Strict).await;
    let manager = running.component_bus("shop-manager").unwrap();
    let err = manager
        .publish_to("shop.audit.log", Note { n: 1 })
        .await
        .unwrap_err();
    let PublishError::LayerViolation(v) = err else {
        panic!("expected a layer violation")
    };
    assert_eq!(
        (
            v.rule.as_str(),
            v.from.as_str(),
            v.to.as_deref(),
            v.topic.as_str()
        ),
        ("undeclared-publish", "shop-manager", None, "shop.audit.log")
    );
    assert!(v.detail.contains("undeclared-publish"), "{v}");
}

#[tokio::test]
async fn strict_mode_checks_the_addressed_target() {
    let bus = Bus::new();
    let running = shop(&bus, EnforcementMode::Strict).await;
    let manager = running.component_bus("shop-manager").unwrap();
    let env =
        Envelope::new("shop.order.submit".parse().unwrap(), "{}").with_target("shop-processor");
    let err = manager.publish_envelope(env).await.unwrap_err();
    assert!(
        matches!(err, PublishError::LayerViolation(v) if v.to.as_deref() == Some("shop-processor"))
    );
}

#[tokio::test]
async fn warn_mode_delivers_counts_and_logs() {
    let bus = Bus::new();
    let running = shop(&bus, EnforcementMode::Warn).await;
    let rec = Recorder::start(&bus, "shop.order.execute").await.unwrap();
    let manager = running.component_bus("shop-manager").unwrap();
    manager
        .publish_to("shop.order.execute", Note { n: 1 })
        .await
        .unwrap();
    let got = rec.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].source(), Some("shop-manager"));
    let stats = running.enforcement();
    assert_eq!((stats.violations, stats.refused), (1, 0));
    assert_eq!(
        running.enforcer().recent_violations()[0]
            .to
            .as_ref()
            .unwrap()
            .name,
        "shop-processor"
    );
}

#[tokio::test]
async fn warn_mode_starts_a_forbidden_topology() {
    let bus = Bus::new();
    let noop = |_: Envelope, _| async { Ok::<_, std::convert::Infallible>(()) };
    let running = Assembly::new(&bus)
        .mode(EnforcementMode::Warn)
        .component(ComponentBuilder::new("m", Role::Manager, "a").publishes("a.x.execute"))
        .component(
            ComponentBuilder::new("p", Role::Processor, "a").on_envelope("a.x.execute", noop),
        )
        .start()
        .await
        .unwrap();
    assert_eq!(running.topology().violations().len(), 1);
}

#[tokio::test]
async fn observed_edges_count_messages() {
    let bus = Bus::new();
    let running = shop(&bus, EnforcementMode::Strict).await;
    let manager = running.component_bus("shop-manager").unwrap();
    for n in 0..3 {
        manager
            .publish_to("shop.order.submit", Note { n })
            .await
            .unwrap();
    }
    let observed = running.observed();
    assert_eq!(observed.len(), 1);
    assert_eq!(
        (
            observed[0].from.as_str(),
            observed[0].to.as_str(),
            observed[0].topic.as_str(),
            observed[0].count
        ),
        ("shop-manager", "shop-service", "shop.order.submit", 3)
    );
    assert!(running.observed_mermaid().contains("shop.order.submit ×3"));
    assert!(
        running
            .observed_dot()
            .contains("\"shop-manager\" -> \"shop-service\" [label=\"shop.order.submit ×3\"]")
    );
}

#[tokio::test]
async fn declaration_errors_are_reported() {
    use switchyard_components::{DeclarationError, StartError};
    let bus = Bus::new();
    let err = Assembly::new(&bus)
        .component(ComponentBuilder::new("m", Role::Manager, "a").publishes("a..b"))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StartError::Declaration(DeclarationError::InvalidPattern { .. })
        ),
        "{err}"
    );
}
