//! The HTTP gateway against a node on an ephemeral port, with a real HTTP client.

#[path = "../common/mod.rs"]
mod common;

mod acl;
mod api;
mod dlq;
mod malformed;
mod observe;
mod tls;
