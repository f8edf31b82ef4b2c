//! What `/metrics` and `/v1/stats` read at scrape time: the bus snapshot, the handler
//! registry, pipeline monitors, denials and the transport; and the bus-only topology graph.

use std::collections::BTreeMap;

use metrics::{counter, gauge};
use serde_json::{Value, json};
use switchyard::{SubscriptionInfo, SubscriptionKind};
use switchyard_middleware::breaker::BreakerState;
use switchyard_middleware::metrics::names as bus_names;

use crate::health::TransportHandle;
use crate::metrics::names;
use crate::state::AppState;

/// The whole `/metrics` text: the gateway's own figures, then the current bus, handler,
/// pipeline, denial and transport figures, written (absolute values) into a recorder made for
/// this scrape, so what is gone (a subscription, a handler, a breaker, a pipeline) has no rows.
pub(crate) fn render(state: &AppState) -> String {
    let recorder = crate::metrics::fresh_recorder();
    metrics::with_local_recorder(&recorder, || write_bus_figures(state));
    let mut text = state.metrics.render();
    text.push_str(&recorder.handle().render());
    text
}

/// Writes the bus, handler, pipeline, denial and transport figures into the current recorder.
/// Rows of handlers, their latency and breakers are written only for the subscriptions and
/// command handlers the bus has now (each handler's stack is named after its subscription):
/// the node keeps their figures by name after they are gone.
fn write_bus_figures(state: &AppState) {
    let snapshot = state.bus.metrics_snapshot();
    let live: std::collections::HashSet<&str> = snapshot
        .subscriptions
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let mut handlers = state.handlers.snapshot();
    handlers
        .handlers
        .retain(|h| live.contains(h.handler.as_str()));
    let monitors = state.metrics.monitors();
    let denials = state.auth.denials();
    let mut breakers = state.health.breakers(&state.bus);
    breakers.retain(|(h, _)| live.contains(h.as_str()));
    let mut latency = state.latency.snapshot();
    latency
        .handlers
        .retain(|h| live.contains(h.handler.as_str()));
    let problems = state.health.problems(&state.bus);
    gauge!("switchyard_pending").set(snapshot.pending as f64);
    gauge!(bus_names::DLQ_SIZE).set(state.dlq.len() as f64);
    counter!(bus_names::DLQ_EVICTED).absolute(state.dlq.evicted());
    gauge!("switchyard_ready").set(if problems.is_empty() { 1.0 } else { 0.0 });
    for s in &snapshot.subscriptions {
        let l = || {
            vec![
                metrics::Label::new("subscription", s.name.clone()),
                metrics::Label::new("kind", kind(s.kind)),
            ]
        };
        gauge!(bus_names::QUEUE_DEPTH, l()).set(s.depth as f64);
        gauge!("switchyard_subscription_in_flight", l()).set(s.in_flight as f64);
        let st = &s.stats;
        for (name, v) in [
            ("switchyard_subscription_delivered_total", st.delivered),
            ("switchyard_subscription_acked_total", st.acked),
            ("switchyard_subscription_failed_total", st.failed),
            ("switchyard_subscription_panicked_total", st.panicked),
            ("switchyard_subscription_retried_total", st.retried),
            ("switchyard_subscription_rejected_total", st.rejected),
            (
                "switchyard_subscription_dead_lettered_total",
                st.dead_lettered,
            ),
            ("switchyard_subscription_expired_total", st.expired),
            ("switchyard_subscription_dropped_total", st.dropped),
            (
                "switchyard_subscription_refused_full_total",
                st.refused_full,
            ),
            (
                "switchyard_subscription_decode_failed_total",
                st.decode_failed,
            ),
            ("switchyard_subscription_filtered_total", st.filtered),
            (
                "switchyard_subscription_intake_warned_total",
                st.intake_warned,
            ),
            (
                "switchyard_subscription_intake_rejected_total",
                st.intake_rejected,
            ),
        ] {
            counter!(name, l()).absolute(v);
        }
    }
    for h in &handlers.handlers {
        let labels = vec![
            metrics::Label::new("topic", h.topic.clone()),
            metrics::Label::new("handler", h.handler.clone()),
        ];
        counter!(bus_names::DELIVERED, labels.clone()).absolute(h.delivered);
        counter!(bus_names::ACKED, labels.clone()).absolute(h.acked);
        counter!(bus_names::RETRIED, labels.clone()).absolute(h.retried);
        counter!(bus_names::REJECTED, labels.clone()).absolute(h.rejected);
        counter!(bus_names::FAILED, labels.clone()).absolute(h.failed);
        counter!(bus_names::HANDED_BACK, labels.clone()).absolute(h.handed_back);
        gauge!(bus_names::IN_FLIGHT, labels.clone()).set(h.in_flight as f64);
        counter!("switchyard_handler_duration_seconds_count", labels.clone())
            .absolute(h.duration.count);
        gauge!("switchyard_handler_duration_seconds_sum", labels.clone())
            .set(h.duration.sum_seconds);
        gauge!("switchyard_handler_duration_seconds_max", labels.clone())
            .set(h.duration.max_seconds);
        gauge!("switchyard_end_to_end_latency_seconds_sum", labels.clone())
            .set(h.end_to_end.sum_seconds);
        counter!(
            "switchyard_end_to_end_latency_seconds_count",
            labels.clone()
        )
        .absolute(h.end_to_end.count);
    }
    for h in &latency.handlers {
        let l = &h.latency;
        for (q, v) in [
            ("0.5", l.p50_seconds),
            ("0.95", l.p95_seconds),
            ("0.99", l.p99_seconds),
        ] {
            if let Some(s) = v {
                gauge!("switchyard_handler_latency_seconds", "handler" => h.handler.clone(), "quantile" => q)
                        .set(s);
            }
        }
    }
    for (handler, st) in &breakers {
        let v = match st {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        };
        gauge!(bus_names::BREAKER_STATE, "handler" => handler.clone()).set(v);
    }
    for (pipeline, m) in &monitors {
        let snap = m.snapshot();
        for (st, v) in [
            ("accepted", snap.accepted),
            ("completed", snap.completed),
            ("failed", snap.failed),
            ("rejected", snap.rejected),
        ] {
            counter!("switchyard_pipeline_runs_total", "pipeline" => pipeline.clone(), "state" => st)
                    .absolute(v);
        }
        for op in &snap.ops {
            let labels = vec![
                metrics::Label::new("pipeline", pipeline.clone()),
                metrics::Label::new("stage", op.stage.clone()),
                metrics::Label::new("operation", op.operation.clone()),
            ];
            counter!("switchyard_pipeline_op_success_total", labels.clone()).absolute(op.success);
            counter!("switchyard_pipeline_op_errors_total", labels.clone()).absolute(op.errors);
            for (q, v) in [("0.5", op.p50_ns), ("0.95", op.p95_ns), ("0.99", op.p99_ns)] {
                if let Some(ns) = v {
                    gauge!("switchyard_pipeline_op_duration_seconds", "pipeline" => pipeline.clone(), "stage" => op.stage.clone(), "operation" => op.operation.clone(), "quantile" => q)
                            .set(ns as f64 / 1e9);
                }
            }
            for (ty, n) in &op.error_types {
                counter!("switchyard_pipeline_op_errors_by_type_total", "pipeline" => pipeline.clone(), "stage" => op.stage.clone(), "operation" => op.operation.clone(), "error_type" => ty.clone())
                        .absolute(*n);
            }
        }
    }
    counter!(names::DENIALS, "kind" => "unauthenticated", "action" => "any")
        .absolute(denials.unauthenticated());
    for (action, n) in denials.forbidden_all() {
        counter!(names::DENIALS, "kind" => "forbidden", "action" => action.as_str()).absolute(n);
    }
    gauge!("switchyard_transport_connected", "transport" => state.health.transport.kind()).set(
        if state.health.transport.problem().is_none() {
            1.0
        } else {
            0.0
        },
    );
}

