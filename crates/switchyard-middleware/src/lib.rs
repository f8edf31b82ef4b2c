//! # switchyard-middleware
//!
//! Resilience and observability layers for switchyard handlers.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod catch_panic;
pub mod metrics;
pub mod retry;
pub mod timeout;
