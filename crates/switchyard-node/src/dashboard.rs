//! The browser dashboard: static HTML/CSS/JS embedded in the binary and served at `/` and
//! `/dashboard/{file}`, with uPlot (MIT, vendored under `assets/dashboard/vendor` with its
//! licence, served at `/dashboard/uPlot.LICENSE`) for the chart. The page holds no data of its
//! own; everything it shows comes from the admin API (`/v1/stream`, `/v1/stats/history`,
//! `/v1/stats`, `/v1/health`, `/v1/alerts`, `/v1/status`, `/v1/subscriptions`,
//! `/v1/topology`, `/v1/dlq`, `/v1/trace`; `/health` for liveness), which enforces admin
//! auth, so the assets themselves need no credentials.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};

const INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
const APP_CSS: &str = include_str!("../assets/dashboard/app.css");
const APP_JS: &str = include_str!("../assets/dashboard/app.js");
const UPLOT_JS: &str = include_str!("../assets/dashboard/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/dashboard/vendor/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../assets/dashboard/vendor/uPlot.LICENSE");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard page.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard/{file}`: one of the page's assets (404 otherwise).
pub(crate) async fn file(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "" | "index.html" => Ok(index().await),
        "app.css" => Ok(asset("text/css; charset=utf-8", APP_CSS)),
        "app.js" => Ok(asset("text/javascript; charset=utf-8", APP_JS)),
        "uPlot.iife.min.js" => Ok(asset("text/javascript; charset=utf-8", UPLOT_JS)),
        "uPlot.min.css" => Ok(asset("text/css; charset=utf-8", UPLOT_CSS)),
        "uPlot.LICENSE" => Ok(asset("text/plain; charset=utf-8", UPLOT_LICENSE)),
        other => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no dashboard asset {other:?}"),
        )),
    }
}
