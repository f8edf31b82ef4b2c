//! `GET /v1/asyncapi.json`: the AsyncAPI 3.0 document of the node's message contracts.

use axum::Json;
use axum::extract::State;
use serde_json::Value;
use switchyard_contracts::asyncapi;

use super::Admin;
use crate::state::AppState;

/// The message types the application registered (`Node::set_contracts`) as an AsyncAPI 3.0
/// document: channels are their topics, messages carry their JSON Schemas, and operations are
/// who sends and receives them: the registry's own producers and consumers, the declared
/// topology's components (`Node::set_topology`) and the bus's live subscriptions. Without a
/// registry the document has no channels. See docs/contracts.md.
#[utoipa::path(get, path = "/v1/asyncapi.json", responses((status = 200, description = "AsyncAPI 3.0.0 document")), tag = "registry")]
pub(crate) async fn asyncapi_json(State(state): State<AppState>, _admin: Admin) -> Json<Value> {
    let mut registry = state
        .contracts
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let declared = state
        .topology
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // Patterns in a topology and in the bus's registry are valid already; a failure here
    // would only drop that component's operations from the document.
    for c in declared.iter().flat_map(|t| t.components()) {
        let subs = c.subscribes.iter().map(|p| p.as_str());
        let pubs = c.publishes.iter().map(|p| p.as_str());
        let _ = registry.declare_component(c.name(), subs, pubs);
    }
    let _ = registry.observe_bus(&state.bus);
    let info = asyncapi::Info {
        title: "switchyard node".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        server: Some((state.listen_addr().to_string(), "http".to_owned())),
    };
    Json(asyncapi::export(&registry, &info))
}
