//! The app's message contracts: its message types with their JSON Schemas in a
//! [`Registry`], and the AsyncAPI 3.0 document of the running app (who sends and receives
//! what, from the components' declarations and the bus's live subscriptions).
//!
//! The document is committed as `examples/data-pipeline/asyncapi.json`, and the Python classes
//! generated from it as `examples/python/pipeline_messages.py`; `tests/contracts.rs` fails when
//! either is out of date (regenerate with
//! `UPDATE_CONTRACTS=1 cargo test -p data-pipeline --test contracts`). A node started with
//! `switchyard serve --demo` serves the same document at `GET /v1/asyncapi.json`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let doc = data_pipeline::contracts::asyncapi().await?;
//! assert_eq!(doc["channels"]["cpm.pipeline.request"]["address"], "cpm.pipeline.request");
//! assert_eq!(doc["operations"]["frontend.send.PipelineRequest"]["action"], "send");
//! assert_eq!(doc["operations"]["cpm.receive.PipelineRequest"]["action"], "receive");
//! # Ok(()) }
//! ```

use serde_json::Value;
use switchyard::Bus;
use switchyard_components::Topology;
use switchyard_contracts::{Registry, RegistryError, asyncapi};

use crate::frontend_api::{RunQuery, RunsQuery};
use crate::{DemoApp, DemoConfig, DemoError, Job, PipelineCancel, PipelineRequest};

/// The app's message types: [`PipelineRequest`], [`PipelineCancel`], [`Job`], [`RunsQuery`]
/// and [`RunQuery`] (the results and status updates are `switchyard-components` types with
/// no schema yet).
pub fn registry() -> Result<Registry, RegistryError> {
    let mut reg = Registry::new();
    reg.register::<PipelineRequest>()?
        .register::<PipelineCancel>()?
        .register::<Job>()?
        .register::<RunsQuery>()?
        .register::<RunQuery>()?;
    Ok(reg)
}

/// [`registry`] with the producers and consumers of a running app: every component of
/// `topology` from its declared patterns, and every live subscription of `bus`.
pub fn observed(topology: &Topology, bus: &Bus) -> Result<Registry, RegistryError> {
    let mut reg = registry()?;
    for c in topology.components() {
        reg.declare_component(
            c.name(),
            c.subscribes.iter().map(|p| p.as_str()),
            c.publishes.iter().map(|p| p.as_str()),
        )?;
    }
    reg.observe_bus(bus)?;
    Ok(reg)
}

/// The document's `info` and server: the app behind a node on its default address.
pub fn info() -> asyncapi::Info {
    asyncapi::Info {
        title: "data-pipeline".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        server: Some(("localhost:7878".to_owned(), "http".to_owned())),
    }
}

/// The AsyncAPI 3.0 document of the app: started on a fresh bus (in-memory store, a few rows,
/// every observer), observed with [`observed`], exported with [`info`], stopped.
pub async fn asyncapi() -> Result<Value, DemoError> {
    let bus = Bus::new();
    let app = DemoApp::start(
        &bus,
        &DemoConfig {
            rows: 10,
            ..DemoConfig::default()
        },
    )
    .await?;
    let reg = observed(app.topology(), &bus);
    app.stop();
    Ok(asyncapi::export(&reg?, &info()))
}
