//! [`MemoryTransport`]: an in-process transport with the same settle semantics as the durable
//! ones (ack, nack with delay, term, redelivery after the ack wait, max deliveries to the
//! dead-letter sink, per-key order), but nothing survives the process.
//!
//! It exists so the conformance suite has a baseline that runs without disk or server, and so
//! tests of code above the transport traits can run in memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::Stream;
use smol_str::SmolStr;
use switchyard_core::{
    AckHandle, BoxFuture, Capabilities, CloseError, DeadLetter, DeadLetterReason, DeadLetterSink,
    Delivery, Envelope, Pattern, PublishError, Publisher, SubscribeError, Subscriber,
    TransportError,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

/// Configuration of a [`MemoryTransport`]. Every default is documented on its field.
#[derive(Clone)]
pub struct MemoryConfig {
    /// A delivery not settled within this time is handed out again. Default: 30 s.
    pub ack_wait: Duration,
    /// Deliveries of one message before it goes to the dead-letter sink
    /// ([`DeadLetterReason::MaxDeliveries`]). 0 means no limit. Default: 5.
    pub max_deliver: u32,
    /// Messages one group may hold (waiting plus unsettled). A publish that would exceed it
    /// fails with [`PublishError::Full`] and is delivered to no group. Default: 65 536.
    pub capacity: usize,
    /// Header holding the ordering key: within a group, messages with the same key are handed
    /// out one at a time, in publish order. `None` turns this off. Default: `ordering-key`.
    pub ordering_header: Option<String>,
    /// Receives messages that reached `max_deliver`. Default: none (they are dropped with a
    /// warning).
    pub dead_letters: Option<Arc<dyn DeadLetterSink>>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            capacity: 65_536,
            ordering_header: Some("ordering-key".to_owned()),
            dead_letters: None,
        }
    }
}

impl std::fmt::Debug for MemoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConfig")
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("capacity", &self.capacity)
            .field("ordering_header", &self.ordering_header)
            .field("dead_letters", &self.dead_letters.is_some())
            .finish()
    }
}

impl MemoryConfig {
    /// Sets the ack wait.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets the maximum number of deliveries (0: unlimited).
    pub fn with_max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    /// Sets the per-group capacity.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the dead-letter sink.
    pub fn with_dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.dead_letters = Some(sink);
        self
    }
}

/// An in-process transport. Cheap to clone: clones share one set of groups.
///
/// - `subscribe(pattern, Some(group))`: members of a group share its messages; every group gets
///   every message published after the group was created (nothing is kept from before).
///   A group outlives its members: messages published while it has none wait for the next one.
/// - `subscribe(pattern, None)`: a private group that disappears with its subscription.
/// - Dropping a [`Delivery`] unsettled hands it out again at once.
/// - [`close`](Publisher::close) refuses new publishes; subscriptions hand out what is
///   still waiting and then end.
///
/// Request/reply is in-process too: [`respond`](Self::respond) and [`request`](Self::request).
#[derive(Clone, Debug)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: MemoryConfig,
    groups: Mutex<Vec<Arc<Group>>>,
    responders: Mutex<Vec<Responder>>,
    closed: AtomicBool,
    next_seq: AtomicU64,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("config", &self.config)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Responder {
    id: u64,
    pattern: Pattern,
    tx: mpsc::Sender<IncomingRequest>,
}

/// Locks a mutex; a poisoned lock only means another thread panicked while holding it, and
/// every critical section here leaves the data consistent, so the data is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Group {
    name: String,
    private: bool,
    notify: Notify,
    state: Mutex<GroupState>,
}

struct GroupState {
    pattern: Pattern,
    members: usize,
    /// Waiting messages by publish sequence (so a redelivered message keeps its place).
    ready: BTreeMap<u64, Pending>,
    /// Handed out and not yet settled.
    unsettled: HashMap<u64, Unsettled>,
    /// Ordering keys with a message handed out and unsettled.
    busy_keys: HashSet<SmolStr>,
    next_token: u64,
}

struct Pending {
    envelope: Envelope,
    key: Option<SmolStr>,
    attempts: u32,
    first_delivered: Option<SystemTime>,
    not_before: Option<Instant>,
}

struct Unsettled {
    pending: Pending,
    deadline: Instant,
    token: u64,
}

enum Dispatch {
    Deliver(Box<Envelope>, u64, u64),
    Wait(Option<Instant>),
    Ended,
}

