//! Commands run on their sender's task: when a command handler has a free worker slot and
//! nothing queued ahead, the sender takes the slot and runs the handler itself, instead of
//! queueing the command and waking a worker (two task switches and a wake-up saved).
//!
//! The first attempt is made at once, with the sender's task context (`try_inline_now`, or
//! an [`InlineRun`]'s first poll): the handler is called and its future polled once, inside
//! the delivered scope and the panic capture, as a worker's first attempt at an event. Acked
//! or replied there, the command is answered and settled on the spot. Anything else goes on
//! in the run, the worker's (`SubShared::process`: attempts, retries, layers, panic capture,
//! lifecycle events, dead letters, the answer), only on another task. What holds as on the
//! queue path:
//! - the worker limit: the run holds one of the handler's worker slots (`queue/inline.rs`), so
//!   a handler with `workers(n)` never handles more than `n` commands at once;
//! - order: a slot is only taken when nothing waits in the queue and no worker holds the
//!   command's lane, and messages queued meanwhile go to a worker once the slot is free;
//! - accounting: the command is pending from the moment it is taken, in flight for the
//!   shutdown report, and settled like a worker's message;
//! - an accepted command is handled even when its sender stops waiting: a run whose sender's
//!   future is dropped (a request's deadline, a `select!`) goes on in a task of its own;
//! - shutdown waits for runs until its deadline, then stops them as it aborts workers: the
//!   command is reported left over and dead-lettered, its sender gets `NotProcessed`.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use smol_str::SmolStr;
use switchyard_core::Envelope;
use tower::Service;

use switchyard_core::{DeliveryInfo, Outcome, delivered};

use crate::attempt::attempts_taken;
use crate::dispatch::{Attempt, Started, YIELD_EVERY, publishes_lifecycle, start_call};
use crate::handler::{SingleFuture, SingleHandler};
use crate::pending::Settled;
use crate::reply::{Answer, Answered, CommandReply, TypedValue};
use crate::state::{BusInner, SubShared, TypedSlot};
use crate::stats::inc;

/// A run's box: the run while it goes on, empty (`None`) once it was kept for the next run.
/// Pinned, so the run can wait in it; refilled in place with `Pin::set`.
type Cell<F> = Pin<Box<OptionFuture<F>>>;

/// Emptied run boxes kept on this thread for its next runs (at most this many).
const KEPT_CELLS: usize = 2;

