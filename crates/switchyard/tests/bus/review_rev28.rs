//! Review rev28: the bus's invariants under random operation sequences, model-based.
//! proptest generates up to 30 operations (plain and group subscriptions with handlers that
//! succeed, fail N times, panic, reject or are slow; drops; keyed and unkeyed publishes to
//! exact and wildcard-matched topics; commands and requests; small queues under every
//! overflow policy) and a shutdown deadline, runs them against a real bus (in memory with
//! tokio's paused clock, and on the embedded log in a temp dir), and checks ARCHITECTURE.md
//! "Invariants" and docs/bus.md against a simple model: every accepted (message,
//! subscription) pair is handled successfully once, or dead-lettered once (right reason, raw
//! bytes), a `Shutdown` one named in the report; per-key order and the workers bound hold;
//! a group handles each message once; a command gets the result its handler's behaviour
//! gives; the subscription's counters add up to what the handlers and the store saw.

mod memory;
mod model;
mod on_log;
mod runner;
mod shrunk;
