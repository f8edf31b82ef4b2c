//! Alert manager and resource monitor.

use std::io::{Read, Write};
use std::net::TcpListener;

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Message};
use switchyard_components::builtin::{
    Alert, AlertManager, AlertRule, Channel, Condition, HealthChecker, ResourceMonitor,
    ResourceThresholds, Severity,
};
use switchyard_components::{Assembly, ComponentBuilder, Role};

use crate::{Note, WAIT};

/// A manager whose requests fail when `n` is odd.
fn worker() -> ComponentBuilder {
    ComponentBuilder::new("work-manager", Role::Manager, "work").on::<Note, _, _, _, _>(
        "work.job.request",
        |note, cx| async move {
            let ctx = cx.begin("job").await?;
            ctx.start().await?;
            if note.n % 2 == 1 {
                ctx.fail("Boom", "odd", false).await?;
            } else {
                ctx.complete(&note.n).await?;
            }
            Ok::<_, BoxError>(())
        },
    )
}

#[tokio::test]
async fn error_rate_alert_is_raised_once_deduplicated_and_resolved() {
    let bus = Bus::new();
    let alerts = AlertManager::new(
        vec![AlertRule {
            name: "error-rate".into(),
            severity: Severity::Critical,
            condition: Condition::ErrorRate {
                max_ratio: 0.5,
                window: 4,
                min_requests: 4,
            },
        }],
        vec![Channel::Topic],
    );
    let rec = Recorder::start(&bus, "system.alert.#").await.unwrap();
    let _running = Assembly::new(&bus)
        .component(alerts.component())
        .component(worker())
        .start()
        .await
        .unwrap();
    // 1 success, 5 failures: above 50% from the fourth ended request on.
    for n in [0, 1, 3, 5, 7, 9] {
        bus.publish_to("work.job.request", Note { n })
            .await
            .unwrap();
    }
    let got = rec.wait_for(1, WAIT).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(rec.envelopes().len(), 1, "raised once");
    assert_eq!(got[0].topic.as_str(), "system.alert.critical");
    let alert = Alert::from_envelope(&got[0]).unwrap();
    assert_eq!(
        (alert.rule.as_str(), alert.subject.as_str()),
        ("error-rate", "work")
    );
    let stats = alerts.stats();
    assert_eq!(stats.raised, 1);
    assert_eq!(stats.deduplicated, 2);
    assert_eq!(alerts.active()[0].count, 3);
    // Successes bring the rate down: resolved; history keeps it.
    for n in [2, 4, 6, 8] {
        bus.publish_to("work.job.request", Note { n })
            .await
            .unwrap();
    }
    bus.run_until_idle().await;
    assert!(alerts.active().is_empty());
    assert_eq!(alerts.stats().resolved, 1);
    assert_eq!(alerts.history().len(), 1);
}

// Sampling the process needs the `sysinfo` feature (on in the workspace build through the
// data-pipeline example; alone: `cargo test -p switchyard-components --features sysinfo`).
#[cfg(feature = "sysinfo")]
#[tokio::test]
async fn resource_breach_becomes_an_alert() {
    let bus = Bus::new();
    let monitor = ResourceMonitor::new(ResourceThresholds {
        max_rss_bytes: Some(1),
        max_open_files: None,
        max_cpu_percent: None,
    });
    let alerts = AlertManager::new(
        vec![AlertRule {
            name: "resources".into(),
            severity: Severity::Warning,
            condition: Condition::ResourceBreach,
        }],
        vec![Channel::Topic],
    );
    let rec = Recorder::start(&bus, "system.alert.warning").await.unwrap();
    let running = Assembly::new(&bus)
        .component(monitor.component())
        .component(alerts.component())
        .start()
        .await
        .unwrap();
    let first = monitor.sample().unwrap();
    assert!(first.rss_bytes > 0 && first.open_files > 0 && first.cpu_seconds >= 0.0);
    let mbus = running.component_bus(ResourceMonitor::NAME).unwrap();
    let breaches = monitor.publish_once(&mbus).await.unwrap();
    assert_eq!(breaches.len(), 1);
    assert_eq!(breaches[0].metric, "rss_bytes");
    monitor.publish_once(&mbus).await.unwrap();
    let got = rec.wait_for(1, WAIT).await.unwrap();
    bus.run_until_idle().await;
    assert_eq!(rec.envelopes().len(), 1, "deduplicated");
    assert!(
        Alert::from_envelope(&got[0])
            .unwrap()
            .message
            .starts_with("rss_bytes")
    );
    assert_eq!(alerts.active()[0].count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_component_is_posted_to_a_webhook() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/alerts", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read the head and the body announced by Content-Length.
        loop {
            let n = s.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(i) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                if buf.len() >= i + 4 + len || n == 0 {
                    break;
                }
            }
        }
        s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        String::from_utf8(buf).unwrap()
    });

    let bus = Bus::new();
    let health = HealthChecker::new(std::time::Duration::from_secs(60), 0.25);
    let alerts = AlertManager::new(
        vec![AlertRule {
            name: "health".into(),
            severity: Severity::Warning,
            condition: Condition::Unhealthy,
        }],
        vec![Channel::Webhook { url }],
    );
    let _running = Assembly::new(&bus)
        .component(health.component())
        .component(worker())
        .start()
        .await
        .unwrap();
    bus.publish_to("work.job.request", Note { n: 1 })
        .await
        .unwrap();
    bus.run_until_idle().await;
    let raised = alerts.evaluate_health(&health).await;
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].subject, "work-manager");
    let request = server.join().unwrap();
    assert!(
        request.starts_with("POST /hooks/alerts HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("\"subject\":\"work-manager\""),
        "{request}"
    );
    assert_eq!(alerts.stats().webhook_ok, 1);
    // Evaluating again does not notify again.
    assert!(alerts.evaluate_health(&health).await.is_empty());
}

#[cfg(feature = "sysinfo")]
#[test]
fn resource_samples_follow_the_process() {
    // Other tests of this binary open and close files concurrently, so only bounds that hold
    // whatever they do are checked.
    let monitor = ResourceMonitor::new(ResourceThresholds::default());
    let before = monitor.sample().unwrap();
    let files: Vec<std::fs::File> = (0..8)
        .map(|_| std::fs::File::open("Cargo.toml").unwrap())
        .collect();
    let during = monitor.sample().unwrap();
    assert!(
        during.open_files >= 8 + 3,
        "8 files plus stdin/stdout/stderr: {during:?}"
    );
    assert!(during.rss_bytes > 1 << 20, "{during:?}");
    assert!(during.cpu_seconds >= before.cpu_seconds);
    assert!(
        before.cpu_percent.is_none() && during.cpu_percent.is_some(),
        "the second sample has a rate"
    );
    drop(files);
}

#[cfg(not(feature = "sysinfo"))]
#[test]
fn without_sysinfo_sampling_says_unsupported() {
    let monitor = ResourceMonitor::new(ResourceThresholds::default());
    let err = monitor.sample().unwrap_err();
    assert!(err.to_string().contains("`sysinfo` feature"), "{err}");
}
