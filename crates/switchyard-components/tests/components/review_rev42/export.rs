//! Topology export (§8): the declared graph and the observed one agree exactly with what the
//! system declared and did, including a wildcard subscriber; Mermaid and DOT are well formed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use switchyard::{BoxError, Bus, Envelope, MessageId, Pattern, Topic};
use switchyard_components::{ComponentBuilder, Role, Topology};

use super::{Opts, Outcome, chain, send, wait_top};
use crate::spec;

/// Node ids and edges of a Mermaid flowchart as this crate writes it (`id["label"]` nodes,
/// `a -- "…" --> b` and `a -. "…" .-> b` edges); panics on a line it does not understand.
fn mermaid(text: &str) -> (BTreeSet<String>, Vec<(String, String)>) {
    let mut nodes = BTreeSet::new();
    let mut edges = Vec::new();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("flowchart TD"));
    for l in lines {
        let t = l.trim();
        if t == "end" || t.starts_with("subgraph ") {
            continue;
        }
        let arrow = [(" -- \"", "\" --> "), (" -. \"", "\" .-> ")]
            .into_iter()
            .find_map(|(a, b)| Some((t.split_once(a)?, b)));
        if let Some(((from, rest), close)) = arrow {
            let (_, to) = rest
                .rsplit_once(close)
                .unwrap_or_else(|| panic!("bad edge {t}"));
            edges.push((from.to_string(), to.to_string()));
        } else {
            let (id, label) = t
                .split_once("[\"")
                .unwrap_or_else(|| panic!("bad line {t}"));
            assert!(label.ends_with("\"]"), "{t}");
            assert!(nodes.insert(id.to_string()), "node id `{id}` defined twice");
        }
    }
    for (a, b) in &edges {
        assert!(
            nodes.contains(a) && nodes.contains(b),
            "edge {a} -> {b} to an unknown node"
        );
    }
    (nodes, edges)
}

/// DOT: quoted node declarations and `"a" -> "b" [...]` edges, balanced braces.
fn dot(text: &str) -> (BTreeSet<String>, Vec<(String, String)>) {
    assert!(text.starts_with("digraph "), "{text}");
    assert_eq!(
        text.matches('{').count(),
        text.matches('}').count(),
        "{text}"
    );
    let mut nodes = BTreeSet::new();
    let mut edges = Vec::new();
    for l in text.lines().map(str::trim) {
        if let Some((from, rest)) = l.split_once("\" -> \"") {
            let to = rest.split_once('"').unwrap().0;
            edges.push((from.trim_start_matches('"').to_string(), to.to_string()));
        } else if l.starts_with('"') && l.contains(" [label=") {
            assert!(
                nodes.insert(l[1..].split_once('"').unwrap().0.to_string()),
                "{l}"
            );
        }
    }
    for (a, b) in &edges {
        assert!(
            nodes.contains(a) && nodes.contains(b),
            "edge {a} -> {b} to an unknown node"
        );
    }
    (nodes, edges)
}

/// §4: "after the bus accepted the message, counts an observed edge (from, to, topic)"; §8:
/// the declared graph and "the runtime graph: edges with message counts". In a system whose
/// every declared edge is used (the chain plus an audit component subscribed to `shop.#`),
/// three flows: the observed (from, to) pairs are exactly the declared ones, each observed
/// topic is covered by a declared publish of that pair, the request/result edges count 3
/// messages each, and the Mermaid and DOT exports, declared and observed, draw exactly those
/// pairs, every node once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_and_declared_graphs_agree_exactly_and_export_well_formed() {
    let bus = Bus::new();
    let audit = ComponentBuilder::new("audit", Role::System, "audit")
        .on_envelope("shop.#", |_: Envelope, _| async { Ok::<_, BoxError>(()) });
    let c = chain(
        &bus,
        Arc::new(|_, _| Outcome::Double),
        Opts {
            extra: vec![audit],
            ..Opts::default()
        },
    )
    .await;
    for n in 1..=3 {
        send(&c, &MessageId::new(), n).await;
    }
    wait_top(&c, 3).await;
    bus.run_until_idle().await;
    let topo = c.running.topology();
    let declared: BTreeMap<(String, String), Vec<Pattern>> =
        topo.edges().into_iter().fold(BTreeMap::new(), |mut m, e| {
            m.entry((e.from.to_string(), e.to.to_string()))
                .or_default()
                .push(Pattern::new(&e.topic).unwrap());
            m
        });
    let observed = c.running.observed();
    let pairs: BTreeSet<(String, String)> = observed
        .iter()
        .map(|e| (e.from.to_string(), e.to.to_string()))
        .collect();
    let declared_pairs: BTreeSet<(String, String)> = declared.keys().cloned().collect();
    assert_eq!(pairs, declared_pairs, "observed vs declared pairs");
    for e in &observed {
        let pats = &declared[&(e.from.to_string(), e.to.to_string())];
        let t = Topic::new(e.topic.as_str()).unwrap();
        assert!(
            pats.iter().any(|p| p.matches(&t)),
            "{e:?} not covered by {pats:?}"
        );
        if !e.topic.ends_with(".status.update") && e.to != "audit" {
            assert_eq!(e.count, 3, "{e:?}");
        }
    }
    assert!(pairs.contains(&("shop-processor".into(), "audit".into())));
    for (text, parse) in [
        (topo.to_mermaid(), mermaid as fn(&str) -> _),
        (c.running.observed_mermaid(), mermaid),
        (topo.to_dot(), dot),
        (c.running.observed_dot(), dot),
    ] {
        let (nodes, edges) = parse(&text);
        assert_eq!(nodes.len(), topo.components().len(), "{text}");
        let drawn: BTreeSet<_> = edges.iter().cloned().collect();
        assert_eq!(drawn.len(), edges.len(), "an edge drawn twice\n{text}");
        assert_eq!(drawn.len(), declared_pairs.len(), "{text}");
    }
}