impl Group {
    fn dispatch(&self, config: &MemoryConfig, closed: bool) -> Dispatch {
        let now = Instant::now();
        let mut dead = Vec::new();
        {
            let mut st = lock(&self.state);
            let st = &mut *st;
            // Unsettled past their ack wait go back to waiting.
            let expired: Vec<u64> = st
                .unsettled
                .iter()
                .filter(|(_, u)| u.deadline <= now)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in expired {
                if let Some(u) = st.unsettled.remove(&seq) {
                    if let Some(k) = &u.pending.key {
                        st.busy_keys.remove(k);
                    }
                    st.ready.insert(seq, u.pending);
                }
            }
            let mut earliest: Option<Instant> = st.unsettled.values().map(|u| u.deadline).min();
            let mut blocked: HashSet<SmolStr> = HashSet::new();
            let mut chosen = None;
            for (seq, p) in st.ready.iter() {
                let key_busy = p
                    .key
                    .as_ref()
                    .is_some_and(|k| st.busy_keys.contains(k) || blocked.contains(k));
                if key_busy {
                    continue;
                }
                if let Some(t) = p.not_before.filter(|t| *t > now) {
                    earliest = Some(earliest.map_or(t, |e| e.min(t)));
                    if let Some(k) = &p.key {
                        blocked.insert(k.clone());
                    }
                    continue;
                }
                if config.max_deliver > 0 && p.attempts >= config.max_deliver {
                    dead.push(*seq);
                    continue;
                }
                chosen = Some(*seq);
                break;
            }
            let mut letters = Vec::new();
            for seq in dead.drain(..) {
                if let Some(p) = st.ready.remove(&seq) {
                    letters.push(p);
                }
            }
            dead_letter(config, &self.name, letters);
            match chosen.and_then(|seq| st.ready.remove(&seq).map(|p| (seq, p))) {
                Some((seq, mut p)) => {
                    p.attempts += 1;
                    let first = *p.first_delivered.get_or_insert_with(SystemTime::now);
                    let mut envelope = p.envelope.clone();
                    envelope.delivery.attempt = p.attempts;
                    envelope.delivery.first_delivered_at = Some(first);
                    if let Some(k) = &p.key {
                        st.busy_keys.insert(k.clone());
                    }
                    st.next_token += 1;
                    let token = st.next_token;
                    st.unsettled.insert(
                        seq,
                        Unsettled {
                            pending: p,
                            deadline: now + config.ack_wait,
                            token,
                        },
                    );
                    Dispatch::Deliver(Box::new(envelope), seq, token)
                }
                None if closed && st.ready.is_empty() => Dispatch::Ended,
                None => Dispatch::Wait(earliest),
            }
        }
    }

    /// Settles or releases one unsettled message if `token` is still its current delivery.
    fn settle(&self, seq: u64, token: u64, release: Option<Option<Instant>>) {
        let mut st = lock(&self.state);
        let current = st.unsettled.get(&seq).is_some_and(|u| u.token == token);
        if !current {
            return;
        }
        if let Some(u) = st.unsettled.remove(&seq) {
            if let Some(k) = &u.pending.key {
                st.busy_keys.remove(k);
            }
            if let Some(not_before) = release {
                let mut p = u.pending;
                p.not_before = not_before;
                st.ready.insert(seq, p);
            }
        }
        drop(st);
        self.notify.notify_waiters();
    }
}

fn dead_letter(config: &MemoryConfig, group: &str, letters: Vec<Pending>) {
    if letters.is_empty() {
        return;
    }
    match &config.dead_letters {
        Some(sink) => {
            for p in letters {
                let mut envelope = p.envelope;
                envelope.delivery.attempt = p.attempts;
                envelope.delivery.first_delivered_at = p.first_delivered;
                sink.put(
                    DeadLetter::new(
                        envelope,
                        DeadLetterReason::MaxDeliveries,
                        format!("not acknowledged after {} deliveries", p.attempts),
                    )
                    .with_handler(group),
                );
            }
        }
        None => tracing::warn!(
            count = letters.len(),
            group,
            "messages reached max deliveries and no dead-letter sink is configured; dropped"
        ),
    }
}

