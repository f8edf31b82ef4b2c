//! # switchyard-node
//!
//! A running switchyard: a [`Node`] owns a [`switchyard::Bus`] on the configured transport
//! (in memory, the embedded log, or NATS JetStream) and serves an HTTP/WebSocket gateway in
//! front of it, so programs in any language publish, send commands, subscribe and handle
//! commands remotely. With bearer-token or JWT auth and topic ACLs, size and rate limits,
//! Prometheus metrics, health and readiness, TLS, and ZeroMQ PULL ingest.
//!
//! ```no_run
//! use switchyard_node::{Node, NodeConfig};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = NodeConfig::load(Some(std::path::Path::new("switchyard.toml")))?;
//! let node = Node::start(config).await?;
//! // Handlers registered on node.bus() are reachable through the gateway.
//! let listener = node.bind().await?;
//! node.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! Embedding in another axum application: `app.nest("/bus", node.router())`, then
//! `node.shutdown().await` when the application stops.
//!
//! The wire contract (HTTP, WebSocket, message JSON, error JSON) is in `docs/gateway.md`;
//! the OpenAPI document is served at `/v1/openapi.json`.
#![forbid(unsafe_code)]

mod alerts;
mod app_ui;
mod assets;
pub mod auth;
pub mod config;
mod dashboard;
pub mod error;
mod health;
mod http;
#[cfg(feature = "zmq")]
mod ingest;
mod latency;
mod live;
pub mod logging;
pub mod metrics;
mod node;
mod scrape;
mod state;
mod tls;
mod trace;
pub mod wire;
mod ws;

pub use auth::{Action, Auth, Principal};
pub use config::{ConfigError, NodeConfig, TransportConfig};
pub use error::{ApiError, ErrorKind, NodeError};
pub use node::{DEAD_LETTER_FILE, Node};

/// docs/gateway.md, compiled as doc tests so its examples cannot rot.
#[doc = include_str!("../../../docs/gateway.md")]
#[cfg(doctest)]
pub struct GatewayGuide;
