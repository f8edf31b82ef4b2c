//! Every rule of the layer model, accepted and refused, statically (validate) with error text
//! naming both components and the rule.

use switchyard_components::{
    Endpoint, Role, Rule, Topology, TopologyError, check_edge, check_phase,
};

use crate::spec;

fn ep(role: Role, domain: &str) -> Endpoint {
    Endpoint::new(format!("{domain}-{role}"), role, domain)
}

/// (from role, from domain, to role, to domain, expected)
const TABLE: &[(Role, &str, Role, &str, Option<Rule>)] = {
    use Role::*;
    &[
        // frontend
        (Frontend, "ui", Cpm, "cpm", None),
        (Frontend, "ui", Manager, "a", Some(Rule::FrontendOnlyToCpm)),
        (Frontend, "ui", Service, "a", Some(Rule::FrontendOnlyToCpm)),
        (Frontend, "ui", Handler, "a", Some(Rule::FrontendOnlyToCpm)),
        (
            Frontend,
            "ui",
            Processor,
            "a",
            Some(Rule::FrontendOnlyToCpm),
        ),
        (Frontend, "ui", System, "system", None),
        // cpm
        (Cpm, "cpm", Frontend, "ui", None),
        (Cpm, "cpm", Manager, "a", None),
        (Cpm, "cpm", Processor, "a", None),
        (
            Cpm,
            "cpm",
            Service,
            "a",
            Some(Rule::CpmReachesManagersAndProcessors),
        ),
        (
            Cpm,
            "cpm",
            Handler,
            "a",
            Some(Rule::CpmReachesManagersAndProcessors),
        ),
        (Cpm, "cpm", System, "system", None),
        // to the frontend: only the CPM
        (Manager, "a", Frontend, "ui", Some(Rule::OnlyCpmToFrontend)),
        (
            Processor,
            "a",
            Frontend,
            "ui",
            Some(Rule::OnlyCpmToFrontend),
        ),
        // feedback to the CPM
        (Manager, "a", Cpm, "cpm", None),
        (Processor, "a", Cpm, "cpm", None),
        (
            Service,
            "a",
            Cpm,
            "cpm",
            Some(Rule::CpmReachesManagersAndProcessors),
        ),
        (
            Handler,
            "a",
            Cpm,
            "cpm",
            Some(Rule::CpmReachesManagersAndProcessors),
        ),
        // managers coordinate, also across domains
        (Manager, "a", Manager, "b", None),
        // one layer at a time, down and up, same domain
        (Manager, "a", Service, "a", None),
        (Service, "a", Handler, "a", None),
        (Handler, "a", Processor, "a", None),
        (Processor, "a", Handler, "a", None),
        (Handler, "a", Service, "a", None),
        (Service, "a", Manager, "a", None),
        // skipping a layer
        (Manager, "a", Handler, "a", Some(Rule::OneLayerAtATime)),
        (Manager, "a", Processor, "a", Some(Rule::OneLayerAtATime)),
        (Service, "a", Processor, "a", Some(Rule::OneLayerAtATime)),
        (Processor, "a", Service, "a", Some(Rule::OneLayerAtATime)),
        (Processor, "a", Manager, "a", Some(Rule::OneLayerAtATime)),
        (Handler, "a", Manager, "a", Some(Rule::OneLayerAtATime)),
        // another domain below the manager
        (
            Manager,
            "a",
            Service,
            "b",
            Some(Rule::SameDomainBelowManager),
        ),
        (
            Handler,
            "a",
            Service,
            "b",
            Some(Rule::SameDomainBelowManager),
        ),
        (
            Service,
            "a",
            Handler,
            "b",
            Some(Rule::SameDomainBelowManager),
        ),
        (
            Processor,
            "a",
            Handler,
            "b",
            Some(Rule::SameDomainBelowManager),
        ),
        (
            Service,
            "a",
            Manager,
            "b",
            Some(Rule::SameDomainBelowManager),
        ),
        // no peer talk below managers
        (
            Service,
            "a",
            Service,
            "a",
            Some(Rule::NoPeerTalkBelowManager),
        ),
        (
            Handler,
            "a",
            Handler,
            "b",
            Some(Rule::NoPeerTalkBelowManager),
        ),
        (
            Processor,
            "a",
            Processor,
            "a",
            Some(Rule::NoPeerTalkBelowManager),
        ),
        // system components
        (Service, "a", System, "system", None),
        (Handler, "a", System, "system", None),
        (Processor, "a", System, "system", None),
        (System, "system", Manager, "a", None),
        (System, "system", Cpm, "cpm", None),
        (System, "system", System, "other", None),
        (
            System,
            "system",
            Service,
            "a",
            Some(Rule::SystemReachesCpmAndManagers),
        ),
        (
            System,
            "system",
            Handler,
            "a",
            Some(Rule::SystemReachesCpmAndManagers),
        ),
        (
            System,
            "system",
            Processor,
            "a",
            Some(Rule::SystemReachesCpmAndManagers),
        ),
        (
            System,
            "system",
            Frontend,
            "ui",
            Some(Rule::SystemReachesCpmAndManagers),
        ),
    ]
};