impl MemoryTransport {
    /// A transport with the default configuration.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A transport with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                groups: Mutex::new(Vec::new()),
                responders: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                next_seq: AtomicU64::new(0),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// Serves requests whose topic matches `pattern`: each one arrives on the returned stream;
    /// answer it with [`IncomingRequest::reply`]. Dropping the stream stops serving.
    pub fn respond(&self, pattern: &Pattern) -> Result<RequestStream, SubscribeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::ShuttingDown);
        }
        let (tx, rx) = mpsc::channel(256);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.responders).push(Responder {
            id,
            pattern: pattern.clone(),
            tx,
        });
        Ok(RequestStream {
            rx,
            id,
            inner: self.inner.clone(),
        })
    }

    /// Sends `request` to one responder whose pattern matches its topic and waits at most
    /// `timeout` for the reply. With no responder it fails at once with
    /// [`RequestError::NoResponders`].
    pub async fn request(
        &self,
        request: Envelope,
        timeout: Duration,
    ) -> Result<Envelope, RequestError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(RequestError::Closed);
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let tx = {
            let mut responders = lock(&self.inner.responders);
            responders.retain(|r| !r.tx.is_closed());
            let matching: Vec<&Responder> = responders
                .iter()
                .filter(|r| r.pattern.matches(&request.topic))
                .collect();
            if matching.is_empty() {
                return Err(RequestError::NoResponders);
            }
            let pick = self.inner.next_id.fetch_add(1, Ordering::Relaxed) as usize % matching.len();
            matching[pick].tx.clone()
        };
        let incoming = IncomingRequest {
            envelope: request,
            reply_to: reply_tx,
        };
        let work = async move {
            tx.send(incoming)
                .await
                .map_err(|_| RequestError::NoResponders)?;
            reply_rx.await.map_err(|_| RequestError::NoReply)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout { deadline: timeout }),
        }
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

/// A request/reply over the memory transport failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No responder serves the request's topic.
    #[error("no responders for the request topic")]
    NoResponders,
    /// The responder dropped the request without replying.
    #[error("the responder dropped the request without replying")]
    NoReply,
    /// No reply arrived within the deadline.
    #[error("no reply within {deadline:?}")]
    Timeout {
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The transport is closed.
    #[error("transport is closed")]
    Closed,
}

/// The requests one [`MemoryTransport::respond`] call serves.
pub struct RequestStream {
    rx: mpsc::Receiver<IncomingRequest>,
    id: u64,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        lock(&self.inner.responders).retain(|r| r.id != self.id);
    }
}

impl Stream for RequestStream {
    type Item = IncomingRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<IncomingRequest>> {
        self.rx.poll_recv(cx)
    }
}

/// One request waiting for its reply.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The request.
    pub envelope: Envelope,
    reply_to: oneshot::Sender<Envelope>,
}

impl IncomingRequest {
    /// Sends the reply. Returns `false` when the requester stopped waiting (its deadline
    /// passed).
    pub fn reply(self, reply: Envelope) -> bool {
        self.reply_to.send(reply).is_ok()
    }
}

impl Publisher for MemoryTransport {
    async fn publish(&self, batch: Vec<Envelope>) -> Result<(), PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::ShuttingDown);
        }
        let header = self.inner.config.ordering_header.as_deref();
        let groups = lock(&self.inner.groups).clone();
        // Which groups take which envelopes; refuse the whole batch if one group is full.
        let mut plan: Vec<(&Arc<Group>, Vec<usize>)> = Vec::new();
        let mut full = Vec::new();
        for g in &groups {
            let st = lock(&g.state);
            let take: Vec<usize> = (0..batch.len())
                .filter(|&i| st.pattern.matches(&batch[i].topic))
                .collect();
            if take.is_empty() {
                continue;
            }
            if st.ready.len() + st.unsettled.len() + take.len() > self.inner.config.capacity {
                full.push(g.name.clone());
            }
            drop(st);
            plan.push((g, take));
        }
        if !full.is_empty() {
            return Err(PublishError::Full {
                subscriptions: full,
                delivered: 0,
            });
        }
        let first_seq = self
            .inner
            .next_seq
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for (g, take) in plan {
            let mut st = lock(&g.state);
            for i in take {
                let e = &batch[i];
                st.ready.insert(
                    first_seq + i as u64,
                    Pending {
                        key: header.and_then(|h| e.header(h)).map(SmolStr::new),
                        envelope: e.clone(),
                        attempts: 0,
                        first_delivered: None,
                        not_before: None,
                    },
                );
            }
            drop(st);
            g.notify.notify_waiters();
        }
        Ok(())
    }

    async fn close(&self, _deadline: std::time::Instant) -> Result<(), CloseError> {
        self.inner.closed.store(true, Ordering::Release);
        lock(&self.inner.responders).clear();
        for g in lock(&self.inner.groups).iter() {
            g.notify.notify_waiters();
        }
        Ok(())
    }
}

