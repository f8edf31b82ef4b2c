//! Retention: the limits streams are created (or updated) with, the inactivity thresholds of
//! consumers, and removing a group's durable consumers for good.

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::ConsumerErrorKind;

use super::*;

/// Creates the stream, or updates an existing one to the configured limits. An existing
/// stream whose age or size limit differs is updated (the configuration is authoritative) and
/// the change is logged as a warning naming the old and the new limit: a tighter limit makes
/// the server remove the messages beyond it at once.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    spec_name: &str,
    stream_config: stream::Config,
) -> Result<(), ConnectError> {
    if let Ok(mut existing) = js.get_stream(&stream_config.name).await
        && let Ok(info) = existing.info().await
    {
        let old = &info.config;
        if old.max_age != stream_config.max_age || old.max_bytes != stream_config.max_bytes {
            tracing::warn!(
                stream = %stream_config.name,
                old_max_age = ?old.max_age,
                new_max_age = ?stream_config.max_age,
                old_max_bytes = old.max_bytes,
                new_max_bytes = stream_config.max_bytes,
                "existing stream's retention limits differ from the configuration; updating \
                 them (a tighter limit removes older messages now; 0 and -1 mean unlimited)"
            );
        }
    }
    js.create_or_update_stream(stream_config)
        .await
        .map_err(|source| ConnectError::Stream {
            stream: spec_name.to_owned(),
            source,
        })?;
    Ok(())
}

/// A stream's settings: the subjects of `patterns` (each under `prefix` when given), the
/// storage, replicas, duplicate window and retention limits of the configuration.
pub(super) fn stream_config(
    config: &NatsConfig,
    name: &str,
    patterns: &[Pattern],
    prefix: Option<&str>,
) -> stream::Config {
    let mut subjects: Vec<String> = Vec::new();
    for p in patterns {
        for s in pattern_subjects(p).list {
            let s = match prefix {
                Some(prefix) => format!("{prefix}.{s}"),
                None => s,
            };
            if !subjects.contains(&s) {
                subjects.push(s);
            }
        }
    }
    let (max_age, max_bytes) = stream_limits(config);
    stream::Config {
        name: sanitize_name(name),
        subjects,
        storage: match config.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: config.replicas.max(1),
        max_age,
        max_bytes,
        duplicate_window: config.duplicate_window,
        ..Default::default()
    }
}

/// The stream limits from the configuration: `max_age` (zero: unlimited, JetStream's
/// convention) and `max_bytes` (-1: unlimited).
pub(super) fn stream_limits(config: &NatsConfig) -> (Duration, i64) {
    let max_age = config.max_age.unwrap_or_default();
    let max_bytes = config
        .max_bytes
        .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
    (max_age, max_bytes)
}

/// The inactivity threshold of a consumer: the server removes it after this long without a
/// reader (zero: never).
pub(super) fn inactive_threshold(config: &NatsConfig, durable: bool) -> Duration {
    if durable {
        config.durable_inactive_threshold.unwrap_or_default()
    } else {
        config.ephemeral_inactive_threshold
    }
}

impl NatsTransport {
    /// Removes a group's durable consumers from every configured stream, for good: its
    /// position and unsettled messages are forgotten, and a later subscription of the group
    /// starts over from the oldest message the stream holds. Returns how many consumers were
    /// removed (0 when the group had none).
    ///
    /// This is what to call when a group's subscription is dropped for good. Dropping a
    /// subscription (or closing the transport) keeps the durable consumer, so the group
    /// resumes where it was after a restart; a group nobody reads is also removed by the
    /// server after [`NatsConfig::durable_inactive_threshold`].
    ///
    /// Refused with [`TransportErrorKind::Rejected`] while the group has live subscriptions on
    /// this transport (drop them first; their workers would re-create the consumer).
    pub async fn delete_group(&self, group: &str) -> Result<usize, TransportError> {
        if group.is_empty() {
            return Err(TransportError::new(
                TransportErrorKind::Rejected,
                "empty group name",
            ));
        }
        let consumer = sanitize_name(group);
        if lock(&self.inner.groups).contains_key(&consumer) {
            return Err(TransportError::new(
                TransportErrorKind::Rejected,
                format!(
                    "group {group} has live subscriptions on this transport; drop them before \
                     deleting the group"
                ),
            ));
        }
        let mut streams: Vec<String> = self
            .inner
            .config
            .streams
            .iter()
            .map(|s| sanitize_name(&s.name))
            .collect();
        streams.dedup();
        let mut removed = 0;
        for stream in streams {
            match self
                .inner
                .js
                .delete_consumer_from_stream(&consumer, &stream)
                .await
            {
                Ok(_) => removed += 1,
                Err(e)
                    if matches!(e.kind(), ConsumerErrorKind::JetStream(ref j)
                        if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND
                            || j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {}
                Err(e) => {
                    return Err(TransportError::with_source(
                        super::admin::consumer_error_kind(&e),
                        format!("cannot delete consumer {consumer} on stream {stream}"),
                        e,
                    ));
                }
            }
        }
        Ok(removed)
    }
}
