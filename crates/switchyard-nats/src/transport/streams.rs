//! The configured streams made again after a reconnect: a server restarted with memory
//! storage (or a new server without them) has lost them, and every publish would fail "no
//! stream found" for good while the connection looks healthy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;

use super::{Inner, durable, retention};
use crate::config::NatsConfig;
use crate::error::ConnectError;

/// Longest pause between two attempts to make the streams again.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Whether the configured streams are known to exist on the server the connection is on.
///
/// Shared (an `Arc`) by the transport and the client's event callback, which calls
/// [`Streams::reconnected`] on every [`Connected`](async_nats::Event::Connected) after the
/// first: the streams count as missing until they have been created or updated again
/// (`create_or_update_stream`, the same as `connect` does), and the transport is not ready
/// meanwhile ([`Health::streams_ready`](super::Health::streams_ready)). Consumers are not
/// made here: once the streams are made again, [`Streams::remade`] tells every consumer
/// worker, which asks the server for its consumer and re-creates it when the server lost it.
pub(crate) struct Streams {
    ready: AtomicBool,
    /// Bumped on every reconnect: an attempt that started before the last reconnect does not
    /// mark the streams ready (the server it made them on may be gone).
    generation: AtomicU64,
    /// The transport. Weak: the client's event callback holds this.
    owner: OnceLock<Weak<Inner>>,
    /// Counts the times the streams were made again after a reconnect.
    remade: watch::Sender<u64>,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            owner: OnceLock::new(),
            remade: watch::Sender::new(0),
        }
    }
}

impl Streams {
    /// `true` unless a reconnect happened and the streams are not made again yet.
    pub(crate) fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Changes each time the streams have been made again after a reconnect: a consumer
    /// worker then checks that the server still has its consumer.
    pub(super) fn remade(&self) -> watch::Receiver<u64> {
        self.remade.subscribe()
    }

    /// Called once the transport is made (it was made with the streams). A reconnect
    /// while it was being made had no transport to work with: handled now.
    pub(super) fn attach(self: &Arc<Self>, owner: &Arc<Inner>) {
        let _ = self.owner.set(Arc::downgrade(owner));
        if !self.ready() {
            self.reconnected();
        }
    }

    /// After a reconnect: the streams count as missing, and a task makes them again,
    /// retrying (with a growing pause, at most [`MAX_PAUSE`]) until it works, a newer
    /// reconnect takes over, or the transport is closed or dropped.
    pub(super) fn reconnected(self: &Arc<Self>) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.ready.store(false, Ordering::Release);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                if this.generation.load(Ordering::Acquire) != generation {
                    return;
                }
                let Some(inner) = this.owner.get().and_then(Weak::upgrade) else {
                    return;
                };
                if inner.closed.load(Ordering::Acquire) {
                    return;
                }
                match ensure_all(&inner.js, &inner.config).await {
                    Ok(()) => {
                        if this.generation.load(Ordering::Acquire) == generation {
                            this.ready.store(true, Ordering::Release);
                            tracing::info!("streams made again after the reconnect");
                            this.remade.send_modify(|n| *n += 1);
                        }
                        return;
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "cannot make the streams again after a reconnect; retrying"
                    ),
                }
                drop(inner);
                // A pause between attempts while the server's JetStream comes up.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        });
    }
}

/// Creates or updates every configured stream and the durable command stream (at connect,
/// and again after a reconnect).
pub(super) async fn ensure_all(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<(), ConnectError> {
    for spec in &config.streams {
        let stream_config = retention::stream_config(config, &spec.name, &spec.patterns, None);
        retention::ensure_stream(js, &spec.name, stream_config).await?;
    }
    durable::ensure_stream(js, config).await
}
