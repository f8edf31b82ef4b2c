//! Live figures for the dashboard and for scripts: a sampler takes one sample of the node's
//! counters every second into a bounded ring (the last 15 minutes, `GET /v1/stats/history`),
//! and broadcasts it with the full stats, raised/resolved alerts and new dead letters to the
//! `GET /v1/stream` server-sent-event subscribers. It also keeps the windowed per-subscription
//! and per-publisher rates that component health (`GET /v1/health`) and the observed
//! topology edges (`observed` in `GET /v1/topology`) are computed from.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use smol_str::SmolStr;
use switchyard::SubscriptionInfo;
use tokio::sync::broadcast;

use crate::state::AppState;

pub(crate) mod health;
pub(crate) mod observed;
pub(crate) mod replays;

/// One sample every this long.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: 15 minutes at one a second.
pub(crate) const HISTORY_SAMPLES: usize = 900;
/// Samples the recent rates (health, edge rates) are measured over.
pub(crate) const WINDOW_SAMPLES: usize = 10;
/// Events a slow stream subscriber may fall behind before it skips some.
const EVENT_BUFFER: usize = 256;

/// One point of the node's history: rates over the last interval and levels now.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub(crate) struct Sample {
    /// When, ms since the Unix epoch.
    pub(crate) t_ms: u64,
    /// Deliveries acked per second over the last interval, every subscription together.
    pub(crate) handled_per_s: f64,
    /// Failed, rejected, panicked and undecodable deliveries per second.
    pub(crate) errors_per_s: f64,
    /// Messages published or sent on this node's bus per second (gateway, components,
    /// handlers' follow-ups).
    pub(crate) published_per_s: f64,
    /// Deliveries being handled now.
    pub(crate) in_flight: u64,
    /// Messages waiting in subscription queues.
    pub(crate) queued: u64,
    /// Accepted messages not yet settled.
    pub(crate) pending: u64,
    /// Entries in the dead-letter queue.
    pub(crate) dead_letters: u64,
    /// Circuit breakers open.
    pub(crate) breakers_open: u64,
    /// Alerts firing.
    pub(crate) alerts_firing: u64,
}

/// One server-sent event: its name and its JSON data, serialized once for every subscriber.
#[derive(Debug, Clone)]
pub(crate) struct LiveEvent {
    /// `sample`, `stats`, `alert`, `dead_letter` or `replay`.
    pub(crate) kind: &'static str,
    /// The JSON data.
    pub(crate) data: Arc<str>,
}

/// Cumulative counters at one instant, kept for the window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    at: Option<Instant>,
    /// acked, errors per subscription.
    pub(crate) subs: HashMap<String, (u64, u64)>,
    /// Publishes per (source, topic).
    pub(crate) publishes: HashMap<(SmolStr, SmolStr), u64>,
    acked: u64,
    errors: u64,
    published: u64,
}

/// What changed between the oldest and the newest counters of the window.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// Seconds the window spans (0 before the second sample).
    pub(crate) seconds: f64,
    /// acked/s, errors/s per subscription.
    pub(crate) subs: HashMap<String, (f64, f64)>,
    /// Publishes/s per (source, topic).
    pub(crate) publishes: HashMap<(SmolStr, SmolStr), f64>,
}

#[derive(Default)]
struct Inner {
    history: VecDeque<Sample>,
    window: VecDeque<Counters>,
}

/// The history ring, the event channel, the publish counts and the window.
pub(crate) struct Live {
    inner: Mutex<Inner>,
    events: broadcast::Sender<LiveEvent>,
    /// Publishes per (source, topic), fed by the bus's publish hook.
    pub(crate) publishes: observed::PublishCounts,
    /// What became of replayed dead letters (`GET /v1/dlq/replays`).
    pub(crate) replays: replays::Replays,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            publishes: observed::PublishCounts::default(),
            replays: replays::Replays::default(),
        }
    }
}

