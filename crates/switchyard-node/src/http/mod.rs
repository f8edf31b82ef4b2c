//! The HTTP gateway: routes, extractors that turn every client mistake into a typed error
//! answer, request metrics, the JSON 404 fallback.

use std::time::Instant;

use axum::Router;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::auth::{Action, Principal};
use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;

pub(crate) mod asyncapi;
pub(crate) mod command;
pub(crate) mod dlq;
pub(crate) mod live;
pub(crate) mod observe;
pub(crate) mod openapi;
pub(crate) mod publish;
pub(crate) mod registry;

/// Builds the whole router with its state.
pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    let v1 = Router::new()
        .route("/publish/{topic}", post(publish::publish))
        .route("/send/{topic}", post(command::send))
        .route("/request/{topic}", post(command::request))
        .route("/topics", get(registry::topics))
        .route("/subscriptions", get(registry::subscriptions))
        .route("/dlq", get(dlq::list))
        .route("/dlq/replay", post(dlq::replay))
        .route("/dlq/purge", post(dlq::purge))
        .route("/dlq/replays", get(dlq::replays))
        .route("/dlq/{id}", get(dlq::show))
        .route("/topology", get(observe::topology))
        .route("/trace/{correlation_id}", get(observe::trace))
        .route("/status", get(observe::status))
        .route("/stats", get(observe::stats))
        .route("/stats/history", get(live::history))
        .route("/stream", get(live::stream))
        .route("/health", get(live::health))
        .route("/alerts", get(observe::alerts))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/asyncapi.json", get(asyncapi::asyncapi_json))
        .route("/ws", get(crate::ws::ws_handler));
    Router::new()
        .nest("/v1", v1)
        .route("/metrics", get(observe::metrics))
        .route("/health", get(observe::health))
        .route("/ready", get(observe::ready))
        .route("/", get(crate::dashboard::index))
        .route("/dashboard/{file}", get(crate::dashboard::file))
        .route("/app", get(crate::app_ui::index))
        .route("/app/", get(crate::app_ui::index))
        .route("/app/{file}", get(crate::app_ui::file))
        .route_layer(middleware::from_fn(remember_route))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The route template of a matched request, carried to [`track`] on the response.
#[derive(Clone)]
struct RouteLabel(String);

async fn remember_route(path: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let label = path.map(|p| p.as_str().to_owned());
    let mut res = next.run(req).await;
    if let Some(label) = label {
        res.extensions_mut().insert(RouteLabel(label));
    }
    res
}

/// Counts every request by route template, method and status, with its duration.
async fn track(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let method = method_label(req.method());
    let started = Instant::now();
    let res = next.run(req).await;
    let route = res
        .extensions()
        .get::<RouteLabel>()
        .map_or("unmatched", |r| r.0.as_str())
        .to_owned();
    state
        .metrics
        .request(&route, method, res.status().as_u16(), started.elapsed());
    res
}

/// The `method` label of a request: a standard method (RFC 9110, plus `PATCH`) by name, any
/// other method a client invents as `other`, so the label stays bounded.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// The authenticated caller (401 when credentials are missing or wrong).
pub(crate) struct Authed(pub(crate) Principal);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.auth.enabled() {
            return Ok(Authed(Principal::anonymous()));
        }
        let header = match parts.headers.get(AUTHORIZATION) {
            None => None,
            Some(v) => {
                let bearer = v.to_str().ok().and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
                match bearer {
                    Some(t) => Some(t.to_owned()),
                    None => {
                        return Err(state
                            .auth
                            .refuse("Authorization must be `Bearer <token>`")
                            .into());
                    }
                }
            }
        };
        // Browsers cannot set headers on a WebSocket: `?token=` is accepted there only.
        // Inside the `/v1` nest the path is stripped of its prefix: ask the original URI.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| parts.uri.path(), |u| u.0.path());
        let token = header.or_else(|| {
            path.ends_with("/v1/ws")
                .then(|| query_token(parts.uri.query()))
                .flatten()
        });
        state
            .auth
            .authenticate(token.as_deref())
            .map(Authed)
            .map_err(ApiError::from)
    }
}

fn query_token(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// The caller, holding the admin grant (403 otherwise).
pub(crate) struct Admin(pub(crate) Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authed(p) = Authed::from_request_parts(parts, state).await?;
        state.auth.authorize(&p, Action::Admin, "")?;
        Ok(Admin(p))
    }
}

/// The raw body; too large → 413 naming `limits.max_body_bytes`.
pub(crate) struct RawBody(pub(crate) Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| body_error(&e, state))
    }
}

fn body_error(e: &BytesRejection, state: &AppState) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorKind::TooLarge,
            format!(
                "request body is larger than limits.max_body_bytes = {} bytes",
                state.config.limits.max_body_bytes
            ),
        )
    } else {
        ApiError::new(ErrorKind::BadRequest, format!("cannot read the body: {e}"))
    }
}

/// A JSON body of type `T`: wrong content type → 415, bad JSON → 400 `malformed_json` with
/// the parse error, valid JSON of the wrong shape (unknown field, wrong type) → 400
/// `bad_request`.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match content_type.as_deref() {
            Some(ct) if crate::wire::is_json(ct) => {}
            other => {
                return Err(ApiError::new(
                    ErrorKind::UnsupportedContentType,
                    format!(
                        "this call takes Content-Type: application/json, got {}",
                        other.unwrap_or("none")
                    ),
                ));
            }
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON into `T`, classifying the error as `malformed_json` or `bad_request`.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(ErrorKind::BadRequest, format!("invalid body: {e}")),
            _ => ApiError::new(ErrorKind::MalformedJson, format!("malformed JSON: {e}")),
        }
    })
}

/// Query parameters of type `T`; invalid → 400 `bad_query`.
pub(crate) struct Q<T>(pub(crate) T);

/// The query of a route that takes no parameter: any is `400 bad_query`, so that a client
/// that means one (say `?timeout_ms=` on a send) learns it is not taken instead of being
/// ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoQuery {}

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::new(
                    ErrorKind::BadQuery,
                    format!("invalid query: {}", e.body_text()),
                )
            })
    }
}

/// One path parameter as a string; undecodable → 400.
pub(crate) struct PathParam(pub(crate) String);

impl FromRequestParts<AppState> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e| {
                ApiError::new(
                    ErrorKind::BadRequest,
                    format!("invalid path: {}", e.body_text()),
                )
            })
    }
}

/// `202`/`200` JSON with a body.
pub(crate) fn json<T: serde::Serialize>(status: axum::http::StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}
