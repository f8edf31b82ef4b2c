//! Topology export: golden checks of Mermaid and DOT.

use switchyard_components::{Role, Topology};

use crate::spec;

fn small() -> Topology {
    Topology::new(vec![
        spec(
            "cpm",
            Role::Cpm,
            "cpm",
            &["a.load.complete"],
            &["a.load.request"],
        ),
        spec(
            "a-manager",
            Role::Manager,
            "a",
            &["a.load.request", "a.load.served"],
            &["a.load.submit", "a.load.complete"],
        ),
        spec(
            "a-service",
            Role::Service,
            "a",
            &["a.load.submit"],
            &["a.load.served"],
        ),
        spec("a-processor", Role::Processor, "a", &["a.#"], &[]),
    ])
}

const MERMAID: &str = r#"flowchart TD
  subgraph d_a["a"]
    a_manager["a-manager<br/><i>manager</i>"]
    a_processor["a-processor<br/><i>processor</i>"]
    a_service["a-service<br/><i>service</i>"]
  end
  subgraph d_cpm["cpm"]
    cpm["cpm<br/><i>cpm</i>"]
  end
  a_manager -. "✗ a.load.complete, a.load.submit" .-> a_processor
  a_manager -- "a.load.submit" --> a_service
  a_manager -- "a.load.complete" --> cpm
  a_service -- "a.load.served" --> a_manager
  a_service -. "✗ a.load.served" .-> a_processor
  cpm -- "a.load.request" --> a_manager
  cpm -- "a.load.request" --> a_processor
"#;

const DOT: &str = r#"digraph topology {
  rankdir=TB;
  newrank=true;
  node [shape=box];
  subgraph "cluster_a" {
    label="a";
    "a-manager" [label="a-manager\n[manager]"];
    "a-processor" [label="a-processor\n[processor]"];
    "a-service" [label="a-service\n[service]"];
  }
  subgraph "cluster_cpm" {
    label="cpm";
    "cpm" [label="cpm\n[cpm]"];
  }
  "a-manager" -> "a-processor" [label="a.load.complete\na.load.submit", style=dashed, color=red];
  "a-manager" -> "a-service" [label="a.load.submit"];
  "a-manager" -> "cpm" [label="a.load.complete"];
  "a-service" -> "a-manager" [label="a.load.served"];
  "a-service" -> "a-processor" [label="a.load.served", style=dashed, color=red];
  "cpm" -> "a-manager" [label="a.load.request"];
  "cpm" -> "a-processor" [label="a.load.request"];
}
"#;

#[test]
fn mermaid_golden() {
    let got = small().to_mermaid();
    assert_eq!(got, MERMAID, "got:\n{got}");
}

#[test]
fn dot_golden() {
    let got = small().to_dot();
    assert_eq!(got, DOT, "got:\n{got}");
}

#[test]
fn export_is_deterministic_whatever_the_declaration_order() {
    let mut specs = small().components().to_vec();
    specs.reverse();
    let reversed = Topology::new(specs);
    assert_eq!(reversed.to_mermaid(), MERMAID);
    assert_eq!(reversed.to_dot(), DOT);
}

#[test]
fn retain_leaves_out_components_and_their_edges() {
    let t = small().retain(|c| c.role() != Role::Processor);
    let m = t.to_mermaid();
    assert!(!m.contains("a_processor"), "{m}");
    assert!(m.contains("cpm -- \"a.load.request\" --> a_manager"), "{m}");
    let observed = vec![switchyard_components::ObservedEdge {
        from: "cpm".into(),
        to: "a-processor".into(),
        topic: "a.load.request".into(),
        count: 2,
    }];
    assert!(!t.observed_dot(&observed).contains("a-processor"));
    assert!(
        small()
            .observed_dot(&observed)
            .contains("\"cpm\" -> \"a-processor\" [label=\"a.load.request ×2\"]")
    );
}

#[test]
fn mermaid_escapes_hash_in_labels() {
    let t = Topology::new(vec![
        spec("m", Role::Manager, "a", &[], &["a.#"]),
        spec("s", Role::Service, "a", &["a.x.submit"], &[]),
    ]);
    let m = t.to_mermaid();
    assert!(m.contains("m -- \"a.#35;\" --> s"), "{m}");
}