/// The errors of a subscription: every way a delivery can fail.
pub(crate) fn errors_of(s: &SubscriptionInfo) -> u64 {
    let st = &s.stats;
    st.failed + st.rejected + st.panicked + st.decode_failed
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.events.subscribe()
    }

    /// Sends an event to the stream subscribers (none: nothing is serialized).
    pub(crate) fn emit<T: Serialize>(&self, kind: &'static str, data: &T) {
        if self.events.receiver_count() == 0 {
            return;
        }
        if let Ok(json) = serde_json::to_string(data) {
            let _ = self.events.send(LiveEvent {
                kind,
                data: json.into(),
            });
        }
    }

    /// Records what `subscription` made of a delivery of `id` when `id` is a watched
    /// replay, and announces it as a `replay` event.
    pub(crate) fn replay_delivered(
        &self,
        id: &switchyard::MessageId,
        subscription: &str,
        result: &Result<switchyard::Outcome, switchyard::BoxError>,
    ) {
        if let Some(state) = self.replays.delivered(id, subscription, result) {
            self.emit("replay", &state);
        }
    }

    /// Records that `id` was dead-lettered again when it is a watched replay, and announces
    /// it as a `replay` event.
    pub(crate) fn replay_dead_lettered(
        &self,
        id: &switchyard::MessageId,
        handler: Option<&str>,
        error: &str,
    ) {
        if let Some(state) = self.replays.dead_lettered(id, handler, error) {
            self.emit("replay", &state);
        }
    }

    /// The samples at or after `since_ms`, oldest first.
    pub(crate) fn history(&self, since_ms: u64) -> Vec<Sample> {
        self.lock()
            .history
            .iter()
            .filter(|s| s.t_ms >= since_ms)
            .cloned()
            .collect()
    }

    /// The newest sample.
    pub(crate) fn last(&self) -> Option<Sample> {
        self.lock().history.back().cloned()
    }

    /// Rates over the window (up to [`WINDOW_SAMPLES`] seconds).
    pub(crate) fn recent(&self) -> Recent {
        let st = self.lock();
        let (Some(old), Some(new)) = (st.window.front(), st.window.back()) else {
            return Recent::default();
        };
        let seconds = match (old.at, new.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        if seconds <= 0.0 {
            return Recent::default();
        }
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        Recent {
            seconds,
            subs: new
                .subs
                .iter()
                .map(|(k, &(acked, errors))| {
                    let (a0, e0) = old.subs.get(k).copied().unwrap_or((0, 0));
                    (k.clone(), (rate(a0, acked), rate(e0, errors)))
                })
                .collect(),
            publishes: new
                .publishes
                .iter()
                .map(|(k, &n)| {
                    (
                        k.clone(),
                        rate(old.publishes.get(k).copied().unwrap_or(0), n),
                    )
                })
                .collect(),
        }
    }

    /// Takes one sample of `state` now: pushes it into the history and the window, and sends
    /// it (and the full stats) to the stream subscribers.
    pub(crate) fn sample(&self, state: &AppState) -> Sample {
        let snapshot = state.bus.metrics_snapshot();
        let mut c = Counters {
            at: Some(Instant::now()),
            publishes: self.publishes.snapshot(),
            ..Counters::default()
        };
        let (mut in_flight, mut queued) = (0u64, 0u64);
        for s in &snapshot.subscriptions {
            let errors = errors_of(s);
            c.acked += s.stats.acked;
            c.errors += errors;
            in_flight += s.in_flight as u64;
            queued += s.depth as u64;
            c.subs.insert(s.name.clone(), (s.stats.acked, errors));
        }
        c.published = c.publishes.values().sum::<u64>() + self.publishes.overflow();
        let breakers_open = state
            .health
            .breakers(&state.bus)
            .iter()
            .filter(|(_, s)| *s == switchyard_middleware::breaker::BreakerState::Open)
            .count() as u64;
        let sample = {
            let mut st = self.lock();
            let (handled, errors, published) = match st.window.back() {
                Some(prev) => {
                    let dt = prev
                        .at
                        .zip(c.at)
                        .map_or(0.0, |(a, b)| b.saturating_duration_since(a).as_secs_f64());
                    // Counters restart with the bus: a drop is no negative rate.
                    let rate = |a: u64, b: u64| {
                        if dt > 0.0 {
                            b.saturating_sub(a) as f64 / dt
                        } else {
                            0.0
                        }
                    };
                    (
                        rate(prev.acked, c.acked),
                        rate(prev.errors, c.errors),
                        rate(prev.published, c.published),
                    )
                }
                None => (0.0, 0.0, 0.0),
            };
            let sample = Sample {
                t_ms: now_ms(),
                handled_per_s: handled,
                errors_per_s: errors,
                published_per_s: published,
                in_flight,
                queued,
                pending: snapshot.pending as u64,
                dead_letters: state.dlq.len() as u64,
                breakers_open,
                alerts_firing: state.alerts.firing() as u64,
            };
            if st.window.len() > WINDOW_SAMPLES {
                st.window.pop_front();
            }
            st.window.push_back(c);
            if st.history.len() >= HISTORY_SAMPLES {
                st.history.pop_front();
            }
            st.history.push_back(sample.clone());
            sample
        };
        if self.events.receiver_count() > 0 {
            self.emit("sample", &sample);
            self.emit("stats", &crate::scrape::stats_json(state));
        }
        sample
    }
}

/// Samples every [`SAMPLE_EVERY`] until the node stops (the first sample at once).
pub(crate) async fn run_sampler(state: AppState) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        state.live.sample(&state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64) -> Sample {
        Sample {
            t_ms,
            handled_per_s: 0.0,
            errors_per_s: 0.0,
            published_per_s: 0.0,
            in_flight: 0,
            queued: 0,
            pending: 0,
            dead_letters: 0,
            breakers_open: 0,
            alerts_firing: 0,
        }
    }

    #[test]
    fn the_history_is_bounded_and_filtered_by_time() {
        let live = Live::default();
        {
            let mut st = live.lock();
            for t in 0..(HISTORY_SAMPLES as u64 + 50) {
                if st.history.len() >= HISTORY_SAMPLES {
                    st.history.pop_front();
                }
                st.history.push_back(sample(t));
            }
        }
        let all = live.history(0);
        assert_eq!(all.len(), HISTORY_SAMPLES);
        assert_eq!(all[0].t_ms, 50, "the oldest samples went first");
        assert_eq!(live.history(940).len(), 10);
        assert_eq!(live.last().map(|s| s.t_ms), Some(949));
    }

    #[test]
    fn no_event_is_serialized_without_a_subscriber_and_one_arrives_with_one() {
        let live = Live::default();
        live.emit("alert", &serde_json::json!({"rule": "x"}));
        let mut rx = live.subscribe();
        live.emit("alert", &serde_json::json!({"rule": "y"}));
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.kind, "alert");
        assert_eq!(&*ev.data, r#"{"rule":"y"}"#);
        assert!(
            rx.try_recv().is_err(),
            "the event before the subscription is not replayed"
        );
    }
}