#[test]
fn check_edge_follows_the_table() {
    for (fr, fd, tr, td, expected) in TABLE {
        let (from, mut to) = (ep(*fr, fd), ep(*tr, td));
        if from.name == to.name {
            to.name = format!("{}-2", to.name).into();
        }
        assert_eq!(
            check_edge(&from, &to),
            expected.map_or(Ok(()), Err),
            "{from} → {to}"
        );
    }
}

#[test]
fn every_role_may_talk_to_itself() {
    for role in Role::ALL {
        let e = ep(role, "a");
        assert_eq!(check_edge(&e, &e), Ok(()));
    }
}

#[test]
fn validate_accepts_and_refuses_each_table_edge_naming_both_components_and_the_rule() {
    for (i, (fr, fd, tr, td, expected)) in TABLE.iter().enumerate() {
        let topic = format!("t{i}.x.y");
        let from_name = format!("src-{fr}-{fd}");
        let to_name = format!("dst-{tr}-{td}");
        let topology = Topology::new(vec![
            spec(&from_name, *fr, fd, &[], &[&topic]),
            spec(&to_name, *tr, td, &[&topic], &[]),
        ]);
        match (topology.validate(), expected) {
            (Ok(()), None) => {}
            (Err(TopologyError::Forbidden(v)), Some(rule)) => {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].rule, *rule);
                let text = TopologyError::Forbidden(v).to_string();
                assert!(text.contains(&from_name), "{text}");
                assert!(text.contains(&to_name), "{text}");
                assert!(text.contains(rule.id()), "{text}");
                assert!(text.contains(&topic), "{text}");
            }
            (got, want) => panic!("{from_name} → {to_name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn wildcard_subscriptions_and_publish_patterns_make_edges() {
    // A processor listening on the whole domain would hear the manager: forbidden.
    let t = Topology::new(vec![
        spec(
            "analytics-manager",
            Role::Manager,
            "analytics",
            &[],
            &["analytics.feature.submit"],
        ),
        spec(
            "analytics-processor",
            Role::Processor,
            "analytics",
            &["analytics.#"],
            &[],
        ),
    ]);
    let err = t.validate().unwrap_err().to_string();
    assert!(
        err.contains("`analytics-manager`") && err.contains("`analytics-processor`"),
        "{err}"
    );
    assert!(err.contains("one-layer-at-a-time"), "{err}");
    // Publish patterns overlap concrete subscriptions.
    let t = Topology::new(vec![
        spec("h", Role::Handler, "a", &[], &["a.*.handled"]),
        spec("s", Role::Service, "b", &["a.load.handled"], &[]),
    ]);
    assert!(
        matches!(t.validate(), Err(TopologyError::Forbidden(v)) if v[0].rule == Rule::SameDomainBelowManager)
    );
    // No overlap, no edge.
    let t = Topology::new(vec![
        spec("m", Role::Manager, "a", &[], &["a.load.submit"]),
        spec("p", Role::Processor, "a", &["a.load.execute"], &[]),
    ]);
    assert!(t.validate().is_ok());
    assert!(t.edges().is_empty());
}

#[test]
fn every_violation_is_listed() {
    let t = Topology::new(vec![
        spec("m", Role::Manager, "a", &[], &["a.x.y"]),
        spec("p1", Role::Processor, "a", &["a.x.y"], &[]),
        spec("h1", Role::Handler, "a", &["a.x.y"], &[]),
        spec("s1", Role::Service, "a", &["a.x.y"], &[]),
    ]);
    let TopologyError::Forbidden(v) = t.validate().unwrap_err() else {
        panic!("expected forbidden edges")
    };
    let pairs: Vec<_> = v
        .iter()
        .map(|v| (v.from.name.as_str(), v.to.as_ref().unwrap().name.as_str()))
        .collect();
    assert_eq!(pairs, vec![("m", "h1"), ("m", "p1")]);
}

#[test]
fn duplicate_names_are_refused() {
    let t = Topology::new(vec![
        spec("x", Role::Manager, "a", &[], &[]),
        spec("x", Role::Service, "a", &[], &[]),
    ]);
    assert!(matches!(t.validate(), Err(TopologyError::DuplicateName(n)) if n == "x"));
}

#[tokio::test]
async fn assembly_refuses_to_start_a_forbidden_topology_in_strict_mode() {
    use switchyard::{Bus, Envelope};
    use switchyard_components::{Assembly, ComponentBuilder, StartError};
    let bus = Bus::new();
    let noop = |_: Envelope, _| async { Ok::<_, std::convert::Infallible>(()) };
    let err = Assembly::new(&bus)
        .component(
            ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                .publishes("shop.order.execute"),
        )
        .component(
            ComponentBuilder::new("shop-processor", Role::Processor, "shop")
                .on_envelope("shop.order.execute", noop),
        )
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StartError::Topology(_)));
    assert!(
        text.contains("shop-manager")
            && text.contains("shop-processor")
            && text.contains("one-layer-at-a-time"),
        "{text}"
    );
    assert!(
        bus.registry().is_empty(),
        "nothing registered: {:?}",
        bus.registry()
    );
}

