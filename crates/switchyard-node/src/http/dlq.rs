//! `GET|POST /v1/dlq...`: browse, inspect, replay and purge dead letters.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use switchyard::{DeadLetter, Envelope, Kind, MessageId, Pattern, PublishError};
use switchyard_middleware::dlq::{DeadLetterFilter, Replayer};

use super::{Admin, JsonBody, PathParam, Q};
use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;
use crate::wire::{MessageJson, rfc3339};

/// Query of `GET /v1/dlq`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Topic pattern.
    topic: Option<String>,
    /// Subscription (handler) that gave up.
    subscription: Option<String>,
    /// Only errors containing this text (case-sensitive).
    error: Option<String>,
    /// Only dead-lettered at or after this time (RFC 3339, `2026-01-02T03:04:05Z`).
    since: Option<String>,
    /// Only dead-lettered before this time (RFC 3339).
    until: Option<String>,
    /// Only these message ids, comma-separated (1 to 1000): a message's entries wherever
    /// they are in the queue (the trace view looks its messages up so).
    ids: Option<String>,
    /// Items per page (default 100, at most 1000).
    limit: Option<usize>,
    /// Items to skip.
    offset: Option<usize>,
}

/// One dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeadLetterJson {
    /// Message id.
    id: String,
    /// `handler_failed`, `rejected`, `decode_failed`, ...
    reason: String,
    /// The error chain.
    error: String,
    /// Subscription or handler that gave up.
    handler: Option<String>,
    /// Attempts made.
    attempts: u32,
    /// RFC 3339.
    dead_lettered_at: String,
    /// The message.
    message: MessageJson,
}

impl DeadLetterJson {
    fn from_letter(l: &DeadLetter) -> Self {
        Self {
            id: l.envelope.id.to_string(),
            reason: serde_json::to_value(l.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            error: l.error.clone(),
            handler: l.handler.as_ref().map(ToString::to_string),
            attempts: l.attempts,
            dead_lettered_at: rfc3339(l.dead_lettered_at),
            message: MessageJson::from_envelope(&l.envelope),
        }
    }
}

/// `{"total", "items"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DeadLettersJson {
    total: usize,
    items: Vec<DeadLetterJson>,
}

/// The filter of a listing, replay or purge: every condition given narrows it. A malformed
/// time is an error of `bad` (`bad_query` in a query string, `bad_request` in a body).
fn filter_of(
    topic: Option<&str>,
    subscription: Option<&str>,
    error: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    bad: ErrorKind,
) -> Result<DeadLetterFilter, ApiError> {
    let mut f = DeadLetterFilter::new();
    if let Some(t) = topic {
        let p =
            Pattern::new(t).map_err(|e| ApiError::new(ErrorKind::InvalidTopic, e.to_string()))?;
        f = f.topic(p);
    }
    if let Some(s) = subscription {
        f = f.handler(s);
    }
    if let Some(e) = error {
        f = f.error_contains(e);
    }
    if let Some(t) = since {
        f = f.since(parse_time("since", t, bad)?);
    }
    if let Some(t) = until {
        f = f.until(parse_time("until", t, bad)?);
    }
    Ok(f)
}

/// Lists dead letters, oldest first.
#[utoipa::path(get, path = "/v1/dlq", params(ListQuery), responses((status = 200, body = DeadLettersJson), (status = 400, description = "bad_query", body = crate::error::ErrorBody)), tag = "dead letters")]
pub(crate) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Q(q): Q<ListQuery>,
) -> Result<Json<DeadLettersJson>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::new(
            ErrorKind::BadQuery,
            format!("limit = {limit}: allowed 1 to 1000"),
        ));
    }
    let filter = filter_of(
        q.topic.as_deref(),
        q.subscription.as_deref(),
        q.error.as_deref(),
        q.since.as_deref(),
        q.until.as_deref(),
        ErrorKind::BadQuery,
    )?;
    let mut all = state.dlq.list(&filter);
    if let Some(ids) = &q.ids {
        let ids: std::collections::HashSet<MessageId> = id_list(ids)?.into_iter().collect();
        all.retain(|l| ids.contains(&l.envelope.id));
    }
    let items = all
        .iter()
        .skip(q.offset.unwrap_or(0))
        .take(limit)
        .map(DeadLetterJson::from_letter)
        .collect();
    Ok(Json(DeadLettersJson {
        total: all.len(),
        items,
    }))
}

