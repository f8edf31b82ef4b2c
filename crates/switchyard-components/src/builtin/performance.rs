//! The performance tracker: an EWMA baseline of latency per component and action, flagging
//! values that leave their band.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard::Message;
use tokio::time::Instant;

use super::SYSTEM_DOMAIN;
use crate::component::ComponentBuilder;
use crate::context::Completion;
use crate::role::Role;

/// An exponentially weighted mean and mean absolute deviation.
///
/// ```
/// use switchyard_components::builtin::Baseline;
/// let mut b = Baseline::new(0.2);
/// for _ in 0..50 { b.observe(10.0); }
/// assert!((b.mean() - 10.0).abs() < 1e-9);
/// assert!(b.is_anomaly(100.0, 4.0, 1.0));
/// assert!(!b.is_anomaly(10.5, 4.0, 1.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Baseline {
    alpha: f64,
    mean: f64,
    deviation: f64,
    samples: u64,
}

impl Baseline {
    /// A baseline with smoothing factor `alpha` (0 < alpha ≤ 1; larger follows changes faster).
    pub fn new(alpha: f64) -> Self {
        Self {
            alpha: alpha.clamp(f64::MIN_POSITIVE, 1.0),
            mean: 0.0,
            deviation: 0.0,
            samples: 0,
        }
    }

    /// Adds one value.
    pub fn observe(&mut self, x: f64) {
        if self.samples == 0 {
            self.mean = x;
            self.deviation = 0.0;
        } else {
            let err = x - self.mean;
            self.mean += self.alpha * err;
            self.deviation += self.alpha * (err.abs() - self.deviation);
        }
        self.samples += 1;
    }

    /// The smoothed mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The smoothed mean absolute deviation.
    pub fn deviation(&self) -> f64 {
        self.deviation
    }

    /// Values observed.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// True when `x` is further than `k` deviations (and at least `floor`) from the mean.
    pub fn is_anomaly(&self, x: f64, k: f64, floor: f64) -> bool {
        self.samples > 0 && (x - self.mean).abs() > (k * self.deviation).max(floor)
    }
}

/// A value that left its band, published on `system.performance.anomaly`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The component.
    pub component: SmolStr,
    /// The action.
    pub action: SmolStr,
    /// The metric (`latency_ms`).
    pub metric: String,
    /// The value seen.
    pub value: f64,
    /// The baseline mean before it.
    pub mean: f64,
    /// The baseline deviation before it.
    pub deviation: f64,
}

impl Message for Anomaly {
    const TOPIC: &'static str = "system.performance.anomaly";
}

struct State {
    baselines: BTreeMap<(SmolStr, SmolStr), Baseline>,
    rates: BTreeMap<(SmolStr, SmolStr), (Instant, Baseline)>,
    anomalies: VecDeque<Anomaly>,
}

/// Learns a latency baseline and a rate baseline (completions per second, from the time
/// between two completions) per (component, action) from every [`Completion`] (the four
/// result phases), and flags latency anomalies after `warmup` samples when a value is more than `k`
/// deviations from the mean (and at least `floor_ms`).
#[derive(Clone)]
pub struct PerformanceTracker {
    state: Arc<Mutex<State>>,
    alpha: f64,
    k: f64,
    floor_ms: f64,
    warmup: u64,
}

impl std::fmt::Debug for PerformanceTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerformanceTracker")
            .field("k", &self.k)
            .finish()
    }
}

impl PerformanceTracker {
    /// The component name.
    pub const NAME: &'static str = "performance-tracker";

    /// A tracker with EWMA factor `alpha`, band `k` deviations, a floor in ms and a warm-up.
    pub fn new(alpha: f64, k: f64, floor_ms: f64, warmup: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                baselines: BTreeMap::new(),
                rates: BTreeMap::new(),
                anomalies: VecDeque::new(),
            })),
            alpha,
            k,
            floor_ms,
            warmup,
        }
    }

    /// Adds one latency sample; returns the anomaly if it left the band.
    pub fn observe(&self, component: &str, action: &str, latency_ms: f64) -> Option<Anomaly> {
        let mut st = self.state.lock();
        let now = Instant::now();
        let key = (SmolStr::new(component), SmolStr::new(action));
        match st.rates.get_mut(&key) {
            Some((last, rate)) => {
                let dt = now.saturating_duration_since(*last).as_secs_f64();
                if dt > 0.0 {
                    rate.observe(1.0 / dt);
                }
                *last = now;
            }
            None => {
                st.rates.insert(key, (now, Baseline::new(self.alpha)));
            }
        }
        let b = st
            .baselines
            .entry((SmolStr::new(component), SmolStr::new(action)))
            .or_insert_with(|| Baseline::new(self.alpha));
        let anomaly = (b.samples() >= self.warmup
            && b.is_anomaly(latency_ms, self.k, self.floor_ms))
        .then(|| Anomaly {
            component: SmolStr::new(component),
            action: SmolStr::new(action),
            metric: "latency_ms".into(),
            value: latency_ms,
            mean: b.mean(),
            deviation: b.deviation(),
        });
        b.observe(latency_ms);
        if let Some(a) = &anomaly {
            if st.anomalies.len() >= 1000 {
                st.anomalies.pop_front();
            }
            st.anomalies.push_back(a.clone());
        }
        anomaly
    }

    /// The baseline of one (component, action).
    pub fn baseline(&self, component: &str, action: &str) -> Option<Baseline> {
        self.state
            .lock()
            .baselines
            .get(&(SmolStr::new(component), SmolStr::new(action)))
            .copied()
    }

    /// The rate baseline (completions per second) of one (component, action).
    pub fn rate(&self, component: &str, action: &str) -> Option<Baseline> {
        self.state
            .lock()
            .rates
            .get(&(SmolStr::new(component), SmolStr::new(action)))
            .map(|(_, b)| *b)
    }

    /// Every baseline, sorted.
    pub fn baselines(&self) -> Vec<((SmolStr, SmolStr), Baseline)> {
        self.state
            .lock()
            .baselines
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Anomalies flagged (the last 1000).
    pub fn anomalies(&self) -> Vec<Anomaly> {
        self.state.lock().anomalies.iter().cloned().collect()
    }

    /// The component to add to an assembly (subscribes to every result phase; publishes
    /// anomalies on `system.performance.anomaly`).
    pub fn component(&self) -> ComponentBuilder {
        let mut b = ComponentBuilder::new(Self::NAME, Role::System, SYSTEM_DOMAIN)
            .publishes(Anomaly::TOPIC);
        for phase in [
            Role::Processor.result_phase(),
            Role::Handler.result_phase(),
            Role::Service.result_phase(),
            Role::Manager.result_phase(),
        ] {
            let me = self.clone();
            b = b.on::<Completion<serde_json::Value>, _, _, _, _>(
                &format!("*.*.{phase}"),
                move |done, cx| {
                    let me = me.clone();
                    async move {
                        if let Some(a) =
                            me.observe(&done.component, &done.action, done.duration_ms as f64)
                        {
                            cx.publish(a).await?;
                        }
                        Ok::<_, switchyard::PublishError>(())
                    }
                },
            );
        }
        b
    }
}