thread_local! {
    /// Inline runs finished on this thread, modulo [`YIELD_EVERY`].
    static RUNS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts an inline run finished on this thread; true every [`YIELD_EVERY`]th (the workers'
/// rule): its sender then yields, so that a sender whose handler never waits does not keep the thread from
/// other tasks.
#[inline]
pub(crate) fn yield_due() -> bool {
    RUNS.try_with(|runs| {
        let n = runs.get() + 1;
        let due = n >= YIELD_EVERY;
        runs.set(if due { 0 } else { n });
        due
    })
    .unwrap_or(false)
}

thread_local! {
    /// The emptied boxes of runs finished on this thread, a `Vec<Cell<F>>` for the one
    /// future type `F` of [`run`] (its type cannot be named, so it is kept as `Any`): a
    /// run's ~1 KB box is not allocated and freed per command, and taking or keeping one
    /// takes no lock. Kept per thread rather than per handler, as `run` is one type for
    /// every handler; at most [`KEPT_CELLS`] per thread.
    static CELLS: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// An empty run box of type `Cell<F>` kept on this thread, if any (`F` is inferred from
/// `_run`, the function whose future it holds).
fn take_cell<F: 'static, A>(_run: fn(A) -> F) -> Option<Cell<F>> {
    CELLS
        .try_with(|cells| {
            cells
                .borrow_mut()
                .as_mut()
                .and_then(|cells| cells.downcast_mut::<Vec<Cell<F>>>())
                .and_then(Vec::pop)
        })
        .ok()
        .flatten()
}

/// Keeps the emptied `cell` on this thread for its next run (dropped when enough are kept).
fn keep_cell<F: 'static>(cell: Cell<F>) {
    let _ = CELLS.try_with(|cells| {
        let mut cells = cells.borrow_mut();
        let cells = cells.get_or_insert_with(|| Box::new(Vec::<Cell<F>>::new()));
        if let Some(cells) = cells.downcast_mut::<Vec<Cell<F>>>()
            && cells.len() < KEPT_CELLS
        {
            cells.push(cell);
        }
    });
}

/// An inline command's handling in its box (a `Cell`, always filled while it goes on).
trait Run: Future<Output = Option<InlineOutput>> + Send {
    /// The run has finished: its box is emptied and kept for the next run on this thread.
    fn recycle(self: Pin<Box<Self>>);
}

impl<F> Run for OptionFuture<F>
where
    F: Future<Output = InlineOutput> + Send + 'static,
{
    fn recycle(mut self: Pin<Box<Self>>) {
        self.as_mut().set(None.into());
        keep_cell::<F>(self);
    }
}

/// A command being handled on its sender's task. Awaiting it runs the handler and gives the
/// answer (`None` when shutdown stopped it) and the handler's subscription, which the run's
/// slot holds meanwhile (`None` when polled again after that); dropping it before it finished
/// hands the rest of the run to a task of its own.
///
/// Its first poll makes the first attempt itself, on the stack, as a worker does for an
/// event: the handler is called and its future polled once, inside the delivered scope and
/// the panic capture. Acked or replied then (a handler that does not wait), the command is
/// answered and settled there. Only a call that waits, an attempt that did not succeed, or
/// (the whole command) one on a bus that publishes lifecycle events is handed to the run in
/// its box (the worker's `SubShared::process`, with its retries,
/// lifecycle events, dead letters and shutdown's deadline), polled at once.
pub(crate) struct InlineRun(Stage);

/// Where an [`InlineRun`] is.
enum Stage {
    /// Its slot taken, not polled yet.
    Taken(Taken),
    /// Handled in its box.
    Running(BoxedRun),
    /// Finished (or being changed from one stage to the next).
    Done,
}

/// A command whose worker slot its sender took: what the run is made of.
struct Taken {
    slot: Slot,
    svc: SingleHandler,
    env: Arc<Envelope>,
    reply: CommandReply,
}

/// How far an inline command got before its run was boxed.
enum Begun {
    /// Nothing done yet: the run makes every attempt.
    Fresh,
    /// The first attempt ended neither acked nor replied: how, and its delivery bookkeeping.
    Made(Attempt, DeliveryInfo),
    /// The first attempt's call waits: its future, its delivery bookkeeping, and the typed
    /// output it left so far.
    Calling(SingleFuture, DeliveryInfo, Option<TypedValue>),
}

/// How [`SubShared::try_inline_now`] left a command it took.
pub(crate) enum Handled {
    /// Its first attempt ended it: the answer and the subscription handed back.
    Now(InlineOutput),
    /// It goes on in its run, to be awaited.
    Later(InlineRun),
}

/// What [`InlineRun`] gives: the answer and the subscription handed back.
pub(crate) type InlineOutput = (Option<Answered>, Option<Arc<SubShared>>);

/// A command [`SubShared::try_inline`] did not take, handed back to be queued.
pub(crate) struct Refused {
    pub(crate) sub: Arc<SubShared>,
    pub(crate) env: Arc<Envelope>,
    pub(crate) reply: CommandReply,
}

/// A run in its box, its type erased.
type BoxedRun = Pin<Box<dyn Run>>;

impl Future for InlineRun {
    type Output = InlineOutput;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<InlineOutput> {
        let run = match &mut self.0 {
            Stage::Running(run) => run,
            Stage::Done => return Poll::Ready((None, None)),
            Stage::Taken(_) => {
                let Stage::Taken(taken) = std::mem::replace(&mut self.0, Stage::Done) else {
                    return Poll::Ready((None, None));
                };
                match taken.first_attempt(cx) {
                    Ok(output) => return Poll::Ready(output),
                    Err(run) => self.0 = Stage::Running(run),
                }
                let Stage::Running(run) = &mut self.0 else {
                    return Poll::Ready((None, None));
                };
                run
            }
        };
        // A panic out of the run (none is expected: the handler's polls and drops are
        // captured inside it) leaves it done, so that its drop does not spawn the panicked
        // run again; its slot and count are released as the box is dropped.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.as_mut().poll(cx)));
        let output = match polled {
            Ok(Poll::Ready(output)) => output,
            Ok(Poll::Pending) => return Poll::Pending,
            Err(panic) => {
                self.0 = Stage::Done;
                std::panic::resume_unwind(panic)
            }
        };
        // A filled box gives `Some`; the emptied box is kept for this thread's next run (the
        // handler clone went back with the slot, at the run's end).
        if let Stage::Running(run) = std::mem::replace(&mut self.0, Stage::Done) {
            run.recycle();
        }
        Poll::Ready(output.unwrap_or((None, None)))
    }
}

impl Drop for InlineRun {
    fn drop(&mut self) {
        let run = match std::mem::replace(&mut self.0, Stage::Done) {
            Stage::Running(run) => run,
            Stage::Taken(taken) => taken.boxed(Begun::Fresh),
            Stage::Done => return,
        };
        // The sender stopped waiting: the command was accepted, so it is handled all the
        // same (its answer is discarded), as a queued one would be. Without a runtime
        // (being dropped with it) it goes as a worker's message would: its slot and
        // count are released by the run's guard.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run);
        }
    }
}

