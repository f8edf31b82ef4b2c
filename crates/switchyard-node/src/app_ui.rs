//! The reference app's browser frontend (docs/app.md): static HTML/CSS/JS embedded in the
//! binary and served at `/app` and `/app/{file}`. The page is the app's `Frontend` component:
//! it talks to the app's CPM only, through the gateway (`/v1/publish`, `/v1/request`, `/v1/ws`
//! with `x-source: frontend`), so the gateway's grants and the layer rules of the declared
//! topology apply to it. The assets need no credentials; without the app on the node its
//! queries get `no_handler` and the page says so.

use axum::extract::Path;
use axum::response::Response;

use crate::assets::{Asset, lookup};
use crate::error::ApiError;

const FILES: &[Asset] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../assets/app/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app/app.js"),
    ),
];

/// `GET /app`: the page.
pub(crate) async fn index() -> Result<Response, ApiError> {
    lookup(FILES, "app", "index.html")
}

/// `GET /app/{file}`: one of the page's assets (404 otherwise).
pub(crate) async fn file(Path(file): Path<String>) -> Result<Response, ApiError> {
    lookup(FILES, "app", &file)
}
