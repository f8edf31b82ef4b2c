//! Putting the hand-off between two stages on the bus.
//!
//! [`Handoff`] is the small contract this crate needs from a bus: publish an [`Envelope`] and
//! receive the envelopes published on a topic, each with how to [`Settle`] it.
//! [`InMemoryHandoff`] implements it in-process (nothing to acknowledge). [`BusHandoff`]
//! implements it over the switchyard bus (`switchyard::Bus`), in memory or on a durable
//! transport (the embedded log, NATS), so a hand-off can cross processes and machines without
//! any change to the stage code: a received envelope is acknowledged once its run ended, and
//! one never fed to a run (still buffered at a stop) is handed back to the transport.
//!
//! Two ways to use it:
//! - [`Pipeline::via_bus`]: the values flowing out of the pipeline so far are published on a topic
//!   and the next stage receives them from the subscription. Runs keep their accounting across the
//!   hop (the run waits, in flight, until its envelope comes back). Envelopes published on the
//!   topic by someone else wait for a slot in a bounded intake, never in front of the pipeline's
//!   own envelopes.
//! - [`BusSink`] (end of one pipeline) and [`BusSource`] (start of another): the split across
//!   processes; each side counts its own runs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::Stream;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use smol_str::SmolStr;
use switchyard_core::message::set_typed_fields;
use switchyard_core::{DeadLetter, DeadLetterReason, Envelope, Message, Topic};
use tokio::sync::{mpsc, oneshot};

use crate::error::{HandoffError, SourceError, StageError, StageErrorKind, StartError};
use crate::monitor::OpRecorder;
use crate::pipeline::{Emit, Item, Parked, Pipeline, RunToken, Shared, channel_emit};
use crate::runner::{DEFAULT_MAX_IN_FLIGHT, Feed, Source, StopSignal};
use crate::stage::Stage;

/// How an envelope received through a [`Handoff`] is settled where it came from.
///
/// [`done`](Self::done) once the envelope's run ended (its output produced, or it was
/// dead-lettered): a durable bus then acknowledges it. Dropped without `done` (received but
/// never fed to a run, e.g. still buffered when the pipeline stopped), the envelope is handed
/// back to where it came from, which delivers it again (on the embedded log or NATS, to the
/// same consumer group, after a restart too). [`Settle::none`] settles nothing: an in-memory
/// hand-off has nothing to acknowledge and nowhere to hand an envelope back to.
#[derive(Debug, Default)]
pub struct Settle {
    tx: Option<oneshot::Sender<()>>,
}

impl Settle {
    /// Nothing to settle (nothing to hand back to either).
    pub fn none() -> Self {
        Self::default()
    }

    /// A settle and the receiver its source waits on: it resolves `Ok(())` on
    /// [`done`](Self::done) and with an error when the settle was dropped unsettled (hand the
    /// envelope back).
    pub fn channel() -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self { tx: Some(tx) }, rx)
    }

    /// The envelope is settled: its run ended.
    pub fn done(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }

    /// Whether dropping this settle hands its envelope back to a source that takes it back
    /// (so whoever drops it need not dead-letter the envelope).
    pub fn can_hand_back(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Whether anyone waits for this settle.
    pub(crate) fn is_settleable(&self) -> bool {
        self.tx.is_some()
    }
}

/// One envelope received through a [`Handoff`] subscription, with how to settle it.
#[derive(Debug)]
pub struct Received {
    /// The envelope.
    pub envelope: Envelope,
    /// Settle it once its run ended; drop it unsettled to hand the envelope back.
    pub settle: Settle,
}

impl Received {
    /// An envelope with nothing to settle ([`Settle::none`]).
    pub fn unsettled(envelope: Envelope) -> Self {
        Self {
            envelope,
            settle: Settle::none(),
        }
    }
}