fn kind(k: SubscriptionKind) -> &'static str {
    match k {
        SubscriptionKind::Event => "event",
        SubscriptionKind::Command => "command",
    }
}

/// Every figure as JSON for `/v1/stats`.
pub(crate) fn stats_json(state: &AppState) -> Value {
    let pipelines: BTreeMap<String, Value> = state
        .metrics
        .monitors()
        .into_iter()
        .map(|(name, m)| {
            (
                name,
                serde_json::to_value(m.snapshot()).unwrap_or(Value::Null),
            )
        })
        .collect();
    let denials = state.auth.denials();
    let forbidden: BTreeMap<&str, u64> = denials
        .forbidden_all()
        .map(|(a, n)| (a.as_str(), n))
        .collect();
    let transport = match &state.health.transport {
        TransportHandle::Memory => json!({"kind": "memory"}),
        TransportHandle::Log(l) => json!({"kind": "log", "stats": format!("{:?}", l.stats())}),
        TransportHandle::Nats(n) => {
            let h = n.health();
            json!({
                "kind": "nats",
                "state": format!("{:?}", h.state),
                "disconnects": h.disconnects,
                "reconnects": h.reconnects,
                "publish_failures": h.publish_failures,
                "publish_retries": h.publish_retries,
                "duplicates": h.duplicates,
                "dead_lettered": h.dead_lettered,
                "streams_ready": h.streams_ready,
            })
        }
    };
    json!({
        "bus": state.bus.metrics_snapshot(),
        "dead_letters": {"size": state.dlq.len(), "evicted": state.dlq.evicted()},
        "handlers": state.handlers.snapshot(),
        "latency": state.latency.snapshot(),
        "breakers": state.health.breakers(&state.bus).into_iter().map(|(h, s)| json!({"handler": h, "state": format!("{s:?}")})).collect::<Vec<_>>(),
        "pipelines": pipelines,
        "gateway": state.metrics.gateway_json(),
        "denials": {"unauthenticated": denials.unauthenticated(), "forbidden": forbidden},
        "layers": state
            .layers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|e| serde_json::to_value(e.stats()).unwrap_or(Value::Null)),
        "transport": transport,
    })
}