#[test]
fn runtime_enforcement_follows_the_same_table() {
    use std::sync::Arc;
    use switchyard::{Envelope, PublishError, Topic};
    use switchyard_components::{EnforcementMode, Enforcer};
    for (i, (fr, fd, tr, td, expected)) in TABLE.iter().enumerate() {
        let topic = format!("t{i}.x.y");
        let from_name = format!("src-{fr}-{fd}");
        let to_name = format!("dst-{tr}-{td}");
        let from = spec(&from_name, *fr, fd, &[], &[&topic]);
        let topology = Arc::new(Topology::new(vec![
            from.clone(),
            spec(&to_name, *tr, td, &[&topic], &[]),
        ]));
        let strict = Enforcer::new(topology.clone(), EnforcementMode::Strict);
        let warn = Enforcer::new(topology, EnforcementMode::Warn);
        let env = Envelope::new(Topic::new(&topic).unwrap(), "{}");
        match (strict.check(&from, &env), expected) {
            (Ok(()), None) => assert_eq!(strict.stats().violations, 0),
            (Err(PublishError::LayerViolation(v)), Some(rule)) => {
                assert_eq!(v.from, from_name, "{v}");
                assert_eq!(v.to.as_deref(), Some(to_name.as_str()), "{v}");
                assert_eq!(v.rule, rule.id(), "{v}");
                assert_eq!(v.topic, topic, "{v}");
                assert_eq!(strict.stats().refused, 1);
                assert_eq!(strict.stats().by_rule.get(rule.id()), Some(&1));
            }
            (got, want) => panic!("{from_name} → {to_name}: got {got:?}, want {want:?}"),
        }
        // Warn mode lets everything through and counts the same violations.
        assert!(warn.check(&from, &env).is_ok());
        assert_eq!(warn.stats().violations, u64::from(expected.is_some()));
        assert_eq!(warn.stats().refused, 0);
    }
}

/// The phase rule (§2): a request phase goes only to a lower layer, a result phase only to a
/// higher one; managers exchange both; system components and non-phase topics are exempt.
#[test]
fn check_phase_follows_the_layers() {
    use Role::*;
    let layers = [Frontend, Cpm, Manager, Service, Handler, Processor];
    for (a, fr) in layers.iter().enumerate() {
        for (b, tr) in layers.iter().enumerate() {
            let (from, mut to) = (ep(*fr, "a"), ep(*tr, "a"));
            to.name = format!("{}-2", to.name).into();
            let managers = *fr == Manager && *tr == Manager;
            for (phase, allowed) in [
                ("request", b > a || managers),
                ("submit", b > a || managers),
                ("dispatch", b > a || managers),
                ("execute", b > a || managers),
                ("processed", b < a || managers),
                ("handled", b < a || managers),
                ("served", b < a || managers),
                ("complete", b < a || managers),
                ("update", true),
            ] {
                let topic = format!("a.x.{phase}");
                assert_eq!(
                    check_phase(&from, &to, &topic),
                    if allowed {
                        Ok(())
                    } else {
                        Err(Rule::RequestsDownResultsUp)
                    },
                    "{from} → {to} on {topic}"
                );
            }
            let sys = ep(System, "s");
            assert_eq!(check_phase(&sys, &to, "a.retry.request"), Ok(()));
            assert_eq!(check_phase(&from, &sys, "a.x.dispatch"), Ok(()));
        }
    }
}