impl Taken {
    /// The first attempt, made now with the task's context `cx`: the answer when the call
    /// ended acked or replied at its first poll; else the run that goes on from there, in
    /// its box (polled by the caller at once).
    #[inline(always)] // built in place by `try_inline_now`, not moved into a call
    fn first_attempt(self, cx: &mut Context<'_>) -> Result<InlineOutput, BoxedRun> {
        let Taken {
            slot,
            mut svc,
            env,
            reply,
        } = self;
        let Some(sub) = slot.sub.as_deref() else {
            // Never: the slot holds the subscription until it is finished.
            return Ok((None, None));
        };
        if publishes_lifecycle(&slot.bus, &env) {
            // Its events are published around the attempts: all of it in the run.
            return Err(Taken {
                slot,
                svc,
                env,
                reply,
            }
            .boxed(Begun::Fresh));
        }
        let stamp = sub.next_attempt(env.delivery, switchyard_core::clock::now);
        let mut call = || {
            delivered::within(Arc::clone(&env), || {
                start_call(&mut svc, &env, stamp, &slot.bus, cx)
            })
        };
        let (started, typed) = match reply.typed {
            None => (call(), None),
            // A typed sender here takes the typed handler's output as it is.
            Some(wanted) => {
                let mut slot = TypedSlot::new(wanted, &env, None);
                let started = slot.within(call);
                (started, slot.into_value())
            }
        };
        let begun = match started {
            // The envelope is let go of before the slot is given back, which keeps its block
            // for this thread's next command when it is the last holder (`queue/spare.rs`).
            Started::Ended(Ok(Ok(Outcome::Ack))) => {
                let attempts = attempts_taken(&env.id, stamp.attempt);
                drop(env);
                return Ok(answered(slot, svc, reply, None, typed, attempts));
            }
            Started::Ended(Ok(Ok(Outcome::Reply(r)))) => {
                let attempts = attempts_taken(&env.id, stamp.attempt);
                drop(env);
                return Ok(answered(slot, svc, reply, Some(r), typed, attempts));
            }
            Started::Ended(other) => {
                Begun::Made(sub.classify_rare(other, &env, stamp.attempt), stamp)
            }
            Started::Pending(fut) => Begun::Calling(fut, stamp, typed),
        };
        Err(Taken {
            slot,
            svc,
            env,
            reply,
        }
        .boxed(begun))
    }

    /// The run, in a box kept on this thread if there is one.
    fn boxed(self, begun: Begun) -> BoxedRun {
        // Taken before the run is made, so that the run is written into it.
        let kept = take_cell(run);
        let run_of = run((self, begun));
        // A kept box is refilled where it is; a new one only when none was kept.
        match kept {
            Some(mut cell) => {
                cell.as_mut().set(Some(run_of).into());
                cell
            }
            None => Box::pin(OptionFuture::from(Some(run_of))),
        }
    }
}

/// A command acked or replied at its first attempt: answered, its slot given back, settled.
#[inline]
fn answered(
    slot: Slot,
    svc: SingleHandler,
    reply: CommandReply,
    r: Option<Box<Envelope>>,
    typed: Option<TypedValue>,
    attempts: u32,
) -> InlineOutput {
    if let Some(sub) = &slot.sub {
        inc(&sub.counters.acked);
    }
    let answer = reply.send(Ok(Answer {
        reply: r,
        typed,
        attempts,
    }));
    let sub = slot.finish(Some(true), svc);
    (answer, sub)
}

