//! [`LogAck`]: settling one delivery of the log.

use super::*;

/// Settles one delivery of the log.
pub(super) struct LogAck {
    pub(super) inner: Arc<Inner>,
    pub(super) group: Arc<GroupShared>,
    pub(super) offset: u64,
    pub(super) generation: u64,
    pub(super) settled: bool,
}

impl Drop for LogAck {
    fn drop(&mut self) {
        if !self.settled {
            self.group.release(self.offset, self.generation, None);
            self.inner.notify.notify_waiters();
        }
    }
}

impl LogAck {
    /// Runs `settle` unless the log is closed. After `close` the committed offsets have been
    /// written for the last time, so a settle would be lost: it is refused with
    /// [`TransportErrorKind::Closed`] and the message comes back after reopening.
    fn if_open(&self, settle: impl FnOnce(&Self)) -> Result<(), TransportError> {
        let _gate = self
            .inner
            .settle_gate
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::new(
                TransportErrorKind::Closed,
                "log is closed: the delivery was not settled and is delivered again after \
                 the log is reopened",
            ));
        }
        settle(self);
        self.inner.notify.notify_waiters();
        Ok(())
    }
}

/// When a message put back with `delay` is due again. A delay past any sane horizon is capped
/// rather than overflowing the clock.
fn due(delay: Option<Duration>) -> Option<Instant> {
    delay.map(|d| {
        let now = Instant::now();
        now.checked_add(d.min(MAX_DURATION)).unwrap_or(now)
    })
}

impl AckHandle for LogAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        let result = self.if_open(|a| a.group.settle(a.offset, a.generation, &a.inner.commits));
        Box::pin(async move { result })
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        let at = due(delay);
        let result = self.if_open(|a| a.group.release(a.offset, a.generation, at));
        Box::pin(async move { result })
    }

    /// Like [`nack`](Self::nack), but the delivery does not count towards `max_deliver`: it
    /// was handed back unworked (a handler's `HandBack`, a delayed message not due yet, one
    /// still queued when its subscription stopped), not failed.
    fn hand_back(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        let at = due(delay);
        let result = self.if_open(|a| a.group.hand_back(a.offset, a.generation, at));
        Box::pin(async move { result })
    }

    fn term(mut self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), TransportError>> {
        self.settled = true;
        let result = self.if_open(|a| {
            tracing::debug!(stream = %a.group.stream.name, group = %a.group.name, offset = a.offset, reason = %reason, "message terminated");
            a.group.settle(a.offset, a.generation, &a.inner.commits);
        });
        Box::pin(async move { result })
    }

    /// Half the ack wait, so a keep-alive that comes a little late still lands in time.
    fn keep_alive_every(&self) -> Option<Duration> {
        Some((self.inner.settings.ack_wait / 2).max(Duration::from_millis(1)))
    }

    /// Moves the delivery's ack deadline to a full ack wait from now, at once (no future).
    /// After close nothing is extended: the delivery comes back after reopening anyway.
    fn keep_alive(&self) -> Option<BoxFuture<'static, Result<(), TransportError>>> {
        if !self.settled && !self.inner.closed.load(Ordering::Acquire) {
            let now = Instant::now();
            let until = now
                .checked_add(self.inner.settings.ack_wait.min(MAX_DURATION))
                .unwrap_or(now);
            self.group.keep_alive(self.offset, self.generation, until);
            // The reader may be sleeping until the old deadline: it wakes then, finds the
            // message not due and sleeps until the new one.
        }
        None
    }
}
