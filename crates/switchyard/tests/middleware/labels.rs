//! The `topic` label of the per-handler metrics under `with_resilience` /
//! `with_default_resilience`: the pattern (or command topic) a handler was registered for,
//! never the topics publishers choose, unless `TopicLabel::Topic` is asked for.

use serde::{Deserialize, Serialize};
use switchyard::{BoxError, Bus, Command, Envelope, Kind, Message, Topic};
use switchyard_middleware::metrics::{MetricsRegistry, TopicLabel};
use switchyard_middleware::resilience::ResilienceConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refund {
    cents: u64,
}
impl Message for Refund {
    const TOPIC: &'static str = "billing.refund";
    const KIND: Kind = Kind::Command;
}
impl Command for Refund {
    type Output = u64;
}

/// A bus whose stacks count into `registry`, with a `#` watcher and a `Refund` handler; 50
/// events on 50 distinct topics and one command go through it. Returns the registry's rows
/// as (topic label, handler, delivered).
async fn run_fifty_topics(label: Option<TopicLabel>) -> Vec<(String, String, u64)> {
    let registry = MetricsRegistry::new();
    let reg = registry.clone();
    let bus = Bus::builder()
        .with_resilience(move || {
            let config = ResilienceConfig::default().registry(reg.clone());
            match &label {
                Some(label) => config.topic_label(label.clone()),
                None => config,
            }
        })
        .build()
        .unwrap();
    let _watch = bus
        .subscribe(
            "watch",
            "#",
            switchyard::boxed(tower::service_fn(|_e: Envelope| async {
                Ok::<_, BoxError>(switchyard::Outcome::Ack)
            })),
        )
        .start()
        .await
        .unwrap();
    let _refunds = bus
        .handle(|r: Refund, _| async move { Ok::<_, BoxError>(r.cents) })
        .start()
        .await
        .unwrap();
    for i in 0..50 {
        let topic = Topic::new(&format!("orders.client{i}")).unwrap();
        bus.publish_envelope(Envelope::new(topic, "{}"))
            .await
            .unwrap();
    }
    assert_eq!(bus.send(Refund { cents: 7 }).await.unwrap(), 7);
    bus.run_until_idle().await;
    let rows: Vec<_> = registry
        .snapshot()
        .handlers
        .into_iter()
        .map(|h| (h.topic, h.handler, h.delivered))
        .collect();
    rows
}

#[tokio::test(start_paused = true)]
async fn default_stack_labels_a_handler_by_its_pattern_not_the_topics_it_receives() {
    let rows = run_fifty_topics(None).await;
    let watch: Vec<_> = rows.iter().filter(|r| r.1 == "watch").collect();
    assert_eq!(
        watch,
        [&("#".to_owned(), "watch".to_owned(), 50)],
        "one row for the `#` subscription, however many topics flow: {rows:?}"
    );
    let refund: Vec<_> = rows.iter().filter(|r| r.1 != "watch").collect();
    assert_eq!(refund.len(), 1, "one row for the command handler: {rows:?}");
    assert_eq!(
        refund[0].0, "billing.refund",
        "a command handler is labelled by its topic: {rows:?}"
    );
    assert_eq!(refund[0].2, 1);
}

#[tokio::test(start_paused = true)]
async fn topic_label_topic_is_kept_for_who_asks_for_it() {
    let rows = run_fifty_topics(Some(TopicLabel::Topic)).await;
    let watch = rows.iter().filter(|r| r.1 == "watch").count();
    assert_eq!(
        watch, 50,
        "asked for, the label is each message's topic: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.0 == "orders.client42" && r.1 == "watch"),
        "{rows:?}"
    );
}
