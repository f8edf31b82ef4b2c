//! Per-request contexts: a small state machine, metadata, metrics and timestamps, whose
//! transitions publish status updates, errors and completions, kept in a table that is cleaned
//! on completion, failure and timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard::{Envelope, Message, MessageId, PublishError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::enforce::ComponentBus;
use crate::role::{Role, error_topic, status_topic, topic_name};

mod messages;
mod request_id;
pub use messages::{
    Completion, CompletionStatus, ErrorInfo, ErrorReport, FailedRequest, StatusUpdate,
};
pub use request_id::{RequestId, RequestIdError};

/// Header carrying the id of the request context a message was published for (set by
/// [`RequestContext::publish_to`]); the context begun for that message records it as its
/// `parent_request`, and its [`Completion`] carries it back, so the layer above finds the exact
/// context the result belongs to even when a retry started a newer one.
pub const REQUEST_HEADER: &str = "x-request-id";

/// The state of a request.
///
/// | from \ to | Running | Completed | Failed | Cancelled |
/// |-----------|---------|-----------|--------|-----------|
/// | Pending   | yes     | no        | yes    | yes       |
/// | Running   | no      | yes       | yes    | yes       |
///
/// Completed, Failed and Cancelled are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Created, not started.
    Pending,
    /// Being worked on.
    Running,
    /// Finished successfully.
    Completed,
    /// Finished with an error (including a timeout).
    Failed,
    /// Stopped on purpose.
    Cancelled,
}

impl RequestState {
    /// True for Completed, Failed and Cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether the state machine allows `self → next`.
    pub fn can_become(self, next: RequestState) -> bool {
        use RequestState::*;
        matches!(
            (self, next),
            (Pending, Running | Failed | Cancelled) | (Running, Completed | Failed | Cancelled)
        )
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Numbers about one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContextMetrics {
    /// State transitions so far.
    pub transitions: u32,
    /// Time spent pending, once it started running.
    pub pending_ms: Option<u64>,
    /// Time from running to its end, once it ended.
    pub running_ms: Option<u64>,
    /// Values recorded by the component (`rows`, `bytes`, ...).
    pub values: BTreeMap<String, f64>,
}

/// A snapshot of one request context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// This request.
    pub request_id: RequestId,
    /// The end-to-end flow it belongs to.
    pub correlation_id: MessageId,
    /// The component that owns it.
    pub component: SmolStr,
    /// The owner's role.
    pub role: Role,
    /// The owner's domain.
    pub domain: SmolStr,
    /// What is being done (`load`, `validate`, ...): the middle segment of its topics.
    pub action: SmolStr,
    /// The request context (of the layer above) whose message started this one, taken from
    /// the [`REQUEST_HEADER`] of that message.
    pub parent_request: Option<RequestId>,
    /// Current state.
    pub state: RequestState,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// Numbers.
    pub metrics: ContextMetrics,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A transition was refused or its events could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The state machine does not allow it.
    #[error("illegal transition {from} → {to} for request {request_id}")]
    Illegal {
        /// The request.
        request_id: RequestId,
        /// Its state.
        from: RequestState,
        /// The refused state.
        to: RequestState,
    },
    /// The context no longer exists (it ended, or timed out and was removed).
    #[error("request {request_id} has no context (ended or timed out)")]
    Gone {
        /// The request.
        request_id: RequestId,
    },
    /// The transition happened, but its status/error/completion event was not published.
    #[error("request {request_id} is {state}, but its event was not published: {source}")]
    Publish {
        /// The request.
        request_id: RequestId,
        /// The state it is in now.
        state: RequestState,
        /// Why publishing failed.
        #[source]
        source: PublishError,
    },
    /// The completion result could not be encoded.
    #[error("request {request_id}: cannot encode the result: {source}")]
    Encode {
        /// The request.
        request_id: RequestId,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Settings of a context table.
#[derive(Debug, Clone, Copy)]
pub struct ContextConfig {
    /// A context that has not ended this long after creation fails with `Timeout`. Default 30 s.
    pub timeout: Duration,
    /// How often expired contexts are looked for. Default 100 ms.
    pub sweep_interval: Duration,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            sweep_interval: Duration::from_millis(100),
        }
    }
}

struct Entry {
    ctx: Context,
    deadline: Instant,
    started: Option<Instant>,
    created: Instant,
    bus: ComponentBus,
    parent: Option<Envelope>,
}

#[derive(Default)]
struct TableState {
    entries: HashMap<RequestId, Entry>,
    /// The live contexts of each (component, flow), oldest first: a flow can have several
    /// (fan-out, a retry begun while an older attempt is still open), and the newest live one
    /// is the last.
    by_owner: HashMap<(SmolStr, MessageId), Vec<RequestId>>,
    deadlines: BTreeSet<(Instant, RequestId)>,
}

impl TableState {
    fn remove(&mut self, id: RequestId) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.deadlines.remove(&(entry.deadline, id));
        let key = (
            entry.ctx.component.clone(),
            entry.ctx.correlation_id.clone(),
        );
        if let Some(ids) = self.by_owner.get_mut(&key) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_owner.remove(&key);
            }
        }
        Some(entry)
    }
}