/// What a pipeline needs from a bus to hand values over between stages.
///
/// Native async fns in traits; implement it for the bus facade to put hand-offs on any transport.
pub trait Handoff: Send + Sync + 'static {
    /// The envelopes received by one subscription, each with its [`Settle`]: the pipeline
    /// settles it once the envelope's run ended, and drops it unsettled when the envelope was
    /// not fed to a run (shutdown).
    type Stream: Stream<Item = Received> + Send + Unpin + 'static;

    /// Publishes one envelope on its topic; resolves once the bus accepted it.
    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandoffError>> + Send;

    /// Subscribes to `topic`; every envelope published on it afterwards is yielded.
    fn subscribe(
        &self,
        topic: &Topic,
    ) -> impl Future<Output = Result<Self::Stream, HandoffError>> + Send;
}

impl<H: Handoff> Handoff for Arc<H> {
    type Stream = H::Stream;

    fn publish(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandoffError>> + Send {
        (**self).publish(envelope)
    }

    fn subscribe(
        &self,
        topic: &Topic,
    ) -> impl Future<Output = Result<Self::Stream, HandoffError>> + Send {
        (**self).subscribe(topic)
    }
}

type Subscribers = HashMap<Topic, Vec<mpsc::UnboundedSender<Envelope>>>;

/// An in-process [`Handoff`]: each published envelope goes to every current subscriber of its exact
/// topic (none: it is dropped, as events with no subscriber are). Cheap to clone; clones share the
/// subscriptions. Queues are unbounded: inside a pipeline the runner's in-flight limit bounds them.
#[derive(Clone, Default)]
pub struct InMemoryHandoff {
    topics: Arc<Mutex<Subscribers>>,
}

impl std::fmt::Debug for InMemoryHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryHandoff").finish_non_exhaustive()
    }
}

impl InMemoryHandoff {
    /// A hand-off with no subscriptions.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Subscribers> {
        self.topics.lock()
    }
}

/// The stream of an [`InMemoryHandoff`] subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub struct InMemoryStream {
    rx: mpsc::UnboundedReceiver<Envelope>,
}

impl Stream for InMemoryStream {
    type Item = Received;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        self.rx
            .poll_recv(cx)
            .map(|env| env.map(Received::unsettled))
    }
}

impl Handoff for InMemoryHandoff {
    type Stream = InMemoryStream;

    async fn publish(&self, envelope: Envelope) -> Result<(), HandoffError> {
        let mut topics = self.lock();
        if let Some(subs) = topics.get_mut(&envelope.topic) {
            subs.retain(|tx| tx.send(envelope.clone()).is_ok());
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<InMemoryStream, HandoffError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().entry(topic.clone()).or_default().push(tx);
        Ok(InMemoryStream { rx })
    }
}

fn encode<T: Serialize>(value: &T, topic: &Topic) -> Result<Envelope, StageError> {
    let payload = serde_json::to_vec(value).map_err(StageError::other)?;
    let mut env = Envelope::new(topic.clone(), payload);
    env.type_name = Some(SmolStr::new_static(crate::error::short_type_name(
        std::any::type_name::<T>(),
    )));
    Ok(env)
}

/// `value` as a typed publish encodes it (its codec, typed fields), on `topic`.
fn encode_typed<M: Message>(value: &M, topic: &Topic) -> Result<Envelope, StageError> {
    let payload = value.encode().map_err(StageError::other)?;
    let mut env = Envelope::new(topic.clone(), payload);
    set_typed_fields::<M>(&mut env);
    Ok(env)
}

/// Dead-letter text for a foreign envelope refused at shutdown.
const SHUTTING_DOWN: &str = "pipeline shutting down";
/// Receive-operation error type for a foreign envelope refused because the intake was full.
const INTAKE_FULL: &str = "intake_full";

/// How many foreign envelopes a `via_bus` hop queues for a run (besides the one waiting for its
/// slot): the runner's `max_in_flight`, at least [`DEFAULT_MAX_IN_FLIGHT`] (a [`BusHandoff`]'s
/// default workers, which bound what it delivers unsettled, so at its defaults the bus holds
/// back the rest instead).
fn foreign_intake_capacity(max_in_flight: usize) -> usize {
    max_in_flight.max(DEFAULT_MAX_IN_FLIGHT)
}

/// What the two receiving tasks of a `via_bus` hop share.
struct Hop<Out> {
    shared: Arc<Shared>,
    name: SmolStr,
    receive_op: OpRecorder,
    emit: Emit<Out>,
}

impl<Out: DeserializeOwned> Hop<Out> {
    /// Hands a received envelope on as `token`'s next item; `settle` is settled when the run
    /// ends. An undecodable payload fails the run.
    fn deliver(&self, received: Received, token: RunToken) {
        let Received {
            envelope: env,
            settle,
        } = received;
        // Acknowledged where it came from once the run ended.
        token.on_end(settle);
        match serde_json::from_slice::<Out>(&env.payload) {
            Ok(value) => {
                self.receive_op
                    .success(env.timestamp.elapsed().unwrap_or_default());
                (self.emit)(Item { value, token });
            }
            Err(e) => {
                let e = StageError::decode(e);
                self.receive_op.error(e.error_type());
                token.fail(&self.name, &e);
            }
        }
    }

