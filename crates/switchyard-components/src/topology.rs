//! Declarations of components, the graph they form, its validation and its export as Mermaid
//! and DOT.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::{self, Write as _};

use serde::Serialize;
use smol_str::SmolStr;
use switchyard::{Pattern, Topic};

use crate::role::{Endpoint, Role, Rule, check_edge, check_message};

/// What a component declares: who it is, what it subscribes to and what it publishes.
///
/// Publish declarations are patterns too (`staging.*.processed`), so one declaration can cover
/// a family of topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentSpec {
    /// Name, role and domain.
    pub endpoint: Endpoint,
    /// Patterns it subscribes to.
    pub subscribes: Vec<Pattern>,
    /// Topics (or patterns of topics) it publishes.
    pub publishes: Vec<Pattern>,
}

impl ComponentSpec {
    /// A spec with no subscriptions and no publications yet.
    pub fn new(name: impl Into<SmolStr>, role: Role, domain: impl Into<SmolStr>) -> Self {
        Self {
            endpoint: Endpoint::new(name, role, domain),
            subscribes: Vec::new(),
            publishes: Vec::new(),
        }
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    /// The component's role.
    pub fn role(&self) -> Role {
        self.endpoint.role
    }

    /// The component's domain.
    pub fn domain(&self) -> &str {
        &self.endpoint.domain
    }

    /// True when one of the publish declarations covers `topic`.
    pub fn declares_publish(&self, topic: &Topic) -> bool {
        self.publishes.iter().any(|p| p.matches(topic))
    }

    /// True when one of the subscriptions receives `topic`.
    pub fn receives(&self, topic: &Topic) -> bool {
        self.subscribes.iter().any(|p| p.matches(topic))
    }

    /// The topics every component with a request context publishes implicitly:
    /// `<domain>.status.update`, `<domain>.error` and `<domain>.*.<result phase>`.
    pub(crate) fn add_implicit_publishes(&mut self) {
        let d = self.endpoint.domain.clone();
        let phase = self.endpoint.role.result_phase();
        for p in [
            crate::role::status_topic(&d),
            crate::role::error_topic(&d),
            crate::role::heartbeat_topic(&d),
            format!("{d}.*.{phase}"),
        ] {
            if let Ok(p) = Pattern::new(&p)
                && !self.publishes.contains(&p)
            {
                self.publishes.push(p);
            }
        }
    }
}

/// True when some topic matches both patterns ([`Pattern::overlaps`], kept as a function for
/// existing callers).
///
/// ```
/// use switchyard::Pattern;
/// use switchyard_components::patterns_overlap;
/// let p = |s| Pattern::new(s).unwrap();
/// assert!(patterns_overlap(&p("staging.*.processed"), &p("staging.load.processed")));
/// assert!(patterns_overlap(&p("#"), &p("a.b")));
/// assert!(!patterns_overlap(&p("a.*"), &p("a.b.c")));
/// ```
pub fn patterns_overlap(a: &Pattern, b: &Pattern) -> bool {
    a.overlaps(b)
}

/// One declared edge: `from` publishes something `to` subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Edge {
    /// Publisher.
    pub from: SmolStr,
    /// Subscriber.
    pub to: SmolStr,
    /// The publish declaration (topic or pattern) that reaches `to`.
    pub topic: SmolStr,
}

/// A message edge the layer rules forbid, or a publish of an undeclared topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The publisher.
    pub from: Endpoint,
    /// The receiver (`None` for [`Rule::UndeclaredPublish`]).
    pub to: Option<Endpoint>,
    /// The topic (or publish pattern) involved.
    pub topic: SmolStr,
    /// The rule broken.
    pub rule: Rule,
}

