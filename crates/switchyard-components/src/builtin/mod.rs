//! Built-in system components (role [`Role::System`](crate::Role::System), domain `system`):
//! they receive status, errors and results from every component, which the layer rules allow.
//!
//! Each one is a cheap-clone handle with its own queryable state; [`component`] on it returns
//! the [`ComponentBuilder`](crate::ComponentBuilder) to add to an [`Assembly`](crate::Assembly).
//!
//! [`component`]: StateTracker::component

mod alert;
mod error_handler;
mod health;
mod performance;
mod resource;
mod state_tracker;

pub use alert::{
    Alert, AlertManager, AlertRule, AlertStats, Channel, Condition, Severity, WebhookError,
};
pub use error_handler::{
    ErrorHandler, ErrorHandlerStats, RetryExhausted, RetryPolicy, RetryRequest,
};
pub use health::{ComponentHealth, HealthChecker, HealthStatus, Heartbeat};
pub use performance::{Anomaly, Baseline, PerformanceTracker};
pub use resource::{
    MonitorTask, PublishOnceError, ResourceBreach, ResourceError, ResourceMonitor, ResourceSample,
    ResourceThresholds,
};
pub use state_tracker::{StateTracker, TrackedRequest};

/// The domain of the built-in components.
pub const SYSTEM_DOMAIN: &str = "system";