/// Counters of a context table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ContextStats {
    /// Contexts alive now.
    pub active: usize,
    /// Contexts created.
    pub created: u64,
    /// Ended completed.
    pub completed: u64,
    /// Ended failed (timeouts included).
    pub failed: u64,
    /// Ended cancelled.
    pub cancelled: u64,
    /// Failed because they timed out.
    pub timed_out: u64,
}

struct TableInner {
    state: Mutex<TableState>,
    config: ContextConfig,
    created: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    sweeper: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for TableInner {
    fn drop(&mut self) {
        if let Some(h) = self.sweeper.get_mut().take() {
            h.abort();
        }
    }
}

/// Every live request context of an assembly. Cheap to clone.
///
/// Entries are removed when they complete, fail or are cancelled, and a sweeper task fails the
/// ones that pass their timeout (publishing a `Timeout` error), so the table cannot grow
/// without bound.
#[derive(Clone)]
pub struct ContextTable {
    inner: Arc<TableInner>,
}

impl fmt::Debug for ContextTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextTable")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ContextTable {
    /// A table with these settings. Starts the sweeper task, so call it inside a tokio runtime.
    pub fn new(config: ContextConfig) -> Self {
        let inner = Arc::new(TableInner {
            state: Mutex::new(TableState::default()),
            config,
            created: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            sweeper: Mutex::new(None),
        });
        // The sweeper task owns only a weak reference to the table: it stops at the first tick
        // after the table is dropped (and is aborted by the table's Drop anyway).
        let weak = Arc::downgrade(&inner);
        let every = config.sweep_interval.max(Duration::from_millis(1));
        let handle = tokio::spawn(sweep_loop(weak, every));
        *inner.sweeper.lock() = Some(handle);
        Self { inner }
    }

    /// The settings.
    pub fn config(&self) -> ContextConfig {
        self.inner.config
    }

    /// Contexts alive now.
    pub fn len(&self) -> usize {
        self.inner.state.lock().entries.len()
    }

