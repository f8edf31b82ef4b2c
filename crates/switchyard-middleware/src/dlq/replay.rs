use std::collections::HashMap;
use std::future::Future;

use serde::{Deserialize, Serialize};
use switchyard_core::{
    BoxFuture, DeadLetter, DeliveryInfo, Envelope, MessageId, PublishError, Publisher,
};

use super::{DeadLetterFilter, DeadLetterKey, DeadLetterQueue, ReplayError};

pub use switchyard_core::dead_letter::{REPLAY_COUNT, REPLAYED_FROM};

/// Where replayed messages go: usually the bus's publish.
///
/// Implemented for closures `Fn(Envelope) -> impl Future<Output = Result<(), PublishError>>`
/// and, through [`PublisherRepublish`], for any transport [`Publisher`].
pub trait Republish: Send + Sync {
    /// Publishes one replayed envelope; `Ok` once it was accepted.
    fn republish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), PublishError>>;
}

impl<F, Fut> Republish for F
where
    F: Fn(Envelope) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), PublishError>> + Send + 'static,
{
    fn republish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(self(envelope))
    }
}

/// Republishes through a transport [`Publisher`] (a batch of one).
#[derive(Debug, Clone)]
pub struct PublisherRepublish<P>(pub P);

impl<P: Publisher> Republish for PublisherRepublish<P> {
    fn republish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(self.0.publish(vec![envelope]))
    }
}

/// The envelope a replay publishes for `letter`: the original (same id, topic, headers and
/// payload) with a fresh delivery count and the [`REPLAYED_FROM`] / [`REPLAY_COUNT`] headers.
pub fn replay_envelope(letter: &DeadLetter) -> Envelope {
    let mut env = letter.envelope.clone();
    env.delivery = DeliveryInfo::default();
    let count = env
        .header(REPLAY_COUNT)
        .and_then(|c| c.parse::<u32>().ok())
        .unwrap_or(0)
        .saturating_add(1);
    let from = letter.handler.as_deref().unwrap_or("unknown").to_owned();
    env.headers_mut().insert(REPLAYED_FROM, from);
    env.headers_mut().insert(REPLAY_COUNT, count.to_string());
    env
}

/// One entry a replay could not re-publish (it stays in the queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayFailure {
    /// The message.
    pub id: MessageId,
    /// Why, as text.
    pub error: String,
}

/// What a bulk replay did, per message (a message with several entries counts once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Messages re-published, in order.
    pub replayed: Vec<MessageId>,
    /// Messages that could not be re-published or removed.
    pub failed: Vec<ReplayFailure>,
}

/// Replays dead letters from a queue into a [`Republish`] target.
#[derive(Debug)]
pub struct Replayer<'a, Q: ?Sized, R: ?Sized> {
    queue: &'a Q,
    target: &'a R,
    keep: bool,
}

impl<'a, Q, R> Replayer<'a, Q, R>
where
    Q: DeadLetterQueue + ?Sized,
    R: Republish + ?Sized,
{
    /// A replayer from `queue` into `target`; entries are removed once re-published.
    pub fn new(queue: &'a Q, target: &'a R) -> Self {
        Self {
            queue,
            target,
            keep: false,
        }
    }

    /// Keeps entries in the queue after re-publishing them (default: removed).
    ///
    /// A kept entry replayed again carries the same replay count as before: on NATS its
    /// second replay within the stream's duplicate window has the same dedup key as the
    /// first and is dropped by JetStream as a repeat (it still counts as replayed here).
    pub fn keep_entries(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Replays one message: publishes it once (from its newest entry) and removes the
    /// entries it had when the replay started (one per handler that gave up on it). An entry
    /// added while the publish runs (the replay failing again) stays.
    pub async fn one(&self, id: MessageId) -> Result<(), ReplayError> {
        let entries = self.queue.entries_of(&id);
        if entries.is_empty() {
            return Err(ReplayError::NotFound(id));
        }
        self.replay_entries(&entries).await
    }

    /// Replays every message, oldest first (see [`filtered`](Self::filtered)).
    pub async fn all(&self) -> ReplayReport {
        self.filtered(&DeadLetterFilter::default()).await
    }

    /// Replays the messages of the entries matching `filter` (up to its limit, in entries),
    /// oldest first: each message once, however many of its entries matched, and those
    /// entries are removed (by key: an entry added while the replay runs stays). A failed
    /// message does not stop the others.
    pub async fn filtered(&self, filter: &DeadLetterFilter) -> ReplayReport {
        let mut report = ReplayReport::default();
        for (id, entries) in by_message(self.queue.entries(filter)) {
            match self.replay_entries(&entries).await {
                Ok(()) => report.replayed.push(id),
                Err(e) => report.failed.push(ReplayFailure {
                    id,
                    error: e.to_string(),
                }),
            }
        }
        report
    }

    /// Publishes the message of `entries` (all of one message id, oldest first) once, from
    /// the newest, then removes exactly these entries.
    async fn replay_entries(
        &self,
        entries: &[(DeadLetterKey, DeadLetter)],
    ) -> Result<(), ReplayError> {
        let Some((_, letter)) = entries.last() else {
            return Ok(());
        };
        let id = &letter.envelope.id;
        self.target
            .republish(replay_envelope(letter))
            .await
            .map_err(|source| ReplayError::Publish {
                id: id.clone(),
                source,
            })?;
        if !self.keep {
            let keys: Vec<DeadLetterKey> = entries.iter().map(|(key, _)| *key).collect();
            self.queue
                .remove_entries(&keys)
                .map_err(|source| ReplayError::Remove {
                    id: id.clone(),
                    source,
                })?;
        }
        ::tracing::info!(message_id = %id, topic = %letter.envelope.topic, entries = entries.len(), "dead letter replayed");
        Ok(())
    }
}

/// Groups entries (oldest first) by message id, in the order each id first appears.
fn by_message(
    entries: Vec<(DeadLetterKey, DeadLetter)>,
) -> Vec<(MessageId, Vec<(DeadLetterKey, DeadLetter)>)> {
    let mut groups: Vec<(MessageId, Vec<(DeadLetterKey, DeadLetter)>)> = Vec::new();
    let mut at: HashMap<MessageId, usize> = HashMap::new();
    for (key, letter) in entries {
        let id = letter.envelope.id.clone();
        match at.get(&id) {
            Some(&i) => {
                if let Some((_, group)) = groups.get_mut(i) {
                    group.push((key, letter));
                }
            }
            None => {
                at.insert(id.clone(), groups.len());
                groups.push((id, vec![(key, letter)]));
            }
        }
    }
    groups
}
