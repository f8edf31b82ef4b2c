//! Which order a `BusHandoff` keeps (docs/pipelines.md, "Acknowledgement and restarts" and
//! "Order"): with several workers (`in_flight(n > 1)`, the default 64), messages of one
//! `ordering-key` still reach the pipeline one at a time, in publish order, as the log keeps
//! them; unkeyed ones may overtake each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_core::{Envelope, InMemoryDeadLetters, Topic};
use switchyard_pipeline::{BusHandoff, BusSource, Pipeline, Runner, stage_fn};

use crate::WAIT;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    key: String,
    seq: u32,
}

/// docs/pipelines.md "Order": per `ordering-key` header, publish order holds with the default
/// `in_flight` (64) on an in-memory bus: 400 messages over 4 keys. Before the fix the
/// hand-off's 64 workers raced to feed the pipeline and a key's message now and then overtook
/// an earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_handoff_keeps_per_key_order_with_many_in_flight() {
    let bus = switchyard::Bus::builder().build().unwrap();
    let topic = Topic::new("rev.order.steps").unwrap();
    let seen: Arc<std::sync::Mutex<Vec<(String, u32)>>> = Arc::default();
    let s = seen.clone();
    let p = Pipeline::new(stage_fn("record", move |step: Step| {
        s.lock().unwrap().push((step.key.clone(), step.seq));
        async move {
            // Some runs give way (not synchronisation): the workers' feeding interleaves.
            if step.seq.is_multiple_of(3) {
                tokio::task::yield_now().await;
            }
            Ok(())
        }
    }));
    let dlq = Arc::new(InMemoryDeadLetters::new(10));
    let mut running = Runner::new(p)
        .dead_letters(dlq.clone())
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    running.spawn_source(BusSource::<_, Step>::new(
        BusHandoff::new(bus.clone()),
        topic.clone(),
    ));
    // The source subscribes when it starts: probe with an undecodable envelope until one
    // is rejected (dead-lettered by the source).
    let probe = async {
        loop {
            bus.publish_envelope(Envelope::new(topic.clone(), "probe"))
                .await
                .unwrap();
            if !dlq.list().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, probe).await.unwrap();
    let keys = ["a", "b", "c", "d"];
    for seq in 0..400u32 {
        let key = keys[seq as usize % keys.len()];
        let payload = serde_json::to_vec(&Step {
            key: key.into(),
            seq,
        })
        .unwrap();
        let env = Envelope::new(topic.clone(), payload).with_header("ordering-key", key);
        bus.publish_envelope(env).await.unwrap();
    }
    assert!(
        monitor.wait_until(WAIT, |m| m.completed() == 400).await,
        "not every run completed"
    );
    running.shutdown().await;
    bus.shutdown(WAIT).await.unwrap();
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for (k, seq) in seen.lock().unwrap().iter() {
        per_key.entry(k.clone()).or_default().push(*seq);
    }
    for (k, seqs) in &per_key {
        assert_eq!(seqs.len(), 100, "key {k}");
        let out_of_order: Vec<_> = seqs.windows(2).filter(|w| w[0] > w[1]).collect();
        assert!(
            out_of_order.is_empty(),
            "key {k}: {} of 100 reached the pipeline before an earlier one of their key, e.g. {:?}",
            out_of_order.len(),
            &out_of_order[..out_of_order.len().min(3)]
        );
    }
}
