//! Serving pages embedded in the binary (the dashboard and the reference app's frontend):
//! each page is a table of file name → (content type, body), looked up per request.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};

/// One embedded file: its name under the page's path, content type and body.
pub(crate) type Asset = (&'static str, &'static str, &'static str);

/// A response with `body` as `content_type`, never cached (a new binary serves new assets).
pub(crate) fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// The file `name` of `table` (`""` is `index.html`), or a JSON 404 naming `page`.
pub(crate) fn lookup(table: &[Asset], page: &str, name: &str) -> Result<Response, ApiError> {
    let name = if name.is_empty() { "index.html" } else { name };
    table
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, body)| asset(content_type, body))
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no {page} asset {name:?}")))
}
