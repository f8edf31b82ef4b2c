//! The reference app's browser frontend (docs/app.md): static HTML/CSS/JS embedded in the
//! binary and served at `/app` and `/app/{file}`. The page is the app's `Frontend` component:
//! it talks to the app's CPM only, through the gateway (`/v1/publish`, `/v1/request`, `/v1/ws`
//! with `x-source: frontend`), so the gateway's grants and the layer rules of the declared
//! topology apply to it. The assets need no credentials; without the app on the node its
//! queries get `no_handler` and the page says so.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};

const INDEX_HTML: &str = include_str!("../assets/app/index.html");
const APP_CSS: &str = include_str!("../assets/app/app.css");
const APP_JS: &str = include_str!("../assets/app/app.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// `GET /app`: the page.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /app/{file}`: one of the page's assets (404 otherwise).
pub(crate) async fn file(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "" | "index.html" => Ok(index().await),
        "app.css" => Ok(asset("text/css; charset=utf-8", APP_CSS)),
        "app.js" => Ok(asset("text/javascript; charset=utf-8", APP_JS)),
        other => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no app asset {other:?}"),
        )),
    }
}