    /// A foreign envelope no run was started for: handed back where it came from when that
    /// takes it back (dropping its settle unsettled), dead-lettered and counted rejected
    /// otherwise.
    fn refuse(&self, received: Received, reason: DeadLetterReason, why: &'static str) {
        if received.settle.can_hand_back() {
            return;
        }
        self.shared
            .dead_letters
            .put(DeadLetter::new(received.envelope, reason, why).with_handler(self.name.clone()));
        self.shared.monitor.record_rejected();
    }
}

impl<In, Out> Pipeline<In, Out>
where
    In: Send + 'static,
    Out: Serialize + DeserializeOwned + Send + 'static,
{
    /// Puts the hand-off to whatever follows on the bus: each output so far is encoded as JSON,
    /// published on `topic` through `handoff`, received from a subscription to `topic` and decoded
    /// again for the next stage. The stages themselves do not change.
    ///
    /// Runs keep their accounting across the hop: a run stays in flight while its envelope is on
    /// the bus. Envelopes on `topic` published by someone else (another process) start new runs.
    /// Monitor operations: `bus:<topic>`/`publish` and `bus:<topic>`/`receive`.
    ///
    /// Receiving never waits for an in-flight slot: the pipeline's own envelopes go on at once;
    /// foreign ones wait for a slot in an intake, in the order received. The intake holds the
    /// runner's `max_in_flight` (at least 64) besides the one waiting for its slot; one arriving
    /// while it is full is handed back where it came from when that takes it back, otherwise
    /// dead-lettered with reason `Dropped` (counted rejected, receive error `intake_full`). At
    /// shutdown the foreign envelopes still waiting are handed back, or dead-lettered with reason
    /// `Shutdown` when they cannot be; none is dropped silently.
    ///
    /// ```
    /// use switchyard_core::Topic;
    /// use switchyard_pipeline::{map_fn, InMemoryHandoff, Pipeline, StageError};
    /// let p: Pipeline<u32, String> = Pipeline::new(map_fn("double", |x: u32| Ok::<_, StageError>(x * 2)))
    ///     .via_bus(InMemoryHandoff::new(), Topic::new("jobs.doubled")?)
    ///     .then(map_fn("show", |x: u32| Ok::<_, StageError>(x.to_string())));
    /// assert_eq!(p.describe(), "double → bus:jobs.doubled → show");
    /// # Ok::<(), switchyard_core::TopicError>(())
    /// ```
    pub fn via_bus<H: Handoff>(self, handoff: H, topic: Topic) -> Pipeline<In, Out> {
        let name = SmolStr::new(format!("bus:{topic}"));
        self.then_node(name.to_string(), move |emit: Emit<Out>, ctx| {
            let handoff = Arc::new(handoff);
            let parked: Parked = Arc::default();
            let (tx, rx) = mpsc::unbounded_channel::<Item<Out>>();
            let (ready_tx, ready_rx) = oneshot::channel();
            ctx.ready.push((name.to_string(), ready_rx));
            let publish_op = ctx.shared.monitor.op(&name, "publish");
            let receive_op = ctx.shared.monitor.op(&name, "receive");

            let hop = Arc::new(Hop {
                shared: ctx.shared.clone(),
                name: name.clone(),
                receive_op,
                emit,
            });
            // Foreign envelopes (published on the topic by someone else) wait here for a run, in
            // the order received, so the receiving task never waits for an in-flight slot.
            let (intake_tx, intake_rx) = mpsc::channel::<Received>(foreign_intake_capacity(
                ctx.shared.max_in_flight,
            ));

            // Owns the subscription; receives envelopes and never waits for a slot: an envelope
            // of the pipeline's own (parked) run goes on at once, a foreign one to the intake.
            // Stops on the stop signal, which fires only once no run is in flight (so none is
            // parked).
            let mut stop = ctx.stop.clone();
            let (h, t, p, hp) = (handoff.clone(), topic.clone(), parked.clone(), hop.clone());
            ctx.tasks.spawn(async move {
                let mut stream = match h.subscribe(&t).await {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(source) => {
                        let _ = ready_tx.send(Err(StartError::Handoff {
                            topic: t.to_string(),
                            source,
                        }));
                        return Ok(());
                    }
                };
                loop {
                    let received = tokio::select! {
                        biased;
                        received = stream.next() => match received {
                            Some(received) => received,
                            None => break,
                        },
                        () = stop.stopped() => break,
                    };
                    let parked_token = p.lock().remove(&received.envelope.id);
                    match parked_token {
                        Some(token) => hp.deliver(received, token),
                        None => match intake_tx.try_send(received) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(received)) => {
                                hp.receive_op.error(INTAKE_FULL);
                                hp.refuse(
                                    received,
                                    DeadLetterReason::Dropped,
                                    "via_bus intake for foreign envelopes full",
                                );
                            }
                            Err(mpsc::error::TrySendError::Closed(received)) => {
                                hp.refuse(received, DeadLetterReason::Shutdown, SHUTTING_DOWN);
                            }
                        },
                    }
                }
                Ok(())
            });

            // The foreign intake: starts a run for each foreign envelope in turn, waiting for an
            // in-flight slot. Refused once intake closed or the stages stop (handed back, or
            // dead-lettered when it cannot be); ends once the receiving task is gone and the
            // envelopes queued before that were refused.
            let mut stop = ctx.stop.clone();
            ctx.tasks.spawn(async move {
                let mut rx = intake_rx;
                while let Some(received) = rx.recv().await {
                    let started = if stop.is_stopped() {
                        None
                    } else {
                        tokio::select! {
                            biased;
                            started = hop.shared.start_run(Some(received.envelope.clone())) => started.ok(),
                            () = stop.stopped() => None,
                        }
                    };
                    match started {
                        Some(token) => hop.deliver(received, token),
                        None => hop.refuse(received, DeadLetterReason::Shutdown, SHUTTING_DOWN),
                    }
                }
                Ok(())
            });

            // Owns the publishing side: encodes, parks the run, publishes.
            let mut stop = ctx.stop.clone();
            let (n, p) = (name.clone(), parked);
            ctx.tasks.spawn(async move {
                let mut rx = rx;
                loop {
                    let item = tokio::select! {
                        biased;
                        item = rx.recv() => match item {
                            Some(item) => item,
                            None => break,
                        },
                        () = stop.stopped() => break,
                    };
                    let Item { value, token } = item;
                    let started = Instant::now();
                    let mut env = match encode(&value, &topic) {
                        Ok(env) => env,
                        Err(e) => {
                            publish_op.error(e.error_type());
                            token.fail(&n, &e);
                            continue;
                        }
                    };
                    if let Some(origin) = token.origin() {
                        env.correlation_id = origin.correlation_id.clone();
                        env.set_causation_id(Some(origin.id.clone()));
                    }
                    let id = env.id.clone();
                    // Park before publishing: the envelope may come back before publish returns.
                    p.lock().insert(id.clone(), token);
                    if let Err(e) = handoff.publish(env).await {
                        let e = StageError::new(StageErrorKind::Unavailable, e.to_string());
                        publish_op.error(e.error_type());
                        let token = p.lock().remove(&id);
                        if let Some(token) = token {
                            token.fail(&n, &e);
                        }
                        continue;
                    }
                    publish_op.success(started.elapsed());
                }
                Ok(())
            });
            channel_emit(tx, name)
        })
    }
}

