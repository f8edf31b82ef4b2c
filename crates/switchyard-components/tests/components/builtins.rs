//! Built-in system components.

use std::time::Duration;

use switchyard::{Bus, MessageId};
use switchyard_components::builtin::{
    Baseline, HealthChecker, HealthStatus, PerformanceTracker, StateTracker,
};
use switchyard_components::{
    Assembly, ComponentBuilder, RequestId, RequestState, Role, StatusUpdate,
};

#[tokio::test(start_paused = true)]
async fn health_checker_sees_heartbeats_and_staleness() {
    let bus = Bus::new();
    let health = HealthChecker::new(Duration::from_secs(30), 0.5);
    let running = Assembly::new(&bus)
        .component(health.component())
        .component(ComponentBuilder::new("a-manager", Role::Manager, "a"))
        .component(ComponentBuilder::new("a-service", Role::Service, "a"))
        .start()
        .await
        .unwrap();
    assert_eq!(running.heartbeat().await.unwrap(), 3);
    bus.run_until_idle().await;
    let report = health.report();
    let names: Vec<&str> = report.iter().map(|h| h.component.as_str()).collect();
    assert_eq!(names, vec!["a-manager", "a-service", "health-checker"]);
    assert!(
        report
            .iter()
            .all(|h| h.status == HealthStatus::Healthy && h.heartbeats == 1)
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(health.status("a-manager"), Some(HealthStatus::Unresponsive));
    assert_eq!(health.status("nobody"), None);
}

#[test]
fn baseline_and_anomalies() {
    let perf = PerformanceTracker::new(0.2, 4.0, 1.0, 10);
    for i in 0..50 {
        assert!(perf.observe("p", "load", 10.0 + f64::from(i % 3)).is_none());
    }
    let a = perf.observe("p", "load", 80.0).expect("anomaly");
    assert_eq!(a.value, 80.0);
    assert!(a.mean > 9.0 && a.mean < 13.0);
    assert_eq!(perf.anomalies().len(), 1);
    assert!(perf.baseline("p", "load").unwrap().samples() == 51);
    let mut b = Baseline::new(0.5);
    assert!(!b.is_anomaly(1.0, 3.0, 0.0), "no samples, no anomaly");
    b.observe(2.0);
    assert_eq!(b.mean(), 2.0);
}

fn update(id: RequestId, from: Option<RequestState>, to: RequestState) -> StatusUpdate {
    StatusUpdate {
        request_id: id,
        correlation_id: MessageId::new(),
        component: "c".into(),
        role: Role::Service,
        domain: "d".into(),
        action: "x".into(),
        from,
        to,
        reason: None,
        at_ms: 0,
    }
}

#[test]
fn state_tracker_follows_requests_and_flags_updates_out_of_the_state_machine() {
    use RequestState::*;
    let t = StateTracker::new(10);
    let ok = RequestId::new();
    t.apply(update(ok, None, Pending));
    t.apply(update(ok, Some(Pending), Running));
    assert_eq!(t.get(ok).unwrap().last.to, Running);
    assert_eq!(t.active().len(), 1);
    t.apply(update(ok, Some(Running), Completed));
    assert!(t.active().is_empty());
    assert_eq!(t.get(ok).unwrap().states, vec![Pending, Running, Completed]);
    assert!(t.anomalies().is_empty());

    let bad = RequestId::new();
    t.apply(update(bad, None, Pending));
    t.apply(update(bad, Some(Pending), Completed)); // illegal
    assert_eq!(t.anomalies().len(), 1);
    t.apply(update(RequestId::new(), Some(Running), Failed)); // unknown request
    assert_eq!(t.anomalies().len(), 2);
    assert_eq!(t.of_component("c").len(), 3);
}

#[tokio::test(start_paused = true)]
async fn periodic_heartbeats_keep_components_healthy() {
    let bus = Bus::new();
    let health = HealthChecker::new(Duration::from_secs(5), 0.5);
    let running = Assembly::new(&bus)
        .component(health.component())
        .component(ComponentBuilder::new("a-manager", Role::Manager, "a"))
        .start()
        .await
        .unwrap();
    let beats = running.start_heartbeats(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(10)).await; // virtual time: ten heartbeats
    bus.run_until_idle().await;
    assert_eq!(health.status("a-manager"), Some(HealthStatus::Healthy));
    let hb = health.report()[0].heartbeats;
    assert!((10..=11).contains(&hb), "{hb} heartbeats");
    drop(beats);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(health.status("a-manager"), Some(HealthStatus::Unresponsive));
}

#[tokio::test(start_paused = true)]
async fn rate_baseline_follows_completions_per_second() {
    let perf = PerformanceTracker::new(0.5, 4.0, 1.0, 5);
    for _ in 0..20 {
        perf.observe("p", "load", 5.0);
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let rate = perf.rate("p", "load").unwrap();
    assert!((rate.mean() - 10.0).abs() < 0.01, "{}", rate.mean());
}