impl Subscriber for MemoryTransport {
    type Stream = MemorySubscription;

    async fn subscribe(
        &self,
        pattern: &Pattern,
        group: Option<&str>,
    ) -> Result<MemorySubscription, SubscribeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::ShuttingDown);
        }
        let mut groups = lock(&self.inner.groups);
        let group = match group {
            Some("") => return Err(SubscribeError::InvalidConfig("empty group name")),
            Some(name) => match groups.iter().find(|g| !g.private && g.name == name) {
                Some(g) => {
                    let mut st = lock(&g.state);
                    if st.pattern != *pattern {
                        if st.members > 0 {
                            return Err(SubscribeError::InvalidConfig(
                                "group already subscribed with another pattern",
                            ));
                        }
                        st.pattern = pattern.clone();
                        st.ready.retain(|_, p| pattern.matches(&p.envelope.topic));
                    }
                    st.members += 1;
                    drop(st);
                    g.clone()
                }
                None => {
                    let g = new_group(name.to_owned(), false, pattern);
                    groups.push(g.clone());
                    g
                }
            },
            None => {
                let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                let g = new_group(format!("private-{id}"), true, pattern);
                groups.push(g.clone());
                g
            }
        };
        drop(groups);
        let member = Member {
            inner: self.inner.clone(),
            group,
        };
        let stream = futures::stream::unfold(member, |m| async move {
            let d = m.next().await?;
            Some((d, m))
        });
        Ok(MemorySubscription::new(stream))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordered: true,
            consumer_groups: true,
            wildcards: true,
            delayed_delivery: false,
            dedup: false,
        }
    }
}

fn new_group(name: String, private: bool, pattern: &Pattern) -> Arc<Group> {
    Arc::new(Group {
        name,
        private,
        notify: Notify::new(),
        state: Mutex::new(GroupState {
            pattern: pattern.clone(),
            members: 1,
            ready: BTreeMap::new(),
            unsettled: HashMap::new(),
            busy_keys: HashSet::new(),
            next_token: 0,
        }),
    })
}

/// The deliveries of one memory subscription. Ends after the transport is closed and its
/// group has nothing waiting. Dropping it leaves the group.
pub type MemorySubscription = switchyard_core::DeliveryStream;

struct Member {
    inner: Arc<Inner>,
    group: Arc<Group>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let left = {
            let mut st = lock(&self.group.state);
            st.members = st.members.saturating_sub(1);
            st.members
        };
        if left == 0 && self.group.private {
            lock(&self.inner.groups).retain(|g| !Arc::ptr_eq(g, &self.group));
        }
    }
}

impl Member {
    async fn next(&self) -> Option<Delivery> {
        loop {
            let notified = self.group.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let closed = self.inner.closed.load(Ordering::Acquire);
            match self.group.dispatch(&self.inner.config, closed) {
                Dispatch::Deliver(envelope, seq, token) => {
                    let handle = MemoryAck {
                        group: self.group.clone(),
                        seq,
                        token,
                        settled: false,
                    };
                    return Some(Delivery::new(*envelope, Box::new(handle)));
                }
                Dispatch::Ended => return None,
                Dispatch::Wait(Some(t)) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                Dispatch::Wait(None) => notified.await,
            }
        }
    }
}

struct MemoryAck {
    group: Arc<Group>,
    seq: u64,
    token: u64,
    settled: bool,
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        if !self.settled {
            self.group.settle(self.seq, self.token, Some(None));
        }
    }
}

impl AckHandle for MemoryAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        self.group.settle(self.seq, self.token, None);
        Box::pin(async { Ok(()) })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        self.group.settle(
            self.seq,
            self.token,
            Some(delay.map(|d| Instant::now() + d)),
        );
        Box::pin(async { Ok(()) })
    }

    fn term(mut self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        tracing::debug!(group = %self.group.name, seq = self.seq, reason = %reason, "message terminated");
        self.group.settle(self.seq, self.token, None);
        Box::pin(async { Ok(()) })
    }
}