    /// True when no context is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters.
    pub fn stats(&self) -> ContextStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ContextStats {
            active: self.len(),
            created: g(&self.inner.created),
            completed: g(&self.inner.completed),
            failed: g(&self.inner.failed),
            cancelled: g(&self.inner.cancelled),
            timed_out: g(&self.inner.timed_out),
        }
    }

    /// A snapshot of one context.
    pub fn get(&self, id: RequestId) -> Option<Context> {
        self.inner
            .state
            .lock()
            .entries
            .get(&id)
            .map(|e| e.ctx.clone())
    }

    /// Snapshots of every live context.
    pub fn snapshot(&self) -> Vec<Context> {
        self.inner
            .state
            .lock()
            .entries
            .values()
            .map(|e| e.ctx.clone())
            .collect()
    }

    /// The newest live context of `component` in flow `correlation_id`: the table keeps every
    /// live context of a (component, flow) in order, so when the newest ends, the one begun
    /// before it (if still live) is found.
    pub fn find(&self, component: &str, correlation_id: MessageId) -> Option<RequestId> {
        self.inner
            .state
            .lock()
            .by_owner
            .get(&(SmolStr::new(component), correlation_id))
            .and_then(|ids| ids.last())
            .copied()
    }

    /// Creates a Pending context owned by `bus`'s component and publishes its first status
    /// update. `parent` is the message that caused it (its correlation id is inherited). If
    /// that status update cannot be published, the context is removed again (counted as
    /// cancelled) and the error says so.
    pub async fn begin(
        &self,
        bus: &ComponentBus,
        action: &str,
        parent: Option<&Envelope>,
    ) -> Result<RequestContext, TransitionError> {
        let now = SystemTime::now();
        let id = RequestId::new();
        let correlation_id =
            parent.map_or_else(|| id.to_message_id(), |p| p.correlation_id.clone());
        let spec = bus.spec();
        let parent_request = parent
            .and_then(|p| p.header(REQUEST_HEADER))
            .and_then(|h| h.parse::<RequestId>().ok());
        let ctx = Context {
            request_id: id,
            correlation_id: correlation_id.clone(),
            component: spec.endpoint.name.clone(),
            role: spec.role(),
            domain: spec.endpoint.domain.clone(),
            action: SmolStr::new(action),
            parent_request,
            state: RequestState::Pending,
            metadata: BTreeMap::new(),
            metrics: ContextMetrics::default(),
            created_at: now,
            updated_at: now,
        };
        let created = Instant::now();
        // A timeout too large for the clock means "about never" (a year), not a panic.
        let deadline = created
            .checked_add(self.inner.config.timeout)
            .or_else(|| created.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(created);
        {
            let mut st = self.inner.state.lock();
            st.by_owner
                .entry((ctx.component.clone(), correlation_id.clone()))
                .or_default()
                .push(id);
            st.deadlines.insert((deadline, id));
            st.entries.insert(
                id,
                Entry {
                    ctx: ctx.clone(),
                    deadline,
                    started: None,
                    created,
                    bus: bus.clone(),
                    parent: parent.cloned(),
                },
            );
        }
        self.inner.created.fetch_add(1, Ordering::Relaxed);
        let handle = RequestContext {
            id,
            correlation_id,
            table: self.clone(),
            bus: bus.clone(),
            parent: parent.cloned(),
        };
        if let Err(source) = publish_status(bus, parent, &ctx, None, None).await {
            // The caller gets no handle: do not leave the context behind until its timeout.
            if self.inner.state.lock().remove(id).is_some() {
                self.inner.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            return Err(TransitionError::Publish {
                request_id: id,
                state: RequestState::Cancelled,
                source,
            });
        }
        Ok(handle)
    }

    /// A handle on an existing context; its events will be caused by `parent`.
    pub fn handle(
        &self,
        id: RequestId,
        bus: &ComponentBus,
        parent: Option<&Envelope>,
    ) -> Option<RequestContext> {
        let correlation_id = self
            .inner
            .state
            .lock()
            .entries
            .get(&id)
            .map(|e| e.ctx.correlation_id.clone())?;
        Some(RequestContext {
            id,
            correlation_id,
            table: self.clone(),
            bus: bus.clone(),
            parent: parent.cloned(),
        })
    }

    /// Applies `to` to context `id`. Returns the snapshot after the change, the previous state
    /// and, for terminal states, the removed entry's parent.
    fn transition(
        &self,
        id: RequestId,
        to: RequestState,
    ) -> Result<(Context, RequestState), TransitionError> {
        let mut st = self.inner.state.lock();
        let Some(entry) = st.entries.get_mut(&id) else {
            return Err(TransitionError::Gone { request_id: id });
        };
        let from = entry.ctx.state;
        if !from.can_become(to) {
            return Err(TransitionError::Illegal {
                request_id: id,
                from,
                to,
            });
        }
        let now = Instant::now();
        entry.ctx.state = to;
        entry.ctx.updated_at = SystemTime::now();
        entry.ctx.metrics.transitions += 1;
        if to == RequestState::Running {
            entry.started = Some(now);
            entry.ctx.metrics.pending_ms = Some(ms(now - entry.created));
        }
        if to.is_terminal() {
            let since = entry.started.unwrap_or(entry.created);
            entry.ctx.metrics.running_ms = Some(ms(now - since));
        }
        let snapshot = entry.ctx.clone();
        if to.is_terminal() {
            st.remove(id);
            let counter = match to {
                RequestState::Completed => &self.inner.completed,
                RequestState::Failed => &self.inner.failed,
                _ => &self.inner.cancelled,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok((snapshot, from))
    }

    fn update(&self, id: RequestId, f: impl FnOnce(&mut Context)) -> Result<(), TransitionError> {
        let mut st = self.inner.state.lock();
        let entry = st
            .entries
            .get_mut(&id)
            .ok_or(TransitionError::Gone { request_id: id })?;
        f(&mut entry.ctx);
        entry.ctx.updated_at = SystemTime::now();
        Ok(())
    }

    /// Fails every context past its deadline, publishing a `Timeout` error for each.
    /// Called by the sweeper; public so tests can drive it.
    pub async fn expire_now(&self) -> usize {
        expire(&self.inner, Instant::now()).await
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

async fn sweep_loop(table: Weak<TableInner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = table.upgrade() else { return };
        expire(&inner, Instant::now()).await;
    }
}

async fn expire(inner: &Arc<TableInner>, now: Instant) -> usize {
    let expired: Vec<Entry> = {
        let mut st = inner.state.lock();
        let due: Vec<RequestId> = st
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, id)| *id)
            .collect();
        due.into_iter().filter_map(|id| st.remove(id)).collect()
    };
    let n = expired.len();
    for mut entry in expired {
        inner.failed.fetch_add(1, Ordering::Relaxed);
        inner.timed_out.fetch_add(1, Ordering::Relaxed);
        let from = entry.ctx.state;
        entry.ctx.state = RequestState::Failed;
        entry.ctx.updated_at = SystemTime::now();
        entry.ctx.metrics.transitions += 1;
        let reason = format!(
            "no result within {:?} (state was {from})",
            inner.config.timeout
        );
        tracing::warn!(request_id = %entry.ctx.request_id, component = %entry.ctx.component,
            correlation_id = %entry.ctx.correlation_id, %reason, "request context timed out");
        let info = ErrorInfo {
            error_type: "Timeout".into(),
            message: reason,
            retryable: true,
        };
        // Best effort: the context is already removed; a refused publish is logged.
        if let Err(e) = publish_failure(
            &entry.bus,
            entry.parent.as_ref(),
            &entry.ctx,
            from,
            &info,
            Failure::Original,
        )
        .await
        {
            tracing::warn!(error = %e, "could not publish the timeout of a request context");
        }
    }
    n
}

async fn publish_status(
    bus: &ComponentBus,
    parent: Option<&Envelope>,
    ctx: &Context,
    from: Option<RequestState>,
    reason: Option<String>,
) -> Result<(), PublishError> {
    let update = StatusUpdate {
        request_id: ctx.request_id,
        correlation_id: ctx.correlation_id.clone(),
        component: ctx.component.clone(),
        role: ctx.role,
        domain: ctx.domain.clone(),
        action: ctx.action.clone(),
        from,
        to: ctx.state,
        reason,
        at_ms: unix_ms(ctx.updated_at),
    };
    let topic = status_topic(&ctx.domain);
    publish_in(bus, parent, ctx, &topic, update).await
}

async fn publish_in<M: Message>(
    bus: &ComponentBus,
    parent: Option<&Envelope>,
    ctx: &Context,
    topic: &str,
    msg: M,
) -> Result<(), PublishError> {
    let mut env = msg.to_envelope()?;
    env.topic = switchyard::Topic::new(topic)?;
    let env = match parent {
        Some(p) => crate::consequence_of(env, p),
        None => env.with_correlation_id(ctx.correlation_id.clone()),
    };
    bus.publish_envelope(env).await
}

fn completion<T>(ctx: &Context, status: CompletionStatus) -> Completion<T> {
    let duration_ms = ctx
        .updated_at
        .duration_since(ctx.created_at)
        .map(ms)
        .unwrap_or(0);
    Completion {
        request_id: ctx.request_id,
        correlation_id: ctx.correlation_id.clone(),
        component: ctx.component.clone(),
        role: ctx.role,
        domain: ctx.domain.clone(),
        action: ctx.action.clone(),
        parent_request: ctx.parent_request,
        status,
        result: None,
        error: None,
        duration_ms,
        metadata: ctx.metadata.clone(),
    }
}

/// How a context failed, which decides what its failure publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `fail` (or a timeout): the component's own failure, for the error handler to retry.
    Original,
    /// `fail_propagated`: passes on the failure of a lower layer.
    Propagated,
    /// The component's handler returned an error or panicked. The bus retries (or
    /// dead-letters) the message itself, so the report is marked propagated for the error
    /// handler. `bus_retries`: the bus delivers the message again, so the flow goes on and
    /// no failed completion is published.
    Handler {
        /// The bus delivers the message again.
        bus_retries: bool,
    },
}

async fn publish_failure(
    bus: &ComponentBus,
    parent: Option<&Envelope>,
    ctx: &Context,
    from: RequestState,
    info: &ErrorInfo,
    how: Failure,
) -> Result<(), PublishError> {
    publish_status(bus, parent, ctx, Some(from), Some(info.message.clone())).await?;
    let propagated = how != Failure::Original;
    let bus_retries = matches!(how, Failure::Handler { bus_retries: true });
    let handler_failure = matches!(how, Failure::Handler { .. });
    let report = ErrorReport {
        request_id: ctx.request_id,
        correlation_id: ctx.correlation_id.clone(),
        component: ctx.component.clone(),
        role: ctx.role,
        domain: ctx.domain.clone(),
        action: ctx.action.clone(),
        error_type: info.error_type.clone(),
        message: info.message.clone(),
        propagated,
        retryable: info.retryable,
        bus_retries,
        handler_failure,
        at_ms: unix_ms(ctx.updated_at),
        // An original failure carries the message it failed on (a propagated one's is a
        // lower layer's result, not worth replaying).
        failed_request: if propagated {
            None
        } else {
            parent.and_then(FailedRequest::of)
        },
    };
    publish_in(bus, parent, ctx, &error_topic(&ctx.domain), report).await?;
    if bus_retries {
        // The next delivery begins a new context whose result goes up instead.
        return Ok(());
    }
    let mut done = completion::<serde_json::Value>(ctx, CompletionStatus::Failed);
    done.error = Some(info.clone());
    let topic = topic_name(&ctx.domain, &ctx.action, ctx.role.result_phase());
    publish_in(bus, parent, ctx, &topic, done).await
}

/// A handle on one live request context, used by the component that owns it.
///
/// Every transition publishes `<domain>.status.update`; [`fail`](Self::fail) also publishes
/// `<domain>.error` and a failed [`Completion`]; [`complete`](Self::complete) publishes a
/// completed [`Completion`] on `<domain>.<action>.<result phase>`. Terminal transitions remove
/// the context from the table.
#[derive(Clone)]
pub struct RequestContext {
    id: RequestId,
    correlation_id: MessageId,
    table: ContextTable,
    bus: ComponentBus,
    parent: Option<Envelope>,
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("id", &self.id)
            .field("component", &self.bus.name())
            .finish()
    }
}

