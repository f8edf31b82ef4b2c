//! Correlation traces: the causal tree rebuilt from recorded envelopes.

use std::time::{Duration, SystemTime};

use switchyard::{BoxError, Bus, Envelope, Message, Topic};
use switchyard_components::trace::{Trace, TraceRecorder};
use switchyard_components::{Assembly, ComponentBuilder, Role};

use crate::{Note, WAIT};

fn env(topic: &str, at_ms: u64) -> Envelope {
    let mut e = Envelope::new(Topic::new(topic).unwrap(), "{}");
    e.timestamp = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000 + at_ms);
    e
}

#[test]
fn tree_from_envelopes() {
    let root = env("a.req", 0);
    let a = env("a.one", 2).caused_by(&root).with_source("m");
    let b = env("a.two", 5).caused_by(&root);
    let c = env("a.three", 9).caused_by(&a);
    let other = env("b.req", 1);
    // Shuffled input, a duplicate and an unrelated flow.
    let recorded = vec![
        c.clone(),
        other,
        b.clone(),
        root.clone(),
        a.clone(),
        a.clone(),
    ];
    let t = Trace::build(root.correlation_id.clone(), &recorded);
    assert_eq!(t.len(), 4);
    assert_eq!(t.roots.len(), 1);
    let r = &t.roots[0];
    assert_eq!(r.id, root.id);
    assert_eq!(r.depth(), 3);
    let kids: Vec<&str> = r.children.iter().map(|n| n.topic.as_str()).collect();
    assert_eq!(kids, vec!["a.one", "a.two"], "in publication order");
    assert_eq!(r.children[0].children[0].id, c.id);
    assert!((r.children[0].children[0].at_ms - 9.0).abs() < 1e-9);
    assert!((r.children[0].children[0].since_parent_ms - 7.0).abs() < 1e-9);
    assert!((t.span_ms - 9.0).abs() < 1e-9);
    let text = t.render();
    let expected = [
        format!("trace {} (4 messages, 9.0 ms)", root.correlation_id),
        "+0.0ms  a.req  [?]".to_owned(),
        "├─ +2.0ms  a.one  [m]".to_owned(),
        "│  +9.0ms  a.three  [?]".to_owned(),
        "└─ +5.0ms  a.two  [?]".to_owned(),
    ];
    assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{text}");
    // Pruning lifts children, kept in time order among their new siblings.
    let p = t.pruned(|n| n.topic != "a.one");
    let kids: Vec<&str> = p.roots[0]
        .children
        .iter()
        .map(|n| n.topic.as_str())
        .collect();
    assert_eq!(kids, vec!["a.two", "a.three"]);
}

#[test]
fn a_message_whose_parent_was_not_recorded_is_a_root() {
    let root = env("a.req", 0);
    let lost = env("a.lost", 1).caused_by(&root);
    let child = env("a.child", 2).caused_by(&lost);
    let t = Trace::build(root.correlation_id, std::slice::from_ref(&child));
    assert_eq!(t.roots.len(), 1);
    assert_eq!(t.roots[0].id, child.id);
}

#[tokio::test]
async fn trace_of_a_live_flow_through_components() {
    let bus = Bus::new();
    let recorder = TraceRecorder::start(&bus, 10_000).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let running = Assembly::new(&bus)
        .component(ComponentBuilder::new("ui", Role::Frontend, "ui").publishes("cpm.order.request"))
        .component(
            ComponentBuilder::new("cpm", Role::Cpm, "cpm")
                .publishes("shop.order.request")
                .on::<Note, _, _, _, _>("cpm.order.request", |n, cx| async move {
                    cx.publish_to("shop.order.request", n).await
                }),
        )
        .component(
            ComponentBuilder::new("shop-manager", Role::Manager, "shop").on::<Note, _, _, _, _>(
                "shop.order.request",
                move |n, cx| {
                    let tx = tx.clone();
                    async move {
                        let ctx = cx.begin("order").await?;
                        ctx.start().await?;
                        ctx.complete(&n.n).await?;
                        tx.send(cx.correlation_id())?;
                        Ok::<_, BoxError>(())
                    }
                },
            ),
        )
        .start()
        .await
        .unwrap();
    let ui = running.component_bus("ui").unwrap();
    let mut request = Note { n: 5 }.to_envelope().unwrap();
    request.topic = Topic::new("cpm.order.request").unwrap();
    let correlation = request.correlation_id.clone();
    ui.publish_envelope(request).await.unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, correlation);
    bus.run_until_idle().await;
    let t = recorder.trace(correlation);
    // request → shop.order.request → (pending, running, completed status updates, completion)
    assert_eq!(t.roots.len(), 1, "{}", t.render());
    let root = &t.roots[0];
    assert_eq!(root.topic, "cpm.order.request");
    assert_eq!(root.source.as_deref(), Some("ui"));
    let hop = &root.children[0];
    assert_eq!(hop.topic, "shop.order.request");
    assert_eq!(hop.source.as_deref(), Some("cpm"));
    let below: Vec<&str> = hop.children.iter().map(|n| n.topic.as_str()).collect();
    assert_eq!(
        below,
        vec![
            "shop.status.update",
            "shop.status.update",
            "shop.status.update",
            "shop.order.complete"
        ]
    );
    assert_eq!(t.len(), 6);
}
