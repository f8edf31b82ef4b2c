//! Talking to a running node: where it is (flags, environment, a config file), the HTTP
//! client, and what a failed call means.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

/// The node used when nothing says otherwise (`switchyard serve`'s default address).
pub const DEFAULT_URL: &str = "http://127.0.0.1:7878";

/// Where the node is and how to authenticate; shared by every operator command.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The node's base URL, e.g. `http://127.0.0.1:7878` (default: the config file's, else
    /// that one).
    #[arg(long, global = true, env = "SWITCHYARD_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Bearer token (or JWT) for a node with auth on.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A TOML file with `url` and `token` keys, or the node's own config file (the URL is
    /// then derived from its `listen` and `tls`). Default: `$XDG_CONFIG_HOME/switchyard/cli.toml`
    /// (or `~/.config/switchyard/cli.toml`) when it exists.
    #[arg(long, global = true, env = "SWITCHYARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Give up on an HTTP call after this many seconds.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECONDS")]
    pub http_timeout: u64,
}

/// A call to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the URL.
    #[error(
        "cannot reach the switchyard node at {url}: {reason} (is `switchyard serve` running? set --url or SWITCHYARD_URL)"
    )]
    Unreachable {
        /// The base URL.
        url: String,
        /// The underlying cause, e.g. "Connection refused".
        reason: String,
    },
    /// The node answered with an error.
    #[error("the node answered {status}: {kind}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error kind (`no_handler`, `forbidden`, ...), or `http_<status>` when the body
        /// was not the gateway's error JSON.
        kind: String,
        /// The human text.
        message: String,
    },
    /// The call did not complete (timeout, broken connection).
    #[error("the call to {url} failed: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The node's answer was not what the wire contract says.
    #[error("unexpected answer from the node: {0}")]
    BadResponse(String),
    /// The URL, token or config file is wrong.
    #[error("{0}")]
    Setup(String),
    /// The node refused a WebSocket operation.
    #[error("the node refused: {kind}: {message}")]
    Refused {
        /// The error kind.
        kind: String,
        /// The human text.
        message: String,
    },
    /// The WebSocket could not be used.
    #[error("WebSocket: {0}")]
    WebSocket(String),
}

/// The CLI profile file (`url`, `token`), or a node config (`listen`, `[tls]`).
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
    listen: Option<String>,
    tls: Option<toml::Value>,
}

fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let p = base.join("switchyard").join("cli.toml");
    p.is_file().then_some(p)
}

fn read_config(path: &Path) -> Result<ConfigFile, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Setup(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| ClientError::Setup(format!("{} is not valid TOML: {e}", path.display())))
}

/// The URL a node config's `listen` is reached at: an unspecified address (`0.0.0.0`, `::`)
/// is reached on loopback.
fn url_from_listen(listen: &str, tls: bool) -> Result<String, ClientError> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        ClientError::Setup(format!(
            "listen = {listen:?} is not an address like 127.0.0.1:7878"
        ))
    })?;
    Ok(display_url(addr, tls))
}

/// `http(s)://addr`, with an unspecified IP replaced by loopback (what a user can open).
pub fn display_url(addr: std::net::SocketAddr, tls: bool) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