/// An RFC 3339 time with its offset (`Z`, `+01:00`, `-05:30`) and optional fractional
/// seconds, as the instant it names.
fn parse_time(name: &str, value: &str, kind: ErrorKind) -> Result<std::time::SystemTime, ApiError> {
    let bad = |e: &dyn std::fmt::Display| {
        ApiError::new(
            kind,
            format!(
                "{name} = {value:?}: {e} (expected RFC 3339, e.g. 2026-01-02T03:04:05Z or \
                 2026-01-02T04:04:05.5+01:00)"
            ),
        )
    };
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|e| bad(&e))?;
    Ok(std::time::SystemTime::from(at))
}

/// Comma-separated message ids, 1 to 1000 of them, in the order given.
fn id_list(ids: &str) -> Result<Vec<MessageId>, ApiError> {
    let ids = ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_id)
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() || ids.len() > 1000 {
        return Err(ApiError::new(
            ErrorKind::BadQuery,
            format!("{} id(s): give 1 to 1000, comma-separated", ids.len()),
        ));
    }
    Ok(ids)
}

fn parse_id(id: &str) -> Result<MessageId, ApiError> {
    id.parse::<MessageId>()
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, e.to_string()))
}

/// One dead letter by message id.
#[utoipa::path(get, path = "/v1/dlq/{id}", params(("id" = String, Path, description = "Message id")),
    responses((status = 200, body = DeadLetterJson), (status = 400, description = "bad_request: not a message id", body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)), tag = "dead letters")]
pub(crate) async fn show(
    State(state): State<AppState>,
    _admin: Admin,
    PathParam(id): PathParam,
) -> Result<Json<DeadLetterJson>, ApiError> {
    let id = parse_id(&id)?;
    match state.dlq.get(&id) {
        Some(l) => Ok(Json(DeadLetterJson::from_letter(&l))),
        None => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no dead letter for message {id}"),
        )),
    }
}

/// Which entries a replay or purge takes: `{"ids": [...]}` or `{"all": true}`, narrowed by
/// the filters of the listing (`GET /v1/dlq`): `topic`, `subscription`, `error`, `since`,
/// `until`. With `all`, exactly the entries the listing with the same filters shows; with
/// `ids`, those of the ids that match.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selection {
    /// Message ids. A replay needs at least one: an empty list is `400 bad_request`.
    #[serde(default)]
    ids: Option<Vec<String>>,
    /// Every entry the filters match.
    #[serde(default)]
    all: bool,
    /// Topic pattern.
    #[serde(default)]
    topic: Option<String>,
    /// Subscription (handler) that gave up.
    #[serde(default)]
    subscription: Option<String>,
    /// Only errors containing this text (case-sensitive).
    #[serde(default)]
    error: Option<String>,
    /// Only dead-lettered at or after this time (RFC 3339).
    #[serde(default)]
    since: Option<String>,
    /// Only dead-lettered before this time (RFC 3339).
    #[serde(default)]
    until: Option<String>,
}

enum Selected {
    /// These ids, each only as far as its entries match the filter.
    Ids(Vec<MessageId>, DeadLetterFilter),
    Filter(DeadLetterFilter),
}

impl Selection {
    fn resolve(self) -> Result<Selected, ApiError> {
        let filter = || {
            filter_of(
                self.topic.as_deref(),
                self.subscription.as_deref(),
                self.error.as_deref(),
                self.since.as_deref(),
                self.until.as_deref(),
                ErrorKind::BadRequest,
            )
        };
        match (&self.ids, self.all) {
            (Some(_), true) => Err(ApiError::new(
                ErrorKind::BadRequest,
                "give either \"ids\" or \"all\": true, not both",
            )),
            (Some(ids), false) => {
                let ids = ids.iter().map(|s| parse_id(s)).collect::<Result<_, _>>()?;
                Ok(Selected::Ids(ids, filter()?))
            }
            (None, true) => Ok(Selected::Filter(filter()?)),
            (None, false) => Err(ApiError::new(
                ErrorKind::BadRequest,
                "say which entries: {\"ids\": [...]} or {\"all\": true}",
            )),
        }
    }
}