/// Assembly: a processor declaring its handler's request topic, or a service declaring a
/// result topic its handler subscribes to, is refused by `validate`, naming both components,
/// the topic and the rule.
#[test]
fn validate_refuses_requests_declared_up_and_results_declared_down() {
    for (from, fr, to, tr, topic) in [
        (
            "a-processor",
            Role::Processor,
            "a-handler",
            Role::Handler,
            "a.x.dispatch",
        ),
        (
            "a-service",
            Role::Service,
            "a-handler",
            Role::Handler,
            "a.x.processed",
        ),
        (
            "a-manager",
            Role::Manager,
            "cpm",
            Role::Cpm,
            "cpm.run.request",
        ),
    ] {
        let t = Topology::new(vec![
            spec(from, fr, "a", &[], &[topic]),
            spec(
                to,
                tr,
                if tr == Role::Cpm { "cpm" } else { "a" },
                &[topic],
                &[],
            ),
        ]);
        match t.validate() {
            Err(TopologyError::Forbidden(v)) => {
                assert_eq!(v.len(), 1, "{v:?}");
                assert_eq!(v[0].rule, Rule::RequestsDownResultsUp);
                let text = TopologyError::Forbidden(v).to_string();
                for part in [from, to, topic, "requests-down-results-up"] {
                    assert!(text.contains(part), "{part} not in {text}");
                }
            }
            other => panic!("{from} → {to} on {topic}: {other:?}"),
        }
    }
}

/// Run time: a publish declaration with a wildcard phase (`shop.order.*`) passes the assembly
/// check; each concrete topic is checked at publish. Strict mode refuses a request sent up
/// (typed error naming both components, the topic and the rule; nothing delivered); warn mode
/// delivers it and counts it.
#[tokio::test]
async fn a_request_up_under_a_wildcard_declaration_is_refused_at_run_time() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use switchyard::{BoxError, Bus, Envelope, PublishError};
    use switchyard_components::{Assembly, ComponentBuilder, EnforcementMode};
    for mode in [EnforcementMode::Strict, EnforcementMode::Warn] {
        let bus = Bus::new();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        let running = Assembly::new(&bus)
            .mode(mode)
            .component(
                ComponentBuilder::new("shop-handler", Role::Handler, "shop").on_envelope(
                    "shop.order.dispatch",
                    move |_: Envelope, _| {
                        let h = h.clone();
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, BoxError>(())
                        }
                    },
                ),
            )
            .component(
                ComponentBuilder::new("shop-processor", Role::Processor, "shop")
                    .publishes("shop.order.*"),
            )
            .start()
            .await
            .unwrap();
        let sent = running
            .component_bus("shop-processor")
            .unwrap()
            .publish_to("shop.order.dispatch", crate::Note { n: 1 })
            .await;
        bus.run_until_idle().await;
        match mode {
            EnforcementMode::Strict => {
                let Err(PublishError::LayerViolation(v)) = sent else {
                    panic!("{sent:?}");
                };
                assert_eq!(
                    (
                        v.from.as_str(),
                        v.to.as_deref(),
                        v.topic.as_str(),
                        v.rule.as_str()
                    ),
                    (
                        "shop-processor",
                        Some("shop-handler"),
                        "shop.order.dispatch",
                        "requests-down-results-up"
                    )
                );
                assert_eq!(hits.load(Ordering::SeqCst), 0);
            }
            EnforcementMode::Warn => {
                sent.unwrap();
                assert_eq!(hits.load(Ordering::SeqCst), 1);
            }
        }
        let stats = running.enforcement();
        assert_eq!(
            stats.by_rule.get("requests-down-results-up"),
            Some(&1),
            "{stats:?}"
        );
    }
}
