//! The drain deadline runs on tokio's clock, the one its waits use: on a paused clock, virtual
//! time that passed before the shutdown does not count against `drain_timeout`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchyard_pipeline::{
    Feed, Pipeline, Runner, Source, SourceError, Stage, StageError, StopSignal, map_fn,
};

/// A source that, told to stop, takes a (virtual) second to wind down, then notes it finished.
struct SlowToStop(Arc<AtomicBool>);

impl Source<u32> for SlowToStop {
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("slow-to-stop")
    }

    async fn run(self, _feed: Feed<u32>, mut stop: StopSignal) -> Result<(), SourceError> {
        stop.stopped().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// A stage whose `finish` (a flush) takes a (virtual) second.
struct SlowFinish(Arc<AtomicBool>);

impl Stage<u32, u32> for SlowFinish {
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed("flush")
    }

    async fn run(&mut self, input: u32) -> Result<u32, StageError> {
        Ok(input)
    }

    async fn finish(&mut self) -> Result<(), StageError> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// An hour of virtual time passes before the shutdown; with a 30 s drain deadline the source's
/// and the stage's one-second wind-down still fit, so neither is aborted, and the shutdown
/// took those seconds on the same clock.
#[tokio::test(start_paused = true)]
async fn virtual_time_before_shutdown_does_not_count_against_the_drain_deadline() {
    let (source_done, finish_done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let pipeline =
        Pipeline::new(SlowFinish(finish_done.clone())).then(map_fn("id", |x: u32| Ok(x)));
    let mut running = Runner::new(pipeline)
        .drain_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    running.spawn_source(SlowToStop(source_done.clone()));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let report = running.shutdown().await;
    assert!(report.drained);
    assert!(
        source_done.load(Ordering::SeqCst),
        "the source was aborted before it stopped"
    );
    assert!(
        finish_done.load(Ordering::SeqCst),
        "the stage was aborted before its finish ended"
    );
    assert!(report.finish_errors.is_empty());
    assert!(
        report.shutdown_took >= Duration::from_secs(2)
            && report.shutdown_took < Duration::from_secs(30),
        "{:?}",
        report.shutdown_took
    );
}