impl RequestContext {
    /// The request id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The flow it belongs to.
    pub fn correlation_id(&self) -> MessageId {
        self.correlation_id.clone()
    }

    /// A snapshot (None once it ended).
    pub fn snapshot(&self) -> Option<Context> {
        self.table.get(self.id)
    }

    /// The current state (None once it ended).
    pub fn state(&self) -> Option<RequestState> {
        self.snapshot().map(|c| c.state)
    }

    /// Sets one metadata entry.
    pub fn set_metadata(
        &self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), TransitionError> {
        let (k, v) = (key.into(), value.into());
        self.table.update(self.id, |c| {
            c.metadata.insert(k, v);
        })
    }

    /// Records one metric value (replacing an earlier one of that name).
    pub fn record(&self, name: impl Into<String>, value: f64) -> Result<(), TransitionError> {
        let n = name.into();
        self.table.update(self.id, |c| {
            c.metrics.values.insert(n, value);
        })
    }

    fn published(
        &self,
        state: RequestState,
        r: Result<(), PublishError>,
    ) -> Result<(), TransitionError> {
        r.map_err(|source| TransitionError::Publish {
            request_id: self.id,
            state,
            source,
        })
    }

    /// Pending → Running.
    pub async fn start(&self) -> Result<(), TransitionError> {
        let (ctx, from) = self.table.transition(self.id, RequestState::Running)?;
        let r = publish_status(&self.bus, self.parent.as_ref(), &ctx, Some(from), None).await;
        self.published(ctx.state, r)
    }

