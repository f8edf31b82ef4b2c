//! Live endpoints: `GET /v1/stream` (server-sent events), `GET /v1/stats/history` (the last
//! 15 minutes of samples) and `GET /v1/health` (per-component and transport health).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::{Admin, Q};
use crate::live::health::HealthJson;
use crate::live::{HISTORY_SAMPLES, LiveEvent, SAMPLE_EVERY, Sample};
use crate::state::AppState;

/// A comment line sent this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The first event of every stream.
#[derive(Serialize)]
struct Hello {
    version: &'static str,
    transport: &'static str,
    uptime_s: u64,
    sample_interval_ms: u64,
}

fn event(kind: &str, data: &str) -> Event {
    Event::default().event(kind).data(data)
}

/// The node's live events as server-sent events: `hello` once, then `sample` (the newest
/// history sample) and `stats` (the whole `/v1/stats` document) every second, `alert` when an
/// alert is raised, fires again or is resolved, `dead_letter` when a message is dead-lettered,
/// and `lagged` when this client fell behind and events were skipped. Ends when the node
/// stops, and for a JWT at its expiry, after an `expired` event.
#[utoipa::path(get, path = "/v1/stream", responses((status = 200, description = "text/event-stream: hello, sample, stats, alert, dead_letter, replay, lagged, expired", content_type = "text/event-stream")), tag = "observability")]
pub(crate) async fn stream(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    use futures::StreamExt;
    let rx = state.live.subscribe();
    let hello = serde_json::to_string(&Hello {
        version: env!("CARGO_PKG_VERSION"),
        transport: state.health.transport.kind(),
        uptime_s: state.started.elapsed().as_secs(),
        sample_interval_ms: u64::try_from(SAMPLE_EVERY.as_millis()).unwrap_or(u64::MAX),
    })
    .unwrap_or_default();
    // The current figures at once, so a client need not wait for the next tick.
    let mut first = vec![event("hello", &hello)];
    if let Some(sample) = state.live.last()
        && let Ok(json) = serde_json::to_string(&sample)
    {
        first.push(event("sample", &json));
    }
    if let Ok(json) = serde_json::to_string(&crate::scrape::stats_json(&state)) {
        first.push(event("stats", &json));
    }
    // A JWT's stream ends at its expiry with an `expired` event saying so, as a WebSocket
    // opened with it is closed then.
    let expired = Box::pin(admin.credential_expiry());
    let expired_error: std::sync::Arc<str> =
        serde_json::to_string(&admin.expired_error().body().error)
            .unwrap_or_default()
            .into();
    let who: std::sync::Arc<str> = admin.name().into();
    let live = futures::stream::unfold(Some((rx, expired)), move |open| {
        let (expired_error, who) = (expired_error.clone(), who.clone());
        async move {
            let (mut rx, mut expired) = open?;
            let ev = tokio::select! {
                biased;
                () = &mut expired => {
                    tracing::info!(principal = &*who, "live stream ended: its JWT expired");
                    return Some((event("expired", &expired_error), None));
                }
                next = rx.recv() => match next {
                    Ok(LiveEvent { kind, data }) => event(kind, &data),
                    Err(RecvError::Lagged(n)) => event("lagged", &format!("{{\"skipped\":{n}}}")),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((ev, Some((rx, expired))))
        }
    });
    let shutdown = state.shutdown.clone();
    let events = futures::stream::iter(first)
        .chain(live)
        .take_until(async move { shutdown.cancelled().await })
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// Query of `GET /v1/stats/history`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    /// Only samples taken at or after this time (ms since the Unix epoch).
    since_ms: Option<u64>,
}

/// `GET /v1/stats/history`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct HistoryJson {
    /// One sample this often.
    interval_ms: u64,
    /// At most this many are kept (15 minutes).
    capacity: usize,
    /// Oldest first.
    samples: Vec<Sample>,
}

/// The last 15 minutes of one-second samples (rates and levels), kept by the node: a page
/// opened now shows the past, and a script can read the same figures.
#[utoipa::path(get, path = "/v1/stats/history", params(HistoryQuery), responses((status = 200, body = HistoryJson)), tag = "observability")]
pub(crate) async fn history(
    State(state): State<AppState>,
    _admin: Admin,
    Q(q): Q<HistoryQuery>,
) -> Json<HistoryJson> {
    Json(HistoryJson {
        interval_ms: u64::try_from(SAMPLE_EVERY.as_millis()).unwrap_or(u64::MAX),
        capacity: HISTORY_SAMPLES,
        samples: state.live.history(q.since_ms.unwrap_or(0)),
    })
}

/// Health of the transport and of each component (a declared component groups its
/// subscriptions; without a topology each subscription is one): `failing` with an open
/// breaker or half its recent deliveries failing, `degraded` with a queue 80 % full, a
/// half-open breaker or 5 % failing, otherwise `healthy`; with the reasons. With the
/// application's health checker attached, its view of each component too (`heartbeat`; an
/// unresponsive component is `failing`).
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = HealthJson)), tag = "observability")]
pub(crate) async fn health(State(state): State<AppState>, _admin: Admin) -> Json<HealthJson> {
    let topology = state
        .topology
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let transport = crate::live::health::transport(
        state.health.transport.kind(),
        state.health.transport.problem(),
    );
    let checked = state
        .checker
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|c| c.report())
        .unwrap_or_default();
    Json(crate::live::health::report(
        &state.bus.registry(),
        &state.health.breakers(&state.bus),
        &state.live.recent(),
        topology.as_ref(),
        transport,
        &checked,
    ))
}
