//! A typed pipeline (`BusSource` → stages → `BusSink`) on the embedded log, its process
//! restarted mid-stream: every input gives its output once. And a stage whose output type
//! changes version between the runs, read by a consumer with an upcaster.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_core::InMemoryDeadLetters;
use switchyard_pipeline::{BusHandoff, BusSink, BusSource, Pipeline, Runner, map_fn, stage_fn};
use tokio::sync::{Semaphore, oneshot};

use super::*;

const IN: &str = "rev29.pipe.in";
const OUT: &str = "rev29.pipe.out";
const N: u32 = 200;

mod out_v1 {
    use super::*;
    /// The stage's output in run 1: a total in whole units.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Total {
        pub input: u32,
        pub total: f64,
    }
    impl Message for Total {
        const TOPIC: &'static str = super::OUT;
    }
}
mod out_v2 {
    use super::*;
    /// The stage's output in run 2: cents.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Total {
        pub input: u32,
        pub total_cents: u64,
    }
    impl Message for Total {
        const TOPIC: &'static str = super::OUT;
        const VERSION: u32 = 2;
    }
}

fn log_bus(dir: &Path) -> Bus {
    Bus::builder()
        .transport(LogTransport::open(LogConfig::new(dir)).unwrap())
        .build()
        .unwrap()
}

/// One run of the pipeline process on the log at `dir`: `BusSource<u32>` → `f` → a gate that
/// lets `stop_after` runs through before the process is told to stop (then everything) →
/// `BusSink`; without `stop_after`, until `expect` runs completed (bounded by [`WAIT`]). Returns how many runs completed and the run's dead letters.
async fn run_process<O>(
    dir: &Path,
    f: fn(u32) -> O,
    stop_after: Option<u64>,
    expect: u64,
) -> (u64, Vec<DeadLetter>)
where
    O: Serialize + Send + Sync + 'static,
{
    let bus = log_bus(dir);
    let gate = Arc::new(Semaphore::new(
        stop_after.map_or(Semaphore::MAX_PERMITS, |n| n as usize),
    ));
    let g = gate.clone();
    let p: Pipeline<u32, ()> = Pipeline::new(map_fn("total", move |x: u32| Ok(f(x))))
        .then(stage_fn("gate", move |o: O| {
            let g = g.clone();
            async move {
                g.acquire().await.unwrap().forget();
                Ok(o)
            }
        }))
        .then(BusSink::<_, O>::new(
            BusHandoff::new(bus.clone()),
            Topic::new(OUT).unwrap(),
        ));
    let dlq = Arc::new(InMemoryDeadLetters::new(1000));
    let mut running = Runner::new(p)
        .dead_letters(dlq.clone())
        .drain_timeout(WAIT)
        .start()
        .await
        .unwrap();
    running.spawn_source(BusSource::<_, u32>::new(
        BusHandoff::new(bus.clone()),
        Topic::new(IN).unwrap(),
    ));
    let monitor = running.monitor().clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(running.run_until(async move {
        let _ = stop_rx.await;
    }));
    if let Some(target) = stop_after {
        assert!(
            monitor.wait_until(WAIT, |m| m.completed() >= target).await,
            "run 1 never reached {target} outputs"
        );
        // SIGTERM, as it were, mid-stream; the held runs may then finish (drain).
        stop_tx.send(()).unwrap();
        gate.add_permits(N as usize);
    } else {
        // Run until every input not completed before has been (bounded: a lost input times out
        // here and the caller's check names it).
        let _ = monitor.wait_until(WAIT, |m| m.completed() >= expect).await;
        stop_tx.send(()).unwrap();
    }
    let report = tokio::time::timeout(WAIT * 2, run)
        .await
        .expect("the runner's shutdown hangs")
        .unwrap();
    assert!(report.drained, "{report:?}");
    eprintln!(
        "pipeline run: accepted {} completed {} failed {} rejected {}",
        report.monitor.accepted,
        report.monitor.completed,
        report.monitor.failed,
        report.monitor.rejected
    );
    bus.shutdown(WAIT).await.unwrap();
    drop(bus);
    (report.monitor.completed, dlq.list())
}

async fn publish_inputs(dir: &Path, inputs: std::ops::Range<u32>) {
    let bus = log_bus(dir);
    for i in inputs {
        bus.publish_envelope(Envelope::new(
            Topic::new(IN).unwrap(),
            serde_json::to_vec(&i).unwrap(),
        ))
        .await
        .unwrap();
    }
    bus.shutdown(WAIT).await.unwrap();
}

