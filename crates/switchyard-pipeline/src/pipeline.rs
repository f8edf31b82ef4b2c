//! [`Pipeline`]: stages chained by type, with fan-out and fan-in, and the machinery that runs one
//! message (a *run*) through them.
//!
//! A pipeline is only a plan until a [`Runner`](crate::Runner) starts it. Starting spawns one task
//! per stage; stages are connected by unbounded channels, and the number of runs in flight is
//! bounded by the runner's semaphore, so the channels never hold more than that many items (times
//! the fan-out factor).
//!
//! Every item carries a run token. A run ends when its last token is settled (it reached the end
//! of the pipeline) or failed (a stage returned an error, panicked, or the item was dropped); the run
//! is then counted `completed` or `failed` in the monitor, its in-flight permit is released and, if
//! it failed, its origin goes to the dead-letter sink once.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use parking_lot::Mutex;
use smol_str::SmolStr;
use switchyard_core::{DeadLetter, DeadLetterReason, DeadLetterSink, Envelope, Topic};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::error::{StageError, StageErrorKind, StartError};
use crate::handoff::Settle;
use crate::monitor::{Monitor, OpRecorder};
use crate::runner::StopSignal;
use crate::stage::Stage;

/// Topic of dead letters for runs that had no origin envelope (fed without one).
pub(crate) const NO_ORIGIN_TOPIC: &str = "switchyard.pipeline.failed";

/// State shared by every run of one started pipeline.
pub(crate) struct Shared {
    pub(crate) monitor: Monitor,
    pub(crate) dead_letters: Arc<dyn DeadLetterSink>,
    pub(crate) semaphore: Arc<Semaphore>,
    /// The runner's `max_in_flight` (at least 1).
    pub(crate) max_in_flight: usize,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Shared {
    pub(crate) fn new(
        monitor: Monitor,
        dead_letters: Arc<dyn DeadLetterSink>,
        max_in_flight: usize,
    ) -> Self {
        Self {
            monitor,
            dead_letters,
            semaphore: Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS))),
            max_in_flight: max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    fn leave(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Runs started (or being started) and not yet ended.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no run is in flight, at most `limit`. Returns whether that happened.
    pub(crate) async fn wait_idle(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Starts a run: waits for an in-flight permit. Fails (returning `origin`) once intake is
    /// closed. Counting happens before waiting, so a shutdown that closed intake and then sees zero
    /// in flight knows no run can still start.
    pub(crate) async fn start_run(
        self: &Arc<Self>,
        origin: Option<Envelope>,
    ) -> Result<RunToken, Option<Envelope>> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let mut guard = InFlightGuard {
            shared: self.clone(),
            armed: true,
        };
        let Ok(permit) = self.semaphore.clone().acquire_owned().await else {
            return Err(origin);
        };
        // The run now owns the in-flight count; `Run::drop` gives it back.
        guard.armed = false;
        self.monitor.record_accepted();
        Ok(RunToken {
            run: Arc::new(Run {
                shared: self.clone(),
                origin,
                failed: AtomicBool::new(false),
                settles: Mutex::new(Vec::new()),
                _permit: permit,
            }),
            settled: false,
        })
    }
}

/// Decrements the in-flight count if a run start is abandoned (intake closed, or the starting
/// future dropped while waiting for a permit).
struct InFlightGuard {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.leave();
        }
    }
}

/// One message's trip through the pipeline.
struct Run {
    shared: Arc<Shared>,
    origin: Option<Envelope>,
    failed: AtomicBool,
    /// Settled (`done`) when the run ends: its input is acknowledged where it came from.
    settles: Mutex<Vec<Settle>>,
    _permit: OwnedSemaphorePermit,
}

