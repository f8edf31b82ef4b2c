//! Observed edges: who published on which topic (counted by the bus's publish hook) joined
//! with which subscription handled that topic (the handler rows of the resilience registry),
//! compared with the declared component topology.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use smol_str::SmolStr;
use switchyard::{Envelope, Pattern, Topic};
use switchyard_components::Topology;
use switchyard_middleware::metrics::MetricsSnapshot as HandlerSnapshot;

/// Distinct (source, topic) pairs counted; publishes on further pairs are only counted in
/// `overflow` (topics with ids in them must not grow the map without bound).
pub(crate) const MAX_PAIRS: usize = 2048;
/// The publisher name of a message without a source.
pub(crate) const NO_SOURCE: &str = "(no source)";

/// Publishes per (source, topic).
#[derive(Debug, Default)]
pub(crate) struct PublishCounts {
    pairs: Mutex<HashMap<(SmolStr, SmolStr), u64>>,
    overflow: AtomicU64,
}

impl PublishCounts {
    /// Counts one publish (called by the bus's publish hook).
    pub(crate) fn record(&self, env: &Envelope) {
        let source = env
            .source()
            .map(SmolStr::new)
            .unwrap_or_else(|| SmolStr::new_static(NO_SOURCE));
        let topic = SmolStr::new(env.topic.as_str());
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let full = pairs.len() >= MAX_PAIRS;
        match pairs.get_mut(&(source.clone(), topic.clone())) {
            Some(n) => *n += 1,
            None if full => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                pairs.insert((source, topic), 1);
            }
        }
    }

    /// Every pair's count.
    pub(crate) fn snapshot(&self) -> HashMap<(SmolStr, SmolStr), u64> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes not attributed to a pair because the map was full.
    pub(crate) fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
}

/// One edge seen in traffic.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub(crate) struct ObservedEdgeJson {
    /// The publisher: the message's source (a component's name), or `(no source)`.
    pub(crate) from: String,
    /// The receiver: the component owning the subscription (`<component>:<pattern>`), or the
    /// subscription's name.
    pub(crate) to: String,
    /// The concrete topic.
    pub(crate) topic: String,
    /// Messages `from` published on `topic` since the node started (each reached `to`, which
    /// handled that topic).
    pub(crate) count: u64,
    /// Of those, per second over the last seconds (see `window_s`).
    pub(crate) rate_per_s: f64,
    /// With a declared topology: whether a declared edge covers it (same publisher and
    /// receiver, its publish declaration matches the topic). `null` without one.
    pub(crate) declared: Option<bool>,
}

/// The component a subscription belongs to: components name theirs `<component>:<pattern>`.
pub(crate) fn owner<'a>(subscription: &'a str, topology: Option<&Topology>) -> &'a str {
    match (subscription.split_once(':'), topology) {
        (Some((component, _)), Some(t)) if t.component(component).is_some() => component,
        _ => subscription,
    }
}