/// A stage that publishes each input as an envelope on a topic: the end of a pipeline whose
/// next half runs elsewhere (start that half with a [`BusSource`]).
///
/// [`new`](Self::new) encodes any `Serialize` value as JSON, stamped with the type's short
/// name and `type_version` 1; [`typed`](Self::typed) encodes a [`Message`] as a typed publish
/// does (its codec, kind, name and `VERSION`), so a reader with upcasters upcasts only the
/// outputs that are older than it.
pub struct BusSink<H, T> {
    handoff: H,
    topic: Topic,
    encode: fn(&T, &Topic) -> Result<Envelope, StageError>,
}

impl<H, T: Serialize> BusSink<H, T> {
    /// Publishes on `topic` through `handoff`, as JSON stamped with `T`'s short type name and
    /// version 1 (for a [`Message`], use [`typed`](Self::typed)).
    pub fn new(handoff: H, topic: Topic) -> Self {
        Self {
            handoff,
            topic,
            encode: encode::<T>,
        }
    }
}

impl<H, T: Message> BusSink<H, T> {
    /// Publishes `T` on `topic` through `handoff` as `bus.publish` would (with the message's
    /// codec, stamped with its kind, type name, `VERSION` and content type), only on `topic`
    /// (usually `T::topic()`).
    pub fn typed(handoff: H, topic: Topic) -> Self {
        Self {
            handoff,
            topic,
            encode: encode_typed::<T>,
        }
    }
}

