//! The HTTP gateway against a node on an ephemeral port, with a real HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../common/mod.rs"]
mod common;

mod acl;
mod api;
mod asyncapi;
mod contracts_fix;
mod dlq;
mod encryption;
mod live;
mod malformed;
mod mends;
mod node_stack;
mod observe;
mod replays;
mod review_rev3;
mod review_rev36;
mod review_rev45;
mod review_rev8;
mod tls;
mod validation;