/// An inline run's slot and pending count: given back when the run ends, or when its future
/// is dropped unfinished. It holds the run's references to the handler's subscription (handed
/// back to the sender at the end: the sender's own, moved in, not counted again) and to the
/// bus, and is the command's pending guard itself ([`Pending::accept_held`]): a run counts no
/// reference of its own.
///
/// [`Pending::accept_held`]: crate::pending::Pending::accept_held
struct Slot {
    /// `None` once handed back by [`finish`](Self::finish).
    sub: Option<Arc<SubShared>>,
    bus: Arc<BusInner>,
    seq: u64,
    lane: Option<SmolStr>,
    /// The command is counted pending until the slot is finished or dropped.
    counted: bool,
}

impl Slot {
    /// The run ended: `Some(handled)` as the worker settles a message, `None` when shutdown
    /// stopped it (in flight for the report; the count goes unsettled, as an aborted
    /// worker's). Gives the subscription back.
    /// `handler`: the run's handler clone, kept for the next run.
    fn finish(mut self, ended: Option<bool>, handler: SingleHandler) -> Option<Arc<SubShared>> {
        let counted = std::mem::take(&mut self.counted);
        let sub = self.sub.take();
        if let Some(sub) = &sub {
            sub.finish_inline(self.seq, self.lane.as_ref(), ended.is_none(), Some(handler));
        }
        if counted {
            match ended {
                Some(true) => self.bus.pending.settle_held(Settled::Acked),
                Some(false) => self.bus.pending.settle_held(Settled::DeadLettered),
                None => self.bus.pending.release_held(),
            }
        }
        sub
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if std::mem::take(&mut self.counted) {
            if let Some(sub) = &self.sub {
                sub.finish_inline(self.seq, self.lane.as_ref(), false, None);
            }
            self.bus.pending.release_held();
        }
    }
}

impl SubShared {
    /// Takes a worker slot for a command whose handler can take it right now, and returns its
    /// run, which answers on `reply` as the worker would (a [kept](CommandReply::kept) reply's
    /// answer is the run's output) and holds `self` until it hands it back; the command back
    /// (it is queued instead) when the handler does not run inline, a rule stands in the way
    /// (see `Queue::try_take_inline`) or the handler is not ready. Everything is passed by
    /// value, so a run moves the sender's pointers instead of counting them up and down.
    #[allow(clippy::result_large_err)] // the command goes back by value, to be queued
    pub(crate) fn try_inline(
        self: Arc<Self>,
        bus: &Arc<BusInner>,
        env: Arc<Envelope>,
        lane: Option<&SmolStr>,
        reply: CommandReply,
    ) -> Result<InlineRun, Refused> {
        self.take_slot(bus, env, lane, reply)
            .map(|taken| InlineRun(Stage::Taken(taken)))
    }

    /// [`try_inline`](Self::try_inline), with the first attempt made at once, with the
    /// sender's task context `cx` (as the run's first poll would make it): the answer, when
    /// it ended there, without the run's future being moved through the send's layers.
    #[allow(clippy::result_large_err)] // the command goes back by value, to be queued
    pub(crate) fn try_inline_now(
        self: Arc<Self>,
        bus: &Arc<BusInner>,
        env: Arc<Envelope>,
        lane: Option<&SmolStr>,
        reply: CommandReply,
        cx: &mut Context<'_>,
    ) -> Result<Handled, Refused> {
        let taken = self.take_slot(bus, env, lane, reply)?;
        Ok(match taken.first_attempt(cx) {
            Ok(output) => Handled::Now(output),
            Err(run) => Handled::Later(InlineRun(Stage::Running(run))),
        })
    }

    /// The slot and what the run is made of (see [`try_inline`](Self::try_inline)).
    #[allow(clippy::result_large_err)] // the command goes back by value, to be queued
    #[inline(always)]
    fn take_slot(
        self: Arc<Self>,
        bus: &Arc<BusInner>,
        env: Arc<Envelope>,
        lane: Option<&SmolStr>,
        reply: CommandReply,
    ) -> Result<Taken, Refused> {
        let Some((seq, mut svc)) = self.queue.try_take_inline(&env, lane) else {
            return Err(Refused {
                sub: self,
                env,
                reply,
            });
        };
        // Polled once: a handler that cannot take the command now (an open breaker, a rate
        // limit) leaves it to the queue, as a worker would. Nothing waits on this waker.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.poll_ready(&mut cx)));
        if !matches!(ready, Ok(Poll::Ready(Ok(())))) {
            self.finish_inline(seq, lane, false, Some(svc));
            return Err(Refused {
                sub: self,
                env,
                reply,
            });
        }
        bus.pending.accept_held();
        let slot = Slot {
            sub: Some(self),
            bus: Arc::clone(bus),
            seq,
            lane: lane.cloned(),
            counted: true,
        };
        Ok(Taken {
            slot,
            svc,
            env,
            reply,
        })
    }
}

