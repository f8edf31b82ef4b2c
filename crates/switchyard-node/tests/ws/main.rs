//! The WebSocket gateway against a node on an ephemeral port, with a tokio-tungstenite
//! client: subscriptions (ephemeral and groups, auto and manual ack), publish, remote
//! handlers (alone and as groups), send/request, slow clients, connection limits, auth and
//! malformed frames.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod answer_first;
mod auth;
mod churn;
mod fixnode;
mod fixsmall;
mod fixws;
mod group_leave;
mod handler_groups;
mod limits;
mod malformed;
mod mends;
mod no_breaker;
mod node_headers;
mod principal_groups;
mod pubsub;
mod remote;
mod review_rev24;
mod review_rev3;
mod review_rev31;
mod review_rev32;
mod review_rev46;
mod review_rev8;
mod slow;
mod stream_expiry;
mod support;
