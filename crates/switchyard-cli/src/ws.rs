//! `switchyard sub` and `switchyard tail`: follow a pattern over the node's WebSocket
//! (`/v1/ws`, protocol in docs/gateway.md), one line per message.

use std::io::Write;

use clap::ValueEnum;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as Frame};

use crate::CliError;
use crate::client::{Client, ClientError, api_error, chain};

/// How `sub` and `tail` print a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LineFormat {
    /// The message JSON (docs/gateway.md), one per line.
    Json,
    /// `timestamp kind topic corr=<correlation id> payload`, one per line.
    Text,
}

/// What to follow.
#[derive(Debug, Clone)]
pub struct Follow {
    /// Topic pattern (`*` one segment, `#` any number).
    pub pattern: String,
    /// Consumer group: subscribers with the same group share the messages; none: this
    /// client gets every message (an ephemeral subscription).
    pub group: Option<String>,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Line format.
    pub format: LineFormat,
}

/// The `ws(s)://.../v1/ws` URL of the node.
fn ws_url(client: &Client) -> Result<String, ClientError> {
    let mut url = client.url("v1/ws")?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| ClientError::Setup(format!("cannot make a WebSocket URL of {url}")))?;
    Ok(url.to_string())
}

fn ws_error(client: &Client, e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(res) => {
            let body = res.body().clone().unwrap_or_default();
            api_error(res.status(), &body)
        }
        tungstenite::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::AddrNotAvailable
            ) =>
        {
            ClientError::Unreachable {
                url: client.base().to_string(),
                reason: io.to_string(),
            }
        }
        other => ClientError::WebSocket(chain(&other)),
    }
}

/// Subscribes and prints every message until `count` is reached, SIGINT, or the node
/// closes the connection (an error unless `count` was reached). Tells on stderr once the
/// subscription is in place, so a script knows when publishing will be seen.
pub async fn follow(client: &Client, what: &Follow, out: &mut impl Write) -> Result<(), CliError> {
    let url = ws_url(client)?;
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Setup(format!("{url}: {e}")))?;
    if let Some(t) = client.token() {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| ClientError::Setup("the token is not a valid header value".into()))?;
        req.headers_mut().insert("authorization", v);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| ws_error(client, e))?;

    let mut op = json!({"op": "subscribe", "id": "sub-1", "pattern": what.pattern, "ack": "auto"});
    if let Some(g) = &what.group {
        op["group"] = json!(g);
    }
    ws.send(Frame::text(op.to_string()))
        .await
        .map_err(|e| ws_error(client, e))?;

    let mut seen = 0u64;
    let mut subscribed = false;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if what.count.is_some_and(|c| seen >= c) {
            let _ = ws.close(None).await;
            return Ok(());
        }
        let frame = tokio::select! {
            _ = &mut interrupted => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            f = ws.next() => f,
        };
        let frame = match frame {
            None => return Err(closed(None, subscribed)),
            Some(Err(e)) => return Err(ws_error(client, e).into()),
            Some(Ok(f)) => f,
        };
        let text = match frame {
            Frame::Text(t) => t.to_string(),
            Frame::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Frame::Close(c) => {
                return Err(closed(
                    c.map(|c| format!("{} {}", u16::from(c.code), c.reason)),
                    subscribed,
                ));
            }
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            ClientError::BadResponse(format!("WebSocket frame is not JSON ({e}): {text}"))
        })?;
        match v["op"].as_str().unwrap_or_default() {
            "subscribed" => {
                subscribed = true;
                eprintln!(
                    "switchyard: subscribed to {} (subscription {})",
                    what.pattern,
                    v["subscription"].as_str().unwrap_or("?")
                );
            }
            "message" => {
                print_message(&v["message"], what.format, out)?;
                out.flush()?;
                seen += 1;
            }
            "dropped" => eprintln!(
                "switchyard: the node dropped {} message(s): this client read too slowly",
                v["count"]
            ),
            "error" => {
                let kind = v["error"]["kind"].as_str().unwrap_or("error").to_owned();
                let message = v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if v["id"].as_str() == Some("sub-1") || !subscribed {
                    return Err(ClientError::Refused { kind, message }.into());
                }
                eprintln!("switchyard: the node reported {kind}: {message}");
            }
            _ => {}
        }
    }
}

fn closed(detail: Option<String>, subscribed: bool) -> CliError {
    let when = if subscribed {
        "while following"
    } else {
        "before the subscription was confirmed"
    };
    CliError::Failure(match detail {
        Some(d) => format!("the node closed the WebSocket {when}: {d}"),
        None => format!("the node closed the WebSocket {when}"),
    })
}

fn print_message(m: &Value, format: LineFormat, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        LineFormat::Json => writeln!(out, "{m}"),
        LineFormat::Text => {
            let s = |k: &str| m[k].as_str().unwrap_or("-").to_owned();
            let payload = match (&m["payload"], m["payload_base64"].as_str()) {
                (Value::Null, Some(b)) => format!("({}, base64) {b}", s("content_type")),
                (p, _) => p.to_string(),
            };
            writeln!(
                out,
                "{}  {:<7} {}  corr={}  {}",
                s("timestamp"),
                s("kind"),
                s("topic"),
                s("correlation_id"),
                payload
            )
        }
    }
}
