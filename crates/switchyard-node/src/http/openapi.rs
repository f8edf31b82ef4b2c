//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the HTTP gateway (utoipa).

use axum::Json;
use utoipa::OpenApi;

use super::{asyncapi, command, dlq, live, observe, publish, registry};

/// The gateway's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "switchyard gateway",
        description = "HTTP API of a switchyard node. Errors are always {\"error\": {\"kind\", \"message\"}}; see docs/gateway.md for the WebSocket protocol at /v1/ws."
    ),
    paths(
        publish::publish,
        command::send,
        command::request,
        registry::topics,
        registry::subscriptions,
        asyncapi::asyncapi_json,
        dlq::list,
        dlq::show,
        dlq::replay,
        dlq::replays,
        dlq::purge,
        observe::topology,
        observe::trace,
        observe::status,
        observe::stats,
        observe::alerts,
        live::stream,
        live::history,
        live::health,
        observe::metrics,
        observe::health,
        observe::ready,
    ),
    components(schemas(
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
        crate::error::ErrorKind,
        crate::wire::MessageJson,
        crate::wire::Published,
        crate::wire::ReplyJson,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Serves the document.
pub(crate) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
