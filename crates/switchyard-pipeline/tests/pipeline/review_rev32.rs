//! Review rev32, outside in: a typed pipeline's bus hand-offs stay in the flow of the run
//! (docs/pipelines.md: `via_bus` "encodes each value as JSON into an Envelope (correlation and
//! causation ids taken from the run's origin)").

use std::time::Duration;

use switchyard_core::{Envelope, Outcome, Topic};
use switchyard_pipeline::{BusHandoff, Pipeline, Runner, map_fn};

use crate::collector;

const WAIT: Duration = Duration::from_secs(10);

/// Promise (pipelines.md `via_bus`): a run started by an envelope another publisher put on the
/// first hand-off topic (correlation `corr-r32-pipe`) crosses a second hand-off: the envelope
/// the pipeline publishes there carries the origin's correlation id and names the origin as
/// its cause.
#[tokio::test]
async fn a_run_from_a_foreign_envelope_keeps_its_flow_across_the_next_hand_off() {
    let bus = switchyard::Bus::new();
    let (t1, t2) = (
        Topic::new("r32p.one").unwrap(),
        Topic::new("r32p.two").unwrap(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _tap = bus
        .subscribe(
            "r32p-tap",
            "r32p.two",
            switchyard::handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(env);
                    Ok::<_, std::convert::Infallible>(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let (out, collect) = collector::<u32>();
    let pipeline = Pipeline::new(map_fn("inc", |x: u32| Ok(x + 1)))
        .via_bus(BusHandoff::new(bus.clone()), t1.clone())
        .then(map_fn("double", |x: u32| Ok(x * 2)))
        .via_bus(BusHandoff::new(bus.clone()), t2.clone())
        .then(collect);
    let running = Runner::new(pipeline)
        .max_in_flight(4)
        .start()
        .await
        .unwrap();
    let monitor = running.monitor().clone();
    let origin = Envelope::new(t1, "5").with_correlation_id("corr-r32-pipe".parse().unwrap());
    bus.publish_envelope(origin.clone()).await.unwrap();
    assert!(monitor.wait_until(WAIT, |m| m.completed() == 1).await);
    assert_eq!(*out.lock().unwrap(), [10]);
    let hop = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hop.correlation_id.to_string(), "corr-r32-pipe", "{hop:?}");
    assert_eq!(hop.causation_id(), Some(&origin.id), "{hop:?}");
    let _ = running.run_until(std::future::ready(())).await;
}
