//! Subscribing: the [`Subscriber`] impl (one pull consumer per stream that may hold the
//! pattern's topics), [`NatsSubscription`], the groups in use on a transport, and a pull
//! consumer's settings.

use super::*;

/// A group in use on this transport: its name as given, its pattern, its live members.
pub(super) struct GroupUse {
    group: String,
    pattern: Pattern,
    members: usize,
}

/// One live member of a group; leaving (drop) frees the group's pattern once it was the last.
struct GroupMember {
    inner: Arc<Inner>,
    consumer: String,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        let mut groups = lock(&self.inner.groups);
        if let Some(g) = groups.get_mut(&self.consumer) {
            g.members = g.members.saturating_sub(1);
            if g.members == 0 {
                groups.remove(&self.consumer);
            }
        }
    }
}

impl Inner {
    /// Registers one member of `group` reading `pattern`. Refused while the group has live
    /// members on another pattern, or while another group maps to the same consumer name.
    fn join_group(
        self: &Arc<Self>,
        group: &str,
        pattern: &Pattern,
    ) -> Result<GroupMember, SubscribeError> {
        let consumer = sanitize_name(group);
        let mut groups = lock(&self.groups);
        match groups.get_mut(&consumer) {
            Some(g) if g.group != group => {
                return Err(SubscribeError::InvalidConfig(
                    "another group with live members maps to the same NATS consumer name \
                     (names differ only in characters other than letters, digits, - and _)",
                ));
            }
            Some(g) if g.pattern != *pattern => {
                return Err(SubscribeError::InvalidConfig(
                    "group already subscribed with another pattern",
                ));
            }
            Some(g) => g.members += 1,
            None => {
                groups.insert(
                    consumer.clone(),
                    GroupUse {
                        group: group.to_owned(),
                        pattern: pattern.clone(),
                        members: 1,
                    },
                );
            }
        }
        Ok(GroupMember {
            inner: self.clone(),
            consumer,
        })
    }
}

impl NatsTransport {
    /// Streams that may hold topics matching `pattern`.
    fn streams_for(&self, pattern: &Pattern) -> Vec<String> {
        self.inner
            .config
            .streams
            .iter()
            .filter(|s| s.patterns.iter().any(|p| overlap(p, pattern)))
            .map(|s| sanitize_name(&s.name))
            .collect()
    }

    /// The subjects of a stream, as configured.
    fn stream_subjects(&self, stream: &str) -> Vec<String> {
        self.inner
            .config
            .streams
            .iter()
            .filter(|s| sanitize_name(&s.name) == stream)
            .flat_map(|s| s.patterns.iter().flat_map(|p| pattern_subjects(p).list))
            .collect()
    }
}

impl Subscriber for NatsTransport {
    type Stream = NatsSubscription;