impl Violation {
    /// The violation as the bus reports it ([`PublishError::LayerViolation`](switchyard::PublishError::LayerViolation)).
    pub fn to_layer_violation(&self) -> switchyard::LayerViolation {
        switchyard::LayerViolation {
            rule: self.rule.id().to_owned(),
            from: self.from.name.to_string(),
            to: self.to.as_ref().map(|to| to.name.to_string()),
            topic: self.topic.to_string(),
            detail: self.to_string(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.to {
            Some(to) => write!(
                f,
                "{} may not send to {} (topic `{}`): rule {}",
                self.from, to, self.topic, self.rule
            ),
            None => write!(
                f,
                "{} published undeclared topic `{}`: rule {}",
                self.from, self.topic, self.rule
            ),
        }
    }
}

/// A topology was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// Two components share a name.
    #[error("duplicate component name `{0}`")]
    DuplicateName(String),
    /// One or more declared edges break the layer rules.
    #[error("{} forbidden edge(s): {}", .0.len(), join(.0))]
    Forbidden(Vec<Violation>),
}

fn join(v: &[Violation]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The components of a system and the message edges their declarations imply.
///
/// ```
/// use switchyard::Pattern;
/// use switchyard_components::{ComponentSpec, Role, Topology};
/// let mut m = ComponentSpec::new("analytics-manager", Role::Manager, "analytics");
/// m.publishes.push(Pattern::new("analytics.feature.execute")?);
/// let mut p = ComponentSpec::new("analytics-processor", Role::Processor, "analytics");
/// p.subscribes.push(Pattern::new("analytics.feature.execute")?);
/// let err = Topology::new(vec![m, p]).validate().unwrap_err().to_string();
/// assert!(err.contains("analytics-manager") && err.contains("analytics-processor"));
/// assert!(err.contains("one-layer-at-a-time"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, Serialize)]
pub struct Topology {
    components: Vec<ComponentSpec>,
}

impl Topology {
    /// A topology of these components (in this order; exports sort by name).
    pub fn new(components: Vec<ComponentSpec>) -> Self {
        Self { components }
    }

    /// The components.
    pub fn components(&self) -> &[ComponentSpec] {
        &self.components
    }

    /// One component by name.
    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.name() == name)
    }

    /// The same topology with only the components `keep` accepts (exports then leave out the
    /// others and their edges, e.g. `|c| c.role() != Role::System` for the flow alone).
    pub fn retain(&self, keep: impl Fn(&ComponentSpec) -> bool) -> Topology {
        Topology {
            components: self
                .components
                .iter()
                .filter(|c| keep(c))
                .cloned()
                .collect(),
        }
    }

    /// Every declared edge, sorted: for each publish declaration of each component, every
    /// component with an overlapping subscription (self-edges left out).
    pub fn edges(&self) -> Vec<Edge> {
        let mut edges = BTreeSet::new();
        for from in &self.components {
            for publish in &from.publishes {
                for to in &self.components {
                    if to.name() == from.name() {
                        continue;
                    }
                    if to.subscribes.iter().any(|s| patterns_overlap(publish, s)) {
                        edges.insert(Edge {
                            from: from.endpoint.name.clone(),
                            to: to.endpoint.name.clone(),
                            topic: SmolStr::new(publish.as_str()),
                        });
                    }
                }
            }
        }
        edges.into_iter().collect()
    }

    /// Every declared edge that breaks a rule: its roles ([`check_edge`]) or the phase of its
    /// publish declaration ([`check_phase`](crate::check_phase); a declaration whose last
    /// segment is a wildcard is checked per topic at run time).
    pub fn violations(&self) -> Vec<Violation> {
        self.edges()
            .into_iter()
            .filter_map(|e| {
                let from = self.component(&e.from)?;
                let to = self.component(&e.to)?;
                check_message(&from.endpoint, &to.endpoint, &e.topic)
                    .err()
                    .map(|rule| Violation {
                        from: from.endpoint.clone(),
                        to: Some(to.endpoint.clone()),
                        topic: e.topic.clone(),
                        rule,
                    })
            })
            .collect()
    }

