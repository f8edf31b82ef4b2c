//! [`LogTransport::delete_group`]: forgetting a durable group for good.

use std::collections::BTreeSet;

use super::*;
use crate::offsets;

impl LogTransport {
    /// Removes a durable group from every stream, for good: its committed offset (on disk
    /// and pending) and its unsettled messages are forgotten, so compaction
    /// ([`Retention::delete_consumed`](crate::Retention::delete_consumed)) is no longer held
    /// back by it, and a later subscription under the same name starts over like a new group
    /// (at the [`StartPosition`]). The deletion is written before this returns, so it holds
    /// across a restart. Returns on how many streams the group was removed (0 when it had
    /// no offset on any).
    ///
    /// This is what to call when a group's subscription is dropped for good: dropping a
    /// subscription (or closing the log) keeps the group's offset, so it resumes where it
    /// was, and, with `delete_consumed`, the log keeps every record it has not settled.
    ///
    /// Refused with [`TransportErrorKind::Rejected`] while the group has live subscriptions
    /// (drop them first) or for an empty name, with [`TransportErrorKind::Closed`] once the
    /// log is closed, and with [`TransportErrorKind::Unavailable`] when an offsets file cannot
    /// be written (the group then stays on the streams not yet rewritten).
    pub async fn delete_group(&self, group: &str) -> Result<usize, TransportError> {
        if group.is_empty() {
            return Err(TransportError::new(
                TransportErrorKind::Rejected,
                "empty group name",
            ));
        }
        let inner = self.inner.clone();
        let group = group.to_owned();
        // It writes and syncs files: off the async threads.
        match tokio::task::spawn_blocking(move || inner.delete_group(&group)).await {
            Ok(result) => result,
            Err(e) => Err(TransportError::with_source(
                TransportErrorKind::Unavailable,
                "group deletion did not finish",
                e,
            )),
        }
    }
}

impl Inner {
    fn delete_group(&self, group: &str) -> Result<usize, TransportError> {
        // Shared like a settle: `close` waits for it, and it never writes after the final
        // commit of a close.
        let _gate = self.settle_gate.read().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::new(
                TransportErrorKind::Closed,
                "log is closed",
            ));
        }
        // Held throughout: no subscription joins or creates the group meanwhile.
        let mut map = lock(&self.groups);
        let known: Vec<((usize, String), Arc<GroupShared>)> = map
            .iter()
            .filter(|((_, name), g)| name == group && g.durable)
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        if known.iter().any(|(_, g)| lock(&g.state).members > 0) {
            return Err(TransportError::new(
                TransportErrorKind::Rejected,
                format!(
                    "group {group} has live subscriptions; drop them before deleting the group"
                ),
            ));
        }
        let mut removed: BTreeSet<usize> = BTreeSet::new();
        for (key, g) in &known {
            lock(&g.state).deleted = true;
            map.remove(key);
        }
        let _writing = lock(&self.commit_write);
        lock(&self.commits).retain(|(i, name), _| {
            let hit = name == group;
            if hit {
                removed.insert(*i);
            }
            !hit
        });
        for (i, stream) in self.streams.iter().enumerate() {
            let mut all = lock(&stream.committed).clone();
            if all.remove(group).is_none() {
                continue;
            }
            offsets::store_all(&stream.dir.join("groups"), &all).map_err(|e| {
                TransportError::with_source(
                    TransportErrorKind::Unavailable,
                    format!(
                        "cannot write the committed offsets of stream {}",
                        stream.name
                    ),
                    e,
                )
            })?;
            *lock(&stream.committed) = all;
            removed.insert(i);
        }
        Ok(removed.len())
    }
}