impl<H: Handoff, T: Serialize + Send + Sync + 'static> Stage<T, ()> for BusSink<H, T> {
    fn name(&self) -> Cow<'static, str> {
        Cow::Owned(format!("bus-sink:{}", self.topic))
    }

    async fn run(&mut self, input: T) -> Result<(), StageError> {
        let env = (self.encode)(&input, &self.topic)?;
        self.handoff
            .publish(env)
            .await
            .map_err(|e| StageError::new(StageErrorKind::Unavailable, e.to_string()))
    }
}

/// A source that subscribes to a topic and feeds the decoded (JSON) envelopes; undecodable ones go
/// to the dead-letter sink with their raw bytes.
pub struct BusSource<H, T> {
    handoff: H,
    topic: Topic,
    _t: PhantomData<fn() -> T>,
}

impl<H, T> BusSource<H, T> {
    /// Receives from `topic` through `handoff`. Subscribes when the source starts running.
    pub fn new(handoff: H, topic: Topic) -> Self {
        Self {
            handoff,
            topic,
            _t: PhantomData,
        }
    }
}

impl<H: Handoff, T: DeserializeOwned + Send + 'static> Source<T> for BusSource<H, T> {
    fn name(&self) -> Cow<'static, str> {
        Cow::Owned(format!("bus-source:{}", self.topic))
    }

    async fn run(self, feed: Feed<T>, mut stop: StopSignal) -> Result<(), SourceError> {
        let name = format!("bus-source:{}", self.topic);
        let op = feed.monitor().op(&name, "recv");
        let mut stream = self.handoff.subscribe(&self.topic).await?;
        loop {
            let Received {
                envelope: env,
                settle,
            } = tokio::select! {
                biased;
                () = stop.stopped() => break,
                received = stream.next() => match received {
                    Some(received) => received,
                    None => break,
                },
            };
            match serde_json::from_slice::<T>(&env.payload) {
                Ok(value) => {
                    op.success(env.timestamp.elapsed().unwrap_or_default());
                    // Refused at shutdown, a message its source takes back is handed back
                    // (the settle dropped unsettled), not dead-lettered.
                    let hand_back = settle.can_hand_back();
                    if let Err(refused) = feed.send_settled(value, env, settle).await {
                        if let Some(origin) = refused.origin.filter(|_| !hand_back) {
                            feed.dead_letter(
                                DeadLetter::new(
                                    origin,
                                    DeadLetterReason::Shutdown,
                                    "pipeline shutting down",
                                )
                                .with_handler(name.clone()),
                            );
                        }
                        break;
                    }
                }
                Err(e) => {
                    let e = StageError::decode(e);
                    op.error(e.error_type());
                    feed.dead_letter(
                        DeadLetter::new(env, DeadLetterReason::DecodeFailed, e.chain())
                            .with_handler(name.clone()),
                    );
                    // Dead-lettered: settled where it came from.
                    settle.done();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_handoff_delivers_to_every_current_subscriber() {
        let h = InMemoryHandoff::new();
        let topic = Topic::new("a.b").unwrap();
        let other = Topic::new("a.c").unwrap();
        // No subscriber: dropped, not an error.
        h.publish(Envelope::new(topic.clone(), "lost"))
            .await
            .unwrap();
        let mut s1 = h.subscribe(&topic).await.unwrap();
        let mut s2 = h.subscribe(&topic).await.unwrap();
        let mut s3 = h.subscribe(&other).await.unwrap();
        h.publish(Envelope::new(topic.clone(), "x")).await.unwrap();
        assert_eq!(s1.next().await.unwrap().envelope.payload.as_ref(), b"x");
        assert_eq!(s2.next().await.unwrap().envelope.payload.as_ref(), b"x");
        drop(s2);
        h.publish(Envelope::new(topic.clone(), "y")).await.unwrap();
        assert_eq!(s1.next().await.unwrap().envelope.payload.as_ref(), b"y");
        assert_eq!(h.lock().get(&topic).map(Vec::len), Some(1));
        h.publish(Envelope::new(other, "z")).await.unwrap();
        assert_eq!(s3.next().await.unwrap().envelope.payload.as_ref(), b"z");
    }
}

/// The header a [`BusHandoff`] takes an envelope's ordering key from by default.
pub const DEFAULT_ORDERING_HEADER: &str = "ordering-key";

/// The switchyard bus as a hand-off: `.via_bus(BusHandoff::new(bus), topic)` puts a stage's
/// input on the bus (in memory, or on a durable transport the bus was built with), so the
/// stage may live in another task, process or machine.
///
/// Each `subscribe` registers a bus subscription named `pipeline-handoff:<topic>` with
/// [`in_flight`](Self::in_flight) workers (default [`DEFAULT_MAX_IN_FLIGHT`], the runner's
/// default). Its handler hands each envelope to the pipeline and answers only once the
/// envelope's run ended: a message is acknowledged (on a durable transport: acked on the log)
/// when its output was produced or it was dead-lettered. One the pipeline never fed (still
/// buffered when it stopped, or refused at shutdown) is handed back to the transport
/// ([`switchyard::HandBack`]): the log (or NATS) delivers it again to the same consumer group,
/// after a restart too. On the log a hand-back does not count towards `max_deliver`; on NATS
/// it is a nak, which JetStream counts. A slow pipeline backs up into the subscription's queue and from there to
/// the publisher, under the bus's overflow policy.
///
/// Order: envelopes with the same ordering key (the `ordering-key` header, as on the log; see
/// [`ordering_header`](Self::ordering_header)) reach the pipeline one at a time, in the order
/// the subscription receives them (publish order, per publisher), whatever `in_flight` is: a
/// key's next envelope is fed only once the run of the one before it ended. Envelopes without
/// a key may overtake each other when `in_flight` is above 1 (as with any subscription with
/// several workers); `in_flight(1)` keeps their order too (one run at a time).
#[derive(Clone, Debug)]
pub struct BusHandoff {
    bus: switchyard::Bus,
    in_flight: usize,
    ordering_header: Option<&'static str>,
}

impl BusHandoff {
    /// A hand-off over `bus`.
    pub fn new(bus: switchyard::Bus) -> Self {
        Self {
            bus,
            in_flight: DEFAULT_MAX_IN_FLIGHT,
            ordering_header: Some(DEFAULT_ORDERING_HEADER),
        }
    }

    /// The header whose value is an envelope's ordering key: envelopes with the same value
    /// are fed one run at a time, in order. Default [`DEFAULT_ORDERING_HEADER`]
    /// (`ordering-key`, the log's and the bus's convention); `None`: no key, only
    /// `in_flight(1)` keeps an order.
    #[must_use]
    pub fn ordering_header(mut self, header: Option<&'static str>) -> Self {
        self.ordering_header = header;
        self
    }

    /// How many received envelopes may wait for their runs at once (the subscription's
    /// workers, at least 1); match it to the runner's
    /// [`max_in_flight`](crate::Runner::max_in_flight), and give a [`Pipeline::via_bus`] hop
    /// that others publish on more: a foreign envelope holds its worker while it waits for a
    /// slot, and the pipeline's own envelopes need free workers to come back. Default
    /// [`DEFAULT_MAX_IN_FLIGHT`].
    #[must_use]
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n.max(1);
        self
    }
}

/// Envelopes received through a [`BusHandoff`]; dropping it unsubscribes, and hands the
/// envelopes it still holds back to the transport.
pub struct BusStream {
    rx: mpsc::Receiver<Received>,
    _subscription: switchyard::Subscription,
}

impl Stream for BusStream {
    type Item = Received;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        self.rx.poll_recv(cx)
    }
}

impl Handoff for BusHandoff {
    type Stream = BusStream;

    async fn publish(&self, envelope: Envelope) -> Result<(), HandoffError> {
        Ok(self.bus.publish_envelope(envelope).await?)
    }

    async fn subscribe(&self, topic: &Topic) -> Result<BusStream, HandoffError> {
        let (tx, rx) = mpsc::channel(self.in_flight);
        let handler = switchyard::handler_fn(move |envelope: Envelope| {
            let tx = tx.clone();
            async move {
                let (settle, settled) = Settle::channel();
                // Not taken (the stream is gone) or not fed (dropped unsettled): back to the
                // transport, to be delivered again; in memory, with nowhere to go back to, the
                // bus dead-letters it.
                if tx.send(Received { envelope, settle }).await.is_err() {
                    return Err(switchyard::HandBack::new(HandoffError::Closed));
                }
                match settled.await {
                    Ok(()) => Ok(switchyard::Outcome::Ack),
                    Err(_) => Err(switchyard::HandBack::new(HandoffError::Closed)),
                }
            }
        });
        let name = format!("pipeline-handoff:{topic}");
        let mut builder = self
            .bus
            .subscribe(&name, topic.as_str(), handler)
            .workers(self.in_flight);
        if let Some(header) = self.ordering_header {
            builder = builder.ordering_header(header);
        }
        let subscription = builder.start().await?;
        Ok(BusStream {
            rx,
            _subscription: subscription,
        })
    }
}