    /// Checks names are unique and no declared edge breaks a layer rule. The error names both
    /// components of every forbidden edge and the rule.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let mut names = BTreeSet::new();
        for c in &self.components {
            if !names.insert(c.name()) {
                return Err(TopologyError::DuplicateName(c.name().to_owned()));
            }
        }
        let v = self.violations();
        if v.is_empty() {
            Ok(())
        } else {
            Err(TopologyError::Forbidden(v))
        }
    }

    fn sorted(&self) -> Vec<&ComponentSpec> {
        let mut c: Vec<&ComponentSpec> = self.components.iter().collect();
        c.sort_by(|a, b| a.name().cmp(b.name()));
        c
    }

    /// Declared edges with topics merged per (from, to) pair.
    fn merged_edges(&self) -> BTreeMap<(SmolStr, SmolStr), Vec<String>> {
        let mut merged: BTreeMap<(SmolStr, SmolStr), Vec<String>> = BTreeMap::new();
        for e in self.edges() {
            merged
                .entry((e.from, e.to))
                .or_default()
                .push(e.topic.to_string());
        }
        merged
    }

    /// The declared graph as a Mermaid flowchart: one subgraph per domain, one node per
    /// component (`name [role]`), one arrow per (publisher, subscriber) pair labelled with the
    /// topics; forbidden edges are drawn dotted with `✗`. Deterministic (sorted by name).
    pub fn to_mermaid(&self) -> String {
        let labels: BTreeMap<(SmolStr, SmolStr), String> = self
            .merged_edges()
            .into_iter()
            .map(|(k, v)| (k, v.join(", ")))
            .collect();
        self.mermaid_with(&labels)
    }

    /// The declared graph in Graphviz DOT, same content as [`to_mermaid`](Self::to_mermaid).
    pub fn to_dot(&self) -> String {
        let labels: BTreeMap<(SmolStr, SmolStr), String> = self
            .merged_edges()
            .into_iter()
            .map(|(k, v)| (k, v.join("\\n")))
            .collect();
        self.dot_with(&labels)
    }

    /// What was seen at runtime as Mermaid: edges with message counts.
    pub fn observed_mermaid(&self, observed: &[ObservedEdge]) -> String {
        self.mermaid_with(&observed_labels(observed, ", "))
    }

    /// What was seen at runtime as DOT: edges with message counts.
    pub fn observed_dot(&self, observed: &[ObservedEdge]) -> String {
        self.dot_with(&observed_labels(observed, "\\n"))
    }

    /// A pair is drawn forbidden when its roles break a rule or a declared edge between
    /// them breaks the phase rule.
    fn forbidden(&self, from: &str, to: &str) -> bool {
        match (self.component(from), self.component(to)) {
            (Some(f), Some(t)) => {
                check_edge(&f.endpoint, &t.endpoint).is_err()
                    || f.publishes.iter().any(|p| {
                        t.subscribes.iter().any(|s| patterns_overlap(p, s))
                            && check_message(&f.endpoint, &t.endpoint, p.as_str()).is_err()
                    })
            }
            _ => false,
        }
    }

    /// Mermaid ids, unique among the subgraphs (`d_<domain>`) and the nodes: see
    /// [`MermaidIds`].
    fn mermaid_ids(&self) -> MermaidIds {
        let sorted = self.sorted();
        let domains: BTreeSet<&str> = sorted.iter().map(|c| c.domain()).collect();
        let wanted: Vec<(bool, &str, String)> = domains
            .iter()
            .map(|d| (true, *d, format!("d_{}", mermaid_base(d))))
            .chain(
                sorted
                    .iter()
                    .map(|c| (false, c.name(), mermaid_base(c.name()))),
            )
            .collect();
        let natural: HashSet<&str> = wanted.iter().map(|w| w.2.as_str()).collect();
        let mut used: HashSet<String> = HashSet::new();
        let mut ids = MermaidIds::default();
        for (is_domain, name, base) in &wanted {
            let mut id = base.clone();
            let mut n = 1;
            // A later name whose id is taken gets the first `_<n>` that is nobody's.
            while used.contains(&id) || (id != *base && natural.contains(id.as_str())) {
                n += 1;
                id = format!("{base}_{n}");
            }
            used.insert(id.clone());
            let map = if *is_domain {
                &mut ids.domains
            } else {
                &mut ids.components
            };
            map.insert(SmolStr::new(name), id);
        }
        ids
    }

    fn mermaid_with(&self, labels: &BTreeMap<(SmolStr, SmolStr), String>) -> String {
        let ids = self.mermaid_ids();
        let mut out = String::from("flowchart TD\n");
        let mut domains: BTreeMap<&str, Vec<&ComponentSpec>> = BTreeMap::new();
        for c in self.sorted() {
            domains.entry(c.domain()).or_default().push(c);
        }
        for (domain, members) in domains {
            let _ = writeln!(
                out,
                "  subgraph {}[\"{}\"]",
                ids.domain(domain),
                mermaid_text(domain)
            );
            for c in members {
                let _ = writeln!(
                    out,
                    "    {}[\"{}<br/><i>{}</i>\"]",
                    ids.component(c.name()),
                    mermaid_text(c.name()),
                    c.role()
                );
            }
            out.push_str("  end\n");
        }
        for ((from, to), label) in labels {
            if self.component(from).is_none() || self.component(to).is_none() {
                continue;
            }
            let label = mermaid_text(label);
            let arrow = if self.forbidden(from, to) {
                format!("-. \"✗ {label}\" .->")
            } else {
                format!("-- \"{label}\" -->")
            };
            let _ = writeln!(
                out,
                "  {} {} {}",
                ids.component(from),
                arrow,
                ids.component(to)
            );
        }
        out
    }

    fn dot_with(&self, labels: &BTreeMap<(SmolStr, SmolStr), String>) -> String {
        // newrank lets Graphviz rank nodes across clusters (without it, dense graphs with
        // clusters can fail to lay out).
        let mut out = String::from(
            "digraph topology {\n  rankdir=TB;\n  newrank=true;\n  node [shape=box];\n",
        );
        let mut domains: BTreeMap<&str, Vec<&ComponentSpec>> = BTreeMap::new();
        for c in self.sorted() {
            domains.entry(c.domain()).or_default().push(c);
        }
        for (domain, members) in domains {
            let domain = dot_text(domain);
            let _ = writeln!(
                out,
                "  subgraph \"cluster_{domain}\" {{\n    label=\"{domain}\";"
            );
            for c in members {
                let name = dot_text(c.name());
                let _ = writeln!(out, "    \"{name}\" [label=\"{name}\\n[{}]\"];", c.role());
            }
            out.push_str("  }\n");
        }
        for ((from, to), label) in labels {
            if self.component(from).is_none() || self.component(to).is_none() {
                continue;
            }
            let style = if self.forbidden(from, to) {
                ", style=dashed, color=red"
            } else {
                ""
            };
            // The label's `\\n` separators are DOT escapes: only its quotes are escaped.
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{}\"{style}];",
                dot_text(from),
                dot_text(to),
                label.replace('"', "\\\"")
            );
        }
        out.push_str("}\n");
        out
    }
}