    /// Running → Completed, publishing the result on `<domain>.<action>.<result phase>`.
    pub async fn complete<T: Serialize>(&self, result: &T) -> Result<(), TransitionError> {
        let value = serde_json::to_value(result).map_err(|source| TransitionError::Encode {
            request_id: self.id,
            source,
        })?;
        let (ctx, from) = self.table.transition(self.id, RequestState::Completed)?;
        let parent = self.parent.as_ref();
        let r = async {
            publish_status(&self.bus, parent, &ctx, Some(from), None).await?;
            let mut done = completion::<serde_json::Value>(&ctx, CompletionStatus::Completed);
            done.result = Some(value);
            let topic = topic_name(&ctx.domain, &ctx.action, ctx.role.result_phase());
            publish_in(&self.bus, parent, &ctx, &topic, done).await
        }
        .await;
        self.published(ctx.state, r)
    }

    /// Pending/Running → Failed: publishes the status, `<domain>.error` and a failed completion.
    pub async fn fail(
        &self,
        error_type: impl Into<String>,
        message: impl Into<String>,
        retryable: bool,
    ) -> Result<(), TransitionError> {
        let info = ErrorInfo {
            error_type: error_type.into(),
            message: message.into(),
            retryable,
        };
        self.fail_with(info, Failure::Original).await
    }