/// The node's base URL (ending in `/`) and token, resolved from flag or environment, then
/// the config file, then the default.
pub fn resolve(remote: &Remote) -> Result<(Url, Option<String>), ClientError> {
    let file = match remote.config.clone().or_else(default_config_path) {
        Some(p) => read_config(&p)?,
        None => ConfigFile::default(),
    };
    let from_file = match (&file.url, &file.listen) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(l)) => Some(url_from_listen(l, file.tls.is_some())?),
        (None, None) => None,
    };
    let raw = remote
        .url
        .clone()
        .or(from_file)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let with_scheme = if raw.contains("://") {
        raw.clone()
    } else {
        format!("http://{raw}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|e| ClientError::Setup(format!("--url {raw:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ClientError::Setup(format!(
            "--url {raw:?}: the scheme must be http or https"
        )));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    let token = remote
        .token
        .clone()
        .or(file.token)
        .filter(|t| !t.is_empty());
    Ok((url, token))
}

/// An HTTP client for one node.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

/// One HTTP request to make: method, path under the base URL, query, headers, body.
#[derive(Debug)]
pub struct Call<'a> {
    method: Method,
    path: String,
    query: Vec<(&'a str, String)>,
    headers: Vec<(String, String)>,
    body: Option<(String, Vec<u8>)>,
    timeout: Option<Duration>,
}

impl<'a> Call<'a> {
    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// `POST path`.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            timeout: None,
        }
    }

    /// Adds a query parameter when `value` is set.
    pub fn query(mut self, name: &'a str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.query.push((name, v.to_string()));
        }
        self
    }

    /// Adds a header when `value` is set.
    pub fn header(mut self, name: impl Into<String>, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.headers.push((name.into(), v.to_string()));
        }
        self
    }

    /// The body with its content type.
    pub fn body(mut self, content_type: &str, bytes: Vec<u8>) -> Self {
        self.body = Some((content_type.to_owned(), bytes));
        self
    }

    /// A JSON body.
    pub fn json(self, value: &Value) -> Self {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.body("application/json", bytes)
    }

    /// A longer deadline than the client's for this call.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::BadResponse(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            ))
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    /// A client for the node `remote` points at.
    pub fn new(remote: &Remote) -> Result<Self, ClientError> {
        let (base, token) = resolve(remote)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(remote.http_timeout.max(1)))
            .user_agent(concat!("switchyard-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, base, token })
    }

    /// The node's base URL (ends in `/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The URL of `path` under the base.
    pub fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| ClientError::Setup(format!("bad path {path:?}: {e}")))
    }

    /// Makes the call; an error status becomes [`ClientError::Api`].
    pub async fn call(&self, call: Call<'_>) -> Result<Answer, ClientError> {
        let url = self.url(&call.path)?;
        let mut req = self.http.request(call.method, url.clone());
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in &call.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some((ct, bytes)) = call.body {
            req = req.header(reqwest::header::CONTENT_TYPE, ct).body(bytes);
        }
        if let Some(t) = call.timeout {
            req = req.timeout(t);
        }
        let res = req.send().await.map_err(|e| self.send_error(&url, &e))?;
        let status = res.status();
        let body = res
            .bytes()
            .await
            .map_err(|e| ClientError::Transport {
                url: url.to_string(),
                reason: chain(&e),
            })?
            .to_vec();
        if status.is_success() {
            return Ok(Answer { body });
        }
        Err(api_error(status, &body))
    }

    /// GET `path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Call::get(path)).await?.json()
    }

    fn send_error(&self, url: &Url, e: &reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable {
                url: self.base.to_string(),
                reason: root_cause(e),
            }
        } else {
            ClientError::Transport {
                url: url.to_string(),
                reason: chain(e),
            }
        }
    }
}

/// The gateway's error JSON as a [`ClientError::Api`]; any other body is quoted.
pub fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        kind: String,
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => ClientError::Api {
            status,
            kind: b.error.kind,
            message: b.error.message,
        },
        Err(_) => ClientError::Api {
            status,
            kind: format!("http_{}", status.as_u16()),
            message: String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_owned(),
        },
    }
}

/// The innermost error's text ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Every error in the chain, joined with ": ".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e;
    while let Some(next) = cur.source() {
        let s = next.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = next;
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn remote(url: Option<&str>, config: Option<PathBuf>) -> Remote {
        Remote {
            url: url.map(str::to_owned),
            token: None,
            config,
            http_timeout: 60,
        }
    }

    #[test]
    fn urls_get_a_scheme_and_a_trailing_slash() {
        let (u, _) = resolve(&remote(Some("127.0.0.1:9000"), None)).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9000/");
        let (u, _) = resolve(&remote(Some("https://h.example/bus"), None)).unwrap();
        assert_eq!(
            u.join("v1/status").unwrap().as_str(),
            "https://h.example/bus/v1/status"
        );
        assert!(matches!(
            resolve(&remote(Some("ftp://x"), None)),
            Err(ClientError::Setup(_))
        ));
    }

    #[test]
    fn a_config_file_gives_url_and_token_and_a_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("cli.toml");
        std::fs::write(
            &profile,
            "url = \"http://10.0.0.5:1234\"\ntoken = \"s3cret\"\n",
        )
        .unwrap();
        let (u, t) = resolve(&remote(None, Some(profile.clone()))).unwrap();
        assert_eq!(
            (u.as_str(), t.as_deref()),
            ("http://10.0.0.5:1234/", Some("s3cret"))
        );
        let (u, _) = resolve(&remote(Some("http://127.0.0.1:1"), Some(profile))).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:1/");

        // A node config: the URL comes from `listen` (unspecified address → loopback).
        let node = dir.path().join("switchyard.toml");
        std::fs::write(
            &node,
            "listen = \"0.0.0.0:8080\"\n[transport]\nkind = \"memory\"\n",
        )
        .unwrap();
        let (u, t) = resolve(&remote(None, Some(node))).unwrap();
        assert_eq!((u.as_str(), t), ("http://127.0.0.1:8080/", None));
    }

    #[test]
    fn gateway_errors_keep_kind_and_message() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"kind":"no_handler","message":"no handler for a.b"}}"#,
        );
        assert_eq!(
            e.to_string(),
            "the node answered 404 Not Found: no_handler: no handler for a.b"
        );
        let e = api_error(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(
            e.to_string(),
            "the node answered 502 Bad Gateway: http_502: upstream down"
        );
    }
}