/// The graph the bus knows: topic patterns feeding subscriptions, command topics feeding
/// their handlers.
pub(crate) struct BusGraph {
    /// (pattern, subscription, kind)
    edges: Vec<(String, String, &'static str)>,
}

pub(crate) fn bus_graph(registry: &[SubscriptionInfo]) -> BusGraph {
    let mut edges: Vec<_> = registry
        .iter()
        .map(|s| (s.pattern.clone(), s.name.clone(), kind(s.kind)))
        .collect();
    edges.sort();
    edges.dedup();
    BusGraph { edges }
}

fn ident(prefix: &str, s: &str) -> String {
    let body: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{body}")
}

impl BusGraph {
    pub(crate) fn json(&self) -> Value {
        json!({
            "source": "bus",
            "edges": self.edges.iter().map(|(p, s, k)| json!({"pattern": p, "subscription": s, "kind": k})).collect::<Vec<_>>(),
        })
    }

    pub(crate) fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (p, s, k) in &self.edges {
            let arrow = if *k == "command" { "==>" } else { "-->" };
            out.push_str(&format!(
                "  {}([\"{}\"]) {arrow} {}[\"{} ({k})\"]\n",
                ident("t", p),
                p.replace('"', "'"),
                ident("s", s),
                s.replace('"', "'"),
            ));
        }
        out
    }

    pub(crate) fn dot(&self) -> String {
        let mut out = String::from("digraph switchyard {\n  rankdir=LR;\n");
        for (p, s, k) in &self.edges {
            let style = if *k == "command" { "bold" } else { "solid" };
            out.push_str(&format!(
                "  \"{}\" [shape=ellipse];\n  \"{}\" [shape=box];\n  \"{}\" -> \"{}\" [style={style}];\n",
                p.replace('"', "\\\""),
                s.replace('"', "\\\""),
                p.replace('"', "\\\""),
                s.replace('"', "\\\""),
            ));
        }
        out.push_str("}\n");
        out
    }
}