    /// Fails because a lower layer failed: same events, with the error marked `propagated`
    /// so the error handler does not count it again.
    pub async fn fail_propagated(&self, error: &ErrorInfo) -> Result<(), TransitionError> {
        self.fail_with(error.clone(), Failure::Propagated).await
    }

    /// Fails because the handler that began it returned an error or panicked (see
    /// [`Failure::Handler`]).
    pub(crate) async fn fail_handler(
        &self,
        error: ErrorInfo,
        bus_retries: bool,
    ) -> Result<(), TransitionError> {
        self.fail_with(error, Failure::Handler { bus_retries })
            .await
    }

    async fn fail_with(&self, info: ErrorInfo, how: Failure) -> Result<(), TransitionError> {
        let (ctx, from) = self.table.transition(self.id, RequestState::Failed)?;
        let r = publish_failure(&self.bus, self.parent.as_ref(), &ctx, from, &info, how).await;
        self.published(ctx.state, r)
    }

    /// Pending/Running → Cancelled.
    pub async fn cancel(&self, reason: impl Into<String>) -> Result<(), TransitionError> {
        let (ctx, from) = self.table.transition(self.id, RequestState::Cancelled)?;
        let r = publish_status(
            &self.bus,
            self.parent.as_ref(),
            &ctx,
            Some(from),
            Some(reason.into()),
        )
        .await;
        self.published(ctx.state, r)
    }

    /// Publishes `msg` on `topic` on behalf of this context: caused by the message being
    /// handled, with the [`REQUEST_HEADER`] set to this context's id, so the result coming back
    /// can be matched with [`ComponentCtx::context_for`](crate::ComponentCtx::context_for).
    pub async fn publish_to<M: Message>(&self, topic: &str, msg: M) -> Result<(), PublishError> {
        let mut env = msg.to_envelope()?;
        env.topic = switchyard::Topic::new(topic)?;
        let env = match &self.parent {
            Some(p) => crate::consequence_of(env, p),
            None => env.with_correlation_id(self.correlation_id.clone()),
        }
        .with_header(REQUEST_HEADER, self.id.to_string());
        self.bus.publish_envelope(env).await
    }

    /// The same context, with events caused by `parent` from now on.
    pub fn caused_by(mut self, parent: &Envelope) -> Self {
        self.parent = Some(parent.clone());
        self
    }
}