/// One entry a replay could not re-publish.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayFailureJson {
    id: String,
    error: String,
}

/// `{"replayed", "failed"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplayJson {
    replayed: usize,
    failed: Vec<ReplayFailureJson>,
}

/// Re-publishes dead letters (same id; commands go to their handler again) and removes the
/// entries that were accepted. Each message is published once, however many subscriptions
/// dead-lettered it (its entries all leave the queue), and every subscription on its topic
/// gets it again, those that handled it fine included. An entry added while the replay runs
/// (the replayed message failing again) stays. On the memory transport an event no
/// subscription matches any more is not published: its entry stays, reported failed. Replays
/// on one node run one at a time. What becomes of each is followed: `GET /v1/dlq/replays`.
/// An empty `ids` list is refused (`400 bad_request`): it names nothing to replay.
#[utoipa::path(post, path = "/v1/dlq/replay", request_body = Selection, responses((status = 200, body = ReplayJson), (status = 400, description = "malformed_json or bad_request (also an empty \"ids\" list)", body = crate::error::ErrorBody), (status = 415, description = "unsupported_content_type: the body must be application/json", body = crate::error::ErrorBody)), tag = "dead letters")]
pub(crate) async fn replay(
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(sel): JsonBody<Selection>,
) -> Result<Json<ReplayJson>, ApiError> {
    let selected = match sel.resolve()? {
        // Names no dead letter: a client's mistake (a filter that matched nothing on its
        // side), not a replay of nothing.
        Selected::Ids(ids, _) if ids.is_empty() => {
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                "ids is empty: name at least one dead letter, or use the filters \
                 ({\"all\": true} with topic, subscription, error, since, until)",
            ));
        }
        selected => selected,
    };
    let bus = state.bus.clone();
    let live = state.live.clone();
    let target = move |env: Envelope| {
        let bus = bus.clone();
        // Watched before it is re-published, so that no delivery is missed.
        live.replays.watch(&env.id, env.topic.as_str());
        async move {
            match env.kind {
                Kind::Command | Kind::Request => bus
                    .send_envelope(env)
                    .await
                    .map(|_| ())
                    .map_err(|e| PublishError::Refused(format!("command replay: {e}"))),
                _ => {
                    if !anyone_may_get(&bus, &env) {
                        return Err(PublishError::Refused(format!(
                            "no subscription on this node matches {} any more; the dead letter is kept",
                            env.topic
                        )));
                    }
                    bus.publish_envelope(env).await
                }
            }
        }
    };
    // One replay at a time on this node: two requests for the same entries would otherwise
    // both read them before either removed them, and both re-publish.
    let _replaying = state.replaying.lock().await;
    let replayer = Replayer::new(&*state.dlq, &target);
    let mut out = ReplayJson {
        replayed: 0,
        failed: Vec::new(),
    };
    // The messages to replay, each once (`one` takes all its entries): the ids named whose
    // entries match the filters (an id named twice, as a page listing a message once per
    // entry does, is replayed once; an unknown one is tried and reported failed), or the
    // messages of the matching entries, oldest first (a filter on the subscription or the
    // error may match only some of a message's entries; the message is published to its
    // topic again either way).
    let ids: Vec<MessageId> = match selected {
        Selected::Ids(ids, filter) => ids
            .into_iter()
            .filter(|id| {
                let entries = state.dlq.entries_of(id);
                entries.is_empty() || entries.iter().any(|(_, l)| filter.matches(l))
            })
            .collect(),
        Selected::Filter(filter) => state
            .dlq
            .entries(&filter)
            .into_iter()
            .map(|(_, l)| l.envelope.id)
            .collect(),
    };
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id.clone()) {
            continue;
        }
        match replayer.one(id.clone()).await {
            Ok(()) => out.replayed += 1,
            Err(e) => out.failed.push(ReplayFailureJson {
                id: id.to_string(),
                error: e.to_string(),
            }),
        }
    }
    tracing::info!(
        replayed = out.replayed,
        failed = out.failed.len(),
        "dead letters replayed"
    );
    Ok(Json(out))
}

