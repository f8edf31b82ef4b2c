//! Defaults from `switchyard-middleware` wired into the bus (feature `middleware`).

use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use switchyard_core::{Envelope, Topic};
use switchyard_middleware::dlq::{FileDeadLetterQueue, FileDlqOptions};
use switchyard_middleware::metrics::record;
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use tower::Layer;

use crate::bus::{BuildError, Bus, BusBuilder, BusInner};
use crate::handler::boxed;

/// Where the default file dead-letter queue lives, under the bus's data directory.
pub const DEAD_LETTER_FILE: &str = "dead-letters.jsonl";

impl BusBuilder {
    /// The default resilience stack on every subscription and command handler:
    /// `ResilienceLayer` with `ResilienceConfig::default()` (trace, metrics, retry with 3
    /// attempts and full jitter from 100 ms to 10 s, breaker 5 failures / 30 s cool-down,
    /// 30 s timeout, panic capture, dedup off; the order is documented in
    /// `switchyard_middleware`). The layer does the retrying, so the bus's own attempts are
    /// set to 1. Breaker changes are published as `switchyard.breaker.opened` /
    /// `.half_opened` / `.closed` events. With [`data_dir`](Self::data_dir) set, dead letters
    /// go to a file queue there ([`DEAD_LETTER_FILE`]) that survives restarts.
    pub fn with_default_resilience(self) -> Self {
        self.with_resilience(ResilienceConfig::default)
    }

    /// Like [`with_default_resilience`](Self::with_default_resilience) with a config of your
    /// own, made once per handler by `config`.
    pub fn with_resilience<F>(mut self, config: F) -> Self
    where
        F: Fn() -> ResilienceConfig + Send + Sync + 'static,
    {
        if let Some(dir) = self.data_dir_ref() {
            match FileDeadLetterQueue::open(dir.join(DEAD_LETTER_FILE), FileDlqOptions::default()) {
                Ok(dlq) => self = self.dead_letters(Arc::new(dlq)),
                Err(e) => self = self.defer_error(BuildError::DeadLetters(e.to_string())),
            }
        }
        let slot = self.bus_slot();
        self.max_attempts(1).wrap_handlers(move |name, handler| {
            let slot = slot.clone();
            let config =
                config().on_breaker_transition(move |event| publish_breaker_event(&slot, event));
            boxed(ResilienceLayer::new(name, config).layer(handler))
        })
    }
}

fn publish_breaker_event(
    slot: &Arc<OnceLock<Weak<BusInner>>>,
    event: &switchyard_middleware::breaker::BreakerEvent,
) {
    let Some(bus) = slot.get().and_then(Bus::from_weak) else {
        return;
    };
    let (Ok(topic), Ok(payload)) = (Topic::new(event.topic()), serde_json::to_vec(event)) else {
        return;
    };
    let env = Envelope::new(topic, payload).with_source(event.handler.clone());
    // The observer runs inside the breaker; publishing is async, so it goes through a task.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            if let Err(e) = bus.publish_envelope(env).await {
                tracing::warn!(error = %e, "breaker event not published");
            }
        });
    }
}

impl Bus {
    /// Reports the bus's gauges through the `metrics` facade every `every`: queue depth per
    /// subscription, dead-letter store size and evictions, active sessions. Install a recorder
    /// first (`switchyard_middleware::metrics::install_prometheus`). Stops when the bus shuts
    /// down.
    pub fn report_metrics(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut evicted_seen = 0;
            let mut tick = tokio::time::interval(every);
            while !bus.is_shutting_down() {
                tick.tick().await;
                let snapshot = bus.metrics_snapshot();
                for sub in &snapshot.subscriptions {
                    record::queue_depth(&sub.name, sub.depth);
                }
                let mut sessions: Vec<&str> = snapshot
                    .subscriptions
                    .iter()
                    .filter_map(|s| s.session.as_deref())
                    .collect();
                sessions.sort_unstable();
                sessions.dedup();
                record::active_sessions(sessions.len());
                record::dlq_size(snapshot.dead_letters);
                record::dlq_evicted(snapshot.dead_letters_evicted.saturating_sub(evicted_seen));
                evicted_seen = snapshot.dead_letters_evicted;
            }
        })
    }
}

/// Used by tests and docs: the file the default dead-letter queue writes under `dir`.
pub fn dead_letter_file(dir: &Path) -> std::path::PathBuf {
    dir.join(DEAD_LETTER_FILE)
}
