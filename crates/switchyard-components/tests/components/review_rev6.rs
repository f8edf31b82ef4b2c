//! Review rev6: outside-in attacks on the component model: a spoofed `source`, correlation
//! ids carried end to end from a foreign id, domain names that cannot form topics, and traces
//! rebuilt from envelopes whose causation links (opaque, foreign input) form a cycle.

use std::time::{Duration, SystemTime};

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Envelope, MessageId, PublishError, Topic};
use switchyard_components::trace::Trace;
use switchyard_components::{Assembly, ComponentBuilder, EnforcementMode, Role, StartError};

use crate::{Note, WAIT};

/// A component cannot publish as another: `publish_envelope` stamps its own name over a
/// `source` the caller set, and the edge is checked as its own (a manager posing as the
/// service is still refused on the service's topic to the processor).
#[tokio::test]
async fn a_component_cannot_spoof_its_source() {
    let bus = Bus::new();
    let noop = |_: Envelope, _| async { Ok::<_, std::convert::Infallible>(()) };
    let running = Assembly::new(&bus)
        .mode(EnforcementMode::Strict)
        .component(
            ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                .publishes("shop.order.submit"),
        )
        .component(
            ComponentBuilder::new("shop-service", Role::Service, "shop")
                .publishes("shop.order.dispatch")
                .on_envelope("shop.order.submit", noop),
        )
        .component(
            ComponentBuilder::new("shop-handler", Role::Handler, "shop")
                .on_envelope("shop.order.dispatch", noop),
        )
        .start()
        .await
        .unwrap();
    let rec = Recorder::start(&bus, "shop.order.*").await.unwrap();
    let manager = running.component_bus("shop-manager").unwrap();

    let mut posing = Envelope::new(Topic::new("shop.order.dispatch").unwrap(), "{}");
    posing.set_source(Some("shop-service".into()));
    let err = manager.publish_envelope(posing).await.unwrap_err();
    assert!(
        matches!(&err, PublishError::LayerViolation(v) if v.from.as_str() == "shop-manager"),
        "{err:?}"
    );

    let mut allowed = Envelope::new(Topic::new("shop.order.submit").unwrap(), "{}");
    allowed.set_source(Some("shop-service".into()));
    manager.publish_envelope(allowed).await.unwrap();
    let seen = rec.wait_for(1, WAIT).await.unwrap();
    assert_eq!(seen.len(), 1, "the refused publish was delivered: {seen:?}");
    assert_eq!(seen[0].source(), Some("shop-manager"));
}

/// A flow started elsewhere with an opaque correlation id keeps it through a component's
/// context: the status updates and the message it publishes on behalf of its context carry
/// it, caused by the message being handled.
#[tokio::test]
async fn a_foreign_correlation_id_is_kept_end_to_end() {
    let bus = Bus::new();
    let running = Assembly::new(&bus)
        .component(
            ComponentBuilder::new("shop-service", Role::Service, "shop")
                .publishes("shop.order.dispatch")
                .on("shop.order.submit", |n: Note, cx| async move {
                    let ctx = cx.begin("order").await?;
                    ctx.start().await?;
                    ctx.publish_to("shop.order.dispatch", n).await?;
                    ctx.complete(&"ok").await?;
                    Ok::<_, BoxError>(())
                }),
        )
        .component(
            ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                .publishes("shop.order.submit"),
        )
        .start()
        .await
        .unwrap();
    let rec = Recorder::start(&bus, "shop.#").await.unwrap();
    let corr = MessageId::parse_opaque("order-42-from-php").unwrap();
    let submit = Envelope::new(
        Topic::new("shop.order.submit").unwrap(),
        serde_json::to_vec(&Note { n: 7 }).unwrap(),
    )
    .with_correlation_id(corr.clone());
    let submit_id = submit.id.clone();
    running
        .component_bus("shop-manager")
        .unwrap()
        .publish_envelope(submit)
        .await
        .unwrap();
    // submit, 3 status updates (pending, running, completed), dispatch, served.
    let seen = rec.wait_for(6, WAIT).await.unwrap();
    for e in &seen {
        assert_eq!(
            e.correlation_id, corr,
            "{} lost the correlation id",
            e.topic
        );
    }
    let dispatch = seen
        .iter()
        .find(|e| e.topic.as_str() == "shop.order.dispatch")
        .unwrap();
    assert_eq!(dispatch.causation_id(), Some(&submit_id));
    assert!(dispatch.header("x-request-id").is_some());
}

/// DEFECT. Domain names that cannot be one topic segment (empty, a wildcard, a dot, a
/// space) should be refused at start with a typed error. They are accepted: the component's
/// implicit `<domain>.status.update` / `.error` / `.*.<phase>` declarations that do not
/// parse are skipped silently, so its contexts fail only at runtime (`""`, `"shop eu"`: the
/// status topic is not a topic), or publish where `*.status.update` subscribers such as the
/// state tracker never look (`"shop.eu"`), or declare publishing into every domain (`"*"`).
///
/// Expected: `StartError::Declaration` for each. Observed: `domains accepted: ["", "*",
/// "#", "shop.eu", "shop eu"]`.
/// Suspected cause: src/component.rs `ComponentBuilder::new` / `spec_of` never check the
/// domain; src/topology.rs:73 drops implicit patterns that fail to parse (`if let Ok(p)`).
#[tokio::test]
async fn a_domain_that_is_not_a_topic_segment_is_refused_at_start() {
    let mut accepted = Vec::new();
    for domain in ["", "*", "#", "shop.eu", "shop eu"] {
        let bus = Bus::new();
        let r = Assembly::new(&bus)
            .component(
                ComponentBuilder::new("m", Role::Manager, domain)
                    .on("x.y.request", |_n: Note, _cx| async {
                        Ok::<_, BoxError>(())
                    }),
            )
            .start()
            .await;
        match r {
            Err(StartError::Declaration(_) | StartError::Topology(_)) => {}
            Err(other) => panic!("domain {domain:?}: unexpected error {other}"),
            Ok(_) => accepted.push(domain),
        }
    }
    assert!(accepted.is_empty(), "domains accepted: {accepted:?}");
}

fn at(e: Envelope, ms: u64) -> Envelope {
    let mut e = e;
    e.timestamp = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000 + ms);
    e
}

/// DEFECT. Causation ids are opaque and come from outside (NATS headers, the gateway), so
/// two messages of a flow may name each other as cause. `Trace::build` then makes neither a
/// root nor reachable from one, and both silently vanish from the trace.
///
/// Expected: every recorded message of the flow is in the trace (`len() == 3`).
/// Observed: `left: 1, right: 3` (only the root; the pair citing each other is dropped).
/// Suspected cause: src/trace.rs:97-101 `Trace::build`: a message whose cause is among the
/// flow's ids is only ever a child, and children are reached from roots only.
#[test]
fn a_causation_cycle_does_not_drop_messages_from_the_trace() {
    let corr = MessageId::parse_opaque("flow-1").unwrap();
    let root = at(
        Envelope::new(Topic::new("a.req").unwrap(), "{}").with_correlation_id(corr.clone()),
        0,
    );
    let mut x = at(
        Envelope::new(Topic::new("a.x").unwrap(), "{}").with_correlation_id(corr.clone()),
        1,
    );
    let mut y = at(
        Envelope::new(Topic::new("a.y").unwrap(), "{}").with_correlation_id(corr.clone()),
        2,
    );
    x.set_causation_id(Some(y.id.clone()));
    y.set_causation_id(Some(x.id.clone()));
    let t = Trace::build(corr, &[root, x, y]);
    assert_eq!(t.len(), 3, "{}", t.render());
}