fn observed_labels(observed: &[ObservedEdge], sep: &str) -> BTreeMap<(SmolStr, SmolStr), String> {
    let mut merged: BTreeMap<(SmolStr, SmolStr), Vec<String>> = BTreeMap::new();
    for e in observed {
        merged
            .entry((e.from.clone(), e.to.clone()))
            .or_default()
            .push(format!("{} ×{}", e.topic, e.count));
    }
    merged.into_iter().map(|(k, v)| (k, v.join(sep))).collect()
}

/// The Mermaid ids of one export. An id is the name with every character but ASCII letters
/// and digits turned into `_` (Mermaid ids may not contain `-` or `.`), with `d_` before a
/// domain's; names that would share an id (`shop-manager`, `shop.manager`, or a component
/// `d-shop` and the domain `shop`) are told apart by a `_<n>` suffix on the later one in
/// name order (domains first), so each component is one node. The label keeps the name.
#[derive(Default)]
struct MermaidIds {
    domains: BTreeMap<SmolStr, String>,
    components: BTreeMap<SmolStr, String>,
}

impl MermaidIds {
    fn domain(&self, name: &str) -> &str {
        self.domains.get(name).map_or("d_", String::as_str)
    }
    fn component(&self, name: &str) -> &str {
        self.components.get(name).map_or("_", String::as_str)
    }
}

/// A name as a Mermaid id before it is made unique (`end` is a keyword: `end_`).
fn mermaid_base(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if id == "end" { "end_".into() } else { id }
}

/// Text inside a quoted Mermaid label: `#` starts an entity code and `"` ends the label,
/// so both are written as entity codes.
fn mermaid_text(s: &str) -> String {
    s.replace('#', "#35;").replace('"', "#quot;")
}