/// Joins publishes with the handler rows: an edge `from → to` on `topic` for every publisher
/// of `topic` and every subscription that handled `topic`. Self-edges are left out.
pub(crate) fn edges(
    publishes: &HashMap<(SmolStr, SmolStr), u64>,
    rates: &HashMap<(SmolStr, SmolStr), f64>,
    handlers: &HandlerSnapshot,
    topology: Option<&Topology>,
) -> Vec<ObservedEdgeJson> {
    // Handler rows are labelled with the pattern each handler was registered for: a
    // receiver of `topic` is one whose pattern matches it and that has handled messages.
    let handled: Vec<(Pattern, &str)> = handlers
        .handlers
        .iter()
        .filter(|h| h.delivered > 0)
        .filter_map(|h| Some((Pattern::new(&h.topic).ok()?, owner(&h.handler, topology))))
        .collect();
    let receivers_of = |topic: &Topic| -> Vec<&str> {
        handled
            .iter()
            .filter(|(p, _)| p.matches(topic))
            .map(|(_, to)| *to)
            .collect()
    };
    let declared: Vec<(String, String, Option<Pattern>)> = topology
        .map(|t| {
            t.edges()
                .into_iter()
                .map(|e| {
                    (
                        e.from.to_string(),
                        e.to.to_string(),
                        Pattern::new(&e.topic).ok(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out: BTreeMap<(String, String, String), ObservedEdgeJson> = BTreeMap::new();
    for ((source, topic), &count) in publishes {
        let Ok(topic_parsed) = Topic::new(topic) else {
            continue;
        };
        let to = receivers_of(&topic_parsed);
        let parsed = Some(topic_parsed);
        for to in to {
            if to == source.as_str() {
                continue;
            }
            let is_declared = topology.map(|_| {
                declared.iter().any(|(f, t, p)| {
                    f == source.as_str()
                        && t == to
                        && matches!((p, &parsed), (Some(p), Some(topic)) if p.matches(topic))
                })
            });
            let rate = rates
                .get(&(source.clone(), topic.clone()))
                .copied()
                .unwrap_or(0.0);
            out.entry((source.to_string(), to.to_owned(), topic.to_string()))
                .or_insert(ObservedEdgeJson {
                    from: source.to_string(),
                    to: to.to_owned(),
                    topic: topic.to_string(),
                    count,
                    rate_per_s: rate,
                    declared: is_declared,
                });
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_components::{ComponentSpec, Role};
    use switchyard_middleware::metrics::HandlerStats;

    fn env(source: Option<&str>, topic: &str) -> Envelope {
        let e = Envelope::new(Topic::new(topic).unwrap(), b"{}".to_vec());
        match source {
            Some(s) => e.with_source(s),
            None => e,
        }
    }

    fn row(topic: &str, handler: &str, delivered: u64) -> HandlerStats {
        HandlerStats {
            topic: topic.to_owned(),
            handler: handler.to_owned(),
            delivered,
            ..HandlerStats::default()
        }
    }

    #[test]
    fn publishes_are_counted_per_source_and_topic_and_bounded() {
        let c = PublishCounts::default();
        c.record(&env(Some("ui"), "a.b"));
        c.record(&env(Some("ui"), "a.b"));
        c.record(&env(None, "a.b"));
        let s = c.snapshot();
        assert_eq!(s[&(SmolStr::new("ui"), SmolStr::new("a.b"))], 2);
        assert_eq!(s[&(SmolStr::new(NO_SOURCE), SmolStr::new("a.b"))], 1);
        for i in 0..MAX_PAIRS + 5 {
            c.record(&env(Some("ui"), &format!("t.{i}")));
        }
        assert_eq!(c.snapshot().len(), MAX_PAIRS);
        assert_eq!(
            c.overflow(),
            7,
            "2 pairs existed, {MAX_PAIRS} + 5 more were tried"
        );
    }

    #[test]
    fn edges_join_publishers_with_handlers_and_flag_undeclared_ones() {
        let mut ui = ComponentSpec::new("ui", Role::Frontend, "shop");
        ui.publishes.push(Pattern::new("shop.order.*").unwrap());
        let mut orders = ComponentSpec::new("orders", Role::Manager, "shop");
        orders.subscribes.push(Pattern::new("shop.#").unwrap());
        let topology = Topology::new(vec![ui, orders]);
        let mut publishes = HashMap::new();
        publishes.insert((SmolStr::new("ui"), SmolStr::new("shop.order.placed")), 5);
        // Not declared: ui declares shop.order.* only.
        publishes.insert((SmolStr::new("ui"), SmolStr::new("shop.refund.asked")), 2);
        // Only a subscription that has handled nothing matches it: no edge.
        publishes.insert((SmolStr::new("ui"), SmolStr::new("misc.nobody")), 9);
        // Rows are labelled with the handler's pattern.
        let handlers = HandlerSnapshot {
            taken_at: std::time::SystemTime::now(),
            handlers: vec![
                row("shop.#", "orders:shop.#", 7),
                row("misc.#", "idle:misc.#", 0),
            ],
        };
        let mut rates = HashMap::new();
        rates.insert((SmolStr::new("ui"), SmolStr::new("shop.order.placed")), 0.5);
        let e = edges(&publishes, &rates, &handlers, Some(&topology));
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            (
                e[0].topic.as_str(),
                e[0].to.as_str(),
                e[0].declared,
                e[0].rate_per_s
            ),
            ("shop.order.placed", "orders", Some(true), 0.5)
        );
        assert_eq!(
            (e[1].topic.as_str(), e[1].count, e[1].declared),
            ("shop.refund.asked", 2, Some(false))
        );
        // Without a topology the receiver is the subscription and nothing is "declared".
        let e = edges(&publishes, &rates, &handlers, None);
        assert_eq!(e[0].to, "orders:shop.#");
        assert_eq!(e[0].declared, None);
    }
}
