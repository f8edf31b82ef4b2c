//! The resource monitor: the process's CPU time, resident memory and open files, compared with
//! thresholds.
//!
//! Read through `sysinfo` (Linux, macOS, Windows, the BSDs) when the crate's `sysinfo` feature
//! is on; where it cannot see the process or its open files, or when the feature is off,
//! sampling returns [`ResourceError::Unsupported`].

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchyard::{Message, PublishError};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::SYSTEM_DOMAIN;
use crate::component::ComponentBuilder;
use crate::enforce::ComponentBus;
use crate::role::Role;

/// One measurement of the process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceSample {
    /// User plus system CPU time so far, in seconds.
    pub cpu_seconds: f64,
    /// CPU use since the previous sample, in percent of one core (None for the first sample).
    pub cpu_percent: Option<f64>,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_files: u64,
}

impl Message for ResourceSample {
    const TOPIC: &'static str = "system.resource.sample";
}

/// A sample above a threshold, published on `system.resource.breach`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceBreach {
    /// `rss_bytes`, `open_files` or `cpu_percent`.
    pub metric: String,
    /// The value seen.
    pub value: f64,
    /// The threshold.
    pub limit: f64,
}

impl Message for ResourceBreach {
    const TOPIC: &'static str = "system.resource.breach";
}

/// Limits; `None` means unchecked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResourceThresholds {
    /// Resident memory.
    pub max_rss_bytes: Option<u64>,
    /// Open file descriptors.
    pub max_open_files: Option<u64>,
    /// CPU use between two samples, in percent of one core.
    pub max_cpu_percent: Option<f64>,
}

/// Sampling failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The platform does not expose this process's figures (or its open files).
    #[error("process resources are not available on this platform: {0}")]
    Unsupported(&'static str),
}

/// Samples the process and checks thresholds. Cheap to clone.
#[derive(Clone)]
pub struct ResourceMonitor {
    thresholds: ResourceThresholds,
    last: Arc<Mutex<Option<(Instant, f64)>>>,
    #[cfg(feature = "sysinfo")]
    system: Arc<Mutex<sysinfo::System>>,
}

impl std::fmt::Debug for ResourceMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceMonitor")
            .field("thresholds", &self.thresholds)
            .finish()
    }
}

impl ResourceMonitor {
    /// The component name.
    pub const NAME: &'static str = "resource-monitor";

    /// A monitor with these thresholds.
    pub fn new(thresholds: ResourceThresholds) -> Self {
        Self {
            thresholds,
            last: Arc::new(Mutex::new(None)),
            #[cfg(feature = "sysinfo")]
            system: Arc::new(Mutex::new(sysinfo::System::new())),
        }
    }

    /// The component to add to an assembly (publishes samples and breaches; no subscriptions).
    pub fn component(&self) -> ComponentBuilder {
        ComponentBuilder::new(Self::NAME, Role::System, SYSTEM_DOMAIN)
            .publishes(ResourceSample::TOPIC)
            .publishes(ResourceBreach::TOPIC)
    }

    /// Measures the process now (needs the `sysinfo` feature; without it, always
    /// [`ResourceError::Unsupported`]).
    pub fn sample(&self) -> Result<ResourceSample, ResourceError> {
        let (cpu_seconds, rss_bytes, open_files) = self.read_process()?;
        let now = Instant::now();
        let cpu_percent = {
            let mut last = self.last.lock();
            let pct = last.and_then(|(t, c)| {
                let dt = now.saturating_duration_since(t).as_secs_f64();
                (dt > 0.0).then(|| (cpu_seconds - c) / dt * 100.0)
            });
            *last = Some((now, cpu_seconds));
            pct
        };
        Ok(ResourceSample {
            cpu_seconds,
            cpu_percent,
            rss_bytes,
            open_files,
        })
    }

    #[cfg(feature = "sysinfo")]
    fn read_process(&self) -> Result<(f64, u64, u64), ResourceError> {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate};
        let pid = Pid::from_u32(std::process::id());
        let mut system = self.system.lock();
        let kind = ProcessRefreshKind::nothing().with_cpu().with_memory();
        system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
        let process = system
            .process(pid)
            .ok_or(ResourceError::Unsupported("this process is not visible"))?;
        let open_files = process
            .open_files()
            .ok_or(ResourceError::Unsupported("open files are not visible"))?;
        Ok((
            process.accumulated_cpu_time() as f64 / 1000.0,
            process.memory(),
            open_files as u64,
        ))
    }

    #[cfg(not(feature = "sysinfo"))]
    fn read_process(&self) -> Result<(f64, u64, u64), ResourceError> {
        Err(ResourceError::Unsupported(
            "switchyard-components was built without the `sysinfo` feature",
        ))
    }

    /// The thresholds `sample` is above.
    pub fn check(&self, sample: &ResourceSample) -> Vec<ResourceBreach> {
        let t = &self.thresholds;
        let mut out = Vec::new();
        if let Some(max) = t.max_rss_bytes
            && sample.rss_bytes > max
        {
            out.push(ResourceBreach {
                metric: "rss_bytes".into(),
                value: sample.rss_bytes as f64,
                limit: max as f64,
            });
        }
        if let Some(max) = t.max_open_files
            && sample.open_files > max
        {
            out.push(ResourceBreach {
                metric: "open_files".into(),
                value: sample.open_files as f64,
                limit: max as f64,
            });
        }
        if let (Some(max), Some(pct)) = (t.max_cpu_percent, sample.cpu_percent)
            && pct > max
        {
            out.push(ResourceBreach {
                metric: "cpu_percent".into(),
                value: pct,
                limit: max,
            });
        }
        out
    }

    /// Samples, publishes the sample and every breach through `bus` (the monitor's own
    /// component bus), and returns the breaches.
    pub async fn publish_once(
        &self,
        bus: &ComponentBus,
    ) -> Result<Vec<ResourceBreach>, PublishOnceError> {
        let sample = self.sample()?;
        let breaches = self.check(&sample);
        bus.publish(sample).await?;
        for b in &breaches {
            tracing::warn!(metric = %b.metric, value = b.value, limit = b.limit, "resource threshold exceeded");
            bus.publish(b.clone()).await?;
        }
        Ok(breaches)
    }

    /// Samples every `every` until the returned guard is dropped.
    pub fn spawn(&self, bus: ComponentBus, every: Duration) -> MonitorTask {
        let me = self.clone();
        // The task owns a clone of the monitor and the component bus; it stops when the guard
        // is dropped (abort) and logs failed samples without stopping.
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            loop {
                tick.tick().await;
                if let Err(e) = me.publish_once(&bus).await {
                    tracing::debug!(error = %e, "resource sample not published");
                }
            }
        });
        MonitorTask { handle }
    }
}

/// [`ResourceMonitor::publish_once`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishOnceError {
    /// Sampling failed.
    #[error(transparent)]
    Sample(#[from] ResourceError),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// A periodic sampling task; dropping it stops the task.
#[derive(Debug)]
pub struct MonitorTask {
    handle: JoinHandle<()>,
}

impl Drop for MonitorTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