impl Run {
    /// Marks the run failed; the first failure dead-letters the origin.
    fn fail(&self, stage: &str, error: &StageError, reason: DeadLetterReason) {
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let envelope = match &self.origin {
            Some(env) => env.clone(),
            None => match Topic::from_static(NO_ORIGIN_TOPIC) {
                Ok(topic) => Envelope::new(topic, bytes::Bytes::new()),
                Err(_) => return,
            },
        };
        self.shared.dead_letters.put(
            DeadLetter::new(envelope, reason, error.chain()).with_handler(SmolStr::new(stage)),
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if *self.failed.get_mut() {
            self.shared.monitor.record_failed();
        } else {
            self.shared.monitor.record_completed();
        }
        // Ended: completed, or failed and dead-lettered. Either way its input is settled.
        for settle in self.settles.get_mut().drain(..) {
            settle.done();
        }
        self.shared.leave();
    }
}

/// One branch of a run. Settle it when the branch reached the end, fail it when a stage failed;
/// dropping it unsettled fails the run as lost (dead-lettered with reason `Shutdown`).
pub(crate) struct RunToken {
    run: Arc<Run>,
    settled: bool,
}

impl RunToken {
    /// A token for one more branch of the same run.
    pub(crate) fn branch(&self) -> Self {
        Self {
            run: self.run.clone(),
            settled: false,
        }
    }

    /// This branch reached the end.
    pub(crate) fn settle(mut self) {
        self.settled = true;
    }

    /// This branch failed in `stage`.
    pub(crate) fn fail(mut self, stage: &str, error: &StageError) {
        self.settled = true;
        let reason = match error.kind {
            StageErrorKind::Decode => DeadLetterReason::DecodeFailed,
            StageErrorKind::Panicked => DeadLetterReason::Panicked,
            _ => DeadLetterReason::HandlerFailed,
        };
        self.run.fail(stage, error, reason);
    }

    /// `settle` is settled (`done`) when the run ends, completed or dead-lettered.
    pub(crate) fn on_end(&self, settle: Settle) {
        if settle.is_settleable() {
            self.run.settles.lock().push(settle);
        }
    }

    /// The raw message the run started from, if any.
    pub(crate) fn origin(&self) -> Option<&Envelope> {
        self.run.origin.as_ref()
    }
}

impl Drop for RunToken {
    fn drop(&mut self) {
        if !self.settled {
            self.run.fail(
                "pipeline",
                &StageError::new(
                    StageErrorKind::Unavailable,
                    "message dropped inside the pipeline before it finished (shutdown deadline or stopped stage)",
                ),
                DeadLetterReason::Shutdown,
            );
        }
    }
}

/// A value travelling through the pipeline with its run token.
pub(crate) struct Item<T> {
    pub(crate) value: T,
    pub(crate) token: RunToken,
}

/// Hands an item to whatever comes next (a stage's channel, a fan-out, the end).
pub(crate) type Emit<T> = Arc<dyn Fn(Item<T>) + Send + Sync>;

/// Task result: a stage's `finish` error, if any.
pub(crate) type TaskEnd = Result<(), (String, StageError)>;

/// What building a pipeline needs from the runner.
pub(crate) struct BuildCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stop: StopSignal,
    /// One per stage or hand-off task: its name and whether it initialised.
    pub(crate) ready: Vec<(String, oneshot::Receiver<Result<(), StartError>>)>,
    pub(crate) tasks: JoinSet<TaskEnd>,
}

type Build<In, Out> = Box<dyn FnOnce(Emit<Out>, &mut BuildCtx) -> Emit<In> + Send>;

/// Stages chained so that each one's output type is the next one's input type.
///
/// `Pipeline<In, Out>` takes `In` from a source and produces `Out` at its end. [`then`](Self::then)
/// only compiles when the next stage implements `Stage<Out, Next>`:
///
/// ```
/// use switchyard_pipeline::{map_fn, Pipeline, StageError};
/// let p: Pipeline<String, usize> = Pipeline::new(map_fn("trim", |s: String| Ok::<_, StageError>(s.trim().to_owned())))
///     .then(map_fn("len", |s: String| Ok::<_, StageError>(s.len())));
/// assert_eq!(p.describe(), "trim → len");
/// ```
///
/// ```compile_fail
/// use switchyard_pipeline::{map_fn, Pipeline, StageError};
/// // `len` takes a String but the previous stage yields a usize: does not compile.
/// let p = Pipeline::new(map_fn("count", |s: String| Ok::<_, StageError>(s.len())))
///     .then(map_fn("len", |s: String| Ok::<_, StageError>(s.len())));
/// ```
pub struct Pipeline<In, Out> {
    build: Build<In, Out>,
    names: Vec<String>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("stages", &self.names)
            .finish_non_exhaustive()
    }
}

