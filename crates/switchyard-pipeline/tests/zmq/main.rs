//! ZeroMQ sources and sinks with typed payloads: a PULL source that dead-letters undecodable
//! frames with their raw bytes, and a PUB sink feeding a SUB source.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchyard_core::{DeadLetterReason, InMemoryDeadLetters};
use switchyard_pipeline::zmq::{ZmqPubSink, ZmqSource};
use switchyard_pipeline::{Monitor, Pipeline, Runner, StageError, map_fn};

mod feed;
mod limit;
mod review_rev6;
use feed::push_from_rust;

const WAIT: Duration = Duration::from_secs(120);

/// A sensor reading, as the data-pipeline example's sensor pipeline receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    id: u64,
    sensor: String,
    value: f64,
    #[serde(default)]
    unit: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_source_dead_letters_undecodable_frames_with_raw_bytes() {
    let source = ZmqSource::pull()
        .name("readings")
        .decode_json::<Reading>()
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap();
    let endpoint = source.endpoint().to_owned();
    let dlq = Arc::new(InMemoryDeadLetters::new(1000));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ids2 = ids.clone();
    let mut running = Runner::new(Pipeline::new(map_fn("ids", move |r: Reading| {
        ids2.lock().unwrap_or_else(|p| p.into_inner()).push(r.id);
        Ok::<_, StageError>(())
    })))
    .dead_letters(dlq.clone())
    .start()
    .await
    .unwrap();
    running.spawn_source(source);
    // Every 10th message is malformed; four kinds in five fail to decode into `Reading`. The fifth
    // (an unknown unit) decodes, since units are only checked by a later stage.
    let sent = push_from_rust(&endpoint, 500, 10).await;
    let monitor = running.monitor().clone();
    assert!(monitor.wait_until(WAIT, |m| m.settled() == 500).await);
    let report = running.run_until(std::future::ready(())).await;
    let m = &report.monitor;
    let undecodable: Vec<&Vec<u8>> = sent
        .malformed
        .iter()
        .filter(|p| serde_json::from_slice::<Reading>(p).is_err())
        .collect();
    assert_eq!(undecodable.len(), 40);
    assert_eq!(m.rejected, 40, "{m}");
    assert_eq!(m.completed, 460);
    assert_eq!(m.op("readings", "decode").unwrap().errors, 40);
    let letters = dlq.list();
    assert_eq!(letters.len(), 40);
    for l in &letters {
        assert_eq!(l.reason, DeadLetterReason::DecodeFailed);
        assert_eq!(l.handler.as_deref(), Some("readings"));
        assert_eq!(l.envelope.topic.as_str(), "zmq.ingress");
        assert!(undecodable.contains(&&l.envelope.payload.to_vec()));
    }
    assert_eq!(ids.lock().unwrap().len(), 460);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sink_feeds_a_sub_source() {
    // The publishing pipeline: readings → PUB socket as [b"readings", json].
    let sink = ZmqPubSink::bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .topic_frame(Bytes::from_static(b"readings"))
        .encode_json::<Reading>();
    let endpoint = sink.endpoint().to_owned();
    let publisher = Runner::new(Pipeline::new(sink)).start().await.unwrap();
    let publish = publisher.feed();

    // The subscribing pipeline: SUB socket (prefix "readings") → collect ids.
    let source = ZmqSource::sub(["readings"])
        .decode_json::<Reading>()
        .connect(&endpoint)
        .await
        .unwrap();
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = received.clone();
    let sub_monitor = Monitor::new();
    let mut subscriber = Runner::new(Pipeline::new(map_fn("collect", move |x: Reading| {
        r.lock().unwrap_or_else(|p| p.into_inner()).push(x.id);
        Ok::<_, StageError>(())
    })))
    .monitor(sub_monitor.clone())
    .start()
    .await
    .unwrap();
    subscriber.spawn_source(source);

    let reading = |id| Reading {
        id,
        sensor: "s".into(),
        value: 1.0,
        unit: None,
    };
    // PUB drops messages until the subscription has reached it (slow joiner): publish probes until
    // one arrives, waiting on the subscriber's monitor each time.
    let mut probe = 1_000_000;
    while !sub_monitor
        .wait_until(Duration::from_millis(50), |m| m.completed() > 0)
        .await
    {
        publish.send(reading(probe)).await.unwrap();
        probe += 1;
        assert!(
            probe < 1_000_200,
            "subscription never reached the publisher"
        );
    }
    let probes = sub_monitor.completed();
    for id in 0..200 {
        publish.send(reading(id)).await.unwrap();
    }
    assert!(
        sub_monitor
            .wait_until(WAIT, |m| m.completed() >= probes + 200)
            .await,
        "{}",
        sub_monitor.snapshot()
    );
    let pub_report = publisher.shutdown().await;
    let sub_report = subscriber.run_until(std::future::ready(())).await;
    assert_eq!(pub_report.monitor.failed, 0);
    let got: BTreeSet<u64> = received
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|id| *id < 1_000_000)
        .collect();
    assert_eq!(got, (0..200).collect());
    assert_eq!(sub_report.monitor.rejected, 0);
}