/// §8: the exports draw "one node per component". Two components whose names differ only in
/// punctuation (`shop-manager`, `shop.manager`, both legal names) must stay two nodes with the
/// edge between them, not one node with a self-loop.
#[test]
fn components_whose_names_differ_in_punctuation_are_distinct_mermaid_nodes() {
    let topo = Topology::new(vec![
        spec(
            "shop-manager",
            Role::Manager,
            "shop",
            &[],
            &["shop.order.request"],
        ),
        spec(
            "shop.manager",
            Role::Manager,
            "shop",
            &["shop.order.request"],
            &[],
        ),
    ]);
    assert_eq!(topo.edges().len(), 1);
    let text = topo.to_mermaid();
    let (nodes, edges) = mermaid(&text);
    assert_eq!(nodes.len(), 2, "{text}");
    assert!(edges.iter().all(|(a, b)| a != b), "{text}");
}

/// §4: "`Running::status()` returns all of it as one serializable `AssemblyStatus` (mode,
/// counters, recent violations, context counters, observed edges) for a dashboard"; §8: the
/// trace is a causal tree "with each message's time since the root and since its parent",
/// `render()` one line per message. Both as JSON a dashboard parses: the status names the
/// refusal (both components, topic, rule id), the trace's JSON is the eight-hop chain with
/// times that never go back, and the rendering has one line per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_trace_export_as_json_a_dashboard_can_read() {
    let bus = Bus::new();
    let traces = switchyard_components::trace::TraceRecorder::start(&bus, 1000)
        .await
        .unwrap();
    let c = chain(&bus, Arc::new(|_, _| Outcome::Double), Opts::default()).await;
    let refused = c
        .running
        .component_bus("cpm")
        .unwrap()
        .publish_to("shop.order.submit", crate::Note { n: 1 })
        .await;
    assert!(refused.is_err());
    let flow = MessageId::new();
    send(&c, &flow, 2).await;
    wait_top(&c, 1).await;
    bus.run_until_idle().await;
    let status: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&c.running.status()).unwrap()).unwrap();
    assert_eq!(status["mode"], "strict", "{status}");
    assert_eq!(status["components"], 5, "{status}");
    assert_eq!(status["enforcement"]["refused"], 1, "{status}");
    assert_eq!(
        status["enforcement"]["by_rule"]["cpm-reaches-managers-and-processors"], 1,
        "{status}"
    );
    let v = &status["recent_violations"][0];
    assert_eq!(
        (v["from"]["name"].as_str(), v["to"]["name"].as_str()),
        (Some("cpm"), Some("shop-service")),
        "{v}"
    );
    assert_eq!(
        (v["topic"].as_str(), v["rule"].as_str()),
        (
            Some("shop.order.submit"),
            Some("cpm-reaches-managers-and-processors")
        )
    );
    assert_eq!(status["contexts"]["active"], 0);
    assert_eq!(status["contexts"]["completed"], 4);
    assert_eq!(
        status["observed"].as_array().unwrap().len(),
        c.running.observed().len()
    );

    let trace = traces.trace(flow.clone());
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&trace).unwrap()).unwrap();
    assert_eq!(json["correlation_id"], serde_json::json!(flow));
    let roots = json["roots"].as_array().unwrap();
    assert_eq!(roots.len(), 1, "{json}");
    // Follow the chain of non-status messages down the JSON tree.
    let (mut node, mut hops, mut last_at) = (&roots[0], Vec::new(), 0.0_f64);
    loop {
        let at = node["at_ms"].as_f64().unwrap();
        assert!(
            at >= last_at && node["since_parent_ms"].as_f64().unwrap() >= 0.0,
            "{node}"
        );
        last_at = at;
        hops.push((
            node["topic"].as_str().unwrap().to_string(),
            node["source"].as_str().map(str::to_string),
        ));
        let next = node["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| !k["topic"].as_str().unwrap().ends_with(".status.update"));
        match next {
            Some(k) => node = k,
            None => break,
        }
    }
    let topics: Vec<&str> = hops.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(topics, super::DOWN_AND_UP);
    let sources: Vec<Option<&str>> = hops.iter().map(|h| h.1.as_deref()).collect();
    assert_eq!(
        sources,
        [
            "cpm",
            "shop-manager",
            "shop-service",
            "shop-handler",
            "shop-processor",
            "shop-handler",
            "shop-service",
            "shop-manager"
        ]
        .map(Some)
    );
    assert_eq!(
        trace.render().lines().count(),
        trace.len() + 1,
        "{}",
        trace.render()
    );
}