/// Whether a replayed event can reach anyone: on the memory transport the node knows every
/// subscriber, and an event no active subscription matches would be published into the void
/// (its entry removed, the message gone). On a transport, subscribers elsewhere (other
/// processes, consumer groups reading later) may take it.
fn anyone_may_get(bus: &switchyard::Bus, env: &Envelope) -> bool {
    bus.transport_capabilities().is_some()
        || bus
            .registry()
            .iter()
            .any(|s| s.active && Pattern::new(&s.pattern).is_ok_and(|p| p.matches(&env.topic)))
}

/// Query of `GET /v1/dlq/replays`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplaysQuery {
    /// Message ids, comma-separated (at most 1000).
    ids: String,
}

/// `{"replays": [...]}`, one per id asked, in the order asked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReplaysJson {
    replays: Vec<crate::live::replays::ReplayState>,
}

/// What became of replayed dead letters: per id, each subscription's handling of the
/// re-published message (`handled`, `failed`, `rejected`, `retry`) and whether it was
/// dead-lettered again, as this node saw it within 5 minutes of the replay. `status` sums it
/// up: `pending`, `handled`, `failed`, `dead_lettered`, or `unknown` for an id this node did
/// not replay (or no longer remembers: it keeps the last 1024 replays). The same states are
/// `replay` events on `GET /v1/stream`.
#[utoipa::path(get, path = "/v1/dlq/replays", params(ReplaysQuery),
    responses((status = 200, body = ReplaysJson), (status = 400, body = crate::error::ErrorBody)), tag = "dead letters")]
pub(crate) async fn replays(
    State(state): State<AppState>,
    _admin: Admin,
    Q(q): Q<ReplaysQuery>,
) -> Result<Json<ReplaysJson>, ApiError> {
    let ids = id_list(&q.ids)?;
    let replays = ids.iter().map(|id| state.live.replays.get(id)).collect();
    Ok(Json(ReplaysJson { replays }))
}

/// `{"purged", "unknown"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PurgeJson {
    purged: usize,
    /// Ids asked for that have no dead letter here (purging by ids only; empty otherwise).
    unknown: Vec<String>,
}

/// Removes dead letters without replaying them: with `"all": true` exactly the entries the
/// listing with the same filters shows (`purged` counts entries); with `ids`, each id's
/// entries that match the filters (`purged` counts ids).
#[utoipa::path(post, path = "/v1/dlq/purge", request_body = Selection, responses((status = 200, body = PurgeJson), (status = 400, description = "malformed_json or bad_request", body = crate::error::ErrorBody), (status = 415, description = "unsupported_content_type: the body must be application/json", body = crate::error::ErrorBody)), tag = "dead letters")]
pub(crate) async fn purge(
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(sel): JsonBody<Selection>,
) -> Result<Json<PurgeJson>, ApiError> {
    let write_error = |e: switchyard_middleware::dlq::DlqWriteError| {
        ApiError::new(ErrorKind::Internal, e.to_string())
    };
    let mut unknown = Vec::new();
    let purged = match sel.resolve()? {
        Selected::Ids(ids, filter) => {
            let mut n = 0;
            for id in ids {
                let entries = state.dlq.entries_of(&id);
                if entries.is_empty() {
                    unknown.push(id.to_string());
                    continue;
                }
                // Only its entries the filter matches (all of them without a filter).
                let keys: Vec<_> = entries
                    .iter()
                    .filter(|(_, l)| filter.matches(l))
                    .map(|(k, _)| *k)
                    .collect();
                if !keys.is_empty() && state.dlq.remove_entries(&keys).map_err(write_error)? > 0 {
                    n += 1;
                }
            }
            n
        }
        Selected::Filter(filter) => state.dlq.purge(&filter).map_err(write_error)?,
    };
    tracing::info!(purged, "dead letters purged");
    Ok(Json(PurgeJson { purged, unknown }))
}