/// Text inside a quoted DOT string: `"` is written `\"` and `\` is doubled (so a name
/// ending in a backslash cannot escape the closing quote; distinct names stay distinct).
fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// An edge seen at runtime: how many messages `from` published on `topic` that reached `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ObservedEdge {
    /// Publisher.
    pub from: SmolStr,
    /// Receiving component.
    pub to: SmolStr,
    /// Concrete topic.
    pub topic: SmolStr,
    /// Messages sent.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn overlap_cases() {
        let yes = [
            ("a.b.c", "a.b.c"),
            ("a.*.c", "a.b.c"),
            ("a.*.c", "*.b.*"),
            ("#", "x"),
            ("a.#", "a"),
            ("a.#", "a.b.c.d"),
            ("#.c", "a.b.c"),
            ("a.#.d", "a.*.*.d"),
            ("#", "#"),
            ("a.#", "#.b"),
        ];
        let no = [
            ("a.b.c", "a.b.d"),
            ("a.*", "a.b.c"),
            ("a.*.c", "b.#"),
            ("a.b", "a.b.*"),
            ("#.x", "a.y"),
        ];
        for (a, b) in yes {
            assert!(patterns_overlap(&p(a), &p(b)), "{a} ∩ {b}");
            assert!(patterns_overlap(&p(b), &p(a)), "{b} ∩ {a}");
        }
        for (a, b) in no {
            assert!(!patterns_overlap(&p(a), &p(b)), "{a} ∩ {b}");
            assert!(!patterns_overlap(&p(b), &p(a)), "{b} ∩ {a}");
        }
    }

    #[test]
    fn overlap_agrees_with_matching_on_concrete_topics() {
        // For an exact pattern, overlap is the same as matching.
        let patterns = ["a.#", "a.*", "*.b", "#", "a.b", "#.b", "a.*.c", "*.*"];
        let topics = ["a", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "a.b.b"];
        for pat in patterns {
            for t in topics {
                let topic = Topic::new(t).unwrap();
                assert_eq!(
                    patterns_overlap(&p(pat), &p(t)),
                    p(pat).matches(&topic),
                    "{pat} vs {t}"
                );
            }
        }
    }

    /// The topology compared declarations with a recursive overlap test that took
    /// exponential time on patterns full of `#`; a declaration like this froze `edges()`.
    #[test]
    fn overlap_of_declarations_full_of_hashes_finishes() {
        let never = p(&[vec!["#"; 40], vec!["y", "a"]].concat().join("."));
        let b = p(&[vec!["a"; 40], vec!["b"]].concat().join("."));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(patterns_overlap(&never, &b));
        });
        // A guard, not a timing claim: the table takes microseconds.
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("overlap did not finish within 5 s");
        assert!(!got);
    }

    fn named(names: &[(&str, &str)]) -> Topology {
        Topology::new(
            names
                .iter()
                .map(|(n, d)| ComponentSpec::new(*n, Role::Manager, *d))
                .collect(),
        )
    }

    #[test]
    fn mermaid_ids_are_unique_and_keep_simple_names_readable() {
        let t = named(&[
            ("shop-manager", "shop"),
            ("shop.manager", "shop"),
            ("shop_manager_2", "shop"),
            ("d-shop", "x"),
            ("end", "x"),
            ("a\"b", "x"),
        ]);
        let ids = t.mermaid_ids();
        let all: Vec<&String> = ids
            .domains
            .values()
            .chain(ids.components.values())
            .collect();
        let unique: HashSet<&String> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len(), "{all:?}");
        assert_eq!(ids.component("shop-manager"), "shop_manager");
        assert_eq!(ids.component("shop.manager"), "shop_manager_3");
        assert_eq!(ids.component("shop_manager_2"), "shop_manager_2");
        assert_eq!(ids.domain("shop"), "d_shop");
        assert_eq!(ids.component("d-shop"), "d_shop_2");
        assert_eq!(ids.component("end"), "end_");
        let m = t.to_mermaid();
        assert!(m.contains("a_b[\"a#quot;b<br/>"), "{m}");
    }

    #[test]
    fn dot_escapes_quotes_and_backslashes_in_names() {
        let t = Topology::new(vec![
            ComponentSpec::new("say \"hi\"\\", Role::Manager, "x"),
            ComponentSpec {
                subscribes: vec![Pattern::new("x.a.request").unwrap()],
                ..ComponentSpec::new("m", Role::Manager, "x")
            },
        ]);
        let mut t2 = t.components().to_vec();
        t2[0].publishes.push(Pattern::new("x.a.request").unwrap());
        let dot = Topology::new(t2).to_dot();
        assert!(
            dot.contains(r#""say \"hi\"\\" [label="say \"hi\"\\\n[manager]"];"#),
            "{dot}"
        );
        assert!(
            dot.contains(r#""say \"hi\"\\" -> "m" [label="x.a.request"];"#),
            "{dot}"
        );
    }

    #[test]
    fn implicit_publishes() {
        let mut s = ComponentSpec::new("q-handler", Role::Handler, "q");
        s.add_implicit_publishes();
        s.add_implicit_publishes(); // idempotent
        let got: Vec<&str> = s.publishes.iter().map(Pattern::as_str).collect();
        assert_eq!(
            got,
            vec![
                "q.status.update",
                "q.error",
                "q.health.heartbeat",
                "q.*.handled"
            ]
        );
    }
}
