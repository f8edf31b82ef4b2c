//! Tests of the NATS transport: the conformance suite, the fault test that kills the server
//! mid-stream, and NATS-specific behaviour (dedup, health).
//!
//! Tests that need the shared server on 127.0.0.1:4222 skip with a loud message when it is
//! unreachable, unless `CI=true` (then they fail).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod cluster;
mod commands;
mod conformance;
mod consumers_after_restart;
mod disconnected_requests;
mod durable_commands;
mod durable_deadline;
mod encryption;
mod expired_answer;
mod fault;
mod faulty;
mod groups;
mod harness;
mod interop;
mod keep_alive;
mod max_payload_reconnect;
mod no_reply;
mod oversize_requests;
mod own_dead_letters;
mod retention;
mod review_rev10;
mod review_rev18;
mod review_rev20;
mod review_rev26;
mod review_rev32;
mod review_rev41;
mod review_rev6;
mod specific;
mod validation;
