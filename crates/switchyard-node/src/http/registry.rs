//! `GET /v1/topics` and `GET /v1/subscriptions`: what the bus has registered.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use switchyard::{SubscriptionInfo, SubscriptionKind, SubscriptionStats};

use super::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// One pattern and who listens on it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TopicJson {
    /// Pattern (or command topic).
    pattern: String,
    /// Subscription or handler names.
    subscriptions: Vec<String>,
    /// `event` or `command`.
    kind: &'static str,
}

/// `{"topics": [...]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TopicsJson {
    topics: Vec<TopicJson>,
}

fn kind_name(k: SubscriptionKind) -> &'static str {
    match k {
        SubscriptionKind::Event => "event",
        SubscriptionKind::Command => "command",
    }
}

/// Every subscribed pattern and command topic.
#[utoipa::path(get, path = "/v1/topics", responses((status = 200, body = TopicsJson)), tag = "registry")]
pub(crate) async fn topics(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<TopicsJson>, ApiError> {
    let mut by: BTreeMap<(String, &'static str), Vec<String>> = BTreeMap::new();
    for s in state.bus.registry() {
        by.entry((s.pattern.clone(), kind_name(s.kind)))
            .or_default()
            .push(s.name.clone());
    }
    Ok(Json(TopicsJson {
        topics: by
            .into_iter()
            .map(|((pattern, kind), subscriptions)| TopicJson {
                pattern,
                subscriptions,
                kind,
            })
            .collect(),
    }))
}

/// One subscription or command handler with its counters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SubscriptionJson {
    name: String,
    pattern: String,
    kind: &'static str,
    workers: usize,
    queue_capacity: usize,
    overflow: &'static str,
    depth: usize,
    in_flight: usize,
    /// Messages settled successfully.
    handled: u64,
    /// Attempts that failed.
    failed: u64,
    dead_lettered: u64,
    active: bool,
    session: Option<String>,
    /// Every counter of the bus.
    #[schema(value_type = Object)]
    stats: SubscriptionStats,
}

impl From<SubscriptionInfo> for SubscriptionJson {
    fn from(s: SubscriptionInfo) -> Self {
        Self {
            kind: kind_name(s.kind),
            workers: s.workers,
            queue_capacity: s.capacity,
            overflow: s.overflow,
            depth: s.depth,
            in_flight: s.in_flight,
            handled: s.stats.acked,
            failed: s.stats.failed,
            dead_lettered: s.stats.dead_lettered,
            active: s.active,
            session: s.session,
            stats: s.stats,
            name: s.name,
            pattern: s.pattern,
        }
    }
}

/// `{"subscriptions": [...]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SubscriptionsJson {
    subscriptions: Vec<SubscriptionJson>,
}

/// Every subscription and command handler with policy, depth and counters.
#[utoipa::path(get, path = "/v1/subscriptions", responses((status = 200, body = SubscriptionsJson)), tag = "registry")]
pub(crate) async fn subscriptions(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<SubscriptionsJson>, ApiError> {
    Ok(Json(SubscriptionsJson {
        subscriptions: state.bus.registry().into_iter().map(Into::into).collect(),
    }))
}
