//! Integration tests of switchyard-middleware: every layer on its own and the layers stacked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod breaker;
mod dedup;
mod delivered;
mod dlq;
mod dlq_entries;
mod fixws;
mod fused;
mod hand_back;
mod limit;
mod metrics;
mod panic;
mod recycle;
mod retry;
mod review_rev16;
mod review_rev3;
mod review_rev4;
mod stack;
mod trace;
