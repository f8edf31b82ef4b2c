use std::time::{Duration, SystemTime};

use switchyard_core::{BoxError, Envelope, Outcome};
use switchyard_middleware::metrics::{
    MetricsInstallError, MetricsLayer, MetricsSnapshot, TopicLabel, build_prometheus,
    install_prometheus,
};
use tower::{Layer, Service, ServiceExt};

use crate::common::env;

fn by_payload() -> impl Service<
    Envelope,
    Response = Outcome,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Outcome, BoxError>> + Send,
> + Clone
+ Send {
    tower::service_fn(|e: Envelope| async move {
        match e.payload.as_ref() {
            b"ack" => Ok(Outcome::Ack),
            b"reject" => Ok(Outcome::reject("no")),
            b"retry" => Ok(Outcome::retry()),
            _ => Err::<Outcome, BoxError>("boom".into()),
        }
    })
}

fn with_payload(p: &'static str) -> Envelope {
    let mut e = env("users.created");
    e.payload = p.into();
    e
}

/// The value of the sample `name{...}` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !rest.starts_with('{') && !rest.is_empty() {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

async fn run_mix(layer: &MetricsLayer) {
    let svc = layer.layer(by_payload());
    for p in ["ack", "ack", "reject", "retry", "err"] {
        let mut e = with_payload(p);
        e.timestamp = SystemTime::now() - Duration::from_secs(2);
        let _ = svc.clone().oneshot(e).await;
    }
}

#[test]
fn prometheus_text_has_counters_and_histograms() {
    let (recorder, prom) = build_prometheus().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = MetricsLayer::new("mailer");
    metrics::with_local_recorder(&recorder, || rt.block_on(run_mix(&layer)));
    let text = prom.render();
    let l = [("topic", "users.created"), ("handler", "mailer")];
    assert_eq!(
        sample(&text, "switchyard_delivered_total", &l),
        Some(5.0),
        "{text}"
    );
    assert_eq!(sample(&text, "switchyard_acked_total", &l), Some(2.0));
    assert_eq!(sample(&text, "switchyard_rejected_total", &l), Some(1.0));
    assert_eq!(sample(&text, "switchyard_retried_total", &l), Some(1.0));
    assert_eq!(sample(&text, "switchyard_failed_total", &l), Some(1.0));
    assert_eq!(
        sample(&text, "switchyard_handler_duration_seconds_count", &l),
        Some(5.0)
    );
    let e2e_sum = sample(&text, "switchyard_end_to_end_latency_seconds_sum", &l).unwrap();
    assert!(e2e_sum >= 10.0, "five messages two seconds old: {e2e_sum}");
    assert_eq!(
        sample(&text, "switchyard_in_flight", &[("handler", "mailer")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn snapshot_counts_and_serialises() {
    let layer = MetricsLayer::new("mailer").topic_label(TopicLabel::Fixed("users.#".into()));
    run_mix(&layer).await;
    let snap = layer.registry().snapshot();
    let row = snap.get("users.#", "mailer").unwrap();
    assert_eq!(
        (
            row.delivered,
            row.acked,
            row.rejected,
            row.retried,
            row.failed
        ),
        (5, 2, 1, 1, 1)
    );
    assert_eq!(row.in_flight, 0);
    assert_eq!(row.duration.count, 5);
    assert!(row.end_to_end.max_seconds >= 2.0);
    let back: MetricsSnapshot = serde_json::from_str(&snap.to_json()).unwrap();
    let b = &back.handlers[0];
    assert_eq!(
        (b.topic.as_str(), b.handler.as_str(), b.delivered, b.acked),
        ("users.#", "mailer", 5, 2)
    );
    assert_eq!(b.end_to_end.count, 5);
}

#[tokio::test]
async fn global_install_renders_and_refuses_a_second_install() {
    let prom = install_prometheus().unwrap();
    let layer = MetricsLayer::new("global-test");
    run_mix(&layer).await;
    let text = prom.render();
    assert_eq!(
        sample(
            &text,
            "switchyard_acked_total",
            &[("handler", "global-test")]
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE switchyard_handler_duration_seconds histogram"),
        "{text}"
    );
    assert!(matches!(
        install_prometheus(),
        Err(MetricsInstallError::AlreadyInstalled)
    ));
}

#[tokio::test]
async fn cancelled_call_leaves_in_flight() {
    use futures::FutureExt;
    let layer = MetricsLayer::new("h");
    let svc = layer.layer(tower::service_fn(|_e: Envelope| async {
        futures::future::pending::<()>().await;
        Ok::<_, BoxError>(Outcome::Ack)
    }));
    let mut call = Box::pin(svc.oneshot(env("a.b")));
    assert!((&mut call).now_or_never().is_none());
    assert_eq!(
        layer
            .registry()
            .snapshot()
            .get("a.b", "h")
            .unwrap()
            .in_flight,
        1
    );
    drop(call);
    let snap = layer.registry().snapshot();
    let row = snap.get("a.b", "h").unwrap();
    assert_eq!((row.in_flight, row.delivered, row.acked), (0, 1, 0));
}

#[tokio::test]
async fn counts_stay_per_topic_when_topics_alternate() {
    let layer = MetricsLayer::new("h");
    let mut svc = layer.layer(by_payload());
    for i in 0..6 {
        let mut e = env(if i % 3 == 0 { "a.b" } else { "c.d" });
        e.payload = "ack".into();
        svc.ready().await.unwrap().call(e).await.unwrap();
    }
    let snap = layer.registry().snapshot();
    assert_eq!(snap.get("a.b", "h").unwrap().acked, 2);
    assert_eq!(snap.get("c.d", "h").unwrap().acked, 4);
}

#[tokio::test]
async fn resilience_config_labels_by_the_registered_pattern_unless_told_otherwise() {
    use switchyard_middleware::metrics::MetricsRegistry;
    use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
    // (config, rows expected after `users.created` and `users.deleted`)
    let registered = ResilienceConfig::default().registered_for("users.#");
    let opted_in = ResilienceConfig::default()
        .topic_label(TopicLabel::Topic)
        .registered_for("users.#");
    let untold = ResilienceConfig::default();
    for (case, config, expected) in [
        ("registered", registered, vec!["users.#"]),
        ("opted in", opted_in, vec!["users.created", "users.deleted"]),
        (
            "no pattern told",
            untold,
            vec!["users.created", "users.deleted"],
        ),
    ] {
        let registry = MetricsRegistry::new();
        let layer = ResilienceLayer::new("mailer", config.registry(registry.clone()));
        let svc = layer.layer(by_payload());
        for topic in ["users.created", "users.deleted"] {
            let mut e = env(topic);
            e.payload = "ack".into();
            svc.clone().oneshot(e).await.unwrap();
        }
        let rows: Vec<_> = registry
            .snapshot()
            .handlers
            .into_iter()
            .map(|h| h.topic)
            .collect();
        assert_eq!(rows, expected, "{case}");
    }
}