/// Handles the command as a worker would, with the handler seen ready just now, from where
/// `begun` says the first attempt got; gives the answer and the subscription; its slot and
/// handler clone are given back as it ends. One tuple argument, so that `take_cell` can name
/// the future's type through `run`'s.
async fn run((taken, begun): (Taken, Begun)) -> InlineOutput {
    let Taken {
        slot,
        mut svc,
        env,
        reply,
    } = taken;
    let Some(sub) = slot.sub.as_ref() else {
        // Never: the slot holds the subscription until it is finished.
        return (None, None);
    };
    // A kept reply (a sender on this task): the handling hands the answer back.
    let mut answer = None;
    let ended = {
        let process = async {
            let first = match begun {
                Begun::Fresh => None,
                Begun::Made(made, stamp) => Some((made, stamp)),
                Begun::Calling(fut, stamp, typed) => {
                    // Polled by `first_attempt` just now, with this task's waker.
                    let call = sub.finish_call(&mut svc, fut, &env, true);
                    let (result, typed) = match reply.typed {
                        None => (call.await, None),
                        Some(wanted) => TypedSlot::new(wanted, &env, typed).around(call).await,
                    };
                    let made = sub.classify(result, &env, stamp.attempt);
                    if let Attempt::Done(r) = made {
                        let attempts = attempts_taken(&env.id, stamp.attempt);
                        // Let go of before the slot is given back (see `first_attempt`).
                        drop(env);
                        inc(&sub.counters.acked);
                        answer = reply.send(Ok(Answer {
                            reply: r,
                            typed,
                            attempts,
                        }));
                        return true;
                    }
                    Some((made, stamp))
                }
            };
            // After a first attempt, the handler's readiness is polled again before the next.
            let ready = first.is_none();
            sub.process(
                &slot.bus,
                &mut svc,
                env,
                Some(reply),
                ready,
                first,
                &mut answer,
                false,
            )
            .await
                == crate::dispatch::Handled::Done
        };
        // In an `Option`, so that a run stopped at the shutdown deadline drops the handler's
        // future under a panic capture (see below).
        let mut process = std::pin::pin!(OptionFuture::from(Some(process)));
        match futures_util::poll!(process.as_mut()) {
            Poll::Ready(handled) => handled,
            // It waits: from now on, shutdown's deadline may stop it.
            Poll::Pending => {
                // Boxed: only a run that waits needs it.
                let mut aborted = Box::pin(sub.queue.inline_aborted().fuse());
                // The run was polled just now with this task's waker: the first poll here
                // only arms the abort, the run's next poll waits for a wake (a `select!`
                // polled it again at once, a second poll per waiting command; review rev1).
                let mut just_polled = true;
                // Stopped first: a run the shutdown reported in flight (its sender had not
                // polled it by then) must not call its handler again, as an aborted worker's
                // message is not handled either.
                // The handler's future is dropped here, on the sender's task: a `Drop` of
                // the application's that panics stays in the bus, as it does for a worker's
                // call aborted with its task (review rev1), and the run ends stopped, its
                // message in flight for the report.
                std::future::poll_fn(|cx| {
                    if aborted.as_mut().poll(cx).is_ready() {
                        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                            || process.as_mut().set(None.into()),
                        ));
                        if dropped.is_err() {
                            tracing::error!(
                                subscription = %sub.name(),
                                "a command handler's future panicked while it was dropped at the shutdown deadline"
                            );
                        }
                        return Poll::Ready(None);
                    }
                    if !std::mem::take(&mut just_polled)
                        && let Poll::Ready(handled) = process.as_mut().poll(cx)
                    {
                        return Poll::Ready(handled);
                    }
                    Poll::Pending
                })
                .await
            }
        }
    };
    let sub = slot.finish(ended, svc);
    (answer, sub)
}