/// Reads every output from the start with a typed v2 handler and the `Total` upcaster; returns
/// input → (total_cents, version) counted per input.
async fn outputs(dir: &Path) -> (BTreeMap<u32, Vec<(u64, u32)>>, Vec<DeadLetter>) {
    let ups = Upcasters::new().step_for::<out_v2::Total, _, _>(1, |mut v| {
        let t = v["total"].as_f64().ok_or("`total` is not a number")?;
        v["total_cents"] = json!((t * 100.0).round() as u64);
        Ok::<_, String>(v)
    });
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = bus_on(dir, Some(ups), Letters(ltx));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("reader", move |t: out_v2::Total, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((t, ctx.envelope().type_version))
                    .map_err(|e| e.to_string())
            }
        })
        .start()
        .await
        .unwrap();
    let mut got: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    let mut dead = Vec::new();
    let mut settled = 0;
    while settled < N {
        tokio::select! {
            Some((t, v)) = rx.recv() => { got.entry(t.input).or_default().push((t.total_cents, v)); }
            Some(l) = letters.recv() => dead.push(l),
            _ = tokio::time::sleep(WAIT) => break, // a bound, not synchronisation: nothing more came
        }
        settled = got.values().map(Vec::len).sum::<usize>() as u32 + dead.len() as u32;
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    while let Ok((t, v)) = rx.try_recv() {
        got.entry(t.input).or_default().push((t.total_cents, v));
    }
    bus.shutdown(WAIT).await.unwrap();
    (got, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "defect: a BusSource on the log stopped mid-stream loses the records it took but never fed (126 of 200 inputs, no dead letter)"]
async fn a_pipeline_restarted_mid_stream_gives_every_output_once() {
    let dir = tempfile::tempdir().unwrap();
    publish_inputs(dir.path(), 0..N).await;
    let f = |x: u32| out_v1::Total {
        input: x,
        total: f64::from(x),
    };
    let (done, dead1) = run_process(dir.path(), f, Some(10), 0).await;
    let (_, dead2) = run_process(dir.path(), f, None, u64::from(N) - done).await;
    let (got, dead) = outputs(dir.path()).await;
    let missing: Vec<u32> = (0..N).filter(|i| !got.contains_key(i)).collect();
    let twice: Vec<u32> = got
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| *k)
        .collect();
    assert!(
        missing.is_empty() && twice.is_empty() && dead.is_empty(),
        "lost {} inputs (first {:?}), {} produced twice (first {:?}); \
         run-1 dead letters: {} (first: {:?}), run-2: {}, reader: {}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>(),
        dead1.len(),
        dead1.first().map(|l| (&l.reason, &l.error)),
        dead2.len(),
        dead.len(),
    );
}

/// Run 1 writes `Total` v1 for the first half of the inputs, run 2 (after the upgrade)
/// `Total` v2 for the second half; a v2 consumer with the
/// `1 → 2` upcaster gets every output in cents, run 1's upcast (version 1), run 2's as they
/// are (version 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "defect: BusSink stamps type_version 1 on a VERSION = 2 output, so a v2 reader with an upcaster upcasts it and dead-letters it"]
async fn a_stage_output_that_changes_version_between_runs_is_upcast_only_where_old() {
    let dir = tempfile::tempdir().unwrap();
    // Run 1 handles the first half completely (no stop mid-stream: that is the test above).
    publish_inputs(dir.path(), 0..N / 2).await;
    run_process(
        dir.path(),
        |x| out_v1::Total {
            input: x,
            total: f64::from(x),
        },
        None,
        u64::from(N / 2),
    )
    .await;
    // The upgrade; the second half of the inputs arrives.
    publish_inputs(dir.path(), N / 2..N).await;
    run_process(
        dir.path(),
        |x| out_v2::Total {
            input: x,
            total_cents: u64::from(x) * 100,
        },
        None,
        u64::from(N / 2),
    )
    .await;
    let (got, dead) = outputs(dir.path()).await;
    let versions: BTreeMap<u32, usize> =
        got.values()
            .flatten()
            .fold(BTreeMap::new(), |mut m, (_, v)| {
                *m.entry(*v).or_default() += 1;
                m
            });
    assert!(
        dead.is_empty(),
        "{} outputs dead-lettered by the v2 reader (first: {:?}); versions seen: {versions:?}",
        dead.len(),
        dead.first().map(|l| (
            &l.reason,
            &l.error,
            l.envelope.type_name.clone(),
            l.envelope.type_version
        )),
    );
    for (input, outs) in &got {
        assert_eq!(
            outs[0].0,
            u64::from(*input) * 100,
            "input {input}: {outs:?}"
        );
    }
    assert_eq!(got.len() as u32, N);
    assert!(
        versions.contains_key(&2),
        "run 2's outputs are version 2: {versions:?}"
    );
}
