//! The browser dashboard: static HTML/CSS/JS embedded in the binary and served at `/` and
//! `/dashboard/{file}`, with uPlot (MIT, vendored under `assets/dashboard/vendor` with its
//! licence, served at `/dashboard/uPlot.LICENSE`) for the chart. The page holds no data of its
//! own; everything it shows comes from the admin API (`/v1/stream`, `/v1/stats/history`,
//! `/v1/stats`, `/v1/health`, `/v1/alerts`, `/v1/status`, `/v1/subscriptions`,
//! `/v1/topology`, `/v1/dlq`, `/v1/trace`; `/health` for liveness), which enforces admin
//! auth, so the assets themselves need no credentials.

use axum::extract::Path;
use axum::response::Response;

use crate::assets::{Asset, lookup};
use crate::error::ApiError;

const FILES: &[Asset] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../assets/dashboard/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/dashboard/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/app.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../assets/dashboard/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../assets/dashboard/vendor/uPlot.LICENSE"),
    ),
];

/// `GET /`: the dashboard page.
pub(crate) async fn index() -> Result<Response, ApiError> {
    lookup(FILES, "dashboard", "index.html")
}

/// `GET /dashboard/{file}`: one of the page's assets (404 otherwise).
pub(crate) async fn file(Path(file): Path<String>) -> Result<Response, ApiError> {
    lookup(FILES, "dashboard", &file)
}