    /// One pull consumer per stream that may hold matching topics: durable (named after the
    /// group, starting at the oldest message) for a group, ephemeral (starting at new
    /// messages) without one.
    ///
    /// A group reads one pattern: while it has live members on this transport, subscribing
    /// it with another pattern (or subscribing another group that maps to the same consumer
    /// name) fails with [`SubscribeError::InvalidConfig`].
    async fn subscribe(
        &self,
        pattern: &Pattern,
        group: Option<&str>,
    ) -> Result<NatsSubscription, SubscribeError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::ShuttingDown);
        }
        if group == Some("") {
            return Err(SubscribeError::InvalidConfig("empty group name"));
        }
        // Held by the subscription; taken before any await so two concurrent subscribes of
        // one group cannot both pass the check.
        let member = group
            .map(|g| self.inner.join_group(g, pattern))
            .transpose()?;
        let streams = self.streams_for(pattern);
        if streams.is_empty() {
            return Err(TransportError::new(
                TransportErrorKind::Rejected,
                format!("no configured stream holds topics matching {pattern}"),
            )
            .into());
        }
        let subjects = pattern_subjects(pattern);
        let (tx, rx) = mpsc::channel(self.inner.config.pull_batch.max(1));
        let mut tasks = Vec::new();
        for stream_name in streams {
            // A consumer filter must lie inside the stream's subjects; otherwise read the
            // whole stream and filter here.
            let mut filter = if subjects.list.len() == 1 {
                subjects.list[0].clone()
            } else {
                subjects.widened.clone()
            };
            let inside = self
                .stream_subjects(&stream_name)
                .iter()
                .any(|s| subject_subset(&filter, s));
            if filter == ">" || !inside {
                filter = String::new();
            }
            let (name, durable) = match group {
                Some(g) => (sanitize_name(g), true),
                None => (
                    format!(
                        "sy_{}_{}",
                        std::process::id(),
                        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
                    ) + &MessageId::new().to_string(),
                    false,
                ),
            };
            let c = self.inner.config.clone();
            let consumer_config = consumer_config(&c, &name, filter, durable);
            // Create it now so errors reach the caller and messages published after
            // `subscribe` returns are seen.
            let made = self
                .inner
                .js
                .create_consumer_on_stream(consumer_config.clone(), &stream_name)
                .await
                .map_err(|e| {
                    TransportError::with_source(
                        admin::consumer_error_kind(&e),
                        format!("cannot create consumer {name} on stream {stream_name}"),
                        e,
                    )
                })?;
            let spec = WorkerSpec {
                stream: stream_name,
                name,
                durable,
                config: consumer_config,
                pattern: pattern.clone(),
                tx: tx.clone(),
                strip: 0,
            };
            let worker = ConsumerWorker::new(&self.inner, spec, made.cached_info());
            // Not aborted on drop: the worker sees the channel close, hands back what it
            // had pulled and removes an ephemeral consumer.
            let alive = WorkerGuard::new(&self.inner);
            tasks.push(tokio::spawn(worker.run(alive)));
        }
        Ok(NatsSubscription {
            rx,
            inner: self.inner.clone(),
            _tasks: tasks,
            _member: member,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            ordered: true,
            consumer_groups: true,
            wildcards: true,
            delayed_delivery: false,
            dedup: true,
        }
    }

    /// Commands and requests across processes over core NATS request/reply (see
    /// [`command`](crate#commands-across-processes)).
    fn remote_commands(&self) -> Option<&dyn switchyard_core::RemoteCommands> {
        Some(self)
    }
}

/// The deliveries of one subscription. Ends when the transport is closed (at once: what it
/// had pulled and not handed out is nacked, since settling after close is refused). Dropping
/// it stops pulling; messages it had pulled and not handed out, and deliveries dropped
/// unsettled, are nacked so they are redelivered at once.
pub struct NatsSubscription {
    rx: mpsc::Receiver<Delivery>,
    inner: Arc<Inner>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    _member: Option<GroupMember>,
}

impl std::fmt::Debug for NatsSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSubscription")
            .field("consumers", &self._tasks.len())
            .finish()
    }
}

impl Stream for NatsSubscription {
    type Item = Delivery;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if self.inner.closed.load(Ordering::Acquire) {
            // Closed: settling would be refused, so hand out nothing more; what waits here
            // is dropped, i.e. nacked (redelivered at once).
            self.rx.close();
            while let Ok(waiting) = self.rx.try_recv() {
                drop(waiting);
            }
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx)
    }
}

/// A pull consumer's settings: a durable one (a group, or a durable command topic) reads the
/// stream from its start and outlives its process for the durable inactive threshold; an
/// ephemeral one reads what comes after it was made.
pub(crate) fn consumer_config(
    c: &NatsConfig,
    name: &str,
    filter: String,
    durable: bool,
) -> pull::Config {
    pull::Config {
        durable_name: durable.then(|| name.to_owned()),
        name: Some(name.to_owned()),
        deliver_policy: if durable {
            DeliverPolicy::All
        } else {
            DeliverPolicy::New
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: c.ack_wait,
        // One delivery more than allowed: that one is dead-lettered by us, with the raw
        // message, and terminated.
        max_deliver: if c.max_deliver == 0 {
            -1
        } else {
            i64::from(c.max_deliver) + 1
        },
        max_ack_pending: c.max_ack_pending as i64,
        filter_subject: filter,
        inactive_threshold: retention::inactive_threshold(c, durable),
        ..Default::default()
    }
}