impl<In, Out> Pipeline<In, Out>
where
    In: Send + 'static,
    Out: Send + 'static,
{
    /// A pipeline of one stage.
    pub fn new<S>(stage: S) -> Self
    where
        S: Stage<In, Out>,
    {
        let names = vec![stage.name().into_owned()];
        Self {
            build: Box::new(move |emit, ctx| spawn_stage(stage, emit, ctx)),
            names,
            _types: PhantomData,
        }
    }

    /// Appends a stage that takes this pipeline's output. Compiles only when the types line up.
    pub fn then<Next, S>(self, stage: S) -> Pipeline<In, Next>
    where
        S: Stage<Out, Next>,
        Next: Send + 'static,
    {
        let mut names = self.names;
        names.push(stage.name().into_owned());
        let prev = self.build;
        Pipeline {
            build: Box::new(move |emit, ctx| {
                let stage_input = spawn_stage(stage, emit, ctx);
                prev(stage_input, ctx)
            }),
            names,
            _types: PhantomData,
        }
    }

    /// Fan-out and fan-in: every output goes (cloned) to each branch; the branches' outputs merge
    /// into whatever follows. A run completes when every branch has reached the end, and fails if
    /// any branch fails. With no branches, outputs end the run here.
    ///
    /// ```
    /// use switchyard_pipeline::{map_fn, Pipeline, StageError};
    /// let p: Pipeline<u32, String> = Pipeline::new(map_fn("id", |x: u32| Ok::<_, StageError>(x)))
    ///     .fan_out(vec![
    ///         Pipeline::new(map_fn("hex", |x: u32| Ok::<_, StageError>(format!("{x:x}")))),
    ///         Pipeline::new(map_fn("dec", |x: u32| Ok::<_, StageError>(x.to_string()))),
    ///     ])
    ///     .then(map_fn("upper", |s: String| Ok::<_, StageError>(s.to_uppercase())));
    /// assert_eq!(p.describe(), "id → [hex | dec] → upper");
    /// ```
    pub fn fan_out<Next>(self, branches: Vec<Pipeline<Out, Next>>) -> Pipeline<In, Next>
    where
        Out: Clone,
        Next: Send + 'static,
    {
        let mut names = self.names;
        let branch_names: Vec<String> = branches.iter().map(|b| b.describe()).collect();
        names.push(format!("[{}]", branch_names.join(" | ")));
        let prev = self.build;
        Pipeline {
            build: Box::new(move |emit: Emit<Next>, ctx| {
                let inputs: Vec<Emit<Out>> = branches
                    .into_iter()
                    .map(|b| (b.build)(emit.clone(), ctx))
                    .collect();
                let fan: Emit<Out> = Arc::new(move |item: Item<Out>| {
                    let Item { value, token } = item;
                    match inputs.split_last() {
                        None => token.settle(),
                        Some((last, rest)) => {
                            for input in rest {
                                input(Item {
                                    value: value.clone(),
                                    token: token.branch(),
                                });
                            }
                            last(Item { value, token });
                        }
                    }
                });
                prev(fan, ctx)
            }),
            names,
            _types: PhantomData,
        }
    }

    /// Inserts a step that is not a [`Stage`] (used by the bus hand-off).
    pub(crate) fn then_node(
        self,
        name: String,
        node: impl FnOnce(Emit<Out>, &mut BuildCtx) -> Emit<Out> + Send + 'static,
    ) -> Pipeline<In, Out> {
        let mut names = self.names;
        names.push(name);
        let prev = self.build;
        Pipeline {
            build: Box::new(move |emit, ctx| {
                let input = node(emit, ctx);
                prev(input, ctx)
            }),
            names,
            _types: PhantomData,
        }
    }

    /// The stage names in order, joined by arrows; fan-outs in brackets.
    pub fn describe(&self) -> String {
        self.names.join(" → ")
    }

    /// Wires the stages, spawning one task each, and returns the pipeline's entry.
    pub(crate) fn build(self, end: Emit<Out>, ctx: &mut BuildCtx) -> Emit<In> {
        (self.build)(end, ctx)
    }
}

