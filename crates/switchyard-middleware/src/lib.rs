//! # switchyard-middleware
//!
//! Resilience and observability layers for switchyard handlers.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod catch_panic;
pub mod dedup;
pub mod dlq;
pub mod limit;
pub mod metrics;
pub mod resilience;
pub mod retry;
mod rng;
pub mod timeout;
pub mod trace;
