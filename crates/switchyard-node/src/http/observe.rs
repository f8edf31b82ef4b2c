//! Observability endpoints: `/metrics`, `/health`, `/ready`, `/v1/stats`, `/v1/status`,
//! `/v1/topology`, `/v1/trace/{correlation_id}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::MessageId;

use super::{Admin, Authed, PathParam, Q};
use crate::auth::Action;
use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;
use crate::wire::MessageJson;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "{\"status\":\"ok\"}")), tag = "observability")]
pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the transport is connected, no critical breaker is open, not shutting down.
#[utoipa::path(get, path = "/ready", responses((status = 200), (status = 503, description = "not ready, with reasons")), tag = "observability")]
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let problems = state.health.problems(&state.bus);
    if problems.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        let message = problems.join("; ");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "reasons": problems,
                "error": {"kind": ErrorKind::NotReady.as_str(), "message": message},
            })),
        )
            .into_response()
    }
}

/// Prometheus text. Needs admin when auth is on (a scraper sends a bearer token).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")), tag = "observability")]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    Authed(p): Authed,
) -> Result<Response, ApiError> {
    state.auth.authorize(&p, Action::Admin, "")?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::scrape::render(&state),
    )
        .into_response())
}

/// The same figures as `/metrics`, as JSON.
#[utoipa::path(get, path = "/v1/stats", responses((status = 200, description = "bus, handlers, pipelines, gateway, transport")), tag = "observability")]
pub(crate) async fn stats(State(state): State<AppState>, _admin: Admin) -> Json<Value> {
    Json(crate::scrape::stats_json(&state))
}

/// Firing alerts and the history of raised and resolved ones: the node's own (a handler's
/// circuit breaker open, the transport down) and those published on `system.alert.*`.
#[utoipa::path(get, path = "/v1/alerts", responses((status = 200, body = crate::alerts::AlertsJson)), tag = "observability")]
pub(crate) async fn alerts(
    State(state): State<AppState>,
    _admin: Admin,
) -> Json<crate::alerts::AlertsJson> {
    state.alerts.transport(
        state.health.transport.kind(),
        state.health.transport.problem().as_deref(),
    );
    Json(state.alerts.snapshot())
}

/// Node summary.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StatusJson {
    version: &'static str,
    uptime_s: u64,
    transport: &'static str,
    ready: bool,
    /// Reasons it is not ready (empty when ready).
    not_ready: Vec<String>,
    subscriptions: usize,
    command_handlers: usize,
    dead_letters: usize,
    /// Messages published through the gateway (HTTP and WebSocket).
    published: u64,
    /// Accepted messages not yet settled.
    pending: usize,
    auth: bool,
    listen: String,
}

/// Version, uptime, transport, readiness and counts.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = StatusJson)), tag = "observability")]
pub(crate) async fn status(State(state): State<AppState>, _admin: Admin) -> Json<StatusJson> {
    let problems = state.health.problems(&state.bus);
    let registry = state.bus.registry();
    let commands = registry
        .iter()
        .filter(|s| s.kind == switchyard::SubscriptionKind::Command)
        .count();
    Json(StatusJson {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
        transport: state.health.transport.kind(),
        ready: problems.is_empty(),
        not_ready: problems,
        subscriptions: registry.len() - commands,
        command_handlers: commands,
        dead_letters: state.dlq.len(),
        published: state.metrics.published(),
        pending: state.bus.pending(),
        auth: state.auth.enabled(),
        listen: state.listen_addr().to_string(),
    })
}

/// Query of `GET /v1/topology`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopologyQuery {
    /// `json` (default), `mermaid` or `dot`.
    format: Option<String>,
}

/// The component topology when one was declared (`Node::set_topology`), otherwise the
/// graph the bus knows: patterns → subscriptions and command topics → handlers. The JSON
/// form adds `observed`: the edges seen in traffic (publisher → receiver on a topic, with
/// counts and recent rates), each marked `declared` or not against the declared topology.
#[utoipa::path(get, path = "/v1/topology", params(TopologyQuery), responses((status = 200)), tag = "observability")]
pub(crate) async fn topology(
    State(state): State<AppState>,
    _admin: Admin,
    Q(q): Q<TopologyQuery>,
) -> Result<Response, ApiError> {
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "mermaid" | "dot") {
        return Err(ApiError::new(
            ErrorKind::BadQuery,
            format!("format = {format:?}: allowed json, mermaid, dot"),
        ));
    }
    let declared = state
        .topology
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let text = |body: String| ([(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
    let recent = state.live.recent();
    let observed = crate::live::observed::edges(
        &state.live.publishes.snapshot(),
        &recent.publishes,
        &state.handlers.snapshot(),
        declared.as_ref(),
    );
    Ok(match (declared, format) {
        (Some(t), "mermaid") => text(t.to_mermaid()),
        (Some(t), "dot") => text(t.to_dot()),
        (Some(t), _) => Json(json!({
            "source": "components",
            "components": t.components().iter().map(|c| json!({
                "name": c.name(), "role": format!("{:?}", c.role()), "domain": c.domain(),
            })).collect::<Vec<_>>(),
            "edges": t.edges(),
            "violations": t.violations(),
            "observed": observed,
            "window_s": recent.seconds,
        }))
        .into_response(),
        (None, f) => {
            let graph = crate::scrape::bus_graph(&state.bus.registry());
            match f {
                "mermaid" => text(graph.mermaid()),
                "dot" => text(graph.dot()),
                _ => {
                    let mut json = graph.json();
                    json["observed"] = serde_json::to_value(&observed).unwrap_or_default();
                    json["window_s"] = recent.seconds.into();
                    Json(json).into_response()
                }
            }
        }
    })
}

/// Every recorded message of one correlation id, its causal tree and the recorded handler
/// calls (deliveries) with their outcomes: what this node published or sent, and what its
/// handlers were called with (a message published through another node shows as
/// deliveries only). 404 when this node has neither.
#[utoipa::path(get, path = "/v1/trace/{correlation_id}", params(("correlation_id" = String, Path, description = "Correlation id")),
    responses((status = 200), (status = 400, description = "bad_request: not a message id", body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)), tag = "observability")]
pub(crate) async fn trace(
    State(state): State<AppState>,
    _admin: Admin,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
    let correlation = id
        .parse::<MessageId>()
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("correlation id: {e}")))?;
    let Some(recorder) = &state.trace else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "tracing is off (retention.trace_messages = 0)",
        ));
    };
    let envelopes = recorder.of(&correlation);
    let deliveries = recorder.deliveries_of(&correlation);
    if envelopes.is_empty() && deliveries.is_empty() {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no message published or sent through this node and no handler call on it \
                 with correlation id {correlation}"
            ),
        ));
    }
    let tree = switchyard_components::trace::Trace::build(correlation.clone(), &envelopes);
    let mut text = tree.render();
    if !deliveries.is_empty() {
        text.push_str("deliveries:\n");
        for d in &deliveries {
            text.push_str(&format!(
                "  {} -> {} (attempt {}): {} in {:.3} ms{}\n",
                d.topic,
                d.handler,
                d.attempt,
                d.outcome,
                d.duration_ms,
                d.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(Json(json!({
        "correlation_id": correlation.to_string(),
        "messages": envelopes.iter().map(MessageJson::from_envelope).collect::<Vec<_>>(),
        "deliveries": deliveries,
        "tree": tree,
        "text": text,
    })))
}