/// An emit that sends into a channel, failing the item's run if the receiving task is gone.
pub(crate) fn channel_emit<T: Send + 'static>(
    tx: mpsc::UnboundedSender<Item<T>>,
    receiver_name: SmolStr,
) -> Emit<T> {
    Arc::new(move |item: Item<T>| {
        if let Err(mpsc::error::SendError(item)) = tx.send(item) {
            item.token.fail(
                &receiver_name,
                &StageError::new(StageErrorKind::Unavailable, "stage task has stopped"),
            );
        }
    })
}

/// Text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match switchyard_core::error::panic_text(panic) {
        Some(s) => format!("stage panicked: {s}"),
        None => "stage panicked".to_owned(),
    }
}

fn spawn_stage<In, Out, S>(stage: S, downstream: Emit<Out>, ctx: &mut BuildCtx) -> Emit<In>
where
    S: Stage<In, Out>,
    In: Send + 'static,
    Out: Send + 'static,
{
    let name = SmolStr::new(stage.name());
    let (tx, rx) = mpsc::unbounded_channel::<Item<In>>();
    let (ready_tx, ready_rx) = oneshot::channel();
    ctx.ready.push((name.to_string(), ready_rx));
    let op = ctx.shared.monitor.op(&name, "run");
    // Owns the stage and its input channel. Stops when the channel closes or the stop signal
    // fires (the runner fires it only once no run is in flight), then calls `finish`.
    ctx.tasks.spawn(stage_task(
        stage,
        name.clone(),
        rx,
        downstream,
        op,
        ctx.stop.clone(),
        ready_tx,
    ));
    channel_emit(tx, name)
}

async fn stage_task<In, Out, S>(
    mut stage: S,
    name: SmolStr,
    mut rx: mpsc::UnboundedReceiver<Item<In>>,
    emit: Emit<Out>,
    op: OpRecorder,
    mut stop: StopSignal,
    ready: oneshot::Sender<Result<(), StartError>>,
) -> TaskEnd
where
    S: Stage<In, Out>,
    In: Send + 'static,
    Out: Send + 'static,
{
    let init = match AssertUnwindSafe(async { stage.init().await })
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(panic) => Err(StageError::new(
            StageErrorKind::Panicked,
            panic_message(panic.as_ref()),
        )),
    };
    if let Err(source) = init {
        let _ = ready.send(Err(StartError::Init {
            stage: name.to_string(),
            source,
        }));
        return Ok(());
    }
    let _ = ready.send(Ok(()));

    loop {
        // Fast path: take what is queued without arming the stop signal; wait on both only when
        // the queue is empty (the stop signal fires only once nothing is in flight).
        let item = match rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                biased;
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
                () = stop.stopped() => break,
            },
        };
        let Item { value, token } = item;
        let started = Instant::now();
        let result = // The call goes inside the async block so a stage that panics while building its future
        // (a synchronous closure) is caught too.
        AssertUnwindSafe(async { stage.run(value).await }).catch_unwind().await;
        let took = started.elapsed();
        match result {
            Ok(Ok(out)) => {
                op.success(took);
                emit(Item { value: out, token });
            }
            Ok(Err(e)) => {
                op.error(e.error_type());
                tracing::debug!(stage = %name, error = %e, "stage failed");
                token.fail(&name, &e);
            }
            Err(panic) => {
                let e = StageError::new(StageErrorKind::Panicked, panic_message(panic.as_ref()));
                op.error(e.error_type());
                tracing::warn!(stage = %name, error = %e, "stage panicked");
                token.fail(&name, &e);
            }
        }
    }
    // Anything still queued is dropped here; its tokens fail the runs as lost (only after a
    // drain deadline passed).
    drop(rx);
    match AssertUnwindSafe(async { stage.finish().await })
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err((name.to_string(), e)),
        Err(panic) => Err((
            name.to_string(),
            StageError::new(StageErrorKind::Panicked, panic_message(panic.as_ref())),
        )),
    }
}

/// Runs parked while their value crosses a bus hand-off, keyed by envelope id.
pub(crate) type Parked = Arc<Mutex<HashMap<switchyard_core::MessageId, RunToken>>>;
